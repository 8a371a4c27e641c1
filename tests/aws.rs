//! The AWS sink plugins (`kinesis`, `firehose`, `cloudwatch_logs`) end to
//! end: records published through `sluice run` are read back from a real
//! moto server (GetRecords, the S3 objects Firehose wrote, GetLogEvents)
//! and compared with what was published; throttling, partial failures and
//! 5xx, which moto cannot produce, against a fake AWS endpoint speaking the
//! same JSON protocol (tests/support/aws.rs); credentials through STS, test
//! events through `sluice check --destination` and the API.

use serde_json::{Value, json};
use sluice_standins::aws::{AwsAnswer, FakeAws};
use sluice_testkit::moto::Moto;
use sluice_testkit::pipeline::{
    destination, http_events, one_destination, sluice_run, write_pipeline,
};
use sluice_testkit::{KillOnDrop, cmd, read_ndjson};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ACCOUNTS: [&str; 3] = ["ac_a", "ac_b", "ac_c"];
/// Static test keys.
fn creds() -> Value {
    json!({"creds": {"aws_access_key_id": "AKIDTEST", "aws_secret_access_key": "secret"}})
}

/// A role to assume, with the external id the trust policy asks for.
fn role() -> Value {
    json!({"role": {"role_arn": "arn:aws:iam::123456789012:role/sluice-export"}})
}

/// `n` HTTP events `ev_<prefix><i>` over the three accounts, stamped `ts(i)`
/// milliseconds from now.
fn events(n: usize, prefix: &str, ts: impl Fn(usize) -> i64) -> String {
    http_events(n, prefix, &ACCOUNTS, ts)
}

