//! A counting global allocator, for "allocations per event".
//!
//! The `sluice` binary installs it; counting is off (one relaxed load per
//! allocation) until the harness turns it on around a run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

static COUNTING: AtomicBool = AtomicBool::new(false);
static INSTALLED: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Install with `#[global_allocator] static A: CountingAllocator = CountingAllocator;`.
pub struct CountingAllocator;

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: same contract as this function.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as this function.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: same contract as this function.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: same contract as this function.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Declares that the counting allocator is the global allocator.
pub fn mark_installed() {
    INSTALLED.store(true, Relaxed);
}

/// Starts counting; returns the count so far (`None` if not installed).
pub fn start() -> Option<u64> {
    if !INSTALLED.load(Relaxed) {
        return None;
    }
    COUNTING.store(true, Relaxed);
    Some(ALLOCATIONS.load(Relaxed))
}

/// Stops counting; returns the count so far.
pub fn stop() -> Option<u64> {
    if !INSTALLED.load(Relaxed) {
        return None;
    }
    COUNTING.store(false, Relaxed);
    Some(ALLOCATIONS.load(Relaxed))
}
