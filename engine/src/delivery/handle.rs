//! The workers' side of a destination: chunks handed over within the
//! byte budget (or to the disk buffer), full or not, and what happens when
//! it is.

use super::*;

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

    /// Whether the destination has records not yet delivered or
    /// dead-lettered, or its last call failed as a whole.
    pub fn is_busy(&self) -> bool {
        self.stats.queued.load(Relaxed) > 0 || self.stats.unhealthy.load(Relaxed) != 0
    }

    pub(super) fn full_reason(&self) -> String {
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

    pub(super) fn dead_letter_chunk(&self, chunk: Chunk, why: &str) {
        let (sub, mut records) = pending(chunk);
        self.dead.write(&self.stats, &sub, &mut records, why);
    }

    /// Hands a chunk to the destination. With `when_full = "block"` this
    /// blocks while the destination's buffer is full. Must not be called
    /// from inside the delivery runtime.
    pub fn push(&self, chunk: Chunk) {
        self.push_all(vec![chunk]);
    }

    /// Hands chunks to the destination, as [`DestinationHandle::push`]
    /// does each, in one message to its task: one wake-up of the task for
    /// a worker's whole batch, rather than one per subscription.
    pub fn push_all(&self, chunks: Vec<Chunk>) {
        let mut out: Vec<Chunk> = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            if chunk.records.is_empty() {
                continue;
            }
            if self.disk.is_some() {
                self.append_to_disk(chunk);
                continue;
            }
            // In pieces of at most an eighth of the budget, so that the
            // bound holds even for a chunk bigger than the whole budget.
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
                self.admit(chunk, bytes, &mut out);
                match rest {
                    Some(r) => chunk = r,
                    None => break,
                }
            }
        }
        self.send(out);
    }

    fn append_to_disk(&self, chunk: Chunk) {
        let Some(disk) = &self.disk else {
            return;
        };
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
                let (sub, mut records) = pending(chunk);
                self.dead.write(&self.stats, &sub, &mut records, &why);
            }
        }
    }

    /// Takes a piece of `bytes` into the budget and onto `out`, or drops
    /// or dead-letters it as `when_full` says. Before waiting for room it
    /// sends what `out` holds: the task frees room only for what it has.
    fn admit(&self, piece: Chunk, bytes: u64, out: &mut Vec<Chunk>) {
        match self.when_full {
            WhenFull::Block if self.never_block => {
                if !self.budget.try_acquire(bytes) {
                    let why = self.full_reason();
                    self.dead_letter_chunk(piece, &why);
                    return;
                }
            }
            WhenFull::Block => {
                if !self.budget.try_acquire(bytes) {
                    self.send(std::mem::take(out));
                    self.budget.acquire(bytes);
                }
            }
            WhenFull::DropNewest => {
                if !self.budget.try_acquire(bytes) {
                    self.drop_chunk(&piece);
                    return;
                }
            }
        }
        self.stats
            .queued
            .fetch_add(piece.records.len() as u64, Relaxed);
        self.stats.queued_bytes.fetch_add(bytes, Relaxed);
        out.push(piece);
    }

    /// Sends admitted pieces to the task in one message; if the task is
    /// gone, gives their room back and dead-letters them.
    fn send(&self, pieces: Vec<Chunk>) {
        if pieces.is_empty() {
            return;
        }
        let sent = if self.never_block {
            self.tx.try_send(pieces).map_err(|e| match e {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
            })
        } else {
            self.tx
                .blocking_send(pieces)
                .map_err(|mpsc::error::SendError(c)| c)
        };
        let Err(pieces) = sent else {
            return;
        };
        // The task is gone (it only ends once every handle is dropped, or
        // if it panicked), or, on a shared engine, its queue is full: keep
        // the records rather than lose them.
        let why = if self.tx.is_closed() {
            "destination task stopped".to_string()
        } else {
            self.full_reason()
        };
        for piece in pieces {
            let n = piece.records.len() as u64;
            let bytes: u64 = piece.records.iter().map(|r| r.data().len() as u64).sum();
            self.budget.release(bytes);
            self.stats.queued.fetch_sub(n, Relaxed);
            self.stats.queued_bytes.fetch_sub(bytes, Relaxed);
            self.dead_letter_chunk(piece, &why);
        }
    }

    pub(super) fn drop_chunk(&self, chunk: &Chunk) {
        let n = chunk.records.len() as u64;
        self.stats.dropped.fetch_add(n, Relaxed);
        if let Some(h) = &chunk.hold {
            h.dropped(n);
        }
        tracing::debug!(destination = %self.id, records = n, "buffer full: records dropped (when_full = drop_newest)");
    }

    /// Whether the destination's task is gone (the engine stopped, or a
    /// panic): nothing pushed now would be delivered.
    pub(crate) fn closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// The destination's dead-letter queue on disk.
    pub(crate) fn dead_letter_file(&self) -> Arc<crate::dead_letter_file::DeadLetterFile> {
        self.dead.file.clone()
    }

    /// Whether its dead letters go to the embedder's sink instead of a file.
    pub(crate) fn dead_letters_to_sink(&self) -> bool {
        self.dead.sink.is_some()
    }

    /// The destination's disk buffer, if it has one.
    pub fn disk(&self) -> Option<&Arc<DiskBuffer>> {
        self.disk.as_ref()
    }
}
