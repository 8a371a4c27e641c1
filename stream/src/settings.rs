//! The settings of the event stream, with the defaults every node and
//! publisher share unless told otherwise. A setting that shapes the stream
//! (partitions, subjects) must be the same everywhere; the others (message
//! size, timeouts) are the publisher's own.

use std::time::Duration;

/// What the stream is and how it is written.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamSettings {
    /// The JetStream stream's name. Default `SLUICE_EVENTS`.
    pub stream: String,
    /// Subjects are `<prefix>.<partition>`. Default `sluice.events`.
    pub subject_prefix: String,
    /// The number of partitions, `P` in `fnv1a64(account_id) mod P`.
    /// Default 16. Changing it moves accounts between partitions: only with
    /// the stream drained.
    pub partitions: u32,
    /// Copies of each message kept by the NATS cluster; `None` picks 3 when
    /// the servers named (or those a server tells of) are three or more,
    /// else 1. Losing one server loses nothing only with 3.
    pub replicas: Option<usize>,
    /// How long a message is kept at most, delivered or not. Default 7 days.
    pub max_age: Duration,
    /// The stream's size limit in bytes (JetStream reserves it on the
    /// servers when set); when reached, publishing is refused (discard new),
    /// stored events are never dropped for room. Default -1: no limit of
    /// its own, bounded by `max_age` and the servers' JetStream
    /// `max_file_store`, whose exhaustion also refuses publishing.
    pub max_bytes: i64,
    /// JetStream's de-duplication window: a message published again with
    /// the same `Nats-Msg-Id` within it is stored once. It bounds what a
    /// retry can duplicate: a publish retried later than this after its
    /// first try may be stored twice. Default 2 minutes.
    pub duplicate_window: Duration,
    /// Messages are packed up to this many bytes. Default 256 KiB: several
    /// hundred events of ~650 bytes. Never over the server's `max_payload`;
    /// a single event up to 1 MiB always gets a message of its own, so the
    /// servers' `max_payload` must be over 1 MiB (docs/cluster.md: 8 MB).
    pub target_message_bytes: usize,
    /// How long one publish keeps retrying a message (timeouts, a stream
    /// without a leader during an election) before it gives up. Default 30 s.
    pub publish_timeout: Duration,
    /// The stream where a node puts the events of accounts whose
    /// destinations are slow (`SLUICE_SPILL`): a work queue, one subject per
    /// partition, drained by the node holding that partition.
    pub spill_stream: String,
    /// Its subjects' prefix (`sluice.spill`).
    pub spill_prefix: String,
    /// Compress message payloads with LZ4 (`Sluice-Encoding: lz4`). Default
    /// true: JetStream stores, replicates and delivers a fraction of the
    /// bytes. Consumers read either.
    pub compress: bool,
    /// The stream of dead letters (`SLUICE_DEAD_LETTERS`), one subject per
    /// destination, kept `max_age` as the events are.
    pub dead_letter_stream: String,
    /// Its subjects' prefix (`sluice.dlq`).
    pub dead_letter_prefix: String,
    /// Messages of dead letters kept per destination (each holds at most
    /// 1 MiB of them): past it, a node keeps a destination's new dead
    /// letters waiting, unacknowledged, until a replay makes room, so no
    /// destination can fill the stream for the others. Checked before each
    /// store (nodes storing at once may pass it by a message each).
    /// Default 256.
    pub dead_letter_max_messages: i64,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            stream: "SLUICE_EVENTS".into(),
            subject_prefix: "sluice.events".into(),
            partitions: 16,
            replicas: None,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: -1,
            duplicate_window: Duration::from_secs(120),
            target_message_bytes: 256 << 10,
            publish_timeout: Duration::from_secs(30),
            spill_stream: "SLUICE_SPILL".into(),
            spill_prefix: "sluice.spill".into(),
            compress: true,
            dead_letter_stream: "SLUICE_DEAD_LETTERS".into(),
            dead_letter_prefix: "sluice.dlq".into(),
            dead_letter_max_messages: 256,
        }
    }
}

impl StreamSettings {
    /// The subject of a partition.
    pub fn subject(&self, partition: u32) -> String {
        format!("{}.{partition}", self.subject_prefix)
    }

    /// The spill subject of a partition.
    pub fn spill_subject(&self, partition: u32) -> String {
        format!("{}.{partition}", self.spill_prefix)
    }

    /// The spill stream's configuration: a work queue (a message is gone
    /// once acked), otherwise kept as the event stream is.
    pub fn spill_config(&self, replicas: usize) -> async_nats::jetstream::stream::Config {
        async_nats::jetstream::stream::Config {
            name: self.spill_stream.clone(),
            subjects: vec![format!("{}.*", self.spill_prefix)],
            retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
            description: Some("Sluice: events of accounts whose destinations are slow".into()),
            ..self.stream_config(replicas)
        }
    }

    /// The dead-letter subject of a destination.
    pub fn dead_letter_subject(&self, destination: &str) -> String {
        format!("{}.{destination}", self.dead_letter_prefix)
    }

    /// The subject holding what replay `replay` of `destination` took from
    /// its dead letters until the replay is done (its journal).
    pub fn replay_subject(&self, destination: &str, replay: &str) -> String {
        format!("{}-replay.{destination}.{replay}", self.dead_letter_prefix)
    }

    /// The dead-letter stream's configuration: kept as the event stream is.
    pub fn dead_letter_config(&self, replicas: usize) -> async_nats::jetstream::stream::Config {
        async_nats::jetstream::stream::Config {
            name: self.dead_letter_stream.clone(),
            subjects: vec![
                format!("{}.*", self.dead_letter_prefix),
                format!("{}-replay.*.*", self.dead_letter_prefix),
            ],
            description: Some(
                "Sluice: dead letters, one subject per destination, and replays' journals".into(),
            ),
            ..self.stream_config(replicas)
        }
    }

    /// The stream's JetStream configuration, with `replicas` copies.
    pub fn stream_config(&self, replicas: usize) -> async_nats::jetstream::stream::Config {
        use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
        Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.*", self.subject_prefix)],
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::New,
            storage: StorageType::File,
            num_replicas: replicas,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            duplicate_window: self.duplicate_window,
            description: Some(format!(
                "Sluice events: {} partitions by account",
                self.partitions
            )),
            ..Default::default()
        }
    }
}
