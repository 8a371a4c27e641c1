//! `sluice serve --cluster nats://...`: many nodes as one service on NATS
//! JetStream (see docs/cluster.md).
//!
//! - **Joining** ([`join`]): the node connects (and keeps retrying, saying
//!   why, while no NATS server answers), makes sure the event stream and the
//!   configuration bucket exist, checks that its operator policy is the
//!   cluster's, and loads the configuration. It serves nothing before.
//! - **Configuration** (`kv_store.rs`): the API's state in the bucket
//!   `SLUICE_CONFIG`, behind the same [`crate::store::ConfigStore`] as
//!   SQLite; every node follows the bucket (`follow.rs`) and applies a
//!   change to its engine as it arrives.
//! - **Events**: `/ingest` publishes to the stream
//!   ([`sluice_stream::Publisher`]) and answers once JetStream stored every
//!   message with its replicas; each node consumes its share of the
//!   partitions into its engine (`consume.rs`) and acks a message only once
//!   every record made from it is delivered or dead-lettered.

mod consume;
pub mod dead_letter_queue;
pub mod dead_letters;
mod follow;
mod kv_store;
pub mod tap;

pub use consume::{Consumer, SpillStats};
pub use follow::follow;
pub use kv_store::{BUCKET, Changed, KvStore, apply_entry};

use crate::policy::TenantPolicy;
use bytes::Bytes;
use sluice_stream::async_nats::jetstream;
use sluice_stream::{ConsumeSettings, ConsumeStats, Publisher, StreamError, StreamSettings};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How a node joins a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The NATS servers, comma-separated `nats://HOST:PORT` URLs.
    pub servers: String,
    /// The event stream (partitions, replicas, retention, ...).
    pub stream: StreamSettings,
    /// How this node consumes (its name, ack wait, lease time, ...).
    pub consume: ConsumeSettings,
    /// How long a message waits for its records before the accounts whose
    /// records are not safe yet are put aside on the spill subject.
    /// Default 5 s.
    pub spill_after: Duration,
}

impl ClusterOptions {
    /// The defaults for `servers`, with a node name made up here.
    pub fn new(servers: impl Into<String>) -> ClusterOptions {
        ClusterOptions {
            servers: servers.into(),
            stream: StreamSettings::default(),
            consume: ConsumeSettings::new(node_name()),
            spill_after: Duration::from_secs(5),
        }
    }
}

/// A node name made up at start: random. (It was the first characters of
/// a time-ordered id, which are its millisecond: nodes started at the same
/// moment shared a name, so one heartbeat and one set of leases.)
fn node_name() -> String {
    format!("node-{}", crate::ids::hex(&crate::ids::random_bytes::<6>()))
}

/// A node's link to its cluster, shared by the API's handlers.
pub struct Link {
    /// Publishes `/ingest` bodies to the stream.
    pub publisher: Publisher,
    /// The configuration bucket.
    pub store: Arc<KvStore>,
    /// This node's name.
    pub node: String,
    /// The event stream's settings.
    pub stream: StreamSettings,
    /// The consumption's counters, once it started.
    pub consumed: OnceLock<(Arc<ConsumeStats>, Arc<Consumer>)>,
    /// The destinations' dead letters, listed and replayed from any node.
    pub dead_letters: Arc<dead_letter_queue::JetStreamDeadLetters>,
}

impl Link {
    /// Whether the node's NATS connection is up now.
    pub fn connected(&self) -> bool {
        self.publisher.client().connection_state()
            == sluice_stream::async_nats::connection::State::Connected
    }
}

