//! A minimal HTTP endpoint of `sluice run --metrics-addr`: `GET /metrics`
//! (Prometheus text format), `GET /healthz`, and the live tap `GET
//! /event_subscriptions/{id}/tap?rate=N` (the same NDJSON as `sluice
//! serve`'s, so that `sluice tap --server` reads either), each tap on a
//! thread of its own until the client goes away.

use sluice_engine::TapOpener;
use sluice_engine::metrics::Metrics;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// Serves the metrics on `addr` from a background thread; returns the bound address.
pub fn serve(addr: &str, metrics: Arc<Metrics>, taps: TapOpener) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("--metrics-addr {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("sluice-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                handle(stream, &metrics, &taps);
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(local)
}

fn handle(mut s: TcpStream, metrics: &Metrics, taps: &TapOpener) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 8192];
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                n += k;
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let req = String::from_utf8_lossy(&buf[..n]);
    let first = req.lines().next().unwrap_or("");
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method == "GET"
        && let Some((subscription, rate)) = tap_path(path)
    {
        let tap = taps.open(subscription, rate, 256);
        let _ = std::thread::Builder::new()
            .name("sluice-tap".into())
            .spawn(move || stream_tap(s, tap));
        return;
    }
    let (status, ctype, body) =
        if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.render_prometheus(),
            )
        } else if method == "GET" && path == "/healthz" {
            ("200 OK", "text/plain; charset=utf-8", "ok\n".to_string())
        } else {
            (
                "404 Not Found",
                "text/plain; charset=utf-8",
                "not found: try /metrics\n".to_string(),
            )
        };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// `/event_subscriptions/{id}/tap[?rate=N]`: the subscription and the rate
/// (1 to 1,000 a second, 100 by default).
fn tap_path(path: &str) -> Option<(&str, u32)> {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let sub = path
        .strip_prefix("/event_subscriptions/")?
        .strip_suffix("/tap")?;
    let rate = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("rate="))
        .and_then(|r| r.parse().ok())
        .unwrap_or(100u32)
        .clamp(1, 1000);
    (!sub.is_empty() && !sub.contains('/')).then_some((sub, rate))
}

/// Writes the tap's records as NDJSON (`{"record": ...}`, and every second
/// `{"tap": {"sent": N, "skipped": M}}`) until the client goes away.
fn stream_tap(mut s: TcpStream, mut tap: sluice_engine::Tap) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    if s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n",
    )
    .is_err()
    {
        return;
    }
    loop {
        let next =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), tap.next()).await });
        let line = match next {
            Ok(Some(r)) => {
                let mut l = b"{\"record\":".to_vec();
                l.extend_from_slice(&r);
                l.extend_from_slice(b"}\n");
                l
            }
            Ok(None) => return,
            Err(_) => format!(
                "{{\"tap\":{{\"sent\":{},\"skipped\":{}}}}}\n",
                tap.sent(),
                tap.skipped()
            )
            .into_bytes(),
        };
        if s.write_all(&line).is_err() {
            return;
        }
    }
}
