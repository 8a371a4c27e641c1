//! `/event_destinations`: create (with an optional test event), list, get,
//! update, delete.

use super::*;

pub(super) async fn create_destination(
    axum::extract::State(app): Shared,
    Call { ctx, body }: Call,
) -> Result<Response, ApiError> {
    let obj = body_object(&body)?;
    only_keys(
        &obj,
        &[
            "metadata",
            "description",
            "format",
            "target",
            "verify_with_test_event",
        ],
        "EventDestinationCreate",
    )?;
    // Not in the public schema; the official Ruby client's signature has it.
    let verify = match member(&obj, "verify_with_test_event") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::new(
                Code::InvalidFieldValue,
                "verify_with_test_event must be a boolean.",
            ));
        }
    };
    let description = string(&obj, "description")?.unwrap_or_default();
    let metadata = string(&obj, "metadata")?.unwrap_or_default();
    check_lengths(Some(&description), Some(&metadata))?;
    let format = check_format(string(&obj, "format")?.as_deref())?;
    let target_v = member(&obj, "target").ok_or_else(|| {
        ApiError::new(Code::NoTarget, "The target must contain exactly one of: kinesis, firehose, cloudwatch_logs, datadog, azure_logs_ingestion (or plugin).")
    })?;
    let target = parse_target(target_v, None, &app.policy, &app.plugin_kinds)?;
    let d = Destination {
        id: ids::new_id("ed"),
        account_id: ctx.account.clone(),
        created_at: crate::now(),
        description,
        metadata,
        format,
        target,
    };
    check_file_area(&app, &d)?;
    if verify {
        // Send the test event before storing: a destination that refuses it is not created.
        test_event(&app, &ctx, &d)
            .await?
            .map_err(|(retryable, e)| {
                // Spec §3: 5132 "Datadog key rejected", 5139 "other Azure
                // config problem" for a refusal; 5140 (generic invalid
                // fields) otherwise, and for a destination that could
                // not take the event now (throttled, down: try again).
                let code = match d.target.kind() {
                    _ if retryable => Code::InvalidDestination,
                    "datadog" => Code::DatadogKeyRejected,
                    "azure_logs_ingestion" => Code::AzureConfig,
                    _ => Code::InvalidDestination,
                };
                ApiError::new(code, format!("The destination refused the test event: {e}"))
            })?;
    }
    let json = d.to_json(&ctx.base);
    let stored = d.clone();
    app.change(
        &ctx,
        ("event_destination_created.v0", json.clone()),
        move |app, a| {
            app.policy.check_destinations(a.destinations.len())?;
            a.destinations.insert(d.id.clone(), d);
            Ok(())
        },
        move |s| {
            s.put_account(&stored.account_id, &stored.created_at)
                .and_then(|_| s.put_destination(&stored))
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json)).into_response())
}

pub(super) async fn list_destinations(
    axum::extract::State(app): Shared,
    RawQuery(q): RawQuery,
    Call { ctx, .. }: Call,
) -> Result<Response, ApiError> {
    let q = list_query(q.as_deref(), "ed")?;
    let uri = format!("{}/event_destinations", ctx.base);
    let st = app.state.read().unwrap_or_else(|p| p.into_inner());
    let empty = Default::default();
    let items = st
        .accounts
        .get(&ctx.account)
        .map_or(&empty, |a| &a.destinations);
    let (page, next) = page(
        items,
        &q,
        |d: &Destination| (&d.id, &d.created_at, &d.description, &d.metadata),
        &uri,
    );
    let list: Vec<Value> = page.iter().map(|d| d.to_json(&ctx.base)).collect();
    Ok(
        Json(json!({ "event_destinations": list, "next_page_uri": next, "uri": uri }))
            .into_response(),
    )
}

