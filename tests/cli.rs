//! The `sluice` command end to end: real process, real plugins, real files.

use sluice_testkit::*;
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

const HTTP: &str = "http_request_complete.v0";

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("sluice.toml");
    std::fs::write(&p, body).unwrap();
    p
}

const CONFIG: &str = r#"
[[destination]]
id = "ed_file1"
kind = "file"
config = { path = "out/web5xx.ndjson" }
delivery = { linger_ms = 50 }

[[subscription]]
id = "esb_web5xx"
account_id = "ac_123"
destination_ids = ["ed_file1"]

  [[subscription.source]]
  type = "http_request_complete.v0"
  filter = 'ev.http.response.status_code >= 500'
  fields = ["conn.client_ip", "http.response.status_code"]
"#;

#[test]
fn run_filters_projects_rejects_and_summarizes() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), CONFIG);
    let mut input = String::new();
    for (i, status) in [200, 503, 500, 404].iter().enumerate() {
        input.push_str(&event(
            &format!("ev_{i}"),
            "ac_123",
            HTTP,
            &format!(r#"{{"conn":{{"client_ip":"10.0.0.{i}","server_name":"x"}},"http":{{"response":{{"status_code":{status}}}}}}}"#),
        ));
        input.push('\n');
    }
    input.push_str("{not json\n\n");
    input.push_str(&event(
        "ev_other",
        "ac_999",
        HTTP,
        r#"{"http":{"response":{"status_code":500}}}"#,
    ));
    input.push('\n');
    std::fs::write(dir.path().join("in.ndjson"), &input).unwrap();
    let out = run(
        dir.path(),
        &[
            "run",
            "--config",
            "sluice.toml",
            "--input",
            "in.ndjson",
            "--rejects",
            "rejects.ndjson",
        ],
    );
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("6 events in")
            && err.contains("2 matched, 2 delivered, 1 rejected (bad_json: 1)"),
        "{err}"
    );
    assert!(err.contains("1 unrouted"), "{err}");
    let recs = read_ndjson(&dir.path().join("out/web5xx.ndjson"));
    let ids: Vec<&str> = recs
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ev_1", "ev_2"]);
    assert_eq!(
        recs[0]["object"],
        serde_json::json!({"conn":{"client_ip":"10.0.0.1"},"http":{"response":{"status_code":503}}})
    );
    let rejects = read_ndjson(&dir.path().join("rejects.ndjson"));
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0]["reason"], "bad_json");
    assert_eq!(rejects[0]["event"], "{not json");
}

/// The ack file's byte offsets cover the whole input, an oversized line's
/// newline included, and each line is written whole.
#[test]
fn ack_file_offsets_cover_the_whole_input() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), CONFIG);
    let ev = |i: usize| {
        event(
            &format!("ev_{i}"),
            "ac_123",
            HTTP,
            r#"{"http":{"response":{"status_code":500}}}"#,
        )
    };
    let mut input = format!("{}\n", ev(0));
    input.push_str(&"x".repeat((1 << 20) + 10));
    input.push('\n');
    input.push_str(&format!("{}\n", ev(1)));
    std::fs::write(dir.path().join("in.ndjson"), &input).unwrap();
    let out = run(
        dir.path(),
        &[
            "run",
            "--config",
            "sluice.toml",
            "--input",
            "in.ndjson",
            "--ack-file",
            "acks",
        ],
    );
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    let acks = std::fs::read_to_string(dir.path().join("acks")).unwrap();
    assert!(acks.ends_with('\n'), "{acks:?}");
    assert_eq!(
        acks.lines().last(),
        Some(format!("{} 3", input.len()).as_str()),
        "{acks}"
    );
}

/// `sluice run` of [`CONFIG`] in `dir`, reading stdin, with a metrics
/// listener: the process, its stdin, the rest of its stderr, and the
/// listener's address (named on its first stderr line).
fn run_on_stdin(
    dir: &std::path::Path,
) -> (
    KillOnDrop,
    std::process::ChildStdin,
    std::process::ChildStderr,
    String,
) {
    write_config(dir, CONFIG);
    let child = cmd(dir)
        .args([
            "run",
            "--config",
            "sluice.toml",
            "--input",
            "-",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stdin = child.0.stdin.take().unwrap();
    let mut stderr = child.0.stderr.take().unwrap();
    let mut first = Vec::new();
    let mut b = [0u8; 1];
    while stderr.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        first.push(b[0]);
    }
    let first = String::from_utf8(first).unwrap();
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("{first}"))
        .to_string();
    (child, stdin, stderr, addr)
}

