//! Lanes and batching: one lane per subscription, batches within the
//! sink's limits or at the linger time, the memory budget, reading back
//! from the disk buffer.

use super::*;

impl Task {
    pub(super) fn cost(&self, r: &Record) -> u64 {
        r.data().len() as u64 + u64::from(self.limits.record_overhead_bytes)
    }

    pub(super) fn fits(&self, lane: &Lane, cost: u64) -> bool {
        let l = &self.limits;
        (l.max_records == 0 || lane.filling.len() < l.max_records as usize)
            && (l.max_batch_bytes == 0 || lane.bytes + cost <= l.max_batch_bytes)
    }

    pub(super) fn full(&self, lane: &Lane) -> bool {
        self.limits.max_records != 0 && lane.filling.len() >= self.limits.max_records as usize
    }

    /// Records leave the engine's memory (delivered, dead-lettered, or left
    /// in the disk buffer at shutdown).
    pub(super) fn release(&mut self, records: &[Pending]) {
        let n = records.len() as u64;
        let bytes: u64 = records.iter().map(|p| p.rec.data().len() as u64).sum();
        self.stats.queued.fetch_sub(n, Relaxed);
        self.stats.queued_bytes.fetch_sub(bytes, Relaxed);
        self.budget.release(bytes);
    }

    /// Records are done for good: delivered or dead-lettered.
    pub(super) fn settle(&mut self, records: &[Pending]) {
        self.release(records);
        if let Some(d) = &self.disk {
            d.ack(records.iter().map(|p| p.seq));
        }
    }

    pub(super) fn lane(&mut self, sub: &Arc<str>) -> &mut Lane {
        self.lanes.entry(sub.clone()).or_default()
    }

    pub(super) fn close_filling(&mut self, sub: &Arc<str>) {
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
    pub(super) fn add(&mut self, sub: Arc<str>, records: Vec<Pending>) {
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
            let epoch = self.epoch;
            {
                let lane = self.lanes.entry(sub.clone()).or_default();
                if lane.deadline.is_none() {
                    let d = close_at(epoch, Instant::now(), linger);
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

    /// Everything still held, out of the lanes and retry queue.
    pub(super) fn take_all(&mut self) -> Vec<(Arc<str>, Vec<Pending>)> {
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

    /// Reads from the disk buffer while the memory budget allows.
    pub(super) fn fill_from_disk(&mut self) {
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
}

/// When a batch begun at `now` closes: `linger` later, rounded down to
/// the millisecond (the resolution of the runtime's timer) so that the
/// batches of lanes begun within the same millisecond close in the same
/// turn and can share a flight (`epoch`: the grid's origin). A linger
/// under 2 ms is kept exact.
pub(super) fn close_at(epoch: Instant, now: Instant, linger: Duration) -> Instant {
    let d = now + linger;
    if linger < Duration::from_millis(2) {
        return d;
    }
    let past_ms = d.saturating_duration_since(epoch).subsec_nanos() % 1_000_000;
    d - Duration::from_nanos(u64::from(past_ms))
}
