//! Delivery under real faults: `sluice run` delivering through the `http`
//! sink plugin to a real HTTP receiver (tests/support/receiver.rs) that goes
//! down, throttles, fails, resets connections, hangs, accepts part of a
//! batch, or is slow; and `kill -9` in the middle of a stream with a disk
//! buffer.

use serde_json::{Value, json};
use sluice_engine::PipelineSpec;
use sluice_engine::config::DestinationSpec;
use sluice_standins::http::{Action, Receiver};
use sluice_testkit::KillOnDrop;
use sluice_testkit::pipeline::{
    destination, http_events, http_subscription, sluice_run, spawn_run, write_pipeline,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const ACCOUNT: &str = "ac_1";

/// `n` HTTP events `ev_<prefix><i>`, one per line, each ~300 bytes.
/// `n` HTTP events `ev_<prefix><i>` of `account`.
fn events_of(n: usize, prefix: &str, account: &str) -> String {
    http_events(n, prefix, &[account], |_| 0)
}

fn events(n: usize, prefix: &str) -> String {
    events_of(n, prefix, ACCOUNT)
}

/// An `http` destination to `url` (its plugin config completed by `extra`)
/// with `delivery`.
fn http_dest(id: &str, url: &str, extra: Value, delivery: Value) -> DestinationSpec {
    let mut config = json!({ "url": url });
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    destination(id, "http", config, delivery)
}

/// Writes `c.toml`: `dests`, and one subscription (`esb_all`) of the
/// account's HTTP events to every one of them.
fn write_config(dir: &Path, dests: Vec<DestinationSpec>) {
    let ids: Vec<&str> = dests.iter().map(|d| d.id.as_str()).collect();
    let spec = PipelineSpec {
        subscriptions: vec![http_subscription("esb_all", ACCOUNT, &ids)],
        destinations: dests,
        ..PipelineSpec::default()
    };
    write_pipeline(dir, "c.toml", &spec);
}

/// Writes `events.ndjson` (`n` events) and `c.toml` (one `http` destination
/// `ed_web` to `rx`); returns the events.
fn setup(dir: &Path, n: usize, rx: &Receiver, extra: Value, delivery: Value) -> String {
    let input = events(n, "");
    write(dir, "events.ndjson", &input);
    write_config(dir, vec![http_dest("ed_web", &rx.url(), extra, delivery)]);
    input
}

fn ids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["event_id"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn counts(records: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for id in ids(records) {
        *m.entry(id).or_default() += 1;
    }
    m
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// Starts `sluice run --config c.toml ARGS` in `dir` (stderr captured).
fn spawn(dir: &Path, args: &[&str]) -> KillOnDrop {
    spawn_run(dir, args, &[])
}

/// Waits for it to exit, calling `tick` meanwhile; returns (success, stderr).
fn finish(child: &mut KillOnDrop, timeout: Duration, tick: impl FnMut()) -> (bool, String) {
    sluice_testkit::wait_exit(child, timeout, tick)
}

/// Runs `sluice run` to the end; returns (success, stderr).
fn run(dir: &Path, args: &[&str], timeout: Duration) -> (bool, String) {
    sluice_run(dir, args, &[], timeout)
}

#[test]
fn partial_success_retries_exactly_the_failed_records() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    // Odd events fail the first time they are sent; every 100th is refused for good.
    let sent: Arc<std::sync::Mutex<BTreeMap<String, usize>>> = Arc::default();
    let s2 = sent.clone();
    rx.set(move |req| {
        let mut retry = Vec::new();
        let mut rejected = Vec::new();
        let mut sent = s2.lock().unwrap();
        for (i, r) in req.records.iter().enumerate() {
            let id = r["event_id"].as_str().unwrap().to_string();
            let n = r["object"]["n"].as_u64().unwrap();
            let times = sent.entry(id).or_default();
            *times += 1;
            if n.is_multiple_of(100) {
                rejected.push(
                    serde_json::json!({"index": i, "reason": format!("schema says no to {n}")}),
                );
            } else if n % 2 == 1 && *times == 1 {
                retry.push(i);
            }
        }
        Action::Respond {
            status: 200,
            retry_after: None,
            body: serde_json::json!({"retry": retry, "rejected": rejected}).to_string(),
        }
    });
    setup(
        dir.path(),
        3000,
        &rx,
        json!({"encoding": "json_array", "gzip": true, "headers": {"Authorization": "Bearer s3cret"}}),
        json!({"linger_ms": 20, "retry_max_backoff_ms": 200, "batch_max_records": 250}),
    );
    let (ok, err) = run(
        dir.path(),
        &["--input", "events.ndjson"],
        Duration::from_secs(60),
    );
    assert!(ok, "{err}");
    let reqs = rx.requests();
    assert!(reqs.len() > 12, "{} requests", reqs.len());
    for r in &reqs {
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("authorization"), Some("Bearer s3cret"));
        assert!(r.records.len() <= 250);
    }
    assert_eq!(rx.protocol_errors(), 0);
    // Each odd record was sent exactly twice, every other exactly once:
    // only the failed records were retried, never a whole batch.
    for (id, times) in sent.lock().unwrap().iter() {
        let n: u64 = id.trim_start_matches("ev_").parse().unwrap();
        let want = if n % 2 == 1 && !n.is_multiple_of(100) {
            2
        } else {
            1
        };
        assert_eq!(*times, want, "{id} was sent {times} times");
    }
    assert_eq!(sent.lock().unwrap().len(), 3000);
    // Delivered once each, except the refused, which are dead letters with the reason.
    let acc = counts(&rx.accepted());
    assert_eq!(acc.len(), 3000 - 30);
    assert!(acc.values().all(|c| *c == 1));
    let dead = sluice_testkit::read_ndjson(&dir.path().join("dead-letter/ed_web.ndjson"));
    assert_eq!(dead.len(), 30, "{err}");
    assert!(dead.iter().all(|d| {
        d["reason"]
            .as_str()
            .unwrap()
            .starts_with("rejected: schema says no to")
    }));
    assert!(
        err.contains("3000 delivered") || err.contains("2970 delivered"),
        "{err}"
    );
    assert!(err.contains("30 dead-lettered"), "{err}");
}

#[test]
fn throttling_errors_resets_and_hangs_are_retried_until_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    let n = Arc::new(AtomicU64::new(0));
    let n2 = n.clone();
    rx.set(move |_| match n2.fetch_add(1, Ordering::SeqCst) {
        0 => Action::status(429, Some("1")),
        1 => Action::status(503, None),
        2 => Action::Reset,
        3 => Action::Hang(Duration::from_secs(3)),
        4 => Action::status(500, None),
        _ => Action::ok(),
    });
    setup(
        dir.path(),
        200,
        &rx,
        json!({"timeout_ms": 1000}),
        // One batch at a time, so the faults hit the same records in turn.
        json!({"linger_ms": 50, "max_in_flight": 1, "retry_max_backoff_ms": 300}),
    );
    let (ok, err) = run(
        dir.path(),
        &["--input", "events.ndjson"],
        Duration::from_secs(60),
    );
    assert!(ok, "{err}");
    let acc = counts(&rx.accepted());
    assert_eq!(acc.len(), 200, "{err}");
    assert!(
        acc.values().all(|c| *c == 1),
        "no duplicates: nothing was accepted twice"
    );
    let reqs = rx.requests();
    assert!(reqs.len() >= 6);
    // The 429's Retry-After (1 s) was honoured before the next attempt.
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    assert!(err.contains("200 delivered"), "{err}");
    assert!(err.contains("0 dead-lettered"), "{err}");
}

