//! A destination's byte budget: what it may hold in memory.

use super::*;

/// The bytes of records a destination holds in memory (queued, batching, in
/// flight, waiting to retry), bounded.
#[derive(Debug)]
pub struct ByteBudget {
    pub(super) used: Mutex<Held>,
    pub(super) freed: std::sync::Condvar,
    pub(super) max: u64,
    pub(super) stopping: Arc<Stopping>,
}

/// What a budget holds, and who waits for room in it.
#[derive(Debug, Default)]
pub(super) struct Held {
    pub(super) bytes: u64,
    /// Threads waiting in [`ByteBudget::acquire`]: a release wakes them
    /// only if there are any (a notify is a system call each time, and
    /// most releases have no one to wake).
    pub(super) waiting: u32,
}

impl ByteBudget {
    pub(super) fn new(max: u64, stopping: Arc<Stopping>) -> ByteBudget {
        ByteBudget {
            used: Mutex::new(Held::default()),
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
        let mut held = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while held.bytes > 0 && held.bytes + n > self.max && !self.stopping.past() {
            held.waiting += 1;
            held = self
                .freed
                .wait_timeout(held, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            held.waiting -= 1;
        }
        held.bytes += n;
    }

    /// Takes `n` bytes if they fit now.
    pub fn try_acquire(&self, n: u64) -> bool {
        let mut held = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if held.bytes > 0 && held.bytes + n > self.max {
            return false;
        }
        held.bytes += n;
        true
    }

    /// Takes `n` bytes whatever the budget says.
    pub(super) fn force(&self, n: u64) {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).bytes += n;
    }

    /// Gives `n` bytes back.
    pub fn release(&self, n: u64) {
        let mut held = self.used.lock().unwrap_or_else(|p| p.into_inner());
        held.bytes = held.bytes.saturating_sub(n);
        if held.waiting > 0 {
            self.freed.notify_all();
        }
    }

    /// Bytes that may be taken now.
    pub fn available(&self) -> u64 {
        self.max
            .saturating_sub(self.used.lock().unwrap_or_else(|p| p.into_inner()).bytes)
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}
