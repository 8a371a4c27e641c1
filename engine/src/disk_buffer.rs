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

impl Acks {
    /// Every record below this is acknowledged.
    fn watermark(&self) -> u64 {
        self.base + self.bits.front().map_or(0, |w| w.trailing_ones() as u64)
    }

    fn set(&mut self, seq: u64) {
        if seq < self.base {
            return;
        }
        let i = ((seq - self.base) / 64) as usize;
        if i >= self.bits.len() {
            self.bits.resize(i + 1, 0);
        }
        self.bits[i] |= 1 << ((seq - self.base) % 64);
        while self.bits.front() == Some(&u64::MAX) {
            self.bits.pop_front();
            self.base += 64;
        }
    }

    fn is_set(&self, seq: u64) -> bool {
        if seq < self.base {
            return true;
        }
        let i = ((seq - self.base) / 64) as usize;
        self.bits
            .get(i)
            .is_some_and(|w| w & (1 << ((seq - self.base) % 64)) != 0)
    }

    /// Forgets the acknowledgements of `seq` and everything after it: when a
    /// repair cut the log back to end before `seq`, new records take those
    /// sequence numbers, and the old acknowledgements must not cover them.
    /// (Used where `seq` is at or above `base`; below it there is nothing to forget.)
    fn forget_from(&mut self, seq: u64) {
        let Some(off) = seq.checked_sub(self.base) else {
            return;
        };
        let word = (off / 64) as usize;
        let bit = off % 64;
        self.bits.truncate(word + 1);
        if let Some(w) = self.bits.get_mut(word) {
            *w &= (1u64 << bit) - 1;
        }
    }

    /// Acknowledges everything below `seq` (records known to be gone).
    fn skip_to(&mut self, seq: u64) {
        if self.watermark() >= seq {
            return;
        }
        while self.base + 64 <= seq {
            self.bits.pop_front();
            self.base += 64;
        }
        for s in self.base..seq {
            self.set(s);
        }
    }
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

impl SyncSignal {
    /// Asks for a sync round now.
    pub fn wake(&self) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_one();
    }

    /// Waits for a wake-up or `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !*p {
            p = self
                .cv
                .wait_timeout(p, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *p = false;
    }
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

fn new_segment(dir: &Path, first_seq: u64) -> std::io::Result<Segment> {
    let path = segment_path(dir, first_seq);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .read(true)
        .open(&path)?;
    let mut h = Vec::with_capacity(HEADER as usize);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&first_seq.to_le_bytes());
    f.write_all(&h)?;
    Ok(Segment {
        first_seq,
        path,
        bytes: HEADER,
        file: Some(Arc::new(f)),
    })
}

/// Reads a segment's header: its first sequence number.
fn read_header(f: &mut File) -> Option<u64> {
    let mut h = [0u8; HEADER as usize];
    f.read_exact(&mut h).ok()?;
    if &h[..8] != MAGIC || u32::from_le_bytes(h[8..12].try_into().ok()?) != VERSION {
        return None;
    }
    Some(u64::from_le_bytes(h[16..24].try_into().ok()?))
}

