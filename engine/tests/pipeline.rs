//! The engine end to end: real plugins (built cdylibs, and C plugins compiled
//! here), real files, the real worker threads and delivery runtime.

mod common;

use common::*;
use proptest::prelude::*;
use sluice_engine::config::{
    DeliveryConfig, DestinationSpec, PipelineSpec, SourceSpec, SubscriptionSpec,
};
use sluice_engine::ingest::RejectReason;
use sluice_engine::metrics::{DestinationCounts, Metrics};
use sluice_engine::plugin::{PluginError, PluginLibrary};
use sluice_engine::{Engine, EngineConfig};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

/// The counters of destination `id` now, as values.
fn counts(m: &Metrics, id: &str) -> DestinationCounts {
    m.destination_counts(id).unwrap_or_default()
}

fn delivery() -> DeliveryConfig {
    DeliveryConfig {
        linger_ms: 10,
        max_in_flight: 1,
        max_attempts: 20,
        ..DeliveryConfig::default()
    }
}

fn file_dest(id: &str, path: &Path) -> DestinationSpec {
    DestinationSpec {
        id: id.into(),
        kind: "file".into(),
        config: serde_json::json!({ "path": path }),
        delivery: delivery(),
    }
}

fn sub(id: &str, account: &str, dests: &[&str], sources: Vec<SourceSpec>) -> SubscriptionSpec {
    SubscriptionSpec {
        id: id.into(),
        account_id: account.into(),
        destination_ids: dests.iter().map(|d| d.to_string()).collect(),
        sources,
    }
}

fn source(ty: &str, filter: Option<&str>, fields: Option<&[&str]>) -> SourceSpec {
    SourceSpec {
        event_type: ty.into(),
        filter: filter.map(str::to_string),
        fields: fields.map(|f| f.iter().map(|s| s.to_string()).collect()),
    }
}

fn engine_cfg(dir: &Path) -> EngineConfig {
    EngineConfig {
        workers: 2,
        dead_letter_dir: dir.join("dead-letter"),
        rejects_path: Some(dir.join("rejects.ndjson")),
        drain_timeout: Duration::from_secs(20),
        ..EngineConfig::default()
    }
}

const HTTP: &str = "http_request_complete.v0";

fn body_length(n: i64) -> String {
    format!(r#"{{"http":{{"response":{{"body_length":{n}}}}}}}"#)
}

#[test]
fn malformed_events_are_rejected_by_reason_and_the_pipeline_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let spec = PipelineSpec {
        destinations: vec![file_dest("ed_1", &out)],
        subscriptions: vec![sub(
            "esb_1",
            "ac_1",
            &["ed_1"],
            vec![source(HTTP, None, None)],
        )],
        ..Default::default()
    };
    let engine = Engine::start(engine_cfg(dir.path()), plugins(), &spec).unwrap();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/malformed");
    let mut expected: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut good = 0;
    let mut files: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
    {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let reason = name.split("--").next().unwrap();
        let r = RejectReason::ALL
            .iter()
            .find(|r| r.as_str() == reason)
            .unwrap_or_else(|| panic!("{name}: unknown reason"));
        let bytes = std::fs::read(path).unwrap();
        let lines = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count() as u64;
        *expected.entry(r.as_str()).or_default() += lines;
        // Each bad line is followed by a good event: nothing stops the pipeline.
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            engine.publish(line);
            good += 1;
            engine.publish(event(&format!("ev_good_{good}"), "ac_1", HTTP, "{}").as_bytes());
        }
    }
    let big = format!(r#"{{"event_id":"{}"}}"#, "x".repeat(1 << 20));
    engine.publish(big.as_bytes());
    *expected.entry("too_large").or_default() += 1;
    let m = engine.metrics().clone();
    let summary = engine.shutdown();
    for (reason, n) in &expected {
        let r = RejectReason::ALL
            .iter()
            .find(|r| r.as_str() == *reason)
            .unwrap();
        assert_eq!(m.snapshot().rejected[r], *n, "reason {reason}");
    }
    assert_eq!(summary.rejected, expected.values().sum::<u64>());
    assert_eq!(
        read_ndjson(&out).len(),
        good,
        "every good event was delivered"
    );
    let rejects = read_ndjson(&dir.path().join("rejects.ndjson"));
    assert_eq!(
        rejects.len() as u64,
        summary.rejected,
        "every reject is in the rejects file"
    );
    assert!(
        rejects
            .iter()
            .all(|r| r["reason"].is_string() && r["detail"].is_string() && r["event"].is_string())
    );
    assert!(rejects.iter().any(|r| {
        r["detail"]
            .as_str()
            .unwrap()
            .contains("missing field `account_id`")
    }));
}

#[test]
fn delivered_records_are_the_envelope_with_the_projected_object() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.ndjson"), dir.path().join("b.ndjson"));
    let spec = PipelineSpec {
        destinations: vec![file_dest("ed_a", &a), file_dest("ed_b", &b)],
        subscriptions: vec![
            sub(
                "esb_proj",
                "ac_1",
                &["ed_a", "ed_b"],
                vec![source(
                    HTTP,
                    Some("ev.http.response.status_code >= 500"),
                    Some(&["conn.client_ip", "http.response.status_code"]),
                )],
            ),
            sub(
                "esb_all",
                "ac_1",
                &["ed_b"],
                vec![source("ip_policy_created.v0", None, None)],
            ),
        ],
        ..Default::default()
    };
    let engine = Engine::start(engine_cfg(dir.path()), plugins(), &spec).unwrap();
    let obj = r#"{"conn":{"client_ip":"1.2.3.4","server_name":"x.ngrok.app"},"http":{"request":{"method":"get"},"response":{"status_code":502,"body_length":5}}}"#;
    engine.publish(event("ev_1", "ac_1", HTTP, obj).as_bytes());
    engine.publish(event("ev_2", "ac_1", HTTP, &obj.replace("502", "200")).as_bytes());
    let audit = r#"{"event_id":"ev_3","event_type":"ip_policy_created.v0","event_timestamp":"2022-02-23T23:29:29Z","account_id":"ac_1","principal":{"id":"usr_1","source":"API"},"object":{"id":"ipp_1","action":"allow"},"unknown_top_level":1}"#;
    engine.publish(audit.as_bytes());
    engine.shutdown();
    let want = r#"{"event_id":"ev_1","event_type":"http_request_complete.v0","event_timestamp":"2026-11-01T00:00:00Z","account_id":"ac_1","object":{"conn":{"client_ip":"1.2.3.4"},"http":{"response":{"status_code":502}}}}"#;
    assert_eq!(std::fs::read_to_string(&a).unwrap(), format!("{want}\n"));
    let b_text = std::fs::read_to_string(&b).unwrap();
    let mut lines: Vec<&str> = b_text.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec![
            want,
            r#"{"event_id":"ev_3","event_type":"ip_policy_created.v0","event_timestamp":"2022-02-23T23:29:29Z","account_id":"ac_1","principal":{"id":"usr_1","source":"API"},"object":{"id":"ipp_1","action":"allow"}}"#,
        ]
    );
}

