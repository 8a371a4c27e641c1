//! Benchmark records (`sluice bench --json`), the text report, and the
//! regression guard that compares two records against their measured noise.

use crate::results::BaselineResult;
use crate::results::RunResult;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A statistic over repeated runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Stat {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// (max - min) / median, in percent: the noise this record measured.
    pub spread_pct: f64,
}

impl Stat {
    /// The statistic of `values` (empty: all zero).
    pub fn of(values: &[f64]) -> Stat {
        if values.is_empty() {
            return Stat::default();
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        let (min, max) = (v[0], v[v.len() - 1]);
        Stat {
            median,
            min,
            max,
            spread_pct: if median > 0.0 {
                (max - min) / median * 100.0
            } else {
                0.0
            },
        }
    }
}

/// The summary of a record.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Events per second.
    pub events_per_s: Stat,
    /// Input MB/s.
    pub mb_in_per_s: Stat,
    /// Delivered MB/s.
    pub mb_out_per_s: Stat,
    /// Latency p50 (µs), median over runs.
    pub latency_p50_us: f64,
    /// Latency p99 (µs), median over runs.
    pub latency_p99_us: f64,
    /// Latency p99.9 (µs), median over runs.
    pub latency_p999_us: f64,
    /// Largest latency of any run (µs).
    pub latency_max_us: f64,
    /// Largest peak RSS of any run (MiB).
    pub peak_rss_mib: Option<f64>,
    /// Allocations per event, median over runs.
    pub allocs_per_event: Option<f64>,
    /// CPU share by role, over all runs.
    pub cpu_share: BTreeMap<String, f64>,
    /// Worker time per stage, over all runs.
    pub stage_share: BTreeMap<String, f64>,
}

/// The baseline and Sluice's ratio to it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BaselineReport {
    /// What the baseline did.
    pub result: BaselineResult,
    /// Sluice's median events/s over the baseline's.
    pub ratio: f64,
}

/// A benchmark record: one scenario, several runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Scenario name.
    pub scenario: String,
    /// What it shows.
    pub description: String,
    /// Git commit.
    pub commit: String,
    /// Machine.
    pub machine: String,
    /// When (RFC 3339).
    pub date: String,
    /// Events per run.
    pub events: u64,
    /// Average event size in bytes.
    pub event_bytes: f64,
    /// Accounts in the traffic.
    pub accounts: u32,
    /// Subscriptions after expansion.
    pub subscriptions: usize,
    /// `in-process` or `http`.
    pub mode: String,
    /// Filter workers.
    pub workers: usize,
    /// The runs.
    pub runs: Vec<RunResult>,
    /// Cluster mode: the same events through one `sluice serve` without the
    /// stream, one run per round, interleaved with `runs`.
    #[serde(default)]
    pub reference: Vec<RunResult>,
    /// `--versus-full-parse`: the same events with the full parse forced
    /// (the on-demand reader off), one run per round, interleaved with `runs`.
    #[serde(default)]
    pub full_parse: Vec<RunResult>,
    /// Their summary.
    pub summary: Summary,
    /// The naive baseline, if run.
    pub baseline: Option<BaselineReport>,
    /// The control-plane benchmark, if the scenario has one.
    #[serde(default)]
    pub api: Option<crate::results::ApiResult>,
    /// What the local sink servers (the vendors' stand-ins) saw.
    #[serde(default)]
    pub sink_servers: Vec<SinkServerReport>,
}

/// What a local sink server saw over all the runs of a scenario.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SinkServerReport {
    /// `HTTP`, `AWS`, `Datadog` or `Azure`.
    pub server: String,
    /// Records counted in the request bodies.
    pub records: u64,
    /// Requests carrying records.
    pub requests: u64,
    /// Client connections seen.
    pub connections: u64,
    /// Request body bytes as sent.
    pub wire_bytes: u64,
    /// Request body bytes after gunzip.
    pub body_bytes: u64,
    /// `body_bytes / wire_bytes` (1 when not compressed).
    pub compression_ratio: f64,
}

