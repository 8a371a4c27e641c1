//! The disk buffer of a destination (`durability = "disk"`): an append-only
//! log of segment files in `<buffer dir>/<destination id>/`, written by the
//! workers, read back by the destination's delivery task, and deleted a whole
//! segment at a time once every record in it is acknowledged (delivered or
//! dead-lettered).
//!
//! ```text
//! 00000000000000000001.seg   header: "SLUICEBF", version, first sequence number
//!                            frames: [u32 body length][u32 CRC-32 of body][body]
//! 00000000000000052113.seg   body: seq, timestamps, lengths, subscription,
//! ...                              event type, JSON, account id, event id
//! acked                      the acknowledgement watermark and the bitmap above it
//! ```
//!
//! Every record has a sequence number, one more than the record before it.
//! Acknowledgements arrive out of order (retries, lanes); a bitmap above the
//! *watermark* (every record below it is acknowledged) records them. The
//! watermark and bitmap are persisted in `acked` at each sync, so a restart
//! replays only records that were not acknowledged by then: duplicates are
//! bounded by what was acknowledged since the last sync.
//!
//! Durability: frames are written with one `write` per chunk (the reader sees
//! them at once); `fsync` happens on the syncer thread, after each chunk
//! (`every_batch`, grouped when chunks arrive faster than fsyncs complete) or
//! every `fsync_interval_ms`. A publisher that asked for acknowledgement is
//! acknowledged only after the fsync that covers its records.
//!
//! Damage: on open, the last segment is scanned and cut at the first frame
//! that is incomplete or fails its CRC (a torn write); a damaged frame found
//! later while reading ends that segment's reading. Both are counted (bytes
//! cut, records lost from the gap in sequence numbers) and logged; neither
//! stops the engine.

mod acks;
mod frame;
mod reader;
mod repair;
mod writer;

use acks::{load_acks, load_synced, write_synced};
use frame::{Frame, encode_frame, new_segment, parse_frame, read_header, scan};

use crate::ack::Hold;
use crate::config::{Fsync, WhenFull};
use crate::encode::Record;
use crate::events::EventTypeId;
use crate::metrics::DestinationStats;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"SLUICEBF";
const VERSION: u32 = 1;
const HEADER: u64 = 24;
const FRAME_HEAD: usize = 8;
const BODY_FIXED: usize = 36;
/// Largest frame body accepted when reading (anything bigger is damage).
const MAX_BODY: usize = 64 << 20;

/// How a disk buffer behaves.
#[derive(Clone, Debug)]
pub struct DiskOptions {
    /// When to fsync.
    pub fsync: Fsync,
    /// The interval, for `Fsync::Interval`.
    pub fsync_interval: Duration,
    /// Most bytes of segment files.
    pub max_bytes: u64,
    /// What a full log does to writers.
    pub when_full: WhenFull,
    /// With `when_full = "block"`: wait for room (false on a shared engine,
    /// whose workers never wait: a full log answers `Full`).
    pub wait_for_room: bool,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
}

impl DiskOptions {
    /// Segments of an eighth of the size bound (at least 64 KiB, at most
    /// 64 MiB): the segment being written is never deleted, so it must be a
    /// small part of the bound or a healthy stream stalls on a full log. (A
    /// record bigger than a segment still goes whole into a segment of its own.)
    pub fn segment_size_for(max_bytes: u64) -> u64 {
        (max_bytes / 8).clamp(64 << 10, 64 << 20)
    }
}