#[test]
fn filter_errors_are_counted_per_subscription_and_not_matched() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.ndjson");
    let spec = PipelineSpec {
        destinations: vec![file_dest("ed_1", &out)],
        subscriptions: vec![sub(
            "esb_1",
            "ac_1",
            &["ed_1"],
            vec![source(HTTP, Some("ev.conn.server_port == 443"), None)],
        )],
        ..Default::default()
    };
    let engine = Engine::start(engine_cfg(dir.path()), plugins(), &spec).unwrap();
    engine.publish(event("ev_1", "ac_1", HTTP, r#"{"conn":{"server_port":443}}"#).as_bytes());
    engine.publish(event("ev_2", "ac_1", HTTP, r#"{"conn":{}}"#).as_bytes());
    engine.publish(event("ev_3", "ac_1", HTTP, r#"{"conn":{"server_port":80}}"#).as_bytes());
    engine.publish(event("ev_4", "ac_2", HTTP, r#"{"conn":{"server_port":443}}"#).as_bytes());
    let m = engine.metrics().clone();
    let summary = engine.shutdown();
    let subs = m.snapshot().subscriptions;
    assert_eq!(
        subs.into_iter()
            .map(|(id, c)| (id, c.evaluated, c.matched, c.filter_errors))
            .collect::<Vec<_>>(),
        vec![("esb_1".to_string(), 3, 1, 1)]
    );
    assert_eq!(
        (
            summary.matched,
            summary.filter_errors,
            summary.unrouted,
            summary.delivered
        ),
        (1, 1, 1, 1)
    );
    let text = m.render_prometheus();
    assert!(
        text.contains("sluice_subscription_filter_errors_total{subscription=\"esb_1\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sluice_destination_delivered_total{destination=\"ed_1\"} 1"),
        "{text}"
    );
}

#[test]
fn each_accounts_order_holds() {
    let dir = tempfile::tempdir().unwrap();
    let accounts: Vec<String> = (0..8).map(|i| format!("ac_{i}")).collect();
    let mut spec = PipelineSpec::default();
    for a in &accounts {
        spec.destinations.push(file_dest(
            &format!("ed_{a}"),
            &dir.path().join(format!("{a}.ndjson")),
        ));
        spec.subscriptions.push(sub(
            &format!("esb_{a}"),
            a,
            &[&format!("ed_{a}")],
            vec![source(HTTP, None, None)],
        ));
    }
    let engine = Engine::start(
        EngineConfig {
            batch_events: 7,
            ..engine_cfg(dir.path())
        },
        plugins(),
        &spec,
    )
    .unwrap();
    let mut buf = String::new();
    for i in 0..20_000 {
        let a = &accounts[(i * 7919) % accounts.len()];
        buf.push_str(&event(
            &format!("ev_{i}"),
            a,
            HTTP,
            &format!(r#"{{"n":{i}}}"#),
        ));
        buf.push('\n');
        if i % 997 == 0 {
            engine.publish_ndjson(bytes::Bytes::from(std::mem::take(&mut buf)));
        }
    }
    engine.publish_ndjson(bytes::Bytes::from(buf));
    engine.shutdown();
    let mut total = 0;
    for a in &accounts {
        let ns: Vec<i64> = read_ndjson(&dir.path().join(format!("{a}.ndjson")))
            .iter()
            .map(|v| v["object"]["n"].as_i64().unwrap())
            .collect();
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{a} out of order");
        total += ns.len();
    }
    assert_eq!(total, 20_000);
}

#[test]
fn reconfigure_under_load_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.ndjson"), dir.path().join("b.ndjson"));
    let accounts = ["ac_1", "ac_2", "ac_3", "ac_4"];
    // Both configurations deliver every event exactly once, but differ in the
    // destination's file (a new plugin instance), the filters (recompiled) and
    // an extra unrelated subscription.
    let config = |variant: usize| {
        let path = if variant.is_multiple_of(2) { &pa } else { &pb };
        let filter = if variant.is_multiple_of(2) {
            "ev.http.response.body_length >= 0"
        } else {
            "ev.http.response.body_length < 0 || ev.http.response.body_length >= 0"
        };
        let mut subs: Vec<SubscriptionSpec> = accounts
            .iter()
            .map(|a| {
                sub(
                    &format!("esb_{a}"),
                    a,
                    &["ed_out"],
                    vec![source(HTTP, Some(filter), None)],
                )
            })
            .collect();
        if variant.is_multiple_of(3) {
            subs.push(sub(
                "esb_other",
                "ac_none",
                &["ed_out"],
                vec![source(HTTP, None, None)],
            ));
        }
        PipelineSpec {
            destinations: vec![file_dest("ed_out", path)],
            subscriptions: subs,
            ..Default::default()
        }
    };
    let engine =
        std::sync::Arc::new(Engine::start(engine_cfg(dir.path()), plugins(), &config(0)).unwrap());
    const N: usize = 200_000;
    let publisher = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            let mut buf = String::with_capacity(1 << 20);
            for i in 0..N {
                buf.push_str(&event(
                    &format!("ev_{i}"),
                    accounts[i % 4],
                    HTTP,
                    &body_length(i as i64),
                ));
                buf.push('\n');
                if i % 1000 == 999 {
                    engine.publish_ndjson(bytes::Bytes::from(std::mem::take(&mut buf)));
                }
            }
            engine.publish_ndjson(bytes::Bytes::from(buf));
        })
    };
    let mut reconfigs = 0;
    while !publisher.is_finished() || reconfigs < 20 {
        reconfigs += 1;
        engine.reconfigure(&config(reconfigs)).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    publisher.join().unwrap();
    let engine = std::sync::Arc::into_inner(engine).unwrap();
    let summary = engine.shutdown();
    let mut seen: HashMap<String, u32> = HashMap::with_capacity(N);
    for v in read_ndjson(&pa).into_iter().chain(read_ndjson(&pb)) {
        *seen
            .entry(v["event_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dups.is_empty(), "duplicated: {dups:?}");
    assert_eq!(
        seen.len(),
        N,
        "lost {} events over {reconfigs} reconfigurations",
        N - seen.len()
    );
    assert_eq!(summary.delivered, N as u64);
    assert!(reconfigs >= 20);
}

#[test]
fn abi_mismatches_and_non_plugins_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let case = |name: &str| {
        PluginLibrary::load(&compile_c(name, d, &format!("libsluice_sink_{name}.so"))).unwrap_err()
    };
    let e = case("abi_v2");
    assert!(matches!(e, PluginError::AbiMismatch { .. }), "{e}");
    assert!(
        e.to_string().contains("built for sink ABI v2")
            && e.to_string().contains("supports ABI v1"),
        "{e}"
    );
    let e = case("bad_major");
    assert!(
        matches!(e, PluginError::AbiMismatch { .. })
            && e.to_string().contains("v2.3 (declared in its vtable)"),
        "{e}"
    );
    let e = case("small_vtable");
    assert!(e.to_string().contains("vtable is 16 bytes"), "{e}");
    let e = case("null_entry");
    assert!(e.to_string().contains("returned null"), "{e}");
    let e = case("no_entry");
    assert!(matches!(e, PluginError::NoEntry { .. }), "{e}");
    let e = case("missing_send");
    assert!(
        e.to_string().contains("required functions are null: send"),
        "{e}"
    );
    // An unresolved symbol is the loader's refusal, named, not an exit 127
    // when the entry function is called.
    let e = case("unresolved");
    assert!(
        matches!(e, PluginError::NotALibrary { .. })
            && e.to_string().contains("libsluice_sink_unresolved.so")
            && e.to_string().contains("sluice_test_no_such_function"),
        "{e}"
    );
    std::fs::write(d.join("libsluice_sink_text.so"), "not a library").unwrap();
    let e = PluginLibrary::load(&d.join("libsluice_sink_text.so")).unwrap_err();
    assert!(matches!(e, PluginError::NotALibrary { .. }), "{e}");
    // Discovery loads the good ones and reports the others.
    compile_c("garbage", d, "libsluice_sink_garbage.so");
    let reg = sluice_engine::plugin::PluginRegistry::discover(&[d.to_path_buf()]);
    assert_eq!(reg.kinds(), vec!["garbage".to_string()]);
    assert_eq!(reg.errors.len(), 8);
}

/// `n` accounts `ac_<i>`, each with one subscription `esb_<i>` of every
/// HTTP event to `dests`.
fn one_per_account(n: usize, dests: &[&str]) -> Vec<SubscriptionSpec> {
    (0..n)
        .map(|a| {
            sub(
                &format!("esb_{a}"),
                &format!("ac_{a}"),
                dests,
                vec![source(HTTP, None, None)],
            )
        })
        .collect()
}

/// NDJSON of one HTTP event `ev_<i>_<round>` per account `ac_<i>` of
/// [`one_per_account`], each with `object`.
fn one_event_per_account(n: usize, round: usize, object: &str) -> String {
    let mut buf = String::new();
    for a in 0..n {
        buf.push_str(&event(
            &format!("ev_{a}_{round}"),
            &format!("ac_{a}"),
            HTTP,
            object,
        ));
        buf.push('\n');
    }
    buf
}

fn faulty(id: &str, mode: &str, every: u32, out: &Path, max_attempts: u32) -> DestinationSpec {
    DestinationSpec {
        id: id.into(),
        kind: "faulty".into(),
        config: serde_json::json!({ "mode": mode, "every": every, "path": out }),
        delivery: DeliveryConfig {
            max_attempts,
            ..delivery()
        },
    }
}

fn publish_n(engine: &Engine, account: &str, n: usize) {
    let mut buf = String::new();
    for i in 0..n {
        buf.push_str(&event(
            &format!("ev_{i}"),
            account,
            HTTP,
            &format!(r#"{{"n":{i}}}"#),
        ));
        buf.push('\n');
    }
    engine.publish_ndjson(bytes::Bytes::from(buf));
}

fn unique_ids(path: &Path) -> (usize, usize) {
    let all = read_ndjson(path);
    let set: std::collections::HashSet<String> = all
        .iter()
        .map(|v| v["event_id"].as_str().unwrap().to_string())
        .collect();
    (all.len(), set.len())
}

#[test]
fn a_panicking_plugin_is_contained_and_its_records_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (fo, bo) = (
        dir.path().join("faulty.ndjson"),
        dir.path().join("fine.ndjson"),
    );
    let spec = PipelineSpec {
        destinations: vec![
            faulty("ed_panic", "panic", 2, &fo, 50),
            file_dest("ed_fine", &bo),
        ],
        subscriptions: vec![sub(
            "esb_1",
            "ac_1",
            &["ed_panic", "ed_fine"],
            vec![source(HTTP, None, None)],
        )],
        ..Default::default()
    };
    let engine = Engine::start(engine_cfg(dir.path()), plugins(), &spec).unwrap();
    for _ in 0..5 {
        publish_n(&engine, "ac_1", 400);
        engine.barrier();
    }
    let m = engine.metrics().clone();
    engine.shutdown();
    let d = counts(&m, "ed_panic");
    assert!(d.send_errors > 0, "panics were reported as failed sends");
    assert_eq!(d.dead_lettered_total(), 0);
    assert_eq!(
        unique_ids(&fo).1,
        400,
        "every record reached the panicking destination in the end"
    );
    assert_eq!(
        read_ndjson(&bo).len(),
        2000,
        "the other destination got everything"
    );
}

/// Many subscriptions of one destination, each with a small batch, one
/// slot in flight: the batches share flights (one hand-off to the blocking
/// pool, a plugin call each), and a call that panics inside a flight costs
/// only its own batch a retry.
#[test]
fn small_batches_of_many_subscriptions_share_flights_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (fo, bo) = (
        dir.path().join("faulty.ndjson"),
        dir.path().join("fine.ndjson"),
    );
    const ACCOUNTS: usize = 300;
    const PER_ACCOUNT: usize = 20;
    let spec = PipelineSpec {
        destinations: vec![
            faulty("ed_panic", "panic", 3, &fo, 50),
            file_dest("ed_fine", &bo),
        ],
        subscriptions: one_per_account(ACCOUNTS, &["ed_panic", "ed_fine"]),
        ..Default::default()
    };
    let engine = Engine::start(engine_cfg(dir.path()), plugins(), &spec).unwrap();
    let mut buf = String::new();
    for i in 0..PER_ACCOUNT {
        buf.push_str(&one_event_per_account(
            ACCOUNTS,
            i,
            &format!(r#"{{"n":{i}}}"#),
        ));
    }
    engine.publish_ndjson(bytes::Bytes::from(buf));
    let m = engine.metrics().clone();
    engine.shutdown();
    let total = ACCOUNTS * PER_ACCOUNT;
    let (panic, fine) = (counts(&m, "ed_panic"), counts(&m, "ed_fine"));
    assert!(panic.send_errors > 0, "some calls panicked");
    assert_eq!(panic.dead_lettered_total() + fine.dead_lettered_total(), 0);
    assert_eq!(
        unique_ids(&fo),
        (unique_ids(&fo).0, total),
        "every record reached the panicking destination"
    );
    assert_eq!(
        unique_ids(&bo),
        (total, total),
        "the other destination got each record once"
    );
    assert_eq!(
        (panic.delivered, fine.delivered),
        (total as u64, total as u64)
    );
    assert_eq!((panic.in_flight, fine.in_flight), (0, 0));
    assert!(
        0 < fine.sends && fine.sends < fine.batches,
        "{} batches in {} sends: small batches shared sends",
        fine.batches,
        fine.sends
    );
}

/// A sink whose calls return at once (the blackhole), many subscriptions
/// with a record each, more slots than batches ready at once: batches
/// ready together share sends anyway, and every record is delivered once.
#[test]
fn batches_of_a_fast_sink_share_sends_even_with_slots_free() {
    let dir = tempfile::tempdir().unwrap();
    const ACCOUNTS: usize = 500;
    const ROUNDS: usize = 10;
    let spec = PipelineSpec {
        destinations: vec![DestinationSpec {
            id: "ed_bh".into(),
            kind: "blackhole".into(),
            config: serde_json::json!({}),
            delivery: DeliveryConfig {
                max_in_flight: 1024,
                adaptive_concurrency: false,
                ..delivery()
            },
        }],
        subscriptions: one_per_account(ACCOUNTS, &["ed_bh"]),
        ..Default::default()
    };
    let engine = Engine::start(engine_cfg(dir.path()), plugins(), &spec).unwrap();
    // Rounds of one record per account, so that many lanes close in the
    // same millisecond.
    for round in 0..ROUNDS {
        let buf = one_event_per_account(ACCOUNTS, round, "{}");
        engine.publish_ndjson(bytes::Bytes::from(buf));
        std::thread::sleep(Duration::from_millis(30));
    }
    let m = engine.metrics().clone();
    engine.shutdown();
    let c = counts(&m, "ed_bh");
    assert_eq!(c.delivered, (ACCOUNTS * ROUNDS) as u64);
    assert_eq!(c.dead_lettered_total(), 0);
    assert!(
        c.batches >= ACCOUNTS as u64,
        "one batch per lane at least: {}",
        c.batches
    );
    assert!(
        c.sends * 4 <= c.batches,
        "{} batches in {} sends: a fast sink's batches share sends",
        c.batches,
        c.sends
    );
}

#[test]
fn unreported_outcomes_are_retried_and_rejects_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let (uo, ro) = (
        dir.path().join("unset.ndjson"),
        dir.path().join("reject.ndjson"),
    );
    let spec = PipelineSpec {
        destinations: vec![
            faulty("ed_unset", "unset", 2, &uo, 50),
            faulty("ed_reject", "reject", 1, &ro, 50),
        ],
        subscriptions: vec![sub(
            "esb_1",
            "ac_1",
            &["ed_unset", "ed_reject"],
            vec![source(HTTP, None, None)],
        )],
        ..Default::default()
    };
    let engine = Engine::start(engine_cfg(dir.path()), plugins(), &spec).unwrap();
    publish_n(&engine, "ac_1", 300);
    let m = engine.metrics().clone();
    engine.shutdown();
    assert!(counts(&m, "ed_unset").protocol_errors > 0);
    assert_eq!(unique_ids(&uo).1, 300);
    assert_eq!(counts(&m, "ed_reject").dead_lettered_total(), 300);
    let dl = read_ndjson(&dir.path().join("dead-letter/ed_reject.ndjson"));
    assert_eq!(dl.len(), 300);
    assert!(dl.iter().all(
        |l| l["reason"] == "rejected: faulty: rejected as configured"
            && l["attempts"] == 1
            && l["subscription"] == "esb_1"
    ));
    assert!(
        dl.iter()
            .all(|l| l["record"]["event_id"].as_str().unwrap().starts_with("ev_"))
    );
}

#[test]
fn a_plugin_returning_garbage_is_contained() {
    let dir = tempfile::tempdir().unwrap();
    let lib = compile_c("garbage", dir.path(), "libsluice_sink_garbage.so");
    let mut reg = plugins();
    reg.insert(PluginLibrary::load(&lib).unwrap());
    let fine = dir.path().join("fine.ndjson");
    let spec = PipelineSpec {
        destinations: vec![
            DestinationSpec {
                id: "ed_garbage".into(),
                kind: "garbage".into(),
                config: serde_json::json!({}),
                delivery: DeliveryConfig {
                    max_attempts: 3,
                    ..delivery()
                },
            },
            file_dest("ed_fine", &fine),
        ],
        subscriptions: vec![sub(
            "esb_1",
            "ac_1",
            &["ed_garbage", "ed_fine"],
            vec![source(HTTP, None, None)],
        )],
        ..Default::default()
    };
    let engine = Engine::start(engine_cfg(dir.path()), reg, &spec).unwrap();
    publish_n(&engine, "ac_1", 120);
    let m = engine.metrics().clone();
    engine.shutdown();
    let g = counts(&m, "ed_garbage");
    assert!(g.protocol_errors > 0);
    assert_eq!(g.delivered, 0);
    assert_eq!(
        g.dead_lettered_total(),
        120,
        "nothing is lost: out of attempts, every record is dead-lettered"
    );
    assert_eq!(read_ndjson(&fine).len(), 120);
    let dl = read_ndjson(&dir.path().join("dead-letter/ed_garbage.ndjson"));
    assert!(
        dl.iter().any(|l| l["reason"]
            .as_str()
            .unwrap()
            .contains("invalid outcome code 77")),
        "{:?}",
        dl.first()
    );
    assert!(dl.iter().any(|l| {
        l["reason"]
            .as_str()
            .unwrap()
            .contains("did not report an outcome")
    }));
}

#[test]
fn a_plugin_that_panics_in_create_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec = PipelineSpec {
        destinations: vec![DestinationSpec {
            id: "ed_x".into(),
            kind: "faulty".into(),
            config: serde_json::json!({"mode": "ok", "panic_in_create": true}),
            delivery: delivery(),
        }],
        ..Default::default()
    };
    let err = Engine::start(engine_cfg(dir.path()), plugins(), &spec)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("destination \"ed_x\"") && err.contains("panicked in create"),
        "{err}"
    );
    let spec = PipelineSpec {
        destinations: vec![DestinationSpec {
            id: "ed_y".into(),
            kind: "file".into(),
            config: serde_json::json!({"pth": "x"}),
            delivery: delivery(),
        }],
        ..Default::default()
    };
    let err = Engine::start(engine_cfg(dir.path()), plugins(), &spec)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `pth`"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever the subscriptions and events, a subscription receives exactly
    /// the events of its own account that its filter accepts, and no other.
    #[test]
    fn accounts_are_isolated(
        subs in prop::collection::vec((0usize..4, 1i64..4, 0i64..3), 1..6),
        events in prop::collection::vec((0usize..5, 0i64..1000, prop::bool::ANY), 0..80),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let acct = |i: usize| format!("ac_{i}");
        let mut spec = PipelineSpec::default();
        for (i, (a, m, r)) in subs.iter().enumerate() {
            let id = format!("ed_{i}");
            spec.destinations.push(file_dest(&id, &dir.path().join(format!("{i}.ndjson"))));
            let filter = format!("ev.http.response.body_length % {m} == {}", r % m);
            spec.subscriptions.push(sub(&format!("esb_{i}"), &acct(*a), &[&id], vec![source(HTTP, Some(&filter), None)]));
        }
        let engine = Engine::start(engine_cfg(dir.path()), plugins(), &spec).unwrap();
        let mut buf = String::new();
        for (k, (a, n, tcp)) in events.iter().enumerate() {
            let ty = if *tcp { "tcp_connection_closed.v0" } else { HTTP };
            buf.push_str(&event(&format!("ev_{k}"), &acct(*a), ty, &body_length(*n)));
            buf.push('\n');
        }
        engine.publish_ndjson(bytes::Bytes::from(buf));
        engine.shutdown();
        for (i, (a, m, r)) in subs.iter().enumerate() {
            let want: Vec<String> = events
                .iter()
                .enumerate()
                .filter(|(_, (ea, n, tcp))| ea == a && !tcp && n % m == r % m)
                .map(|(k, _)| format!("ev_{k}"))
                .collect();
            let got: Vec<String> = read_ndjson(&dir.path().join(format!("{i}.ndjson")))
                .iter()
                .map(|v| {
                    assert_eq!(v["account_id"].as_str().unwrap(), acct(*a), "another account's event reached esb_{i}");
                    v["event_id"].as_str().unwrap().to_string()
                })
                .collect();
            prop_assert_eq!(got, want, "subscription esb_{}", i);
        }
    }
}

#[test]
fn the_file_sink_rotates_by_size_and_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rot/out.ndjson");
    let spec = PipelineSpec {
        destinations: vec![DestinationSpec {
            id: "ed_rot".into(),
            kind: "file".into(),
            config: serde_json::json!({ "path": out, "max_bytes": 4000 }),
            delivery: delivery(),
        }],
        subscriptions: vec![sub(
            "esb_1",
            "ac_1",
            &["ed_rot"],
            vec![source(HTTP, None, None)],
        )],
        ..Default::default()
    };
    let engine = Engine::start(engine_cfg(dir.path()), plugins(), &spec).unwrap();
    publish_n(&engine, "ac_1", 500);
    engine.shutdown();
    let mut files: Vec<_> = std::fs::read_dir(dir.path().join("rot"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() > 5, "rotated into several files: {files:?}");
    let mut ids = std::collections::HashSet::new();
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len();
        assert!(len <= 4000, "{} is {len} bytes", f.display());
        for v in read_ndjson(f) {
            assert!(ids.insert(v["event_id"].as_str().unwrap().to_string()));
        }
    }
    assert_eq!(ids.len(), 500);
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().ends_with("out.ndjson.1"))
    );
}

/// Runs 3,000 events of one subscription through the C sink `ordered.c`
/// (built as `kind`), eight batches of 50 in flight, every third send failed
/// as a whole; returns the event numbers in the order the sink accepted them.
fn arrival_order(kind: &str, defines: &[&str]) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let lib = common::compile_c_with(
        "ordered",
        dir.path(),
        &format!("libsluice_sink_{kind}.so"),
        defines,
    );
    let mut reg = plugins();
    reg.insert(PluginLibrary::load(&lib).unwrap());
    let out = dir.path().join("arrivals.txt");
    let spec = PipelineSpec {
        destinations: vec![DestinationSpec {
            id: "ed_o".into(),
            kind: kind.into(),
            config: serde_json::json!({ "path": out }),
            delivery: DeliveryConfig {
                linger_ms: 1,
                max_in_flight: 8,
                adaptive_concurrency: false,
                max_attempts: 0,
                retry_max_backoff_ms: 20,
                ..DeliveryConfig::default()
            },
        }],
        subscriptions: vec![sub(
            "esb_1",
            "ac_1",
            &["ed_o"],
            vec![source(HTTP, None, None)],
        )],
        ..Default::default()
    };
    let engine = Engine::start(engine_cfg(dir.path()), reg, &spec).unwrap();
    publish_n(&engine, "ac_1", 3000);
    let m = engine.metrics().clone();
    engine.shutdown();
    assert_eq!(counts(&m, "ed_o").delivered, 3000);
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches("ev_").parse().unwrap())
        .collect()
}

