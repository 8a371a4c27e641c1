//! The strict log-intake stand-ins, for the tests of the `datadog` and
//! `azure_logs_ingestion` sinks: real HTTP/1.1 servers on loopback that
//! enforce what each vendor documents and can be told to misbehave.
//!
//! - Datadog Logs intake v2: `POST /api/v2/logs`, `DD-API-KEY` (403
//!   otherwise), `Content-Type: application/json`, `Content-Encoding: gzip`,
//!   a JSON array of at most 1,000 entries, 5 MB uncompressed (413
//!   otherwise), 1 MB per entry, `ddsource`/`service`/`ddtags` as configured,
//!   the entry's date in `timestamp` (ms since the epoch; Sluice promises it
//!   is the event's `event_timestamp`). Like Datadog, it answers 202 to an
//!   entry dated more than 18 hours in the past or 2 hours in the future and
//!   drops it (`Intake::dropped`).
//! - Azure: the Microsoft identity platform token endpoint
//!   (`POST /<tenant>/oauth2/v2.0/token`, client credentials, the Logs
//!   Ingestion scope) issuing tokens of a set lifetime, and the Logs
//!   Ingestion API (`POST /dataCollectionRules/<dcr>/streams/<stream>?api-version=2023-01-01`,
//!   a valid unexpired bearer token or 401, gzip, a JSON array of at most
//!   1 MB, `TimeGenerated` on every record, `InvalidStream` for a stream
//!   that is not `Custom-...`).

use crate::protocol::{
    AZURE_API_VERSION, AZURE_MAX_BODY, DATADOG_LOGS_PATH, DATADOG_MAX_BODY, DATADOG_MAX_ENTRIES,
    DATADOG_MAX_ENTRY,
};
use crate::wire::{HttpRequest, gunzip, serve_http, url_decode_pairs};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which vendor a server plays.
#[derive(Clone, Debug)]
pub enum Vendor {
    /// Datadog, with the API key, service and tags it expects.
    Datadog {
        /// Expected DD-API-KEY.
        api_key: String,
        /// Expected `service`.
        service: String,
        /// Expected `ddtags`.
        ddtags: String,
    },
    /// Azure, with the app registration and DCR it knows.
    Azure {
        /// Tenant.
        tenant: String,
        /// Client id.
        client_id: String,
        /// Client secret.
        secret: String,
        /// DCR immutable id.
        dcr: String,
    },
}

/// One ingestion request as received.
#[derive(Clone, Debug)]
pub struct Received {
    /// When.
    pub at: Instant,
    /// The entries.
    pub entries: Vec<Value>,
    /// The status answered.
    pub status: u16,
    /// Compressed and uncompressed body sizes.
    pub sizes: (usize, usize),
}

struct State {
    vendor: Vendor,
    script: Mutex<VecDeque<(u16, Option<String>)>>,
    received: Mutex<Vec<Received>>,
    accepted: Mutex<Vec<Value>>,
    dropped: Mutex<Vec<Value>>,
    violations: Mutex<Vec<String>>,
    tokens: Mutex<HashMap<String, Instant>>,
    token_life: Mutex<u64>,
    token_requests: AtomicU64,
    token_failures: AtomicU64,
    stop: AtomicBool,
}

/// A vendor intake. Stops when dropped.
pub struct Intake {
    addr: SocketAddr,
    state: Arc<State>,
}

