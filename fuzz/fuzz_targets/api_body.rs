//! Input: one byte choosing a request, then its JSON body. The API of a
//! real (in-process) `sluice serve` answers every body with a 2xx or a
//! 4xx in the ngrok shape: never a 5xx, never a crash, never a hang.
#![no_main]
use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use sluice_serve::api::{App, router};
use sluice_serve::policy::TenantPolicy;
use sluice_serve::{ServeOptions, store::Store};
use sluice_engine::{Engine, EngineConfig, plugin::PluginRegistry};
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

struct Fixture {
    rt: tokio::runtime::Runtime,
    app: Arc<App>,
    key: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sluice-fuzz-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).expect("store");
        let (_, key) = store
            .create_key("ac_2FuzzAccount000000000000000", "fuzz", "2026-01-01T00:00:00Z")
            .expect("key");
        let state = store.load().expect("state");
        let policy = TenantPolicy {
            max_destinations: 20,
            max_subscriptions: 20,
            writes_per_minute: u32::MAX,
            test_events_per_minute: 0,
            ..TenantPolicy::default()
        };
        let opts = ServeOptions {
            listen: String::new(),
            data_dir: dir.clone(),
            plugin_dirs: Vec::new(),
            ingest_token: None,
            strict_ngrok_filters: false,
            engine: EngineConfig::default(),
            metrics_addr: None,
            cors_origins: Vec::new(),
            policy: policy.clone(),
        };
        let cfg = EngineConfig {
            workers: 1,
            dead_letter_dir: dir.join("dead-letter"),
            buffer_dir: dir.join("buffer"),
            missing_plugin: sluice_engine::MissingPlugin::DeadLetter,
            plugin_restrictions: policy.restrictions(),
            shared: true,
            ..EngineConfig::default()
        };
        let spec = state.pipeline(false, &policy, &dir);
        let engine = Arc::new(Engine::start(cfg, PluginRegistry::discover(&[]), &spec).expect("engine"));
        let app = Arc::new(App::new(engine, store, state, Vec::new(), &opts, String::new()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Fixture { rt, app, key }
    })
}

const ROUTES: [(&str, &str); 4] = [
    ("POST", "/event_destinations"),
    ("POST", "/event_subscriptions"),
    ("PATCH", "/event_destinations/ed_2Nope0000000000000000000000"),
    ("POST", "/event_subscriptions/esb_2Nope000000000000000000000/sources"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let f = fixture();
    let (method, path) = ROUTES[pick as usize % ROUTES.len()];
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {}", f.key))
        .header("ngrok-version", "2")
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .expect("request");
    let resp = f.rt.block_on(router(f.app.clone()).oneshot(req)).expect("infallible");
    let status = resp.status().as_u16();
    let bytes = f
        .rt
        .block_on(axum::body::to_bytes(resp.into_body(), 1 << 20))
        .expect("the answer is read");
    assert!(status < 500, "{status} for {method} {path} {:?}: {}", String::from_utf8_lossy(body), String::from_utf8_lossy(&bytes));
    if status >= 400 {
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON error body");
        assert!(v["msg"].is_string() && v["status_code"] == status, "{v}");
    }
});
