//! The fast stand-ins, for benchmarks: local servers that play a
//! destination's vendor answering success as fast as they can, so a
//! scenario measures Sluice and the sink plugin rather than a remote
//! service. They check what is cheap to check (paths, credentials, body
//! size limits, gzip, array shape) and count records by a key each record
//! carries once instead of parsing every body.
//!
//! | [`Kind`] | placeholder | server |
//! | --- | --- | --- |
//! | `Http` | `$HTTP_SINK_URL` | an HTTP endpoint taking NDJSON or JSON-array POSTs (gzip or not), answering 200 |
//! | `Aws` | `$AWS_SINK_URL` | an AWS JSON 1.1 endpoint (Kinesis PutRecords, Firehose PutRecordBatch, CloudWatch Logs PutLogEvents and CreateLogStream), answering success for every record |
//! | `Datadog` | `$DATADOG_SINK_URL` | the Datadog logs intake v2 (`/api/v2/logs`: `DD-API-KEY`, gzipped JSON array of at most 5 MB), answering 202 |
//! | `Hang` | `$HANG_SINK_URL` | an endpoint that accepts connections and never answers (a destination down and blocking: every call waits for its timeout) |
//! | `Azure` | `$AZURE_SINK_URL` | Azure Monitor Logs Ingestion (`/dataCollectionRules/{dcr}/streams/{stream}`, bearer token, gzipped JSON array of at most 1 MB) and its token authority (`/{tenant}/oauth2/v2.0/token`), answering 204 |
//!
//! Each server counts the records, requests, connections and bytes it saw
//! (as sent and after gunzip: the compression ratio).

use crate::protocol::{AZURE_MAX_BODY, DATADOG_LOGS_PATH, DATADOG_MAX_BODY, aws_success};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Which fast stand-in to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The `http` sink's endpoint.
    Http,
    /// An endpoint that never answers.
    Hang,
    /// Kinesis, Firehose and CloudWatch Logs.
    Aws,
    /// The Datadog logs intake.
    Datadog,
    /// Azure Monitor Logs Ingestion and its token authority.
    Azure,
}

impl Kind {
    /// Every kind, in the order they are started.
    pub const ALL: [Kind; 5] = [
        Kind::Http,
        Kind::Hang,
        Kind::Aws,
        Kind::Datadog,
        Kind::Azure,
    ];

    /// The string a benchmark scenario writes where this server's URL goes.
    pub fn placeholder(self) -> &'static str {
        match self {
            Kind::Http => "$HTTP_SINK_URL",
            Kind::Hang => "$HANG_SINK_URL",
            Kind::Aws => "$AWS_SINK_URL",
            Kind::Datadog => "$DATADOG_SINK_URL",
            Kind::Azure => "$AZURE_SINK_URL",
        }
    }
}

/// What one server saw, as plain numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerCounts {
    /// Records received (counted in the bodies).
    pub records: u64,
    /// Requests carrying records.
    pub requests: u64,
    /// Distinct client connections (peer addresses).
    pub connections: u64,
    /// Request body bytes as sent (compressed when gzipped).
    pub wire_bytes: u64,
    /// Request body bytes after decompression.
    pub body_bytes: u64,
}

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

    /// What the server saw so far.
    pub fn counts(&self) -> ServerCounts {
        ServerCounts {
            records: self.records.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            connections: self
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len() as u64,
            wire_bytes: self.wire_bytes.load(Ordering::Relaxed),
            body_bytes: self.body_bytes.load(Ordering::Relaxed),
        }
    }
}

/// The fast servers started; they stop when this is dropped.
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

/// Gunzips `body` when `headers` say it is gzipped; `None` if it is not
/// valid gzip.
fn decoded(headers: &axum::http::HeaderMap, body: bytes::Bytes) -> Option<bytes::Bytes> {
    let gz = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    if !gz {
        return Some(body);
    }
    crate::wire::gunzip(&body).ok().map(bytes::Bytes::from)
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
        let url = s.start(Kind::Http)?;
        Ok((s, url))
    }

    /// Starts a server of this kind; returns the URL a destination's
    /// config uses for it.
    pub fn start(&mut self, kind: Kind) -> Result<String, String> {
        match kind {
            Kind::Http => self.start_http(),
            Kind::Hang => self.start_hang(),
            Kind::Aws => self.start_aws(),
            Kind::Datadog => self.start_datadog(),
            Kind::Azure => self.start_azure(),
        }
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
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    // One record per `"Data"` (Kinesis, Firehose) or `"timestamp"` (Logs).
                    let key: &[u8] = if target.starts_with("Logs_") {
                        b"\"timestamp\""
                    } else {
                        b"\"Data\""
                    };
                    let n = memchr::memmem::find_iter(&body, key).count();
                    if target.ends_with(".PutRecords")
                        || target.ends_with(".PutRecordBatch")
                        || target.ends_with(".PutLogEvents")
                    {
                        st.request(n, body.len(), body.len());
                    }
                    (
                        [("content-type", crate::protocol::AWS_JSON)],
                        aws_success(&target, &vec![None; n]),
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
            DATADOG_LOGS_PATH,
            axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
                let st = st2.clone();
                async move {
                    use axum::http::StatusCode;
                    if headers.get("dd-api-key").is_none() {
                        return (StatusCode::FORBIDDEN, "{\"errors\":[\"Forbidden\"]}");
                    }
                    // One entry per spliced `ddsource`.
                    match take_array(
                        &st,
                        &headers,
                        body,
                        DATADOG_MAX_BODY,
                        b"\"ddsource\":\"ngrok\"",
                    ) {
                        Ok(()) => (StatusCode::ACCEPTED, "{}"),
                        Err(status) => (status, "{\"errors\":[\"refused\"]}"),
                    }
                }
            }),
        );
        let addr = self.serve("sluice-sink-dd", app, st)?;
        Ok(format!("http://{addr}{DATADOG_LOGS_PATH}"))
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
                        match take_array(&st, &headers, body, AZURE_MAX_BODY, b"\"TimeGenerated\":") {
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
