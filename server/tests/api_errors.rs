//! The API's protocol and validation errors, every `ERR_NGROK_*` code with
//! its status and body shape, checked in process against the router over a
//! real store and engine (`sluice_serve::testing`): what the official
//! clients see is the end-to-end suite's (`tests/api.rs`).

use serde_json::{Value, json};
use sluice_engine::plugin::PluginRegistry;
use sluice_serve::policy::TenantPolicy;
use sluice_serve::testing::{InProcess, start};

fn code(v: &Value) -> &str {
    v["error_code"].as_str().unwrap_or("")
}

fn kinesis() -> Value {
    json!({"kinesis":{"auth":{"role":{"role_arn":"arn:aws:iam::123456789012:role/example"}},"stream_arn":"arn:aws:kinesis:us-east-2:123456789012:stream/mystream"}})
}

fn is_error_body(v: &Value, status: u16) {
    assert_eq!(v["status_code"], status, "{v}");
    assert!(v["msg"].is_string(), "{v}");
    assert!(
        v["details"]["operation_id"]
            .as_str()
            .unwrap()
            .starts_with("op_"),
        "{v}"
    );
}

/// A call that must answer `want`; its body.
async fn ok(s: &InProcess, method: &str, path: &str, body: Option<&Value>, want: u16) -> Value {
    let (st, v) = s.api(method, path, body).await;
    assert_eq!(st, want, "{method} {path}: {v}");
    v
}

/// The plugins `cargo build --workspace` leaves in the target directory.
fn plugins() -> PluginRegistry {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.to_path_buf()))
        .expect("the test runs from target/<profile>/deps");
    let reg = PluginRegistry::discover(std::slice::from_ref(&dir));
    assert!(
        reg.kinds().iter().any(|k| k == "blackhole"),
        "no blackhole plugin in {}: build the workspace first (scripts/test does)",
        dir.display()
    );
    reg
}

#[test]
fn every_protocol_and_validation_error_has_its_code() {
    let dir = tempfile::tempdir().unwrap();
    // Filters long enough to test the depth limit (the length limit is the
    // adversarial suite's); the kinds of the end-to-end suite's operator.
    let s = start(
        dir.path(),
        TenantPolicy {
            max_filter_bytes: 100_000,
            plugin_kinds: [
                "kinesis",
                "firehose",
                "cloudwatch_logs",
                "datadog",
                "azure_logs_ingestion",
                "http",
                "blackhole",
            ]
            .map(String::from)
            .to_vec(),
            ..TenantPolicy::default()
        },
        plugins(),
    );
    // The server is dropped after the runtime: the engine stops its own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(calls(&s));
}

