//! Attacks by a tenant on a real `sluice serve` with two tenants, under the
//! operator's default policy (plus `file`, offered so that the victim writes
//! somewhere a test can read, and `faulty`, a stand-in for a slow endpoint).
//! Every attack is refused with its code or contained, and the other tenant's
//! API calls and events go on as before. The attacker calls from 127.0.0.2,
//! so that per-address limits do not touch the victim on 127.0.0.1.

use serde_json::{Value, json};
use sluice_testkit::{Server, event, read_ndjson, run, text, wait_for_lines};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

/// A tenant: its key, and the address it calls from.
struct Tenant {
    url: String,
    key: String,
    account: String,
    http: reqwest::blocking::Client,
}

impl Tenant {
    fn new(s: &Server, key: &str, account: &str, from: Ipv4Addr) -> Tenant {
        Tenant {
            url: s.url.clone(),
            key: key.to_string(),
            account: account.to_string(),
            http: reqwest::blocking::Client::builder()
                .local_address(IpAddr::V4(from))
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .header("authorization", format!("Bearer {}", self.key))
            .header("ngrok-version", "2");
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().expect("the server answers");
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    }

    fn create(&self, path: &str, body: Value) -> String {
        let (st, v) = self.call("POST", path, Some(body));
        assert_eq!(st, 201, "POST {path}: {v}");
        v["id"].as_str().unwrap().to_string()
    }

    /// Asserts a refusal with this status and code; returns the message.
    fn refused(&self, path: &str, body: Value, status: u16, code: &str) -> String {
        let (st, v) = self.call("POST", path, Some(body.clone()));
        assert_eq!(
            (st, v["error_code"].as_str().unwrap_or("")),
            (status, code),
            "POST {path} {body}: {v}"
        );
        v["msg"].as_str().unwrap_or("").to_string()
    }
}

const OFFERED: &str =
    "kinesis,firehose,cloudwatch_logs,datadog,azure_logs_ingestion,http,file,faulty";

fn start(dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--tenant-plugin-kinds", OFFERED];
    args.extend_from_slice(extra);
    Server::start_default_policy(&dir.join("data"), &args)
}

/// A second account with its own key, made by the operator's command.
fn second_account(s: &Server, dir: &Path) -> (String, String) {
    let account = "ac_2AttackerAccount00000000000".to_string();
    let out = run(
        dir,
        &[
            "keys",
            "create",
            "--data-dir",
            s.data_dir.to_str().unwrap(),
            "--account",
            &account,
        ],
    );
    let (o, e) = text(&out);
    assert!(out.status.success(), "{e}");
    (o.trim().to_string(), account)
}

fn ingest(s: &Server, body: String) -> (u16, Value) {
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/ingest", s.url))
        .header("authorization", format!("Bearer {}", s.ingest_token))
        .body(body)
        .send()
        .unwrap();
    let st = resp.status().as_u16();
    (st, resp.json().unwrap_or(Value::Null))
}

fn traffic(account: &str, id: &str) -> String {
    event(
        id,
        account,
        "http_request_complete.v0",
        r#"{"http":{"response":{"status_code":500}}}"#,
    )
}

#[test]
fn a_hostile_tenant_is_refused_or_contained_and_the_other_tenant_is_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(
        dir.path(),
        &[
            "--tenant-max-destinations",
            "4",
            "--tenant-writes-per-minute",
            "30",
        ],
    );
    let victim = Tenant::new(&s, &s.key, &s.account, Ipv4Addr::LOCALHOST);
    let (key, account) = second_account(&s, dir.path());
    let attacker = Tenant::new(&s, &key, &account, Ipv4Addr::new(127, 0, 0, 2));

    // The victim's pipeline: 5xx to a file in its own area.
    let vd = victim.create(
        "/event_destinations",
        json!({"target": {"plugin": {"kind": "file", "config": {"path": "5xx.ndjson"}, "delivery": {"linger_ms": 10}}}}),
    );
    let vs = victim.create(
        "/event_subscriptions",
        json!({"sources": [{"type": "http_request_complete.v0", "filter": "ev.http.response.status_code >= 500"}], "destination_ids": [vd]}),
    );
    let victim_file = s
        .data_dir
        .join("files")
        .join(&victim.account)
        .join("5xx.ndjson");