impl Record {
    /// Fills `summary` (and the baseline ratio) from `runs`.
    pub fn summarize(&mut self) {
        let col = |f: fn(&RunResult) -> f64| -> Vec<f64> { self.runs.iter().map(f).collect() };
        let eps = Stat::of(&col(|r| r.events_per_s));
        let med = |f: fn(&RunResult) -> f64| Stat::of(&col(f)).median;
        let mut cpu: BTreeMap<String, f64> = BTreeMap::new();
        let mut stages: BTreeMap<String, f64> = BTreeMap::new();
        for r in &self.runs {
            for (k, v) in &r.cpu_s {
                *cpu.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &r.stage_share {
                *stages.entry(k.clone()).or_default() += v / self.runs.len().max(1) as f64;
            }
        }
        let total: f64 = cpu.values().sum();
        for v in cpu.values_mut() {
            *v = if total > 0.0 { *v / total } else { 0.0 };
        }
        let allocs: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| r.allocs_per_event)
            .collect();
        self.summary = Summary {
            events_per_s: eps.clone(),
            mb_in_per_s: Stat::of(&col(|r| r.mb_in_per_s)),
            mb_out_per_s: Stat::of(&col(|r| r.mb_out_per_s)),
            latency_p50_us: med(|r| r.latency_us.p50 as f64),
            latency_p99_us: med(|r| r.latency_us.p99 as f64),
            latency_p999_us: med(|r| r.latency_us.p999 as f64),
            latency_max_us: self
                .runs
                .iter()
                .map(|r| r.latency_us.max as f64)
                .fold(0.0, f64::max),
            peak_rss_mib: self
                .runs
                .iter()
                .filter_map(|r| r.peak_rss_mib)
                .reduce(f64::max),
            allocs_per_event: (!allocs.is_empty()).then(|| Stat::of(&allocs).median),
            cpu_share: cpu,
            stage_share: stages,
        };
        if let Some(b) = &mut self.baseline {
            b.ratio = if b.result.events_per_s > 0.0 {
                eps.median / b.result.events_per_s
            } else {
                0.0
            };
        }
    }

    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {}: {}\n  {}subscriptions: {}, workers: {}, {} (commit {}, {})",
            self.scenario,
            self.description,
            if self.events > 0 {
                format!(
                    "{} events of {:.0} bytes, accounts: {}, ",
                    self.events, self.event_bytes, self.accounts
                )
            } else {
                String::new()
            },
            self.subscriptions,
            self.workers,
            self.mode,
            self.commit,
            self.machine
        );
        if !self.runs.is_empty() {
            self.traffic_text(&mut s);
        }
        if let Some(api) = &self.api {
            let _ = writeln!(
                s,
                "  API, {} subscriptions, {} clients: {} requests/s\n    GET one:  p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms ({} requests)\n    GET list: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms ({} requests)\n    PATCH a filter (stored and live when it returns): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} changes)\n    PATCH to the first record its new filter selects, delivered: {:.1} ms",
                api.subscriptions,
                api.clients,
                group(api.requests_per_s),
                api.get.p50,
                api.get.p99,
                api.get.max,
                api.get.count,
                api.list.p50,
                api.list.p99,
                api.list.max,
                api.list.count,
                api.change.p50,
                api.change.p99,
                api.change.max,
                api.change.count,
                api.change_to_first_record_ms
            );
            if !api.console_views.is_empty() {
                let _ = write!(
                    s,
                    "\n  console ({} bytes), navigation to data on screen (median of 5):",
                    group(api.console_bytes as f64)
                );
                for v in &api.console_views {
                    let _ = write!(s, "\n    {}: {:.0} ms", v.view, v.ms);
                }
            }
        }
        s
    }

    /// `--versus-full-parse`: the on-demand reader against the full parse
    /// of the same events, run in the same rounds.
    fn full_parse_text(&self, s: &mut String) {
        let rates = |runs: &[RunResult]| runs.iter().map(|r| r.events_per_s).collect::<Vec<_>>();
        let (on, full) = (rates(&self.runs), rates(&self.full_parse));
        let per_round: Vec<String> = on
            .iter()
            .zip(&full)
            .map(|(a, b)| format!("{:.2}x", a / b.max(1e-9)))
            .collect();
        let (mo, mf) = (Stat::of(&on).median, Stat::of(&full).median);
        let _ = writeln!(
            s,
            "  with the full parse forced (same events, same rounds): {} events/s median\n  on demand: {:.2}x the full parse (median over medians; per round {})",
            group(mf),
            mo / mf.max(1e-9),
            per_round.join(", ")
        );
        // Other processes only ever slow a round down: each mode's fastest
        // round is its least disturbed one.
        let (bo, bf) = (Stat::of(&on).max, Stat::of(&full).max);
        let _ = writeln!(
            s,
            "  fastest round of each: on demand {} events/s, full parse {} events/s: {:.2}x",
            group(bo),
            group(bf),
            bo / bf.max(1e-9)
        );
        // The same comparison in the process's own CPU time per event: time
        // other processes take is not in it (their contention for caches
        // and memory still is), and it shows what each mode costs, not
        // only how fast it went.
        let cpu_ns = |runs: &[RunResult]| {
            runs.iter()
                .map(|r| r.cpu_total_s() * 1e9 / r.events.max(1) as f64)
                .collect::<Vec<_>>()
        };
        let (con, cfull) = (cpu_ns(&self.runs), cpu_ns(&self.full_parse));
        if con.iter().chain(&cfull).all(|c| *c > 0.0) {
            let per_round: Vec<String> = cfull
                .iter()
                .zip(&con)
                .map(|(f, o)| format!("{:.2}x", f / o))
                .collect();
            let (mo, mf) = (Stat::of(&con).median, Stat::of(&cfull).median);
            let _ = writeln!(
                s,
                "  CPU time per event (the process's threads): on demand {mo:.0} ns, full parse {mf:.0} ns: {:.2}x (per round {})",
                mf / mo,
                per_round.join(", ")
            );
            // Why the events/s ratio can sit below the CPU one: a core
            // left idle (threads waiting on each other) is throughput
            // neither mode gets, and the cheaper mode leaves more of it.
            let busy = |runs: &[RunResult]| {
                let b: Vec<f64> = runs
                    .iter()
                    .map(|r| r.cpu_total_s() / r.elapsed_s.max(1e-9))
                    .collect();
                Stat::of(&b).median
            };
            let _ = writeln!(
                s,
                "  cores busy (the process's CPU time over wall time, median): on demand {:.2}, full parse {:.2}",
                busy(&self.runs),
                busy(&self.full_parse)
            );
        }
    }

    /// Cluster mode: the stream path against the same events through one
    /// `sluice serve` without the stream, run in the same rounds.
    fn reference_text(&self, s: &mut String) {
        let median = |runs: &[RunResult], f: fn(&RunResult) -> f64| {
            Stat::of(&runs.iter().map(f).collect::<Vec<_>>()).median
        };
        let cpu_us = |r: &RunResult| r.cpu_total_s() * 1e6 / r.events.max(1) as f64;
        let (c, r) = (&self.runs[..], &self.reference[..]);
        let (ce, re) = (median(c, |r| r.events_per_s), median(r, |r| r.events_per_s));
        let (cc, rc) = (median(c, cpu_us), median(r, cpu_us));
        let _ = writeln!(
            s,
            "  without the stream (one sluice serve, same events, same rounds): {} events/s median, latency p50 {} p99 {}, {:.2} CPU-us per event\n  the stream path: {:.0}% of that rate, {:.2} CPU-us per event ({:+.2} for the stream, all processes and NATS)",
            group(re),
            ms(median(r, |r| r.latency_us.p50 as f64)),
            ms(median(r, |r| r.latency_us.p99 as f64)),
            rc,
            if re > 0.0 { ce / re * 100.0 } else { 0.0 },
            cc,
            cc - rc
        );
    }

    fn traffic_text(&self, s: &mut String) {
        let s_ = &self.summary;
        for (i, r) in self.runs.iter().enumerate() {
            let offered = if r.offered_rate > 0 {
                format!(" (offered {})", group(r.offered_rate as f64))
            } else {
                String::new()
            };
            let dead = if r.dead_lettered > 0 {
                format!(", {} dead-lettered", r.dead_lettered)
            } else {
                String::new()
            };
            let sends = if r.sends > 0 {
                format!(" in {} sends", r.sends)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "  run {}: {} events/s{offered}, {:.0} MB/s in, {:.1} MB/s out, {} delivered{sends}{dead}, latency p50 {} p99 {} max {}",
                i + 1,
                group(r.events_per_s),
                r.mb_in_per_s,
                r.mb_out_per_s,
                r.delivered,
                ms(r.latency_us.p50 as f64),
                ms(r.latency_us.p99 as f64),
                ms(r.latency_us.max as f64),
            );
        }
        let e = &s_.events_per_s;
        let _ = writeln!(
            s,
            "  throughput: {} events/s median (min {}, max {}, spread {:.1}%), {:.0} MB/s in, {:.1} MB/s out",
            group(e.median),
            group(e.min),
            group(e.max),
            e.spread_pct,
            s_.mb_in_per_s.median,
            s_.mb_out_per_s.median
        );
        let _ = writeln!(
            s,
            "  latency ingest -> sink ack: p50 {}, p99 {}, p99.9 {}, max {}",
            ms(s_.latency_p50_us),
            ms(s_.latency_p99_us),
            ms(s_.latency_p999_us),
            ms(s_.latency_max_us)
        );
        let cpu: Vec<String> = s_
            .cpu_share
            .iter()
            .filter(|(_, v)| **v >= 0.005)
            .map(|(k, v)| format!("{k} {:.0}%", v * 100.0))
            .collect();
        let _ = writeln!(s, "  CPU: {}", cpu.join(", "));
        let order = ["parse", "route", "filter", "encode"];
        let st: Vec<String> = order
            .iter()
            .filter_map(|k| {
                s_.stage_share
                    .get(*k)
                    .map(|v| format!("{k} {:.0}%", v * 100.0))
            })
            .collect();
        if !st.is_empty() {
            let _ = writeln!(s, "  worker time by stage (sampled): {}", st.join(", "));
        }
        let (settled, events) = self
            .runs
            .iter()
            .fold((0, 0), |(u, e), r| (u + r.unvalidated, e + r.events));
        if settled > 0 {
            let _ = writeln!(
                s,
                "  settled on demand (from the fields filters read, no full parse): {:.1}% of events",
                settled as f64 * 100.0 / events.max(1) as f64
            );
        }
        let _ = writeln!(
            s,
            "  peak RSS {}, {} allocations per event",
            s_.peak_rss_mib
                .map_or("n/a".into(), |m| format!("{m:.0} MiB")),
            s_.allocs_per_event
                .map_or("n/a".into(), |a| format!("{a:.4}"))
        );
        if !self.full_parse.is_empty() {
            self.full_parse_text(s);
        }
        if !self.reference.is_empty() {
            self.reference_text(s);
        }
        if let Some(b) = &self.baseline {
            let _ = writeln!(
                s,
                "  baseline (serde_json + cel values + cel + serde_json, {} threads, {} events): {} events/s; Sluice is {:.1}x faster",
                b.result.threads,
                b.result.events,
                group(b.result.events_per_s),
                b.ratio
            );
        }
    }
}

