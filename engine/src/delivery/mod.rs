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

mod budget;
mod concurrency;
mod dead_letters;
mod fsync;
mod handle;
mod lanes;
mod retry;
mod runtime;
mod start;
mod task;

pub(crate) use budget::ByteBudget;
use concurrency::Aimd;
pub use dead_letters::{DeadLetterHolds, DeadLetterSink};
pub(crate) use dead_letters::{DeadLetters, file_safe};
use fsync::syncer_loop;
use retry::seed;
use start::start_backoff;

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
    /// Chunks in messages of a worker's batch each.
    tx: mpsc::Sender<Vec<Chunk>>,
    dead: Arc<DeadLetters>,
    budget: Arc<ByteBudget>,
    disk: Option<Arc<DiskBuffer>>,
    when_full: WhenFull,
    /// On a shared engine a full destination never makes the caller wait.
    never_block: bool,
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

#[derive(Debug)]
struct Pending {
    rec: Record,
    attempts: u32,
    first: Instant,
    /// Sequence number in the disk buffer (0 in memory).
    seq: u64,
    /// Released (dropped) when the record is safe: see `ack`.
    hold: Option<Hold>,
}

impl Pending {
    fn new(rec: Record, first: Instant, seq: u64, hold: Option<Hold>) -> Pending {
        Pending {
            rec,
            attempts: 0,
            first,
            seq,
            hold,
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
    /// Where dead letters go instead of files, when the embedder says.
    pub dead_letter_sink: Option<Arc<dyn DeadLetterSink>>,
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

impl Drop for Delivery {
    fn drop(&mut self) {
        self.syncer_stop.store(true, Relaxed);
        self.sync_signal.wake();
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
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

/// Sends given up on (timed out) and not yet returned, per destination,
/// beyond which the destination sends nothing more.
const MAX_STUCK_SENDS: usize = 4;

/// The most batches one flight carries (when more are ready than there are
/// free slots, or when the sink's calls are fast: see `Task::dispatch`).
const MAX_BATCHES_PER_FLIGHT: usize = 32;

/// Most messages (a worker batch's chunks each) a destination's task takes
/// from its channel in one turn of its loop.
const MESSAGES_PER_TURN: usize = 64;

/// Threads for plugin calls, shared by every destination.
pub const MAX_PLUGIN_CALLS: usize = 256;

/// Most plugin calls at once (running, or given up on and not returned) of
/// the destinations of one call group on a shared engine: one tenant's
/// stuck or slow destinations take at most this share of
/// [`MAX_PLUGIN_CALLS`].
pub const CALLS_PER_GROUP: usize = 16;

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
    /// When the task began: the origin of the millisecond grid batches
    /// close on (see `lanes::close_at`).
    epoch: Instant,
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
    /// Records to dead-letter that did not fit in the dead-letter queue,
    /// with their subscription and reason: while any wait, the destination
    /// is paused.
    parked: Vec<(Arc<str>, Vec<Pending>, String)>,
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

/// One hand-off to the blocking pool: its batches, each sent in one plugin
/// call, in order, with what the call reported; when it was sent; whether
/// every slot was in use as it was.
struct Flight {
    batches: Vec<(Arc<str>, Vec<Pending>, crate::plugin::SendReport)>,
    sent: Instant,
    busy: bool,
    /// How long the plugin calls took, together (none: given up on).
    calls_took: Option<Duration>,
}

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

#[cfg(test)]
mod tests;
