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

use crate::scenario::Scenario;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The servers a scenario started; they stop when this is dropped.
#[derive(Default)]
pub struct SinkServers {
    /// Records received by the HTTP sink server.
    pub http_records: Arc<AtomicU64>,
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
    Ok(servers)
}

impl SinkServers {
    /// Starts only the HTTP sink server; returns it and its URL.
    pub fn http() -> Result<(SinkServers, String), String> {
        let mut s = SinkServers::default();
        let url = s.start_http()?;
        Ok((s, url))
    }

    fn start_http(&mut self) -> Result<String, String> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let count = self.http_records.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let t = std::thread::Builder::new()
            .name("sluice-bench-http-sink".into())
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
                    let app = axum::Router::new().route(
                        "/ingest",
                        axum::routing::post(
                            move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
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
                            },
                        ),
                    );
                    let _ = axum::serve(l, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                });
            })
            .map_err(|e| e.to_string())?;
        self.stop.push(tx);
        self.threads.push(t);
        Ok(format!("http://{addr}/ingest"))
    }
}
