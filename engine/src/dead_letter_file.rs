//! A destination's dead letters on disk, as a queue one can list, replay and
//! clear: `<dir>/<destination>.ndjson`, one dead letter per line, each with
//! an id that increases and is never given twice (`<destination>.seq` keeps
//! the highest id given once lines are taken out).
//!
//! Every change happens under an exclusive lock on `<destination>.lock`
//! (`flock`), so a `sluice dlq replay` and a running engine can share the
//! files: appends add lines; taking lines out (a replay, a delete) writes
//! the rest to a new file and renames it over the old one, after which a
//! writer that still had the old file open opens the new one.
//!
//! A replay is recorded before anything is removed: the lines it takes are
//! written and fsynced to `<destination>.replay.<replay id>.ndjson` (its
//! journal) and the replay to `<destination>.replays.ndjson`, and only then
//! is the queue rewritten without them. The journal is deleted once every
//! record is delivered, kept in a disk buffer, or dead-lettered again; one
//! left behind by a crash is replayed again ([`DeadLetterFile::unfinished`]):
//! replay is at-least-once, and a replay id is never carried out twice
//! while it is remembered: every unfinished replay is, and the last
//! [`REPLAYS_KEPT`] finished ones (the log is rewritten without older ones
//! when it reaches twice as many lines).

use serde::Deserialize;
use serde_json::value::RawValue;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Finished replays remembered per destination (with every unfinished
/// one): asked for again, the id of an older finished replay starts a new
/// replay. The replays log holds at most twice as many lines.
pub const REPLAYS_KEPT: usize = if cfg!(test) { 10 } else { 1000 };

/// One dead letter as stored.
#[derive(Clone, Debug, Deserialize)]
pub struct DeadLetter {
    /// Its id within the destination's queue (0 for lines written before
    /// ids existed).
    #[serde(default)]
    pub id: u64,
    /// When it was dead-lettered (RFC 3339, milliseconds).
    pub time: String,
    /// The subscription the record came from.
    pub subscription: String,
    /// Why it was given up on.
    pub reason: String,
    /// Delivery attempts made.
    #[serde(default)]
    pub attempts: u32,
    /// The record, exactly as it was to be delivered.
    pub record: Box<RawValue>,
}

/// Which dead letters a list, replay or delete takes: all of them, or those
/// in a time range, whose reason contains a text, or up to an id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Dead-lettered at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Dead-lettered before this time (ms since the epoch).
    pub until_ms: Option<i64>,
    /// The reason contains this text.
    pub reason: Option<String>,
    /// Ids up to this one (what a list showed: later ones are left alone).
    pub max_id: Option<u64>,
}

impl Selection {
    /// Whether `d` is selected.
    pub fn matches(&self, d: &DeadLetter) -> bool {
        self.matches_parts(d.id, &d.time, &d.reason)
    }

    /// Whether the dead letter with this id, time and reason is selected.
    fn matches_parts(&self, id: u64, time: &str, reason: &str) -> bool {
        if self.max_id.is_some_and(|m| id > m) {
            return false;
        }
        if let Some(r) = &self.reason
            && !reason.contains(r.as_str())
        {
            return false;
        }
        if self.since_ms.is_some() || self.until_ms.is_some() {
            let Some(t) = crate::events::parse_rfc3339_ms(time) else {
                return false;
            };
            if self.since_ms.is_some_and(|s| t < s) || self.until_ms.is_some_and(|u| t >= u) {
                return false;
            }
        }
        true
    }
}

/// One page of dead letters, newest first.
#[derive(Debug, Default)]
pub struct Page {
    /// The dead letters.
    pub dead_letters: Vec<DeadLetter>,
    /// Where the next page starts (`before_id`), when there may be more:
    /// the last id of this page, or, when it looked at [`PAGE_SCAN`] dead
    /// letters without filling up, just above the first it did not.
    pub next_before: Option<u64>,
}

/// Most dead letters one page looks at past `before_id`: a selection that
/// matches few of them answers a short page (and where to go on) rather
/// than read a whole queue in one request.
pub const PAGE_SCAN: usize = 10_000;

impl Page {
    /// The page of `newest_first` (dead letters, newest first) that
    /// `selection` selects, older than `before_id` when given, at most
    /// `limit`.
    pub fn of(
        newest_first: impl Iterator<Item = DeadLetter>,
        selection: &Selection,
        before_id: Option<u64>,
        limit: usize,
    ) -> Page {
        let mut page = Page::default();
        let mut looked = 0;
        for d in newest_first {
            if before_id.is_some_and(|b| d.id >= b) {
                continue;
            }
            if page.dead_letters.len() == limit {
                page.next_before = page.dead_letters.last().map(|l| l.id);
                break;
            }
            if looked == PAGE_SCAN {
                page.next_before = Some(d.id + 1);
                break;
            }
            looked += 1;
            if selection.matches(&d) {
                page.dead_letters.push(d);
            }
        }
        page
    }
}

