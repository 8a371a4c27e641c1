//! Who is calling: the bearer API key checked against the store (an
//! unknown key is one indexed lookup), the protocol's header and body rules,
//! and the [`Call`] extractor every API handler takes, so that no handler
//! authenticates by hand or types its own method.

use super::*;
use axum::extract::FromRequest;

/// Who made a request and where the API is.
#[derive(Clone, Debug)]
pub(super) struct Ctx {
    pub(super) account: String,
    pub(super) key_id: String,
    pub(super) key_description: String,
    /// `scheme://host`, for absolute uris.
    pub(super) base: String,
}

pub(super) fn base_url(headers: &HeaderMap) -> String {
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|s| *s == "https" || *s == "http")
        .unwrap_or("http");
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

pub(super) fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let Some(v) = headers.get("authorization") else {
        return Err(ApiError::new(
            Code::MissingAuthorization,
            "Your request did not include an Authorization header; send 'Authorization: Bearer <API key>'.",
        ));
    };
    let v = v.to_str().map_err(|_| {
        ApiError::new(
            Code::BadAuthorization,
            "The Authorization header is not valid text.",
        )
    })?;
    let (scheme, token) = v.trim().split_once(' ').unwrap_or((v.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::new(
            Code::BadAuthorization,
            "The Authorization header must be 'Bearer <API key>'.",
        ));
    }
    Ok(token.trim())
}

impl App {
    /// Authenticates a request and checks the protocol headers and body
    /// rules. A request that changes nothing (`read_only`: every GET, and
    /// the POSTs of [`READ_ONLY_POSTS`]) is not counted as a write.
    pub(super) fn prelude(
        &self,
        headers: &HeaderMap,
        method: &Method,
        body: &[u8],
        read_only: bool,
    ) -> Result<Ctx, ApiError> {
        let token = bearer(headers)?;
        if token.starts_with("ak_") {
            return Err(ApiError::new(
                Code::ApiKeyIdSent,
                "You sent an API key ID; send the API key itself (the token shown once when it was created).",
            ));
        }
        let Some((key_id, secret)) = split_token(token) else {
            return Err(ApiError::new(
                Code::MalformedApiKey,
                "The API key is malformed.",
            ));
        };
        let key = {
            let st = self.state.read().unwrap_or_else(|p| p.into_inner());
            st.keys.get(&key_id).cloned()
        };
        // A key made by `sluice keys create` while the server runs: look that
        // one key up (an indexed read; an unknown key never loads the store).
        let key = match key {
            Some(k) => Some(k),
            None => self.store.key(&key_id).ok().flatten().inspect(|k| {
                let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
                st.keys.insert(k.id.clone(), k.clone());
            }),
        };
        let key = key
            .filter(|k| constant_time_eq(k.secret_sha256.as_bytes(), sha256_hex(secret).as_bytes()))
            .ok_or_else(|| ApiError::new(Code::InvalidApiKey, "The API key is not valid."))?;
        match headers
            .get("ngrok-version")
            .map(|v| v.to_str().unwrap_or(""))
        {
            None => {
                return Err(ApiError::new(
                    Code::MissingVersion,
                    "Your request did not include the 'Ngrok-Version' header; send 'Ngrok-Version: 2'.",
                ));
            }
            Some(v) if v.trim() != "2" => {
                return Err(ApiError::new(
                    Code::UnsupportedVersion,
                    format!("Ngrok-Version '{v}' is not supported; this API speaks version 2."),
                ));
            }
            _ => {}
        }
        let has_body = !body.iter().all(|b| b.is_ascii_whitespace());
        if has_body {
            if *method == Method::GET || *method == Method::DELETE {
                return Err(ApiError::new(
                    Code::BodyNotAllowed,
                    format!("{method} requests take no body."),
                ));
            }
            match headers.get("content-type").and_then(|v| v.to_str().ok()) {
                None => {
                    return Err(ApiError::new(
                        Code::MissingContentType,
                        "A request with a body needs 'Content-Type: application/json'.",
                    ));
                }
                Some(ct)
                    if !ct
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .eq_ignore_ascii_case("application/json") =>
                {
                    return Err(ApiError::new(
                        Code::UnsupportedContentType,
                        format!("Content-Type '{ct}' is not supported; use application/json."),
                    ));
                }
                _ => {}
            }
        }
        if !read_only && *method != Method::GET {
            self.writes
                .take(&key.account_id)
                .map_err(|s| rate_limited("changes for this account", s))?;
        }
        Ok(Ctx {
            account: key.account_id,
            key_id: key.id,
            key_description: key.description,
            base: base_url(headers),
        })
    }
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An authenticated API call: who made it ([`Ctx`]) and its body, checked
/// against the header and body rules for the request's own method. Taken
/// last by every handler of the ngrok API.
pub(super) struct Call {
    /// Who made the call and where the API is.
    pub(super) ctx: Ctx,
    /// The request body (within the router's body limit).
    pub(super) body: Bytes,
}

/// POSTs that change nothing (they take a body, but are not counted against
/// the account's writes; each has a meter of its own).
pub(super) const READ_ONLY_POSTS: &[&str] = &["/event_filters/check"];

impl FromRequest<Arc<App>> for Call {
    type Rejection = Response;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let method = req.method().clone();
        let read_only = READ_ONLY_POSTS.contains(&req.uri().path());
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, app)
            .await
            .map_err(IntoResponse::into_response)?;
        let ctx = app
            .prelude(&headers, &method, &body, read_only)
            .map_err(IntoResponse::into_response)?;
        Ok(Call { ctx, body })
    }
}
