//! Persistence: an embedded SQLite database (`<data-dir>/sluice.db`) with
//! versioned migrations, and the in-memory state the API reads from.
//!
//! Every write goes to SQLite in a transaction first (synchronous = FULL) and
//! only then to memory, so what the API acknowledged survives a crash.
//! API keys are stored as SHA-256 hashes of their secret part.

use crate::ids;
use crate::model::{Destination, Subscription};
use crate::policy::TenantPolicy;
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use sluice_engine::config::PipelineSpec;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

/// The schema, one migration per version. Never edit a released one: append.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, keys, destinations, subscriptions, settings.
    "CREATE TABLE accounts (
         id TEXT PRIMARY KEY,
         created_at TEXT NOT NULL
     );
     CREATE TABLE api_keys (
         id TEXT PRIMARY KEY,
         account_id TEXT NOT NULL REFERENCES accounts(id),
         secret_sha256 TEXT NOT NULL,
         description TEXT NOT NULL,
         created_at TEXT NOT NULL
     );
     CREATE TABLE destinations (
         id TEXT PRIMARY KEY,
         account_id TEXT NOT NULL REFERENCES accounts(id),
         body TEXT NOT NULL
     );
     CREATE INDEX destinations_account ON destinations(account_id);
     CREATE TABLE subscriptions (
         id TEXT PRIMARY KEY,
         account_id TEXT NOT NULL REFERENCES accounts(id),
         body TEXT NOT NULL
     );
     CREATE INDEX subscriptions_account ON subscriptions(account_id);
     CREATE TABLE settings (
         key TEXT PRIMARY KEY,
         value TEXT NOT NULL
     );",
];

/// An API key, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// The SQLite store.
pub struct Store {
    conn: Mutex<Connection>,
}

fn sql(e: rusqlite::Error) -> String {
    format!("database error: {e}")
}

