//! `sluice dlq list|replay`: a destination's dead letters for `sluice run`
//! users (the files under the dead-letter directory), and the list of a
//! cluster's (`--cluster`). A replay sends the selected dead letters
//! through the destination as the configuration describes it now (fix it
//! first), once per replay id; what fails again goes back to the queue with
//! its new reason.

use sluice_engine::dead_letter_file::{DeadLetterFile, Selection, Taken, valid_replay_id};
use sluice_engine::plugin::{PluginRegistry, plugin_dirs};
use sluice_engine::{Engine, EngineConfig, EngineError, PipelineSpec};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Which dead letters: a time range, a reason.
#[derive(clap::Args)]
pub struct SelectArgs {
    /// Only those dead-lettered at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Only those dead-lettered before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Only those whose reason contains this text.
    #[arg(long)]
    reason: Option<String>,
}

impl SelectArgs {
    fn selection(&self) -> Result<Selection, String> {
        let time = |flag: &str, v: &Option<String>| {
            v.as_deref()
                .map(|t| {
                    sluice_engine::events::parse_rfc3339_ms(t).ok_or_else(|| {
                        format!("--{flag} {t}: not an RFC 3339 time (e.g. 2026-12-05T10:00:00Z)")
                    })
                })
                .transpose()
        };
        Ok(Selection {
            since_ms: time("since", &self.since)?,
            until_ms: time("until", &self.until)?,
            reason: self.reason.clone(),
            max_id: None,
        })
    }
}

#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// Print a destination's dead letters, newest first, one JSON object
    /// per line (`id`, `time`, `subscription`, `reason`, `attempts`,
    /// `record`).
    List {
        /// The destination id.
        #[arg(long)]
        destination: String,
        /// Where `sluice run` wrote them (its --dead-letter-dir).
        #[arg(long, default_value = "dead-letter")]
        dead_letter_dir: PathBuf,
        /// Read a cluster's instead (comma-separated nats:// URLs; oldest first).
        #[arg(long)]
        cluster: Option<String>,
        /// Print at most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Send a destination's dead letters again, through the destination as
    /// `--config` describes it now, and wait until each is delivered or
    /// back in the queue with its new reason; print what happened (records,
    /// delivered, dead_lettered_again, seconds, records_per_second). Exit 0
    /// when every record was delivered, 1 when some failed again.
    Replay {
        /// The TOML configuration `sluice run` uses (fixed).
        #[arg(long)]
        config: PathBuf,
        /// The destination id.
        #[arg(long)]
        destination: String,
        /// The replay's id: a replay id is carried out once; repeating it
        /// sends nothing (default: a new one).
        #[arg(long)]
        id: Option<String>,
        /// Where `sluice run` wrote them (its --dead-letter-dir).
        #[arg(long, default_value = "dead-letter")]
        dead_letter_dir: PathBuf,
        /// Where disk buffers live (its --buffer-dir).
        #[arg(long, default_value = "buffer")]
        buffer_dir: PathBuf,
        /// Directory searched first for sink plugins.
        #[arg(long)]
        plugin_dir: Option<PathBuf>,
        /// Seconds to wait for the destination at the end.
        #[arg(long, default_value_t = 30)]
        drain_timeout: u64,
        #[command(flatten)]
        select: SelectArgs,
    },
}

