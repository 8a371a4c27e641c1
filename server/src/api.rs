//! The HTTP API: ngrok API v2 for event destinations, subscriptions and
//! sources; HTTP ingest; metrics and health.

use crate::error::ApiError;
use crate::ids;
use crate::list_filter::ListFilter;
use crate::model::{
    Destination, Subscription, SubscriptionJson, check_format, check_lengths, member, only_keys,
    parse_target, source_json, string,
};
use crate::policy::{RateMeter, TenantPolicy, rate_limited};
use crate::store::{AccountState, State, Store, sha256_hex, split_token};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use sluice_engine::Engine;
use sluice_engine::config::SourceSpec;
use sluice_engine::events::{EventClass, EventTypeId};
use sluice_engine::plugin::verify_destination;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Everything the handlers share.
pub struct App {
    /// The running engine.
    pub engine: Arc<Engine>,
    /// Persistence.
    pub store: Store,
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
}

/// Who made a request and where the API is.
#[derive(Clone, Debug)]
struct Ctx {
    account: String,
    key_id: String,
    key_description: String,
    /// `scheme://host`, for absolute uris.
    base: String,
}

fn base_url(headers: &HeaderMap) -> String {
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

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let Some(v) = headers.get("authorization") else {
        return Err(ApiError::new(
            401,
            "ERR_NGROK_200",
            "Your request did not include an Authorization header; send 'Authorization: Bearer <API key>'.",
        ));
    };
    let v = v.to_str().map_err(|_| {
        ApiError::new(
            401,
            "ERR_NGROK_201",
            "The Authorization header is not valid text.",
        )
    })?;
    let (scheme, token) = v.trim().split_once(' ').unwrap_or((v.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::new(
            401,
            "ERR_NGROK_201",
            "The Authorization header must be 'Bearer <API key>'.",
        ));
    }
    Ok(token.trim())
}

impl App {
    /// The handlers' state for an engine already started with `state`'s
    /// pipeline.
    pub fn new(
        engine: Arc<Engine>,
        store: Store,
        state: State,
        plugin_kinds: Vec<String>,
        opts: &crate::ServeOptions,
        ingest_token_sha256: String,
    ) -> App {
        let p = &opts.policy;
        App {
            engine,
            store,
            state: RwLock::new(state),
            write: Mutex::new(()),
            plugin_kinds,
            restrictions: p.restrictions(),
            writes: RateMeter::new(p.writes_per_minute),
            test_events: RateMeter::new(p.test_events_per_minute),
            auth_failures: RateMeter::new(p.auth_failures_per_minute),
            full_accounts: Default::default(),
            policy: p.clone(),
            data_dir: opts.data_dir.clone(),
            strict_ngrok_filters: opts.strict_ngrok_filters,
            ingest_token_sha256,
            ingest_pressure_limit: 0.75,
            cors_origins: opts.cors_origins.clone(),
        }
    }

