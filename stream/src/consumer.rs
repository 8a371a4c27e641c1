//! Consuming the stream on the nodes of a cluster.
//!
//! - **One durable pull consumer per partition** (`part-<p>`, explicit
//!   acks), held by one node at a time through a **lease**: a key
//!   `part.<p>` in the key-value bucket `SLUICE_LEASES`, whose entries
//!   expire `lease_ttl` after their last write. A node creates the key to
//!   take a partition (only one create wins), renews it with a
//!   revision-checked update every `lease_ttl / 3`, and stops consuming the
//!   partition the moment the key turns out to be another's, or when it
//!   could not renew for `2 × lease_ttl / 3` (before the lease can expire).
//! - **Balance.** Each node writes a heartbeat key in `SLUICE_NODES` (same
//!   expiry); with `N` live nodes each aims at `ceil(P / N)` partitions,
//!   takes free ones while below, and gives back its highest ones while
//!   above (finishing the message in hand first).
//! - **Acks that mean something.** A partition's messages are handled one
//!   at a time, in stream order (per-account order while healthy). A
//!   message is acked (double ack: the server confirms it) only once the
//!   handler returned `Ok`, that is, once every record made from it is
//!   delivered, dead-lettered or handed to a durable place; while the
//!   handler runs, progress acks keep the server from redelivering it. A
//!   handler error naks the message with a delay.
//! - **A node that dies** stops renewing: its leases expire after
//!   `lease_ttl`, another node takes its partitions, and what it had not
//!   acked is redelivered after `ack_wait`. Duplicates are bounded by what
//!   it had in hand: at most `max_ack_pending` messages per partition
//!   (here one at a time is handled, and fetched batches hold at most
//!   `fetch_batch`), each counted as redelivered on the node that gets it.
//! - **Spill.** Each partition also has a spill subject (stream
//!   `SLUICE_SPILL`, a work queue) where the handler may put events it
//!   should not wait for (accounts whose destinations are slow). The
//!   partition's holder reads it (consumer `spill-<p>`) in the same task,
//!   between messages, once a second when [`Handlers::drain`] says so,
//!   handing each message to the same handler marked `spilled`.

use crate::bucket::open_bucket;
use crate::publisher::StreamError;
use crate::settings::StreamSettings;
use async_nats::jetstream::{self, AckKind, consumer::pull, kv};
use bytes::Bytes;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How a node consumes.
#[derive(Clone, Debug)]
pub struct ConsumeSettings {
    /// This node's id (unique in the cluster).
    pub node: String,
    /// How long the server waits for an ack before redelivering. Default 30 s.
    pub ack_wait: Duration,
    /// Unacknowledged messages the server lets a partition's consumer have.
    /// Default 64.
    pub max_ack_pending: i64,
    /// How long a lease (and a heartbeat) lives without renewal. Default 10 s.
    pub lease_ttl: Duration,
    /// Messages fetched per pull. Default 16.
    pub fetch_batch: usize,
    /// Messages of one partition handed to the handler and not yet done.
    /// They are handed over one at a time, in stream order; their
    /// completions overlap. Default 8.
    pub max_in_flight: usize,
}

impl ConsumeSettings {
    /// The defaults, for node `node`.
    pub fn new(node: impl Into<String>) -> ConsumeSettings {
        ConsumeSettings {
            node: node.into(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 64,
            lease_ttl: Duration::from_secs(10),
            fetch_batch: 16,
            max_in_flight: 8,
        }
    }
}

/// One message handed to the handler.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Its partition.
    pub partition: u32,
    /// The events, one per line.
    pub payload: Bytes,
    /// Its sequence in the stream.
    pub stream_sequence: u64,
    /// Delivered before (to this node or another) without an ack.
    pub redelivered: bool,
    /// From the partition's spill subject (events put aside earlier).
    pub spilled: bool,
}

/// What the handler answers in two steps: the future it returns resolves
/// once the message is handed over (the next message of the partition is
/// handed over only then, so that they go on in stream order), to a
/// [`Completion`]; `Err` to have it redelivered later.
pub type Handled = Pin<Box<dyn Future<Output = Result<Completion, String>> + Send>>;

