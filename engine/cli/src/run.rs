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
    /// Seconds to wait at the end for undelivered records before dead-lettering them.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
}

pub fn run(a: RunArgs) -> Result<ExitCode, String> {
    let spec = PipelineSpec::from_file(&a.config).map_err(|e| e.to_string())?;
    spec.validate()
        .map_err(|e| e.in_file(&a.config).to_string())?;
    let dirs = plugin_dirs(&a.plugin_dir.iter().cloned().collect::<Vec<_>>());
    let plugins = PluginRegistry::discover(&dirs);
    let cfg = EngineConfig {
        workers: a.workers,
        dead_letter_dir: a.dead_letter_dir.clone(),
        rejects_path: a.rejects.clone(),
        drain_timeout: Duration::from_secs(a.drain_timeout),
        ..EngineConfig::default()
    };
    let engine = Engine::start(cfg, plugins, &spec).map_err(|e| match e {
        EngineError::Config(c) => c.in_file(&a.config).to_string(),
        other => other.to_string(),
    })?;
    if let Some(addr) = &a.metrics_addr {
        let bound = crate::metrics_http::serve(addr, engine.metrics().clone())?;
        eprintln!("sluice: metrics on http://{bound}/metrics");
    }
    let input: Box<dyn std::io::Read> = if a.input == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(&a.input).map_err(|e| format!("--input {}: {e}", a.input))?)
    };
    let mut read_error = None;
    for chunk in NdjsonReader::new(input, 4 << 20) {
        match chunk {
            Ok(Chunk::Lines(b)) => {
                engine.publish_ndjson(b);
            }
            Ok(Chunk::Oversized { len, prefix }) => engine.reject_oversized(len, prefix),
            Err(e) => {
                read_error = Some(e);
                break;
            }
        }
    }
    let summary = engine.shutdown();
    eprintln!("sluice: {summary}");
    if let Some(e) = read_error {
        return Err(format!("reading --input {}: {e}", a.input));
    }
    Ok(ExitCode::SUCCESS)
}
