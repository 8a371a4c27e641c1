//! A destination's dead letters in a cluster, as a queue any node lists and
//! replays: the messages of `sluice.dlq.<destination>` in the replicated
//! `SLUICE_DEAD_LETTERS` stream (each holds many dead letters, one per
//! line; a dead letter's id is its message's stream sequence times 2^20
//! plus its line), and replays recorded in the `SLUICE_REPLAYS` bucket.
//!
//! A replay claims its id first (a revision-checked create of
//! `<destination>.<replay id>`: two nodes asked for one id carry it out
//! once), writes what it takes to its journal subject
//! (`sluice.dlq-replay.<destination>.<replay id>`), and only then rewrites
//! the messages it took lines from (the lines it leaves are stored again,
//! the message is deleted). Finished, its journal is purged. A replay
//! whose node stopped (it has no heartbeat in `SLUICE_NODES` any more) is
//! taken over by the next node that starts: at-least-once. A destination
//! remembers every unfinished replay and its last [`REPLAYS_KEPT`] finished
//! ones: a node looks at a destination's first finish and every
//! [`REPLAYS_KEPT`] finishes after, and forgets the oldest once there are
//! twice as many.
//!
//! No byte bound here: the stream's own limits apply (a full stream refuses
//! new dead letters, whose records then wait, unacknowledged, as a
//! partition behind a slow destination does).

use crate::dead_letters::DeadLetterStore;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_engine::dead_letter_file::{
    DeadLetter, Page, REPLAYS_KEPT, ReplayRecord, Selection, Taken,
};
use sluice_stream::async_nats::jetstream::{self, kv};
use sluice_stream::{Publisher, StreamSettings};
use std::io;

/// The bucket of replays.
const BUCKET: &str = "SLUICE_REPLAYS";
/// The bucket of live nodes' heartbeats (kept by consumption).
const NODES: &str = "SLUICE_NODES";
/// Longest time finishing a replay spends forgetting old ones.
const FORGET_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
/// Lines per message an id can address.
const LINE_BITS: u32 = 20;

/// A replay as the bucket keeps it.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    record: ReplayRecord,
    /// The node carrying it out.
    node: String,
}

/// The dead letters of a cluster's destinations.
pub struct JetStreamDeadLetters {
    publisher: Publisher,
    settings: StreamSettings,
    replays: kv::Store,
    node: String,
    rt: tokio::runtime::Handle,
    /// Finished replays remembered per destination ([`REPLAYS_KEPT`]).
    replays_kept: usize,
    /// Replays this node finished per destination since it last looked for
    /// old ones to forget (a destination not in it: not yet looked).
    finished_since_forget: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

fn other<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::other(e.to_string())
}

