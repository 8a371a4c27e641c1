//! `sluice run`: a standalone configuration over NDJSON from a file or stdin.

use sluice_engine::ingest::{Chunk, NdjsonReader};
use sluice_engine::plugin::{PluginRegistry, plugin_dirs};
use sluice_engine::{Engine, EngineConfig, EngineError, PipelineSpec};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The TOML configuration (destinations and subscriptions).
    #[arg(long)]
    config: PathBuf,
    /// NDJSON events: a file, or - for stdin.
    #[arg(long)]
    input: String,
    /// Directory searched first for sink plugins.
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Write rejected events with their reason to this file.
    #[arg(long)]
    rejects: Option<PathBuf>,
    /// Filter worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Where dead-lettered records go, unless a destination says otherwise.
    #[arg(long, default_value = "dead-letter")]
    dead_letter_dir: PathBuf,
    /// Seconds to wait at the end for undelivered records (then memory
    /// buffers are dead-lettered; disk buffers keep them for the next run).
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Seconds a destination whose plugin asks to be tried later (RETRY at
    /// create) is tried again, with backoff, while its records wait; then the
    /// run stops with exit 2 and its records are dead-lettered.
    #[arg(long, default_value_t = 60)]
    start_timeout: u64,
    /// Where disk buffers live (`durability = "disk"`), unless a destination says otherwise.
    #[arg(long, default_value = "buffer")]
    buffer_dir: PathBuf,
    /// Acknowledge the input: the file is rewritten (truncated) at each start,
    /// then `<bytes> <events>` is appended each time a longer prefix of this
    /// run's input is safe (fsynced to a disk buffer, delivered,
    /// dead-lettered, or shed by drop_newest). Offsets count from the start
    /// of this run's input, not of earlier runs: an upstream queue adds its
    /// own committed base before committing (docs/delivery.md).
    #[arg(long)]
    ack_file: Option<PathBuf>,
    /// Parse every event in full: no event is settled from the fields its
    /// filters read alone, so every malformed line is rejected with its
    /// reason (slower on traffic the filters mostly reject).
    #[arg(long)]
    full_parse: bool,
}

/// Writes the acknowledged prefix of the input, in order, as chunks complete.
struct Acks {
    tx: std::sync::mpsc::Sender<(u64, u64, u64)>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl Acks {
    fn start(path: &std::path::Path) -> Result<Acks, String> {
        let mut f = std::fs::File::create(path)
            .map_err(|e| format!("--ack-file {}: {e}", path.display()))?;
        let (tx, rx) = std::sync::mpsc::channel::<(u64, u64, u64)>();
        let thread = std::thread::Builder::new()
            .name("sluice-acks".into())
            .spawn(move || {
                use std::io::Write;
                let mut done = std::collections::BTreeMap::new();
                let (mut next, mut bytes, mut events) = (0u64, 0u64, 0u64);
                for (i, b, e) in rx {
                    done.insert(i, (b, e));
                    let before = next;
                    while let Some((b, e)) = done.remove(&next) {
                        bytes += b;
                        events += e;
                        next += 1;
                    }
                    if next > before {
                        // One write per line, so a crash leaves whole lines.
                        f.write_all(format!("{bytes} {events}\n").as_bytes())
                            .map_err(|e| format!("writing the ack file: {e}"))?;
                    }
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        Ok(Acks { tx, thread })
    }
}

pub fn run(a: RunArgs) -> Result<ExitCode, String> {
    let spec = PipelineSpec::from_file(&a.config).map_err(|e| e.to_string())?;
    let warnings = spec.check().map_err(|e| e.in_file(&a.config).to_string())?;
    for (item, w) in warnings {
        tracing::warn!("{}: {item}: {w}", a.config.display());
    }
    let dirs = plugin_dirs(&a.plugin_dir.iter().cloned().collect::<Vec<_>>());
    let plugins = PluginRegistry::discover(&dirs);
    let cfg = EngineConfig {
        workers: a.workers,
        dead_letter_dir: a.dead_letter_dir.clone(),
        rejects_path: a.rejects.clone(),
        drain_timeout: Duration::from_secs(a.drain_timeout),
        buffer_dir: a.buffer_dir.clone(),
        start_timeout: Some(Duration::from_secs(a.start_timeout)),
        full_parse: a.full_parse,
        ..EngineConfig::default()
    };
    let engine = Engine::start(cfg, plugins, &spec).map_err(|e| match e {
        EngineError::Config(c) => c.in_file(&a.config).to_string(),
        other => other.to_string(),
    })?;
    if let Some(addr) = &a.metrics_addr {
        let bound =
            crate::metrics_http::serve(addr, engine.metrics().clone(), engine.tap_opener())?;
        eprintln!("sluice: metrics on http://{bound}/metrics");
    }
    let input: Box<dyn std::io::Read> = if a.input == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(&a.input).map_err(|e| format!("--input {}: {e}", a.input))?)
    };
    let acks = a.ack_file.as_deref().map(Acks::start).transpose()?;
    let mut read_error = None;
    let mut index = 0u64;
    let mut failed = Vec::new();
    for chunk in NdjsonReader::new(input, 4 << 20) {
        // A destination that never started ends the run (after what it
        // holds is dead-lettered and the others are drained).
        failed = engine.failed_starts();
        if !failed.is_empty() {
            break;
        }
        match chunk {
            Ok(Chunk::Lines(b)) => match &acks {
                Some(acks) => {
                    let (tx, i, len) = (acks.tx.clone(), index, b.len() as u64);
                    engine.publish_ndjson_durable(b, move |r| {
                        let _ = tx.send((i, len, r.accepted + r.rejected.len() as u64));
                    });
                    index += 1;
                }
                None => {
                    engine.publish_ndjson(b);
                }
            },
            Ok(Chunk::Oversized {
                len,
                consumed,
                prefix,
            }) => {
                engine.reject_oversized(len, prefix);
                if let Some(acks) = &acks {
                    let _ = acks.tx.send((index, consumed as u64, 1));
                    index += 1;
                }
            }
            Err(e) => {
                read_error = Some(e);
                break;
            }
        }
    }
    let summary = engine.shutdown();
    eprintln!("sluice: {summary}");
    if let Some(acks) = acks {
        drop(acks.tx);
        acks.thread
            .join()
            .map_err(|_| "the ack writer panicked".to_string())??;
    }
    if let Some(e) = read_error {
        return Err(format!("reading --input {}: {e}", a.input));
    }
    if let Some(f) = failed.first() {
        return Err(format!(
            "destination \"{}\" could not start within --start-timeout {} s ({}); the run was stopped and its records dead-lettered",
            f.destination, a.start_timeout, f.error
        ));
    }
    Ok(ExitCode::SUCCESS)
}
