//! Key-value buckets: the leases and heartbeats of consumption, and the
//! cluster's configuration, each opened or created the same way.

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
