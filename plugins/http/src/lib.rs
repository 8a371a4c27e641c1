//! `http`: POSTs each batch of records to a URL, as NDJSON (default) or a
//! JSON array, optionally gzipped, with extra headers. Useful on its own as a
//! webhook or collector destination; see `plugins/http/README.md` for the
//! status-code mapping and the partial-success response it understands.

use sluice_sdk::{Batch, Error, Host, Level, Limits, Outcomes, Sink, SinkInfo};
use std::time::Duration;

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "http sink",
  "type": "object",
  "required": ["url"],
  "properties": {
    "url": {"type": "string", "description": "http:// or https:// URL the batches are POSTed to"},
    "encoding": {"enum": ["ndjson", "json_array"], "default": "ndjson"},
    "gzip": {"type": "boolean", "default": false, "description": "compress bodies (Content-Encoding: gzip)"},
    "headers": {"type": "object", "additionalProperties": {"type": "string"}, "description": "extra request headers (e.g. Authorization); never logged"},
    "timeout_ms": {"type": "integer", "minimum": 1, "default": 30000, "description": "whole-request timeout"}
  },
  "additionalProperties": false
}"#;

/// How records are laid out in a request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// One record per line (`application/x-ndjson`).
    Ndjson,
    /// One JSON array of records (`application/json`).
    JsonArray,
}

/// The configuration, checked.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to POST.
    pub url: String,
    /// Body layout.
    pub encoding: Encoding,
    /// Gzip bodies.
    pub gzip: bool,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Request timeout.
    pub timeout: Duration,
}

impl Config {
    /// Parses and checks a JSON configuration; the error names the key.
    pub fn parse(config: &str) -> Result<Config, String> {
        let v: serde_json::Value =
            serde_json::from_str(config).map_err(|e| format!("configuration is not JSON: {e}"))?;
        let obj = v.as_object().ok_or("configuration must be a JSON object")?;
        let mut c = Config {
            url: String::new(),
            encoding: Encoding::Ndjson,
            gzip: false,
            headers: Vec::new(),
            timeout: Duration::from_secs(30),
        };
        for (k, val) in obj {
            match k.as_str() {
                "url" => {
                    let u = val.as_str().ok_or("`url` must be a string")?;
                    let rest = u
                        .strip_prefix("http://")
                        .or_else(|| u.strip_prefix("https://"))
                        .ok_or_else(|| {
                            format!("`url` must start with http:// or https://, got `{u}`")
                        })?;
                    if rest.is_empty() || rest.starts_with('/') {
                        return Err(format!("`url` has no host: `{u}`"));
                    }
                    c.url = u.to_string();
                }
                "encoding" => {
                    c.encoding = match val.as_str() {
                        Some("ndjson") => Encoding::Ndjson,
                        Some("json_array") => Encoding::JsonArray,
                        _ => {
                            return Err(format!(
                                "`encoding` must be \"ndjson\" or \"json_array\", got {val}"
                            ));
                        }
                    }
                }
                "gzip" => c.gzip = val.as_bool().ok_or("`gzip` must be true or false")?,
                "headers" => {
                    let h = val
                        .as_object()
                        .ok_or("`headers` must be an object of strings")?;
                    for (name, value) in h {
                        let value = value
                            .as_str()
                            .ok_or_else(|| format!("header `{name}` must be a string"))?;
                        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                            return Err(format!("`{name}` is not a valid header name"));
                        }
                        if reqwest::header::HeaderValue::from_str(value).is_err() {
                            return Err(format!("the value of header `{name}` is not valid"));
                        }
                        let lower = name.to_ascii_lowercase();
                        if lower == "content-length"
                            || lower == "content-encoding"
                            || lower == "host"
                        {
                            return Err(format!(
                                "header `{name}` is set by the sink and cannot be configured"
                            ));
                        }
                        c.headers.push((name.clone(), value.to_string()));
                    }
                }
                "timeout_ms" => {
                    let ms = val
                        .as_u64()
                        .filter(|ms| *ms > 0)
                        .ok_or("`timeout_ms` must be a positive integer")?;
                    c.timeout = Duration::from_millis(ms);
                }
                other => {
                    return Err(format!(
                        "unknown configuration key `{other}` (known: url, encoding, gzip, headers, timeout_ms)"
                    ));
                }
            }
        }
        if c.url.is_empty() {
            return Err("`url` is required".into());
        }
        Ok(c)
    }
}