/// A replay as recorded in `<destination>.replays.ndjson`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ReplayRecord {
    /// The replay's id (given by the client, or made by the server).
    pub id: String,
    /// When it was asked for (RFC 3339).
    pub created_at: String,
    /// Dead letters it took from the queue.
    pub records: u64,
    /// When every record was delivered, kept in a disk buffer or
    /// dead-lettered again (RFC 3339); empty while it runs.
    #[serde(default)]
    pub finished_at: String,
}

/// What [`DeadLetterFile::take_for_replay`] found.
#[derive(Debug)]
pub enum Taken {
    /// A replay with this id was asked for before: nothing is taken again.
    Existing(ReplayRecord),
    /// The selected dead letters are out of the queue and in the
    /// replay's journal: send them, then call
    /// [`DeadLetterFile::finish_replay`].
    New(ReplayRecord),
}

/// Why the queue has no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    /// The bound (`delivery.dead_letter_max_bytes`).
    pub max_bytes: u64,
}

/// A destination's dead-letter queue on disk (see the module docs).
#[derive(Debug)]
pub struct DeadLetterFile {
    dir: PathBuf,
    name: String,
    max_bytes: u64,
    writer: Mutex<Writer>,
}

#[derive(Debug, Default)]
struct Writer {
    /// The lock file, kept open by the writer.
    lock: Option<File>,
    /// The queue file open for appending.
    file: Option<File>,
    /// Its inode and length after our last append, and the last id we
    /// gave: while the file is as we left it, the next id needs no read.
    ino: u64,
    len: u64,
    last_id: u64,
}

/// Holds the queue's lock until dropped.
struct Locked(File);

impl Drop for Locked {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// A destination id as a file name.
pub(crate) fn file_safe(id: &str) -> String {
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

/// A replay id: 1 to 64 of `A-Z a-z 0-9 _ -` (it names a file).
pub fn valid_replay_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn inode(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.ino()
}

fn now_rfc3339() -> String {
    crate::events::format_rfc3339_ms(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    )
}

/// Writes `bytes` to `path` through a temporary file, fsynced, renamed
/// over it, and the directory fsynced.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl DeadLetterFile {
    /// The queue of `destination` under `dir`, bounded at `max_bytes`
    /// (0: unbounded). Nothing is opened until used.
    pub fn new(dir: &Path, destination: &str, max_bytes: u64) -> DeadLetterFile {
        DeadLetterFile {
            dir: dir.to_path_buf(),
            name: file_safe(destination),
            max_bytes,
            writer: Mutex::new(Writer::default()),
        }
    }

    /// The queue file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.ndjson", self.name))
    }

