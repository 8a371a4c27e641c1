//! `/event_subscriptions`: create, list, get, update, delete, and the
//! parsing of sources and destination ids they share with the sources
//! sub-resource.

use super::*;

/// Parses one source object, with the audit-type rules of spec §5.3.
pub(super) fn parse_source(v: &Value, app: &App) -> Result<SourceSpec, ApiError> {
    let strict = app.strict_ngrok_filters;
    let Value::Object(o) = v else {
        return Err(ApiError::new(
            Code::InvalidFieldValue,
            "Each source must be an object with a 'type'.",
        ));
    };
    only_keys(
        o,
        &["type", "filter", "fields", "subscription_id"],
        "EventSource",
    )?;
    let ty = string(o, "type")?.unwrap_or_default();
    let filter = string(o, "filter")?.filter(|f| !f.trim().is_empty());
    let fields: Option<Vec<String>> = match member(o, "fields") {
        None => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ApiError::new(
                        Code::InvalidFieldValue,
                        "Invalid value for parameter 'fields': expected a list of strings.",
                    )
                })?,
        ),
        Some(_) => {
            return Err(ApiError::new(
                Code::InvalidFieldValue,
                "Invalid value for parameter 'fields': expected a list of strings.",
            ));
        }
    };
    let fields = fields.filter(|f| !f.is_empty());
    let Some(t) = EventTypeId::from_name(&ty) else {
        let hint = sluice_engine::events::closest(&ty, sluice_engine::events::type_names())
            .map(|s| format!(" Did you mean '{s}'?"))
            .unwrap_or_default();
        return Err(ApiError::new(
            Code::UnknownEventType,
            format!(
                "'{ty}' is not a valid event type.{hint} Valid types are: {}.",
                sluice_engine::events::type_names()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    let def = t.def();
    if def.class == EventClass::Audit {
        if filter.is_some() {
            return Err(ApiError::new(
                Code::AuditFilter,
                format!("{ty} is an audit type and may not specify a filter."),
            ));
        }
        if fields.is_some() {
            return Err(ApiError::new(
                Code::AuditFields,
                format!("{ty} is an audit type and may not specify fields."),
            ));
        }
    }
    if let Some(list) = &fields {
        match sluice_engine::config::check_fields(def, list, strict) {
            Ok(None) => {}
            // The API's answer has no place for warnings: the log has them.
            Ok(Some(w)) => tracing::warn!("in `fields`: {w}"),
            Err(e) => {
                return Err(ApiError::new(
                    Code::InvalidFields,
                    format!("Invalid value for parameter 'fields': {e}."),
                ));
            }
        }
    }
    if let Some(f) = &filter {
        app.policy.check_filter(f)?;
        let compiled = sluice_engine::cel::Filter::compile(
            f,
            &sluice_engine::cel::FilterOptions {
                event_type: Some(t),
                strict_ngrok: strict,
            },
        )
        .map_err(|e| {
            ApiError::new(
                Code::InvalidFilter,
                format!(
                    "The filter of {ty} is invalid at line {}, column {}: {}\n{}",
                    e.line,
                    e.column,
                    e.message,
                    e.snippet()
                ),
            )
        })?;
        for w in compiled.warnings() {
            tracing::warn!("in the filter: {w}");
        }
    }
    Ok(SourceSpec {
        event_type: ty,
        filter,
        fields,
    })
}

pub(super) fn parse_sources(
    v: Option<&Value>,
    app: &App,
) -> Result<Option<Vec<SourceSpec>>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let Value::Array(items) = v else {
        return Err(ApiError::new(
            Code::InvalidFieldValue,
            "Invalid value for parameter 'sources': expected a list.",
        ));
    };
    let mut out: Vec<SourceSpec> = Vec::with_capacity(items.len());
    for it in items {
        let s = parse_source(it, app)?;
        if out.iter().any(|o| o.event_type == s.event_type) {
            return Err(ApiError::new(
                Code::DuplicateSource,
                format!("The source type '{}' appears more than once.", s.event_type),
            ));
        }
        out.push(s);
    }
    Ok(Some(out))
}

pub(super) fn parse_destination_ids(
    v: Option<&Value>,
    acct: Option<&AccountState>,
) -> Result<Option<Vec<String>>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let Value::Array(items) = v else {
        return Err(ApiError::new(
            Code::InvalidFieldValue,
            "Invalid value for parameter 'destination_ids': expected a list of ids.",
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        let id = it.as_str().ok_or_else(|| {
            ApiError::new(
                Code::InvalidFieldValue,
                "Invalid value for parameter 'destination_ids': expected a list of ids.",
            )
        })?;
        if !check_id(id, "ed", "an event destination")?
            || !acct.is_some_and(|a| a.destinations.contains_key(id))
        {
            return Err(no_destination(id));
        }
        if !out.iter().any(|x| x == id) {
            out.push(id.to_string());
        }
    }
    Ok(Some(out))
}

pub(super) async fn create_subscription(
    axum::extract::State(app): Shared,
    Call { ctx, body }: Call,
) -> Result<Response, ApiError> {
    let obj = body_object(&body)?;
    only_keys(
        &obj,
        &["metadata", "description", "sources", "destination_ids"],
        "EventSubscriptionCreate",
    )?;
    let description = string(&obj, "description")?.unwrap_or_default();
    let metadata = string(&obj, "metadata")?.unwrap_or_default();
    check_lengths(Some(&description), Some(&metadata))?;
    let sources = parse_sources(member(&obj, "sources"), &app)?.unwrap_or_default();
    let destination_ids = {
        let st = app.state.read().unwrap_or_else(|p| p.into_inner());
        parse_destination_ids(
            member(&obj, "destination_ids"),
            st.accounts.get(&ctx.account),
        )?
        .unwrap_or_default()
    };
    let s = Subscription {
        id: ids::new_id("esb"),
        account_id: ctx.account.clone(),
        created_at: crate::now(),
        description,
        metadata,
        destination_ids,
        sources,
    };
    let json = s.to_json(&ctx.base);
    let stored = s.clone();
    app.change(
        &ctx,
        ("event_subscription_created.v0", json.clone()),
        move |app, a| {
            app.policy.check_subscriptions(a.subscriptions.len())?;
            app.policy
                .check_subscription_shape(s.destination_ids.len(), s.sources.len())?;
            // Re-check under the write lock: a destination may have gone.
            destinations_exist(a, &s)?;
            a.subscriptions.insert(s.id.clone(), s);
            Ok(())
        },
        move |st| {
            st.put_account(&stored.account_id, &stored.created_at)
                .and_then(|_| st.put_subscription(&stored))
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json)).into_response())
}

pub(super) async fn list_subscriptions(
    axum::extract::State(app): Shared,
    RawQuery(q): RawQuery,
    Call { ctx, .. }: Call,
) -> Result<Response, ApiError> {
    let q = list_query(q.as_deref(), "esb")?;
    let uri = format!("{}/event_subscriptions", ctx.base);
    let st = app.state.read().unwrap_or_else(|p| p.into_inner());
    let empty = Default::default();
    let items = st
        .accounts
        .get(&ctx.account)
        .map_or(&empty, |a| &a.subscriptions);
    let (page, next) = page(
        items,
        &q,
        |s: &Subscription| (&s.id, &s.created_at, &s.description, &s.metadata),
        &uri,
    );
    // Written straight from the state, without a `Value` per subscription.
    let mut out = Vec::with_capacity(512 * page.len() + 256);
    out.extend_from_slice(b"{\"event_subscriptions\":[");
    for (i, s) in page.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(
            &mut out,
            &SubscriptionJson {
                sub: s,
                base: &ctx.base,
            },
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    out.extend_from_slice(b"],\"next_page_uri\":");
    serde_json::to_writer(&mut out, &next).map_err(|e| ApiError::internal(e.to_string()))?;
    out.extend_from_slice(b",\"uri\":");
    serde_json::to_writer(&mut out, &uri).map_err(|e| ApiError::internal(e.to_string()))?;
    out.push(b'}');
    Ok(json_response(out))
}

/// A 200 response of JSON already serialized.
pub(super) fn json_response(body: Vec<u8>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

pub(super) fn find_subscription(app: &App, ctx: &Ctx, id: &str) -> Result<Subscription, ApiError> {
    if !check_id(id, "esb", "an event subscription")? {
        return Err(no_subscription(id));
    }
    let st = app.state.read().unwrap_or_else(|p| p.into_inner());
    st.accounts
        .get(&ctx.account)
        .and_then(|a| a.subscriptions.get(id))
        .cloned()
        .ok_or_else(|| no_subscription(id))
}

pub(super) async fn get_subscription(
    axum::extract::State(app): Shared,
    Path(id): Path<String>,
    Call { ctx, .. }: Call,
) -> Result<Response, ApiError> {
    let s = find_subscription(&app, &ctx, &id)?;
    let out = serde_json::to_vec(&SubscriptionJson {
        sub: &s,
        base: &ctx.base,
    })
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(json_response(out))
}

/// Stores a changed subscription and reports it. `old` is the version `s`
/// was computed from: if another request changed or deleted it meanwhile,
/// nothing is applied (404 or 409).
pub(super) async fn save_subscription(
    app: Arc<App>,
    ctx: Ctx,
    old: Subscription,
    s: Subscription,
    check_destinations: bool,
) -> Result<Subscription, ApiError> {
    let stored = s.clone();
    let applied = s.clone();
    app.change(
        &ctx,
        ("event_subscription_updated.v0", s.to_json(&ctx.base)),
        move |app, a| {
            still_as_read(
                a.subscriptions.get(&s.id),
                &old,
                || no_subscription(&s.id),
                || changed_meanwhile("event subscription", &s.id),
            )?;
            app.policy
                .check_subscription_shape(s.destination_ids.len(), s.sources.len())?;
            if check_destinations {
                destinations_exist(a, &s)?;
            }
            a.subscriptions.insert(s.id.clone(), s);
            Ok(())
        },
        move |st| st.put_subscription(&stored),
    )
    .await?;
    Ok(applied)
}

pub(super) async fn update_subscription(
    axum::extract::State(app): Shared,
    Path(id): Path<String>,
    Call { ctx, body }: Call,
) -> Result<Response, ApiError> {
    let mut s = find_subscription(&app, &ctx, &id)?;
    let old = s.clone();
    let obj = body_object(&body)?;
    only_keys(
        &obj,
        &[
            "id",
            "metadata",
            "description",
            "sources",
            "destination_ids",
        ],
        "EventSubscriptionUpdate",
    )?;
    if let Some(v) = string(&obj, "description")? {
        s.description = v;
    }
    if let Some(v) = string(&obj, "metadata")? {
        s.metadata = v;
    }
    check_lengths(Some(&s.description), Some(&s.metadata))?;
    // Absent, null and [] leave the lists unchanged (the Python client always
    // sends "sources": []); a non-empty list replaces them.
    if let Some(list) = parse_sources(member(&obj, "sources"), &app)?.filter(|l| !l.is_empty()) {
        s.sources = list;
    }
    let ids = {
        let st = app.state.read().unwrap_or_else(|p| p.into_inner());
        parse_destination_ids(
            member(&obj, "destination_ids"),
            st.accounts.get(&ctx.account),
        )?
    };
    if let Some(list) = ids.filter(|l| !l.is_empty()) {
        s.destination_ids = list;
    }
    let base = ctx.base.clone();
    let s = save_subscription(app, ctx, old, s, true).await?;
    Ok(Json(s.to_json(&base)).into_response())
}

pub(super) async fn delete_subscription(
    axum::extract::State(app): Shared,
    Path(id): Path<String>,
    Call { ctx, .. }: Call,
) -> Result<Response, ApiError> {
    let s = find_subscription(&app, &ctx, &id)?;
    let sid = s.id.clone();
    app.change(
        &ctx,
        ("event_subscription_deleted.v0", s.to_json(&ctx.base)),
        move |_, a| {
            a.subscriptions
                .remove(&s.id)
                .ok_or_else(|| no_subscription(&s.id))?;
            Ok(())
        },
        move |st| st.delete_subscription(&sid),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Every destination `s` sends to exists in the account (404 naming the
/// first that does not).
fn destinations_exist(a: &AccountState, s: &Subscription) -> Result<(), ApiError> {
    match s
        .destination_ids
        .iter()
        .find(|d| !a.destinations.contains_key(*d))
    {
        Some(missing) => Err(no_destination(missing)),
        None => Ok(()),
    }
}
