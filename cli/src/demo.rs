//! `sluice demo`: the whole pipeline on embedded defaults.
//!
//! Generates realistic traffic and audit events for many accounts, runs them
//! through sample subscriptions (CEL filters on the fast path and one in the
//! interpreter, field projections, audit exports) into file destinations, and
//! prints what each subscription kept and how fast it went.

use indicatif::{ProgressBar, ProgressStyle};
use sluice_engine::plugin::{PluginRegistry, plugin_dirs};
use sluice_engine::{Engine, EngineConfig, PipelineSpec};
use sluice_traffic::{GenConfig, Generator};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where to write the destinations' files.
    #[arg(long, default_value = "sluice-demo")]
    out: PathBuf,
    /// How many events to generate.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Number of accounts.
    #[arg(long, default_value_t = 200)]
    accounts: u32,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory searched first for sink plugins.
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// The demo's configuration, for accounts `a` (the busiest first).
fn demo_config(out: &Path, a: &[String]) -> String {
    let p = |name: &str| out.join(name).display().to_string().replace('\\', "/");
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# The configuration `sluice demo` ran. Re-run it on the sample events with:"
    );
    let _ = writeln!(
        t,
        "#   sluice run --config {} --input {}\n",
        p("sluice.toml"),
        p("sample-events.ndjson")
    );
    for (id, file) in [
        ("ed_prod_errors", "prod-errors.ndjson"),
        ("ed_big_responses", "big-responses.ndjson"),
        ("ed_scripted_clients", "scripted-clients.ndjson"),
        ("ed_long_tcp", "long-tcp.ndjson"),
        ("ed_rate_limited", "rate-limited.ndjson"),
        ("ed_audit", "audit.ndjson"),
    ] {
        let _ = writeln!(
            t,
            "[[destination]]\nid = \"{id}\"\nkind = \"file\"\nconfig = {{ path = \"{}\" }}\ndelivery = {{ linger_ms = 200 }}\n",
            p(file)
        );
    }
    let sub = |t: &mut String, id: &str, acct: &str, dest: &str| {
        let _ = writeln!(
            t,
            "[[subscription]]\nid = \"{id}\"\naccount_id = \"{acct}\"\ndestination_ids = [\"{dest}\"]\n"
        );
    };
    let src = |t: &mut String, ty: &str, filter: Option<&str>, fields: &[&str]| {
        let _ = writeln!(t, "  [[subscription.source]]\n  type = \"{ty}\"");
        if let Some(f) = filter {
            let _ = writeln!(t, "  filter = '{f}'");
        }
        if !fields.is_empty() {
            let list: Vec<String> = fields.iter().map(|f| format!("\"{f}\"")).collect();
            let _ = writeln!(t, "  fields = [{}]", list.join(", "));
        }
        t.push('\n');
    };
    sub(&mut t, "esb_prod_errors", &a[0], "ed_prod_errors");
    src(
        &mut t,
        "http_request_complete.v0",
        Some(
            r#"ev.conn.server_name.matches(".*-prod\\.ngrok\\.dev") && ev.http.response.status_code >= 500"#,
        ),
        &[
            "conn.client_ip",
            "conn.server_name",
            "http.request.method",
            "http.request.url.path",
            "http.response.status_code",
        ],
    );
    sub(&mut t, "esb_big_responses", &a[1], "ed_big_responses");
    src(
        &mut t,
        "http_request_complete.v0",
        Some("ev.http.response.body_length > 100000 && ev.http.request.method == \"get\""),
        &[
            "conn.server_name",
            "http.request.url.path",
            "http.response.body_length",
        ],
    );
    sub(&mut t, "esb_scripted_clients", &a[2], "ed_scripted_clients");
    src(
        &mut t,
        "http_request_complete.v0",
        Some(
            r#"ev.http.request.user_agent.startsWith("curl/") || ev.http.request.user_agent in ["python-requests/2.32.3", "go-http-client/2.0"]"#,
        ),
        &[
            "conn.client_ip",
            "http.request.user_agent",
            "http.request.url.path",
        ],
    );
    sub(&mut t, "esb_long_tcp", &a[0], "ed_long_tcp");
    src(
        &mut t,
        "tcp_connection_closed.v0",
        Some("ev.conn.bytes_out > 1000000"),
        &[],
    );
    sub(&mut t, "esb_rate_limited", &a[3], "ed_rate_limited");
    src(
        &mut t,
        "http_request_complete.v0",
        Some(
            r#"has(ev.traffic_policy) && ev.traffic_policy.logs.exists(l, l.rule == "rate-limit")"#,
        ),
        &[],
    );
    for (i, acct) in a.iter().take(3).enumerate() {
        sub(&mut t, &format!("esb_audit_{i}"), acct, "ed_audit");
        for ty in [
            "ip_policy_created.v0",
            "ip_policy_updated.v0",
            "ip_policy_deleted.v0",
            "api_key_created.v0",
            "api_key_deleted.v0",
            "domain_created.v0",
        ] {
            src(&mut t, ty, None, &[]);
        }
    }
    t
}

