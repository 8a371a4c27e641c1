//! The HTTP API: ngrok API v2 for event destinations, subscriptions and
//! sources; HTTP ingest; metrics and health. One module per resource; every
//! handler takes an authenticated [`auth::Call`] and changes state only
//! through [`App::commit`] (`change.rs`).

mod auth;
mod change;
mod dead_letters;
mod destinations;
mod filters;
mod ingest;
mod operator;
mod paging;
mod sources;
mod stats;
mod subscriptions;
mod tap;

use auth::*;
use dead_letters::*;
use destinations::*;
use filters::*;
use ingest::*;
use paging::*;
use sources::*;
use stats::*;
use subscriptions::*;
use tap::*;

pub use ingest::INGEST_MAX_BYTES;
pub use operator::operator_router;

use crate::error::{ApiError, Code};
use crate::ids;
use crate::list_filter::ListFilter;
use crate::model::{
    Destination, Subscription, SubscriptionJson, check_format, check_lengths, member, only_keys,
    parse_target, source_json, string,
};
use crate::policy::{RateMeter, TenantPolicy, rate_limited};
use crate::store::{AccountState, ConfigStore, State, StoreError, sha256_hex, split_token};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use sluice_engine::Engine;
use sluice_engine::config::PipelineSpec;
use sluice_engine::config::SourceSpec;
use sluice_engine::events::{EventClass, EventTypeId};
use sluice_engine::plugin::verify_destination;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Everything the handlers share.
pub struct App {
    /// The running engine.
    pub engine: Arc<Engine>,
    /// Where the state is kept (SQLite, or the cluster's bucket).
    pub store: Arc<dyn ConfigStore>,
    /// What the API serves (written only under `write`).
    pub state: RwLock<State>,
    /// Serializes changes and their reconfigurations.
    pub write: Mutex<()>,
    /// Plugin kinds loaded (for `plugin` targets).
    pub plugin_kinds: Vec<String>,
    /// What tenants may do.
    pub policy: TenantPolicy,
    /// The restrictions every plugin instance receives
    /// ([`TenantPolicy::restrictions`]).
    pub restrictions: String,
    /// Where the server keeps its data (tenants' file areas under `files/`).
    pub data_dir: std::path::PathBuf,
    /// API writes per account.
    pub writes: RateMeter,
    /// Test events per account.
    pub test_events: RateMeter,
    /// Filter checks (`POST /event_filters/check`) per account.
    pub filter_checks: RateMeter,
    /// Failed authentications per client address.
    pub auth_failures: RateMeter,
    /// Accounts with a full destination, for ingest's back-pressure.
    pub full_accounts: crate::back_pressure::FullAccountsCache,
    /// Filters restricted to ngrok's fields.
    pub strict_ngrok_filters: bool,
    /// Hex SHA-256 of the token `POST /ingest` requires.
    pub ingest_token_sha256: String,
    /// Refuse ingest (429) while the fullest worker queue is above this fill ratio.
    pub ingest_pressure_limit: f64,
    /// Origins allowed to call the API from a browser (CORS), exactly as a
    /// browser sends them (`https://console.example.com`); empty: none.
    pub cors_origins: Vec<String>,
    /// The node's cluster, in cluster mode.
    pub cluster: Option<Arc<crate::cluster::Link>>,
    /// Open live taps per account.
    pub taps_open: Mutex<std::collections::HashMap<String, usize>>,
    /// Set when the server stops: streamed responses (taps) end.
    pub closing: tokio::sync::watch::Sender<bool>,
    /// Where destinations' dead letters are kept (files, or the cluster's
    /// stream).
    pub dead_letters: Arc<dyn crate::dead_letters::DeadLetterStore>,
}

impl App {
    /// The handlers' state for an engine already started with `state`'s
    /// pipeline.
    pub fn new(
        engine: Arc<Engine>,
        store: Arc<dyn ConfigStore>,
        state: State,
        plugin_kinds: Vec<String>,
        opts: &crate::ServeOptions,
        ingest_token_sha256: String,
        cluster: Option<Arc<crate::cluster::Link>>,
    ) -> App {
        let p = &opts.policy;
        let dead_letters: Arc<dyn crate::dead_letters::DeadLetterStore> = match &cluster {
            Some(link) => link.dead_letters.clone(),
            None => Arc::new(crate::dead_letters::FileDeadLetters {
                engine: engine.clone(),
            }),
        };
        App {
            dead_letters,
            engine,
            store,
            state: RwLock::new(state),
            write: Mutex::new(()),
            plugin_kinds,
            restrictions: p.restrictions(),
            writes: RateMeter::new(p.writes_per_minute),
            test_events: RateMeter::new(p.test_events_per_minute),
            filter_checks: RateMeter::new(filters::CHECKS_PER_MINUTE),
            auth_failures: RateMeter::new(p.auth_failures_per_minute),
            full_accounts: Default::default(),
            policy: p.clone(),
            data_dir: opts.data_dir.clone(),
            strict_ngrok_filters: opts.strict_ngrok_filters,
            ingest_token_sha256,
            ingest_pressure_limit: 0.75,
            cors_origins: opts.cors_origins.clone(),
            cluster,
            taps_open: Mutex::default(),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }
}

fn body_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::new(
            Code::UnparsableBody,
            "The request body must be a JSON object.",
        )),
        Err(e) => Err(ApiError::new(
            Code::UnparsableBody,
            format!("The request body is not valid JSON: {e}."),
        )),
    }
}

