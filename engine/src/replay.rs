//! Replays: dead letters sent through their destination's delivery again.
//! The records go to the destination as they were written (same bytes,
//! same subscription lane), paced by the destination's buffer, under one
//! durable ticket: its report comes once every record is delivered, kept
//! in a disk buffer, or dead-lettered again with its new reason.

use crate::Engine;
use crate::ack::{PublishReport, Ticket};
use crate::dead_letter_file::{DeadLetter, DeadLetterFile};
use crate::delivery::Chunk;
use crate::encode::Record;
use crate::events::EventTypeId;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a replay could not be sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    /// The destination is not configured (any more).
    #[error("no destination {0} is configured")]
    NoDestination(String),
    /// The destination's task ended (the engine is stopping): what was not
    /// sent stays in the replay's journal.
    #[error("destination {0} stopped during the replay")]
    Stopped(String),
}

/// Records per chunk handed to the destination.
const CHUNK_RECORDS: usize = 512;

/// The envelope fields a sink reads besides the bytes.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    event_id: Cow<'a, str>,
    #[serde(borrow, default)]
    event_type: Cow<'a, str>,
    #[serde(borrow, default)]
    event_timestamp: Cow<'a, str>,
    #[serde(borrow, default)]
    account_id: Cow<'a, str>,
}

/// The record of a dead letter, with its metadata read back from its
/// envelope (a record that is no envelope is sent as it is, with empty
/// metadata).
fn record_of(d: &DeadLetter) -> Record {
    let data = d.record.get().as_bytes();
    let env = serde_json::from_slice::<Envelope<'_>>(data).ok();
    let env = env.as_ref();
    let event_type = env
        .and_then(|e| EventTypeId::from_name(&e.event_type))
        .unwrap_or_else(|| EventTypeId::all().next().expect("the registry has types"));
    let timestamp_ms = env
        .and_then(|e| crate::events::parse_rfc3339_ms(&e.event_timestamp))
        .unwrap_or(0);
    Record::from_parts(
        data,
        env.map_or("", |e| &e.account_id),
        env.map_or("", |e| &e.event_id),
        event_type,
        timestamp_ms,
    )
}

impl Engine {
    /// The dead-letter queue of `destination` on disk; `None` if it is not
    /// configured, or if its dead letters go to the embedder's
    /// [`crate::DeadLetterSink`].
    pub fn dead_letter_queue(&self, destination: &str) -> Option<Arc<DeadLetterFile>> {
        self.destination_handle(destination)
            .filter(|h| !h.dead_letters_to_sink())
            .map(|h| h.dead_letter_file())
    }

    /// Sends `letters`, dead letters of `destination` (read as they are
    /// needed: a journal of millions is never held in memory), through its
    /// delivery again, and calls `done` once every record is delivered, kept in a
    /// disk buffer, or dead-lettered again (with its new reason). Blocks the
    /// calling thread while the destination's buffer is half full, so a
    /// replay of millions of records neither overflows it nor starves the
    /// live traffic of other destinations: call it on a thread that may
    /// block. Returns how many records were sent.
    pub fn redeliver(
        &self,
        destination: &str,
        letters: impl IntoIterator<Item = DeadLetter>,
        done: impl FnOnce(PublishReport) + Send + 'static,
    ) -> Result<u64, ReplayError> {
        let handle = self
            .destination_handle(destination)
            .ok_or_else(|| ReplayError::NoDestination(destination.to_string()))?;
        let ticket = Ticket::new(true, Box::new(done));
        ticket.expect(1);
        let mut sent = 0u64;
        let mut letters = letters.into_iter().peekable();
        while let Some(first) = letters.next() {
            let subscription: Arc<str> = first.subscription.as_str().into();
            let mut records = vec![record_of(&first)];
            while records.len() < CHUNK_RECORDS
                && let Some(d) = letters.next_if(|d| *d.subscription == *subscription)
            {
                records.push(record_of(&d));
            }
            let mut wait = Duration::from_millis(1);
            while handle.is_full() {
                if handle.closed() {
                    // The ticket never reports: the journal stays.
                    return Err(ReplayError::Stopped(destination.to_string()));
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(20));
            }
            let n = records.len() as u64;
            handle.push(Chunk {
                subscription,
                records,
                received: Instant::now(),
                hold: Some(ticket.hold_for("")),
            });
            handle.stats.count_replayed(n);
            sent += n;
        }
        ticket.finish_batch(sent, Vec::new());
        Ok(sent)
    }
}
