//! Delivery: from encoded records to sink plugin calls. `docs/delivery.md`
//! is the user-facing description; this is how it is built.
//!
//! Each destination has one task on the delivery runtime. Workers hand it
//! chunks of records (one chunk per input batch and subscription):
//!
//! - `durability = "memory"`: through a bounded channel, after taking the
//!   chunk's bytes from the destination's [`ByteBudget`]. A full budget
//!   blocks the worker (`when_full = "block"`, which pushes back to every
//!   publisher) or sheds the chunk and counts it (`drop_newest`).
//! - `durability = "disk"`: by appending them to the destination's
//!   [`DiskBuffer`]; the task reads them back while its memory budget allows.
//!   A full disk buffer blocks or sheds the same way.
//!
//! The task keeps one *lane* per subscription, forms batches within the limits
//! the sink declares (records, total bytes, bytes per record counted with the
//! sink's per-record overhead; lowered by `batch_max_*`) or when the lane's
//! linger time expires, and sends batches on blocking threads, as many at once
//! as the adaptive concurrency allows (AIMD: +1 per round trip while send
//! latency is steady and the limit is in use, halved on throttling or
//! failure, between 1 and `max_in_flight`). Each record's outcome is read
//! back: delivered records are counted (and acknowledged in the disk buffer),
//! records to retry are retried alone (never the whole batch) after an
//! exponential backoff with full jitter, honouring the plugin's retry-after,
//! and records refused for good, too big for the sink, or out of attempts go
//! to the dead-letter file with the reason. Nothing is dropped silently.
//!
//! Order: a sink that declares `FLAG_ORDERED` gets at most one batch per lane
//! at a time, and a lane waiting to retry sends nothing else meanwhile, so
//! each subscription's records arrive in order (records of a partially failed
//! batch arrive after their batch-mates). Other sinks get batches of a lane
//! concurrently, and retried records after later ones.

use crate::ack::Hold;
use crate::config::{DeliveryConfig, Durability, WhenFull};
use crate::disk_buffer::{AppendError, DiskBuffer, DiskEntry, DiskOptions, SyncSignal};
use crate::encode::Record;
use crate::metrics::DestinationStats;
use crate::plugin::{RecordOutcome, SinkInstance};
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Records of one subscription for one destination, from one input batch.
#[derive(Debug)]
pub struct Chunk {
    /// The subscription that selected them.
    pub subscription: Arc<str>,
    /// The records, in event order.
    pub records: Vec<Record>,
    /// When the input batch was received (for latency).
    pub received: Instant,
    /// Keeps a durable publish unacknowledged until these records are safe.
    pub hold: Option<Hold>,
}

/// When the engine stops: shared by the runtime, the budgets and the syncer.
#[derive(Debug, Default)]
struct Stopping {
    deadline: Mutex<Option<Instant>>,
}

impl Stopping {
    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn past(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }
}

/// The bytes of records a destination holds in memory (queued, batching, in
/// flight, waiting to retry), bounded.
#[derive(Debug)]
pub struct ByteBudget {
    used: Mutex<u64>,
    freed: std::sync::Condvar,
    max: u64,
    stopping: Arc<Stopping>,
}

impl ByteBudget {
    fn new(max: u64, stopping: Arc<Stopping>) -> ByteBudget {
        ByteBudget {
            used: Mutex::new(0),
            freed: std::sync::Condvar::new(),
            max: max.max(1),
            stopping,
        }
    }

