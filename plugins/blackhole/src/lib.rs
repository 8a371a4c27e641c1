//! `blackhole`: a sink that accepts every record and drops it.
//!
//! It exists to measure the engine without a destination in the way. It counts
//! what it is given through the host's plugin counters (`records`, `bytes`,
//! `batches`). Configuration: an empty object, or `{"reject_every": N}` to
//! reject every Nth record (for tests of the dead-letter path).

use sluice_sdk::{Batch, Error, Host, Limits, Outcomes, Sink, SinkInfo};
use std::sync::atomic::{AtomicU64, Ordering};

/// The blackhole sink.
pub struct Blackhole {
    host: Host,
    reject_every: u64,
    seen: AtomicU64,
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "blackhole sink",
  "type": "object",
  "properties": {
    "reject_every": {"type": "integer", "minimum": 0, "description": "reject every Nth record (0 = never)"}
  },
  "additionalProperties": false
}"#;

impl Sink for Blackhole {
    fn info() -> SinkInfo {
        SinkInfo {
            kind: "blackhole",
            version: env!("CARGO_PKG_VERSION"),
            description: "counts records and drops them",
            config_schema: SCHEMA,
            limits: Limits {
                max_records: 10_000,
                record_overhead_bytes: 0,
                max_batch_bytes: 16 << 20,
                max_record_bytes: 1 << 20,
            },
            thread_safe: true,
            ordered: false,
        }
    }

    fn create(config: &str, host: Host) -> Result<Self, Error> {
        let v: serde_json::Value = serde_json::from_str(if config.trim().is_empty() {
            "{}"
        } else {
            config
        })
        .map_err(|e| Error::fatal(format!("blackhole: configuration is not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::fatal("blackhole: configuration must be a JSON object"))?;
        let mut reject_every = 0;
        for (k, val) in obj {
            match k.as_str() {
                "reject_every" => {
                    reject_every = val.as_u64().ok_or_else(|| {
                        Error::fatal("blackhole: reject_every must be a non-negative integer")
                    })?
                }
                other => {
                    return Err(Error::fatal(format!(
                        "blackhole: unknown configuration key `{other}` (known: reject_every)"
                    )));
                }
            }
        }
        Ok(Blackhole {
            host,
            reject_every,
            seen: AtomicU64::new(0),
        })
    }

    fn send(&self, batch: &Batch<'_>, outcomes: &mut Outcomes<'_>) -> Result<(), Error> {
        let mut bytes = 0u64;
        if self.reject_every == 0 {
            for r in batch.iter() {
                bytes += r.data().len() as u64;
            }
            outcomes.all_ok();
        } else {
            let start = self.seen.fetch_add(batch.len() as u64, Ordering::Relaxed);
            for (i, r) in batch.iter().enumerate() {
                bytes += r.data().len() as u64;
                if (start + i as u64 + 1).is_multiple_of(self.reject_every) {
                    outcomes.reject(i, "blackhole: rejected by reject_every");
                } else {
                    outcomes.ok(i);
                }
            }
        }
        self.host.counter_add("records", batch.len() as u64);
        self.host.counter_add("bytes", bytes);
        self.host.counter_add("batches", 1);
        Ok(())
    }

    const HAS_VERIFY: bool = true;

    fn verify(&self) -> Result<(), Error> {
        Ok(())
    }
}

sluice_sdk::export_sink!(Blackhole);
