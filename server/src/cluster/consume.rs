//! A node's messages into its engine, and the spill that keeps one slow
//! destination from holding up every account of a partition.
//!
//! A message is done (and acked) once every record made from it is
//! delivered or dead-lettered, or its event is put aside on the partition's
//! spill subject. In a cluster every destination keeps its records in
//! memory (`durability = "memory"`): a node's disk buffer would leave with
//! a node that never comes back, so only the stream holds what is not
//! delivered yet.
//!
//! **Spill.** The events of a message go to the engine as one durable
//! publish that knows which accounts' records are not safe yet. If it is
//! not done within `spill_after`, the lines of those accounts are put on
//! the partition's spill subject (they may still be delivered by this
//! engine too: possible duplicates, counted) and the message is acked: the
//! other accounts of the partition go on. From then on the account's new
//! events go straight to the spill subject, behind its earlier ones, until
//! the spill is drained: once a second, when an account with events put
//! aside has no busy destination (nothing queued, last call not failed),
//! the partition's spill subject is read through, and each account's lines
//! go to the engine again, or back to the end of the spill subject while
//! it is still busy. Per-account order holds on this node; a failover can
//! deliver spilled events after later ones.

use sluice_engine::ingest::{lines, prescan_account};
use sluice_engine::{Engine, PendingPublish};
use sluice_stream::{Completion, Delivery, Handlers, Publisher};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How much the spill moved on this node.
#[derive(Debug, Default)]
pub struct SpillStats {
    /// Events put on spill subjects (again, when put back).
    pub spilled: AtomicU64,
    /// Spilled events handed back to the engine.
    pub drained: AtomicU64,
    /// Events spilled after the engine already had them (their records may
    /// be delivered twice).
    pub after_timeout: AtomicU64,
}

/// A node's handling of its messages.
pub struct Consumer {
    engine: Arc<Engine>,
    publisher: Publisher,
    spill_after: Duration,
    /// Per partition: events of each account waiting on its spill subject.
    ahead: Mutex<HashMap<u32, HashMap<Box<str>, u64>>>,
    /// Its counters.
    pub stats: SpillStats,
}

/// The lines of one message grouped by account, in order (lines whose
/// account cannot be read go with the empty account: the engine rejects
/// and counts them).
fn by_account(payload: &[u8]) -> Vec<(Box<str>, Vec<u8>, u64)> {
    let mut groups: Vec<(Box<str>, Vec<u8>, u64)> = Vec::new();
    let mut index: HashMap<&[u8], usize> = HashMap::new();
    for span in lines(payload) {
        let line = &payload[span.start as usize..(span.start + span.len) as usize];
        let account = prescan_account(line).unwrap_or(b"");
        let i = *index.entry(account).or_insert_with(|| {
            groups.push((String::from_utf8_lossy(account).into(), Vec::new(), 0));
            groups.len() - 1
        });
        let g = &mut groups[i];
        g.1.extend_from_slice(line);
        g.1.push(b'\n');
        g.2 += 1;
    }
    groups
}

impl Consumer {
    /// Handles messages into `engine`, spilling through `publisher` the
    /// accounts whose records are not safe within `spill_after`.
    pub fn new(engine: Arc<Engine>, publisher: Publisher, spill_after: Duration) -> Consumer {
        Consumer {
            engine,
            publisher,
            spill_after,
            ahead: Mutex::default(),
            stats: SpillStats::default(),
        }
    }

    /// The handlers of [`sluice_stream::Node`].
    pub fn handlers(self: &Arc<Self>) -> Handlers {
        let (me, me2) = (self.clone(), self.clone());
        Handlers {
            message: Arc::new(move |d| Box::pin(me.clone().handle(d))),
            drain: Arc::new(move |p| me2.should_drain(p)),
        }
    }

    fn ahead(&self) -> std::sync::MutexGuard<'_, HashMap<u32, HashMap<Box<str>, u64>>> {
        self.ahead.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether partition `p`'s spill subject should be read now: on the
    /// first ask for a partition (it may hold another node's spill), and
    /// whenever an account with events there has no busy destination.
    fn should_drain(&self, p: u32) -> bool {
        let mut ahead = self.ahead();
        let Some(accounts) = ahead.get(&p) else {
            ahead.insert(p, HashMap::new());
            return true;
        };
        if accounts.is_empty() {
            return false;
        }
        let busy = self.engine.busy_accounts();
        accounts.keys().any(|a| !busy.contains(a))
    }

