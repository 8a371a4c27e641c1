//! `GET /event_stats` (Sluice's own): the live counters of the caller's
//! subscriptions and destinations, for the console's live view (it polls
//! every second and shows rates from the differences). Counters are since
//! the node started; in a cluster, this node's. At most `limit` (100 by
//! default, 1000 at most) subscriptions: the most matched first, so that
//! an account of 10,000 gets its busiest ones, not a dump of all.

use super::*;

pub(super) async fn event_stats(
    axum::extract::State(app): Shared,
    RawQuery(q): RawQuery,
    Call { ctx, .. }: Call,
) -> Result<Response, ApiError> {
    let mut limit = 100usize;
    for (k, v) in parse_query(q.as_deref(), &["limit"])? {
        if k == "limit" {
            limit = v
                .parse()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    ApiError::new(
                        Code::LimitOutOfRange,
                        format!("limit must be between 1 and 1000, got '{v}'."),
                    )
                })?;
        }
    }
    let (subs, dests): (Vec<String>, Vec<String>) = {
        let st = app.state.read().unwrap_or_else(|p| p.into_inner());
        match st.accounts.get(&ctx.account) {
            Some(a) => (
                a.subscriptions.keys().cloned().collect(),
                a.destinations.keys().cloned().collect(),
            ),
            None => Default::default(),
        }
    };
    let m = app.engine.metrics();
    let total = subs.len();
    let mut counted: Vec<_> = subs
        .into_iter()
        .map(|id| {
            let c = m.subscription_counts_of(&id).unwrap_or_default();
            (id, c)
        })
        .collect();
    counted.sort_by(|a, b| b.1.matched.cmp(&a.1.matched).then_with(|| a.0.cmp(&b.0)));
    counted.truncate(limit);
    let subscriptions: Map<String, Value> = counted
        .into_iter()
        .map(|(id, c)| {
            let v = json!({
                "evaluated": c.evaluated,
                "matched": c.matched,
                "filter_errors": c.filter_errors,
            });
            (id, v)
        })
        .collect();
    let destinations: Map<String, Value> = dests
        .into_iter()
        .map(|id| {
            let c = m.destination_counts(&id).unwrap_or_default();
            let why = match (&c.start_error, c.paused, c.unhealthy) {
                (Some((e, _)), _, _) => Some(format!("its plugin instance cannot be created: {e}")),
                (None, p, _) if p > 0 => Some(format!(
                    "paused: its dead-letter queue is full ({p} records wait); replay or fix the destination"
                )),
                (None, _, true) => Some("its last send failed as a whole; retrying".to_string()),
                _ => None,
            };
            let v = json!({
                "delivered": c.delivered,
                "retried": c.retried,
                "dead_lettered": c.dead_lettered_total(),
                "in_flight": c.queued,
                "batches_in_flight": c.in_flight,
                "paused_records": c.paused,
                "replayed": c.replayed,
                "latency_p50_ms": c.latency_p50_us as f64 / 1000.0,
                "latency_p99_ms": c.latency_p99_us as f64 / 1000.0,
                "healthy": why.is_none(),
                "unhealthy_reason": why,
            });
            (id, v)
        })
        .collect();
    Ok(Json(json!({
        "time": crate::now(),
        "subscriptions_total": total,
        "subscriptions": subscriptions,
        "destinations": destinations,
    }))
    .into_response())
}