/// Resolves `Ok` once every record of the message is delivered,
/// dead-lettered or durably handed on (the message is then acked); `Err` to
/// have it redelivered later.
pub type Completion = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A completion that is done already (a handler with nothing to wait for).
pub fn completed() -> Completion {
    Box::pin(std::future::ready(Ok(())))
}

/// The handler of a node's messages.
pub type Handler = Arc<dyn Fn(Delivery) -> Handled + Send + Sync>;

/// What a node does with its partitions' messages.
#[derive(Clone)]
pub struct Handlers {
    /// Each message, from the partition or its spill subject.
    pub message: Handler,
    /// Asked once a second per held partition: whether to read its spill
    /// subject now (say no while nothing spilled could be delivered, so
    /// that spilled events are not read over and over).
    pub drain: Arc<dyn Fn(u32) -> bool + Send + Sync>,
}

impl From<Handler> for Handlers {
    /// A handler that never spills: its spill subjects are never read.
    fn from(message: Handler) -> Handlers {
        Handlers {
            message,
            drain: Arc::new(|_| false),
        }
    }
}

/// Counters of one node's consumption.
#[derive(Debug, Default)]
pub struct ConsumeStats {
    /// Messages handled and acked.
    pub acked: AtomicU64,
    /// Messages that arrived as redeliveries (the duplicates a failover
    /// causes are among them).
    pub redelivered: AtomicU64,
    /// Messages naked after a handler error.
    pub naked: AtomicU64,
    /// Partitions held now.
    pub partitions: AtomicU64,
    /// Nodes counted live at the last tick (the share is the partitions
    /// divided by it).
    pub live_nodes: AtomicU64,
    /// Messages whose payload could not be decoded (ended, not delivered).
    pub undecodable: AtomicU64,
    /// Ticks at which this node could not write its heartbeat: the other
    /// nodes then do not count it, and aim at a larger share each.
    pub heartbeat_failures: AtomicU64,
    /// Which partitions are held now, in order.
    pub held: std::sync::Mutex<Vec<u32>>,
}

/// How far behind one partition's consumer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lag {
    /// The partition.
    pub partition: u32,
    /// Messages stored and not yet delivered to its consumer.
    pub pending: u64,
    /// Messages delivered and not yet acked.
    pub unacked: u64,
}

/// The lag of each of `partitions` (asked of JetStream, one request each;
/// a partition whose consumer does not answer is left out).
pub async fn lag(
    client: &async_nats::Client,
    stream: &StreamSettings,
    partitions: &[u32],
) -> Vec<Lag> {
    let js = jetstream::new(client.clone());
    let Ok(events) = js.get_stream(&stream.stream).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for &p in partitions {
        if let Ok(info) = events.consumer_info(consumer_name(p)).await {
            out.push(Lag {
                partition: p,
                pending: info.num_pending,
                unacked: info.num_ack_pending as u64,
            });
        }
    }
    out
}

struct Held {
    revision: u64,
    /// When the lease was last renewed.
    renewed: Instant,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// A node consuming its share of the partitions; stops (without acking
/// what is in hand) when dropped or killed.
pub struct Node {
    /// Its counters.
    pub stats: Arc<ConsumeStats>,
    held: Arc<tokio::sync::Mutex<HashMap<u32, Held>>>,
    coordinator: JoinHandle<()>,
    leases: kv::Store,
    nodes: kv::Store,
    name: String,
}

impl Node {
    /// Starts consuming on `client`: creates the lease and heartbeat
    /// buckets if missing, then takes and renews its share of partitions.
    pub async fn start(
        client: async_nats::Client,
        stream: StreamSettings,
        settings: ConsumeSettings,
        replicas: usize,
        handlers: impl Into<Handlers>,
    ) -> Result<Node, StreamError> {
        let handlers = handlers.into();
        let js = jetstream::new(client);
        let leases = open_bucket(&js, "SLUICE_LEASES", settings.lease_ttl, replicas).await?;
        let nodes = open_bucket(&js, "SLUICE_NODES", settings.lease_ttl, replicas).await?;
        let events = js
            .get_stream(&stream.stream)
            .await
            .map_err(|e| StreamError::Stream {
                stream: stream.stream.clone(),
                reason: e.to_string(),
            })?;
        // The spill stream exists when a `Publisher` made the stream; a
        // stream made otherwise has none, and nothing is spilled.
        let spill = js.get_stream(&stream.spill_stream).await.ok();
        let stats = Arc::new(ConsumeStats::default());
        let held: Arc<tokio::sync::Mutex<HashMap<u32, Held>>> = Arc::default();
        let ctx = Arc::new(Ctx {
            stream,
            settings,
            events,
            spill,
            handlers,
            stats: stats.clone(),
        });
        let name = ctx.settings.node.clone();
        let coordinator =
            tokio::spawn(coordinate(ctx, leases.clone(), nodes.clone(), held.clone()));
        Ok(Node {
            stats,
            held,
            coordinator,
            leases,
            nodes,
            name,
        })
    }

