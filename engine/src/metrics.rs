//! Counters and gauges, rendered as Prometheus text (`sluice_*`).
//!
//! Hot-path counters are accumulated per worker and per batch, then added to
//! these shared atomics once per batch, so that workers never contend on a
//! cache line per event.

use crate::ingest::RejectReason;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Counters of one subscription, kept across reconfigurations while its id lives.
#[derive(Debug, Default)]
pub struct SubscriptionStats {
    /// Events of a wanted type and account that reached this subscription.
    pub(crate) evaluated: AtomicU64,
    /// Events that passed its filter (or that it takes unfiltered).
    pub(crate) matched: AtomicU64,
    /// Events whose filter failed (missing field, type error): not matched.
    pub(crate) filter_errors: AtomicU64,
}

impl SubscriptionStats {
    /// A copy of these counters, as values.
    pub fn counts(&self) -> SubscriptionCounts {
        SubscriptionCounts {
            evaluated: self.evaluated.load(Relaxed),
            matched: self.matched.load(Relaxed),
            filter_errors: self.filter_errors.load(Relaxed),
        }
    }
}

/// Latency from ingest (the batch's receive time) to the sink's ack, in
/// microseconds, 1 µs to 1 hour at 3 significant digits.
pub type LatencyHistogram = hdrhistogram::Histogram<u64>;

/// A new, empty latency histogram.
pub fn latency_histogram() -> LatencyHistogram {
    hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .expect("constant bounds that hdrhistogram accepts")
}

/// Counters of one destination.
#[derive(Debug)]
pub struct DestinationStats {
    /// Records the sink reported delivered.
    pub(crate) delivered: AtomicU64,
    /// Bytes of those records.
    pub(crate) delivered_bytes: AtomicU64,
    /// Batches sent (each `send` call).
    pub(crate) batches: AtomicU64,
    /// Sends: hand-offs of one or more batches to a thread for their
    /// plugin calls (batches share a send when many small ones are ready).
    pub(crate) sends: AtomicU64,
    /// Records retried (each retry of each record counts once).
    pub(crate) retried: AtomicU64,
    /// Records handed to delivery and not yet delivered or dead-lettered.
    pub(crate) queued: AtomicU64,
    /// Bytes of those.
    pub(crate) queued_bytes: AtomicU64,
    /// Batches in flight.
    pub(crate) in_flight: AtomicU64,
    /// Plugin calls that broke the ABI contract (bad outcome code, unset outcome, bad status).
    pub(crate) protocol_errors: AtomicU64,
    /// Plugin calls that failed as a whole.
    pub(crate) send_errors: AtomicU64,
    /// Sends given up on because the plugin did not return in time.
    pub(crate) send_timeouts: AtomicU64,
    /// 1 while the destination's last call failed as a whole.
    pub(crate) unhealthy: AtomicU64,
    /// Records shed because the buffer was full (`when_full = "drop_newest"`).
    pub(crate) dropped: AtomicU64,
    /// Batches the adaptive concurrency allows in flight now.
    pub(crate) concurrency_limit: AtomicU64,
    /// Bytes of the disk buffer's segment files.
    pub(crate) disk_bytes: AtomicU64,
    /// Records in the disk buffer not yet delivered or dead-lettered.
    pub(crate) disk_records: AtomicU64,
    /// Records read back from the disk buffer after a restart.
    pub(crate) disk_replayed: AtomicU64,
    /// Damaged disk-buffer data found and cut off (torn tails, bad CRCs), in bytes.
    pub(crate) disk_repaired_bytes: AtomicU64,
    /// Records lost to disk-buffer damage (known from the gap in sequence numbers).
    pub(crate) disk_lost_records: AtomicU64,
    /// Disk-buffer writes or fsyncs that failed.
    pub(crate) disk_errors: AtomicU64,
    /// Dead-lettered records by reason.
    pub(crate) dead_lettered: Mutex<BTreeMap<String, u64>>,
    /// Records waiting because the dead-letter queue is full (the
    /// destination is paused while this is over 0).
    pub(crate) paused: AtomicU64,
    /// Dead-lettered records sent again by replays.
    pub(crate) replayed: AtomicU64,
    /// While its plugin instance could not be created: why, and since when
    /// (it is tried again with backoff; the destination is unhealthy).
    pub(crate) start_error: Mutex<Option<(String, std::time::Instant)>>,
    /// 1 once the engine gave up creating it (`EngineConfig::start_timeout`):
    /// its records are dead-lettered with the reason.
    pub(crate) start_failed: AtomicU64,
    /// Counters and gauges the plugin reports through the host callbacks.
    pub(crate) plugin: Mutex<BTreeMap<String, PluginValue>>,
    /// Ingest-to-ack latency of delivered records.
    pub(crate) latency: Mutex<LatencyHistogram>,
}

