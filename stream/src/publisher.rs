//! Publishing events to the stream: a body is split by partition into
//! batched messages, every message is sent with a `Nats-Msg-Id` derived
//! from the body's batch id, and the call returns only once JetStream
//! acknowledged every message (stored with its replicas), retrying a
//! message with the same id until `publish_timeout`, so that a retry the
//! stream already stored is not stored twice.

use crate::batch::{Message, Split, split};
use crate::settings::StreamSettings;
use async_nats::jetstream::{self, context::PublishErrorKind};
use bytes::Bytes;
use sluice_engine::RejectedLine;
use sluice_engine::ingest::MAX_EVENT_BYTES;
use std::time::{Duration, Instant};

/// Room kept in a message for the headers and the protocol line.
const HEADROOM: usize = 4096;

/// Why the stream could not be reached or written.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// No NATS server answered.
    #[error("cannot connect to NATS at {servers}: {reason}")]
    Connect {
        /// The servers tried.
        servers: String,
        /// What the client said.
        reason: String,
    },
    /// The servers' `max_payload` cannot hold a 1 MiB event.
    #[error(
        "the NATS servers' max_payload is {max_payload} bytes: a 1 MiB event does not fit (set max_payload to 8MB in the server configuration)"
    )]
    PayloadTooSmall {
        /// What the server allows.
        max_payload: usize,
    },
    /// The stream could not be created or read.
    #[error("stream {stream}: {reason}")]
    Stream {
        /// Its name.
        stream: String,
        /// What JetStream said.
        reason: String,
    },
    /// A message was not acknowledged within `publish_timeout`.
    #[error(
        "{unacked} of {messages} messages were not stored within {timeout:?} (last error: {last}); the others were"
    )]
    NotStored {
        /// Messages not acknowledged.
        unacked: usize,
        /// Messages in the publish.
        messages: usize,
        /// The timeout.
        timeout: Duration,
        /// The last error seen.
        last: String,
    },
}

/// What one publish stored.
#[derive(Debug, Default)]
pub struct Published {
    /// Events stored (in `messages` messages).
    pub events: usize,
    /// Messages acknowledged by JetStream.
    pub messages: usize,
    /// Messages JetStream said it already had (a retry within the
    /// de-duplication window).
    pub duplicates: usize,
    /// Tries beyond the first, over all messages.
    pub retries: usize,
    /// Lines refused before publishing, by byte offset.
    pub rejected: Vec<RejectedLine>,
}

/// A connection to the stream that publishes bodies of events.
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    client: async_nats::Client,
    settings: StreamSettings,
    max_message_bytes: usize,
    replicas: usize,
}

impl Publisher {
    /// Connects to `servers` (comma-separated `nats://host:port`), and
    /// creates the stream if it does not exist (several nodes may do so at
    /// the same moment: the one that loses finds it made).
    pub async fn connect(
        servers: &str,
        settings: StreamSettings,
    ) -> Result<Publisher, StreamError> {
        let client = connect(servers).await?;
        let max_payload = client.server_info().max_payload;
        // A largest event and its newline, alone in a message, must fit.
        if max_payload < MAX_EVENT_BYTES + 1 + HEADROOM {
            return Err(StreamError::PayloadTooSmall { max_payload });
        }
        let max_message_bytes = settings
            .target_message_bytes
            .clamp(1, max_payload - HEADROOM);
        let replicas = settings
            .replicas
            .unwrap_or_else(|| default_replicas(servers, &client));
        let js = jetstream::new(client.clone());
        let p = Publisher {
            js,
            client,
            settings,
            max_message_bytes,
            replicas,
        };
        p.ensure_stream().await?;
        Ok(p)
    }

    /// The settings in use.
    pub fn settings(&self) -> &StreamSettings {
        &self.settings
    }