#[test]
fn a_destination_down_for_30_seconds_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    rx.go_down();
    setup(
        dir.path(),
        5000,
        &rx,
        json!({"timeout_ms": 2000}),
        json!({"linger_ms": 50, "retry_max_backoff_ms": 2000, "max_attempts": 0, "max_age_s": 600}),
    );
    let mut child = spawn(
        dir.path(),
        &["--input", "events.ndjson", "--drain-timeout", "120"],
    );
    std::thread::sleep(Duration::from_secs(30));
    if child.0.try_wait().unwrap().is_some() {
        let (_, err) = finish(&mut child, Duration::from_secs(1), || {});
        panic!("it should still be waiting for the destination: {err}");
    }
    assert!(rx.accepted().is_empty());
    rx.come_back();
    let (ok, err) = finish(&mut child, Duration::from_secs(90), || {});
    assert!(ok, "{err}");
    let acc = counts(&rx.accepted());
    assert_eq!(acc.len(), 5000, "every record arrived: {err}");
    let duplicates: usize = acc.values().map(|c| c - 1).sum();
    // A duplicate needs a batch accepted whose answer was lost; with the
    // port closed there are none, and never more than a batch in flight.
    assert!(duplicates <= 1000, "{duplicates} duplicates");
    assert!(err.contains("5000 delivered"), "{err}");
    assert!(err.contains("0 dead-lettered"), "{err}");
}