impl Default for DestinationStats {
    fn default() -> Self {
        DestinationStats {
            delivered: AtomicU64::new(0),
            delivered_bytes: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            sends: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            send_timeouts: AtomicU64::new(0),
            unhealthy: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            concurrency_limit: AtomicU64::new(0),
            disk_bytes: AtomicU64::new(0),
            disk_records: AtomicU64::new(0),
            disk_replayed: AtomicU64::new(0),
            disk_repaired_bytes: AtomicU64::new(0),
            disk_lost_records: AtomicU64::new(0),
            disk_errors: AtomicU64::new(0),
            dead_lettered: Mutex::new(BTreeMap::new()),
            paused: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            start_error: Mutex::new(None),
            start_failed: AtomicU64::new(0),
            plugin: Mutex::new(BTreeMap::new()),
            latency: Mutex::new(latency_histogram()),
        }
    }
}

/// A value a plugin reported.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PluginValue {
    /// Monotonic counter.
    Counter(u64),
    /// Gauge.
    Gauge(f64),
}

impl DestinationStats {
    /// Counts dead-lettered records under `reason`.
    pub(crate) fn dead_letter(&self, reason: &str, n: u64) {
        let mut m = self.dead_lettered.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(reason.to_string()).or_default() += n;
    }

    /// Total dead-lettered records.
    pub(crate) fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// Counts records sent again by a replay.
    pub(crate) fn count_replayed(&self, n: u64) {
        self.replayed.fetch_add(n, Relaxed);
    }

