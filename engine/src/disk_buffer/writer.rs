//! The writer: appending chunks of records (one `write` each), the fsync
//! policy and the signal to the fsync thread.

use super::*;

impl DiskBuffer {
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
