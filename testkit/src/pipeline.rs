//! `sluice run` with inputs built as values: HTTP request events, pipelines
//! (`PipelineSpec`) written as the TOML `--config` reads, and the process.

use crate::{KillOnDrop, cmd, wait_exit};
use serde_json::{Value, json};
use sluice_engine::PipelineSpec;
use sluice_engine::config::{DeliveryConfig, DestinationSpec, SourceSpec, SubscriptionSpec};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// `n` HTTP request events, one per line: `ev_<prefix><i>` of account
/// `accounts[i % accounts.len()]`, stamped `ts(i)` milliseconds from now
/// (Datadog and CloudWatch judge dates), each about 330 bytes and carrying
/// its index as `object.n`.
pub fn http_events(n: usize, prefix: &str, accounts: &[&str], ts: impl Fn(usize) -> i64) -> String {
    let now = chrono::Utc::now().timestamp_millis();
    let mut out = String::new();
    for i in 0..n {
        let t = chrono::DateTime::from_timestamp_millis(now + ts(i))
            .expect("a time in range")
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let ev = json!({
            "event_id": format!("ev_{prefix}{i}"),
            "event_type": "http_request_complete.v0",
            "event_timestamp": t,
            "account_id": accounts[i % accounts.len()],
            "object": {
                "http": {
                    "request": {"method": "GET", "url": format!("/items/{i}")},
                    "response": {"status_code": 200},
                },
                "conn": {
                    "server_name": "app-prod.ngrok.dev",
                    "client_ip": format!("10.0.{}.{}", i / 256 % 256, i % 256),
                },
                "n": i,
            },
        });
        out.push_str(&ev.to_string());
        out.push('\n');
    }
    out
}

/// A destination: `kind` with its plugin `config`, and delivery settings
/// given as the JSON of a `[destination.delivery]` table (`{}` for the
/// defaults).
pub fn destination(id: &str, kind: &str, config: Value, delivery: Value) -> DestinationSpec {
    DestinationSpec {
        id: id.to_string(),
        kind: kind.to_string(),
        config,
        delivery: serde_json::from_value::<DeliveryConfig>(delivery)
            .unwrap_or_else(|e| panic!("delivery settings of {id}: {e}")),
    }
}

/// A subscription of `account` to every HTTP request event, sent to
/// `destination_ids`.
pub fn http_subscription(id: &str, account: &str, destination_ids: &[&str]) -> SubscriptionSpec {
    SubscriptionSpec {
        id: id.to_string(),
        account_id: account.to_string(),
        destination_ids: destination_ids.iter().map(|d| d.to_string()).collect(),
        sources: vec![SourceSpec {
            event_type: "http_request_complete.v0".to_string(),
            filter: None,
            fields: None,
        }],
    }
}

/// One destination and, for each of `accounts`, a subscription of its HTTP
/// events to it (`esb_<account>`).
pub fn one_destination(dest: DestinationSpec, accounts: &[&str]) -> PipelineSpec {
    let subscriptions = accounts
        .iter()
        .map(|a| http_subscription(&format!("esb_{a}"), a, &[&dest.id]))
        .collect();
    PipelineSpec {
        destinations: vec![dest],
        subscriptions,
        ..PipelineSpec::default()
    }
}

/// Writes `spec` to `dir/name` as the TOML `sluice run --config` reads.
pub fn write_pipeline(dir: &Path, name: &str, spec: &PipelineSpec) {
    let text = toml::to_string(spec).unwrap_or_else(|e| panic!("{name} as TOML: {e}"));
    std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("writing {name}: {e}"));
}

/// Starts `sluice run --config c.toml ARGS` in `dir` with `env` added:
/// stdout discarded, stderr piped, logs at `info`.
pub fn spawn_run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> KillOnDrop {
    let child = cmd(dir)
        .args(["run", "--config", "c.toml"])
        .args(args)
        .envs(env.iter().copied())
        .env("SLUICE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice run starts");
    KillOnDrop(child)
}

/// [`spawn_run`] to its end (killed after `timeout`): (success, stderr).
pub fn sluice_run(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> (bool, String) {
    wait_exit(&mut spawn_run(dir, args, env), timeout, || {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_written_as_toml_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let spec = one_destination(
            destination(
                "ed_1",
                "http",
                json!({"url": "http://127.0.0.1:1/", "headers": {"X-Team": "net"}}),
                json!({"linger_ms": 20, "max_attempts": 3}),
            ),
            &["ac_1", "ac_2"],
        );
        write_pipeline(dir.path(), "c.toml", &spec);
        let text = std::fs::read_to_string(dir.path().join("c.toml")).unwrap();
        let back = PipelineSpec::from_toml(&text).unwrap();
        assert_eq!(back, spec, "{text}");
        assert_eq!(back.destinations[0].delivery.linger_ms, 20);
        assert_eq!(back.subscriptions.len(), 2);
    }

    #[test]
    fn events_carry_their_index_account_and_time() {
        let text = http_events(3, "x", &["ac_a", "ac_b"], |i| i as i64 * 1000);
        let evs: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[2]["event_id"], "ev_x2");
        assert_eq!(evs[1]["account_id"], "ac_b");
        assert_eq!(evs[2]["object"]["n"], 2);
        assert!(
            evs[0]["event_timestamp"].as_str().unwrap()
                < evs[2]["event_timestamp"].as_str().unwrap()
        );
    }
}
