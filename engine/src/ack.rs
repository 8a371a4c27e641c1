//! Acknowledgements to publishers: a tracked publish is reported once every
//! event of it has been processed and, for a durable publish, once every
//! record it produced is safe: written and fsynced to a disk buffer,
//! delivered, or dead-lettered (or shed by a `drop_newest` destination, which
//! the report counts).
//!
//! A [`Ticket`] counts what is outstanding: one per input batch not yet
//! processed, plus one per [`Hold`] alive. Workers create a hold for each
//! chunk of records they hand to a destination before they finish the batch,
//! so the count cannot reach zero early; delivery drops the hold when the
//! records are safe.

use crate::ingest::RejectReason;
use std::collections::HashMap;
use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

/// What became of the events of one tracked publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Events accepted (parsed and routed, or unrouted).
    pub accepted: u64,
    /// Events rejected, in line order.
    pub rejected: Vec<RejectedLine>,
    /// Records shed by destinations whose buffer was full
    /// (`when_full = "drop_newest"`); always 0 unless the publish was durable.
    pub dropped: u64,
}

/// One line a tracked publish rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectedLine {
    /// Byte offset of the line in the published buffer.
    pub offset: u32,
    /// Why it was rejected.
    pub reason: RejectReason,
    /// What exactly was wrong (e.g. the parser's message).
    pub detail: String,
}

/// Called once with the report of a tracked publish.
pub(crate) type Done = Box<dyn FnOnce(PublishReport) + Send>;

/// The state of one tracked publish.
pub(crate) struct Ticket {
    remaining: AtomicUsize,
    accepted: AtomicU64,
    dropped: AtomicU64,
    rejected: Mutex<Vec<RejectedLine>>,
    done: Mutex<Option<Done>>,
    /// Input batches not yet processed.
    batches_left: AtomicUsize,
    /// With [`Ticket::track_accounts`]: the holds alive per account.
    accounts: Option<Mutex<HashMap<Box<str>, usize>>>,
    /// Whether records hold the report until they are safe.
    pub durable: bool,
}

impl Ticket {
    /// A ticket whose batches are not counted yet (see [`Ticket::expect`]).
    pub fn new(durable: bool, done: Done) -> Arc<Ticket> {
        Arc::new(Ticket {
            remaining: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            rejected: Mutex::new(Vec::new()),
            done: Mutex::new(Some(done)),
            batches_left: AtomicUsize::new(usize::MAX),
            accounts: None,
            durable,
        })
    }

    /// A durable ticket that also knows, while it waits, which accounts'
    /// records are not safe yet ([`Ticket::unsafe_accounts`]).
    pub fn track_accounts(done: Done) -> Arc<Ticket> {
        let mut t = Ticket::new(true, done);
        if let Some(t) = Arc::get_mut(&mut t) {
            t.accounts = Some(Mutex::new(HashMap::new()));
        }
        t
    }

    /// Whether every input batch was processed (so every hold was made).
    pub fn processed(&self) -> bool {
        self.batches_left.load(std::sync::atomic::Ordering::Acquire) == 0
    }

    /// The accounts with records not yet safe (tracked tickets only).
    pub fn unsafe_accounts(&self) -> Vec<Box<str>> {
        self.accounts.as_ref().map_or_else(Vec::new, |a| {
            a.lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned()
                .collect()
        })
    }

    /// Sets the number of input batches, before any is sent; with none, the
    /// report is made at once.
    pub fn expect(self: &Arc<Ticket>, batches: usize) {
        self.remaining
            .store(batches.max(1), std::sync::atomic::Ordering::Release);
        self.batches_left
            .store(batches, std::sync::atomic::Ordering::Release);
        if batches == 0 {
            self.release();
        }
    }

    /// A worker finished one batch.
    pub fn finish_batch(&self, accepted: u64, mut rejected: Vec<RejectedLine>) {
        self.accepted.fetch_add(accepted, Relaxed);
        if !rejected.is_empty() {
            self.rejected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(&mut rejected);
        }
        self.batches_left.fetch_sub(1, AcqRel);
        self.release();
    }

