//! The live tap against a real `sluice serve`: `GET
//! /event_subscriptions/{id}/tap` streams the records a subscription makes,
//! only to its own account, at most a few at once; a reader that does not
//! read costs the pipeline nothing (records are skipped and counted, every
//! event is still delivered); `sluice tap` prints them; a server stopping
//! ends every tap.

use serde_json::{Value, json};
use sluice_testkit::{Server, cmd, event, run, text};
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const HTTP: &str = "http_request_complete.v0";

fn tap(s: &Server, key: &str, sub: &str, rate: u32) -> reqwest::blocking::Response {
    reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap()
        .get(format!(
            "{}/event_subscriptions/{sub}/tap?rate={rate}",
            s.url
        ))
        .header("authorization", format!("Bearer {key}"))
        .header("ngrok-version", "2")
        .send()
        .expect("the tap answers")
}

/// The lines of a streamed answer, on a thread, as they come.
fn lines(r: reqwest::blocking::Response) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(serde_json::from_str(&l).expect("NDJSON")).is_err() {
                return;
            }
        }
    });
    rx
}

fn metric(s: &Server, name: &str) -> f64 {
    let m = reqwest::blocking::get(format!("{}/metrics", s.metrics_url))
        .unwrap()
        .text()
        .unwrap();
    m.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_tap_streams_a_subscriptions_records_to_its_account_and_never_slows_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("data"), &[]);
    let (st, d) = s.api_post(
        "/event_destinations",
        &json!({"target": {"plugin": {"kind": "blackhole", "config": {}}}}),
    );
    assert_eq!(st, 201, "{d}");
    let (st, sub) = s.api_post(
        "/event_subscriptions",
        &json!({"sources": [{"type": HTTP}], "destination_ids": [d["id"]]}),
    );
    assert_eq!(st, 201, "{sub}");
    let sid = sub["id"].as_str().unwrap().to_string();

    // Records as they are encoded; tenant text stays data.
    let r = tap(&s, &s.key, &sid, 1000);
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let rx = lines(r);
    std::thread::sleep(Duration::from_millis(200));
    let body: Vec<String> = (0..10)
        .map(|i| {
            event(
                &format!("ev_tap_{i}"),
                &s.account,
                HTTP,
                r#"{"http":{"request":{"user_agent":"<script>alert(1)</script>"}}}"#,
            )
        })
        .collect();
    assert_eq!(s.ingest(&body.join("\n")).0, 200);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 10 && Instant::now() < deadline {
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(200))
            && let Some(rec) = v.get("record")
        {
            seen.push(rec["event_id"].as_str().unwrap().to_string());
            assert_eq!(
                rec["object"]["http"]["request"]["user_agent"],
                "<script>alert(1)</script>"
            );
        }
    }
    seen.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("ev_tap_{i}")).collect();
    want.sort();
    assert_eq!(seen, want, "the tap shows every record at this rate");

    // Another account sees no tap of this subscription.
    let other = "ac_2TapOtherAccount00000000001";
    let out = run(
        dir.path(),
        &[
            "keys",
            "create",
            "--data-dir",
            s.data_dir.to_str().unwrap(),
            "--account",
            other,
        ],
    );
    assert!(out.status.success(), "{}", text(&out).1);
    let okey = text(&out).0.trim().to_string();
    let r = tap(&s, &okey, &sid, 10);
    assert_eq!(r.status().as_u16(), 404);

    // A reader that never reads: every event is still delivered, the tap
    // skips and counts.
    let stuck = tap(&s, &s.key, &sid, 1000);
    assert_eq!(stuck.status().as_u16(), 200);
    let before = metric(&s, "sluice_destination_delivered_total");
    let t0 = Instant::now();
    for b in 0..20 {
        let body: Vec<String> = (0..2_500)
            .map(|i| event(&format!("ev_bulk_{b}_{i}"), &s.account, HTTP, "{}"))
            .collect();
        assert_eq!(s.ingest(&body.join("\n")).0, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&s, "sluice_destination_delivered_total") < before + 50_000.0 {
        assert!(
            Instant::now() < deadline,
            "the pipeline was held up by a tap"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "50,000 events delivered in {:?} with a tap nobody reads",
        t0.elapsed()
    );
    let stuck_rx = lines(stuck);
    let skipped = (|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(v) = stuck_rx.recv_timeout(Duration::from_millis(200))
                && let Some(n) = v["tap"]["skipped"].as_u64()
                && n > 0
            {
                return n;
            }
        }
        0
    })();
    assert!(skipped > 0, "the records the reader missed are counted");

    // At most 4 taps per account (two are open).
    let mut more: Vec<_> = (0..2).map(|_| tap(&s, &s.key, &sid, 10)).collect();
    assert!(more.iter().all(|r| r.status().as_u16() == 200));
    let fifth = tap(&s, &s.key, &sid, 10);
    assert_eq!(fifth.status().as_u16(), 429);
    more.clear();
    drop(rx);

    // `sluice tap` prints records, one JSON per line.
    let mut child = cmd(dir.path())
        .args([
            "tap",
            "--server",
            &s.url,
            "--subscription",
            &sid,
            "--limit",
            "3",
        ])
        .env("SLUICE_API_KEY", &s.key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "sluice tap did not print 3 records"
        );
        let _ = s.ingest(&event(&format!("ev_cli_{i}"), &s.account, HTTP, "{}"));
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed.len(), 3);
    assert!(
        printed
            .iter()
            .all(|r| r["event_id"].as_str().unwrap().starts_with("ev_cli_"))
    );

    // A server stopping ends the taps still open.
    let open = tap(&s, &s.key, &sid, 10);
    let open_rx = lines(open);
    let status = s.stop();
    assert!(status.success(), "sluice serve exited with {status}");
    drop(open_rx);
}