/// The http sink.
pub struct HttpSink {
    cfg: Config,
    client: reqwest::blocking::Client,
    host: Host,
}

impl HttpSink {
    /// POSTs `raw` (gzipped if configured): status, `Retry-After`, body. A
    /// transport failure is a retryable error.
    fn post(&self, raw: Vec<u8>) -> Result<(u16, Option<String>, Vec<u8>), Error> {
        let payload = if self.cfg.gzip {
            sluice_vendor_http::gzip(&raw).map_err(|e| Error::retry(format!("http: {e}")))?
        } else {
            raw
        };
        let content_type = match self.cfg.encoding {
            Encoding::Ndjson => "application/x-ndjson",
            Encoding::JsonArray => "application/json",
        };
        let mut req = self
            .client
            .post(&self.cfg.url)
            .header(reqwest::header::CONTENT_TYPE, content_type);
        if self.cfg.gzip {
            req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        for (k, v) in &self.cfg.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        self.host.counter_add("requests", 1);
        self.host.counter_add("request_bytes", payload.len() as u64);
        let resp = req.body(payload).send().map_err(|e| {
            self.host.counter_add("transport_errors", 1);
            // No response: the batch may or may not have arrived; retry it.
            Error::retry(if e.is_timeout() {
                format!("http: no response within {:?}", self.cfg.timeout)
            } else if e.is_connect() {
                format!("http: cannot connect: {}", sluice_vendor_http::describe(&e))
            } else {
                format!("http: request failed: {}", sluice_vendor_http::describe(&e))
            })
        })?;
        let status = resp.status().as_u16();
        self.host
            .counter_add(&format!("responses_{}xx", status / 100), 1);
        let after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok((status, after, sluice_vendor_http::read_capped(resp)))
    }
}

/// The body of a batch (before compression).
pub fn body(encoding: Encoding, batch: &Batch<'_>) -> Vec<u8> {
    let size: usize = batch.iter().map(|r| r.data().len() + 1).sum();
    let mut b = Vec::with_capacity(size + 2);
    match encoding {
        Encoding::Ndjson => {
            for r in batch.iter() {
                b.extend_from_slice(r.data());
                b.push(b'\n');
            }
        }
        Encoding::JsonArray => {
            b.push(b'[');
            for (i, r) in batch.iter().enumerate() {
                if i > 0 {
                    b.push(b',');
                }
                b.extend_from_slice(r.data());
            }
            b.push(b']');
        }
    }
    b
}

/// `Retry-After`: seconds, or an HTTP date.
pub use sluice_vendor_http::retry_after;

/// What a response means for every record of the batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every record delivered, except those listed: (index, reason).
    Delivered {
        /// Records to retry.
        retry: Vec<(usize, String)>,
        /// Records refused.
        rejected: Vec<(usize, String)>,
    },
    /// Every record to be retried, not before the delay if given.
    RetryAll(Option<Duration>, String),
    /// Every record refused.
    RejectAll(String),
}

