//! The cluster benchmark: `sluice serve --cluster` nodes on a NATS
//! JetStream server (or a 3-server cluster) on this machine, HTTP ingest
//! spread over the nodes, and, in the same run, the same events through one
//! `sluice serve` without the stream, so that the cost of the stream path
//! is measured side by side on the same machine at the same moment.

use crate::results::RunResult;
use crate::scenario::{RunOptions, Scenario};
use crate::serve_harness::{drive, run_http, seed_into, start_server_with};
use sluice_serve::ids::new_id;
use sluice_testkit::nats::{NatsCluster, nats_server_bin};
use std::path::Path;
use std::time::Duration;

/// One round: (the cluster path, the single-node path without the stream).
pub fn run_cluster(
    s: &Scenario,
    data: &Path,
    o: &RunOptions,
    sluice: &Path,
) -> Result<(RunResult, RunResult), String> {
    let single = run_http(s, data, o, sluice, s.run.connections)?;
    if !nats_server_bin().exists() {
        return Err(format!(
            "{} is missing: scripts/test installs nats-server 2.15.1 there",
            nats_server_bin().display()
        ));
    }
    let dir = std::env::temp_dir().join(format!(
        "sluice-bench-cluster-{}-{}",
        std::process::id(),
        new_id("r")
    ));
    let nats = NatsCluster::start(&dir.join("nats"), s.run.nats_servers.max(1));
    let urls = nats.urls();
    // The configuration goes into the bucket before any node starts: each
    // loads it whole when it joins.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let store = sluice_serve::cluster::connect_store(&urls, rt.handle(), true)?;
    let token = seed_into(&store, s)?;
    let mut nodes = Vec::new();
    for i in 0..s.run.nodes.max(1) {
        nodes.push(start_server_with(
            sluice,
            &dir.join(format!("node{i}")),
            &o.plugin_dirs,
            &["--cluster", &urls],
            &format!("[cluster]\npartitions = {}\n", s.run.partitions.max(1)),
        )?);
    }
    let nats_pids: Vec<(u32, &str)> = (0..nats.nodes.len())
        .filter_map(|i| nats.pid(i).map(|p| (p, "NATS server")))
        .collect();
    let refs: Vec<_> = nodes.iter().collect();
    let cluster = drive(
        data,
        &refs,
        &nats_pids,
        &token,
        s.run.connections,
        s.run.body_bytes,
    )?;
    for mut n in nodes {
        n.stop(Duration::from_secs(120))?;
    }
    drop(nats);
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((cluster, single))
}
