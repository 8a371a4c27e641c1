//! Benchmarks against a `sluice serve` child process: scenarios over HTTP
//! ingest with N concurrent connections, and the control-plane API under
//! concurrent clients.
//!
//! The server's store is seeded directly (SQLite) before it starts, so that a
//! scenario with 10,000 subscriptions starts in a second instead of making
//! 10,000 API calls that each reconfigure the engine.

use crate::results::{ApiResult, ConsoleView, Latency, Millis, RunResult};
use crate::scenario::Scenario;
use crate::scenario::{ApiSpec, RunOptions};
use sluice_engine::ingest::{Chunk, NdjsonReader};
use sluice_serve::ids::new_id;
use sluice_serve::model::{Destination, Subscription, Target};
use sluice_serve::store::{ConfigStore, SqliteStore};
use sluice_testkit::serve::ServeProcess;
use sluice_traffic::Generator;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The serve configuration of benchmark runs.
const BENCH_OPERATOR: &str = r#"[tenants]
plugin_kinds = ["kinesis", "firehose", "cloudwatch_logs", "datadog", "azure_logs_ingestion", "http", "file", "blackhole"]
allow_private_destinations = true
max_destinations = 100000
max_subscriptions = 100000
max_destinations_per_subscription = 1000
writes_per_minute = 10000000
test_events_per_minute = 100000
auth_failures_per_minute = 100000
"#;

/// Starts `sluice serve` on `data_dir` as the benchmark's operator
/// ([`BENCH_OPERATOR`]), its stderr discarded.
pub fn start_server(
    sluice: &Path,
    data_dir: &Path,
    plugin_dirs: &[PathBuf],
) -> Result<ServeProcess, String> {
    start_server_with(sluice, data_dir, plugin_dirs, &[], "")
}

/// [`start_server`] with more arguments (`--cluster URLS`) and more of the
/// serve configuration (a `[cluster]` table).
pub fn start_server_with(
    sluice: &Path,
    data_dir: &Path,
    plugin_dirs: &[PathBuf],
    extra: &[&str],
    extra_config: &str,
) -> Result<ServeProcess, String> {
    // The benchmark is the operator: its tenants reach the local sink
    // stand-ins, use the test plugins, and hold as many subscriptions as a
    // scenario needs.
    let config = data_dir.join("bench-serve.toml");
    std::fs::create_dir_all(data_dir).map_err(|e| e.to_string())?;
    std::fs::write(&config, format!("{BENCH_OPERATOR}{extra_config}"))
        .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(sluice);
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .stderr(Stdio::null());
    if let Some(d) = plugin_dirs.first() {
        cmd.arg("--plugin-dir").arg(d);
    }
    ServeProcess::start(cmd, Duration::from_secs(120))
}

fn now() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    format!("{}Z", &sluice_engine::events::format_rfc3339_ms(ms)[..19])
}

/// Writes the scenario's pipeline into a fresh store under `data_dir`: its
/// destinations as plugin targets of the first account, its subscriptions
/// under their accounts. Returns the ingest token.
pub fn seed(data_dir: &Path, s: &Scenario) -> Result<String, String> {
    seed_into(&SqliteStore::open(data_dir)?, s)
}

/// Writes the scenario's pipeline into `store` (SQLite, or a cluster's
/// bucket); returns the ingest token.
pub fn seed_into(store: &dyn ConfigStore, s: &Scenario) -> Result<String, String> {
    let accounts = Generator::new(s.generator.gen_config()).account_ids();
    let spec = s.pipeline(&accounts)?;
    let t = now();
    let owner = accounts.first().cloned().ok_or("no accounts")?;
    for a in &accounts {
        store.put_account(a, &t)?;
    }
    let (_, _) = store.create_key(&owner, "bench", &t)?;
    let mut ids: HashMap<String, String> = HashMap::new();
    for d in &spec.destinations {
        let id = new_id("ed");
        ids.insert(d.id.clone(), id.clone());
        store.put_destination(&Destination {
            id,
            account_id: owner.clone(),
            created_at: t.clone(),
            description: d.id.clone(),
            metadata: String::new(),
            format: "json".into(),
            target: Target::Plugin {
                kind: d.kind.clone(),
                config: d.config.clone(),
                delivery: Some(d.delivery.clone()),
            },
        })?;
    }
    for sub in &spec.subscriptions {
        store.put_subscription(&Subscription {
            id: new_id("esb"),
            account_id: sub.account_id.clone(),
            created_at: t.clone(),
            description: sub.id.clone(),
            metadata: String::new(),
            destination_ids: sub
                .destination_ids
                .iter()
                .filter_map(|d| ids.get(d).cloned())
                .collect(),
            sources: sub.sources.clone(),
        })?;
    }
    let token = sluice_serve::ids::secret(32);
    store.set_setting("ingest_token", &token)?;
    Ok(token)
}

