//! `sluice bench`: run a scenario, report, record, plot, compare.

use sluice_bench::harness::{ensure_data, run_in_process};
use sluice_bench::report::{BaselineReport, Record, compare, compare_text};
use sluice_bench::scenario::{Mode, RunOptions, Scenario, data_path};
use sluice_bench::{baseline, plot, serve_harness, sysinfo};
use sluice_engine::plugin::plugin_dirs;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The scenario file (see benches/scenarios/).
    #[arg(required_unless_present = "compare")]
    scenario: Option<PathBuf>,
    /// Write the record as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also run the naive pipeline (serde_json, CEL values, cel) on the same events.
    #[arg(long)]
    baseline: bool,
    /// Draw throughput over time and the latency distribution to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Runs (overrides the scenario).
    #[arg(long)]
    repeat: Option<u32>,
    /// Events per run (overrides the scenario).
    #[arg(long)]
    events: Option<u64>,
    /// Offered events/s, open loop (overrides the scenario; 0 = as fast as possible).
    #[arg(long)]
    rate: Option<u64>,
    /// Filter workers (overrides the scenario).
    #[arg(long)]
    workers: Option<usize>,
    /// Run every round a second time with the full parse forced (the
    /// on-demand reader off) and report the ratio (in-process scenarios):
    /// every other round runs the full parse first, and the report gives
    /// the ratio of the medians, per round, of each mode's fastest round,
    /// and in CPU time per event.
    #[arg(long)]
    versus_full_parse: bool,
    /// Compare two JSON records; exits 1 on a regression beyond their noise.
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"], conflicts_with = "scenario")]
    compare: Option<Vec<PathBuf>>,
    /// Where generated inputs are cached.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Directory searched first for sink plugins.
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

fn load_record(p: &PathBuf) -> Result<Record, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a sluice bench record: {e}", p.display()))
}

