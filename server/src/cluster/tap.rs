//! Live taps across a cluster. A subscription's records are made on the
//! node that holds its account's partition, while the client may tap any
//! node. The node serving a tap announces it in the key-value bucket
//! `SLUICE_TAPS` (key `<subscription>.<node>`, renewed while the tap is
//! open, expiring 10 s after the last renewal), and listens on the core NATS
//! subject `sluice.tap.<subscription>`. Every node follows the bucket: while
//! a subscription is announced by another node, it taps its own engine and
//! publishes what it gets on that subject (at most the tap's rate per
//! node). Nothing is stored: a tap is a sample, like on one node.

use super::Link;
use bytes::Bytes;
use futures_util::StreamExt;
use sluice_engine::Engine;
use sluice_stream::async_nats::jetstream::{self, kv};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The bucket of announced taps.
const BUCKET: &str = "SLUICE_TAPS";
/// How long an announcement lives without renewal.
const TTL: Duration = Duration::from_secs(10);
/// Records a second each node passes on for a remote tap.
const RATE: u32 = 200;

/// The subject a subscription's tapped records travel on.
pub fn subject(subscription: &str) -> String {
    format!("sluice.tap.{subscription}")
}

async fn bucket(link: &Link) -> Result<kv::Store, String> {
    let js = jetstream::new(link.publisher.client().clone());
    sluice_stream::open_bucket(&js, BUCKET, TTL, link.publisher.replicas())
        .await
        .map_err(|e| e.to_string())
}

/// A tap announced to the other nodes; withdrawn when dropped.
pub struct Announced {
    /// The other nodes' records for the tapped subscription.
    pub records: sluice_stream::async_nats::Subscriber,
    renew: tokio::task::JoinHandle<()>,
}

impl Drop for Announced {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

/// Announces a tap on `subscription` served by this node and listens for
/// the records other nodes pass on.
pub async fn announce(link: &Link, subscription: &str) -> Result<Announced, String> {
    let client = link.publisher.client().clone();
    let records = client
        .subscribe(subject(subscription))
        .await
        .map_err(|e| e.to_string())?;
    let kv = bucket(link).await?;
    let key = format!("{subscription}.{}", link.node);
    let renew = tokio::spawn(async move {
        // A failed renewal is tried again after a second, not a third of
        // the TTL, so that a short outage does not let the announcement
        // expire; the other nodes' records stop while it is missing, so
        // each failed streak is logged (once) and its end too.
        let mut failing = false;
        loop {
            match kv.put(&key, Bytes::new()).await {
                Ok(_) => {
                    if failing {
                        tracing::info!(key, "cluster: the tap's announcement is renewed again");
                    }
                    failing = false;
                    tokio::time::sleep(TTL / 3).await;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(
                            key,
                            "cluster: cannot renew the tap's announcement ({e}); other nodes' records for it stop if it expires; retrying every second"
                        );
                    }
                    failing = true;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(Announced { records, renew })
}

/// Follows the announcements for as long as the node runs: while another
/// node taps a subscription, this node taps its engine for it and passes
/// the records on.
pub async fn serve_remote_taps(link: Arc<Link>, engine: Arc<Engine>) {
    loop {
        if let Err(e) = follow(&link, &engine).await {
            tracing::warn!("cluster: following the announced taps: {e}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow(link: &Link, engine: &Arc<Engine>) -> Result<(), String> {
    let kv = bucket(link).await?;
    let mut watch = kv
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    // Per subscription: the nodes tapping it, and this node's forwarder.
    let mut taps: HashMap<String, (Vec<String>, tokio::task::JoinHandle<()>)> = HashMap::new();
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| e.to_string())?;
        let Some((subscription, node)) = entry.key.rsplit_once('.') else {
            continue;
        };
        if node == link.node {
            continue;
        }
        let live = entry.operation == kv::Operation::Put;
        let (subscription, node) = (subscription.to_string(), node.to_string());
        if live {
            let t = taps.entry(subscription.clone()).or_insert_with(|| {
                let task = tokio::spawn(forward(
                    link.publisher.client().clone(),
                    engine.clone(),
                    subscription.clone(),
                ));
                (Vec::new(), task)
            });
            if !t.0.contains(&node) {
                t.0.push(node);
            }
        } else if let Some(t) = taps.get_mut(&subscription) {
            t.0.retain(|n| *n != node);
            if t.0.is_empty()
                && let Some((_, task)) = taps.remove(&subscription)
            {
                task.abort();
            }
        }
    }
    for (_, (_, task)) in taps {
        task.abort();
    }
    Ok(())
}

/// Taps this node's engine for `subscription` and publishes the records on
/// its subject until aborted.
async fn forward(
    client: sluice_stream::async_nats::Client,
    engine: Arc<Engine>,
    subscription: String,
) {
    let mut tap = engine.tap(&subscription, RATE, 256);
    let subject = subject(&subscription);
    while let Some(r) = tap.next().await {
        let _ = client.publish(subject.clone(), r).await;
    }
}