    // Paths: nowhere outside the attacker's own file area, no directories.
    let dest = |target: Value| json!({ "target": target });
    let file = |config: Value| dest(json!({"plugin": {"kind": "file", "config": config}}));
    for path in ["/tmp/x.ndjson", "../../sluice.db", "a/../../../x"] {
        attacker.refused(
            "/event_destinations",
            file(json!({"path": path})),
            400,
            "ERR_NGROK_5140",
        );
    }
    attacker.refused(
        "/event_destinations",
        file(json!({"path": "x", "max_bytes": 1})),
        400,
        "ERR_NGROK_5140",
    );
    for k in ["buffer_dir", "dead_letter_dir"] {
        let mut t = json!({"plugin": {"kind": "file", "config": {"path": "x"}, "delivery": {}}});
        t["plugin"]["delivery"][k] = json!("/tmp");
        attacker.refused("/event_destinations", dest(t), 400, "ERR_NGROK_215");
    }
    // Kinds the operator does not offer.
    let m = attacker.refused(
        "/event_destinations",
        dest(json!({"plugin": {"kind": "blackhole"}})),
        400,
        "ERR_NGROK_5140",
    );
    assert!(m.contains("not offered"), "{m}");
    // Delivery settings outside the operator's bounds.
    for (k, v) in [
        ("send_timeout_ms", 0),
        ("max_attempts", 0),
        ("buffer_max_bytes", 1024),
    ] {
        let mut t = json!({"plugin": {"kind": "file", "config": {"path": "x"}, "delivery": {}}});
        t["plugin"]["delivery"][k] = json!(v);
        let m = attacker.refused("/event_destinations", dest(t), 400, "ERR_NGROK_215");
        assert!(m.contains("outside what this server allows"), "{m}");
    }
    // The server's own network, by address and by name, and the operator's endpoints.
    for url in [
        "http://127.0.0.1:1/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:1/",
        "http://10.0.0.1/",
    ] {
        let m = attacker.refused(
            "/event_destinations",
            dest(json!({"plugin": {"kind": "http", "config": {"url": url}}})),
            400,
            "ERR_NGROK_5140",
        );
        assert!(m.contains("not a public address"), "{url}: {m}");
    }
    let (st, v) = attacker.call(
        "POST",
        "/event_destinations",
        Some(json!({"verify_with_test_event": true, "target": {"plugin": {"kind": "http", "config": {"url": format!("http://localhost:{}/", s.url.rsplit(':').next().unwrap())}}}})),
    );
    assert_eq!(st, 400, "{v}");
    assert!(
        v["msg"].as_str().unwrap().contains("no public address"),
        "{v}"
    );
    attacker.refused(
        "/event_destinations",
        dest(json!({"plugin": {"kind": "datadog", "config": {"api_key": "k", "intake_url": "http://127.0.0.1:1/"}}})),
        400,
        "ERR_NGROK_5140",
    );