#[test]
fn kill_9_with_a_disk_buffer_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    // Slow: 100 ms per batch of 100, so the stream is still going when killed.
    rx.set(|_| {
        std::thread::sleep(Duration::from_millis(100));
        Action::ok()
    });
    let input = setup(
        dir.path(),
        20_000,
        &rx,
        json!({}),
        json!({
            "linger_ms": 20,
            "batch_max_records": 100,
            "max_in_flight": 2,
            "durability": "disk",
            "fsync": "interval",
            "fsync_interval_ms": 20,
        }),
    );
    let mut child = spawn(
        dir.path(),
        &["--input", "events.ndjson", "--ack-file", "acks"],
    );
    // Wait until part of the input is acknowledged and part delivered.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let acked = std::fs::read_to_string(dir.path().join("acks")).unwrap_or_default();
        if acked.lines().count() >= 2 && rx.accepted().len() >= 500 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    let delivered_before = rx.accepted().len();
    assert!(delivered_before < 20_000, "killed mid-stream");
    let acked = std::fs::read_to_string(dir.path().join("acks")).unwrap();
    let last = acked.lines().last().unwrap();
    let bytes: usize = last.split(' ').next().unwrap().parse().unwrap();
    let must: BTreeSet<String> = input[..bytes]
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(must.len() >= 1000, "acknowledged {} events", must.len());
    // Restart with no new input: the disk buffer is replayed.
    rx.set(|_| Action::ok());
    let (ok, err) = run(
        dir.path(),
        &["--input", "/dev/null"],
        Duration::from_secs(60),
    );
    assert!(ok, "{err}");
    assert!(err.contains("replaying"), "{err}");
    let got = rx.accepted();
    let have: BTreeSet<String> = ids(&got).into_iter().collect();
    let missing: Vec<&String> = must.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records never delivered, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // None corrupted: every delivered record is the event it came from.
    let by_id: BTreeMap<String, Value> = input
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["event_id"].as_str().unwrap().to_string(), v)
        })
        .collect();
    for r in &got {
        let src = &by_id[r["event_id"].as_str().unwrap()];
        assert_eq!(r["object"], src["object"]);
        assert_eq!(r["account_id"], src["account_id"]);
        assert_eq!(r["event_type"], src["event_type"]);
    }
    let dups = got.len() - have.len();
    eprintln!(
        "delivered before the kill: {delivered_before}, after: {}, duplicates: {dups}",
        got.len() - delivered_before
    );
}

