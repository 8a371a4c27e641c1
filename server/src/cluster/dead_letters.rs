//! Dead letters in JetStream: in a cluster, a node's engine hands its dead
//! letters to [`JetStreamDeadLetters`], which stores them on the
//! destination's subject of `SLUICE_DEAD_LETTERS` (replicated like the
//! events), so any node can list them and a node that never returns takes
//! none along. The durable publish the records came from stays
//! unacknowledged until they are stored; while NATS is out of reach they
//! wait in memory, and the stream message is redelivered to another node
//! if this one dies meanwhile.

use sluice_engine::{DeadLetterHolds, DeadLetterSink};
use sluice_stream::Publisher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::mpsc;

/// Largest message of dead letters (a dead letter of a 1 MiB record is
/// stored alone).
const MESSAGE_BYTES: usize = 1 << 20;

type Item = (String, Vec<u8>, DeadLetterHolds);

/// The engine's dead-letter sink on a cluster node.
#[derive(Debug)]
pub struct JetStreamDeadLetters {
    tx: mpsc::UnboundedSender<Item>,
    /// Dead-letter messages stored.
    pub stored: Arc<AtomicU64>,
    /// Dead letters waiting to be stored.
    pub waiting: Arc<AtomicU64>,
}

impl JetStreamDeadLetters {
    /// Starts the task (on `rt`) that stores what the engine hands over
    /// through `publisher`.
    pub fn start(rt: &tokio::runtime::Handle, publisher: Publisher) -> JetStreamDeadLetters {
        let (tx, rx) = mpsc::unbounded_channel();
        let stored = Arc::new(AtomicU64::new(0));
        let waiting = Arc::new(AtomicU64::new(0));
        rt.spawn(ship(publisher, rx, stored.clone(), waiting.clone()));
        JetStreamDeadLetters {
            tx,
            stored,
            waiting,
        }
    }
}

impl DeadLetterSink for JetStreamDeadLetters {
    fn store(&self, destination: &str, lines: Vec<u8>, holds: DeadLetterHolds) {
        self.waiting.fetch_add(1, Relaxed);
        if self
            .tx
            .send((destination.to_string(), lines, holds))
            .is_err()
        {
            // The node is stopping: the holds are dropped unstored only
            // here, and their stream messages were not acked (the runtime
            // that acks them is gone too), so another node redelivers them.
            tracing::error!(destination, "dead letters not stored: the node is stopping");
        }
    }
}

/// Splits NDJSON into pieces of whole lines of at most `MESSAGE_BYTES`
/// (a longer line alone).
pub(super) fn pieces(lines: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut start, mut end) = (0, 0);
    for (i, _) in lines.iter().enumerate().filter(|(_, b)| **b == b'\n') {
        if i + 1 - start > MESSAGE_BYTES && end > start {
            out.push(&lines[start..end]);
            start = end;
        }
        end = i + 1;
    }
    if end > start {
        out.push(&lines[start..end]);
    }
    out
}

async fn ship(
    publisher: Publisher,
    mut rx: mpsc::UnboundedReceiver<Item>,
    stored: Arc<AtomicU64>,
    waiting: Arc<AtomicU64>,
) {
    while let Some((destination, lines, holds)) = rx.recv().await {
        let id = crate::ids::new_id("dl");
        for (i, piece) in pieces(&lines).into_iter().enumerate() {
            let id = format!("{id}-{i}");
            let mut wait = Duration::from_millis(250);
            loop {
                match publisher
                    .dead_letters(&destination, piece.to_vec().into(), &id)
                    .await
                {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(
                            %destination,
                            "dead letters not stored yet ({e}); trying again in {wait:?}"
                        );
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
            stored.fetch_add(1, Relaxed);
        }
        waiting.fetch_sub(1, Relaxed);
        // Stored: the publishes these records came from may be acked.
        drop(holds);
    }
}

/// The dead letters of `destination` in the cluster at `servers`, oldest
/// first, at most `limit`: one JSON object per line.
pub fn list(servers: &str, destination: &str, limit: usize) -> Result<Vec<String>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = sluice_stream::connect(servers)
            .await
            .map_err(|e| e.to_string())?;
        let s = sluice_stream::StreamSettings::default();
        let payloads = sluice_stream::read_subject(
            &client,
            &s.dead_letter_stream,
            &s.dead_letter_subject(destination),
            usize::MAX,
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(payloads
            .iter()
            .flat_map(|p| {
                String::from_utf8_lossy(p)
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter(|l| !l.is_empty())
            .take(limit)
            .collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_whole_lines_within_the_size() {
        let line = |n: usize| {
            let mut l = vec![b'x'; n];
            l.push(b'\n');
            l
        };
        let mut body = Vec::new();
        for n in [600_000, 600_000, 10, 2 << 20, 5] {
            body.extend(line(n));
        }
        let p = pieces(&body);
        assert_eq!(p.concat(), body, "nothing lost or reordered");
        assert!(p.iter().all(|p| p.ends_with(b"\n")));
        assert_eq!(p.len(), 4, "600k | 600k+10 | 2M alone | 5");
        assert_eq!(p[2].len(), (2 << 20) + 1);
    }
}
