//! The plugin conformance kit behind `sluice plugin check PATH [--config
//! JSON]`: loads a plugin and exercises everything the ABI contract
//! (`sdk/README.md`) asks of it, through the same code the engine uses.
//!
//! The checks send real records to the destination the configuration names:
//! point it at a test destination.

use crate::config::DeliveryConfig;
use crate::delivery::{Chunk, Delivery};
use crate::encode::Record;
use crate::events::EventTypeId;
use crate::metrics::DestinationStats;
use crate::plugin::{PluginLibrary, RecordOutcome, SendReport, SinkInstance};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// What became of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The plugin did what the contract says.
    Pass,
    /// It did not.
    Fail,
    /// Not applicable to this plugin.
    Skip,
}

/// One check and what it found.
#[derive(Clone, Debug)]
pub struct CheckResult {
    /// Short name.
    pub name: &'static str,
    /// Passed, failed or skipped.
    pub verdict: Verdict,
    /// What was seen.
    pub detail: String,
}

fn pass(name: &'static str, detail: impl Into<String>) -> CheckResult {
    CheckResult {
        name,
        verdict: Verdict::Pass,
        detail: detail.into(),
    }
}

fn fail(name: &'static str, detail: impl Into<String>) -> CheckResult {
    CheckResult {
        name,
        verdict: Verdict::Fail,
        detail: detail.into(),
    }
}

fn skip(name: &'static str, detail: impl Into<String>) -> CheckResult {
    CheckResult {
        name,
        verdict: Verdict::Skip,
        detail: detail.into(),
    }
}