/// Sends `d` a test event (within the account's test-event rate): `Ok(Err)`
/// is the destination's refusal, whether it may pass if tried again, and
/// the vendor's reason.
async fn test_event(
    app: &Arc<App>,
    ctx: &Ctx,
    d: &Destination,
) -> Result<Result<(), (bool, String)>, ApiError> {
    app.test_events
        .take(&ctx.account)
        .map_err(|s| rate_limited("test events for this account", s))?;
    let plugins = app.engine.plugins();
    let spec = d.to_spec(&app.policy, &app.data_dir);
    let restrictions = app.restrictions.clone();
    blocking(move || {
        Ok(verify_destination(&plugins, &spec, &restrictions)
            .map_err(|e| (e.retryable, e.to_string())))
    })
    .await
}

/// `POST /event_destinations/{id}/test_event` (Sluice's own: what the
/// dashboard's "send a test event" does): `{"outcome": "delivered"}`, or
/// `"refused"` / `"try_again"` with the destination's reason.
pub(super) async fn send_test_event(
    axum::extract::State(app): Shared,
    Path(id): Path<String>,
    Call { ctx, .. }: Call,
) -> Result<Response, ApiError> {
    let d = find_destination(&app, &ctx, &id)?;
    let answer = match test_event(&app, &ctx, &d).await? {
        Ok(()) => json!({ "outcome": "delivered" }),
        Err((true, reason)) => json!({ "outcome": "try_again", "reason": reason }),
        Err((false, reason)) => json!({ "outcome": "refused", "reason": reason }),
    };
    Ok(Json(answer).into_response())
}

/// `GET /event_destination_kinds` (Sluice's own): the kinds this account
/// may use, each with whether it is an ngrok target (`{"<kind>": config}`)
/// or a plugin (`{"plugin": {"kind", "config"}}`) and the JSON schema of its
/// configuration, from which the console makes its forms.
pub(super) async fn list_destination_kinds(
    axum::extract::State(app): Shared,
    Call { .. }: Call,
) -> Result<Response, ApiError> {
    let plugins = app.engine.plugins();
    let kinds: Vec<Value> = app
        .policy
        .offered(&app.plugin_kinds)
        .into_iter()
        .map(|kind| {
            // An ngrok target takes the keys of the ngrok API, not all
            // its plugin's settings.
            let schema = crate::model::target_schema(&kind)
                .or_else(|| {
                    plugins
                        .get(&kind)
                        .ok()
                        .and_then(|p| serde_json::from_str::<Value>(&p.info.config_schema).ok())
                })
                .unwrap_or(Value::Null);
            json!({
                "kind": kind,
                "ngrok_target": crate::policy::NGROK_KINDS.contains(&kind.as_str()),
                "config_schema": schema,
            })
        })
        .collect();
    Ok(Json(json!({ "kinds": kinds })).into_response())
}

pub(super) fn find_destination(app: &App, ctx: &Ctx, id: &str) -> Result<Destination, ApiError> {
    if !check_id(id, "ed", "an event destination")? {
        return Err(no_destination(id));
    }
    let st = app.state.read().unwrap_or_else(|p| p.into_inner());
    st.accounts
        .get(&ctx.account)
        .and_then(|a| a.destinations.get(id))
        .cloned()
        .ok_or_else(|| no_destination(id))
}

pub(super) async fn get_destination(
    axum::extract::State(app): Shared,
    Path(id): Path<String>,
    Call { ctx, .. }: Call,
) -> Result<Response, ApiError> {
    let d = find_destination(&app, &ctx, &id)?;
    Ok(Json(d.to_json(&ctx.base)).into_response())
}