/// Event id -> the published event.
fn by_id(ndjson: &str) -> BTreeMap<String, Value> {
    ndjson
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["event_id"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

/// Writes `c.toml`: one destination `ed_aws` of `kind` with `config` and
/// `delivery`, one subscription of every account to it.
fn write_config(dir: &Path, kind: &str, config: Value, delivery: Value) {
    let dest = destination("ed_aws", kind, config, delivery);
    write_pipeline(dir, "c.toml", &one_destination(dest, &ACCOUNTS));
}

/// Runs `sluice run --config c.toml --input events.ndjson` with `env`;
/// returns (success, stderr).
fn run(dir: &Path, env: &[(&str, &str)], timeout: Duration) -> (bool, String) {
    sluice_run(dir, &["--input", "events.ndjson"], env, timeout)
}

/// The AWS environment of a process pointed at `endpoint` with test keys.
fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ACCESS_KEY_ID", "AKIDENV".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "secret".to_string()),
        ("AWS_REGION", "eu-west-3".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ]
}

fn env_refs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Asserts `got` (records as delivered) are exactly the published events, once each.
fn assert_same_records(got: &[Value], published: &BTreeMap<String, Value>) {
    let mut seen = BTreeMap::new();
    for r in got {
        let id = r["event_id"].as_str().unwrap_or("?").to_string();
        *seen.entry(id.clone()).or_insert(0) += 1;
        let want = published
            .get(&id)
            .unwrap_or_else(|| panic!("{id} was never published"));
        for k in ["event_type", "account_id", "object"] {
            assert_eq!(r[k], want[k], "{id}: {k} differs");
        }
    }
    let missing: Vec<_> = published
        .keys()
        .filter(|k| !seen.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "missing {} records, e.g. {missing:?}",
        published.len() - seen.len()
    );
    let dup: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(dup.is_empty(), "duplicated: {dup:?}");
}

// ------------------------------------------------------------------ moto

#[test]
fn kinesis_records_are_read_back_with_get_records() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    moto.py(&["create-stream", "web", "2"]);
    let input = events(1500, "k", |i| -(i as i64) * 1000);
    std::fs::write(dir.path().join("events.ndjson"), &input).unwrap();
    let cfg = json!({
        "stream_arn": "arn:aws:kinesis:us-east-1:123456789012:stream/web",
        "auth": creds(),
        "endpoint_url": moto.url,
    });
    // One put at a time: moto numbers a shard's records without a lock, and
    // two concurrent puts to one shard can overwrite each other's records.
    write_config(
        dir.path(),
        "kinesis",
        cfg.clone(),
        json!({"batch_max_records": 400, "max_in_flight": 1}),
    );
    let (ok, err) = run(dir.path(), &[], Duration::from_secs(120));
    assert!(ok, "{err}");
    assert!(err.contains("1500 delivered"), "{err}");

    let got = moto.py(&["read-stream", "web"]);
    let records: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_str(r["data"].as_str().unwrap()).unwrap())
        .collect();
    assert_same_records(&records, &by_id(&input));
    // The partition key is the account: one account's records on one shard.
    let mut shard_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (r, rec) in got.iter().zip(&records) {
        assert_eq!(r["partition_key"], rec["account_id"]);
        shard_of
            .entry(rec["account_id"].as_str().unwrap().into())
            .or_default()
            .insert(r["shard"].as_str().unwrap().into());
    }
    assert!(shard_of.values().all(|s| s.len() == 1), "{shard_of:?}");

    // The test event: one record of event_type "test".
    let o = cmd(dir.path())
        .args(["check", "--config", "c.toml", "--destination", "ed_aws"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("test event delivered"));
    let tests: Vec<Value> = moto
        .py(&["read-stream", "web"])
        .iter()
        .map(|r| serde_json::from_str::<Value>(r["data"].as_str().unwrap()).unwrap())
        .filter(|r| r["event_type"] == "test")
        .collect();
    assert_eq!(tests.len(), 1);
    assert_eq!(tests[0]["destination_id"], "ed_aws");

    // A stream that does not exist: check says so, naming AWS's error.
    let mut nope = cfg.clone();
    nope["stream_arn"] = json!("arn:aws:kinesis:us-east-1:123456789012:stream/nope");
    write_config(dir.path(), "kinesis", nope, json!({}));
    let o = cmd(dir.path())
        .args(["check", "--config", "c.toml", "--destination", "ed_aws"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("ResourceNotFoundException"), "{e}");
}

#[test]
fn firehose_writes_valid_ndjson_objects_to_s3_with_an_assumed_role_and_the_aws_environment() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    moto.py(&["create-firehose", "to-s3", "exports"]);
    let input = events(1200, "f", |i| -(i as i64));
    std::fs::write(dir.path().join("events.ndjson"), &input).unwrap();
    // No endpoint_url: AWS_ENDPOINT_URL points every client (STS too) at moto;
    // the region comes from the ARN, not AWS_REGION.
    let cfg = json!({
        "delivery_stream_arn": "arn:aws:firehose:us-east-1:123456789012:deliverystream/to-s3",
        "auth": role(),
        "external_id": "ac_owner",
    });
    write_config(
        dir.path(),
        "firehose",
        cfg,
        json!({"batch_max_records": 300}),
    );
    let env = aws_env(&moto.url);
    let (ok, err) = run(dir.path(), &env_refs(&env), Duration::from_secs(120));
    assert!(ok, "{err}");
    assert!(err.contains("1200 delivered"), "{err}");

    let objects = moto.py(&["read-bucket", "exports"]);
    assert!(
        objects.len() >= 4,
        "one object per PutRecordBatch: {}",
        objects.len()
    );
    let mut records = Vec::new();
    for o in &objects {
        let body = o["body"].as_str().unwrap();
        assert!(body.ends_with('\n'), "an object ends with a newline");
        for line in body.lines() {
            records.push(
                serde_json::from_str::<Value>(line).unwrap_or_else(|e| {
                    panic!("{}: a line is not JSON ({e}): {line:.80}", o["key"])
                }),
            );
        }
    }
    assert_same_records(&records, &by_id(&input));
}