    /// Hands a message over: the lines of accounts that wait (spilled
    /// before, or still busy) are set aside, the others go to the engine;
    /// the completion waits for them (up to `spill_after`), spills what
    /// waits and what was late, and counts what is ahead on the spill.
    async fn handle(self: Arc<Self>, d: Delivery) -> Result<Completion, String> {
        let p = d.partition;
        let nothing_ahead = !d.spilled && self.ahead().get(&p).is_none_or(HashMap::is_empty);
        if nothing_ahead {
            // The usual case: the whole message goes to the engine as it is;
            // lines are grouped by account only if some turn out late.
            let pending = self
                .engine
                .publish_ndjson_pending(d.payload.clone())
                .await
                .ok_or("the engine is stopping")?;
            return Ok(Box::pin(async move {
                let late = self.wait(pending).await?;
                if late.is_empty() {
                    return Ok(());
                }
                let groups = by_account(&d.payload);
                let wait = vec![false; groups.len()];
                self.spill(&d, &groups, &wait, &late).await
            }));
        }
        let groups = by_account(&d.payload);
        let wait: Vec<bool> = if d.spilled {
            let busy = self.engine.busy_accounts();
            groups.iter().map(|(a, ..)| busy.contains(a)).collect()
        } else {
            let ahead = self.ahead();
            let ahead = ahead.get(&p);
            groups
                .iter()
                .map(|(a, ..)| ahead.is_some_and(|m| m.get(a).is_some_and(|n| *n > 0)))
                .collect()
        };
        let mut body = Vec::new();
        for ((_, lines, _), w) in groups.iter().zip(&wait) {
            if !w {
                body.extend_from_slice(lines);
            }
        }
        let pending = if body.is_empty() {
            None
        } else {
            Some(
                self.engine
                    .publish_ndjson_pending(body.into())
                    .await
                    .ok_or("the engine is stopping")?,
            )
        };
        Ok(Box::pin(async move {
            let late = match pending {
                Some(pending) => self.wait(pending).await?,
                None => Vec::new(),
            };
            self.spill(&d, &groups, &wait, &late).await
        }))
    }

    /// Puts the lines of accounts that wait, and of those that were late,
    /// on the spill subject (one message per account), then counts what is
    /// ahead there.
    async fn spill(
        &self,
        d: &Delivery,
        groups: &[(Box<str>, Vec<u8>, u64)],
        wait: &[bool],
        late: &[Box<str>],
    ) -> Result<(), String> {
        let p = d.partition;
        let kind = if d.spilled { 's' } else { 'm' };
        for ((account, lines, n), w) in groups.iter().zip(wait) {
            let late = late.contains(account);
            if !w && !late {
                continue;
            }
            let id = format!("{kind}{}-{account}", d.stream_sequence);
            self.publisher
                .spill(p, lines.clone().into(), &id)
                .await
                .map_err(|e| format!("spilling the events of {account}: {e}"))?;
            self.stats.spilled.fetch_add(*n, Relaxed);
            if late {
                self.stats.after_timeout.fetch_add(*n, Relaxed);
            }
        }
        let mut ahead = self.ahead();
        let ahead = ahead.entry(p).or_default();
        for ((account, _, n), w) in groups.iter().zip(wait) {
            let spilled_now = *w || late.contains(account);
            if d.spilled {
                // Taken out of the spill; back in if spilled again.
                let left = ahead.get(account).map_or(0, |a| a.saturating_sub(*n));
                let left = left + if spilled_now { *n } else { 0 };
                if !spilled_now {
                    self.stats.drained.fetch_add(*n, Relaxed);
                }
                if left == 0 {
                    ahead.remove(account);
                } else {
                    ahead.insert(account.clone(), left);
                }
            } else if spilled_now {
                *ahead.entry(account.clone()).or_default() += n;
            }
        }
        Ok(())
    }

    /// Waits until the records of a publish are safe; past `spill_after`
    /// (once every event was routed), stops waiting and returns the
    /// accounts whose records are not safe yet.
    async fn wait(&self, mut pending: PendingPublish) -> Result<Vec<Box<str>>, String> {
        loop {
            match tokio::time::timeout(self.spill_after, pending.report()).await {
                Ok(Some(r)) if r.dropped > 0 => {
                    return Err(format!(
                        "{} records were shed by a full destination (when_full = \"drop_newest\"); the message is delivered again",
                        r.dropped
                    ));
                }
                Ok(Some(_)) => return Ok(Vec::new()),
                Ok(None) => return Err("the engine is stopping".into()),
                Err(_) if !pending.processed() => {}
                Err(_) => {
                    let late = pending.unsafe_accounts();
                    if !late.is_empty() {
                        return Ok(late);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_grouped_by_account_in_order() {
        let a = r#"{"account_id":"ac_a","n":1}"#;
        let b = r#"{"account_id":"ac_b","n":2}"#;
        let a2 = r#"{"account_id":"ac_a","n":3}"#;
        let body = format!("{a}\n{b}\n{a2}\nnot json\n");
        let g = by_account(body.as_bytes());
        assert_eq!(g.len(), 3);
        assert_eq!(&*g[0].0, "ac_a");
        assert_eq!(g[0].1, format!("{a}\n{a2}\n").into_bytes());
        assert_eq!(g[0].2, 2);
        assert_eq!((&*g[1].0, g[1].2), ("ac_b", 1));
        assert_eq!((&*g[2].0, g[2].2), ("", 1));
    }
}