#[test]
fn an_ordered_sink_gets_each_subscriptions_records_in_order_despite_retries() {
    let got = arrival_order("ordered", &[]);
    assert_eq!(got.len(), 3000, "each record accepted once");
    let out_of_order = got.windows(2).filter(|w| w[1] <= w[0]).count();
    assert_eq!(
        out_of_order,
        0,
        "first inversions: {:?}",
        got.windows(2)
            .filter(|w| w[1] <= w[0])
            .take(5)
            .collect::<Vec<_>>()
    );
    // The control: the same sink without FLAG_ORDERED gets them out of order.
    let got = arrival_order("unordered", &["UNORDERED"]);
    assert_eq!(got.len(), 3000);
    assert!(
        got.windows(2).any(|w| w[1] < w[0]),
        "concurrent batches and retries reorder"
    );
}

#[test]
fn a_plugin_built_for_a_newer_minor_abi_loads_and_delivers() {
    let dir = tempfile::tempdir().unwrap();
    // Today's header with fields appended, as a future minor version would.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = std::fs::read_to_string(root.join("../sdk/include/sluice_sink.h")).unwrap();
    let future = header
        .replace(
            &format!("#define SLUICE_ABI_MINOR {}u", sluice_sdk::abi::ABI_MINOR),
            "#define SLUICE_ABI_MINOR 9u",
        )
        .replace(
            "    int64_t timestamp_ms; /* event_timestamp, ms since the Unix epoch */\n} SluiceRecord;",
            "    int64_t timestamp_ms; /* event_timestamp, ms since the Unix epoch */\n    uint64_t future_field;\n} SluiceRecord;",
        )
        .replace(
            "    void (*destroy)(void *sink);\n} SluiceSinkVTable;",
            "    void (*destroy)(void *sink);\n    int32_t (*describe)(void *sink);\n} SluiceSinkVTable;",
        );
    assert!(
        future.contains("future_field")
            && future.contains("describe")
            && future.contains("SLUICE_ABI_MINOR 9u"),
        "the header changed shape: update this test"
    );
    let inc = dir.path().join("include");
    std::fs::create_dir_all(&inc).unwrap();
    std::fs::write(inc.join("sluice_sink.h"), future).unwrap();
    let lib = common::compile_c_full(
        "future_minor",
        dir.path(),
        "libsluice_sink_future.so",
        &[],
        &[&inc],
    );
    let loaded = PluginLibrary::load(&lib).unwrap();
    assert_eq!(loaded.info.abi_minor, 9);
    assert_eq!(loaded.info.kind, "future");
    let mut reg = plugins();
    reg.insert(loaded);
    let spec = PipelineSpec {
        destinations: vec![DestinationSpec {
            id: "ed_future".into(),
            kind: "future".into(),
            config: serde_json::json!({}),
            delivery: delivery(),
        }],
        subscriptions: vec![sub(
            "esb_1",
            "ac_1",
            &["ed_future"],
            vec![source(HTTP, None, None)],
        )],
        ..Default::default()
    };
    let engine = Engine::start(engine_cfg(dir.path()), reg, &spec).unwrap();
    publish_n(&engine, "ac_1", 250);
    let m = engine.metrics().clone();
    engine.shutdown();
    let d = counts(&m, "ed_future");
    assert_eq!(d.delivered, 250);
    assert_eq!(d.protocol_errors, 0);
    let p = &d.plugin;
    assert_eq!(
        p.get("records"),
        Some(&sluice_engine::metrics::PluginValue::Counter(250))
    );
    assert_eq!(
        p.get("future_fields_seen"),
        Some(&sluice_engine::metrics::PluginValue::Counter(0)),
        "today's records are too small to have the future field, and the plugin knew"
    );
}

