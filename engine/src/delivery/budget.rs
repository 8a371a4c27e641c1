//! A destination's byte budget: what it may hold in memory.

use super::*;

/// The bytes of records a destination holds in memory (queued, batching, in
/// flight, waiting to retry), bounded.
#[derive(Debug)]
pub struct ByteBudget {
    pub(super) used: Mutex<u64>,
    pub(super) freed: std::sync::Condvar,
    pub(super) max: u64,
    pub(super) stopping: Arc<Stopping>,
}

impl ByteBudget {
    pub(super) fn new(max: u64, stopping: Arc<Stopping>) -> ByteBudget {
        ByteBudget {
            used: Mutex::new(0),
            freed: std::sync::Condvar::new(),
            max: max.max(1),
            stopping,
        }
    }

    /// Takes `n` bytes, waiting while that would exceed the budget (a chunk
    /// bigger than the whole budget is let through when nothing else is
    /// held). Once the engine's drain deadline has passed it stops waiting:
    /// the records are then dead-lettered by the task rather than kept.
    pub fn acquire(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used > 0 && *used + n > self.max && !self.stopping.past() {
            used = self
                .freed
                .wait_timeout(used, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *used += n;
    }

    /// Takes `n` bytes if they fit now.
    pub fn try_acquire(&self, n: u64) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if *used > 0 && *used + n > self.max {
            return false;
        }
        *used += n;
        true
    }

    /// Takes `n` bytes whatever the budget says.
    pub(super) fn force(&self, n: u64) {
        *self.used.lock().unwrap_or_else(|p| p.into_inner()) += n;
    }

    /// Gives `n` bytes back.
    pub fn release(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(n);
        self.freed.notify_all();
    }

    /// Bytes that may be taken now.
    pub fn available(&self) -> u64 {
        self.max
            .saturating_sub(*self.used.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }
}
