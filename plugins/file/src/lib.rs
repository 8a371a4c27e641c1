//! `file`: appends records to a local file as NDJSON, one line per record,
//! rotating by size.
//!
//! Configuration (JSON):
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `path` | required | the file to append to; its directory is created |
//! | `max_bytes` | 134217728 (128 MiB) | rotate once the file reaches this size (0 = never) |
//! | `max_files` | 0 | rotated files to keep, oldest removed first (0 = keep all) |
//! | `fsync` | false | `fdatasync` after every batch, not only on flush |
//!
//! Rotation renames `path` to `path.1`, `path.2`, ... (the highest number is
//! the newest) and starts a new `path`. Every batch is written through to the
//! operating system before `send` returns, so a record reported delivered
//! survives a crash of the process (and, with `fsync`, of the machine).

use serde::Deserialize;
use sluice_sdk::{Batch, Error, Host, Level, Limits, Outcomes, Sink, SinkInfo};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "file sink",
  "type": "object",
  "required": ["path"],
  "properties": {
    "path": {"type": "string", "description": "file to append NDJSON to"},
    "max_bytes": {"type": "integer", "minimum": 0, "default": 134217728, "description": "rotate at this size (0 = never)"},
    "max_files": {"type": "integer", "minimum": 0, "default": 0, "description": "rotated files to keep (0 = all)"},
    "fsync": {"type": "boolean", "default": false, "description": "fdatasync after every batch"}
  },
  "additionalProperties": false
}"#;

/// Parsed configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// File to append to.
    pub path: PathBuf,
    /// Rotation size in bytes (0 = never).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (0 = all).
    #[serde(default)]
    pub max_files: u32,
    /// fdatasync after each batch.
    #[serde(default)]
    pub fsync: bool,
}

fn default_max_bytes() -> u64 {
    128 << 20
}

struct Open {
    writer: BufWriter<File>,
    size: u64,
}

/// The file sink.
pub struct FileSink {
    config: FileConfig,
    host: Host,
    state: Mutex<Option<Open>>,
}

impl FileSink {
    fn open(&self) -> std::io::Result<Open> {
        if let Some(dir) = self.config.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.config.path)?;
        let size = file.metadata()?.len();
        Ok(Open {
            writer: BufWriter::with_capacity(256 << 10, file),
            size,
        })
    }

    fn rotate(&self, open: &mut Open) -> std::io::Result<()> {
        open.writer.flush()?;
        let numbers = rotated_numbers(&self.config.path);
        let next = numbers.last().copied().unwrap_or(0) + 1;
        let target = numbered(&self.config.path, next);
        std::fs::rename(&self.config.path, &target)?;
        if self.config.max_files > 0 {
            let keep = self.config.max_files as usize;
            let mut all = numbers;
            all.push(next);
            let excess = all.len().saturating_sub(keep);
            for n in &all[..excess] {
                let _ = std::fs::remove_file(numbered(&self.config.path, *n));
            }
        }
        *open = self.open()?;
        self.host.log(
            Level::Info,
            &format!(
                "file: rotated {} to {}",
                self.config.path.display(),
                target.display()
            ),
        );
        Ok(())
    }

    fn write_batch(
        &self,
        open: &mut Open,
        batch: &Batch<'_>,
        written: &mut usize,
    ) -> std::io::Result<()> {
        for r in batch.iter() {
            let data = r.data();
            if self.config.max_bytes > 0
                && open.size > 0
                && open.size + data.len() as u64 + 1 > self.config.max_bytes
            {
                self.rotate(open)?;
            }
            open.writer.write_all(data)?;
            open.writer.write_all(b"\n")?;
            open.size += data.len() as u64 + 1;
            *written += 1;
        }
        open.writer.flush()?;
        if self.config.fsync {
            open.writer.get_ref().sync_data()?;
        }
        Ok(())
    }
}