/// The segment files of a destination's disk buffer.
fn segments(dir: &Path, dest: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("buffer").join(dest))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_torn_write_at_the_end_of_a_segment_is_repaired_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    rx.go_down();
    setup(
        dir.path(),
        1000,
        &rx,
        json!({"timeout_ms": 500}),
        json!({"linger_ms": 20, "durability": "disk", "retry_max_backoff_ms": 200, "max_attempts": 0}),
    );
    // The destination is down: at the end the records stay in the disk buffer.
    let (ok, err) = run(
        dir.path(),
        &["--input", "events.ndjson", "--drain-timeout", "1"],
        Duration::from_secs(60),
    );
    assert!(ok, "{err}");
    assert!(err.contains("1000 kept in disk buffers"), "{err}");
    assert!(
        !dir.path().join("dead-letter/ed_web.ndjson").exists(),
        "nothing dead-lettered"
    );
    // A write torn in the middle of a frame, as a crash leaves it.
    let seg = segments(dir.path(), "ed_web").pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let len = bytes.len();
    let torn = bytes[len - 700..len - 300].to_vec();
    bytes.extend_from_slice(&torn);
    std::fs::write(&seg, &bytes).unwrap();
    rx.come_back();
    let (ok, err) = run(
        dir.path(),
        &["--input", "/dev/null"],
        Duration::from_secs(60),
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("a torn write"),
        "the repair is reported: {err}"
    );
    let acc = counts(&rx.accepted());
    assert_eq!(acc.len(), 1000, "{err}");
    assert_eq!(
        std::fs::read(&seg).map(|b| b.len()).unwrap_or(len),
        len,
        "cut back to the last whole record (or deleted once delivered)"
    );
}

/// Scrapes one metric of one destination from a `--metrics-addr` endpoint.
fn metric(addr: &str, name: &str, dest: &str) -> Option<f64> {
    let text = reqwest::blocking::get(format!("http://{addr}/metrics"))
        .ok()?
        .text()
        .ok()?;
    let prefix = format!("{name}{{destination=\"{dest}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
}

fn free_port() -> String {
    format!("127.0.0.1:{}", sluice_testkit::free_port())
}

/// Runs a fast and a slow destination side by side; returns (seconds,
/// stderr, peak queued bytes of the slow one).
fn fast_and_slow(
    dir: &Path,
    fast: &Receiver,
    slow: &Receiver,
    when_full: &str,
) -> (f64, String, f64) {
    let slow_delivery = json!({
        "linger_ms": 10,
        "batch_max_records": 50,
        "max_in_flight": 1,
        "adaptive_concurrency": false,
        "buffer_max_bytes": 65536,
        "when_full": when_full,
    });
    write_config(
        dir,
        vec![
            http_dest("ed_fast", &fast.url(), json!({}), json!({"linger_ms": 10})),
            http_dest("ed_slow", &slow.url(), json!({}), slow_delivery),
        ],
    );
    let addr = free_port();
    let start = Instant::now();
    let mut child = spawn(dir, &["--input", "events.ndjson", "--metrics-addr", &addr]);
    let mut peak = 0f64;
    let (ok, err) = finish(&mut child, Duration::from_secs(120), || {
        if let Some(q) = metric(&addr, "sluice_destination_queued_bytes", "ed_slow") {
            peak = peak.max(q);
        }
    });
    let secs = start.elapsed().as_secs_f64();
    assert!(ok, "{err}");
    (secs, err, peak)
}

#[test]
fn a_slow_destination_sheds_with_drop_newest_and_pushes_back_with_block() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "events.ndjson", &events(2000, ""));
    // 150 ms per batch of 50: 2,000 records take 6 s.
    let slow_behavior = |_: &sluice_standins::http::Request| {
        std::thread::sleep(Duration::from_millis(150));
        Action::ok()
    };
    // drop_newest: the fast destination gets everything at once; the slow
    // one keeps what fits in its 64 KiB and the rest is counted as dropped.
    let (fast, slow) = (Receiver::start(), Receiver::start());
    slow.set(slow_behavior);
    let (secs, err, _) = fast_and_slow(dir.path(), &fast, &slow, "drop_newest");
    assert_eq!(counts(&fast.accepted()).len(), 2000, "{err}");
    let kept = slow.accepted().len();
    assert!(
        kept < 2000,
        "the slow destination shed records ({kept} kept)"
    );
    let dropped: usize = err
        .split(", ")
        .find_map(|p| p.trim().strip_suffix(" dropped (buffer full)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dropped count in: {err}"));
    eprintln!("drop_newest: {secs:.1} s, slow destination kept {kept}, dropped {dropped}");
    assert_eq!(
        kept + dropped,
        2000,
        "every record is delivered or counted as dropped"
    );
    assert!(
        secs < 5.0,
        "the fast destination was not held back: {secs:.1} s"
    );
    // block: nothing lost, the publisher waits for the slow destination, and
    // its memory stays within the budget.
    let (fast, slow) = (Receiver::start(), Receiver::start());
    slow.set(slow_behavior);
    let (secs, err, peak) = fast_and_slow(dir.path(), &fast, &slow, "block");
    assert_eq!(counts(&fast.accepted()).len(), 2000, "{err}");
    assert_eq!(counts(&slow.accepted()).len(), 2000, "{err}");
    assert!(!err.contains("dropped"), "{err}");
    eprintln!("block: {secs:.1} s, slow destination's queued bytes peaked at {peak}");
    assert!(secs >= 5.0, "the publisher was pushed back: {secs:.1} s");
    // A chunk can be let through on top of a full budget: allow one more.
    assert!(peak <= 65536.0 * 2.0, "queued bytes peaked at {peak}");
}