#[test]
fn run_reads_stdin_and_serves_metrics_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, mut stdin, mut stderr, addr) = run_on_stdin(dir.path());
    for i in 0..10 {
        writeln!(
            stdin,
            "{}",
            event(
                &format!("ev_{i}"),
                "ac_123",
                HTTP,
                r#"{"http":{"response":{"status_code":502}}}"#
            )
        )
        .unwrap();
    }
    stdin.flush().unwrap();
    // Scrape until the counters show the events (they are live, the run is not over).
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        if resp.contains("sluice_destination_delivered_total{destination=\"ed_file1\"} 10")
            || Instant::now() > deadline
        {
            break resp;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("sluice_events_in_total 10"), "{body}");
    assert!(
        body.contains("sluice_subscription_matched_total{subscription=\"esb_web5xx\"} 10"),
        "{body}"
    );
    assert!(
        body.contains("sluice_destination_delivered_total{destination=\"ed_file1\"} 10"),
        "{body}"
    );
    drop(stdin);
    let status = child.0.wait().unwrap();
    assert!(status.success());
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("10 events in"), "{rest}");
}

#[test]
fn config_errors_name_the_file_the_item_and_the_problem() {
    let cases = [
        (
            CONFIG.replace("http_request_complete.v0", "http_request_completed.v0"),
            "sluice.toml: subscription \"esb_web5xx\", source \"http_request_completed.v0\": unknown event type `http_request_completed.v0` (did you mean `http_request_complete.v0`?)",
        ),
        (
            CONFIG.replace(">= 500", ">= 500 &&"),
            "filter does not compile at 1:",
        ),
        (
            CONFIG.replace("\"conn.client_ip\"", "\"conn.clientip\""),
            "`fields`: unknown field `conn.clientip` of http_request_complete.v0 (did you mean `conn.client_ip`?)",
        ),
        (
            CONFIG.replace(
                "destination_ids = [\"ed_file1\"]",
                "destination_ids = [\"ed_nope\"]",
            ),
            "subscription \"esb_web5xx\": unknown destination \"ed_nope\"",
        ),
        (
            CONFIG.replace(
                "type = \"http_request_complete.v0\"",
                "type = \"ip_policy_created.v0\"",
            ),
            "ip_policy_created.v0 is an audit type: it may not have a filter",
        ),
        (
            CONFIG.replace("kind = \"file\"", "kind = \"fil\""),
            "destination \"ed_file1\": no plugin for destination kind `fil`",
        ),
        (
            CONFIG.replace(
                "config = { path = \"out/web5xx.ndjson\" }",
                "config = { paht = \"x\" }",
            ),
            "destination \"ed_file1\": plugin `file` refused the configuration",
        ),
    ];
    for (config, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), &config);
        std::fs::write(dir.path().join("in.ndjson"), "").unwrap();
        let out = run(
            dir.path(),
            &["run", "--config", "sluice.toml", "--input", "in.ndjson"],
        );
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("sluice.toml") && err.contains(want),
            "want {want:?} in:\n{err}"
        );
        // `sluice check` refuses what `sluice run` refuses, with the same words
        // (the plugin itself validates each destination's configuration).
        let out = run(dir.path(), &["check", "--config", "sluice.toml"]);
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(2), "check: {err}");
        assert!(
            err.contains("sluice.toml") && err.contains(want),
            "check: want {want:?} in:\n{err}"
        );
    }
}

/// A path the registry does not know and that is no likely typo compiles
/// (payloads gain fields without a new version) and `check` warns about it.
#[test]
fn check_warns_about_fields_the_registry_does_not_know() {
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &CONFIG
            .replace(
                ">= 500",
                ">= 500 && ev.http.response.upstream_region == \"eu\"",
            )
            .replace(
                "\"conn.client_ip\"",
                "\"http.request.version\", \"conn.tunnel_session\"",
            ),
    );
    let out = run(dir.path(), &["check", "--config", "sluice.toml"]);
    let (o, err) = text(&out);
    assert!(out.status.success(), "{o}\n{err}");
    assert!(
        err.contains("warning: sluice.toml: subscription \"esb_web5xx\", source \"http_request_complete.v0\": filter: `http.response.upstream_region` at 1:")
            && err.contains("is not in Sluice's registry of http_request_complete.v0"),
        "{err}"
    );
    assert!(
        err.contains("`fields`: `conn.tunnel_session` is not in Sluice's registry"),
        "{err}"
    );
    assert!(
        !err.contains("http.request.version"),
        "a field of the seeds' payload is known: {err}"
    );
}

