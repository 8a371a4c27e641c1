//! The `datadog` and `azure_logs_ingestion` sinks end to end: records
//! published through `sluice run` reach a real HTTP server on loopback that
//! enforces the vendor's protocol (tests/support/vendors.rs), exactly as
//! encoded, none missing, through 429 with Retry-After, 500, 413 (split in
//! halves), refused keys and expiring tokens; Datadog entries dated by their
//! event, and those Datadog would drop for their date dead-lettered instead.

use serde_json::{Value, json};
use sluice_standins::intake::{Intake, Vendor};
use sluice_testkit::pipeline::{
    destination, http_events, one_destination, sluice_run, spawn_run, write_pipeline,
};
use sluice_testkit::{cmd, read_ndjson, wait_exit};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

const HOUR: i64 = 3_600_000;

/// `n` HTTP events `ev_<prefix><i>` of account `ac_1`, stamped now, ~330 bytes.
fn events(n: usize, prefix: &str) -> String {
    events_at(n, prefix, |_| 0)
}

/// [`events`], event `i` stamped `ts(i)` ms from now.
fn events_at(n: usize, prefix: &str, ts: impl Fn(usize) -> i64) -> String {
    http_events(n, prefix, &["ac_1"], ts)
}

/// Writes `c.toml`: a Datadog destination with this API key (service
/// `edge`, tags `env:prod,team:net`) sending to the stand-in `dd`.
fn write_datadog_config(dir: &Path, dd: &Intake, api_key: &str, delivery: Value) {
    let cfg = json!({
        "api_key": api_key,
        "service": "edge",
        "ddtags": "env:prod,team:net",
        "intake_url": format!("{}/api/v2/logs", dd.url()),
    });
    write_config(dir, "datadog", cfg, delivery);
}

/// Writes `c.toml`: one destination `ed_v` of `kind`, account `ac_1`'s HTTP
/// events sent to it.
fn write_config(dir: &Path, kind: &str, cfg: Value, delivery: Value) {
    let dest = destination("ed_v", kind, cfg, delivery);
    write_pipeline(dir, "c.toml", &one_destination(dest, &["ac_1"]));
}

fn run(dir: &Path) -> (bool, String) {
    sluice_run(
        dir,
        &["--input", "events.ndjson"],
        &[],
        Duration::from_secs(120),
    )
}

/// `sluice check --destination ed_v` on `c.toml`: (success, stderr).
fn check_destination(dir: &Path) -> (bool, String) {
    let o = cmd(dir)
        .args(["check", "--config", "c.toml", "--destination", "ed_v"])
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Every published event arrived once, with its fields as published.
fn assert_exactly(got: &[Value], input: &str) {
    let published: BTreeMap<String, Value> = input
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["event_id"].as_str().unwrap().to_string(), v)
        })
        .collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for e in got {
        let id = e["event_id"].as_str().unwrap().to_string();
        let want = &published[&id];
        for k in ["event_type", "event_timestamp", "account_id", "object"] {
            assert_eq!(e[k], want[k], "{id}: {k}");
        }
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), published.len(), "missing records");
    assert!(seen.values().all(|c| *c == 1), "duplicated records");
}