/// Sums of the Prometheus samples of `text`, by metric name.
pub fn scrape(text: &str) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let key = match name.split_once('{') {
            // Keep the quantile label: it is not to be summed.
            Some((n, labels)) if labels.contains("quantile=") => {
                let q = labels
                    .split("quantile=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("");
                format!("{n}{{quantile={q}}}")
            }
            Some((n, _)) => n.to_string(),
            None => name.to_string(),
        };
        let e = out.entry(key.clone()).or_default();
        *e = if key.contains("quantile=") {
            e.max(v)
        } else {
            *e + v
        };
    }
    out
}

/// The metrics of every node at `urls`, summed (quantiles: the largest).
fn metrics(http: &reqwest::blocking::Client, urls: &[String]) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for url in urls {
        let m = http
            .get(format!("{url}/metrics"))
            .send()
            .and_then(|r| r.text())
            .map(|t| scrape(&t))
            .unwrap_or_default();
        for (k, v) in m {
            let e = out.entry(k.clone()).or_default();
            *e = if k.contains("quantile=") {
                e.max(v)
            } else {
                *e + v
            };
        }
    }
    out
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with(key))?;
    l[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn proc_cpu(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (name, secs) in crate::sysinfo::thread_cpu_of(&pid.to_string()).into_values() {
        let role = if name.starts_with("sluice-api") {
            "API and HTTP ingest"
        } else {
            crate::sysinfo::role(&name)
        };
        *out.entry(role.to_string()).or_default() += secs;
    }
    out
}

/// Runs a scenario against a `sluice serve` child over HTTP ingest, with
/// `connections` concurrent clients posting chunks of the input
/// (`body_bytes`, 1 MiB by default).
pub fn run_http(
    s: &Scenario,
    data: &Path,
    o: &RunOptions,
    sluice: &Path,
    connections: usize,
) -> Result<RunResult, String> {
    let dir = std::env::temp_dir().join(format!(
        "sluice-bench-serve-{}-{}",
        std::process::id(),
        new_id("r")
    ));
    let token = seed(&dir, s)?;
    let mut server = start_server(sluice, &dir, &o.plugin_dirs)?;
    let result = drive(data, &[&server], &[], &token, connections, s.run.body_bytes)?;
    server.stop(Duration::from_secs(120))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result)
}