#[test]
fn check_shows_the_parsed_filter_or_a_caret_under_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &[
            "check",
            "--filter",
            r#"ev.conn.server_name.matches(".*-prod\\.ngrok\\.dev") && ev.http.response.status_code >= 500"#,
            "--type",
            HTTP,
        ],
    );
    let (o, e) = text(&out);
    assert!(out.status.success(), "{e}");
    assert!(o.contains(r#"parsed:  (ev.conn.server_name.matches(".*-prod\\.ngrok\\.dev") && (ev.http.response.status_code >= 500))"#), "{o}");
    assert!(o.contains("runs on: the fast path"), "{o}");
    assert!(
        o.contains("reads:   ev.conn.server_name, ev.http.response.status_code"),
        "{o}"
    );

    let out = run(
        dir.path(),
        &[
            "check",
            "--filter",
            "ev.conn.server_port == 443 &&",
            "--type",
            HTTP,
        ],
    );
    let (_, e) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(e.contains("  | ev.conn.server_port == 443 &&\n  |"), "{e}");
    assert!(e.lines().any(|l| l.trim_end().ends_with('^')), "{e}");

    let out = run(
        dir.path(),
        &[
            "check",
            "--filter",
            "ev.conn.server_nme == 'x'",
            "--type",
            HTTP,
        ],
    );
    let (_, e) = text(&out);
    assert!(
        e.contains("did you mean `conn.server_name`")
            && e.contains("  | ev.conn.server_nme == 'x'\n  | ^"),
        "{e}"
    );

    let out = run(
        dir.path(),
        &[
            "check",
            "--filter",
            "ev.http.response.status_code >= 500",
            "--strict",
            "--type",
            HTTP,
        ],
    );
    assert!(text(&out).1.contains("strict_ngrok_filters"));

    let ev = event(
        "ev_1",
        "ac_1",
        HTTP,
        r#"{"http":{"response":{"status_code":503}}}"#,
    );
    let out = run(
        dir.path(),
        &[
            "check",
            "--filter",
            "ev.http.response.status_code >= 500",
            "--event",
            &ev,
        ],
    );
    let (o, _) = text(&out);
    assert!(
        o.contains("value:   Bool(true)") && o.contains("verdict: match"),
        "{o}"
    );
    let out = run(
        dir.path(),
        &[
            "check",
            "--filter",
            "ev.tls.version == '1.3'",
            "--event",
            &ev,
        ],
    );
    assert!(text(&out).0.contains("verdict: error"));
}

#[test]
fn check_config_and_list_types() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), CONFIG);
    let out = run(dir.path(), &["check", "--config", "sluice.toml"]);
    let (o, e) = text(&out);
    assert!(out.status.success(), "{e}");
    assert!(o.contains("ok: 1 destinations, 1 subscriptions, 1 sources, 1 filters (1 on the fast path, 0 in the interpreter)"), "{o}");
    let out = run(dir.path(), &["check", "--list-types"]);
    let (o, _) = text(&out);
    assert_eq!(o.lines().filter(|l| !l.starts_with(' ')).count(), 56);
    assert!(o.contains("conn.server_port") && o.contains("[ngrok filterable]"));
}

#[test]
fn gen_is_deterministic_and_demo_runs_the_whole_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let a = run(dir.path(), &["gen", "--events", "500", "--seed", "9"]);
    let b = run(dir.path(), &["gen", "--events", "500", "--seed", "9"]);
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
    assert_eq!(a.stdout.iter().filter(|c| **c == b'\n').count(), 500);

    let out = run(dir.path(), &["demo", "--events", "30000", "--quiet"]);
    let (o, e) = text(&out);
    assert!(out.status.success(), "{e}");
    assert!(
        o.contains("esb_prod_errors") && o.contains("events/s"),
        "{o}"
    );
    // The engine's own rate, from its workers' CPU time, whatever paced the run.
    let per_core = o
        .split_once(" events/s per core")
        .and_then(|(before, _)| before.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no rate per core in {o}"));
    assert!(per_core > 0.0, "{o}");
    let demo = dir.path().join("sluice-demo");
    let prod = read_ndjson(&demo.join("prod-errors.ndjson"));
    assert!(!prod.is_empty());
    for r in &prod {
        assert!(
            r["object"]["conn"]["server_name"]
                .as_str()
                .unwrap()
                .ends_with("-prod.ngrok.dev")
        );
        assert!(
            r["object"]["http"]["response"]["status_code"]
                .as_i64()
                .unwrap()
                >= 500
        );
    }
    assert!(!read_ndjson(&demo.join("audit.ndjson")).is_empty());
    // The demo leaves a configuration and sample input that `sluice run` accepts.
    let out = run(
        dir.path(),
        &[
            "run",
            "--config",
            "sluice-demo/sluice.toml",
            "--input",
            "sluice-demo/sample-events.ndjson",
        ],
    );
    assert!(out.status.success(), "{}", text(&out).1);
}

