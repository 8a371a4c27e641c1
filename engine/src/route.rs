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
use crate::ingest::lazy::FieldTree;
use crate::metrics::SubscriptionStats;
use crate::short_eq::short_eq;
use hashbrown::HashTable;
use rustc_hash::{FxBuildHasher, FxHashMap};
use std::hash::BuildHasher;
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

/// What the routes of one `(account, type)` read of an event's `object`:
/// the fields a reader must find to let every filter decide, or that it
/// must take the event whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldNeeds {
    /// A route takes every event unfiltered, or a filter reads `ev` whole:
    /// the event is read whole.
    Whole,
    /// Only these paths of `object`, dotted, sorted, none below another
    /// (a path to an object or list means everything under it).
    Paths(Box<[Box<str>]>),
}

impl FieldNeeds {
    /// What `routes` read together.
    pub fn of(routes: &[Route]) -> FieldNeeds {
        let mut paths: Vec<&str> = Vec::new();
        for r in routes {
            let Some(f) = &r.source.filter else {
                return FieldNeeds::Whole;
            };
            for read in f.reads() {
                match read.strip_prefix("ev.") {
                    Some(p) => paths.push(p),
                    None => return FieldNeeds::Whole,
                }
            }
        }
        paths.sort_unstable();
        paths.dedup();
        // Sorted, a path's descendants follow it: keep the first of each run.
        let mut kept: Vec<Box<str>> = Vec::with_capacity(paths.len());
        for p in paths {
            let below_kept = kept.last().is_some_and(|k| {
                p.len() > k.len() && p.starts_with(&**k) && p.as_bytes()[k.len()] == b'.'
            });
            if !below_kept {
                kept.push(p.into());
            }
        }
        FieldNeeds::Paths(kept.into_boxed_slice())
    }

    /// The paths as the on-demand reader's tree (`None`: read whole), with
    /// the members that the first `&&` operand of every one of `routes`'
    /// filters reads put first (the reader reads them first and stops
    /// there if each such operand is false). One tree per distinct answer,
    /// shared through `trees`: accounts with the same filters read one
    /// tree, which stays in the cache, instead of one each.
    fn trie(&self, routes: &[Route], trees: &mut TreeCache) -> Option<Arc<FieldTree>> {
        match self {
            FieldNeeds::Whole => None,
            FieldNeeds::Paths(paths) => {
                let first = first_members(routes);
                let key = (
                    paths.clone(),
                    first
                        .as_ref()
                        .map(|f| f.iter().map(|m| Box::from(*m)).collect()),
                );
                let tree = trees.entry(key).or_insert_with(|| {
                    let tree = FieldTree::new(paths);
                    Arc::new(match &first {
                        Some(first) => tree.read_first(first),
                        None => tree,
                    })
                });
                Some(tree.clone())
            }
        }
    }
}

/// The on-demand reader's trees made for one snapshot, by the paths they
/// hold and the members read first.
type TreeCache = FxHashMap<(Box<[Box<str>]>, Option<Box<[Box<str>]>>), Arc<FieldTree>>;

/// The members of `object` that the first `&&` operands of `routes`'
/// filters read (`None`: some route has no such operand to decide alone).
fn first_members(routes: &[Route]) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    for r in routes {
        out.extend(r.source.filter.as_ref()?.first_members()?);
    }
    Some(out)
}

/// The longest account id held inline in its [`Entry`] (ngrok's are 30
/// bytes).
const INLINE_ID: usize = 36;

/// [`Entry::id_len`] of an id too long to be inline.
const LONG_ID: u8 = u8::MAX;