#[test]
fn a_send_that_does_not_return_in_time_is_given_up_on_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (slow_out, fine) = (
        dir.path().join("slow.ndjson"),
        dir.path().join("fine.ndjson"),
    );
    let spec = PipelineSpec {
        destinations: vec![
            DestinationSpec {
                id: "ed_slow".into(),
                kind: "faulty".into(),
                // The first two calls hang for 3 s; the timeout is 300 ms.
                config: serde_json::json!({"mode": "slow", "delay_ms": 3000, "slow_calls": 2, "path": slow_out}),
                delivery: DeliveryConfig {
                    send_timeout_ms: 300,
                    retry_max_backoff_ms: 50,
                    ..delivery()
                },
            },
            file_dest("ed_fine", &fine),
        ],
        subscriptions: vec![sub(
            "esb_1",
            "ac_1",
            &["ed_slow", "ed_fine"],
            vec![source(HTTP, None, None)],
        )],
        ..Default::default()
    };
    let engine = Engine::start(engine_cfg(dir.path()), plugins(), &spec).unwrap();
    let start = std::time::Instant::now();
    publish_n(&engine, "ac_1", 100);
    // Both destinations have everything well before the hung calls return.
    let m = engine.metrics().clone();
    while counts(&m, "ed_slow").delivered < 100 || complete_lines(&fine) < 100 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "delivery waited for the hung calls"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let slow = counts(&m, "ed_slow");
    assert_eq!(slow.send_timeouts, 2);
    assert!(slow.send_errors >= 2);
    assert!(slow.retried >= 100, "the timed-out batch was retried");
    engine.shutdown();
    assert_eq!(counts(&m, "ed_fine").delivered, 100);
    assert_eq!(counts(&m, "ed_slow").dead_lettered_total(), 0);
    // The hung calls finished later and wrote too: at least once, not exactly once.
    let got = read_ndjson(&slow_out);
    let ids: std::collections::BTreeSet<String> = got
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 100);
}