/// Posts the input to `servers`' `/ingest` (client `c` to server
/// `c mod n`) in bodies of about `body_bytes`, with `connections`
/// concurrent clients, waits until every
/// record is delivered or dead-lettered (the servers' metrics summed), and
/// measures. The CPU of `others` (pid, role: the NATS servers) counts too.
pub fn drive(
    data: &Path,
    servers: &[&ServeProcess],
    others: &[(u32, &str)],
    token: &str,
    connections: usize,
    body_bytes: usize,
) -> Result<RunResult, String> {
    let metrics_urls: Vec<String> = servers.iter().map(|s| s.metrics_url.clone()).collect();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(connections)
        .build()
        .map_err(|e| e.to_string())?;
    let bytes_total = std::fs::metadata(data).map_err(|e| e.to_string())?.len();
    let reader = Mutex::new(NdjsonReader::new(
        std::fs::File::open(data).map_err(|e| e.to_string())?,
        body_bytes.max(1 << 16),
    ));
    let (published, refused) = (AtomicU64::new(0), AtomicU64::new(0));
    let failed = Mutex::new(None::<String>);
    let t0 = Instant::now();
    let sending = std::sync::atomic::AtomicBool::new(true);
    let timeline = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        // Throughput over time, from the server's own counter.
        scope.spawn(|| {
            let mut last = (0.0f64, 0.0f64);
            while sending.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let t = t0.elapsed().as_secs_f64();
                let n = metrics(&http, &metrics_urls)
                    .get("sluice_events_in_total")
                    .copied()
                    .unwrap_or(last.1);
                if t > last.0 {
                    timeline
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((t, (n - last.1) / (t - last.0)));
                }
                last = (t, n);
            }
        });
        let mut clients = Vec::new();
        for c in 0..connections.max(1) {
            let url = &servers[c % servers.len()].url;
            let (reader, failed, published, refused) = (&reader, &failed, &published, &refused);
            let http = &http;
            clients.push(scope.spawn(move || {
                loop {
                    let chunk = match reader.lock().unwrap_or_else(|p| p.into_inner()).next() {
                        Some(Ok(Chunk::Lines(b))) => b,
                        Some(Ok(Chunk::Oversized { .. })) => continue,
                        Some(Err(e)) => {
                            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                            return;
                        }
                        None => return,
                    };
                    loop {
                        let r = http
                            .post(format!("{url}/ingest"))
                            .header("authorization", format!("Bearer {token}"))
                            .body(chunk.clone())
                            .send();
                        match r {
                            Ok(resp) if resp.status().as_u16() == 429 => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            Ok(resp) if resp.status().is_success() => {
                                let v: serde_json::Value = resp.json().unwrap_or_default();
                                // Lines held back for back-pressure never
                                // entered the engine.
                                published.fetch_add(
                                    v["events"]
                                        .as_u64()
                                        .unwrap_or(0)
                                        .saturating_sub(v["back_pressure"].as_u64().unwrap_or(0)),
                                    Ordering::Relaxed,
                                );
                                break;
                            }
                            Ok(resp) => {
                                *failed.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some(format!("ingest answered {}", resp.status()));
                                return;
                            }
                            Err(e) => {
                                *failed.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some(e.to_string());
                                return;
                            }
                        }
                    }
                }
            }));
        }
        for c in clients {
            let _ = c.join();
        }
        sending.store(false, Ordering::Relaxed);
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    // Wait for delivery to catch up with what matched.
    let deadline = Instant::now() + Duration::from_secs(300);
    let published = published.load(Ordering::Relaxed) as f64;
    let m = loop {
        let m = metrics(&http, &metrics_urls);
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        let processed = get("sluice_events_in_total") >= published;
        let matched = get("sluice_subscription_matched_total");
        let done = get("sluice_destination_delivered_total")
            + get("sluice_destination_dead_lettered_total");
        if processed && done >= matched {
            break m;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "sluice serve did not catch up within 300 s: {} of {published} events processed, {done} of {matched} records delivered or dead-lettered",
                get("sluice_events_in_total")
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = t0.elapsed().as_secs_f64().max(1e-9);
    let mut cpu_s = BTreeMap::new();
    let mut peak = None::<f64>;
    for server in servers {
        for (role, secs) in proc_cpu(server.pid()) {
            *cpu_s.entry(role).or_default() += secs;
        }
        if let Some(kb) = proc_status_kb(server.pid(), "VmHWM:") {
            *peak.get_or_insert(0.0) += kb as f64 / 1024.0;
        }
    }
    for (pid, role) in others {
        let secs: f64 = crate::sysinfo::thread_cpu_of(&pid.to_string())
            .into_values()
            .map(|(_, s)| s)
            .sum();
        *cpu_s.entry(role.to_string()).or_default() += secs;
    }
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let q = |p: &str| {
        (m.get(&format!(
            "sluice_destination_latency_seconds{{quantile={p}}}"
        ))
        .copied()
        .unwrap_or(0.0)
            * 1e6) as u64
    };
    let delivered_bytes = get("sluice_destination_delivered_bytes_total") as u64;
    let events = get("sluice_events_in_total") as u64;
    let result = RunResult {
        events,
        unvalidated: get("sluice_events_unvalidated_total") as u64,
        bytes_in: bytes_total,
        elapsed_s: elapsed,
        events_per_s: events as f64 / elapsed,
        mb_in_per_s: bytes_total as f64 / 1e6 / elapsed,
        mb_out_per_s: delivered_bytes as f64 / 1e6 / elapsed,
        offered_rate: 0,
        matched: get("sluice_subscription_matched_total") as u64,
        delivered: get("sluice_destination_delivered_total") as u64,
        delivered_bytes,
        sends: get("sluice_destination_sends_total") as u64,
        rejected: get("sluice_events_rejected_total") as u64,
        filter_errors: get("sluice_subscription_filter_errors_total") as u64,
        dead_lettered: get("sluice_destination_dead_lettered_total") as u64,
        latency_us: Latency {
            p50: q("0.5"),
            p90: q("0.9"),
            p99: q("0.99"),
            p999: q("0.999"),
            max: q("1"),
            count: get("sluice_destination_latency_seconds_count") as u64,
        },
        latency_curve: vec![
            (50.0, q("0.5")),
            (90.0, q("0.9")),
            (99.0, q("0.99")),
            (99.9, q("0.999")),
            (100.0, q("1")),
        ],
        timeline: timeline.into_inner().unwrap_or_else(|p| p.into_inner()),
        peak_rss_mib: peak,
        allocs_per_event: None,
        cpu_s,
        stage_share: BTreeMap::new(),
    };
    Ok(result)
}

fn millis(h: &hdrhistogram::Histogram<u64>) -> Millis {
    Millis {
        count: h.len(),
        p50: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99: h.value_at_quantile(0.99) as f64 / 1000.0,
        max: h.max() as f64 / 1000.0,
    }
}

fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds")
}