    /// The partitions held now (not those being given back).
    pub async fn partitions(&self) -> Vec<u32> {
        let held = self.held.lock().await;
        let mut p: Vec<u32> = held
            .iter()
            .filter(|(_, l)| !l.stop.load(Ordering::SeqCst))
            .map(|(p, _)| *p)
            .collect();
        p.sort_unstable();
        p
    }

    /// Stops and hands its partitions over at once: each partition's task
    /// finishes the message in hand (up to `timeout` in all; then it is cut
    /// off, and that message comes back after the ack wait) and hands back
    /// what it had fetched, then its lease and heartbeat are deleted so
    /// that the other nodes take its partitions at their next look, without
    /// waiting for the lease to expire.
    pub async fn stop(self, timeout: Duration) {
        self.coordinator.abort();
        let deadline = tokio::time::Instant::now() + timeout;
        let held: Vec<(u32, Held)> = self.held.lock().await.drain().collect();
        for (_, h) in &held {
            h.stop.store(true, Ordering::SeqCst);
        }
        for (p, h) in held {
            let task = h.task;
            tokio::pin!(task);
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                // Cut off mid-message: the lease expires by itself.
                continue;
            }
            let _ = self
                .leases
                .delete_expect_revision(lease_key(p), Some(h.revision))
                .await;
        }
        let _ = self.nodes.delete(&self.name).await;
    }