pub fn demo(a: DemoArgs) -> Result<ExitCode, String> {
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    for entry in std::fs::read_dir(&a.out)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "ndjson")
            || path.to_string_lossy().contains(".ndjson.")
        {
            let _ = std::fs::remove_file(path);
        }
    }
    let gen_cfg = GenConfig {
        seed: a.seed,
        accounts: a.accounts.max(4),
        target_size: 0,
        ..GenConfig::default()
    };
    let accounts = Generator::new(gen_cfg.clone()).account_ids();
    let toml = demo_config(&a.out, &accounts);
    std::fs::write(a.out.join("sluice.toml"), &toml).map_err(|e| e.to_string())?;
    let spec = PipelineSpec::from_toml(&toml).map_err(|e| e.to_string())?;
    let dirs = plugin_dirs(&a.plugin_dir.iter().cloned().collect::<Vec<_>>());
    let plugins = PluginRegistry::discover(&dirs);
    if plugins.get("file").is_err() {
        return Err(format!(
            "the `file` sink plugin was not found (searched {}). Build it first: cargo build --release",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let engine = Engine::start(
        EngineConfig {
            dead_letter_dir: a.out.join("dead-letter"),
            rejects_path: Some(a.out.join("rejects.ndjson")),
            ..EngineConfig::default()
        },
        plugins,
        &spec,
    )
    .map_err(|e| e.to_string())?;

    // A sample of the input, to play with `sluice run`.
    let mut sample = Vec::new();
    Generator::new(gen_cfg.clone()).fill(10_000, &mut sample);
    std::fs::write(a.out.join("sample-events.ndjson"), &sample).map_err(|e| e.to_string())?;

    println!(
        "sluice demo: {} events from {} accounts through {} subscriptions into {}/",
        a.events,
        gen_cfg.accounts,
        spec.subscriptions.len(),
        a.out.display()
    );
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(a.events)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events ({per_sec})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // Generate on one thread, publish on this one. The generator is slower
    // than the engine, so the run goes at its pace: its own time and the
    // workers' CPU time are measured, to say how fast the engine was.
    let (tx, rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(4);
    let total = a.events;
    let generator = std::thread::Builder::new()
        .name("sluice-demo-gen".into())
        .spawn(move || {
            let mut g = Generator::new(gen_cfg);
            let mut left = total;
            let mut generating = std::time::Duration::ZERO;
            while left > 0 {
                let n = left.min(20_000);
                let t = Instant::now();
                let mut buf = Vec::with_capacity(n as usize * 1100);
                g.fill(n as usize, &mut buf);
                generating += t.elapsed();
                if tx.send(bytes::Bytes::from(buf)).is_err() {
                    break;
                }
                left -= n;
            }
            generating
        })
        .map_err(|e| format!("cannot start the generator thread: {e}"))?;
    let workers_cpu = || {
        sluice_bench::sysinfo::thread_cpu()
            .into_values()
            .filter(|(name, _)| name.starts_with("sluice-worker"))
            .map(|(_, secs)| secs)
            .sum::<f64>()
    };
    let cpu0 = workers_cpu();
    let start = Instant::now();
    let mut published = 0u64;
    for chunk in rx {
        published += engine.publish_ndjson(chunk) as u64;
        bar.set_position(published);
    }
    let generating = generator.join().unwrap_or_default();
    engine.barrier();
    let filtered_in = start.elapsed();
    let worker_secs = workers_cpu() - cpu0;
    bar.finish_and_clear();
    let metrics = engine.metrics().clone();
    let summary = engine.shutdown();
    let total_time = start.elapsed();

    println!(
        "\n{:<22} {:<31} {:>10} {:>9} {:>7}  DESTINATION",
        "SUBSCRIPTION", "ACCOUNT", "EVALUATED", "MATCHED", "ERRORS"
    );
    let subs = metrics.snapshot().subscriptions;
    for s in &spec.subscriptions {
        let c = subs.get(&s.id).copied().unwrap_or_default();
        let (evaluated, matched, errors) = (c.evaluated, c.matched, c.filter_errors);
        let dest = s.destination_ids.first().cloned().unwrap_or_default();
        let file = spec
            .destinations
            .iter()
            .find(|d| d.id == dest)
            .and_then(|d| d.config["path"].as_str().map(str::to_string))
            .unwrap_or_default();
        println!(
            "{:<22} {:<31} {:>10} {:>9} {:>7}  {}",
            s.id, s.account_id, evaluated, matched, errors, file
        );
    }
    println!(
        "\n{}",
        pace_report(
            summary.events_in,
            filtered_in.as_secs_f64(),
            generating.as_secs_f64(),
            worker_secs,
            total_time.as_secs_f64()
        )
    );
    println!(
        "{} records delivered, {} rejected, {} filter errors, {} dead-lettered.",
        summary.delivered, summary.rejected, summary.filter_errors, summary.dead_lettered
    );
    println!(
        "Next: sluice run --config {}/sluice.toml --input {}/sample-events.ndjson",
        a.out.display(),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The demo's throughput line: the wall-clock rate, what paced it (the
/// generator, on one thread, is slower than the engine on most machines),
/// and the engine's own rate per core of worker CPU time (0 when the
/// threads' CPU time cannot be read).
fn pace_report(
    events: u64,
    secs: f64,
    generating: f64,
    worker_cpu: f64,
    with_delivery: f64,
) -> String {
    let secs = secs.max(1e-9);
    let mut s = format!(
        "{events} events in {secs:.2}s ({:.0} events/s)",
        events as f64 / secs
    );
    if generating >= 0.8 * secs {
        let _ = write!(
            s,
            ", paced by the generator ({generating:.2}s of it making them, on one thread)."
        );
    } else {
        s.push('.');
    }
    if worker_cpu > 0.0 {
        let _ = write!(
            s,
            "\nThe engine's workers used {worker_cpu:.2}s of CPU for them: {:.0} events/s per core through parse, route, filter and encode.",
            events as f64 / worker_cpu
        );
    }
    let _ = write!(
        s,
        "\nAll delivered {with_delivery:.2}s after the start; `sluice bench benches/scenarios/filter-5pct.toml` measures the engine alone."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::pace_report;

    #[test]
    fn the_pace_line_says_what_paced_the_run_and_the_engine_s_own_rate() {
        let slow_generator = pace_report(2_000_000, 12.5, 12.0, 1.6, 12.6);
        assert!(
            slow_generator.contains("(160000 events/s)"),
            "{slow_generator}"
        );
        assert!(
            slow_generator.contains("paced by the generator (12.00s of it"),
            "{slow_generator}"
        );
        assert!(
            slow_generator.contains("1250000 events/s per core"),
            "{slow_generator}"
        );
        let engine_bound = pace_report(1_000, 2.0, 0.5, 3.5, 2.1);
        assert!(
            !engine_bound.contains("paced by the generator"),
            "{engine_bound}"
        );
        assert!(
            engine_bound.contains("286 events/s per core"),
            "{engine_bound}"
        );
        let no_proc = pace_report(1_000, 1.0, 1.0, 0.0, 1.0);
        assert!(!no_proc.contains("per core"), "{no_proc}");
    }
}
