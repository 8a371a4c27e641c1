//! The command line lists the commands DESIGN.md fixes. (Also makes
//! `cargo test --workspace` build the `sluice` binary the end-to-end tests run.)

#[test]
fn help_lists_the_fixed_commands() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for c in ["run", "check", "demo", "gen", "plugin"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(c)),
            "{c} missing from:\n{text}"
        );
    }
}
