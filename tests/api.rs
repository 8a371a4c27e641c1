//! `sluice serve` over HTTP: the ngrok API v2 for event destinations,
//! subscriptions and sources; HTTP ingest; persistence; isolation; audit
//! events; and the official Python and JavaScript clients, unchanged. (The
//! table of protocol and validation errors runs in process:
//! `server/tests/api_errors.rs`.)

use serde_json::{Value, json};
use sluice_testkit::*;
use std::path::Path;
use std::time::{Duration, Instant};

struct Api {
    http: reqwest::blocking::Client,
    url: String,
    key: String,
}

impl Api {
    fn new(s: &Server) -> Api {
        Api::with_key(s, &s.key)
    }

    fn with_key(s: &Server, key: &str) -> Api {
        Api {
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            url: s.url.clone(),
            key: key.to_string(),
        }
    }

    fn full(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.url)
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self
            .http
            .request(m, self.full(path))
            .header("authorization", format!("Bearer {}", self.key))
            .header("ngrok-version", "2");
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
        };
        (status, v)
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
        let (s, v) = self.call(method, path, body);
        assert_eq!(s, want, "{method} {path}: {v}");
        v
    }
}

fn code(v: &Value) -> &str {
    v["error_code"].as_str().unwrap_or("")
}

fn kinesis() -> Value {
    json!({"kinesis":{"auth":{"role":{"role_arn":"arn:aws:iam::123456789012:role/example"}},"stream_arn":"arn:aws:kinesis:us-east-2:123456789012:stream/mystream"}})
}

/// A `file` destination writing `name` in the account's file area
/// (`<data-dir>/files/<account>/`, where [`file_area`] finds it).
fn file_target(name: &str) -> Value {
    json!({"plugin":{"kind":"file","config":{"path": name},"delivery":{"linger_ms": 20}}})
}

fn file_area(s: &Server) -> std::path::PathBuf {
    s.data_dir.join("files").join(&s.account)
}