    // Filters that would crash or stall the workers.
    let sub = |filter: String| json!({"sources": [{"type": "http_request_complete.v0", "filter": filter}]});
    let m = attacker.refused(
        "/event_subscriptions",
        sub(format!("{} > 0", vec!["1"; 4000].join("+"))),
        400,
        "ERR_NGROK_215",
    );
    assert!(m.contains("limit of 4096 bytes"), "{m}");
    // The same attack within the length limit: 1,500 chained terms.
    let deep = format!("{} > 0", vec!["1"; 1500].join("+"));
    let m = attacker.refused("/event_subscriptions", sub(deep), 400, "ERR_NGROK_5404");
    assert!(m.contains("nested more than 256 levels"), "{m}");
    let list = format!(
        "[{}]",
        (0..150)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let stall =
        format!("{list}.all(a, {list}.all(b, {list}.all(c, {list}.all(d, a + b + c + d >= 0))))");
    let m = attacker.refused("/event_subscriptions", sub(stall), 400, "ERR_NGROK_5404");
    assert!(m.contains("steps per event"), "{m}");
    let m = attacker.refused(
        "/event_subscriptions",
        sub("ev.conn.server_name.matches(ev.http.request.method)".into()),
        400,
        "ERR_NGROK_5404",
    );
    assert!(m.contains("constant string"), "{m}");

    // Quotas: destinations, then the write rate. The victim is not counted.
    let mut made = 0;
    loop {
        let (st, v) = attacker.call(
            "POST",
            "/event_destinations",
            Some(file(json!({"path": format!("d{made}.ndjson")}))),
        );
        if st != 201 {
            assert_eq!(
                (st, v["error_code"].as_str().unwrap()),
                (400, "ERR_NGROK_5102"),
                "{v}"
            );
            break;
        }
        made += 1;
        assert!(made <= 4, "the quota of 4 holds");
    }
    assert_eq!(made, 4);
    let mut throttled = None;
    for _ in 0..40 {
        let (st, v) = attacker.call(
            "PATCH",
            &format!("/event_destinations/{}", "ed_2Nope0000000000000000000000"),
            Some(json!({})),
        );
        if st == 429 {
            throttled = Some(v);
            break;
        }
    }
    let v = throttled.expect("the attacker's writes are rate-limited");
    assert_eq!(v["error_code"], "ERR_NGROK_226", "{v}");
    let (st, v) = victim.call(
        "PATCH",
        &format!("/event_destinations/{vd}"),
        Some(json!({"description": "still mine"})),
    );
    assert_eq!(st, 200, "the victim's writes go on: {v}");

    // Guessing keys from one address: throttled there, not elsewhere.
    let guesser = Tenant {
        key: "2Nope0000000000000000000000_secret".into(),
        ..Tenant::new(&s, "", "", Ipv4Addr::new(127, 0, 0, 2))
    };
    let mut codes = Vec::new();
    for _ in 0..40 {
        codes.push(guesser.call("GET", "/event_destinations", None).0);
    }
    assert!(
        codes.contains(&401) && codes.last() == Some(&429),
        "{codes:?}"
    );
    assert_eq!(victim.call("GET", "/event_subscriptions", None).0, 200);
    // Operator endpoints are not public.
    assert_eq!(victim.call("GET", "/metrics", None).0, 404);

    // Hostile event content mixed with the victim's events: each bad line is
    // rejected with its reason, the victim's lines flow.
    let mut body = String::new();
    for i in 0..50 {
        body.push_str(&traffic(&victim.account, &format!("ev_v{i}")));
        body.push('\n');
        body.push_str(match i % 5 {
            0 => "{not json",
            1 => "\u{0}\u{1}",
            2 => "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]",
            3 => "{\"event_type\": 42}",
            _ => "",
        });
        body.push('\n');
    }
    body.push_str(&format!(
        "{{\"event_id\":\"ev_big\",\"event_type\":\"http_request_complete.v0\",\"event_timestamp\":\"2026-11-01T00:00:00Z\",\"account_id\":\"{}\",\"object\":{{\"pad\":\"{}\"}}}}\n",
        attacker.account,
        "x".repeat(2 << 20)
    ));
    let (st, v) = ingest(&s, body);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["accepted"], 50, "{v}");
    let got = wait_for_lines(&victim_file, 50, Duration::from_secs(20));
    assert_eq!(got.len(), 50, "the victim's events are delivered");