/// The routes of one `(account, event type)`, filed in [`Snapshot`]'s
/// table under the hash of both. The account id is inline when it fits, so
/// that finding and confirming an entry reads its 64 bytes and nothing
/// else: with many accounts, the lookup of an event streaming through the
/// caches costs one miss instead of one each for the entry, the id's bytes
/// and the account's list of types.
#[derive(Debug)]
#[repr(C, align(64))]
struct Entry {
    /// The id's bytes, or for a long id its index in
    /// [`Snapshot::long_ids`] (the first 4 bytes, little-endian).
    id: [u8; INLINE_ID],
    /// The id's length if inline, else [`LONG_ID`].
    id_len: u8,
    event_type: EventTypeId,
    /// What the routes read as the on-demand reader's tree, unless the
    /// event is read whole (shared by every account whose routes read the
    /// same).
    trie: Option<Arc<FieldTree>>,
    routes: Box<[Route]>,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 64);

impl Entry {
    fn new(
        account: &str,
        event_type: EventTypeId,
        trie: Option<Arc<FieldTree>>,
        routes: Box<[Route]>,
        long_ids: &mut Vec<Box<str>>,
    ) -> Entry {
        let mut id = [0u8; INLINE_ID];
        let id_len = if account.len() <= INLINE_ID {
            id[..account.len()].copy_from_slice(account.as_bytes());
            account.len() as u8
        } else {
            id[..4].copy_from_slice(&(long_ids.len() as u32).to_le_bytes());
            long_ids.push(account.into());
            LONG_ID
        };
        Entry {
            id,
            id_len,
            event_type,
            trie,
            routes,
        }
    }

    /// The account id's bytes.
    fn account<'a>(&'a self, long_ids: &'a [Box<str>]) -> &'a [u8] {
        if self.id_len == LONG_ID {
            let i = u32::from_le_bytes([self.id[0], self.id[1], self.id[2], self.id[3]]);
            long_ids[i as usize].as_bytes()
        } else {
            &self.id[..usize::from(self.id_len)]
        }
    }

    /// Whether this is the entry of `(account, event_type)`.
    #[inline(always)]
    fn is(&self, account: &[u8], event_type: EventTypeId, long_ids: &[Box<str>]) -> bool {
        self.event_type == event_type
            && if account.len() <= INLINE_ID {
                usize::from(self.id_len) == account.len()
                    && short_eq(&self.id[..account.len()], account)
            } else {
                self.id_len == LONG_ID && short_eq(self.account(long_ids), account)
            }
    }
}

/// The hash an `(account, type)` is filed under in [`Snapshot`]'s table
/// (one function for filing and finding).
#[inline]
fn key_hash(account: &[u8], event_type: EventTypeId) -> u64 {
    FxBuildHasher.hash_one((event_type.0, account))
}

/// An immutable, complete routing configuration.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases with every reconfiguration.
    pub version: u64,
    /// The routes of each `(account, type)` that has any (a table rather
    /// than a map so that ids are compared inline, not by a call to
    /// `memcmp`).
    index: HashTable<Entry>,
    /// The account ids longer than [`INLINE_ID`], by the index their
    /// entries hold.
    long_ids: Vec<Box<str>>,
    /// Number of accounts with at least one source.
    accounts: usize,
    /// Every subscription, by dense index.
    pub subscriptions: Vec<SubscriptionRt>,
    /// Every destination.
    pub destinations: Vec<Arc<DestinationHandle>>,
    /// Whether the routes of some `(account, type)` read only some fields
    /// (else no event is worth reading on demand).
    on_demand: bool,
}

