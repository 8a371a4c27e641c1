//! An in-process `sluice serve` for Sluice's own tests and fuzz targets: the
//! public router over a real SQLite store and a real engine, called without
//! a listener. **Not part of the API.**

use crate::api::{App, router};
use crate::policy::TenantPolicy;
use crate::store::{ConfigStore, SqliteStore};
use crate::{ServeOptions, now};
use axum::body::Body;
use axum::http::Request;
use serde_json::Value;
use sluice_engine::plugin::PluginRegistry;
use sluice_engine::{Engine, EngineConfig, MissingPlugin};
use std::path::Path;
use std::sync::Arc;
use tower::ServiceExt;

/// The account every in-process server is made with.
pub const ACCOUNT: &str = "ac_2InProcessAccount0000000000";

/// A server's state with one account and its API key.
pub struct InProcess {
    /// The handlers' state.
    pub app: Arc<App>,
    /// The account's API key.
    pub key: String,
}

/// Starts the engine and the API's state over a new store in `data_dir`,
/// with `policy`, `plugins` (the records of a destination whose kind is not
/// loaded are dead-lettered, as `sluice serve` does) and one worker.
///
/// Drop it outside any tokio runtime: the engine stops a runtime of its own.
pub fn start(data_dir: &Path, policy: TenantPolicy, plugins: PluginRegistry) -> InProcess {
    let store = SqliteStore::open(data_dir).expect("a new store in the data directory");
    let (_, key) = store
        .create_key(ACCOUNT, "in-process", &now())
        .expect("an API key");
    let state = store.load().expect("the store loads");
    let opts = ServeOptions {
        listen: String::new(),
        data_dir: data_dir.to_path_buf(),
        plugin_dirs: Vec::new(),
        ingest_token: None,
        strict_ngrok_filters: false,
        engine: EngineConfig::default(),
        metrics_addr: None,
        cors_origins: Vec::new(),
        policy: policy.clone(),
        cluster: None,
    };
    let cfg = EngineConfig {
        workers: 1,
        dead_letter_dir: data_dir.join("dead-letter"),
        buffer_dir: data_dir.join("buffer"),
        missing_plugin: MissingPlugin::DeadLetter,
        plugin_restrictions: policy.restrictions(),
        shared: true,
        ..EngineConfig::default()
    };
    let spec = state.pipeline(false, &policy, data_dir);
    let kinds = plugins.kinds();
    let engine = Arc::new(Engine::start(cfg, plugins, &spec).expect("the engine starts"));
    let app = Arc::new(App::new(
        engine,
        Arc::new(store),
        state,
        kinds,
        &opts,
        String::new(),
        None,
    ));
    InProcess { app, key }
}

impl InProcess {
    /// One request through the public router (edge middleware included):
    /// the status and the body as JSON (`Null` when empty or not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("a well-formed request");
        let resp = router(self.app.clone())
            .oneshot(req)
            .await
            .expect("the router answers");
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
            .await
            .expect("a body under 16 MiB");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A call with this account's key and `Ngrok-Version: 2` (and a JSON
    /// content type when there is a body).
    pub async fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let auth = format!("Bearer {}", self.key);
        let text = body.map(Value::to_string);
        let mut headers = vec![("authorization", auth.as_str()), ("ngrok-version", "2")];
        if text.is_some() {
            headers.push(("content-type", "application/json"));
        }
        self.call(method, path, &headers, text.as_deref()).await
    }
}