/// Maps a response to a verdict: 2xx delivered (a JSON body may list records
/// to retry or reject), 408/425/429/5xx retried (honouring `Retry-After`),
/// any other status rejected.
pub fn classify(status: u16, retry_after_header: Option<&str>, body: &[u8], n: usize) -> Verdict {
    let snippet = || {
        let s = String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_string();
        if s.is_empty() {
            String::new()
        } else {
            format!(": {s}")
        }
    };
    match status {
        200..=299 => {
            let mut retry = Vec::new();
            let mut rejected = Vec::new();
            if let Ok(serde_json::Value::Object(o)) =
                serde_json::from_slice::<serde_json::Value>(body)
            {
                let list = |key: &str, out: &mut Vec<(usize, String)>, default: &str| {
                    for item in o.get(key).and_then(|v| v.as_array()).into_iter().flatten() {
                        let (i, reason) = match item {
                            serde_json::Value::Number(n) => (n.as_u64(), default.to_string()),
                            serde_json::Value::Object(m) => (
                                m.get("index").and_then(|v| v.as_u64()),
                                m.get("reason")
                                    .and_then(|v| v.as_str())
                                    .unwrap_or(default)
                                    .to_string(),
                            ),
                            _ => (None, String::new()),
                        };
                        if let Some(i) = i.map(|i| i as usize).filter(|i| *i < n) {
                            out.push((i, reason));
                        }
                    }
                };
                list(
                    "retry",
                    &mut retry,
                    "the receiver asked to retry this record",
                );
                list(
                    "rejected",
                    &mut rejected,
                    "the receiver rejected this record",
                );
            }
            Verdict::Delivered { retry, rejected }
        }
        408 | 425 | 429 | 500..=599 => Verdict::RetryAll(
            retry_after_header.and_then(retry_after),
            format!("HTTP {status}{}", snippet()),
        ),
        413 => Verdict::RejectAll(format!(
            "HTTP 413 (payload too large){}; lower delivery.batch_max_bytes",
            snippet()
        )),
        _ => Verdict::RejectAll(format!("HTTP {status}{}", snippet())),
    }
}

impl Sink for HttpSink {
    fn info() -> SinkInfo {
        SinkInfo {
            kind: "http",
            version: env!("CARGO_PKG_VERSION"),
            description: "POSTs batches of records to an HTTP endpoint (NDJSON or JSON array, optional gzip)",
            config_schema: SCHEMA,
            limits: Limits {
                max_records: 1000,
                record_overhead_bytes: 1,
                max_batch_bytes: 10 << 20,
                max_record_bytes: 10 << 20,
            },
            thread_safe: true,
            ordered: false,
        }
    }

