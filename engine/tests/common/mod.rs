//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use sluice_engine::plugin::{PluginRegistry, plugin_dirs};
use std::path::{Path, PathBuf};

/// The plugins built by `cargo build`/`cargo test` next to the test binary,
/// and the test plugin `faulty`, linked into a directory of its own.
pub fn plugins() -> PluginRegistry {
    let reg = PluginRegistry::discover(&plugin_dirs(&[test_plugin_dir()]));
    for kind in ["file", "blackhole", "faulty"] {
        assert!(
            reg.get(kind).is_ok(),
            "the `{kind}` plugin is not built: run `cargo build --workspace` first; loaded: {:?}",
            reg.kinds()
        );
    }
    reg
}

/// `target/<profile>/test-plugins/`, offering the test plugin `faulty`
/// (built as `libsluice_test_sink_faulty.so`, a name discovery skips).
pub fn test_plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let dir = profile.join("test-plugins");
    let lib = profile.join(format!(
        "{}sluice_test_sink_faulty{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    sluice_engine::plugin::link_plugins(&dir, &[("faulty", &lib)]).expect("linking test plugins");
    dir
}

/// Compiles `engine/tests/plugins/<name>.c` into a shared library in `dir`.
pub fn compile_c(name: &str, dir: &Path, out_name: &str) -> PathBuf {
    compile_c_with(name, dir, out_name, &[])
}

/// Like [`compile_c`], with `-D` definitions.
pub fn compile_c_with(name: &str, dir: &Path, out_name: &str, defines: &[&str]) -> PathBuf {
    compile_c_full(name, dir, out_name, defines, &[])
}

/// Like [`compile_c_with`], searching `includes` before the SDK's headers.
pub fn compile_c_full(
    name: &str,
    dir: &Path,
    out_name: &str,
    defines: &[&str],
    includes: &[&Path],
) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("tests/plugins").join(format!("{name}.c"));
    let include = root.join("../sdk/include");
    let out = dir.join(out_name);
    let status = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .args(
            includes
                .iter()
                .flat_map(|i| [std::ffi::OsStr::new("-I"), i.as_os_str()]),
        )
        .arg("-I")
        .arg(&include)
        .args(defines.iter().map(|d| format!("-D{d}")))
        .arg(&src)
        .arg("-lpthread")
        .status()
        .expect("a C compiler (cc) is needed for the C plugin tests");
    assert!(status.success(), "compiling {}", src.display());
    out
}

/// An event line.
pub fn event(id: &str, account: &str, ty: &str, object: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","event_type":"{ty}","event_timestamp":"2026-11-01T00:00:00Z","account_id":"{account}","object":{object}}}"#
    )
}

/// Lines of a file that are whole (end with a newline): what a test may
/// poll while a sink is still appending (0 if missing).
pub fn complete_lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|c| **c == b'\n').count())
}

/// Reads an NDJSON file into parsed values (empty if missing).
pub fn read_ndjson(path: &Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display()))
            })
            .collect(),
        Err(_) => vec![],
    }
}
