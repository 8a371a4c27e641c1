//! The serve configuration file (`sluice serve --config serve.toml`): the
//! operator's settings. Every key is also a flag of `sluice serve`, and a
//! flag given wins over the file. `docs/security.md` lists them with their
//! defaults.
//!
//! ```toml
//! listen = "0.0.0.0:8080"
//! data_dir = "/var/lib/sluice"
//! metrics_addr = "127.0.0.1:9464"
//!
//! [tenants]
//! plugin_kinds = ["kinesis", "firehose", "cloudwatch_logs", "datadog", "azure_logs_ingestion", "http"]
//! allow_private_destinations = false
//! max_destinations = 100
//!
//! [tenants.delivery]
//! send_timeout_ms = "1000..60000"
//!
//! [cluster]
//! servers = "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
//! node = "node-a"
//! partitions = 16
//! ack_wait_s = 30
//! ```

use crate::policy::TenantPolicy;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// What a serve configuration file may hold; absent keys take the flags'
/// values, then the defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--plugin-dir`.
    pub plugin_dir: Option<PathBuf>,
    /// `--ingest-token`.
    pub ingest_token: Option<String>,
    /// `--strict-ngrok-filters`.
    pub strict_ngrok_filters: Option<bool>,
    /// `--workers`.
    pub workers: Option<usize>,
    /// `--metrics-addr`.
    pub metrics_addr: Option<String>,
    /// `--cors-origin` (each).
    pub cors_origins: Option<Vec<String>>,
    /// `--drain-timeout-s`.
    pub drain_timeout_s: Option<u64>,
    /// What tenants may do (`--tenant-*`, `--max-*`, ... flags).
    #[serde(default)]
    pub tenants: TenantPolicy,
    /// Joining a cluster (`--cluster` sets `servers`); see docs/cluster.md.
    pub cluster: Option<ClusterFile>,
}

/// The `[cluster]` table: how a node joins a cluster on NATS JetStream.
/// Absent keys take the defaults docs/cluster.md lists.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// `--cluster`: the NATS servers, comma-separated `nats://` URLs.
    pub servers: Option<String>,
    /// This node's name, unique in the cluster (default: made up at start).
    pub node: Option<String>,
    /// Partitions of the event stream (default 16; the same on every node).
    pub partitions: Option<u32>,
    /// Copies of the stream and buckets (default 3 with three or more NATS
    /// servers, else 1).
    pub replicas: Option<usize>,
    /// Seconds JetStream waits for a node's ack before redelivering (default 30).
    pub ack_wait_s: Option<u64>,
    /// Seconds a partition's lease lives without renewal (default 10).
    pub lease_s: Option<u64>,
    /// Unacked messages per partition (default 64).
    pub max_ack_pending: Option<i64>,
    /// Milliseconds a message waits for an account's records before that
    /// account's events are put aside on the spill subject (default 5000).
    pub spill_after_ms: Option<u64>,
    /// Messages of dead letters kept per destination, each at most 1 MiB
    /// (default 256); past it the destination's records wait for a replay.
    pub dead_letter_max_messages: Option<i64>,
}

impl ClusterFile {
    /// The options of a node joining `servers` with these settings.
    pub fn options(&self, servers: String) -> Result<crate::cluster::ClusterOptions, String> {
        let mut o = crate::cluster::ClusterOptions::new(servers);
        if let Some(n) = &self.node {
            if n.is_empty()
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "cluster.node '{n}': use letters, digits, '-' and '_' only"
                ));
            }
            o.consume.node = n.clone();
        }
        if let Some(p) = self.partitions {
            if !(1..=1024).contains(&p) {
                return Err(format!("cluster.partitions {p}: use 1 to 1024"));
            }
            o.stream.partitions = p;
        }
        if let Some(r) = self.replicas {
            if !(1..=5).contains(&r) {
                return Err(format!("cluster.replicas {r}: use 1 to 5"));
            }
            o.stream.replicas = Some(r);
        }
        let secs = |name: &str, v: u64| {
            if (1..=3600).contains(&v) {
                Ok(std::time::Duration::from_secs(v))
            } else {
                Err(format!("cluster.{name} {v}: use 1 to 3600 seconds"))
            }
        };
        if let Some(s) = self.ack_wait_s {
            o.consume.ack_wait = secs("ack_wait_s", s)?;
        }
        if let Some(s) = self.lease_s {
            o.consume.lease_ttl = secs("lease_s", s)?;
        }
        if let Some(ms) = self.spill_after_ms {
            if !(10..=600_000).contains(&ms) {
                return Err(format!("cluster.spill_after_ms {ms}: use 10 to 600000"));
            }
            o.spill_after = std::time::Duration::from_millis(ms);
        }
        if let Some(m) = self.dead_letter_max_messages {
            if !(1..=1_000_000).contains(&m) {
                return Err(format!(
                    "cluster.dead_letter_max_messages {m}: use 1 to 1000000"
                ));
            }
            o.stream.dead_letter_max_messages = m;
        }
        if let Some(m) = self.max_ack_pending {
            if !(1..=100_000).contains(&m) {
                return Err(format!("cluster.max_ack_pending {m}: use 1 to 100000"));
            }
            o.consume.max_ack_pending = m;
        }
        Ok(o)
    }
}

impl ServeFile {
    /// Reads and checks a serve configuration; errors name the file and,
    /// for TOML mistakes, the line.
    pub fn load(path: &Path) -> Result<ServeFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--config {}: {e}", path.display()))?;
        let f: ServeFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        f.tenants
            .check()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_loads_and_mistakes_name_the_key() {
        let dir = std::env::temp_dir().join(format!("sluice-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("serve.toml");
        let doc = include_str!("settings.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&p, doc).unwrap();
        let f = ServeFile::load(&p).unwrap();
        assert_eq!(f.listen.as_deref(), Some("0.0.0.0:8080"));
        assert_eq!(f.tenants.max_destinations, 100);
        assert_eq!(f.tenants.delivery.send_timeout_ms.max, 60_000);
        let c = f.cluster.as_ref().unwrap();
        let o = c.options(c.servers.clone().unwrap()).unwrap();
        assert_eq!(o.consume.node, "node-a");
        assert_eq!(o.stream.partitions, 16);
        assert!(o.servers.contains("4224"));
        let bad = ClusterFile {
            node: Some("a.b".into()),
            ..Default::default()
        };
        assert!(
            bad.options(String::new())
                .unwrap_err()
                .contains("cluster.node")
        );
        std::fs::write(&p, "[tenants]\nmax_destination = 3\n").unwrap();
        let e = ServeFile::load(&p).unwrap_err();
        assert!(e.contains("max_destination"), "{e}");
        std::fs::write(&p, "[tenants.delivery]\nsend_timeout_ms = \"9..1\"\n").unwrap();
        let e = ServeFile::load(&p).unwrap_err();
        assert!(e.contains("minimum is over the maximum"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
