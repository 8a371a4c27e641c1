//! Input: one byte choosing a request, then its JSON body. The API of a
//! real (in-process) `sluice serve` answers every body with a 2xx or a
//! 4xx in the ngrok shape: never a 5xx, never a crash, never a hang.
#![no_main]
use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use sluice_serve::api::router;
use sluice_serve::policy::TenantPolicy;
use sluice_serve::testing::{InProcess, start};
use std::sync::OnceLock;
use tower::ServiceExt;

struct Fixture {
    rt: tokio::runtime::Runtime,
    server: InProcess,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sluice-fuzz-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("data directory");
        let policy = TenantPolicy {
            max_destinations: 20,
            max_subscriptions: 20,
            writes_per_minute: u32::MAX,
            test_events_per_minute: 0,
            ..TenantPolicy::default()
        };
        let server = start(&dir, policy, sluice_engine::plugin::PluginRegistry::discover(&[]));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Fixture { rt, server }
    })
}

const ROUTES: [(&str, &str); 4] = [
    ("POST", "/event_destinations"),
    ("POST", "/event_subscriptions"),
    ("PATCH", "/event_destinations/ed_2Nope0000000000000000000000"),
    ("POST", "/event_subscriptions/esb_2Nope000000000000000000000/sources"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let f = fixture();
    let (method, path) = ROUTES[pick as usize % ROUTES.len()];
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {}", f.server.key))
        .header("ngrok-version", "2")
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .expect("request");
    let resp = f.rt.block_on(router(f.server.app.clone()).oneshot(req)).expect("infallible");
    let status = resp.status().as_u16();
    let bytes = f
        .rt
        .block_on(axum::body::to_bytes(resp.into_body(), 1 << 20))
        .expect("the answer is read");
    assert!(status < 500, "{status} for {method} {path} {:?}: {}", String::from_utf8_lossy(body), String::from_utf8_lossy(&bytes));
    if status >= 400 {
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON error body");
        assert!(v["msg"].is_string() && v["status_code"] == status, "{v}");
    }
});