    /// Records the sink reported delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Relaxed)
    }

    /// A copy of these counters, as values.
    pub fn counts(&self) -> DestinationCounts {
        let latency = {
            let h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
            if h.is_empty() {
                (0, 0)
            } else {
                (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
            }
        };
        DestinationCounts {
            delivered: self.delivered.load(Relaxed),
            delivered_bytes: self.delivered_bytes.load(Relaxed),
            batches: self.batches.load(Relaxed),
            sends: self.sends.load(Relaxed),
            retried: self.retried.load(Relaxed),
            queued: self.queued.load(Relaxed),
            queued_bytes: self.queued_bytes.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
            send_timeouts: self.send_timeouts.load(Relaxed),
            unhealthy: self.unhealthy.load(Relaxed) != 0,
            dropped: self.dropped.load(Relaxed),
            concurrency_limit: self.concurrency_limit.load(Relaxed),
            disk_bytes: self.disk_bytes.load(Relaxed),
            disk_records: self.disk_records.load(Relaxed),
            disk_replayed: self.disk_replayed.load(Relaxed),
            disk_repaired_bytes: self.disk_repaired_bytes.load(Relaxed),
            disk_lost_records: self.disk_lost_records.load(Relaxed),
            disk_errors: self.disk_errors.load(Relaxed),
            dead_lettered: self
                .dead_lettered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            paused: self.paused.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            latency_p50_us: latency.0,
            latency_p99_us: latency.1,
            start_error: self
                .start_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|(e, since)| (e.clone(), since.elapsed())),
            start_failed: self.start_failed.load(Relaxed) != 0,
            plugin: self
                .plugin
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// The counters of one destination at one moment, as values
/// ([`Metrics::snapshot`], [`DestinationStats::counts`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DestinationCounts {
    /// Records the sink reported delivered.
    pub delivered: u64,
    /// Bytes of those records.
    pub delivered_bytes: u64,
    /// Batches sent (each `send` call).
    pub batches: u64,
    /// Sends: hand-offs of one or more batches to a thread for their
    /// plugin calls.
    pub sends: u64,
    /// Records retried (each retry of each record counts once).
    pub retried: u64,
    /// Records handed to delivery and not yet delivered or dead-lettered.
    pub queued: u64,
    /// Bytes of those.
    pub queued_bytes: u64,
    /// Batches in flight.
    pub in_flight: u64,
    /// Plugin calls that broke the ABI contract.
    pub protocol_errors: u64,
    /// Plugin calls that failed as a whole.
    pub send_errors: u64,
    /// Sends given up on because the plugin did not return in time.
    pub send_timeouts: u64,
    /// Whether the destination's last call failed as a whole (or its plugin
    /// instance could not be created).
    pub unhealthy: bool,
    /// Records shed because the buffer was full (`when_full = "drop_newest"`).
    pub dropped: u64,
    /// Batches the adaptive concurrency allows in flight now.
    pub concurrency_limit: u64,
    /// Bytes of the disk buffer's segment files.
    pub disk_bytes: u64,
    /// Records in the disk buffer not yet delivered or dead-lettered.
    pub disk_records: u64,
    /// Records read back from the disk buffer after a restart.
    pub disk_replayed: u64,
    /// Damaged disk-buffer data found and cut off, in bytes.
    pub disk_repaired_bytes: u64,
    /// Records lost to disk-buffer damage.
    pub disk_lost_records: u64,
    /// Disk-buffer writes or fsyncs that failed.
    pub disk_errors: u64,
    /// Dead-lettered records by reason.
    pub dead_lettered: BTreeMap<String, u64>,
    /// Records waiting because the dead-letter queue is full: while over 0
    /// the destination is paused.
    pub paused: u64,
    /// Dead-lettered records sent again by replays.
    pub replayed: u64,
    /// Ingest-to-ack latency of delivered records, median and 99th
    /// percentile, in microseconds (0 before the first).
    pub latency_p50_us: u64,
    /// See `latency_p50_us`.
    pub latency_p99_us: u64,
    /// While its plugin instance cannot be created: why, and for how long.
    pub start_error: Option<(String, std::time::Duration)>,
    /// Whether the engine gave up creating it (its records are dead-lettered).
    pub start_failed: bool,
    /// Counters and gauges the plugin reports.
    pub plugin: BTreeMap<String, PluginValue>,
}

impl DestinationCounts {
    /// Total dead-lettered records.
    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered.values().sum()
    }
}

/// The counters of one subscription at one moment, as values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionCounts {
    /// Events of a wanted type and account that reached it.
    pub evaluated: u64,
    /// Events that passed its filter (or that it takes unfiltered).
    pub matched: u64,
    /// Events whose filter failed (missing field, type error): not matched.
    pub filter_errors: u64,
}

/// Sampled time per worker stage at one moment, as values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageCounts {
    /// Sampled events.
    pub samples: u64,
    /// Nanoseconds parsing.
    pub parse_ns: u64,
    /// Nanoseconds looking up routes.
    pub route_ns: u64,
    /// Nanoseconds evaluating filters.
    pub filter_ns: u64,
    /// Nanoseconds encoding records.
    pub encode_ns: u64,
}

