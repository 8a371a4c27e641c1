//! Delivery: from encoded records to sink plugin calls.
//!
//! Each destination has one task on the delivery runtime. Workers hand it
//! chunks of records (one chunk per input batch and subscription) through a
//! bounded channel. The task keeps one *lane* per subscription, forms batches
//! within the limits the sink declares (records, total bytes, bytes per record
//! counted with the sink's per-record overhead) or when the lane's linger time
//! expires, and sends up to `max_in_flight` batches at once on blocking
//! threads. Each record's outcome is read back: delivered records are counted,
//! records to retry are retried alone (never the whole batch) after an
//! exponential backoff with full jitter, honouring the plugin's retry-after,
//! and records refused for good, too big for the sink, or out of attempts go
//! to the dead-letter file with the reason. Nothing is dropped silently.
//!
//! Memory is bounded per destination: a worker handing over a chunk takes its
//! bytes from the destination's budget (`buffer_max_bytes`) and blocks while
//! the budget is spent; the bytes come back as records are delivered or
//! dead-lettered. A blocked worker stops taking input, which pushes back to
//! the publishers.
//!
//! Order: records of one subscription reach a destination in order when
//! `max_in_flight = 1` and nothing is retried; with more batches in flight, or
//! after a retry, batches may overtake each other.

use crate::config::DeliveryConfig;
use crate::encode::Record;
use crate::metrics::DestinationStats;
use crate::plugin::{RecordOutcome, RecordRef, SinkInstance};
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
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
}

/// The bytes of records a destination holds (queued, in flight, waiting to
/// retry), bounded: taking more blocks until records leave.
#[derive(Debug)]
pub struct ByteBudget {
    used: Mutex<u64>,
    freed: std::sync::Condvar,
    max: u64,
}

impl ByteBudget {
    /// A budget of `max` bytes.
    pub fn new(max: u64) -> ByteBudget {
        ByteBudget {
            used: Mutex::new(0),
            freed: std::sync::Condvar::new(),
            max: max.max(1),
        }
    }

    /// Takes `n` bytes, waiting while that would exceed the budget (a chunk
    /// bigger than the whole budget is let through when nothing else is held).
    pub fn acquire(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used > 0 && *used + n > self.max {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += n;
    }

    /// Gives `n` bytes back.
    pub fn release(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(n);
        self.freed.notify_all();
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
}

impl DestinationHandle {
    /// Hands a chunk to the destination; blocks while the destination holds
    /// its `buffer_max_bytes`. Must not be called from inside the delivery runtime.
    pub fn push(&self, chunk: Chunk) {
        let n = chunk.records.len() as u64;
        let bytes: u64 = chunk.records.iter().map(|r| r.data().len() as u64).sum();
        self.budget.acquire(bytes);
        self.stats.queued.fetch_add(n, Relaxed);
        self.stats.queued_bytes.fetch_add(bytes, Relaxed);
        if let Err(mpsc::error::SendError(chunk)) = self.tx.blocking_send(chunk) {
            // The task is gone (it only ends once every handle is dropped, or
            // if it panicked): keep the records rather than lose them.
            self.budget.release(bytes);
            self.stats.queued.fetch_sub(n, Relaxed);
            self.stats.queued_bytes.fetch_sub(bytes, Relaxed);
            let pending: Vec<Pending> = chunk
                .records
                .into_iter()
                .map(|r| Pending::new(r, chunk.received))
                .collect();
            self.dead.write(
                &self.stats,
                &chunk.subscription,
                &pending,
                "destination task stopped",
            );
        }
    }
}

/// Writes dead-lettered records to `<dir>/<destination>.ndjson`.
#[derive(Debug)]
pub struct DeadLetters {
    path: PathBuf,
    destination: Arc<str>,
    file: Mutex<Option<std::fs::File>>,
}

impl DeadLetters {
    /// Dead letters of `destination` under `dir`.
    pub fn new(dir: &Path, destination: Arc<str>) -> DeadLetters {
        let safe: String = destination
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        DeadLetters {
            path: dir.join(format!("{safe}.ndjson")),
            destination,
            file: Mutex::new(None),
        }
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
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
}

impl Pending {
    fn new(rec: Record, first: Instant) -> Pending {
        Pending {
            rec,
            attempts: 0,
            first,
        }
    }
}

/// The delivery runtime: one task per destination.
pub struct Delivery {
    rt: tokio::runtime::Runtime,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    drain_deadline: Arc<Mutex<Option<Instant>>>,
    dead_letter_dir: PathBuf,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("dead_letter_dir", &self.dead_letter_dir)
            .finish()
    }
}

impl Delivery {
    /// Starts the runtime; dead letters go under `dead_letter_dir` unless a
    /// destination says otherwise.
    pub fn new(threads: usize, dead_letter_dir: PathBuf) -> std::io::Result<Delivery> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .max_blocking_threads(64)
            .thread_name("sluice-delivery")
            .enable_time()
            .build()?;
        Ok(Delivery {
            rt,
            tasks: Mutex::new(Vec::new()),
            drain_deadline: Arc::new(Mutex::new(None)),
            dead_letter_dir,
        })
    }

    /// Starts delivering to a destination through `sink`, or, when `sink` is
    /// an error (its plugin is not loaded), dead-lettering its records with
    /// that reason.
    pub fn start(
        &self,
        id: &str,
        kind: &str,
        fingerprint: String,
        cfg: &DeliveryConfig,
        sink: Result<SinkInstance, String>,
        stats: Arc<DestinationStats>,
    ) -> Arc<DestinationHandle> {
        let id: Arc<str> = id.into();
        let dir = cfg
            .dead_letter_dir
            .clone()
            .unwrap_or_else(|| self.dead_letter_dir.clone());
        let dead = Arc::new(DeadLetters::new(&dir, id.clone()));
        let (tx, rx) = mpsc::channel(1024);
        let budget = Arc::new(ByteBudget::new(cfg.buffer_max_bytes));
        let limits = sink
            .as_ref()
            .map(|s| s.plugin().info.limits)
            .unwrap_or_default();
        let task = Task {
            id: id.clone(),
            sink: sink.map(Arc::new),
            limits,
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
            drain_deadline: self.drain_deadline.clone(),
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
        })
    }

