//! The task loop of one destination: takes chunks, dispatches batches to
//! the plugin on blocking threads, waits for them, and drains on stop.

use super::*;

/// Calls the plugin, catching a panic of the engine's side of the call.
pub(super) fn call_plugin(
    sink: &SinkInstance,
    recs: &[Record],
    sub: &str,
) -> crate::plugin::SendReport {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sink.send_records(recs, sub)
    }))
    .unwrap_or_else(|_| failed_report(recs.len(), "engine panicked while calling the plugin"))
}

/// Every record to retry, the call failed as a whole.
pub(super) fn failed_report(n: usize, why: &str) -> crate::plugin::SendReport {
    crate::plugin::SendReport {
        outcomes: vec![
            RecordOutcome::Retry {
                after_ms: 0,
                reason: why.to_string()
            };
            n
        ],
        failure: Some((sluice_sdk::abi::STATUS_RETRY, why.to_string())),
        protocol_errors: 0,
    }
}

impl Task {
    /// Dead-letters `records`, or, as far as the dead-letter queue has no
    /// room for them, keeps them and pauses the destination (see
    /// [`Task::unpark`]): the leading records that fit are written (in one
    /// write), the rest wait, in order.
    pub(super) fn dead_letter(&mut self, sub: &str, mut records: Vec<Pending>, reason: &str) {
        if records.is_empty() {
            return;
        }
        if self.parked.is_empty() {
            let fit = self.dead.fitting(&records);
            let rest = records.split_off(fit);
            self.dead.write(&self.stats, sub, &mut records, reason);
            self.settle(&records);
            records = rest;
            if records.is_empty() {
                return;
            }
            tracing::warn!(
                destination = %self.id,
                max_bytes = self.dead.file.max_bytes(),
                "the dead-letter queue is full: the destination pauses until a replay or a delete makes room"
            );
        }
        self.stats.paused.fetch_add(records.len() as u64, Relaxed);
        self.parked.push((sub.into(), records, reason.to_string()));
    }

    /// Writes the records kept while the dead-letter queue was full, in
    /// order, as far as it now has room (all of them with `force`: at the
    /// drain deadline nothing may be lost). Returns whether it stays paused.
    pub(super) fn unpark(&mut self, force: bool) -> bool {
        while let Some((_, records, _)) = self.parked.first_mut() {
            let fit = if force {
                records.len()
            } else {
                self.dead.fitting(records)
            };
            if fit == 0 {
                return true;
            }
            let (sub, mut records, reason) = if fit == records.len() {
                self.parked.remove(0)
            } else {
                let (sub, records, reason) = &mut self.parked[0];
                (sub.clone(), records.drain(..fit).collect(), reason.clone())
            };
            self.stats.paused.fetch_sub(records.len() as u64, Relaxed);
            if force && self.disk.is_some() {
                // They stay in the disk buffer for the next start.
                self.release(&records);
                continue;
            }
            self.dead.write(&self.stats, &sub, &mut records, &reason);
            self.settle(&records);
        }
        false
    }

    /// Closes batches whose linger expired (or every batch, when draining).
    pub(super) fn expire(&mut self, now: Instant, all: bool) {
        if all {
            let subs: Vec<Arc<str>> = self
                .lanes
                .iter()
                .filter(|(_, l)| !l.filling.is_empty())
                .map(|(s, _)| s.clone())
                .collect();
            for s in subs {
                self.close_filling(&s);
            }
            self.deadlines.clear();
            return;
        }
        while let Some(Reverse((d, _))) = self.deadlines.peek() {
            if *d > now {
                break;
            }
            let Some(Reverse((d, sub))) = self.deadlines.pop() else {
                break;
            };
            if self.lanes.get(&sub).is_some_and(|l| l.deadline == Some(d)) {
                self.close_filling(&sub);
            }
        }
    }