    // A restart finds both tenants' data intact.
    s.restart();
    let victim = Tenant::new(&s, &victim.key, &victim.account, Ipv4Addr::LOCALHOST);
    let (st, v) = victim.call("GET", &format!("/event_subscriptions/{vs}"), None);
    assert_eq!(st, 200, "{v}");
    let (st, v) = victim.call("GET", &format!("/event_destinations/{vd}"), None);
    assert_eq!(
        (st, v["description"].as_str()),
        (200, Some("still mine")),
        "{v}"
    );
    let attacker = Tenant::new(&s, &key, &account, Ipv4Addr::new(127, 0, 0, 2));
    let (st, v) = attacker.call("GET", "/event_destinations", None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["event_destinations"].as_array().unwrap().len(), 4, "{v}");
    let (st, _) = ingest(&s, format!("{}\n", traffic(&victim.account, "ev_after")));
    assert_eq!(st, 200);
    assert_eq!(
        wait_for_lines(&victim_file, 51, Duration::from_secs(20)).len(),
        51
    );
}

#[test]
fn one_tenants_stuck_destination_costs_that_tenant_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &["--workers", "1"]);
    let victim = Tenant::new(&s, &s.key, &s.account, Ipv4Addr::LOCALHOST);
    let (key, account) = second_account(&s, dir.path());
    let attacker = Tenant::new(&s, &key, &account, Ipv4Addr::new(127, 0, 0, 2));
    let vd = victim.create(
        "/event_destinations",
        json!({"target": {"plugin": {"kind": "file", "config": {"path": "all.ndjson"}, "delivery": {"linger_ms": 10}}}}),
    );
    victim.create(
        "/event_subscriptions",
        json!({"sources": [{"type": "http_request_complete.v0"}], "destination_ids": [vd]}),
    );
    // The attacker's destination takes 2 s per batch, one at a time, with
    // the smallest buffer allowed and `when_full = "block"`.
    let slow = dir.path().join("slow.ndjson");
    let ad = attacker.create(
        "/event_destinations",
        json!({"target": {"plugin": {"kind": "faulty", "config": {"mode": "slow", "delay_ms": 2000, "path": slow}, "delivery": {"linger_ms": 1, "max_in_flight": 1, "buffer_max_bytes": 65536, "when_full": "block"}}}}),
    );
    attacker.create(
        "/event_subscriptions",
        json!({"sources": [{"type": "http_request_complete.v0"}], "destination_ids": [ad]}),
    );
    // The attacker floods; the victim sends in the same bodies.
    let victim_file = s
        .data_dir
        .join("files")
        .join(&victim.account)
        .join("all.ndjson");
    let started = Instant::now();
    let mut held_back = 0;
    let mut victim_sent = 0;
    for round in 0..20 {
        let mut body = String::new();
        for i in 0..500 {
            body.push_str(&traffic(&attacker.account, &format!("ev_a{round}_{i}")));
            body.push('\n');
        }
        for i in 0..50 {
            body.push_str(&traffic(&victim.account, &format!("ev_v{round}_{i}")));
            body.push('\n');
        }
        let (st, v) = ingest(&s, body);
        assert_eq!(st, 200, "the victim's lines are always taken: {v}");
        held_back += v["back_pressure"].as_u64().unwrap();
        victim_sent += 50;
        if let Some(e) = v["errors"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["reason"] == "back_pressure"))
        {
            assert_eq!(e["retryable"], true, "{e}");
        }
    }
    let got = wait_for_lines(&victim_file, victim_sent, Duration::from_secs(10));
    let took = started.elapsed();
    assert_eq!(got.len(), victim_sent, "every victim event delivered");
    assert!(held_back > 0, "the attacker's account was pushed back");
    assert!(
        took < Duration::from_secs(10),
        "the victim's events were not held up by the stuck destination: {took:?}"
    );
    // API writes of the victim are not held up either.
    let t = Instant::now();
    let (st, _) = victim.call(
        "PATCH",
        &format!("/event_destinations/{vd}"),
        Some(json!({"description": "x"})),
    );
    assert_eq!(st, 200);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    eprintln!(
        "{victim_sent} victim events delivered in {took:?}; {held_back} attacker lines held back"
    );
}

