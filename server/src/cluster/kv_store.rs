//! The cluster's store: the API's state in the JetStream key-value bucket
//! `SLUICE_CONFIG`, one key per resource, written with revision checks.
//!
//! | key | value |
//! | --- | --- |
//! | `account.<id>` | its creation time |
//! | `key.<id>` | the API key as stored (the secret's hash) |
//! | `destination.<id>` | the destination, as the SQLite store keeps it |
//! | `subscription.<id>` | the subscription (its sources inside) |
//! | `setting.<name>` | a server setting (the ingest token's hash) |
//! | `cluster.policy` | the operator policy every node must share |
//! | `cluster.bootstrap` | the node that made the first account |
//!
//! A write names the revision this node last saw of the key (or that the
//! key must not exist): a key another node changed since answers
//! [`StoreError::Conflict`], which the API turns into 409.

use crate::model::{Destination, Subscription};
use crate::store::{ApiKey, ConfigStore, State, StoreError, new_key};
use bytes::Bytes;
use futures_util::StreamExt;
use sluice_stream::async_nats::jetstream::kv;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The bucket's name.
pub const BUCKET: &str = "SLUICE_CONFIG";

/// The API's state in a key-value bucket.
pub struct KvStore {
    kv: kv::Store,
    rt: tokio::runtime::Handle,
    /// The last revision this node saw of each key.
    revisions: Mutex<HashMap<String, u64>>,
}

/// What a bucket entry changes in the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Changed {
    /// Nothing the state holds (an entry it already had, or a key it does
    /// not keep).
    Nothing,
    /// Accounts or keys: the API's view only.
    Access,
    /// A destination or subscription: the engine's pipeline too.
    Pipeline,
}

/// Applies one bucket entry (`None`: the key was deleted) to `st`.
pub fn apply_entry(st: &mut State, key: &str, value: Option<&[u8]>) -> Result<Changed, String> {
    let (kind, id) = key.split_once('.').unwrap_or((key, ""));
    let parse_err = |e: serde_json::Error| format!("{key}: {e}");
    match (kind, value) {
        ("account", Some(v)) => {
            let a = st.accounts.entry(id.to_string()).or_default();
            let created = String::from_utf8_lossy(v).into_owned();
            if a.created_at == created {
                return Ok(Changed::Nothing);
            }
            a.created_at = created;
            Ok(Changed::Access)
        }
        ("key", Some(v)) => {
            let k: ApiKey = serde_json::from_slice(v).map_err(parse_err)?;
            let old = st.keys.insert(id.to_string(), k.clone());
            Ok(if old.as_ref() == Some(&k) {
                Changed::Nothing
            } else {
                Changed::Access
            })
        }
        ("key", None) => Ok(match st.keys.remove(id) {
            Some(_) => Changed::Access,
            None => Changed::Nothing,
        }),
        ("destination", Some(v)) => {
            let d: Destination = serde_json::from_slice(v).map_err(parse_err)?;
            let a = st.accounts.entry(d.account_id.clone()).or_default();
            if a.destinations.get(id) == Some(&d) {
                return Ok(Changed::Nothing);
            }
            a.destinations.insert(id.to_string(), d);
            Ok(Changed::Pipeline)
        }
        ("destination", None) => Ok(
            match st
                .accounts
                .values_mut()
                .find_map(|a| a.destinations.remove(id))
            {
                Some(_) => Changed::Pipeline,
                None => Changed::Nothing,
            },
        ),
        ("subscription", Some(v)) => {
            let s: Subscription = serde_json::from_slice(v).map_err(parse_err)?;
            let a = st.accounts.entry(s.account_id.clone()).or_default();
            if a.subscriptions.get(id) == Some(&s) {
                return Ok(Changed::Nothing);
            }
            a.subscriptions.insert(id.to_string(), s);
            Ok(Changed::Pipeline)
        }
        ("subscription", None) => Ok(
            match st
                .accounts
                .values_mut()
                .find_map(|a| a.subscriptions.remove(id))
            {
                Some(_) => Changed::Pipeline,
                None => Changed::Nothing,
            },
        ),
        _ => Ok(Changed::Nothing),
    }
}

fn conflict(what: &str) -> StoreError {
    StoreError::Conflict(format!(
        "{what} was changed through another node while this request was applied; read it again and retry"
    ))
}

/// Whether a write failed its revision check. nats-server 2.11 and later
/// answer error code 10164 where older ones answered 10071, and async-nats
/// 0.51 recognizes only the older one, so the message is checked too.
fn wrong_revision(kind_says_so: bool, e: &impl std::fmt::Display) -> bool {
    kind_says_so || e.to_string().contains("wrong last sequence")
}

fn failed(key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(format!(
        "the cluster's configuration bucket {BUCKET} could not write {key}: {e}"
    ))
}