/// Runs `sluice dlq …`.
pub fn dlq(c: DlqCommand) -> Result<ExitCode, String> {
    match c {
        DlqCommand::List {
            destination,
            cluster: Some(servers),
            limit,
            ..
        } => {
            sluice_serve::cluster::dead_letters::list(&servers, &destination, limit, |l| {
                println!("{l}")
            })?;
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::List {
            destination,
            dead_letter_dir,
            cluster: None,
            limit,
            select,
        } => {
            let queue = DeadLetterFile::new(&dead_letter_dir, &destination, 0);
            let selection = select.selection()?;
            let (mut before, mut left) = (None, limit);
            let mut out = std::io::stdout().lock();
            while left > 0 {
                let page = queue
                    .list(&selection, before, left.min(1000))
                    .map_err(|e| format!("{}: {e}", queue.path().display()))?;
                for d in &page.dead_letters {
                    let line = serde_json::json!({
                        "id": d.id, "time": d.time, "subscription": d.subscription,
                        "reason": d.reason, "attempts": d.attempts, "record": d.record,
                    });
                    use std::io::Write;
                    writeln!(out, "{line}").map_err(|e| e.to_string())?;
                }
                left -= page.dead_letters.len();
                match page.next_before {
                    Some(b) => before = Some(b),
                    None => break,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay {
            config,
            destination,
            id,
            dead_letter_dir,
            buffer_dir,
            plugin_dir,
            drain_timeout,
            select,
        } => {
            let id = id.unwrap_or_else(|| {
                format!(
                    "cli_{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis())
                )
            });
            if !valid_replay_id(&id) {
                return Err(format!("--id {id}: 1 to 64 of A-Z a-z 0-9 _ -"));
            }
            let selection = select.selection()?;
            let spec = PipelineSpec::from_file(&config).map_err(|e| e.to_string())?;
            spec.check().map_err(|e| e.in_file(&config).to_string())?;
            if !spec.destinations.iter().any(|d| d.id == destination) {
                return Err(format!(
                    "{}: no destination {destination} (the replay goes through the destination as configured)",
                    config.display()
                ));
            }
            let plugins = PluginRegistry::discover(&plugin_dirs(
                &plugin_dir.iter().cloned().collect::<Vec<_>>(),
            ));
            let cfg = EngineConfig {
                dead_letter_dir,
                buffer_dir,
                drain_timeout: Duration::from_secs(drain_timeout),
                start_timeout: Some(Duration::from_secs(60)),
                ..EngineConfig::default()
            };
            let engine = Engine::start(cfg, plugins, &spec).map_err(|e| match e {
                EngineError::Config(c) => c.in_file(&config).to_string(),
                other => other.to_string(),
            })?;
            let queue = engine
                .dead_letter_queue(&destination)
                .ok_or("the destination has no dead-letter queue")?;
            let io = |e: std::io::Error| format!("{}: {e}", queue.path().display());
            let started = std::time::Instant::now();
            // What an earlier replay left unfinished goes first.
            let mut replays: Vec<String> = queue
                .unfinished()
                .map_err(io)?
                .into_iter()
                .map(|r| r.id)
                .collect();
            let repeated = match queue.take_for_replay(&id, &selection).map_err(io)? {
                Taken::Existing(r) => Some(r),
                Taken::New(r) => {
                    replays.push(r.id);
                    None
                }
            };
            let mut sent = 0;
            for r in &replays {
                let (tx, rx) = std::sync::mpsc::channel();
                let mut failed = None;
                let letters = queue
                    .journal_letters(r)
                    .map_err(io)?
                    .map_while(|l| l.map_err(|e| failed = Some(e)).ok());
                sent += engine
                    .redeliver(&destination, letters, move |report| {
                        let _ = tx.send(report);
                    })
                    .map_err(|e| e.to_string())?;
                if let Some(e) = failed {
                    return Err(format!(
                        "replay {r}: its journal cannot be read ({}); it is kept for the next replay",
                        io(e)
                    ));
                }
                rx.recv()
                    .map_err(|_| format!("replay {r}: the engine stopped"))?;
                queue.finish_replay(r).map_err(io)?;
            }
            let m = engine.metrics().clone();
            engine.shutdown();
            let seconds = started.elapsed().as_secs_f64();
            let counts = m.destination_counts(&destination).unwrap_or_default();
            if let Some(r) = repeated {
                eprintln!(
                    "sluice: replay {} was carried out before ({} records, {}); nothing sent again",
                    r.id, r.records, r.created_at
                );
            }
            let failed = counts.dead_lettered_total();
            println!(
                "{}",
                serde_json::json!({
                    "id": id, "destination": destination, "records": sent,
                    "delivered": counts.delivered, "dead_lettered_again": failed,
                    "seconds": (seconds * 1000.0).round() / 1000.0,
                    "records_per_second": (sent as f64 / seconds.max(1e-9)).round(),
                })
            );
            Ok(if failed > 0 {
                eprintln!(
                    "sluice: {failed} records failed again; they are back in the queue with the new reason"
                );
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
