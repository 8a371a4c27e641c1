//! Dead letters as a feature: where a destination's dead letters are kept
//! ([`DeadLetterStore`]: files on one node, JetStream in a cluster), and
//! replays, which take the selected dead letters out of the queue (into the
//! replay's journal), send them through the destination's delivery again
//! and record the replay as finished once every record is delivered, kept,
//! or dead-lettered again with its new reason. A replay left unfinished by
//! a stop is run again at the next start ([`resume`]): at-least-once, and
//! never twice for one replay id.

use sluice_engine::Engine;
use sluice_engine::dead_letter_file::{DeadLetter, Page, ReplayRecord, Selection, Taken};
use std::io;
use std::sync::Arc;

/// Where dead letters are kept, per destination. Every method blocks
/// (files, or NATS from a blocking thread).
pub trait DeadLetterStore: Send + Sync {
    /// A page of the selected dead letters, newest first.
    fn list(
        &self,
        destination: &str,
        selection: &Selection,
        before_id: Option<u64>,
        limit: usize,
    ) -> io::Result<Page>;
    /// Takes the selected dead letters for replay `id` (or finds replay `id`).
    fn take_for_replay(
        &self,
        destination: &str,
        id: &str,
        selection: &Selection,
    ) -> io::Result<Taken>;
    /// Replay `id` of `destination`, if it was asked for.
    fn replay(&self, destination: &str, id: &str) -> io::Result<Option<ReplayRecord>>;
    /// Records replay `id` as finished (its journal goes).
    fn finish_replay(&self, destination: &str, id: &str) -> io::Result<ReplayRecord>;
    /// Puts dead letters back in the queue (a replay whose destination went away).
    fn put_back(&self, destination: &str, letters: &[DeadLetter]) -> io::Result<()>;
    /// Replays of `destination` not finished, with what they took.
    fn unfinished(&self, destination: &str) -> io::Result<Vec<(ReplayRecord, Vec<DeadLetter>)>>;
    /// Bytes the queue holds and its bound (0: none), where known.
    fn usage(&self, destination: &str) -> (u64, u64);
}

/// One node: the engine's dead-letter files.
pub struct FileDeadLetters {
    /// The engine whose destinations write them.
    pub engine: Arc<Engine>,
}

impl FileDeadLetters {
    fn queue(
        &self,
        destination: &str,
    ) -> io::Result<Arc<sluice_engine::dead_letter_file::DeadLetterFile>> {
        self.engine.dead_letter_queue(destination).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("destination {destination} is not running"),
            )
        })
    }
}

impl DeadLetterStore for FileDeadLetters {
    fn list(
        &self,
        destination: &str,
        selection: &Selection,
        before_id: Option<u64>,
        limit: usize,
    ) -> io::Result<Page> {
        self.queue(destination)?.list(selection, before_id, limit)
    }

    fn take_for_replay(
        &self,
        destination: &str,
        id: &str,
        selection: &Selection,
    ) -> io::Result<Taken> {
        self.queue(destination)?.take_for_replay(id, selection)
    }

    fn replay(&self, destination: &str, id: &str) -> io::Result<Option<ReplayRecord>> {
        self.queue(destination)?.replay(id)
    }

    fn finish_replay(&self, destination: &str, id: &str) -> io::Result<ReplayRecord> {
        self.queue(destination)?.finish_replay(id)
    }

    fn put_back(&self, destination: &str, letters: &[DeadLetter]) -> io::Result<()> {
        self.queue(destination)?.append_letters(letters)
    }

    fn unfinished(&self, destination: &str) -> io::Result<Vec<(ReplayRecord, Vec<DeadLetter>)>> {
        self.queue(destination)?.unfinished()
    }

    fn usage(&self, destination: &str) -> (u64, u64) {
        self.queue(destination)
            .map_or((0, 0), |q| (q.bytes(), q.max_bytes()))
    }
}

/// Sends the dead letters replay `id` took, on a blocking thread, and
/// records it finished once every record is safe. A destination deleted
/// meanwhile gets its dead letters back; an engine stopping leaves the
/// journal for the next start.
pub async fn run(
    engine: Arc<Engine>,
    store: Arc<dyn DeadLetterStore>,
    destination: String,
    id: String,
    letters: Vec<DeadLetter>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (e, d, s) = (engine.clone(), destination.clone(), store.clone());
    let sent = tokio::task::spawn_blocking(move || {
        match e.redeliver(&d, &letters, move |r| {
            let _ = tx.send(r);
        }) {
            Err(sluice_engine::ReplayError::NoDestination(_)) => s
                .put_back(&d, &letters)
                .map(|()| 0)
                .map_err(|e| e.to_string()),
            other => other.map_err(|e| e.to_string()),
        }
    })
    .await;
    match sent {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(destination, replay = id, "replay stopped: {e}");
            return;
        }
        Err(e) => {
            tracing::error!(destination, replay = id, "replay task failed: {e}");
            return;
        }
    }
    // Nothing was sent when the destination was gone: the report comes at once.
    if rx.await.is_err() {
        tracing::warn!(
            destination,
            replay = id,
            "the engine stopped before the replay was done; it runs again at the next start"
        );
        return;
    }
    let finished =
        tokio::task::spawn_blocking(move || store.finish_replay(&destination, &id)).await;
    if let Ok(Err(e)) = finished {
        tracing::error!("cannot record a replay as finished: {e}");
    }
}

/// Runs again the replays a stop left unfinished, for every destination
/// of `destinations`.
pub async fn resume(
    engine: Arc<Engine>,
    store: Arc<dyn DeadLetterStore>,
    destinations: Vec<String>,
) {
    for d in destinations {
        let (s, dd) = (store.clone(), d.clone());
        let open = match tokio::task::spawn_blocking(move || s.unfinished(&dd)).await {
            Ok(Ok(open)) => open,
            Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => continue,
            Ok(Err(e)) => {
                tracing::error!(destination = d, "cannot read unfinished replays: {e}");
                continue;
            }
            Err(_) => continue,
        };
        for (r, letters) in open {
            tracing::info!(
                destination = d,
                replay = r.id,
                records = letters.len(),
                "running again a replay a stop left unfinished"
            );
            tokio::spawn(run(engine.clone(), store.clone(), d.clone(), r.id, letters));
        }
    }
}