    /// Takes `n` bytes, waiting while that would exceed the budget (a chunk
    /// bigger than the whole budget is let through when nothing else is
    /// held). Once the engine's drain deadline has passed it stops waiting:
    /// the records are then dead-lettered by the task rather than kept.
    pub fn acquire(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used > 0 && *used + n > self.max && !self.stopping.past() {
            used = self
                .freed
                .wait_timeout(used, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *used += n;
    }

    /// Takes `n` bytes if they fit now.
    pub fn try_acquire(&self, n: u64) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if *used > 0 && *used + n > self.max {
            return false;
        }
        *used += n;
        true
    }

    /// Takes `n` bytes whatever the budget says.
    fn force(&self, n: u64) {
        *self.used.lock().unwrap_or_else(|p| p.into_inner()) += n;
    }

    /// Gives `n` bytes back.
    pub fn release(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(n);
        self.freed.notify_all();
    }

    /// Bytes that may be taken now.
    pub fn available(&self) -> u64 {
        self.max
            .saturating_sub(*self.used.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The engine's side of a destination: where workers push chunks.
#[derive(Debug)]
pub struct DestinationHandle {
    /// The destination id.
    pub id: Arc<str>,
    /// The plugin kind.
    pub kind: String,
    /// Identity of the configuration (kind, config, delivery): a destination
    /// whose fingerprint is unchanged keeps its task across reconfigurations.
    pub fingerprint: String,
    /// Its counters.
    pub stats: Arc<DestinationStats>,
    tx: mpsc::Sender<Chunk>,
    dead: Arc<DeadLetters>,
    budget: Arc<ByteBudget>,
    disk: Option<Arc<DiskBuffer>>,
    when_full: WhenFull,
    /// On a shared engine a full destination never makes the caller wait.
    never_block: bool,
}

impl DestinationHandle {
    /// Whether the destination's buffer is half full or more (memory or
    /// disk budget): `sluice serve` then holds back the account's ingest
    /// (back-pressure), keeping the other half for what is already on its
    /// way, rather than dead-letter.
    pub fn is_full(&self) -> bool {
        match &self.disk {
            Some(d) => {
                let max = d.max_bytes();
                self.stats.disk_bytes.load(Relaxed).saturating_mul(2) >= max
            }
            None => self.budget.used().saturating_mul(2) >= self.budget.max,
        }
    }

    fn full_reason(&self) -> String {
        match &self.disk {
            Some(d) => format!(
                "the destination's disk buffer was full (disk_max_bytes = {}): it is not keeping up",
                d.max_bytes()
            ),
            None => format!(
                "the destination's buffer was full (buffer_max_bytes = {}): it is not keeping up",
                self.budget.max
            ),
        }
    }

    fn dead_letter_chunk(&self, chunk: Chunk, why: &str) {
        let (sub, records) = pending(chunk);
        self.dead.write(&self.stats, &sub, &records, why);
    }

    /// Hands a chunk to the destination. With `when_full = "block"` this
    /// blocks while the destination's buffer is full. Must not be called
    /// from inside the delivery runtime.
    pub fn push(&self, chunk: Chunk) {
        let n = chunk.records.len() as u64;
        if n == 0 {
            return;
        }
        if let Some(disk) = &self.disk {
            let received_us =
                DiskBuffer::now_us().saturating_sub(chunk.received.elapsed().as_micros() as u64);
            match disk.append(
                &chunk.subscription,
                &chunk.records,
                received_us,
                chunk.hold.clone(),
            ) {
                Ok(()) => {}
                Err(AppendError::Full) if self.when_full == WhenFull::DropNewest => {
                    self.drop_chunk(&chunk);
                }
                Err(AppendError::Full) if self.never_block => {
                    let why = self.full_reason();
                    self.dead_letter_chunk(chunk, &why);
                }
                Err(e) => {
                    let why = match e {
                        AppendError::Full => {
                            "the disk buffer was full when the engine stopped".to_string()
                        }
                        AppendError::Io(e) => format!("writing the disk buffer failed: {e}"),
                    };
                    let (sub, records) = pending(chunk);
                    self.dead.write(&self.stats, &sub, &records, &why);
                }
            }
            return;
        }
        // In pieces of at most an eighth of the budget, so that the bound
        // holds even for a chunk bigger than the whole budget.
        let piece_max = (self.budget.max / 8).max(1);
        let mut chunk = chunk;
        loop {
            let mut bytes = 0u64;
            let mut take = 0;
            for r in &chunk.records {
                let b = r.data().len() as u64;
                if take > 0 && bytes + b > piece_max {
                    break;
                }
                bytes += b;
                take += 1;
            }
            let rest = (take < chunk.records.len()).then(|| Chunk {
                subscription: chunk.subscription.clone(),
                records: chunk.records.split_off(take),
                received: chunk.received,
                hold: chunk.hold.clone(),
            });
            self.push_piece(chunk, bytes);
            match rest {
                Some(r) => chunk = r,
                None => return,
            }
        }
    }

    fn push_piece(&self, chunk: Chunk, bytes: u64) {
        let n = chunk.records.len() as u64;
        match self.when_full {
            WhenFull::Block if self.never_block => {
                if !self.budget.try_acquire(bytes) {
                    let why = self.full_reason();
                    self.dead_letter_chunk(chunk, &why);
                    return;
                }
            }
            WhenFull::Block => self.budget.acquire(bytes),
            WhenFull::DropNewest => {
                if !self.budget.try_acquire(bytes) {
                    self.drop_chunk(&chunk);
                    return;
                }
            }
        }
        self.stats.queued.fetch_add(n, Relaxed);
        self.stats.queued_bytes.fetch_add(bytes, Relaxed);
        let sent = if self.never_block {
            self.tx.try_send(chunk).map_err(|e| match e {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
            })
        } else {
            self.tx
                .blocking_send(chunk)
                .map_err(|mpsc::error::SendError(c)| c)
        };
        if let Err(chunk) = sent {
            // The task is gone (it only ends once every handle is dropped, or
            // if it panicked): keep the records rather than lose them.
            self.budget.release(bytes);
            self.stats.queued.fetch_sub(n, Relaxed);
            self.stats.queued_bytes.fetch_sub(bytes, Relaxed);
            let why = if self.tx.is_closed() {
                "destination task stopped".to_string()
            } else {
                self.full_reason()
            };
            self.dead_letter_chunk(chunk, &why);
        }
    }

    fn drop_chunk(&self, chunk: &Chunk) {
        let n = chunk.records.len() as u64;
        self.stats.dropped.fetch_add(n, Relaxed);
        if let Some(h) = &chunk.hold {
            h.dropped(n);
        }
        tracing::debug!(destination = %self.id, records = n, "buffer full: records dropped (when_full = drop_newest)");
    }

    /// The destination's disk buffer, if it has one.
    pub fn disk(&self) -> Option<&Arc<DiskBuffer>> {
        self.disk.as_ref()
    }
}

/// A chunk's subscription and records as pending records.
fn pending(chunk: Chunk) -> (Arc<str>, Vec<Pending>) {
    let Chunk {
        subscription,
        records,
        received,
        hold,
    } = chunk;
    let records = records
        .into_iter()
        .map(|r| Pending::new(r, received, 0, hold.clone()))
        .collect();
    (subscription, records)
}

/// Writes dead-lettered records to `<dir>/<destination>.ndjson`.
#[derive(Debug)]
pub struct DeadLetters {
    path: PathBuf,
    destination: Arc<str>,
    file: Mutex<Option<std::fs::File>>,
}

/// A destination id as a file name.
fn file_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl DeadLetters {
    /// Dead letters of `destination` under `dir`.
    pub fn new(dir: &Path, destination: Arc<str>) -> DeadLetters {
        DeadLetters {
            path: dir.join(format!("{}.ndjson", file_safe(&destination))),
            destination,
            file: Mutex::new(None),
        }
    }

    fn write(
        &self,
        stats: &DestinationStats,
        subscription: &str,
        records: &[Pending],
        reason: &str,
    ) {
        if records.is_empty() {
            return;
        }
        stats.dead_letter(reason_label(reason), records.len() as u64);
        let now = crate::events::format_rfc3339_ms(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        );
        let mut buf = Vec::with_capacity(records.len() * 256);
        for p in records {
            buf.extend_from_slice(b"{\"time\":");
            crate::json::write_str(&mut buf, &now);
            buf.extend_from_slice(b",\"destination\":");
            crate::json::write_str(&mut buf, &self.destination);
            buf.extend_from_slice(b",\"subscription\":");
            crate::json::write_str(&mut buf, subscription);
            buf.extend_from_slice(b",\"reason\":");
            crate::json::write_str(&mut buf, reason);
            buf.extend_from_slice(format!(",\"attempts\":{},\"record\":", p.attempts).as_bytes());
            buf.extend_from_slice(p.rec.data());
            buf.extend_from_slice(b"}\n");
        }
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let result = (|| -> std::io::Result<()> {
            if f.is_none() {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                *f = Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&self.path)?,
                );
            }
            if let Some(file) = f.as_mut() {
                file.write_all(&buf)?;
                file.flush()?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            *f = None;
            tracing::error!(
                destination = %self.destination,
                path = %self.path.display(),
                records = records.len(),
                "cannot write dead letters ({e}); the records follow on stderr"
            );
            let _ = std::io::stderr().write_all(&buf);
        }
    }
}

/// A short, bounded label for the metric of a dead-letter reason.
fn reason_label(reason: &str) -> &str {
    let end = reason.find([':', '(']).unwrap_or(reason.len()).min(64);
    reason[..end].trim()
}

#[derive(Debug)]
struct Pending {
    rec: Record,
    attempts: u32,
    first: Instant,
    /// Sequence number in the disk buffer (0 in memory).
    seq: u64,
    /// Released (dropped) when the record is safe: see `ack`.
    _hold: Option<Hold>,
}

impl Pending {
    fn new(rec: Record, first: Instant, seq: u64, hold: Option<Hold>) -> Pending {
        Pending {
            rec,
            attempts: 0,
            first,
            seq,
            _hold: hold,
        }
    }
}

/// The delivery runtime: one task per destination, and the syncer thread of
/// the disk buffers.
pub struct Delivery {
    /// Many tenants share the workers and the plugin call pool: never block
    /// a worker on a full destination, and cap each call group's calls.
    pub shared: bool,
    /// How long a destination that cannot start is tried again (none: forever).
    pub start_timeout: Option<Duration>,
    /// Per `delivery.call_group`: permits for concurrent plugin calls.
    groups: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    rt: tokio::runtime::Runtime,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stopping: Arc<Stopping>,
    dead_letter_dir: PathBuf,
    buffer_dir: PathBuf,
    disks: Arc<Mutex<HashMap<PathBuf, Arc<DiskBuffer>>>>,
    sync_signal: Arc<SyncSignal>,
    syncer_stop: Arc<AtomicBool>,
    syncer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("dead_letter_dir", &self.dead_letter_dir)
            .field("buffer_dir", &self.buffer_dir)
            .finish()
    }
}

impl Delivery {
    /// Starts the runtime; dead letters go under `dead_letter_dir` and disk
    /// buffers under `buffer_dir` unless a destination says otherwise.
    pub fn new(
        threads: usize,
        dead_letter_dir: PathBuf,
        buffer_dir: PathBuf,
    ) -> std::io::Result<Delivery> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .max_blocking_threads(MAX_PLUGIN_CALLS)
            .thread_name("sluice-delivery")
            .enable_time()
            .build()?;
        let stopping = Arc::new(Stopping::default());
        let disks: Arc<Mutex<HashMap<PathBuf, Arc<DiskBuffer>>>> = Arc::default();
        let sync_signal = Arc::new(SyncSignal::default());
        let syncer_stop = Arc::new(AtomicBool::new(false));
        let syncer = {
            let (disks, signal, stop, stopping) = (
                disks.clone(),
                sync_signal.clone(),
                syncer_stop.clone(),
                stopping.clone(),
            );
            std::thread::Builder::new()
                .name("sluice-fsync".into())
                .spawn(move || syncer_loop(disks, signal, stop, stopping))?
        };
        Ok(Delivery {
            shared: false,
            start_timeout: None,
            groups: Mutex::default(),
            rt,
            tasks: Mutex::new(Vec::new()),
            stopping,
            dead_letter_dir,
            buffer_dir,
            disks,
            sync_signal,
            syncer_stop,
            syncer: Some(syncer),
        })
    }

    /// Opens the disk buffer a destination with `cfg` needs (none for
    /// `durability = "memory"`), or returns the one already open for it.
    /// Replays and repairs happen here; what was found is logged.
    pub fn open_disk(
        &self,
        id: &str,
        cfg: &DeliveryConfig,
        stats: &Arc<DestinationStats>,
    ) -> Result<Option<Arc<DiskBuffer>>, String> {
        if cfg.durability != Durability::Disk {
            return Ok(None);
        }
        let dir = cfg
            .buffer_dir
            .clone()
            .unwrap_or_else(|| self.buffer_dir.clone())
            .join(file_safe(id));
        let opts = DiskOptions {
            fsync: cfg.fsync,
            fsync_interval: Duration::from_millis(cfg.fsync_interval_ms.max(1)),
            max_bytes: cfg.disk_max_bytes,
            when_full: cfg.when_full,
            wait_for_room: !self.shared,
            segment_bytes: DiskOptions::segment_size_for(cfg.disk_max_bytes),
        };
        let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = disks.get(&dir) {
            d.set_options(opts);
            return Ok(Some(d.clone()));
        }
        let (d, report) = DiskBuffer::open(&dir, opts, stats.clone(), self.sync_signal.clone())
            .map_err(|e| format!("cannot open the disk buffer {}: {e}", dir.display()))?;
        for p in &report.problems {
            tracing::warn!(destination = %id, "disk buffer: {p}");
        }
        if report.replay > 0 {
            tracing::info!(destination = %id, records = report.replay, "disk buffer: replaying records not acknowledged before the last stop");
        }
        disks.insert(dir, d.clone());
        Ok(Some(d))
    }

    /// Dead-letters what the disk buffers under the buffer directory that no
    /// destination opened hold (destinations deleted, or moved to memory,
    /// before the last stop: their records were acknowledged to publishers),
    /// with the reason, then deletes those buffers. Returns the records
    /// dead-lettered. Call after the first configuration is applied.
    pub fn drain_orphan_buffers(&self) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.buffer_dir) else {
            return 0;
        };
        let open: std::collections::HashSet<PathBuf> = self
            .disks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut total = 0;
        for e in entries.flatten() {
            let dir = e.path();
            if !dir.is_dir() || open.contains(&dir) || !DiskBuffer::is_log_dir(&dir) {
                continue;
            }
            let id: Arc<str> = e.file_name().to_string_lossy().into();
            match self.drain_orphan(&dir, id.clone()) {
                Ok(n) => {
                    if n > 0 {
                        tracing::warn!(destination = %id, records = n, "the disk buffer of a destination no longer configured was dead-lettered");
                    }
                    total += n;
                }
                Err(err) => {
                    tracing::error!(dir = %dir.display(), "cannot drain the disk buffer of a destination no longer configured: {err}; left in place")
                }
            }
        }
        total
    }

