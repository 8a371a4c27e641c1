//! `/event_destinations/{id}/dead_letters`: the destination's dead letters,
//! newest first in pages (`limit`, `before_id`), selected by time range
//! (`since`, `until`: RFC 3339) or reason (`reason`: a text it contains);
//! `POST …/dead_letters/replay` sends the selected ones through delivery
//! again (idempotent per replay id, audited); `GET …/replays/{replay_id}`
//! says how a replay is going. See `crate::dead_letters`.

use super::*;
use sluice_engine::dead_letter_file::{
    DeadLetter, ReplayRecord, Selection, Taken, valid_replay_id,
};

/// How long `POST …/replay` waits for the replay to finish before it
/// answers with `"state": "running"`.
const REPLAY_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Longest `reason` selection.
const MAX_REASON: usize = 256;

fn bad_value(name: &str, v: &str, what: &str) -> ApiError {
    ApiError::new(
        Code::InvalidFieldValue,
        format!("Invalid value for '{name}': '{v}' ({what})."),
    )
}

/// Adds one selection key (`since`, `until`, `reason`, `max_id`) to `sel`;
/// false if `key` is none of them.
fn select(sel: &mut Selection, key: &str, v: &str) -> Result<bool, ApiError> {
    let time = |v: &str| {
        sluice_engine::events::parse_rfc3339_ms(v)
            .ok_or_else(|| bad_value(key, v, "an RFC 3339 time, e.g. 2026-12-05T10:00:00Z"))
    };
    match key {
        "since" => sel.since_ms = Some(time(v)?),
        "until" => sel.until_ms = Some(time(v)?),
        "reason" => {
            if v.len() > MAX_REASON {
                let start: String = v.chars().take(32).collect();
                return Err(bad_value(key, &format!("{start}…"), "at most 256 bytes"));
            }
            sel.reason = Some(v.to_string());
        }
        "max_id" => {
            sel.max_id = Some(
                v.parse()
                    .map_err(|_| bad_value(key, v, "a dead letter's id"))?,
            )
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn store_error(e: std::io::Error) -> ApiError {
    ApiError::internal(format!("The dead letters cannot be read or changed: {e}."))
}

fn letter_json(d: &DeadLetter) -> Value {
    json!({
        "id": d.id,
        "time": d.time,
        "subscription_id": d.subscription,
        "reason": d.reason,
        "attempts": d.attempts,
        "record": serde_json::from_str::<Value>(d.record.get()).unwrap_or(Value::Null),
    })
}

fn replay_json(base: &str, destination: &str, r: &ReplayRecord, repeated: bool) -> Value {
    json!({
        "id": r.id,
        "destination_id": destination,
        "uri": format!("{base}/event_destinations/{destination}/dead_letters/replays/{}", r.id),
        "created_at": r.created_at,
        "records": r.records,
        "state": if r.finished_at.is_empty() { "running" } else { "done" },
        "finished_at": if r.finished_at.is_empty() { Value::Null } else { Value::String(r.finished_at.clone()) },
        "repeated": repeated,
    })
}

pub(super) async fn list_dead_letters(
    axum::extract::State(app): Shared,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    Call { ctx, .. }: Call,
) -> Result<Response, ApiError> {
    let d = find_destination(&app, &ctx, &id)?;
    let params = canonical_keys(parse_query(
        q.as_deref(),
        &[
            "before_id",
            "beforeId",
            "limit",
            "since",
            "until",
            "reason",
            "max_id",
        ],
    )?)?;
    let (mut sel, mut before, mut limit) = (Selection::default(), None, 100usize);
    let mut keep = Vec::new();
    for (k, v) in params {
        if v.is_empty() {
            continue;
        }
        match k.as_str() {
            "before_id" => {
                before = Some(
                    v.parse::<u64>()
                        .map_err(|_| bad_value("before_id", &v, "a dead letter's id"))?,
                )
            }
            "limit" => {
                limit = match v.trim().parse::<i64>() {
                    Ok(n) if (1..=100).contains(&n) => n as usize,
                    _ => {
                        return Err(ApiError::new(
                            Code::LimitOutOfRange,
                            format!("limit must be between 1 and 100, got '{v}'."),
                        ));
                    }
                }
            }
            key => {
                select(&mut sel, key, &v)?;
                keep.push(format!("&{key}={}", encode_component(&v)));
            }
        }
    }
    let store = app.dead_letters.clone();
    let dest = d.id.clone();
    let (page, (bytes, max_bytes)) = blocking(move || {
        let page = store
            .list(&dest, &sel, before, limit)
            .map_err(store_error)?;
        Ok((page, store.usage(&dest)))
    })
    .await?;
    let uri = format!("{}/event_destinations/{}/dead_letters", ctx.base, d.id);
    let next = match page.next_before {
        Some(before) => Value::String(format!(
            "{uri}?limit={limit}&before_id={before}{}",
            keep.concat()
        )),
        None => Value::Null,
    };
    let counts = app
        .engine
        .metrics()
        .destination_counts(&d.id)
        .unwrap_or_default();
    Ok(Json(json!({
        "dead_letters": page.dead_letters.iter().map(letter_json).collect::<Vec<_>>(),
        "uri": uri,
        "next_page_uri": next,
        "bytes": bytes,
        "max_bytes": max_bytes,
        "paused_records": counts.paused,
    }))
    .into_response())
}

pub(super) async fn replay_dead_letters(
    axum::extract::State(app): Shared,
    Path(id): Path<String>,
    Call { ctx, body }: Call,
) -> Result<Response, ApiError> {
    let d = find_destination(&app, &ctx, &id)?;
    let obj = body_object(&body)?;
    only_keys(
        &obj,
        &["id", "since", "until", "reason", "max_id"],
        "DeadLetterReplay",
    )?;
    let replay_id = match string(&obj, "id")? {
        Some(r) if !valid_replay_id(&r) => {
            return Err(bad_value("id", &r, "1 to 64 of A-Z a-z 0-9 _ -"));
        }
        Some(r) => r,
        None => ids::new_id("dlr"),
    };
    let mut sel = Selection::default();
    let mut selection = Map::new();
    for key in ["since", "until", "reason", "max_id"] {
        let v = match member(&obj, key) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) if key == "max_id" => n.to_string(),
            Some(_) => return Err(bad_value(key, "…", "a string")),
        };
        select(&mut sel, key, &v)?;
        selection.insert(key.to_string(), Value::String(v));
    }
    let store = app.dead_letters.clone();
    let (dest, rid) = (d.id.clone(), replay_id.clone());
    let taken = blocking(move || {
        store
            .take_for_replay(&dest, &rid, &sel)
            .map_err(store_error)
    })
    .await?;
    let record = match taken {
        Taken::Existing(r) => {
            return Ok(Json(replay_json(&ctx.base, &d.id, &r, true)).into_response());
        }
        Taken::New(r) => r,
    };
    let mut object = replay_json(&ctx.base, &d.id, &record, false);
    object["selection"] = Value::Object(selection);
    {
        let (app, ctx, object) = (app.clone(), ctx.clone(), object.clone());
        blocking(move || {
            app.audit_now(&ctx, "event_destination_dead_letters_replayed.v0", &object);
            Ok(())
        })
        .await?;
    }
    let mut running = tokio::spawn(crate::dead_letters::run(
        app.engine.clone(),
        app.dead_letters.clone(),
        d.id.clone(),
        replay_id.clone(),
    ));
    let _ = tokio::time::timeout(REPLAY_ANSWER_WAIT, &mut running).await;
    let store = app.dead_letters.clone();
    let (dest, rid) = (d.id.clone(), replay_id.clone());
    let now = blocking(move || store.replay(&dest, &rid).map_err(store_error))
        .await?
        .unwrap_or(record);
    Ok(Json(replay_json(&ctx.base, &d.id, &now, false)).into_response())
}

pub(super) async fn get_replay(
    axum::extract::State(app): Shared,
    Path((id, replay_id)): Path<(String, String)>,
    Call { ctx, .. }: Call,
) -> Result<Response, ApiError> {
    let d = find_destination(&app, &ctx, &id)?;
    let not_found = || ApiError {
        status: StatusCode::NOT_FOUND,
        code: None,
        msg: format!("No replay '{replay_id}' of event destination '{id}' found."),
        retry_after: None,
    };
    if !valid_replay_id(&replay_id) {
        return Err(not_found());
    }
    let store = app.dead_letters.clone();
    let (dest, rid) = (d.id.clone(), replay_id.clone());
    let r = blocking(move || store.replay(&dest, &rid).map_err(store_error)).await?;
    match r {
        Some(r) => Ok(Json(replay_json(&ctx.base, &d.id, &r, false)).into_response()),
        None => Err(not_found()),
    }
}