/// The configuration bucket of the cluster at `servers` as a store whose
/// blocking calls run on `rt` (a multi-threaded runtime), made if missing
/// when `create` (with 3 copies on three or more servers): for
/// `sluice keys create --cluster` and for seeding a cluster's
/// configuration before its nodes start (benchmarks).
pub fn connect_store(
    servers: &str,
    rt: &tokio::runtime::Handle,
    create: bool,
) -> Result<KvStore, String> {
    let kv = rt.block_on(async {
        let client = sluice_stream::connect(servers)
            .await
            .map_err(|e| e.to_string())?;
        let js = jetstream::new(client.clone());
        if create {
            let replicas = sluice_stream::default_replicas(servers, &client);
            sluice_stream::open_bucket(&js, BUCKET, Duration::ZERO, replicas)
                .await
                .map_err(|e| e.to_string())
        } else {
            js.get_key_value(BUCKET).await.map_err(|e| {
                format!(
                    "the cluster at {servers} has no configuration bucket {BUCKET} ({e}): start a `sluice serve --cluster` node first"
                )
            })
        }
    })?;
    Ok(KvStore::new(kv, rt.clone()))
}

/// Makes every destination of `spec` keep its records in memory: in a
/// cluster a disk buffer would leave with a node that never returns, and the
/// stream keeps what is not delivered yet (a message is acked only once its
/// records are delivered or dead-lettered).
pub fn memory_only(spec: &mut sluice_engine::config::PipelineSpec) {
    for d in &mut spec.destinations {
        d.delivery.durability = sluice_engine::config::Durability::Memory;
    }
}