#[test]
fn a_restart_serves_every_tenant_when_one_destination_no_longer_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(dir.path(), &[]);
    let victim = Tenant::new(&s, &s.key, &s.account, Ipv4Addr::LOCALHOST);
    let (key, account) = second_account(&s, dir.path());
    let other = Tenant::new(&s, &key, &account, Ipv4Addr::new(127, 0, 0, 2));
    let vd = victim.create(
        "/event_destinations",
        json!({"target": {"plugin": {"kind": "file", "config": {"path": "v.ndjson"}, "delivery": {"linger_ms": 10}}}}),
    );
    victim.create(
        "/event_subscriptions",
        json!({"sources": [{"type": "http_request_complete.v0"}], "destination_ids": [vd]}),
    );
    // The other tenant's destination starts only while the gate exists.
    let (gate, out) = (dir.path().join("gate"), dir.path().join("other.ndjson"));
    std::fs::write(&gate, b"").unwrap();
    let od = other.create(
        "/event_destinations",
        json!({"target": {"plugin": {"kind": "faulty", "config": {"mode": "ok", "path": out, "start_gate": gate, "gate_fatal": true}, "delivery": {"linger_ms": 10}}}}),
    );
    other.create(
        "/event_subscriptions",
        json!({"sources": [{"type": "http_request_complete.v0"}], "destination_ids": [od]}),
    );
    // Restarted while that plugin refuses its configuration: the server
    // starts all the same and serves the victim.
    std::fs::remove_file(&gate).unwrap();
    s.restart();
    let victim = Tenant::new(&s, &victim.key, &victim.account, Ipv4Addr::LOCALHOST);
    assert_eq!(victim.call("GET", "/event_destinations", None).0, 200);
    let mut body = String::new();
    for i in 0..20 {
        body.push_str(&traffic(&victim.account, &format!("ev_v{i}")));
        body.push('\n');
        body.push_str(&traffic(&account, &format!("ev_o{i}")));
        body.push('\n');
    }
    let (st, v) = ingest(&s, body);
    assert_eq!((st, v["accepted"].as_u64()), (200, Some(40)), "{v}");
    let vfile = s
        .data_dir
        .join("files")
        .join(&victim.account)
        .join("v.ndjson");
    assert_eq!(
        wait_for_lines(&vfile, 20, Duration::from_secs(20)).len(),
        20
    );
    // The operator sees which destination has not started, and why.
    let health: Value = reqwest::blocking::get(format!("{}/healthz", s.metrics_url))
        .unwrap()
        .json()
        .unwrap();
    let ns = &health["not_started"][0];
    assert_eq!(ns["id"], od.as_str(), "{health}");
    assert!(
        ns["error"].as_str().unwrap().contains("start gate"),
        "{health}"
    );
    assert!(
        health["unhealthy_destinations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == od.as_str()),
        "{health}"
    );
    // Its records waited: once it can start, they are delivered.
    assert!(read_ndjson(&out).is_empty());
    std::fs::write(&gate, b"").unwrap();
    assert_eq!(wait_for_lines(&out, 20, Duration::from_secs(30)).len(), 20);
}

/// A destination whose endpoint answers 200 with an endless body: the test
/// event reads 64 KiB of it and goes on; the server's memory stays flat.
/// (The operator allows private addresses here, to reach the endpoint.)
#[test]
fn an_endless_answer_costs_64_kib_not_the_servers_memory() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), &["--tenant-allow-private-destinations"]);
    let victim = Tenant::new(&s, &s.key, &s.account, Ipv4Addr::LOCALHOST);
    let endless = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", endless.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in endless.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let _ = c.read(&mut buf);
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n");
                let chunk = vec![b'x'; 1 << 20];
                while c.write_all(&chunk).is_ok() {}
            });
        }
    });
    let rss_kib = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let pid = s.process.child.as_ref().unwrap().id();
    let before = rss_kib(pid);
    let started = Instant::now();
    let (st, v) = victim.call(
        "POST",
        "/event_destinations",
        Some(json!({"verify_with_test_event": true, "target": {"plugin": {"kind": "http", "config": {"url": url, "timeout_ms": 5000}}}})),
    );
    assert_eq!(st, 201, "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let after = rss_kib(pid);
    assert!(
        after < before + 100 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert_eq!(victim.call("GET", "/event_destinations", None).0, 200);
}