/// A record whose data is a JSON object of exactly `len` bytes (at least
/// 12), stamped now (destinations such as CloudWatch Logs refuse old events).
fn record(i: usize, len: usize) -> Record {
    let pad = len.saturating_sub(r#"{"check":,"p":""}"#.len() + i.to_string().len());
    let data = format!(r#"{{"check":{i},"p":"{}"}}"#, "x".repeat(pad));
    let ty = EventTypeId::from_name("http_request_complete.v0").unwrap_or(EventTypeId(0));
    Record::from_parts(
        data.as_bytes(),
        "ac_sluicecheck",
        &format!("ev_sluicecheck{i}"),
        ty,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    )
}

fn send(inst: &SinkInstance, recs: &[Record]) -> SendReport {
    inst.send_records(recs, "esb_sluicecheck")
}

/// What a send that should deliver everything got instead, if anything.
fn all_delivered(r: &SendReport) -> Result<(), String> {
    if let Some((status, msg)) = &r.failure {
        return Err(match *status {
            1 | 2 => format!("the call failed (status {status}): {msg}"),
            other => format!(
                "send returned status {other}, which is none of OK (0), RETRY (1) and FATAL (2): a contract violation ({msg})"
            ),
        });
    }
    if r.protocol_errors > 0 {
        return Err(format!(
            "{} contract violations (outcome left unset or invalid)",
            r.protocol_errors
        ));
    }
    for (i, o) in r.outcomes.iter().enumerate() {
        match o {
            RecordOutcome::Ok => {}
            RecordOutcome::Retry { reason, .. } => {
                return Err(format!("record {i}: retry ({reason})"));
            }
            RecordOutcome::Reject { reason } => {
                return Err(format!("record {i}: rejected ({reason})"));
            }
        }
    }
    Ok(())
}

/// Runs every check against the plugin at `path` with `config`; stops early
/// only when the plugin cannot be loaded or instantiated.
pub fn check_plugin(path: &Path, config: &str) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let lib = match PluginLibrary::load(path) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            out.push(fail("load", e.to_string()));
            return out;
        }
    };
    let info = lib.info.clone();
    out.push(pass(
        "load",
        format!(
            "entry symbol found, ABI 1.{}, vtable {} bytes, kind `{}` {}",
            info.abi_minor, info.vtable_size, info.kind, info.version
        ),
    ));

    // Metadata.
    let mut problems = Vec::new();
    if info.kind.is_empty()
        || !info
            .kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        problems.push(format!(
            "kind `{}` is not lowercase letters, digits and _",
            info.kind
        ));
    }
    if info.version.trim().is_empty() {
        problems.push("no version".to_string());
    }
    if info.description.trim().is_empty() {
        problems.push("no description".to_string());
    }
    match serde_json::from_str::<serde_json::Value>(&info.config_schema) {
        Ok(v) if v.is_object() => {}
        Ok(_) => problems.push("config_schema is not a JSON object".to_string()),
        Err(e) => problems.push(format!("config_schema is not JSON: {e}")),
    }
    let l = info.limits;
    if l.max_record_bytes != 0 && l.max_batch_bytes != 0 && l.max_record_bytes > l.max_batch_bytes {
        problems.push(format!(
            "max_record_bytes {} is over max_batch_bytes {}: such a record could never be sent",
            l.max_record_bytes, l.max_batch_bytes
        ));
    }
    out.push(if problems.is_empty() {
        pass(
            "metadata",
            format!(
                "kind, version, description, JSON Schema; limits: {} records, {} bytes per batch, {} per record, {} overhead{}{}",
                l.max_records,
                l.max_batch_bytes,
                l.max_record_bytes,
                l.record_overhead_bytes,
                if info.thread_safe { ", thread-safe" } else { "" },
                if info.ordered { ", ordered" } else { "" }
            ),
        )
    } else {
        fail("metadata", problems.join("; "))
    });

    // A bad configuration is refused FATAL with a message, not accepted,
    // retried forever or crashed on. `create` is called many times per
    // process (here, by `sluice check`, at every reconfiguration).
    let stats = Arc::new(DestinationStats::default());
    out.push(refused_fatal(
        "bad config",
        "`this is not JSON`",
        SinkInstance::create(
            lib.clone(),
            "ed_sluicecheck",
            "this is not JSON",
            "",
            stats.clone(),
        ),
    ));
    // The configuration to check with.
    let inst = match SinkInstance::create(lib.clone(), "ed_sluicecheck", config, "", stats.clone())
    {
        Ok(i) => {
            out.push(pass(
                "create",
                "instance created with the given configuration",
            ));
            i
        }
        Err(e) => {
            out.push(fail("create", format!("with the given configuration: {e}")));
            return out;
        }
    };
    // The same configuration with one key more, which the plugin cannot know.
    out.push(match serde_json::from_str::<serde_json::Value>(config) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert(UNKNOWN_KEY.into(), serde_json::Value::Bool(true));
            refused_fatal(
                "unknown config key",
                &format!("the configuration with an extra key `{UNKNOWN_KEY}`"),
                SinkInstance::create(
                    lib.clone(),
                    "ed_sluicecheck",
                    &serde_json::Value::Object(m).to_string(),
                    "",
                    stats.clone(),
                ),
            )
        }
        _ => skip(
            "unknown config key",
            "the given configuration is not a JSON object",
        ),
    });
    // An operator restriction the plugin cannot know: enforcing only the
    // rules it knows would let a tenant past the others.
    out.push(if lib.info.abi_minor < 2 {
        skip(
            "unknown restriction",
            format!(
                "built for ABI 1.{}, before restrictions (ABI 1.2); the engine refuses it any, so `sluice serve` cannot offer it to tenants",
                lib.info.abi_minor
            ),
        )
    } else {
        refused_fatal(
            "unknown restriction",
            &format!("the operator restriction `{UNKNOWN_RESTRICTION}`"),
            SinkInstance::create(
                lib.clone(),
                "ed_sluicecheck",
                config,
                UNKNOWN_RESTRICTION,
                stats.clone(),
            ),
        )
    });

    // An empty batch.
    let r = send(&inst, &[]);
    out.push(match &r.failure {
        None if r.protocol_errors == 0 => pass("empty batch", "send of 0 records returned OK"),
        _ => fail("empty batch", format!("{:?}", r.failure)),
    });

    // A full batch at the declared limits.
    let n = match full_batch_sizes(&l) {
        Ok(sizes) => {
            let recs: Vec<Record> = sizes
                .iter()
                .enumerate()
                .map(|(i, &len)| record(i, len))
                .collect();
            let bytes: u64 = sizes
                .iter()
                .map(|&len| len as u64 + u64::from(l.record_overhead_bytes))
                .sum();
            out.push(match all_delivered(&send(&inst, &recs)) {
                Ok(()) => pass(
                    "full batch",
                    format!(
                        "{} records, {bytes} bytes counted as the plugin counts them (declared: {} records, {} bytes) delivered",
                        recs.len(),
                        declared(u64::from(l.max_records)),
                        declared(l.max_batch_bytes)
                    ),
                ),
                Err(e) => fail("full batch", format!("{} records, {bytes} bytes: {e}", recs.len())),
            });
            sizes.len()
        }
        Err(why) => {
            out.push(skip("full batch", why));
            1
        }
    };

    // A record exactly at the per-record limit.
    let at = if l.max_record_bytes == 0 {
        1 << 20
    } else {
        l.max_record_bytes
            .saturating_sub(u64::from(l.record_overhead_bytes)) as usize
    };
    let big = record(n, at.max(32));
    out.push(
        if big.data().len() as u64 + u64::from(l.record_overhead_bytes) > l.max_record_bytes
            && l.max_record_bytes != 0
        {
            skip(
                "record at the limit",
                format!(
                    "the limit ({} bytes) is too small for a JSON record",
                    l.max_record_bytes
                ),
            )
        } else {
            match all_delivered(&send(&inst, std::slice::from_ref(&big))) {
                Ok(()) => pass(
                    "record at the limit",
                    format!("one record of {} bytes delivered", big.data().len()),
                ),
                Err(e) => fail("record at the limit", e),
            }
        },
    );

    // One over it: the engine dead-letters it and never calls the plugin.
    out.push(if l.max_record_bytes == 0 {
        skip(
            "record over the limit",
            "the plugin declares no per-record limit",
        )
    } else {
        over_the_limit(&lib, config, &big)
    });

    // Concurrent sends.
    out.push(if !info.thread_safe {
        skip(
            "concurrent sends",
            "not thread-safe: the engine serializes its calls",
        )
    } else {
        let inst = &inst;
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    s.spawn(move || {
                        for k in 0..5 {
                            let recs: Vec<Record> = (0..10)
                                .map(|i| record(10_000 + t * 100 + k * 10 + i, 100))
                                .collect();
                            all_delivered(&send(inst, &recs))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("the thread panicked".into()))
                })
                .collect()
        });
        match results.into_iter().find_map(Result::err) {
            None => pass(
                "concurrent sends",
                "4 threads x 5 sends of 10 records, all delivered",
            ),
            Some(e) => fail("concurrent sends", e),
        }
    });

    out.push(match inst.flush() {
        Ok(()) => pass("flush", "OK"),
        Err(e) => fail("flush", e),
    });
    out.push(if !lib.has_verify() {
        skip("verify", "the plugin has no verify (test event) call")
    } else {
        match inst.verify() {
            Ok(()) => pass("verify", "test event written"),
            Err(e) => fail("verify", e.message),
        }
    });
    let t = Instant::now();
    drop(inst);
    out.push(pass("destroy", format!("returned in {:?}", t.elapsed())));
    let pv = stats.plugin.lock().unwrap_or_else(|p| p.into_inner()).len();
    out.push(pass(
        "host callbacks",
        format!("{pv} plugin metrics reported through the host"),
    ));
    out
}