/// Checks the id of a path or reference. A wrong prefix is ERR_NGROK_227 and
/// something that is no id at all ERR_NGROK_223; a right prefix with a wrong
/// shape is simply not found (as a missing resource is).
fn check_id(id: &str, prefix: &str, what: &str) -> Result<bool, ApiError> {
    if ids::is_id(id, prefix) {
        return Ok(true);
    }
    match id.split_once('_') {
        Some((p, _)) if p == prefix => Ok(false),
        _ if ids::looks_like_id(id) => Err(ApiError::new(
            Code::WrongIdPrefix,
            format!("Expected an ID with a prefix of '{prefix}_' for {what}, got '{id}'."),
        )),
        _ => Err(ApiError::new(
            Code::NotAnId,
            format!("'{id}' is not a valid ID."),
        )),
    }
}

fn no_destination(id: &str) -> ApiError {
    ApiError::new(
        Code::DestinationNotFound,
        format!("No event destinations with ID '{id}' found."),
    )
}

fn no_subscription(id: &str) -> ApiError {
    ApiError::new(
        Code::SubscriptionNotFound,
        format!("Event Subscription {id} not found."),
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("request task failed: {e}")))?
}

type Shared = axum::extract::State<Arc<App>>;

/// The public health check: up or down, nothing about any tenant (the
/// operator's listener has the details).
async fn healthz(axum::extract::State(app): Shared) -> Response {
    if let Some(link) = &app.cluster
        && !link.connected()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": CUT_OFF })),
        )
            .into_response();
    }
    Json(json!({ "status": "ok" })).into_response()
}

/// Why a cluster node cut off from NATS serves nothing but its health.
const CUT_OFF: &str = "This node has lost its connection to the cluster's NATS servers: its configuration may be out of date and it cannot store events. Retry in a moment, or call another node.";

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: None,
        msg: "Resource not found".into(),
        retry_after: None,
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: None,
        msg: "Method not allowed on this resource".into(),
        retry_after: None,
    }
}

/// CORS for the configured origins only (preflight answered) and access logs without secrets.
/// In front of every public route: refuses (429) a client address that
/// failed to authenticate too often, counts its failures, answers CORS for
/// the operator's origins only, and writes the access log.
async fn edge(axum::extract::State(app): Shared, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    if let Some(p) = &peer
        && let Err(wait) = app.auth_failures.has_room(p)
    {
        return rate_limited("failed authentications from this address", wait).into_response();
    }
    // Only the operator's origins get CORS headers: a page elsewhere cannot
    // use a visitor's credentials against the API.
    let origin = req
        .headers()
        .get("origin")
        .filter(|o| {
            o.to_str()
                .is_ok_and(|o| app.cors_origins.iter().any(|a| a == o))
        })
        .cloned();
    let preflight =
        method == Method::OPTIONS && req.headers().contains_key("access-control-request-method");
    let req_headers = req.headers().get("access-control-request-headers").cloned();
    let cut_off = app.cluster.as_ref().is_some_and(|l| !l.connected());
    let mut resp = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else if cut_off && path != "/healthz" {
        let mut e = ApiError::new(Code::Unavailable, CUT_OFF);
        e.retry_after = Some(1);
        e.into_response()
    } else {
        next.run(req).await
    };
    if resp.status() == StatusCode::UNAUTHORIZED
        && let Some(p) = &peer
    {
        let _ = app.auth_failures.take(p);
    }
    if let Some(o) = origin {
        let h = resp.headers_mut();
        h.insert("access-control-allow-origin", o);
        h.insert(
            "access-control-allow-credentials",
            HeaderValue::from_static("true"),
        );
        if preflight {
            h.insert(
                "access-control-allow-methods",
                HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS"),
            );
            h.insert("access-control-max-age", HeaderValue::from_static("600"));
            if let Some(rh) = req_headers {
                h.insert("access-control-allow-headers", rh);
            }
        }
    }
    tracing::info!(
        target: "sluice::access",
        %method,
        path,
        status = resp.status().as_u16(),
        ms = start.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    resp
}

/// The public router: the ngrok API v2, `/ingest`, `/healthz`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/event_destinations",
            post(create_destination).get(list_destinations),
        )
        .route(
            "/event_destinations/{id}",
            get(get_destination)
                .patch(update_destination)
                .delete(delete_destination),
        )
        .route(
            "/event_subscriptions",
            post(create_subscription).get(list_subscriptions),
        )
        .route(
            "/event_subscriptions/{id}",
            get(get_subscription)
                .patch(update_subscription)
                .delete(delete_subscription),
        )
        .route("/event_destinations/{id}/test_event", post(send_test_event))
        .route("/event_filters/check", post(check_filter))
        .route("/event_types", get(list_event_types))
        .route("/event_destination_kinds", get(list_destination_kinds))
        .route("/event_stats", get(event_stats))
        .route(
            "/event_destinations/{id}/dead_letters",
            get(list_dead_letters),
        )
        .route(
            "/event_destinations/{id}/dead_letters/replay",
            post(replay_dead_letters),
        )
        .route(
            "/event_destinations/{id}/dead_letters/replays/{replay_id}",
            get(get_replay),
        )
        .route("/event_subscriptions/{id}/tap", get(tap_subscription))
        .route(
            "/event_subscriptions/{id}/sources",
            post(create_source).get(list_sources),
        )
        .route(
            "/event_subscriptions/{id}/sources/{type}",
            get(get_source).patch(update_source).delete(delete_source),
        )
        .route(
            "/ingest",
            post(ingest).layer(axum::extract::DefaultBodyLimit::max(INGEST_MAX_BYTES)),
        )
        .route("/healthz", get(healthz))
        .merge(crate::console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .layer(axum::middleware::from_fn_with_state(app.clone(), edge))
        .with_state(app)
}