type Histograms = (
    hdrhistogram::Histogram<u64>,
    hdrhistogram::Histogram<u64>,
    u64,
    f64,
);

/// `clients` concurrent closed-loop clients reading for `duration`: 70% GET
/// of a random subscription, 30% a page of 100 before a random one. One
/// thread drives them all (as an external load generator would, rather than
/// 64 threads competing with the server for the 2 cores). Returns the GET
/// and list histograms (µs), the failures and the seconds elapsed.
fn load_reads(
    url: &str,
    key: &str,
    sub_ids: &[String],
    clients: usize,
    duration: Duration,
) -> Result<Histograms, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .build()
            .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let end = t0 + duration;
        let mut tasks = Vec::with_capacity(clients);
        for c in 0..clients {
            let (http, url, key, ids) = (
                http.clone(),
                url.to_string(),
                format!("Bearer {key}"),
                sub_ids.to_vec(),
            );
            tasks.push(tokio::spawn(async move {
                let mut rng = sluice_traffic::Rng::new(c as u64 + 1);
                let (mut g, mut l, mut failed) = (histogram(), histogram(), 0u64);
                while Instant::now() < end {
                    let list = rng.chance(0.3);
                    let id = &ids[rng.below(ids.len() as u64) as usize];
                    let path = if list {
                        format!("{url}/event_subscriptions?limit=100&before_id={id}")
                    } else {
                        format!("{url}/event_subscriptions/{id}")
                    };
                    let start = Instant::now();
                    let ok = match http
                        .get(&path)
                        .header("authorization", &key)
                        .header("ngrok-version", "2")
                        .send()
                        .await
                    {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    let us = start.elapsed().as_micros() as u64;
                    failed += u64::from(!ok);
                    if list {
                        l.saturating_record(us)
                    } else {
                        g.saturating_record(us)
                    }
                }
                (g, l, failed)
            }));
        }
        let (mut g, mut l, mut failed) = (histogram(), histogram(), 0);
        for t in tasks {
            let (tg, tl, f) = t.await.map_err(|e| e.to_string())?;
            let _ = g.add(&tg);
            let _ = l.add(&tl);
            failed += f;
        }
        Ok((g, l, failed, t0.elapsed().as_secs_f64()))
    })
}

