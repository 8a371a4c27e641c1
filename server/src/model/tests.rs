use super::*;
use crate::error::{ApiError, Code};

#[test]
fn credential_headers_are_redacted_and_kept_on_update() {
    let cfg = json!({"url": "https://x", "headers": {
        "X-Api-Key": "k1", "DD-API-KEY": "k2", "Authorization": "Bearer t", "Cookie": "c",
        "X-Auth-Token": "t2", "Content-Type": "application/json", "X-Team": "net"}});
    let r = redact(&cfg);
    for h in [
        "X-Api-Key",
        "DD-API-KEY",
        "Authorization",
        "Cookie",
        "X-Auth-Token",
    ] {
        assert_eq!(r["headers"][h], "", "{h}");
    }
    assert_eq!(r["headers"]["Content-Type"], "application/json");
    assert_eq!(r["headers"]["X-Team"], "net");
    // Outside `headers`, names keep their own rule: a partition key is no secret.
    assert_eq!(redact(&json!({"partition_key": "p"}))["partition_key"], "p");
    let mut back = r.clone();
    restore_secrets(&mut back, &cfg);
    assert_eq!(back, cfg);
}

fn test_policy() -> TenantPolicy {
    let mut p = TenantPolicy::default();
    p.plugin_kinds.push("file".into());
    p
}

fn dest(account: &str, target: Target) -> Destination {
    Destination {
        id: "ed_1".into(),
        account_id: account.into(),
        created_at: String::new(),
        description: String::new(),
        metadata: String::new(),
        format: "json".into(),
        target,
    }
}

fn target(v: Value) -> Result<Target, ApiError> {
    parse_target(&v, None, &test_policy(), &["file".to_string()])
}

fn code(v: Value) -> Code {
    target(v).unwrap_err().code.expect("a coded error")
}

#[test]
fn aws_plugin_targets_get_the_account_as_external_id_and_no_endpoint() {
    let kinds = vec!["kinesis".to_string()];
    let parse = |c: Value| {
        parse_target(
            &json!({"plugin": {"kind": "kinesis", "config": c}}),
            None,
            &test_policy(),
            &kinds,
        )
    };
    let arn = "arn:aws:kinesis:us-east-1:1:stream/s";
    let auth = json!({"creds": {"aws_access_key_id": "a", "aws_secret_access_key": "b"}});
    for (c, code) in [
        (
            json!({"stream_arn": arn, "auth": auth, "external_id": "ac_other"}),
            Code::InvalidDestination,
        ),
        (
            json!({"stream_arn": arn, "auth": auth, "endpoint_url": "http://169.254.169.254"}),
            Code::InvalidDestination,
        ),
        (json!({"stream_arn": arn}), Code::MissingAwsAuth),
    ] {
        assert_eq!(parse(c.clone()).unwrap_err().code, Some(code), "{c}");
    }
    let t = parse(json!({"stream_arn": arn, "auth": auth, "partition_key": "event_id"})).unwrap();
    let d = dest("ac_1", t);
    let spec = d.to_spec(&test_policy(), std::path::Path::new("/data"));
    assert_eq!(spec.config["external_id"], "ac_1");
    assert_eq!(spec.config["partition_key"], "event_id");
}

#[test]
fn the_docs_example_parses_and_renders_with_every_member() {
    let t = target(json!({"kinesis":{"auth":{"role":{"role_arn":"arn:aws:iam::123456789012:role/example"}},"stream_arn":"arn:ngrok-local:kinesis:us-east-2:123456789012:stream/mystream2"}})).unwrap();
    let d = Destination {
        id: "ed_1".into(),
        account_id: "ac_1".into(),
        created_at: "2024-08-02T07:15:39Z".into(),
        description: "kinesis dev stream".into(),
        metadata: "{}".into(),
        format: "json".into(),
        target: t,
    };
    let v = d.to_json("https://x");
    assert_eq!(v["target"]["datadog"], Value::Null);
    assert_eq!(v["target"]["kinesis"]["auth"]["creds"], Value::Null);
    assert_eq!(
        v["target"]["kinesis"]["auth"]["role"]["role_arn"],
        "arn:aws:iam::123456789012:role/example"
    );
    assert_eq!(v["uri"], "https://x/event_destinations/ed_1");
    let spec = d.to_spec(&test_policy(), std::path::Path::new("/data"));
    assert_eq!(spec.kind, "kinesis");
    assert_eq!(spec.config["external_id"], d.account_id.as_str());
    assert_eq!(
        spec.config["stream_arn"],
        v["target"]["kinesis"]["stream_arn"]
    );
}

