//! The plugin SDK as its users meet it: `sluice plugin check` (the
//! conformance kit) over every built-in plugin and the examples, the kit
//! catching a plugin that breaks the contract, the C example built with cc
//! and run by `sluice run`, and `sluice plugin list`.

use sluice_standins::http::Receiver;
use sluice_testkit::{cmd, event, run, target_dir, text};
use std::path::{Path, PathBuf};

use sluice_testkit::plugin_check as check;

fn lib(name: &str) -> PathBuf {
    target_dir().join(format!("lib{name}.so"))
}

#[test]
fn every_built_in_plugin_passes_the_conformance_kit() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    let file_cfg = format!(
        r#"{{"path":"{}"}}"#,
        dir.path().join("out.ndjson").display()
    );
    let http_cfg = format!(r#"{{"url":"{}","gzip":true}}"#, rx.url());
    for (name, cfg) in [
        ("sluice_sink_blackhole", "{}"),
        ("sluice_sink_file", file_cfg.as_str()),
        ("sluice_sink_http", http_cfg.as_str()),
        ("sluice_example_template", "{}"),
    ] {
        sluice_testkit::assert_conformant(
            dir.path(),
            name,
            &lib(name),
            cfg,
            &[
                "load",
                "bad config",
                "full batch",
                "concurrent sends",
                "destroy",
            ],
        );
    }
    // The http sink's records and its test event reached the receiver.
    let got = rx.accepted();
    assert!(
        got.iter().any(|r| r["event_type"] == "test"
            && r["event_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("ev_test_"))),
        "verify posted a test event"
    );
    assert!(got.iter().filter(|r| r["check"].is_u64()).count() >= 1000);
}

#[test]
fn the_kit_fails_a_plugin_that_breaks_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = lib("sluice_test_sink_faulty");
    let (ok, out) = check(dir.path(), &faulty, r#"{"mode":"ok"}"#);
    assert!(ok, "{out}");
    for (cfg, want) in [
        (r#"{"mode":"unset","every":1}"#, "contract violations"),
        (r#"{"mode":"panic","every":1}"#, "plugin panicked in send"),
        (r#"{"mode":"reject","every":1}"#, "rejected"),
    ] {
        let (ok, out) = check(dir.path(), &faulty, cfg);
        assert!(!ok, "{cfg} passed:\n{out}");
        assert!(
            out.contains("FAIL  full batch") && out.contains(want),
            "{cfg}:\n{out}"
        );
        assert!(
            !out.contains("panicked at"),
            "a plugin's panic is reported, not printed: {out}"
        );
    }
    // Configurations: unknown keys must be refused, and refused FATAL.
    for (cfg, want) in [
        (
            r#"{"mode":"ok","accept_unknown_keys":true}"#,
            "FAIL  unknown config key     create accepted the configuration with an extra key",
        ),
        (
            r#"{"mode":"ok","retry_refusals":true}"#,
            "FAIL  unknown config key     create answered RETRY",
        ),
    ] {
        let (ok, out) = check(dir.path(), &faulty, cfg);
        assert!(!ok, "{cfg} passed:\n{out}");
        assert!(out.contains(want), "{cfg}:\n{out}");
    }
    // Not a plugin at all.
    std::fs::write(dir.path().join("libsluice_sink_junk.so"), b"not a library").unwrap();
    let (ok, out) = check(dir.path(), &dir.path().join("libsluice_sink_junk.so"), "{}");
    assert!(!ok);
    assert!(out.contains("FAIL  load"), "{out}");
}

/// Builds plugins/examples/c-stdout into `dir`.
fn build_c_example(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = dir.join("libsluice_sink_c_stdout.so");
    let status = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-std=c99",
            "-pedantic",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-shared",
            "-fPIC",
            "-O2",
            "-I",
        ])
        .arg(root.join("sdk/include"))
        .arg("-o")
        .arg(&out)
        .arg(root.join("plugins/examples/c-stdout/sink.c"))
        .arg("-lpthread")
        .status()
        .expect("cc");
    assert!(status.success());
    out
}

#[test]
fn the_c_example_builds_passes_the_kit_and_delivers_through_sluice_run() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let so = build_c_example(&plugins);
    let (ok, out) = check(dir.path(), &so, r#"{"prefix":"> "}"#);
    assert!(ok, "{out}");
    assert!(out.contains("PASS  verify"), "{out}");
    // The header's sluice_test_event writes the bytes Rust's test_event does.
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("> ").filter(|l| l.contains("\"ev_test_")))
        .unwrap_or_else(|| panic!("no test event in:\n{out}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let ms: i64 = v["event_id"].as_str().unwrap()["ev_test_".len()..]
        .parse()
        .unwrap();
    assert_eq!(
        line,
        sluice_sdk::events::test_event_at("ed_sluicecheck", ms)
    );
    let mut input = String::new();
    for i in 0..50 {
        input.push_str(&event(
            &format!("ev_{i}"),
            "ac_1",
            "http_request_complete.v0",
            &format!(r#"{{"n":{i}}}"#),
        ));
        input.push('\n');
    }
    std::fs::write(dir.path().join("in.ndjson"), input).unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[[destination]]\nid = \"ed_c\"\nkind = \"c_stdout\"\nconfig = { prefix = \"> \" }\n[destination.delivery]\nlinger_ms = 10\n\n[[subscription]]\nid = \"esb_1\"\naccount_id = \"ac_1\"\ndestination_ids = [\"ed_c\"]\n[[subscription.source]]\ntype = \"http_request_complete.v0\"\n",
    )
    .unwrap();
    let out = cmd(dir.path())
        .args([
            "run",
            "--config",
            "c.toml",
            "--input",
            "in.ndjson",
            "--plugin-dir",
        ])
        .arg(&plugins)
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert!(out.status.success(), "{e}");
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines.len(), 50, "{o}");
    let mut ns: Vec<u64> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l.strip_prefix("> ").unwrap()).unwrap();
            v["object"]["n"].as_u64().unwrap()
        })
        .collect();
    ns.sort();
    assert_eq!(ns, (0..50).collect::<Vec<_>>());
    assert!(e.contains("50 delivered"), "{e}");
}