/// The key added to the configuration to check that unknown keys are refused.
const UNKNOWN_KEY: &str = "sluice_check_unknown_key";
/// A restriction no plugin knows.
const UNKNOWN_RESTRICTION: &str = "egress=public;sluice_check_unknown_restriction=1";

/// The smallest record [`record`] makes.
const MIN_RECORD: u64 = 32;

/// `n` records, or "no limit" for 0.
fn declared(n: u64) -> String {
    if n == 0 {
        "no limit".into()
    } else {
        n.to_string()
    }
}

/// `create` must refuse `what` FATAL, with a message: a configuration that
/// can never work is no reason to try again later.
fn refused_fatal(
    name: &'static str,
    what: &str,
    created: Result<SinkInstance, crate::plugin::PluginError>,
) -> CheckResult {
    match created {
        Ok(_) => fail(name, format!("create accepted {what}")),
        Err(crate::plugin::PluginError::Create {
            retryable: true,
            message,
            ..
        }) => fail(
            name,
            format!(
                "create answered RETRY to {what}: a configuration that can never work must be refused FATAL ({message})"
            ),
        ),
        Err(crate::plugin::PluginError::Create { message, .. })
            if message.trim().is_empty() || message.contains("and no message") =>
        {
            fail(
                name,
                format!("create refused {what} without saying why (call set_error)"),
            )
        }
        Err(e) => pass(name, format!("refused FATAL: {e}")),
    }
}

