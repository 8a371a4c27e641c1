//! `GET /event_subscriptions/{id}/tap`: a live tail of the records a
//! subscription makes, as NDJSON streamed for as long as the client reads:
//! `{"record": <the record's JSON>}` per record, and every second
//! `{"tap": {"sent": N, "skipped": M}}` (records not passed on: over the
//! rate, or a reader too slow). A tap never slows the pipeline (see the
//! engine's `Engine::tap`). The account's own subscriptions only; a few
//! taps per account at once; every tap ends when the server stops.
//!
//! On a cluster node the tap also shows what the other nodes' engines make
//! for the subscription, passed on through NATS (`cluster/tap.rs`; at most
//! 200 records a second per node).

use super::*;
use std::time::Duration;

/// Taps an account may have open at once.
const TAPS_PER_ACCOUNT: usize = 4;
/// Highest `rate` (records a second).
const MAX_RATE: u32 = 1000;
/// Records waiting for a slow reader before more are skipped.
const BUFFER: usize = 256;

/// One account's open taps, released when the stream ends.
struct Open {
    app: Arc<App>,
    account: String,
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut m = self.app.taps_open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.account) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.account);
            }
        }
    }
}

pub(super) async fn tap_subscription(
    axum::extract::State(app): Shared,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    Call { ctx, .. }: Call,
) -> Result<Response, ApiError> {
    let mut rate = 100u32;
    for (k, v) in parse_query(q.as_deref(), &["rate"])? {
        if k == "rate" {
            rate = v
                .parse()
                .ok()
                .filter(|r| (1..=MAX_RATE).contains(r))
                .ok_or_else(|| {
                    ApiError::new(
                        Code::InvalidFieldValue,
                        format!("Invalid value for parameter 'rate': '{v}' (records a second, 1 to {MAX_RATE})."),
                    )
                })?;
        }
    }
    let s = find_subscription(&app, &ctx, &id)?;
    let open = {
        let mut m = app.taps_open.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ctx.account.clone()).or_default();
        if *n >= TAPS_PER_ACCOUNT {
            let mut e = ApiError::new(
                Code::RateLimited,
                format!("This account has {TAPS_PER_ACCOUNT} taps open; close one first."),
            );
            e.retry_after = Some(1);
            return Err(e);
        }
        *n += 1;
        Open {
            app: app.clone(),
            account: ctx.account.clone(),
        }
    };
    let tap = app.engine.tap(&s.id, rate, BUFFER);
    // In a cluster, the other nodes pass on what their engines make.
    let remote = match &app.cluster {
        Some(link) => Some(
            crate::cluster::tap::announce(link, &s.id)
                .await
                .map_err(|e| {
                    ApiError::new(
                        Code::Unavailable,
                        format!("The tap cannot reach the other nodes: {e}."),
                    )
                })?,
        ),
        None => None,
    };
    let closing = app.closing.subscribe();
    let tick = tokio::time::interval(Duration::from_secs(1));
    let record_line = |r: &[u8]| {
        let mut line = Vec::with_capacity(r.len() + 12);
        line.extend_from_slice(b"{\"record\":");
        line.extend_from_slice(r);
        line.extend_from_slice(b"}\n");
        line
    };
    let stream = futures_util::stream::unfold(
        (tap, remote, closing, tick, open),
        move |(mut tap, mut remote, mut closing, mut tick, open)| async move {
            use futures_util::StreamExt;
            if *closing.borrow() {
                return None;
            }
            let from_others = async {
                match remote.as_mut() {
                    Some(r) => r.records.next().await,
                    None => std::future::pending().await,
                }
            };
            let line = tokio::select! {
                r = tap.next() => record_line(&r?),
                m = from_others => record_line(&m?.payload),
                _ = tick.tick() => format!(
                    "{{\"tap\":{{\"sent\":{},\"skipped\":{}}}}}\n",
                    tap.sent(),
                    tap.skipped()
                )
                .into_bytes(),
                _ = closing.changed() => return None,
            };
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(line)),
                (tap, remote, closing, tick, open),
            ))
        },
    );
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    Ok(resp)
}