    /// Holds the report until the returned hold (and its clones) are dropped.
    /// Call before the batch that makes the records is finished.
    #[cfg(test)]
    pub fn hold(self: &Arc<Ticket>) -> Hold {
        self.hold_for("")
    }

    /// [`Ticket::hold`] for records of `account` (counted per account on a
    /// tracked ticket).
    pub fn hold_for(self: &Arc<Ticket>, account: &str) -> Hold {
        self.remaining.fetch_add(1, AcqRel);
        let account = self.accounts.as_ref().map(|a| {
            *a.lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(account.into())
                .or_default() += 1;
            Box::<str>::from(account)
        });
        Hold(Arc::new(HoldInner(self.clone(), account)))
    }

    fn release(&self) {
        if self.remaining.fetch_sub(1, AcqRel) == 1 {
            let mut rej =
                std::mem::take(&mut *self.rejected.lock().unwrap_or_else(|p| p.into_inner()));
            rej.sort_by_key(|r| r.offset);
            let report = PublishReport {
                accepted: self.accepted.load(Relaxed),
                rejected: rej,
                dropped: self.dropped.load(Relaxed),
            };
            if let Some(done) = self.done.lock().unwrap_or_else(|p| p.into_inner()).take() {
                done(report);
            }
        }
    }
}

/// Keeps a durable publish unacknowledged while the records of one chunk are
/// not yet safe. Clones share it; the last one dropped releases it.
#[derive(Clone)]
pub struct Hold(Arc<HoldInner>);

struct HoldInner(Arc<Ticket>, Option<Box<str>>);

impl Drop for HoldInner {
    fn drop(&mut self) {
        if let (Some(accounts), Some(account)) = (&self.0.accounts, &self.1) {
            let mut a = accounts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = a.get_mut(account) {
                *n -= 1;
                if *n == 0 {
                    a.remove(account);
                }
            }
        }
        self.0.release();
    }
}

impl Hold {
    /// Counts `n` records of the chunk shed instead of kept.
    pub fn dropped(&self, n: u64) {
        self.0.0.dropped.fetch_add(n, Relaxed);
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hold")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_once_batches_and_holds_are_done() {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = Ticket::new(true, Box::new(move |r| tx.send(r).unwrap()));
        t.expect(2);
        let h = t.hold();
        let h2 = h.clone();
        t.finish_batch(3, Vec::new());
        t.finish_batch(
            1,
            vec![RejectedLine {
                offset: 7,
                reason: RejectReason::BadJson,
                detail: "x".into(),
            }],
        );
        assert!(rx.try_recv().is_err(), "a hold is alive");
        drop(h);
        h2.dropped(2);
        assert!(rx.try_recv().is_err(), "a clone is alive");
        drop(h2);
        let r = rx.try_recv().unwrap();
        assert_eq!((r.accepted, r.dropped, r.rejected.len()), (4, 2, 1));
        assert!(rx.try_recv().is_err(), "reported once");
    }

    #[test]
    fn a_tracked_ticket_names_the_accounts_still_held() {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = Ticket::track_accounts(Box::new(move |r| tx.send(r).unwrap()));
        t.expect(1);
        assert!(!t.processed());
        let a = t.hold_for("ac_a");
        let b1 = t.hold_for("ac_b");
        let b2 = t.hold_for("ac_b");
        t.finish_batch(3, Vec::new());
        assert!(t.processed());
        let mut held = t.unsafe_accounts();
        held.sort();
        assert_eq!(held, vec!["ac_a".into(), "ac_b".into()] as Vec<Box<str>>);
        drop(a);
        drop(b1);
        assert_eq!(t.unsafe_accounts(), vec!["ac_b".into()] as Vec<Box<str>>);
        assert!(rx.try_recv().is_err());
        drop(b2);
        assert!(t.unsafe_accounts().is_empty());
        assert_eq!(rx.try_recv().unwrap().accepted, 3);
    }

    #[test]
    fn an_empty_publish_reports_at_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        let t = Ticket::new(false, Box::new(move |r| tx.send(r).unwrap()));
        t.expect(0);
        assert_eq!(rx.try_recv().unwrap().accepted, 0);
    }
}