    /// Authenticates a request and checks the protocol headers and body rules.
    fn prelude(&self, headers: &HeaderMap, method: &Method, body: &[u8]) -> Result<Ctx, ApiError> {
        let token = bearer(headers)?;
        if token.starts_with("ak_") {
            return Err(ApiError::new(
                401,
                "ERR_NGROK_208",
                "You sent an API key ID; send the API key itself (the token shown once when it was created).",
            ));
        }
        let Some((key_id, secret)) = split_token(token) else {
            return Err(ApiError::new(
                401,
                "ERR_NGROK_202",
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
            .ok_or_else(|| ApiError::new(401, "ERR_NGROK_203", "The API key is not valid."))?;
        match headers
            .get("ngrok-version")
            .map(|v| v.to_str().unwrap_or(""))
        {
            None => {
                return Err(ApiError::bad(
                    "ERR_NGROK_218",
                    "Your request did not include the 'Ngrok-Version' header; send 'Ngrok-Version: 2'.",
                ));
            }
            Some(v) if v.trim() != "2" => {
                return Err(ApiError::bad(
                    "ERR_NGROK_217",
                    format!("Ngrok-Version '{v}' is not supported; this API speaks version 2."),
                ));
            }
            _ => {}
        }
        let has_body = !body.iter().all(|b| b.is_ascii_whitespace());
        if has_body {
            if *method == Method::GET || *method == Method::DELETE {
                return Err(ApiError::bad(
                    "ERR_NGROK_211",
                    format!("{method} requests take no body."),
                ));
            }
            match headers.get("content-type").and_then(|v| v.to_str().ok()) {
                None => {
                    return Err(ApiError::bad(
                        "ERR_NGROK_216",
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
                    return Err(ApiError::bad(
                        "ERR_NGROK_210",
                        format!("Content-Type '{ct}' is not supported; use application/json."),
                    ));
                }
                _ => {}
            }
        }
        if *method != Method::GET {
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

    /// Applies a change: `f` edits a copy of the account; the engine is
    /// reconfigured with the result and, if it accepts it, the store and the
    /// served state are updated. Returns what `f` returned.
    ///
    /// The returned [`Committed`] keeps other changes out until it is dropped,
    /// so that the change's audit event is processed under the configuration
    /// the change made, before any later change.
    fn commit(
        &self,
        account: &str,
        f: impl FnOnce(&mut AccountState) -> Result<(), ApiError>,
        persist: impl FnOnce(&Store) -> Result<(), String>,
    ) -> Result<Committed<'_>, ApiError> {
        let w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut acct = {
            let st = self.state.read().unwrap_or_else(|p| p.into_inner());
            st.accounts.get(account).cloned().unwrap_or_default()
        };
        if acct.created_at.is_empty() {
            acct.created_at = crate::now();
        }
        f(&mut acct)?;
        let spec = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .pipeline_with(
                self.strict_ngrok_filters,
                &self.policy,
                &self.data_dir,
                Some((account, &acct)),
            );
        if let Err(e) = self.engine.reconfigure(&spec) {
            let msg =
                e.0.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
            return Err(ApiError::bad("ERR_NGROK_5140", msg));
        }
        if let Err(e) = persist(&self.store) {
            // Put the engine back as it was.
            let old = self
                .state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .pipeline(self.strict_ngrok_filters, &self.policy, &self.data_dir);
            let _ = self.engine.reconfigure(&old);
            return Err(ApiError::internal(format!(
                "could not store the change: {e}"
            )));
        }
        self.state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .accounts
            .insert(account.to_string(), acct);
        Ok(Committed {
            app: self,
            _write: w,
        })
    }

    /// An audit event about this API's own resources.
    fn audit_event(&self, ctx: &Ctx, event_type: &str, object: &Value) -> Bytes {
        let ev = json!({
            "event_id": ids::new_id("ev"),
            "event_type": event_type,
            "event_timestamp": crate::now(),
            "account_id": ctx.account,
            "principal": {
                "id": ctx.key_id,
                "subject": if ctx.key_description.is_empty() { ctx.key_id.clone() } else { ctx.key_description.clone() },
                "source": "API",
                "credential": { "id": ctx.key_id, "uri": format!("{}/api_keys/{}", ctx.base, ctx.key_id) },
            },
            "object": object,
        });
        Bytes::from(ev.to_string())
    }

    /// Publishes an audit event and waits up to `wait` until a worker has
    /// routed it.
    fn publish_audit(&self, ev: Bytes, event_type: &str, wait: std::time::Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.engine.publish_ndjson_tracked(ev, move |r| {
            let _ = tx.send(r);
        });
        if rx.recv_timeout(wait).is_err() {
            tracing::warn!(event_type, "audit event not processed within {wait:?}");
        }
    }
}

/// A change applied and stored; other changes wait until it is dropped.
struct Committed<'a> {
    app: &'a App,
    _write: std::sync::MutexGuard<'a, ()>,
}

impl Committed<'_> {
    /// Emits the change's audit event, processed under the configuration the
    /// change made, before any later change, when the worker it goes to has
    /// room. Otherwise (the engine is overloaded) the lock on changes is let
    /// go first: no publish blocks while holding it, and the event may then
    /// be routed under a later configuration.
    fn audit(self, ctx: &Ctx, event_type: &str, object: &Value) {
        let app = self.app;
        let ev = app.audit_event(ctx, event_type, object);
        if app.engine.has_room_for(&ev) {
            app.publish_audit(ev, event_type, std::time::Duration::from_secs(5));
        } else {
            drop(self);
            app.publish_audit(ev, event_type, std::time::Duration::from_secs(30));
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn body_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad(
            "ERR_NGROK_213",
            "The request body must be a JSON object.",
        )),
        Err(e) => Err(ApiError::bad(
            "ERR_NGROK_213",
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
        _ if ids::looks_like_id(id) => Err(ApiError::bad(
            "ERR_NGROK_227",
            format!("Expected an ID with a prefix of '{prefix}_' for {what}, got '{id}'."),
        )),
        _ => Err(ApiError::bad(
            "ERR_NGROK_223",
            format!("'{id}' is not a valid ID."),
        )),
    }
}

fn no_destination(id: &str) -> ApiError {
    ApiError::not_found(
        "ERR_NGROK_5103",
        format!("No event destinations with ID '{id}' found."),
    )
}

fn no_subscription(id: &str) -> ApiError {
    ApiError::not_found(
        "ERR_NGROK_5123",
        format!("Event Subscription {id} not found."),
    )
}

/// Paging parameters of a list request.
struct ListQuery {
    before_id: Option<String>,
    limit: usize,
    filter: Option<(String, ListFilter)>,
}

fn decode_component(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let v = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                match v {
                    Some(v) => out.push(v),
                    None => {
                        return Err(ApiError::bad(
                            "ERR_NGROK_230",
                            "The query string is malformed.",
                        ));
                    }
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::bad("ERR_NGROK_230", "The query string is not valid UTF-8."))
}

fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn parse_query(raw: Option<&str>, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let (k, v) = (decode_component(k)?, decode_component(v)?);
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad(
                "ERR_NGROK_231",
                format!(
                    "The query parameter '{k}' is unknown; supported parameters are: {}.",
                    allowed.join(", ")
                ),
            ));
        }
        if out.iter().any(|(x, _)| *x == k) {
            return Err(ApiError::bad(
                "ERR_NGROK_232",
                format!("The query parameter '{k}' may only be given once."),
            ));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Query keys the official clients send under another spelling than the
/// API's, with the API's spelling. The JavaScript client (`@ngrok/ngrok-api`)
/// asks for the second page onward with `beforeId`; the Python and Go
/// clients send `before_id`.
const QUERY_ALIASES: &[(&str, &str)] = &[("beforeId", "before_id")];

/// Maps every alias in `params` to its canonical key. Two spellings of one
/// key with different values are ERR_NGROK_232; the same value twice is one.
fn canonical_keys(params: Vec<(String, String)>) -> Result<Vec<(String, String)>, ApiError> {
    // (canonical key, value, key as the request spelled it)
    let mut out: Vec<(String, String, String)> = Vec::with_capacity(params.len());
    for (spelled, v) in params {
        let key = QUERY_ALIASES
            .iter()
            .find(|(alias, _)| *alias == spelled)
            .map_or(spelled.as_str(), |(_, canonical)| canonical)
            .to_string();
        match out.iter().find(|(k, _, _)| *k == key) {
            Some((_, earlier, _)) if *earlier == v => {}
            Some((_, earlier, first)) => {
                return Err(ApiError::bad(
                    "ERR_NGROK_232",
                    format!(
                        "The query parameter '{key}' is given twice, as '{first}' and \
                         '{spelled}', with different values ('{earlier}' and '{v}'); give it once."
                    ),
                ));
            }
            None => out.push((key, v, spelled)),
        }
    }
    Ok(out.into_iter().map(|(k, v, _)| (k, v)).collect())
}

fn list_query(raw: Option<&str>, prefix: &str) -> Result<ListQuery, ApiError> {
    let params = canonical_keys(parse_query(
        raw,
        &["before_id", "beforeId", "limit", "filter"],
    )?)?;
    let mut q = ListQuery {
        before_id: None,
        limit: 100,
        filter: None,
    };
    for (k, v) in params {
        match k.as_str() {
            "before_id" if !v.is_empty() => {
                if !check_id(&v, prefix, "before_id")? {
                    return Err(ApiError::bad(
                        "ERR_NGROK_215",
                        format!("Invalid value for parameter 'before_id': '{v}'."),
                    ));
                }
                q.before_id = Some(v);
            }
            "limit" if !v.is_empty() => {
                q.limit = match v.trim().parse::<i64>() {
                    Ok(n) if (1..=100).contains(&n) => n as usize,
                    _ => {
                        return Err(ApiError::bad(
                            "ERR_NGROK_233",
                            format!("limit must be between 1 and 100, got '{v}'."),
                        ));
                    }
                };
            }
            "filter" if !v.trim().is_empty() => {
                let f = ListFilter::compile(&v)?;
                q.filter = Some((v, f));
            }
            _ => {}
        }
    }
    Ok(q)
}

/// One page of a newest-first list: the items, and the uri of the next page.
fn page<'a, T>(
    items: &'a std::collections::BTreeMap<String, T>,
    q: &ListQuery,
    fields: impl Fn(&T) -> (&str, &str, &str, &str),
    list_uri: &str,
) -> (Vec<&'a T>, Value) {
    let range = match &q.before_id {
        Some(b) => items.range::<String, _>(..b.clone()),
        None => items.range::<String, _>(..),
    };
    let mut out = Vec::new();
    let mut more = false;
    for (_, it) in range.rev() {
        let keep = match &q.filter {
            None => true,
            Some((_, f)) => {
                let (id, created, desc, meta) = fields(it);
                f.matches(id, created, desc, meta)
            }
        };
        if !keep {
            continue;
        }
        if out.len() == q.limit {
            more = true;
            break;
        }
        out.push(it);
    }
    let next = if more {
        let last = out
            .last()
            .map(|t| fields(t).0.to_string())
            .unwrap_or_default();
        let mut u = format!("{list_uri}?limit={}&before_id={last}", q.limit);
        if let Some((src, _)) = &q.filter {
            u.push_str("&filter=");
            u.push_str(&encode_component(src));
        }
        Value::String(u)
    } else {
        Value::Null
    };
    (out, next)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("request task failed: {e}")))?
}

type Shared = axum::extract::State<Arc<App>>;

// ------------------------------------------------------------ destinations

async fn create_destination(
    axum::extract::State(app): Shared,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = app.prelude(&headers, &Method::POST, &body)?;
    let obj = body_object(&body)?;
    only_keys(
        &obj,
        &[
            "metadata",
            "description",
            "format",
            "target",
            "verify_with_test_event",
        ],
        "EventDestinationCreate",
    )?;
    // Not in the public schema; the official Ruby client's signature has it.
    let verify = match member(&obj, "verify_with_test_event") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::bad(
                "ERR_NGROK_215",
                "verify_with_test_event must be a boolean.",
            ));
        }
    };
    let description = string(&obj, "description")?.unwrap_or_default();
    let metadata = string(&obj, "metadata")?.unwrap_or_default();
    check_lengths(Some(&description), Some(&metadata))?;
    let format = check_format(string(&obj, "format")?.as_deref())?;
    let target_v = member(&obj, "target").ok_or_else(|| {
        ApiError::bad("ERR_NGROK_5100", "The target must contain exactly one of: kinesis, firehose, cloudwatch_logs, datadog, azure_logs_ingestion (or plugin).")
    })?;
    let target = parse_target(target_v, None, &app.policy, &app.plugin_kinds)?;
    let d = Destination {
        id: ids::new_id("ed"),
        account_id: ctx.account.clone(),
        created_at: crate::now(),
        description,
        metadata,
        format,
        target,
    };
    check_file_area(&app, &d)?;
    if verify {
        app.test_events
            .take(&ctx.account)
            .map_err(|s| rate_limited("test events for this account", s))?;
        // Send the test event before storing: a destination that refuses it is not created.
        let plugins = app.engine.plugins();
        let spec = d.to_spec(&app.policy, &app.data_dir);
        let restrictions = app.restrictions.clone();
        blocking(move || {
            verify_destination(&plugins, &spec, &restrictions).map_err(|e| {
                // Spec §3: 5132 "Datadog key rejected", 5139 "other Azure
                // config problem" for a refusal; 5140 (generic invalid
                // fields) otherwise, and for a destination that could
                // not take the event now (throttled, down: try again).
                let code = match spec.kind.as_str() {
                    _ if e.retryable => "ERR_NGROK_5140",
                    "datadog" => "ERR_NGROK_5132",
                    "azure_logs_ingestion" => "ERR_NGROK_5139",
                    _ => "ERR_NGROK_5140",
                };
                ApiError::bad(code, format!("The destination refused the test event: {e}"))
            })
        })
        .await?;
    }
    let app2 = app.clone();
    let ctx2 = ctx.clone();
    let json = blocking(move || {
        let stored = d.clone();
        let committed = app2.commit(
            &ctx2.account,
            |a| {
                app2.policy.check_destinations(a.destinations.len())?;
                a.destinations.insert(d.id.clone(), d.clone());
                Ok(())
            },
            move |s| {
                s.put_account(&stored.account_id, &stored.created_at)
                    .and_then(|_| s.put_destination(&stored))
            },
        )?;
        let v = d.to_json(&ctx2.base);
        committed.audit(&ctx2, "event_destination_created.v0", &v);
        Ok(v)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json)).into_response())
}

