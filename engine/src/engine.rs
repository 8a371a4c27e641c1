//! The engine: publishers, filter workers, the live configuration and delivery.
//!
//! ```text
//! publish ──► shard by account ──► worker N: parse ─► route ─► filter ─► encode ──► destination tasks
//!           (bounded channel of batches)       (snapshot, swapped atomically)        (delivery runtime)
//! ```

use crate::cel::Verdict;
use crate::config::{
    CompiledSource, ConfigError, ConfigErrors, PipelineSpec, SourceSpec, compile_source,
};
use crate::delivery::{Chunk, Delivery, DestinationHandle, SinkSource};
use crate::encode::{Encoder, Record};
use crate::ingest::lazy::LazyReader;
use crate::ingest::{EventParser, RejectReason, Span, lines, shard_of};
use crate::metrics::Metrics;
use crate::plugin::{PluginError, PluginRegistry, SinkInstance};
use crate::route::{Snapshot, SubscriptionRt};
use crate::settle::{Settled, settle};
use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender, bounded};
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Settings of an engine (not of the pipeline it runs).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Filter worker threads (0 = one per available core).
    pub workers: usize,
    /// Most events per input batch handed to a worker.
    pub batch_events: usize,
    /// Input batches queued per worker before publishers block.
    pub queue_batches: usize,
    /// Threads of the delivery runtime.
    pub delivery_threads: usize,
    /// Where dead letters go unless a destination says otherwise.
    pub dead_letter_dir: PathBuf,
    /// Where dead letters go instead of files (every destination's): a
    /// cluster node keeps them in JetStream. None: files.
    pub dead_letters: Option<Arc<dyn crate::delivery::DeadLetterSink>>,
    /// Where disk buffers live (`<dir>/<destination id>/`) unless a
    /// destination says otherwise.
    pub buffer_dir: PathBuf,
    /// Where rejected events are written with their reason (none: counted only).
    pub rejects_path: Option<PathBuf>,
    /// How long shutdown waits for undelivered records before dead-lettering them.
    pub drain_timeout: Duration,
    /// Time the worker stages on one event in 64 (`Metrics::stages`); costs
    /// about 2 ns per event. For benchmarks.
    pub stage_sampling: bool,
    /// What a destination whose plugin is not loaded does.
    pub missing_plugin: MissingPlugin,
    /// The operator's rules for every plugin instance this engine creates
    /// (`sluice_sdk::restrictions`: e.g. `egress=public;max_timeout_ms=30000`);
    /// empty: the instances are trusted. `sluice serve` sets them, its
    /// destinations being its tenants'.
    pub plugin_restrictions: String,
    /// The engine serves many tenants (`sluice serve`): a full destination
    /// never blocks a worker, whatever its `when_full` (its records are
    /// dead-lettered with the reason, counted), and the destinations of one
    /// `delivery.call_group` (an account) make at most
    /// `delivery::CALLS_PER_GROUP` plugin calls at once.
    pub shared: bool,
    /// How long a destination whose plugin instance cannot be created is
    /// tried again before the engine gives up on it (its records are then
    /// dead-lettered with the reason, and [`Engine::failed_starts`] names
    /// it); `None`: tried for as long as the engine runs (`sluice serve`).
    pub start_timeout: Option<Duration>,
    /// Parse every event in full, even one whose routes read only some of
    /// its fields (which the on-demand reader otherwise settles from those
    /// fields alone): for comparing the two paths and for debugging.
    pub full_parse: bool,
}

/// What happens to a destination whose plugin kind is not loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissingPlugin {
    /// The configuration is refused (`sluice run`: a typo should stop you).
    #[default]
    Refuse,
    /// The destination is accepted and its records are dead-lettered with the
    /// reason (`sluice serve`: the API accepts any valid ngrok target).
    DeadLetter,
}

use crate::ack::Ticket;
pub use crate::ack::{PublishReport, RejectedLine};

/// A durable publish in progress ([`Engine::publish_ndjson_pending`]).
pub struct PendingPublish {
    ticket: Arc<Ticket>,
    rx: tokio::sync::oneshot::Receiver<PublishReport>,
}

impl PendingPublish {
    /// Waits until every record is safe (delivered, dead-lettered, or shed
    /// by a full `drop_newest` destination, counted in the report); `None`
    /// if the engine stopped first. Cancel-safe: waiting again after a
    /// timeout goes on waiting for the same report.
    pub async fn report(&mut self) -> Option<PublishReport> {
        (&mut self.rx).await.ok()
    }

    /// Whether every event was parsed and routed (every record it makes is
    /// then counted in [`PendingPublish::unsafe_accounts`]).
    pub fn processed(&self) -> bool {
        self.ticket.processed()
    }

    /// The accounts whose records are not safe yet.
    pub fn unsafe_accounts(&self) -> Vec<Box<str>> {
        self.ticket.unsafe_accounts()
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: 0,
            batch_events: 1024,
            queue_batches: 8,
            delivery_threads: 2,
            dead_letter_dir: PathBuf::from("dead-letter"),
            dead_letters: None,
            buffer_dir: PathBuf::from("buffer"),
            rejects_path: None,
            drain_timeout: Duration::from_secs(30),
            stage_sampling: false,
            missing_plugin: MissingPlugin::Refuse,
            plugin_restrictions: String::new(),
            shared: false,
            start_timeout: None,
            full_parse: false,
        }
    }
}

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The pipeline configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// An I/O error (rejects file, threads).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A destination the engine gave up starting ([`Engine::failed_starts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedStart {
    /// The destination's id.
    pub destination: String,
    /// Why its plugin instance could not be created.
    pub error: String,
}

/// What an engine did, for the line printed on exit.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Events received.
    pub events_in: u64,
    /// Events rejected.
    pub rejected: u64,
    /// Rejected, by reason (non-zero only).
    pub rejected_by_reason: Vec<(&'static str, u64)>,
    /// Valid events no subscription wanted.
    pub unrouted: u64,
    /// Events settled from their envelope and the fields their filters
    /// read, without the full validation (included in `events_in`, not in
    /// `rejected`).
    pub unvalidated: u64,
    /// Records matched (event x subscription).
    pub matched: u64,
    /// Filter evaluations that failed.
    pub filter_errors: u64,
    /// Records delivered (record x destination).
    pub delivered: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Records shed by full `drop_newest` destinations.
    pub dropped: u64,
    /// Records left in disk buffers for the next start.
    pub buffered: u64,
    /// Time since the engine started.
    pub elapsed: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{} events in {:.2}s ({:.0} events/s): {} matched, {} delivered, {} rejected",
            self.events_in,
            secs,
            self.events_in as f64 / secs,
            self.matched,
            self.delivered,
            self.rejected
        )?;
        if !self.rejected_by_reason.is_empty() {
            let parts: Vec<String> = self
                .rejected_by_reason
                .iter()
                .map(|(r, n)| format!("{r}: {n}"))
                .collect();
            write!(f, " ({})", parts.join(", "))?;
        }
        write!(
            f,
            ", {} filter errors, {} unrouted, {} dead-lettered",
            self.filter_errors, self.unrouted, self.dead_lettered
        )?;
        if self.dropped > 0 {
            write!(f, ", {} dropped (buffer full)", self.dropped)?;
        }
        if self.buffered > 0 {
            write!(f, ", {} kept in disk buffers", self.buffered)?;
        }
        if self.unvalidated > 0 {
            write!(
                f,
                ", {} settled on demand (not validated in full)",
                self.unvalidated
            )?;
        }
        Ok(())
    }
}