    fn drain_orphan(&self, dir: &Path, id: Arc<str>) -> std::io::Result<u64> {
        let stats = Arc::new(DestinationStats::default());
        let opts = DiskOptions {
            fsync: crate::config::Fsync::Interval,
            fsync_interval: Duration::from_secs(1),
            max_bytes: u64::MAX,
            when_full: WhenFull::DropNewest,
            wait_for_room: false,
            segment_bytes: 64 << 20,
        };
        let (d, _) = DiskBuffer::open(dir, opts, stats.clone(), self.sync_signal.clone())?;
        let dead = DeadLetters::new(&self.dead_letter_dir, id);
        let mut n = 0;
        let mut entries = Vec::new();
        while d.read(1 << 20, &mut entries)? > 0 {
            let now = Instant::now();
            let mut by_sub: Vec<(Arc<str>, Vec<Pending>)> = Vec::new();
            for e in entries.drain(..) {
                let p = Pending::new(e.record, now, e.seq, None);
                match by_sub.iter_mut().find(|(s, _)| *s == e.subscription) {
                    Some((_, v)) => v.push(p),
                    None => by_sub.push((e.subscription, vec![p])),
                }
            }
            for (sub, recs) in by_sub {
                n += recs.len() as u64;
                dead.write(
                    &stats,
                    &sub,
                    &recs,
                    "the destination was deleted before the engine last stopped; its buffered records were kept until this start",
                );
            }
        }
        d.finish()?;
        drop(d);
        DiskBuffer::remove_log_dir(dir)?;
        Ok(n)
    }

