//! `sluice`: thin glue from the command line to the engine and harness libraries.

mod bench;
mod check;
mod demo;
mod dlq;
mod metrics_http;
mod run;
mod tap;

use clap::{Parser, Subcommand};

/// Counts allocations while `sluice bench` measures a run (off otherwise).
#[global_allocator]
static ALLOCATOR: sluice_bench::alloc::CountingAllocator = sluice_bench::alloc::CountingAllocator;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Filter account events with CEL and export them to sinks", long_about = None)]
struct Cli {
    /// Log lines on stderr as `text` or `json` (one object per line). Which
    /// lines: `SLUICE_LOG` or `RUST_LOG`, e.g. `info,sluice_engine::plugin=debug` (default `warn`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a standalone configuration over NDJSON events from a file or stdin.
    #[command(
        after_help = r#"At exit one summary line goes to stderr (wrapped here):
  sluice: N events in 2.00s (R events/s): N matched, N delivered, N rejected
  (bad_json: N, ...), N filter errors, N unrouted, N dead-lettered
  [, N dropped (buffer full)] [, N kept in disk buffers]
  [, N settled on demand (not validated in full)]

  events in      non-blank input lines read (time: start to exit, drain included)
  matched        records made: an event once per subscription whose filter chose it
  delivered      records a sink acknowledged, once per destination
                 (disk-buffer replays of an earlier run included)
  rejected       malformed lines, by reason (to --rejects if given)
  filter errors  filter evaluations that failed (missing field, type error):
                 that subscription skips the event
  unrouted       valid events no subscription of their account has a source
                 for (their event type): nothing is made of them
  dead-lettered  records written with the reason to
                 <dead-letter-dir>/<destination>.ndjson
  dropped        records shed by a full when_full = "drop_newest" destination
  kept in disk buffers
                 records left in durability = "disk" logs for the next start
  settled on demand
                 events no subscription wanted or every filter rejected,
                 decided from the fields their filters read without parsing
                 the rest (accepted, never rejected; --full-parse: none)

Events a filter said no to are in none of these. See docs/delivery.md."#
    )]
    Run(run::RunArgs),
    /// Validate a configuration, or compile a filter and show how it runs.
    Check(check::CheckArgs),
    /// Generate realistic traffic and export it through sample subscriptions into ./sluice-demo/.
    Demo(demo::DemoArgs),
    /// Generate realistic, high-cardinality events as NDJSON.
    Gen(GenArgs),
    /// Inspect sink plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Run a benchmark scenario and report throughput, latency, CPU, memory.
    Bench(bench::BenchArgs),
    /// Serve the ngrok-compatible API (destinations, subscriptions, sources), HTTP ingest and metrics.
    Serve(ServeArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print the records a subscription of a running `sluice serve` makes, live.
    Tap(tap::TapArgs),
    /// A destination's dead letters: list them, or send them again once
    /// the destination is fixed.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
}

#[derive(clap::Args)]
struct GenArgs {
    /// Number of events.
    #[arg(long)]
    events: u64,
    /// Seed (the same seed gives the same events).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of accounts.
    #[arg(long, default_value_t = 100)]
    accounts: u32,
    /// Pad HTTP events towards this size in bytes (0: natural size, ~1 KB).
    #[arg(long, default_value_t = 0)]
    size: usize,
    /// Share of audit events.
    #[arg(long, default_value_t = 0.01)]
    audit_share: f64,
    /// Share of traffic events that are TCP connections.
    #[arg(long, default_value_t = 0.1)]
    tcp_share: f64,
    /// Share of HTTP requests to each account's *-prod.ngrok.dev domain.
    #[arg(long, default_value_t = 0.3)]
    prod_share: f64,
    /// Share of HTTP responses that are 5xx.
    #[arg(long, default_value_t = 0.03)]
    error_share: f64,
    /// Emit at this many events per second (open loop, paced every 10 ms); 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Output file, or - for stdout.
    #[arg(long, default_value = "-")]
    out: String,
}