#[test]
fn plugin_list_shows_what_each_plugin_declares() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["plugin", "list", "--json"]);
    assert!(out.status.success());
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let http = list
        .iter()
        .find(|p| p["kind"] == "http")
        .expect("the http plugin is listed");
    assert_eq!(http["limits"]["max_records"], 1000);
    assert_eq!(http["config_schema"]["required"][0], "url");
    assert_eq!(http["abi"], "1.2");
    assert_eq!(http["thread_safe"], true);
    let out = run(dir.path(), &["plugin", "list"]);
    let (o, _) = text(&out);
    assert!(
        o.contains("config: encoding, gzip, headers, timeout_ms, url*"),
        "{o}"
    );
    assert!(
        !o.contains("template"),
        "examples are not installed as plugins: {o}"
    );
}

/// A file in a plugin directory is loaded only when named for the kind its
/// plugin declares; `plugin list` says what it skipped or refused, and
/// `sluice run` does not use a misnamed plugin.
#[test]
fn plugin_files_are_named_by_kind_and_others_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let blackhole = lib("sluice_sink_blackhole");
    std::fs::copy(&blackhole, plugins.join("countfile.so")).unwrap();
    std::fs::copy(&blackhole, plugins.join("libsluice_sink_other.so")).unwrap();
    let out = run(
        dir.path(),
        &["plugin", "list", "--plugin-dir", plugins.to_str().unwrap()],
    );
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}{e}");
    assert!(
        e.contains(&format!(
            "skipped: {}: not named libsluice_sink_<kind>.so",
            plugins.join("countfile.so").display()
        )),
        "{e}"
    );
    assert!(
        e.contains("libsluice_sink_other.so: invalid plugin: the file name says kind `other` but the plugin declares `blackhole`"),
        "{e}"
    );
    assert!(
        !o.lines().any(|l| l.starts_with("other ")),
        "a misnamed plugin is not loaded: {o}"
    );
}
