//! What the tests of the cluster's dead-letter queue share: a one-node
//! nats-server (from `.venv-nats`) on loopback, a runtime, a publisher on
//! it, and the queue.

use sluice_serve::cluster::dead_letter_queue::JetStreamDeadLetters;
use sluice_stream::{Publisher, StreamSettings};
use sluice_testkit::nats::NatsCluster;

/// A running nats-server and a publisher connected to it (stopped when
/// dropped).
pub struct Nats {
    pub rt: tokio::runtime::Runtime,
    pub publisher: Publisher,
    pub settings: StreamSettings,
    _server: NatsCluster,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Starts a one-node server and connects a publisher with the default
    /// stream settings.
    pub fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let server = NatsCluster::start(dir.path(), 1);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let settings = StreamSettings::default();
        let publisher = rt
            .block_on(Publisher::connect(&server.urls(), settings.clone()))
            .expect("connected");
        Nats {
            rt,
            publisher,
            settings,
            _server: server,
            _dir: dir,
        }
    }

    /// The dead-letter queue as node `node-0` sees it.
    pub fn queue(&self) -> JetStreamDeadLetters {
        self.rt
            .block_on(JetStreamDeadLetters::open(
                self.publisher.clone(),
                self.settings.clone(),
                "node-0".into(),
                self.rt.handle().clone(),
            ))
            .expect("the replays bucket")
    }
}