pub fn bench(a: BenchArgs) -> Result<ExitCode, String> {
    if let Some(files) = &a.compare {
        let (old, new) = (load_record(&files[0])?, load_record(&files[1])?);
        if old.scenario != new.scenario {
            return Err(format!(
                "the records are of different scenarios: {} and {}",
                old.scenario, new.scenario
            ));
        }
        let deltas = compare(&old, &new);
        print!("{}", compare_text(&old, &new, &deltas));
        return Ok(if deltas.iter().any(|d| d.regression) {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    let path = a.scenario.clone().ok_or("give a scenario file")?;
    let mut s = Scenario::load(&path)?;
    if let Some(n) = a.events {
        s.generator.events = n;
    }
    if let Some(r) = a.repeat {
        s.run.repeat = r;
    }
    // Local stand-ins for the destinations' vendors, if the scenario names any.
    let servers = sluice_bench::sink_servers::start_for(&mut s)?;
    let sluice = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let traffic = !s.subscriptions.is_empty();
    let dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("sluice-bench-data"));
    let data = data_path(&dir, &s.generator);
    let progress = !a.quiet;
    if traffic {
        ensure_data(&s, &data, progress)?;
    }
    let bytes = std::fs::metadata(&data).map_or(0, |m| m.len());
    let opts = RunOptions {
        plugin_dirs: plugin_dirs(&a.plugin_dir.iter().cloned().collect::<Vec<_>>()),
        progress,
        rate: a.rate,
        workers: a.workers,
        full_parse: false,
    };
    let accounts = sluice_traffic::Generator::new(s.generator.gen_config()).account_ids();
    let workers = match a.workers.unwrap_or(s.run.workers) {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let mut record = Record {
        scenario: s.name.clone(),
        description: s.description.clone(),
        commit: sysinfo::commit(),
        machine: sysinfo::machine(),
        date: sluice_engine::events::format_rfc3339_ms(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        ),
        events: if traffic { s.generator.events } else { 0 },
        event_bytes: bytes as f64 / s.generator.events as f64,
        accounts: s.generator.accounts,
        subscriptions: match &s.api {
            Some(api) if !traffic => api.subscriptions,
            _ => s.pipeline(&accounts)?.subscriptions.len(),
        },
        mode: match s.run.mode {
            _ if !traffic => "sluice serve".into(),
            Mode::InProcess => "in-process".into(),
            Mode::Http => format!("http, {} connections", s.run.connections.max(1)),
            Mode::Cluster => format!(
                "cluster: {} nodes on {} NATS servers, http, {} connections",
                s.run.nodes.max(1),
                s.run.nats_servers.max(1),
                s.run.connections.max(1)
            ),
        },
        workers,
        ..Default::default()
    };
    if traffic {
        println!(
            "sluice bench: {} ({} runs of {} events)",
            s.name,
            s.run.repeat.max(1),
            s.generator.events
        );
    }
    let versus = a.versus_full_parse && s.run.mode == Mode::InProcess;
    let full_parse_round = |i: u32| -> Result<sluice_bench::results::RunResult, String> {
        let full = run_in_process(
            &s,
            &data,
            &RunOptions {
                full_parse: true,
                ..opts.clone()
            },
        )?;
        println!(
            "  run {} with the full parse forced: {:.0} events/s",
            i + 1,
            full.events_per_s
        );
        Ok(full)
    };
    for i in 0..if traffic { s.run.repeat.max(1) } else { 0 } {
        // With the full parse to compare, every other round runs it first:
        // a machine that speeds up or slows down over the rounds then
        // favours neither mode.
        let full_first = versus && i % 2 == 1;
        if full_first {
            record.full_parse.push(full_parse_round(i)?);
        }
        let r = match s.run.mode {
            Mode::InProcess => run_in_process(&s, &data, &opts)?,
            Mode::Http => serve_harness::run_http(&s, &data, &opts, &sluice, s.run.connections)?,
            Mode::Cluster => {
                let (cluster, single) =
                    sluice_bench::cluster_harness::run_cluster(&s, &data, &opts, &sluice)?;
                println!(
                    "  run {} without the stream (one sluice serve): {:.0} events/s, p99 {:.1} ms",
                    i + 1,
                    single.events_per_s,
                    single.latency_us.p99 as f64 / 1000.0
                );
                record.reference.push(single);
                cluster
            }
        };
        println!(
            "  run {}: {:.0} events/s, p99 {:.1} ms, {} delivered",
            i + 1,
            r.events_per_s,
            r.latency_us.p99 as f64 / 1000.0,
            r.delivered
        );
        record.runs.push(r);
        if versus && !full_first {
            record.full_parse.push(full_parse_round(i)?);
        }
    }
    if let Some(api) = &s.api {
        println!(
            "sluice bench: {}: API with {} subscriptions, {} clients for {} s, {} changes",
            s.name, api.subscriptions, api.clients, api.seconds, api.changes
        );
        record.api = Some(serve_harness::run_api(api, &opts, &sluice)?);
    }
    let delivered: u64 = record.runs.iter().map(|r| r.delivered).sum();
    for (name, st) in &servers.servers {
        let r = sluice_bench::sink_servers::report(name, st.counts());
        if r.records > 0 {
            let ratio = if r.wire_bytes != r.body_bytes {
                format!(
                    ", {:.1} MB gzipped from {:.1} MB (ratio {:.2})",
                    r.wire_bytes as f64 / 1e6,
                    r.body_bytes as f64 / 1e6,
                    r.compression_ratio
                )
            } else {
                String::new()
            };
            println!(
                "  the local {name} sink server received {} records in {} requests over {} connections{ratio} ({delivered} delivered over the runs)",
                r.records, r.requests, r.connections
            );
        }
        record.sink_servers.push(r);
    }
    drop(servers);
    if a.baseline && traffic {
        let b = baseline::run_baseline(
            &s,
            &data,
            s.run.baseline_events.min(s.generator.events),
            workers,
        )?;
        record.baseline = Some(BaselineReport {
            result: b,
            ratio: 0.0,
        });
    }
    record.summarize();
    println!();
    print!("{}", record.text());
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?;
        std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        println!("  record written to {}", p.display());
    }
    if let Some(p) = a.plot.as_ref().filter(|_| record.runs.is_empty()) {
        println!(
            "  no plot written to {}: the scenario has no traffic runs",
            p.display()
        );
    } else if let Some(p) = &a.plot {
        std::fs::write(p, plot::svg(&record)).map_err(|e| format!("{}: {e}", p.display()))?;
        println!("  plot written to {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