#[test]
fn plugin_list_shows_the_built_in_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["plugin", "list"]);
    let (o, _) = text(&out);
    assert!(out.status.success());
    for kind in ["file", "blackhole"] {
        assert!(o.lines().any(|l| l.starts_with(kind)), "{o}");
    }
}

#[test]
fn bench_runs_a_scenario_records_plots_and_compares() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = r#"
name = "tiny"
description = "a tiny scenario for the test"
[generator]
events = 20000
accounts = 3
size = 650
prod_share = 0.5
error_share = 0.1
[run]
repeat = 2
baseline_events = 2000
[[destination]]
id = "ed_bh"
kind = "blackhole"
delivery = { linger_ms = 5 }
[[subscriptions]]
destination_ids = ["ed_bh"]
  [[subscriptions.source]]
  type = "http_request_complete.v0"
  filter = 'ev.conn.server_name.matches(".*-prod\\.ngrok\\.dev") && ev.http.response.status_code >= 500'
"#;
    std::fs::write(dir.path().join("tiny.toml"), scenario).unwrap();
    let out = run(
        dir.path(),
        &[
            "bench",
            "tiny.toml",
            "--quiet",
            "--baseline",
            "--json",
            "a.json",
            "--plot",
            "a.svg",
            "--data-dir",
            "data",
        ],
    );
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}\n{e}");
    for want in [
        "throughput:",
        "latency ingest -> sink ack: p50",
        "CPU: ",
        "worker time by stage",
        "peak RSS",
        "allocations per event",
        "Sluice is",
    ] {
        assert!(o.contains(want), "{want} missing in:\n{o}");
    }
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("a.json")).unwrap()).unwrap();
    assert_eq!(rec["scenario"], "tiny");
    assert_eq!(rec["runs"].as_array().unwrap().len(), 2);
    let run0 = &rec["runs"][0];
    assert_eq!(run0["events"], 20000);
    assert!(run0["delivered"].as_u64().unwrap() > 0);
    assert_eq!(run0["delivered"], run0["matched"]);
    assert!(run0["latency_us"]["count"].as_u64().unwrap() == run0["delivered"].as_u64().unwrap());
    assert!(
        run0["allocs_per_event"].as_f64().is_some(),
        "the counting allocator is installed"
    );
    assert!(rec["baseline"]["ratio"].as_f64().unwrap() > 1.0);
    assert!(
        std::fs::read_to_string(dir.path().join("a.svg"))
            .unwrap()
            .contains("<polyline")
    );
    // The same scenario against itself is within the noise; a doctored record is a regression.
    let out = run(dir.path(), &["bench", "--compare", "a.json", "a.json"]);
    assert!(out.status.success(), "{}", text(&out).0);
    // Doctored copies with a known 5% spread (a debug build's two tiny runs
    // can differ by more than the drop below): 1% slower is within the
    // noise, a third of the speed is a regression.
    let mut base = rec.clone();
    base["summary"]["events_per_s"]["spread_pct"] = serde_json::json!(5.0);
    std::fs::write(dir.path().join("base.json"), base.to_string()).unwrap();
    let eps = rec["summary"]["events_per_s"]["median"].as_f64().unwrap();
    let mut close = base.clone();
    close["summary"]["events_per_s"]["median"] = serde_json::json!(eps * 0.99);
    std::fs::write(dir.path().join("c.json"), close.to_string()).unwrap();
    let out = run(dir.path(), &["bench", "--compare", "base.json", "c.json"]);
    let printed = text(&out).0;
    assert!(out.status.success(), "{printed}");
    assert!(
        printed
            .lines()
            .any(|l| l.contains("events/s") && l.contains("-1.0%") && l.contains("within noise")),
        "{printed}"
    );
    let mut worse = base.clone();
    worse["summary"]["events_per_s"]["median"] = serde_json::json!(eps / 3.0);
    std::fs::write(dir.path().join("b.json"), worse.to_string()).unwrap();
    let out = run(dir.path(), &["bench", "--compare", "base.json", "b.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).0.contains("REGRESSION"));
}

#[test]
fn bench_over_http_delivers_what_in_process_does_and_measures_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let body = r#"
[generator]
events = 30000
accounts = 5
size = 650
prod_share = 0.5
error_share = 0.1
[[destination]]
id = "ed_bh"
kind = "blackhole"
delivery = { linger_ms = 5 }
[[subscriptions]]
destination_ids = ["ed_bh"]
  [[subscriptions.source]]
  type = "http_request_complete.v0"
  filter = 'ev.conn.server_name.matches(".*-prod\\.ngrok\\.dev") && ev.http.response.status_code >= 500'
"#;
    std::fs::write(
        dir.path().join("local.toml"),
        format!("name = \"t\"\n[run]\nrepeat = 1\n{body}"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("http.toml"),
        format!(
            "name = \"t\"\n[run]\nrepeat = 1\nmode = \"http\"\nconnections = 3\n[api]\nsubscriptions = 300\nclients = 8\nseconds = 1\nchanges = 3\n{body}"
        ),
    )
    .unwrap();
    let mut recs = Vec::new();
    for name in ["local", "http"] {
        let out = run(
            dir.path(),
            &[
                "bench",
                &format!("{name}.toml"),
                "--quiet",
                "--json",
                &format!("{name}.json"),
                "--data-dir",
                "data",
            ],
        );
        let (o, e) = text(&out);
        assert!(out.status.success(), "{o}\n{e}");
        let rec: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        recs.push(rec);
    }
    let (local, http) = (&recs[0]["runs"][0], &recs[1]["runs"][0]);
    assert_eq!(
        http["events"], 30000,
        "every event went through HTTP ingest"
    );
    assert!(local["delivered"].as_u64().unwrap() > 0);
    assert_eq!(http["matched"], local["matched"]);
    assert_eq!(http["delivered"], local["delivered"]);
    assert!(
        http["latency_us"]["p99"].as_u64().unwrap() > 0,
        "latency scraped from /metrics"
    );
    assert!(recs[1]["mode"].as_str().unwrap().starts_with("http"));
    let api = &recs[1]["api"];
    assert!(api["get"]["count"].as_u64().unwrap() > 0, "{api}");
    assert!(api["list"]["count"].as_u64().unwrap() > 0, "{api}");
    assert_eq!(api["change"]["count"], 3);
    assert!(api["change_to_first_record_ms"].as_f64().unwrap() > 0.0);
}

/// Logs: plain text without colour codes when stderr is not a terminal, one
/// JSON object per line with `--log-format json`; `RUST_LOG` is honoured.
#[test]
fn logs_are_plain_or_json_and_follow_rust_log() {
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &CONFIG.replace("\"conn.client_ip\"", "\"conn.tunnel_session\""),
    );
    std::fs::write(dir.path().join("in.ndjson"), "").unwrap();
    let args = ["run", "--config", "sluice.toml", "--input", "in.ndjson"];
    let out = run(dir.path(), &args);
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("`fields`: `conn.tunnel_session` is not in"))
        .unwrap_or_else(|| panic!("the warning is logged: {err}"));
    assert!(
        line.contains("WARN") && !line.contains('\u{1b}'),
        "{line:?}"
    );
    let json_args = [
        "--log-format",
        "json",
        "run",
        "--config",
        "sluice.toml",
        "--input",
        "in.ndjson",
    ];
    let out = run(dir.path(), &json_args);
    let (_, err) = text(&out);
    let v: serde_json::Value = err
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("a JSON log line: {err}"));
    assert_eq!(v["level"], "WARN", "{v}");
    assert!(
        v["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("conn.tunnel_session"),
        "{v}"
    );
    // RUST_LOG=error hides the warning (SLUICE_LOG, when set, wins).
    let out = cmd(dir.path())
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(!err.contains("conn.tunnel_session"), "{err}");
}

#[test]
fn sluice_tap_follows_a_running_sluice_run() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, mut stdin, _stderr, addr) = run_on_stdin(dir.path());
    let mut tap = cmd(dir.path())
        .args([
            "tap",
            "--server",
            &format!("http://{addr}"),
            "--subscription",
            "esb_web5xx",
            "--limit",
            "3",
        ])
        .env_remove("SLUICE_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Events until the tap has printed three records (5xx: the filter
    // keeps them; 200: it does not).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    while tap.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "sluice tap printed no 3 records");
        for (n, status) in [(0, 200), (1, 503)] {
            writeln!(
                stdin,
                "{}",
                event(
                    &format!("ev_{i}_{n}"),
                    "ac_123",
                    HTTP,
                    &format!(r#"{{"http":{{"response":{{"status_code":{status}}}}}}}"#)
                )
            )
            .unwrap();
        }
        stdin.flush().unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = tap.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3);
    for r in &records {
        // The subscription's projection, and only what its filter keeps.
        assert_eq!(r["object"]["http"]["response"]["status_code"], 503, "{r}");
        assert!(r["event_id"].as_str().unwrap().ends_with("_1"), "{r}");
    }
    drop(stdin);
}
