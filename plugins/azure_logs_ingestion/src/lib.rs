//! `azure_logs_ingestion`: delivers records to a Log Analytics table through
//! the Azure Monitor Logs Ingestion API: an OAuth 2.0 client-credentials
//! token (cached, refreshed before expiry and at once on a 401), then
//! `POST <logs_ingestion_uri>/dataCollectionRules/<dcr>/streams/<stream>?api-version=2023-01-01`
//! with gzipped JSON arrays of at most 1 MB, each record carrying
//! `TimeGenerated` from its `event_timestamp`. See
//! `plugins/azure_logs_ingestion/README.md`.

use sluice_sdk::{Batch, Error, Host, Limits, Outcomes, Restrictions, Sink, SinkInfo};
use sluice_vendor_http::{
    Answer, Verdict, array_body, check_url, client, deliver, json_rfc3339_ms, post, read_capped,
    test_event_array_at, test_event_result, timeout_ms, verdict,
};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "azure_logs_ingestion sink",
  "type": "object",
  "required": ["tenant_id", "client_id", "client_secret", "logs_ingestion_uri", "data_collection_rule_id", "data_collection_stream_name"],
  "properties": {
    "tenant_id": {"type": "string", "description": "Microsoft Entra tenant (directory) id"},
    "client_id": {"type": "string", "description": "the app registration's application (client) id"},
    "client_secret": {"type": "string", "description": "the app registration's client secret; never logged"},
    "logs_ingestion_uri": {"type": "string", "description": "the DCR's (or DCE's) logs ingestion endpoint, https://...ingest.monitor.azure.com"},
    "data_collection_rule_id": {"type": "string", "description": "the DCR's immutable id, dcr-..."},
    "data_collection_stream_name": {"type": "string", "description": "the DCR's stream, Custom-<Table>_CL"},
    "authority_url": {"type": "string", "description": "token authority instead of https://login.microsoftonline.com (tests, sovereign clouds); default: $SLUICE_AZURE_AUTHORITY_URL if set"},
    "timeout_ms": {"type": "integer", "minimum": 1, "default": 30000}
  },
  "additionalProperties": false
}"#;

/// The environment variable that replaces the default token authority when
/// the configuration has no `authority_url`.
pub const AUTHORITY_ENV: &str = "SLUICE_AZURE_AUTHORITY_URL";

/// The scope of a Logs Ingestion token (the double slash is Azure's).
pub const SCOPE: &str = "https://monitor.azure.com//.default";

/// The configuration, checked.
#[derive(Clone, Debug)]
pub struct Config {
    /// The token endpoint.
    pub token_url: String,
    /// Who chose the token endpoint's authority.
    pub authority_from: AuthorityFrom,
    /// The token request's form body.
    pub token_form: String,
    /// Where records are POSTed.
    pub url: String,
    /// The stream name (for error hints).
    pub stream: String,
    /// Request timeout.
    pub timeout: Duration,
}

/// Who chose the authority (token endpoint): it decides whether the
/// operator's egress restriction applies to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthorityFrom {
    /// Microsoft Entra ID's public authority.
    Public,
    /// `authority_url` in the configuration (refused under restrictions: it
    /// is the operator's to set, not a tenant's).
    Config,
    /// The operator's `SLUICE_AZURE_AUTHORITY_URL` (trusted).
    Operator,
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Config {
    /// Parses a configuration; errors name the key.
    pub fn parse(config: &str) -> Result<Config, String> {
        let v: serde_json::Value =
            serde_json::from_str(config).map_err(|e| format!("configuration is not JSON: {e}"))?;
        let obj = v.as_object().ok_or("configuration must be a JSON object")?;
        const KEYS: [&str; 8] = [
            "tenant_id",
            "client_id",
            "client_secret",
            "logs_ingestion_uri",
            "data_collection_rule_id",
            "data_collection_stream_name",
            "authority_url",
            "timeout_ms",
        ];
        for k in obj.keys() {
            if !KEYS.contains(&k.as_str()) {
                return Err(format!(
                    "unknown configuration key `{k}` (known: {})",
                    KEYS.join(", ")
                ));
            }
        }
        let req = |k: &str| -> Result<String, String> {
            match obj.get(k) {
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                    Ok(s.trim().to_string())
                }
                _ => Err(format!("`{k}` is required (a non-empty string)")),
            }
        };
        let tenant = req("tenant_id")?;
        let client_id = req("client_id")?;
        let secret = req("client_secret")?;
        let uri = req("logs_ingestion_uri")?;
        if !(uri.starts_with("https://") || uri.starts_with("http://")) {
            return Err(format!(
                "`logs_ingestion_uri` must be an https:// (or, for tests, http://) URL, got `{uri}`"
            ));
        }
        let dcr = req("data_collection_rule_id")?;
        let stream = req("data_collection_stream_name")?;
        let (authority, authority_from) = match obj.get("authority_url") {
            // The operator's override (`sluice serve`, whose tenants cannot
            // set `authority_url`): sovereign clouds, proxies, tests.
            None => match std::env::var(AUTHORITY_ENV) {
                Ok(u) if u.starts_with("http://") || u.starts_with("https://") => {
                    (u.trim_end_matches('/').to_string(), AuthorityFrom::Operator)
                }
                Ok(u) if !u.is_empty() => {
                    return Err(format!(
                        "{AUTHORITY_ENV} must be an http(s):// URL, got `{u}`"
                    ));
                }
                _ => (
                    "https://login.microsoftonline.com".to_string(),
                    AuthorityFrom::Public,
                ),
            },
            Some(serde_json::Value::String(u))
                if u.starts_with("http://") || u.starts_with("https://") =>
            {
                (u.trim_end_matches('/').to_string(), AuthorityFrom::Config)
            }
            Some(_) => return Err("`authority_url` must be an http(s):// URL".into()),
        };
        let timeout = timeout_ms(obj)?;
        Ok(Config {
            token_url: format!("{authority}/{}/oauth2/v2.0/token", percent_encode(&tenant)),
            authority_from,
            token_form: format!(
                "grant_type=client_credentials&client_id={}&client_secret={}&scope={}",
                percent_encode(&client_id),
                percent_encode(&secret),
                percent_encode(SCOPE)
            ),
            url: format!(
                "{}/dataCollectionRules/{}/streams/{}?api-version=2023-01-01",
                uri.trim_end_matches('/'),
                percent_encode(&dcr),
                percent_encode(&stream)
            ),
            stream,
            timeout,
        })
    }
}