impl KvStore {
    /// The store over `kv`; its blocking methods run their calls on `rt`.
    pub fn new(kv: kv::Store, rt: tokio::runtime::Handle) -> KvStore {
        KvStore {
            kv,
            rt,
            revisions: Mutex::default(),
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &kv::Store {
        &self.kv
    }

    /// Notes that this node has seen `key` at `revision`.
    pub fn saw(&self, key: &str, revision: u64) {
        let mut r = self.revisions.lock().unwrap_or_else(|p| p.into_inner());
        let known = r.entry(key.to_string()).or_insert(0);
        *known = (*known).max(revision);
    }

    fn revision(&self, key: &str) -> Option<u64> {
        self.revisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    /// Reads the whole bucket: the state it holds, and a watch that goes on
    /// with every later change (the caller follows it).
    pub async fn load_async(&self) -> Result<(State, kv::Watch), String> {
        let mut watch = self
            .kv
            .watch_with_history(">")
            .await
            .map_err(|e| format!("{BUCKET}: cannot watch: {e}"))?;
        let values = self
            .kv
            .status()
            .await
            .map_err(|e| format!("{BUCKET}: {e}"))?
            .values();
        let mut st = State::default();
        if values > 0 {
            loop {
                let entry = tokio::time::timeout(Duration::from_secs(30), watch.next())
                    .await
                    .map_err(|_| format!("{BUCKET}: no entry within 30 s while loading"))?
                    .ok_or_else(|| format!("{BUCKET}: the watch ended while loading"))?
                    .map_err(|e| format!("{BUCKET}: {e}"))?;
                let value = is_put(&entry).then_some(&entry.value[..]);
                apply_entry(&mut st, &entry.key, value)?;
                self.saw(&entry.key, entry.revision);
                if entry.delta == 0 {
                    break;
                }
            }
        }
        Ok((st, watch))
    }

    /// Creates `key` with `value` unless it exists; `Ok(false)` if it did.
    ///
    /// A create that no server answered ("no responders": the bucket's
    /// stream had no leader for a moment, as right after the cluster
    /// formed) wrote nothing, so it is tried again, for up to 5 s.
    pub async fn create_async(&self, key: &str, value: Bytes) -> Result<bool, StoreError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut created = self.kv.create(key, value.clone()).await;
        while let Err(e) = &created
            && e.to_string().contains("no responders")
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            created = self.kv.create(key, value.clone()).await;
        }
        match created {
            Ok(rev) => {
                self.saw(key, rev);
                Ok(true)
            }
            Err(e) if wrong_revision(e.kind() == kv::CreateErrorKind::AlreadyExists, &e) => {
                Ok(false)
            }
            Err(e) => Err(failed(key, e)),
        }
    }

    /// The value of `key`, if any.
    pub async fn get_async(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        self.kv
            .get(key)
            .await
            .map_err(|e| StoreError::Failed(format!("{BUCKET}: cannot read {key}: {e}")))
    }

    /// Writes `key` after the revision this node last saw of it (or creates
    /// it, if it saw none).
    async fn put_checked(&self, key: &str, value: Bytes, what: &str) -> Result<(), StoreError> {
        let rev = match self.revision(key) {
            Some(r) => self.kv.update(key, value, r).await.map_err(|e| {
                if wrong_revision(e.kind() == kv::UpdateErrorKind::WrongLastRevision, &e) {
                    conflict(what)
                } else {
                    failed(key, e)
                }
            })?,
            None => self.kv.create(key, value).await.map_err(|e| {
                if wrong_revision(e.kind() == kv::CreateErrorKind::AlreadyExists, &e) {
                    conflict(what)
                } else {
                    failed(key, e)
                }
            })?,
        };
        self.saw(key, rev);
        Ok(())
    }

    async fn delete_checked(&self, key: &str, what: &str) -> Result<(), StoreError> {
        self.kv
            .delete_expect_revision(key, self.revision(key))
            .await
            .map_err(|e| {
                if wrong_revision(e.kind() == kv::UpdateErrorKind::WrongLastRevision, &e) {
                    conflict(what)
                } else {
                    failed(key, e)
                }
            })
    }
}

/// Whether an entry holds a value (not a delete or purge marker).
pub fn is_put(entry: &kv::Entry) -> bool {
    entry.operation == kv::Operation::Put
}

impl ConfigStore for KvStore {
    fn load(&self) -> Result<State, StoreError> {
        Ok(self.rt.block_on(self.load_async())?.0)
    }

    /// Keys reach every node through the bucket's watch within a second;
    /// an unknown key is not looked up (that would let anyone make the
    /// server call NATS).
    fn key(&self, _id: &str) -> Result<Option<ApiKey>, StoreError> {
        Ok(None)
    }

    fn put_account(&self, id: &str, created_at: &str) -> Result<(), StoreError> {
        let key = format!("account.{id}");
        self.rt
            .block_on(self.create_async(&key, Bytes::from(created_at.to_string())))
            .map(|_| ())
    }