/// `sluice serve` flags. Each is also a key of the `--config` file (the
/// flag wins); defaults are listed in docs/security.md.
#[derive(clap::Args)]
struct ServeArgs {
    /// A serve configuration file (TOML): these settings, with tenants'
    /// limits under [tenants] (see docs/security.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free one; the address is printed). Default 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<String>,
    /// Where the SQLite database, dead letters, disk buffers and tenants' files live (required, here or in --config).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Directory searched first for sink plugins.
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// Token POST /ingest requires (default: $SLUICE_INGEST_TOKEN, else generated once, printed, stored hashed).
    #[arg(long)]
    ingest_token: Option<String>,
    /// Allow only the fields ngrok allows in filters.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    strict_ngrok_filters: Option<bool>,
    /// Filter worker threads (0: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// The operator's listener for Prometheus `/metrics` and a detailed
    /// `/healthz` (e.g. 127.0.0.1:9464). Never on --listen: metric labels name
    /// every tenant's destinations and subscriptions.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// An origin allowed to call the API from a browser (CORS), e.g.
    /// https://console.example.com; repeat for more. None by default.
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// Seconds shutdown waits for undelivered records before dead-lettering them. Default 30.
    #[arg(long)]
    drain_timeout_s: Option<u64>,
    /// Destination kinds tenants may use, comma-separated (default: the ngrok targets and http).
    #[arg(long, value_delimiter = ',')]
    tenant_plugin_kinds: Option<Vec<String>>,
    /// Let tenants' destinations reach loopback, private and link-local addresses (default false).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    tenant_allow_private_destinations: Option<bool>,
    /// Longest one outbound call of a tenant's destination may take, in ms (default 30000).
    #[arg(long)]
    tenant_max_outbound_timeout_ms: Option<u64>,
    /// Destinations per account (default 100).
    #[arg(long)]
    tenant_max_destinations: Option<usize>,
    /// Subscriptions per account (default 1000).
    #[arg(long)]
    tenant_max_subscriptions: Option<usize>,
    /// Destinations per subscription (default 10).
    #[arg(long)]
    tenant_max_destinations_per_subscription: Option<usize>,
    /// Sources per subscription (default 64).
    #[arg(long)]
    tenant_max_sources_per_subscription: Option<usize>,
    /// Bytes of one filter (default 4096).
    #[arg(long)]
    tenant_max_filter_bytes: Option<usize>,
    /// API writes per account per minute (default 300).
    #[arg(long)]
    tenant_writes_per_minute: Option<u32>,
    /// Test events per account per minute (default 20).
    #[arg(long)]
    tenant_test_events_per_minute: Option<u32>,
    /// Failed authentications per client address per minute before 429 (default 30).
    #[arg(long)]
    tenant_auth_failures_per_minute: Option<u32>,
    /// Range of a delivery setting tenants may set, NAME=MIN..MAX (e.g.
    /// send_timeout_ms=1000..60000); repeat for more.
    #[arg(long = "tenant-delivery")]
    tenant_delivery: Vec<String>,
    /// Join a cluster on NATS JetStream: comma-separated nats://HOST:PORT
    /// URLs (the configuration then lives in NATS, not in SQLite; see
    /// docs/cluster.md). More settings in [cluster] of --config.
    #[arg(long)]
    cluster: Option<String>,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an API key for an account (created if new); prints the key alone on stdout.
    Create {
        /// The data directory of `sluice serve`.
        #[arg(long, required_unless_present = "cluster", conflicts_with = "cluster")]
        data_dir: Option<PathBuf>,
        /// A cluster's NATS servers (comma-separated nats:// URLs), for
        /// `sluice serve --cluster`.
        #[arg(long)]
        cluster: Option<String>,
        /// The account id (ac_...).
        #[arg(long)]
        account: String,
    },
}