    /// Starts delivering to a destination through `sink`, or, when `sink` is
    /// an error (its plugin is not loaded), dead-lettering its records with
    /// that reason. `disk` comes from [`Delivery::open_disk`].
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &self,
        id: &str,
        kind: &str,
        fingerprint: String,
        cfg: &DeliveryConfig,
        sink: SinkSource,
        stats: Arc<DestinationStats>,
        disk: Option<Arc<DiskBuffer>>,
    ) -> Arc<DestinationHandle> {
        let id: Arc<str> = id.into();
        let dir = cfg
            .dead_letter_dir
            .clone()
            .unwrap_or_else(|| self.dead_letter_dir.clone());
        let dead = Arc::new(DeadLetters::new(&dir, id.clone()));
        let (tx, rx) = mpsc::channel(1024);
        let budget = Arc::new(ByteBudget::new(cfg.buffer_max_bytes, self.stopping.clone()));
        let (mut limits, ordered) = match &sink {
            SinkSource::Ready(s) => (s.plugin().info.limits, s.plugin().info.ordered),
            SinkSource::Retry { plugin, .. } => (plugin.info.limits, plugin.info.ordered),
            SinkSource::Missing(_) => Default::default(),
        };
        let (sink, starter) = match sink {
            SinkSource::Ready(s) => (Ok(Arc::new(s)), None),
            SinkSource::Missing(why) => (Err(why), None),
            SinkSource::Retry { create, error, .. } => {
                stats.unhealthy.store(1, Relaxed);
                *stats.start_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((error.clone(), Instant::now()));
                let starter = Starter {
                    create,
                    deadline: self.start_timeout.map(|t| Instant::now() + t),
                    attempts: 1,
                    next: Instant::now() + start_backoff(1),
                    running: None,
                };
                (Err(error), Some(starter))
            }
        };
        let lower = |sink: u64, ours: u64| match (sink, ours) {
            (0, o) => o,
            (s, 0) => s,
            (s, o) => s.min(o),
        };
        limits.max_records = lower(
            u64::from(limits.max_records),
            u64::from(cfg.batch_max_records),
        ) as u32;
        limits.max_batch_bytes = lower(limits.max_batch_bytes, cfg.batch_max_bytes);
        if let Some(d) = &disk {
            d.consumers.fetch_add(1, Relaxed);
        }
        let aimd = Aimd::new(cfg.max_in_flight, cfg.adaptive_concurrency);
        stats.concurrency_limit.store(aimd.limit() as u64, Relaxed);
        let group = match (&cfg.call_group, self.shared) {
            (Some(g), true) => Some(
                self.groups
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(g.clone())
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(CALLS_PER_GROUP)))
                    .clone(),
            ),
            _ => None,
        };
        let task = Task {
            id: id.clone(),
            group,
            starter,
            sink,
            limits,
            ordered,
            cfg: cfg.clone(),
            stats: stats.clone(),
            dead: dead.clone(),
            lanes: FxHashMap::default(),
            deadlines: BinaryHeap::new(),
            ready: VecDeque::new(),
            retries: BinaryHeap::new(),
            retry_seq: 0,
            budget: budget.clone(),
            rng: seed(),
            stopping: self.stopping.clone(),
            disk: disk.clone(),
            disks: self.disks.clone(),
            aimd,
            read_buf: Vec::new(),
            send_timeout: (cfg.send_timeout_ms > 0)
                .then(|| Duration::from_millis(cfg.send_timeout_ms)),
            stuck: Arc::default(),
        };
        let handle = self.rt.spawn(task.run(rx));
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
        Arc::new(DestinationHandle {
            id,
            kind: kind.to_string(),
            fingerprint,
            stats,
            tx,
            dead,
            budget,
            disk,
            when_full: cfg.when_full,
            never_block: self.shared,
        })
    }

    /// Sets the drain deadline: from then on, once it passes, workers waiting
    /// for room stop waiting and the tasks stop delivering (memory:
    /// dead-letter what is left; disk: leave it in the buffer for the next
    /// start).
    pub fn begin_shutdown(&self, drain: Duration) {
        let mut d = self
            .stopping
            .deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if d.is_none() {
            *d = Some(Instant::now() + drain);
        }
    }

    /// Waits until every destination task has finished (each finishes once
    /// all handles to it are dropped and its records are delivered,
    /// dead-lettered or, in a disk buffer, kept for the next start), then
    /// syncs the disk buffers a last time.
    pub fn shutdown(mut self, drain: Duration) {
        self.begin_shutdown(drain);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        self.rt.block_on(async {
            for t in tasks {
                if let Err(e) = t.await {
                    tracing::error!("delivery task failed: {e}");
                }
            }
        });
        self.syncer_stop.store(true, Relaxed);
        self.sync_signal.wake();
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
        for d in self
            .disks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            if let Err(e) = d.finish() {
                tracing::error!(dir = %d.dir().display(), "disk buffer: last sync failed: {e}");
            }
        }
        let rt = std::mem::replace(
            &mut self.rt,
            match tokio::runtime::Builder::new_current_thread().build() {
                Ok(rt) => rt,
                Err(_) => return,
            },
        );
        rt.shutdown_timeout(Duration::from_secs(5));
    }

    /// A handle to the runtime, for tasks that belong with delivery.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.syncer_stop.store(true, Relaxed);
        self.sync_signal.wake();
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
    }
}

/// fsyncs the disk buffers on their schedule, deletes their delivered
/// segments, and, once the drain deadline passes, releases blocked writers.
fn syncer_loop(
    disks: Arc<Mutex<HashMap<PathBuf, Arc<DiskBuffer>>>>,
    signal: Arc<SyncSignal>,
    stop: Arc<AtomicBool>,
    stopping: Arc<Stopping>,
) {
    while !stop.load(Relaxed) {
        let list: Vec<Arc<DiskBuffer>> = disks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let now = Instant::now();
        let past = stopping.past();
        let mut sleep = Duration::from_millis(200);
        for d in &list {
            if past {
                d.close();
            }
            if d.sync_due(now)
                && let Err(e) = d.sync()
            {
                tracing::error!(dir = %d.dir().display(), "disk buffer: fsync failed: {e}");
            }
            sleep = sleep.min(d.sync_interval());
        }
        signal.wait(sleep.max(Duration::from_millis(1)));
    }
}

/// How a destination's plugin instance is had.
pub enum SinkSource {
    /// Created.
    Ready(SinkInstance),
    /// Its plugin is not loaded: its records are dead-lettered with this reason.
    Missing(String),
    /// Creating it failed (`error`): `create` is tried again with backoff
    /// (1 s doubling to 60 s) while the records wait and the destination is
    /// unhealthy.
    Retry {
        /// The plugin, for its limits.
        plugin: Arc<crate::plugin::PluginLibrary>,
        /// Makes the instance.
        create: StartFn,
        /// Why the first attempt failed.
        error: String,
    },
}

/// Creates a destination's plugin instance.
pub type StartFn = Arc<dyn Fn() -> Result<SinkInstance, crate::plugin::PluginError> + Send + Sync>;

/// A destination waiting for its plugin instance.
struct Starter {
    create: StartFn,
    /// Past this, give up.
    deadline: Option<Instant>,
    attempts: u32,
    next: Instant,
    running: Option<tokio::task::JoinHandle<Result<SinkInstance, crate::plugin::PluginError>>>,
}

/// Wait before the next attempt to create an instance, after `attempts`.
fn start_backoff(attempts: u32) -> Duration {
    Duration::from_secs((1u64 << attempts.saturating_sub(1).min(6)).min(60))
}

/// Sends given up on (timed out) and not yet returned, per destination,
/// beyond which the destination sends nothing more.
const MAX_STUCK_SENDS: usize = 4;

/// Threads for plugin calls, shared by every destination.
pub const MAX_PLUGIN_CALLS: usize = 256;

/// Most plugin calls at once (running, or given up on and not returned) of
/// the destinations of one call group on a shared engine: one tenant's
/// stuck or slow destinations take at most this share of
/// [`MAX_PLUGIN_CALLS`].
pub const CALLS_PER_GROUP: usize = 16;

/// Calls the plugin, catching a panic of the engine's side of the call.
fn call_plugin(sink: &SinkInstance, recs: &[Record], sub: &str) -> crate::plugin::SendReport {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sink.send_records(recs, sub)
    }))
    .unwrap_or_else(|_| failed_report(recs.len(), "engine panicked while calling the plugin"))
}

/// Every record to retry, the call failed as a whole.
fn failed_report(n: usize, why: &str) -> crate::plugin::SendReport {
    crate::plugin::SendReport {
        outcomes: vec![
            RecordOutcome::Retry {
                after_ms: 0,
                reason: why.to_string()
            };
            n
        ],
        failure: Some((sluice_sdk::abi::STATUS_RETRY, why.to_string())),
        protocol_errors: 0,
    }
}

fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (std::process::id() as u64).rotate_left(32) | 1
}

/// Additive-increase, multiplicative-decrease of the batches in flight.
#[derive(Debug)]
struct Aimd {
    limit: f64,
    max: f64,
    adaptive: bool,
    rtt_ewma: Option<f64>,
    last_cut: Option<Instant>,
}

impl Aimd {
    fn new(max: u32, adaptive: bool) -> Aimd {
        let max = f64::from(max.max(1));
        Aimd {
            limit: if adaptive { 1.0 } else { max },
            max,
            adaptive,
            rtt_ewma: None,
            last_cut: None,
        }
    }

    fn limit(&self) -> usize {
        self.limit.floor().max(1.0) as usize
    }

    /// A batch came back after `rtt`; `congested` when the sink throttled or
    /// failed; `busy` when every slot was in use as it was sent.
    fn observe(&mut self, rtt: Duration, congested: bool, busy: bool) {
        if !self.adaptive {
            return;
        }
        let rtt = rtt.as_secs_f64();
        let ewma = self.rtt_ewma.unwrap_or(rtt);
        if congested {
            // At most one cut per round trip: the batches already in flight
            // saw the same congestion.
            if self
                .last_cut
                .is_none_or(|t| t.elapsed().as_secs_f64() > ewma)
            {
                self.limit = (self.limit / 2.0).max(1.0);
                self.last_cut = Some(Instant::now());
            }
        } else if busy && rtt <= ewma * 1.5 + 0.001 {
            self.limit = (self.limit + 1.0 / self.limit).min(self.max);
        }
        self.rtt_ewma = Some(0.9 * ewma + 0.1 * rtt);
    }
}

#[derive(Default)]
struct Lane {
    /// The batch being filled.
    filling: Vec<Pending>,
    bytes: u64,
    deadline: Option<Instant>,
    /// Closed batches waiting to be sent (retries at the front).
    queued: VecDeque<Vec<Pending>>,
    in_flight: u32,
    /// Ordered sinks: a retry of this lane is waiting.
    blocked: bool,
}

impl Lane {
    fn idle(&self) -> bool {
        self.filling.is_empty() && self.queued.is_empty() && self.in_flight == 0 && !self.blocked
    }
}

struct Task {
    id: Arc<str>,
    /// The call group's permits (shared engines only).
    group: Option<Arc<tokio::sync::Semaphore>>,
    /// While the plugin instance is not created yet.
    starter: Option<Starter>,
    sink: Result<Arc<SinkInstance>, String>,
    limits: sluice_sdk::abi::SluiceLimits,
    ordered: bool,
    cfg: DeliveryConfig,
    stats: Arc<DestinationStats>,
    dead: Arc<DeadLetters>,
    lanes: FxHashMap<Arc<str>, Lane>,
    deadlines: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    /// One entry per queued batch, naming its lane.
    ready: VecDeque<Arc<str>>,
    retries: BinaryHeap<Reverse<(Instant, u64, RetryBatch)>>,
    retry_seq: u64,
    budget: Arc<ByteBudget>,
    rng: u64,
    stopping: Arc<Stopping>,
    disk: Option<Arc<DiskBuffer>>,
    disks: Arc<Mutex<HashMap<PathBuf, Arc<DiskBuffer>>>>,
    aimd: Aimd,
    read_buf: Vec<DiskEntry>,
    send_timeout: Option<Duration>,
    /// Sends given up on that have not returned yet.
    stuck: Arc<std::sync::atomic::AtomicUsize>,
}

struct RetryBatch(Arc<str>, Vec<Pending>);

impl PartialEq for RetryBatch {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for RetryBatch {}
impl PartialOrd for RetryBatch {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for RetryBatch {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// A finished send: lane, records, report, when it was sent, whether every
/// slot was in use then.
type Flight = (
    Arc<str>,
    Vec<Pending>,
    crate::plugin::SendReport,
    Instant,
    bool,
);

/// Why a task stops taking records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closed {
    /// Still open.
    No,
    /// Its handles are gone and the engine is stopping.
    Stopping,
    /// Its handles are gone: the destination was removed or replaced.
    Removed,
}

impl Task {
    fn cost(&self, r: &Record) -> u64 {
        r.data().len() as u64 + u64::from(self.limits.record_overhead_bytes)
    }

    fn fits(&self, lane: &Lane, cost: u64) -> bool {
        let l = &self.limits;
        (l.max_records == 0 || lane.filling.len() < l.max_records as usize)
            && (l.max_batch_bytes == 0 || lane.bytes + cost <= l.max_batch_bytes)
    }

    fn full(&self, lane: &Lane) -> bool {
        self.limits.max_records != 0 && lane.filling.len() >= self.limits.max_records as usize
    }

    /// Records leave the engine's memory (delivered, dead-lettered, or left
    /// in the disk buffer at shutdown).
    fn release(&mut self, records: &[Pending]) {
        let n = records.len() as u64;
        let bytes: u64 = records.iter().map(|p| p.rec.data().len() as u64).sum();
        self.stats.queued.fetch_sub(n, Relaxed);
        self.stats.queued_bytes.fetch_sub(bytes, Relaxed);
        self.budget.release(bytes);
    }

    /// Records are done for good: delivered or dead-lettered.
    fn settle(&mut self, records: &[Pending]) {
        self.release(records);
        if let Some(d) = &self.disk {
            d.ack(records.iter().map(|p| p.seq));
        }
    }

    fn dead_letter(&mut self, sub: &str, records: Vec<Pending>, reason: &str) {
        self.dead.write(&self.stats, sub, &records, reason);
        self.settle(&records);
    }

    fn lane(&mut self, sub: &Arc<str>) -> &mut Lane {
        self.lanes.entry(sub.clone()).or_default()
    }

    fn close_filling(&mut self, sub: &Arc<str>) {
        let lane = self.lane(sub);
        if lane.filling.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut lane.filling);
        lane.bytes = 0;
        lane.deadline = None;
        lane.queued.push_back(batch);
        self.ready.push_back(sub.clone());
    }

    /// Adds records to their lane, closing full batches.
    fn add(&mut self, sub: Arc<str>, records: Vec<Pending>) {
        let linger = Duration::from_millis(self.cfg.linger_ms);
        for p in records {
            let cost = self.cost(&p.rec);
            if self.limits.max_record_bytes != 0 && cost > self.limits.max_record_bytes {
                let reason = format!(
                    "record of {cost} bytes is over the sink's limit of {} bytes per record",
                    self.limits.max_record_bytes
                );
                self.dead_letter(&sub, vec![p], &reason);
                continue;
            }
            let fits = self
                .lanes
                .get(&sub)
                .is_none_or(|l| l.filling.is_empty() || self.fits(l, cost));
            if !fits {
                self.close_filling(&sub);
            }
            let mut new_deadline = None;
            {
                let lane = self.lanes.entry(sub.clone()).or_default();
                if lane.deadline.is_none() {
                    let d = Instant::now() + linger;
                    lane.deadline = Some(d);
                    new_deadline = Some(d);
                }
                lane.bytes += cost;
                lane.filling.push(p);
            }
            if let Some(d) = new_deadline {
                self.deadlines.push(Reverse((d, sub.clone())));
            }
            let full = self.lanes.get(&sub).is_some_and(|l| self.full(l));
            if full {
                self.close_filling(&sub);
            }
        }
    }