    /// Stops at once, as a crash would: nothing more is acked, leases are
    /// left to expire, unacked messages are redelivered to others.
    pub async fn kill(self) {
        self.coordinator.abort();
        for (_, h) in self.held.lock().await.drain() {
            h.task.abort();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.coordinator.abort();
        if let Ok(mut held) = self.held.try_lock() {
            for (_, h) in held.drain() {
                h.task.abort();
            }
        }
    }
}

struct Ctx {
    stream: StreamSettings,
    settings: ConsumeSettings,
    events: jetstream::stream::Stream,
    spill: Option<jetstream::stream::Stream>,
    handlers: Handlers,
    stats: Arc<ConsumeStats>,
}

/// Takes, renews and gives back leases every `lease_ttl / 3`.
async fn coordinate(
    ctx: Arc<Ctx>,
    leases: kv::Store,
    nodes: kv::Store,
    held: Arc<tokio::sync::Mutex<HashMap<u32, Held>>>,
) {
    let me = ctx.settings.node.clone();
    let partitions = ctx.stream.partitions.max(1);
    let tick = ctx.settings.lease_ttl / 3;
    // Each node starts looking at a different partition.
    let start = crate::partition_of(me.as_bytes(), partitions);
    // The nodes counted last time, for a tick whose count did not come.
    let mut last_live = 1;
    // Whether the last heartbeat failed (said once, not at every tick).
    let mut unseen = false;
    loop {
        match nodes.put(&me, Bytes::new()).await {
            Ok(_) if unseen => {
                unseen = false;
                tracing::info!(node = %me, "heartbeat written again");
            }
            Ok(_) => {}
            Err(e) => {
                ctx.stats.heartbeat_failures.fetch_add(1, Ordering::Relaxed);
                if !unseen {
                    unseen = true;
                    tracing::warn!(
                        node = %me,
                        error = %e,
                        "cannot write this node's heartbeat to SLUICE_NODES: the other nodes do not count it and aim at a larger share of the partitions until it is written again (it keeps the partitions whose leases it renews)"
                    );
                }
            }
        }
        let live = live_nodes(&nodes, tick).await.unwrap_or(last_live).max(1);
        last_live = live;
        ctx.stats.live_nodes.store(live as u64, Ordering::Relaxed);
        let target = partitions.div_ceil(live as u32) as usize;
        let mut h = held.lock().await;
        // Renew. A lease another node holds (or that expired) is lost: stop
        // at once. One that could not be renewed for a while (NATS out of
        // reach) is given up before it can expire, so that two nodes never
        // knowingly consume one partition.
        let mut lost = Vec::new();
        for (p, l) in h.iter_mut() {
            match renew(&leases, *p, &me, l.revision).await {
                Renewal::Renewed(rev) => {
                    l.revision = rev;
                    l.renewed = Instant::now();
                }
                Renewal::Lost => lost.push(*p),
                Renewal::Unknown if l.renewed.elapsed() > tick * 2 => lost.push(*p),
                Renewal::Unknown => {}
            }
        }
        for p in lost {
            if let Some(l) = h.remove(&p) {
                l.stop.store(true, Ordering::SeqCst);
                l.task.abort();
            }
        }
        // A partition given back keeps its lease (renewed above) until its
        // task finished the message in hand; then the lease goes.
        let finished: Vec<u32> = h
            .iter()
            .filter(|(_, l)| l.stop.load(Ordering::SeqCst) && l.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in finished {
            h.remove(&p);
            let _ = leases.delete(lease_key(p)).await;
        }
        let active = |h: &HashMap<u32, Held>| {
            h.values()
                .filter(|l| !l.stop.load(Ordering::SeqCst))
                .count()
        };
        // Give back the highest partitions above the share.
        while active(&h) > target {
            let highest = h
                .iter()
                .filter(|(_, l)| !l.stop.load(Ordering::SeqCst))
                .map(|(p, _)| *p)
                .max();
            let Some(p) = highest else { break };
            if let Some(l) = h.get(&p) {
                l.stop.store(true, Ordering::SeqCst);
            }
        }
        // Take free partitions up to the share.
        for i in 0..partitions {
            if active(&h) >= target {
                break;
            }
            let p = (start + i) % partitions;
            if h.contains_key(&p) {
                continue;
            }
            if let Ok(revision) = leases.create(lease_key(p), Bytes::from(me.clone())).await {
                let stop = Arc::new(AtomicBool::new(false));
                let task = tokio::spawn(consume(ctx.clone(), p, stop.clone()));
                h.insert(
                    p,
                    Held {
                        revision,
                        renewed: Instant::now(),
                        stop,
                        task,
                    },
                );
            }
        }
        ctx.stats
            .partitions
            .store(active(&h) as u64, Ordering::Relaxed);
        let mut now: Vec<u32> = h
            .iter()
            .filter(|(_, l)| !l.stop.load(Ordering::SeqCst))
            .map(|(p, _)| *p)
            .collect();
        now.sort_unstable();
        *ctx.stats.held.lock().unwrap_or_else(|p| p.into_inner()) = now;
        drop(h);
        tokio::time::sleep(tick).await;
    }
}

enum Renewal {
    Renewed(u64),
    Lost,
    Unknown,
}

/// Renews the lease of `p`, held at `revision`. A failed update is checked
/// against the key: still ours (a stale revision, a lost answer), it is
/// renewed from the key's revision.
async fn renew(leases: &kv::Store, p: u32, me: &str, revision: u64) -> Renewal {
    let mine = || Bytes::from(me.to_string());
    if let Ok(rev) = leases.update(lease_key(p), mine(), revision).await {
        return Renewal::Renewed(rev);
    }
    match leases.entry(lease_key(p)).await {
        Ok(Some(e)) if e.operation == kv::Operation::Put && e.value == me.as_bytes() => {
            match leases.update(lease_key(p), mine(), e.revision).await {
                Ok(rev) => Renewal::Renewed(rev),
                Err(_) => Renewal::Unknown,
            }
        }
        Ok(_) => Renewal::Lost,
        Err(_) => Renewal::Unknown,
    }
}

fn lease_key(p: u32) -> String {
    format!("part.{p}")
}

async fn live_nodes(nodes: &kv::Store, wait: Duration) -> Option<usize> {
    use futures_util::StreamExt;
    // Bounded: listing the keys of a bucket whose entries expire can wait
    // forever (a known JetStream key-value behaviour), and a coordinator
    // stuck here would stop heartbeating and never take its share. Each
    // listing is a fresh one, so a stuck one is given up and tried again
    // within the tick; the listings and the fallback below share `wait`
    // (the tick), so that the leases are still renewed in time.
    const TRIES: u32 = 3;
    let each = wait / (TRIES + 1);
    for _ in 0..TRIES {
        let counted = tokio::time::timeout(each, async {
            let keys = nodes.keys().await.ok()?;
            Some(keys.filter_map(|k| async move { k.ok() }).count().await)
        })
        .await;
        if let Ok(Some(n)) = counted {
            return Some(n);
        }
    }
    // No listing came: the bucket's message count instead, one per node
    // heard from within the lease time plus the delete markers of nodes
    // that stopped cleanly within it. It is never below the nodes alive,
    // so a node that cannot list (from its first tick on, when it knows of
    // no other) never takes more than its share, at worst less until a
    // listing comes.
    let status = tokio::time::timeout(each, nodes.status()).await;
    status.ok()?.ok().map(|s| s.values() as usize)
}

/// The durable consumer of partition `p`.
fn consumer_name(p: u32) -> String {
    format!("part-{p}")
}

/// Consumes partition `p` until `stop`, reading its spill subject between
/// messages once a second when the handler wants it.
async fn consume(ctx: Arc<Ctx>, p: u32, stop: Arc<AtomicBool>) {
    use futures_util::StreamExt;
    let s = &ctx.settings;
    let Some(consumer) = durable_consumer(
        &ctx.events,
        consumer_name(p),
        ctx.stream.subject(p),
        s,
        &stop,
    )
    .await
    else {
        return;
    };
    // Messages handed over and not done yet; dropped (aborted) with the task.
    let mut flight = Flight {
        tasks: tokio::task::JoinSet::new(),
        slots: Arc::new(tokio::sync::Semaphore::new(s.max_in_flight.max(1))),
    };
    let mut spill = None;
    let mut drained = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        while flight.tasks.try_join_next().is_some() {}
        if drained.elapsed() >= Duration::from_secs(1) && (ctx.handlers.drain)(p) {
            drained = Instant::now();
            if spill.is_none()
                && let Some(stream) = &ctx.spill
            {
                let subject = ctx.stream.spill_subject(p);
                spill = durable_consumer(stream, format!("spill-{p}"), subject, s, &stop).await;
            }
            if let Some(c) = &mut spill {
                drain(&ctx, p, c, &stop, &mut flight).await;
            }
        }
        let Ok(mut batch) = consumer
            .fetch()
            .max_messages(s.fetch_batch)
            .expires(Duration::from_secs(1))
            .messages()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while let Some(Ok(m)) = batch.next().await {
            handle(&ctx, p, m, false, &stop, &mut flight).await;
        }
    }
    // Finish what was handed over.
    while flight.tasks.join_next().await.is_some() {}
}

/// A partition's messages in flight: their completion tasks, and the
/// slots that bound them.
struct Flight {
    tasks: tokio::task::JoinSet<()>,
    slots: Arc<tokio::sync::Semaphore>,
}

/// The durable pull consumer `name` of `subject` on `stream` (made if
/// missing), tried until made or `stop`.
async fn durable_consumer(
    stream: &jetstream::stream::Stream,
    name: String,
    subject: String,
    s: &ConsumeSettings,
    stop: &AtomicBool,
) -> Option<jetstream::consumer::Consumer<pull::Config>> {
    loop {
        match stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: subject.clone(),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: s.ack_wait,
                    max_ack_pending: s.max_ack_pending,
                    ..Default::default()
                },
            )
            .await
        {
            Ok(c) => return Some(c),
            Err(_) if !stop.load(Ordering::SeqCst) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(_) => return None,
        }
    }
}