struct InputBatch {
    data: Bytes,
    spans: Vec<Span>,
    received: Instant,
    barrier: Option<Sender<()>>,
    ticket: Option<Arc<Ticket>>,
}

struct RejectLine {
    reason: RejectReason,
    detail: String,
    raw: Bytes,
}

struct Shared {
    snapshot: ArcSwap<Snapshot>,
    metrics: Arc<Metrics>,
    rejects: Option<Sender<RejectLine>>,
    stage_sampling: bool,
    taps: Arc<crate::tap::Taps>,
    /// Settle events from the fields their routes read where possible.
    on_demand: bool,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct SourceKey {
    spec: SourceSpec,
    strict: bool,
}

/// A destination instance made by a reconfiguration, not yet started.
struct Created {
    id: String,
    kind: String,
    fingerprint: String,
    sink: SinkSource,
    disk: Option<Arc<crate::disk_buffer::DiskBuffer>>,
}

/// Compiles every subscription's sources, reusing those compiled before
/// (cached by their text and strictness). Returns the new cache and each
/// subscription's compiled sources, in order.
#[allow(clippy::type_complexity)]
fn compile_sources(
    control: &Control,
    spec: &PipelineSpec,
    errs: &mut Vec<ConfigError>,
) -> (
    HashMap<SourceKey, Arc<CompiledSource>>,
    Vec<Vec<Arc<CompiledSource>>>,
) {
    let mut sources: HashMap<SourceKey, Arc<CompiledSource>> = HashMap::new();
    let mut compiled_subs: Vec<Vec<Arc<CompiledSource>>> =
        Vec::with_capacity(spec.subscriptions.len());
    for s in &spec.subscriptions {
        let mut list = Vec::with_capacity(s.sources.len());
        for src in &s.sources {
            let key = SourceKey {
                spec: src.clone(),
                strict: spec.strict_ngrok_filters,
            };
            if let Some(c) = sources
                .get(&key)
                .or_else(|| control.sources.get(&key))
                .cloned()
            {
                sources.insert(key, c.clone());
                list.push(c);
                continue;
            }
            match compile_source(src, spec.strict_ngrok_filters) {
                Ok(c) => {
                    let c = Arc::new(c);
                    sources.insert(key, c.clone());
                    list.push(c);
                }
                Err(problem) => errs.push(ConfigError {
                    file: None,
                    item: format!("subscription \"{}\", source \"{}\"", s.id, src.event_type),
                    problem,
                }),
            }
        }
        compiled_subs.push(list);
    }
    (sources, compiled_subs)
}

struct Control {
    plugins: Arc<PluginRegistry>,
    destinations: HashMap<String, Arc<DestinationHandle>>,
    sources: HashMap<SourceKey, Arc<CompiledSource>>,
    version: u64,
}

/// A running engine. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Engine {
    shared: Arc<Shared>,
    shards: Vec<Sender<InputBatch>>,
    workers: Vec<JoinHandle<()>>,
    delivery: Option<Delivery>,
    control: Mutex<Control>,
    cfg: EngineConfig,
    rejects_thread: Option<JoinHandle<()>>,
    started: Instant,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl Engine {
    /// Starts an engine running `spec`, with sinks from `plugins`.
    pub fn start(
        cfg: EngineConfig,
        plugins: PluginRegistry,
        spec: &PipelineSpec,
    ) -> Result<Engine, EngineError> {
        let workers = if cfg.workers == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            cfg.workers
        };
        let metrics = Arc::new(Metrics::default());
        let (rejects, rejects_thread) = match &cfg.rejects_path {
            Some(path) => {
                if let Some(dir) = path.parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir)?;
                }
                let file = std::fs::File::create(path)?;
                let (tx, rx) = bounded::<RejectLine>(4096);
                let t = std::thread::Builder::new()
                    .name("sluice-rejects".into())
                    .spawn(move || write_rejects(file, rx))?;
                (Some(tx), Some(t))
            }
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            metrics,
            rejects,
            stage_sampling: cfg.stage_sampling,
            on_demand: !cfg.full_parse,
            taps: Arc::default(),
        });
        let mut shards = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let (tx, rx) = bounded::<InputBatch>(cfg.queue_batches.max(1));
            let sh = shared.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("sluice-worker-{i}"))
                    .spawn(move || worker(rx, sh))?,
            );
            shards.push(tx);
        }
        let mut delivery = Delivery::new(
            cfg.delivery_threads,
            cfg.dead_letter_dir.clone(),
            cfg.buffer_dir.clone(),
        )?;
        delivery.shared = cfg.shared;
        delivery.start_timeout = cfg.start_timeout;
        delivery.dead_letter_sink = cfg.dead_letters.clone();
        let engine = Engine {
            shared,
            shards,
            workers: handles,
            delivery: Some(delivery),
            control: Mutex::new(Control {
                plugins: Arc::new(plugins),
                destinations: HashMap::new(),
                sources: HashMap::new(),
                version: 0,
            }),
            cfg,
            rejects_thread,
            started: Instant::now(),
        };
        engine.reconfigure(spec)?;
        if let Some(d) = &engine.delivery {
            d.drain_orphan_buffers();
        }
        Ok(engine)
    }

    /// The engine's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The snapshot in effect now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// The loaded plugins.
    pub fn plugins(&self) -> Arc<PluginRegistry> {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .plugins
            .clone()
    }

    /// Number of filter workers (= shards).
    pub fn workers(&self) -> usize {
        self.shards.len()
    }

    /// Replaces the running configuration. Validates and compiles everything
    /// first; on any error nothing changes. Destinations whose kind, config and
    /// delivery settings are unchanged keep their queues and plugin instances;
    /// a removed destination delivers what it already holds, then stops.
    /// Events in flight are processed entirely under the old or entirely under
    /// the new configuration: none is lost or duplicated.
    pub fn reconfigure(&self, spec: &PipelineSpec) -> Result<(), ConfigErrors> {
        let mut errs = spec.validate_structure();
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let delivery = self.delivery.as_ref().ok_or_else(|| {
            ConfigErrors(vec![ConfigError {
                file: None,
                item: String::new(),
                problem: "the engine is shutting down".into(),
            }])
        })?;
        let (sources, compiled_subs) = compile_sources(&control, spec, &mut errs);
        let (created, fingerprints) = self.create_destinations(&control, delivery, spec, &mut errs);
        if !errs.is_empty() {
            return Err(ConfigErrors(errs));
        }
        let handles = self.start_destinations(&control, delivery, spec, created, &fingerprints);
        self.swap_snapshot(&mut control, spec, compiled_subs, handles, sources);
        Ok(())
    }

    /// Creates a plugin instance (and opens the disk buffer) of every
    /// destination that is new or whose configuration changed; unchanged ones
    /// (same fingerprint) are kept as they run. Returns what was created and
    /// every destination's fingerprint.
    fn create_destinations(
        &self,
        control: &Control,
        delivery: &Delivery,
        spec: &PipelineSpec,
        errs: &mut Vec<ConfigError>,
    ) -> (Vec<Created>, HashMap<String, String>) {
        // The first configuration of a shared engine is the stored one
        // (`sluice serve` restarting): a destination whose plugin refuses it
        // now is retried, not allowed to stop every other tenant.
        let initial = control.version == 0;
        let mut created: Vec<Created> = Vec::new();
        let mut fingerprints = HashMap::new();
        for d in &spec.destinations {
            let fp = serde_json::to_string(&(&d.kind, &d.config, &d.delivery)).unwrap_or_default();
            fingerprints.insert(d.id.clone(), fp.clone());
            if control
                .destinations
                .get(&d.id)
                .is_some_and(|h| h.fingerprint == fp)
            {
                continue;
            }
            let plugin = match control.plugins.get(&d.kind) {
                Ok(p) => p,
                Err(e) if self.cfg.missing_plugin == MissingPlugin::DeadLetter => {
                    tracing::warn!(destination = %d.id, "{e}; its records will be dead-lettered");
                    let why = format!("no plugin for destination kind `{}` is loaded", d.kind);
                    created.push(Created {
                        id: d.id.clone(),
                        kind: d.kind.clone(),
                        fingerprint: fp,
                        sink: SinkSource::Missing(why),
                        disk: None,
                    });
                    continue;
                }
                Err(e) => {
                    errs.push(ConfigError {
                        file: None,
                        item: format!("destination \"{}\"", d.id),
                        problem: e.to_string(),
                    });
                    continue;
                }
            };
            let config = d.config.to_string();
            let stats = self.shared.metrics.destination(&d.id);
            let disk = match delivery.open_disk(&d.id, &d.delivery, &stats) {
                Ok(disk) => disk,
                Err(problem) => {
                    errs.push(ConfigError {
                        file: None,
                        item: format!("destination \"{}\"", d.id),
                        problem,
                    });
                    continue;
                }
            };
            let restrictions = self.cfg.plugin_restrictions.clone();
            let create: crate::delivery::StartFn = {
                let (plugin, id, stats) = (plugin.clone(), d.id.clone(), stats.clone());
                Arc::new(move || {
                    SinkInstance::create(plugin.clone(), &id, &config, &restrictions, stats.clone())
                })
            };
            match create() {
                Ok(inst) => created.push(Created {
                    id: d.id.clone(),
                    kind: d.kind.clone(),
                    fingerprint: fp,
                    sink: SinkSource::Ready(inst),
                    disk,
                }),
                // A plugin that asks to be tried later is; so is any start
                // of the stored configuration of a shared engine.
                Err(e)
                    if matches!(
                        e,
                        PluginError::Create {
                            retryable: true,
                            ..
                        }
                    ) || (initial && self.cfg.shared) =>
                {
                    tracing::warn!(destination = %d.id, "cannot create the plugin instance ({e}); its records wait while it is tried again");
                    let error = e.to_string();
                    created.push(Created {
                        id: d.id.clone(),
                        kind: d.kind.clone(),
                        fingerprint: fp,
                        sink: SinkSource::Retry {
                            plugin,
                            create,
                            error,
                        },
                        disk,
                    });
                }
                Err(e) => errs.push(ConfigError {
                    file: None,
                    item: format!("destination \"{}\"", d.id),
                    problem: e.to_string(),
                }),
            }
        }
        (created, fingerprints)
    }

    /// The handle of every destination: the running one when unchanged, a
    /// new delivery task for each created one.
    fn start_destinations(
        &self,
        control: &Control,
        delivery: &Delivery,
        spec: &PipelineSpec,
        created: Vec<Created>,
        fingerprints: &HashMap<String, String>,
    ) -> HashMap<String, Arc<DestinationHandle>> {
        let mut handles: HashMap<String, Arc<DestinationHandle>> = HashMap::new();
        for d in &spec.destinations {
            if let Some(h) = control.destinations.get(&d.id)
                && Some(&h.fingerprint) == fingerprints.get(&d.id)
            {
                handles.insert(d.id.clone(), h.clone());
            }
        }
        for Created {
            id,
            kind,
            fingerprint: fp,
            sink: inst,
            disk,
        } in created
        {
            let Some(d) = spec.destinations.iter().find(|d| d.id == id) else {
                continue;
            };
            let stats = self.shared.metrics.destination(&id);
            let disk = match (disk, &inst) {
                (Some(d), _) => Some(d),
                // A destination whose plugin is missing still keeps its records on disk.
                (None, SinkSource::Missing(_)) => delivery
                    .open_disk(&id, &d.delivery, &stats)
                    .unwrap_or_else(|e| {
                        tracing::error!(destination = %id, "{e}");
                        None
                    }),
                (None, _) => None,
            };
            let h = delivery.start(&id, &kind, fp, &d.delivery, inst, stats, disk);
            handles.insert(id, h);
        }
        handles
    }

    /// Builds the new routing snapshot and swaps it in whole: workers take
    /// it at their next batch.
    fn swap_snapshot(
        &self,
        control: &mut Control,
        spec: &PipelineSpec,
        compiled_subs: Vec<Vec<Arc<CompiledSource>>>,
        handles: HashMap<String, Arc<DestinationHandle>>,
        sources: HashMap<SourceKey, Arc<CompiledSource>>,
    ) {
        let subs = spec
            .subscriptions
            .iter()
            .zip(compiled_subs)
            .map(|(s, compiled)| {
                let dests: Vec<Arc<DestinationHandle>> = s
                    .destination_ids
                    .iter()
                    .filter_map(|id| handles.get(id).cloned())
                    .collect();
                (
                    SubscriptionRt {
                        id: s.id.as_str().into(),
                        account_id: s.account_id.as_str().into(),
                        destinations: dests.into_boxed_slice(),
                        stats: self.shared.metrics.subscription(&s.id),
                    },
                    compiled,
                )
            })
            .collect();
        control.version += 1;
        let mut all: Vec<Arc<DestinationHandle>> = handles.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let snap = Snapshot::new(control.version, subs, all);
        self.shared.snapshot.store(Arc::new(snap));
        control.destinations = handles;
        control.sources = sources;
        self.shared.metrics.reconfigurations.fetch_add(1, Relaxed);
    }

    fn send(&self, shard: usize, batch: InputBatch) {
        // A send fails only when the worker is gone, i.e. after shutdown began.
        if let Err(e) = self.shards[shard].send(batch) {
            let b = e.into_inner();
            tracing::error!(
                events = b.spans.len(),
                "engine is shutting down; events not accepted"
            );
        }
    }

    /// Whether the queue of the worker that `event` goes to has room now, so
    /// that publishing it would not block (barring a race with another
    /// publisher).
    pub fn has_room_for(&self, event: &[u8]) -> bool {
        !self.shards[shard_of(event, self.shards.len())].is_full()
    }

    /// Publishes one event (a JSON object). Blocks while the worker's queue is
    /// full. For throughput prefer [`Engine::publish_ndjson`] or a [`Publisher`].
    pub fn publish(&self, event: &[u8]) {
        self.publish_bytes(Bytes::copy_from_slice(event));
    }

    /// Publishes one event already held in `Bytes` (no copy).
    pub fn publish_bytes(&self, event: Bytes) {
        let len = event.len() as u32;
        let shard = shard_of(&event, self.shards.len());
        self.send(
            shard,
            InputBatch {
                data: event,
                spans: vec![Span { start: 0, len }],
                received: Instant::now(),
                barrier: None,
                ticket: None,
            },
        );
    }

    /// Publishes a buffer of NDJSON (one event per line; blank lines are
    /// skipped; the last line needs no newline). Blocks while queues are full.
    /// Returns the number of events queued.
    pub fn publish_ndjson(&self, buf: Bytes) -> usize {
        self.publish_ndjson_at(buf, Instant::now())
    }

    /// Like [`Engine::publish_ndjson`], with the time the events count as
    /// received (latency is measured from it). An open-loop load generator
    /// passes the time it *meant* to send, so that its own delays are not
    /// hidden from the latency figures (no coordinated omission).
    pub fn publish_ndjson_at(&self, buf: Bytes, received: Instant) -> usize {
        self.publish_lines(buf, received, None)
    }

    /// Publishes a buffer of NDJSON and calls `done`, on a worker thread, once
    /// every event of it has been parsed and routed, with what was accepted
    /// and what was rejected (offset of the line in `buf`, reason, detail).
    /// Returns the number of events queued.
    pub fn publish_ndjson_tracked(
        &self,
        buf: Bytes,
        done: impl FnOnce(PublishReport) + Send + 'static,
    ) -> usize {
        self.publish_lines(
            buf,
            Instant::now(),
            Some(Ticket::new(false, Box::new(done))),
        )
    }

    /// Publishes a buffer of NDJSON and calls `done` once every record it
    /// produced is safe: written and fsynced to its destination's disk
    /// buffer (`durability = "disk"`), or delivered or dead-lettered
    /// (`memory`), or shed by a full `drop_newest` destination (counted in
    /// the report). An upstream queue acknowledges its messages then. Events
    /// no subscription selects are safe at once. Returns the number of
    /// events queued.
    ///
    /// ```no_run
    /// # fn f(engine: &sluice_engine::Engine, buf: bytes::Bytes) {
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// engine.publish_ndjson_durable(buf, move |report| { let _ = tx.send(report); });
    /// let report = rx.recv().unwrap(); // now commit the upstream offset
    /// assert_eq!(report.dropped, 0);
    /// # }
    /// ```
    pub fn publish_ndjson_durable(
        &self,
        buf: Bytes,
        done: impl FnOnce(PublishReport) + Send + 'static,
    ) -> usize {
        self.publish_lines(buf, Instant::now(), Some(Ticket::new(true, Box::new(done))))
    }

    /// The destinations the engine gave up starting
    /// ([`EngineConfig::start_timeout`]), with why.
    pub fn failed_starts(&self) -> Vec<FailedStart> {
        self.metrics()
            .destination_stats()
            .into_iter()
            .filter(|(_, d)| d.start_failed.load(std::sync::atomic::Ordering::Relaxed) == 1)
            .map(|(id, d)| {
                let error = d
                    .start_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map_or_else(String::new, |(e, _)| e.clone());
                FailedStart {
                    destination: id,
                    error,
                }
            })
            .collect()
    }

    /// The accounts that have a destination whose buffer is half full or more,
    /// each with one such destination: where `sluice serve` aims
    /// back-pressure instead of blocking workers every account shares.
    pub fn full_accounts(&self) -> HashMap<Box<str>, Arc<str>> {
        let snap = self.snapshot();
        let mut out: HashMap<Box<str>, Arc<str>> = HashMap::new();
        for sub in &snap.subscriptions {
            if out.contains_key(&sub.account_id) {
                continue;
            }
            if let Some(d) = sub.destinations.iter().find(|d| d.is_full()) {
                out.insert(sub.account_id.clone(), d.id.clone());
            }
        }
        out
    }

    /// Opens a live tap on `subscription`: samples of the records it makes,
    /// as encoded, at most `per_second` a second with `buffer` waiting for
    /// the reader. It never slows the pipeline: what finds no room is
    /// skipped and counted ([`Tap::skipped`]). Closed when dropped.
    pub fn tap(&self, subscription: &str, per_second: u32, buffer: usize) -> crate::tap::Tap {
        self.shared.taps.open(subscription, per_second, buffer)
    }

    /// The running handle of destination `id`.
    pub(crate) fn destination_handle(
        &self,
        id: &str,
    ) -> Option<Arc<crate::delivery::DestinationHandle>> {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .destinations
            .get(id)
            .cloned()
    }

    /// What opens taps on this engine from another thread
    /// ([`Engine::tap`] without a reference to the engine).
    pub fn tap_opener(&self) -> crate::tap::TapOpener {
        crate::tap::TapOpener(self.shared.taps.clone())
    }

    /// The accounts that have a destination with records not yet delivered
    /// or dead-lettered, or whose last call failed as a whole. A cluster
    /// node hands the events it put aside for an account back to the engine
    /// only once the account is out of this set.
    pub fn busy_accounts(&self) -> std::collections::HashSet<Box<str>> {
        self.snapshot()
            .subscriptions
            .iter()
            .filter(|sub| sub.destinations.iter().any(|d| d.is_busy()))
            .map(|sub| sub.account_id.clone())
            .collect()
    }

    /// How full the fullest worker queue is, from 0 to 1. HTTP ingest refuses
    /// new requests (429) above a threshold instead of accepting part of one.
    pub fn pressure(&self) -> f64 {
        let cap = self.cfg.queue_batches.max(1) as f64;
        self.shards
            .iter()
            .map(|s| s.len() as f64 / cap)
            .fold(0.0, f64::max)
    }

    fn publish_lines(&self, buf: Bytes, received: Instant, ticket: Option<Arc<Ticket>>) -> usize {
        if buf.len() > u32::MAX as usize {
            return match ticket {
                Some(_) => {
                    tracing::error!("tracked publishes are limited to 4 GiB");
                    0
                }
                None => {
                    // Spans are 32-bit: split at a line end.
                    let mid = memchr::memrchr(b'\n', &buf[..u32::MAX as usize])
                        .map_or(buf.len(), |i| i + 1);
                    self.publish_lines(buf.slice(..mid), received, None)
                        + self.publish_lines(buf.slice(mid..), received, None)
                }
            };
        }
        let Some(ticket) = ticket else {
            return self.publish_untracked(buf, received);
        };
        let (batches, total) = self.tracked_batches(buf, received, ticket);
        for (s, batch) in batches {
            self.send(s, batch);
        }
        total
    }

    /// Splits `buf` into batches per worker and sends each as soon as it is
    /// full, so that a large buffer never waits whole in memory.
    fn publish_untracked(&self, buf: Bytes, received: Instant) -> usize {
        let batch = |spans| InputBatch {
            data: buf.clone(),
            spans,
            received,
            barrier: None,
            ticket: None,
        };
        self.split_lines(&buf, |s, spans| self.send(s, batch(spans)))
    }

    /// Splits `buf` into batches of at most `batch_events` lines per worker
    /// (by account), handing each to `emit` with its worker as soon as it is
    /// full, then the rest, worker by worker. Returns the number of lines.
    fn split_lines(&self, buf: &Bytes, mut emit: impl FnMut(usize, Vec<Span>)) -> usize {
        let n = self.shards.len();
        let max = self.cfg.batch_events.max(1);
        let mut per: Vec<Vec<Span>> = (0..n).map(|_| Vec::new()).collect();
        let mut total = 0;
        for span in lines(buf) {
            let raw = &buf[span.start as usize..(span.start + span.len) as usize];
            let s = shard_of(raw, n);
            per[s].push(span);
            total += 1;
            if per[s].len() >= max {
                emit(s, std::mem::replace(&mut per[s], Vec::with_capacity(max)));
            }
        }
        for (s, spans) in per.into_iter().enumerate() {
            if !spans.is_empty() {
                emit(s, spans);
            }
        }
        total
    }

    /// Splits `buf` into batches per worker that all carry `ticket`, and
    /// tells the ticket how many there are before any is sent (so that no
    /// worker can see the count reach 0 early). Returns them with the number
    /// of events.
    fn tracked_batches(
        &self,
        buf: Bytes,
        received: Instant,
        ticket: Arc<Ticket>,
    ) -> (Vec<(usize, InputBatch)>, usize) {
        let mut full: Vec<(usize, Vec<Span>)> = Vec::new();
        let total = self.split_lines(&buf, |s, spans| full.push((s, spans)));
        ticket.expect(full.len());
        let batches = full
            .into_iter()
            .map(|(s, spans)| {
                (
                    s,
                    InputBatch {
                        data: buf.clone(),
                        spans,
                        received,
                        barrier: None,
                        ticket: Some(ticket.clone()),
                    },
                )
            })
            .collect();
        (batches, total)
    }

    /// Publishes a buffer of NDJSON from async code and returns its report:
    /// with `durable`, once every record it produced is safe (as
    /// [`Engine::publish_ndjson_durable`]), else once every event was parsed
    /// and routed (as [`Engine::publish_ndjson_tracked`]). It never blocks
    /// the calling thread: while a worker's queue is full it sleeps on the
    /// tokio timer (1 ms, doubling up to 10 ms) and tries again, so it must be
    /// awaited within a tokio runtime with the timer enabled. `None` if the
    /// engine is shutting down and did not take every event.
    ///
    /// ```no_run
    /// # async fn f(engine: &sluice_engine::Engine, buf: bytes::Bytes) {
    /// let report = engine.publish_ndjson_async(buf, true).await.expect("engine running");
    /// println!("{} accepted, {} rejected", report.accepted, report.rejected.len());
    /// # }
    /// ```
    pub async fn publish_ndjson_async(&self, buf: Bytes, durable: bool) -> Option<PublishReport> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ticket = Ticket::new(
            durable,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        if !self.submit_async(buf, ticket).await {
            return None;
        }
        rx.await.ok()
    }

    /// A durable publish whose caller may stop waiting for some accounts:
    /// [`PendingPublish::unsafe_accounts`] names the accounts whose records
    /// are not safe yet, and [`PendingPublish::report`] waits for all of
    /// them. A cluster node uses it to hand a slow destination's records
    /// elsewhere instead of holding up every account of a message. Like
    /// [`Engine::publish_ndjson_async`], it never blocks the thread. `None`
    /// if the engine is shutting down and did not take every event.
    pub async fn publish_ndjson_pending(&self, buf: Bytes) -> Option<PendingPublish> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ticket = Ticket::track_accounts(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        if !self.submit_async(buf, ticket.clone()).await {
            return None;
        }
        Some(PendingPublish { ticket, rx })
    }

    /// Queues a tracked publish's batches, sleeping on the tokio timer
    /// while a worker's queue is full; false if the engine is stopping.
    async fn submit_async(&self, buf: Bytes, ticket: Arc<Ticket>) -> bool {
        if buf.len() > u32::MAX as usize {
            tracing::error!("tracked publishes are limited to 4 GiB");
            return false;
        }
        let (batches, _) = self.tracked_batches(buf, Instant::now(), ticket);
        for (s, mut batch) in batches {
            let mut wait = Duration::from_millis(1);
            loop {
                match self.shards[s].try_send(batch) {
                    Ok(()) => break,
                    Err(crossbeam_channel::TrySendError::Full(back)) => {
                        batch = back;
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_millis(10));
                    }
                    Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                        tracing::error!("engine is shutting down; events not accepted");
                        // The batch and its ticket are dropped: the report
                        // never comes.
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Counts (and writes to the rejects file) a line that was too long to
    /// be read into memory.
    pub fn reject_oversized(&self, len: usize, prefix: Bytes) {
        let m = &self.shared.metrics;
        m.events_in.fetch_add(1, Relaxed);
        m.bytes_in.fetch_add(len as u64, Relaxed);
        m.rejected[RejectReason::TooLarge.index()].fetch_add(1, Relaxed);
        if let Some(tx) = &self.shared.rejects {
            let _ = tx.send(RejectLine {
                reason: RejectReason::TooLarge,
                detail: format!(
                    "line is {len} bytes, the limit is {}",
                    crate::ingest::MAX_EVENT_BYTES
                ),
                raw: prefix,
            });
        }
    }

    /// A batching publisher for one producer thread.
    pub fn publisher(&self) -> Publisher<'_> {
        Publisher {
            engine: self,
            bufs: (0..self.shards.len())
                .map(|_| (BytesMut::new(), Vec::new()))
                .collect(),
        }
    }

    /// Waits until every event published before this call has been filtered
    /// and its records handed to delivery.
    pub fn barrier(&self) {
        let (tx, rx) = bounded(self.shards.len());
        for s in 0..self.shards.len() {
            self.send(
                s,
                InputBatch {
                    data: Bytes::new(),
                    spans: Vec::new(),
                    received: Instant::now(),
                    barrier: Some(tx.clone()),
                    ticket: None,
                },
            );
        }
        drop(tx);
        for _ in 0..self.shards.len() {
            if rx.recv().is_err() {
                break;
            }
        }
    }

    /// A summary of what the engine did so far.
    pub fn summary(&self) -> Summary {
        let m = &self.shared.metrics;
        let subs = m.subscription_counts();
        let dests = m.destination_stats();
        Summary {
            events_in: m.events_in.load(Relaxed),
            rejected: m.rejected_total(),
            rejected_by_reason: RejectReason::ALL
                .iter()
                .map(|r| (r.as_str(), m.rejected_for(*r)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            unrouted: m.unrouted.load(Relaxed),
            unvalidated: m.unvalidated.load(Relaxed),
            matched: subs.iter().map(|(_, c)| c.matched).sum(),
            filter_errors: subs.iter().map(|(_, c)| c.filter_errors).sum(),
            delivered: dests.iter().map(|(_, d)| d.delivered.load(Relaxed)).sum(),
            dead_lettered: dests.iter().map(|(_, d)| d.dead_lettered_total()).sum(),
            dropped: dests.iter().map(|(_, d)| d.dropped.load(Relaxed)).sum(),
            buffered: dests
                .iter()
                .map(|(_, d)| d.disk_records.load(Relaxed))
                .sum(),
            elapsed: self.started.elapsed(),
        }
    }

    /// Stops taking events, processes everything queued, delivers (or
    /// dead-letters, after the drain timeout) every record, and returns the
    /// summary.
    pub fn shutdown(mut self) -> Summary {
        self.stop();
        self.summary()
    }

    fn stop(&mut self) {
        // The drain deadline runs from here: workers blocked on a full
        // destination stop waiting once it passes.
        if let Some(d) = &self.delivery {
            d.begin_shutdown(self.cfg.drain_timeout);
        }
        self.shards.clear();
        for w in self.workers.drain(..) {
            if w.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
        self.shared.snapshot.store(Arc::new(Snapshot::default()));
        {
            let mut c = self.control.lock().unwrap_or_else(|p| p.into_inner());
            c.destinations.clear();
            c.sources.clear();
        }
        if let Some(d) = self.delivery.take() {
            d.shutdown(self.cfg.drain_timeout);
        }
        // Close the rejects channel: workers are gone, so only `shared` holds it.
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.rejects = None;
        }
        if let Some(t) = self.rejects_thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.workers.is_empty() || self.delivery.is_some() {
            self.stop();
        }
    }
}

/// Batches single events per shard for one producer thread; sends a batch
/// when it is full, on [`Publisher::flush`], and when dropped.
pub struct Publisher<'e> {
    engine: &'e Engine,
    bufs: Vec<(BytesMut, Vec<Span>)>,
}

impl Publisher<'_> {
    /// Queues one event (copied).
    pub fn publish(&mut self, event: &[u8]) {
        let s = shard_of(event, self.bufs.len());
        let (buf, spans) = &mut self.bufs[s];
        spans.push(Span {
            start: buf.len() as u32,
            len: event.len() as u32,
        });
        buf.extend_from_slice(event);
        buf.extend_from_slice(b"\n");
        if spans.len() >= self.engine.cfg.batch_events.max(1) || buf.len() > (32 << 20) {
            self.flush_shard(s);
        }
    }

    fn flush_shard(&mut self, s: usize) {
        let (buf, spans) = &mut self.bufs[s];
        if spans.is_empty() {
            return;
        }
        let data = buf.split().freeze();
        let spans = std::mem::take(spans);
        self.engine.send(
            s,
            InputBatch {
                data,
                spans,
                received: Instant::now(),
                barrier: None,
                ticket: None,
            },
        );
    }

    /// Sends everything queued.
    pub fn flush(&mut self) {
        for s in 0..self.bufs.len() {
            self.flush_shard(s);
        }
    }
}

impl Drop for Publisher<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

fn write_rejects(file: std::fs::File, rx: Receiver<RejectLine>) {
    let mut w = std::io::BufWriter::new(file);
    let mut buf = Vec::new();
    while let Ok(r) = rx.recv() {
        buf.clear();
        buf.extend_from_slice(b"{\"reason\":\"");
        buf.extend_from_slice(r.reason.as_str().as_bytes());
        buf.extend_from_slice(b"\",\"detail\":");
        crate::json::write_str(&mut buf, &r.detail);
        buf.extend_from_slice(b",\"event\":");
        let raw = &r.raw[..r.raw.len().min(64 << 10)];
        crate::json::write_str(&mut buf, &String::from_utf8_lossy(raw));
        buf.extend_from_slice(b"}\n");
        if w.write_all(&buf).is_err() {
            tracing::error!("cannot write the rejects file");
        }
        if rx.is_empty() {
            let _ = w.flush();
        }
    }
    let _ = w.flush();
}

/// Per-batch counters of one worker, added to the shared atomics once per batch.
#[derive(Default)]
struct Local {
    sample_tick: u64,
    tracked_rejects: Vec<RejectedLine>,
    rejected: [u64; RejectReason::ALL.len()],
    unrouted: u64,
    /// Events settled by the on-demand reader (not validated in full).
    unvalidated: u64,
    /// The verdicts of the routes of the event being read on demand.
    verdicts: Vec<Verdict>,
    encoded: u64,
    per_sub: Vec<[u64; 3]>,
    touched: Vec<u32>,
    staged: Vec<Vec<Record>>,
    staged_touched: Vec<u32>,
    /// A batch's chunks by destination, handed over once per destination.
    outgoing: Vec<(Arc<DestinationHandle>, Vec<Chunk>)>,
    /// Where each destination (by address) is in `outgoing`.
    outgoing_at: FxHashMap<usize, usize>,
}

impl Local {
    fn prepare(&mut self, subs: usize) {
        if self.per_sub.len() < subs {
            self.per_sub.resize(subs, [0; 3]);
            self.staged.resize_with(subs, Vec::new);
        }
    }

    #[inline]
    fn count(&mut self, sub: u32, which: usize) {
        let c = &mut self.per_sub[sub as usize];
        if *c == [0; 3] {
            self.touched.push(sub);
        }
        c[which] += 1;
    }

    #[inline]
    fn stage(&mut self, sub: u32, r: Record) {
        let v = &mut self.staged[sub as usize];
        if v.is_empty() {
            self.staged_touched.push(sub);
        }
        v.push(r);
    }
}

/// Where a worker's time per stage goes: nowhere on the common path (`()`,
/// which compiles to nothing), or into [`crate::metrics::StageTimes`] for
/// one event in 64 with `EngineConfig::stage_sampling` ([`Sampled`]). One
/// event's steps are written once, in [`process_event`], for both.
trait StageClock {
    /// Starts timing an event.
    fn start() -> Self;
    /// Nanoseconds since the previous lap (or the start).
    fn lap(&mut self) -> u64;
    /// Adds one event's stage times to the shared counters.
    fn record(&self, st: &crate::metrics::StageTimes, stages: [u64; 4]);
}

impl StageClock for () {
    #[inline(always)]
    fn start() -> Self {}
    #[inline(always)]
    fn lap(&mut self) -> u64 {
        0
    }
    #[inline(always)]
    fn record(&self, _: &crate::metrics::StageTimes, _: [u64; 4]) {}
}

/// A sampled event's clock.
struct Sampled(Instant);

impl StageClock for Sampled {
    fn start() -> Self {
        Sampled(Instant::now())
    }
    fn lap(&mut self) -> u64 {
        let now = Instant::now();
        let ns = now.duration_since(self.0).as_nanos() as u64;
        self.0 = now;
        ns
    }
    fn record(&self, st: &crate::metrics::StageTimes, [parse, route, filter, encode]: [u64; 4]) {
        st.samples.fetch_add(1, Relaxed);
        st.parse_ns.fetch_add(parse, Relaxed);
        st.route_ns.fetch_add(route, Relaxed);
        st.filter_ns.fetch_add(filter, Relaxed);
        st.encode_ns.fetch_add(encode, Relaxed);
    }
}

/// A worker's two ways of reading an event.
#[derive(Default)]
struct Readers {
    /// The full parse (simd-json onto a tape).
    full: EventParser,
    /// The on-demand reader (the envelope and the fields routes read).
    lazy: LazyReader,
    /// Events to parse in full without trying the reader first.
    skip: u32,
    /// Events offered to the reader in this window, and those it settled.
    tried: u32,
    settled: u32,
}

/// Events per window of the reader's record.
const ON_DEMAND_WINDOW: u32 = 256;
/// Events parsed in full without trying the reader after a window in which
/// it settled under half: an event it does not settle costs its scan on top
/// of the full parse, which a stream that filters mostly match (or read
/// whole) would pay on every event. Then it is tried again.
const ON_DEMAND_PAUSE: u32 = 4096;

impl Readers {
    /// Whether to offer the next event to the on-demand reader.
    #[inline]
    fn try_on_demand(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// Records whether the reader settled an event it was offered.
    #[inline]
    fn record(&mut self, settled: bool) {
        self.tried += 1;
        self.settled += settled as u32;
        if self.tried == ON_DEMAND_WINDOW {
            if self.settled * 2 < ON_DEMAND_WINDOW {
                self.skip = ON_DEMAND_PAUSE;
            }
            self.tried = 0;
            self.settled = 0;
        }
    }
}

/// Settles an event from its envelope and the fields its routes read
/// ([`crate::settle`]) when that is possible, counting it into `local`:
/// true then, false when it needs the full parse.
#[inline(always)]
fn settle_on_demand<C: StageClock>(
    raw: &[u8],
    snap: &Snapshot,
    lazy: &mut LazyReader,
    local: &mut Local,
    clock: &mut C,
    st: &crate::metrics::StageTimes,
) -> bool {
    match settle(raw, snap, lazy, &mut local.verdicts) {
        Settled::Full => false,
        Settled::Unrouted => {
            local.unrouted += 1;
            local.unvalidated += 1;
            let ns = clock.lap();
            clock.record(st, [ns, 0, 0, 0]);
            true
        }
        Settled::Rejected(routes) => {
            let ns = clock.lap();
            for (r, i) in routes.iter().zip(0..) {
                let which = if local.verdicts[i] == Verdict::Error {
                    2
                } else {
                    0
                };
                local.count(r.sub, which);
            }
            local.unvalidated += 1;
            // The scan, the lookup and the filters, timed as one.
            clock.record(st, [ns, 0, 0, 0]);
            true
        }
    }
}

/// One event: parse, route, filter and encode for every route, counting
/// into `local`; `C` times the stages (or not).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn process_event<C: StageClock>(
    raw: &[u8],
    batch: &InputBatch,
    start: usize,
    end: usize,
    snap: &Snapshot,
    shared: &Shared,
    readers: &mut Readers,
    enc: &mut Encoder,
    local: &mut Local,
) {
    let st = &shared.metrics.stages;
    let mut clock = C::start();
    if shared.on_demand && snap.on_demand() && readers.try_on_demand() {
        let settled = settle_on_demand(raw, snap, &mut readers.lazy, local, &mut clock, st);
        readers.record(settled);
        if settled {
            return;
        }
    }
    readers.full.parse(raw, |res| {
        let parse_ns = clock.lap();
        match res {
            Err(rej) => {
                local.rejected[rej.reason.index()] += 1;
                if batch.ticket.is_some() {
                    local.tracked_rejects.push(RejectedLine {
                        offset: start as u32,
                        reason: rej.reason,
                        detail: rej.detail.clone(),
                    });
                }
                if let Some(tx) = &shared.rejects {
                    let _ = tx.send(RejectLine {
                        reason: rej.reason,
                        detail: rej.detail,
                        raw: batch.data.slice(start..end),
                    });
                }
                clock.record(st, [parse_ns, 0, 0, 0]);
            }
            Ok(env) => {
                let routes = snap.routes(env.account_id, env.event_type);
                let route_ns = clock.lap();
                if routes.is_empty() {
                    local.unrouted += 1;
                    clock.record(st, [parse_ns, route_ns, 0, 0]);
                    return;
                }
                let (mut filter_ns, mut encode_ns) = (0u64, 0u64);
                // The record of the event delivered whole, made once and
                // shared by every route that delivers it whole.
                let mut whole: Option<Record> = None;
                for r in routes {
                    clock.lap();
                    let verdict = match &r.source.filter {
                        None => Verdict::Match,
                        Some(f) => f.matches(env.object),
                    };
                    filter_ns += clock.lap();
                    match verdict {
                        Verdict::Match => {
                            local.count(r.sub, 1);
                            let rec = match r.source.fields.as_ref() {
                                Some(p) => enc.encode(&env, Some(p)),
                                None => whole
                                    .get_or_insert_with(|| enc.encode_whole(&env, raw))
                                    .clone(),
                            };
                            local.encoded += 1;
                            local.stage(r.sub, rec);
                            encode_ns += clock.lap();
                        }
                        Verdict::NoMatch => local.count(r.sub, 0),
                        Verdict::Error => local.count(r.sub, 2),
                    }
                }
                clock.record(st, [parse_ns, route_ns, filter_ns, encode_ns]);
            }
        }
    });
}

fn worker(rx: Receiver<InputBatch>, shared: Arc<Shared>) {
    let mut readers = Readers::default();
    let mut enc = Encoder::default();
    let mut local = Local::default();
    while let Ok(batch) = rx.recv() {
        if !batch.spans.is_empty() {
            let snap = shared.snapshot.load();
            process(&batch, &snap, &shared, &mut readers, &mut enc, &mut local);
        }
        if let Some(t) = &batch.ticket {
            let rejected = std::mem::take(&mut local.tracked_rejects);
            t.finish_batch(batch.spans.len() as u64 - rejected.len() as u64, rejected);
        }
        if let Some(b) = batch.barrier {
            let _ = b.send(());
        }
    }
}

/// The most bytes of an event [`prefetch`] asks for (a larger event is read
/// at its own pace; its first lines are what the reader needs first).
const PREFETCH_MAX: usize = 2048;

/// Asks the CPU to bring the cache lines of `bytes` (their first
/// [`PREFETCH_MAX`]) into its caches ahead of their use: the next event's,
/// while this one is read. The ingest thread wrote them on another core, so
/// without this the reader's first look at each line waits on memory
/// (`perf annotate`: 40% of the index's samples on its first compare).
#[inline(always)]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = bytes.as_ptr() as usize;
        let mut line = start & !63;
        let end = start + bytes.len().min(PREFETCH_MAX);
        while line < end {
            // SAFETY: a prefetch is a hint: it cannot fault, whatever the
            // address, and changes nothing a program can see.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    line as *const i8,
                )
            };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

