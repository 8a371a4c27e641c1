//! Opening a log: the lock, replay of what is not acknowledged, and repair
//! of damage (torn tails cut, lost records counted).

use super::*;

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
}