/// One subscription per account on `ed_slow`, a `faulty` sink writing to
/// `out` whose first call hangs for 5 s, delivered with `delivery`.
fn first_call_hangs(out: &Path, accounts: usize, delivery: DeliveryConfig) -> PipelineSpec {
    PipelineSpec {
        destinations: vec![DestinationSpec {
            id: "ed_slow".into(),
            kind: "faulty".into(),
            config: serde_json::json!({"mode": "slow", "delay_ms": 5000, "slow_calls": 1, "path": out}),
            delivery,
        }],
        subscriptions: one_per_account(accounts, &["ed_slow"]),
        ..Default::default()
    }
}

/// Starts `spec`, publishes one event for each of `accounts` accounts and
/// waits until `ed_slow` delivered at least `n` records, failing with
/// `what` if that takes 3 s.
fn deliver_within_3_s(
    dir: &Path,
    spec: &PipelineSpec,
    accounts: usize,
    n: usize,
    what: &str,
) -> (Engine, std::sync::Arc<Metrics>) {
    let engine = Engine::start(engine_cfg(dir), plugins(), spec).unwrap();
    let start = std::time::Instant::now();
    engine.publish_ndjson(bytes::Bytes::from(one_event_per_account(accounts, 0, "{}")));
    let m = engine.metrics().clone();
    while counts(&m, "ed_slow").delivered < n as u64 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(3),
            "{what}: {:?}",
            counts(&m, "ed_slow")
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    (engine, m)
}

