//! # sluice-serve
//!
//! `sluice serve`: the engine behind an HTTP API compatible with the public
//! ngrok API v2 for event destinations, subscriptions and sources, with
//! HTTP ingest, persisted in SQLite and applied to the running engine live.
//!
//! Changes are serialized: each one is validated, the engine is reconfigured
//! with the resulting configuration (a new snapshot, swapped atomically), the
//! change is written to SQLite, and only then is it acknowledged. If the
//! engine refuses the configuration (a plugin rejects its config) nothing is
//! stored. A deleted destination first delivers what it already holds (or
//! dead-letters it after the delivery policy), then stops.

pub mod api;
pub mod back_pressure;
pub mod cluster;
pub mod console;
pub mod dead_letters;
pub mod error;
pub mod ids;
pub mod list_filter;
pub mod model;
pub mod policy;
pub mod settings;
pub mod store;
#[doc(hidden)]
pub mod testing;

use sluice_engine::plugin::PluginRegistry;
use sluice_engine::{Engine, EngineConfig, MissingPlugin};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on (`127.0.0.1:8080`; port 0 picks one).
    pub listen: String,
    /// Where the database, dead letters and disk buffers live.
    pub data_dir: PathBuf,
    /// Plugin directories.
    pub plugin_dirs: Vec<PathBuf>,
    /// The token `POST /ingest` requires (else `$SLUICE_INGEST_TOKEN`, else
    /// the stored one, else a new one, printed).
    pub ingest_token: Option<String>,
    /// Restrict filters to ngrok's filterable fields.
    pub strict_ngrok_filters: bool,
    /// Engine settings.
    pub engine: EngineConfig,
    /// The operator's listener for `/metrics` and the detailed `/healthz`
    /// (e.g. `127.0.0.1:9464`); `None`: metrics are not served over HTTP.
    /// The public listener serves neither: metric labels name every tenant's
    /// destinations and subscriptions.
    pub metrics_addr: Option<String>,
    /// Origins allowed to call the API from a browser (CORS); empty: none.
    pub cors_origins: Vec<String>,
    /// What tenants may do.
    pub policy: policy::TenantPolicy,
    /// Join a cluster on NATS JetStream instead of keeping the
    /// configuration in SQLite (`--cluster`).
    pub cluster: Option<cluster::ClusterOptions>,
}

/// Where `sluice serve` listens, once it does, and the credentials this
/// start created (the library prints nothing: the caller shows them). Its
/// `Debug` shows no secret.
#[derive(Clone)]
pub struct Listening {
    /// The public listener: the API, `/ingest`, `/healthz`.
    pub api: std::net::SocketAddr,
    /// The operator's listener, when configured.
    pub metrics: Option<std::net::SocketAddr>,
    /// The account and API key made on the first start of an empty data
    /// directory (shown once: only its hash is stored).
    pub first_account: Option<FirstAccount>,
    /// The ingest token made because none was given or stored (shown once:
    /// only its hash is stored).
    pub new_ingest_token: Option<String>,
}

/// The account and API key `sluice serve` creates on its first start. Its
/// `Debug` shows no secret.
#[derive(Clone)]
pub struct FirstAccount {
    /// The new account's id (`ac_…`).
    pub account: String,
    /// Its API key, in clear (only its hash is stored).
    pub api_key: String,
}

impl std::fmt::Debug for FirstAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstAccount")
            .field("account", &self.account)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

impl std::fmt::Debug for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listening")
            .field("api", &self.api)
            .field("metrics", &self.metrics)
            .field("first_account", &self.first_account)
            .field(
                "new_ingest_token",
                &self.new_ingest_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Where `sluice keys create` writes.
#[derive(Clone, Debug)]
pub enum KeyStore {
    /// The SQLite store of a `sluice serve --data-dir`.
    DataDir(PathBuf),
    /// The configuration bucket of a cluster (its NATS servers,
    /// comma-separated).
    Cluster(String),
}

/// Creates an API key for `account` (created if new) and returns the token
/// (shown once; only its hash is stored). A running server sees it at once
/// (SQLite: looked up on first use; a cluster: through the bucket's watch).
pub fn create_key(place: &KeyStore, account: &str) -> Result<String, String> {
    if !ids::is_id(account, "ac") {
        return Err(format!(
            "'{account}' is not an account id (ac_ followed by 27 letters and digits)"
        ));
    }
    use store::ConfigStore;
    const WHY: &str = "created by sluice keys create";
    match place {
        KeyStore::DataDir(dir) => {
            let store = store::SqliteStore::open(dir)?;
            Ok(store.create_key(account, WHY, &now())?.1)
        }
        KeyStore::Cluster(servers) => {
            // Multi-threaded: the store's calls block on its handle, which
            // drives no I/O on a current-thread runtime.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let store = cluster::connect_store(servers, rt.handle(), false)?;
            Ok(store.create_key(account, WHY, &now())?.1)
        }
    }
}

/// Now, as the API writes times: RFC 3339 UTC to the second.
pub(crate) fn now() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let s = sluice_engine::events::format_rfc3339_ms(ms);
    format!("{}Z", &s[..19])
}