impl Link {
    /// The operator's metrics in a cluster: `engine` (the engine's
    /// Prometheus text) with a `node` label on every sample, then the
    /// node's consumption: messages acked, redelivered (the duplicates a
    /// failover causes are among them) and naked, partitions held, and the
    /// lag of each partition it holds (asked of JetStream).
    pub async fn metrics(&self, engine: &str) -> String {
        use std::fmt::Write;
        let node = self.node.as_str();
        let mut out = with_label(engine, "node", node);
        let Some((stats, consumer)) = self.consumed.get() else {
            return out;
        };
        let spill = &consumer.stats;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        for (name, help, kind, v) in [
            (
                "sluice_cluster_messages_acked_total",
                "Stream messages handled and acked by this node.",
                "counter",
                n(&stats.acked),
            ),
            (
                "sluice_cluster_messages_redelivered_total",
                "Stream messages that reached this node as redeliveries (after a node failed or a handler error).",
                "counter",
                n(&stats.redelivered),
            ),
            (
                "sluice_cluster_messages_naked_total",
                "Stream messages this node could not finish and handed back.",
                "counter",
                n(&stats.naked),
            ),
            (
                "sluice_cluster_partitions_held",
                "Partitions this node consumes now.",
                "gauge",
                n(&stats.partitions),
            ),
            (
                "sluice_cluster_live_nodes",
                "Nodes this node counted alive at its last lease tick (its share of the partitions is their number divided by it).",
                "gauge",
                n(&stats.live_nodes),
            ),
            (
                "sluice_cluster_heartbeat_failures_total",
                "Lease ticks at which this node could not write its heartbeat (the other nodes then do not count it).",
                "counter",
                n(&stats.heartbeat_failures),
            ),
            (
                "sluice_cluster_events_spilled_total",
                "Events this node put aside on a spill subject (accounts whose destinations were slow), again when put back.",
                "counter",
                n(&spill.spilled),
            ),
            (
                "sluice_cluster_events_drained_total",
                "Spilled events this node handed back to its engine.",
                "counter",
                n(&spill.drained),
            ),
            (
                "sluice_cluster_events_spilled_late_total",
                "Events spilled after the engine had them (their records may be delivered twice).",
                "counter",
                n(&spill.after_timeout),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{node}\"}} {v}"
            );
        }
        let held = stats.held.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let lag = sluice_stream::lag(self.publisher.client(), &self.stream, &held).await;
        for (name, help, get) in [
            (
                "sluice_cluster_partition_pending_messages",
                "Messages of a partition this node holds that are stored and not yet delivered to it.",
                (|l: &sluice_stream::Lag| l.pending) as fn(&sluice_stream::Lag) -> u64,
            ),
            (
                "sluice_cluster_partition_unacked_messages",
                "Messages of a partition this node holds that it has and has not acked.",
                |l: &sluice_stream::Lag| l.unacked,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for l in &lag {
                let _ = writeln!(
                    out,
                    "{name}{{node=\"{node}\",partition=\"{}\"}} {}",
                    l.partition,
                    get(l)
                );
            }
        }
        out
    }
}

/// Adds `name="value"` as the first label of every sample of a Prometheus
/// text.
fn with_label(text: &str, name: &str, value: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            out.push_str(line);
        } else if let Some(i) = line.find(['{', ' ']) {
            let (metric, rest) = line.split_at(i);
            out.push_str(metric);
            if let Some(labels) = rest.strip_prefix('{') {
                let sep = if labels.starts_with('}') { "" } else { "," };
                out.push_str(&format!("{{{name}=\"{value}\"{sep}{labels}"));
            } else {
                out.push_str(&format!("{{{name}=\"{value}\"}}{rest}"));
            }
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// What joining gave.
pub struct Joined {
    /// The link.
    pub link: Arc<Link>,
    /// The configuration as loaded.
    pub state: crate::store::State,
    /// The bucket's changes after the load, to follow.
    pub watch: jetstream::kv::Watch,
}

/// The key of the operator policy every node must share.
const POLICY_KEY: &str = "cluster.policy";

/// Why joining stopped.
enum JoinError {
    /// Retrying cannot fix it.
    Fatal(String),
    /// NATS or JetStream not ready yet: try again.
    Retry(String),
}

/// Joins the cluster: connects, opens the stream and the configuration
/// bucket, checks the operator policy and loads the configuration. While no
/// NATS server answers or JetStream is not ready (a bucket just made has no
/// leader yet, nodes starting together), it tries again every few seconds
/// with a warning naming the servers and the reason, serving nothing
/// meanwhile. An error only for what retrying cannot fix: servers whose
/// `max_payload` is too small, or a policy that differs from the cluster's.
pub async fn join(
    opts: &ClusterOptions,
    policy: &TenantPolicy,
    rt: tokio::runtime::Handle,
) -> Result<Joined, String> {
    let mut wait = Duration::from_millis(250);
    loop {
        match try_join(opts, policy, &rt).await {
            Ok(j) => return Ok(j),
            Err(JoinError::Fatal(e)) => return Err(e),
            Err(JoinError::Retry(e)) => {
                tracing::warn!(
                    servers = %opts.servers,
                    "cluster: cannot join yet ({e}); serving nothing until it can; retrying in {wait:?}"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn try_join(
    opts: &ClusterOptions,
    policy: &TenantPolicy,
    rt: &tokio::runtime::Handle,
) -> Result<Joined, JoinError> {
    let publisher = match Publisher::connect(&opts.servers, opts.stream.clone()).await {
        Ok(p) => p,
        Err(e @ StreamError::PayloadTooSmall { .. }) => {
            return Err(JoinError::Fatal(e.to_string()));
        }
        Err(e) => return Err(JoinError::Retry(e.to_string())),
    };
    let js = jetstream::new(publisher.client().clone());
    let bucket = sluice_stream::open_bucket(&js, BUCKET, Duration::ZERO, publisher.replicas())
        .await
        .map_err(|e| JoinError::Retry(e.to_string()))?;
    let store = Arc::new(KvStore::new(bucket, rt.clone()));
    check_policy(&store, policy).await?;
    let dead_letters = Arc::new(
        dead_letter_queue::JetStreamDeadLetters::open(
            publisher.clone(),
            opts.stream.clone(),
            opts.consume.node.clone(),
            rt.clone(),
        )
        .await
        .map_err(JoinError::Retry)?,
    );
    let (state, watch) = store.load_async().await.map_err(JoinError::Retry)?;
    tracing::info!(
        node = %opts.consume.node,
        accounts = state.accounts.len(),
        "cluster: joined; configuration loaded from {BUCKET}"
    );
    Ok(Joined {
        link: Arc::new(Link {
            publisher,
            store,
            node: opts.consume.node.clone(),
            stream: opts.stream.clone(),
            consumed: OnceLock::new(),
            dead_letters,
        }),
        state,
        watch,
    })
}

/// Starts consuming this node's share of the stream into `engine`, trying
/// again (with a warning) while JetStream is not ready.
pub async fn consume(
    link: &Link,
    opts: &ClusterOptions,
    engine: Arc<sluice_engine::Engine>,
) -> sluice_stream::Node {
    let consumer = Arc::new(Consumer::new(
        engine,
        link.publisher.clone(),
        opts.spill_after,
    ));
    let mut wait = Duration::from_millis(250);
    loop {
        match sluice_stream::Node::start(
            link.publisher.client().clone(),
            link.stream.clone(),
            opts.consume.clone(),
            link.publisher.replicas(),
            consumer.handlers(),
        )
        .await
        {
            Ok(node) => {
                let _ = link.consumed.set((node.stats.clone(), consumer.clone()));
                return node;
            }
            Err(e) => {
                tracing::warn!(
                    "cluster: cannot consume the event stream yet ({e}); retrying in {wait:?}"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Stores this node's policy as the cluster's if there is none yet; else
/// refuses to join when it differs, naming the settings that differ.
async fn check_policy(store: &KvStore, policy: &TenantPolicy) -> Result<(), JoinError> {
    let retry = |e: crate::store::StoreError| JoinError::Retry(e.to_string());
    let mine = serde_json::to_value(policy).map_err(|e| JoinError::Fatal(e.to_string()))?;
    let body = Bytes::from(mine.to_string());
    if store.create_async(POLICY_KEY, body).await.map_err(retry)? {
        return Ok(());
    }
    let theirs = store
        .get_async(POLICY_KEY)
        .await
        .map_err(retry)?
        .ok_or_else(|| JoinError::Retry(format!("{BUCKET} key {POLICY_KEY} vanished")))?;
    let theirs: serde_json::Value = serde_json::from_slice(&theirs)
        .map_err(|e| JoinError::Fatal(format!("{BUCKET} key {POLICY_KEY}: {e}")))?;
    let differ = policy_differences(&mine, &theirs);
    if differ.is_empty() {
        return Ok(());
    }
    Err(JoinError::Fatal(format!(
        "this node's tenant policy differs from the cluster's (kept in the {BUCKET} bucket, key {POLICY_KEY}) in {}: start it with the cluster's policy; every node must enforce the same rules",
        differ.join(", ")
    )))
}

/// The settings (dotted paths) whose values differ between two policies.
fn policy_differences(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    fn walk(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        &p,
                        out,
                    );
                }
            }
            _ if a != b => out.push(format!("{path} (this node: {a}, cluster: {b})")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(a, b, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_started_at_the_same_moment_get_different_names() {
        let names: std::collections::HashSet<String> = (0..1000)
            .map(|_| ClusterOptions::new("x").consume.node)
            .collect();
        assert_eq!(names.len(), 1000);
    }

    #[test]
    fn every_sample_gets_the_node_label() {
        let t = "# HELP a x\n# TYPE a counter\na 1\nb{d=\"e\"} 2\nc{} 3\n";
        assert_eq!(
            with_label(t, "node", "n1"),
            "# HELP a x\n# TYPE a counter\na{node=\"n1\"} 1\nb{node=\"n1\",d=\"e\"} 2\nc{node=\"n1\"} 3\n"
        );
    }

    #[test]
    fn policy_differences_name_each_setting() {
        let mut a = TenantPolicy::default();
        let b = serde_json::to_value(&a).unwrap();
        assert!(policy_differences(&serde_json::to_value(&a).unwrap(), &b).is_empty());
        a.max_destinations = 3;
        a.allow_private_destinations = !a.allow_private_destinations;
        let d = policy_differences(&serde_json::to_value(&a).unwrap(), &b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d.iter()
                .any(|s| s.starts_with("max_destinations (this node: 3, cluster: 100)")),
            "{d:?}"
        );
        assert!(
            d.iter()
                .any(|s| s.starts_with("allow_private_destinations")),
            "{d:?}"
        );
    }
}