impl JetStreamDeadLetters {
    /// Opens (or makes) the replay bucket on `publisher`'s connection.
    pub async fn open(
        publisher: Publisher,
        settings: StreamSettings,
        node: String,
        rt: tokio::runtime::Handle,
    ) -> Result<JetStreamDeadLetters, String> {
        let js = jetstream::new(publisher.client().clone());
        let replays = sluice_stream::open_bucket(
            &js,
            BUCKET,
            std::time::Duration::ZERO,
            publisher.replicas(),
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(JetStreamDeadLetters {
            publisher,
            settings,
            replays,
            node,
            rt,
            replays_kept: REPLAYS_KEPT,
            finished_since_forget: Default::default(),
        })
    }

    /// Remembers `n` finished replays per destination instead of
    /// [`REPLAYS_KEPT`] (tests).
    pub fn with_replays_kept(mut self, n: usize) -> JetStreamDeadLetters {
        self.replays_kept = n.max(1);
        self
    }

    /// Counts a finish of `destination`'s; whether to look for old
    /// replays to forget now.
    fn time_to_forget(&self, destination: &str) -> bool {
        let mut since = self
            .finished_since_forget
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match since.get_mut(destination) {
            Some(n) if *n + 1 < self.replays_kept => {
                *n += 1;
                false
            }
            _ => {
                since.insert(destination.to_string(), 0);
                true
            }
        }
    }

    /// The keys of `destination`'s replays, read without the other
    /// destinations' (a destination remembers up to three times
    /// [`REPLAYS_KEPT`] of them).
    async fn replay_keys(&self, destination: &str) -> io::Result<Vec<String>> {
        sluice_stream::bucket_keys(self.publisher.client(), BUCKET, &format!("{destination}."))
            .await
            .map_err(other)
    }

    /// Once `destination` has twice as many replays as it remembers
    /// finished ones, forgets the oldest finished ones beyond that (their
    /// ids, asked for again, start new replays), as the file queue does.
    async fn forget_old_replays(&self, destination: &str) -> io::Result<()> {
        let keys = self.replay_keys(destination).await?;
        if keys.len() < 2 * self.replays_kept {
            return Ok(());
        }
        // In the order they finished (the revision of their last write:
        // `created_at` counts seconds only).
        let mut finished = Vec::new();
        for key in keys {
            if let Some((s, revision)) = self.stored(&key).await?
                && !s.record.finished_at.is_empty()
            {
                finished.push((revision, key));
            }
        }
        finished.sort();
        let forget = finished.len().saturating_sub(self.replays_kept);
        for (_, key) in finished.into_iter().take(forget) {
            // The key's subject in the bucket's stream, purged whole: no
            // delete marker is left behind.
            sluice_stream::purge_subject(
                self.publisher.client(),
                &format!("KV_{BUCKET}"),
                &format!("$KV.{BUCKET}.{key}"),
            )
            .await
            .map_err(other)?;
        }
        Ok(())
    }

    fn key(destination: &str, id: &str) -> String {
        format!("{destination}.{id}")
    }

    /// The sequences of the messages stored on `subject` of the
    /// dead-letter stream, oldest first, up to `up_to` (read from their
    /// headers only).
    async fn sequences(&self, subject: &str, up_to: u64) -> io::Result<Vec<u64>> {
        let stream = &self.settings.dead_letter_stream;
        sluice_stream::subject_sequences(self.publisher.client(), stream, subject, up_to)
            .await
            .map_err(other)
    }

    /// Message `seq` of the dead-letter stream (`None`: it is gone).
    async fn message(&self, seq: u64) -> io::Result<Option<Bytes>> {
        let stream = &self.settings.dead_letter_stream;
        sluice_stream::read_message(self.publisher.client(), stream, seq)
            .await
            .map_err(other)
    }

    /// Stores what replay `id`'s journal holds in `destination`'s queue
    /// again, a journal message at a time.
    async fn put_journal_back(&self, destination: &str, id: &str) -> io::Result<()> {
        let subject = self.settings.dead_letter_subject(destination);
        let key = Self::key(destination, id);
        for seq in self
            .sequences(&self.settings.replay_subject(destination, id), u64::MAX)
            .await?
        {
            let Some(payload) = self.message(seq).await? else {
                continue;
            };
            let mut buf = Vec::new();
            for d in letters(seq, &payload) {
                let line = serde_json::json!({
                    "time": d.time, "destination": destination, "subscription": d.subscription,
                    "reason": d.reason, "attempts": d.attempts, "record": d.record,
                });
                buf.extend_from_slice(line.to_string().as_bytes());
                buf.push(b'\n');
            }
            self.store_lines(&subject, &buf, &format!("{key}.back.{seq}"))
                .await?;
        }
        Ok(())
    }

    async fn stored(&self, key: &str) -> io::Result<Option<(Stored, u64)>> {
        match self.replays.entry(key).await.map_err(other)? {
            Some(e) if e.operation == kv::Operation::Put => {
                let s: Stored = serde_json::from_slice(&e.value).map_err(other)?;
                Ok(Some((s, e.revision)))
            }
            _ => Ok(None),
        }
    }

    async fn put(&self, key: &str, s: &Stored) -> io::Result<()> {
        let v = serde_json::to_vec(s).map_err(other)?;
        self.replays.put(key, v.into()).await.map_err(other)?;
        Ok(())
    }

    /// Stores NDJSON `lines` on `subject` in pieces of whole lines, each
    /// with an id derived from `id` (a retry stores nothing twice).
    async fn store_lines(&self, subject: &str, lines: &[u8], id: &str) -> io::Result<()> {
        for (i, piece) in super::dead_letters::pieces(lines).into_iter().enumerate() {
            self.publisher
                .store_on(subject, Bytes::copy_from_slice(piece), &format!("{id}-{i}"))
                .await
                .map_err(other)?;
        }
        Ok(())
    }

    async fn take(&self, destination: &str, id: &str, selection: &Selection) -> io::Result<Taken> {
        let key = Self::key(destination, id);
        if let Some((s, _)) = self.stored(&key).await? {
            return Ok(Taken::Existing(s.record));
        }
        let mut stored = Stored {
            record: ReplayRecord {
                id: id.to_string(),
                created_at: crate::now(),
                records: 0,
                finished_at: String::new(),
            },
            node: self.node.clone(),
        };
        let v = serde_json::to_vec(&stored).map_err(other)?;
        if self.replays.create(&key, v.into()).await.is_err() {
            // Claimed by another call with this id meanwhile.
            return match self.stored(&key).await? {
                Some((s, _)) => Ok(Taken::Existing(s.record)),
                None => Err(other(format!("replay {id} could not be recorded"))),
            };
        }
        // Two passes over the queue, one message in memory at a time (a
        // queue holds up to 256 of up to 1 MiB): the selected lines go to
        // the journal first, then the messages they came from are stored
        // again without them. A stop between the two leaves them in both:
        // sent again at the next start, never lost.
        let subject = self.settings.dead_letter_subject(destination);
        let journal = self.settings.replay_subject(destination, id);
        let (mut taken, mut touched) = (0u64, Vec::new());
        for seq in self.sequences(&subject, u64::MAX).await? {
            let Some(payload) = self.message(seq).await? else {
                continue; // taken by another replay meanwhile
            };
            let (picked, _, n) = split(seq, &payload, selection);
            if n > 0 {
                self.store_lines(&journal, &picked, &format!("{key}.journal.{seq}"))
                    .await?;
                taken += n;
                touched.push(seq);
            }
        }
        for seq in touched {
            let Some(payload) = self.message(seq).await? else {
                continue;
            };
            let (_, kept, _) = split(seq, &payload, selection);
            if !kept.is_empty() {
                self.store_lines(&subject, &kept, &format!("{key}.kept.{seq}"))
                    .await?;
            }
            sluice_stream::delete_message(
                self.publisher.client(),
                &self.settings.dead_letter_stream,
                seq,
            )
            .await
            .map_err(other)?;
        }
        stored.record.records = taken;
        self.put(&key, &stored).await?;
        Ok(Taken::New(stored.record))
    }

    async fn finish(&self, destination: &str, id: &str) -> io::Result<ReplayRecord> {
        let key = Self::key(destination, id);
        let (mut s, _) = self
            .stored(&key)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no replay {id}")))?;
        sluice_stream::purge_subject(
            self.publisher.client(),
            &self.settings.dead_letter_stream,
            &self.settings.replay_subject(destination, id),
        )
        .await
        .map_err(other)?;
        if s.record.finished_at.is_empty() {
            s.record.finished_at = crate::now();
            self.put(&key, &s).await?;
            // Looking costs a read of each of the destination's replays:
            // look for old ones at this node's first finish of a
            // destination, then every `replays_kept` finishes (so it holds
            // at most about three times that many). Best effort, and
            // bounded in time: a key listing can hang (see
            // `sluice_stream`'s live-node count), and the replay is done
            // whatever becomes of the old ones.
            if !self.time_to_forget(destination) {
                return Ok(s.record);
            }
            let forget = self.forget_old_replays(destination);
            match tokio::time::timeout(FORGET_WITHIN, forget).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(destination, "cannot forget old replays: {e}"),
                Err(_) => tracing::warn!(
                    destination,
                    "forgetting old replays took over {FORGET_WITHIN:?}; left for the next replay"
                ),
            }
        }
        Ok(s.record)
    }