/// One frame parsed from `buf` at `pos`: (seq, frame length), or why not.
enum Frame {
    Ok {
        seq: u64,
        len: usize,
    },
    /// Not enough bytes for a whole frame.
    Short,
    /// Bad length or CRC.
    Bad(&'static str),
}

fn parse_frame(buf: &[u8], pos: usize) -> Frame {
    let rest = &buf[pos..];
    if rest.len() < FRAME_HEAD {
        return Frame::Short;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if !(BODY_FIXED..=MAX_BODY).contains(&len) {
        return Frame::Bad("impossible frame length");
    }
    if rest.len() < FRAME_HEAD + len {
        return Frame::Short;
    }
    let body = &rest[FRAME_HEAD..FRAME_HEAD + len];
    if crc32fast::hash(body) != crc {
        return Frame::Bad("CRC mismatch");
    }
    let seq = u64::from_le_bytes(body[..8].try_into().unwrap_or([0; 8]));
    let var = u16::from_le_bytes([body[28], body[29]]) as usize
        + u16::from_le_bytes([body[30], body[31]]) as usize
        + u16::from_le_bytes([body[32], body[33]]) as usize
        + u16::from_le_bytes([body[34], body[35]]) as usize
        + u32::from_le_bytes([body[24], body[25], body[26], body[27]]) as usize;
    if BODY_FIXED + var != len {
        return Frame::Bad("inconsistent lengths");
    }
    Frame::Ok {
        seq,
        len: FRAME_HEAD + len,
    }
}

/// Scans a whole segment file: (first seq, next seq after the last good
/// frame, length of the good prefix, why it stopped early).
fn scan(path: &Path) -> std::io::Result<(Option<u64>, u64, u64, Option<&'static str>)> {
    let mut f = File::open(path)?;
    let Some(first) = read_header(&mut f) else {
        return Ok((None, 0, 0, Some("bad segment header")));
    };
    let mut data = Vec::new();
    f.read_to_end(&mut data)?;
    let (mut pos, mut next) = (0usize, first);
    loop {
        if pos == data.len() {
            return Ok((Some(first), next, HEADER + pos as u64, None));
        }
        match parse_frame(&data, pos) {
            Frame::Ok { seq, len } if seq == next => {
                pos += len;
                next += 1;
            }
            Frame::Ok { .. } => {
                return Ok((Some(first), next, HEADER + pos as u64, Some("sequence gap")));
            }
            Frame::Short => {
                return Ok((
                    Some(first),
                    next,
                    HEADER + pos as u64,
                    Some("incomplete frame"),
                ));
            }
            Frame::Bad(why) => return Ok((Some(first), next, HEADER + pos as u64, Some(why))),
        }
    }
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl DiskBuffer {
    /// Opens (creating, or repairing and resuming) the log in `dir`.
    pub fn open(
        dir: &Path,
        opts: DiskOptions,
        stats: Arc<DestinationStats>,
        syncer: Arc<SyncSignal>,
    ) -> std::io::Result<(Arc<DiskBuffer>, OpenReport)> {
        std::fs::create_dir_all(dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::other(format!(
                    "{} is in use by another engine",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let mut report = OpenReport::default();
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(stem) = name.strip_suffix(".seg") {
                match stem.parse::<u64>() {
                    Ok(n) => found.push((n, e.path())),
                    Err(_) => report
                        .problems
                        .push(format!("{name}: not a segment name; ignored")),
                }
            }
        }
        found.sort();
        let mut segments: VecDeque<Segment> = VecDeque::new();
        for (first, path) in found {
            let len = std::fs::metadata(&path)?.len();
            let mut f = File::open(&path)?;
            if read_header(&mut f) != Some(first) {
                report.problems.push(format!(
                    "{}: bad header; segment set aside as .damaged",
                    path.display()
                ));
                report.repaired_bytes += len;
                std::fs::rename(&path, path.with_extension("damaged"))?;
                continue;
            }
            // Closed segments were whole when closed; damage inside them is
            // found (and counted) when they are read.
            segments.push_back(Segment {
                first_seq: first,
                path,
                bytes: len,
                file: None,
            });
        }
        // The last segment was being written: cut a torn tail.
        let mut last_next = None;
        if let Some(s) = segments.back_mut() {
            let (_, next, good, why) = scan(&s.path)?;
            if let Some(why) = why {
                report.problems.push(format!(
                    "{}: {why} at byte {good}; cut {} damaged bytes (a torn write)",
                    s.path.display(),
                    s.bytes - good
                ));
                report.repaired_bytes += s.bytes - good;
                let f = std::fs::OpenOptions::new().write(true).open(&s.path)?;
                f.set_len(good)?;
                f.sync_all()?;
                s.bytes = good;
            }
            last_next = Some(next);
        }
        // The acknowledgements persisted last time.
        let persisted = match load_acks(&dir.join("acked")) {
            Ok(p) => p,
            Err(why) => {
                report.problems.push(format!(
                    "{}: {why}; every record kept is delivered again",
                    dir.join("acked").display()
                ));
                None
            }
        };
        // Where writing resumes: after the last good frame of the last
        // segment (or, with no segment left, after what was acknowledged).
        let mut next_seq = match last_next {
            Some(n) => n,
            None => persisted
                .as_ref()
                .map_or(1, |(base, bits)| {
                    base + bits
                        .iter()
                        .map(|w| w.trailing_ones() as u64)
                        .next()
                        .unwrap_or(0)
                })
                .max(1),
        };
        // Records fsynced before the stop and gone now (the tail of the last
        // segment cut at a frame boundary, the segment lost): counted, and
        // new records start after them so that none takes their numbers.
        let mut lost_range = None;
        match load_synced(&dir.join("synced")) {
            Ok(Some(m)) if m > next_seq && m - next_seq <= 1 << 32 => {
                report.problems.push(format!(
                    "records {next_seq}..{m} were written and fsynced but are gone (damage); counted as lost, and new records start at {m}"
                ));
                lost_range = Some((next_seq, m));
                next_seq = m;
                if let Some(s) = segments.back_mut() {
                    s.file = None;
                }
                segments.push_back(new_segment(dir, m)?);
            }
            Ok(_) => {}
            Err(why) => report
                .problems
                .push(format!("{}: {why}; ignored", dir.join("synced").display())),
        }
        match segments.back_mut() {
            Some(s) => {
                let mut f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&s.path)?;
                f.seek(SeekFrom::Start(s.bytes))?;
                s.file = Some(Arc::new(f));
            }
            None => segments.push_back(new_segment(dir, next_seq)?),
        }
        let first_seq = segments.front().map_or(next_seq, |s| s.first_seq);
        let mut acks = Acks {
            base: first_seq - first_seq % 64,
            bits: VecDeque::new(),
            persisted: None,
            last_persist: None,
        };
        if let Some((base, bits)) = persisted {
            if base <= next_seq {
                acks.base = base;
                acks.bits = bits.into();
                // A repaired log ends earlier than it did when these were
                // saved: acknowledgements of the records cut away must not
                // cover the new records that will take their numbers.
                acks.forget_from(next_seq);
            } else {
                report.problems.push(format!(
                    "{}: acknowledgements beyond the end of the log; ignored, every record kept is delivered again",
                    dir.join("acked").display()
                ));
            }
        }
        acks.skip_to(first_seq);
        if let Some((lo, hi)) = lost_range {
            let mut lost = 0;
            for seq in lo.max(first_seq)..hi {
                if !acks.is_set(seq) {
                    acks.set(seq);
                    lost += 1;
                }
            }
            stats.disk_lost_records.fetch_add(lost, Relaxed);
        }
        let watermark = acks.watermark().min(next_seq);
        let replay = (watermark..next_seq).filter(|s| !acks.is_set(*s)).count() as u64;
        report.replay = replay;
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        let seg_first = segments
            .iter()
            .rev()
            .find(|s| s.first_seq <= watermark)
            .or(segments.front())
            .map_or(next_seq, |s| s.first_seq);
        stats.disk_bytes.store(total_bytes, Relaxed);
        stats.disk_records.store(replay, Relaxed);
        stats.disk_replayed.fetch_add(replay, Relaxed);
        stats
            .disk_repaired_bytes
            .fetch_add(report.repaired_bytes, Relaxed);
        let buffer = Arc::new(DiskBuffer {
            dir: dir.to_path_buf(),
            _lock: lock,
            opts: Mutex::new(opts),
            consumers: std::sync::atomic::AtomicUsize::new(0),
            stats,
            writer: Mutex::new(Writer {
                segments,
                next_seq,
                total_bytes,
                waiters: VecDeque::new(),
                unsynced: Vec::new(),
                new_segment: true,
                buf: Vec::new(),
            }),
            room: Condvar::new(),
            reader: Mutex::new(Reader {
                seg_first,
                file: None,
                offset: HEADER,
                next_seq: watermark,
                subs: HashMap::new(),
                types: HashMap::new(),
            }),
            acks: Mutex::new(acks),
            written: AtomicU64::new(next_seq),
            synced: AtomicU64::new(next_seq),
            dirty: AtomicBool::new(false),
            last_sync: Mutex::new(Instant::now()),
            closing: AtomicBool::new(false),
            notify: tokio::sync::Notify::new(),
            syncer,
        });
        Ok((buffer, report))
    }

    /// Changes the fsync policy, size bound and full policy (a destination's
    /// delivery settings were changed).
    pub fn set_options(&self, opts: DiskOptions) {
        *self.opts.lock().unwrap_or_else(|p| p.into_inner()) = opts;
        self.room.notify_all();
    }

    fn options(&self) -> DiskOptions {
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

    /// Appends the records of one chunk. With `when_full = "block"` waits
    /// for room (until the engine stops); with `drop_newest` returns
    /// [`AppendError::Full`]. `hold` is released once the records are fsynced.
    pub fn append(
        &self,
        subscription: &str,
        records: &[Record],
        received_unix_us: u64,
        hold: Option<Hold>,
    ) -> Result<(), AppendError> {
        if records.is_empty() {
            return Ok(());
        }
        let opts = self.options();
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // Frames, built outside the file.
        let mut buf = std::mem::take(&mut w.buf);
        buf.clear();
        let mut seq = w.next_seq;
        for r in records {
            encode_frame(&mut buf, seq, subscription, r, received_unix_us);
            seq += 1;
        }
        let need = buf.len() as u64;
        // Room.
        while w.total_bytes + need > opts.max_bytes && w.total_bytes > HEADER {
            if opts.when_full == WhenFull::DropNewest
                || !opts.wait_for_room
                || self.closing.load(Relaxed)
            {
                w.buf = buf;
                return Err(AppendError::Full);
            }
            self.syncer.wake();
            w = self
                .room
                .wait_timeout(w, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        // Roll to a new segment when the active one is big enough.
        let roll = w
            .segments
            .back()
            .is_none_or(|s| s.bytes > HEADER && s.bytes + need > opts.segment_bytes);
        if roll {
            let first = w.next_seq;
            let seg = new_segment(&self.dir, first)?;
            if let Some(old) = w.segments.back_mut().and_then(|s| s.file.take()) {
                w.unsynced.push(old);
            }
            w.total_bytes += seg.bytes;
            w.segments.push_back(seg);
            w.new_segment = true;
        }
        let file = w
            .segments
            .back()
            .and_then(|s| s.file.clone())
            .ok_or_else(|| std::io::Error::other("no active segment"))?;
        if let Err(e) = (&*file).write_all(&buf) {
            self.stats.disk_errors.fetch_add(1, Relaxed);
            // Put the file back where it was: a partial frame would be read as damage.
            let len = w.segments.back().map_or(HEADER, |s| s.bytes);
            let _ = file.set_len(len);
            let _ = (&*file).seek(SeekFrom::Start(len));
            w.buf = buf;
            return Err(AppendError::Io(e));
        }
        if let Some(s) = w.segments.back_mut() {
            s.bytes += need;
        }
        if !w.unsynced.iter().any(|f| Arc::ptr_eq(f, &file)) {
            w.unsynced.push(file);
        }
        w.total_bytes += need;
        w.next_seq = seq;
        if let Some(h) = hold {
            w.waiters.push_back((seq, h));
        }
        w.buf = buf;
        self.written.store(seq, Release);
        self.dirty.store(true, Release);
        self.stats.disk_bytes.store(w.total_bytes, Relaxed);
        self.stats
            .disk_records
            .fetch_add(records.len() as u64, Relaxed);
        drop(w);
        if opts.fsync == Fsync::EveryBatch {
            self.syncer.wake();
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Waits until records may have been written since the last read.
    pub async fn written_since_read(&self) {
        self.notify.notified().await;
    }

    /// Records written and not read yet exist.
    pub fn unread(&self) -> bool {
        let r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        r.next_seq < self.written.load(Acquire)
    }

    /// Every record written is acknowledged.
    pub fn drained(&self) -> bool {
        self.acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .watermark()
            >= self.written.load(Acquire)
    }

    /// Reads records not read yet, up to about `max_bytes` of them, skipping
    /// those already acknowledged (after a restart). Blocking file I/O.
    pub fn read(&self, max_bytes: u64, out: &mut Vec<DiskEntry>) -> std::io::Result<u64> {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut got = 0u64;
        while got < max_bytes && r.next_seq < self.written.load(Acquire) {
            let Some((seg_end, path)) = self.locate(&mut r) else {
                break;
            };
            if r.file.is_none() {
                r.file = Some(File::open(&path)?);
            }
            let avail = seg_end - r.offset;
            // Read about what is wanted (at least 64 KiB, at most 256 KiB, or
            // one whole frame), into an uninitialised buffer.
            let mut want = avail.min((max_bytes - got).clamp(64 << 10, 256 << 10)) as usize;
            let block = loop {
                let offset = r.offset;
                let f = r
                    .file
                    .as_mut()
                    .ok_or_else(|| std::io::Error::other("no file"))?;
                f.seek(SeekFrom::Start(offset))?;
                let mut v = Vec::with_capacity(want);
                (&mut *f).take(want as u64).read_to_end(&mut v)?;
                // A frame bigger than the block: read it whole.
                if let Frame::Short = parse_frame(&v, 0)
                    && v.len() >= 4
                {
                    let need = FRAME_HEAD + u32::from_le_bytes([v[0], v[1], v[2], v[3]]) as usize;
                    if need > want && need as u64 <= avail && need <= FRAME_HEAD + MAX_BODY {
                        want = need;
                        continue;
                    }
                }
                break Bytes::from(v);
            };
            let mut pos = 0usize;
            let mut damaged = None;
            while pos < block.len() {
                match parse_frame(&block, pos) {
                    Frame::Ok { seq, len } => {
                        if seq > r.next_seq {
                            self.skip_lost(&mut r, seq);
                        }
                        if seq == r.next_seq {
                            let acked = self
                                .acks
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .is_set(seq);
                            if !acked {
                                let e = self.decode(&mut r, block.slice(pos..pos + len))?;
                                got += e.record.data().len() as u64;
                                out.push(e);
                            }
                            r.next_seq = seq + 1;
                        }
                        pos += len;
                        if got >= max_bytes {
                            break;
                        }
                    }
                    Frame::Short => {
                        // Frames are whole up to `seg_end`: a short one at the
                        // end of what exists is damage.
                        if r.offset + block.len() as u64 >= seg_end {
                            damaged = Some("incomplete frame");
                        }
                        break;
                    }
                    Frame::Bad(why) => {
                        damaged = Some(why);
                        break;
                    }
                }
            }
            r.offset += pos as u64;
            if let Some(why) = damaged {
                let cut = seg_end - r.offset;
                tracing::error!(
                    segment = %path.display(),
                    offset = r.offset,
                    "disk buffer damaged ({why}); the {cut} bytes after it are skipped"
                );
                self.stats.disk_repaired_bytes.fetch_add(cut, Relaxed);
                self.stats.disk_errors.fetch_add(1, Relaxed);
                r.offset = seg_end;
            }
        }
        Ok(got)
    }

    /// Moves the reader to the segment holding its next record: that
    /// segment's end (bytes written so far) and path, or `None` when there is
    /// nothing more to read now.
    fn locate(&self, r: &mut Reader) -> Option<(u64, PathBuf)> {
        loop {
            let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let i = w.segments.iter().position(|s| s.first_seq == r.seg_first);
            let next = match i {
                Some(i) => {
                    let s = &w.segments[i];
                    if r.offset < s.bytes {
                        return Some((s.bytes, s.path.clone()));
                    }
                    w.segments.get(i + 1).map(|n| n.first_seq)?
                }
                // Set aside as damaged: go on with the next one.
                None => {
                    w.segments
                        .iter()
                        .find(|s| s.first_seq > r.seg_first)?
                        .first_seq
                }
            };
            drop(w);
            self.skip_lost(r, next);
            r.seg_first = next;
            r.file = None;
            r.offset = HEADER;
        }
    }

    /// Records between the reader's position and `seq` were lost: acknowledge
    /// and count them.
    fn skip_lost(&self, r: &mut Reader, seq: u64) {
        if seq <= r.next_seq {
            return;
        }
        let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let mut lost = 0;
        for s in r.next_seq..seq {
            if !acks.is_set(s) {
                lost += 1;
                acks.set(s);
            }
        }
        drop(acks);
        if lost > 0 {
            tracing::error!(
                destination_dir = %self.dir.display(),
                lost,
                "disk buffer damage: records {}..{} are lost",
                r.next_seq,
                seq
            );
            self.stats.disk_lost_records.fetch_add(lost, Relaxed);
            sub_saturating(&self.stats.disk_records, lost);
        }
        r.next_seq = seq;
    }

    fn decode(&self, r: &mut Reader, frame: Bytes) -> std::io::Result<DiskEntry> {
        let b = &frame[FRAME_HEAD..];
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]) as usize;
        let seq = u64_at(0);
        let timestamp_ms = u64_at(8) as i64;
        let received = u64_at(16);
        let data_len = u32::from_le_bytes([b[24], b[25], b[26], b[27]]) as usize;
        let (account_len, id_len, sub_len, type_len) =
            (u16_at(28), u16_at(30), u16_at(32), u16_at(34));
        let mut p = BODY_FIXED;
        let sub = &b[p..p + sub_len];
        p += sub_len;
        let ty = &b[p..p + type_len];
        p += type_len;
        let subscription = match r.subs.get(sub) {
            Some(s) => s.clone(),
            None => {
                let s: Arc<str> = String::from_utf8_lossy(sub).into();
                r.subs.insert(sub.into(), s.clone());
                s
            }
        };
        let event_type = match r.types.get(ty) {
            Some(t) => *t,
            None => {
                let name = String::from_utf8_lossy(ty);
                let t = EventTypeId::from_name(&name).ok_or_else(|| {
                    std::io::Error::other(format!("unknown event type `{name}` in the disk buffer"))
                })?;
                r.types.insert(ty.into(), t);
                t
            }
        };
        let start = FRAME_HEAD + p;
        let rest = frame.slice(start..start + data_len + account_len + id_len);
        Ok(DiskEntry {
            seq,
            subscription,
            record: Record::from_shared(rest, data_len, account_len, event_type, timestamp_ms),
            received_unix_us: received,
        })
    }

    /// Acknowledges records: delivered or dead-lettered.
    pub fn ack(&self, seqs: impl IntoIterator<Item = u64>) {
        let mut a = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for s in seqs {
            if !a.is_set(s) {
                a.set(s);
                n += 1;
            }
        }
        drop(a);
        sub_saturating(&self.stats.disk_records, n);
    }

    /// Whether a sync round is due now.
    pub fn sync_due(&self, now: Instant) -> bool {
        let dirty = self.dirty.load(Acquire);
        let since = now
            .saturating_duration_since(*self.last_sync.lock().unwrap_or_else(|p| p.into_inner()));
        let opts = self.options();
        match opts.fsync {
            Fsync::EveryBatch => dirty || since >= Duration::from_millis(200),
            Fsync::Interval => since >= opts.fsync_interval,
        }
    }

    /// The longest the syncer may sleep before this buffer needs it.
    pub fn sync_interval(&self) -> Duration {
        let opts = self.options();
        match opts.fsync {
            Fsync::EveryBatch => Duration::from_millis(200),
            Fsync::Interval => opts.fsync_interval,
        }
    }

    /// One sync round: fsync what was written, release the holds it covers,
    /// delete fully acknowledged segments, persist the acknowledgements.
    pub fn sync(&self) -> std::io::Result<()> {
        *self.last_sync.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        // fsync.
        if self.dirty.swap(false, AcqRel) {
            let (files, upto, new_segment) = {
                let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
                let files = std::mem::take(&mut w.unsynced);
                (files, w.next_seq, std::mem::take(&mut w.new_segment))
            };
            // A failed fsync leaves every file of this round (and the
            // directory, if it had a new entry) to sync again: nothing they
            // hold is acknowledged until a later round syncs them all.
            let failed = |e: std::io::Error| {
                self.stats.disk_errors.fetch_add(1, Relaxed);
                let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
                for f in &files {
                    if !w.unsynced.iter().any(|u| Arc::ptr_eq(u, f)) {
                        w.unsynced.push(f.clone());
                    }
                }
                w.new_segment |= new_segment;
                self.dirty.store(true, Release);
                e
            };
            for f in &files {
                if let Err(e) = f.sync_data() {
                    return Err(failed(e));
                }
            }
            // A new segment's directory entry must be durable too.
            if new_segment && let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
                return Err(failed(e));
            }
            let before = self.synced.swap(upto, AcqRel);
            if upto > before
                && let Err(e) = write_synced(&self.dir, upto)
            {
                // Only the detection of a lost tail is weaker for it.
                self.stats.disk_errors.fetch_add(1, Relaxed);
                tracing::warn!(dir = %self.dir.display(), "cannot write the synced mark: {e}");
            }
            let released: Vec<Hold> = {
                let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
                let mut out = Vec::new();
                while w.waiters.front().is_some_and(|(s, _)| *s <= upto) {
                    if let Some((_, h)) = w.waiters.pop_front() {
                        out.push(h);
                    }
                }
                out
            };
            drop(released);
        }
        // Delete segments whose every record is acknowledged.
        let watermark = self
            .acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .watermark();
        let mut deleted = false;
        {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            while w.segments.len() > 1 {
                let end = w.segments.get(1).map_or(0, |s| s.first_seq);
                if end > watermark {
                    break;
                }
                if let Some(s) = w.segments.pop_front() {
                    w.total_bytes = w.total_bytes.saturating_sub(s.bytes);
                    if let Err(e) = std::fs::remove_file(&s.path) {
                        tracing::warn!(segment = %s.path.display(), "cannot delete a delivered segment: {e}");
                    }
                    deleted = true;
                }
            }
            self.stats.disk_bytes.store(w.total_bytes, Relaxed);
        }
        if deleted {
            self.room.notify_all();
        }
        self.persist_acks(false)
    }

    /// Writes the acknowledgement state if it changed (at most every 100 ms
    /// unless `force`).
    fn persist_acks(&self, force: bool) -> std::io::Result<()> {
        let (base, words) = {
            let mut a = self.acks.lock().unwrap_or_else(|p| p.into_inner());
            let key = (
                a.watermark(),
                a.bits.iter().map(|w| w.count_ones() as usize).sum(),
            );
            if a.persisted == Some(key) {
                return Ok(());
            }
            if !force
                && a.last_persist
                    .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
            {
                return Ok(());
            }
            a.persisted = Some(key);
            a.last_persist = Some(Instant::now());
            (a.base, a.bits.iter().copied().collect::<Vec<u64>>())
        };
        let mut b = Vec::with_capacity(16 + words.len() * 8);
        b.extend_from_slice(&base.to_le_bytes());
        b.extend_from_slice(&(words.len() as u64).to_le_bytes());
        for w in &words {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let tmp = self.dir.join("acked.tmp");
        std::fs::write(&tmp, &b)?;
        std::fs::rename(&tmp, self.dir.join("acked"))
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

fn encode_frame(buf: &mut Vec<u8>, seq: u64, sub: &str, r: &Record, received_us: u64) {
    let ty = r.event_type.name().as_bytes();
    let (data, account, id) = (r.data(), r.account_id().as_bytes(), r.event_id().as_bytes());
    let sub = &sub.as_bytes()[..sub.len().min(u16::MAX as usize)];
    let account = &account[..account.len().min(u16::MAX as usize)];
    let id = &id[..id.len().min(u16::MAX as usize)];
    let len = BODY_FIXED + sub.len() + ty.len() + data.len() + account.len() + id.len();
    let head = buf.len();
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    let body = buf.len();
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&(r.timestamp_ms as u64).to_le_bytes());
    buf.extend_from_slice(&received_us.to_le_bytes());
    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(account.len() as u16).to_le_bytes());
    buf.extend_from_slice(&(id.len() as u16).to_le_bytes());
    buf.extend_from_slice(&(sub.len() as u16).to_le_bytes());
    buf.extend_from_slice(&(ty.len() as u16).to_le_bytes());
    buf.extend_from_slice(sub);
    buf.extend_from_slice(ty);
    buf.extend_from_slice(data);
    buf.extend_from_slice(account);
    buf.extend_from_slice(id);
    let crc = crc32fast::hash(&buf[body..]);
    buf[head + 4..head + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Records the sequence number after the last fsynced record (`synced`):
/// on open, a log that ends before it lost records that were safe.
fn write_synced(dir: &Path, next: u64) -> std::io::Result<()> {
    let mut b = next.to_le_bytes().to_vec();
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("synced.tmp");
    std::fs::write(&tmp, &b)?;
    std::fs::rename(&tmp, dir.join("synced"))
}

/// Reads the mark of [`write_synced`]: `Ok(None)` when there is none.
fn load_synced(path: &Path) -> Result<Option<u64>, String> {
    let b = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if b.len() != 12 || crc32fast::hash(&b[..8]) != u32::from_le_bytes([b[8], b[9], b[10], b[11]]) {
        return Err("damaged".into());
    }
    Ok(Some(u64::from_le_bytes(
        b[..8].try_into().unwrap_or([0; 8]),
    )))
}

/// Reads a persisted acknowledgement state: `Ok(None)` when there is none.
fn load_acks(path: &Path) -> Result<Option<(u64, Vec<u64>)>, String> {
    let b = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if b.len() < 20 || (b.len() - 20) % 8 != 0 {
        return Err("truncated".into());
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().unwrap_or([0; 4])) {
        return Err("CRC mismatch".into());
    }
    let base = u64::from_le_bytes(body[..8].try_into().unwrap_or([0; 8]));
    let n = u64::from_le_bytes(body[8..16].try_into().unwrap_or([0; 8])) as usize;
    if n != (body.len() - 16) / 8 || base % 64 != 0 {
        return Err("inconsistent".into());
    }
    let words = body[16..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    Ok(Some((base, words)))
}

/// Takes `n` from a gauge, stopping at 0, in one atomic step (a load then a
/// store would lose an `append`'s concurrent increment).
fn sub_saturating(gauge: &std::sync::atomic::AtomicU64, n: u64) {
    let _ = gauge.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64, size: usize) -> Record {
        let data = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(size));
        Record::from_parts(
            data.as_bytes(),
            "ac_1",
            &format!("ev_{i}"),
            EventTypeId::from_name("http_request_complete.v0").unwrap(),
            1_700_000_000_000 + i as i64,
        )
    }

    fn opts(max: u64, seg: u64, when_full: WhenFull) -> DiskOptions {
        DiskOptions {
            fsync: Fsync::Interval,
            fsync_interval: Duration::from_millis(10),
            max_bytes: max,
            when_full,
            wait_for_room: true,
            segment_bytes: seg,
        }
    }

    fn open(dir: &Path, o: DiskOptions) -> (Arc<DiskBuffer>, OpenReport, Arc<DestinationStats>) {
        let stats = Arc::new(DestinationStats::default());
        let (b, r) =
            DiskBuffer::open(dir, o, stats.clone(), Arc::new(SyncSignal::default())).unwrap();
        (b, r, stats)
    }

    fn read_all(b: &DiskBuffer) -> Vec<DiskEntry> {
        let mut out = Vec::new();
        while b.read(1 << 20, &mut out).unwrap() > 0 {}
        out
    }

    fn ids(v: &[DiskEntry]) -> Vec<String> {
        v.iter().map(|e| e.record.event_id().to_string()).collect()
    }

    #[test]
    fn records_come_back_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (b, report, _) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
        assert_eq!(report, OpenReport::default());
        let recs: Vec<Record> = (0..100).map(|i| rec(i, 10 + i as usize)).collect();
        b.append("esb_a", &recs[..60], 42, None).unwrap();
        b.append("esb_b", &recs[60..], 43, None).unwrap();
        let got = read_all(&b);
        assert_eq!(got.len(), 100);
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1);
            assert_eq!(e.record.data(), recs[i].data());
            assert_eq!(e.record.account_id(), "ac_1");
            assert_eq!(e.record.event_id(), format!("ev_{i}"));
            assert_eq!(e.record.timestamp_ms, recs[i].timestamp_ms);
            assert_eq!(e.record.event_type.name(), "http_request_complete.v0");
            assert_eq!(&*e.subscription, if i < 60 { "esb_a" } else { "esb_b" });
            assert_eq!(e.received_unix_us, if i < 60 { 42 } else { 43 });
        }
        assert!(!b.unread());
        assert!(!b.drained());
        b.ack(1..=100);
        assert!(b.drained());
    }

    #[test]
    fn acknowledged_segments_are_deleted_and_size_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _, stats) = open(dir.path(), opts(1 << 20, 64 << 10, WhenFull::DropNewest));
        let recs: Vec<Record> = (0..20).map(|i| rec(i, 1000)).collect();
        let mut appended = 0;
        loop {
            match b.append("esb", &recs, 0, None) {
                Ok(()) => appended += recs.len(),
                Err(AppendError::Full) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(stats.disk_bytes.load(Relaxed) <= 1 << 20);
        let segs = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "seg")
                })
                .count()
        };
        let before = segs();
        assert!(before > 4, "{before} segments");
        let got = read_all(&b);
        assert_eq!(got.len(), appended);
        b.ack(got.iter().map(|e| e.seq));
        b.sync().unwrap();
        assert_eq!(segs(), 1, "only the active segment is left");
        assert!(stats.disk_bytes.load(Relaxed) < 64 << 10);
        // Room again.
        b.append("esb", &recs, 0, None).unwrap();
    }

    #[test]
    fn a_restart_replays_only_what_was_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (b, _, _) = open(dir.path(), opts(1 << 30, 32 << 10, WhenFull::Block));
            let recs: Vec<Record> = (0..300).map(|i| rec(i, 200)).collect();
            b.append("esb", &recs, 0, None).unwrap();
            let got = read_all(&b);
            // Acknowledge all but every 7th, out of order.
            b.ack(got.iter().rev().filter(|e| e.seq % 7 != 0).map(|e| e.seq));
            b.finish().unwrap();
        }
        let (b, report, stats) = open(dir.path(), opts(1 << 30, 32 << 10, WhenFull::Block));
        assert_eq!(report.replay, 300 / 7);
        assert_eq!(stats.disk_replayed.load(Relaxed), 300 / 7);
        let got = read_all(&b);
        assert!(got.iter().all(|e| e.seq % 7 == 0), "{:?}", ids(&got));
        assert_eq!(got.len(), 300 / 7);
        // Writing goes on after the last record.
        b.append("esb", &[rec(999, 10)], 0, None).unwrap();
        let more = read_all(&b);
        assert_eq!(more.len(), 1);
        assert_eq!(more[0].seq, 301);
    }

    #[test]
    fn a_torn_tail_is_cut_and_counted_and_writing_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let seg;
        {
            let (b, _, _) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
            let recs: Vec<Record> = (0..10).map(|i| rec(i, 100)).collect();
            b.append("esb", &recs, 0, None).unwrap();
            b.finish().unwrap();
            seg = segment_path(dir.path(), 1);
        }
        // A write cut in the middle: half a frame at the end.
        let len = std::fs::metadata(&seg).unwrap().len();
        let mut frame = Vec::new();
        encode_frame(&mut frame, 11, "esb", &rec(10, 100), 0);
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&frame[..frame.len() / 2]).unwrap();
        drop(f);
        let (b, report, stats) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(
            report.problems[0].contains("incomplete frame"),
            "{:?}",
            report.problems
        );
        assert_eq!(report.repaired_bytes, frame.len() as u64 / 2);
        assert_eq!(
            stats.disk_repaired_bytes.load(Relaxed),
            frame.len() as u64 / 2
        );
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
        assert_eq!(report.replay, 10);
        b.append("esb", &[rec(10, 100)], 0, None).unwrap();
        let got = read_all(&b);
        assert_eq!(got.len(), 11);
        assert_eq!(got[10].seq, 11);
        assert_eq!(got[10].record.event_id(), "ev_10");
    }

    /// A damaged frame inside the last segment is cut as a torn tail; the
    /// acknowledgements saved for the records after it must not cover the
    /// new records that take their sequence numbers (they were lost before:
    /// acknowledged to the publisher, never delivered).
    #[test]
    fn records_written_after_a_repair_are_not_taken_for_acknowledged_ones() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (b, _, _) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
            let recs: Vec<Record> = (0..40).map(|i| rec(i, 100)).collect();
            b.append("esb", &recs, 0, None).unwrap();
            b.sync().unwrap();
            // Everything delivered but 1..=5; the acknowledgements are saved.
            b.ack(6..=40);
            b.sync().unwrap();
            b.finish().unwrap();
        }
        // Flip a byte in the 10th frame: the tail from there is cut.
        let seg = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&seg).unwrap();
        let mut at = 24;
        for _ in 0..9 {
            at += u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize + FRAME_HEAD;
        }
        bytes[at + FRAME_HEAD + 20] ^= 0xFF;
        std::fs::write(&seg, &bytes).unwrap();
        let (b, report, _) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
        assert!(report.repaired_bytes > 0, "{report:?}");
        assert_eq!(report.replay, 5, "records 1..=5 were never acknowledged");
        // New records take sequence numbers 10.. again: every one is delivered.
        let new: Vec<Record> = (100..132).map(|i| rec(i, 100)).collect();
        b.append("esb", &new, 0, None).unwrap();
        let got = ids(&read_all(&b));
        let want: Vec<String> = (0..5).chain(100..132).map(|i| format!("ev_{i}")).collect();
        assert_eq!(got, want);
        assert!(!b.drained());
    }

    /// The smallest bound the configuration accepts (1 MiB) carries a
    /// stream many times its size as long as it is delivered: segments are an
    /// eighth of the bound, so delivered ones are deleted and room comes back.
    #[test]
    fn the_smallest_bound_carries_a_delivered_stream() {
        let dir = tempfile::tempdir().unwrap();
        let max = 1 << 20;
        let o = opts(
            max,
            DiskOptions::segment_size_for(max),
            WhenFull::DropNewest,
        );
        let (b, _, stats) = open(dir.path(), o);
        let recs: Vec<Record> = (0..10).map(|i| rec(i, 1000)).collect();
        for round in 0..400 {
            if let Err(e) = b.append("esb", &recs, 0, None) {
                panic!("round {round} ({} KiB written): {e}", round * 10);
            }
            let got = read_all(&b);
            b.ack(got.iter().map(|e| e.seq));
            b.sync().unwrap();
            assert!(stats.disk_bytes.load(Relaxed) <= max);
        }
        assert!(b.drained());
    }

    #[test]
    fn garbage_at_the_tail_is_cut_too() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (b, _, _) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
            b.append("esb", &[rec(0, 10), rec(1, 10)], 0, None).unwrap();
            b.finish().unwrap();
        }
        let seg = segment_path(dir.path(), 1);
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0xAB; 100]).unwrap();
        drop(f);
        let (b, report, _) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
        assert_eq!(report.repaired_bytes, 100);
        assert_eq!(read_all(&b).len(), 2);
    }

    #[test]
    fn damage_inside_a_closed_segment_skips_to_the_next_and_counts_the_loss() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (b, _, _) = open(dir.path(), opts(1 << 30, 8 << 10, WhenFull::Block));
            for i in 0..40 {
                b.append("esb", &[rec(i, 1000)], 0, None).unwrap();
            }
            b.finish().unwrap();
        }
        // Flip a byte in the body of the 2nd record of the first segment.
        let seg = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&seg).unwrap();
        let first_len = u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize + FRAME_HEAD;
        bytes[24 + first_len + FRAME_HEAD + 50] ^= 0xFF;
        std::fs::write(&seg, &bytes).unwrap();
        let (b, report, stats) = open(dir.path(), opts(1 << 30, 8 << 10, WhenFull::Block));
        assert!(
            report.problems.is_empty(),
            "closed segments are checked when read"
        );
        let got = read_all(&b);
        let per_segment = got
            .iter()
            .filter(|e| e.seq > 1)
            .map(|e| e.seq)
            .min()
            .unwrap()
            - 1;
        assert_eq!(got[0].seq, 1);
        assert!(
            per_segment > 2,
            "the rest of segment 1 is skipped: next read is seq {}",
            per_segment + 1
        );
        assert_eq!(stats.disk_lost_records.load(Relaxed), per_segment - 1);
        assert_eq!(got.len() as u64, 40 - (per_segment - 1));
        assert!(stats.disk_errors.load(Relaxed) >= 1);
    }

    #[test]
    fn holds_are_released_by_the_fsync_that_covers_them() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _, _) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
        let (tx, rx) = std::sync::mpsc::channel();
        let t = crate::ack::Ticket::new(true, Box::new(move |r| tx.send(r).unwrap()));
        t.expect(1);
        b.append("esb", &[rec(0, 10)], 0, Some(t.hold())).unwrap();
        t.finish_batch(1, Vec::new());
        assert!(rx.try_recv().is_err(), "not fsynced yet");
        b.sync().unwrap();
        assert_eq!(rx.try_recv().unwrap().accepted, 1);
        assert_eq!(b.synced(), 2);
    }

    #[test]
    fn a_blocked_writer_goes_on_when_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _, _) = open(dir.path(), opts(1 << 20, 64 << 10, WhenFull::Block));
        let recs: Vec<Record> = (0..10).map(|i| rec(i, 1000)).collect();
        while b.stats.disk_bytes.load(Relaxed) + 11_000 < 1 << 20 {
            b.append("esb", &recs, 0, None).unwrap();
        }
        let b2 = b.clone();
        let writer = std::thread::spawn(move || b2.append("esb", &recs, 0, None));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!writer.is_finished(), "blocked while full");
        let got = read_all(&b);
        b.ack(got.iter().map(|e| e.seq));
        b.sync().unwrap();
        writer.join().unwrap().unwrap();
        // And a writer blocked at shutdown gives up.
        let recs: Vec<Record> = (0..10).map(|i| rec(i, 1000)).collect();
        while b.stats.disk_bytes.load(Relaxed) + 11_000 < 1 << 20 {
            b.append("esb", &recs, 0, None).unwrap();
        }
        let b3 = b.clone();
        let writer = std::thread::spawn(move || b3.append("esb", &recs, 0, None));
        std::thread::sleep(Duration::from_millis(100));
        b.close();
        assert!(matches!(writer.join().unwrap(), Err(AppendError::Full)));
    }

    /// A model of the log, checked at random against the real one: appends,
    /// reads with acknowledgements of random subsets, clean restarts, and
    /// damage (a flipped byte or a cut at a random place of a random
    /// segment) followed by a restart and more appends. After every restart
    /// the log gives back exactly the records appended and not acknowledged,
    /// byte for byte, except records lost to the damage, and only when the
    /// damage was reported; no acknowledged record ever comes back, and no
    /// record appended after a repair is ever taken for an acknowledged one.
    #[test]
    fn the_log_matches_a_model_through_random_damage_and_restarts() {
        for seed in 1..=32u64 {
            model_run(seed);
        }
    }

    fn model_run(seed: u64) {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n.max(1)
        };
        let dir = tempfile::tempdir().unwrap();
        let o = || opts(1 << 20, 4 << 10, WhenFull::DropNewest);
        let (mut b, _, _) = open(dir.path(), o());
        // id -> record data, for records appended and not acknowledged.
        let mut pending: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
        let mut acked: std::collections::BTreeSet<u64> = Default::default();
        let mut next_id = 0u64;
        for step in 0..80 {
            match next(10) {
                // Append a few records of random sizes.
                0..=3 => {
                    let recs: Vec<Record> = (0..1 + next(8))
                        .map(|_| {
                            next_id += 1;
                            rec(next_id, 20 + next(300) as usize)
                        })
                        .collect();
                    match b.append("esb", &recs, 0, None) {
                        Ok(()) => {
                            for r in &recs {
                                let id: u64 = r.event_id()[3..].parse().unwrap();
                                pending.insert(id, r.data().to_vec());
                            }
                        }
                        Err(AppendError::Full) => {}
                        Err(e) => panic!("seed {seed} step {step}: {e}"),
                    }
                }
                // Deliver what is unread; acknowledge a random part of it.
                4..=5 => {
                    let got = read_all(&b);
                    let mut acks = Vec::new();
                    for e in &got {
                        let id: u64 = e.record.event_id()[3..].parse().unwrap();
                        if next(3) > 0 {
                            acks.push(e.seq);
                            pending.remove(&id);
                            acked.insert(id);
                        }
                    }
                    b.ack(acks);
                }
                6 => b.sync().unwrap(),
                // Restart, perhaps after damage.
                _ => {
                    b.sync().unwrap();
                    b.finish().unwrap();
                    drop(b);
                    let damage = next(2) == 0;
                    let damage = damage && damage_a_segment(dir.path(), &mut next);
                    let (nb, report, nstats) = open(dir.path(), o());
                    let got = read_all(&nb);
                    let mut seen = std::collections::BTreeSet::new();
                    for e in &got {
                        let id: u64 = e.record.event_id()[3..].parse().unwrap();
                        assert!(
                            !acked.contains(&id),
                            "seed {seed} step {step}: acknowledged record {id} came back"
                        );
                        let want = pending.get(&id).unwrap_or_else(|| {
                            panic!("seed {seed} step {step}: record {id} was never appended")
                        });
                        assert_eq!(
                            e.record.data(),
                            &want[..],
                            "seed {seed}: record {id} changed"
                        );
                        assert!(seen.insert(id), "seed {seed}: record {id} twice");
                    }
                    let missing: Vec<u64> = pending
                        .keys()
                        .filter(|id| !seen.contains(id))
                        .copied()
                        .collect();
                    if !missing.is_empty() {
                        let reported = report.repaired_bytes > 0
                            || !report.problems.is_empty()
                            || nstats.disk_lost_records.load(Relaxed) > 0;
                        assert!(
                            damage && reported,
                            "seed {seed} step {step}: {} records lost ({missing:?}) without {} (damage: {damage}, report: {report:?})",
                            missing.len(),
                            if damage { "a report" } else { "damage" }
                        );
                        for id in missing {
                            pending.remove(&id);
                        }
                    }
                    // What was read back is delivered again: acknowledge a part.
                    let mut acks = Vec::new();
                    for e in &got {
                        let id: u64 = e.record.event_id()[3..].parse().unwrap();
                        if next(2) == 0 {
                            acks.push(e.seq);
                            pending.remove(&id);
                            acked.insert(id);
                        }
                    }
                    nb.ack(acks);
                    // The rest stays unacknowledged: it must come back at the
                    // next restart; make the log forget it was read.
                    nb.sync().unwrap();
                    nb.finish().unwrap();
                    drop(nb);
                    let (nb, _, _) = open(dir.path(), o());
                    let again = read_all(&nb);
                    let back: std::collections::BTreeSet<u64> = again
                        .iter()
                        .map(|e| e.record.event_id()[3..].parse().unwrap())
                        .collect();
                    assert_eq!(
                        back,
                        pending.keys().copied().collect(),
                        "seed {seed} step {step}: a clean restart gives back exactly the unacknowledged records"
                    );
                    b = nb;
                }
            }
        }
    }

    /// Flips a byte or cuts the file at a random place of a random segment;
    /// false if there was none.
    fn damage_a_segment(dir: &Path, next: &mut impl FnMut(u64) -> u64) -> bool {
        let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        segs.sort();
        if segs.is_empty() {
            return false;
        }
        let seg = &segs[next(segs.len() as u64) as usize];
        let mut bytes = std::fs::read(seg).unwrap();
        if bytes.is_empty() {
            return false;
        }
        let at = next(bytes.len() as u64) as usize;
        if next(2) == 0 {
            bytes[at] ^= 1 << next(8);
            eprintln!("flip {} of {} at {at}", seg.display(), bytes.len());
        } else {
            eprintln!("cut {} of {} at {at}", seg.display(), bytes.len());
            bytes.truncate(at);
        }
        std::fs::write(seg, &bytes).unwrap();
        true
    }

    #[test]
    fn a_buffer_is_opened_by_one_engine_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _, _) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
        let second = DiskBuffer::open(
            dir.path(),
            opts(1 << 30, 1 << 20, WhenFull::Block),
            Arc::new(DestinationStats::default()),
            Arc::new(SyncSignal::default()),
        );
        let Err(e) = second else {
            panic!("a second engine opened a buffer in use")
        };
        assert!(e.to_string().contains("in use by another engine"), "{e}");
        drop(b);
        let _ = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
    }
}