#[test]
fn each_target_mistake_has_its_code() {
    let role = json!({"role":{"role_arn":"arn:aws:iam::123456789012:role/x"}});
    let k = |arn: &str| json!({"kinesis":{"auth": role, "stream_arn": arn}});
    assert_eq!(code(json!({})), Code::NoTarget);
    assert_eq!(
        code(json!({"kinesis": null, "firehose": null})),
        Code::NoTarget
    );
    assert_eq!(
        code(json!({"kinesis":{}, "datadog":{}})),
        Code::SeveralTargets
    );
    assert_eq!(
        code(json!({"kinesis":{"stream_arn":"x"}})),
        Code::MissingAwsAuth
    );
    assert_eq!(
        code(json!({"kinesis":{"auth":{}, "stream_arn":"x"}})),
        Code::EmptyAwsAuth
    );
    assert_eq!(
        code(json!({"kinesis":{"auth":{"role":{"role_arn":"a"},"creds":{}}}})),
        Code::SeveralAuthTypes
    );
    assert_eq!(
        code(json!({"kinesis":{"auth":{"role":{"role_arn":"arn:aws:iam::123456789012:user/x"}}}})),
        Code::InvalidRoleArn
    );
    assert_eq!(code(k("nope")), Code::InvalidArn);
    assert_eq!(
        code(k("arn:azure:kinesis:us-east-1:123456789012:stream/s")),
        Code::ArnPartition
    );
    assert_eq!(
        code(k("arn:aws:dynamo:us-east-1:123456789012:stream/s")),
        Code::ArnService
    );
    assert_eq!(
        code(k(
            "arn:aws:firehose:us-east-1:123456789012:deliverystream/s"
        )),
        Code::ArnServiceMismatch
    );
    assert_eq!(
        code(k("arn:aws:kinesis:us-east-1:123456789012:table/s")),
        Code::ArnResourceTypeMismatch
    );
    assert_eq!(
        code(k("arn:aws:kinesis:mars-1:123456789012:stream/s")),
        Code::InvalidArn
    );
    assert_eq!(
        code(json!({"datadog":{"ddsite":"datadoghq.com"}})),
        Code::DatadogApiKeyMissing
    );
    assert_eq!(
        code(json!({"datadog":{"api_key":"k","ddsite":"datadoghq.org"}})),
        Code::InvalidDatadogSite
    );
    let az = json!({"tenant_id":"t","client_id":"c","client_secret":"s","logs_ingestion_uri":"https://dce.ingest.monitor.azure.com","data_collection_rule_id":"dcr-0123456789","data_collection_stream_name":"Custom-X_CL"});
    assert!(target(json!({"azure_logs_ingestion": az})).is_ok());
    let mut bad = az.clone();
    bad["data_collection_rule_id"] = json!("x");
    assert_eq!(code(json!({"azure_logs_ingestion": bad})), Code::AzureDcrId);
    let mut bad = az.clone();
    bad["data_collection_stream_name"] = json!("");
    assert_eq!(
        code(json!({"azure_logs_ingestion": bad})),
        Code::AzureStreamName
    );
    let mut bad = az.clone();
    bad["logs_ingestion_uri"] = json!("dce");
    assert_eq!(
        code(json!({"azure_logs_ingestion": bad})),
        Code::AzureIngestionUri
    );
    let mut bad = az;
    bad["client_secret"] = json!("");
    assert_eq!(
        code(json!({"azure_logs_ingestion": bad})),
        Code::AzureConfig
    );
    assert_eq!(
        code(
            json!({"kinesis":{"auth": role, "stream_arn":"arn:aws:kinesis:us-east-1:123456789012:stream/s", "extra": 1}})
        ),
        Code::UnknownField
    );
    assert_eq!(
        code(json!({"plugin":{"kind":"nope"}})),
        Code::InvalidDestination
    );
    assert!(target(json!({"plugin":{"kind":"file","config":{"path":"x"}}})).is_ok());
}

#[test]
fn secrets_are_redacted_and_kept_when_sent_back_redacted() {
    let creds = json!({"kinesis":{"auth":{"creds":{"aws_access_key_id":"AK","aws_secret_access_key":"SECRET"}},"stream_arn":"arn:aws:kinesis:us-east-1:123456789012:stream/s"}});
    let t = target(creds).unwrap();
    let d = dest("a", t.clone());
    let shown = d.to_json("http://h");
    assert!(!shown.to_string().contains("SECRET"));
    assert_eq!(
        shown["target"]["kinesis"]["auth"]["creds"]["aws_secret_access_key"],
        ""
    );
    assert!(
        d.to_spec(&test_policy(), std::path::Path::new("/data"))
            .config
            .to_string()
            .contains("SECRET"),
        "the engine gets the secret"
    );
    let again = parse_target(&shown["target"], Some(&t), &test_policy(), &[]).unwrap();
    assert_eq!(again, t);
    let p = Target::Plugin {
        kind: "x".into(),
        config: json!({"url":"u","headers":{"Authorization":"Bearer T"},"api_key":"K"}),
        delivery: None,
    };
    let d2 = Destination { target: p, ..d };
    let s = d2.to_json("h").to_string();
    assert!(!s.contains("Bearer T") && !s.contains("\"K\""), "{s}");
}

#[test]
fn file_targets_stay_in_the_account_area_and_delivery_in_its_bounds() {
    let file = |config: Value| json!({"plugin": {"kind": "file", "config": config}});
    for bad in [
        json!({"path": "/etc/x"}),
        json!({"path": "../../sluice.db"}),
        json!({"path": "x", "max_files": 0}),
        json!({"path": "x", "max_bytes": 1}),
        json!({}),
    ] {
        assert_eq!(code(file(bad.clone())), Code::InvalidDestination, "{bad}");
    }
    let t = target(file(json!({"path": "a/x.ndjson"}))).unwrap();
    let d = dest("ac_1", t);
    let spec = d.to_spec(&test_policy(), std::path::Path::new("/data"));
    assert_eq!(spec.config["path"], "/data/files/ac_1/a/x.ndjson");
    assert_eq!(spec.config["max_files"], 10);
    let e = parse_target(
        &file(json!({"path": "x"})),
        None,
        &TenantPolicy::default(),
        &["file".to_string()],
    )
    .unwrap_err();
    assert!(e.msg.contains("not offered"), "{}", e.msg);
    let slow = json!({"plugin": {"kind": "file", "config": {"path": "x"}, "delivery": {"send_timeout_ms": 0}}});
    assert_eq!(code(slow), Code::InvalidFieldValue);
}
