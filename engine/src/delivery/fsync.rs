//! The fsync thread: syncs every disk buffer on its policy's schedule.

use super::*;

/// fsyncs the disk buffers on their schedule, deletes their delivered
/// segments, and, once the drain deadline passes, releases blocked writers.
pub(super) fn syncer_loop(
    disks: Arc<Mutex<HashMap<PathBuf, Arc<DiskBuffer>>>>,
    signal: Arc<SyncSignal>,
    stop: Arc<AtomicBool>,
    stopping: Arc<Stopping>,
) {
    while !stop.load(Relaxed) {
        let list: Vec<Arc<DiskBuffer>> = disks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let now = Instant::now();
        let past = stopping.past();
        let mut sleep = Duration::from_millis(200);
        for d in &list {
            if past {
                d.close();
            }
            if d.sync_due(now)
                && let Err(e) = d.sync()
            {
                tracing::error!(dir = %d.dir().display(), "disk buffer: fsync failed: {e}");
            }
            sleep = sleep.min(d.sync_interval());
        }
        signal.wait(sleep.max(Duration::from_millis(1)));
    }
}