/// Every metric of an engine at one moment, as values ([`Metrics::snapshot`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Events received (lines of NDJSON, or single events).
    pub events_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Rejected events by reason (every reason present, zero included).
    pub rejected: BTreeMap<RejectReason, u64>,
    /// Events parsed that no subscription wanted.
    pub unrouted: u64,
    /// Events settled by the on-demand reader from their envelope and the
    /// fields their filters read (none wanted them, or every filter
    /// rejected them), without validating the rest of the event.
    pub unvalidated: u64,
    /// Records encoded (one per event and matching subscription).
    pub records_encoded: u64,
    /// Configuration snapshots applied.
    pub reconfigurations: u64,
    /// Input batches processed by workers.
    pub batches_processed: u64,
    /// Sampled time per stage (with `EngineConfig::stage_sampling`).
    pub stages: StageCounts,
    /// Per subscription id.
    pub subscriptions: BTreeMap<String, SubscriptionCounts>,
    /// Per destination id.
    pub destinations: BTreeMap<String, DestinationCounts>,
}

impl MetricsSnapshot {
    /// Total rejected events.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Every metric of an engine.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events received (lines of NDJSON, or single events).
    pub(crate) events_in: AtomicU64,
    /// Bytes received.
    pub(crate) bytes_in: AtomicU64,
    /// Rejected events by reason, indexed by [`RejectReason::index`].
    pub(crate) rejected: [AtomicU64; RejectReason::ALL.len()],
    /// Events parsed that no subscription wanted (no route for account and type).
    pub(crate) unrouted: AtomicU64,
    /// Events settled on demand without the full validation.
    pub(crate) unvalidated: AtomicU64,
    /// Records encoded (one per event and matching subscription).
    pub(crate) records_encoded: AtomicU64,
    /// Configuration snapshots applied.
    pub(crate) reconfigurations: AtomicU64,
    /// Input batches processed by workers.
    pub(crate) batches_processed: AtomicU64,
    /// Sampled time spent per stage (with `EngineConfig::stage_sampling`).
    pub(crate) stages: StageTimes,
    subscriptions: Mutex<BTreeMap<String, Arc<SubscriptionStats>>>,
    destinations: Mutex<BTreeMap<String, Arc<DestinationStats>>>,
}

/// Time spent in each worker stage, sampled on one event in 64.
#[derive(Debug, Default)]
pub struct StageTimes {
    /// Sampled events.
    pub(crate) samples: AtomicU64,
    /// Nanoseconds parsing (simd-json and envelope checks).
    pub(crate) parse_ns: AtomicU64,
    /// Nanoseconds looking up routes.
    pub(crate) route_ns: AtomicU64,
    /// Nanoseconds evaluating filters.
    pub(crate) filter_ns: AtomicU64,
    /// Nanoseconds encoding records.
    pub(crate) encode_ns: AtomicU64,
}

impl Metrics {
    /// The ingest-to-ack latency of every destination, merged.
    pub fn latency(&self) -> LatencyHistogram {
        let mut all = latency_histogram();
        for (_, d) in self.destination_stats() {
            let h = d.latency.lock().unwrap_or_else(|p| p.into_inner());
            let _ = all.add(&*h);
        }
        all
    }

