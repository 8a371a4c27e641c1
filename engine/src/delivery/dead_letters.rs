//! The dead-letter file of a destination: every record given up on, with
//! the reason, counted by reason.

use super::*;

/// Writes dead-lettered records to `<dir>/<destination>.ndjson`.
#[derive(Debug)]
pub struct DeadLetters {
    pub(super) path: PathBuf,
    pub(super) destination: Arc<str>,
    pub(super) file: Mutex<Option<std::fs::File>>,
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
    /// Dead letters of `destination` under `dir`.
    pub fn new(dir: &Path, destination: Arc<str>) -> DeadLetters {
        DeadLetters {
            path: dir.join(format!("{}.ndjson", file_safe(&destination))),
            destination,
            file: Mutex::new(None),
        }
    }

    pub(super) fn write(
        &self,
        stats: &DestinationStats,
        subscription: &str,
        records: &[Pending],
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
        for p in records {
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
