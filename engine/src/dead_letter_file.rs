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
//! replay is at-least-once, and a replay id is never carried out twice.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
        if self.max_id.is_some_and(|m| d.id > m) {
            return false;
        }
        if let Some(r) = &self.reason
            && !d.reason.contains(r.as_str())
        {
            return false;
        }
        if self.since_ms.is_some() || self.until_ms.is_some() {
            let Some(t) = crate::events::parse_rfc3339_ms(&d.time) else {
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
    /// Whether older ones are selected too (ask again with `before_id` the
    /// last id of this page).
    pub more: bool,
}

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
        for d in newest_first {
            if before_id.is_some_and(|b| d.id >= b) || !selection.matches(&d) {
                continue;
            }
            if page.dead_letters.len() == limit {
                page.more = true;
                break;
            }
            page.dead_letters.push(d);
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
    /// The selected dead letters, out of the queue and in the replay's
    /// journal: send them, then call [`DeadLetterFile::finish_replay`].
    New(ReplayRecord, Vec<DeadLetter>),
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
    /// The queue file open for appending, and its inode.
    file: Option<(File, u64)>,
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

/// The dead letters of NDJSON `bytes`, each with its line; lines that do
/// not parse are kept as they are (`None`) so that nothing is lost.
fn parse_lines(bytes: &[u8]) -> Vec<(Option<DeadLetter>, &[u8])> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| (serde_json::from_slice::<DeadLetter>(l).ok(), l))
        .collect()
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

    /// Whether `more` bytes fit within the bound.
    pub fn has_room(&self, more: u64) -> bool {
        self.max_bytes == 0 || self.bytes().saturating_add(more) <= self.max_bytes
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
        let _lock = self.lock()?;
        let first = self.last_id()? + 1;
        let buf = lines(first);
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // The file may have been replaced since we opened it.
        let current = std::fs::metadata(self.path()).ok().map(|m| inode(&m));
        if w.file.as_ref().map(|(_, ino)| Some(*ino)) != Some(current) || current.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path())?;
            let ino = inode(&f.metadata()?);
            w.file = Some((f, ino));
        }
        let result = match w.file.as_mut() {
            Some((f, _)) => f.write_all(&buf).and_then(|()| f.flush()),
            None => Ok(()),
        };
        if result.is_err() {
            w.file = None;
        }
        result
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
        let mut lines = ReverseLines::new(&mut f)?;
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

    /// Rewrites the queue without the lines `take` selects, which it
    /// returns (under the lock). `before` runs first with them, still under
    /// the lock and before anything is removed.
    fn take(
        &self,
        selection: &Selection,
        before: impl FnOnce(&[&[u8]]) -> std::io::Result<()>,
    ) -> std::io::Result<Vec<DeadLetter>> {
        let bytes = match std::fs::read(self.path()) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (mut taken, mut taken_lines, mut rest) = (Vec::new(), Vec::new(), Vec::new());
        let mut highest = 0;
        for (d, line) in parse_lines(&bytes) {
            match d {
                Some(d) if selection.matches(&d) => {
                    highest = highest.max(d.id);
                    taken_lines.push(line);
                    taken.push(d);
                }
                d => {
                    highest = highest.max(d.map_or(0, |d| d.id));
                    rest.extend_from_slice(line);
                    rest.push(b'\n');
                }
            }
        }
        before(&taken_lines)?;
        if !taken.is_empty() {
            // Ids are never given twice, even once their lines are gone.
            let floor = self.last_id()?.max(highest);
            replace_file(&self.side("seq"), format!("{floor}\n").as_bytes())?;
            replace_file(&self.path(), &rest)?;
        }
        Ok(taken)
    }

    /// Deletes the selected dead letters; returns how many.
    pub fn delete(&self, selection: &Selection) -> std::io::Result<u64> {
        let _lock = self.lock()?;
        Ok(self.take(selection, |_| Ok(()))?.len() as u64)
    }

    /// The replay recorded under `id`, if any.
    pub fn replay(&self, id: &str) -> std::io::Result<Option<ReplayRecord>> {
        let bytes = match std::fs::read(self.side("replays.ndjson")) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // The last line of an id is its latest state.
        Ok(bytes
            .split(|b| *b == b'\n')
            .rev()
            .filter_map(|l| serde_json::from_slice::<ReplayRecord>(l).ok())
            .find(|r| r.id == id))
    }

    fn record_replay(&self, r: &ReplayRecord) -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.side("replays.ndjson"))?;
        let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
        line.push(b'\n');
        f.write_all(&line)?;
        f.sync_all()
    }

    /// Takes the selected dead letters out of the queue for replay `id`
    /// (journal first, see the module docs), or finds that replay `id` was
    /// asked for already.
    pub fn take_for_replay(&self, id: &str, selection: &Selection) -> std::io::Result<Taken> {
        if !valid_replay_id(id) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{id:?} is not a replay id (1 to 64 of A-Z a-z 0-9 _ -)"),
            ));
        }
        let _lock = self.lock()?;
        if let Some(r) = self.replay(id)? {
            return Ok(Taken::Existing(r));
        }
        let mut record = ReplayRecord {
            id: id.to_string(),
            created_at: now_rfc3339(),
            records: 0,
            finished_at: String::new(),
        };
        let journal = self.journal(id);
        let letters = self.take(selection, |lines| {
            let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
            for l in lines {
                buf.extend_from_slice(l);
                buf.push(b'\n');
            }
            replace_file(&journal, &buf)?;
            record.records = lines.len() as u64;
            self.record_replay(&record)
        })?;
        Ok(Taken::New(record, letters))
    }

    /// Records that replay `id` is done: every record it took is delivered,
    /// kept in a disk buffer, or dead-lettered again. Its journal goes.
    pub fn finish_replay(&self, id: &str) -> std::io::Result<ReplayRecord> {
        let _lock = self.lock()?;
        let mut r = self.replay(id)?.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("no replay {id}"))
        })?;
        if r.finished_at.is_empty() {
            r.finished_at = now_rfc3339();
            self.record_replay(&r)?;
        }
        match std::fs::remove_file(self.journal(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(r)
    }

    /// Replays whose journal is still there (the process stopped before
    /// they were done), with the dead letters they took: send them again.
    pub fn unfinished(&self) -> std::io::Result<Vec<(ReplayRecord, Vec<DeadLetter>)>> {
        let prefix = format!("{}.replay.", self.name);
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in entries {
            let name = e?.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_prefix(&prefix)
                .and_then(|n| n.strip_suffix(".ndjson"))
            else {
                continue;
            };
            if !valid_replay_id(id) {
                continue;
            }
            let Some(r) = self.replay(id)? else { continue };
            let bytes = std::fs::read(self.journal(id))?;
            let letters = parse_lines(&bytes)
                .into_iter()
                .filter_map(|(d, _)| d)
                .collect();
            out.push((r, letters));
        }
        Ok(out)
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

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: u64,
}

/// The last non-empty line of `f`.
fn last_line(f: &mut File) -> std::io::Result<Option<Vec<u8>>> {
    ReverseLines::new(f)?.next_line()
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
        Ok(ReverseLines {
            f,
            pos,
            buf: Vec::new(),
        })
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

    #[test]
    fn lists_newest_first_in_pages_and_selects() {
        let dir = tempfile::tempdir().unwrap();
        let q = DeadLetterFile::new(dir.path(), "ed_1", 0);
        letters(&q, 3, "refused: 400");
        letters(&q, 2, "timed out");
        let all = Selection::default();
        let p = q.list(&all, None, 2).unwrap();
        let ids: Vec<u64> = p.dead_letters.iter().map(|d| d.id).collect();
        assert_eq!((ids, p.more), (vec![5, 4], true));
        let p = q.list(&all, Some(4), 10).unwrap();
        let ids: Vec<u64> = p.dead_letters.iter().map(|d| d.id).collect();
        assert_eq!((ids, p.more), (vec![3, 2, 1], false));
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
    fn a_replay_takes_its_lines_once_and_ids_are_never_given_twice() {
        let dir = tempfile::tempdir().unwrap();
        let q = DeadLetterFile::new(dir.path(), "ed_1", 0);
        letters(&q, 4, "refused: 400");
        letters(&q, 1, "timed out");
        let sel = Selection {
            reason: Some("refused".into()),
            ..Default::default()
        };
        let Taken::New(r, taken) = q.take_for_replay("r1", &sel).unwrap() else {
            panic!("new replay expected")
        };
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
        assert_eq!((open.len(), open[0].1.len()), (1, 4));
        let done = q.finish_replay("r1").unwrap();
        assert!(!done.finished_at.is_empty());
        assert!(q.unfinished().unwrap().is_empty());
        let left: Vec<u64> = q
            .list(&Selection::default(), None, 10)
            .unwrap()
            .dead_letters
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(left, vec![6, 5]);
        // Everything out: new ids still go on from the highest.
        assert_eq!(q.delete(&Selection::default()).unwrap(), 2);
        letters(&q, 1, "x");
        assert_eq!(
            q.list(&Selection::default(), None, 1).unwrap().dead_letters[0].id,
            7
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
        assert!(q.has_room(300));
        letters(&q, 2, "a");
        assert!(!q.has_room(300));
        q.delete(&Selection::default()).unwrap();
        assert!(q.has_room(300));
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
}