#[test]
fn cloudwatch_events_are_read_back_in_order_and_out_of_range_ones_are_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    moto.py(&["create-log-group", "/sluice/web"]);
    let hour = 3_600_000i64;
    // Shuffled timestamps over the last 30 hours; every 97th is 15 days old,
    // every 89th 3 hours ahead.
    let input = events(900, "c", |i| {
        if i % 97 == 5 {
            -15 * 24 * hour
        } else if i % 89 == 7 {
            3 * hour
        } else {
            -((i as i64 * 7919) % (30 * hour / 1000)) * 1000
        }
    });
    std::fs::write(dir.path().join("events.ndjson"), &input).unwrap();
    let cfg = json!({
        "log_group_arn": "arn:aws:logs:us-east-1:123456789012:log-group:/sluice/web:*",
        "auth": role(),
        "external_id": "ac_owner",
        "endpoint_url": moto.url,
        "node": "n1",
    });
    write_config(dir.path(), "cloudwatch_logs", cfg, json!({}));
    let env = aws_env("http://127.0.0.1:9"); // the config's endpoint_url wins
    let (ok, err) = run(dir.path(), &env_refs(&env), Duration::from_secs(120));
    assert!(ok, "{err}");

    let published = by_id(&input);
    let now = chrono::Utc::now().timestamp_millis();
    let ts_of = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v["event_timestamp"].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let (in_range, out): (BTreeMap<_, _>, BTreeMap<_, _>) = published
        .into_iter()
        .partition(|(_, v)| ts_of(v) > now - 14 * 24 * hour && ts_of(v) < now + 2 * hour);
    assert_eq!(out.len(), 10 + 11);
    assert!(
        err.contains(&format!("{} delivered", in_range.len())),
        "{err}"
    );
    assert!(err.contains("21 dead-lettered"), "{err}");

    let got = moto.py(&["read-log-group", "/sluice/web"]);
    assert!(
        got.iter().all(|e| e["stream"] == "sluice-n1-ed_aws"),
        "the default stream name"
    );
    let records: Vec<Value> = got
        .iter()
        .map(|e| serde_json::from_str(e["message"].as_str().unwrap()).unwrap())
        .collect();
    assert_same_records(&records, &in_range);
    for (e, r) in got.iter().zip(&records) {
        assert_eq!(
            e["timestamp"].as_i64().unwrap(),
            ts_of(r),
            "the event's own timestamp"
        );
    }
    let dead = read_ndjson(&dir.path().join("dead-letter/ed_aws.ndjson"));
    assert_eq!(dead.len(), 21);
    for d in &dead {
        let id = d["record"]["event_id"].as_str().unwrap();
        assert!(out.contains_key(id), "{id} was in range");
        let why = d["reason"].as_str().unwrap();
        assert!(
            why.contains("14 days old") || why.contains("2 hours in the future"),
            "{why}"
        );
    }
}

// ------------------------------------------------------------ fake AWS

