//! The single-node store: an embedded SQLite database
//! (`<data-dir>/sluice.db`) with versioned migrations.
//!
//! Every write is a transaction with `synchronous = FULL`, so what the API
//! acknowledged survives a crash.

use super::{AccountState, ApiKey, ConfigStore, State, StoreError, new_key};
use crate::model::{Destination, Subscription};
use rusqlite::{Connection, OptionalExtension, params};
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

/// The SQLite store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn sql(e: rusqlite::Error) -> StoreError {
    StoreError::Failed(format!("database error: {e}"))
}

impl SqliteStore {
    /// Opens (creating) `<dir>/sluice.db` and brings its schema up to date.
    pub fn open(dir: &Path) -> Result<SqliteStore, String> {
        let sql = |e| String::from(sql(e));
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
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ConfigStore for SqliteStore {
    fn load(&self) -> Result<State, StoreError> {
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
                .map_err(|e| StoreError::Failed(format!("stored destination: {e}")))?;
            st.accounts
                .entry(d.account_id.clone())
                .or_default()
                .destinations
                .insert(d.id.clone(), d);
        }
        let mut q = c.prepare("SELECT body FROM subscriptions").map_err(sql)?;
        for row in q.query_map([], |r| r.get::<_, String>(0)).map_err(sql)? {
            let s: Subscription = serde_json::from_str(&row.map_err(sql)?)
                .map_err(|e| StoreError::Failed(format!("stored subscription: {e}")))?;
            st.accounts
                .entry(s.account_id.clone())
                .or_default()
                .subscriptions
                .insert(s.id.clone(), s);
        }
        Ok(st)
    }

    fn key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
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

    fn put_account(&self, id: &str, created_at: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO accounts (id, created_at) VALUES (?1, ?2)",
                params![id, created_at],
            )
            .map_err(sql)?;
        Ok(())
    }

    fn create_key(
        &self,
        account: &str,
        description: &str,
        now: &str,
    ) -> Result<(ApiKey, String), StoreError> {
        self.put_account(account, now)?;
        let (key, token) = new_key(account, description);
        self.conn()
            .execute(
                "INSERT INTO api_keys (id, account_id, secret_sha256, description, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key.id, key.account_id, key.secret_sha256, key.description, now],
            )
            .map_err(sql)?;
        Ok((key, token))
    }

    fn put_destination(&self, d: &Destination) -> Result<(), StoreError> {
        let body = serde_json::to_string(d).map_err(|e| StoreError::Failed(e.to_string()))?;
        self.conn()
            .execute(
                "INSERT INTO destinations (id, account_id, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                params![d.id, d.account_id, body],
            )
            .map_err(sql)?;
        Ok(())
    }

    fn delete_destination(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM destinations WHERE id = ?1", params![id])
            .map_err(sql)?;
        Ok(())
    }

    fn put_subscription(&self, s: &Subscription) -> Result<(), StoreError> {
        let body = serde_json::to_string(s).map_err(|e| StoreError::Failed(e.to_string()))?;
        self.conn()
            .execute(
                "INSERT INTO subscriptions (id, account_id, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                params![s.id, s.account_id, body],
            )
            .map_err(sql)?;
        Ok(())
    }

    fn delete_subscription(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM subscriptions WHERE id = ?1", params![id])
            .map_err(sql)?;
        Ok(())
    }

    fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row(
                "SELECT value FROM settings WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)
    }

    fn create_setting(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO settings (key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .map_err(sql)?;
        Ok(n == 1)
    }

    fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(sql)?;
        Ok(())
    }

    fn delete_setting(&self, key: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM settings WHERE key = ?1", params![key])
            .map_err(sql)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{sha256_hex, split_token};
    use super::*;
    use crate::model::Target;

    #[test]
    fn everything_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (key, token) = {
            let s = SqliteStore::open(dir.path()).unwrap();
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
        let s = SqliteStore::open(dir.path()).unwrap();
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
