//! Local servers that stand in for a destination's vendor in benchmarks,
//! answering success as fast as they can, so a scenario measures Sluice and
//! the sink plugin rather than a remote service.
//!
//! A destination's `config` names one with a placeholder string, replaced by
//! the server's URL when the scenario runs:
//!
//! | placeholder | server |
//! | --- | --- |
//! | `$HTTP_SINK_URL` | an HTTP endpoint taking NDJSON or JSON-array POSTs (gzip or not), answering 200 |
//! | `$AWS_SINK_URL` | an AWS JSON 1.1 endpoint (Kinesis PutRecords, Firehose PutRecordBatch, CloudWatch Logs PutLogEvents and CreateLogStream), answering success for every record |
//! | `$DATADOG_SINK_URL` | the Datadog logs intake v2 (`/api/v2/logs`: `DD-API-KEY`, gzipped JSON array of at most 5 MB), answering 202 |
//! | `$HANG_SINK_URL` | an endpoint that accepts connections and never answers (a destination down and blocking: every call waits for its timeout) |
//! | `$AZURE_SINK_URL` | Azure Monitor Logs Ingestion (`/dataCollectionRules/{dcr}/streams/{stream}`, bearer token, gzipped JSON array of at most 1 MB) and its token authority (`/{tenant}/oauth2/v2.0/token`), answering 204 |
//!
//! Each server counts the records, requests, connections and bytes it saw
//! (as sent and after gunzip: the compression ratio).

use crate::scenario::Scenario;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What one local sink server saw.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Records received (counted in the bodies).
    pub records: AtomicU64,
    /// Requests carrying records.
    pub requests: AtomicU64,
    /// Request body bytes as sent (compressed when gzipped).
    pub wire_bytes: AtomicU64,
    /// Request body bytes after decompression.
    pub body_bytes: AtomicU64,
    /// The client connections (peer addresses) seen.
    pub connections: Mutex<HashSet<SocketAddr>>,
}