    fn create_key(
        &self,
        account: &str,
        description: &str,
        now: &str,
    ) -> Result<(ApiKey, String), StoreError> {
        self.put_account(account, now)?;
        let (key, token) = new_key(account, description);
        let body = serde_json::to_vec(&key).map_err(|e| StoreError::Failed(e.to_string()))?;
        let k = format!("key.{}", key.id);
        self.rt
            .block_on(self.put_checked(&k, body.into(), &format!("API key {}", key.id)))?;
        Ok((key, token))
    }

    fn put_destination(&self, d: &Destination) -> Result<(), StoreError> {
        let body = serde_json::to_vec(d).map_err(|e| StoreError::Failed(e.to_string()))?;
        let key = format!("destination.{}", d.id);
        self.rt.block_on(self.put_checked(
            &key,
            body.into(),
            &format!("Event destination {}", d.id),
        ))
    }

    fn delete_destination(&self, id: &str) -> Result<(), StoreError> {
        self.rt.block_on(self.delete_checked(
            &format!("destination.{id}"),
            &format!("Event destination {id}"),
        ))
    }

    fn put_subscription(&self, s: &Subscription) -> Result<(), StoreError> {
        let body = serde_json::to_vec(s).map_err(|e| StoreError::Failed(e.to_string()))?;
        let key = format!("subscription.{}", s.id);
        self.rt.block_on(self.put_checked(
            &key,
            body.into(),
            &format!("Event subscription {}", s.id),
        ))
    }

    fn delete_subscription(&self, id: &str) -> Result<(), StoreError> {
        self.rt.block_on(self.delete_checked(
            &format!("subscription.{id}"),
            &format!("Event subscription {id}"),
        ))
    }

    fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let v = self
            .rt
            .block_on(self.get_async(&format!("setting.{key}")))?;
        Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    fn create_setting(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        self.rt
            .block_on(self.create_async(&format!("setting.{key}"), Bytes::from(value.to_string())))
    }

    fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let k = format!("setting.{key}");
        let rev = self
            .rt
            .block_on(self.kv.put(&k, Bytes::from(value.to_string())))
            .map_err(|e| failed(&k, e))?;
        self.saw(&k, rev);
        Ok(())
    }

    fn delete_setting(&self, key: &str) -> Result<(), StoreError> {
        let k = format!("setting.{key}");
        self.rt
            .block_on(self.kv.delete(&k))
            .map_err(|e| failed(&k, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Target;

    fn dest(id: &str, account: &str, description: &str) -> Vec<u8> {
        serde_json::to_vec(&Destination {
            id: id.into(),
            account_id: account.into(),
            created_at: "t".into(),
            description: description.into(),
            metadata: String::new(),
            format: "json".into(),
            target: Target::Plugin {
                kind: "file".into(),
                config: serde_json::json!({"path": "x"}),
                delivery: None,
            },
        })
        .unwrap()
    }

    #[test]
    fn entries_change_the_state_once_and_deletes_find_their_account() {
        let mut st = State::default();
        let d = dest("ed_1", "ac_1", "first");
        assert_eq!(
            apply_entry(&mut st, "destination.ed_1", Some(&d)),
            Ok(Changed::Pipeline)
        );
        assert_eq!(
            apply_entry(&mut st, "destination.ed_1", Some(&d)),
            Ok(Changed::Nothing),
            "an entry already applied (this node's own write) changes nothing"
        );
        assert_eq!(
            apply_entry(
                &mut st,
                "destination.ed_1",
                Some(&dest("ed_1", "ac_1", "second"))
            ),
            Ok(Changed::Pipeline)
        );
        assert_eq!(
            st.accounts["ac_1"].destinations["ed_1"].description,
            "second"
        );
        assert_eq!(
            apply_entry(&mut st, "account.ac_1", Some(b"2026-01-01T00:00:00Z")),
            Ok(Changed::Access)
        );
        assert_eq!(
            apply_entry(&mut st, "destination.ed_1", None),
            Ok(Changed::Pipeline)
        );
        assert!(st.accounts["ac_1"].destinations.is_empty());
        assert_eq!(
            apply_entry(&mut st, "destination.ed_1", None),
            Ok(Changed::Nothing)
        );
        let (key, _) = new_key("ac_1", "k");
        let body = serde_json::to_vec(&key).unwrap();
        assert_eq!(
            apply_entry(&mut st, &format!("key.{}", key.id), Some(&body)),
            Ok(Changed::Access)
        );
        assert_eq!(st.keys[&key.id], key);
        assert_eq!(
            apply_entry(&mut st, "setting.ingest_token_sha256", Some(b"x")),
            Ok(Changed::Nothing)
        );
        let e = apply_entry(&mut st, "subscription.es_1", Some(b"{not json")).unwrap_err();
        assert!(e.starts_with("subscription.es_1: "), "{e}");
    }
}
