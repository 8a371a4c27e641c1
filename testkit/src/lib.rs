//! # sluice-testkit
//!
//! Test support shared by every suite: find the built `sluice` binary and
//! run it (`sluice run`, a `sluice serve` process), build inputs as values
//! (`pipeline`), and the real AWS-compatible service (`moto`). The vendor
//! stand-ins tests talk to live in `sluice-standins`. Every process a test
//! starts stops with it.

pub mod cluster;
pub mod moto;
pub mod nats;
pub mod pipeline;
pub mod serve;
pub mod webdriver;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A program `scripts/test` installs (e.g. `.venv-moto/bin/moto_server`,
/// relative to the workspace root); panics, naming the fix, when missing.
pub fn installed(path: &str) -> PathBuf {
    let bin = root().join(path);
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test, which installs it",
        bin.display()
    );
    bin
}

/// A loopback port free at the time of the call, for a process a test
/// starts (see [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct loopback ports, free at the time of the call, for
/// processes a test starts and then dials.
///
/// They are chosen outside the kernel's ephemeral range (when it leaves
/// room below it): a port from that range can be taken, between choosing
/// it and the server binding it, as the source port of an outgoing
/// connection, and a peer dialing it before it listens can even connect
/// to itself (TCP self-connect) and hold it. Both were seen: nats-server
/// dies with "Error listening on router port ... address already in use"
/// when its cluster peers dial its route port first. No port is handed
/// out twice by one test process.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::collections::HashSet;
    use std::hash::{BuildHasher, Hasher};
    use std::net::TcpListener;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    // Room below the ephemeral range, above the well-known and the
    // commonly configured ports; otherwise the kernel chooses.
    const FLOOR: u16 = 10_000;
    let low = ephemeral_low();
    let mut held: Vec<TcpListener> = Vec::new();
    if low < FLOOR + 2_000 {
        held = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
    } else {
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        let given = given.get_or_insert_with(HashSet::new);
        let random = std::collections::hash_map::RandomState::new();
        let mut tries = 0u64;
        while held.len() < n {
            tries += 1;
            assert!(tries < 100_000, "no free loopback port below {low}");
            let mut h = random.build_hasher();
            h.write_u64(tries);
            let port = FLOOR + (h.finish() % u64::from(low - FLOOR)) as u16;
            if !given.contains(&port)
                && let Ok(l) = TcpListener::bind(("127.0.0.1", port))
            {
                given.insert(port);
                held.push(l);
            }
        }
    }
    held.iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

/// The lowest port of the kernel's ephemeral range
/// (`ip_local_port_range`), Linux's default when it cannot be read.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

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

/// `target/<profile>/test-plugins/`, offering the test plugin `faulty`
/// (built as `libsluice_test_sink_faulty.so`, a name discovery skips: it is
/// never loaded from next to the `sluice` executable).
pub fn test_plugin_dir() -> PathBuf {
    let dir = target_dir().join("test-plugins");
    let lib = target_dir().join("libsluice_test_sink_faulty.so");
    sluice_engine::plugin::link_plugins(&dir, &[("faulty", &lib)]).expect("linking test plugins");
    dir
}