async fn list_destinations(
    axum::extract::State(app): Shared,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = app.prelude(&headers, &Method::GET, &body)?;
    let q = list_query(q.as_deref(), "ed")?;
    let uri = format!("{}/event_destinations", ctx.base);
    let st = app.state.read().unwrap_or_else(|p| p.into_inner());
    let empty = Default::default();
    let items = st
        .accounts
        .get(&ctx.account)
        .map_or(&empty, |a| &a.destinations);
    let (page, next) = page(
        items,
        &q,
        |d: &Destination| (&d.id, &d.created_at, &d.description, &d.metadata),
        &uri,
    );
    let list: Vec<Value> = page.iter().map(|d| d.to_json(&ctx.base)).collect();
    Ok(
        Json(json!({ "event_destinations": list, "next_page_uri": next, "uri": uri }))
            .into_response(),
    )
}

fn find_destination(app: &App, ctx: &Ctx, id: &str) -> Result<Destination, ApiError> {
    if !check_id(id, "ed", "an event destination")? {
        return Err(no_destination(id));
    }
    let st = app.state.read().unwrap_or_else(|p| p.into_inner());
    st.accounts
        .get(&ctx.account)
        .and_then(|a| a.destinations.get(id))
        .cloned()
        .ok_or_else(|| no_destination(id))
}

