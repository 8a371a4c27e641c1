//! `/event_subscriptions/{id}/sources`: create, list, get, update, delete.

use super::*;

pub(super) fn no_source(sub: &str, ty: &str) -> ApiError {
    ApiError::new(
        Code::SourceNotFound,
        format!("Source {ty} not found on Event Subscription {sub}."),
    )
}

pub(super) async fn create_source(
    axum::extract::State(app): Shared,
    Path(sub): Path<String>,
    Call { ctx, body }: Call,
) -> Result<Response, ApiError> {
    let mut s = find_subscription(&app, &ctx, &sub)?;
    let old = s.clone();
    let obj = body_object(&body)?;
    if let Some(other) = string(&obj, "subscription_id")?.filter(|x| !x.is_empty() && *x != sub) {
        return Err(ApiError::new(
            Code::InvalidFieldValue,
            format!("'subscription_id' {other} does not match the path ({sub})."),
        ));
    }
    let src = parse_source(&Value::Object(obj), &app)?;
    if s.sources.iter().any(|x| x.event_type == src.event_type) {
        return Err(ApiError::new(
            Code::DuplicateSource,
            format!(
                "Event Subscription {sub} already has a source of type '{}'.",
                src.event_type
            ),
        ));
    }
    s.sources.push(src.clone());
    let base = ctx.base.clone();
    save_subscription(app, ctx, old, s, false).await?;
    Ok((StatusCode::CREATED, Json(source_json(&base, &sub, &src))).into_response())
}

pub(super) async fn list_sources(
    axum::extract::State(app): Shared,
    Path(sub): Path<String>,
    Call { ctx, .. }: Call,
) -> Result<Response, ApiError> {
    let s = find_subscription(&app, &ctx, &sub)?;
    let list: Vec<Value> = s
        .sources
        .iter()
        .map(|x| source_json(&ctx.base, &sub, x))
        .collect();
    Ok(Json(json!({ "sources": list, "uri": format!("{}/event_subscriptions/{sub}/sources", ctx.base) })).into_response())
}

pub(super) async fn get_source(
    axum::extract::State(app): Shared,
    Path((sub, ty)): Path<(String, String)>,
    Call { ctx, .. }: Call,
) -> Result<Response, ApiError> {
    let s = find_subscription(&app, &ctx, &sub)?;
    let src = s
        .sources
        .iter()
        .find(|x| x.event_type == ty)
        .ok_or_else(|| no_source(&sub, &ty))?;
    Ok(Json(source_json(&ctx.base, &sub, src)).into_response())
}

pub(super) async fn update_source(
    axum::extract::State(app): Shared,
    Path((sub, ty)): Path<(String, String)>,
    Call { ctx, body }: Call,
) -> Result<Response, ApiError> {
    let mut s = find_subscription(&app, &ctx, &sub)?;
    let old = s.clone();
    let idx = source_index(&s, &ty)?;
    let obj = body_object(&body)?;
    only_keys(
        &obj,
        &["type", "filter", "fields", "subscription_id"],
        "EventSourceUpdate",
    )?;
    if let Some(t) = string(&obj, "type")?.filter(|t| !t.is_empty() && *t != ty) {
        return Err(ApiError::new(
            Code::InvalidFieldValue,
            format!("The type of a source cannot change ({ty} to {t}); delete it and add another."),
        ));
    }
    // Only what is given changes.
    let mut merged = Map::new();
    merged.insert("type".into(), Value::String(ty.clone()));
    let cur = &s.sources[idx];
    if obj.contains_key("filter") {
        merged.insert("filter".into(), obj["filter"].clone());
    } else if let Some(f) = &cur.filter {
        merged.insert("filter".into(), Value::String(f.clone()));
    }
    if obj.contains_key("fields") {
        merged.insert("fields".into(), obj["fields"].clone());
    } else if let Some(f) = &cur.fields {
        merged.insert("fields".into(), json!(f));
    }
    let src = parse_source(&Value::Object(merged), &app)?;
    let changed = src != s.sources[idx];
    s.sources[idx] = src.clone();
    let base = ctx.base.clone();
    if changed {
        save_subscription(app, ctx, old, s, false).await?;
    }
    Ok(Json(source_json(&base, &sub, &src)).into_response())
}

pub(super) async fn delete_source(
    axum::extract::State(app): Shared,
    Path((sub, ty)): Path<(String, String)>,
    Call { ctx, .. }: Call,
) -> Result<Response, ApiError> {
    let mut s = find_subscription(&app, &ctx, &sub)?;
    let old = s.clone();
    let idx = source_index(&s, &ty)?;
    s.sources.remove(idx);
    save_subscription(app, ctx, old, s, false).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Where the source of type `ty` is in `s` (404 if it has none).
fn source_index(s: &Subscription, ty: &str) -> Result<usize, ApiError> {
    s.sources
        .iter()
        .position(|x| x.event_type == ty)
        .ok_or_else(|| no_source(&s.id, ty))
}