    /// Waits until every destination task has finished (each finishes once all
    /// handles to it are dropped and its records are delivered or
    /// dead-lettered). Records still undelivered `drain` after this call are
    /// dead-lettered with reason "engine stopped before delivery".
    pub fn shutdown(self, drain: Duration) {
        *self
            .drain_deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + drain);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        self.rt.block_on(async {
            for t in tasks {
                if let Err(e) = t.await {
                    tracing::error!("delivery task failed: {e}");
                }
            }
        });
        self.rt.shutdown_timeout(Duration::from_secs(5));
    }

    /// A handle to the runtime, for tasks that belong with delivery.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }
}

fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (std::process::id() as u64).rotate_left(32) | 1
}

struct Lane {
    batch: Vec<Pending>,
    bytes: u64,
    deadline: Option<Instant>,
}

struct Task {
    id: Arc<str>,
    sink: Result<Arc<SinkInstance>, String>,
    limits: sluice_sdk::abi::SluiceLimits,
    cfg: DeliveryConfig,
    stats: Arc<DestinationStats>,
    dead: Arc<DeadLetters>,
    lanes: FxHashMap<Arc<str>, Lane>,
    deadlines: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    ready: VecDeque<(Arc<str>, Vec<Pending>)>,
    retries: BinaryHeap<Reverse<(Instant, u64, RetryBatch)>>,
    retry_seq: u64,
    budget: Arc<ByteBudget>,
    rng: u64,
    drain_deadline: Arc<Mutex<Option<Instant>>>,
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

type Flight = (Arc<str>, Vec<Pending>, crate::plugin::SendReport);

impl Task {
    fn cost(&self, r: &Record) -> u64 {
        r.data().len() as u64 + u64::from(self.limits.record_overhead_bytes)
    }

    fn fits(&self, lane: &Lane, cost: u64) -> bool {
        let l = &self.limits;
        (l.max_records == 0 || lane.batch.len() < l.max_records as usize)
            && (l.max_batch_bytes == 0 || lane.bytes + cost <= l.max_batch_bytes)
    }

    fn full(&self, lane: &Lane) -> bool {
        self.limits.max_records != 0 && lane.batch.len() >= self.limits.max_records as usize
    }

