//! What runs measured: plain data, written to and read from the JSON
//! records (`--json`), shared by the harnesses, the report and the plots.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Latency percentiles, in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th.
    pub p99: u64,
    /// 99.9th.
    pub p999: u64,
    /// Maximum.
    pub max: u64,
    /// Records measured.
    pub count: u64,
}

/// What one run measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    /// Events published.
    pub events: u64,
    /// Bytes of those events.
    pub bytes_in: u64,
    /// From the first publish to the last record delivered.
    pub elapsed_s: f64,
    /// Events per second.
    pub events_per_s: f64,
    /// Input megabytes (10^6) per second.
    pub mb_in_per_s: f64,
    /// Delivered megabytes per second.
    pub mb_out_per_s: f64,
    /// Offered rate (0: as fast as possible).
    pub offered_rate: u64,
    /// Records matched.
    pub matched: u64,
    /// Records delivered.
    pub delivered: u64,
    /// Bytes delivered.
    pub delivered_bytes: u64,
    /// Calls to the sinks (flights of batches) that delivered them.
    #[serde(default)]
    pub sends: u64,
    /// Events rejected.
    pub rejected: u64,
    /// Filter errors.
    pub filter_errors: u64,
    /// Events settled from the fields their filters read, without the full
    /// parse (`sluice_events_unvalidated_total`).
    #[serde(default)]
    pub unvalidated: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Ingest-to-ack latency.
    pub latency_us: Latency,
    /// (percentile, microseconds) pairs, for plots.
    pub latency_curve: Vec<(f64, u64)>,
    /// (seconds since start, events/s over the last interval), for plots.
    pub timeline: Vec<(f64, f64)>,
    /// Peak resident memory during the run.
    pub peak_rss_mib: Option<f64>,
    /// Heap allocations per event (the whole process).
    pub allocs_per_event: Option<f64>,
    /// CPU seconds by role.
    pub cpu_s: BTreeMap<String, f64>,
    /// Share of the worker time per stage (sampled one event in 64).
    pub stage_share: BTreeMap<String, f64>,
}

impl RunResult {
    /// CPU seconds of every thread of the process in the run.
    pub fn cpu_total_s(&self) -> f64 {
        self.cpu_s.values().sum()
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Millis {
    /// Requests measured.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// What the API benchmark measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ApiResult {
    /// Subscriptions stored.
    pub subscriptions: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// GET /event_subscriptions/{id}.
    pub get: Millis,
    /// GET /event_subscriptions?limit=100 (random pages).
    pub list: Millis,
    /// Requests per second over both.
    pub requests_per_s: f64,
    /// PATCH of a subscription's filter: stored and live in the engine when it returns.
    pub change: Millis,
    /// A change checked end to end: from the PATCH to the first record its new filter selects, delivered.
    pub change_to_first_record_ms: f64,
    /// The console's files, in bytes (its page weight).
    #[serde(default)]
    pub console_bytes: usize,
    /// Each console view, from navigating to it to its data shown, in a
    /// real browser (empty when Chromium is not installed).
    #[serde(default)]
    pub console_views: Vec<ConsoleView>,
}

/// One console view's time to ready.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ConsoleView {
    /// The view.
    pub view: String,
    /// Milliseconds from navigation to its data on screen (median of 5).
    pub ms: f64,
}

/// What the baseline measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BaselineResult {
    /// Events processed.
    pub events: u64,
    /// Threads used.
    pub threads: usize,
    /// Time taken.
    pub elapsed_s: f64,
    /// Events per second.
    pub events_per_s: f64,
    /// Records matched (and encoded).
    pub matched: u64,
}
