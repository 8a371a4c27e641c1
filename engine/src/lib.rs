//! # sluice-engine
//!
//! An embeddable engine that exports account events: it parses each event
//! once (simd-json), routes it by `(account_id, event_type)` to the
//! subscriptions that want it, filters it with precompiled CEL evaluated
//! directly on the parsed JSON, projects the selected fields, encodes the
//! record once, and delivers it in batches to sink plugins loaded through the
//! stable C ABI of `sluice-sdk`.
//!
//! ```no_run
//! use sluice_engine::{Engine, EngineConfig, PipelineSpec, plugin::{PluginRegistry, plugin_dirs}};
//!
//! let spec = PipelineSpec::from_toml(r#"
//!     [[destination]]
//!     id = "ed_1"
//!     kind = "file"
//!     config = { path = "out/web5xx.ndjson" }
//!
//!     [[subscription]]
//!     id = "esb_1"
//!     account_id = "ac_1"
//!     destination_ids = ["ed_1"]
//!     [[subscription.source]]
//!     type = "http_request_complete.v0"
//!     filter = "ev.http.response.status_code >= 500"
//! "#).unwrap();
//! let plugins = PluginRegistry::discover(&plugin_dirs(&[]));
//! let engine = Engine::start(EngineConfig::default(), plugins, &spec).unwrap();
//! engine.publish_ndjson(bytes::Bytes::from_static(b"{\"event_id\":\"ev_1\", ...}\n"));
//! println!("{}", engine.shutdown());
//! ```
//!
//! What blocks: `publish*` block while the target worker's queue is full
//! (backpressure); workers block while a destination's queue is full;
//! `shutdown` blocks until every accepted record is delivered or
//! dead-lettered.

#![warn(missing_docs)]

pub mod ack;
pub mod cel;
pub mod config;
pub mod conformance;
pub mod delivery;
pub mod disk_buffer;
pub mod encode;
pub mod engine;
pub mod events;
pub mod ingest;
pub mod json;
pub mod metrics;
pub mod plugin;
pub mod route;

pub use config::{
    ConfigError, ConfigErrors, DeliveryConfig, DestinationSpec, PipelineSpec, SourceSpec,
    SubscriptionSpec,
};
pub use engine::{
    Engine, EngineConfig, EngineError, MissingPlugin, PublishReport, Publisher, Summary,
};
