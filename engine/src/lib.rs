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
//! ## The API
//!
//! [`Engine`] with its publishers ([`Publisher`], `publish*`), the
//! configuration ([`EngineConfig`], [`PipelineSpec`] and the [`config`]
//! types), [`metrics`] (live counters read as values:
//! [`metrics::Metrics::snapshot`], Prometheus text), the [`plugin`] registry
//! and loader, the [`events`] registry, [`cel`] filter compilation, [`ingest`]
//! (NDJSON framing, reject reasons) and [`conformance`] (the plugin kit). The
//! `internal` module is for Sluice's own benchmarks and tests only.
//!
//! ## Threads and runtimes
//!
//! [`Engine::start`] starts, and [`Engine::shutdown`] (or drop) stops:
//! - `sluice-worker-N`: one OS thread per worker ([`EngineConfig::workers`],
//!   default the number of cores), each owning a bounded queue of input
//!   batches; parsing, routing, filtering and encoding run there.
//! - `sluice-delivery`: a multi-threaded tokio runtime of its own (worker
//!   threads as configured, plus up to 256 blocking threads for plugin
//!   calls), which never runs on, and never needs, the caller's runtime.
//! - `sluice-fsync`: one OS thread that fsyncs disk buffers.
//! - `sluice-rejects`: one OS thread writing the rejects file, when
//!   [`EngineConfig::rejects_path`] is set.
//!
//! ## What blocks
//!
//! - `publish*` and [`Publisher`] block the calling thread while the target
//!   worker's queue is full (backpressure); from async code use
//!   [`Engine::publish_ndjson_async`], which waits on the tokio timer instead.
//! - A worker blocks while a destination's queue is full (`when_full =
//!   "block"`), except on a shared engine ([`EngineConfig::shared`]), where a
//!   full destination spills or dead-letters instead.
//! - [`Engine::reconfigure`] blocks while it creates plugin instances.
//! - [`Engine::barrier`] blocks until every event published before it is
//!   processed; [`Engine::shutdown`] until every accepted record is delivered
//!   or dead-lettered (within [`EngineConfig::drain_timeout`]).

#![warn(missing_docs)]

pub mod cel;
pub mod config;
pub mod conformance;
pub mod dead_letter_file;
pub mod events;
pub mod ingest;
pub mod json;
pub mod metrics;
pub mod plugin;

mod ack;
mod delivery;
mod disk_buffer;
mod encode;
mod engine;
mod replay;
mod route;
mod settle;
mod short_eq;
mod tap;

pub use config::{
    ConfigError, ConfigErrors, DeliveryConfig, DestinationSpec, PipelineSpec, SourceSpec,
    SubscriptionSpec,
};
pub use delivery::{DeadLetterHolds, DeadLetterSink};
pub use engine::{
    Engine, EngineConfig, EngineError, FailedStart, MissingPlugin, PendingPublish, PublishReport,
    Publisher, RejectedLine, Summary,
};
pub use replay::ReplayError;
pub use tap::{Tap, TapOpener};

/// Engine internals that Sluice's own benchmarks, tests and fuzz targets
/// reach into (the router, the encoder, delivery, the disk buffer, the
/// filter oracle). **Not part of the API**: anything here may change or go
/// away in any release; an embedder uses the items above.
#[doc(hidden)]
pub mod internal {
    /// The filter oracle and the reference interpreter.
    pub mod cel {
        pub use crate::cel::differential::{Agreement, compare};
        pub use crate::cel::fallback::eval_reference;
    }
    /// Compiled sources.
    pub mod config {
        pub use crate::config::{CompiledSource, compile_source};
    }
    /// Delivery tasks.
    pub mod delivery {
        pub use crate::delivery::{Chunk, Delivery, SinkSource};
    }
    /// The disk buffer.
    pub mod disk_buffer {
        pub use crate::disk_buffer::{DiskBuffer, DiskOptions, SyncSignal};
    }
    /// Projection and records.
    pub mod encode {
        pub use crate::encode::{Encoder, Projection, Record, check_roundtrip};
    }
    /// Parsing and framing below the public NDJSON reader.
    pub mod ingest {
        pub use crate::ingest::lazy::LazyReader;
        pub use crate::ingest::parse::EventParser;
        pub use crate::ingest::{lines, shard_of};
    }
    /// Settling events on demand, and its oracle.
    pub mod settle {
        pub use crate::settle::{Settled, check, settle, snapshot_of};
    }
    /// The routing snapshot.
    pub mod route {
        pub use crate::route::{Snapshot, SubscriptionRt};
    }
}