pub(super) async fn update_destination(
    axum::extract::State(app): Shared,
    Path(id): Path<String>,
    Call { ctx, body }: Call,
) -> Result<Response, ApiError> {
    let old = find_destination(&app, &ctx, &id)?;
    let obj = body_object(&body)?;
    only_keys(
        &obj,
        &["id", "metadata", "description", "format", "target"],
        "EventDestinationUpdate",
    )?;
    let mut d = old.clone();
    if let Some(v) = string(&obj, "description")? {
        d.description = v;
    }
    if let Some(v) = string(&obj, "metadata")? {
        d.metadata = v;
    }
    check_lengths(Some(&d.description), Some(&d.metadata))?;
    if let Some(f) = string(&obj, "format")? {
        d.format = check_format(Some(&f))?;
    }
    if let Some(t) = member(&obj, "target") {
        let target = parse_target(t, Some(&old.target), &app.policy, &app.plugin_kinds)?;
        if target.member() != old.target.member() || target.kind() != old.target.kind() {
            return Err(ApiError::new(
                Code::TargetKindChanged,
                format!(
                    "The target type of a destination cannot change (from {} to {}); create a new destination.",
                    old.target.kind(),
                    target.kind()
                ),
            ));
        }
        d.target = target;
        check_file_area(&app, &d)?;
    }
    let json = d.to_json(&ctx.base);
    let stored = d.clone();
    app.change(
        &ctx,
        ("event_destination_updated.v0", json.clone()),
        move |_, a| {
            // Applied only to the version it was computed from: a
            // destination deleted or changed meanwhile (a secret rotated)
            // is neither brought back nor rolled back.
            still_as_read(
                a.destinations.get(&d.id),
                &old,
                || no_destination(&d.id),
                || changed_meanwhile("event destination", &d.id),
            )?;
            a.destinations.insert(d.id.clone(), d);
            Ok(())
        },
        move |s| s.put_destination(&stored),
    )
    .await?;
    Ok(Json(json).into_response())
}

/// Refuses a `file` destination whose path would leave the account's file
/// area through a symbolic link.
pub(super) fn check_file_area(app: &App, d: &Destination) -> Result<(), ApiError> {
    if let crate::model::Target::Plugin { kind, config, .. } = &d.target
        && kind == "file"
        && let Some(path) = config.get("path").and_then(Value::as_str)
    {
        let root = crate::policy::files_root(&app.data_dir, &d.account_id);
        crate::policy::resolve_file_path(&root, path)
            .map_err(|e| ApiError::new(Code::InvalidDestination, format!("file target: {e}")))?;
    }
    Ok(())
}

/// Whether a resource is still the version a change was computed from: gone
/// is `gone()` (404), changed is `changed()` (409).
pub(super) fn still_as_read<T: PartialEq>(
    current: Option<&T>,
    read: &T,
    gone: impl FnOnce() -> ApiError,
    changed: impl FnOnce() -> ApiError,
) -> Result<(), ApiError> {
    match current {
        None => Err(gone()),
        Some(cur) if cur != read => Err(changed()),
        Some(_) => Ok(()),
    }
}

/// A change computed from a version of a resource that another request
/// changed before this one could be applied: 409, to be read again and
/// retried (changes of one account are applied one at a time).
pub(super) fn changed_meanwhile(what: &str, id: &str) -> ApiError {
    ApiError::new(
        Code::Conflict,
        format!(
            "The {what} {id} was changed by another request while this one was applied; read it again and retry."
        ),
    )
}

pub(super) async fn delete_destination(
    axum::extract::State(app): Shared,
    Path(id): Path<String>,
    Call { ctx, .. }: Call,
) -> Result<Response, ApiError> {
    let d = find_destination(&app, &ctx, &id)?;
    let did = d.id.clone();
    app.change(
        &ctx,
        ("event_destination_deleted.v0", d.to_json(&ctx.base)),
        move |_, a| {
            if let Some(s) = a.subscriptions.values().find(|s| s.destination_ids.contains(&d.id)) {
                return Err(ApiError::new(
                    Code::DestinationInUse,
                    format!("Event Destination {} is still used by Event Subscription {}; remove it from the subscription first.", d.id, s.id),
                ));
            }
            a.destinations.remove(&d.id);
            Ok(())
        },
        move |s| s.delete_destination(&did),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
