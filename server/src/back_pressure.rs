//! Back-pressure aimed at the account whose destinations are full.
//!
//! On a shared engine a full destination never blocks a worker (its records
//! would be dead-lettered), so `POST /ingest` holds back the lines of
//! accounts that have a (nearly) full destination, reporting each as refused
//! for back-pressure (retryable, with `Retry-After`), and takes the lines of
//! every other account at full speed. It answers 429 only when nothing could
//! be taken.

use bytes::Bytes;
use sluice_engine::ingest::prescan_account;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Accounts with a full destination (each with one such destination).
pub type FullAccounts = HashMap<Box<str>, Arc<str>>;

/// How long a computed set of full accounts is used before it is computed
/// again (it walks every subscription).
const REFRESH: Duration = Duration::from_millis(20);

/// The set of full accounts, computed at most every [`REFRESH`].
#[derive(Default)]
pub struct FullAccountsCache {
    last: Mutex<Option<(Instant, Arc<FullAccounts>)>>,
}

impl FullAccountsCache {
    /// The current set, from `compute` when the cached one is stale.
    pub fn get(&self, compute: impl FnOnce() -> FullAccounts) -> Arc<FullAccounts> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match &*last {
            Some((at, set)) if at.elapsed() < REFRESH => set.clone(),
            _ => {
                let set = Arc::new(compute());
                *last = Some((Instant::now(), set.clone()));
                set
            }
        }
    }
}

/// A body with the lines of full accounts taken out.
pub struct Split {
    /// The lines to publish, each ending with a newline.
    pub kept: Bytes,
    /// For each kept line: its offset in `kept` and its line number (from 1)
    /// in the body as sent.
    lines: Vec<(usize, usize)>,
    /// The lines held back: line number, and the full destination.
    pub refused: Vec<(usize, Arc<str>)>,
}

impl Split {
    /// The line number in the body as sent of the kept line at `offset`.
    pub fn line_at(&self, offset: usize) -> usize {
        match self.lines.binary_search_by(|(o, _)| o.cmp(&offset)) {
            Ok(i) => self.lines[i].1,
            Err(0) => 1,
            Err(i) => self.lines[i - 1].1,
        }
    }
}

/// Splits `body` when one of its lines belongs to a full account; `None`
/// (publish the body as it is) otherwise.
pub fn hold_back(body: &Bytes, full: &FullAccounts) -> Option<Split> {
    if full.is_empty() {
        return None;
    }
    let owner = |line: &[u8]| -> Option<Arc<str>> {
        let a = prescan_account(line)?;
        let a = std::str::from_utf8(a).ok()?;
        full.get(a).cloned()
    };
    if !body.split(|b| *b == b'\n').any(|l| owner(l).is_some()) {
        return None;
    }
    let mut kept = Vec::with_capacity(body.len());
    let mut lines = Vec::new();
    let mut refused = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match owner(line) {
            Some(d) => refused.push((i + 1, d)),
            None => {
                lines.push((kept.len(), i + 1));
                kept.extend_from_slice(line);
                kept.push(b'\n');
            }
        }
    }
    Some(Split {
        kept: Bytes::from(kept),
        lines,
        refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_full_accounts_lines_are_held_back_and_lines_keep_their_numbers() {
        let body = Bytes::from_static(
            b"{\"account_id\":\"ac_a\",\"n\":1}\n{\"account_id\":\"ac_full\",\"n\":2}\n\n{\"account_id\":\"ac_b\",\"n\":3}\n",
        );
        let mut full = FullAccounts::new();
        assert!(hold_back(&body, &full).is_none(), "nothing full: as sent");
        full.insert("ac_other".into(), "ed_x".into());
        assert!(hold_back(&body, &full).is_none(), "not in this body");
        full.insert("ac_full".into(), "ed_1".into());
        let s = hold_back(&body, &full).unwrap();
        assert_eq!(
            &s.kept[..],
            b"{\"account_id\":\"ac_a\",\"n\":1}\n{\"account_id\":\"ac_b\",\"n\":3}\n"
        );
        assert_eq!(s.refused, vec![(2, Arc::from("ed_1"))]);
        assert_eq!(s.line_at(0), 1);
        assert_eq!(s.line_at(28), 4);
    }
}