/// Runs the API benchmark against a `sluice serve` child.
pub fn run_api(spec: &ApiSpec, o: &RunOptions, sluice: &Path) -> Result<ApiResult, String> {
    let dir = std::env::temp_dir().join(format!(
        "sluice-bench-api-{}-{}",
        std::process::id(),
        new_id("r")
    ));
    let out_file = dir.join("live.ndjson");
    // One account with a file destination and N subscriptions on it.
    let account = new_id("ac");
    let t = now();
    let (sub_ids, key, token, dest) = {
        let store = SqliteStore::open(&dir)?;
        store.put_account(&account, &t)?;
        let (_, key) = store.create_key(&account, "bench", &t)?;
        let dest = new_id("ed");
        store.put_destination(&Destination {
            id: dest.clone(),
            account_id: account.clone(),
            created_at: t.clone(),
            description: "bench".into(),
            metadata: String::new(),
            format: "json".into(),
            target: Target::Plugin {
                kind: "file".into(),
                config: serde_json::json!({ "path": out_file }),
                delivery: Some(sluice_engine::DeliveryConfig {
                    linger_ms: 1,
                    ..Default::default()
                }),
            },
        })?;
        let mut ids = Vec::with_capacity(spec.subscriptions);
        for i in 0..spec.subscriptions.max(1) {
            let id = new_id("esb");
            store.put_subscription(&Subscription {
                id: id.clone(),
                account_id: account.clone(),
                created_at: t.clone(),
                description: format!("subscription {i}"),
                metadata: String::new(),
                destination_ids: vec![dest.clone()],
                sources: vec![sluice_engine::SourceSpec {
                    event_type: "http_request_complete.v0".into(),
                    filter: Some(format!("ev.http.response.status_code == {}", 1000 + i)),
                    fields: None,
                }],
            })?;
            ids.push(id);
        }
        let token = sluice_serve::ids::secret(32);
        store.set_setting("ingest_token", &token)?;
        (ids, key, token, dest)
    };
    let mut server = start_server(sluice, &dir, &o.plugin_dirs)?;
    let url = server.url.clone();
    let (get_h, list_h, failures, elapsed) = load_reads(
        &url,
        &key,
        &sub_ids,
        spec.clients.max(1),
        Duration::from_secs(spec.seconds.max(1)),
    )?;
    if failures > 0 {
        return Err(format!("{failures} API requests failed"));
    }
    // Changes, one after the other: each reconfigures the engine over N subscriptions.
    let http = reqwest::blocking::Client::new();
    let mut ch = histogram();
    for i in 0..spec.changes.max(1) {
        let id = &sub_ids[i % sub_ids.len()];
        let start = Instant::now();
        let r = http
            .patch(format!("{url}/event_subscriptions/{id}"))
            .header("authorization", format!("Bearer {key}"))
            .header("ngrok-version", "2")
            .header("content-type", "application/json")
            .body(serde_json::json!({"sources":[{"type":"http_request_complete.v0","filter": format!("ev.http.response.status_code == {}", 2000 + i)}]}).to_string())
            .send()
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("PATCH answered {}", r.status()));
        }
        ch.saturating_record(start.elapsed().as_micros() as u64);
    }
    // End to end: change a filter, then send an event only the new filter selects.
    let start = Instant::now();
    let id = &sub_ids[0];
    let r = http
        .patch(format!("{url}/event_subscriptions/{id}"))
        .header("authorization", format!("Bearer {key}"))
        .header("ngrok-version", "2")
        .header("content-type", "application/json")
        .body(r#"{"sources":[{"type":"http_request_complete.v0","filter":"ev.http.response.status_code == 299"}]}"#)
        .send()
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("PATCH answered {}", r.status()));
    }
    let ev = format!(
        r#"{{"event_id":"ev_live","event_type":"http_request_complete.v0","event_timestamp":"2026-11-01T00:00:00Z","account_id":"{account}","object":{{"http":{{"response":{{"status_code":299}}}}}}}}"#
    );
    http.post(format!("{url}/ingest"))
        .header("authorization", format!("Bearer {token}"))
        .body(ev)
        .send()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&out_file)
        .unwrap_or_default()
        .contains("ev_live")
    {
        if Instant::now() > deadline {
            return Err("the changed filter did not select its event within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let live = start.elapsed().as_secs_f64() * 1000.0;
    let console_views = console_views(&url, &key, &sub_ids[0], &dest)?;
    let (get, list) = (millis(&get_h), millis(&list_h));
    server.stop(Duration::from_secs(120))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ApiResult {
        subscriptions: spec.subscriptions,
        clients: spec.clients,
        requests_per_s: (get.count + list.count) as f64 / elapsed,
        get,
        list,
        change: millis(&ch),
        change_to_first_record_ms: live,
        console_bytes: sluice_serve::console::page_bytes(),
        console_views,
    })
}

/// Times each console view in headless Chromium (when installed): from
/// setting the location to the view's data on screen, the median of 5.
fn console_views(url: &str, key: &str, sub: &str, dest: &str) -> Result<Vec<ConsoleView>, String> {
    if !Path::new("/usr/bin/chromium").exists() || !Path::new("/usr/bin/chromedriver").exists() {
        eprintln!("sluice bench: Chromium is not installed; console views not timed");
        return Ok(Vec::new());
    }
    let b = sluice_testkit::webdriver::Browser::start(1280, 800);
    b.goto(&format!("{url}/"));
    b.run(
        "sessionStorage.setItem('sluice.api_key', arguments[0])",
        serde_json::json!([key]),
    );
    // (view, hash, what shows its data is there)
    let views = [
        (
            "destinations",
            "#/destinations".to_string(),
            "#destinations tbody tr",
        ),
        (
            "subscriptions (first page of 10,000)",
            "#/subscriptions".into(),
            "#subscriptions tbody tr",
        ),
        (
            "new subscription (event types, destinations)",
            "#/subscriptions/new".into(),
            "#subscription-form .source .fields label",
        ),
        (
            "live (top 100 of 10,000)",
            "#/live".into(),
            "#live-subscriptions tbody tr",
        ),
        (
            "dead letters",
            format!("#/dead-letters/{dest}"),
            "#dl-info:not(:empty)",
        ),
        ("live tail", format!("#/tap/{sub}"), "#tap-status.live"),
        (
            "destination",
            format!("#/destinations/{dest}"),
            "#send-test-event",
        ),
    ];
    let script = "const [hash, sel, done] = arguments; location.hash = '#/blank';\
        setTimeout(() => { const t0 = performance.now(); location.hash = hash;\
        const check = () => document.querySelector(sel) ? done(performance.now() - t0) : requestAnimationFrame(check);\
        check(); }, 50);";
    let mut out = Vec::new();
    for (view, hash, ready) in views {
        let mut ms: Vec<f64> = (0..5)
            .map(|_| {
                b.run_async(script, serde_json::json!([hash, ready]))
                    .as_f64()
                    .unwrap_or(f64::NAN)
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        out.push(ConsoleView {
            view: view.to_string(),
            ms: ms[2],
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_sums_labels_and_keeps_quantiles() {
        let m = scrape(
            "# HELP x\nsluice_destination_delivered_total{destination=\"a\"} 3\nsluice_destination_delivered_total{destination=\"b\"} 4\nsluice_destination_latency_seconds{destination=\"a\",quantile=\"0.99\"} 0.5\nsluice_destination_latency_seconds{destination=\"b\",quantile=\"0.99\"} 0.25\nsluice_events_in_total 9\n",
        );
        assert_eq!(m["sluice_destination_delivered_total"], 7.0);
        assert_eq!(m["sluice_destination_latency_seconds{quantile=0.99}"], 0.5);
        assert_eq!(m["sluice_events_in_total"], 9.0);
    }
}