/// A record read back from the log.
#[derive(Debug)]
pub struct DiskEntry {
    /// Its sequence number (acknowledge it with [`DiskBuffer::ack`]).
    pub seq: u64,
    /// The subscription that selected it.
    pub subscription: Arc<str>,
    /// The record.
    pub record: Record,
    /// When its input batch was received, in microseconds since the epoch.
    pub received_unix_us: u64,
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The log is at `disk_max_bytes` and the policy is `drop_newest` (or
    /// the engine is stopping).
    #[error("the disk buffer is full")]
    Full,
    /// Writing failed.
    #[error("writing the disk buffer failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What opening an existing log found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Records written before and not acknowledged: they will be delivered again.
    pub replay: u64,
    /// Damaged bytes cut off.
    pub repaired_bytes: u64,
    /// Problems found, one line each.
    pub problems: Vec<String>,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    /// Bytes written (including the header).
    bytes: u64,
    file: Option<Arc<File>>,
}

#[derive(Debug)]
struct Writer {
    segments: VecDeque<Segment>,
    next_seq: u64,
    total_bytes: u64,
    /// Holds waiting for the fsync that covers sequence numbers below the key.
    waiters: VecDeque<(u64, Hold)>,
    /// Files written since their last fsync (the active one and any just closed).
    unsynced: Vec<Arc<File>>,
    /// A segment was created since the last fsync of the directory.
    new_segment: bool,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Reader {
    /// First sequence number of the segment being read, its file and offset.
    seg_first: u64,
    file: Option<File>,
    offset: u64,
    /// Next sequence number expected.
    next_seq: u64,
    subs: HashMap<Box<[u8]>, Arc<str>>,
    types: HashMap<Box<[u8]>, EventTypeId>,
}

#[derive(Debug)]
struct Acks {
    /// A multiple of 64: bit i of `bits` is record `base + i`.
    base: u64,
    bits: VecDeque<u64>,
    persisted: Option<(u64, usize)>,
    last_persist: Option<Instant>,
}

/// One destination's disk buffer. Shared by the workers (append), its
/// delivery task (read, ack) and the syncer thread (sync).
#[derive(Debug)]
pub struct DiskBuffer {
    dir: PathBuf,
    /// An exclusive lock on `<dir>/lock` for as long as the buffer is open:
    /// no other engine, in this process or another, opens (or drains) it.
    _lock: File,
    opts: Mutex<DiskOptions>,
    /// Delivery tasks reading this buffer (two while a destination is being
    /// replaced: the old one stops reading once it sees the new one).
    pub consumers: std::sync::atomic::AtomicUsize,
    stats: Arc<DestinationStats>,
    writer: Mutex<Writer>,
    /// Signalled when segments are deleted (room for blocked writers).
    room: Condvar,
    reader: Mutex<Reader>,
    acks: Mutex<Acks>,
    /// Records below this are written (visible to the reader).
    written: AtomicU64,
    /// Records below this are fsynced.
    synced: AtomicU64,
    /// Writes not yet fsynced exist.
    dirty: AtomicBool,
    last_sync: Mutex<Instant>,
    /// Set when the engine stops: blocked writers give up.
    closing: AtomicBool,
    /// Wakes the delivery task when records are written.
    notify: tokio::sync::Notify,
    /// Wakes the syncer (`every_batch`, or a writer waiting for room).
    syncer: Arc<SyncSignal>,
}

/// Wakes the syncer thread.
#[derive(Debug, Default)]
pub struct SyncSignal {
    pending: Mutex<bool>,
    cv: Condvar,
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Takes `n` from a gauge, stopping at 0, in one atomic step (a load then a
/// store would lose an `append`'s concurrent increment).
fn sub_saturating(gauge: &std::sync::atomic::AtomicU64, n: u64) {
    let _ = gauge.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
}

impl DiskBuffer {
    /// Changes the fsync policy, size bound and full policy (a destination's
    /// delivery settings were changed).
    pub fn set_options(&self, opts: DiskOptions) {
        *self.opts.lock().unwrap_or_else(|p| p.into_inner()) = opts;
        self.room.notify_all();
    }

    pub(super) fn options(&self) -> DiskOptions {
        self.opts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether `dir` holds a log (segment files or saved acknowledgements):
    /// only such a directory is ever opened, drained or removed as an
    /// orphan.
    pub fn is_log_dir(dir: &Path) -> bool {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let p = e.path();
                p.extension().is_some_and(|x| x == "seg")
                    || p.file_name().is_some_and(|n| n == "acked" || n == "synced")
            })
        })
    }

    /// Removes a closed log: its own files, then the directory if that left
    /// it empty (anything else found there is kept, and so is the directory).
    pub fn remove_log_dir(dir: &Path) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)?.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            let ours = p.extension().is_some_and(|x| x == "seg" || x == "damaged")
                || ["acked", "acked.tmp", "synced", "synced.tmp", "lock"].contains(&name.as_str());
            if ours {
                std::fs::remove_file(&p)?;
            }
        }
        let _ = std::fs::remove_dir(dir);
        Ok(())
    }

    /// Most bytes of the log (`disk_max_bytes`).
    pub fn max_bytes(&self) -> u64 {
        self.options().max_bytes
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits until records may have been written since the last read.
    pub async fn written_since_read(&self) {
        self.notify.notified().await;
    }

    /// Stops blocked writers from waiting (the engine is stopping).
    pub fn close(&self) {
        self.closing.store(true, Relaxed);
        self.room.notify_all();
    }

    /// A final sync and acknowledgement write (engine stopping).
    pub fn finish(&self) -> std::io::Result<()> {
        self.dirty.store(true, Release);
        self.sync()?;
        self.persist_acks(true)
    }

    /// Deletes the log (its destination was removed and everything in it is
    /// delivered or dead-lettered).
    pub fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_dir_all(&self.dir)
    }

    /// Records below this are fsynced.
    pub fn synced(&self) -> u64 {
        self.synced.load(Acquire)
    }

    /// Microseconds since the epoch, for `append`'s receive time.
    pub fn now_us() -> u64 {
        unix_us()
    }
}

#[cfg(test)]
mod tests;