/// A send shared by many small batches whose first call hangs is given up
/// on one timeout after it began, not one per batch: the calls not begun
/// are not made, their batches are retried at once, and nothing is lost.
#[test]
fn a_shared_send_whose_call_hangs_is_given_up_on_after_one_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("slow.ndjson");
    const ACCOUNTS: usize = 40;
    // The timeout is 300 ms.
    let spec = first_call_hangs(
        &out,
        ACCOUNTS,
        DeliveryConfig {
            send_timeout_ms: 300,
            retry_max_backoff_ms: 50,
            // One send at a time: the batches ready together share it.
            max_in_flight: 1,
            adaptive_concurrency: false,
            ..delivery()
        },
    );
    // With a timeout per batch of the send (40 x 300 ms) this would take
    // 12 s; the hung call itself returns after 5 s.
    let (engine, m) = deliver_within_3_s(
        dir.path(),
        &spec,
        ACCOUNTS,
        ACCOUNTS,
        "delivery waited past one timeout",
    );
    let c = counts(&m, "ed_slow");
    assert_eq!(c.send_timeouts, 1, "{c:?}");
    assert!(c.retried >= 1, "{c:?}");
    engine.shutdown();
    assert_eq!(counts(&m, "ed_slow").dead_lettered_total(), 0);
    let ids: std::collections::BTreeSet<String> = read_ndjson(&out)
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), ACCOUNTS);
}

/// Without a send timeout (`send_timeout_ms = 0`) a hung call is never
/// given up on: batches do not share sends then, so that it holds only its
/// own batch while the others go through the other slot.
#[test]
fn without_a_send_timeout_a_hung_call_holds_only_its_own_batch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("slow.ndjson");
    const ACCOUNTS: usize = 40;
    // Nothing times the hung call out.
    let spec = first_call_hangs(
        &out,
        ACCOUNTS,
        DeliveryConfig {
            send_timeout_ms: 0,
            // Two sends at a time: shared, 40 ready batches would go 20 to
            // a send.
            max_in_flight: 2,
            adaptive_concurrency: false,
            ..delivery()
        },
    );
    let (engine, m) = deliver_within_3_s(
        dir.path(),
        &spec,
        ACCOUNTS,
        ACCOUNTS - 1,
        "the hung call held other batches",
    );
    engine.shutdown();
    let c = counts(&m, "ed_slow");
    assert_eq!(
        (c.delivered, c.send_timeouts),
        (ACCOUNTS as u64, 0),
        "{c:?}"
    );
    assert_eq!(read_ndjson(&out).len(), ACCOUNTS);
}

/// A destination whose plugin asks to be tried later (RETRY at create)
/// starts as soon as it can: its records wait meanwhile (nothing lost), it is
/// unhealthy with the reason, and the other destinations deliver as usual.
#[test]
fn a_destination_that_cannot_start_yet_is_retried_and_its_records_wait() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, held, fine) = (
        dir.path().join("gate"),
        dir.path().join("held.ndjson"),
        dir.path().join("fine.ndjson"),
    );
    let spec = PipelineSpec {
        destinations: vec![
            DestinationSpec {
                id: "ed_gated".into(),
                kind: "faulty".into(),
                config: serde_json::json!({"mode": "ok", "path": held, "start_gate": gate}),
                delivery: delivery(),
            },
            file_dest("ed_fine", &fine),
        ],
        subscriptions: vec![sub(
            "esb_1",
            "ac_1",
            &["ed_gated", "ed_fine"],
            vec![source(HTTP, None, None)],
        )],
        ..Default::default()
    };
    let engine = Engine::start(engine_cfg(dir.path()), plugins(), &spec).unwrap();
    publish_n(&engine, "ac_1", 300);
    engine.barrier();
    let m = engine.metrics().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while complete_lines(&fine) < 300 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        read_ndjson(&fine).len(),
        300,
        "the other destination delivers"
    );
    let d = counts(&m, "ed_gated");
    assert!(d.unhealthy);
    let why = d.start_error.map(|(e, _)| e);
    assert!(
        why.as_deref().is_some_and(|e| e.contains("start gate")),
        "{why:?}"
    );
    assert!(read_ndjson(&held).is_empty());
    // Open the gate: the next attempt (within 2 s) creates it.
    std::fs::write(&gate, b"").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while complete_lines(&held) < 300 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        read_ndjson(&held).len(),
        300,
        "the records waited and are delivered"
    );
    assert!(!counts(&m, "ed_gated").unhealthy);
    assert!(engine.failed_starts().is_empty());
    engine.shutdown();
    assert_eq!(counts(&m, "ed_gated").dead_lettered_total(), 0);
}