impl Snapshot {
    /// Builds a snapshot. `subs` are (subscription, its compiled sources).
    pub fn new(
        version: u64,
        subs: Vec<(SubscriptionRt, Vec<Arc<CompiledSource>>)>,
        destinations: Vec<Arc<DestinationHandle>>,
    ) -> Snapshot {
        let mut by_account: FxHashMap<Box<str>, Vec<(EventTypeId, Vec<Route>)>> =
            FxHashMap::default();
        let mut subscriptions = Vec::with_capacity(subs.len());
        for (i, (sub, sources)) in subs.into_iter().enumerate() {
            let per_type = by_account.entry(sub.account_id.clone()).or_default();
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
        let accounts = by_account.len();
        let mut index = HashTable::with_capacity(by_account.values().map(Vec::len).sum());
        let mut long_ids = Vec::new();
        let mut trees = TreeCache::default();
        for (account, types) in by_account {
            for (event_type, routes) in types {
                let trie = FieldNeeds::of(&routes).trie(&routes, &mut trees);
                let entry = Entry::new(
                    &account,
                    event_type,
                    trie,
                    routes.into_boxed_slice(),
                    &mut long_ids,
                );
                index.insert_unique(key_hash(account.as_bytes(), event_type), entry, |e| {
                    key_hash(e.account(&long_ids), e.event_type)
                });
            }
        }
        let on_demand = index.iter().any(|e| e.trie.is_some());
        Snapshot {
            version,
            index,
            long_ids,
            accounts,
            subscriptions,
            destinations,
            on_demand,
        }
    }

    #[inline]
    fn entry(&self, account_id: &str, event_type: EventTypeId) -> Option<&Entry> {
        let account = account_id.as_bytes();
        self.index.find(key_hash(account, event_type), |e| {
            e.is(account, event_type, &self.long_ids)
        })
    }

    /// The sources that want events of `event_type` from `account_id`.
    #[inline]
    pub fn routes(&self, account_id: &str, event_type: EventTypeId) -> &[Route] {
        self.entry(account_id, event_type)
            .map_or(&[], |e| &e.routes[..])
    }

    /// What those sources read of an event's `object` (`None`: no source
    /// wants such events).
    pub fn needs(&self, account_id: &str, event_type: EventTypeId) -> Option<FieldNeeds> {
        self.entry(account_id, event_type)
            .map(|e| FieldNeeds::of(&e.routes))
    }

    /// The sources that want events of `event_type` from `account_id`, and
    /// the fields they read as a trie (`None`: they read events whole).
    /// `None` when no source wants such events.
    #[inline]
    pub fn lookup(
        &self,
        account_id: &str,
        event_type: EventTypeId,
    ) -> Option<(&[Route], Option<&FieldTree>)> {
        self.entry(account_id, event_type)
            .map(|e| (&e.routes[..], e.trie.as_deref()))
    }

    /// Whether any event may be settled by reading only some of its fields.
    pub fn on_demand(&self) -> bool {
        self.on_demand
    }

    /// Number of accounts with at least one source.
    pub fn accounts(&self) -> usize {
        self.accounts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SourceSpec, compile_source};

    fn route(filter: Option<&str>) -> Route {
        let spec = SourceSpec {
            event_type: "http_request_complete.v0".into(),
            filter: filter.map(str::to_string),
            fields: None,
        };
        Route {
            sub: 0,
            source: Arc::new(compile_source(&spec, false).expect("compiles")),
        }
    }

    fn paths(n: &FieldNeeds) -> Vec<&str> {
        match n {
            FieldNeeds::Whole => vec!["<whole>"],
            FieldNeeds::Paths(p) => p.iter().map(|p| &**p).collect(),
        }
    }

    #[test]
    fn the_routes_of_a_type_read_the_union_of_their_filters_paths() {
        let rs = [
            route(Some(
                "ev.conn.server_name.endsWith('-prod.ngrok.dev') && ev.http.response.status_code >= 500",
            )),
            route(Some("ev.http.response.status_code == 404")),
            route(Some("ev.http.request.headers.exists(k, k == 'X-Id')")),
        ];
        assert_eq!(
            paths(&FieldNeeds::of(&rs)),
            vec![
                "conn.server_name",
                "http.request.headers",
                "http.response.status_code"
            ]
        );
        // A path under another is covered by it.
        let rs = [
            route(Some("ev.http.request.method == 'GET'")),
            route(Some("size(ev.http.request) > 2")),
        ];
        assert_eq!(paths(&FieldNeeds::of(&rs)), vec!["http.request"]);
    }

    #[test]
    fn accounts_whose_routes_read_the_same_share_one_tree() {
        let sub = |account: &str, filter: &str| {
            let rt = SubscriptionRt {
                id: format!("esb_{account}").into(),
                account_id: account.into(),
                destinations: Box::new([]),
                stats: Default::default(),
            };
            (rt, vec![route(Some(filter)).source])
        };
        let (port, status) = (
            "ev.conn.server_port == 443",
            "ev.http.response.status_code >= 500",
        );
        let port_first = format!("{port} && {status}");
        let status_first = format!("{status} && {port}");
        let snap = Snapshot::new(
            1,
            vec![
                sub("ac_a", port),
                sub("ac_b", port),
                sub("ac_c", status),
                sub("ac_d", &port_first),
                sub("ac_e", &port_first),
                sub("ac_f", &status_first),
            ],
            vec![],
        );
        let ty = EventTypeId::from_name("http_request_complete.v0").expect("known type");
        let tree = |account: &str| {
            let (_, tree) = snap.lookup(account, ty).expect("routed");
            tree.expect("read on demand") as *const FieldTree
        };
        assert_eq!(tree("ac_a"), tree("ac_b"));
        assert_ne!(tree("ac_a"), tree("ac_c"));
        assert_eq!(tree("ac_d"), tree("ac_e"));
        // The same paths read in another order are another tree.
        assert_ne!(tree("ac_d"), tree("ac_f"));
    }

    /// Ids inline and too long to be, ids one the prefix of another, and
    /// types an account has no source for: each lookup finds its own
    /// account's routes or none.
    #[test]
    fn each_account_and_type_finds_its_own_routes() {
        let long = "ac_".to_string() + &"x".repeat(INLINE_ID);
        let longer = long.clone() + "y";
        let accounts = ["ac_1", "ac_12", &"a".repeat(INLINE_ID), &long, &longer];
        let subs = accounts
            .iter()
            .enumerate()
            .map(|(i, account)| {
                let rt = SubscriptionRt {
                    id: format!("esb_{i}").into(),
                    account_id: (*account).into(),
                    destinations: Box::new([]),
                    stats: Default::default(),
                };
                (rt, vec![route(Some("ev.conn.server_port == 443")).source])
            })
            .collect();
        let snap = Snapshot::new(1, subs, vec![]);
        assert_eq!(snap.accounts(), accounts.len());
        assert_eq!(snap.long_ids.len(), 2, "two ids are too long to be inline");
        let http = EventTypeId::from_name("http_request_complete.v0").expect("known type");
        let tcp = EventTypeId::from_name("tcp_connection_closed.v0").expect("known type");
        for (i, account) in accounts.iter().enumerate() {
            let routes = snap.routes(account, http);
            assert_eq!(routes.len(), 1, "{account}");
            assert_eq!(routes[0].sub as usize, i, "{account}");
            assert!(
                snap.routes(account, tcp).is_empty(),
                "{account}: no tcp source"
            );
            assert_eq!(
                snap.needs(account, http).as_ref().map(paths),
                Some(vec!["conn.server_port"])
            );
        }
        for stranger in [
            "ac_",
            "ac_2",
            "ac_123",
            &"a".repeat(INLINE_ID - 1),
            &long[..long.len() - 1],
        ] {
            assert!(snap.lookup(stranger, http).is_none(), "{stranger}");
        }
    }

    #[test]
    fn an_unfiltered_route_or_a_filter_of_the_whole_event_takes_it_whole() {
        assert_eq!(
            FieldNeeds::of(&[route(Some("ev.conn.server_port == 443")), route(None)]),
            FieldNeeds::Whole
        );
        assert_eq!(
            FieldNeeds::of(&[route(Some("size(ev) > 3"))]),
            FieldNeeds::Whole
        );
    }
}