impl ServerStats {
    fn request(&self, records: usize, wire: usize, body: usize) {
        self.records.fetch_add(records as u64, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.wire_bytes.fetch_add(wire as u64, Ordering::Relaxed);
        self.body_bytes.fetch_add(body as u64, Ordering::Relaxed);
    }

    /// What the server saw, for the benchmark record.
    pub fn report(&self, name: &str) -> crate::report::SinkServerReport {
        let wire = self.wire_bytes.load(Ordering::Relaxed);
        let body = self.body_bytes.load(Ordering::Relaxed);
        crate::report::SinkServerReport {
            server: name.to_string(),
            records: self.records.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            connections: self
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len() as u64,
            wire_bytes: wire,
            body_bytes: body,
            compression_ratio: if wire > 0 && wire != body {
                body as f64 / wire as f64
            } else {
                1.0
            },
        }
    }
}

/// The servers a scenario started; they stop when this is dropped.
#[derive(Default)]
pub struct SinkServers {
    /// Each server started, by name (`HTTP`, `AWS`, `Datadog`, `Azure`).
    pub servers: Vec<(&'static str, Arc<ServerStats>)>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// `$HANG_SINK_URL`: bound and listening, never accepting, so that
    /// connections wait in its backlog (or for their handshake) unanswered.
    hang: Option<std::net::TcpListener>,
}

impl Drop for SinkServers {
    fn drop(&mut self) {
        for s in self.stop.drain(..) {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn uses(s: &Scenario, placeholder: &str) -> bool {
    s.destinations
        .iter()
        .any(|d| d.config.to_string().contains(placeholder))
}

fn replace(v: &mut serde_json::Value, placeholder: &str, with: &str) {
    match v {
        serde_json::Value::String(s) if s.contains(placeholder) => {
            *s = s.replace(placeholder, with);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| replace(x, placeholder, with)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| replace(x, placeholder, with)),
        _ => {}
    }
}

/// Starts the servers the scenario's destinations name and puts their URLs
/// in place of the placeholders.
pub fn start_for(s: &mut Scenario) -> Result<SinkServers, String> {
    let mut servers = SinkServers::default();
    type Start = fn(&mut SinkServers) -> Result<String, String>;
    let all: [(&str, Start); 5] = [
        ("$HTTP_SINK_URL", SinkServers::start_http),
        ("$HANG_SINK_URL", SinkServers::start_hang),
        ("$AWS_SINK_URL", SinkServers::start_aws),
        ("$DATADOG_SINK_URL", SinkServers::start_datadog),
        ("$AZURE_SINK_URL", SinkServers::start_azure),
    ];
    for (placeholder, start) in all {
        if uses(s, placeholder) {
            let url = start(&mut servers)?;
            for d in &mut s.destinations {
                replace(&mut d.config, placeholder, &url);
            }
        }
    }
    Ok(servers)
}

/// Gunzips `body` when `headers` say it is gzipped; `None` if it is not
/// valid gzip.
fn decoded(headers: &axum::http::HeaderMap, body: bytes::Bytes) -> Option<bytes::Bytes> {
    let gz = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    if !gz {
        return Some(body);
    }
    let mut out = Vec::with_capacity(body.len() * 8);
    use std::io::Read;
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut out)
        .ok()?;
    Some(bytes::Bytes::from(out))
}

/// The success answer to an AWS JSON 1.1 call of `target` carrying `n` records.
fn aws_success(target: &[u8], n: usize) -> String {
    let each = |item: &str| {
        let mut s = String::with_capacity(n * (item.len() + 1));
        for i in 0..n {
            if i > 0 {
                s.push(',');
            }
            s.push_str(item);
        }
        s
    };
    match target {
        b"Kinesis_20131202.PutRecords" => format!(
            r#"{{"FailedRecordCount":0,"Records":[{}]}}"#,
            each(
                r#"{"SequenceNumber":"49590338271490256608559692538361571095921575989136588898","ShardId":"shardId-000000000000"}"#
            )
        ),
        b"Firehose_20150804.PutRecordBatch" => format!(
            r#"{{"FailedPutCount":0,"Encrypted":false,"RequestResponses":[{}]}}"#,
            each(r#"{"RecordId":"49590338271490256608559692538361571095921575989136588898"}"#)
        ),
        b"Kinesis_20131202.PutRecord" => {
            r#"{"SequenceNumber":"1","ShardId":"shardId-000000000000"}"#.to_string()
        }
        b"Firehose_20150804.PutRecord" => r#"{"RecordId":"1","Encrypted":false}"#.to_string(),
        _ => "{}".to_string(),
    }
}

/// Takes a (gzipped) JSON-array body of at most `max` bytes once
/// decompressed, counting one record per `marker` (a key every record
/// carries once): 413 when too large, 400 when not gzip or not an array.
fn take_array(
    st: &ServerStats,
    headers: &axum::http::HeaderMap,
    body: bytes::Bytes,
    max: usize,
    marker: &[u8],
) -> Result<(), axum::http::StatusCode> {
    use axum::http::StatusCode;
    let wire = body.len();
    let json = decoded(headers, body).ok_or(StatusCode::BAD_REQUEST)?;
    if json.len() > max {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    if json.first() != Some(&b'[') || json.last() != Some(&b']') {
        return Err(StatusCode::BAD_REQUEST);
    }
    let n = memchr::memmem::find_iter(&json, marker).count();
    st.request(n, wire, json.len());
    Ok(())
}

impl SinkServers {
    /// Starts only the HTTP sink server; returns it and its URL.
    pub fn http() -> Result<(SinkServers, String), String> {
        let mut s = SinkServers::default();
        let url = s.start_http()?;
        Ok((s, url))
    }

    fn stats(&mut self, name: &'static str) -> Arc<ServerStats> {
        let st = Arc::new(ServerStats::default());
        self.servers.push((name, st.clone()));
        st
    }

    fn start_aws(&mut self) -> Result<String, String> {
        let st = self.stats("AWS");
        let st2 = st.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
                let st = st2.clone();
                async move {
                    let target = headers
                        .get("x-amz-target")
                        .map(|v| v.as_bytes().to_vec())
                        .unwrap_or_default();
                    // One record per `"Data"` (Kinesis, Firehose) or `"timestamp"` (Logs).
                    let key: &[u8] = if target.starts_with(b"Logs_") {
                        b"\"timestamp\""
                    } else {
                        b"\"Data\""
                    };
                    let n = memchr::memmem::find_iter(&body, key).count();
                    if target.ends_with(b".PutRecords")
                        || target.ends_with(b".PutRecordBatch")
                        || target.ends_with(b".PutLogEvents")
                    {
                        st.request(n, body.len(), body.len());
                    }
                    (
                        [("content-type", "application/x-amz-json-1.1")],
                        aws_success(&target, n),
                    )
                }
            }),
        );
        let addr = self.serve("sluice-sink-aws", app, st)?;
        Ok(format!("http://{addr}"))
    }

    /// The Datadog logs intake v2: `POST /api/v2/logs` with `DD-API-KEY`, a
    /// gzipped JSON array of at most 5 MB; answers 202.
    fn start_datadog(&mut self) -> Result<String, String> {
        let st = self.stats("Datadog");
        let st2 = st.clone();
        let app = axum::Router::new().route(
            "/api/v2/logs",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
                let st = st2.clone();
                async move {
                    use axum::http::StatusCode;
                    if headers.get("dd-api-key").is_none() {
                        return (StatusCode::FORBIDDEN, "{\"errors\":[\"Forbidden\"]}");
                    }
                    // One entry per spliced `ddsource`.
                    match take_array(&st, &headers, body, 5_000_000, b"\"ddsource\":\"ngrok\"") {
                        Ok(()) => (StatusCode::ACCEPTED, "{}"),
                        Err(status) => (status, "{\"errors\":[\"refused\"]}"),
                    }
                }
            }),
        );
        let addr = self.serve("sluice-sink-dd", app, st)?;
        Ok(format!("http://{addr}/api/v2/logs"))
    }