    /// Closes batches whose linger expired (or every batch, when draining).
    fn expire(&mut self, now: Instant, all: bool) {
        if all {
            let subs: Vec<Arc<str>> = self
                .lanes
                .iter()
                .filter(|(_, l)| !l.filling.is_empty())
                .map(|(s, _)| s.clone())
                .collect();
            for s in subs {
                self.close_filling(&s);
            }
            self.deadlines.clear();
            return;
        }
        while let Some(Reverse((d, _))) = self.deadlines.peek() {
            if *d > now {
                break;
            }
            let Some(Reverse((d, sub))) = self.deadlines.pop() else {
                break;
            };
            if self.lanes.get(&sub).is_some_and(|l| l.deadline == Some(d)) {
                self.close_filling(&sub);
            }
        }
    }

    /// Puts retries that are due (all, when draining) back at the front of their lanes.
    fn due_retries(&mut self, now: Instant, all: bool) {
        while let Some(Reverse((due, _, _))) = self.retries.peek() {
            if !all && *due > now {
                break;
            }
            let Some(Reverse((_, _, RetryBatch(sub, recs)))) = self.retries.pop() else {
                break;
            };
            let lane = self.lane(&sub);
            lane.blocked = false;
            lane.queued.push_front(recs);
            self.ready.push_front(sub);
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let a = self.deadlines.peek().map(|Reverse((d, _))| *d);
        let b = self.retries.peek().map(|Reverse((d, _, _))| *d);
        let c = self
            .starter
            .as_ref()
            .filter(|st| st.running.is_none())
            .map(|st| st.next);
        [a, b, c].into_iter().flatten().min()
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Exponential backoff with full jitter: uniform in
    /// [0, min(cap, 100 ms * 2^(n-1))].
    fn backoff(&mut self, attempts: u32) -> Duration {
        let base_ms: u64 = 100;
        let cap_ms = self.cfg.retry_max_backoff_ms.max(1);
        let exp = base_ms.saturating_mul(1u64 << attempts.saturating_sub(1).min(20));
        let ceiling = exp.min(cap_ms);
        Duration::from_millis(self.rand() % (ceiling + 1))
    }

    fn exhausted(&self, p: &Pending, now: Instant) -> bool {
        (self.cfg.max_attempts != 0 && p.attempts >= self.cfg.max_attempts)
            || (self.cfg.max_age_s != 0
                && now.duration_since(p.first) > Duration::from_secs(self.cfg.max_age_s))
    }

    fn handle(&mut self, (sub, batch, report, sent, busy): Flight) {
        self.stats.in_flight.fetch_sub(1, Relaxed);
        self.stats.batches.fetch_add(1, Relaxed);
        if let Some(l) = self.lanes.get_mut(&sub) {
            l.in_flight = l.in_flight.saturating_sub(1);
        }
        if report.protocol_errors > 0 {
            self.stats
                .protocol_errors
                .fetch_add(report.protocol_errors as u64, Relaxed);
        }
        match &report.failure {
            Some((status, msg)) => {
                self.stats.send_errors.fetch_add(1, Relaxed);
                if self.stats.unhealthy.swap(1, Relaxed) == 0 {
                    tracing::warn!(destination = %self.id, status, "destination unhealthy: {msg}");
                }
            }
            None => {
                if self.stats.unhealthy.swap(0, Relaxed) == 1 {
                    tracing::info!(destination = %self.id, "destination healthy again");
                }
            }
        }
        let now = Instant::now();
        let mut delivered_bytes = 0u64;
        let mut retry: Vec<Pending> = Vec::new();
        let mut retry_after = Duration::ZERO;
        let mut min_attempts = u32::MAX;
        let mut ok: Vec<Pending> = Vec::new();
        let mut rejected: Vec<(Pending, String)> = Vec::new();
        let mut exhausted: Vec<(Pending, String)> = Vec::new();
        for (mut p, outcome) in batch.into_iter().zip(report.outcomes) {
            p.attempts += 1;
            match outcome {
                RecordOutcome::Ok => {
                    delivered_bytes += p.rec.data().len() as u64;
                    ok.push(p);
                }
                RecordOutcome::Reject { reason } => rejected.push((p, reason)),
                RecordOutcome::Retry { after_ms, reason } => {
                    if self.exhausted(&p, now) {
                        exhausted.push((p, reason));
                    } else {
                        retry_after = retry_after.max(Duration::from_millis(u64::from(after_ms)));
                        min_attempts = min_attempts.min(p.attempts);
                        retry.push(p);
                    }
                }
            }
        }
        let congested = report.failure.is_some() || !retry.is_empty() || !exhausted.is_empty();
        self.aimd.observe(now.duration_since(sent), congested, busy);
        self.stats
            .concurrency_limit
            .store(self.aimd.limit() as u64, Relaxed);
        if !ok.is_empty() {
            let mut h = self.stats.latency.lock().unwrap_or_else(|p| p.into_inner());
            for p in &ok {
                let us = now.saturating_duration_since(p.first).as_micros().max(1) as u64;
                h.saturating_record(us);
            }
        }
        self.settle(&ok);
        self.stats.delivered.fetch_add(ok.len() as u64, Relaxed);
        self.stats
            .delivered_bytes
            .fetch_add(delivered_bytes, Relaxed);
        drop(ok);
        for (p, reason) in rejected {
            self.dead_letter(&sub, vec![p], &format!("rejected: {reason}"));
        }
        for (p, reason) in exhausted {
            let why = format!("retries exhausted after {} attempts: {reason}", p.attempts);
            self.dead_letter(&sub, vec![p], &why);
        }
        if !retry.is_empty() {
            self.stats.retried.fetch_add(retry.len() as u64, Relaxed);
            if self.disk.is_some() {
                // Read from disk, they share a read block: do not pin it while waiting.
                for p in &mut retry {
                    p.rec = p.rec.detached();
                }
            }
            let wait = self.backoff(min_attempts).max(retry_after);
            self.retry_seq += 1;
            if self.ordered {
                self.lane(&sub).blocked = true;
            }
            self.retries.push(Reverse((
                now + wait,
                self.retry_seq,
                RetryBatch(sub.clone(), retry),
            )));
        }
        if self.lanes.get(&sub).is_some_and(Lane::idle) {
            self.lanes.remove(&sub);
        }
    }

    /// Starts an attempt to create the plugin instance when one is due.
    fn begin_start(&mut self, now: Instant) {
        if let Some(st) = &mut self.starter
            && st.running.is_none()
            && now >= st.next
        {
            let create = st.create.clone();
            st.running = Some(tokio::task::spawn_blocking(move || create()));
        }
    }

    /// The outcome of an attempt to create the plugin instance.
    fn started(&mut self, r: Result<SinkInstance, crate::plugin::PluginError>) {
        let Some(st) = &mut self.starter else { return };
        match r {
            Ok(inst) => {
                tracing::info!(destination = %self.id, attempts = st.attempts + 1, "the destination's plugin instance is created; delivering");
                self.sink = Ok(Arc::new(inst));
                self.starter = None;
                self.stats.unhealthy.store(0, Relaxed);
                *self
                    .stats
                    .start_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
            }
            Err(e) if st.deadline.is_some_and(|d| Instant::now() >= d) => {
                let why = format!(
                    "the destination's plugin instance could not be created in {} attempts: {e}",
                    st.attempts + 1
                );
                tracing::error!(destination = %self.id, "{why}; its records are dead-lettered");
                self.stats.start_failed.store(1, Relaxed);
                *self
                    .stats
                    .start_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some((e.to_string(), Instant::now()));
                self.sink = Err(why);
                self.starter = None;
            }
            Err(e) => {
                st.attempts += 1;
                let wait = start_backoff(st.attempts);
                st.next = Instant::now() + wait;
                tracing::warn!(destination = %self.id, attempts = st.attempts, "the destination's plugin instance could not be created ({e}); trying again in {wait:?}");
                let mut slot = self
                    .stats
                    .start_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let since = slot.as_ref().map_or_else(Instant::now, |(_, t)| *t);
                *slot = Some((e.to_string(), since));
                self.sink = Err(e.to_string());
            }
        }
    }

    fn dispatch(&mut self, inflight: &mut JoinSet<Flight>) {
        // Records wait while the plugin instance is not created.
        if self.starter.is_some() {
            return;
        }
        // Calls that never returned hold threads of the shared pool: past a
        // few, send nothing more to this destination until they come back.
        if self.stuck.load(Relaxed) >= MAX_STUCK_SENDS {
            return;
        }
        let limit = self.aimd.limit();
        let mut scan = self.ready.len();
        while inflight.len() < limit && scan > 0 {
            scan -= 1;
            let Some(sub) = self.ready.pop_front() else {
                break;
            };
            let ordered = self.ordered;
            let Some(lane) = self.lanes.get_mut(&sub) else {
                continue;
            };
            if ordered && (lane.in_flight > 0 || lane.blocked) {
                self.ready.push_back(sub);
                continue;
            }
            let Some(batch) = lane.queued.pop_front() else {
                continue;
            };
            if batch.is_empty() {
                continue;
            }
            let sink = match &self.sink {
                Ok(s) => s.clone(),
                Err(why) => {
                    let why = why.clone();
                    self.dead_letter(&sub, batch, &why);
                    continue;
                }
            };
            lane.in_flight += 1;
            self.stats.in_flight.fetch_add(1, Relaxed);
            let busy = inflight.len() + 1 >= limit;
            // The plugin gets its own handles on the records: if it does not
            // return in time, the task goes on with the batch and the call
            // keeps only what it was lent.
            let recs: Vec<Record> = batch.iter().map(|p| p.rec.clone()).collect();
            let timeout = self.send_timeout;
            let stuck = self.stuck.clone();
            let stats = self.stats.clone();
            let group = self.group.clone();
            let stopping = self.stopping.clone();
            inflight.spawn(async move {
                // The group's share of the call pool: held until the call
                // really returns, so calls given up on count too.
                let permit = match group {
                    Some(g) => g.acquire_owned().await.ok(),
                    None => None,
                };
                let sent = Instant::now();
                let n = recs.len();
                // 0 running, 1 returned, 2 given up on.
                let state = Arc::new(std::sync::atomic::AtomicU8::new(0));
                let (state2, stuck2, sub2) = (state.clone(), stuck.clone(), sub.clone());
                let call = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let report = call_plugin(&sink, &recs, &sub2);
                    if state2.compare_exchange(0, 1, Relaxed, Relaxed).is_err() {
                        // Given up on earlier: it is no longer stuck.
                        stuck2.fetch_sub(1, Relaxed);
                    }
                    report
                });
                // Wait for the call, at most the send timeout, and never
                // past the engine's drain deadline: a call stuck in foreign
                // code is given up on (its thread is abandoned), and its
                // records are retried, kept on disk or dead-lettered.
                let mut call = call;
                let give_up = async {
                    let limit = async {
                        match timeout {
                            Some(t) => tokio::time::sleep(t).await,
                            None => std::future::pending::<()>().await,
                        }
                    };
                    let stop = async {
                        while !stopping.past() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    };
                    tokio::select! {
                        _ = limit => false,
                        _ = stop => true,
                    }
                };
                let report = tokio::select! {
                    biased;
                    r = &mut call => r.ok(),
                    stopped = give_up => {
                        if state.compare_exchange(0, 2, Relaxed, Relaxed).is_ok() {
                            stuck.fetch_add(1, Relaxed);
                            let why = if stopped {
                                "the engine stopped while the plugin's send was still running".to_string()
                            } else {
                                stats.send_timeouts.fetch_add(1, Relaxed);
                                format!("the plugin's send did not return within {:?}", timeout.unwrap_or_default())
                            };
                            Some(failed_report(n, &why))
                        } else {
                            // It returned just as the time ran out.
                            call.await.ok()
                        }
                    }
                };
                let report = report.unwrap_or_else(|| {
                    failed_report(n, "engine panicked while calling the plugin")
                });
                (sub, batch, report, sent, busy)
            });
        }
    }

