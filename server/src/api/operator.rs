//! The operator's listener (`--metrics-addr`): Prometheus metrics and the
//! detailed health check. Never on the public listener.

use super::*;

pub(super) async fn metrics(axum::extract::State(app): Shared) -> Response {
    let engine = app.engine.metrics().render_prometheus();
    let text = match &app.cluster {
        Some(link) => link.metrics(&engine).await,
        None => engine,
    };
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

/// The operator's health check: which destinations are unhealthy.
pub(super) async fn operator_healthz(axum::extract::State(app): Shared) -> Response {
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
