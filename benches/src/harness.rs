//! Running a scenario through the engine in this process and measuring it.
//!
//! Input is pre-generated NDJSON (see [`crate::scenario::data_path`]) streamed
//! from the file in 1 MiB chunks, so the harness holds little in memory and
//! peak RSS is the engine's. Closed loop publishes as fast as the engine takes
//! events; open loop (`rate > 0`) publishes slices of events at their
//! scheduled times and stamps them with that time, so that latency counts any
//! delay of the harness itself (no coordinated omission).

use crate::results::{Latency, RunResult};
use crate::scenario::{RunOptions, Scenario};
use crate::sysinfo;
use indicatif::{ProgressBar, ProgressStyle};
use sluice_engine::ingest::{Chunk, NdjsonReader};
use sluice_engine::plugin::PluginRegistry;
use sluice_engine::{Engine, EngineConfig};
use sluice_traffic::Generator;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn percentiles(h: &sluice_engine::metrics::LatencyHistogram) -> (Latency, Vec<(f64, u64)>) {
    if h.is_empty() {
        return (Latency::default(), vec![]);
    }
    let l = Latency {
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        count: h.len(),
    };
    let curve = [
        0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
    ]
    .iter()
    .map(|p| (*p, h.value_at_percentile(*p)))
    .collect();
    (l, curve)
}

/// Splits a buffer of whole lines into slices of `n` lines (zero-copy).
fn slices(b: bytes::Bytes, n: usize) -> Vec<bytes::Bytes> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut count = 0;
    for nl in memchr::memchr_iter(b'\n', &b) {
        count += 1;
        if count == n {
            out.push(b.slice(start..nl + 1));
            start = nl + 1;
            count = 0;
        }
    }
    if start < b.len() {
        out.push(b.slice(start..));
    }
    out
}