/// With a start timeout (`sluice run`), a destination that never starts is
/// given up: its records are dead-lettered with the reason and
/// `failed_starts` names it.
#[test]
fn a_destination_that_never_starts_is_given_up_after_the_start_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let spec = PipelineSpec {
        destinations: vec![DestinationSpec {
            id: "ed_never".into(),
            kind: "faulty".into(),
            config: serde_json::json!({"mode": "ok", "start_gate": dir.path().join("no-such-gate")}),
            delivery: delivery(),
        }],
        subscriptions: vec![sub(
            "esb_1",
            "ac_1",
            &["ed_never"],
            vec![source(HTTP, None, None)],
        )],
        ..Default::default()
    };
    let cfg = EngineConfig {
        start_timeout: Some(Duration::from_secs(2)),
        ..engine_cfg(dir.path())
    };
    let engine = Engine::start(cfg, plugins(), &spec).unwrap();
    publish_n(&engine, "ac_1", 50);
    engine.barrier();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while engine.failed_starts().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let failed = engine.failed_starts();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].error.contains("start gate"), "{failed:?}");
    let m = engine.metrics().clone();
    engine.shutdown();
    assert_eq!(counts(&m, "ed_never").dead_lettered_total(), 50);
}

/// Records in the disk buffer of a destination deleted before a stop are
/// dead-lettered with the reason at the next start, and the buffer removed:
/// they were acknowledged to publishers, so they are neither lost nor left.
#[test]
fn the_disk_buffer_of_a_deleted_destination_is_dead_lettered_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || EngineConfig {
        buffer_dir: dir.path().join("buffer"),
        drain_timeout: Duration::from_millis(500),
        ..engine_cfg(dir.path())
    };
    let spec = PipelineSpec {
        destinations: vec![DestinationSpec {
            id: "ed_gone".into(),
            kind: "faulty".into(),
            config: serde_json::json!({"mode": "ok", "start_gate": dir.path().join("closed")}),
            delivery: DeliveryConfig {
                durability: sluice_engine::config::Durability::Disk,
                fsync: sluice_engine::config::Fsync::EveryBatch,
                ..delivery()
            },
        }],
        subscriptions: vec![sub(
            "esb_1",
            "ac_1",
            &["ed_gone"],
            vec![source(HTTP, None, None)],
        )],
        ..Default::default()
    };
    let engine = Engine::start(cfg(), plugins(), &spec).unwrap();
    publish_n(&engine, "ac_1", 40);
    engine.barrier();
    engine.shutdown();
    assert!(
        dir.path().join("buffer/ed_gone").is_dir(),
        "the records are kept on disk"
    );
    // Started again without the destination (deleted meanwhile).
    let engine = Engine::start(cfg(), plugins(), &PipelineSpec::default()).unwrap();
    engine.shutdown();
    let dead = read_ndjson(&dir.path().join("dead-letter/ed_gone.ndjson"));
    assert_eq!(dead.len(), 40);
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("deleted before the engine last stopped"),
        "{}",
        dead[0]
    );
    assert!(
        !dir.path().join("buffer/ed_gone").exists(),
        "the buffer is removed"
    );
}

/// Shutdown finishes within the drain timeout plus a few seconds even when a
/// plugin's `send` never returns (no send timeout): the call is given up on
/// and its records are dead-lettered, never lost.
#[test]
fn shutdown_is_bounded_when_a_plugin_call_never_returns() {
    let dir = tempfile::tempdir().unwrap();
    let spec = PipelineSpec {
        destinations: vec![DestinationSpec {
            id: "ed_stuck".into(),
            kind: "faulty".into(),
            config: serde_json::json!({"mode": "slow", "delay_ms": 600_000}),
            delivery: DeliveryConfig {
                send_timeout_ms: 0,
                linger_ms: 1,
                ..delivery()
            },
        }],
        subscriptions: vec![sub(
            "esb_1",
            "ac_1",
            &["ed_stuck"],
            vec![source(HTTP, None, None)],
        )],
        ..Default::default()
    };
    let cfg = EngineConfig {
        drain_timeout: Duration::from_secs(1),
        ..engine_cfg(dir.path())
    };
    let engine = Engine::start(cfg, plugins(), &spec).unwrap();
    publish_n(&engine, "ac_1", 30);
    engine.barrier();
    std::thread::sleep(Duration::from_millis(300));
    let m = engine.metrics().clone();
    let started = std::time::Instant::now();
    engine.shutdown();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    assert_eq!(counts(&m, "ed_stuck").dead_lettered_total(), 30);
}

/// A destination deleted while its plugin instance cannot be created does
/// not hold up the engine: what it held is dead-lettered with the reason.
#[test]
fn a_destination_deleted_before_it_could_start_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let gated = DestinationSpec {
        id: "ed_gated".into(),
        kind: "faulty".into(),
        config: serde_json::json!({"mode": "ok", "start_gate": dir.path().join("closed")}),
        delivery: delivery(),
    };
    let spec = PipelineSpec {
        destinations: vec![gated],
        subscriptions: vec![sub(
            "esb_1",
            "ac_1",
            &["ed_gated"],
            vec![source(HTTP, None, None)],
        )],
        ..Default::default()
    };
    let engine = Engine::start(engine_cfg(dir.path()), plugins(), &spec).unwrap();
    publish_n(&engine, "ac_1", 25);
    engine.barrier();
    engine.reconfigure(&PipelineSpec::default()).unwrap();
    // The workers move to the new configuration, dropping the destination.
    engine.barrier();
    let m = engine.metrics().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counts(&m, "ed_gated").dead_lettered_total() < 25 && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = std::time::Instant::now();
    engine.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(counts(&m, "ed_gated").dead_lettered_total(), 25);
    let dead = read_ndjson(&dir.path().join("dead-letter/ed_gated.ndjson"));
    assert!(
        dead[0]["reason"]
            .as_str()
            .unwrap()
            .contains("deleted before"),
        "{}",
        dead[0]
    );
}

/// Only directories that hold a log are taken for orphaned disk buffers:
/// anything else under the buffer directory is left alone.
#[test]
fn directories_that_are_not_logs_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("buffer/not-a-log");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"mine").unwrap();
    let cfg = EngineConfig {
        buffer_dir: dir.path().join("buffer"),
        ..engine_cfg(dir.path())
    };
    let engine = Engine::start(cfg, plugins(), &PipelineSpec::default()).unwrap();
    engine.shutdown();
    assert_eq!(std::fs::read(other.join("notes.txt")).unwrap(), b"mine");
    assert_eq!(
        std::fs::read_dir(&other).unwrap().count(),
        1,
        "nothing added"
    );
}