    fn idle(&self, inflight: &JoinSet<Flight>) -> bool {
        inflight.is_empty()
            && self.ready.is_empty()
            && self.retries.is_empty()
            && self.lanes.values().all(|l| l.filling.is_empty())
    }

    /// Everything still held, out of the lanes and retry queue.
    fn take_all(&mut self) -> Vec<(Arc<str>, Vec<Pending>)> {
        self.expire(Instant::now(), true);
        self.due_retries(Instant::now(), true);
        let mut out = Vec::new();
        while let Some(sub) = self.ready.pop_front() {
            if let Some(batch) = self.lanes.get_mut(&sub).and_then(|l| l.queued.pop_front()) {
                out.push((sub, batch));
            }
        }
        out
    }

    /// At the drain deadline: memory records are dead-lettered; records of
    /// the disk buffer stay there (unacknowledged) for the next start.
    fn abandon_all(&mut self) {
        for (sub, batch) in self.take_all() {
            if self.disk.is_some() {
                self.release(&batch);
            } else {
                self.dead_letter(&sub, batch, "engine stopped before delivery");
            }
        }
    }

    /// Reads from the disk buffer while the memory budget allows.
    fn fill_from_disk(&mut self) {
        let Some(disk) = self.disk.clone() else {
            return;
        };
        // Refill when a quarter of the budget (at most 1 MiB) is free, not
        // record by record: each read costs a system call and a block.
        let low = (self.budget.max / 4).min(1 << 20);
        loop {
            let room = self.budget.available();
            if (room < low && self.budget.used() > 0) || room == 0 || !disk.unread() {
                return;
            }
            let mut entries = std::mem::take(&mut self.read_buf);
            let got = match disk.read(room.min(4 << 20), &mut entries) {
                Ok(n) => n,
                Err(e) => {
                    self.stats.disk_errors.fetch_add(1, Relaxed);
                    tracing::error!(destination = %self.id, "reading the disk buffer failed: {e}");
                    0
                }
            };
            if entries.is_empty() {
                self.read_buf = entries;
                return;
            }
            self.budget.force(got);
            self.stats.queued.fetch_add(entries.len() as u64, Relaxed);
            self.stats.queued_bytes.fetch_add(got, Relaxed);
            let now = Instant::now();
            let now_us = DiskBuffer::now_us();
            let mut run: Option<(Arc<str>, Vec<Pending>)> = None;
            for e in entries.drain(..) {
                let age = Duration::from_micros(now_us.saturating_sub(e.received_unix_us));
                let first = now.checked_sub(age).unwrap_or(now);
                let p = Pending::new(e.record, first, e.seq, None);
                match &mut run {
                    Some((s, v)) if *s == e.subscription => v.push(p),
                    _ => {
                        if let Some((s, v)) = run.take() {
                            self.add(s, v);
                        }
                        run = Some((e.subscription, vec![p]));
                    }
                }
            }
            if let Some((s, v)) = run {
                self.add(s, v);
            }
            self.read_buf = entries;
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Chunk>) {
        let mut inflight: JoinSet<Flight> = JoinSet::new();
        let mut closed = Closed::No;
        let mut abandoned = false;
        loop {
            let now = Instant::now();
            let draining = closed != Closed::No;
            // A replaced destination hands its disk buffer to its successor.
            let handed_over = draining
                && closed == Closed::Removed
                && self
                    .disk
                    .as_ref()
                    .is_some_and(|d| d.consumers.load(Relaxed) > 1);
            if !abandoned && !handed_over {
                self.fill_from_disk();
            }
            self.expire(now, draining);
            self.due_retries(now, false);
            // Past the drain deadline, whatever is held (and whatever comes
            // back from calls given up on) is kept on disk or dead-lettered.
            if closed == Closed::Stopping && self.stopping.past() {
                self.abandon_all();
                abandoned = true;
            }
            // Deleted before its instance could be created: what it holds
            // is dead-lettered (by dispatch, through the error) so that it
            // can finish.
            if closed == Closed::Removed && self.starter.is_some() {
                self.starter = None;
                self.sink = Err(
                    "the destination was deleted before its plugin instance could be created"
                        .to_string(),
                );
            }
            if !abandoned {
                self.begin_start(now);
                self.dispatch(&mut inflight);
            }
            if draining {
                let disk_done =
                    abandoned || handed_over || self.disk.as_ref().is_none_or(|d| !d.unread());
                if self.idle(&inflight) && disk_done {
                    break;
                }
            }
            let wake = self
                .next_wakeup()
                .unwrap_or(now + Duration::from_secs(3600));
            // While draining, or while sends are stuck, check regularly.
            let wake = if draining || self.stuck.load(Relaxed) > 0 {
                wake.min(now + Duration::from_millis(100))
            } else {
                wake
            };
            let disk = self.disk.clone();
            let want_disk =
                disk.is_some() && !abandoned && !handed_over && self.budget.available() > 0;
            let mut starting = self.starter.as_mut().and_then(|st| st.running.take());
            let mut started = None;
            tokio::select! {
                r = async { starting.as_mut().expect("guarded").await }, if starting.is_some() => {
                    starting = None;
                    started = Some(r.unwrap_or_else(|e| Err(crate::plugin::PluginError::Create {
                        kind: String::new(),
                        destination: self.id.to_string(),
                        retryable: true,
                        message: format!("creating the instance failed: {e}"),
                    })));
                }
                Some(done) = inflight.join_next(), if !inflight.is_empty() => match done {
                    Ok(flight) => self.handle(flight),
                    Err(e) => {
                        // Only cancellation gets here (panics are caught inside the
                        // task and reported as a failed send), and we never cancel.
                        self.stats.in_flight.fetch_sub(1, Relaxed);
                        tracing::error!(destination = %self.id, "send task failed: {e}");
                    }
                },
                msg = rx.recv(), if closed == Closed::No => match msg {
                    Some(chunk) => {
                        let (sub, records) = pending(chunk);
                        self.add(sub, records);
                    }
                    None => {
                        closed = if self.stopping.deadline().is_some() { Closed::Stopping } else { Closed::Removed };
                    }
                },
                _ = async { if let Some(d) = &disk { d.written_since_read().await } }, if want_disk => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            if let Some(h) = starting
                && let Some(st) = &mut self.starter
            {
                st.running = Some(h);
            }
            if let Some(r) = started {
                self.started(r);
            }
        }
        if let Ok(sink) = self.sink.clone() {
            let id = self.id.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = sink.flush() {
                    tracing::warn!(destination = %id, "flush failed: {e}");
                }
            })
            .await;
        }
        if let Some(d) = self.disk.take() {
            let last = d.consumers.fetch_sub(1, Relaxed) == 1;
            // A removed destination whose buffer is empty and unclaimed: delete it.
            if last && closed == Closed::Removed && d.drained() {
                let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
                if d.consumers.load(Relaxed) == 0 {
                    disks.remove(d.dir());
                    drop(disks);
                    if let Err(e) = d.remove() {
                        tracing::warn!(dir = %d.dir().display(), "cannot delete the disk buffer of a removed destination: {e}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(10);

    #[test]
    fn concurrency_grows_by_one_per_round_trip_while_busy_and_steady() {
        let mut a = Aimd::new(16, true);
        assert_eq!(a.limit(), 1, "starts at one batch in flight");
        // A round trip is `limit` completions, each adding 1/limit: about
        // one more batch per round trip, never more.
        let mut trips = 0;
        while a.limit() < 16 {
            let before = a.limit();
            for _ in 0..before {
                a.observe(RTT, false, true);
            }
            assert!(a.limit() <= before + 1, "{before} -> {}", a.limit());
            trips += 1;
        }
        assert!(
            (15..=24).contains(&trips),
            "{trips} round trips from 1 to 16"
        );
        for _ in 0..100 {
            a.observe(RTT, false, true);
        }
        assert_eq!(a.limit(), 16, "never above max_in_flight");
    }

    #[test]
    fn concurrency_does_not_grow_when_idle_or_when_latency_rises() {
        let mut a = Aimd::new(16, true);
        for _ in 0..50 {
            a.observe(RTT, false, false);
        }
        assert_eq!(a.limit(), 1, "slots not in use: no reason to grow");
        for _ in 0..4 {
            a.observe(RTT, false, true);
        }
        let before = a.limit();
        a.observe(RTT * 10, false, true);
        assert_eq!(a.limit(), before, "latency well above its average: hold");
    }

    #[test]
    fn concurrency_halves_on_congestion_once_per_round_trip_and_floors_at_one() {
        let mut a = Aimd::new(64, true);
        for _ in 0..2000 {
            a.observe(RTT, false, true);
        }
        let before = a.limit();
        assert!(before >= 32, "{before}");
        a.observe(RTT, true, true);
        assert_eq!(a.limit(), before / 2);
        // The other batches of the same round trip saw the same congestion.
        a.observe(RTT, true, true);
        a.observe(RTT, true, true);
        assert_eq!(a.limit(), before / 2, "one cut per round trip");
        for _ in 0..20 {
            std::thread::sleep(RTT * 2);
            a.observe(RTT, true, true);
        }
        assert_eq!(a.limit(), 1, "never below one");
    }

    #[test]
    fn fixed_concurrency_ignores_what_it_observes() {
        let mut a = Aimd::new(8, false);
        assert_eq!(a.limit(), 8);
        a.observe(RTT, true, true);
        assert_eq!(a.limit(), 8);
    }
}
