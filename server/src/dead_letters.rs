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

/// What a replay took, read as it is needed.
pub type Letters = Box<dyn Iterator<Item = io::Result<DeadLetter>> + Send>;

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
    /// What replay `id` took.
    fn letters(&self, destination: &str, id: &str) -> io::Result<Letters>;
    /// Replay `id` of `destination`, if it was asked for.
    fn replay(&self, destination: &str, id: &str) -> io::Result<Option<ReplayRecord>>;
    /// Records replay `id` as finished (its journal goes).
    fn finish_replay(&self, destination: &str, id: &str) -> io::Result<ReplayRecord>;
    /// Puts what replay `id` took back in the queue (its destination went away).
    fn put_back(&self, destination: &str, id: &str) -> io::Result<()>;
    /// Replays of `destination` not finished, to run again.
    fn unfinished(&self, destination: &str) -> io::Result<Vec<ReplayRecord>>;
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

    fn letters(&self, destination: &str, id: &str) -> io::Result<Letters> {
        Ok(Box::new(self.queue(destination)?.journal_letters(id)?))
    }

    fn replay(&self, destination: &str, id: &str) -> io::Result<Option<ReplayRecord>> {
        self.queue(destination)?.replay(id)
    }

    fn finish_replay(&self, destination: &str, id: &str) -> io::Result<ReplayRecord> {
        self.queue(destination)?.finish_replay(id)
    }

    fn put_back(&self, destination: &str, id: &str) -> io::Result<()> {
        self.queue(destination)?.put_back(id)
    }

    fn unfinished(&self, destination: &str) -> io::Result<Vec<ReplayRecord>> {
        self.queue(destination)?.unfinished()
    }

    fn usage(&self, destination: &str) -> (u64, u64) {
        self.queue(destination)
            .map_or((0, 0), |q| (q.bytes(), q.max_bytes()))
    }
}

/// Sends the dead letters replay `id` took, on a blocking thread, and
/// records it finished once every record is safe. A destination deleted
/// meanwhile gets its dead letters back; an engine stopping, or a journal
/// that cannot be read, leaves the journal for the next start.
pub async fn run(
    engine: Arc<Engine>,
    store: Arc<dyn DeadLetterStore>,
    destination: String,
    id: String,
) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (d, s, i) = (destination.clone(), store.clone(), id.clone());
    let sent = tokio::task::spawn_blocking(move || -> Result<bool, String> {
        let failed = Arc::new(std::sync::Mutex::new(None));
        let f = failed.clone();
        let letters = s
            .letters(&d, &i)
            .map_err(|e| e.to_string())?
            .map_while(move |r| {
                r.map_err(|e| *f.lock().unwrap_or_else(|p| p.into_inner()) = Some(e))
                    .ok()
            });
        match engine.redeliver(&d, letters, move |r| {
            let _ = tx.send(r);
        }) {
            Err(sluice_engine::ReplayError::NoDestination(_)) => {
                s.put_back(&d, &i).map_err(|e| e.to_string())?;
                Ok(false)
            }
            Err(e) => Err(e.to_string()),
            Ok(_) => match failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some(e) => Err(format!("the replay's journal cannot be read: {e}")),
                None => Ok(true),
            },
        }
    })
    .await
    .unwrap_or_else(|e| Err(format!("the replay's task failed: {e}")));
    match sent {
        // Sent: finished once every record is safe.
        Ok(true) => {
            if rx.await.is_err() {
                tracing::warn!(
                    destination,
                    replay = id,
                    "the engine stopped before the replay was done; it runs again at the next start"
                );
                return;
            }
        }
        // Put back: nothing was sent.
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(
                destination,
                replay = id,
                "replay stopped: {e}; it runs again at the next start"
            );
            return;
        }
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
        for r in open {
            tracing::info!(
                destination = d,
                replay = r.id,
                records = r.records,
                "running again a replay a stop left unfinished"
            );
            tokio::spawn(run(engine.clone(), store.clone(), d.clone(), r.id));
        }
    }
}