impl Intake {
    /// Starts a server playing `vendor` on a free loopback port.
    pub fn start(vendor: Vendor) -> Intake {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let state = Arc::new(State {
            vendor,
            script: Mutex::default(),
            received: Mutex::default(),
            accepted: Mutex::default(),
            dropped: Mutex::default(),
            violations: Mutex::default(),
            tokens: Mutex::default(),
            token_life: Mutex::new(3600),
            token_requests: AtomicU64::new(0),
            token_failures: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let (a, b) = (state.clone(), state.clone());
        serve_http(
            l,
            move || a.stop.load(Ordering::SeqCst),
            move |req| {
                let (status, extra, body) = handle(&b, req);
                (
                    status,
                    format!("content-type: application/json\r\n{extra}"),
                    body,
                )
            },
        );
        Intake { addr, state }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers the next valid ingestion request with this status (and
    /// `Retry-After`) instead of success; queued in order.
    pub fn then(&self, status: u16, retry_after: Option<&str>) {
        self.state
            .script
            .lock()
            .unwrap()
            .push_back((status, retry_after.map(str::to_string)));
    }

    /// Lifetime of the tokens issued from now on, in seconds.
    pub fn set_token_lifetime(&self, secs: u64) {
        *self.state.token_life.lock().unwrap() = secs;
    }

    /// Expires every token issued so far (the next request with one gets a 401).
    pub fn expire_tokens(&self) {
        for exp in self.state.tokens.lock().unwrap().values_mut() {
            *exp = Instant::now();
        }
    }

    /// Answers the next `n` token requests with 503 (the authority is down).
    pub fn fail_token_requests(&self, n: u64) {
        self.state.token_failures.store(n, Ordering::SeqCst);
    }

    /// Token requests so far.
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Ingestion requests so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Entries accepted so far.
    pub fn accepted(&self) -> Vec<Value> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// Entries answered with success but dropped, as Datadog drops those
    /// dated outside its window.
    pub fn dropped(&self) -> Vec<Value> {
        self.state.dropped.lock().unwrap().clone()
    }

    /// What broke the vendor's protocol.
    pub fn violations(&self) -> Vec<String> {
        self.state.violations.lock().unwrap().clone()
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    url_decode_pairs(&String::from_utf8_lossy(body))
        .into_iter()
        .collect()
}

/// Gunzips and parses a JSON-array body; the error says what is wrong.
fn entries(req: &HttpRequest) -> Result<(Vec<Value>, usize), String> {
    if req.header("content-type").as_deref() != Some("application/json") {
        return Err(format!("content-type {:?}", req.header("content-type")));
    }
    if req.header("content-encoding").as_deref() != Some("gzip") {
        return Err("not gzipped".into());
    }
    let raw = gunzip(&req.body)?;
    let v: Vec<Value> =
        serde_json::from_slice(&raw).map_err(|e| format!("body is not a JSON array: {e}"))?;
    Ok((v, raw.len()))
}

fn handle(st: &State, req: &HttpRequest) -> (u16, String, String) {
    let violation = |what: String| {
        st.violations.lock().unwrap().push(what.clone());
        (400, String::new(), json!({"error": what}).to_string())
    };
    let path = req.line.split_whitespace().nth(1).unwrap_or("").to_string();
    if !req.line.starts_with("POST ") {
        return violation(format!("request line {}", req.line.trim()));
    }
    match &st.vendor {
        Vendor::Datadog {
            api_key,
            service,
            ddtags,
        } => {
            if path != DATADOG_LOGS_PATH {
                return violation(format!("path {path}"));
            }
            if req.header("dd-api-key").as_deref() != Some(api_key.as_str()) {
                let body = json!({"errors": [{"status": "403", "title": "Forbidden", "detail": "Forbidden"}]});
                record(st, req, vec![], 0, 403);
                return (403, String::new(), body.to_string());
            }
            let (entries, raw) = match entries(req) {
                Ok(e) => e,
                Err(e) => return violation(e),
            };
            if raw > DATADOG_MAX_BODY {
                record(st, req, vec![], raw, 413);
                return (
                    413,
                    String::new(),
                    json!({"errors":[{"status":"413","title":"Request Entity Too Large"}]})
                        .to_string(),
                );
            }
            if entries.is_empty() || entries.len() > DATADOG_MAX_ENTRIES {
                return violation(format!("{} entries (1 to 1,000)", entries.len()));
            }
            for e in &entries {
                if e.to_string().len() > DATADOG_MAX_ENTRY {
                    return violation("an entry over 1 MB".into());
                }
                if e["ddsource"] != "ngrok"
                    || e["service"] != service.as_str()
                    || e["ddtags"] != ddtags.as_str()
                {
                    return violation(format!(
                        "entry attributes {} {} {}",
                        e["ddsource"], e["service"], e["ddtags"]
                    ));
                }
                // Datadog would date an entry without one of its date
                // attributes when received; Sluice promises `timestamp`, the
                // event's own time whenever the record has one (the
                // conformance kit's synthetic records do not).
                let et = e["event_timestamp"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp_millis());
                let ts = e["timestamp"].as_i64();
                if ts.is_none() || (!e["event_timestamp"].is_null() && ts != et) {
                    return violation(format!(
                        "timestamp {} for event_timestamp {}",
                        e["timestamp"], e["event_timestamp"]
                    ));
                }
            }
            // "Log events can be submitted up to 18 hours in the past and
            // two hours in the future": the others are answered 202 all the
            // same, and never show up.
            let now = chrono::Utc::now().timestamp_millis();
            let hour = 3_600_000;
            let in_window = |e: &Value| {
                e["timestamp"]
                    .as_i64()
                    .is_some_and(|t| t >= now - 18 * hour && t <= now + 2 * hour)
            };
            scripted_or(st, req, entries, raw, 202, &in_window)
        }
        Vendor::Azure {
            tenant,
            client_id,
            secret,
            dcr,
        } => {
            if path == format!("/{tenant}/oauth2/v2.0/token") {
                st.token_requests.fetch_add(1, Ordering::SeqCst);
                if st
                    .token_failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let body = json!({"error": "temporarily_unavailable", "error_description": "AADSTS90033: A transient error has occurred."});
                    return (503, String::new(), body.to_string());
                }
                if req.header("content-type").as_deref()
                    != Some("application/x-www-form-urlencoded")
                {
                    return violation("token request is not a form".into());
                }
                let f = form(&req.body);
                let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
                if get("grant_type") != "client_credentials"
                    || get("scope") != "https://monitor.azure.com//.default"
                {
                    return violation(format!("token form {f:?}"));
                }
                if get("client_id") != client_id || get("client_secret") != secret {
                    let body = json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."});
                    return (401, String::new(), body.to_string());
                }
                let n = st.token_requests.load(Ordering::SeqCst);
                let life = *st.token_life.lock().unwrap();
                let tok = format!("tok-{n}");
                st.tokens
                    .lock()
                    .unwrap()
                    .insert(tok.clone(), Instant::now() + Duration::from_secs(life));
                let body = json!({"token_type": "Bearer", "expires_in": life, "ext_expires_in": life, "access_token": tok});
                return (200, String::new(), body.to_string());
            }
            let Some((p, query)) = path.split_once('?') else {
                return violation(format!("no api-version: {path}"));
            };
            if query != AZURE_API_VERSION {
                return violation(format!("query {query}"));
            }
            let parts: Vec<&str> = p.split('/').collect();
            if parts.len() != 5 || parts[1] != "dataCollectionRules" || parts[3] != "streams" {
                return violation(format!("path {p}"));
            }
            let valid = req
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer ").map(str::to_string))
                .and_then(|t| st.tokens.lock().unwrap().get(&t).copied())
                .is_some_and(|exp| Instant::now() < exp);
            if !valid {
                record(st, req, vec![], 0, 401);
                let body = json!({"error": {"code": "InvalidAuthenticationToken", "message": "The access token is invalid or has expired."}});
                return (401, String::new(), body.to_string());
            }
            if parts[2] != dcr {
                return (404, String::new(), json!({"error": {"code": "NotFound", "message": "Data collection rule not found"}}).to_string());
            }
            if !parts[4].starts_with("Custom-") {
                let body = json!({"error": {"code": "InvalidStream", "message": format!("Stream ({}) cannot be found in Data Collection Rule.", parts[4])}});
                return (400, String::new(), body.to_string());
            }
            let (entries, raw) = match entries(req) {
                Ok(e) => e,
                Err(e) => return violation(e),
            };
            if raw > AZURE_MAX_BODY {
                record(st, req, vec![], raw, 413);
                return (413, String::new(), json!({"error": {"code": "ContentLengthLimitExceeded", "message": "Maximum allowed content length: 1048576 bytes"}}).to_string());
            }
            for e in &entries {
                let tg = e["TimeGenerated"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
                let et = e["event_timestamp"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
                // Azure wants a valid TimeGenerated; Sluice promises it is
                // the event's own time whenever the record has one (the
                // conformance kit's synthetic records do not).
                if tg.is_none() || (!e["event_timestamp"].is_null() && tg != et) {
                    return violation(format!(
                        "TimeGenerated {} for event_timestamp {}",
                        e["TimeGenerated"], e["event_timestamp"]
                    ));
                }
            }
            scripted_or(st, req, entries, raw, 204, &|_: &Value| true)
        }
    }
}

fn record(st: &State, req: &HttpRequest, entries: Vec<Value>, raw: usize, status: u16) {
    st.received.lock().unwrap().push(Received {
        at: Instant::now(),
        entries,
        status,
        sizes: (req.body.len(), raw),
    });
}

fn scripted_or(
    st: &State,
    req: &HttpRequest,
    entries: Vec<Value>,
    raw: usize,
    ok: u16,
    kept: &dyn Fn(&Value) -> bool,
) -> (u16, String, String) {
    let next = st.script.lock().unwrap().pop_front();
    let (status, extra) = match next {
        Some((s, after)) => (
            s,
            after
                .map(|a| format!("retry-after: {a}\r\n"))
                .unwrap_or_default(),
        ),
        None => (ok, String::new()),
    };
    if status == ok {
        let mut accepted = st.accepted.lock().unwrap();
        let mut dropped = st.dropped.lock().unwrap();
        for e in &entries {
            if kept(e) {
                accepted.push(e.clone());
            } else {
                dropped.push(e.clone());
            }
        }
    }
    record(st, req, entries, raw, status);
    // (write_response leaves out the body of a 204.)
    let body = if status == ok {
        "{}".to_string()
    } else {
        json!({"error": format!("scripted {status}")}).to_string()
    };
    (status, extra, body)
}