    /// Azure Monitor Logs Ingestion and its token authority on one port:
    /// `POST /{tenant}/oauth2/v2.0/token` answers a bearer token,
    /// `POST /dataCollectionRules/{dcr}/streams/{stream}` takes a gzipped
    /// JSON array of at most 1 MB with that token and answers 204.
    fn start_azure(&mut self) -> Result<String, String> {
        const TOKEN: &str = "sluice-bench-token";
        let st = self.stats("Azure");
        let st2 = st.clone();
        let app = axum::Router::new()
            .route(
                "/{tenant}/oauth2/v2.0/token",
                axum::routing::post(|| async {
                    (
                        [("content-type", "application/json")],
                        format!(
                            r#"{{"token_type":"Bearer","expires_in":3599,"access_token":"{TOKEN}"}}"#
                        ),
                    )
                }),
            )
            .route(
                "/dataCollectionRules/{dcr}/streams/{stream}",
                axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
                    let st = st2.clone();
                    async move {
                        use axum::http::StatusCode;
                        let bearer = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("Bearer "));
                        if bearer != Some(TOKEN) {
                            return StatusCode::UNAUTHORIZED;
                        }
                        match take_array(&st, &headers, body, 1_048_576, b"\"TimeGenerated\":") {
                            Ok(()) => StatusCode::NO_CONTENT,
                            Err(status) => status,
                        }
                    }
                }),
            );
        let addr = self.serve("sluice-sink-az", app, st)?;
        Ok(format!("http://{addr}"))
    }

    fn start_hang(&mut self) -> Result<String, String> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        self.hang = Some(l);
        Ok(format!("http://{addr}/ingest"))
    }

    fn start_http(&mut self) -> Result<String, String> {
        let st = self.stats("HTTP");
        let st2 = st.clone();
        let app = axum::Router::new().route(
            "/ingest",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
                let st = st2.clone();
                async move {
                    let wire = body.len();
                    let Some(body) = decoded(&headers, body) else {
                        return axum::http::StatusCode::BAD_REQUEST;
                    };
                    let n = if body.first() == Some(&b'[') {
                        match serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&body) {
                            Ok(v) => v.len(),
                            Err(_) => return axum::http::StatusCode::BAD_REQUEST,
                        }
                    } else {
                        memchr::memchr_iter(b'\n', &body).count()
                    };
                    st.request(n, wire, body.len());
                    axum::http::StatusCode::OK
                }
            }),
        );
        let addr = self.serve("sluice-sink-http", app, st)?;
        Ok(format!("http://{addr}/ingest"))
    }

    /// Serves `app` on a free loopback port from a thread of its own (named
    /// `name`, at most 15 bytes so it is whole in `/proc`) until the servers
    /// are dropped, counting the connections in `st`.
    fn serve(
        &mut self,
        name: &str,
        app: axum::Router,
        st: Arc<ServerStats>,
    ) -> Result<SocketAddr, String> {
        // Vendors take bodies far over axum's 2 MB default (Datadog: 5 MB).
        let app = app.layer(axum::extract::DefaultBodyLimit::disable());
        let app = app.layer(axum::middleware::from_fn(
            move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
                  req: axum::extract::Request,
                  next: axum::middleware::Next| {
                st.connections
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(peer);
                next.run(req)
            },
        ));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let t = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(l) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let make = app.into_make_service_with_connect_info::<SocketAddr>();
                    let _ = axum::serve(l, make)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                });
            })
            .map_err(|e| e.to_string())?;
        self.stop.push(tx);
        self.threads.push(t);
        Ok(addr)
    }
}
