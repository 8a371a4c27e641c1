//! The web console: three files built into the binary (`server/console/`),
//! served at `/` by the public listener with a strict Content-Security-Policy
//! (scripts, styles and connections from this origin only, no inline script,
//! no framing), so that tenant text the console shows can never run. The
//! console calls the same API as any client (`api/`).

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// The console's Content-Security-Policy: nothing but this origin's own
/// script, style and API; no inline script, no plugins, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The console's total size in bytes (page weight).
pub fn page_bytes() -> usize {
    INDEX.len() + SCRIPT.len() + STYLE.len()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `/`, `/console.js`, `/console.css`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files_and_puts_tenant_text_in_as_text() {
        // No inline script or style, nothing from another origin.
        assert!(!INDEX.contains("<script>") && !INDEX.contains("style="));
        assert!(!INDEX.contains("http://") && !INDEX.contains("https://"));
        assert!(!SCRIPT.contains("http://") || SCRIPT.contains("^https?:"));
        // The script never writes HTML.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!SCRIPT.contains(sink), "console.js uses {sink}");
        }
        // The key never goes in a URL.
        assert!(!SCRIPT.contains("?key=") && !SCRIPT.contains("api_key="));
    }
}