    /// Every metric, as values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            events_in: self.events_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            rejected: RejectReason::ALL
                .iter()
                .map(|r| (*r, self.rejected[r.index()].load(Relaxed)))
                .collect(),
            unrouted: self.unrouted.load(Relaxed),
            unvalidated: self.unvalidated.load(Relaxed),
            records_encoded: self.records_encoded.load(Relaxed),
            reconfigurations: self.reconfigurations.load(Relaxed),
            batches_processed: self.batches_processed.load(Relaxed),
            stages: StageCounts {
                samples: self.stages.samples.load(Relaxed),
                parse_ns: self.stages.parse_ns.load(Relaxed),
                route_ns: self.stages.route_ns.load(Relaxed),
                filter_ns: self.stages.filter_ns.load(Relaxed),
                encode_ns: self.stages.encode_ns.load(Relaxed),
            },
            subscriptions: self.subscription_counts().into_iter().collect(),
            destinations: self
                .destination_stats()
                .into_iter()
                .map(|(id, d)| (id, d.counts()))
                .collect(),
        }
    }

    /// The counters of destination `id`, as values (`None` if the engine
    /// never had it).
    pub fn destination_counts(&self, id: &str) -> Option<DestinationCounts> {
        let m = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        m.get(id).map(|d| d.counts())
    }

    /// The counters of subscription `id`, as values (`None` if it never
    /// saw an event).
    pub fn subscription_counts_of(&self, id: &str) -> Option<SubscriptionCounts> {
        let m = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        m.get(id).map(|s| s.counts())
    }

    /// Events received so far (cheaper than a whole [`Metrics::snapshot`]).
    pub fn events_in(&self) -> u64 {
        self.events_in.load(Relaxed)
    }

    /// The counters of subscription `id` (created on first use).
    pub(crate) fn subscription(&self, id: &str) -> Arc<SubscriptionStats> {
        let mut m = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id.to_string()).or_default().clone()
    }

    /// The counters of destination `id` (created on first use).
    pub(crate) fn destination(&self, id: &str) -> Arc<DestinationStats> {
        let mut m = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id.to_string()).or_default().clone()
    }

    /// A copy of every subscription's counters, by id.
    pub(crate) fn subscription_counts(&self) -> Vec<(String, SubscriptionCounts)> {
        let m = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(id, s)| (id.clone(), s.counts())).collect()
    }

    /// Every destination's live counters.
    pub(crate) fn destination_stats(&self) -> Vec<(String, Arc<DestinationStats>)> {
        let m = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Total rejected events.
    pub(crate) fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Rejected events of one reason.
    pub(crate) fn rejected_for(&self, r: RejectReason) -> u64 {
        self.rejected[r.index()].load(Relaxed)
    }

    /// Renders every metric in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let mut s = String::with_capacity(4096);
        let counter = |s: &mut String, name: &str, help: &str| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        counter(&mut s, "sluice_events_in_total", "Events received.");
        let _ = writeln!(s, "sluice_events_in_total {}", self.events_in.load(Relaxed));
        counter(&mut s, "sluice_bytes_in_total", "Bytes of events received.");
        let _ = writeln!(s, "sluice_bytes_in_total {}", self.bytes_in.load(Relaxed));
        counter(
            &mut s,
            "sluice_events_rejected_total",
            "Events rejected, by reason.",
        );
        for r in RejectReason::ALL {
            let _ = writeln!(
                s,
                "sluice_events_rejected_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.rejected[r.index()].load(Relaxed)
            );
        }
        counter(
            &mut s,
            "sluice_events_unrouted_total",
            "Valid events no subscription wanted.",
        );
        let _ = writeln!(
            s,
            "sluice_events_unrouted_total {}",
            self.unrouted.load(Relaxed)
        );
        counter(
            &mut s,
            "sluice_events_unvalidated_total",
            "Events settled from their envelope and the fields their filters read (no subscription wanted them, or every filter rejected them), without validating the rest: counted as accepted, never as rejected.",
        );
        let _ = writeln!(
            s,
            "sluice_events_unvalidated_total {}",
            self.unvalidated.load(Relaxed)
        );
        counter(
            &mut s,
            "sluice_records_encoded_total",
            "Records encoded (event x matching subscription).",
        );
        let _ = writeln!(
            s,
            "sluice_records_encoded_total {}",
            self.records_encoded.load(Relaxed)
        );
        counter(
            &mut s,
            "sluice_reconfigurations_total",
            "Configuration snapshots applied.",
        );
        let _ = writeln!(
            s,
            "sluice_reconfigurations_total {}",
            self.reconfigurations.load(Relaxed)
        );

        let subs = self.subscription_counts();
        counter(
            &mut s,
            "sluice_subscription_evaluated_total",
            "Events offered to a subscription's source.",
        );
        for (id, c) in &subs {
            let _ = writeln!(
                s,
                "sluice_subscription_evaluated_total{{subscription=\"{}\"}} {}",
                esc(id),
                c.evaluated
            );
        }
        counter(
            &mut s,
            "sluice_subscription_matched_total",
            "Events that matched a subscription.",
        );
        for (id, c) in &subs {
            let _ = writeln!(
                s,
                "sluice_subscription_matched_total{{subscription=\"{}\"}} {}",
                esc(id),
                c.matched
            );
        }
        counter(
            &mut s,
            "sluice_subscription_filter_errors_total",
            "Filter evaluations that failed (counted as not matched).",
        );
        for (id, c) in &subs {
            let _ = writeln!(
                s,
                "sluice_subscription_filter_errors_total{{subscription=\"{}\"}} {}",
                esc(id),
                c.filter_errors
            );
        }

        let dests = self.destination_stats();
        type Row = (
            &'static str,
            &'static str,
            &'static str,
            fn(&DestinationStats) -> u64,
        );
        let per_dest: [Row; 21] = [
            (
                "sluice_destination_delivered_total",
                "counter",
                "Records delivered.",
                |d| d.delivered.load(Relaxed),
            ),
            (
                "sluice_destination_delivered_bytes_total",
                "counter",
                "Bytes of records delivered.",
                |d| d.delivered_bytes.load(Relaxed),
            ),
            (
                "sluice_destination_batches_total",
                "counter",
                "Batches sent.",
                |d| d.batches.load(Relaxed),
            ),
            (
                "sluice_destination_sends_total",
                "counter",
                "Sends: hand-offs of one or more batches to a thread for their plugin calls.",
                |d| d.sends.load(Relaxed),
            ),
            (
                "sluice_destination_retried_total",
                "counter",
                "Record retries.",
                |d| d.retried.load(Relaxed),
            ),
            (
                "sluice_destination_send_errors_total",
                "counter",
                "Sends that failed as a whole.",
                |d| d.send_errors.load(Relaxed),
            ),
            (
                "sluice_destination_send_timeouts_total",
                "counter",
                "Sends given up on because the plugin did not return within send_timeout_ms.",
                |d| d.send_timeouts.load(Relaxed),
            ),
            (
                "sluice_destination_protocol_errors_total",
                "counter",
                "Plugin calls that broke the ABI contract.",
                |d| d.protocol_errors.load(Relaxed),
            ),
            (
                "sluice_destination_queued_records",
                "gauge",
                "Records waiting for delivery.",
                |d| d.queued.load(Relaxed),
            ),
            (
                "sluice_destination_queued_bytes",
                "gauge",
                "Bytes waiting for delivery.",
                |d| d.queued_bytes.load(Relaxed),
            ),
            (
                "sluice_destination_in_flight_batches",
                "gauge",
                "Batches being sent.",
                |d| d.in_flight.load(Relaxed),
            ),
            (
                "sluice_destination_concurrency_limit",
                "gauge",
                "Batches the adaptive concurrency allows in flight.",
                |d| d.concurrency_limit.load(Relaxed),
            ),
            (
                "sluice_destination_dropped_total",
                "counter",
                "Records shed because the buffer was full (when_full = drop_newest).",
                |d| d.dropped.load(Relaxed),
            ),
            (
                "sluice_destination_disk_buffer_bytes",
                "gauge",
                "Bytes of the disk buffer's segment files.",
                |d| d.disk_bytes.load(Relaxed),
            ),
            (
                "sluice_destination_disk_buffer_records",
                "gauge",
                "Records in the disk buffer not yet delivered or dead-lettered.",
                |d| d.disk_records.load(Relaxed),
            ),
            (
                "sluice_destination_disk_replayed_total",
                "counter",
                "Records read back from the disk buffer after a restart.",
                |d| d.disk_replayed.load(Relaxed),
            ),
            (
                "sluice_destination_disk_repaired_bytes_total",
                "counter",
                "Damaged disk-buffer bytes found and cut off (torn tails, bad CRCs).",
                |d| d.disk_repaired_bytes.load(Relaxed),
            ),
            (
                "sluice_destination_disk_lost_records_total",
                "counter",
                "Records lost to disk-buffer damage.",
                |d| d.disk_lost_records.load(Relaxed),
            ),
            (
                "sluice_destination_disk_errors_total",
                "counter",
                "Disk-buffer writes or fsyncs that failed.",
                |d| d.disk_errors.load(Relaxed),
            ),
            (
                "sluice_destination_paused_records",
                "gauge",
                "Records waiting because the dead-letter queue is full (the destination is paused while over 0).",
                |d| d.paused.load(Relaxed),
            ),
            (
                "sluice_destination_replayed_total",
                "counter",
                "Dead-lettered records sent again by replays.",
                |d| d.replayed.load(Relaxed),
            ),
        ];
        for (name, kind, help, get) in per_dest {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (id, d) in &dests {
                let _ = writeln!(s, "{name}{{destination=\"{}\"}} {}", esc(id), get(d));
            }
        }
        let _ = writeln!(
            s,
            "# HELP sluice_destination_unhealthy 1 while the destination's last send failed as a whole.\n# TYPE sluice_destination_unhealthy gauge"
        );
        for (id, d) in &dests {
            let _ = writeln!(
                s,
                "sluice_destination_unhealthy{{destination=\"{}\"}} {}",
                esc(id),
                d.unhealthy.load(Relaxed)
            );
        }
        counter(
            &mut s,
            "sluice_destination_dead_lettered_total",
            "Records dead-lettered, by reason.",
        );
        for (id, d) in &dests {
            let m = d.dead_lettered.lock().unwrap_or_else(|p| p.into_inner());
            for (reason, n) in m.iter() {
                let _ = writeln!(
                    s,
                    "sluice_destination_dead_lettered_total{{destination=\"{}\",reason=\"{}\"}} {n}",
                    esc(id),
                    esc(reason)
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP sluice_destination_latency_seconds Ingest-to-ack latency of delivered records.\n# TYPE sluice_destination_latency_seconds summary"
        );
        for (id, d) in &dests {
            let h = d.latency.lock().unwrap_or_else(|p| p.into_inner());
            for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
                let _ = writeln!(
                    s,
                    "sluice_destination_latency_seconds{{destination=\"{}\",quantile=\"{q}\"}} {}",
                    esc(id),
                    h.value_at_quantile(q) as f64 / 1e6
                );
            }
            let _ = writeln!(
                s,
                "sluice_destination_latency_seconds_count{{destination=\"{}\"}} {}",
                esc(id),
                h.len()
            );
        }
        for (id, d) in &dests {
            let m = d.plugin.lock().unwrap_or_else(|p| p.into_inner());
            for (name, v) in m.iter() {
                match v {
                    PluginValue::Counter(c) => {
                        let _ = writeln!(
                            s,
                            "sluice_plugin_{}_total{{destination=\"{}\"}} {c}",
                            sanitize(name),
                            esc(id)
                        );
                    }
                    PluginValue::Gauge(g) => {
                        let _ = writeln!(
                            s,
                            "sluice_plugin_{}{{destination=\"{}\"}} {g}",
                            sanitize(name),
                            esc(id)
                        );
                    }
                }
            }
        }
        s
    }
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_escaped_and_every_reason() {
        let m = Metrics::default();
        m.rejected[RejectReason::BadJson.index()].fetch_add(3, Relaxed);
        m.subscription("esb_\"x\"").matched.fetch_add(2, Relaxed);
        m.destination("ed_1").dead_letter("too \"big\"", 1);
        let text = m.render_prometheus();
        assert!(text.contains("sluice_events_rejected_total{reason=\"bad_json\"} 3"));
        assert!(text.contains("sluice_events_rejected_total{reason=\"too_deep\"} 0"));
        assert!(
            text.contains("sluice_subscription_matched_total{subscription=\"esb_\\\"x\\\"\"} 2")
        );
        assert!(text.contains("reason=\"too \\\"big\\\"\"} 1"));
    }
}