fn serve(a: ServeArgs) -> Result<ExitCode, String> {
    use sluice_serve::settings::ServeFile;
    let file = match &a.config {
        Some(p) => ServeFile::load(p)?,
        None => ServeFile::default(),
    };
    let mut policy = file.tenants;
    macro_rules! flag {
        ($($f:ident => $k:ident),* $(,)?) => {
            $(if let Some(v) = a.$f { policy.$k = v; })*
        };
    }
    flag!(
        tenant_plugin_kinds => plugin_kinds,
        tenant_allow_private_destinations => allow_private_destinations,
        tenant_max_outbound_timeout_ms => max_outbound_timeout_ms,
        tenant_max_destinations => max_destinations,
        tenant_max_subscriptions => max_subscriptions,
        tenant_max_destinations_per_subscription => max_destinations_per_subscription,
        tenant_max_sources_per_subscription => max_sources_per_subscription,
        tenant_max_filter_bytes => max_filter_bytes,
        tenant_writes_per_minute => writes_per_minute,
        tenant_test_events_per_minute => test_events_per_minute,
        tenant_auth_failures_per_minute => auth_failures_per_minute,
    );
    for d in &a.tenant_delivery {
        let (name, range) = d
            .split_once('=')
            .ok_or_else(|| format!("--tenant-delivery {d}: expected NAME=MIN..MAX"))?;
        let bound = range
            .parse()
            .map_err(|e| format!("--tenant-delivery {d}: {e}"))?;
        policy
            .delivery
            .set(name, bound)
            .map_err(|e| format!("--tenant-delivery {d}: {e}"))?;
    }
    policy.check()?;
    let data_dir = a
        .data_dir
        .or(file.data_dir)
        .ok_or("--data-dir is required (or data_dir in --config)")?;
    let plugin_dir = a.plugin_dir.or(file.plugin_dir);
    let cluster = match (a.cluster, file.cluster) {
        (None, None) => None,
        (servers, c) => {
            let c = c.unwrap_or_default();
            let servers = servers
                .or_else(|| c.servers.clone())
                .ok_or("[cluster] needs servers (or give --cluster)")?;
            Some(c.options(servers)?)
        }
    };
    let cors_origins = if a.cors_origins.is_empty() {
        file.cors_origins.unwrap_or_default()
    } else {
        a.cors_origins
    };
    let opts = sluice_serve::ServeOptions {
        listen: a
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into()),
        data_dir,
        plugin_dirs: sluice_engine::plugin::plugin_dirs(
            &plugin_dir.into_iter().collect::<Vec<_>>(),
        ),
        ingest_token: a.ingest_token.or(file.ingest_token),
        strict_ngrok_filters: a
            .strict_ngrok_filters
            .or(file.strict_ngrok_filters)
            .unwrap_or(false),
        engine: sluice_engine::EngineConfig {
            workers: a.workers.or(file.workers).unwrap_or(0),
            drain_timeout: std::time::Duration::from_secs(
                a.drain_timeout_s.or(file.drain_timeout_s).unwrap_or(30),
            ),
            ..Default::default()
        },
        metrics_addr: a.metrics_addr.or(file.metrics_addr),
        cors_origins,
        policy,
        cluster,
    };
    let keys_from = match &opts.cluster {
        Some(c) => format!("--cluster {}", c.servers),
        None => format!("--data-dir {}", opts.data_dir.display()),
    };
    let summary = sluice_serve::run(opts, |at| {
        if let Some(first) = &at.first_account {
            println!(
                "sluice serve: first start: created account {} with API key\n  {}\n(it is shown only once; make more with `sluice keys create {keys_from} --account {}`)",
                first.account, first.api_key, first.account
            );
        }
        if let Some(t) = &at.new_ingest_token {
            println!(
                "sluice serve: ingest token (POST /ingest, Authorization: Bearer ...): {t}\n(it is shown only once and stored hashed)"
            );
        }
        // The metrics line before the listening line: scripts read until
        // the listening line.
        if let Some(m) = at.metrics {
            println!("sluice serve: metrics on http://{m}/metrics");
        }
        println!("sluice serve: listening on http://{}", at.api)
    })?;
    match summary {
        Some(summary) => eprintln!("sluice serve: {summary}"),
        None => eprintln!(
            "sluice serve: the engine was still in use at exit; queued records were not drained"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
enum PluginCommand {
    /// List the plugins found in the plugin directories.
    List {
        /// Extra plugin directory, searched first.
        #[arg(long)]
        plugin_dir: Option<PathBuf>,
        /// Everything each plugin declares (with its configuration's JSON Schema), as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Load a plugin and exercise it against the ABI contract (the
    /// conformance kit). It sends real records: point --config at a test
    /// destination. Exits 1 if a check fails.
    Check {
        /// The plugin's shared library.
        path: PathBuf,
        /// The configuration to create it with (JSON).
        #[arg(long, default_value = "{}")]
        config: String,
    },
}

fn plugin_check(path: &std::path::Path, config: &str) -> ExitCode {
    use sluice_engine::conformance::{Verdict, check_plugin};
    println!("sluice plugin check: {}", path.display());
    let results = check_plugin(path, config);
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for r in &results {
        let tag = match r.verdict {
            Verdict::Pass => {
                passed += 1;
                "PASS"
            }
            Verdict::Fail => {
                failed += 1;
                "FAIL"
            }
            Verdict::Skip => {
                skipped += 1;
                "skip"
            }
        };
        println!("  {tag}  {:<22} {}", r.name, r.detail);
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Logs go to stderr, filtered by `SLUICE_LOG`, else `RUST_LOG`, else
/// `warn` (e.g. `SLUICE_LOG=info,sluice_engine::plugin=debug`); coloured only
/// when stderr is a terminal and `NO_COLOR` is unset; one JSON object per
/// line with `--log-format json`.
fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = ["SLUICE_LOG", "RUST_LOG"]
        .iter()
        .find_map(|var| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| (var, v))
        })
        .map(|(var, v)| {
            tracing_subscriber::EnvFilter::try_new(&v).unwrap_or_else(|e| {
                eprintln!("sluice: {var}={v:?} is not a valid log filter ({e}); using `warn`");
                tracing_subscriber::EnvFilter::new("warn")
            })
        })
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .try_init(),
    };
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

fn generate(a: GenArgs) -> Result<(), String> {
    use sluice_traffic::{GenConfig, Generator};
    use std::io::Write as _;
    let mut g = Generator::new(GenConfig {
        seed: a.seed,
        accounts: a.accounts,
        target_size: a.size,
        audit_share: a.audit_share,
        tcp_share: a.tcp_share,
        prod_share: a.prod_share,
        error_share: a.error_share,
        ..GenConfig::default()
    });
    let mut out: Box<dyn std::io::Write> = if a.out == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        let f = std::fs::File::create(&a.out).map_err(|e| format!("{}: {e}", a.out))?;
        Box::new(std::io::BufWriter::new(f))
    };
    let result = if a.rate == 0 {
        g.write_ndjson(a.events, &mut out).and_then(|_| out.flush())
    } else {
        // Open loop: every 10 ms, whatever is due by then, flushed at once.
        let start = std::time::Instant::now();
        let mut sent = 0u64;
        let mut r = Ok(());
        while sent < a.events && r.is_ok() {
            let due = ((start.elapsed().as_secs_f64() + 0.01) * a.rate as f64) as u64;
            let n = due.min(a.events).saturating_sub(sent);
            r = g.write_ndjson(n, &mut out).and_then(|_| out.flush());
            sent += n;
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        r
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("writing events: {e}")),
    }
}

/// `url*, encoding, gzip` from a JSON Schema's properties (* = required).
fn config_keys(schema: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(schema).unwrap_or_default();
    let required: Vec<&str> = v["required"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    match v["properties"].as_object() {
        Some(p) if !p.is_empty() => p
            .keys()
            .map(|k| {
                if required.contains(&k.as_str()) {
                    format!("{k}*")
                } else {
                    k.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => "(none)".into(),
    }
}

/// Says which shared libraries in the plugin directories were not loaded
/// because of their name, so that a misnamed plugin is not silently ignored.
fn print_skipped(reg: &sluice_engine::plugin::PluginRegistry) {
    for p in &reg.skipped {
        eprintln!(
            "skipped: {}: not named libsluice_sink_<kind>.so (.dylib, .dll), so not loaded as a plugin",
            p.display()
        );
    }
}

fn plugin_list(dir: Option<PathBuf>, json: bool) -> Result<(), String> {
    let dirs = sluice_engine::plugin::plugin_dirs(&dir.into_iter().collect::<Vec<_>>());
    let reg = sluice_engine::plugin::PluginRegistry::discover(&dirs);
    if json {
        let list: Vec<serde_json::Value> = reg
            .all()
            .map(|p| {
                let l = p.info.limits;
                serde_json::json!({
                    "kind": p.info.kind,
                    "version": p.info.version,
                    "description": p.info.description,
                    "path": p.path,
                    "abi": format!("1.{}", p.info.abi_minor),
                    "thread_safe": p.info.thread_safe,
                    "ordered": p.info.ordered,
                    "limits": {
                        "max_records": l.max_records,
                        "max_batch_bytes": l.max_batch_bytes,
                        "max_record_bytes": l.max_record_bytes,
                        "record_overhead_bytes": l.record_overhead_bytes,
                    },
                    "config_schema": serde_json::from_str::<serde_json::Value>(&p.info.config_schema)
                        .unwrap_or(serde_json::Value::String(p.info.config_schema.clone())),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?
        );
        for e in &reg.errors {
            eprintln!("refused: {e}");
        }
        print_skipped(&reg);
        return Ok(());
    }
    println!(
        "{:<22} {:<9} {:>8} {:>10} {:>10}  PATH",
        "KIND", "VERSION", "RECORDS", "BATCH", "RECORD"
    );
    for p in reg.all() {
        let l = p.info.limits;
        let bytes = |n: u64| {
            if n == 0 {
                "-".to_string()
            } else {
                format!("{}", n)
            }
        };
        println!(
            "{:<22} {:<9} {:>8} {:>10} {:>10}  {}",
            p.info.kind,
            p.info.version,
            if l.max_records == 0 {
                "-".into()
            } else {
                l.max_records.to_string()
            },
            bytes(l.max_batch_bytes),
            bytes(l.max_record_bytes),
            p.path.display()
        );
        println!("    {}", p.info.description);
        let mut flags = vec![format!("ABI 1.{}", p.info.abi_minor)];
        if p.info.thread_safe {
            flags.push("thread-safe".into());
        }
        if p.info.ordered {
            flags.push("ordered".into());
        }
        println!(
            "    config: {}   ({})",
            config_keys(&p.info.config_schema),
            flags.join(", ")
        );
    }
    for e in &reg.errors {
        eprintln!("refused: {e}");
    }
    print_skipped(&reg);
    if reg.all().next().is_none() {
        eprintln!(
            "no plugins found in: {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    sluice_bench::alloc::mark_installed();
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Run(a) => run::run(a),
        Command::Check(a) => check::check(a),
        Command::Demo(a) => demo::demo(a),
        Command::Gen(a) => generate(a).map(|_| ExitCode::SUCCESS),
        Command::Plugin(PluginCommand::List { plugin_dir, json }) => {
            plugin_list(plugin_dir, json).map(|_| ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Check { path, config }) => Ok(plugin_check(&path, &config)),
        Command::Bench(a) => bench::bench(a),
        Command::Serve(a) => serve(a),
        Command::Tap(a) => tap::tap(a),
        Command::Dlq(c) => dlq::dlq(c),
        Command::Keys(KeysCommand::Create {
            data_dir,
            cluster,
            account,
        }) => {
            let place = match (data_dir, cluster) {
                (_, Some(servers)) => sluice_serve::KeyStore::Cluster(servers),
                (Some(dir), None) => sluice_serve::KeyStore::DataDir(dir),
                (None, None) => unreachable!("clap requires one"),
            };
            sluice_serve::create_key(&place, &account).map(|token| {
                println!("{token}");
                ExitCode::SUCCESS
            })
        }
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("sluice: {msg}");
            ExitCode::from(2)
        }
    }
}