/// Reads the spill subject of `p` once through: as many messages as it
/// held when the pass began (what the handler puts back goes to the end
/// and waits for the next pass).
async fn drain(
    ctx: &Arc<Ctx>,
    p: u32,
    c: &mut jetstream::consumer::Consumer<pull::Config>,
    stop: &AtomicBool,
    flight: &mut Flight,
) {
    use futures_util::StreamExt;
    let Ok(info) = c.info().await else { return };
    let mut left = info.num_pending as usize;
    while left > 0 && !stop.load(Ordering::SeqCst) {
        let Ok(mut batch) = c
            .fetch()
            .max_messages(left.min(ctx.settings.fetch_batch))
            .expires(Duration::from_millis(200))
            .messages()
            .await
        else {
            return;
        };
        let mut got = 0;
        while let Some(Ok(m)) = batch.next().await {
            got += 1;
            handle(ctx, p, m, true, stop, flight).await;
        }
        if got == 0 {
            return;
        }
        left = left.saturating_sub(got);
    }
}

/// Hands one message to the handler (waiting for a slot) and, once handed
/// over, leaves its completion to a task of `flight` that acks it when done
/// (naks it on an error). Unhandled when the partition is being given up.
async fn handle(
    ctx: &Arc<Ctx>,
    p: u32,
    m: jetstream::Message,
    spilled: bool,
    stop: &AtomicBool,
    flight: &mut Flight,
) {
    let s = &ctx.settings;
    let Ok(slot) = flight.slots.clone().acquire_owned().await else {
        return;
    };
    if stop.load(Ordering::SeqCst) {
        // Not handled: handed back at once for the next holder.
        let _ = m.ack_with(AckKind::Nak(None)).await;
        return;
    }
    let (seq, redelivered) = m
        .info()
        .map(|i| (i.stream_sequence, i.delivered > 1))
        .unwrap_or((0, false));
    if redelivered {
        ctx.stats.redelivered.fetch_add(1, Ordering::Relaxed);
    }
    let payload = match crate::encoding::decode(m.headers.as_ref(), &m.payload) {
        Ok(p) => p,
        Err(e) => {
            // Never readable, so never delivered: end it instead of having
            // it come back forever, and say so.
            ctx.stats.undecodable.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                partition = p,
                sequence = seq,
                "a stream message cannot be read ({e}); it is dropped"
            );
            let _ = m.ack_with(AckKind::Term).await;
            return;
        }
    };
    let handled = (ctx.handlers.message)(Delivery {
        partition: p,
        payload,
        stream_sequence: seq,
        redelivered,
        spilled,
    });
    let every = s.ack_wait / 3;
    match with_progress(&m, handled, every).await {
        Ok(completion) => {
            let ctx = ctx.clone();
            flight.tasks.spawn(async move {
                let result = with_progress(&m, completion, every).await;
                finish(&ctx, &m, result).await;
                drop(slot);
            });
        }
        Err(e) => finish(ctx, &m, Err(e)).await,
    }
}

/// Acks a message its handler is done with (double ack, retried: if the
/// server never confirms, the message is redelivered, a duplicate counted
/// there), or naks it with a delay.
async fn finish(ctx: &Ctx, m: &jetstream::Message, result: Result<(), String>) {
    match result {
        Ok(()) => {
            for _ in 0..3 {
                if m.double_ack().await.is_ok() {
                    ctx.stats.acked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        Err(_) => {
            ctx.stats.naked.fetch_add(1, Ordering::Relaxed);
            let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
        }
    }
}

/// Awaits `handled`, sending a progress ack every `every` meanwhile.
async fn with_progress<T>(
    m: &jetstream::Message,
    mut handled: Pin<Box<dyn Future<Output = T> + Send>>,
    every: Duration,
) -> T {
    let every = every.max(Duration::from_millis(100));
    loop {
        match tokio::time::timeout(every, &mut handled).await {
            Ok(r) => return r,
            Err(_) => {
                let _ = m.ack_with(AckKind::Progress).await;
            }
        }
    }
}