/// An entry's `event_timestamp`, in ms since the epoch.
fn event_ms(e: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(e["event_timestamp"].as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// Every entry is dated by its event: `timestamp`, Datadog's date
/// attribute, is its `event_timestamp` in ms since the epoch.
fn assert_dated_by_the_event(got: &[Value]) {
    for e in got {
        assert_eq!(
            e["timestamp"].as_i64(),
            Some(event_ms(e)),
            "{}",
            e["event_id"]
        );
    }
}

fn datadog() -> Intake {
    Intake::start(Vendor::Datadog {
        api_key: "dd-key-1".into(),
        service: "edge".into(),
        ddtags: "env:prod,team:net".into(),
    })
}

#[test]
fn datadog_receives_every_record_through_429_500_and_413() {
    let dir = tempfile::tempdir().unwrap();
    let dd = datadog();
    // 2,000 records in batches of up to 1,000: a 429 (Retry-After: 1), a 500,
    // then a 413 that the plugin answers by sending halves.
    dd.then(429, Some("1"));
    dd.then(500, None);
    dd.then(413, None);
    let input = events(2000, "d");
    std::fs::write(dir.path().join("events.ndjson"), &input).unwrap();
    write_datadog_config(
        dir.path(),
        &dd,
        "dd-key-1",
        json!({"linger_ms": 20, "retry_max_backoff_ms": 200}),
    );
    let (ok, err) = run(dir.path());
    assert!(ok, "{err}");
    assert!(dd.violations().is_empty(), "{:?}", dd.violations());
    assert_exactly(&dd.accepted(), &input);
    assert_dated_by_the_event(&dd.accepted());
    assert!(dd.dropped().is_empty());
    let rx = dd.received();
    // Retry-After honoured: the 429's records came again a second later.
    let i = rx.iter().position(|r| r.status == 429).unwrap();
    let first = &rx[i].entries[0]["event_id"];
    let again = rx[i + 1..]
        .iter()
        .find(|r| r.entries.iter().any(|e| &e["event_id"] == first))
        .expect("the 429's records were sent again");
    assert!(
        again.at - rx[i].at >= Duration::from_millis(950),
        "{:?}",
        again.at - rx[i].at
    );
    // After the 413, its records came back in halves.
    let j = rx.iter().position(|r| r.status == 413).unwrap();
    let n = rx[j].entries.len();
    assert!(n > 1);
    let ids = |es: &[Value]| -> Vec<Value> { es.iter().map(|e| e["event_id"].clone()).collect() };
    let (first, second) = rx[j].entries.split_at(n / 2);
    for half in [first, second] {
        assert!(
            rx[j + 1..].iter().any(|r| ids(&r.entries) == ids(half)),
            "no request carried exactly the half starting at {}",
            half[0]["event_id"]
        );
    }
    // gzip: the bodies were much smaller on the wire.
    let (gz, raw): (usize, usize) = rx
        .iter()
        .fold((0, 0), |a, r| (a.0 + r.sizes.0, a.1 + r.sizes.1));
    assert!(gz * 4 < raw, "{gz} compressed for {raw}");

    // The test event through `sluice check --destination`, dated now.
    let (ok, e) = check_destination(dir.path());
    assert!(ok, "{e}");
    let tests: Vec<Value> = dd
        .accepted()
        .into_iter()
        .filter(|e| e["event_type"] == "test")
        .collect();
    assert!(!tests.is_empty());
    assert_dated_by_the_event(&tests);
    let last = tests.last().unwrap();
    let age = chrono::Utc::now().timestamp_millis() - last["timestamp"].as_i64().unwrap();
    assert!((0..60_000).contains(&age), "{age} ms old");
}

#[test]
fn datadog_dates_entries_by_the_event_and_dead_letters_those_it_would_drop() {
    let dir = tempfile::tempdir().unwrap();
    let dd = datadog();
    // Delayed events over the last 17 hours; one 20 hours old, which Datadog
    // would answer 202 and drop, and one 3 hours ahead.
    let input = events_at(300, "o", |i| match i {
        13 => -20 * HOUR,
        77 => 3 * HOUR,
        _ => -((i as i64 * 7919) % (17 * HOUR / 1000)) * 1000,
    });
    std::fs::write(dir.path().join("events.ndjson"), &input).unwrap();
    write_datadog_config(dir.path(), &dd, "dd-key-1", json!({"linger_ms": 20}));
    let (ok, err) = run(dir.path());
    assert!(ok, "{err}");
    assert!(dd.violations().is_empty(), "{:?}", dd.violations());
    assert!(err.contains(", 298 delivered,"), "{err}");
    assert!(err.contains(", 2 dead-lettered"), "{err}");

    // The others were delivered, each dated by its event, none dropped.
    let in_range: String = input
        .lines()
        .filter(|l| !l.contains(r#""ev_o13""#) && !l.contains(r#""ev_o77""#))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_exactly(&dd.accepted(), &in_range);
    assert_dated_by_the_event(&dd.accepted());
    assert!(dd.dropped().is_empty(), "{:?}", dd.dropped());
    // The two never reached the intake.
    for r in dd.received() {
        for e in &r.entries {
            assert!(e["event_id"] != "ev_o13" && e["event_id"] != "ev_o77");
        }
    }
    // Dead-lettered with the reason, naming the event's time.
    let published: BTreeMap<String, Value> = input
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["event_id"].as_str().unwrap().to_string(), v)
        })
        .collect();
    let dead = read_ndjson(&dir.path().join("dead-letter/ed_v.ndjson"));
    assert_eq!(dead.len(), 2, "{dead:?}");
    let reason = |id: &str| {
        dead.iter()
            .find(|d| d["record"]["event_id"] == id)
            .map(|d| d["reason"].as_str().unwrap().to_string())
            .unwrap()
    };
    let when = |id: &str| {
        published[id]["event_timestamp"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        reason("ev_o13"),
        format!(
            "rejected: datadog: event_timestamp {} is more than 18 hours in the past: Datadog would answer 202 and drop it",
            when("ev_o13")
        )
    );
    assert!(
        reason("ev_o77").starts_with(&format!(
            "rejected: datadog: event_timestamp {} is more than 2 hours in the future",
            when("ev_o77")
        )),
        "{}",
        reason("ev_o77")
    );

    // What the intake does with such an entry when sent anyway: 202, and
    // it never shows up.
    let old = serde_json::json!([{"ddsource": "ngrok", "service": "edge", "ddtags": "env:prod,team:net",
        "timestamp": chrono::Utc::now().timestamp_millis() - 20 * HOUR, "event_id": "ev_direct"}]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(old.to_string().as_bytes()).unwrap();
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/api/v2/logs", dd.url()))
        .header("dd-api-key", "dd-key-1")
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert!(dd.violations().is_empty(), "{:?}", dd.violations());
    assert_eq!(dd.dropped().len(), 1);
    assert!(dd.accepted().iter().all(|e| e["event_id"] != "ev_direct"));
}

#[test]
fn datadog_refused_key_and_oversized_entries_are_dead_lettered_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let dd = datadog();
    let mut input = events(50, "k");
    // One entry over Datadog's 1 MB (within the engine's 1 MiB event limit): never sent.
    input.push_str(&format!(
        r#"{{"event_id":"ev_big","event_type":"http_request_complete.v0","event_timestamp":"2026-11-21T00:00:00Z","account_id":"ac_1","object":{{"pad":"{}"}}}}"#,
        "x".repeat(1_010_000)
    ));
    input.push('\n');
    std::fs::write(dir.path().join("events.ndjson"), &input).unwrap();
    write_datadog_config(dir.path(), &dd, "wrong", json!({"linger_ms": 20}));
    let (ok, err) = run(dir.path());
    assert!(ok, "{err}");
    assert!(dd.accepted().is_empty());
    let dead = read_ndjson(&dir.path().join("dead-letter/ed_v.ndjson"));
    assert_eq!(dead.len(), 51, "{err}");
    let reason = |id: &str| {
        dead.iter()
            .find(|d| d["record"]["event_id"] == id)
            .map(|d| d["reason"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert!(
        reason("ev_k0").contains("HTTP 403")
            && reason("ev_k0").contains("check the API key and the site"),
        "{}",
        reason("ev_k0")
    );
    assert!(
        dd.received()
            .iter()
            .all(|r| r.entries.iter().all(|e| e["event_id"] != "ev_big"))
    );
    // A site that is not Datadog's is refused when the destination is created.
    write_config(
        dir.path(),
        "datadog",
        json!({"api_key": "k", "ddsite": "datadoghq.co"}),
        json!({}),
    );
    let (ok, e) = check_destination(dir.path());
    assert!(!ok);
    assert!(e.contains("`ddsite` must be one of"), "{e}");
}

fn azure() -> Intake {
    Intake::start(Vendor::Azure {
        tenant: "tenant-1".into(),
        client_id: "app-1".into(),
        secret: "s3cret".into(),
        dcr: "dcr-0123".into(),
    })
}

fn azure_cfg(az: &Intake, secret: &str, stream: &str) -> Value {
    json!({
        "tenant_id": "tenant-1",
        "client_id": "app-1",
        "client_secret": secret,
        "logs_ingestion_uri": az.url(),
        "data_collection_rule_id": "dcr-0123",
        "data_collection_stream_name": stream,
        "authority_url": az.url(),
    })
}

/// `sluice run` of `input` to `az` with `delivery`, calling `expire` once
/// when 1,000 records have been accepted: (success, stderr). Panics if the
/// stream ended first.
fn run_azure_expiring(
    dir: &Path,
    az: &Intake,
    input: &str,
    delivery: Value,
    expire: impl Fn(),
) -> (bool, String) {
    std::fs::write(dir.join("events.ndjson"), input).unwrap();
    write_config(
        dir,
        "azure_logs_ingestion",
        azure_cfg(az, "s3cret", "Custom-NgrokEvents_CL"),
        delivery,
    );
    let mut child = spawn_run(dir, &["--input", "events.ndjson"], &[]);
    let mut expired = false;
    let out = wait_exit(&mut child, Duration::from_secs(120), || {
        if !expired && az.accepted().len() >= 1000 {
            expire();
            expired = true;
        }
    });
    assert!(expired, "the stream ended before a token could expire");
    out
}

#[test]
fn azure_receives_every_record_with_time_generated_and_survives_token_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let az = azure();
    az.then(429, Some("1"));
    az.then(500, None);
    let input = events(6000, "a");
    // Expire every token while the stream flows: the plugin gets a 401 and
    // fetches a new token at once.
    let (ok, err) = run_azure_expiring(
        dir.path(),
        &az,
        &input,
        json!({"linger_ms": 20, "retry_max_backoff_ms": 200, "max_in_flight": 2}),
        || az.expire_tokens(),
    );
    assert!(ok, "{err}");
    assert!(az.violations().is_empty(), "{:?}", az.violations());
    assert_exactly(&az.accepted(), &input);
    assert!(
        az.received().iter().any(|r| r.status == 401),
        "a request met the expired token"
    );
    assert!(az.token_requests() >= 2, "a new token after the 401");
    assert!(
        az.received().iter().all(|r| r.sizes.1 <= 1024 * 1024),
        "calls of at most 1 MB"
    );
}

#[test]
fn azure_keeps_the_records_when_a_fresh_token_is_refused_or_none_can_be_had() {
    let dir = tempfile::tempdir().unwrap();
    let az = azure();
    // A 401 with a valid token, twice: the fresh token the plugin fetches
    // after the first is refused too. The records must wait, not be
    // dead-lettered, and the destination must be reported unhealthy.
    az.then(401, None);
    az.then(401, None);
    let input = events(20_000, "t");
    // Mid-stream, the tokens expire and the authority is down for three
    // requests: the calls fail whole, and go through once it is back.
    let (ok, err) = run_azure_expiring(
        dir.path(),
        &az,
        &input,
        json!({"linger_ms": 20, "retry_max_backoff_ms": 200, "max_in_flight": 1}),
        || {
            az.fail_token_requests(3);
            az.expire_tokens();
        },
    );
    assert!(ok, "{err}");
    assert!(az.violations().is_empty(), "{:?}", az.violations());
    assert_exactly(&az.accepted(), &input);
    assert!(
        !dir.path().join("dead-letter/ed_v.ndjson").exists(),
        "{:?}",
        read_ndjson(&dir.path().join("dead-letter/ed_v.ndjson"))
    );
    assert!(
        err.contains("destination unhealthy")
            && err.contains("a fresh token was refused too")
            && err.contains("AADSTS90033"),
        "{err}"
    );
    // 1 first token, 1 after the scripted 401, 3 refused, 1 after them at least.
    assert!(az.token_requests() >= 6, "{}", az.token_requests());
}

#[test]
fn azure_explains_a_wrong_stream_and_a_wrong_secret() {
    let dir = tempfile::tempdir().unwrap();
    let az = azure();
    let check = |secret: &str, stream: &str| {
        write_config(
            dir.path(),
            "azure_logs_ingestion",
            azure_cfg(&az, secret, stream),
            json!({}),
        );
        check_destination(dir.path())
    };
    let (ok, e) = check("s3cret", "NgrokEvents_CL");
    assert!(!ok);
    assert!(
        e.contains("InvalidStream") && e.contains("Custom-<Table>_CL"),
        "{e}"
    );
    let (ok, e) = check("nope", "Custom-NgrokEvents_CL");
    assert!(!ok);
    assert!(e.contains("AADSTS7000215"), "{e}");
    let (ok, e) = check("s3cret", "Custom-NgrokEvents_CL");
    assert!(ok, "{e}");
    assert!(az.accepted().iter().any(|e| e["event_type"] == "test"));
}

#[test]
fn both_plugins_pass_the_conformance_kit_against_the_vendor_servers() {
    let dir = tempfile::tempdir().unwrap();
    let dd = datadog();
    let az = azure();
    for (name, cfg, intake) in [
        (
            "datadog",
            format!(
                r#"{{"api_key":"dd-key-1","service":"edge","ddtags":"env:prod,team:net","intake_url":"{}/api/v2/logs"}}"#,
                dd.url()
            ),
            &dd,
        ),
        (
            "azure_logs_ingestion",
            format!(
                r#"{{"tenant_id":"tenant-1","client_id":"app-1","client_secret":"s3cret","logs_ingestion_uri":"{u}","data_collection_rule_id":"dcr-0123","data_collection_stream_name":"Custom-NgrokEvents_CL","authority_url":"{u}"}}"#,
                u = az.url()
            ),
            &az,
        ),
    ] {
        sluice_testkit::assert_vendor_conformant(dir.path(), name, &cfg);
        assert!(
            intake.violations().is_empty(),
            "{name}: {:?}",
            intake.violations()
        );
        // The kit's full batch reached the vendor, and the test event with
        // the shape every sink sends.
        let got = intake.accepted();
        assert!(got.len() > 1, "{name}: {} entries", got.len());
        assert!(
            got.iter().any(|e| e["event_type"] == "test"
                && e["destination_id"].is_string()
                && e["event_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("ev_test_"))
                && e["event_timestamp"]
                    .as_str()
                    .is_some_and(|t| { chrono::DateTime::parse_from_rfc3339(t).is_ok() })),
            "{name}: no test event"
        );
    }
}

/// Through `sluice serve`: the ngrok API's `datadog` and
/// `azure_logs_ingestion` targets, their test events on create, refusals
/// with the spec's codes, and ingested traffic reaching both vendors. The
/// operator points the plugins at the loopback servers with
/// `SLUICE_DATADOG_INTAKE_URL` and `SLUICE_AZURE_AUTHORITY_URL` (tenants
/// cannot set `intake_url` / `authority_url`).
#[test]
fn the_api_creates_datadog_and_azure_destinations_and_delivers_through_them() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let (dd, az) = (datadog(), azure());
    let intake = format!("{}/api/v2/logs", dd.url());
    let s = sluice_testkit::Server::start_with_env(
        &dir.path().join("data"),
        &[],
        &[
            ("SLUICE_DATADOG_INTAKE_URL", intake.as_str()),
            ("SLUICE_AZURE_AUTHORITY_URL", az.url().as_str()),
        ],
    );
    let client = reqwest::blocking::Client::new();
    let post = |path: &str, body: Value| s.api_post(path, &body);
    let datadog_target = |key: &str| json!({"datadog": {"api_key": key, "ddsite": "datadoghq.eu", "service": "edge", "ddtags": "env:prod,team:net"}});
    let azure_target = |stream: &str| {
        json!({"azure_logs_ingestion": {"tenant_id": "tenant-1", "client_id": "app-1", "client_secret": "s3cret",
            "logs_ingestion_uri": az.url(), "data_collection_rule_id": "dcr-0123", "data_collection_stream_name": stream}})
    };

    let create = |target: Value| {
        post(
            "/event_destinations",
            json!({"target": target, "verify_with_test_event": true}),
        )
    };
    // Not created: 400 with the code, and the vendor's reason or our hint.
    let refused = |target: Value, code: &str, says: &str| {
        let (st, v) = create(target);
        assert_eq!((st, v["error_code"].as_str()), (400, Some(code)), "{v}");
        assert!(v["msg"].as_str().unwrap().contains(says), "{v}");
    };

    // Created after the test event went through.
    let (st, d) = create(datadog_target("dd-key-1"));
    assert_eq!(st, 201, "{d}");
    let dd_id = d["id"].as_str().unwrap().to_string();
    assert!(
        dd.accepted()
            .iter()
            .any(|e| e["event_type"] == "test" && e["destination_id"] == dd_id.as_str()),
        "{:?}",
        dd.accepted()
    );
    let (st, a) = create(azure_target("Custom-NgrokEvents_CL"));
    assert_eq!(st, 201, "{a}");
    let az_id = a["id"].as_str().unwrap().to_string();
    assert!(az.accepted().iter().any(|e| e["event_type"] == "test"));

    // Refused test events.
    refused(
        datadog_target("wrong"),
        "ERR_NGROK_5132",
        "check the API key",
    );
    refused(
        azure_target("NgrokEvents_CL"),
        "ERR_NGROK_5139",
        "Custom-<Table>_CL",
    );
    // A vendor that cannot take it now (503): not created either, but not
    // reported as a refused key.
    dd.then(503, None);
    refused(
        datadog_target("dd-key-1"),
        "ERR_NGROK_5140",
        "could not take the test event now",
    );

    // Traffic to both, projected to two fields.
    let (st, v) = post(
        "/event_subscriptions",
        json!({"sources": [{"type": "http_request_complete.v0", "fields": ["conn.client_ip", "http.request.method"]}],
               "destination_ids": [dd_id, az_id]}),
    );
    assert_eq!(st, 201, "{v}");
    let input = http_events(500, "api", &[&s.account], |_| 0);
    let r = client
        .post(format!("{}/ingest", s.url))
        .header("authorization", format!("Bearer {}", s.ingest_token))
        .header("content-type", "application/x-ndjson")
        .body(input.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let traffic = |i: &Intake| -> Vec<Value> {
        i.accepted()
            .into_iter()
            .filter(|e| e["event_type"] == "http_request_complete.v0")
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (traffic(&dd).len() < 500 || traffic(&az).len() < 500)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (name, got) in [("datadog", traffic(&dd)), ("azure", traffic(&az))] {
        let ids: std::collections::BTreeSet<&str> = got
            .iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect();
        assert_eq!((got.len(), ids.len()), (500, 500), "{name}");
        for e in &got {
            let i: usize = e["event_id"].as_str().unwrap()["ev_api".len()..]
                .parse()
                .unwrap();
            assert_eq!(
                e["object"],
                json!({"conn": {"client_ip": format!("10.0.{}.{}", i / 256 % 256, i % 256)}, "http": {"request": {"method": "GET"}}}),
                "{name}: {e}"
            );
            assert_eq!(e["account_id"], s.account.as_str(), "{name}");
        }
    }
    assert!(dd.violations().is_empty(), "{:?}", dd.violations());
    assert!(az.violations().is_empty(), "{:?}", az.violations());
}
