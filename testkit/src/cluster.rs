//! A Sluice cluster on loopback: a 3-server NATS cluster and `n`
//! `sluice serve --cluster` nodes, all started at the same moment (one of
//! them makes the first account; which one is not known in advance), each
//! with its own data directory and the same ingest token. Every process
//! stops with the value.

use crate::Server;
use crate::nats::NatsCluster;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The ingest token every node is started with.
pub const INGEST_TOKEN: &str = "cluster-test-ingest-token-0123456789";

/// NATS and the Sluice nodes.
pub struct SluiceCluster {
    /// The NATS servers.
    pub nats: NatsCluster,
    /// The Sluice nodes, each with the first account's key.
    pub nodes: Vec<Server>,
    /// The first account.
    pub account: String,
    /// Its API key.
    pub key: String,
    /// The `--config` file every node reads (its `[cluster]` table).
    pub config: PathBuf,
    dir: PathBuf,
}

impl SluiceCluster {
    /// Starts 3 NATS servers and `n` nodes at once; `cluster_table` is the
    /// body of the nodes' `[cluster]` table (ack wait, lease time, ...).
    pub fn start(dir: &Path, n: usize, cluster_table: &str) -> SluiceCluster {
        let nats = NatsCluster::start(&dir.join("nats"), 3);
        let config = dir.join("serve.toml");
        std::fs::write(&config, format!("[cluster]\n{cluster_table}\n")).expect("serve.toml");
        let mut c = SluiceCluster {
            nats,
            nodes: Vec::new(),
            account: String::new(),
            key: String::new(),
            config,
            dir: dir.to_path_buf(),
        };
        let starts: Vec<_> = (0..n)
            .map(|i| {
                let (dir, args) = (c.node_dir(i), c.node_args());
                std::thread::spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    Server::start_with_env(&dir, &args, &[("SLUICE_INGEST_TOKEN", INGEST_TOKEN)])
                })
            })
            .collect();
        // Every start is awaited before one that failed is reported: no
        // node is left running behind a failed test.
        let started: Vec<_> = starts.into_iter().map(|t| t.join()).collect();
        for s in started {
            c.nodes
                .push(s.unwrap_or_else(|_| panic!("a node did not start (see above)")));
        }
        let first: Vec<&Server> = c.nodes.iter().filter(|s| !s.key.is_empty()).collect();
        assert_eq!(
            first.len(),
            1,
            "exactly one node makes the first account, whatever the start order"
        );
        (c.account, c.key) = (first[0].account.clone(), first[0].key.clone());
        for s in &mut c.nodes {
            (s.account, s.key) = (c.account.clone(), c.key.clone());
            s.ingest_token = INGEST_TOKEN.to_string();
        }
        c
    }

    /// The data directory of node `i`.
    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node{i}"))
    }

    /// The arguments a node is started with.
    pub fn node_args(&self) -> Vec<String> {
        vec![
            "--cluster".into(),
            self.nats.urls(),
            "--config".into(),
            self.config.display().to_string(),
        ]
    }

    /// Kills node `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].process.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Node `i` started again, on its data directory (emptied first when
    /// `empty`), after it was killed or stopped.
    pub fn restart(&mut self, i: usize, empty: bool) {
        if empty {
            let _ = std::fs::remove_dir_all(self.node_dir(i));
        }
        let args = self.node_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut s = Server::start_with_env(
            &self.node_dir(i),
            &args,
            &[("SLUICE_INGEST_TOKEN", INGEST_TOKEN)],
        );
        (s.account, s.key) = (self.account.clone(), self.key.clone());
        s.ingest_token = INGEST_TOKEN.to_string();
        self.nodes[i] = s;
    }

    /// `method path` on node `i`'s API with the first account's key:
    /// (status, JSON answer).
    pub fn call(&self, i: usize, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut r = reqwest::blocking::Client::new()
            .request(
                method.parse().expect("a method"),
                format!("{}{path}", self.nodes[i].url),
            )
            .timeout(Duration::from_secs(30))
            .header("authorization", format!("Bearer {}", self.key))
            .header("ngrok-version", "2");
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = r.send().expect("the node answers");
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    }

    /// `POST /ingest` of `body` on node `i`: (status, report), or `None`
    /// when the node did not answer (killed).
    pub fn ingest(&self, i: usize, body: &str) -> Option<(u16, Value)> {
        let resp = reqwest::blocking::Client::new()
            .post(format!("{}/ingest", self.nodes[i].url))
            .timeout(Duration::from_secs(60))
            .header("authorization", format!("Bearer {INGEST_TOKEN}"))
            .body(body.to_string())
            .send()
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.json().unwrap_or(Value::Null)))
    }
}