fn process(
    batch: &InputBatch,
    snap: &Snapshot,
    shared: &Shared,
    readers: &mut Readers,
    enc: &mut Encoder,
    local: &mut Local,
) {
    local.prepare(snap.subscriptions.len());
    let m = &shared.metrics;
    let mut bytes_in = 0u64;
    for (k, span) in batch.spans.iter().enumerate() {
        let (start, end) = (span.start as usize, (span.start + span.len) as usize);
        let raw = &batch.data[start..end];
        if let Some(next) = batch.spans.get(k + 1) {
            prefetch(&batch.data[next.start as usize..(next.start + next.len) as usize]);
        }
        bytes_in += raw.len() as u64;
        local.sample_tick = local.sample_tick.wrapping_add(1);
        if shared.stage_sampling && local.sample_tick.is_multiple_of(64) {
            process_event::<Sampled>(raw, batch, start, end, snap, shared, readers, enc, local);
        } else {
            process_event::<()>(raw, batch, start, end, snap, shared, readers, enc, local);
        }
    }
    // Hand records to their destinations: one chunk per subscription and destination.
    for sub in std::mem::take(&mut local.staged_touched) {
        let records = std::mem::take(&mut local.staged[sub as usize]);
        let rt = &snap.subscriptions[sub as usize];
        if shared.taps.active() {
            shared.taps.offer(&rt.id, &records);
        }
        let n = rt.destinations.len();
        if n == 0 {
            continue;
        }
        // A durable publish is acknowledged only once these records are safe.
        let hold = batch
            .ticket
            .as_ref()
            .filter(|t| t.durable)
            .map(|t| t.hold_for(&rt.account_id));
        let mut records = Some(records);
        for (i, d) in rt.destinations.iter().enumerate() {
            let recs = if i + 1 == n {
                records.take().unwrap_or_default()
            } else {
                records.as_ref().cloned().unwrap_or_default()
            };
            let chunk = Chunk {
                subscription: rt.id.clone(),
                records: recs,
                received: batch.received,
                hold: hold.clone(),
            };
            let outgoing = &mut local.outgoing;
            let at = *local
                .outgoing_at
                .entry(Arc::as_ptr(d) as usize)
                .or_insert_with(|| {
                    outgoing.push((d.clone(), Vec::new()));
                    outgoing.len() - 1
                });
            outgoing[at].1.push(chunk);
        }
    }
    local.outgoing_at.clear();
    for (d, chunks) in local.outgoing.drain(..) {
        d.push_all(chunks);
    }
    // Publish the counters.
    m.events_in.fetch_add(batch.spans.len() as u64, Relaxed);
    m.bytes_in.fetch_add(bytes_in, Relaxed);
    m.batches_processed.fetch_add(1, Relaxed);
    for (i, n) in local.rejected.iter_mut().enumerate() {
        if *n > 0 {
            m.rejected[i].fetch_add(*n, Relaxed);
            *n = 0;
        }
    }
    if local.unrouted > 0 {
        m.unrouted
            .fetch_add(std::mem::take(&mut local.unrouted), Relaxed);
    }
    if local.unvalidated > 0 {
        m.unvalidated
            .fetch_add(std::mem::take(&mut local.unvalidated), Relaxed);
    }
    if local.encoded > 0 {
        m.records_encoded
            .fetch_add(std::mem::take(&mut local.encoded), Relaxed);
    }
    for sub in std::mem::take(&mut local.touched) {
        let c = std::mem::take(&mut local.per_sub[sub as usize]);
        let stats = &snap.subscriptions[sub as usize].stats;
        let evaluated = c[0] + c[1] + c[2];
        stats.evaluated.fetch_add(evaluated, Relaxed);
        if c[1] > 0 {
            stats.matched.fetch_add(c[1], Relaxed);
        }
        if c[2] > 0 {
            stats.filter_errors.fetch_add(c[2], Relaxed);
        }
    }
}
