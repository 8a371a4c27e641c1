//! `faulty`: a sink that misbehaves on purpose, so that tests can check the
//! engine contains it. Not for production use.
//!
//! Configuration: `{"mode": M, "every": N, "path": P}` where `mode` is one of
//! * `panic`: panics inside `send` on every Nth call;
//! * `error`: returns a retryable error on every Nth call;
//! * `unset`: leaves every outcome unreported on every Nth call;
//! * `reject`: rejects every record of every Nth call;
//! * `slow`: sleeps `delay_ms` in every `send` (or only the first
//!   `slow_calls`), then behaves;
//! * `ok`: behaves.
//!
//! `start_gate: F`: `create` fails while the file F does not exist, with
//! RETRY (or FATAL with `gate_fatal: true`): a destination that cannot start
//! yet, or whose configuration is refused since a restart.
//!
//! `accept_unknown_keys: true` and `retry_refusals: true` break the
//! configuration contract (unknown keys are ignored; a refused configuration
//! answers RETRY instead of FATAL), for the conformance kit's own tests.
//!
//! Calls that behave append the records to `path` (if given), one per line,
//! so tests can check what was finally delivered.

use serde::Deserialize;
use sluice_sdk::{Batch, Error, Host, Limits, Outcomes, Sink, SinkInfo};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: String,
    #[serde(default = "one")]
    every: u64,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    panic_in_create: bool,
    #[serde(default)]
    delay_ms: u64,
    /// With mode `slow`: only the first this many calls are slow (0 = all).
    #[serde(default)]
    slow_calls: u64,
    /// Breaks the contract: ignores keys it does not know. (Read from the
    /// raw JSON before parsing; declared so that `deny_unknown_fields` takes it.)
    #[serde(default)]
    #[allow(dead_code)]
    accept_unknown_keys: bool,
    /// Breaks the contract: refuses a configuration with RETRY, not FATAL.
    #[serde(default)]
    #[allow(dead_code)]
    retry_refusals: bool,
    /// `create` fails while this file does not exist.
    #[serde(default)]
    start_gate: Option<String>,
    /// With `start_gate`: fail FATAL rather than RETRY.
    #[serde(default)]
    gate_fatal: bool,
}

/// The keys of [`Config`], for `accept_unknown_keys`.
const KEYS: [&str; 10] = [
    "mode",
    "every",
    "path",
    "panic_in_create",
    "delay_ms",
    "slow_calls",
    "accept_unknown_keys",
    "retry_refusals",
    "start_gate",
    "gate_fatal",
];

fn one() -> u64 {
    1
}

/// The misbehaving sink.
pub struct Faulty {
    config: Config,
    calls: AtomicU64,
    out: Mutex<Option<std::fs::File>>,
}

impl Sink for Faulty {
    fn info() -> SinkInfo {
        SinkInfo {
            kind: "faulty",
            version: env!("CARGO_PKG_VERSION"),
            description: "misbehaves on purpose (tests only)",
            config_schema: r#"{"type":"object","required":["mode"]}"#,
            limits: Limits {
                max_records: 100,
                ..Limits::default()
            },
            thread_safe: true,
            ordered: false,
        }
    }

    fn create(config: &str, _host: Host) -> Result<Self, Error> {
        let mut raw: serde_json::Value =
            serde_json::from_str(config).map_err(|e| Error::fatal(format!("faulty: {e}")))?;
        let flag = |k: &str| raw.get(k) == Some(&serde_json::Value::Bool(true));
        let retry_refusals = flag("retry_refusals");
        if flag("accept_unknown_keys")
            && let Some(m) = raw.as_object_mut()
        {
            m.retain(|k, _| KEYS.contains(&k.as_str()));
        }
        let config: Config = serde_json::from_value(raw).map_err(|e| {
            let msg = format!("faulty: {e}");
            if retry_refusals {
                Error::retry(msg)
            } else {
                Error::fatal(msg)
            }
        })?;
        if config.panic_in_create {
            panic!("faulty: panic in create, as configured");
        }
        if let Some(gate) = &config.start_gate
            && !std::path::Path::new(gate).exists()
        {
            let msg = format!("faulty: the start gate {gate} is closed");
            return Err(if config.gate_fatal {
                Error::fatal(msg)
            } else {
                Error::retry(msg)
            });
        }
        if !["panic", "error", "unset", "reject", "slow", "ok"].contains(&config.mode.as_str()) {
            return Err(Error::fatal(format!(
                "faulty: unknown mode {}",
                config.mode
            )));
        }
        let out = match &config.path {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| Error::fatal(format!("faulty: {e}")))?,
            ),
            None => None,
        };
        Ok(Faulty {
            config,
            calls: AtomicU64::new(0),
            out: Mutex::new(out),
        })
    }

    fn send(&self, batch: &Batch<'_>, outcomes: &mut Outcomes<'_>) -> Result<(), Error> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.config.mode == "slow"
            && (self.config.slow_calls == 0 || n <= self.config.slow_calls)
        {
            std::thread::sleep(std::time::Duration::from_millis(self.config.delay_ms));
        }
        let misbehave = self.config.every > 0 && n.is_multiple_of(self.config.every);
        if misbehave {
            match self.config.mode.as_str() {
                "panic" => panic!("faulty: panic in send #{n}, as configured"),
                "error" => return Err(Error::retry(format!("faulty: error in send #{n}"))),
                "unset" => return Ok(()),
                "reject" => {
                    for i in 0..batch.len() {
                        outcomes.reject(i, "faulty: rejected as configured");
                    }
                    return Ok(());
                }
                _ => {}
            }
        }
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = out.as_mut() {
            let mut buf = Vec::new();
            for r in batch.iter() {
                buf.extend_from_slice(r.data());
                buf.push(b'\n');
            }
            f.write_all(&buf)
                .map_err(|e| Error::retry(format!("faulty: {e}")))?;
        }
        outcomes.all_ok();
        Ok(())
    }
}

sluice_sdk::export_sink!(Faulty);
