//! `datadog`: delivers records to Datadog Logs through the HTTP intake v2
//! (`POST https://http-intake.logs.<site>/api/v2/logs`), gzipped JSON
//! arrays of log entries: `ddsource: ngrok`, the configured `service` and
//! `ddtags`, and the event's fields as the entry's attributes. See
//! `plugins/datadog/README.md`.

use sluice_sdk::{Batch, Error, Host, Limits, Outcomes, Sink, SinkInfo};
use sluice_vendor_http::{
    Verdict, array_body, client, deliver, json_str, post, test_event_array, test_event_result,
    timeout_ms, verdict,
};
use std::time::Duration;

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "datadog sink",
  "type": "object",
  "required": ["api_key"],
  "properties": {
    "api_key": {"type": "string", "description": "Datadog API key (DD-API-KEY); never logged"},
    "ddsite": {"enum": ["datadoghq.com", "us3.datadoghq.com", "us5.datadoghq.com", "datadoghq.eu", "ap1.datadoghq.com", "ap2.datadoghq.com", "ddog-gov.com", "us2.ddog-gov.com"], "default": "datadoghq.com"},
    "service": {"type": "string", "description": "the entries' service attribute"},
    "ddtags": {"type": "string", "description": "tags added to every entry, comma-separated k:v"},
    "intake_url": {"type": "string", "description": "POST here instead of the site's intake (tests, proxies); default: $SLUICE_DATADOG_INTAKE_URL if set"},
    "timeout_ms": {"type": "integer", "minimum": 1, "default": 30000}
  },
  "additionalProperties": false
}"#;

/// The environment variable that replaces the site's intake URL when the
/// configuration has no `intake_url`.
pub const INTAKE_ENV: &str = "SLUICE_DATADOG_INTAKE_URL";

/// The Datadog sites (the SITE column of Datadog's documentation).
pub const SITES: [&str; 8] = [
    "datadoghq.com",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "datadoghq.eu",
    "ap1.datadoghq.com",
    "ap2.datadoghq.com",
    "ddog-gov.com",
    "us2.ddog-gov.com",
];

/// The most bytes the spliced attributes (`ddsource`, `service`, `ddtags`,
/// as JSON) may take: they count against every entry's size and are
/// covered by the declared per-record overhead (1,024).
const MAX_ATTRS: usize = 900;

/// The configuration, checked.
#[derive(Clone, Debug)]
pub struct Config {
    /// DD-API-KEY.
    pub api_key: String,
    /// Where to POST.
    pub url: String,
    /// `"ddsource":"ngrok","service":...,"ddtags":...,` ready to splice.
    pub prefix: Vec<u8>,
    /// Request timeout.
    pub timeout: Duration,
}

impl Config {
    /// Parses a configuration; errors name the key.
    pub fn parse(config: &str) -> Result<Config, String> {
        let v: serde_json::Value =
            serde_json::from_str(config).map_err(|e| format!("configuration is not JSON: {e}"))?;
        let obj = v.as_object().ok_or("configuration must be a JSON object")?;
        let text = |k: &str| -> Result<Option<String>, String> {
            match obj.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("`{k}` must be a string")),
            }
        };
        for k in obj.keys() {
            if ![
                "api_key",
                "ddsite",
                "service",
                "ddtags",
                "intake_url",
                "timeout_ms",
            ]
            .contains(&k.as_str())
            {
                return Err(format!(
                    "unknown configuration key `{k}` (known: api_key, ddsite, service, ddtags, intake_url, timeout_ms)"
                ));
            }
        }
        let api_key = text("api_key")?
            .filter(|k| !k.trim().is_empty())
            .ok_or("`api_key` is required")?;
        let site = text("ddsite")?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| SITES[0].to_string());
        if !SITES.contains(&site.as_str()) {
            return Err(format!(
                "`ddsite` must be one of {} (got `{site}`)",
                SITES.join(", ")
            ));
        }
        let url = match text("intake_url")? {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => u,
            Some(u) => {
                return Err(format!(
                    "`intake_url` must start with http:// or https://, got `{u}`"
                ));
            }
            // The operator's override (`sluice serve`, whose tenants cannot
            // set `intake_url`): egress proxies, tests.
            None => match std::env::var(INTAKE_ENV) {
                Ok(u) if u.starts_with("http://") || u.starts_with("https://") => u,
                Ok(u) if !u.is_empty() => {
                    return Err(format!(
                        "{INTAKE_ENV} must start with http:// or https://, got `{u}`"
                    ));
                }
                _ => format!("https://http-intake.logs.{site}/api/v2/logs"),
            },
        };
        let service = text("service")?.filter(|s| !s.is_empty());
        let tags = text("ddtags")?.filter(|s| !s.is_empty());
        let mut prefix = b"\"ddsource\":\"ngrok\",".to_vec();
        if let Some(s) = &service {
            prefix.extend_from_slice(b"\"service\":");
            json_str(&mut prefix, s);
            prefix.push(b',');
        }
        if let Some(t) = &tags {
            prefix.extend_from_slice(b"\"ddtags\":");
            json_str(&mut prefix, t);
            prefix.push(b',');
        }
        if prefix.len() > MAX_ATTRS {
            return Err(format!(
                "`service` and `ddtags` together must take at most {MAX_ATTRS} bytes as JSON (they take {})",
                prefix.len()
            ));
        }
        let timeout = timeout_ms(obj)?;
        Ok(Config {
            api_key,
            url,
            prefix,
            timeout,
        })
    }
}