/// `publish_ndjson_async` never blocks the runtime's thread: with two-event
/// batches and a queue of one batch, the worker's queue is full at once, and
/// another task on the same single-threaded runtime keeps running while the
/// publish waits; the report counts every line, rejected ones by offset.
#[test]
fn async_publish_yields_while_queues_are_full_and_reports_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.ndjson");
    let spec = PipelineSpec {
        destinations: vec![file_dest("ed_1", &out)],
        subscriptions: vec![sub(
            "esb_1",
            "ac_1",
            &["ed_1"],
            vec![source(HTTP, None, None)],
        )],
        ..PipelineSpec::default()
    };
    let cfg = EngineConfig {
        workers: 1,
        batch_events: 2,
        queue_batches: 1,
        ..engine_cfg(dir.path())
    };
    let engine = Engine::start(cfg, plugins(), &spec).unwrap();
    let mut buf = String::new();
    let mut bad = Vec::new();
    for i in 0..2000 {
        if i % 500 == 7 {
            bad.push(buf.len() as u32);
            buf.push_str("{not json\n");
        } else {
            buf.push_str(&event(&format!("ev_{i}"), "ac_1", HTTP, "{}"));
            buf.push('\n');
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let report = rt.block_on(async {
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        });
        let report = engine
            .publish_ndjson_async(bytes::Bytes::from(buf), true)
            .await;
        ticker.abort();
        report
    });
    let report = report.expect("the engine is running");
    assert_eq!(report.accepted, 2000 - bad.len() as u64);
    assert_eq!(
        report.rejected.iter().map(|r| r.offset).collect::<Vec<_>>(),
        bad
    );
    assert!(
        report
            .rejected
            .iter()
            .all(|r| r.reason == RejectReason::BadJson),
        "{:?}",
        report.rejected.first()
    );
    assert!(
        ticks.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "another task ran while the publish waited for room"
    );
    // Durable: every record is delivered (memory durability) when it returns.
    assert_eq!(complete_lines(&out), 2000 - bad.len());
    engine.shutdown();
}

/// A dead-letter sink that keeps what it is given, holds included.
#[derive(Debug, Default)]
struct KeptDeadLetters(std::sync::Mutex<Vec<(String, Vec<u8>, sluice_engine::DeadLetterHolds)>>);

impl sluice_engine::DeadLetterSink for KeptDeadLetters {
    fn store(&self, destination: &str, lines: Vec<u8>, holds: sluice_engine::DeadLetterHolds) {
        self.0
            .lock()
            .unwrap()
            .push((destination.to_string(), lines, holds));
    }
}

#[test]
fn dead_letters_go_to_the_sink_and_hold_the_durable_publish_until_it_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let sink = std::sync::Arc::new(KeptDeadLetters::default());
    let spec = PipelineSpec {
        destinations: vec![DestinationSpec {
            id: "ed_gone".into(),
            kind: "not_loaded".into(),
            config: serde_json::json!({}),
            delivery: delivery(),
        }],
        subscriptions: vec![sub(
            "esb_1",
            "ac_1",
            &["ed_gone"],
            vec![source(HTTP, None, None)],
        )],
        ..Default::default()
    };
    let cfg = EngineConfig {
        missing_plugin: sluice_engine::MissingPlugin::DeadLetter,
        dead_letters: Some(sink.clone()),
        ..engine_cfg(dir.path())
    };
    let engine = Engine::start(cfg, plugins(), &spec).unwrap();
    let body: String = (0..3)
        .map(|i| event(&format!("ev_{i}"), "ac_1", HTTP, "{}") + "\n")
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    engine.publish_ndjson_durable(body.into(), move |r| tx.send(r).unwrap());
    // The sink has the three dead letters; the publish waits for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sink
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, h)| h.len())
        .sum::<usize>()
        < 3
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no dead letters reached the sink"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "the publish is not reported while the sink holds its dead letters"
    );
    let kept = std::mem::take(&mut *sink.0.lock().unwrap());
    let lines: Vec<serde_json::Value> = kept
        .iter()
        .flat_map(|(d, l, _)| {
            assert_eq!(d, "ed_gone");
            String::from_utf8(l.clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["destination"], "ed_gone");
    assert!(
        lines[0]["reason"].as_str().unwrap().contains("not_loaded"),
        "{}",
        lines[0]
    );
    assert!(
        !dir.path().join("dead-letter").exists(),
        "no dead-letter file"
    );
    drop(kept);
    let report = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("reported once the sink let go");
    assert_eq!((report.accepted, report.dropped), (3, 0));
    engine.shutdown();
}

/// Polls `f` every 20 ms for up to 20 s.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_full_dead_letter_queue_pauses_its_destination_and_replays_deliver_every_record() {
    use sluice_engine::dead_letter_file::{Selection, Taken};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fixed.ndjson");
    let mut broken = faulty("ed_x", "reject", 1, &dir.path().join("unused"), 1);
    broken.delivery.dead_letter_max_bytes = 20_000;
    let subs = vec![sub(
        "esb_1",
        "ac_1",
        &["ed_x"],
        vec![source(HTTP, None, None)],
    )];
    let spec = PipelineSpec {
        destinations: vec![broken],
        subscriptions: subs.clone(),
        ..Default::default()
    };
    let engine = Engine::start(engine_cfg(dir.path()), plugins(), &spec).unwrap();
    publish_n(&engine, "ac_1", 200);
    engine.barrier();
    let m = engine.metrics().clone();
    wait_until("the destination pauses", || counts(&m, "ed_x").paused > 0);
    let queue = engine.dead_letter_queue("ed_x").expect("a file queue");
    std::thread::sleep(Duration::from_millis(300));
    let c = counts(&m, "ed_x");
    assert!(
        queue.bytes() <= 20_000,
        "the bound holds: {}",
        queue.bytes()
    );
    assert_eq!(
        c.dead_lettered_total() + c.queued,
        200,
        "every record is dead-lettered or waits: {c:?}"
    );
    assert!(c.paused > 0 && c.dead_lettered_total() > 0 && c.delivered == 0);

    // The user fixes the destination, then replays until nothing is left.
    let mut fixed = file_dest("ed_x", &out);
    fixed.delivery.dead_letter_max_bytes = 20_000;
    engine
        .reconfigure(&PipelineSpec {
            destinations: vec![fixed],
            subscriptions: subs,
            ..Default::default()
        })
        .unwrap();
    let queue = engine.dead_letter_queue("ed_x").expect("a file queue");
    let mut replays = 0;
    loop {
        let id = format!("r{replays}");
        let Taken::New(record) = queue.take_for_replay(&id, &Selection::default()).unwrap() else {
            panic!("a new replay id was found done")
        };
        let letters: Vec<_> = queue
            .journal_letters(&id)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(record.records as usize, letters.len());
        let (tx, rx) = std::sync::mpsc::channel();
        let sent = engine
            .redeliver("ed_x", letters, move |r| tx.send(r).unwrap())
            .unwrap();
        let report = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("replay done");
        assert_eq!(report.accepted, sent);
        queue.finish_replay(&id).unwrap();
        // Repeating a replay id sends nothing.
        assert!(matches!(
            queue.take_for_replay(&id, &Selection::default()).unwrap(),
            Taken::Existing(_)
        ));
        replays += 1;
        let c = counts(&m, "ed_x");
        if c.paused == 0
            && queue
                .list(&Selection::default(), None, 1)
                .unwrap()
                .dead_letters
                .is_empty()
        {
            let (_, unique) = unique_ids(&out);
            if unique == 200 {
                break;
            }
        }
        assert!(replays < 50, "replays do not converge: {c:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        replays >= 2,
        "the paused records needed the room a replay made"
    );
    let c = counts(&m, "ed_x");
    assert!(c.replayed >= 200, "{c:?}");
    engine.shutdown();
}