    /// Replicas of the stream this publisher creates.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The size messages are packed up to (a single larger event, up to
    /// 1 MiB, gets a message of its own).
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// The NATS client, for the stream's consumers on the same connection.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    async fn ensure_stream(&self) -> Result<(), StreamError> {
        for cfg in [
            self.settings.stream_config(self.replicas),
            self.settings.spill_config(self.replicas),
            self.settings.dead_letter_config(self.replicas),
        ] {
            let deadline = Instant::now() + self.settings.publish_timeout;
            loop {
                match self.js.get_or_create_stream(cfg.clone()).await {
                    Ok(_) => break,
                    // A cluster still forming has no peers to place replicas on.
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(e) => {
                        return Err(StreamError::Stream {
                            stream: cfg.name.clone(),
                            reason: e.to_string(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Splits `body` (NDJSON) and publishes its messages, returning once
    /// every one is stored. `batch_id` names this body: publishing the same
    /// body again with the same id within the de-duplication window stores
    /// nothing twice (give the id a caller retries with, or a fresh one).
    pub async fn publish(&self, body: &[u8], batch_id: &str) -> Result<Published, StreamError> {
        let Split {
            messages,
            rejected,
            events,
        } = split(body, self.settings.partitions, self.max_message_bytes);
        let mut out = self.publish_messages(&messages, batch_id).await?;
        out.events = events;
        out.rejected = rejected;
        Ok(out)
    }

    /// Publishes ready-made messages (all sent, then every ack awaited;
    /// those that failed are sent again with the same id until stored or
    /// `publish_timeout`).
    pub async fn publish_messages(
        &self,
        messages: &[Message],
        batch_id: &str,
    ) -> Result<Published, StreamError> {
        self.publish_on(messages, batch_id, |p| self.settings.subject(p))
            .await
    }

    /// Puts `lines` (NDJSON of events of partition `partition`) on its
    /// spill subject, as one message with id `<id>.<partition>.0`, and
    /// returns once stored (retrying as [`Publisher::publish_messages`]).
    pub async fn spill(&self, partition: u32, lines: Bytes, id: &str) -> Result<(), StreamError> {
        let m = Message {
            partition,
            chunk: 0,
            events: 0,
            payload: lines,
        };
        self.publish_on(std::slice::from_ref(&m), id, |p| {
            self.settings.spill_subject(p)
        })
        .await
        .map(|_| ())
    }

    /// Stores dead letters of `destination` (NDJSON) on its dead-letter
    /// subject, as one message with id `<id>.0.0`, and returns once stored.
    pub async fn dead_letters(
        &self,
        destination: &str,
        lines: Bytes,
        id: &str,
    ) -> Result<(), StreamError> {
        let subject = self.settings.dead_letter_subject(destination);
        self.store_on(&subject, lines, id).await
    }

    /// Stores `payload` on `subject` (of a stream this publisher made), as
    /// one message with id `<id>.0.0`, and returns once stored.
    pub async fn store_on(
        &self,
        subject: &str,
        payload: Bytes,
        id: &str,
    ) -> Result<(), StreamError> {
        let m = Message {
            partition: 0,
            chunk: 0,
            events: 0,
            payload,
        };
        self.publish_on(std::slice::from_ref(&m), id, |_| subject.to_string())
            .await
            .map(|_| ())
    }

    async fn publish_on(
        &self,
        messages: &[Message],
        batch_id: &str,
        subject: impl Fn(u32) -> String,
    ) -> Result<Published, StreamError> {
        let deadline = Instant::now() + self.settings.publish_timeout;
        let mut out = Published::default();
        // Encoded once, sent as often as it takes.
        let encoded: Vec<Bytes> = messages
            .iter()
            .map(|m| {
                if self.settings.compress {
                    crate::encoding::compress(&m.payload)
                } else {
                    m.payload.clone()
                }
            })
            .collect();
        let mut pending: Vec<usize> = (0..messages.len()).collect();
        let mut backoff = Duration::from_millis(50);
        let mut last = String::new();
        loop {
            let mut acks = Vec::with_capacity(pending.len());
            let mut failed = Vec::new();
            for i in pending {
                let m = &messages[i];
                let mut publish = jetstream::message::PublishMessage::build()
                    .payload(encoded[i].clone())
                    .message_id(format!("{batch_id}.{}.{}", m.partition, m.chunk));
                if self.settings.compress {
                    publish = publish.header(crate::encoding::HEADER, "lz4");
                }
                match self.js.send_publish(subject(m.partition), publish).await {
                    Ok(ack) => acks.push((i, ack)),
                    Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                        return Err(StreamError::PayloadTooSmall {
                            max_payload: self.client.server_info().max_payload,
                        });
                    }
                    Err(e) => {
                        last = e.to_string();
                        failed.push(i);
                    }
                }
            }
            for (i, ack) in acks {
                match ack.await {
                    Ok(a) => {
                        out.messages += 1;
                        out.duplicates += usize::from(a.duplicate);
                    }
                    Err(e) => {
                        last = e.to_string();
                        failed.push(i);
                    }
                }
            }
            if failed.is_empty() {
                return Ok(out);
            }
            if Instant::now() + backoff > deadline {
                return Err(StreamError::NotStored {
                    unacked: failed.len(),
                    messages: messages.len(),
                    timeout: self.settings.publish_timeout,
                    last,
                });
            }
            out.retries += failed.len();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            failed.sort_unstable();
            pending = failed;
        }
    }
}

/// Copies of the stream and buckets when none are configured: 3 when the
/// servers named, or those the server gossips, are three or more; else 1.
pub fn default_replicas(servers: &str, client: &async_nats::Client) -> usize {
    let known = servers.split(',').filter(|s| !s.trim().is_empty()).count();
    let gossiped = client.server_info().connect_urls.len();
    if known.max(gossiped) >= 3 { 3 } else { 1 }
}

/// Connects to a comma-separated list of `nats://` URLs; an error when
/// none answers (the caller says so and tries again). Once connected, the
/// client reconnects by itself, to any server of the list, forever.
pub async fn connect(servers: &str) -> Result<async_nats::Client, StreamError> {
    let urls: Vec<async_nats::ServerAddr> = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|e: std::io::Error| StreamError::Connect {
            servers: servers.to_string(),
            reason: e.to_string(),
        })?;
    async_nats::ConnectOptions::new()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(urls)
        .await
        .map_err(|e| StreamError::Connect {
            servers: servers.to_string(),
            reason: e.to_string(),
        })
}