async fn get_destination(
    axum::extract::State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = app.prelude(&headers, &Method::GET, &body)?;
    let d = find_destination(&app, &ctx, &id)?;
    Ok(Json(d.to_json(&ctx.base)).into_response())
}

async fn update_destination(
    axum::extract::State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = app.prelude(&headers, &Method::PATCH, &body)?;
    let old = find_destination(&app, &ctx, &id)?;
    let obj = body_object(&body)?;
    only_keys(
        &obj,
        &["id", "metadata", "description", "format", "target"],
        "EventDestinationUpdate",
    )?;
    let mut d = old.clone();
    if let Some(v) = string(&obj, "description")? {
        d.description = v;
    }
    if let Some(v) = string(&obj, "metadata")? {
        d.metadata = v;
    }
    check_lengths(Some(&d.description), Some(&d.metadata))?;
    if let Some(f) = string(&obj, "format")? {
        d.format = check_format(Some(&f))?;
    }
    if let Some(t) = member(&obj, "target") {
        let target = parse_target(t, Some(&old.target), &app.policy, &app.plugin_kinds)?;
        if target.member() != old.target.member() || target.kind() != old.target.kind() {
            return Err(ApiError::bad(
                "ERR_NGROK_5108",
                format!(
                    "The target type of a destination cannot change (from {} to {}); create a new destination.",
                    old.target.kind(),
                    target.kind()
                ),
            ));
        }
        d.target = target;
        check_file_area(&app, &d)?;
    }
    let app2 = app.clone();
    let json = blocking(move || {
        let stored = d.clone();
        let committed = app2.commit(
            &ctx.account,
            |a| {
                // Applied only to the version it was computed from: a
                // destination deleted or changed meanwhile (a secret rotated)
                // is neither brought back nor rolled back.
                still_as_read(
                    a.destinations.get(&d.id),
                    &old,
                    || no_destination(&d.id),
                    || changed_meanwhile("event destination", &d.id),
                )?;
                a.destinations.insert(d.id.clone(), d.clone());
                Ok(())
            },
            move |s| s.put_destination(&stored),
        )?;
        let v = d.to_json(&ctx.base);
        committed.audit(&ctx, "event_destination_updated.v0", &v);
        Ok(v)
    })
    .await?;
    Ok(Json(json).into_response())
}

/// Refuses a `file` destination whose path would leave the account's file
/// area through a symbolic link.
fn check_file_area(app: &App, d: &Destination) -> Result<(), ApiError> {
    if let crate::model::Target::Plugin { kind, config, .. } = &d.target
        && kind == "file"
        && let Some(path) = config.get("path").and_then(Value::as_str)
    {
        let root = crate::policy::files_root(&app.data_dir, &d.account_id);
        crate::policy::resolve_file_path(&root, path)
            .map_err(|e| ApiError::bad("ERR_NGROK_5140", format!("file target: {e}")))?;
    }
    Ok(())
}

/// Whether a resource is still the version a change was computed from: gone
/// is `gone()` (404), changed is `changed()` (409).
fn still_as_read<T: PartialEq>(
    current: Option<&T>,
    read: &T,
    gone: impl FnOnce() -> ApiError,
    changed: impl FnOnce() -> ApiError,
) -> Result<(), ApiError> {
    match current {
        None => Err(gone()),
        Some(cur) if cur != read => Err(changed()),
        Some(_) => Ok(()),
    }
}

/// A change computed from a version of a resource that another request
/// changed before this one could be applied: 409, to be read again and
/// retried (changes of one account are applied one at a time).
fn changed_meanwhile(what: &str, id: &str) -> ApiError {
    ApiError::new(
        409,
        "ERR_NGROK_409",
        format!(
            "The {what} {id} was changed by another request while this one was applied; read it again and retry."
        ),
    )
}

