//! A node's messages into its engine: a message is done (and acked) once
//! every record made from it is delivered or dead-lettered. In a cluster
//! every destination keeps its records in memory (`durability = "memory"`):
//! a node's disk buffer would leave with a node that never comes back, so
//! only the stream holds what is not delivered yet.

use sluice_engine::Engine;
use sluice_stream::{Delivery, Handler};
use std::sync::Arc;

/// The handler of a node's messages: publishes the message's events to
/// `engine` and answers once their records are delivered or dead-lettered;
/// an error (the engine stopping, records shed by a full `drop_newest`
/// destination) has the message redelivered.
pub fn handler(engine: Arc<Engine>) -> Handler {
    Arc::new(move |d: Delivery| {
        let engine = engine.clone();
        Box::pin(async move {
            let report = engine
                .publish_ndjson_async(d.payload, true)
                .await
                .ok_or("the engine is stopping")?;
            if report.dropped > 0 {
                return Err(format!(
                    "{} records were shed by a full destination (when_full = \"drop_newest\"); the message is delivered again",
                    report.dropped
                ));
            }
            Ok(())
        })
    })
}
