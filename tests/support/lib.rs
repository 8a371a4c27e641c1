//! Helpers for the end-to-end tests: find the built `sluice` binary, run it,
//! and make sure processes started by a test stop with it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

/// The directory holding the built binaries and plugins (target/<profile>).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// The `sluice` binary built by `cargo test --workspace`.
pub fn sluice() -> PathBuf {
    let p = target_dir().join(format!("sluice{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// A `sluice` command running in `dir`.
pub fn cmd(dir: &Path) -> Command {
    let mut c = Command::new(sluice());
    c.current_dir(dir)
        .env("SLUICE_PLUGIN_DIR", target_dir())
        .env_remove("SLUICE_LOG");
    c
}

/// Runs `sluice args...` in `dir` and returns its output.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    cmd(dir).args(args).output().expect("running sluice")
}

/// Stdout and stderr as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Kills the child when dropped (a failing test must not leave processes behind).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An event line.
pub fn event(id: &str, account: &str, ty: &str, object: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","event_type":"{ty}","event_timestamp":"2026-11-01T00:00:00Z","account_id":"{account}","object":{object}}}"#
    )
}

/// Reads an NDJSON file into values (empty if missing).
pub fn read_ndjson(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .map(|s| {
            s.lines()
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_str(l).expect("json line"))
                .collect()
        })
        .unwrap_or_default()
}
