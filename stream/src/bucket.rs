//! Key-value buckets: the leases and heartbeats of consumption, and the
//! cluster's configuration, each opened or created the same way; and the
//! keys of a bucket under a prefix, read without the others.

use crate::publisher::StreamError;
use async_nats::jetstream::{self, kv};
use std::time::Duration;

/// Opens the key-value bucket `name`, creating it if missing (one value per
/// key, entries expiring `max_age` after their last write, `Duration::ZERO`
/// for never, on `replicas` servers). Nodes starting at the same moment may
/// all try to create it: the ones that lose open the winner's.
pub async fn open_bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, StreamError> {
    let err = |e: String| StreamError::Stream {
        stream: name.to_string(),
        reason: e,
    };
    if let Ok(s) = js.get_key_value(name).await {
        return Ok(s);
    }
    match js
        .create_key_value(kv::Config {
            bucket: name.to_string(),
            history: 1,
            max_age,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
    {
        Ok(s) => Ok(s),
        // Another node made it first.
        Err(e) => js.get_key_value(name).await.map_err(|_| err(e.to_string())),
    }
}

/// The keys of bucket `bucket` that start with `prefix` (which ends in
/// `.`, e.g. `"ed_1."`) and hold a value: the last message of each such
/// key's subject, headers only, delete and purge markers left out. Only
/// those subjects are read, not every key of the bucket (as
/// `kv::Store::keys` would).
pub async fn bucket_keys(
    client: &async_nats::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<String>, StreamError> {
    let subjects = format!("$KV.{bucket}.");
    let mut keys = Vec::new();
    let filter = format!("{subjects}{prefix}>");
    let stream = format!("KV_{bucket}");
    crate::read::each_message(
        client,
        &stream,
        &filter,
        crate::read::Visit::LastOfEach,
        |_, m| {
            let marker = m
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() != "PUT");
            if let Some(key) = m.subject.strip_prefix(subjects.as_str())
                && !marker
            {
                keys.push(key.to_string());
            }
            Ok(true)
        },
    )
    .await?;
    Ok(keys)
}
