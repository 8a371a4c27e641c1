//! # sluice-stream
//!
//! Sluice's event stream on NATS JetStream, for the nodes of a cluster and
//! for an ingestion tier that publishes to it directly.
//!
//! - Events are partitioned by account ([`partition_of`]: FNV-1a 64 of the
//!   `account_id` modulo the partition count), so every event of an account
//!   is on one subject, `<prefix>.<partition>`, in the order published.
//! - A body is published as batched messages ([`split`]): each carries the
//!   NDJSON lines of one partition, up to `target_message_bytes`, never one
//!   message per event. A line without an account, or over 1 MiB, is
//!   refused with its reason before anything is sent.
//! - [`Publisher::publish`] returns once JetStream stored every message
//!   with its replicas. Each message carries `Nats-Msg-Id`
//!   `<batch id>.<partition>.<chunk>`, and a message that was not
//!   acknowledged is sent again with the same id, so a retry within the
//!   stream's de-duplication window is stored once.
//! - [`Node`] consumes a node's share of the partitions: one durable
//!   consumer per partition, held through a lease, acked only when the
//!   handler says every record of the message is done.
//!
//! The engine knows nothing of NATS: this crate depends on it only for
//! framing and the account prescan.

pub mod batch;
pub mod bucket;
pub mod consumer;
pub mod encoding;
pub mod partition;
pub mod publisher;
pub mod read;
pub mod settings;

pub use async_nats;
pub use batch::{Message, Split, split};
pub use bucket::{bucket_keys, open_bucket};
pub use consumer::{
    Completion, ConsumeSettings, ConsumeStats, Delivery, Handled, Handler, Handlers, Lag, Node,
    completed, lag,
};
pub use partition::partition_of;
pub use publisher::{Published, Publisher, StreamError, connect, default_replicas};
pub use read::{delete_message, purge_subject, read_message, subject_messages, subject_sequences};
pub use settings::StreamSettings;