/// The hex SHA-256 of the ingest token: the operator's (`--ingest-token`,
/// else `$SLUICE_INGEST_TOKEN`), else the stored one, else a new one, stored
/// hashed and returned in clear (the second value) to be shown once (by the
/// one node of a cluster whose token was stored first). A token stored in
/// clear by an older version is replaced by its hash.
fn ingest_token(
    store: &dyn store::ConfigStore,
    given: Option<String>,
) -> Result<(String, Option<String>), String> {
    let given = given.or_else(|| {
        std::env::var("SLUICE_INGEST_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
    });
    if let Some(t) = given {
        return Ok((store::sha256_hex(&t), None));
    }
    if let Some(h) = store.setting("ingest_token_sha256")? {
        return Ok((h, None));
    }
    let (h, new) = match store.setting("ingest_token")? {
        Some(clear) => (store::sha256_hex(&clear), None),
        None => {
            let t = ids::secret(40);
            (store::sha256_hex(&t), Some(t))
        }
    };
    if !store.create_setting("ingest_token_sha256", &h)? {
        // Another node stored one first: that one is the cluster's.
        let h = store
            .setting("ingest_token_sha256")?
            .ok_or("the stored ingest token vanished; start again")?;
        return Ok((h, None));
    }
    store.delete_setting("ingest_token")?;
    Ok((h, new))
}

/// On the first start of an empty store (of the first node of a cluster):
/// an account and its API key, stored, added to `state` and returned to be
/// shown once.
fn first_account(
    store: &dyn store::ConfigStore,
    state: &mut store::State,
) -> Result<Option<FirstAccount>, String> {
    let empty = state.accounts.is_empty() && state.keys.is_empty();
    // Nodes of a cluster starting together: the one that records the first
    // start makes the account.
    if !empty || !store.create_setting("first_account", &now())? {
        return Ok(None);
    }
    let account = ids::new_id("ac");
    let (key, token) = store.create_key(&account, "default key", &now())?;
    state.keys.insert(key.id.clone(), key);
    state
        .accounts
        .entry(account.clone())
        .or_default()
        .created_at = now();
    Ok(Some(FirstAccount {
        account,
        api_key: token,
    }))
}

/// Runs the server until SIGINT or SIGTERM, then drains the engine and
/// returns its summary (`None` if the engine was still shared at exit and
/// could not be drained). `on_ready` receives the bound addresses and the
/// credentials this start created, once the server accepts requests.
///
/// Blocks the calling thread; starts its own tokio runtime (two threads,
/// `sluice-api`) besides the engine's threads.
pub fn run(
    opts: ServeOptions,
    on_ready: impl FnOnce(Listening),
) -> Result<Option<sluice_engine::Summary>, String> {
    use store::ConfigStore;
    opts.policy.check()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sluice-api")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (store, mut state, joined): (Arc<dyn store::ConfigStore>, _, _) = match &opts.cluster {
        None => {
            let store = store::SqliteStore::open(&opts.data_dir)?;
            let state = store.load()?;
            (Arc::new(store), state, None)
        }
        Some(c) => {
            let j = rt.block_on(cluster::join(c, &opts.policy, rt.handle().clone()))?;
            (j.link.store.clone(), j.state, Some((j.link, j.watch)))
        }
    };
    let first_account = first_account(&*store, &mut state)?;
    let (ingest_token_sha256, new_ingest_token) = ingest_token(&*store, opts.ingest_token.clone())?;
    let plugins = PluginRegistry::discover(&opts.plugin_dirs);
    let plugin_kinds = plugins.kinds();
    let mut cfg = opts.engine.clone();
    cfg.missing_plugin = MissingPlugin::DeadLetter;
    if cfg.dead_letter_dir == EngineConfig::default().dead_letter_dir {
        cfg.dead_letter_dir = opts.data_dir.join("dead-letter");
    }
    if cfg.buffer_dir == EngineConfig::default().buffer_dir {
        cfg.buffer_dir = opts.data_dir.join("buffer");
    }
    cfg.plugin_restrictions = opts.policy.restrictions();
    cfg.shared = true;
    if let Some((link, _)) = &joined {
        cfg.dead_letters = Some(Arc::new(
            cluster::dead_letters::JetStreamDeadLetters::start(rt.handle(), link.publisher.clone()),
        ));
    }
    let mut spec = state.pipeline(opts.strict_ngrok_filters, &opts.policy, &opts.data_dir);
    if joined.is_some() {
        cluster::memory_only(&mut spec);
    }
    let engine = Arc::new(
        Engine::start(cfg, plugins, &spec)
            .map_err(|e| format!("the stored configuration does not start: {e}"))?,
    );
    let app = Arc::new(api::App::new(
        engine.clone(),
        store,
        state,
        plugin_kinds,
        &opts,
        ingest_token_sha256,
        joined.as_ref().map(|(link, _)| link.clone()),
    ));
    // Replays a stop left unfinished run again.
    let destinations: Vec<String> = {
        let st = app.state.read().unwrap_or_else(|p| p.into_inner());
        st.accounts
            .values()
            .flat_map(|a| a.destinations.keys().cloned())
            .collect()
    };
    rt.spawn(dead_letters::resume(
        engine.clone(),
        app.dead_letters.clone(),
        destinations,
    ));
    // In a cluster: follow the configuration and consume the stream.
    let node = match joined {
        None => None,
        Some((link, watch)) => {
            rt.spawn(cluster::follow(app.clone(), link.store.clone(), watch));
            rt.spawn(cluster::tap::serve_remote_taps(
                link.clone(),
                engine.clone(),
            ));
            let c = opts.cluster.as_ref().expect("joined a cluster");
            let node = rt.block_on(cluster::consume(&link, c, engine.clone()));
            Some(node)
        }
    };
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&opts.listen)
            .await
            .map_err(|e| format!("--listen {}: {e}", opts.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let metrics = match &opts.metrics_addr {
            None => None,
            Some(m) => {
                let l = tokio::net::TcpListener::bind(m)
                    .await
                    .map_err(|e| format!("--metrics-addr {m}: {e}"))?;
                let at = l.local_addr().map_err(|e| e.to_string())?;
                let router = api::operator_router(app.clone());
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(l, router).await {
                        tracing::error!("the metrics listener stopped: {e}");
                    }
                });
                Some(at)
            }
        };
        on_ready(Listening {
            api: addr,
            metrics,
            first_account,
            new_ingest_token,
        });
        let closing = app.closing.clone();
        axum::serve(
            listener,
            api::router(app).into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            stop_signal().await;
            // Streamed answers (taps) end, so that the server can.
            let _ = closing.send(true);
        })
        .await
        .map_err(|e| e.to_string())
    });
    if let Some(node) = node {
        // Finish the messages in hand and hand the partitions over (before
        // the leases could expire, so no other node takes one meanwhile).
        let lease = opts
            .cluster
            .as_ref()
            .map_or(Duration::from_secs(10), |c| c.consume.lease_ttl);
        rt.block_on(node.stop((lease / 2).min(opts.engine.drain_timeout)));
    }
    drop(rt);
    let summary = match Arc::try_unwrap(engine) {
        Ok(e) => Some(e.shutdown()),
        Err(_) => {
            tracing::error!("the engine was still in use at exit; queued records were not drained");
            None
        }
    };
    result.map(|()| summary)
}

/// Waits for SIGINT or SIGTERM.
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secret() {
        let l = Listening {
            api: "127.0.0.1:1".parse().unwrap(),
            metrics: None,
            first_account: Some(FirstAccount {
                account: "ac_1".into(),
                api_key: "2Secret_Key".into(),
            }),
            new_ingest_token: Some("tok3n-secret".into()),
        };
        let s = format!("{l:?}");
        assert!(s.contains("ac_1") && s.contains("<redacted>"), "{s}");
        assert!(
            !s.contains("2Secret_Key") && !s.contains("tok3n-secret"),
            "{s}"
        );
    }
}