    fn create(config: &str, host: Host) -> Result<Self, Error> {
        let mut cfg = Config::parse(config).map_err(|e| Error::fatal(format!("http: {e}")))?;
        let restrictions = host.restrictions();
        sluice_vendor_http::check_url("`url`", &cfg.url, restrictions)
            .map_err(|e| Error::fatal(format!("http: {e}")))?;
        cfg.timeout = restrictions.timeout(cfg.timeout);
        let client = sluice_vendor_http::egress::builder(cfg.timeout, restrictions)
            .pool_max_idle_per_host(64)
            .user_agent(concat!("sluice-sink-http/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::fatal(format!("http: cannot build the client: {e}")))?;
        Ok(HttpSink { cfg, client, host })
    }

    const HAS_VERIFY: bool = true;

    /// POSTs one test event (`{"event_type":"test",...}`, the shape every
    /// Sluice sink sends) the way batches are sent; any answer but 2xx is an
    /// error with the status (retryable for 408, 429 and 5xx).
    fn verify(&self) -> Result<(), Error> {
        let event = sluice_sdk::events::test_event(&self.host.destination_id());
        let body = match self.cfg.encoding {
            Encoding::Ndjson => format!("{event}\n"),
            Encoding::JsonArray => format!("[{event}]"),
        };
        let (status, _, text) = self.post(body.into_bytes())?;
        let msg = || {
            format!(
                "http: the test event was answered {status}: {}",
                String::from_utf8_lossy(&text[..text.len().min(200)])
            )
        };
        match status {
            200..=299 => Ok(()),
            // Throttled or down: try again later, not a refusal.
            408 | 429 | 500..=599 => Err(Error::retry(msg())),
            _ => Err(Error::fatal(msg())),
        }
    }

    fn send(&self, batch: &Batch<'_>, outcomes: &mut Outcomes<'_>) -> Result<(), Error> {
        let raw = body(self.cfg.encoding, batch);
        let (status, after, body) = self.post(raw)?;
        match classify(status, after.as_deref(), &body, batch.len()) {
            Verdict::Delivered { retry, rejected } => {
                outcomes.all_ok();
                for (i, reason) in &retry {
                    outcomes.retry(*i, None, reason);
                }
                for (i, reason) in &rejected {
                    outcomes.reject(*i, reason);
                }
                if !retry.is_empty() || !rejected.is_empty() {
                    self.host.counter_add("partial_responses", 1);
                }
            }
            Verdict::RetryAll(after, why) => {
                if status == 429 {
                    self.host.counter_add("throttled", 1);
                }
                for i in 0..batch.len() {
                    outcomes.retry(i, after, &why);
                }
            }
            Verdict::RejectAll(why) => {
                self.host.log(
                    Level::Warn,
                    &format!("http: batch of {} rejected: {why}", batch.len()),
                );
                for i in 0..batch.len() {
                    outcomes.reject(i, &why);
                }
            }
        }
        Ok(())
    }
}

sluice_sdk::export_sink!(HttpSink);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_checked_and_errors_name_the_key() {
        let c = Config::parse(r#"{"url":"https://example.test/in","encoding":"json_array","gzip":true,"headers":{"Authorization":"Bearer x"},"timeout_ms":500}"#).unwrap();
        assert_eq!(c.encoding, Encoding::JsonArray);
        assert!(c.gzip);
        assert_eq!(c.timeout, Duration::from_millis(500));
        for (cfg, want) in [
            (r#"{}"#, "`url` is required"),
            (r#"{"url":"ftp://x"}"#, "http:// or https://"),
            (r#"{"url":"http://"}"#, "no host"),
            (r#"{"url":"http://x","encoding":"xml"}"#, "`encoding`"),
            (r#"{"url":"http://x","gzip":"yes"}"#, "`gzip`"),
            (
                r#"{"url":"http://x","headers":{"Content-Length":"1"}}"#,
                "set by the sink",
            ),
            (
                r#"{"url":"http://x","headers":{"bad name":"1"}}"#,
                "not a valid header name",
            ),
            (r#"{"url":"http://x","timeout_ms":0}"#, "`timeout_ms`"),
            (
                r#"{"url":"http://x","verb":"PUT"}"#,
                "unknown configuration key `verb`",
            ),
            (r#"[1]"#, "JSON object"),
        ] {
            let e = Config::parse(cfg).unwrap_err();
            assert!(e.contains(want), "{cfg}: {e}");
        }
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(
            classify(200, None, b"", 3),
            Verdict::Delivered {
                retry: vec![],
                rejected: vec![]
            }
        );
        assert_eq!(
            classify(207, None, br#"{"retry":[1,{"index":2,"reason":"busy"}],"rejected":[{"index":0,"reason":"schema"}, 9]}"#, 3),
            Verdict::Delivered {
                retry: vec![(1, "the receiver asked to retry this record".into()), (2, "busy".into())],
                rejected: vec![(0, "schema".into())],
            }
        );
        assert_eq!(
            classify(429, Some("7"), b"", 1),
            Verdict::RetryAll(Some(Duration::from_secs(7)), "HTTP 429".into())
        );
        assert!(
            matches!(classify(503, None, b"down", 1), Verdict::RetryAll(None, w) if w == "HTTP 503: down")
        );
        assert!(matches!(classify(408, None, b"", 1), Verdict::RetryAll(..)));
        assert!(
            matches!(classify(400, None, b"bad", 1), Verdict::RejectAll(w) if w == "HTTP 400: bad")
        );
        assert!(
            matches!(classify(413, None, b"", 1), Verdict::RejectAll(w) if w.contains("batch_max_bytes"))
        );
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let d = retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        assert_eq!(retry_after("soon"), None);
    }
}
