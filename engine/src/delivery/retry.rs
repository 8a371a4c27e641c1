//! Outcomes and retries: each record's outcome read back, failed records
//! retried alone after a jittered exponential backoff, records out of
//! attempts or refused dead-lettered.

use super::*;

pub(super) fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (std::process::id() as u64).rotate_left(32) | 1
}

impl Task {
    /// Puts retries that are due (all, when draining) back at the front of their lanes.
    pub(super) fn due_retries(&mut self, now: Instant, all: bool) {
        while let Some(Reverse((due, _, _))) = self.retries.peek() {
            if !all && *due > now {
                break;
            }
            let Some(Reverse((_, _, RetryBatch(sub, recs)))) = self.retries.pop() else {
                break;
            };
            let lane = self.lane(&sub);
            lane.blocked = false;
            lane.queued.push_front(recs);
            self.ready.push_front(sub);
        }
    }

    pub(super) fn next_wakeup(&self) -> Option<Instant> {
        let a = self.deadlines.peek().map(|Reverse((d, _))| *d);
        let b = self.retries.peek().map(|Reverse((d, _, _))| *d);
        let c = self
            .starter
            .as_ref()
            .filter(|st| st.running.is_none())
            .map(|st| st.next);
        [a, b, c].into_iter().flatten().min()
    }

    pub(super) fn rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Exponential backoff with full jitter: uniform in
    /// [0, min(cap, 100 ms * 2^(n-1))].
    pub(super) fn backoff(&mut self, attempts: u32) -> Duration {
        let base_ms: u64 = 100;
        let cap_ms = self.cfg.retry_max_backoff_ms.max(1);
        let exp = base_ms.saturating_mul(1u64 << attempts.saturating_sub(1).min(20));
        let ceiling = exp.min(cap_ms);
        Duration::from_millis(self.rand() % (ceiling + 1))
    }

    pub(super) fn exhausted(&self, p: &Pending, now: Instant) -> bool {
        (self.cfg.max_attempts != 0 && p.attempts >= self.cfg.max_attempts)
            || (self.cfg.max_age_s != 0
                && now.duration_since(p.first) > Duration::from_secs(self.cfg.max_age_s))
    }

    /// Takes back a flight: each of its batches as if sent alone (the
    /// concurrency limit sees each call's share of the flight's time).
    pub(super) fn handle(&mut self, flight: Flight) {
        let Flight {
            batches,
            sent,
            busy,
            calls_took,
        } = flight;
        let calls = batches.len().max(1) as u32;
        if let Some(took) = calls_took {
            self.aimd.observe_calls(took / calls);
        }
        let per_call = sent.elapsed() / calls;
        for (sub, batch, report) in batches {
            self.handle_batch(sub, batch, report, per_call, busy);
        }
    }

    /// Takes back one batch: its records delivered, retried or
    /// dead-lettered as the plugin reported; `rtt` is its call's time.
    fn handle_batch(
        &mut self,
        sub: Arc<str>,
        batch: Vec<Pending>,
        report: crate::plugin::SendReport,
        rtt: Duration,
        busy: bool,
    ) {
        self.stats.in_flight.fetch_sub(1, Relaxed);
        self.stats.batches.fetch_add(1, Relaxed);
        if let Some(l) = self.lanes.get_mut(&sub) {
            l.in_flight = l.in_flight.saturating_sub(1);
        }
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
        let congested = report.failure.is_some() || !retry.is_empty() || !exhausted.is_empty();
        self.aimd.observe(rtt, congested, busy);
        self.stats
            .concurrency_limit
            .store(self.aimd.limit() as u64, Relaxed);
        if !ok.is_empty() {
            let mut h = self.stats.latency.lock().unwrap_or_else(|p| p.into_inner());
            for p in &ok {
                let us = now.saturating_duration_since(p.first).as_micros().max(1) as u64;
                h.saturating_record(us);
            }
        }
        self.settle(&ok);
        self.stats.delivered.fetch_add(ok.len() as u64, Relaxed);
        self.stats
            .delivered_bytes
            .fetch_add(delivered_bytes, Relaxed);
        drop(ok);
        for (reason, records) in runs(rejected) {
            self.dead_letter(&sub, records, &format!("rejected: {reason}"));
        }
        let exhausted = exhausted.into_iter().map(|(p, reason)| {
            let attempts = p.attempts;
            (p, (attempts, reason))
        });
        for ((attempts, reason), records) in runs(exhausted) {
            let why = format!("retries exhausted after {attempts} attempts: {reason}");
            self.dead_letter(&sub, records, &why);
        }
        if !retry.is_empty() {
            self.stats.retried.fetch_add(retry.len() as u64, Relaxed);
            if self.disk.is_some() {
                // Read from disk, they share a read block: do not pin it while waiting.
                for p in &mut retry {
                    p.rec = p.rec.detached();
                }
            }
            let wait = self.backoff(min_attempts).max(retry_after);
            self.retry_seq += 1;
            if self.ordered {
                self.lane(&sub).blocked = true;
            }
            self.retries.push(Reverse((
                now + wait,
                self.retry_seq,
                RetryBatch(sub.clone(), retry),
            )));
        }
        if self.lanes.get(&sub).is_some_and(Lane::idle) {
            self.lanes.remove(&sub);
        }
    }
}

/// `items` in runs of equal keys, in order: the records of a batch refused
/// for one reason are dead-lettered in one write, not one each.
pub(super) fn runs<K: PartialEq>(
    items: impl IntoIterator<Item = (Pending, K)>,
) -> Vec<(K, Vec<Pending>)> {
    let mut out: Vec<(K, Vec<Pending>)> = Vec::new();
    for (p, k) in items {
        match out.last_mut() {
            Some((last, run)) if *last == k => run.push(p),
            _ => out.push((k, vec![p])),
        }
    }
    out
}
