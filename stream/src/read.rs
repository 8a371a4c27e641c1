//! Reading a subject of a stream from its start (what a node or the CLI
//! lists: a destination's dead letters), and taking messages out of it
//! (what a replay of dead letters took).

use crate::publisher::StreamError;
use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use std::time::Duration;

/// The payloads stored on `subject` of `stream`, oldest first, at most
/// `limit` of them (an ephemeral consumer that acks nothing).
pub async fn read_subject(
    client: &async_nats::Client,
    stream: &str,
    subject: &str,
    limit: usize,
) -> Result<Vec<Bytes>, StreamError> {
    Ok(read_messages(client, stream, subject, limit)
        .await?
        .into_iter()
        .map(|(_, p)| p)
        .collect())
}

/// Like [`read_subject`], with each payload's stream sequence number.
pub async fn read_messages(
    client: &async_nats::Client,
    stream: &str,
    subject: &str,
    limit: usize,
) -> Result<Vec<(u64, Bytes)>, StreamError> {
    use futures_util::StreamExt;
    let err = |e: String| StreamError::Stream {
        stream: stream.to_string(),
        reason: e,
    };
    let js = jetstream::new(client.clone());
    let s = js
        .get_stream(stream)
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut c = s
        .create_consumer(pull::Config {
            filter_subject: subject.to_string(),
            ack_policy: jetstream::consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.to_string()))?;
    let total = c.info().await.map_err(|e| err(e.to_string()))?.num_pending as usize;
    let want = total.min(limit);
    let mut out = Vec::with_capacity(want);
    while out.len() < want {
        let mut batch = c
            .fetch()
            .max_messages((want - out.len()).min(256))
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(|e| err(e.to_string()))?;
        let before = out.len();
        while let Some(Ok(m)) = batch.next().await {
            let seq = m.info().map_err(|e| err(e.to_string()))?.stream_sequence;
            out.push((
                seq,
                crate::encoding::decode(m.headers.as_ref(), &m.payload).map_err(err)?,
            ));
        }
        if out.len() == before {
            break;
        }
    }
    Ok(out)
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
