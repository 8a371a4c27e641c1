//! A `sluice serve` process on free loopback ports: started, read back from
//! what it prints at start (its listeners, a first-start key, a new ingest
//! token), stopped with SIGTERM, killed if dropped. The end-to-end suites
//! (through `Server`) and `sluice bench`'s HTTP and API harnesses use it.

use std::io::BufRead;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `sluice serve`.
pub struct ServeProcess {
    /// The process (taken by a test that kills it itself).
    pub child: Option<Child>,
    /// The public listener, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The operator's listener (`--metrics-addr`), `http://127.0.0.1:PORT`.
    pub metrics_url: String,
    /// The account and API key it created, on the first start of an empty
    /// data directory.
    pub first_account: Option<(String, String)>,
    /// The ingest token it made and printed, when none was given or stored.
    pub new_ingest_token: Option<String>,
    /// Everything it printed on stdout so far.
    pub stdout: Arc<Mutex<String>>,
}

impl ServeProcess {
    /// Starts `sluice`, a command whose arguments so far are `serve` and the
    /// caller's (data directory, policy), on free loopback ports (`--listen`
    /// and `--metrics-addr`), and waits up to `timeout` for it to listen.
    /// Its stderr goes where `sluice`'s is set to go (inherited by default).
    pub fn start(sluice: Command, timeout: Duration) -> Result<ServeProcess, String> {
        ServeProcess::start_logging_to(sluice, timeout, Arc::default())
    }

    /// [`ServeProcess::start`], appending what it prints to `stdout` (a
    /// buffer that may outlive it, across restarts).
    pub fn start_logging_to(
        mut sluice: Command,
        timeout: Duration,
        stdout: Arc<Mutex<String>>,
    ) -> Result<ServeProcess, String> {
        let mut child = sluice
            .args(["--listen", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting sluice serve: {e}"))?;
        let out = child.stdout.take().ok_or("sluice serve has no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let buf = stdout.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                buf.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let mut p = ServeProcess {
            child: Some(child),
            url: String::new(),
            metrics_url: String::new(),
            first_account: None,
            new_ingest_token: None,
            stdout,
        };
        let deadline = Instant::now() + timeout;
        let mut prev = String::new();
        loop {
            let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            else {
                return Err(format!(
                    "sluice serve did not start within {timeout:?}; it printed:\n{}",
                    p.stdout.lock().unwrap_or_else(|e| e.into_inner())
                ));
            };
            if let Some(rest) = prev.split("created account ").nth(1) {
                let account = rest.split_whitespace().next().unwrap_or("").to_string();
                p.first_account = Some((account, line.trim().to_string()));
            }
            if let Some(t) = line.split("Bearer ...): ").nth(1) {
                p.new_ingest_token = Some(t.trim().to_string());
            }
            if let Some(u) = line.strip_prefix("sluice serve: metrics on ") {
                p.metrics_url = u.trim().trim_end_matches("/metrics").to_string();
            }
            if let Some(u) = line.strip_prefix("sluice serve: listening on ") {
                p.url = u.trim().to_string();
                return Ok(p);
            }
            prev = line;
        }
    }

    /// Its process id (0 once the child was taken).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Stops it with SIGTERM (it drains the engine) and waits up to
    /// `timeout`; kills it after that.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let mut c = self.child.take().ok_or("sluice serve is not running")?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = c.try_wait().map_err(|e| e.to_string())? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return Err(format!(
                    "sluice serve did not stop within {timeout:?} of SIGTERM"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
