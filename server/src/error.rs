//! API errors in the ngrok shape:
//! `{"error_code": "ERR_NGROK_…", "status_code": 400, "msg": "…", "details": {"operation_id": "op_…"}}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An API error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// `ERR_NGROK_<n>` code (absent for a plain 404 of an unknown path).
    pub code: Option<&'static str>,
    /// Message for humans.
    pub msg: String,
    /// Seconds to wait (429 / 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a code.
    pub fn new(status: u16, code: &'static str, msg: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code: Some(code),
            msg: msg.into(),
            retry_after: None,
        }
    }

    /// 400 with a code.
    pub fn bad(code: &'static str, msg: impl Into<String>) -> ApiError {
        ApiError::new(400, code, msg)
    }

    /// 404 with a code.
    pub fn not_found(code: &'static str, msg: impl Into<String>) -> ApiError {
        ApiError::new(404, code, msg)
    }

    /// 500, for what should not happen (storage failures).
    pub fn internal(msg: impl Into<String>) -> ApiError {
        ApiError::new(500, "ERR_NGROK_500", msg)
    }

    /// The JSON body, with a new operation id.
    pub fn body(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "status_code": self.status.as_u16(),
            "msg": self.msg,
            "details": { "operation_id": crate::ids::new_id("op") },
        });
        if let Some(c) = self.code {
            v["error_code"] = serde_json::Value::String(c.to_string());
        }
        v
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code.unwrap_or(""),
            self.msg
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert("retry-after", v);
        }
        r
    }
}