/// Runs the scenario once, in process, on the input in `data`.
pub fn run_in_process(s: &Scenario, data: &Path, o: &RunOptions) -> Result<RunResult, String> {
    let accounts = Generator::new(s.generator.gen_config()).account_ids();
    let spec = s.pipeline(&accounts)?;
    let plugins = PluginRegistry::discover(&o.plugin_dirs);
    let dead =
        std::env::temp_dir().join(format!("sluice-bench-dead-letter-{}", std::process::id()));
    let cfg = EngineConfig {
        workers: o.workers.unwrap_or(s.run.workers),
        stage_sampling: true,
        dead_letter_dir: dead.clone(),
        buffer_dir: dead.join("buffer"),
        drain_timeout: Duration::from_secs(120),
        full_parse: o.full_parse,
        ..EngineConfig::default()
    };
    let bytes_total = std::fs::metadata(data)
        .map_err(|e| format!("{}: {e}", data.display()))?
        .len();
    sysinfo::reset_peak_rss();
    let engine = Engine::start(cfg, plugins, &spec).map_err(|e| e.to_string())?;
    let metrics = engine.metrics().clone();
    let rate = o.rate.unwrap_or(s.run.rate);
    // A live tap on the first subscription, read by a thread of its own, as
    // a person watching would (`[run] tap = true`).
    let tap_stop = Arc::new(AtomicBool::new(false));
    let tap_reader = match (s.run.tap, spec.subscriptions.first()) {
        (true, Some(sub)) => {
            let mut tap = engine.tap(&sub.id, 1000, 256);
            let stop = tap_stop.clone();
            Some(
                std::thread::Builder::new()
                    .name("sluice-bench-tap".into())
                    .spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_time()
                            .build()
                            .expect("a runtime for the tap reader");
                        let mut read = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let next = rt.block_on(async {
                                tokio::time::timeout(Duration::from_millis(100), tap.next()).await
                            });
                            if let Ok(Some(_)) = next {
                                read += 1;
                            }
                        }
                        (read, tap.skipped())
                    })
                    .map_err(|e| e.to_string())?,
            )
        }
        _ => None,
    };

    let bar = if o.progress {
        ProgressBar::new(s.generator.events)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "  {spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events ({per_sec})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = sysinfo::thread_cpu();
    let a0 = crate::alloc::start();
    let t0 = Instant::now();
    let sampler = {
        let (timeline, stop, metrics, bar) =
            (timeline.clone(), stop.clone(), metrics.clone(), bar.clone());
        std::thread::Builder::new()
            .name("sluice-bench-sampler".into())
            .spawn(move || {
                let mut last = (0.0f64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let t = t0.elapsed().as_secs_f64();
                    let n = metrics.events_in();
                    bar.set_position(n);
                    if t > last.0 {
                        timeline
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((t, (n - last.1) as f64 / (t - last.0)));
                    }
                    last = (t, n);
                }
            })
            .map_err(|e| e.to_string())?
    };

    let file = std::fs::File::open(data).map_err(|e| format!("{}: {e}", data.display()))?;
    let mut published: u64 = 0;
    let step = if rate == 0 {
        0
    } else {
        (rate / 1000).max(1) as usize
    };
    for chunk in NdjsonReader::new(file, 1 << 20) {
        match chunk.map_err(|e| format!("reading {}: {e}", data.display()))? {
            Chunk::Lines(b) if rate == 0 => published += engine.publish_ndjson(b) as u64,
            Chunk::Lines(b) => {
                for piece in slices(b, step) {
                    let due = t0 + Duration::from_secs_f64(published as f64 / rate as f64);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    published += engine.publish_ndjson_at(piece, due) as u64;
                }
            }
            Chunk::Oversized { len, prefix, .. } => engine.reject_oversized(len, prefix),
        }
    }
    engine.barrier();
    // Wait for delivery to finish what it holds.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let busy = metrics
            .snapshot()
            .destinations
            .values()
            .any(|d| d.queued > 0 || d.in_flight > 0 || d.disk_records > 0);
        if !busy || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = t0.elapsed().as_secs_f64().max(1e-9);
    let a1 = crate::alloc::stop();
    let cpu1 = sysinfo::thread_cpu();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    bar.finish_and_clear();
    tap_stop.store(true, Ordering::Relaxed);
    if let Some(Ok((read, skipped))) = tap_reader.map(|t| t.join()) {
        println!("  the tap passed on {read} records and skipped {skipped}");
    }

    let mut cpu_s: BTreeMap<String, f64> = BTreeMap::new();
    for (tid, (name, secs)) in &cpu1 {
        let before = cpu0.get(tid).map_or(0.0, |(_, s)| *s);
        *cpu_s.entry(sysinfo::role(name).to_string()).or_default() += (secs - before).max(0.0);
    }
    let snapshot = metrics.snapshot();
    let st = &snapshot.stages;
    let parts = [
        ("parse", st.parse_ns),
        ("route", st.route_ns),
        ("filter", st.filter_ns),
        ("encode", st.encode_ns),
    ];
    let total_ns: u64 = parts.iter().map(|p| p.1).sum();
    let stage_share = parts
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                if total_ns == 0 {
                    0.0
                } else {
                    *v as f64 / total_ns as f64
                },
            )
        })
        .collect();
    let (latency_us, latency_curve) = percentiles(&metrics.latency());
    let summary = engine.summary();
    let delivered_bytes: u64 = snapshot
        .destinations
        .values()
        .map(|d| d.delivered_bytes)
        .sum();
    let sends: u64 = snapshot.destinations.values().map(|d| d.sends).sum();
    let peak = sysinfo::peak_rss_bytes();
    let _ = engine.shutdown();
    let _ = std::fs::remove_dir_all(&dead);
    let events = summary.events_in;
    Ok(RunResult {
        events,
        bytes_in: bytes_total,
        elapsed_s: elapsed,
        events_per_s: events as f64 / elapsed,
        mb_in_per_s: bytes_total as f64 / 1e6 / elapsed,
        mb_out_per_s: delivered_bytes as f64 / 1e6 / elapsed,
        offered_rate: rate,
        matched: summary.matched,
        delivered: summary.delivered,
        delivered_bytes,
        sends,
        rejected: summary.rejected,
        filter_errors: summary.filter_errors,
        unvalidated: summary.unvalidated,
        dead_lettered: summary.dead_lettered,
        latency_us,
        latency_curve,
        timeline: std::mem::take(&mut *timeline.lock().unwrap_or_else(|p| p.into_inner())),
        peak_rss_mib: peak.map(|b| b as f64 / (1 << 20) as f64),
        allocs_per_event: match (a0, a1) {
            (Some(a), Some(b)) if events > 0 => Some((b - a) as f64 / events as f64),
            _ => None,
        },
        cpu_s,
        stage_share,
    })
}

/// Generates the scenario's input into `path` unless it is already there,
/// then reads it through once: on this machine the page cache is trimmed
/// proactively (DAMON reclaim), and without the warm-up the first run of a
/// scenario reads from disk at half the speed of the others.
pub fn ensure_data(s: &Scenario, path: &Path, progress: bool) -> Result<(), String> {
    if !path.exists() {
        generate(s, path, progress)?;
    }
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    while std::io::Read::read(&mut f, &mut buf).map_err(|e| format!("{}: {e}", path.display()))? > 0
    {
    }
    Ok(())
}

fn generate(s: &Scenario, path: &Path, progress: bool) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("partial");
    let bar = if progress {
        ProgressBar::new(s.generator.events)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("  generating {wide_bar} {human_pos}/{human_len} events")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut g = Generator::new(s.generator.gen_config());
    let f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut w = std::io::BufWriter::with_capacity(4 << 20, f);
    let mut left = s.generator.events;
    while left > 0 {
        let n = left.min(50_000);
        g.write_ndjson(n, &mut w).map_err(|e| e.to_string())?;
        left -= n;
        bar.inc(n);
    }
    std::io::Write::flush(&mut w).map_err(|e| e.to_string())?;
    drop(w);
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    Ok(())
}