/// Hex SHA-256.
pub fn sha256_hex(s: &str) -> String {
    let d = Sha256::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits a key token `<27 chars>_<secret>` into (key id, secret).
pub fn split_token(token: &str) -> Option<(String, &str)> {
    let (id, secret) = token.split_once('_')?;
    (id.len() == ids::ID_CHARS
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
        && secret.len() >= 16)
        .then(|| (format!("ak_{id}"), secret))
}

impl Store {
    /// Opens (creating) `<dir>/sluice.db` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<Store, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("--data-dir {}: {e}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let path = dir.join("sluice.db");
        let mut conn = Connection::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        if version as usize > MIGRATIONS.len() {
            return Err(format!(
                "{} has schema version {version}, newer than this sluice ({}): upgrade sluice",
                path.display(),
                MIGRATIONS.len()
            ));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(sql)?;
            tx.execute_batch(m)
                .map_err(|e| format!("migration {}: {e}", i + 1))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(sql)?;
            tx.commit().map_err(sql)?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads everything.
    pub fn load(&self) -> Result<State, String> {
        let c = self.conn();
        let mut st = State::default();
        let mut q = c
            .prepare("SELECT id, created_at FROM accounts")
            .map_err(sql)?;
        for row in q
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(sql)?
        {
            let (id, created_at) = row.map_err(sql)?;
            st.accounts.insert(
                id,
                AccountState {
                    created_at,
                    ..Default::default()
                },
            );
        }
        let mut q = c
            .prepare("SELECT id, account_id, secret_sha256, description FROM api_keys")
            .map_err(sql)?;
        for row in q
            .query_map([], |r| {
                Ok(ApiKey {
                    id: r.get(0)?,
                    account_id: r.get(1)?,
                    secret_sha256: r.get(2)?,
                    description: r.get(3)?,
                })
            })
            .map_err(sql)?
        {
            let k = row.map_err(sql)?;
            st.keys.insert(k.id.clone(), k);
        }
        let mut q = c.prepare("SELECT body FROM destinations").map_err(sql)?;
        for row in q.query_map([], |r| r.get::<_, String>(0)).map_err(sql)? {
            let d: Destination = serde_json::from_str(&row.map_err(sql)?)
                .map_err(|e| format!("stored destination: {e}"))?;
            st.accounts
                .entry(d.account_id.clone())
                .or_default()
                .destinations
                .insert(d.id.clone(), d);
        }
        let mut q = c.prepare("SELECT body FROM subscriptions").map_err(sql)?;
        for row in q.query_map([], |r| r.get::<_, String>(0)).map_err(sql)? {
            let s: Subscription = serde_json::from_str(&row.map_err(sql)?)
                .map_err(|e| format!("stored subscription: {e}"))?;
            st.accounts
                .entry(s.account_id.clone())
                .or_default()
                .subscriptions
                .insert(s.id.clone(), s);
        }
        Ok(st)
    }

    /// One API key by its id (an indexed lookup, for a key created by
    /// `sluice keys create` while the server runs), or `None`.
    pub fn key(&self, id: &str) -> Result<Option<ApiKey>, String> {
        self.conn()
            .query_row(
                "SELECT id, account_id, secret_sha256, description FROM api_keys WHERE id = ?1",
                params![id],
                |r| {
                    Ok(ApiKey {
                        id: r.get(0)?,
                        account_id: r.get(1)?,
                        secret_sha256: r.get(2)?,
                        description: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(sql)
    }

    /// Creates an account if missing.
    pub fn put_account(&self, id: &str, created_at: &str) -> Result<(), String> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO accounts (id, created_at) VALUES (?1, ?2)",
                params![id, created_at],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// Creates a key for `account` (created if missing) and returns (key, token).
    /// The token is shown once; only its hash is kept.
    pub fn create_key(
        &self,
        account: &str,
        description: &str,
        now: &str,
    ) -> Result<(ApiKey, String), String> {
        self.put_account(account, now)?;
        let id = ids::new_id("ak");
        let secret = ids::secret(40);
        let token = format!("{}_{secret}", &id[3..]);
        let key = ApiKey {
            id: id.clone(),
            account_id: account.to_string(),
            secret_sha256: sha256_hex(&secret),
            description: description.to_string(),
        };
        self.conn()
            .execute(
                "INSERT INTO api_keys (id, account_id, secret_sha256, description, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key.id, key.account_id, key.secret_sha256, key.description, now],
            )
            .map_err(sql)?;
        Ok((key, token))
    }

    /// Stores (inserts or replaces) a destination.
    pub fn put_destination(&self, d: &Destination) -> Result<(), String> {
        let body = serde_json::to_string(d).map_err(|e| e.to_string())?;
        self.conn()
            .execute(
                "INSERT INTO destinations (id, account_id, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                params![d.id, d.account_id, body],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// Deletes a destination.
    pub fn delete_destination(&self, id: &str) -> Result<(), String> {
        self.conn()
            .execute("DELETE FROM destinations WHERE id = ?1", params![id])
            .map_err(sql)?;
        Ok(())
    }

    /// Stores (inserts or replaces) a subscription.
    pub fn put_subscription(&self, s: &Subscription) -> Result<(), String> {
        let body = serde_json::to_string(s).map_err(|e| e.to_string())?;
        self.conn()
            .execute(
                "INSERT INTO subscriptions (id, account_id, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                params![s.id, s.account_id, body],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// Deletes a subscription.
    pub fn delete_subscription(&self, id: &str) -> Result<(), String> {
        self.conn()
            .execute("DELETE FROM subscriptions WHERE id = ?1", params![id])
            .map_err(sql)?;
        Ok(())
    }

    /// A setting.
    pub fn setting(&self, key: &str) -> Result<Option<String>, String> {
        self.conn()
            .query_row(
                "SELECT value FROM settings WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)
    }

    /// Sets a setting.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), String> {
        self.conn()
            .execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// Removes a setting (absent is fine).
    pub fn delete_setting(&self, key: &str) -> Result<(), String> {
        self.conn()
            .execute("DELETE FROM settings WHERE key = ?1", params![key])
            .map_err(sql)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Target;

    #[test]
    fn everything_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (key, token) = {
            let s = Store::open(dir.path()).unwrap();
            let (key, token) = s
                .create_key("ac_1", "first key", "2026-01-01T00:00:00Z")
                .unwrap();
            s.put_destination(&Destination {
                id: "ed_1".into(),
                account_id: "ac_1".into(),
                created_at: "t".into(),
                description: "d".into(),
                metadata: "m".into(),
                format: "json".into(),
                target: Target::Plugin {
                    kind: "file".into(),
                    config: serde_json::json!({"path": "x"}),
                    delivery: None,
                },
            })
            .unwrap();
            s.set_setting("ingest_token", "tok").unwrap();
            (key, token)
        };
        let s = Store::open(dir.path()).unwrap();
        let st = s.load().unwrap();
        assert_eq!(st.keys[&key.id], key);
        assert_eq!(s.key(&key.id).unwrap(), Some(key.clone()));
        assert_eq!(s.key("ak_0ERYUfBkgnKZCUQtnIXuUvfafS6").unwrap(), None);
        let (id, secret) = split_token(&token).unwrap();
        assert_eq!(id, key.id);
        assert_eq!(sha256_hex(secret), key.secret_sha256);
        assert!(
            !std::fs::read(dir.path().join("sluice.db"))
                .unwrap()
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "the secret is not stored"
        );
        assert_eq!(st.accounts["ac_1"].destinations["ed_1"].description, "d");
        assert_eq!(s.setting("ingest_token").unwrap().as_deref(), Some("tok"));
        s.delete_destination("ed_1").unwrap();
        assert!(s.load().unwrap().accounts["ac_1"].destinations.is_empty());
    }
}