/// Event ids of a call's records.
fn call_ids(records: &[String]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_str(r.trim_end()).unwrap();
            v["event_id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Kinesis or Firehose against the fake: the first four calls fail whole
/// (throttled twice, a 500, a 503); after that, odd events fail the first
/// time they are sent (partial failure) and every 100th is refused for good.
fn partial_failures(kind: &str, (arn_key, arn): (&str, &str), retry_code: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let aws = FakeAws::start();
    let input = events(2000, "p", |_| 0);
    std::fs::write(dir.path().join("events.ndjson"), &input).unwrap();
    let cfg = json!({arn_key: arn, "auth": creds(), "endpoint_url": aws.url()});
    write_config(
        dir.path(),
        kind,
        cfg,
        json!({"linger_ms": 20, "retry_max_backoff_ms": 200}),
    );
    let sent: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
    let calls = Arc::new(Mutex::new(0usize));
    let s2 = sent.clone();
    aws.set(move |call| {
        let mut n = calls.lock().unwrap();
        *n += 1;
        match *n {
            1 | 2 => {
                return AwsAnswer::Error(
                    400,
                    if retry_code == "ProvisionedThroughputExceededException" {
                        "ProvisionedThroughputExceededException".into()
                    } else {
                        "ThrottlingException".into()
                    },
                    "Rate exceeded".into(),
                );
            }
            3 => return AwsAnswer::Error(500, "InternalFailure".into(), "oops".into()),
            4 => return AwsAnswer::Error(503, "ServiceUnavailableException".into(), "busy".into()),
            _ => {}
        }
        let mut sent = s2.lock().unwrap();
        AwsAnswer::Partial(
            call_ids(&call.records)
                .into_iter()
                .map(|id| {
                    let k: usize = id.trim_start_matches("ev_p").parse().unwrap();
                    let times = sent.entry(id).or_default();
                    *times += 1;
                    if k.is_multiple_of(100) {
                        Some("KMSAccessDeniedException".to_string())
                    } else if k % 2 == 1 && *times == 1 {
                        Some(retry_code.to_string())
                    } else {
                        None
                    }
                })
                .collect(),
        )
    });
    let (ok, err) = run(dir.path(), &[], Duration::from_secs(120));
    assert!(ok, "{err}");
    assert!(aws.violations().is_empty(), "{:?}", aws.violations());
    // Exactly the failed records were sent again, and only once.
    let sent = sent.lock().unwrap();
    assert_eq!(sent.len(), 2000);
    for (id, times) in sent.iter() {
        let k: usize = id.trim_start_matches("ev_p").parse().unwrap();
        let want = if k.is_multiple_of(100) {
            1
        } else if k % 2 == 1 {
            2
        } else {
            1
        };
        assert_eq!(*times, want, "{id} was sent {times} times");
    }
    // Delivered once each, except the refused: dead letters with AWS's code.
    let accepted: Vec<Value> = aws
        .accepted()
        .iter()
        .map(|(_, r)| serde_json::from_str(r.trim_end()).unwrap())
        .collect();
    let published: BTreeMap<String, Value> = by_id(&input)
        .into_iter()
        .filter(|(id, _)| {
            !id.trim_start_matches("ev_p")
                .parse::<usize>()
                .unwrap()
                .is_multiple_of(100)
        })
        .collect();
    assert_same_records(&accepted, &published);
    let dead = read_ndjson(&dir.path().join("dead-letter/ed_aws.ndjson"));
    assert_eq!(dead.len(), 20, "{err}");
    assert!(dead.iter().all(|d| {
        d["reason"]
            .as_str()
            .unwrap()
            .contains("KMSAccessDeniedException")
    }));
    // Throttled: the records of the first call waited a second before their retry.
    let calls = aws.calls();
    let first = call_ids(&calls[0].records);
    let again = calls[1..]
        .iter()
        .find(|c| call_ids(&c.records).contains(&first[0]))
        .expect("the first call's records were sent again");
    assert!(
        again.at - calls[0].at >= Duration::from_millis(900),
        "retried after {:?}",
        again.at - calls[0].at
    );
    if kind == "firehose" {
        assert!(aws.accepted().iter().all(|(_, r)| r.ends_with('\n')));
    }
}

#[test]
fn kinesis_partial_failures_retry_exactly_the_failed_records() {
    partial_failures(
        "kinesis",
        (
            "stream_arn",
            "arn:aws:kinesis:us-east-1:123456789012:stream/web",
        ),
        "ProvisionedThroughputExceededException",
    );
}

#[test]
fn firehose_partial_failures_retry_exactly_the_failed_records() {
    partial_failures(
        "firehose",
        (
            "delivery_stream_arn",
            "arn:aws:firehose:us-east-1:123456789012:deliverystream/s3",
        ),
        "ServiceUnavailableException",
    );
}

#[test]
fn cloudwatch_creates_missing_streams_splits_by_day_and_backs_off_when_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let aws = FakeAws::start();
    let hour = 3_600_000i64;
    let input = events(3000, "w", |i| {
        -((i as i64 * 7919) % (40 * hour / 1000)) * 1000
    });
    std::fs::write(dir.path().join("events.ndjson"), &input).unwrap();
    let cfg = json!({
        "log_group_arn": "arn:aws:logs:us-east-1:123456789012:log-group:web",
        "auth": creds(),
        "endpoint_url": aws.url(),
        "log_stream": "export-{account_id}",
    });
    write_config(dir.path(), "cloudwatch_logs", cfg, json!({"linger_ms": 50}));
    let puts = Arc::new(Mutex::new(0usize));
    aws.set(move |call| {
        if call.target != "Logs_20140328.PutLogEvents" {
            return AwsAnswer::Ok;
        }
        let mut n = puts.lock().unwrap();
        *n += 1;
        match *n {
            2 | 3 => AwsAnswer::Error(400, "ThrottlingException".into(), "Rate exceeded".into()),
            5 => AwsAnswer::Error(503, "ServiceUnavailableException".into(), "busy".into()),
            _ => AwsAnswer::Ok,
        }
    });
    let (ok, err) = run(dir.path(), &[], Duration::from_secs(120));
    assert!(ok, "{err}");
    assert!(aws.violations().is_empty(), "{:?}", aws.violations());
    assert!(err.contains("3000 delivered"), "{err}");
    let accepted: Vec<Value> = aws
        .accepted()
        .iter()
        .map(|(_, r)| serde_json::from_str(r).unwrap())
        .collect();
    assert_same_records(&accepted, &by_id(&input));
    // One stream per account, each created once, after a put said it was missing.
    let want: BTreeSet<String> = ACCOUNTS.iter().map(|a| format!("export-{a}")).collect();
    assert_eq!(aws.log_streams(), want);
    let calls = aws.calls();
    let creates = calls
        .iter()
        .filter(|c| c.target == "Logs_20140328.CreateLogStream")
        .count();
    assert_eq!(creates, 3);
    assert!(
        calls
            .iter()
            .all(|c| c.target != "Logs_20140328.DescribeLogStreams"),
        "no DescribeLogStreams"
    );
    // Each event was put in a call with its account's stream.
    for c in calls
        .iter()
        .filter(|c| c.target == "Logs_20140328.PutLogEvents")
    {
        let stream = c.body["logStreamName"].as_str().unwrap();
        for r in &c.records {
            let v: Value = serde_json::from_str(r).unwrap();
            assert_eq!(
                stream,
                format!("export-{}", v["account_id"].as_str().unwrap())
            );
        }
    }
}

#[test]
fn assumed_role_credentials_carry_the_external_id_are_cached_and_refreshed_before_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let aws = FakeAws::start();
    // Credentials valid for 12 s: the SDK's cache refreshes them up to 10 s
    // before expiry (less a random jitter), so within the run's 10 s.
    aws.set_sts_lifetime(Duration::from_secs(12));
    let cfg = json!({
        "stream_arn": "arn:aws:kinesis:us-east-1:123456789012:stream/web",
        "auth": role(),
        "external_id": "ac_owner",
        "endpoint_url": aws.url(),
    });
    write_config(dir.path(), "kinesis", cfg, json!({"linger_ms": 20}));
    let env = aws_env("http://127.0.0.1:9");
    let mut child = KillOnDrop(
        cmd(dir.path())
            .args(["run", "--config", "c.toml", "--input", "-"])
            .envs(env_refs(&env))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Events for 10 seconds, in bursts.
    let mut stdin = child.0.stdin.take().unwrap();
    let mut published = String::new();
    for burst in 0..10 {
        let chunk = events(100, &format!("r{burst}_"), |_| 0);
        stdin.write_all(chunk.as_bytes()).unwrap();
        stdin.flush().unwrap();
        published.push_str(&chunk);
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(stdin);
    let (ok, err) = sluice_testkit::wait_exit(&mut child, Duration::from_secs(60), || {});
    assert!(ok, "{err}");
    assert!(aws.violations().is_empty(), "{:?}", aws.violations());
    let calls = aws.calls();
    let sts: Vec<_> = calls
        .iter()
        .filter(|c| c.target == "STS.AssumeRole")
        .collect();
    assert_eq!(
        sts[0].body["RoleArn"],
        "arn:aws:iam::123456789012:role/sluice-export"
    );
    assert_eq!(sts[0].body["ExternalId"], "ac_owner");
    assert_eq!(sts[0].body["RoleSessionName"], "sluice-ed_aws");
    assert_eq!(
        sts[0].access_key, "AKIDENV",
        "the base credentials come from the environment"
    );
    // Cached (not one AssumeRole per put), refreshed (more than one over 10 s).
    let puts = calls
        .iter()
        .filter(|c| c.target == "Kinesis_20131202.PutRecords")
        .count();
    assert!(puts >= 8, "{puts} puts");
    assert!(
        (2..=5).contains(&sts.len()),
        "{} AssumeRole calls for {puts} puts",
        sts.len()
    );
    // Every put was signed with assumed-role credentials that had not expired
    // (the fake refuses anything else, see violations above).
    assert!(
        calls
            .iter()
            .filter(|c| c.target.starts_with("Kinesis"))
            .all(|c| c.access_key.starts_with("ASIAFAKE"))
    );
    let accepted: Vec<Value> = aws
        .accepted()
        .iter()
        .map(|(_, r)| serde_json::from_str(r).unwrap())
        .collect();
    assert_same_records(&accepted, &by_id(&published));
}

#[test]
fn the_api_sends_a_test_event_on_create_when_asked_and_refuses_a_destination_that_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    let aws = FakeAws::start();
    let env = aws_env(&aws.url());
    let s = sluice_testkit::Server::start_with_env(&dir.path().join("data"), &[], &env_refs(&env));
    let create = |body: Value| s.api_post("/event_destinations", &body);
    let target = json!({"kinesis": {
        "auth": {"role": {"role_arn": "arn:aws:iam::123456789012:role/sluice"}},
        "stream_arn": "arn:aws:kinesis:us-east-1:123456789012:stream/web"}});
    let (status, v) = create(json!({"target": target, "verify_with_test_event": true}));
    assert_eq!(status, 201, "{v}");
    let calls = aws.calls();
    let sts = calls
        .iter()
        .find(|c| c.target == "STS.AssumeRole")
        .expect("AssumeRole");
    assert_eq!(
        sts.body["ExternalId"],
        s.account.as_str(),
        "the account is the external id"
    );
    let put = calls
        .iter()
        .find(|c| c.target == "Kinesis_20131202.PutRecord")
        .expect("a test record");
    let rec: Value = serde_json::from_str(&put.records[0]).unwrap();
    assert_eq!(rec["event_type"], "test");
    assert_eq!(rec["destination_id"], v["id"]);

    aws.set(|c| {
        if c.target == "Kinesis_20131202.PutRecord" {
            AwsAnswer::Error(
                400,
                "AccessDeniedException".into(),
                "not allowed to put".into(),
            )
        } else {
            AwsAnswer::Ok
        }
    });
    let (status, v) = create(json!({"target": target, "verify_with_test_event": true}));
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error_code"], "ERR_NGROK_5140", "{v}");
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.contains("AccessDeniedException") && msg.contains("not allowed to put"),
        "{msg}"
    );
    // A role that cannot be assumed: AWS's answer, readable.
    let denied = json!({"kinesis": {
        "auth": {"role": {"role_arn": "arn:aws:iam::123456789012:role/denied"}},
        "stream_arn": "arn:aws:kinesis:us-east-1:123456789012:stream/web"}});
    let (status, v) = create(json!({"target": denied, "verify_with_test_event": true}));
    assert_eq!(status, 400, "{v}");
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.contains("AccessDenied") && msg.contains("sts:AssumeRole"),
        "{msg}"
    );
    assert!(
        !msg.contains("DispatchFailure {"),
        "not a debug dump: {msg}"
    );
    // Not created; without the flag nothing is sent.
    let before = aws.calls().len();
    let (status, _) = create(json!({"target": target}));
    assert_eq!(status, 201);
    assert_eq!(aws.calls().len(), before);
    let list: Value = reqwest::blocking::Client::new()
        .get(format!("{}/event_destinations", s.url))
        .header("authorization", format!("Bearer {}", s.key))
        .header("ngrok-version", "2")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(list["event_destinations"].as_array().unwrap().len(), 2);
}

#[test]
fn the_aws_plugins_pass_the_conformance_kit_against_the_fake() {
    let dir = tempfile::tempdir().unwrap();
    let aws = FakeAws::start();
    for (name, arn_key, arn) in [
        (
            "kinesis",
            "stream_arn",
            "arn:aws:kinesis:us-east-1:123456789012:stream/web",
        ),
        (
            "firehose",
            "delivery_stream_arn",
            "arn:aws:firehose:us-east-1:123456789012:deliverystream/s3",
        ),
        (
            "cloudwatch_logs",
            "log_group_arn",
            "arn:aws:logs:us-east-1:123456789012:log-group:web",
        ),
    ] {
        let cfg = json!({arn_key: arn, "auth": creds(), "endpoint_url": aws.url()}).to_string();
        sluice_testkit::assert_vendor_conformant(dir.path(), name, &cfg);
    }
    assert!(aws.violations().is_empty(), "{:?}", aws.violations());
    let services: BTreeSet<String> = aws.accepted().into_iter().map(|(s, _)| s).collect();
    assert_eq!(services.len(), 3, "{services:?}");
}