    fn side(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}.{suffix}", self.name))
    }

    fn journal(&self, replay: &str) -> PathBuf {
        self.side(&format!("replay.{replay}.ndjson"))
    }

    /// The bound, in bytes (0: none).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes the queue holds now.
    pub fn bytes(&self) -> u64 {
        std::fs::metadata(self.path()).map_or(0, |m| m.len())
    }

    /// Bytes that still fit within the bound (`u64::MAX` when unbounded).
    pub fn room(&self) -> u64 {
        if self.max_bytes == 0 {
            u64::MAX
        } else {
            self.max_bytes.saturating_sub(self.bytes())
        }
    }

    fn lock(&self) -> std::io::Result<Locked> {
        std::fs::create_dir_all(&self.dir)?;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.side("lock"))?;
        f.lock()?;
        Ok(Locked(f))
    }

    /// The highest id given so far (under the lock).
    fn last_id(&self) -> std::io::Result<u64> {
        let floor = std::fs::read_to_string(self.side("seq"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let last = match File::open(self.path()) {
            Ok(mut f) => last_line(&mut f)?
                .and_then(|l| serde_json::from_slice::<IdOnly>(&l).ok())
                .map_or(0, |d| d.id),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(floor.max(last))
    }

    /// Appends dead letters: `lines(first_id)` writes them as NDJSON, the
    /// first with id `first_id`, then one more each.
    pub fn append_with(&self, lines: impl FnOnce(u64) -> Vec<u8>) -> std::io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if w.lock.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            w.lock = Some(
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(self.side("lock"))?,
            );
        }
        let lock = w.lock.take().expect("opened above");
        lock.lock()?;
        let result = self.append_locked(&mut w, lines);
        let _ = lock.unlock();
        w.lock = Some(lock);
        if result.is_err() {
            w.file = None;
        }
        result
    }

    /// [`DeadLetterFile::append_with`] under the lock.
    fn append_locked(
        &self,
        w: &mut Writer,
        lines: impl FnOnce(u64) -> Vec<u8>,
    ) -> std::io::Result<()> {
        // Another writer, a replay or a delete may have changed the file
        // since our last append: then read where the ids are.
        let now = std::fs::metadata(self.path())
            .ok()
            .map(|m| (inode(&m), m.len()));
        if w.file.is_none() || now != Some((w.ino, w.len)) {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path())?;
            let m = f.metadata()?;
            (w.ino, w.len) = (inode(&m), m.len());
            w.last_id = self.last_id()?;
            w.file = Some(f);
        }
        let first = w.last_id + 1;
        let buf = lines(first);
        if let Some(f) = w.file.as_mut() {
            f.write_all(&buf)?;
        }
        w.len += buf.len() as u64;
        w.last_id += memchr::memchr_iter(b'\n', &buf).count() as u64;
        Ok(())
    }

    /// Appends dead letters as they are (with their ids), e.g. the lines of
    /// a replay that could not be sent.
    pub fn append_letters(&self, letters: &[DeadLetter]) -> std::io::Result<()> {
        self.append_with(|first| {
            let mut buf = Vec::new();
            for (i, d) in letters.iter().enumerate() {
                write_letter(&mut buf, first + i as u64, d);
            }
            buf
        })
    }

    /// A page of the selected dead letters, newest first, older than
    /// `before_id` when given, at most `limit`.
    pub fn list(
        &self,
        selection: &Selection,
        before_id: Option<u64>,
        limit: usize,
    ) -> std::io::Result<Page> {
        let mut f = match File::open(self.path()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Page::default()),
            Err(e) => return Err(e),
        };
        // Ids only grow from the file's start: a page deep in the queue
        // starts reading where its ids begin, found by bisection, instead
        // of reading every newer line first.
        let end = match before_id {
            Some(id) => start_of_id(&mut f, id)?,
            None => f.metadata()?.len(),
        };
        let mut lines = ReverseLines::before(&mut f, end);
        let mut failed = None;
        let newest_first = std::iter::from_fn(|| match lines.next_line() {
            Ok(l) => l,
            Err(e) => {
                failed = Some(e);
                None
            }
        })
        .filter_map(|l| serde_json::from_slice::<DeadLetter>(&l).ok());
        let page = Page::of(newest_first, selection, before_id, limit);
        match failed {
            Some(e) => Err(e),
            None => Ok(page),
        }
    }

    /// Moves the lines `selection` selects out of the queue (under the
    /// lock): into `to` when given (a new file, fsynced), else nowhere.
    /// `then` runs with how many were selected once `to` is durable and
    /// before the queue is rewritten. Never holds the queue in memory:
    /// taking everything renames the queue; a selection streams it.
    fn take_into(
        &self,
        selection: &Selection,
        to: Option<&Path>,
        then: impl FnOnce(u64) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        let highest = self.last_id()?;
        let src = match File::open(self.path()) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let Some(src) = src else {
            if let Some(to) = to {
                replace_file(to, b"")?;
            }
            then(0)?;
            return Ok(0);
        };
        let mut reader = std::io::BufReader::with_capacity(1 << 20, src);
        let dir_synced = |p: &Path| -> std::io::Result<()> {
            match p.parent() {
                Some(d) => File::open(d)?.sync_all(),
                None => Ok(()),
            }
        };
        // Ids are never given twice, even once their lines are gone.
        let keep_floor = || replace_file(&self.side("seq"), format!("{highest}\n").as_bytes());
        if *selection == Selection::default() {
            let mut n = 0u64;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let got = reader.read(&mut buf)?;
                if got == 0 {
                    break;
                }
                n += memchr::memchr_iter(b'\n', &buf[..got]).count() as u64;
            }
            then(n)?;
            if n > 0 {
                keep_floor()?;
                match to {
                    Some(to) => std::fs::rename(self.path(), to)?,
                    None => replace_file(&self.path(), b"")?,
                }
                dir_synced(&self.path())?;
            }
            return Ok(n);
        }
        let tmp = self.path().with_extension("rest");
        let mut rest = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        let mut taken = match to {
            Some(to) => Some(std::io::BufWriter::with_capacity(
                1 << 20,
                File::create(to.with_extension("tmp"))?,
            )),
            None => None,
        };
        let (mut n, mut line) = (0u64, Vec::new());
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let body = line.strip_suffix(b"\n").unwrap_or(&line);
            if body.is_empty() {
                continue;
            }
            // What selection reads, borrowed: the record is skipped, not copied.
            let selected = serde_json::from_slice::<Selected<'_>>(body)
                .is_ok_and(|d| selection.matches_parts(d.id, &d.time, &d.reason));
            let out: &mut dyn Write = match (&mut taken, selected) {
                (Some(t), true) => t,
                (None, true) => {
                    n += 1;
                    continue;
                }
                (_, false) => &mut rest,
            };
            out.write_all(body)?;
            out.write_all(b"\n")?;
            n += u64::from(selected);
        }
        if let (Some(t), Some(to)) = (taken, to) {
            let f = t.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            std::fs::rename(to.with_extension("tmp"), to)?;
            dir_synced(to)?;
        }
        then(n)?;
        let rest = rest.into_inner().map_err(|e| e.into_error())?;
        if n > 0 {
            keep_floor()?;
            rest.sync_all()?;
            std::fs::rename(&tmp, self.path())?;
            dir_synced(&self.path())?;
        } else {
            drop(rest);
            std::fs::remove_file(&tmp)?;
        }
        Ok(n)
    }

    /// Deletes the selected dead letters; returns how many.
    pub fn delete(&self, selection: &Selection) -> std::io::Result<u64> {
        let _lock = self.lock()?;
        self.take_into(selection, None, |_| Ok(()))
    }

    /// The replay recorded under `id`, if any.
    pub fn replay(&self, id: &str) -> std::io::Result<Option<ReplayRecord>> {
        Ok(self.replays()?.0.into_iter().find(|r| r.id == id))
    }

    /// The replays log: the latest state of each replay, in the order of
    /// their last lines (a replay finished after another comes after it),
    /// and the number of lines it has.
    fn replays(&self) -> std::io::Result<(Vec<ReplayRecord>, usize)> {
        let bytes = match std::fs::read(self.side("replays.ndjson")) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(e),
        };
        // The last line of an id is its latest state.
        let mut last: std::collections::HashMap<String, (usize, ReplayRecord)> =
            std::collections::HashMap::new();
        let mut lines = 0;
        for r in bytes
            .split(|b| *b == b'\n')
            .filter_map(|l| serde_json::from_slice::<ReplayRecord>(l).ok())
        {
            last.insert(r.id.clone(), (lines, r));
            lines += 1;
        }
        let mut latest: Vec<(usize, ReplayRecord)> = last.into_values().collect();
        latest.sort_unstable_by_key(|(line, _)| *line);
        Ok((latest.into_iter().map(|(_, r)| r).collect(), lines))
    }

    /// Appends `r`'s state to the replays log (under the lock), whose
    /// states and lines the caller read ([`DeadLetterFile::replays`]). A log
    /// that reached twice [`REPLAYS_KEPT`] lines is first rewritten with the
    /// latest state of every unfinished replay and of the last
    /// [`REPLAYS_KEPT`] finished ones: older finished ids are forgotten.
    fn record_replay(
        &self,
        (states, lines): &(Vec<ReplayRecord>, usize),
        r: &ReplayRecord,
    ) -> std::io::Result<()> {
        if *lines >= 2 * REPLAYS_KEPT {
            // `states` is in the order of their last lines: the finished
            // ones first met finished first.
            let finished = states.iter().filter(|s| !s.finished_at.is_empty()).count();
            let mut forget = finished.saturating_sub(REPLAYS_KEPT);
            let mut kept = Vec::new();
            for s in states {
                if !s.finished_at.is_empty() && forget > 0 {
                    forget -= 1;
                    continue;
                }
                serde_json::to_writer(&mut kept, s).map_err(std::io::Error::other)?;
                kept.push(b'\n');
            }
            replace_file(&self.side("replays.ndjson"), &kept)?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.side("replays.ndjson"))?;
        let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
        line.push(b'\n');
        f.write_all(&line)?;
        f.sync_all()
    }

    /// Takes the selected dead letters out of the queue into the journal
    /// of replay `id` (see the module docs), or finds that replay `id` was
    /// asked for already. Read what it took with
    /// [`DeadLetterFile::journal_letters`].
    pub fn take_for_replay(&self, id: &str, selection: &Selection) -> std::io::Result<Taken> {
        if !valid_replay_id(id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{id:?} is not a replay id (1 to 64 of A-Z a-z 0-9 _ -)"),
            ));
        }
        let _lock = self.lock()?;
        let log = self.replays()?;
        if let Some(r) = log.0.iter().find(|r| r.id == id) {
            return Ok(Taken::Existing(r.clone()));
        }
        let mut record = ReplayRecord {
            id: id.to_string(),
            created_at: now_rfc3339(),
            records: 0,
            finished_at: String::new(),
        };
        self.take_into(selection, Some(&self.journal(id)), |n| {
            record.records = n;
            self.record_replay(&log, &record)
        })?;
        Ok(Taken::New(record))
    }

    /// The dead letters replay `id` took, read from its journal as they
    /// are needed (none if it has no journal: finished, or it took none).
    pub fn journal_letters(&self, id: &str) -> std::io::Result<JournalLetters> {
        let reader = match File::open(self.journal(id)) {
            Ok(f) => Some(std::io::BufReader::with_capacity(1 << 20, f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(JournalLetters {
            reader,
            line: Vec::new(),
        })
    }

    /// Puts what replay `id` took back in the queue (with new ids), e.g.
    /// when its destination was deleted meanwhile; then finish it.
    pub fn put_back(&self, id: &str) -> std::io::Result<()> {
        let mut letters = self.journal_letters(id)?;
        loop {
            let chunk: Vec<DeadLetter> = letters.by_ref().take(10_000).collect::<Result<_, _>>()?;
            if chunk.is_empty() {
                return Ok(());
            }
            self.append_letters(&chunk)?;
        }
    }

    /// Records that replay `id` is done: every record it took is delivered,
    /// kept in a disk buffer, or dead-lettered again. Its journal goes.
    pub fn finish_replay(&self, id: &str) -> std::io::Result<ReplayRecord> {
        let _lock = self.lock()?;
        let log = self.replays()?;
        let mut r = log.0.iter().find(|r| r.id == id).cloned().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("no replay {id}"))
        })?;
        if r.finished_at.is_empty() {
            r.finished_at = now_rfc3339();
            self.record_replay(&log, &r)?;
        }
        match std::fs::remove_file(self.journal(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(r)
    }

    /// Replays not finished (the process stopped first): send what their
    /// journal holds again.
    pub fn unfinished(&self) -> std::io::Result<Vec<ReplayRecord>> {
        let mut latest = self.replays()?.0;
        latest.retain(|r| r.finished_at.is_empty());
        Ok(latest)
    }
}

/// The dead letters of a replay's journal, read a line at a time.
pub struct JournalLetters {
    reader: Option<std::io::BufReader<File>>,
    line: Vec<u8>,
}

impl Iterator for JournalLetters {
    type Item = std::io::Result<DeadLetter>;

    fn next(&mut self) -> Option<Self::Item> {
        let reader = self.reader.as_mut()?;
        loop {
            self.line.clear();
            match reader.read_until(b'\n', &mut self.line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
            let body = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
            if body.is_empty() {
                continue;
            }
            // Lines were parsed when taken; one that no longer parses is
            // damage, said as an error rather than skipped.
            return Some(serde_json::from_slice(body).map_err(std::io::Error::other));
        }
    }
}

/// Writes one dead letter as a line of the queue.
pub(crate) fn write_letter(buf: &mut Vec<u8>, id: u64, d: &DeadLetter) {
    write_line(
        buf,
        id,
        &d.time,
        &d.subscription,
        &d.reason,
        d.attempts,
        d.record.get().as_bytes(),
    );
}

/// Writes a line of the queue from its parts (`record` is JSON).
pub(crate) fn write_line(
    buf: &mut Vec<u8>,
    id: u64,
    time: &str,
    subscription: &str,
    reason: &str,
    attempts: u32,
    record: &[u8],
) {
    buf.extend_from_slice(b"{\"id\":");
    buf.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    buf.extend_from_slice(b",\"time\":");
    crate::json::write_str(buf, time);
    buf.extend_from_slice(b",\"subscription\":");
    crate::json::write_str(buf, subscription);
    buf.extend_from_slice(b",\"reason\":");
    crate::json::write_str(buf, reason);
    buf.extend_from_slice(b",\"attempts\":");
    buf.extend_from_slice(itoa::Buffer::new().format(attempts).as_bytes());
    buf.extend_from_slice(b",\"record\":");
    buf.extend_from_slice(record);
    buf.extend_from_slice(b"}\n");
}

/// The fields of a line a selection reads.
#[derive(Deserialize)]
struct Selected<'a> {
    #[serde(default)]
    id: u64,
    #[serde(borrow)]
    time: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    reason: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: u64,
}

/// The last non-empty line of `f`.
fn last_line(f: &mut File) -> std::io::Result<Option<Vec<u8>>> {
    ReverseLines::new(f)?.next_line()
}

/// Where the first line whose id is at least `id` starts in `f` (its
/// length if none does), by bisection over byte offsets: ids never go down
/// from one line to the next (lines written before ids existed have id 0,
/// at the start). A line whose id cannot be read from its first bytes
/// (not as the writer prints it) makes this give up and answer the length,
/// so that the caller reads the whole file, as without it.
fn start_of_id(f: &mut File, id: u64) -> std::io::Result<u64> {
    let len = f.metadata()?.len();
    // Every line starting before `lo` has a smaller id; every line
    // starting at or after `hi` has at least `id`.
    let (mut lo, mut hi) = (0u64, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match line_from(f, mid, len)? {
            Some((start, _)) if start >= hi => hi = mid,
            Some((start, Some(line_id))) => {
                if line_id >= id {
                    hi = start;
                } else {
                    lo = start + 1;
                }
            }
            Some((_, None)) => return Ok(len),
            None => hi = mid,
        }
    }
    Ok(line_from(f, lo, len)?.map_or(len, |(start, _)| start))
}

/// The start of the first line starting at or after byte `pos` of `f`
/// (`len` bytes), and its id if its first bytes are `{"id":` and digits.
fn line_from(f: &mut File, pos: u64, len: u64) -> std::io::Result<Option<(u64, Option<u64>)>> {
    let mut start = pos;
    if pos > 0 {
        // Past the next newline at or after byte `pos - 1`.
        let mut at = pos - 1;
        let mut block = [0u8; 4096];
        loop {
            if at >= len {
                return Ok(None);
            }
            let n = (block.len() as u64).min(len - at) as usize;
            f.seek(SeekFrom::Start(at))?;
            f.read_exact(&mut block[..n])?;
            if let Some(i) = memchr::memchr(b'\n', &block[..n]) {
                start = at + i as u64 + 1;
                break;
            }
            at += n as u64;
        }
    }
    if start >= len {
        return Ok(None);
    }
    let mut head = [0u8; 32];
    let n = (head.len() as u64).min(len - start) as usize;
    f.seek(SeekFrom::Start(start))?;
    f.read_exact(&mut head[..n])?;
    let id = head[..n].strip_prefix(b"{\"id\":").and_then(|rest| {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let followed = rest.get(digits).is_some_and(|b| matches!(b, b',' | b'}'));
        if digits == 0 || !followed {
            return None;
        }
        std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
    });
    Ok(Some((start, id)))
}

/// Reads a file's lines from the end, a block at a time.
struct ReverseLines<'a> {
    f: &'a mut File,
    /// Bytes of the file not read yet: `[0, pos)`.
    pos: u64,
    /// Read bytes not yet returned (the start of the earliest line read).
    buf: Vec<u8>,
}

