//! The dead letters of a destination: every record given up on, with the
//! reason, counted by reason, written to the destination's file, or handed
//! to the embedder's [`DeadLetterSink`] (a cluster keeps them in JetStream).

use super::*;

/// Where dead letters go instead of files (`EngineConfig::dead_letters`).
pub trait DeadLetterSink: Send + Sync + std::fmt::Debug {
    /// Stores the dead letters of `destination`: `lines` is NDJSON, one
    /// dead letter per line (`time`, `destination`, `subscription`,
    /// `reason`, `attempts`, `record`). Called on the delivery runtime: it
    /// must not block. `holds` keeps the durable publishes those records
    /// came from unacknowledged: drop it only once the lines are stored
    /// durably.
    fn store(&self, destination: &str, lines: Vec<u8>, holds: DeadLetterHolds);
}

/// Keeps the durable publishes of dead-lettered records unacknowledged
/// until dropped (see [`DeadLetterSink::store`]).
pub struct DeadLetterHolds(Vec<Hold>);

impl DeadLetterHolds {
    /// How many records it holds publishes for.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for DeadLetterHolds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeadLetterHolds({})", self.0.len())
    }
}

/// Writes dead-lettered records to `<dir>/<destination>.ndjson`, or to the
/// sink.
#[derive(Debug)]
pub struct DeadLetters {
    pub(super) path: PathBuf,
    pub(super) destination: Arc<str>,
    pub(super) file: Mutex<Option<std::fs::File>>,
    pub(super) sink: Option<Arc<dyn DeadLetterSink>>,
}

/// A destination id as a file name.
pub(super) fn file_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl DeadLetters {
    /// Dead letters of `destination` under `dir`, or to `sink`.
    pub fn new(
        dir: &Path,
        destination: Arc<str>,
        sink: Option<Arc<dyn DeadLetterSink>>,
    ) -> DeadLetters {
        DeadLetters {
            path: dir.join(format!("{}.ndjson", file_safe(&destination))),
            destination,
            file: Mutex::new(None),
            sink,
        }
    }

    /// Writes `records` as dead letters (to the sink, with their holds).
    pub(super) fn write(
        &self,
        stats: &DestinationStats,
        subscription: &str,
        records: &mut [Pending],
        reason: &str,
    ) {
        if records.is_empty() {
            return;
        }
        stats.dead_letter(reason_label(reason), records.len() as u64);
        let now = crate::events::format_rfc3339_ms(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        );
        let mut buf = Vec::with_capacity(records.len() * 256);
        for p in records.iter() {
            buf.extend_from_slice(b"{\"time\":");
            crate::json::write_str(&mut buf, &now);
            buf.extend_from_slice(b",\"destination\":");
            crate::json::write_str(&mut buf, &self.destination);
            buf.extend_from_slice(b",\"subscription\":");
            crate::json::write_str(&mut buf, subscription);
            buf.extend_from_slice(b",\"reason\":");
            crate::json::write_str(&mut buf, reason);
            buf.extend_from_slice(format!(",\"attempts\":{},\"record\":", p.attempts).as_bytes());
            buf.extend_from_slice(p.rec.data());
            buf.extend_from_slice(b"}\n");
        }
        if let Some(sink) = &self.sink {
            let holds = records.iter_mut().filter_map(|p| p.hold.take()).collect();
            sink.store(&self.destination, buf, DeadLetterHolds(holds));
            return;
        }
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let result = (|| -> std::io::Result<()> {
            if f.is_none() {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                *f = Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&self.path)?,
                );
            }
            if let Some(file) = f.as_mut() {
                file.write_all(&buf)?;
                file.flush()?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            *f = None;
            tracing::error!(
                destination = %self.destination,
                path = %self.path.display(),
                records = records.len(),
                "cannot write dead letters ({e}); the records follow on stderr"
            );
            let _ = std::io::stderr().write_all(&buf);
        }
    }
}

/// A short, bounded label for the metric of a dead-letter reason.
pub(super) fn reason_label(reason: &str) -> &str {
    let end = reason.find([':', '(']).unwrap_or(reason.len()).min(64);
    reason[..end].trim()
}