    fn release(&mut self, records: &[Pending]) {
        let n = records.len() as u64;
        let bytes: u64 = records.iter().map(|p| p.rec.data().len() as u64).sum();
        self.stats.queued.fetch_sub(n, Relaxed);
        self.stats.queued_bytes.fetch_sub(bytes, Relaxed);
        self.budget.release(bytes);
    }

    fn dead_letter(&mut self, sub: &str, records: Vec<Pending>, reason: &str) {
        self.release(&records);
        self.dead.write(&self.stats, sub, &records, reason);
    }

    /// Adds records to their lane, moving full batches to `ready`.
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
            let mut lane = self.lanes.remove(&sub).unwrap_or(Lane {
                batch: Vec::new(),
                bytes: 0,
                deadline: None,
            });
            if !lane.batch.is_empty() && !self.fits(&lane, cost) {
                self.ready
                    .push_back((sub.clone(), std::mem::take(&mut lane.batch)));
                lane.bytes = 0;
                lane.deadline = None;
            }
            if lane.deadline.is_none() {
                let d = Instant::now() + linger;
                lane.deadline = Some(d);
                self.deadlines.push(Reverse((d, sub.clone())));
            }
            lane.bytes += cost;
            lane.batch.push(p);
            if self.full(&lane) {
                self.ready
                    .push_back((sub.clone(), std::mem::take(&mut lane.batch)));
                lane.bytes = 0;
                lane.deadline = None;
            }
            self.lanes.insert(sub.clone(), lane);
        }
    }

    /// Moves lanes whose linger expired (or every lane, when draining) to `ready`.
    fn expire(&mut self, now: Instant, all: bool) {
        if all {
            let subs: Vec<Arc<str>> = self.lanes.keys().cloned().collect();
            for s in subs {
                if let Some(mut lane) = self.lanes.remove(&s)
                    && !lane.batch.is_empty()
                {
                    self.ready.push_back((s, std::mem::take(&mut lane.batch)));
                }
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
            if let Some(lane) = self.lanes.get_mut(&sub)
                && lane.deadline == Some(d)
            {
                let batch = std::mem::take(&mut lane.batch);
                lane.bytes = 0;
                lane.deadline = None;
                if !batch.is_empty() {
                    self.ready.push_back((sub, batch));
                }
            }
        }
    }

    fn due_retries(&mut self, now: Instant, all: bool) {
        while let Some(Reverse((due, _, _))) = self.retries.peek() {
            if !all && *due > now {
                break;
            }
            let Some(Reverse((_, _, RetryBatch(sub, recs)))) = self.retries.pop() else {
                break;
            };
            // Re-batch within limits (a retried batch is never bigger than it was).
            self.ready.push_back((sub, recs));
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let a = self.deadlines.peek().map(|Reverse((d, _))| *d);
        let b = self.retries.peek().map(|Reverse((d, _, _))| *d);
        match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        }
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

    /// Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(n-1))].
    fn backoff(&mut self, attempts: u32) -> Duration {
        let base_ms: u64 = 100;
        let cap_ms: u64 = 30_000;
        let exp = base_ms.saturating_mul(1u64 << attempts.saturating_sub(1).min(20));
        let ceiling = exp.min(cap_ms);
        Duration::from_millis(self.rand() % (ceiling + 1))
    }

    fn exhausted(&self, p: &Pending, now: Instant) -> bool {
        (self.cfg.max_attempts != 0 && p.attempts >= self.cfg.max_attempts)
            || (self.cfg.max_age_s != 0
                && now.duration_since(p.first) > Duration::from_secs(self.cfg.max_age_s))
    }

    fn handle(&mut self, (sub, batch, report): Flight) {
        self.stats.in_flight.fetch_sub(1, Relaxed);
        self.stats.batches.fetch_add(1, Relaxed);
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
        let mut delivered = 0u64;
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
                    delivered += 1;
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
        if !ok.is_empty() {
            let mut h = self.stats.latency.lock().unwrap_or_else(|p| p.into_inner());
            for p in &ok {
                let us = now.saturating_duration_since(p.first).as_micros().max(1) as u64;
                h.saturating_record(us);
            }
        }
        self.release(&ok);
        self.stats.delivered.fetch_add(delivered, Relaxed);
        self.stats
            .delivered_bytes
            .fetch_add(delivered_bytes, Relaxed);
        for (p, reason) in rejected {
            self.dead_letter(&sub, vec![p], &format!("rejected: {reason}"));
        }
        for (p, reason) in exhausted {
            let why = format!("retries exhausted after {} attempts: {reason}", p.attempts);
            self.dead_letter(&sub, vec![p], &why);
        }
        if !retry.is_empty() {
            self.stats.retried.fetch_add(retry.len() as u64, Relaxed);
            let wait = self.backoff(min_attempts).max(retry_after);
            self.retry_seq += 1;
            self.retries.push(Reverse((
                now + wait,
                self.retry_seq,
                RetryBatch(sub, retry),
            )));
        }
    }

    fn dispatch(&mut self, inflight: &mut JoinSet<Flight>) {
        let max = self.cfg.max_in_flight.max(1) as usize;
        while inflight.len() < max {
            let Some((sub, batch)) = self.ready.pop_front() else {
                break;
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
            self.stats.in_flight.fetch_add(1, Relaxed);
            inflight.spawn_blocking(move || {
                let refs: Vec<RecordRef<'_>> = batch
                    .iter()
                    .map(|p| RecordRef {
                        data: p.rec.data(),
                        account_id: p.rec.account_id(),
                        event_id: p.rec.event_id(),
                        event_type: p.rec.event_type.name(),
                        subscription_id: &sub,
                        timestamp_ms: p.rec.timestamp_ms,
                    })
                    .collect();
                let n = refs.len();
                let report =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.send(&refs)))
                        .unwrap_or_else(|_| crate::plugin::SendReport {
                            outcomes: vec![
                                RecordOutcome::Retry {
                                    after_ms: 0,
                                    reason: "engine panicked while calling the plugin".into()
                                };
                                n
                            ],
                            failure: Some((
                                sluice_sdk::abi::STATUS_RETRY,
                                "engine panicked while calling the plugin".into(),
                            )),
                            protocol_errors: 0,
                        });
                drop(refs);
                (sub, batch, report)
            });
        }
    }

    fn idle(&self, inflight: &JoinSet<Flight>) -> bool {
        inflight.is_empty()
            && self.ready.is_empty()
            && self.retries.is_empty()
            && self.lanes.values().all(|l| l.batch.is_empty())
    }

    fn abandon_all(&mut self, reason: &str) {
        self.expire(Instant::now(), true);
        self.due_retries(Instant::now(), true);
        while let Some((sub, batch)) = self.ready.pop_front() {
            self.dead_letter(&sub, batch, reason);
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Chunk>) {
        let mut inflight: JoinSet<Flight> = JoinSet::new();
        let mut closed = false;
        loop {
            let now = Instant::now();
            self.expire(now, closed);
            self.due_retries(now, false);
            self.dispatch(&mut inflight);
            if closed {
                let deadline = *self
                    .drain_deadline
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if deadline.is_some_and(|d| now >= d) {
                    self.abandon_all("engine stopped before delivery");
                }
                if self.idle(&inflight) {
                    break;
                }
            }
            let accepting = !closed;
            let wake = self
                .next_wakeup()
                .unwrap_or(now + Duration::from_secs(3600));
            // While draining, check the drain deadline regularly.
            let wake = if closed {
                wake.min(now + Duration::from_millis(100))
            } else {
                wake
            };
            tokio::select! {
                Some(done) = inflight.join_next(), if !inflight.is_empty() => match done {
                    Ok(flight) => self.handle(flight),
                    Err(e) => {
                        // Only cancellation gets here (panics are caught inside the
                        // task and reported as a failed send), and we never cancel.
                        self.stats.in_flight.fetch_sub(1, Relaxed);
                        tracing::error!(destination = %self.id, "send task failed: {e}");
                    }
                },
                msg = rx.recv(), if accepting => match msg {
                    Some(chunk) => {
                        let received = chunk.received;
                        let recs = chunk.records.into_iter().map(|r| Pending::new(r, received)).collect();
                        self.add(chunk.subscription, recs);
                    }
                    None => closed = true,
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
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
    }
}
