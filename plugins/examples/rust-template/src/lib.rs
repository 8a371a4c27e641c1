//! A minimal sink to copy. It "delivers" records by counting them and
//! refuses records whose JSON lacks a configured field, to show every part
//! of the contract a real sink uses: a checked configuration, declared
//! limits, per-record outcomes (ok, retry with a delay, reject with a
//! reason), a test event, and logs and metrics through the host.
//!
//! Replace the body of `send` with calls to your service. Nothing here needs
//! `unsafe`: `export_sink!` turns panics into errors at every entry point.

use sluice_sdk::{Batch, Error, Host, Level, Limits, Outcomes, Sink, SinkInfo};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The configuration's JSON Schema: `sluice plugin list` shows its keys.
const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "template sink",
  "type": "object",
  "properties": {
    "require_field": {"type": "string", "description": "refuse records whose JSON has no such top-level key"},
    "throttle_every": {"type": "integer", "minimum": 0, "description": "ask to retry every Nth batch after 100 ms (0 = never)"}
  },
  "additionalProperties": false
}"#;

/// One instance per destination.
pub struct Template {
    host: Host,
    require_field: Option<String>,
    throttle_every: u64,
    batches: AtomicU64,
}

impl Sink for Template {
    fn info() -> SinkInfo {
        SinkInfo {
            kind: "template",
            version: env!("CARGO_PKG_VERSION"),
            description: "an example sink that counts records (copy it to write yours)",
            config_schema: SCHEMA,
            // What your service accepts per request; the engine never exceeds it.
            limits: Limits {
                max_records: 500,
                record_overhead_bytes: 0,
                max_batch_bytes: 5 << 20,
                max_record_bytes: 1 << 20,
            },
            thread_safe: true,
            ordered: false,
        }
    }

    fn create(config: &str, host: Host) -> Result<Self, Error> {
        let v: serde_json::Value = serde_json::from_str(config)
            .map_err(|e| Error::fatal(format!("template: configuration is not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::fatal("template: configuration must be a JSON object"))?;
        let mut t = Template {
            host,
            require_field: None,
            throttle_every: 0,
            batches: AtomicU64::new(0),
        };
        for (k, val) in obj {
            match k.as_str() {
                "require_field" => {
                    t.require_field = Some(
                        val.as_str()
                            .ok_or_else(|| {
                                Error::fatal("template: `require_field` must be a string")
                            })?
                            .to_string(),
                    )
                }
                "throttle_every" => {
                    t.throttle_every = val.as_u64().ok_or_else(|| {
                        Error::fatal("template: `throttle_every` must be a non-negative integer")
                    })?
                }
                other => {
                    return Err(Error::fatal(format!(
                        "template: unknown configuration key `{other}` (known: require_field, throttle_every)"
                    )));
                }
            }
        }
        t.host.log(
            Level::Info,
            &format!("template sink ready for {}", t.host.destination_id()),
        );
        Ok(t)
    }

    fn send(&self, batch: &Batch<'_>, outcomes: &mut Outcomes<'_>) -> Result<(), Error> {
        let n = self.batches.fetch_add(1, Ordering::Relaxed) + 1;
        if self.throttle_every > 0 && n.is_multiple_of(self.throttle_every) {
            // Your service said "slow down": every record is retried, not before 100 ms.
            for i in 0..batch.len() {
                outcomes.retry(i, Some(Duration::from_millis(100)), "throttled (example)");
            }
            self.host.counter_add("throttled", 1);
            return Ok(());
        }
        for (i, record) in batch.iter().enumerate() {
            // record.data() is the event as compact JSON; account_id(),
            // event_id(), event_type(), subscription_id() and timestamp_ms()
            // are there for routing, partitioning and ordering.
            let keep = match &self.require_field {
                None => true,
                Some(f) => serde_json::from_slice::<serde_json::Value>(record.data())
                    .map(|v| v.get(f).is_some())
                    .unwrap_or(false),
            };
            if keep {
                outcomes.ok(i);
            } else {
                outcomes.reject(i, "the record has no required field (example)");
            }
        }
        self.host.counter_add("records", batch.len() as u64);
        Ok(())
    }

    const HAS_VERIFY: bool = true;

    fn verify(&self) -> Result<(), Error> {
        // Write one test event to your service here.
        self.host.log(Level::Info, "template: verify called");
        Ok(())
    }
}

sluice_sdk::export_sink!(Template);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_errors_name_the_key() {
        for (cfg, want) in [
            ("nope", "not JSON"),
            ("[]", "JSON object"),
            (r#"{"require_field": 3}"#, "`require_field`"),
            (r#"{"colour": "red"}"#, "unknown configuration key `colour`"),
        ] {
            let e = Template::create(cfg, Host::detached()).err().unwrap();
            assert!(e.message().contains(want), "{cfg}: {}", e.message());
        }
        assert!(Template::create(r#"{"require_field":"event_id"}"#, Host::detached()).is_ok());
    }
}
