//! Every node follows the configuration bucket: a change written through
//! any node reaches this node's API and engine as soon as the bucket's
//! watch delivers it (milliseconds on a healthy cluster).

use super::kv_store::{Changed, KvStore, apply_entry, is_put};
use crate::api::App;
use futures_util::StreamExt;
use sluice_stream::async_nats::jetstream::kv;
use std::sync::Arc;
use std::time::Duration;

/// Applies the bucket's changes to `app` for as long as the node runs; a
/// watch that ends (NATS out of reach for long) is opened again after the
/// last revision applied.
pub async fn follow(app: Arc<App>, store: Arc<KvStore>, mut watch: kv::Watch) {
    let mut last = 0u64;
    loop {
        while let Some(entry) = watch.next().await {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!("cluster: the configuration watch: {e}");
                    continue;
                }
            };
            last = last.max(entry.revision);
            let (app, store) = (app.clone(), store.clone());
            let _ = tokio::task::spawn_blocking(move || apply(&app, &store, &entry)).await;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match store.bucket().watch_all_from_revision(last + 1).await {
                Ok(w) => {
                    watch = w;
                    break;
                }
                Err(e) => tracing::warn!("cluster: cannot watch the configuration again: {e}"),
            }
        }
    }
}

/// Applies one entry under the change lock: to the served state, and to the
/// engine when it changes a destination or subscription. An entry this node
/// wrote itself changes nothing. A configuration this node's engine refuses
/// (a plugin that rejects it here) is logged: the state still follows the
/// cluster, as every node's API must answer the same.
fn apply(app: &App, store: &KvStore, entry: &kv::Entry) {
    let _w = app.write.lock().unwrap_or_else(|p| p.into_inner());
    let mut next = app.state.read().unwrap_or_else(|p| p.into_inner()).clone();
    let value = is_put(entry).then_some(&entry.value[..]);
    match apply_entry(&mut next, &entry.key, value) {
        Ok(Changed::Nothing) => {}
        Ok(changed) => {
            if changed == Changed::Pipeline
                && let Err(e) = app.engine.reconfigure(&app.pipeline(&next, None))
            {
                tracing::error!(
                    key = %entry.key,
                    "cluster: this node's engine refused a configuration change: {e}"
                );
            }
            *app.state.write().unwrap_or_else(|p| p.into_inner()) = next;
        }
        Err(e) => tracing::error!("cluster: a configuration entry cannot be read: {e}"),
    }
    store.saw(&entry.key, entry.revision);
}