struct Token {
    value: String,
    /// Refresh from then on.
    refresh_at: Instant,
}

/// The azure_logs_ingestion sink.
pub struct AzureLogs {
    cfg: Config,
    /// For the logs ingestion endpoint (the tenant's).
    client: reqwest::blocking::Client,
    /// For the token endpoint (trusted when the operator chose it).
    token_client: reqwest::blocking::Client,
    host: Host,
    token: Mutex<Option<Token>>,
}

fn explain(stream: &str) -> impl Fn(u16, &str) -> Option<String> + '_ {
    move |status, body| match status {
        400 if body.contains("InvalidStream") => Some(format!(
            "the stream `{stream}` is not a stream of the data collection rule: custom streams are named `Custom-<Table>_CL`, as in the DCR's streamDeclarations"
        )),
        403 => Some(
            "the app registration needs the Monitoring Metrics Publisher role on the DCR".into(),
        ),
        404 => Some("check logs_ingestion_uri and data_collection_rule_id".into()),
        _ => None,
    }
}

impl AzureLogs {
    /// A valid token: the cached one, or a new one when it is due (or `force`).
    fn token(&self, force: bool) -> Result<String, Error> {
        let mut t = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if !force
            && let Some(tok) = t.as_ref()
            && Instant::now() < tok.refresh_at
        {
            return Ok(tok.value.clone());
        }
        let resp = self
            .token_client
            .post(&self.cfg.token_url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(self.cfg.token_form.clone())
            .send()
            .map_err(|e| Error::retry(format!("azure_logs_ingestion: cannot get a token: {e}")))?;
        let status = resp.status().as_u16();
        let body: serde_json::Value =
            serde_json::from_slice(&read_capped(resp)).unwrap_or_default();
        self.host.counter_add("token_requests", 1);
        if status != 200 {
            let why = body["error_description"]
                .as_str()
                .or(body["error"].as_str())
                .unwrap_or("no description");
            let msg = format!(
                "azure_logs_ingestion: the token request was refused (HTTP {status}): {why}"
            );
            return Err(if status >= 500 || status == 429 {
                Error::retry(msg)
            } else {
                Error::fatal(msg)
            });
        }
        let value = body["access_token"]
            .as_str()
            .ok_or_else(|| {
                Error::retry("azure_logs_ingestion: the token answer has no access_token")
            })?
            .to_string();
        let life = body["expires_in"]
            .as_u64()
            .or_else(|| body["expires_in"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(3600);
        // Refresh five minutes before expiry, or at half life for short tokens.
        let margin = (life / 2).min(300);
        *t = Some(Token {
            value: value.clone(),
            refresh_at: Instant::now() + Duration::from_secs(life - margin),
        });
        Ok(value)
    }

    /// POSTs a body with a token, once more with a fresh token on a 401.
    /// `Err` when there is no token, no answer, or a fresh token is refused
    /// too: the destination will not let Sluice in, whatever the records.
    fn post_body(&self, body: &[u8]) -> Result<Answer, Error> {
        let send = |tok: &str| -> Result<Answer, Error> {
            let auth = format!("Bearer {tok}");
            self.host.counter_add("requests", 1);
            let a = post(
                &self.client,
                &self.cfg.url,
                &[("Authorization", &auth)],
                body,
            )
            .map_err(|e| Error::retry(format!("azure_logs_ingestion: {e}")))?;
            self.host
                .counter_add(&format!("responses_{}xx", a.status / 100), 1);
            Ok(a)
        };
        let a = send(&self.token(false)?)?;
        if a.status != 401 {
            return Ok(a);
        }
        let a = send(&self.token(true)?)?;
        if a.status == 401 {
            // Fatal: a configuration problem (for a send, the engine
            // still retries every record and marks the destination
            // unhealthy; a test event is refused).
            return Err(Error::fatal(format!(
                "azure_logs_ingestion: a fresh token was refused too (HTTP 401: {}): check that tenant_id is the tenant of the data collection endpoint",
                a.body
            )));
        }
        Ok(a)
    }

    fn body(batch: &Batch<'_>, idx: &[usize], out: &mut Vec<u8>) {
        array_body(batch, idx, out, |r, out| {
            out.extend_from_slice(b"\"TimeGenerated\":");
            json_rfc3339_ms(out, r.timestamp_ms());
            out.push(b',');
        });
    }
}

impl Sink for AzureLogs {
    fn info() -> SinkInfo {
        SinkInfo {
            kind: "azure_logs_ingestion",
            version: env!("CARGO_PKG_VERSION"),
            description: "Azure Monitor Logs Ingestion API (DCR streams, gzipped JSON arrays)",
            config_schema: SCHEMA,
            // At most 1 MB per call; each record gains
            // `"TimeGenerated":"2026-11-21T00:00:00.000Z",` and a comma.
            limits: Limits {
                max_records: 10_000,
                record_overhead_bytes: 48,
                max_batch_bytes: 1_000_000,
                max_record_bytes: 1_000_000,
            },
            thread_safe: true,
            ordered: false,
        }
    }

    fn create(config: &str, host: Host) -> Result<Self, Error> {
        let cfg = Config::parse(config)
            .map_err(|e| Error::fatal(format!("azure_logs_ingestion: {e}")))?;
        let restrictions = host.restrictions();
        let mut token_restrictions = restrictions;
        match cfg.authority_from {
            AuthorityFrom::Config if restrictions != Restrictions::default() => {
                return Err(Error::fatal(
                    "azure_logs_ingestion: `authority_url` is set by the server's operator (SLUICE_AZURE_AUTHORITY_URL), not in a destination",
                ));
            }
            AuthorityFrom::Operator => token_restrictions.public_egress_only = false,
            _ => {}
        }
        check_url("`logs_ingestion_uri`", &cfg.url, restrictions)
            .map_err(|e| Error::fatal(format!("azure_logs_ingestion: {e}")))?;
        let token_client = client("azure_logs_ingestion", cfg.timeout, token_restrictions)?;
        let client = client("azure_logs_ingestion", cfg.timeout, restrictions)?;
        Ok(AzureLogs {
            cfg,
            client,
            token_client,
            host,
            token: Mutex::new(None),
        })
    }

    fn send(&self, batch: &Batch<'_>, outcomes: &mut Outcomes<'_>) -> Result<(), Error> {
        let idx: Vec<usize> = (0..batch.len()).collect();
        let mut body = Vec::new();
        let explain = explain(&self.cfg.stream);
        let mut send = |part: &[usize]| -> Result<Verdict, Error> {
            Self::body(batch, part, &mut body);
            let a = self.post_body(&body)?;
            Ok(verdict(&a, &explain))
        };
        deliver("azure_logs_ingestion", &idx, outcomes, &mut send)
    }

    const HAS_VERIFY: bool = true;

    fn verify(&self) -> Result<(), Error> {
        // One instant for TimeGenerated and the event's event_timestamp.
        let now = sluice_sdk::events::now_ms();
        let mut prefix = b"\"TimeGenerated\":".to_vec();
        json_rfc3339_ms(&mut prefix, now);
        prefix.push(b',');
        let body = test_event_array_at(&self.host.destination_id(), now, &prefix);
        test_event_result(
            "azure_logs_ingestion",
            self.post_body(&body),
            explain(&self.cfg.stream),
        )
    }
}

sluice_sdk::export_sink!(AzureLogs);

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"tenant_id":"t-1","client_id":"c","client_secret":"s&x=1","logs_ingestion_uri":"https://my-dce.eastus-1.ingest.monitor.azure.com/","data_collection_rule_id":"dcr-00aa","data_collection_stream_name":"Custom-NgrokEvents_CL"}"#;

    #[test]
    fn urls_and_form_are_built_and_errors_name_the_key() {
        let c = Config::parse(OK).unwrap();
        assert_eq!(
            c.token_url,
            "https://login.microsoftonline.com/t-1/oauth2/v2.0/token"
        );
        assert_eq!(
            c.url,
            "https://my-dce.eastus-1.ingest.monitor.azure.com/dataCollectionRules/dcr-00aa/streams/Custom-NgrokEvents_CL?api-version=2023-01-01"
        );
        assert!(c.token_form.contains("client_secret=s%26x%3D1"));
        assert!(
            c.token_form
                .contains("scope=https%3A%2F%2Fmonitor.azure.com%2F%2F.default")
        );
        let e = Config::parse(&OK.replace(r#""client_id":"c","#, "")).unwrap_err();
        assert!(e.contains("`client_id` is required"), "{e}");
        let e = Config::parse(&OK.replace("https://my-dce", "my-dce")).unwrap_err();
        assert!(e.contains("`logs_ingestion_uri`"), "{e}");
    }
}
