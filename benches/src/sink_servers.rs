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

use crate::scenario::Scenario;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The servers a scenario started; they stop when this is dropped.
#[derive(Default)]
pub struct SinkServers {
    /// Records received by the HTTP sink server.
    pub http_records: Arc<AtomicU64>,
    /// Records received by the AWS sink server.
    pub aws_records: Arc<AtomicU64>,
    /// The client connections the AWS sink server saw.
    pub aws_connections: Arc<std::sync::Mutex<std::collections::HashSet<std::net::SocketAddr>>>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
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
    if uses(s, "$HTTP_SINK_URL") {
        let url = servers.start_http()?;
        for d in &mut s.destinations {
            replace(&mut d.config, "$HTTP_SINK_URL", &url);
        }
    }
    if uses(s, "$AWS_SINK_URL") {
        let url = servers.start_aws()?;
        for d in &mut s.destinations {
            replace(&mut d.config, "$AWS_SINK_URL", &url);
        }
    }
    Ok(servers)
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

impl SinkServers {
    /// Starts only the HTTP sink server; returns it and its URL.
    pub fn http() -> Result<(SinkServers, String), String> {
        let mut s = SinkServers::default();
        let url = s.start_http()?;
        Ok((s, url))
    }

    fn start_aws(&mut self) -> Result<String, String> {
        let count = self.aws_records.clone();
        let conns = self.aws_connections.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(
                move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                    std::net::SocketAddr,
                >,
                      headers: axum::http::HeaderMap,
                      body: bytes::Bytes| {
                    let count = count.clone();
                    conns.lock().unwrap_or_else(|p| p.into_inner()).insert(peer);
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
                            count.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        (
                            [("content-type", "application/x-amz-json-1.1")],
                            aws_success(&target, n),
                        )
                    }
                },
            ),
        );
        let addr = self.serve("sluice-bench-aws-sink", app)?;
        Ok(format!("http://{addr}"))
    }

    fn start_http(&mut self) -> Result<String, String> {
        let count = self.http_records.clone();
        let app = axum::Router::new().route(
            "/ingest",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
                let count = count.clone();
                async move {
                    let gz = headers
                        .get("content-encoding")
                        .is_some_and(|v| v.as_bytes() == b"gzip");
                    let body = if gz {
                        let mut out = Vec::new();
                        use std::io::Read;
                        if flate2::read::GzDecoder::new(&body[..])
                            .read_to_end(&mut out)
                            .is_err()
                        {
                            return axum::http::StatusCode::BAD_REQUEST;
                        }
                        bytes::Bytes::from(out)
                    } else {
                        body
                    };
                    let n = if body.first() == Some(&b'[') {
                        serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&body)
                            .map_or(0, |v| v.len())
                    } else {
                        memchr::memchr_iter(b'\n', &body).count()
                    };
                    count.fetch_add(n as u64, Ordering::Relaxed);
                    axum::http::StatusCode::OK
                }
            }),
        );
        let addr = self.serve("sluice-bench-http-sink", app)?;
        Ok(format!("http://{addr}/ingest"))
    }

    /// Serves `app` on a free loopback port from a thread of its own until
    /// the servers are dropped.
    fn serve(&mut self, name: &str, app: axum::Router) -> Result<std::net::SocketAddr, String> {
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
                    let make = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
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