fn numbered(path: &Path, n: u64) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The numbers of the rotated files that exist next to `path`, ascending.
fn rotated_numbers(path: &Path) -> Vec<u64> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut out: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix(&prefix)?.parse::<u64>().ok()
        })
        .collect();
    out.sort_unstable();
    out
}

impl Sink for FileSink {
    fn info() -> SinkInfo {
        SinkInfo {
            kind: "file",
            version: env!("CARGO_PKG_VERSION"),
            description: "appends records as NDJSON to a local file, rotating by size",
            config_schema: SCHEMA,
            limits: Limits {
                max_records: 10_000,
                record_overhead_bytes: 1,
                max_batch_bytes: 8 << 20,
                max_record_bytes: 1 << 20,
            },
            thread_safe: true,
            ordered: false,
        }
    }

    fn create(config: &str, host: Host) -> Result<Self, Error> {
        let config: FileConfig = serde_json::from_str(config)
            .map_err(|e| Error::fatal(format!("file: bad configuration: {e}")))?;
        if config.path.as_os_str().is_empty() {
            return Err(Error::fatal("file: `path` must not be empty"));
        }
        let sink = FileSink {
            config,
            host,
            state: Mutex::new(None),
        };
        let open = sink.open().map_err(|e| {
            Error::fatal(format!(
                "file: cannot open {}: {e}",
                sink.config.path.display()
            ))
        })?;
        *sink.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(open);
        Ok(sink)
    }

    fn send(&self, batch: &Batch<'_>, outcomes: &mut Outcomes<'_>) -> Result<(), Error> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.open().map_err(|e| {
                Error::retry(format!(
                    "file: cannot open {}: {e}",
                    self.config.path.display()
                ))
            })?);
        }
        let Some(open) = guard.as_mut() else {
            return Err(Error::retry("file: not open"));
        };
        let mut written = 0usize;
        match self.write_batch(open, batch, &mut written) {
            Ok(()) => {
                outcomes.all_ok();
                Ok(())
            }
            Err(e) => {
                // What was buffered may or may not have reached the file: report
                // the whole batch for retry (at-least-once) and reopen next time.
                *guard = None;
                let msg = format!("file: write to {} failed: {e}", self.config.path.display());
                self.host.log(Level::Error, &msg);
                Err(Error::retry(msg))
            }
        }
    }

    fn flush(&self) -> Result<(), Error> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = guard.as_mut() {
            open.writer
                .flush()
                .and_then(|_| open.writer.get_ref().sync_data())
                .map_err(|e| Error::retry(format!("file: flush failed: {e}")))?;
        }
        Ok(())
    }

    const HAS_VERIFY: bool = true;

    fn verify(&self) -> Result<(), Error> {
        // The SDK's test event, shaped like the ngrok dashboard's.
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let open = match guard.as_mut() {
            Some(o) => o,
            None => guard.insert(
                self.open()
                    .map_err(|e| Error::fatal(format!("file: {e}")))?,
            ),
        };
        let line = sluice_sdk::events::test_event(&self.host.destination_id());
        let line = line.as_bytes();
        open.writer
            .write_all(line)
            .and_then(|_| open.writer.write_all(b"\n"))
            .and_then(|_| open.writer.flush())
            .map_err(|e| Error::fatal(format!("file: verify write failed: {e}")))?;
        open.size += line.len() as u64 + 1;
        Ok(())
    }
}

sluice_sdk::export_sink!(FileSink);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_numbers_are_found_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.ndjson");
        for n in [3, 1, 10] {
            std::fs::write(numbered(&p, n), b"x").unwrap();
        }
        std::fs::write(dir.path().join("out.ndjson.bak"), b"x").unwrap();
        assert_eq!(rotated_numbers(&p), vec![1, 3, 10]);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = FileSink::create(r#"{"path":"/tmp/x","maxbytes":1}"#, Host::detached())
            .err()
            .unwrap();
        assert!(err.message().contains("maxbytes"), "{err}");
    }
}
