//! The dead letters of a destination: every record given up on, with the
//! reason, counted by reason, written to the destination's file, or handed
//! to the embedder's [`DeadLetterSink`] (a cluster keeps them in JetStream).

use super::*;
pub(crate) use crate::dead_letter_file::file_safe;
use crate::dead_letter_file::{DeadLetterFile, write_line};

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

/// Writes dead-lettered records to the destination's queue
/// (`<dir>/<destination>.ndjson`, see [`DeadLetterFile`]), or to the sink.
#[derive(Debug)]
pub struct DeadLetters {
    pub(super) destination: Arc<str>,
    pub(crate) file: Arc<DeadLetterFile>,
    pub(super) sink: Option<Arc<dyn DeadLetterSink>>,
}

/// About what a dead letter takes beyond its record.
const LINE_OVERHEAD: u64 = 160;

impl DeadLetters {
    /// Dead letters of `destination` under `dir`, bounded at `max_bytes`
    /// (0: unbounded), or to `sink`.
    pub fn new(
        dir: &Path,
        destination: Arc<str>,
        max_bytes: u64,
        sink: Option<Arc<dyn DeadLetterSink>>,
    ) -> DeadLetters {
        DeadLetters {
            file: Arc::new(DeadLetterFile::new(dir, &destination, max_bytes)),
            destination,
            sink,
        }
    }

    /// How many of the leading `records` fit in the queue's bound (all of
    /// them with a sink: the cluster's stream has its own limits).
    pub(super) fn fitting(&self, records: &[Pending]) -> usize {
        if self.sink.is_some() {
            return records.len();
        }
        let mut room = self.file.room();
        records
            .iter()
            .take_while(|p| {
                let size = p.rec.data().len() as u64 + LINE_OVERHEAD;
                let fits = size <= room;
                room = room.saturating_sub(size);
                fits
            })
            .count()
    }

    /// Writes `records` as dead letters (to the sink, with their holds),
    /// whatever the bound: the task checks [`DeadLetters::fitting`] first
    /// and pauses instead; what is written here regardless (records the
    /// worker could not hand over, what is left at the drain deadline) is
    /// bounded by the destination's buffer.
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
        if let Some(sink) = &self.sink {
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
                buf.extend_from_slice(
                    format!(",\"attempts\":{},\"record\":", p.attempts).as_bytes(),
                );
                buf.extend_from_slice(p.rec.data());
                buf.extend_from_slice(b"}\n");
            }
            let holds = records.iter_mut().filter_map(|p| p.hold.take()).collect();
            sink.store(&self.destination, buf, DeadLetterHolds(holds));
            return;
        }
        let result = self.file.append_with(|first| {
            let mut buf = Vec::with_capacity(records.len() * 256);
            for (i, p) in records.iter().enumerate() {
                write_line(
                    &mut buf,
                    first + i as u64,
                    &now,
                    subscription,
                    reason,
                    p.attempts,
                    p.rec.data(),
                );
            }
            buf
        });
        if let Err(e) = result {
            tracing::error!(
                destination = %self.destination,
                path = %self.file.path().display(),
                records = records.len(),
                "cannot write dead letters ({e}); the records follow on stderr"
            );
            let mut lines = Vec::new();
            for p in records.iter() {
                write_line(
                    &mut lines,
                    0,
                    &now,
                    subscription,
                    reason,
                    p.attempts,
                    p.rec.data(),
                );
            }
            let _ = std::io::stderr().write_all(&lines);
        }
    }
}

/// A short, bounded label for the metric of a dead-letter reason.
pub(super) fn reason_label(reason: &str) -> &str {
    let end = reason.find([':', '(']).unwrap_or(reason.len()).min(64);
    reason[..end].trim()
}