async fn delete_destination(
    axum::extract::State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = app.prelude(&headers, &Method::DELETE, &body)?;
    let d = find_destination(&app, &ctx, &id)?;
    let app2 = app.clone();
    blocking(move || {
        let did = d.id.clone();
        let committed = app2.commit(
            &ctx.account,
            |a| {
                if let Some(s) = a.subscriptions.values().find(|s| s.destination_ids.contains(&d.id)) {
                    return Err(ApiError::bad(
                        "ERR_NGROK_5112",
                        format!("Event Destination {} is still used by Event Subscription {}; remove it from the subscription first.", d.id, s.id),
                    ));
                }
                a.destinations.remove(&d.id);
                Ok(())
            },
            move |s| s.delete_destination(&did),
        )?;
        committed.audit(&ctx, "event_destination_deleted.v0", &d.to_json(&ctx.base));
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ----------------------------------------------------------- subscriptions

/// Parses one source object, with the audit-type rules of spec §5.3.
fn parse_source(v: &Value, app: &App) -> Result<SourceSpec, ApiError> {
    let strict = app.strict_ngrok_filters;
    let Value::Object(o) = v else {
        return Err(ApiError::bad(
            "ERR_NGROK_215",
            "Each source must be an object with a 'type'.",
        ));
    };
    only_keys(
        o,
        &["type", "filter", "fields", "subscription_id"],
        "EventSource",
    )?;
    let ty = string(o, "type")?.unwrap_or_default();
    let filter = string(o, "filter")?.filter(|f| !f.trim().is_empty());
    let fields: Option<Vec<String>> = match member(o, "fields") {
        None => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ApiError::bad(
                        "ERR_NGROK_215",
                        "Invalid value for parameter 'fields': expected a list of strings.",
                    )
                })?,
        ),
        Some(_) => {
            return Err(ApiError::bad(
                "ERR_NGROK_215",
                "Invalid value for parameter 'fields': expected a list of strings.",
            ));
        }
    };
    let fields = fields.filter(|f| !f.is_empty());
    let Some(t) = EventTypeId::from_name(&ty) else {
        let hint = sluice_engine::events::closest(&ty, sluice_engine::events::type_names())
            .map(|s| format!(" Did you mean '{s}'?"))
            .unwrap_or_default();
        return Err(ApiError::bad(
            "ERR_NGROK_238",
            format!(
                "'{ty}' is not a valid event type.{hint} Valid types are: {}.",
                sluice_engine::events::type_names()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    let def = t.def();
    if def.class == EventClass::Audit {
        if filter.is_some() {
            return Err(ApiError::bad(
                "ERR_NGROK_5402",
                format!("{ty} is an audit type and may not specify a filter."),
            ));
        }
        if fields.is_some() {
            return Err(ApiError::bad(
                "ERR_NGROK_5401",
                format!("{ty} is an audit type and may not specify fields."),
            ));
        }
    }
    if let Some(list) = &fields {
        match sluice_engine::config::check_fields(def, list, strict) {
            Ok(None) => {}
            // The API's answer has no place for warnings: the log has them.
            Ok(Some(w)) => tracing::warn!("in `fields`: {w}"),
            Err(e) => {
                return Err(ApiError::bad(
                    "ERR_NGROK_5403",
                    format!("Invalid value for parameter 'fields': {e}."),
                ));
            }
        }
    }
    if let Some(f) = &filter {
        app.policy.check_filter(f)?;
        let compiled = sluice_engine::cel::Filter::compile(
            f,
            &sluice_engine::cel::FilterOptions {
                event_type: Some(t),
                strict_ngrok: strict,
            },
        )
        .map_err(|e| {
            ApiError::bad(
                "ERR_NGROK_5404",
                format!(
                    "The filter of {ty} is invalid at line {}, column {}: {}\n{}",
                    e.line,
                    e.column,
                    e.message,
                    e.snippet()
                ),
            )
        })?;
        for w in compiled.warnings() {
            tracing::warn!("in the filter: {w}");
        }
    }
    Ok(SourceSpec {
        event_type: ty,
        filter,
        fields,
    })
}

fn parse_sources(v: Option<&Value>, app: &App) -> Result<Option<Vec<SourceSpec>>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let Value::Array(items) = v else {
        return Err(ApiError::bad(
            "ERR_NGROK_215",
            "Invalid value for parameter 'sources': expected a list.",
        ));
    };
    let mut out: Vec<SourceSpec> = Vec::with_capacity(items.len());
    for it in items {
        let s = parse_source(it, app)?;
        if out.iter().any(|o| o.event_type == s.event_type) {
            return Err(ApiError::bad(
                "ERR_NGROK_5127",
                format!("The source type '{}' appears more than once.", s.event_type),
            ));
        }
        out.push(s);
    }
    Ok(Some(out))
}

fn parse_destination_ids(
    v: Option<&Value>,
    acct: Option<&AccountState>,
) -> Result<Option<Vec<String>>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let Value::Array(items) = v else {
        return Err(ApiError::bad(
            "ERR_NGROK_215",
            "Invalid value for parameter 'destination_ids': expected a list of ids.",
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let id = it.as_str().ok_or_else(|| {
            ApiError::bad(
                "ERR_NGROK_215",
                "Invalid value for parameter 'destination_ids': expected a list of ids.",
            )
        })?;
        if !check_id(id, "ed", "an event destination")?
            || !acct.is_some_and(|a| a.destinations.contains_key(id))
        {
            return Err(no_destination(id));
        }
        if !out.iter().any(|x| x == id) {
            out.push(id.to_string());
        }
    }
    Ok(Some(out))
}

async fn create_subscription(
    axum::extract::State(app): Shared,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = app.prelude(&headers, &Method::POST, &body)?;
    let obj = body_object(&body)?;
    only_keys(
        &obj,
        &["metadata", "description", "sources", "destination_ids"],
        "EventSubscriptionCreate",
    )?;
    let description = string(&obj, "description")?.unwrap_or_default();
    let metadata = string(&obj, "metadata")?.unwrap_or_default();
    check_lengths(Some(&description), Some(&metadata))?;
    let sources = parse_sources(member(&obj, "sources"), &app)?.unwrap_or_default();
    let destination_ids = {
        let st = app.state.read().unwrap_or_else(|p| p.into_inner());
        parse_destination_ids(
            member(&obj, "destination_ids"),
            st.accounts.get(&ctx.account),
        )?
        .unwrap_or_default()
    };
    let s = Subscription {
        id: ids::new_id("esb"),
        account_id: ctx.account.clone(),
        created_at: crate::now(),
        description,
        metadata,
        destination_ids,
        sources,
    };
    let app2 = app.clone();
    let json = blocking(move || {
        let stored = s.clone();
        let committed = app2.commit(
            &ctx.account,
            |a| {
                app2.policy.check_subscriptions(a.subscriptions.len())?;
                app2.policy
                    .check_subscription_shape(s.destination_ids.len(), s.sources.len())?;
                // Re-check under the write lock: a destination may have gone.
                if let Some(missing) = s
                    .destination_ids
                    .iter()
                    .find(|d| !a.destinations.contains_key(*d))
                {
                    return Err(no_destination(missing));
                }
                a.subscriptions.insert(s.id.clone(), s.clone());
                Ok(())
            },
            move |st| {
                st.put_account(&stored.account_id, &stored.created_at)
                    .and_then(|_| st.put_subscription(&stored))
            },
        )?;
        let v = s.to_json(&ctx.base);
        committed.audit(&ctx, "event_subscription_created.v0", &v);
        Ok(v)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json)).into_response())
}

async fn list_subscriptions(
    axum::extract::State(app): Shared,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = app.prelude(&headers, &Method::GET, &body)?;
    let q = list_query(q.as_deref(), "esb")?;
    let uri = format!("{}/event_subscriptions", ctx.base);
    let st = app.state.read().unwrap_or_else(|p| p.into_inner());
    let empty = Default::default();
    let items = st
        .accounts
        .get(&ctx.account)
        .map_or(&empty, |a| &a.subscriptions);
    let (page, next) = page(
        items,
        &q,
        |s: &Subscription| (&s.id, &s.created_at, &s.description, &s.metadata),
        &uri,
    );
    // Written straight from the state, without a `Value` per subscription.
    let mut out = Vec::with_capacity(512 * page.len() + 256);
    out.extend_from_slice(b"{\"event_subscriptions\":[");
    for (i, s) in page.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(
            &mut out,
            &SubscriptionJson {
                sub: s,
                base: &ctx.base,
            },
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    out.extend_from_slice(b"],\"next_page_uri\":");
    serde_json::to_writer(&mut out, &next).map_err(|e| ApiError::internal(e.to_string()))?;
    out.extend_from_slice(b",\"uri\":");
    serde_json::to_writer(&mut out, &uri).map_err(|e| ApiError::internal(e.to_string()))?;
    out.push(b'}');
    Ok(json_response(out))
}

/// A 200 response of JSON already serialized.
fn json_response(body: Vec<u8>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn find_subscription(app: &App, ctx: &Ctx, id: &str) -> Result<Subscription, ApiError> {
    if !check_id(id, "esb", "an event subscription")? {
        return Err(no_subscription(id));
    }
    let st = app.state.read().unwrap_or_else(|p| p.into_inner());
    st.accounts
        .get(&ctx.account)
        .and_then(|a| a.subscriptions.get(id))
        .cloned()
        .ok_or_else(|| no_subscription(id))
}

async fn get_subscription(
    axum::extract::State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = app.prelude(&headers, &Method::GET, &body)?;
    let s = find_subscription(&app, &ctx, &id)?;
    let out = serde_json::to_vec(&SubscriptionJson {
        sub: &s,
        base: &ctx.base,
    })
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(json_response(out))
}

/// Stores a changed subscription and reports it. `old` is the version `s`
/// was computed from: if another request changed or deleted it meanwhile,
/// nothing is applied (404 or 409).
async fn save_subscription(
    app: Arc<App>,
    ctx: Ctx,
    old: Subscription,
    s: Subscription,
    check_destinations: bool,
) -> Result<Subscription, ApiError> {
    blocking(move || {
        let stored = s.clone();
        let committed = app.commit(
            &ctx.account,
            |a| {
                still_as_read(
                    a.subscriptions.get(&s.id),
                    &old,
                    || no_subscription(&s.id),
                    || changed_meanwhile("event subscription", &s.id),
                )?;
                app.policy
                    .check_subscription_shape(s.destination_ids.len(), s.sources.len())?;
                if check_destinations
                    && let Some(missing) = s
                        .destination_ids
                        .iter()
                        .find(|d| !a.destinations.contains_key(*d))
                {
                    return Err(no_destination(missing));
                }
                a.subscriptions.insert(s.id.clone(), s.clone());
                Ok(())
            },
            move |st| st.put_subscription(&stored),
        )?;
        committed.audit(&ctx, "event_subscription_updated.v0", &s.to_json(&ctx.base));
        Ok(s)
    })
    .await
}

async fn update_subscription(
    axum::extract::State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = app.prelude(&headers, &Method::PATCH, &body)?;
    let mut s = find_subscription(&app, &ctx, &id)?;
    let old = s.clone();
    let obj = body_object(&body)?;
    only_keys(
        &obj,
        &[
            "id",
            "metadata",
            "description",
            "sources",
            "destination_ids",
        ],
        "EventSubscriptionUpdate",
    )?;
    if let Some(v) = string(&obj, "description")? {
        s.description = v;
    }
    if let Some(v) = string(&obj, "metadata")? {
        s.metadata = v;
    }
    check_lengths(Some(&s.description), Some(&s.metadata))?;
    // Absent, null and [] leave the lists unchanged (the Python client always
    // sends "sources": []); a non-empty list replaces them.
    if let Some(list) = parse_sources(member(&obj, "sources"), &app)?.filter(|l| !l.is_empty()) {
        s.sources = list;
    }
    let ids = {
        let st = app.state.read().unwrap_or_else(|p| p.into_inner());
        parse_destination_ids(
            member(&obj, "destination_ids"),
            st.accounts.get(&ctx.account),
        )?
    };
    if let Some(list) = ids.filter(|l| !l.is_empty()) {
        s.destination_ids = list;
    }
    let base = ctx.base.clone();
    let s = save_subscription(app, ctx, old, s, true).await?;
    Ok(Json(s.to_json(&base)).into_response())
}

async fn delete_subscription(
    axum::extract::State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = app.prelude(&headers, &Method::DELETE, &body)?;
    let s = find_subscription(&app, &ctx, &id)?;
    let app2 = app.clone();
    blocking(move || {
        let sid = s.id.clone();
        let committed = app2.commit(
            &ctx.account,
            |a| {
                a.subscriptions
                    .remove(&s.id)
                    .ok_or_else(|| no_subscription(&s.id))?;
                Ok(())
            },
            move |st| st.delete_subscription(&sid),
        )?;
        committed.audit(&ctx, "event_subscription_deleted.v0", &s.to_json(&ctx.base));
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ----------------------------------------------------------------- sources

fn no_source(sub: &str, ty: &str) -> ApiError {
    ApiError::not_found(
        "ERR_NGROK_5125",
        format!("Source {ty} not found on Event Subscription {sub}."),
    )
}

async fn create_source(
    axum::extract::State(app): Shared,
    headers: HeaderMap,
    Path(sub): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = app.prelude(&headers, &Method::POST, &body)?;
    let mut s = find_subscription(&app, &ctx, &sub)?;
    let old = s.clone();
    let obj = body_object(&body)?;
    if let Some(other) = string(&obj, "subscription_id")?.filter(|x| !x.is_empty() && *x != sub) {
        return Err(ApiError::bad(
            "ERR_NGROK_215",
            format!("'subscription_id' {other} does not match the path ({sub})."),
        ));
    }
    let src = parse_source(&Value::Object(obj), &app)?;
    if s.sources.iter().any(|x| x.event_type == src.event_type) {
        return Err(ApiError::bad(
            "ERR_NGROK_5127",
            format!(
                "Event Subscription {sub} already has a source of type '{}'.",
                src.event_type
            ),
        ));
    }
    s.sources.push(src.clone());
    let base = ctx.base.clone();
    save_subscription(app, ctx, old, s, false).await?;
    Ok((StatusCode::CREATED, Json(source_json(&base, &sub, &src))).into_response())
}

async fn list_sources(
    axum::extract::State(app): Shared,
    headers: HeaderMap,
    Path(sub): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = app.prelude(&headers, &Method::GET, &body)?;
    let s = find_subscription(&app, &ctx, &sub)?;
    let list: Vec<Value> = s
        .sources
        .iter()
        .map(|x| source_json(&ctx.base, &sub, x))
        .collect();
    Ok(Json(json!({ "sources": list, "uri": format!("{}/event_subscriptions/{sub}/sources", ctx.base) })).into_response())
}

async fn get_source(
    axum::extract::State(app): Shared,
    headers: HeaderMap,
    Path((sub, ty)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = app.prelude(&headers, &Method::GET, &body)?;
    let s = find_subscription(&app, &ctx, &sub)?;
    let src = s
        .sources
        .iter()
        .find(|x| x.event_type == ty)
        .ok_or_else(|| no_source(&sub, &ty))?;
    Ok(Json(source_json(&ctx.base, &sub, src)).into_response())
}

async fn update_source(
    axum::extract::State(app): Shared,
    headers: HeaderMap,
    Path((sub, ty)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = app.prelude(&headers, &Method::PATCH, &body)?;
    let mut s = find_subscription(&app, &ctx, &sub)?;
    let old = s.clone();
    let idx = s
        .sources
        .iter()
        .position(|x| x.event_type == ty)
        .ok_or_else(|| no_source(&sub, &ty))?;
    let obj = body_object(&body)?;
    only_keys(
        &obj,
        &["type", "filter", "fields", "subscription_id"],
        "EventSourceUpdate",
    )?;
    if let Some(t) = string(&obj, "type")?.filter(|t| !t.is_empty() && *t != ty) {
        return Err(ApiError::bad(
            "ERR_NGROK_215",
            format!("The type of a source cannot change ({ty} to {t}); delete it and add another."),
        ));
    }
    // Only what is given changes.
    let mut merged = Map::new();
    merged.insert("type".into(), Value::String(ty.clone()));
    let cur = &s.sources[idx];
    if obj.contains_key("filter") {
        merged.insert("filter".into(), obj["filter"].clone());
    } else if let Some(f) = &cur.filter {
        merged.insert("filter".into(), Value::String(f.clone()));
    }
    if obj.contains_key("fields") {
        merged.insert("fields".into(), obj["fields"].clone());
    } else if let Some(f) = &cur.fields {
        merged.insert("fields".into(), json!(f));
    }
    let src = parse_source(&Value::Object(merged), &app)?;
    let changed = src != s.sources[idx];
    s.sources[idx] = src.clone();
    let base = ctx.base.clone();
    if changed {
        save_subscription(app, ctx, old, s, false).await?;
    }
    Ok(Json(source_json(&base, &sub, &src)).into_response())
}

async fn delete_source(
    axum::extract::State(app): Shared,
    headers: HeaderMap,
    Path((sub, ty)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctx = app.prelude(&headers, &Method::DELETE, &body)?;
    let mut s = find_subscription(&app, &ctx, &sub)?;
    let old = s.clone();
    let idx = s
        .sources
        .iter()
        .position(|x| x.event_type == ty)
        .ok_or_else(|| no_source(&sub, &ty))?;
    s.sources.remove(idx);
    save_subscription(app, ctx, old, s, false).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ------------------------------------------------------------------ ingest

async fn ingest(
    axum::extract::State(app): Shared,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    // The token first: without it not one byte of the body is read.
    let token = bearer(&headers)?;
    if !constant_time_eq(
        sha256_hex(token).as_bytes(),
        app.ingest_token_sha256.as_bytes(),
    ) {
        return Err(ApiError::new(
            401,
            "ERR_NGROK_203",
            "The ingest token is not valid.",
        ));
    }
    let body = axum::body::to_bytes(req.into_body(), INGEST_MAX_BYTES)
        .await
        .map_err(|e| {
            ApiError::new(
                413,
                "ERR_NGROK_413",
                format!("The body is over {INGEST_MAX_BYTES} bytes or was cut off: {e}."),
            )
        })?;
    // `ack=durable`: answer once every record is safe (fsynced to a disk
    // buffer, delivered or dead-lettered), so the caller may forget the events.
    let mut durable = false;
    for (k, v) in parse_query(q.as_deref(), &["ack"])? {
        if k == "ack" {
            durable = match v.as_str() {
                "" | "processed" => false,
                "durable" => true,
                other => {
                    return Err(ApiError::bad(
                        "ERR_NGROK_215",
                        format!(
                            "Invalid value for parameter 'ack': '{other}' (use 'processed' or 'durable')."
                        ),
                    ));
                }
            };
        }
    }
    let gzip = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let body = if gzip {
        use std::io::Read;
        let mut out = Vec::with_capacity(body.len() * 4);
        let limit = (INGEST_MAX_BYTES + 1) as u64;
        // Every member: a body of concatenated gzip members is one stream.
        flate2::read::MultiGzDecoder::new(&body[..])
            .take(limit)
            .read_to_end(&mut out)
            .map_err(|e| {
                ApiError::bad(
                    "ERR_NGROK_213",
                    format!("The gzip body cannot be decompressed: {e}."),
                )
            })?;
        if out.len() > INGEST_MAX_BYTES {
            return Err(ApiError::new(
                413,
                "ERR_NGROK_413",
                format!("The decompressed body is over {INGEST_MAX_BYTES} bytes."),
            ));
        }
        Bytes::from(out)
    } else {
        body
    };
    if app.engine.pressure() > app.ingest_pressure_limit {
        let mut e = ApiError::new(
            429,
            "ERR_NGROK_226",
            "The engine is busy (its queues are full); retry after the delay in Retry-After.",
        );
        e.retry_after = Some(1);
        return Err(e);
    }
    // Lines of accounts whose destinations are full wait (back-pressure
    // aimed at them); every other account's lines go in.
    let full = app.full_accounts.get(|| app.engine.full_accounts());
    let split = crate::back_pressure::hold_back(&body, &full);
    let body = match &split {
        Some(s) if s.kept.is_empty() => {
            let mut e = ApiError::new(
                429,
                "ERR_NGROK_226",
                format!(
                    "Every event of this request belongs to an account whose destination ({}) is full; retry after the delay in Retry-After.",
                    s.refused.first().map_or("", |(_, d)| &**d)
                ),
            );
            e.retry_after = Some(1);
            return Err(e);
        }
        Some(s) => s.kept.clone(),
        None => body,
    };
    let report = app
        .engine
        .publish_ndjson_async(body.clone(), durable)
        .await
        .ok_or_else(|| ApiError::internal("the engine stopped before processing the events"))?;
    let queued = report.accepted as usize + report.rejected.len();
    // Offsets to line numbers (1-based), scanning once.
    let mut errors = Vec::new();
    let (mut line, mut pos) = (1usize, 0usize);
    for r in report.rejected.iter().take(100) {
        let off = r.offset as usize;
        line += body[pos..off.min(body.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        pos = off.min(body.len());
        let sent_line = split.as_ref().map_or(line, |s| s.line_at(off));
        errors.push(json!({ "line": sent_line, "reason": r.reason.as_str(), "detail": r.detail }));
    }
    let held: &[(usize, std::sync::Arc<str>)] = split.as_ref().map_or(&[], |s| &s.refused);
    for (line, dest) in held.iter().take(100) {
        errors.push(json!({
            "line": line,
            "reason": "back_pressure",
            "detail": format!("destination {dest} of this event's account is full; send this line again after the delay in Retry-After"),
            "retryable": true,
        }));
    }
    let mut out = json!({
        "events": queued + held.len(),
        "accepted": report.accepted,
        "rejected": report.rejected.len() + held.len(),
        "back_pressure": held.len(),
        "errors": errors,
    });
    if durable {
        out["durable"] = json!(true);
        out["dropped"] = json!(report.dropped);
    }
    let mut resp = Json(out).into_response();
    if !held.is_empty() {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
    }
    Ok(resp)
}

/// Largest ingest body, in bytes (after decompression).
pub const INGEST_MAX_BYTES: usize = 64 << 20;

// -------------------------------------------------------- service endpoints

async fn metrics(axum::extract::State(app): Shared) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        app.engine.metrics().render_prometheus(),
    )
        .into_response()
}

/// The public health check: up or down, nothing about any tenant (the
/// operator's listener has the details).
async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// The operator's health check: which destinations are unhealthy.
async fn operator_healthz(axum::extract::State(app): Shared) -> Response {
    let destinations = app.engine.metrics().snapshot().destinations;
    let unhealthy: Vec<&String> = destinations
        .iter()
        .filter(|(_, d)| d.unhealthy)
        .map(|(id, _)| id)
        .collect();
    // Destinations whose plugin instance is not created yet, with why.
    let not_started: Vec<Value> = destinations
        .iter()
        .filter_map(|(id, d)| {
            d.start_error
                .as_ref()
                .map(|(why, since)| json!({ "id": id, "error": why, "for_s": since.as_secs() }))
        })
        .collect();
    Json(json!({ "status": "ok", "unhealthy_destinations": unhealthy, "not_started": not_started }))
        .into_response()
}

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
    let mut resp = if preflight {
        StatusCode::NO_CONTENT.into_response()
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

/// The operator's listener (`--metrics-addr`): `/metrics` (every tenant's
/// destination and subscription ids are label values) and a `/healthz` that
/// names unhealthy destinations. Never on the public listener.
pub fn operator_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(operator_healthz))
        .fallback(not_found)
        .with_state(app)
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
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .layer(axum::middleware::from_fn_with_state(app.clone(), edge))
        .with_state(app)
}