/// A `sluice` command running in `dir`, finding the built plugins and the
/// test plugins.
pub fn cmd(dir: &Path) -> Command {
    let mut c = Command::new(sluice());
    let plugin_dirs =
        std::env::join_paths([test_plugin_dir(), target_dir()]).expect("plugin directories");
    c.current_dir(dir)
        .env("SLUICE_PLUGIN_DIR", plugin_dirs)
        .env_remove("SLUICE_LOG")
        .env_remove("RUST_LOG");
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

/// Runs the conformance kit, `sluice plugin check LIB --config CONFIG`, in
/// `dir`: (passed, stdout and stderr).
pub fn plugin_check(dir: &Path, lib: &Path, config: &str) -> (bool, String) {
    let out = cmd(dir)
        .args(["plugin", "check"])
        .arg(lib)
        .args(["--config", config])
        .output()
        .expect("running sluice plugin check");
    let (o, e) = text(&out);
    (out.status.success(), format!("{o}{e}"))
}

/// The conformance kit passes `lib` (`name` in messages) with `config`:
/// exit 0, no check failed, and every check of `must` (e.g. `"verify"`)
/// printed as passed, with the kit's output on failure.
pub fn assert_conformant(dir: &Path, name: &str, lib: &Path, config: &str, must: &[&str]) {
    let (ok, out) = plugin_check(dir, lib, config);
    assert!(ok, "{name}:\n{out}");
    assert!(out.contains(" 0 failed"), "{name}:\n{out}");
    for m in must {
        assert!(
            out.contains(&format!("PASS  {m}")),
            "{name}: no `PASS  {m}` in\n{out}"
        );
    }
}

/// The conformance kit passes the built sink plugin of kind `name`
/// (`target/<profile>/libsluice_sink_<name>.so`) with `config`, including
/// every check of a plugin that delivers to a vendor.
pub fn assert_vendor_conformant(dir: &Path, name: &str, config: &str) {
    let lib = target_dir().join(format!("libsluice_sink_{name}.so"));
    assert_conformant(dir, name, &lib, config, VENDOR_KIT_CHECKS);
}

/// The conformance kit's checks a plugin delivering to a vendor must pass
/// (records to the vendor's server, the test event included).
const VENDOR_KIT_CHECKS: &[&str] = &[
    "load",
    "bad config",
    "full batch",
    "record at the limit",
    "concurrent sends",
    "verify",
];

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

/// The whole lines of an NDJSON file (those ending with a newline) as
/// values: what a test may read while a sink is still appending (empty if
/// missing).
pub fn read_whole_ndjson(path: &Path) -> Vec<serde_json::Value> {
    let b = std::fs::read(path).unwrap_or_default();
    let end = b.iter().rposition(|c| *c == b'\n').map_or(0, |i| i + 1);
    String::from_utf8_lossy(&b[..end])
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// Waits up to `within` until `path` has `n` whole lines; returns them.
pub fn wait_for_lines(
    path: &Path,
    n: usize,
    within: std::time::Duration,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let v = read_whole_ndjson(path);
        if v.len() >= n || std::time::Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
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

/// A running `sluice serve` on a free loopback port, stopped when dropped,
/// with what a test needs to call it: its key, account and ingest token,
/// kept across restarts.
pub struct Server {
    /// The process.
    pub process: serve::ServeProcess,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The operator's listener (`--metrics-addr`), `http://127.0.0.1:PORT`.
    pub metrics_url: String,
    /// The data directory.
    pub data_dir: std::path::PathBuf,
    /// The API key printed on first start (empty on later starts).
    pub key: String,
    /// The account created on first start.
    pub account: String,
    /// The ingest token.
    pub ingest_token: String,
    /// Everything the server printed on stdout so far, across restarts.
    pub stdout: std::sync::Arc<std::sync::Mutex<String>>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    /// Start with [`TEST_OPERATOR`]'s policy (most tests) or the defaults.
    permissive: bool,
}

/// The operator's policy most tests run under: destinations on loopback
/// (the tests' receivers), the test plugins offered, generous limits. The
/// adversarial tests start with the defaults ([`Server::start_default_policy`]).
pub const TEST_OPERATOR: &[&str] = &[
    "--tenant-allow-private-destinations",
    "--tenant-plugin-kinds",
    "kinesis,firehose,cloudwatch_logs,datadog,azure_logs_ingestion,http,file,blackhole,faulty",
    "--tenant-writes-per-minute",
    "100000",
    "--tenant-test-events-per-minute",
    "10000",
];

impl Server {
    /// `POST path` with a JSON body to the API, as the official clients do
    /// (the API key, `ngrok-version: 2`): (status, JSON answer).
    pub fn api_post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}{path}", self.url))
            .header("authorization", format!("Bearer {}", self.key))
            .header("ngrok-version", "2")
            .json(body)
            .send()
            .expect("the API answers");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(serde_json::Value::Null))
    }

    /// `GET path` of the API with the key: (status, JSON answer).
    pub fn api_get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = reqwest::blocking::Client::new()
            .get(format!("{}{path}", self.url))
            .header("authorization", format!("Bearer {}", self.key))
            .header("ngrok-version", "2")
            .send()
            .expect("the API answers");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(serde_json::Value::Null))
    }

    /// `POST /ingest` of `body` with the ingest token: (status, report).
    pub fn ingest(&self, body: &str) -> (u16, serde_json::Value) {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/ingest", self.url))
            .header("authorization", format!("Bearer {}", self.ingest_token))
            .body(body.to_string())
            .send()
            .expect("ingest answers");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(serde_json::Value::Null))
    }

    /// Starts a server on `data_dir` (created empty if missing).
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Server {
        Server::start_with_env(data_dir, extra_args, &[])
    }

    /// Starts a server under the default operator policy (no test plugins,
    /// no private addresses, default quotas), plus `extra_args`.
    pub fn start_default_policy(data_dir: &Path, extra_args: &[&str]) -> Server {
        Server::launch(data_dir, extra_args, &[], false)
    }

    /// Starts a server with these environment variables set.
    pub fn start_with_env(data_dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::launch(data_dir, extra_args, env, true)
    }

    fn launch(
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
        permissive: bool,
    ) -> Server {
        let mut s = Server {
            process: serve::ServeProcess {
                child: None,
                url: String::new(),
                metrics_url: String::new(),
                first_account: None,
                new_ingest_token: None,
                stdout: Default::default(),
            },
            url: String::new(),
            metrics_url: String::new(),
            data_dir: data_dir.to_path_buf(),
            key: String::new(),
            account: String::new(),
            ingest_token: String::new(),
            stdout: Default::default(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            permissive,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut c = cmd(self.data_dir.parent().unwrap_or(Path::new("/")));
        c.args(["serve", "--data-dir"])
            .arg(&self.data_dir)
            .args(if self.permissive { TEST_OPERATOR } else { &[] })
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stderr(std::process::Stdio::inherit());
        let p = serve::ServeProcess::start_logging_to(
            c,
            std::time::Duration::from_secs(30),
            self.stdout.clone(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        if let Some((account, key)) = &p.first_account {
            self.account = account.clone();
            self.key = key.clone();
        }
        if let Some(t) = &p.new_ingest_token {
            self.ingest_token = t.clone();
        }
        self.url = p.url.clone();
        self.metrics_url = p.metrics_url.clone();
        self.process = p;
    }

    /// Stops the server with SIGTERM and waits for it (it drains the engine).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.process
            .stop(std::time::Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts again after the process was killed (`process.child` taken and
    /// reaped); the key, account and ingest token are kept.
    pub fn restart_after_kill(&mut self) {
        self.spawn();
    }

    /// Stops and starts again on the same data directory.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(status.success(), "sluice serve exited with {status}");
        self.restart_after_kill();
    }
}

/// Waits for a child to exit, calling `tick` meanwhile; returns (success,
/// stderr). Panics after `timeout`.
pub fn wait_exit(
    child: &mut KillOnDrop,
    timeout: std::time::Duration,
    mut tick: impl FnMut(),
) -> (bool, String) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(st) = child.0.try_wait().expect("wait") {
            let mut err = String::new();
            if let Some(e) = child.0.stderr.as_mut() {
                let _ = std::io::Read::read_to_string(e, &mut err);
            }
            return (st.success(), err);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the process did not finish in {timeout:?}"
        );
        tick();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