impl<'a> ReverseLines<'a> {
    const BLOCK: u64 = 64 << 10;

    fn new(f: &'a mut File) -> std::io::Result<ReverseLines<'a>> {
        let pos = f.metadata()?.len();
        Ok(ReverseLines::before(f, pos))
    }

    /// The lines of `f` that end before byte `pos` (a line's start).
    fn before(f: &'a mut File, pos: u64) -> ReverseLines<'a> {
        ReverseLines {
            f,
            pos,
            buf: Vec::new(),
        }
    }

    fn next_line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            // Trailing newlines of what is buffered end no line.
            while self.buf.last() == Some(&b'\n') {
                self.buf.pop();
            }
            if let Some(i) = memchr::memrchr(b'\n', &self.buf) {
                let line = self.buf.split_off(i + 1);
                self.buf.pop();
                if !line.is_empty() {
                    return Ok(Some(line));
                }
                continue;
            }
            if self.pos == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            let n = Self::BLOCK.min(self.pos);
            self.pos -= n;
            let mut block = vec![0u8; n as usize];
            self.f.seek(SeekFrom::Start(self.pos))?;
            self.f.read_exact(&mut block)?;
            block.extend_from_slice(&self.buf);
            self.buf = block;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letters(q: &DeadLetterFile, n: u64, reason: &str) {
        q.append_with(|first| {
            let mut buf = Vec::new();
            for i in 0..n {
                write_line(
                    &mut buf,
                    first + i,
                    "2026-12-05T10:00:00.000Z",
                    "esb_1",
                    reason,
                    3,
                    format!("{{\"n\":{}}}", first + i).as_bytes(),
                );
            }
            buf
        })
        .unwrap();
    }

    /// The ids of the first ten dead letters, newest first.
    fn ids(q: &DeadLetterFile) -> Vec<u64> {
        let page = q.list(&Selection::default(), None, 10).unwrap();
        page.dead_letters.iter().map(|d| d.id).collect()
    }

    #[test]
    fn lists_newest_first_in_pages_and_selects() {
        let dir = tempfile::tempdir().unwrap();
        let q = DeadLetterFile::new(dir.path(), "ed_1", 0);
        letters(&q, 3, "refused: 400");
        letters(&q, 2, "timed out");
        let all = Selection::default();
        let p = q.list(&all, None, 2).unwrap();
        let ids: Vec<u64> = p.dead_letters.iter().map(|d| d.id).collect();
        assert_eq!((ids, p.next_before), (vec![5, 4], Some(4)));
        let p = q.list(&all, Some(4), 10).unwrap();
        let ids: Vec<u64> = p.dead_letters.iter().map(|d| d.id).collect();
        assert_eq!((ids, p.next_before), (vec![3, 2, 1], None));
        let refused = Selection {
            reason: Some("refused".into()),
            ..Default::default()
        };
        assert_eq!(q.list(&refused, None, 10).unwrap().dead_letters.len(), 3);
        let later = Selection {
            since_ms: crate::events::parse_rfc3339_ms("2026-12-05T10:00:00.001Z"),
            ..Default::default()
        };
        assert!(q.list(&later, None, 10).unwrap().dead_letters.is_empty());
    }

    #[test]
    fn a_selection_that_matches_little_answers_a_short_page_and_where_to_go_on() {
        let newest_first = (1..=PAGE_SCAN as u64 + 50).rev().map(|id| DeadLetter {
            id,
            time: "2026-12-05T10:00:00.000Z".into(),
            subscription: "esb_1".into(),
            reason: if id == 1 {
                "rare".into()
            } else {
                "common".into()
            },
            attempts: 1,
            record: RawValue::from_string("{}".into()).unwrap(),
        });
        let rare = Selection {
            reason: Some("rare".into()),
            ..Default::default()
        };
        let p = Page::of(newest_first.clone(), &rare, None, 10);
        assert!(p.dead_letters.is_empty());
        let next = p.next_before.expect("where to go on");
        let p = Page::of(newest_first, &rare, Some(next), 10);
        let ids: Vec<u64> = p.dead_letters.iter().map(|d| d.id).collect();
        assert_eq!((ids, p.next_before), (vec![1], None));
    }

    #[test]
    fn a_replay_takes_its_lines_once_and_ids_are_never_given_twice() {
        let dir = tempfile::tempdir().unwrap();
        let q = DeadLetterFile::new(dir.path(), "ed_1", 0);
        letters(&q, 4, "refused: 400");
        letters(&q, 1, "timed out");
        let sel = Selection {
            reason: Some("refused".into()),
            ..Default::default()
        };
        let Taken::New(r) = q.take_for_replay("r1", &sel).unwrap() else {
            panic!("new replay expected")
        };
        let taken: Vec<DeadLetter> = q
            .journal_letters("r1")
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!((r.records, taken.len()), (4, 4));
        assert_eq!(taken[0].record.get(), "{\"n\":1}");
        // Repeating it takes nothing, even with lines that would match.
        letters(&q, 1, "refused: 500");
        match q.take_for_replay("r1", &sel).unwrap() {
            Taken::Existing(e) => assert_eq!(e.records, 4),
            Taken::New(..) => panic!("a replay id was carried out twice"),
        }
        // The journal survives until the replay is finished.
        let open = q.unfinished().unwrap();
        assert_eq!((open.len(), open[0].id.as_str()), (1, "r1"));
        let done = q.finish_replay("r1").unwrap();
        assert!(!done.finished_at.is_empty());
        assert!(q.unfinished().unwrap().is_empty());
        assert_eq!(
            q.journal_letters("r1").unwrap().count(),
            0,
            "the journal is gone"
        );
        assert_eq!(ids(&q), vec![6, 5]);
        // Everything out: new ids still go on from the highest.
        assert_eq!(q.delete(&Selection::default()).unwrap(), 2);
        letters(&q, 1, "x");
        assert_eq!(
            q.list(&Selection::default(), None, 1).unwrap().dead_letters[0].id,
            7
        );
    }

    #[test]
    fn a_replay_of_everything_moves_the_queue_and_can_be_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let q = DeadLetterFile::new(dir.path(), "ed_1", 0);
        letters(&q, 3, "a");
        let Taken::New(r) = q.take_for_replay("all", &Selection::default()).unwrap() else {
            panic!("new replay expected")
        };
        assert_eq!(r.records, 3);
        assert!(
            q.list(&Selection::default(), None, 10)
                .unwrap()
                .dead_letters
                .is_empty()
        );
        letters(&q, 1, "b");
        q.put_back("all").unwrap();
        q.finish_replay("all").unwrap();
        assert_eq!(
            ids(&q),
            vec![7, 6, 5, 4],
            "put back with new ids, newest first"
        );
    }

    #[test]
    fn a_writer_follows_the_file_a_replay_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let writer = DeadLetterFile::new(dir.path(), "ed_1", 0);
        let other = DeadLetterFile::new(dir.path(), "ed_1", 0);
        letters(&writer, 2, "a");
        assert_eq!(other.delete(&Selection::default()).unwrap(), 2);
        letters(&writer, 1, "b");
        let p = other.list(&Selection::default(), None, 10).unwrap();
        assert_eq!(p.dead_letters.len(), 1, "the append went to the old file");
        assert_eq!(p.dead_letters[0].reason, "b");
    }