/// Creates a destination (plugin target) and a subscription of every HTTP
/// event of the server's account to it.
/// The operator lets tenants retry without limit (`max_attempts = 0`).
const UNLIMITED_ATTEMPTS: &[&str] = &["--tenant-delivery", "max_attempts=0..50"];

fn serve_pipeline(s: &sluice_testkit::Server, target: Value) {
    let http = reqwest::blocking::Client::new();
    let call = |path: &str, body: Value| -> Value {
        let r = http
            .post(format!("{}{path}", s.url))
            .header("authorization", format!("Bearer {}", s.key))
            .header("ngrok-version", "2")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().unwrap();
        assert_eq!(status, 201, "{path}: {v}");
        v
    };
    let d = call(
        "/event_destinations",
        serde_json::json!({ "target": target }),
    );
    call(
        "/event_subscriptions",
        serde_json::json!({"sources":[{"type":"http_request_complete.v0"}],"destination_ids":[d["id"]]}),
    );
}

fn post_durable(s: &sluice_testkit::Server, body: String) -> Value {
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
        .post(format!("{}/ingest?ack=durable", s.url))
        .header("authorization", format!("Bearer {}", s.ingest_token))
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().unwrap()
}

#[test]
fn http_ingest_acknowledges_durably_only_once_records_are_safe() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    rx.go_down();
    let mut s = sluice_testkit::Server::start(&dir.path().join("data"), UNLIMITED_ATTEMPTS);
    let acct = s.account.clone();
    let batch = |prefix: &str| events_of(300, prefix, &acct);
    // Memory: the answer waits for delivery, which waits for the destination.
    serve_pipeline(
        &s,
        serde_json::json!({"plugin":{"kind":"http","config":{"url": rx.url(), "timeout_ms": 500},
            "delivery":{"linger_ms":10,"retry_max_backoff_ms":200,"max_attempts":0}}}),
    );
    let (s_ref, body) = (&s, batch("m"));
    std::thread::scope(|scope| {
        let t = scope.spawn(move || post_durable(s_ref, body));
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            !t.is_finished(),
            "acknowledged before the destination took the records"
        );
        rx.come_back();
        let v = t.join().unwrap();
        assert_eq!(
            (v["accepted"].as_u64(), v["durable"].as_bool()),
            (Some(300), Some(true)),
            "{v}"
        );
        assert_eq!(
            counts(&rx.accepted()).len(),
            300,
            "delivered when acknowledged"
        );
    });
    s.stop();
    // Disk: the answer comes once the records are fsynced, destination down or not.
    let dir2 = tempfile::tempdir().unwrap();
    let rx2 = Receiver::start();
    rx2.go_down();
    let mut s = sluice_testkit::Server::start(&dir2.path().join("data"), UNLIMITED_ATTEMPTS);
    let acct = s.account.clone();
    serve_pipeline(
        &s,
        serde_json::json!({"plugin":{"kind":"http","config":{"url": rx2.url(), "timeout_ms": 500},
            "delivery":{"linger_ms":10,"retry_max_backoff_ms":200,"max_attempts":0,"durability":"disk","fsync":"every_batch"}}}),
    );
    let start = Instant::now();
    let v = post_durable(&s, events_of(300, "d", &acct));
    assert_eq!(v["accepted"].as_u64(), Some(300), "{v}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "fsynced, not delivered: {:?}",
        start.elapsed()
    );
    assert!(rx2.accepted().is_empty());
    // kill -9, then start again with the destination back: all 300 arrive.
    let mut c = s.process.child.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    rx2.come_back();
    s.restart_after_kill();
    assert!(
        rx2.wait_accepted(300, Duration::from_secs(30)),
        "{} of 300 delivered after the restart",
        counts(&rx2.accepted()).len()
    );
    assert_eq!(counts(&rx2.accepted()).len(), 300);
}

