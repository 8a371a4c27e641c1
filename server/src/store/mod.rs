//! The API's state and where it is kept: one [`ConfigStore`] interface over
//! two stores, SQLite on one node ([`SqliteStore`], `sqlite.rs`) and a
//! JetStream key-value bucket shared by a cluster's nodes
//! (`crate::cluster::KvStore`).
//!
//! A change is written to the store before it is served: what the API
//! acknowledged is stored. API keys are kept as SHA-256 hashes of their
//! secret part.

mod sqlite;

pub use sqlite::SqliteStore;

use crate::ids;
use crate::model::{Destination, Subscription};
use crate::policy::TenantPolicy;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_engine::config::PipelineSpec;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Why a store did not take a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Another node changed the resource since this node read it (the
    /// cluster store's revision check); the API answers 409.
    Conflict(String),
    /// The store could not be read or written.
    Failed(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Conflict(m) | StoreError::Failed(m) => f.write_str(m),
        }
    }
}

impl From<String> for StoreError {
    fn from(m: String) -> StoreError {
        StoreError::Failed(m)
    }
}

impl From<StoreError> for String {
    fn from(e: StoreError) -> String {
        e.to_string()
    }
}

/// Where the API's state is kept. Every method may block (a disk write, a
/// round trip to NATS): call them from a blocking thread, never from an
/// async task, except [`ConfigStore::key`], which never blocks.
pub trait ConfigStore: Send + Sync {
    /// Everything stored.
    fn load(&self) -> Result<State, StoreError>;
    /// One API key by id when the store can look it up without blocking
    /// (a key made by `sluice keys create` while the server runs), else
    /// `None`.
    fn key(&self, id: &str) -> Result<Option<ApiKey>, StoreError>;
    /// Creates an account if missing.
    fn put_account(&self, id: &str, created_at: &str) -> Result<(), StoreError>;
    /// Creates a key for `account` (created if missing) and returns (key,
    /// token). The token is shown once; only its hash is kept.
    fn create_key(
        &self,
        account: &str,
        description: &str,
        now: &str,
    ) -> Result<(ApiKey, String), StoreError>;
    /// Stores (inserts or replaces) a destination.
    fn put_destination(&self, d: &Destination) -> Result<(), StoreError>;
    /// Deletes a destination.
    fn delete_destination(&self, id: &str) -> Result<(), StoreError>;
    /// Stores (inserts or replaces) a subscription.
    fn put_subscription(&self, s: &Subscription) -> Result<(), StoreError>;
    /// Deletes a subscription.
    fn delete_subscription(&self, id: &str) -> Result<(), StoreError>;
    /// A setting.
    fn setting(&self, key: &str) -> Result<Option<String>, StoreError>;
    /// Sets a setting unless it is set: `Ok(false)` if it was (nodes
    /// starting at the same moment agree on one value this way).
    fn create_setting(&self, key: &str, value: &str) -> Result<bool, StoreError>;
    /// Sets a setting.
    fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError>;
    /// Removes a setting (absent is fine).
    fn delete_setting(&self, key: &str) -> Result<(), StoreError>;
}

/// A new API key for `account`: (key as stored, token shown once).
pub fn new_key(account: &str, description: &str) -> (ApiKey, String) {
    let id = ids::new_id("ak");
    let secret = ids::secret(40);
    let token = format!("{}_{secret}", &id[3..]);
    let key = ApiKey {
        id,
        account_id: account.to_string(),
        secret_sha256: sha256_hex(&secret),
        description: description.to_string(),
    };
    (key, token)
}

/// An API key, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// `ak_...`
    pub id: String,
    /// Owner.
    pub account_id: String,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    /// Description.
    pub description: String,
}

/// One account's resources.
#[derive(Clone, Debug, Default)]
pub struct AccountState {
    /// When the account was created.
    pub created_at: String,
    /// Destinations by id (ids sort by creation time).
    pub destinations: BTreeMap<String, Destination>,
    /// Subscriptions by id.
    pub subscriptions: BTreeMap<String, Subscription>,
}

/// Everything the API serves.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Accounts by id.
    pub accounts: BTreeMap<String, AccountState>,
    /// Keys by id.
    pub keys: HashMap<String, ApiKey>,
}

impl State {
    /// The pipeline of every account, under the operator's `policy`
    /// (destinations' files under `data_dir`).
    pub fn pipeline(
        &self,
        strict_ngrok_filters: bool,
        policy: &TenantPolicy,
        data_dir: &Path,
    ) -> PipelineSpec {
        self.pipeline_with(strict_ngrok_filters, policy, data_dir, None)
    }

    /// The pipeline of every account, with `over` (an account id and its
    /// next state) in place of that account's stored state, or after the
    /// others if it is new.
    pub fn pipeline_with(
        &self,
        strict_ngrok_filters: bool,
        policy: &TenantPolicy,
        data_dir: &Path,
        over: Option<(&str, &AccountState)>,
    ) -> PipelineSpec {
        let mut spec = PipelineSpec {
            strict_ngrok_filters,
            ..PipelineSpec::default()
        };
        let new = over.filter(|(id, _)| !self.accounts.contains_key(*id));
        let accounts = self.accounts.iter().map(|(id, a)| match over {
            Some((o, next)) if o == id => next,
            _ => a,
        });
        for a in accounts.chain(new.map(|(_, a)| a)) {
            spec.destinations
                .extend(a.destinations.values().map(|d| d.to_spec(policy, data_dir)));
            spec.subscriptions
                .extend(a.subscriptions.values().map(Subscription::to_spec));
        }
        spec
    }
}

/// Hex SHA-256.
pub fn sha256_hex(s: &str) -> String {
    ids::hex(&Sha256::digest(s.as_bytes()))
}

/// Splits a key token `<27 chars>_<secret>` into (key id, secret).
pub fn split_token(token: &str) -> Option<(String, &str)> {
    let (id, secret) = token.split_once('_')?;
    (id.len() == ids::ID_CHARS
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
        && secret.len() >= 16)
        .then(|| (format!("ak_{id}"), secret))
}
