//! Reading a subject of a stream a message at a time: its messages'
//! sequences (headers only), then single messages (a listing of dead
//! letters that stops when its page is full, a replay that takes from a
//! queue of up to 256 MiB), and taking messages out of it (what a replay
//! of dead letters took).

use crate::publisher::StreamError;
use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use std::time::Duration;

/// The stream sequences of the messages stored on `subject` of `stream`,
/// oldest first, up to `up_to`: read from the messages' headers only, so
/// that a reader may then fetch the messages it needs, newest first, one
/// at a time ([`read_message`]).
pub async fn subject_sequences(
    client: &async_nats::Client,
    stream: &str,
    subject: &str,
    up_to: u64,
) -> Result<Vec<u64>, StreamError> {
    let mut out = Vec::new();
    each_message(client, stream, subject, Visit::All, |seq, _| {
        if seq > up_to {
            return Ok(false);
        }
        out.push(seq);
        Ok(true)
    })
    .await?;
    Ok(out)
}

/// Which messages [`each_message`] visits (their headers only).
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Visit {
    /// Every message.
    All,
    /// The last message of each subject.
    LastOfEach,
}

/// Calls `visit(sequence, message)` for the messages stored on `subject`
/// (a filter: it may end in `>`) of `stream`, oldest first, headers
/// only, until it answers `false`: an ephemeral consumer that acks
/// nothing.
pub(crate) async fn each_message(
    client: &async_nats::Client,
    stream: &str,
    subject: &str,
    which: Visit,
    mut visit: impl FnMut(u64, &jetstream::Message) -> Result<bool, StreamError>,
) -> Result<(), StreamError> {
    use futures_util::StreamExt;
    let mut c = get_stream(client, stream)
        .await?
        .create_consumer(pull::Config {
            filter_subject: subject.to_string(),
            ack_policy: jetstream::consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            headers_only: true,
            deliver_policy: match which {
                Visit::LastOfEach => jetstream::consumer::DeliverPolicy::LastPerSubject,
                Visit::All => jetstream::consumer::DeliverPolicy::All,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| stream_error(stream, e))?;
    let pending = c
        .info()
        .await
        .map_err(|e| stream_error(stream, e))?
        .num_pending as usize;
    let want = pending;
    let mut seen = 0;
    while seen < want {
        let mut batch = c
            .fetch()
            .max_messages((want - seen).min(256))
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(|e| stream_error(stream, e))?;
        let before = seen;
        while let Some(Ok(m)) = batch.next().await {
            let seq = m
                .info()
                .map_err(|e| stream_error(stream, e))?
                .stream_sequence;
            seen += 1;
            if !visit(seq, &m)? {
                return Ok(());
            }
        }
        if seen == before {
            break;
        }
    }
    Ok(())
}

/// The payload of message `seq` of `stream` (`None`: it is gone).
pub async fn read_message(
    client: &async_nats::Client,
    stream: &str,
    seq: u64,
) -> Result<Option<Bytes>, StreamError> {
    use jetstream::stream::RawMessageErrorKind;
    // (A handle without the stream's info: one request, not two.)
    let handle = jetstream::new(client.clone())
        .get_stream_no_info(stream)
        .await
        .map_err(|e| stream_error(stream, e))?;
    match handle.get_raw_message(seq).await {
        Ok(m) => crate::encoding::decode(Some(&m.headers), &m.payload)
            .map(Some)
            .map_err(|e| stream_error(stream, e)),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(stream_error(stream, e)),
    }
}

/// Deletes message `seq` of `stream` (already gone is no error).
pub async fn delete_message(
    client: &async_nats::Client,
    stream: &str,
    seq: u64,
) -> Result<(), StreamError> {
    match get_stream(client, stream).await?.delete_message(seq).await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("no message found") => Ok(()),
        Err(e) => Err(stream_error(stream, e)),
    }
}

/// Deletes every message of `subject` in `stream`.
pub async fn purge_subject(
    client: &async_nats::Client,
    stream: &str,
    subject: &str,
) -> Result<(), StreamError> {
    get_stream(client, stream)
        .await?
        .purge()
        .filter(subject)
        .await
        .map(|_| ())
        .map_err(|e| stream_error(stream, e))
}

fn stream_error(stream: &str, e: impl std::fmt::Display) -> StreamError {
    StreamError::Stream {
        stream: stream.to_string(),
        reason: e.to_string(),
    }
}

async fn get_stream(
    client: &async_nats::Client,
    stream: &str,
) -> Result<jetstream::stream::Stream, StreamError> {
    jetstream::new(client.clone())
        .get_stream(stream)
        .await
        .map_err(|e| stream_error(stream, e))
}

/// How many messages `subject` holds in `stream`.
pub async fn subject_messages(
    client: &async_nats::Client,
    stream: &str,
    subject: &str,
) -> Result<usize, StreamError> {
    use futures_util::StreamExt;
    let mut info = get_stream(client, stream)
        .await?
        .info_with_subjects(subject)
        .await
        .map_err(|e| stream_error(stream, e))?;
    let mut n = 0;
    while let Some(s) = info.next().await {
        let (name, count) = s.map_err(|e| stream_error(stream, e))?;
        if name == subject {
            n += count;
        }
    }
    Ok(n)
}