    async fn open_replays(&self, destination: &str) -> io::Result<Vec<ReplayRecord>> {
        let keys = self.replay_keys(destination).await?;
        let js = jetstream::new(self.publisher.client().clone());
        let nodes = js.get_key_value(NODES).await.ok();
        let mut out = Vec::new();
        for key in keys {
            let Some((mut s, revision)) = self.stored(&key).await? else {
                continue;
            };
            if !s.record.finished_at.is_empty() {
                continue;
            }
            let alive = match &nodes {
                Some(n) if s.node != self.node => {
                    matches!(n.entry(&s.node).await, Ok(Some(e)) if e.operation == kv::Operation::Put)
                }
                _ => false,
            };
            if alive {
                continue;
            }
            // Take it over; another node starting now may win instead.
            s.node = self.node.clone();
            let v = serde_json::to_vec(&s).map_err(other)?;
            if self.replays.update(&key, v.into(), revision).await.is_err() {
                continue;
            }
            out.push(s.record);
        }
        Ok(out)
    }
}

/// The non-empty lines of a payload.
fn lines(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    payload.split(|b| *b == b'\n').filter(|l| !l.is_empty())
}

/// The lines of message `seq` that `selection` takes and those it leaves
/// (NDJSON each), and how many it takes.
fn split(seq: u64, payload: &[u8], selection: &Selection) -> (Vec<u8>, Vec<u8>, u64) {
    let (mut picked, mut kept, mut n) = (Vec::new(), Vec::new(), 0);
    for (i, line) in lines(payload).enumerate() {
        let to = match parse(seq, i, line) {
            Some(d) if selection.matches(&d) => {
                n += 1;
                &mut picked
            }
            _ => &mut kept,
        };
        to.extend_from_slice(line);
        to.push(b'\n');
    }
    (picked, kept, n)
}