/// The datadog sink.
pub struct Datadog {
    cfg: Config,
    client: reqwest::blocking::Client,
    host: Host,
}

fn explain(status: u16, _body: &str) -> Option<String> {
    (status == 403).then(|| "check the API key and the site (ddsite)".to_string())
}

impl Datadog {
    fn send_indices(
        &self,
        batch: &Batch<'_>,
        idx: &[usize],
        outcomes: &mut Outcomes<'_>,
    ) -> Result<(), Error> {
        let mut body = Vec::new();
        let mut send = |part: &[usize]| -> Result<Verdict, Error> {
            array_body(batch, part, &mut body, |_, out| {
                out.extend_from_slice(&self.cfg.prefix)
            });
            self.host.counter_add("requests", 1);
            self.host
                .counter_add("request_bytes_uncompressed", body.len() as u64);
            let a = post(
                &self.client,
                &self.cfg.url,
                &[("DD-API-KEY", &self.cfg.api_key)],
                &body,
            )
            .map_err(|e| Error::retry(format!("datadog: {e}")))?;
            self.host
                .counter_add(&format!("responses_{}xx", a.status / 100), 1);
            Ok(verdict(&a, explain))
        };
        deliver("datadog", idx, outcomes, &mut send)
    }
}

impl Sink for Datadog {
    fn info() -> SinkInfo {
        SinkInfo {
            kind: "datadog",
            version: env!("CARGO_PKG_VERSION"),
            description: "Datadog Logs (HTTP intake v2, gzipped JSON arrays)",
            config_schema: SCHEMA,
            // The intake: 1,000 entries and 5 MB uncompressed per request,
            // 1 MB per entry. Each entry carries the spliced attributes
            // (ddsource, service, ddtags: at most ~1 KB) and a comma.
            limits: Limits {
                max_records: 1000,
                record_overhead_bytes: 1024,
                max_batch_bytes: 5_000_000,
                max_record_bytes: 1_000_000,
            },
            thread_safe: true,
            ordered: false,
        }
    }

    fn create(config: &str, host: Host) -> Result<Self, Error> {
        let cfg = Config::parse(config).map_err(|e| Error::fatal(format!("datadog: {e}")))?;
        let client = client("datadog", cfg.timeout)?;
        Ok(Datadog { cfg, client, host })
    }

    fn send(&self, batch: &Batch<'_>, outcomes: &mut Outcomes<'_>) -> Result<(), Error> {
        let idx: Vec<usize> = (0..batch.len()).collect();
        self.send_indices(batch, &idx, outcomes)
    }

    const HAS_VERIFY: bool = true;

    fn verify(&self) -> Result<(), Error> {
        let body = test_event_array(&self.host.destination_id(), &self.cfg.prefix);
        let answer = post(
            &self.client,
            &self.cfg.url,
            &[("DD-API-KEY", &self.cfg.api_key)],
            &body,
        )
        .map_err(Error::retry);
        test_event_result("datadog", answer, explain)
    }
}

sluice_sdk::export_sink!(Datadog);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_keys_and_urls() {
        let c = Config::parse(r#"{"api_key":"k","ddsite":"datadoghq.eu","service":"web","ddtags":"env:prod,team:\"x\""}"#).unwrap();
        assert_eq!(c.url, "https://http-intake.logs.datadoghq.eu/api/v2/logs");
        assert_eq!(
            String::from_utf8(c.prefix).unwrap(),
            r#""ddsource":"ngrok","service":"web","ddtags":"env:prod,team:\"x\"","#
        );
        assert_eq!(
            Config::parse(r#"{"api_key":"k"}"#).unwrap().url,
            "https://http-intake.logs.datadoghq.com/api/v2/logs"
        );
        for (cfg, want) in [
            (r#"{}"#, "`api_key` is required"),
            (
                r#"{"api_key":"k","ddsite":"US1"}"#,
                "`ddsite` must be one of",
            ),
            (
                r#"{"api_key":"k","ddsite":"datadoghq.com.evil"}"#,
                "`ddsite` must be one of",
            ),
            (r#"{"api_key":"k","intake_url":"ftp://x"}"#, "`intake_url`"),
            (
                r#"{"api_key":"k","hostname":"x"}"#,
                "unknown configuration key `hostname`",
            ),
        ] {
            assert!(Config::parse(cfg).unwrap_err().contains(want), "{cfg}");
        }
        for s in SITES {
            assert!(Config::parse(&format!(r#"{{"api_key":"k","ddsite":"{s}"}}"#)).is_ok());
        }
    }
}