async fn calls(s: &InProcess) {
    let auth = format!("Bearer {}", s.key);
    let good = [("authorization", auth.as_str()), ("ngrok-version", "2")];
    let cases: Vec<(u16, &str, (u16, Value))> = vec![
        (401, "ERR_NGROK_200", s.call("GET", "/event_destinations", &[("ngrok-version", "2")], None).await),
        (401, "ERR_NGROK_201", s.call("GET", "/event_destinations", &[("authorization", "Basic abc"), ("ngrok-version", "2")], None).await),
        (401, "ERR_NGROK_202", s.call("GET", "/event_destinations", &[("authorization", "Bearer nonsense"), ("ngrok-version", "2")], None).await),
        (401, "ERR_NGROK_203", s.call("GET", "/event_destinations", &[("authorization", format!("Bearer {}x", s.key).as_str()), ("ngrok-version", "2")], None).await),
        (401, "ERR_NGROK_208", s.call("GET", "/event_destinations", &[("authorization", "Bearer ak_0ERYUfBkgnKZCUQtnIXuUvfafS6"), ("ngrok-version", "2")], None).await),
        (400, "ERR_NGROK_218", s.call("GET", "/event_destinations", &[("authorization", &auth)], None).await),
        (400, "ERR_NGROK_217", s.call("GET", "/event_destinations", &[("authorization", &auth), ("ngrok-version", "3")], None).await),
        (400, "ERR_NGROK_216", s.call("POST", "/event_destinations", &good, Some("{}")).await),
        (400, "ERR_NGROK_210", s.call("POST", "/event_destinations", &[good[0], good[1], ("content-type", "text/plain")], Some("{}")).await),
        (400, "ERR_NGROK_211", s.call("GET", "/event_destinations", &[good[0], good[1], ("content-type", "application/json")], Some("{\"a\":1}")).await),
        (400, "ERR_NGROK_213", s.call("POST", "/event_destinations", &[good[0], good[1], ("content-type", "application/json")], Some("{nope")).await),
        (400, "ERR_NGROK_214", s.api("POST", "/event_destinations", Some(&json!({"target": kinesis(), "colour": "red"}))).await),
        (400, "ERR_NGROK_227", s.api("GET", "/event_destinations/esb_0ERYUfBkgnKZCUQtnIXuUvfafS6", None).await),
        (400, "ERR_NGROK_223", s.api("GET", "/event_destinations/notanid", None).await),
        (404, "ERR_NGROK_5103", s.api("GET", "/event_destinations/ed_0ERYUfBkgnKZCUQtnIXuUvfafS6", None).await),
        (404, "ERR_NGROK_5103", s.api("GET", "/event_destinations/ed_doesnotexist00000000000000", None).await),
        (404, "ERR_NGROK_5123", s.api("GET", "/event_subscriptions/esb_0ERYUfBkgnKZCUQtnIXuUvfafS6", None).await),
        (400, "ERR_NGROK_5100", s.api("POST", "/event_destinations", Some(&json!({"format":"json"}))).await),
        (400, "ERR_NGROK_5100", s.api("POST", "/event_destinations", Some(&json!({"target":{}}))).await),
        (400, "ERR_NGROK_5115", s.api("POST", "/event_destinations", Some(&json!({"target":{"kinesis": kinesis()["kinesis"], "datadog":{"api_key":"k"}}}))).await),
        (400, "ERR_NGROK_5116", s.api("POST", "/event_destinations", Some(&json!({"target":{"kinesis":{"auth":{"role":{"role_arn":"arn:aws:iam::123456789012:role/x"},"creds":{"aws_access_key_id":"a","aws_secret_access_key":"b"}},"stream_arn":"arn:aws:kinesis:us-east-1:123456789012:stream/s"}}}))).await),
        (400, "ERR_NGROK_5106", s.api("POST", "/event_destinations", Some(&json!({"target":{"firehose":{"delivery_stream_arn":"arn:aws:firehose:us-east-1:123456789012:deliverystream/s"}}}))).await),
        (400, "ERR_NGROK_5104", s.api("POST", "/event_destinations", Some(&json!({"target":{"kinesis":{"auth":{"role":{"role_arn":"not-an-arn"}},"stream_arn":"arn:aws:kinesis:us-east-1:123456789012:stream/s"}}}))).await),
        (400, "ERR_NGROK_5118", s.api("POST", "/event_destinations", Some(&json!({"target":{"kinesis":{"auth": kinesis()["kinesis"]["auth"], "stream_arn":"arn:gcp:kinesis:us-east-1:123456789012:stream/s"}}}))).await),
        (400, "ERR_NGROK_5119", s.api("POST", "/event_destinations", Some(&json!({"target":{"kinesis":{"auth": kinesis()["kinesis"]["auth"], "stream_arn":"arn:aws:bigtable:us-east-1:123456789012:stream/s"}}}))).await),
        (400, "ERR_NGROK_5129", s.api("POST", "/event_destinations", Some(&json!({"target":{"cloudwatch_logs":{"auth": kinesis()["kinesis"]["auth"], "log_group_arn":"arn:aws:kinesis:us-east-1:123456789012:stream/s"}}}))).await),
        (400, "ERR_NGROK_5130", s.api("POST", "/event_destinations", Some(&json!({"target":{"firehose":{"auth": kinesis()["kinesis"]["auth"], "delivery_stream_arn":"arn:aws:firehose:us-east-1:123456789012:stream/s"}}}))).await),
        (400, "ERR_NGROK_5120", s.api("POST", "/event_destinations", Some(&json!({"target":{"kinesis":{"auth": kinesis()["kinesis"]["auth"], "stream_arn":"arn:aws:kinesis:nowhere:123456789012:stream/s"}}}))).await),
        (400, "ERR_NGROK_5133", s.api("POST", "/event_destinations", Some(&json!({"target":{"datadog":{"ddsite":"datadoghq.eu"}}}))).await),
        (400, "ERR_NGROK_5134", s.api("POST", "/event_destinations", Some(&json!({"target":{"datadog":{"api_key":"k","ddsite":"datadog.example"}}}))).await),
        (400, "ERR_NGROK_5136", s.api("POST", "/event_destinations", Some(&json!({"target":{"azure_logs_ingestion":{"tenant_id":"t","client_id":"c","client_secret":"s","logs_ingestion_uri":"https://x","data_collection_rule_id":"","data_collection_stream_name":"Custom-X"}}}))).await),
        (400, "ERR_NGROK_5137", s.api("POST", "/event_destinations", Some(&json!({"target":{"azure_logs_ingestion":{"tenant_id":"t","client_id":"c","client_secret":"s","logs_ingestion_uri":"https://x","data_collection_rule_id":"dcr-000000000000","data_collection_stream_name":""}}}))).await),
        (400, "ERR_NGROK_5138", s.api("POST", "/event_destinations", Some(&json!({"target":{"azure_logs_ingestion":{"tenant_id":"t","client_id":"c","client_secret":"s","logs_ingestion_uri":"ftp:x","data_collection_rule_id":"dcr-000000000000","data_collection_stream_name":"Custom-X"}}}))).await),
        (400, "ERR_NGROK_5139", s.api("POST", "/event_destinations", Some(&json!({"target":{"azure_logs_ingestion":{"tenant_id":"","client_id":"c","client_secret":"s","logs_ingestion_uri":"https://x","data_collection_rule_id":"dcr-000000000000","data_collection_stream_name":"Custom-X"}}}))).await),
        (400, "ERR_NGROK_235", s.api("POST", "/event_destinations", Some(&json!({"format":"xml","target": kinesis()}))).await),
        (400, "ERR_NGROK_215", s.api("POST", "/event_destinations", Some(&json!({"metadata": "m".repeat(4097), "target": kinesis()}))).await),
        (400, "ERR_NGROK_215", s.api("POST", "/event_destinations", Some(&json!({"description": "d".repeat(256), "target": kinesis()}))).await),
        (400, "ERR_NGROK_238", s.api("POST", "/event_subscriptions", Some(&json!({"sources":[{"type":"ip_policy_made.v0"}]}))).await),
        (400, "ERR_NGROK_5127", s.api("POST", "/event_subscriptions", Some(&json!({"sources":[{"type":"ip_policy_created.v0"},{"type":"ip_policy_created.v0"}]}))).await),
        (400, "ERR_NGROK_5402", s.api("POST", "/event_subscriptions", Some(&json!({"sources":[{"type":"ip_policy_created.v0","filter":"ev.id == 'x'"}]}))).await),
        (400, "ERR_NGROK_5401", s.api("POST", "/event_subscriptions", Some(&json!({"sources":[{"type":"ip_policy_created.v0","fields":["id"]}]}))).await),
        (400, "ERR_NGROK_5403", s.api("POST", "/event_subscriptions", Some(&json!({"sources":[{"type":"http_request_complete.v0","fields":["conn.server_nam"]}]}))).await),
        (400, "ERR_NGROK_5404", s.api("POST", "/event_subscriptions", Some(&json!({"sources":[{"type":"http_request_complete.v0","filter":"ev.conn.server_port =="}]}))).await),
        (404, "ERR_NGROK_5103", s.api("POST", "/event_subscriptions", Some(&json!({"destination_ids":["ed_0ERYUfBkgnKZCUQtnIXuUvfafS6"]}))).await),
        (400, "ERR_NGROK_233", s.api("GET", "/event_destinations?limit=0", None).await),
        (400, "ERR_NGROK_233", s.api("GET", "/event_destinations?limit=101", None).await),
        (400, "ERR_NGROK_231", s.api("GET", "/event_destinations?colour=red", None).await),
        (400, "ERR_NGROK_232", s.api("GET", "/event_destinations?limit=1&limit=2", None).await),
        // The JavaScript client's spelling is accepted; two spellings that disagree are not.
        (400, "ERR_NGROK_232", s.api("GET", "/event_destinations?before_id=ed_0ERYUfBkgnKZCUQtnIXuUvfafS6&beforeId=ed_1ERYUfBkgnKZCUQtnIXuUvfafS6", None).await),
        (400, "ERR_NGROK_215", s.api("GET", "/event_destinations?beforeId=ed_x", None).await),
        (400, "ERR_NGROK_250", s.api("GET", "/event_destinations?filter=obj.target%20%3D%3D%201", None).await),
    ];
    let mut failures = Vec::new();
    for (i, (want_status, want_code, (status, body))) in cases.iter().enumerate() {
        if status != want_status || code(body) != *want_code {
            failures.push(format!(
                "case {i}: want {want_status} {want_code}, got {status} {body}"
            ));
        } else {
            is_error_body(body, *status);
        }
    }
    // The filter error says where.
    let (_, v) = s.api("POST", "/event_subscriptions", Some(&json!({"sources":[{"type":"http_request_complete.v0","filter":"ev.conn.server_port == 'x' &&"}]}))).await;
    assert!(v["msg"].as_str().unwrap().contains("line 1, column"), "{v}");
    // The fields of the seeds' example payload are known, and a path far from
    // every known one is accepted (payloads gain fields without a new version;
    // the warning goes to the server's log); a near miss is a typo.
    ok(s,
        "POST",
        "/event_subscriptions",
        Some(&json!({"sources":[{"type":"http_request_complete.v0",
            "filter":"ev.http.request.version == 'HTTP/2.0' && ev.http.response.upstream_region == 'eu'",
            "fields":["http.request.first_byte_ts","http.response.last_byte_ts","conn.tunnel_session"]}]})),
        201,
    )
    .await;
    let (st, v) = s.api("POST", "/event_subscriptions", Some(&json!({"sources":[{"type":"http_request_complete.v0","filter":"ev.http.request.verison == 'x'"}]}))).await;
    assert_eq!((st, code(&v)), (400, "ERR_NGROK_5404"), "{v}");
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("did you mean `http.request.version`"),
        "{v}"
    );
    // Directories are the operator's, never a tenant's.
    for key in ["buffer_dir", "dead_letter_dir"] {
        let (st, v) = s.api(
            "POST",
            "/event_destinations",
            Some(&json!({"target":{"plugin":{"kind":"blackhole","config":{},"delivery":{key: "/tmp/elsewhere"}}}})),
        ).await;
        assert_eq!((st, code(&v)), (400, "ERR_NGROK_215"), "{key}: {v}");
        assert!(v["msg"].as_str().unwrap().contains(key), "{v}");
    }
    // `fields` is bounded: a path deep enough to build a projection tree
    // that overflows a stack when dropped (it aborted the server), and too
    // many entries, are refused.
    for fields in [
        json!([vec!["x"; 200_000].join(".")]),
        json!((0..101).map(|i| format!("f{i}")).collect::<Vec<_>>()),
    ] {
        let (st, v) = s
            .api(
                "POST",
                "/event_subscriptions",
                Some(&json!({"sources":[{"type":"http_request_complete.v0","fields": fields}]})),
            )
            .await;
        assert_eq!((st, code(&v)), (400, "ERR_NGROK_5403"), "{v}");
        assert!(
            v["msg"].as_str().unwrap().len() < 400,
            "the message quotes a bounded part: {v}"
        );
    }
    // A filter deep enough to overflow a stack is refused with its position,
    // and the server goes on answering.
    let deep = format!("{} > 0", vec!["1"; 4000].join("+"));
    let (st, v) = s
        .api(
            "POST",
            "/event_subscriptions",
            Some(&json!({"sources":[{"type":"http_request_complete.v0","filter": deep}]})),
        )
        .await;
    assert_eq!((st, code(&v)), (400, "ERR_NGROK_5404"), "{v}");
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("nested more than 256 levels"),
        "{v}"
    );
    // In-use destination, target type change.
    let d = ok(
        s,
        "POST",
        "/event_destinations",
        Some(&json!({"target": kinesis()})),
        201,
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(
        s,
        "POST",
        "/event_subscriptions",
        Some(&json!({"sources":[{"type":"ip_policy_created.v0"}],"destination_ids":[d]})),
        201,
    )
    .await;
    let (st, v) = s
        .api("DELETE", &format!("/event_destinations/{d}"), None)
        .await;
    if (st, code(&v)) != (400, "ERR_NGROK_5112") {
        failures.push(format!("in use: {st} {v}"));
    }
    let (st, v) = s
        .api(
            "PATCH",
            &format!("/event_destinations/{d}"),
            Some(&json!({"target":{"datadog":{"api_key":"k"}}})),
        )
        .await;
    if (st, code(&v)) != (400, "ERR_NGROK_5108") {
        failures.push(format!("type change: {st} {v}"));
    }
    // Unknown paths and methods still answer JSON errors.
    let (st, v) = s.api("GET", "/nope", None).await;
    assert_eq!(st, 404);
    is_error_body(&v, 404);
    let (st, v) = s.api("PUT", "/event_destinations", Some(&json!({}))).await;
    assert_eq!(st, 405);
    is_error_body(&v, 405);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