/// `sluice dlq ARGS` in `dir`: (exit code, stdout, stderr).
fn dlq(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = sluice_testkit::cmd(dir)
        .arg("dlq")
        .args(args)
        .output()
        .expect("sluice dlq runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sluice_dlq_lists_and_replays_what_a_run_dead_lettered_once_per_replay_id() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    rx.set(|_| Action::status(400, None));
    setup(
        dir.path(),
        120,
        &rx,
        json!({}),
        json!({"linger_ms": 10, "max_attempts": 1}),
    );
    let (ok, err) = run(
        dir.path(),
        &["--input", "events.ndjson"],
        Duration::from_secs(60),
    );
    assert!(ok, "{err}");
    assert!(err.contains("120 dead-lettered"), "{err}");

    // Listed newest first, selected by reason.
    let (code, out, e) = dlq(
        dir.path(),
        &["list", "--destination", "ed_web", "--limit", "500"],
    );
    assert_eq!(code, 0, "{e}");
    let listed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 120);
    assert!(
        listed
            .windows(2)
            .all(|w| w[0]["id"].as_u64() > w[1]["id"].as_u64())
    );
    let (_, none, _) = dlq(
        dir.path(),
        &["list", "--destination", "ed_web", "--reason", "HTTP 500"],
    );
    assert!(none.is_empty(), "{none}");

    // The destination is fixed: the replay delivers every record, once.
    rx.set(|_| Action::ok());
    let args = [
        "replay",
        "--config",
        "c.toml",
        "--destination",
        "ed_web",
        "--id",
        "fix1",
    ];
    let (code, out, e) = dlq(dir.path(), &args);
    assert_eq!(code, 0, "{out}{e}");
    let summary: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (summary["records"].as_u64(), summary["delivered"].as_u64()),
        (Some(120), Some(120)),
        "{summary}"
    );
    let acc = counts(&rx.accepted());
    assert_eq!(acc.len(), 120);
    assert!(acc.values().all(|c| *c == 1));
    let (_, left, _) = dlq(dir.path(), &["list", "--destination", "ed_web"]);
    assert!(left.is_empty(), "the queue is empty: {left}");
    // The same replay id again sends nothing.
    let (code, out, e) = dlq(dir.path(), &args);
    assert_eq!(code, 0, "{e}");
    assert!(
        e.contains("replay fix1 was carried out before (120 records"),
        "{e}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(out.trim()).unwrap()["records"],
        0
    );
    assert_eq!(rx.accepted().len(), 120);

    // What fails again goes back with its new reason, and the exit says so.
    rx.set(|_| Action::status(400, None));
    let (ok, err) = run(
        dir.path(),
        &["--input", "events.ndjson"],
        Duration::from_secs(60),
    );
    assert!(ok, "{err}");
    rx.set(|_| Action::status(422, None));
    let (code, _, e) = dlq(
        dir.path(),
        &["replay", "--config", "c.toml", "--destination", "ed_web"],
    );
    assert_eq!(code, 1, "{e}");
    assert!(e.contains("120 records failed again"), "{e}");
    let (_, back, _) = dlq(
        dir.path(),
        &[
            "list",
            "--destination",
            "ed_web",
            "--reason",
            "HTTP 422",
            "--limit",
            "500",
        ],
    );
    assert_eq!(back.lines().count(), 120);
}