/// Line `i` of message `seq` as a dead letter with its id.
fn parse(seq: u64, i: usize, line: &[u8]) -> Option<DeadLetter> {
    let mut d: DeadLetter = serde_json::from_slice(line).ok()?;
    d.id = (seq << LINE_BITS) | (i as u64).min((1 << LINE_BITS) - 1);
    Some(d)
}

/// Every dead letter of message `seq`, oldest first.
fn letters(seq: u64, payload: &[u8]) -> Vec<DeadLetter> {
    lines(payload)
        .enumerate()
        .filter_map(|(i, l)| parse(seq, i, l))
        .collect()
}

impl DeadLetterStore for JetStreamDeadLetters {
    fn list(
        &self,
        destination: &str,
        selection: &Selection,
        before_id: Option<u64>,
        limit: usize,
    ) -> io::Result<Page> {
        // Which messages there are (their sequences, from their headers
        // only), those that may hold ids below `before_id`; then each
        // message, newest first, fetched only when the page gets to it. A
        // request holds one message at a time, not the queue.
        let up_to = before_id.map_or(u64::MAX, |b| b.saturating_sub(1) >> LINE_BITS);
        let subject = self.settings.dead_letter_subject(destination);
        let seqs = self.rt.block_on(self.sequences(&subject, up_to))?;
        let failed = std::cell::RefCell::new(None);
        let newest_first = seqs.into_iter().rev().flat_map(|seq| {
            let got = match failed.borrow().is_some() {
                true => Ok(None),
                false => self.rt.block_on(self.message(seq)),
            };
            let of_message = match got {
                Ok(Some(payload)) => letters(seq, &payload),
                Ok(None) => Vec::new(), // taken by a replay meanwhile
                Err(e) => {
                    *failed.borrow_mut() = Some(e);
                    Vec::new()
                }
            };
            of_message.into_iter().rev()
        });
        let mut page = Page::of(newest_first, selection, before_id, limit);
        match failed.into_inner() {
            // Full before the message that failed (read to see whether
            // there is more): the page stands, and the next one will say.
            Some(_) if page.dead_letters.len() == limit && limit > 0 => {
                page.next_before = page.dead_letters.last().map(|d| d.id);
                Ok(page)
            }
            Some(e) => Err(e),
            None => Ok(page),
        }
    }

    fn take_for_replay(
        &self,
        destination: &str,
        id: &str,
        selection: &Selection,
    ) -> io::Result<Taken> {
        self.rt.block_on(self.take(destination, id, selection))
    }

    fn replay(&self, destination: &str, id: &str) -> io::Result<Option<ReplayRecord>> {
        Ok(self
            .rt
            .block_on(self.stored(&Self::key(destination, id)))?
            .map(|(s, _)| s.record))
    }

    fn finish_replay(&self, destination: &str, id: &str) -> io::Result<ReplayRecord> {
        self.rt.block_on(self.finish(destination, id))
    }

    fn letters(&self, destination: &str, id: &str) -> io::Result<crate::dead_letters::Letters> {
        // The journal's messages fetched one at a time, as the replay
        // sends them: never the whole journal in memory.
        let journal = self.settings.replay_subject(destination, id);
        let seqs = self.rt.block_on(self.sequences(&journal, u64::MAX))?;
        let client = self.publisher.client().clone();
        let (stream, rt) = (self.settings.dead_letter_stream.clone(), self.rt.clone());
        Ok(Box::new(seqs.into_iter().flat_map(move |seq| {
            let got = rt.block_on(sluice_stream::read_message(&client, &stream, seq));
            match got {
                Ok(Some(payload)) => letters(seq, &payload).into_iter().map(Ok).collect(),
                Ok(None) => Vec::new(), // purged: the replay was finished meanwhile
                Err(e) => vec![Err(other(e))],
            }
        })))
    }

    fn put_back(&self, destination: &str, id: &str) -> io::Result<()> {
        self.rt.block_on(self.put_journal_back(destination, id))
    }

    fn unfinished(&self, destination: &str) -> io::Result<Vec<ReplayRecord>> {
        self.rt.block_on(self.open_replays(destination))
    }

    fn usage(&self, _destination: &str) -> (u64, u64) {
        (0, 0)
    }
}
