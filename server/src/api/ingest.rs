//! `POST /ingest`: NDJSON (optionally gzip, every member), the operator's
//! token checked before the body is read, back-pressure aimed at the
//! accounts whose destinations are full, a per-line report.

use super::*;
use sluice_engine::RejectedLine;

pub(super) async fn ingest(
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
            Code::InvalidApiKey,
            "The ingest token is not valid.",
        ));
    }
    let body = axum::body::to_bytes(req.into_body(), INGEST_MAX_BYTES)
        .await
        .map_err(|e| {
            ApiError::new(
                Code::PayloadTooLarge,
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
                    return Err(ApiError::new(
                        Code::InvalidFieldValue,
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
                ApiError::new(
                    Code::UnparsableBody,
                    format!("The gzip body cannot be decompressed: {e}."),
                )
            })?;
        if out.len() > INGEST_MAX_BYTES {
            return Err(ApiError::new(
                Code::PayloadTooLarge,
                format!("The decompressed body is over {INGEST_MAX_BYTES} bytes."),
            ));
        }
        Bytes::from(out)
    } else {
        body
    };
    if let Some(link) = &app.cluster {
        return publish_to_stream(link, &headers, body, durable).await;
    }
    if app.engine.pressure() > app.ingest_pressure_limit {
        let mut e = ApiError::new(
            Code::RateLimited,
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
                Code::RateLimited,
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
    let mut errors = line_errors(&body, &report.rejected, |line, off| {
        split.as_ref().map_or(line, |s| s.line_at(off))
    });
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

/// The first 100 rejected lines as the report lists them: offsets become
/// 1-based line numbers (scanning `body` once), mapped by `sent_line`
/// (line in `body`, offset) to the line the client sent.
fn line_errors(
    body: &[u8],
    rejected: &[RejectedLine],
    sent_line: impl Fn(usize, usize) -> usize,
) -> Vec<Value> {
    let mut errors = Vec::new();
    let (mut line, mut pos) = (1usize, 0usize);
    for r in rejected.iter().take(100) {
        let off = (r.offset as usize).min(body.len());
        line += body[pos..off].iter().filter(|b| **b == b'\n').count();
        pos = off;
        errors.push(json!({
            "line": sent_line(line, r.offset as usize),
            "reason": r.reason.as_str(),
            "detail": r.detail,
        }));
    }
    errors
}

/// `/ingest` on a cluster node: the body goes to the event stream, and the
/// answer comes once JetStream stored every message with its replicas (so
/// every answer is durable). The `Idempotency-Key` header names the body: a
/// retry with the same key within the stream's de-duplication window (2
/// minutes by default) stores nothing twice.
async fn publish_to_stream(
    link: &crate::cluster::Link,
    headers: &HeaderMap,
    body: Bytes,
    durable: bool,
) -> Result<Response, ApiError> {
    let batch_id = match headers.get("idempotency-key") {
        None => ids::new_id("ib"),
        Some(v) => {
            let k = v.to_str().unwrap_or("");
            if k.is_empty()
                || k.len() > 64
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ApiError::new(
                    Code::InvalidFieldValue,
                    "The Idempotency-Key header must be 1 to 64 letters, digits, '-' or '_'.",
                ));
            }
            k.to_string()
        }
    };
    let published = link.publisher.publish(&body, &batch_id).await.map_err(|e| {
        let mut err = ApiError::new(
            Code::Unavailable,
            format!(
                "The events were not all stored in the cluster's stream ({e}). Send the same body again with the Idempotency-Key header '{batch_id}': what was stored is not stored twice."
            ),
        );
        err.retry_after = Some(1);
        err
    })?;
    let errors = line_errors(&body, &published.rejected, |line, _| line);
    let mut out = json!({
        "events": published.events + published.rejected.len(),
        "accepted": published.events,
        "rejected": published.rejected.len(),
        "back_pressure": 0,
        "errors": errors,
        "idempotency_key": batch_id,
        "duplicate_messages": published.duplicates,
    });
    if durable {
        out["durable"] = json!(true);
        out["dropped"] = json!(0);
    }
    Ok(Json(out).into_response())
}

/// Largest ingest body, in bytes (after decompression).
pub const INGEST_MAX_BYTES: usize = 64 << 20;
