//! Settling an event on demand: from its envelope and the fields its
//! routes read ([`crate::ingest::lazy`]), decide that no route wants it or
//! that every route's filter rejects it, without the full parse. Anything
//! else (a route reads it whole, a filter matches, the reader gives up) is
//! left to the full parse, which decides as it always did. The members the
//! routes' first `&&` operands read are read first, and if each of those
//! operands is `false` the event is settled without the other fields.
//!
//! [`check`] is the oracle that holds the two paths to the same answers
//! (the differential test and the `on_demand` fuzz target).

use crate::cel::Verdict;
use crate::ingest::EventParser;
use crate::ingest::lazy::{LazyReader, Read, Wants};
use crate::route::{Route, Snapshot};
use std::cell::Cell;

/// What the on-demand reader settled.
#[derive(Debug)]
pub enum Settled<'s> {
    /// Nothing: the event needs the full parse.
    Full,
    /// No route wants events of its account and type.
    Unrouted,
    /// Every one of these routes' filters rejects it; the verdicts (no
    /// match, or an error) are in the caller's buffer, route by route.
    Rejected(&'s [Route]),
}

/// Settles `raw` against `snap` if its envelope and the fields its routes
/// read are enough. `verdicts` is cleared and, for [`Settled::Rejected`],
/// holds each route's verdict.
#[inline]
pub fn settle<'s>(
    raw: &[u8],
    snap: &'s Snapshot,
    lazy: &mut LazyReader,
    verdicts: &mut Vec<Verdict>,
) -> Settled<'s> {
    let found: Cell<&[Route]> = Cell::new(&[]);
    let lone_first = Cell::new(None);
    let read = lazy.read(
        raw,
        |account, ty| match snap.lookup(account, ty) {
            None => Wants::Nothing,
            Some((_, None)) => Wants::Whole,
            Some((routes, Some(trie))) => {
                found.set(routes);
                Wants::Fields(trie)
            }
        },
        |object, all| {
            verdicts.clear();
            let routes = found.get();
            if !all {
                // Only what the first `&&` operands read: enough if each
                // of them is false. (A lone route's operand is not
                // evaluated again below.)
                if let [r] = routes {
                    let f = r.source.filter.as_ref()?;
                    let first = f.first_conjunct(object)?;
                    if !first.rejects() {
                        lone_first.set(Some(first));
                        return None;
                    }
                } else {
                    let first_false = |r: &Route| {
                        r.source
                            .filter
                            .as_ref()
                            .is_some_and(|f| f.first_conjunct_rejects(object))
                    };
                    if !routes.iter().all(first_false) {
                        return None;
                    }
                }
                verdicts.resize(routes.len(), Verdict::NoMatch);
                return Some(true);
            }
            for r in routes {
                let verdict = match (&r.source.filter, lone_first.get()) {
                    (Some(f), Some(first)) => f.matches_given(object, first),
                    (Some(f), None) => f.matches(object),
                    (None, _) => Verdict::Match,
                };
                if verdict == Verdict::Match {
                    return Some(false);
                }
                verdicts.push(verdict);
            }
            Some(true)
        },
    );
    match read {
        Read::Unrouted => Settled::Unrouted,
        Read::Fields(true) => Settled::Rejected(found.get()),
        Read::Fields(false) | Read::Full => Settled::Full,
    }
}

/// What the full parse decides for `raw`: `Err` a rejection, `Ok(None)`
/// no route, `Ok(Some(verdicts))` each route's verdict.
fn decide_in_full(
    raw: &[u8],
    snap: &Snapshot,
    parser: &mut EventParser,
) -> Result<Option<Vec<Verdict>>, String> {
    parser.parse(raw, |r| {
        let env = r.map_err(|e| e.to_string())?;
        let routes = snap.routes(env.account_id, env.event_type);
        if routes.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            routes
                .iter()
                .map(|r| match &r.source.filter {
                    Some(f) => f.matches(env.object),
                    None => Verdict::Match,
                })
                .collect(),
        ))
    })
}

/// The oracle: whatever the on-demand reader settles for `raw`, the full
/// parse decides the same, route by route (an event the reader settles
/// may be one the full parse rejects as invalid: that is the unvalidated
/// case, never a match). `Ok(true)`: the reader settled it.
pub fn check(raw: &[u8], snap: &Snapshot) -> Result<bool, String> {
    let mut lazy = LazyReader::default();
    let mut verdicts = Vec::new();
    let settled = settle(raw, snap, &mut lazy, &mut verdicts);
    let full = decide_in_full(raw, snap, &mut EventParser::new());
    match (&settled, full) {
        (Settled::Full, _) => Ok(false),
        (_, Err(_)) => Ok(true),
        (Settled::Unrouted, Ok(None)) => Ok(true),
        (Settled::Rejected(_), Ok(Some(v))) if v == verdicts => Ok(true),
        (s, Ok(f)) => Err(format!(
            "on demand: {s:?} {verdicts:?}; in full: {f:?}; event: {}",
            String::from_utf8_lossy(raw)
        )),
    }
}

/// A snapshot in which each of `accounts` has one subscription (without
/// destinations) per filter, on `event_type`: for the oracle's tests, its
/// fuzz target and the benchmarks.
pub fn snapshot_of(
    accounts: &[&str],
    event_type: &str,
    filters: &[&str],
) -> Result<Snapshot, String> {
    use crate::config::{SourceSpec, compile_source};
    use crate::route::SubscriptionRt;
    use std::sync::Arc;
    let sources = filters
        .iter()
        .map(|f| {
            compile_source(
                &SourceSpec {
                    event_type: event_type.into(),
                    filter: Some(f.to_string()),
                    fields: None,
                },
                false,
            )
            .map(Arc::new)
            .map_err(|e| format!("{f}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut subs = Vec::new();
    for a in accounts {
        for (i, src) in sources.iter().enumerate() {
            subs.push((
                SubscriptionRt {
                    id: format!("esb_{a}_{i}").into(),
                    account_id: (*a).into(),
                    destinations: Box::new([]),
                    stats: Default::default(),
                },
                vec![src.clone()],
            ));
        }
    }
    Ok(Snapshot::new(1, subs, vec![]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reader_and_the_evaluator_agree_on_what_a_lookup_costs() {
        assert_eq!(
            crate::ingest::lazy::MAX_MEMBERS,
            crate::cel::eval::FREE_STEPS
        );
    }
}
