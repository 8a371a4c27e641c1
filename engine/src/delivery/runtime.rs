//! The delivery runtime: starting a destination's task, opening its disk
//! buffer, draining orphaned buffers, stopping.

use super::*;

impl Delivery {
    /// Starts the runtime; dead letters go under `dead_letter_dir` and disk
    /// buffers under `buffer_dir` unless a destination says otherwise.
    pub fn new(
        threads: usize,
        dead_letter_dir: PathBuf,
        buffer_dir: PathBuf,
    ) -> std::io::Result<Delivery> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .max_blocking_threads(MAX_PLUGIN_CALLS)
            .thread_name("sluice-delivery")
            .enable_time()
            .build()?;
        let stopping = Arc::new(Stopping::default());
        let disks: Arc<Mutex<HashMap<PathBuf, Arc<DiskBuffer>>>> = Arc::default();
        let sync_signal = Arc::new(SyncSignal::default());
        let syncer_stop = Arc::new(AtomicBool::new(false));
        let syncer = {
            let (disks, signal, stop, stopping) = (
                disks.clone(),
                sync_signal.clone(),
                syncer_stop.clone(),
                stopping.clone(),
            );
            std::thread::Builder::new()
                .name("sluice-fsync".into())
                .spawn(move || syncer_loop(disks, signal, stop, stopping))?
        };
        Ok(Delivery {
            shared: false,
            start_timeout: None,
            groups: Mutex::default(),
            rt,
            tasks: Mutex::new(Vec::new()),
            stopping,
            dead_letter_dir,
            dead_letter_sink: None,
            buffer_dir,
            disks,
            sync_signal,
            syncer_stop,
            syncer: Some(syncer),
        })
    }

    /// Opens the disk buffer a destination with `cfg` needs (none for
    /// `durability = "memory"`), or returns the one already open for it.
    /// Replays and repairs happen here; what was found is logged.
    pub fn open_disk(
        &self,
        id: &str,
        cfg: &DeliveryConfig,
        stats: &Arc<DestinationStats>,
    ) -> Result<Option<Arc<DiskBuffer>>, String> {
        if cfg.durability != Durability::Disk {
            return Ok(None);
        }
        let dir = cfg
            .buffer_dir
            .clone()
            .unwrap_or_else(|| self.buffer_dir.clone())
            .join(file_safe(id));
        let opts = DiskOptions {
            fsync: cfg.fsync,
            fsync_interval: Duration::from_millis(cfg.fsync_interval_ms.max(1)),
            max_bytes: cfg.disk_max_bytes,
            when_full: cfg.when_full,
            wait_for_room: !self.shared,
            segment_bytes: DiskOptions::segment_size_for(cfg.disk_max_bytes),
        };
        let mut disks = self.disks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = disks.get(&dir) {
            d.set_options(opts);
            return Ok(Some(d.clone()));
        }
        let (d, report) = DiskBuffer::open(&dir, opts, stats.clone(), self.sync_signal.clone())
            .map_err(|e| format!("cannot open the disk buffer {}: {e}", dir.display()))?;
        for p in &report.problems {
            tracing::warn!(destination = %id, "disk buffer: {p}");
        }
        if report.replay > 0 {
            tracing::info!(destination = %id, records = report.replay, "disk buffer: replaying records not acknowledged before the last stop");
        }
        disks.insert(dir, d.clone());
        Ok(Some(d))
    }

    /// Dead-letters what the disk buffers under the buffer directory that no
    /// destination opened hold (destinations deleted, or moved to memory,
    /// before the last stop: their records were acknowledged to publishers),
    /// with the reason, then deletes those buffers. Returns the records
    /// dead-lettered. Call after the first configuration is applied.
    pub fn drain_orphan_buffers(&self) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.buffer_dir) else {
            return 0;
        };
        let open: std::collections::HashSet<PathBuf> = self
            .disks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut total = 0;
        for e in entries.flatten() {
            let dir = e.path();
            if !dir.is_dir() || open.contains(&dir) || !DiskBuffer::is_log_dir(&dir) {
                continue;
            }
            let id: Arc<str> = e.file_name().to_string_lossy().into();
            match self.drain_orphan(&dir, id.clone()) {
                Ok(n) => {
                    if n > 0 {
                        tracing::warn!(destination = %id, records = n, "the disk buffer of a destination no longer configured was dead-lettered");
                    }
                    total += n;
                }
                Err(err) => {
                    tracing::error!(dir = %dir.display(), "cannot drain the disk buffer of a destination no longer configured: {err}; left in place")
                }
            }
        }
        total
    }

    pub(super) fn drain_orphan(&self, dir: &Path, id: Arc<str>) -> std::io::Result<u64> {
        let stats = Arc::new(DestinationStats::default());
        let opts = DiskOptions {
            fsync: crate::config::Fsync::Interval,
            fsync_interval: Duration::from_secs(1),
            max_bytes: u64::MAX,
            when_full: WhenFull::DropNewest,
            wait_for_room: false,
            segment_bytes: 64 << 20,
        };
        let (d, _) = DiskBuffer::open(dir, opts, stats.clone(), self.sync_signal.clone())?;
        let dead = DeadLetters::new(&self.dead_letter_dir, id, 0, self.dead_letter_sink.clone());
        let mut n = 0;
        let mut entries = Vec::new();
        while d.read(1 << 20, &mut entries)? > 0 {
            let now = Instant::now();
            let mut by_sub: Vec<(Arc<str>, Vec<Pending>)> = Vec::new();
            for e in entries.drain(..) {
                let p = Pending::new(e.record, now, e.seq, None);
                match by_sub.iter_mut().find(|(s, _)| *s == e.subscription) {
                    Some((_, v)) => v.push(p),
                    None => by_sub.push((e.subscription, vec![p])),
                }
            }
            for (sub, mut recs) in by_sub {
                n += recs.len() as u64;
                dead.write(
                    &stats,
                    &sub,
                    &mut recs,
                    "the destination was deleted before the engine last stopped; its buffered records were kept until this start",
                );
            }
        }
        d.finish()?;
        drop(d);
        DiskBuffer::remove_log_dir(dir)?;
        Ok(n)
    }

    /// Starts delivering to a destination through `sink`, or, when `sink` is
    /// an error (its plugin is not loaded), dead-lettering its records with
    /// that reason. `disk` comes from [`Delivery::open_disk`].
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &self,
        id: &str,
        kind: &str,
        fingerprint: String,
        cfg: &DeliveryConfig,
        sink: SinkSource,
        stats: Arc<DestinationStats>,
        disk: Option<Arc<DiskBuffer>>,
    ) -> Arc<DestinationHandle> {
        let id: Arc<str> = id.into();
        let dir = cfg
            .dead_letter_dir
            .clone()
            .unwrap_or_else(|| self.dead_letter_dir.clone());
        let dead = Arc::new(DeadLetters::new(
            &dir,
            id.clone(),
            cfg.dead_letter_max_bytes,
            self.dead_letter_sink.clone(),
        ));
        let (tx, rx) = mpsc::channel(1024);
        let budget = Arc::new(ByteBudget::new(cfg.buffer_max_bytes, self.stopping.clone()));
        let (mut limits, ordered) = match &sink {
            SinkSource::Ready(s) => (s.plugin().info.limits, s.plugin().info.ordered),
            SinkSource::Retry { plugin, .. } => (plugin.info.limits, plugin.info.ordered),
            SinkSource::Missing(_) => Default::default(),
        };
        let (sink, starter) = match sink {
            SinkSource::Ready(s) => (Ok(Arc::new(s)), None),
            SinkSource::Missing(why) => (Err(why), None),
            SinkSource::Retry { create, error, .. } => {
                stats.unhealthy.store(1, Relaxed);
                *stats.start_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((error.clone(), Instant::now()));
                let starter = Starter {
                    create,
                    deadline: self.start_timeout.map(|t| Instant::now() + t),
                    attempts: 1,
                    next: Instant::now() + start_backoff(1),
                    running: None,
                };
                (Err(error), Some(starter))
            }
        };
        let lower = |sink: u64, ours: u64| match (sink, ours) {
            (0, o) => o,
            (s, 0) => s,
            (s, o) => s.min(o),
        };
        limits.max_records = lower(
            u64::from(limits.max_records),
            u64::from(cfg.batch_max_records),
        ) as u32;
        limits.max_batch_bytes = lower(limits.max_batch_bytes, cfg.batch_max_bytes);
        if let Some(d) = &disk {
            d.consumers.fetch_add(1, Relaxed);
        }
        let aimd = Aimd::new(cfg.max_in_flight, cfg.adaptive_concurrency);
        stats.concurrency_limit.store(aimd.limit() as u64, Relaxed);
        let group = match (&cfg.call_group, self.shared) {
            (Some(g), true) => Some(
                self.groups
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(g.clone())
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(CALLS_PER_GROUP)))
                    .clone(),
            ),
            _ => None,
        };
        let task = Task {
            id: id.clone(),
            group,
            starter,
            sink,
            limits,
            ordered,
            cfg: cfg.clone(),
            stats: stats.clone(),
            epoch: Instant::now(),
            dead: dead.clone(),
            lanes: FxHashMap::default(),
            deadlines: BinaryHeap::new(),
            ready: VecDeque::new(),
            retries: BinaryHeap::new(),
            retry_seq: 0,
            budget: budget.clone(),
            rng: seed(),
            stopping: self.stopping.clone(),
            disk: disk.clone(),
            disks: self.disks.clone(),
            aimd,
            read_buf: Vec::new(),
            send_timeout: (cfg.send_timeout_ms > 0)
                .then(|| Duration::from_millis(cfg.send_timeout_ms)),
            stuck: Arc::default(),
            parked: Vec::new(),
        };
        let handle = self.rt.spawn(task.run(rx));
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
        Arc::new(DestinationHandle {
            id,
            kind: kind.to_string(),
            fingerprint,
            stats,
            tx,
            dead,
            budget,
            disk,
            when_full: cfg.when_full,
            never_block: self.shared,
        })
    }

    /// Sets the drain deadline: from then on, once it passes, workers waiting
    /// for room stop waiting and the tasks stop delivering (memory:
    /// dead-letter what is left; disk: leave it in the buffer for the next
    /// start).
    pub fn begin_shutdown(&self, drain: Duration) {
        let mut d = self
            .stopping
            .deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if d.is_none() {
            *d = Some(Instant::now() + drain);
        }
    }

    /// Waits until every destination task has finished (each finishes once
    /// all handles to it are dropped and its records are delivered,
    /// dead-lettered or, in a disk buffer, kept for the next start), then
    /// syncs the disk buffers a last time.
    pub fn shutdown(mut self, drain: Duration) {
        self.begin_shutdown(drain);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        self.rt.block_on(async {
            for t in tasks {
                if let Err(e) = t.await {
                    tracing::error!("delivery task failed: {e}");
                }
            }
        });
        self.syncer_stop.store(true, Relaxed);
        self.sync_signal.wake();
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
        for d in self
            .disks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            if let Err(e) = d.finish() {
                tracing::error!(dir = %d.dir().display(), "disk buffer: last sync failed: {e}");
            }
        }
        let rt = std::mem::replace(
            &mut self.rt,
            match tokio::runtime::Builder::new_current_thread().build() {
                Ok(rt) => rt,
                Err(_) => return,
            },
        );
        rt.shutdown_timeout(Duration::from_secs(5));
    }

    /// A handle to the runtime, for tasks that belong with delivery.
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }
}