/// The data sizes of the batch at the declared limits: `max_records`
/// records (1,000 when the plugin declares none) whose bytes, each plus the
/// per-record overhead, add up to exactly `max_batch_bytes` when the plugin
/// declares it (1 KiB records otherwise), none over `max_record_bytes`.
fn full_batch_sizes(l: &sluice_sdk::abi::SluiceLimits) -> Result<Vec<usize>, String> {
    let ov = u64::from(l.record_overhead_bytes);
    let records = if l.max_records == 0 {
        1000
    } else {
        u64::from(l.max_records)
    };
    let cap = if l.max_record_bytes == 0 {
        u64::MAX
    } else {
        l.max_record_bytes.saturating_sub(ov)
    };
    if cap < MIN_RECORD {
        return Err(format!(
            "the per-record limit ({} bytes with {ov} of overhead) is too small for a JSON record",
            l.max_record_bytes
        ));
    }
    if l.max_batch_bytes == 0 {
        return Ok(vec![cap.min(1024) as usize; records as usize]);
    }
    let n = records.min(l.max_batch_bytes / (MIN_RECORD + ov));
    if n == 0 {
        return Err(format!(
            "the batch limit ({} bytes) is too small for one JSON record",
            l.max_batch_bytes
        ));
    }
    let base = (l.max_batch_bytes / n - ov).min(cap);
    // Spread what is left, a byte each, while records stay within the cap.
    let mut left = l.max_batch_bytes - n * (base + ov);
    Ok((0..n)
        .map(|_| {
            let extra = u64::from(left > 0 && base < cap);
            left -= extra;
            (base + extra) as usize
        })
        .collect())
}

/// Pushes one record over the limit through the engine's delivery: it must
/// be dead-lettered with the reason and the plugin never called.
fn over_the_limit(lib: &Arc<PluginLibrary>, config: &str, at_limit: &Record) -> CheckResult {
    const NAME: &str = "record over the limit";
    let dir = std::env::temp_dir().join(format!(
        "sluice-plugin-check-{}-{}",
        std::process::id(),
        at_limit.data().len()
    ));
    let result = (|| -> Result<CheckResult, String> {
        let d = Delivery::new(1, dir.join("dead-letter"), dir.join("buffer"))
            .map_err(|e| e.to_string())?;
        let stats = Arc::new(DestinationStats::default());
        let inst = SinkInstance::create(lib.clone(), "ed_sluicecheck", config, "", stats.clone())
            .map_err(|e| e.to_string())?;
        let cfg = DeliveryConfig {
            linger_ms: 0,
            ..DeliveryConfig::default()
        };
        let h = d.start(
            "ed_sluicecheck",
            &lib.info.kind,
            String::new(),
            &cfg,
            crate::delivery::SinkSource::Ready(inst),
            stats.clone(),
            None,
        );
        let over = record(0, at_limit.data().len() + 1);
        h.push(Chunk {
            subscription: "esb_sluicecheck".into(),
            records: vec![over],
            received: Instant::now(),
            hold: None,
        });
        drop(h);
        d.shutdown(Duration::from_secs(10));
        let batches = stats.batches.load(Relaxed);
        let reasons: Vec<String> = stats
            .dead_lettered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        Ok(
            if batches == 0 && reasons.iter().any(|r| r.contains("over the sink's limit")) {
                pass(NAME, "dead-lettered by the engine, never sent")
            } else {
                fail(
                    NAME,
                    format!("{batches} sends, dead-letter reasons {reasons:?}"),
                )
            },
        )
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result.unwrap_or_else(|e| fail(NAME, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::abi::SluiceLimits;

    fn limits(records: u32, batch: u64, record: u64, overhead: u32) -> SluiceLimits {
        SluiceLimits {
            max_records: records,
            max_batch_bytes: batch,
            max_record_bytes: record,
            record_overhead_bytes: overhead,
        }
    }

    fn bytes(sizes: &[usize], overhead: u32) -> u64 {
        sizes.iter().map(|&s| s as u64 + u64::from(overhead)).sum()
    }

    #[test]
    fn the_full_batch_fills_both_declared_limits_exactly() {
        // CloudWatch Logs: 10,000 events, 1 MiB, 26 bytes of overhead each.
        let l = limits(10_000, 1_048_576, 262_144, 26);
        let s = full_batch_sizes(&l).unwrap();
        assert_eq!(s.len(), 10_000);
        assert_eq!(bytes(&s, 26), 1_048_576);
        // Kinesis: 500 records, 5 MiB, 1 MiB each.
        let s = full_batch_sizes(&limits(500, 5 << 20, 1 << 20, 0)).unwrap();
        assert_eq!((s.len(), bytes(&s, 0)), (500, 5 << 20));
        // The per-record cap binds: as many records as declared, each at its cap.
        let s = full_batch_sizes(&limits(10, 1 << 20, 1000, 10)).unwrap();
        assert_eq!(s, vec![990; 10]);
        // No byte limit: 1 KiB records; no record limit: 1,000 records.
        let s = full_batch_sizes(&limits(0, 0, 0, 0)).unwrap();
        assert_eq!((s.len(), s[0]), (1000, 1024));
        // Too small for a record, and an overhead above the per-record limit.
        assert!(full_batch_sizes(&limits(10, 20, 0, 0)).is_err());
        assert!(full_batch_sizes(&limits(10, 1000, 8, 26)).is_err());
    }
}