    pub(super) fn dispatch(&mut self, inflight: &mut JoinSet<Flight>) {
        // Records wait while the plugin instance is not created, and while
        // the dead-letter queue is full (paused).
        if self.starter.is_some() || !self.parked.is_empty() {
            return;
        }
        // Calls that never returned hold threads of the shared pool: past a
        // few, send nothing more to this destination until they come back.
        if self.stuck.load(Relaxed) >= MAX_STUCK_SENDS {
            return;
        }
        let limit = self.aimd.limit();
        let mut scan = self.ready.len();
        while inflight.len() < limit && scan > 0 {
            // One batch per flight while the free slots can take them all;
            // when more are ready than slots are free, they share flights
            // (each batch still one plugin call, in order), so that many
            // small batches do not each pay a hand-off to the blocking pool.
            // A sink whose calls return quickly gets every ready batch in
            // as few flights as the limits below allow: running its calls
            // one after the other costs less than a hand-off each.
            // Without a send timeout a call that hangs is never given up
            // on: batches do not share sends then, so that it holds only
            // its own.
            let free = limit - inflight.len();
            let per_flight = if self.send_timeout.is_none() {
                1
            } else if self.aimd.fast_calls() {
                MAX_BATCHES_PER_FLIGHT
            } else {
                scan.div_ceil(free).clamp(1, MAX_BATCHES_PER_FLIGHT)
            };
            // A flight stays within one batch's limits (records and bytes),
            // so that the records in flight stay as bounded as with one
            // batch per flight.
            let (max_records, max_bytes) = (
                self.limits.max_records as usize,
                self.limits.max_batch_bytes,
            );
            let (mut records, mut bytes) = (0usize, 0u64);
            let mut group: Vec<(Arc<str>, Vec<Pending>)> = Vec::new();
            while group.len() < per_flight && scan > 0 {
                scan -= 1;
                let Some(sub) = self.ready.pop_front() else {
                    break;
                };
                let ordered = self.ordered;
                let Some(lane) = self.lanes.get_mut(&sub) else {
                    continue;
                };
                if ordered && (lane.in_flight > 0 || lane.blocked) {
                    self.ready.push_back(sub);
                    continue;
                }
                let Some(next) = lane.queued.front() else {
                    continue;
                };
                let (n, b) = (
                    next.len(),
                    self.limits.record_overhead_bytes as u64 * next.len() as u64
                        + next.iter().map(|p| p.rec.data().len() as u64).sum::<u64>(),
                );
                let over = (max_records != 0 && records + n > max_records)
                    || (max_bytes != 0 && bytes + b > max_bytes);
                if !group.is_empty() && over {
                    // For the next flight.
                    self.ready.push_front(sub);
                    scan += 1;
                    break;
                }
                let Some(batch) = lane.queued.pop_front() else {
                    continue;
                };
                if batch.is_empty() {
                    continue;
                }
                (records, bytes) = (records + n, bytes + b);
                if let Err(why) = &self.sink {
                    let why = why.clone();
                    self.dead_letter(&sub, batch, &why);
                    continue;
                }
                lane.in_flight += 1;
                group.push((sub, batch));
            }
            let Ok(sink) = &self.sink else {
                continue;
            };
            if group.is_empty() {
                continue;
            }
            let sink = sink.clone();
            self.stats.in_flight.fetch_add(group.len() as u64, Relaxed);
            self.stats.sends.fetch_add(1, Relaxed);
            let busy = inflight.len() + 1 >= limit;
            // The plugin gets its own handles on the records: if it does not
            // return in time, the task goes on with the batches and the call
            // keeps only what it was lent.
            let calls: Vec<(Arc<str>, Vec<Record>)> = group
                .iter()
                .map(|(sub, batch)| (sub.clone(), batch.iter().map(|p| p.rec.clone()).collect()))
                .collect();
            // The send timeout is per call: the flight is given up on when
            // no call of it returned for that long.
            let timeout = self.send_timeout;
            let stuck = self.stuck.clone();
            let stats = self.stats.clone();
            let permits = self.group.clone();
            let stopping = self.stopping.clone();
            inflight.spawn(async move {
                // The call group's share of the call pool: held until the
                // calls really return, so calls given up on count too.
                let permit = match permits {
                    Some(g) => g.acquire_owned().await.ok(),
                    None => None,
                };
                let sent = Instant::now();
                // 0 running, 1 returned, 2 given up on.
                let state = Arc::new(std::sync::atomic::AtomicU8::new(0));
                // What each call reported, as it returns.
                let done: Arc<Mutex<Vec<crate::plugin::SendReport>>> =
                    Arc::new(Mutex::new(Vec::with_capacity(calls.len())));
                let (state2, stuck2, done2) = (state.clone(), stuck.clone(), done.clone());
                let call = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let began = Instant::now();
                    for (sub, recs) in &calls {
                        // Given up on: the calls not begun are not made (their
                        // batches are retried).
                        if state2.load(Relaxed) == 2 {
                            break;
                        }
                        let report = call_plugin(&sink, recs, sub);
                        done2.lock().unwrap_or_else(|p| p.into_inner()).push(report);
                    }
                    let took = began.elapsed();
                    if state2.compare_exchange(0, 1, Relaxed, Relaxed).is_err() {
                        // Given up on earlier: it is no longer stuck.
                        stuck2.fetch_sub(1, Relaxed);
                    }
                    took
                });
                // Wait for the calls, at most the send timeout, and never
                // past the engine's drain deadline: a call stuck in foreign
                // code is given up on (its thread is abandoned), and its
                // records are retried, kept on disk or dead-lettered.
                let mut call = call;
                let returned = || done.lock().unwrap_or_else(|p| p.into_inner()).len();
                let give_up = async {
                    // A call that has not returned `timeout` after the last
                    // one did (between one and two timeouts after it began).
                    let limit = async {
                        match timeout {
                            Some(t) => {
                                let mut seen = 0;
                                loop {
                                    tokio::time::sleep(t).await;
                                    let now = returned();
                                    if now == seen {
                                        break;
                                    }
                                    seen = now;
                                }
                            }
                            None => std::future::pending::<()>().await,
                        }
                    };
                    let stop = async {
                        while !stopping.past() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    };
                    tokio::select! {
                        _ = limit => false,
                        _ = stop => true,
                    }
                };
                // The reports of the calls that returned, and for the rest
                // (not returned, or not made) every record to retry.
                let reports = |why: &str| -> Vec<crate::plugin::SendReport> {
                    let mut got = std::mem::take(&mut *done.lock().unwrap_or_else(|p| p.into_inner()));
                    let n = got.len();
                    got.extend(group[n.min(group.len())..].iter().map(|(_, b)| failed_report(b.len(), why)));
                    got
                };
                let outcome = tokio::select! {
                    biased;
                    r = &mut call => r.ok().map(|took| (reports("engine panicked while calling the plugin"), Some(took))),
                    stopped = give_up => {
                        if state.compare_exchange(0, 2, Relaxed, Relaxed).is_ok() {
                            stuck.fetch_add(1, Relaxed);
                            let why = if stopped {
                                "the engine stopped while the plugin's send was still running".to_string()
                            } else {
                                stats.send_timeouts.fetch_add(1, Relaxed);
                                format!("the plugin's send did not return within {:?}", timeout.unwrap_or_default())
                            };
                            Some((reports(&why), None))
                        } else {
                            // It returned just as the time ran out.
                            call.await.ok().map(|took| (reports("engine panicked while calling the plugin"), Some(took)))
                        }
                    }
                };
                let (reports, calls_took) = outcome.unwrap_or_else(|| {
                    (reports("engine panicked while calling the plugin"), None)
                });
                Flight {
                    batches: group
                        .into_iter()
                        .zip(reports)
                        .map(|((sub, batch), report)| (sub, batch, report))
                        .collect(),
                    sent,
                    busy,
                    calls_took,
                }
            });
        }
    }

    pub(super) fn idle(&self, inflight: &JoinSet<Flight>) -> bool {
        inflight.is_empty()
            && self.parked.is_empty()
            && self.ready.is_empty()
            && self.retries.is_empty()
            && self.lanes.values().all(|l| l.filling.is_empty())
    }

    /// At the drain deadline: memory records are dead-lettered; records of
    /// the disk buffer stay there (unacknowledged) for the next start.
    pub(super) fn abandon_all(&mut self) {
        self.unpark(true);
        for (sub, batch) in self.take_all() {
            if self.disk.is_some() {
                self.release(&batch);
            } else {
                self.dead_letter(&sub, batch, "engine stopped before delivery");
            }
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Vec<Chunk>>) {
        let mut inflight: JoinSet<Flight> = JoinSet::new();
        let mut closed = Closed::No;
        let mut abandoned = false;
        let mut inbox: Vec<Vec<Chunk>> = Vec::with_capacity(MESSAGES_PER_TURN);
        loop {
            let now = Instant::now();
            let draining = closed != Closed::No;
            // A replaced destination hands its disk buffer to its successor.
            let handed_over = draining
                && closed == Closed::Removed
                && self
                    .disk
                    .as_ref()
                    .is_some_and(|d| d.consumers.load(Relaxed) > 1);
            if !abandoned && !handed_over {
                self.fill_from_disk();
            }
            self.expire(now, draining);
            self.due_retries(now, false);
            let paused = !self.parked.is_empty() && self.unpark(false);
            // Past the drain deadline, whatever is held (and whatever comes
            // back from calls given up on) is kept on disk or dead-lettered.
            if closed == Closed::Stopping && self.stopping.past() {
                self.abandon_all();
                abandoned = true;
            }
            // Deleted before its instance could be created: what it holds
            // is dead-lettered (by dispatch, through the error) so that it
            // can finish.
            if closed == Closed::Removed && self.starter.is_some() {
                self.starter = None;
                self.sink = Err(
                    "the destination was deleted before its plugin instance could be created"
                        .to_string(),
                );
            }
            if !abandoned {
                self.begin_start(now);
                self.dispatch(&mut inflight);
            }
            if draining {
                let disk_done =
                    abandoned || handed_over || self.disk.as_ref().is_none_or(|d| !d.unread());
                if self.idle(&inflight) && disk_done {
                    break;
                }
            }
            let wake = self
                .next_wakeup()
                .unwrap_or(now + Duration::from_secs(3600));
            // While draining, or while sends are stuck, check regularly;
            // while paused, look for room in the dead-letter queue.
            let wake = if draining || self.stuck.load(Relaxed) > 0 {
                wake.min(now + Duration::from_millis(100))
            } else if paused {
                wake.min(now + Duration::from_millis(500))
            } else {
                wake
            };
            let disk = self.disk.clone();
            let want_disk =
                disk.is_some() && !abandoned && !handed_over && self.budget.available() > 0;
            let mut starting = self.starter.as_mut().and_then(|st| st.running.take());
            let mut started = None;
            tokio::select! {
                r = async { starting.as_mut().expect("guarded").await }, if starting.is_some() => {
                    starting = None;
                    started = Some(r.unwrap_or_else(|e| Err(crate::plugin::PluginError::Create {
                        kind: String::new(),
                        destination: self.id.to_string(),
                        retryable: true,
                        message: format!("creating the instance failed: {e}"),
                    })));
                }
                Some(done) = inflight.join_next(), if !inflight.is_empty() => match done {
                    Ok(flight) => self.handle(flight),
                    Err(e) => {
                        // Only cancellation gets here (panics are caught inside the
                        // task and reported as a failed send), and we never cancel.
                        self.stats.in_flight.fetch_sub(1, Relaxed);
                        tracing::error!(destination = %self.id, "send task failed: {e}");
                    }
                },
                // Every message already waiting, up to a bound, in one
                // turn of the loop: with many subscriptions a chunk often
                // holds a record or two, and a turn per chunk would cost
                // more than the chunk.
                n = rx.recv_many(&mut inbox, MESSAGES_PER_TURN), if closed == Closed::No => {
                    if n == 0 {
                        closed = if self.stopping.deadline().is_some() { Closed::Stopping } else { Closed::Removed };
                    }
                    for chunk in inbox.drain(..).flatten() {
                        let (sub, records) = pending(chunk);
                        self.add(sub, records);
                    }
                }
                _ = async { if let Some(d) = &disk { d.written_since_read().await } }, if want_disk => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            if let Some(h) = starting
                && let Some(st) = &mut self.starter
            {
                st.running = Some(h);
            }
            if let Some(r) = started {
                self.started(r);
            }
        }
        if let Ok(sink) = self.sink.clone() {
            let id = self.id.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = sink.flush() {
                    tracing::warn!(destination = %id, "flush failed: {e}");
                }
            })
            .await;
        }
        if let Some(d) = self.disk.take() {
            let last = d.consumers.fetch_sub(1, Relaxed) == 1;
            // A removed destination whose buffer is empty and unclaimed: delete it.
            if last && closed == Closed::Removed && d.drained() {
                let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
                if d.consumers.load(Relaxed) == 0 {
                    disks.remove(d.dir());
                    drop(disks);
                    if let Err(e) = d.remove() {
                        tracing::warn!(dir = %d.dir().display(), "cannot delete the disk buffer of a removed destination: {e}");
                    }
                }
            }
        }
    }
}
