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
use std::collections::{HashMap, VecDeque};
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
    // Destinations whose dead-letter space is full, with what waits for
    // room: the others go on meanwhile.
    let mut full: HashMap<String, VecDeque<Item>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            item = rx.recv() => {
                let Some(item) = item else { return };
                match full.get_mut(&item.0) {
                    Some(q) => q.push_back(item),
                    None => {
                        if let Err(item) = store(&publisher, item, &stored, &waiting).await {
                            tracing::warn!(
                                destination = %item.0,
                                max_messages = publisher.settings().dead_letter_max_messages,
                                "the destination's dead-letter space is full: its dead letters wait, unacknowledged, until a replay makes room"
                            );
                            full.entry(item.0.clone()).or_default().push_back(item);
                        }
                    }
                }
            }
            _ = tick.tick(), if !full.is_empty() => {
                for q in full.values_mut() {
                    while let Some(item) = q.pop_front() {
                        if let Err(item) = store(&publisher, item, &stored, &waiting).await {
                            q.push_front(item);
                            break;
                        }
                    }
                }
                full.retain(|_, q| !q.is_empty());
            }
        }
    }
}

/// Stores one destination's dead letters, retrying while NATS is out of
/// reach; gives them back when the destination has no room.
async fn store(
    publisher: &Publisher,
    item: Item,
    stored: &AtomicU64,
    waiting: &AtomicU64,
) -> Result<(), Item> {
    let s = publisher.settings();
    let subject = s.dead_letter_subject(&item.0);
    let mut wait = Duration::from_millis(250);
    // Room first (a count of its messages; NATS out of reach: try again).
    loop {
        match sluice_stream::subject_messages(publisher.client(), &s.dead_letter_stream, &subject)
            .await
        {
            Ok(n) if n as i64 >= s.dead_letter_max_messages => return Err(item),
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(destination = %item.0, "dead letters not stored yet ({e}); trying again in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    let id = crate::ids::new_id("dl");
    for (i, piece) in pieces(&item.1).into_iter().enumerate() {
        let id = format!("{id}-{i}");
        let mut wait = Duration::from_millis(250);
        loop {
            match publisher
                .dead_letters(&item.0, piece.to_vec().into(), &id)
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(
                        destination = %item.0,
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
    // Stored: the publishes these records came from may be acked (the
    // holds go with the item).
    drop(item);
    Ok(())
}

/// Hands `each` the dead letters of `destination` in the cluster at
/// `servers`, oldest first, at most `limit`, one JSON object (a line) at a
/// time, reading one message of the queue at a time. Returns how many.
pub fn list(
    servers: &str,
    destination: &str,
    limit: usize,
    mut each: impl FnMut(&str),
) -> Result<usize, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = sluice_stream::connect(servers)
            .await
            .map_err(|e| e.to_string())?;
        let s = sluice_stream::StreamSettings::default();
        let stream = &s.dead_letter_stream;
        let subject = s.dead_letter_subject(destination);
        // The messages' sequences (headers only), then each message in
        // turn, only as far as `limit` goes: never the whole queue at once.
        let seqs = sluice_stream::subject_sequences(&client, stream, &subject, u64::MAX)
            .await
            .map_err(|e| e.to_string())?;
        let mut listed = 0;
        for seq in seqs {
            if listed >= limit {
                break;
            }
            let Some(p) = sluice_stream::read_message(&client, stream, seq)
                .await
                .map_err(|e| e.to_string())?
            else {
                continue; // taken by a replay meanwhile
            };
            let lines = String::from_utf8_lossy(&p);
            for line in lines.lines().filter(|l| !l.is_empty()).take(limit - listed) {
                each(line);
                listed += 1;
            }
        }
        Ok(listed)
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