#[test]
fn destinations_have_every_key_absolute_uris_and_page_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let api = Api::new(&s);
    let d = api.ok(
        "POST",
        "/event_destinations",
        Some(json!({"description":"kinesis dev stream","format":"json","metadata":"{\"environment\":\"dev\"}","target": kinesis()})),
        201,
    );
    let id = d["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ed_") && id.len() == 30, "{id}");
    for k in [
        "created_at",
        "description",
        "format",
        "id",
        "metadata",
        "target",
        "uri",
    ] {
        assert!(d.get(k).is_some(), "missing {k}");
    }
    for k in [
        "azure_logs_ingestion",
        "cloudwatch_logs",
        "datadog",
        "firehose",
    ] {
        assert_eq!(d["target"][k], Value::Null);
    }
    assert_eq!(d["target"]["kinesis"]["auth"]["creds"], Value::Null);
    assert_eq!(d["uri"], format!("{}/event_destinations/{id}", s.url));
    assert!(d["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        api.ok("GET", &format!("/event_destinations/{id}"), None, 200),
        d
    );
    // PATCH changes only what is given; "" clears.
    let u = api.ok(
        "PATCH",
        &format!("/event_destinations/{id}"),
        Some(json!({"description":"kinesis dev stream 1 of 3"})),
        200,
    );
    assert_eq!(u["description"], "kinesis dev stream 1 of 3");
    assert_eq!(u["metadata"], d["metadata"]);
    let u = api.ok(
        "PATCH",
        &format!("/event_destinations/{id}"),
        Some(json!({"metadata":""})),
        200,
    );
    assert_eq!(u["metadata"], "");
    // Paging: 7 more, limit 3, following next_page_uri verbatim.
    let mut created = vec![id.clone()];
    for i in 0..7 {
        let v = api.ok(
            "POST",
            "/event_destinations",
            Some(json!({"description": format!("d{i}"), "format":"json", "target": kinesis()})),
            201,
        );
        created.push(v["id"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut next = format!("{}/event_destinations?limit=3", s.url);
    let mut pages = 0;
    loop {
        let page = api.ok("GET", &next, None, 200);
        assert_eq!(page["uri"], format!("{}/event_destinations", s.url));
        let items = page["event_destinations"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|d| d["id"].as_str().unwrap().to_string()));
        pages += 1;
        match &page["next_page_uri"] {
            Value::Null => break,
            Value::String(u) => {
                assert!(u.starts_with(&s.url), "absolute: {u}");
                next = u.clone();
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(pages, 3);
    created.reverse();
    assert_eq!(seen, created, "newest first, each once");
    // Filtered listing (CEL over obj), also paged.
    let (st, v) = api.call(
        "GET",
        "/event_destinations?filter=obj.description%20%3D%3D%20%22d3%22",
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["event_destinations"].as_array().unwrap().len(), 1);
    assert_eq!(v["event_destinations"][0]["description"], "d3");
    let v = api.ok(
        "GET",
        "/event_destinations?limit=2&filter=obj.description.startsWith(%22d%22)",
        None,
        200,
    );
    assert!(
        v["next_page_uri"]
            .as_str()
            .unwrap()
            .contains("filter=obj.description.startsWith%28%22d%22%29"),
        "{v}"
    );
    // Delete: 204 without a body, then 404.
    let resp = api
        .http
        .delete(format!("{}/event_destinations/{id}", s.url))
        .header("authorization", format!("Bearer {}", api.key))
        .header("ngrok-version", "2")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert!(resp.text().unwrap().is_empty());
    let (st, v) = api.call("GET", &format!("/event_destinations/{id}"), None);
    assert_eq!((st, code(&v)), (404, "ERR_NGROK_5103"));
}

#[test]
fn subscriptions_and_sources_follow_the_patch_rules() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let api = Api::new(&s);
    let d1 = api.ok(
        "POST",
        "/event_destinations",
        Some(json!({"format":"json","target": kinesis()})),
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let d2 = api.ok(
        "POST",
        "/event_destinations",
        Some(json!({"format":"json","target": kinesis()})),
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sub = api.ok(
        "POST",
        "/event_subscriptions",
        Some(json!({"description":"ip policy creations","metadata":"{\"environment\": \"staging\"}","sources":[{"type":"ip_policy_created.v0"}],"destination_ids":[d1]})),
        201,
    );
    let id = sub["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("esb_"));
    assert_eq!(
        sub["destinations"],
        json!([{"id": d1, "uri": format!("{}/event_destinations/{d1}", s.url)}])
    );
    assert_eq!(
        sub["sources"],
        json!([{"type":"ip_policy_created.v0","uri": format!("{}/event_subscriptions/{id}/sources/ip_policy_created.v0", s.url)}])
    );
    // What the Python client sends on update: "sources": [] means unchanged.
    let u = api.ok(
        "PATCH",
        &format!("/event_subscriptions/{id}"),
        Some(json!({"description":"new","sources":[]})),
        200,
    );
    assert_eq!(u["description"], "new");
    assert_eq!(u["sources"], sub["sources"]);
    let u = api.ok(
        "PATCH",
        &format!("/event_subscriptions/{id}"),
        Some(json!({"destination_ids": null, "sources": null})),
        200,
    );
    assert_eq!(u["destinations"], sub["destinations"]);
    // A non-empty list replaces.
    let u = api.ok("PATCH", &format!("/event_subscriptions/{id}"), Some(json!({"destination_ids":[d2, d1], "sources":[{"type":"http_request_complete.v0","filter":"ev.conn.server_port == 443","fields":["conn.client_ip"]}]})), 200);
    assert_eq!(u["destinations"][0]["id"], d2.as_str());
    assert_eq!(
        u["sources"],
        json!([{"type":"http_request_complete.v0","filter":"ev.conn.server_port == 443","fields":["conn.client_ip"],"uri": format!("{}/event_subscriptions/{id}/sources/http_request_complete.v0", s.url)}])
    );
    // Sources sub-resource.
    let base = format!("/event_subscriptions/{id}/sources");
    let src = api.ok(
        "POST",
        &base,
        Some(json!({"type":"ip_policy_updated.v0"})),
        201,
    );
    assert_eq!(
        src,
        json!({"type":"ip_policy_updated.v0","uri": format!("{}{base}/ip_policy_updated.v0", s.url)})
    );
    let list = api.ok("GET", &base, None, 200);
    assert_eq!(list["uri"], format!("{}{base}", s.url));
    assert_eq!(list["sources"].as_array().unwrap().len(), 2);
    assert!(list.get("next_page_uri").is_none());
    assert_eq!(
        api.ok("GET", &format!("{base}/ip_policy_updated.v0"), None, 200),
        src
    );
    // PATCH with no body and no content type (the Python client), and with {} (Go).
    let resp = api
        .http
        .patch(format!("{}{base}/ip_policy_updated.v0", s.url))
        .header("authorization", format!("Bearer {}", api.key))
        .header("ngrok-version", "2")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    api.ok(
        "PATCH",
        &format!("{base}/ip_policy_updated.v0"),
        Some(json!({})),
        200,
    );
    let f = api.ok(
        "PATCH",
        &format!("{base}/http_request_complete.v0"),
        Some(json!({"filter":"ev.conn.server_port == 80"})),
        200,
    );
    assert_eq!(f["filter"], "ev.conn.server_port == 80");
    assert_eq!(f["fields"], json!(["conn.client_ip"]), "fields kept");
    api.ok("DELETE", &format!("{base}/ip_policy_updated.v0"), None, 204);
    let (st, v) = api.call("GET", &format!("{base}/ip_policy_updated.v0"), None);
    assert_eq!((st, code(&v)), (404, "ERR_NGROK_5125"));
    // Lists, get, delete.
    let l = api.ok("GET", "/event_subscriptions", None, 200);
    assert_eq!(l["event_subscriptions"].as_array().unwrap().len(), 1);
    assert_eq!(l["next_page_uri"], Value::Null);
    api.ok("DELETE", &format!("/event_subscriptions/{id}"), None, 204);
    let (st, v) = api.call("GET", &format!("/event_subscriptions/{id}"), None);
    assert_eq!((st, code(&v)), (404, "ERR_NGROK_5123"));
}

/// Concurrent PATCHes and a DELETE of one destination: once the DELETE has
/// answered, the destination stays deleted (a PATCH computed before it never
/// brings it back), and every PATCH answers 200, 404 or 409.
#[test]
fn a_concurrent_patch_never_brings_a_deleted_destination_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let api = Api::new(&s);
    for round in 0..15 {
        let id = api.ok(
            "POST",
            "/event_destinations",
            Some(json!({"target": kinesis()})),
            201,
        )["id"]
            .as_str()
            .unwrap()
            .to_string();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            for t in 0..3 {
                let (api, id, stop) = (&api, &id, &stop);
                scope.spawn(move || {
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 200 {
                        let (st, v) = api.call(
                            "PATCH",
                            &format!("/event_destinations/{id}"),
                            Some(json!({"description": format!("t{t} n{n}")})),
                        );
                        assert!([200, 404, 409].contains(&st), "round {round}: {st} {v}");
                        n += 1;
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(30));
            api.ok("DELETE", &format!("/event_destinations/{id}"), None, 204);
            // PATCHes in flight finish; none may undo the delete.
            std::thread::sleep(Duration::from_millis(100));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let (st, v) = api.call("GET", &format!("/event_destinations/{id}"), None);
        assert_eq!(
            st, 404,
            "round {round}: a deleted destination came back: {v}"
        );
    }
}

#[test]
fn secrets_are_write_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let api = Api::new(&s);
    let secrets = [
        "AWS-SECRET-0123",
        "DD-KEY-4567",
        "AZ-SECRET-89AB",
        "PLUGIN-TOKEN-CDEF",
        "HEADER-KEY-F00D",
        "HEADER-DD-BEEF",
    ];
    let targets = [
        json!({"firehose":{"auth":{"creds":{"aws_access_key_id":"AKIA1","aws_secret_access_key": secrets[0]}},"delivery_stream_arn":"arn:aws:firehose:us-east-1:123456789012:deliverystream/s"}}),
        json!({"datadog":{"api_key": secrets[1],"ddsite":"datadoghq.eu","service":"svc","ddtags":"env:prod"}}),
        json!({"azure_logs_ingestion":{"tenant_id":"t","client_id":"c","client_secret": secrets[2],"logs_ingestion_uri":"https://x.ingest.monitor.azure.com","data_collection_rule_id":"dcr-0123456789","data_collection_stream_name":"Custom-X_CL"}}),
        json!({"plugin":{"kind":"http","config":{"url":"http://127.0.0.1:9/ingest","headers":{"Authorization": format!("Bearer {}", secrets[3]), "X-Api-Key": secrets[4], "DD-API-KEY": secrets[5], "X-Team": "net"}}}}),
    ];
    let mut ids = vec![];
    for t in &targets {
        let v = api.ok(
            "POST",
            "/event_destinations",
            Some(json!({"target": t})),
            201,
        );
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let all = api.ok("GET", "/event_destinations", None, 200).to_string();
    for sec in &secrets {
        assert!(!all.contains(sec), "{sec} leaked in {all}");
    }
    let v = api.ok("GET", &format!("/event_destinations/{}", ids[0]), None, 200);
    assert_eq!(
        v["target"]["firehose"]["auth"]["creds"]["aws_access_key_id"],
        "AKIA1"
    );
    assert_eq!(
        v["target"]["firehose"]["auth"]["creds"]["aws_secret_access_key"],
        ""
    );
    let v_dd = api.ok("GET", &format!("/event_destinations/{}", ids[1]), None, 200);
    assert_eq!(
        v_dd["target"]["datadog"],
        json!({"api_key":"","ddsite":"datadoghq.eu","ddtags":"env:prod","service":"svc"})
    );
    let v = api.ok("GET", &format!("/event_destinations/{}", ids[3]), None, 200);
    assert_eq!(
        v["target"]["plugin"]["config"]["headers"],
        json!({"Authorization": "", "X-Api-Key": "", "DD-API-KEY": "", "X-Team": "net"})
    );
    // Sending the redacted read back keeps the secret (a PATCH of the
    // description): the stored destination still holds it.
    api.ok(
        "PATCH",
        &format!("/event_destinations/{}", ids[1]),
        Some(json!({"description":"x","target": v_dd["target"]})),
        200,
    );
    let db = rusqlite::Connection::open_with_flags(
        dir.path().join("data/sluice.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let stored: String = db
        .query_row(
            "SELECT body FROM destinations WHERE id = ?1",
            [&ids[1]],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        stored.contains(secrets[1]) && stored.contains("\"description\":\"x\""),
        "{stored}"
    );
    // Nothing in the server's output either.
    let printed = s.stdout.lock().unwrap().clone();
    for sec in &secrets {
        assert!(!printed.contains(sec));
    }
}

#[test]
fn changes_persist_keys_are_per_account_and_accounts_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start(&data, &[]);
    let api = Api::new(&s);
    let d = api.ok(
        "POST",
        "/event_destinations",
        Some(json!({"description":"mine","target": kinesis()})),
        201,
    );
    let did = d["id"].as_str().unwrap().to_string();
    let sub = api.ok("POST", "/event_subscriptions", Some(json!({"sources":[{"type":"http_request_complete.v0","filter":"ev.conn.server_port == 443"}],"destination_ids":[did]})), 201);
    let sid = sub["id"].as_str().unwrap().to_string();
    // A second account, keyed while the server runs.
    let other_account = "ac_0ERYUfBkgnKZCUQtnIXuUvfafS6";
    let out = run(
        dir.path(),
        &[
            "keys",
            "create",
            "--data-dir",
            data.to_str().unwrap(),
            "--account",
            other_account,
        ],
    );
    assert!(out.status.success(), "{}", text(&out).1);
    let other_key = text(&out).0.trim().to_string();
    assert_eq!(other_key.lines().count(), 1, "the key alone on stdout");
    let other = Api::with_key(&s, &other_key);
    assert_eq!(
        other.ok("GET", "/event_destinations", None, 200)["event_destinations"],
        json!([])
    );
    assert_eq!(
        other.ok("GET", "/event_subscriptions", None, 200)["event_subscriptions"],
        json!([])
    );
    for (m, p, body) in [
        ("GET", format!("/event_destinations/{did}"), None),
        (
            "PATCH",
            format!("/event_destinations/{did}"),
            Some(json!({"description":"stolen"})),
        ),
        ("DELETE", format!("/event_destinations/{did}"), None),
        ("GET", format!("/event_subscriptions/{sid}"), None),
        ("DELETE", format!("/event_subscriptions/{sid}"), None),
        ("GET", format!("/event_subscriptions/{sid}/sources"), None),
    ] {
        let (st, v) = other.call(m, &p, body);
        assert_eq!(st, 404, "{m} {p}: {v}");
    }
    let (st, v) = other.call(
        "POST",
        "/event_subscriptions",
        Some(json!({"destination_ids":[did]})),
    );
    assert_eq!(
        (st, code(&v)),
        (404, "ERR_NGROK_5103"),
        "cannot point at another account's destination"
    );
    // Restart: everything is still there, both keys work.
    let printed_before = s.stdout.lock().unwrap().len();
    s.restart();
    let api = Api::new(&s);
    assert_eq!(
        api.ok("GET", &format!("/event_destinations/{did}"), None, 200)["description"],
        "mine"
    );
    assert_eq!(
        api.ok("GET", &format!("/event_subscriptions/{sid}"), None, 200),
        {
            let mut v = sub.clone();
            v["uri"] = json!(format!("{}/event_subscriptions/{sid}", s.url));
            v["destinations"][0]["uri"] = json!(format!("{}/event_destinations/{did}", s.url));
            v["sources"][0]["uri"] = json!(format!(
                "{}/event_subscriptions/{sid}/sources/http_request_complete.v0",
                s.url
            ));
            v
        }
    );
    let other = Api::with_key(&s, &other_key);
    other.ok("GET", "/event_destinations", None, 200);
    assert!(
        !s.stdout.lock().unwrap()[printed_before..].contains("first start: created account"),
        "no new account on restart"
    );
}

fn wait_for_lines(path: &Path, n: usize) -> Vec<Value> {
    sluice_testkit::wait_for_lines(path, n, Duration::from_secs(20))
}

fn ingest(s: &Server, body: Vec<u8>, gzip: bool) -> (u16, Value, Option<String>) {
    let mut r = reqwest::blocking::Client::new()
        .post(format!("{}/ingest", s.url))
        .header("authorization", format!("Bearer {}", s.ingest_token))
        .header("content-type", "application/x-ndjson");
    let body = if gzip {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&body).unwrap();
        r = r.header("content-encoding", "gzip");
        e.finish().unwrap()
    } else {
        body
    };
    let resp = r.body(body).send().unwrap();
    let st = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (st, resp.json().unwrap_or(Value::Null), retry)
}

#[test]
fn changes_apply_live_emit_audit_events_and_ingest_reports_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let api = Api::new(&s);
    let (audit_out, traffic_out) = (
        file_area(&s).join("audit.ndjson"),
        file_area(&s).join("traffic.ndjson"),
    );
    let da = api.ok(
        "POST",
        "/event_destinations",
        Some(json!({"description":"audit file","target": file_target("audit.ndjson")})),
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let audit_types = [
        "event_destination_created.v0",
        "event_destination_updated.v0",
        "event_destination_deleted.v0",
        "event_subscription_created.v0",
        "event_subscription_updated.v0",
        "event_subscription_deleted.v0",
    ];
    let sources: Vec<Value> = audit_types.iter().map(|t| json!({"type": t})).collect();
    api.ok(
        "POST",
        "/event_subscriptions",
        Some(json!({"description":"audit","sources": sources, "destination_ids":[da]})),
        201,
    );
    // Now every change is exported.
    let dt = api.ok(
        "POST",
        "/event_destinations",
        Some(json!({"description":"traffic file","target": file_target("traffic.ndjson")})),
        201,
    );
    let dt_id = dt["id"].as_str().unwrap().to_string();
    let sub = api.ok(
        "POST",
        "/event_subscriptions",
        Some(json!({"sources":[{"type":"http_request_complete.v0","filter":"ev.http.response.status_code >= 500","fields":["http.response.status_code"]}],"destination_ids":[dt_id]})),
        201,
    );
    api.ok(
        "PATCH",
        &format!("/event_destinations/{dt_id}"),
        Some(json!({"metadata":"{\"team\":\"sre\"}"})),
        200,
    );
    let audits = wait_for_lines(&audit_out, 4);
    let kinds: Vec<&str> = audits
        .iter()
        .map(|a| a["event_type"].as_str().unwrap())
        .collect();
    // The audit subscription exports its own creation, then what follows.
    assert_eq!(
        kinds,
        [
            "event_subscription_created.v0",
            "event_destination_created.v0",
            "event_subscription_created.v0",
            "event_destination_updated.v0"
        ],
        "{audits:?}"
    );
    let audits = &audits[1..];
    let created = &audits[0];
    assert_eq!(
        created["object"], dt,
        "the object is the API representation"
    );
    assert_eq!(created["account_id"], s.account.as_str());
    assert!(created["event_id"].as_str().unwrap().starts_with("ev_"));
    assert!(
        created["principal"]["id"]
            .as_str()
            .unwrap()
            .starts_with("ak_")
    );
    assert_eq!(created["principal"]["source"], "API");
    assert_eq!(audits[1]["object"], sub);
    // Ingest: the new subscription is live; rejects are reported by line.
    let acct = s.account.clone();
    let mut body = String::new();
    for (i, status) in [503, 200, 500].iter().enumerate() {
        body.push_str(&event(
            &format!("ev_{i}"),
            &acct,
            "http_request_complete.v0",
            &format!(r#"{{"http":{{"response":{{"status_code":{status}}}}}}}"#),
        ));
        body.push('\n');
    }
    body.push_str("{broken\n\n");
    body.push_str(&event("ev_x", &acct, "http_request_complete.v9", "{}"));
    body.push('\n');
    let (st, v, _) = ingest(&s, body.clone().into_bytes(), false);
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            v["events"].as_u64(),
            v["accepted"].as_u64(),
            v["rejected"].as_u64()
        ),
        (Some(5), Some(3), Some(2)),
        "{v}"
    );
    assert_eq!(v["errors"][0]["line"], 4);
    assert_eq!(v["errors"][0]["reason"], "bad_json");
    assert_eq!(v["errors"][1]["line"], 6);
    assert_eq!(v["errors"][1]["reason"], "unknown_event_type");
    let (st, v, _) = ingest(&s, body.into_bytes(), true);
    assert_eq!((st, v["accepted"].as_u64()), (200, Some(3)), "gzip: {v}");
    let traffic = wait_for_lines(&traffic_out, 4);
    let ids: Vec<&str> = traffic
        .iter()
        .map(|t| t["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ev_0", "ev_2", "ev_0", "ev_2"]);
    assert_eq!(
        traffic[0]["object"],
        json!({"http":{"response":{"status_code":503}}})
    );
    // A bad ingest token.
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/ingest", s.url))
        .header("authorization", "Bearer wrong")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // Deleting the subscription stops the traffic at once.
    api.ok(
        "DELETE",
        &format!("/event_subscriptions/{}", sub["id"].as_str().unwrap()),
        None,
        204,
    );
    let (_, v, _) = ingest(
        &s,
        event(
            "ev_9",
            &acct,
            "http_request_complete.v0",
            r#"{"http":{"response":{"status_code":500}}}"#,
        )
        .into_bytes(),
        false,
    );
    assert_eq!(v["accepted"], 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        read_ndjson(&traffic_out).len(),
        4,
        "no record after the subscription was deleted"
    );
    let audits = wait_for_lines(&audit_out, 5);
    assert_eq!(
        audits.last().unwrap()["event_type"],
        "event_subscription_deleted.v0"
    );
    // Metrics and health.
    let m = reqwest::blocking::get(format!("{}/metrics", s.metrics_url))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        m.contains("sluice_events_rejected_total{reason=\"bad_json\"} 2"),
        "{m}"
    );
    let h: Value = reqwest::blocking::get(format!("{}/healthz", s.metrics_url))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(h["status"], "ok");
    assert!(h["unhealthy_destinations"].is_array(), "{h}");
    // The public listener says up or down and nothing about any tenant; its
    // metrics are the operator's only.
    let h: Value = reqwest::blocking::get(format!("{}/healthz", s.url))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(h, json!({"status": "ok"}));
    let r = reqwest::blocking::get(format!("{}/metrics", s.url)).unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

/// A gzip body of several members (what concatenating gzip files gives, and
/// what some clients send) is read whole, not up to the first member's end.
#[test]
fn ingest_reads_every_gzip_member() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let mut body = Vec::new();
    for m in 0..3 {
        let mut lines = String::new();
        for i in 0..2 {
            lines.push_str(&event(
                &format!("ev_m{m}_{i}"),
                "ac_x",
                "http_request_complete.v0",
                r#"{"http":{"response":{"status_code":200}}}"#,
            ));
            lines.push('\n');
        }
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(lines.as_bytes()).unwrap();
        body.extend(e.finish().unwrap());
    }
    let resp = reqwest::blocking::Client::new()
        .post(format!("{}/ingest", s.url))
        .header("authorization", format!("Bearer {}", s.ingest_token))
        .header("content-type", "application/x-ndjson")
        .header("content-encoding", "gzip")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().unwrap();
    assert_eq!(
        (v["events"].as_u64(), v["accepted"].as_u64()),
        (Some(6), Some(6)),
        "{v}"
    );
}

#[test]
fn ingest_pushes_back_with_429_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--workers", "1"]);
    let api = Api::new(&s);
    let out = dir.path().join("slow.ndjson");
    let target = json!({"plugin":{"kind":"faulty","config":{"mode":"slow","delay_ms":200,"path": out},"delivery":{"linger_ms":1,"max_in_flight":1,"buffer_max_bytes":4194304}}});
    let d = api.ok(
        "POST",
        "/event_destinations",
        Some(json!({"target": target})),
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.ok(
        "POST",
        "/event_subscriptions",
        Some(json!({"sources":[{"type":"http_request_complete.v0"}],"destination_ids":[d]})),
        201,
    );
    // Sixteen clients at once: the slow destination fills its budget, and
    // its account's events are refused with 429 (back-pressure aimed at the
    // account: the shared worker never blocks).
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let refused = std::sync::Arc::new(std::sync::Mutex::new(None::<(Value, Option<String>)>));
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::scope(|scope| {
        for c in 0..16 {
            let (accepted, refused, s) = (accepted.clone(), refused.clone(), &s);
            scope.spawn(move || {
                let mut n = 0;
                while refused.lock().unwrap().is_none() && Instant::now() < deadline {
                    let mut body = String::new();
                    for _ in 0..200 {
                        body.push_str(&event(
                            &format!("ev_{c}_{n}"),
                            &s.account,
                            "http_request_complete.v0",
                            r#"{"conn":{"server_port":443}}"#,
                        ));
                        body.push('\n');
                        n += 1;
                    }
                    let (st, v, retry) = ingest(s, body.into_bytes(), false);
                    match st {
                        200 => {
                            accepted.fetch_add(
                                v["accepted"].as_u64().unwrap(),
                                std::sync::atomic::Ordering::SeqCst,
                            );
                        }
                        429 => *refused.lock().unwrap() = Some((v, retry)),
                        other => panic!("{other}: {v}"),
                    }
                }
            });
        }
    });
    let accepted = accepted.load(std::sync::atomic::Ordering::SeqCst);
    let got_429 = refused.lock().unwrap().clone();
    if let Some((v, retry)) = &got_429 {
        assert_eq!(retry.as_deref(), Some("1"));
        assert_eq!(v["error_code"], "ERR_NGROK_226");
    }
    assert!(
        got_429.is_some(),
        "never pushed back after {accepted} events"
    );
    // Everything accepted is delivered in the end. (Requests in flight when
    // the buffer reached half full could overfill it; those records would be
    // dead-lettered with the reason, never lost. Here they fit.)
    let dead_file = s.data_dir.join("dead-letter").join(format!("{d}.ndjson"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let (delivered, dead) = loop {
        let delivered = sluice_testkit::read_whole_ndjson(&out).len() as u64;
        let dead = sluice_testkit::read_whole_ndjson(&dead_file);
        if delivered + dead.len() as u64 >= accepted || Instant::now() > deadline {
            break (delivered, dead);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for r in &dead {
        let why = r["reason"].as_str().unwrap_or_default();
        assert!(why.contains("not keeping up"), "{r}");
    }
    assert_eq!(
        delivered + dead.len() as u64,
        accepted,
        "{delivered} delivered"
    );
    assert_eq!(dead.len(), 0, "the back-pressure came in time");
}

#[test]
fn cors_preflight_is_answered_for_the_configured_origins_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &["--cors-origin", "https://dashboard.example"],
    );
    let preflight = |origin: &str| {
        reqwest::blocking::Client::new()
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/event_destinations", s.url),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, ngrok-version",
            )
            .send()
            .unwrap()
    };
    // Another origin gets no CORS header: its pages cannot call the API.
    let other = preflight("https://evil.example");
    for h in [
        "access-control-allow-origin",
        "access-control-allow-credentials",
    ] {
        assert!(
            !other.headers().contains_key(h),
            "{h}: {:?}",
            other.headers()
        );
    }
    let resp = preflight("https://dashboard.example");
    assert_eq!(resp.status().as_u16(), 204);
    let h = resp.headers();
    assert_eq!(
        h["access-control-allow-origin"],
        "https://dashboard.example"
    );
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, ngrok-version"
    );
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("PATCH")
    );
}

/// Runs an official client's script (`tests/<script>`) with `program`
/// against a fresh `sluice serve`, from `cwd`: it must exit 0 and print
/// "all checks passed". `installed` is what `scripts/test` installs for it.
fn official_client_passes(program: &Path, script: &str, cwd: &Path, installed: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    assert!(
        installed.exists(),
        "{} is missing: run scripts/test, which installs it",
        installed.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let out = std::process::Command::new(program)
        .arg(root.join("tests").join(script))
        .arg(&s.url)
        .arg(&s.key)
        .current_dir(cwd)
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/test installs it)", program.display()));
    let (o, e) = text(&out);
    assert!(out.status.success(), "stdout:\n{o}\nstderr:\n{e}");
    assert!(o.contains("all checks passed"), "{o}");
}

/// The official Python client (`ngrok-api` from PyPI), unchanged, against
/// `sluice serve`. `scripts/test` installs it in `.venv-ngrok`.
#[test]
fn the_official_python_client_works_unchanged() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let python = root.join(".venv-ngrok/bin/python");
    official_client_passes(&python, "python/ngrok_client.py", root, &python);
}

/// The official JavaScript client (`@ngrok/ngrok-api` 0.11.0 from npm,
/// pinned in `tests/js/package.json`), unchanged, against `sluice serve`:
/// it pages with `beforeId`. `scripts/test` installs it in
/// `tests/js/node_modules`.
#[test]
fn the_official_javascript_client_works_unchanged() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let js = root.join("tests/js");
    official_client_passes(
        Path::new("node"),
        "js/ngrok_client.js",
        &js,
        &js.join("node_modules/@ngrok/ngrok-api/package.json"),
    );
}
