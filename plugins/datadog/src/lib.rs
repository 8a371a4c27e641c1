//! `datadog`: delivers records to Datadog Logs through the HTTP intake v2
//! (`POST https://http-intake.logs.<site>/api/v2/logs`), gzipped JSON
//! arrays of log entries: `ddsource: ngrok`, the configured `service` and
//! `ddtags`, `timestamp` (the event's time, which Datadog takes as the
//! entry's date), and the event's fields as the entry's attributes. Records
//! dated outside what Datadog keeps (more than 18 hours old, more than 2
//! hours ahead) are dead-lettered instead of sent. See
//! `plugins/datadog/README.md`.

use sluice_sdk::events::{now_ms, rfc3339_ms};
use sluice_sdk::{Batch, Error, Host, Limits, Outcomes, Restrictions, Sink, SinkInfo};
use sluice_vendor_http::{
    Verdict, array_body, client, deliver, json_str, post, test_event_array_at, test_event_result,
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
/// covered, with the date (`"timestamp":<ms>,`, at most 33 bytes) and the
/// comma between entries, by the declared per-record overhead (1,024).
const MAX_ATTRS: usize = 900;

/// How old an entry's date may be. Datadog's Log Date Remapper page
/// (docs.datadoghq.com/logs/log_configuration/processors/log_date_remapper,
/// "Notes"): "Log events can be submitted up to 18 hours in the past and two
/// hours in the future"; the Send Logs API page says the same of the past.
/// The intake answers 202 to an older entry and drops it: sending it would
/// lose it silently.
const MAX_AGE_MS: i64 = 18 * 3_600_000;

/// How far ahead of this node's clock an entry's date may be (same source).
const MAX_AHEAD_MS: i64 = 2 * 3_600_000;

/// Appends the entry's date, `"timestamp":<ms>,`: `timestamp` is the first
/// of Datadog's default date attributes (`timestamp`, `date`, `_timestamp`,
/// `Timestamp`, `eventTime`, `published_date`), and milliseconds since the
/// epoch one of the formats they take ("UNIX (the milliseconds EPOCH
/// format)"): no remapper, no time zone to guess. Records are the envelope
/// (`event_id`, `event_type`, `event_timestamp`, `account_id`, `principal`,
/// `object`), so their JSON has no top-level `timestamp` of its own to
/// clash with. Allocates nothing beyond `out`'s capacity.
pub fn push_date(out: &mut Vec<u8>, ms: i64) {
    out.extend_from_slice(b"\"timestamp\":");
    out.extend_from_slice(itoa::Buffer::new().format(ms).as_bytes());
    out.push(b',');
}

/// Why a record dated `ts` must not be sent at `now` (both in ms since the
/// epoch), if so: Datadog would not keep it.
pub fn out_of_range(ts: i64, now: i64) -> Option<String> {
    let when = || {
        let t = rfc3339_ms(ts);
        String::from_utf8_lossy(&t).into_owned()
    };
    if ts < now.saturating_sub(MAX_AGE_MS) {
        Some(format!(
            "datadog: event_timestamp {} is more than 18 hours in the past: Datadog would answer 202 and drop it",
            when()
        ))
    } else if ts > now.saturating_add(MAX_AHEAD_MS) {
        Some(format!(
            "datadog: event_timestamp {} is more than 2 hours in the future: Datadog takes entries dated at most 2 hours ahead",
            when()
        ))
    } else {
        None
    }
}

/// The configuration, checked.
#[derive(Clone, Debug)]
pub struct Config {
    /// DD-API-KEY.
    pub api_key: String,
    /// Where to POST.
    pub url: String,
    /// Who chose `url`.
    pub url_from: UrlFrom,
    /// `"ddsource":"ngrok","service":...,"ddtags":...,` ready to splice.
    pub prefix: Vec<u8>,
    /// Request timeout.
    pub timeout: Duration,
}

/// Who chose the intake URL: it decides whether the operator's egress
/// restriction applies to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlFrom {
    /// The site's public intake.
    Site,
    /// `intake_url` in the configuration (refused under restrictions: it is
    /// the operator's to set, not a tenant's).
    Config,
    /// The operator's `SLUICE_DATADOG_INTAKE_URL` (trusted, e.g. a loopback proxy).
    Operator,
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
        let (url, url_from) = match text("intake_url")? {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                (u, UrlFrom::Config)
            }
            Some(u) => {
                return Err(format!(
                    "`intake_url` must start with http:// or https://, got `{u}`"
                ));
            }
            // The operator's override (`sluice serve`, whose tenants cannot
            // set `intake_url`): egress proxies, tests.
            None => match std::env::var(INTAKE_ENV) {
                Ok(u) if u.starts_with("http://") || u.starts_with("https://") => {
                    (u, UrlFrom::Operator)
                }
                Ok(u) if !u.is_empty() => {
                    return Err(format!(
                        "{INTAKE_ENV} must start with http:// or https://, got `{u}`"
                    ));
                }
                _ => (
                    format!("https://http-intake.logs.{site}/api/v2/logs"),
                    UrlFrom::Site,
                ),
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
            url_from,
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
            array_body(batch, part, &mut body, |r, out| {
                out.extend_from_slice(&self.cfg.prefix);
                push_date(out, r.timestamp_ms());
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
            // (ddsource, service, ddtags, timestamp: at most ~1 KB) and a
            // comma.
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
        let mut restrictions = host.restrictions();
        match cfg.url_from {
            UrlFrom::Config if restrictions != Restrictions::default() => {
                return Err(Error::fatal(
                    "datadog: `intake_url` is set by the server's operator (SLUICE_DATADOG_INTAKE_URL), not in a destination",
                ));
            }
            // The operator's own endpoint is trusted wherever it is.
            UrlFrom::Operator => restrictions.public_egress_only = false,
            _ => {}
        }
        let client = client("datadog", cfg.timeout, restrictions)?;
        Ok(Datadog { cfg, client, host })
    }

    fn send(&self, batch: &Batch<'_>, outcomes: &mut Outcomes<'_>) -> Result<(), Error> {
        // Records Datadog would answer 202 and drop (or not take) are
        // dead-lettered with the reason, never sent.
        let now = now_ms();
        let mut idx: Vec<usize> = Vec::with_capacity(batch.len());
        let mut refused_early = 0u64;
        for (i, r) in batch.iter().enumerate() {
            match out_of_range(r.timestamp_ms(), now) {
                Some(why) => {
                    outcomes.reject(i, &why);
                    refused_early += 1;
                }
                None => idx.push(i),
            }
        }
        if refused_early > 0 {
            self.host.counter_add("events_out_of_range", refused_early);
        }
        match self.send_indices(batch, &idx, outcomes) {
            // The intake could not be reached: a failed call would have the
            // engine retry every record, the refused ones too, so the others
            // are retried one by one and the refusals stand.
            Err(e) if refused_early > 0 => {
                idx.iter()
                    .for_each(|&i| outcomes.retry(i, None, e.message()));
                Ok(())
            }
            r => r,
        }
    }

    const HAS_VERIFY: bool = true;

    fn verify(&self) -> Result<(), Error> {
        // Dated like any entry: `timestamp` is the test event's own time.
        let now = now_ms();
        let mut prefix = self.cfg.prefix.clone();
        push_date(&mut prefix, now);
        let body = test_event_array_at(&self.host.destination_id(), now, &prefix);
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

    #[test]
    fn dates_are_epoch_milliseconds() {
        for (ms, want) in [
            (1_793_491_200_123, r#""timestamp":1793491200123,"#),
            (0, r#""timestamp":0,"#),
            (-5, r#""timestamp":-5,"#),
            (i64::MAX, r#""timestamp":9223372036854775807,"#),
            (i64::MIN, r#""timestamp":-9223372036854775808,"#),
        ] {
            let mut out = Vec::new();
            push_date(&mut out, ms);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
        // At most the 33 bytes the per-record overhead counts on.
        let mut out = Vec::new();
        push_date(&mut out, i64::MIN);
        assert!(out.len() <= 33, "{}", out.len());
        // ddsource/service/ddtags, the date and the comma between entries.
        let overhead = Datadog::info().limits.record_overhead_bytes as usize;
        assert!(MAX_ATTRS + 33 < overhead);
    }

    #[test]
    fn out_of_range_records_are_named() {
        let hour = 3_600_000;
        let now = 1_793_491_200_000; // 2026-11-01T00:00:00Z
        let old = out_of_range(now - 18 * hour - 1, now).unwrap();
        assert_eq!(
            old,
            "datadog: event_timestamp 2026-10-31T05:59:59.999Z is more than 18 hours in the past: Datadog would answer 202 and drop it"
        );
        assert!(
            out_of_range(now + 2 * hour + 1, now)
                .unwrap()
                .contains("more than 2 hours in the future")
        );
        assert_eq!(out_of_range(now - 18 * hour, now), None);
        assert_eq!(out_of_range(now + 2 * hour, now), None);
        assert_eq!(out_of_range(now, now), None);
        assert!(out_of_range(i64::MIN, now).is_some());
        assert!(out_of_range(i64::MAX, now).is_some());
    }
}
