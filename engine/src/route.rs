//! Routing: the immutable configuration snapshot that workers read.
//!
//! A [`Snapshot`] indexes `(account_id, event_type)` to the compiled sources
//! that want it, so that an event costs one hash lookup however many
//! subscriptions exist, and an event nobody wants costs nothing more.
//! Accounts are isolated by construction: the lookup key is the event's own
//! account, and a subscription's sources are only ever indexed under its
//! account.
//!
//! Snapshots are never modified. A configuration change builds a new one and
//! swaps it in whole; each input batch is processed against exactly one
//! snapshot.

use crate::config::CompiledSource;
use crate::delivery::DestinationHandle;
use crate::events::EventTypeId;
use crate::metrics::SubscriptionStats;
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// One subscription source reachable from an `(account, type)` key.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index of the subscription in [`Snapshot::subscriptions`].
    pub sub: u32,
    /// The compiled source (filter and projection).
    pub source: Arc<CompiledSource>,
}

/// A subscription as workers see it.
#[derive(Debug)]
pub struct SubscriptionRt {
    /// Its id.
    pub id: Arc<str>,
    /// Its account.
    pub account_id: Box<str>,
    /// Where its records go.
    pub destinations: Box<[Arc<DestinationHandle>]>,
    /// Its counters.
    pub stats: Arc<SubscriptionStats>,
}

/// For one account: the routes of each event type it has sources for.
type AccountRoutes = Vec<(EventTypeId, Box<[Route]>)>;

/// An immutable, complete routing configuration.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every reconfiguration.
    pub version: u64,
    index: FxHashMap<Box<str>, AccountRoutes>,
    /// Every subscription, by dense index.
    pub subscriptions: Vec<SubscriptionRt>,
    /// Every destination.
    pub destinations: Vec<Arc<DestinationHandle>>,
}

impl Snapshot {
    /// Builds a snapshot. `subs` are (subscription, its compiled sources).
    pub fn new(
        version: u64,
        subs: Vec<(SubscriptionRt, Vec<Arc<CompiledSource>>)>,
        destinations: Vec<Arc<DestinationHandle>>,
    ) -> Snapshot {
        let mut index: FxHashMap<Box<str>, Vec<(EventTypeId, Vec<Route>)>> = FxHashMap::default();
        let mut subscriptions = Vec::with_capacity(subs.len());
        for (i, (sub, sources)) in subs.into_iter().enumerate() {
            let per_type = index.entry(sub.account_id.clone()).or_default();
            for src in sources {
                let route = Route {
                    sub: i as u32,
                    source: src.clone(),
                };
                match per_type.iter_mut().find(|(t, _)| *t == src.event_type) {
                    Some((_, routes)) => routes.push(route),
                    None => per_type.push((src.event_type, vec![route])),
                }
            }
            subscriptions.push(sub);
        }
        let index = index
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    v.into_iter()
                        .map(|(t, r)| (t, r.into_boxed_slice()))
                        .collect(),
                )
            })
            .collect();
        Snapshot {
            version,
            index,
            subscriptions,
            destinations,
        }
    }

    /// The sources that want events of `event_type` from `account_id`.
    #[inline]
    pub fn routes(&self, account_id: &str, event_type: EventTypeId) -> &[Route] {
        match self.index.get(account_id) {
            Some(per_type) => per_type
                .iter()
                .find(|(t, _)| *t == event_type)
                .map_or(&[], |(_, r)| &r[..]),
            None => &[],
        }
    }

    /// Number of accounts with at least one source.
    pub fn accounts(&self) -> usize {
        self.index.len()
    }
}