fn group(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// One metric compared between two records.
#[derive(Clone, Debug, PartialEq)]
pub struct Delta {
    /// The metric.
    pub metric: &'static str,
    /// Old value.
    pub old: f64,
    /// New value.
    pub new: f64,
    /// Change in percent.
    pub change_pct: f64,
    /// Noise in percent (the larger spread of the two records, at least 2%).
    pub noise_pct: f64,
    /// Whether the change is a regression beyond the noise.
    pub regression: bool,
    /// Whether it is an improvement beyond the noise.
    pub improvement: bool,
}

/// Compares two records of the same scenario. Throughput falling, or latency
/// or memory rising, by more than the noise the records measured is a
/// regression.
pub fn compare(old: &Record, new: &Record) -> Vec<Delta> {
    let noise = old
        .summary
        .events_per_s
        .spread_pct
        .max(new.summary.events_per_s.spread_pct)
        .max(2.0);
    // Latency tails are noisier than throughput: allow twice the noise.
    let mut rows: Vec<(&'static str, f64, f64, bool, f64)> = vec![
        (
            "events/s",
            old.summary.events_per_s.median,
            new.summary.events_per_s.median,
            true,
            noise,
        ),
        (
            "MB/s out",
            old.summary.mb_out_per_s.median,
            new.summary.mb_out_per_s.median,
            true,
            noise,
        ),
        (
            "latency p99 (µs)",
            old.summary.latency_p99_us,
            new.summary.latency_p99_us,
            false,
            2.0 * noise,
        ),
        (
            "peak RSS (MiB)",
            old.summary.peak_rss_mib.unwrap_or(0.0),
            new.summary.peak_rss_mib.unwrap_or(0.0),
            false,
            noise,
        ),
        (
            "allocations/event",
            old.summary.allocs_per_event.unwrap_or(0.0),
            new.summary.allocs_per_event.unwrap_or(0.0),
            false,
            noise,
        ),
    ];
    if old.runs.is_empty() || new.runs.is_empty() {
        rows.clear();
    }
    if let (Some(o), Some(n)) = (&old.api, &new.api) {
        // One API run has no spread of its own, and the tail latency of a
        // few thousand requests on a shared machine is noisy: at least 10%.
        let api = noise.max(10.0);
        rows.push(("API GET p99 (ms)", o.get.p99, n.get.p99, false, 2.0 * api));
        rows.push((
            "API list p99 (ms)",
            o.list.p99,
            n.list.p99,
            false,
            2.0 * api,
        ));
        rows.push((
            "API change p99 (ms)",
            o.change.p99,
            n.change.p99,
            false,
            2.0 * api,
        ));
        rows.push((
            "API requests/s",
            o.requests_per_s,
            n.requests_per_s,
            true,
            api,
        ));
    }
    rows.iter()
        .map(|(metric, o, n, higher_is_better, noise)| {
            let change = if *o != 0.0 { (n - o) / o * 100.0 } else { 0.0 };
            let worse = if *higher_is_better { -change } else { change };
            Delta {
                metric,
                old: *o,
                new: *n,
                change_pct: change,
                noise_pct: *noise,
                regression: worse > *noise,
                improvement: -worse > *noise,
            }
        })
        .collect()
}

/// The comparison as text.
pub fn compare_text(old: &Record, new: &Record, deltas: &[Delta]) -> String {
    let mut s = format!(
        "{}: {} ({}) -> {} ({})\n",
        new.scenario, old.commit, old.date, new.commit, new.date
    );
    for d in deltas {
        let verdict = if d.regression {
            "REGRESSION"
        } else if d.improvement {
            "improved"
        } else {
            "within noise"
        };
        let _ = writeln!(
            s,
            "  {:<20} {:>14.1} -> {:>14.1}  {:+6.1}%  (noise ±{:.1}%)  {verdict}",
            d.metric, d.old, d.new, d.change_pct, d.noise_pct
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(eps: &[f64], p99: u64) -> Record {
        let mut r = Record {
            scenario: "s".into(),
            runs: eps
                .iter()
                .map(|e| RunResult {
                    events_per_s: *e,
                    latency_us: crate::results::Latency {
                        p99,
                        ..Default::default()
                    },
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        r.summarize();
        r
    }

    #[test]
    fn the_full_parse_comparison_shows_the_ratios_and_the_cores_kept_busy() {
        let run = |events_per_s: f64, elapsed_s: f64, workers: f64| RunResult {
            events: 1000,
            events_per_s,
            elapsed_s,
            cpu_s: [
                ("workers".to_string(), workers),
                ("ingest".to_string(), 0.3),
            ]
            .into(),
            ..Default::default()
        };
        let r = Record {
            runs: vec![run(1000.0, 1.0, 1.5), run(1100.0, 0.9, 1.4)],
            full_parse: vec![run(500.0, 2.0, 3.6), run(520.0, 1.9, 3.5)],
            ..Default::default()
        };
        let mut s = String::new();
        r.full_parse_text(&mut s);
        assert!(s.contains("on demand: 2.06x the full parse"), "{s}");
        assert!(
            s.contains(
                "fastest round of each: on demand 1,100 events/s, full parse 520 events/s: 2.12x"
            ),
            "{s}"
        );
        // CPU per event: 1.8 and 1.7 ms on demand, 3.9 and 3.8 in full.
        assert!(
            s.contains("on demand 1750000 ns, full parse 3850000 ns"),
            "{s}"
        );
        // Busy: 1.8/1.0 and 1.7/0.9 on demand, 3.9/2.0 and 3.8/1.9 in full.
        assert!(s.contains("on demand 1.84, full parse 1.98"), "{s}");
    }

    #[test]
    fn stats_give_median_and_spread() {
        let s = Stat::of(&[100.0, 90.0, 110.0]);
        assert_eq!((s.median, s.min, s.max), (100.0, 90.0, 110.0));
        assert!((s.spread_pct - 20.0).abs() < 1e-9);
        assert_eq!(Stat::of(&[1.0, 3.0]).median, 2.0);
    }

    #[test]
    fn a_drop_beyond_the_noise_is_a_regression_and_within_it_is_not() {
        let old = rec(&[1000.0, 980.0, 1020.0], 100);
        let slower = rec(&[800.0, 790.0, 810.0], 100);
        let d = compare(&old, &slower);
        assert!(d[0].regression, "{d:?}");
        // -1.5%, inside the old record's 4% spread.
        let same = rec(&[975.0, 985.0, 995.0], 100);
        assert!(!compare(&old, &same)[0].regression);
        // -15% with a 94% spread: noise; the same -15% measured tightly: a regression.
        let noisy = rec(&[500.0, 850.0, 1300.0], 100);
        assert!(
            !compare(&old, &noisy)[0].regression,
            "a 94% spread hides a 15% drop"
        );
        let tight = rec(&[845.0, 850.0, 855.0], 100);
        assert!(compare(&old, &tight)[0].regression);
        let faster = rec(&[1300.0, 1290.0, 1310.0], 100);
        assert!(compare(&old, &faster)[0].improvement);
        let laggy = rec(&[1000.0, 990.0, 1010.0], 500);
        assert!(compare(&old, &laggy)[2].regression);
    }
}