    #[test]
    fn the_bound_counts_the_queue_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let q = DeadLetterFile::new(dir.path(), "ed_1", 300);
        assert_eq!(q.room(), 300);
        letters(&q, 2, "a");
        assert!(q.room() < 300);
        q.delete(&Selection::default()).unwrap();
        assert_eq!(q.room(), 300);
    }

    #[test]
    fn reads_lines_longer_than_a_block_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let q = DeadLetterFile::new(dir.path(), "ed_1", 0);
        let big = format!("{{\"s\":\"{}\"}}", "x".repeat(200_000));
        q.append_with(|first| {
            let mut buf = Vec::new();
            write_line(
                &mut buf,
                first,
                "2026-12-05T10:00:00.000Z",
                "s",
                "r",
                1,
                big.as_bytes(),
            );
            write_line(
                &mut buf,
                first + 1,
                "2026-12-05T10:00:00.000Z",
                "s",
                "r",
                1,
                b"{}",
            );
            buf
        })
        .unwrap();
        let p = q.list(&Selection::default(), None, 10).unwrap();
        assert_eq!(p.dead_letters.len(), 2);
        assert_eq!(p.dead_letters[1].record.get().len(), big.len());
    }

    #[test]
    fn the_replays_log_keeps_unfinished_replays_and_the_last_finished_ones() {
        let dir = tempfile::tempdir().unwrap();
        let q = DeadLetterFile::new(dir.path(), "ed_1", 0);
        letters(&q, 1, "a");
        let all = Selection::default();
        assert!(matches!(
            q.take_for_replay("open", &all).unwrap(),
            Taken::New(_)
        ));
        let total = 5 * REPLAYS_KEPT;
        for i in 0..total {
            let id = format!("r{i}");
            assert!(matches!(
                q.take_for_replay(&id, &all).unwrap(),
                Taken::New(_)
            ));
            q.finish_replay(&id).unwrap();
        }
        let log = std::fs::read_to_string(q.side("replays.ndjson")).unwrap();
        assert!(
            log.lines().count() <= 2 * REPLAYS_KEPT,
            "the log stays bounded: {} lines",
            log.lines().count()
        );
        // The unfinished replay is never forgotten.
        let open: Vec<String> = q.unfinished().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(open, ["open"]);
        // The last finished ones are remembered: asking again repeats nothing.
        for i in total - REPLAYS_KEPT..total {
            let r = q.replay(&format!("r{i}")).unwrap().expect("remembered");
            assert!(!r.finished_at.is_empty());
        }
        assert!(matches!(
            q.take_for_replay(&format!("r{}", total - 1), &all).unwrap(),
            Taken::Existing(_)
        ));
        // The first ones are forgotten.
        assert!(q.replay("r0").unwrap().is_none());
    }

    #[test]
    fn a_deep_page_starts_where_its_ids_begin_and_agrees_with_a_full_scan() {
        let dir = tempfile::tempdir().unwrap();
        let q = DeadLetterFile::new(dir.path(), "ed_1", 0);
        // Lines of every length, a long one among them, and a gap in the
        // ids where a replay took some out.
        for round in 0..30u64 {
            q.append_with(|first| {
                let mut buf = Vec::new();
                for i in 0..100 {
                    let pad =
                        "x".repeat(((first + i) % 300) as usize + if i == 7 { 70_000 } else { 0 });
                    write_line(
                        &mut buf,
                        first + i,
                        "t",
                        "esb_1",
                        &format!("r{round}"),
                        1,
                        format!("{{\"p\":\"{pad}\"}}").as_bytes(),
                    );
                }
                buf
            })
            .unwrap();
        }
        let take = Selection {
            reason: Some("r12".into()),
            ..Selection::default()
        };
        q.take_for_replay("gap", &take).unwrap();
        let all = Selection::default();
        let scanned = |before: Option<u64>, limit: usize| {
            let mut f = File::open(q.path()).unwrap();
            let mut lines = ReverseLines::new(&mut f).unwrap();
            let newest_first = std::iter::from_fn(|| lines.next_line().unwrap())
                .map(|l| serde_json::from_slice::<DeadLetter>(&l).unwrap());
            let p = Page::of(newest_first, &all, before, limit);
            (
                p.dead_letters.iter().map(|d| d.id).collect::<Vec<_>>(),
                p.next_before,
            )
        };
        for before in [
            None,
            Some(0),
            Some(1),
            Some(2),
            Some(8),
            Some(1200),
            Some(1201),
            Some(1250),
            Some(1301),
            Some(2999),
            Some(3000),
            Some(3001),
            Some(u64::MAX),
        ] {
            for limit in [1, 10, 500] {
                let p = q.list(&all, before, limit).unwrap();
                let got = (
                    p.dead_letters.iter().map(|d| d.id).collect::<Vec<_>>(),
                    p.next_before,
                );
                assert_eq!(
                    got,
                    scanned(before, limit),
                    "before {before:?}, limit {limit}"
                );
            }
        }
        let mut f = File::open(q.path()).unwrap();
        let len = f.metadata().unwrap().len();
        assert_eq!(start_of_id(&mut f, u64::MAX).unwrap(), len);
        assert_eq!(start_of_id(&mut f, 0).unwrap(), 0);
        let at = start_of_id(&mut f, 1500).unwrap();
        assert_eq!(line_from(&mut f, at, len).unwrap(), Some((at, Some(1500))));
    }
}
