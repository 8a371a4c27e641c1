//! A real browser for the console's tests: Debian's Chromium, headless,
//! driven through ChromeDriver over the W3C WebDriver protocol (plain JSON
//! over HTTP on loopback: a session, navigation, elements found by CSS,
//! clicks, keys, scripts, screenshots). `scripts/test` installs both.

use crate::{KillOnDrop, free_port};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium session, ended (and the driver stopped) when dropped.
pub struct Browser {
    _driver: KillOnDrop,
    base: String,
    http: reqwest::blocking::Client,
    _profile: tempfile::TempDir,
}

/// Where the console tests keep their screenshots: `target/console-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target"));
    target.join("console-screenshots")
}

impl Browser {
    /// Starts ChromeDriver on a free loopback port and a headless Chromium
    /// session with a window of `width` × `height`.
    pub fn start(width: u32, height: u32) -> Browser {
        for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: run scripts/test, which installs Debian's chromium and chromium-driver"
            );
        }
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = KillOnDrop(driver);
        let profile = tempfile::tempdir().expect("a profile directory");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client");
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{root}/status")).send().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--user-data-dir={}", profile.path().display()),
            format!("--window-size={width},{height}"),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let r: Value = http
            .post(format!("{root}/session"))
            .json(&caps)
            .send()
            .and_then(|r| r.json())
            .expect("a WebDriver session");
        let id = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_string();
        Browser {
            _driver: driver,
            base: format!("{root}/session/{id}"),
            http,
            _profile: profile,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// A WebDriver command, or its error (e.g. a stale element: the page
    /// re-rendered it).
    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or(json!({}))),
        };
        let r: Value = req
            .send()
            .and_then(|r| r.json())
            .expect("WebDriver answers");
        match r["value"].get("error") {
            Some(e) => Err(format!("{e}: {}", r["value"]["message"])),
            None => Ok(r["value"].clone()),
        }
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Sets the window size.
    pub fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        );
    }

    /// The elements matching `css` now.
    pub fn all(&self, css: &str) -> Vec<String> {
        let v = self.call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first element matching `css`, waiting up to 10 s for it.
    pub fn find(&self, css: &str) -> String {
        self.wait(&format!("an element {css}"), || {
            self.all(css).into_iter().next()
        })
    }

    /// Polls `f` every 50 ms for up to 15 s.
    pub fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Clicks the first element matching `css`.
    pub fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), None);
    }

    /// Types `text` into the first element matching `css` (after clearing
    /// it when `clear`).
    pub fn type_into(&self, css: &str, text: &str, clear: bool) {
        let e = self.find(css);
        if clear {
            self.call("POST", &format!("/element/{e}/clear"), None);
        }
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// The visible text of the first element matching `css`.
    pub fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/text"), None)
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Waits until the text of `css` contains `want`; returns it.
    pub fn wait_text(&self, css: &str, want: &str) -> String {
        self.wait(&format!("{css} to say {want:?}"), || {
            let e = self.all(css).into_iter().next()?;
            // A page that re-renders may replace it meanwhile: look again.
            let t = self
                .try_call("GET", &format!("/element/{e}/text"), None)
                .ok()?;
            let t = t.as_str().unwrap_or("").to_string();
            t.contains(want).then_some(t)
        })
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub fn run(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Runs `script` asynchronously: its last argument is a callback the
    /// script calls with its result (within 30 s).
    pub fn run_async(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/async",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Saves a PNG of the window as `<screenshot_dir>/<name>.png`.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine as _;
        let v = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .expect("a base64 screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("the screenshot is written");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.base).send();
    }
}
