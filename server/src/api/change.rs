//! The one path every change takes: edit a copy of the account, reconfigure
//! the engine with the result, persist it, publish it as served state, and
//! emit its audit event under the configuration it made.

use super::*;

impl App {
    /// The engine's pipeline for `st`, with `over` (an account id and its
    /// next state) in place of that account's state. In a cluster every
    /// destination keeps its records in memory: a disk buffer would leave
    /// with a node that never returns, and the stream keeps what is not
    /// delivered yet.
    pub fn pipeline(&self, st: &State, over: Option<(&str, &AccountState)>) -> PipelineSpec {
        let mut spec = st.pipeline_with(
            self.strict_ngrok_filters,
            &self.policy,
            &self.data_dir,
            over,
        );
        if self.cluster.is_some() {
            crate::cluster::memory_only(&mut spec);
        }
        spec
    }

    /// The one path of a change, on a blocking thread: `edit` changes a copy
    /// of the caller's account ([`App::commit`]: the engine is reconfigured
    /// with the result, `persist` stores it, the served state follows), then
    /// the audit event (`event_type`, `object`) is emitted under the
    /// configuration the change made.
    pub(super) async fn change(
        self: &Arc<Self>,
        ctx: &Ctx,
        (event_type, object): (&'static str, Value),
        edit: impl FnOnce(&App, &mut AccountState) -> Result<(), ApiError> + Send + 'static,
        persist: impl FnOnce(&dyn ConfigStore) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), ApiError> {
        let (app, ctx) = (self.clone(), ctx.clone());
        blocking(move || {
            let committed = app.commit(&ctx.account, |a| edit(&app, a), persist)?;
            committed.audit(&ctx, event_type, &object);
            Ok(())
        })
        .await
    }

    /// Applies a change: `f` edits a copy of the account; the engine is
    /// reconfigured with the result and, if it accepts it, the store and the
    /// served state are updated. Returns what `f` returned.
    ///
    /// The returned [`Committed`] keeps other changes out until it is dropped,
    /// so that the change's audit event is processed under the configuration
    /// the change made, before any later change.
    fn commit(
        &self,
        account: &str,
        f: impl FnOnce(&mut AccountState) -> Result<(), ApiError>,
        persist: impl FnOnce(&dyn ConfigStore) -> Result<(), StoreError>,
    ) -> Result<Committed<'_>, ApiError> {
        let w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut acct = {
            let st = self.state.read().unwrap_or_else(|p| p.into_inner());
            st.accounts.get(account).cloned().unwrap_or_default()
        };
        if acct.created_at.is_empty() {
            acct.created_at = crate::now();
        }
        f(&mut acct)?;
        let spec = self.pipeline(
            &self.state.read().unwrap_or_else(|p| p.into_inner()),
            Some((account, &acct)),
        );
        if let Err(e) = self.engine.reconfigure(&spec) {
            let msg =
                e.0.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
            return Err(ApiError::new(Code::InvalidDestination, msg));
        }
        if let Err(e) = persist(&*self.store) {
            // Put the engine back as it was.
            let old = self.pipeline(&self.state.read().unwrap_or_else(|p| p.into_inner()), None);
            let _ = self.engine.reconfigure(&old);
            return Err(match e {
                StoreError::Conflict(m) => ApiError::new(Code::Conflict, m),
                StoreError::Failed(m) => {
                    ApiError::internal(format!("could not store the change: {m}"))
                }
            });
        }
        self.state
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .accounts
            .insert(account.to_string(), acct);
        Ok(Committed {
            app: self,
            _write: w,
        })
    }

    /// An audit event about this API's own resources.
    fn audit_event(&self, ctx: &Ctx, event_type: &str, object: &Value) -> Bytes {
        let ev = json!({
            "event_id": ids::new_id("ev"),
            "event_type": event_type,
            "event_timestamp": crate::now(),
            "account_id": ctx.account,
            "principal": {
                "id": ctx.key_id,
                "subject": if ctx.key_description.is_empty() { ctx.key_id.clone() } else { ctx.key_description.clone() },
                "source": "API",
                "credential": { "id": ctx.key_id, "uri": format!("{}/api_keys/{}", ctx.base, ctx.key_id) },
            },
            "object": object,
        });
        Bytes::from(ev.to_string())
    }

    /// Emits an audit event about something other than a change of
    /// configuration (a replay of dead letters), waiting up to 5 s until a
    /// worker routed it. On a blocking thread.
    pub(super) fn audit_now(&self, ctx: &Ctx, event_type: &str, object: &Value) {
        let ev = self.audit_event(ctx, event_type, object);
        self.publish_audit(ev, event_type, std::time::Duration::from_secs(5));
    }

    /// Publishes an audit event and waits up to `wait` until a worker has
    /// routed it.
    fn publish_audit(&self, ev: Bytes, event_type: &str, wait: std::time::Duration) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.engine.publish_ndjson_tracked(ev, move |r| {
            let _ = tx.send(r);
        });
        if rx.recv_timeout(wait).is_err() {
            tracing::warn!(event_type, "audit event not processed within {wait:?}");
        }
    }
}

/// A change applied and stored; other changes wait until it is dropped.
pub(super) struct Committed<'a> {
    app: &'a App,
    _write: std::sync::MutexGuard<'a, ()>,
}

impl Committed<'_> {
    /// Emits the change's audit event, processed under the configuration the
    /// change made, before any later change, when the worker it goes to has
    /// room. Otherwise (the engine is overloaded) the lock on changes is let
    /// go first: no publish blocks while holding it, and the event may then
    /// be routed under a later configuration.
    pub(super) fn audit(self, ctx: &Ctx, event_type: &str, object: &Value) {
        let app = self.app;
        let ev = app.audit_event(ctx, event_type, object);
        if app.engine.has_room_for(&ev) {
            app.publish_audit(ev, event_type, std::time::Duration::from_secs(5));
        } else {
            drop(self);
            app.publish_audit(ev, event_type, std::time::Duration::from_secs(30));
        }
    }
}
