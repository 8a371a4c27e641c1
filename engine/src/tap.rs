//! Live taps: samples of the records a subscription makes, as they are
//! encoded, for a person or a console watching. A tap never slows the
//! pipeline: a worker offers each record to the subscription's taps with a
//! token bucket (`per_second`) and a non-blocking send into a bounded
//! buffer; a record that finds no token or no room is skipped and counted,
//! never waited for. With no tap open, a worker checks one flag per batch.

use crate::encode::Record;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::mpsc;

/// The open taps of an engine.
#[derive(Default)]
pub(crate) struct Taps {
    /// Whether any tap is open (the workers' one check).
    active: AtomicBool,
    by_subscription: RwLock<HashMap<Arc<str>, Vec<Arc<TapState>>>>,
}

struct TapState {
    tx: mpsc::Sender<Bytes>,
    per_second: f64,
    /// (last refill, tokens)
    bucket: Mutex<(Instant, f64)>,
    skipped: AtomicU64,
    sent: AtomicU64,
}

/// An open tap on one subscription: its records' JSON, sampled. Closed when
/// dropped.
pub struct Tap {
    rx: mpsc::Receiver<Bytes>,
    state: Arc<TapState>,
    taps: Arc<Taps>,
    subscription: Arc<str>,
}

impl Tap {
    /// The next record (its encoded JSON), waiting for one as long as it
    /// takes (the caller bounds the wait).
    pub async fn next(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// Records not passed on (over the rate, or the reader too slow).
    pub fn skipped(&self) -> u64 {
        self.state.skipped.load(Relaxed)
    }

    /// Records passed on.
    pub fn sent(&self) -> u64 {
        self.state.sent.load(Relaxed)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let mut m = self
            .taps
            .by_subscription
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(v) = m.get_mut(&self.subscription) {
            v.retain(|t| !Arc::ptr_eq(t, &self.state));
            if v.is_empty() {
                m.remove(&self.subscription);
            }
        }
        self.taps.active.store(!m.is_empty(), Relaxed);
    }
}

/// Opens taps on an engine without holding it (for a listener thread of
/// its own); cheap to clone.
#[derive(Clone)]
pub struct TapOpener(pub(crate) Arc<Taps>);

impl TapOpener {
    /// As [`crate::Engine::tap`].
    pub fn open(&self, subscription: &str, per_second: u32, buffer: usize) -> Tap {
        self.0.open(subscription, per_second, buffer)
    }
}

impl Taps {
    /// Opens a tap on `subscription`: at most `per_second` records a second
    /// (a burst of as many), `buffer` of them waiting for the reader.
    pub(crate) fn open(
        self: &Arc<Self>,
        subscription: &str,
        per_second: u32,
        buffer: usize,
    ) -> Tap {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let per_second = f64::from(per_second.max(1));
        let state = Arc::new(TapState {
            tx,
            per_second,
            bucket: Mutex::new((Instant::now(), per_second)),
            skipped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        });
        let subscription: Arc<str> = subscription.into();
        let mut m = self
            .by_subscription
            .write()
            .unwrap_or_else(|p| p.into_inner());
        m.entry(subscription.clone())
            .or_default()
            .push(state.clone());
        self.active.store(true, Relaxed);
        Tap {
            rx,
            state,
            taps: self.clone(),
            subscription,
        }
    }

    /// Whether any tap is open.
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.active.load(Relaxed)
    }

    /// Offers `records` of `subscription` to its taps; never blocks.
    pub(crate) fn offer(&self, subscription: &str, records: &[Record]) {
        let m = self
            .by_subscription
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let Some(taps) = m.get(subscription) else {
            return;
        };
        for t in taps {
            let mut tokens = {
                let mut b = t.bucket.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                b.1 =
                    (b.1 + now.duration_since(b.0).as_secs_f64() * t.per_second).min(t.per_second);
                b.0 = now;
                let take = b.1.floor().min(records.len() as f64);
                b.1 -= take;
                take as usize
            };
            for r in records {
                if tokens == 0 {
                    t.skipped.fetch_add(1, Relaxed);
                    continue;
                }
                tokens -= 1;
                match t.tx.try_send(r.data_bytes()) {
                    Ok(()) => {
                        t.sent.fetch_add(1, Relaxed);
                    }
                    Err(_) => {
                        t.skipped.fetch_add(1, Relaxed);
                    }
                }
            }
        }
    }
}
