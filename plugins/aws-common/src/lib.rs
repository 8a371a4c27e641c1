//! What Sluice's AWS sink plugins (`kinesis`, `firehose`, `cloudwatch_logs`)
//! share: the target configuration of the ngrok API (`auth` + an ARN), the
//! SDK configuration built from it (region from the ARN, static keys or an
//! assumed role, an optional endpoint), the plugin's own async runtime, and
//! how an AWS error maps to an outcome.
//!
//! Configuration (the plugin target's `config`, or `config = {...}` in TOML):
//!
//! ```json
//! {"stream_arn": "arn:aws:kinesis:us-east-2:123456789012:stream/web",
//!  "auth": {"role": {"role_arn": "arn:aws:iam::123456789012:role/sluice"}},
//!  "external_id": "ac_...",          // set by sluice serve: the owning account
//!  "endpoint_url": "http://127.0.0.1:5000"}   // optional, for tests and compatible services
//! ```
//!
//! `auth` may be `{"creds": {"aws_access_key_id", "aws_secret_access_key"}}`,
//! or absent: then the standard AWS chain (environment, profile, instance
//! role) provides the credentials. The AWS environment (`AWS_ENDPOINT_URL`,
//! `AWS_ENDPOINT_URL_KINESIS`, ...) is honoured as the AWS SDK honours it.

use aws_config::{BehaviorVersion, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use aws_types::region::Region;
use serde_json::{Map, Value};
use std::sync::OnceLock;
use std::time::Duration;

/// An ARN, split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arn {
    /// `aws`, `aws-cn`, `aws-us-gov`, ...
    pub partition: String,
    /// `kinesis`, `firehose`, `logs`, `iam`.
    pub service: String,
    /// e.g. `us-east-2`.
    pub region: String,
    /// 12 digits.
    pub account: String,
    /// What follows the account: `stream/NAME`, `deliverystream/NAME`, `log-group:NAME`.
    pub resource: String,
}

impl Arn {
    /// Parses `arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`.
    pub fn parse(s: &str) -> Result<Arn, String> {
        let parts: Vec<&str> = s.splitn(6, ':').collect();
        if parts.len() != 6 || parts[0] != "arn" {
            return Err(format!(
                "`{s}` is not an ARN (arn:partition:service:region:account:resource)"
            ));
        }
        let arn = Arn {
            partition: parts[1].to_string(),
            service: parts[2].to_string(),
            region: parts[3].to_string(),
            account: parts[4].to_string(),
            resource: parts[5].to_string(),
        };
        if arn.partition.is_empty() || arn.service.is_empty() || arn.resource.is_empty() {
            return Err(format!(
                "`{s}` is not an ARN (empty partition, service or resource)"
            ));
        }
        Ok(arn)
    }

    /// The resource name after `prefix` (`stream/`, `deliverystream/`,
    /// `log-group:`), without a trailing `:*`.
    pub fn resource_name(&self, prefix: &str) -> Result<String, String> {
        let name = self.resource.strip_prefix(prefix).ok_or_else(|| {
            format!(
                "the ARN's resource `{}` does not start with `{prefix}`",
                self.resource
            )
        })?;
        let name = name.strip_suffix(":*").unwrap_or(name);
        if name.is_empty() {
            return Err(format!(
                "the ARN's resource `{}` has no name",
                self.resource
            ));
        }
        Ok(name.to_string())
    }
}

/// How the plugin authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Assume this role through STS.
    Role(String),
    /// Static keys.
    Creds {
        /// Access key id.
        id: String,
        /// Secret (never logged).
        secret: String,
    },
    /// The standard AWS credential chain.
    Default,
}

/// An AWS target, checked.
#[derive(Clone, Debug)]
pub struct Target {
    /// Credentials.
    pub auth: Auth,
    /// The destination's ARN.
    pub arn: Arn,
    /// External id for AssumeRole (the owning account).
    pub external_id: Option<String>,
    /// Endpoint override.
    pub endpoint_url: Option<String>,
    /// The plugin-specific keys, unparsed.
    pub extra: Map<String, Value>,
}

fn string(v: &Value, what: &str) -> Result<String, String> {
    match v.as_str() {
        Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
        _ => Err(format!("`{what}` must be a non-empty string")),
    }
}

/// Parses a target configuration: `arn_key` is the ARN's key
/// (`stream_arn`, ...) and `service` the ARN's service; `extra_keys` are the
/// plugin's own optional keys. Errors name the key.
pub fn parse_target(
    config: &str,
    arn_key: &str,
    service: &str,
    extra_keys: &[&str],
) -> Result<Target, String> {
    let v: Value =
        serde_json::from_str(config).map_err(|e| format!("configuration is not JSON: {e}"))?;
    let obj = v.as_object().ok_or("configuration must be a JSON object")?;
    let mut arn = None;
    let mut auth = Auth::Default;
    let mut external_id = None;
    let mut endpoint_url = None;
    let mut extra = Map::new();
    for (k, val) in obj {
        match k.as_str() {
            k if k == arn_key => arn = Some(Arn::parse(&string(val, arn_key)?)?),
            "auth" => {
                let a = val
                    .as_object()
                    .ok_or("`auth` must be an object with `role` or `creds`")?;
                let role = a.get("role").filter(|v| !v.is_null());
                let creds = a.get("creds").filter(|v| !v.is_null());
                auth = match (role, creds) {
                    (Some(r), None) => Auth::Role(string(&r["role_arn"], "auth.role.role_arn")?),
                    (None, Some(c)) => Auth::Creds {
                        id: string(&c["aws_access_key_id"], "auth.creds.aws_access_key_id")?,
                        secret: string(
                            &c["aws_secret_access_key"],
                            "auth.creds.aws_secret_access_key",
                        )?,
                    },
                    (Some(_), Some(_)) => {
                        return Err("`auth` has both `role` and `creds`; give one".into());
                    }
                    (None, None) => return Err("`auth` needs `role` or `creds`".into()),
                };
            }
            "external_id" => external_id = Some(string(val, "external_id")?),
            "endpoint_url" => {
                let u = string(val, "endpoint_url")?;
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(format!(
                        "`endpoint_url` must start with http:// or https://, got `{u}`"
                    ));
                }
                endpoint_url = Some(u);
            }
            k if extra_keys.contains(&k) => {
                extra.insert(k.to_string(), val.clone());
            }
            other => {
                let mut known = vec![arn_key, "auth", "external_id", "endpoint_url"];
                known.extend_from_slice(extra_keys);
                return Err(format!(
                    "unknown configuration key `{other}` (known: {})",
                    known.join(", ")
                ));
            }
        }
    }
    let arn = arn.ok_or_else(|| format!("`{arn_key}` is required"))?;
    if arn.service != service {
        return Err(format!(
            "`{arn_key}` is an ARN of service `{}`, not `{service}`",
            arn.service
        ));
    }
    if arn.region.is_empty() {
        return Err(format!("`{arn_key}` has no region"));
    }
    Ok(Target {
        auth,
        arn,
        external_id,
        endpoint_url,
        extra,
    })
}

/// The plugin's own runtime, shared by its instances: the engine's threads
/// call `block_on` on it and never wait on the engine's own runtime.
pub fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-aws")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the AWS client runtime: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Runs a future to completion on the plugin's runtime from the calling
/// thread. The engine calls sinks from its own threads; should a host call
/// from inside an async runtime (where blocking on another runtime is
/// refused), the future runs on a scoped helper thread instead, so the call
/// never deadlocks nor panics.
pub fn block_on<F: std::future::Future + Send>(fut: F) -> Result<F::Output, String>
where
    F::Output: Send,
{
    let rt = runtime()?;
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(rt.block_on(fut));
    }
    std::thread::scope(|s| {
        s.spawn(|| rt.block_on(fut))
            .join()
            .map_err(|_| "the AWS call panicked".to_string())
    })
}

/// A role session name from a destination id: `[\w+=,.@-]`, 2 to 64 characters.
pub fn session_name(destination: &str) -> String {
    let clean: String = destination
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut s = format!("sluice-{clean}");
    s.truncate(64);
    s
}

/// The SDK configuration for a target: region from the ARN, credentials,
/// endpoint; retries left to the engine (which retries only what failed and
/// adapts its concurrency), 30 s per operation.
pub async fn sdk_config(t: &Target, destination: &str) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(t.arn.region.clone()))
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        );
    if let Some(u) = &t.endpoint_url {
        loader = loader.endpoint_url(u);
    }
    if let Auth::Creds { id, secret } = &t.auth {
        loader =
            loader.credentials_provider(Credentials::new(id, secret, None, None, "sluice-static"));
    }
    let base = loader.load().await;
    match &t.auth {
        Auth::Role(role) => {
            let mut b = aws_config::sts::AssumeRoleProvider::builder(role)
                .session_name(session_name(destination))
                .region(Region::new(t.arn.region.clone()))
                .configure(&base);
            if let Some(x) = &t.external_id {
                b = b.external_id(x);
            }
            let provider = b.build().await;
            // The client's identity cache keeps the temporary credentials
            // and refreshes them before they expire.
            base.into_builder()
                .credentials_provider(SharedCredentialsProvider::new(provider))
                .build()
        }
        _ => base,
    }
}

/// What an AWS failure means for the records of the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Class {
    /// Try again later (throttling, a server error, no answer).
    Retry,
    /// The configuration or permissions are wrong: every record is retried
    /// under the delivery policy and the destination is unhealthy.
    Fatal,
    /// The request itself is refused for good: dead-letter its records.
    Reject,
}

/// An AWS error code (or HTTP status) to a class.
pub fn classify(code: Option<&str>, status: Option<u16>) -> Class {
    const RETRY: &[&str] = &[
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "LimitExceededException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "InternalFailure",
        "InternalFailureException",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "KMSThrottlingException",
        "RequestTimeout",
        "RequestTimeoutException",
        "ResourceInUseException",
        "OperationAbortedException",
        "DataAlreadyAcceptedException",
    ];
    const REJECT: &[&str] = &[
        "InvalidArgumentException",
        "InvalidParameterException",
        "ValidationException",
        "SerializationException",
    ];
    match code {
        Some(c) if RETRY.contains(&c) => Class::Retry,
        Some(c) if REJECT.contains(&c) => Class::Reject,
        Some(_) => match status {
            Some(s) if s == 429 || s >= 500 => Class::Retry,
            _ => Class::Fatal,
        },
        None => match status {
            Some(s) if (400..500).contains(&s) && s != 408 && s != 429 => Class::Fatal,
            _ => Class::Retry,
        },
    }
}

/// An AWS failure, understood.
#[derive(Clone, Debug)]
pub struct AwsError {
    /// What it means for the records.
    pub class: Class,
    /// AWS's error code, when there was an answer.
    pub code: Option<String>,
    /// The code, the HTTP status and AWS's message, for logs and dead letters.
    pub message: String,
}

impl AwsError {
    /// Whether AWS asked to slow down (the records wait a second before their retry).
    pub fn throttled(&self) -> bool {
        matches!(
            self.code.as_deref(),
            Some(
                "ProvisionedThroughputExceededException"
                    | "ThrottlingException"
                    | "Throttling"
                    | "ThrottledException"
                    | "LimitExceededException"
                    | "TooManyRequestsException"
                    | "RequestLimitExceeded"
                    | "KMSThrottlingException"
                    | "ServiceUnavailableException"
            )
        ) || self.message.contains("(HTTP 429)")
    }
}

/// An error and its sources, each said once: `a: b: c`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// An SDK error, understood.
pub fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(
    e: &SdkError<E, HttpResponse>,
) -> AwsError {
    match e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code();
            let msg = s.err().message().unwrap_or("");
            AwsError {
                class: classify(code, Some(status)),
                code: code.map(str::to_string),
                message: format!("{} (HTTP {status}): {msg}", code.unwrap_or("error")),
            }
        }
        SdkError::TimeoutError(_) => AwsError {
            class: Class::Retry,
            code: None,
            message: "no answer within the timeout".into(),
        },
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => AwsError {
            class: Class::Retry,
            code: None,
            message: format!("cannot reach AWS: {}", chain(e)),
        },
        // Credentials that cannot be had (AssumeRole refused, no keys),
        // a bad endpoint: the destination is unhealthy until fixed.
        SdkError::DispatchFailure(_) => AwsError {
            class: Class::Fatal,
            code: None,
            message: chain(e),
        },
        SdkError::ResponseError(r) => {
            let status = r.raw().status().as_u16();
            AwsError {
                class: classify(None, Some(status)),
                code: None,
                message: format!("unreadable answer (HTTP {status})"),
            }
        }
        SdkError::ConstructionFailure(_) => AwsError {
            class: Class::Fatal,
            code: None,
            message: format!("cannot build the request: {}", chain(e)),
        },
        _ => AwsError {
            class: Class::Retry,
            code: None,
            message: chain(e),
        },
    }
}

/// Applies a failed call to every record of the batch: retried (after a
/// second when AWS throttled), refused, or, for a configuration or
/// permission problem, an error (every record retried under the delivery
/// policy, the destination unhealthy).
pub fn fail_all(
    err: &AwsError,
    kind: &str,
    n: usize,
    outcomes: &mut sluice_sdk::Outcomes<'_>,
) -> Result<(), sluice_sdk::Error> {
    let msg = format!("{kind}: {}", err.message);
    match err.class {
        Class::Retry => {
            let after = err.throttled().then(|| Duration::from_secs(1));
            for i in 0..n {
                outcomes.retry(i, after, &msg);
            }
            Ok(())
        }
        Class::Fatal => Err(sluice_sdk::Error::fatal(msg)),
        Class::Reject => {
            for i in 0..n {
                outcomes.reject(i, &msg);
            }
            Ok(())
        }
    }
}

/// Applies a failed call to its `n` records (see [`fail_all`]), counting
/// `throttled_calls` when AWS asked to slow down.
pub fn fail_call<E: ProvideErrorMetadata + std::error::Error + 'static>(
    kind: &str,
    e: &SdkError<E, HttpResponse>,
    n: usize,
    host: &sluice_sdk::Host,
    outcomes: &mut sluice_sdk::Outcomes<'_>,
) -> Result<(), sluice_sdk::Error> {
    let e = describe(e);
    if e.throttled() {
        host.counter_add("throttled_calls", 1);
    }
    fail_all(&e, kind, n, outcomes)
}

/// Applies the per-record results of a batch put that succeeded
/// (PutRecords, PutRecordBatch) to its `n` records: `None` when the record
/// was accepted, else AWS's error code and message. A retryable code
/// (throughput exceeded, internal failure) retries exactly that record,
/// after a second when it says to slow down; any other (KMS access, ...)
/// dead-letters it with AWS's code. Counts `records_put`, `records_failed`
/// and `throttled_calls` (a call with a throttled record).
pub fn apply_results(
    kind: &str,
    n: usize,
    results: &[Option<(&str, &str)>],
    host: &sluice_sdk::Host,
    outcomes: &mut sluice_sdk::Outcomes<'_>,
) -> Result<(), sluice_sdk::Error> {
    if results.len() != n {
        return Err(sluice_sdk::Error::retry(format!(
            "{kind}: {} results for {n} records",
            results.len()
        )));
    }
    let mut failed = 0u64;
    let mut throttled = false;
    for (i, res) in results.iter().enumerate() {
        match res {
            None => outcomes.ok(i),
            Some((code, msg)) => {
                failed += 1;
                let why = format!("{kind}: {code}: {msg}");
                let err = AwsError {
                    class: classify(Some(code), None),
                    code: Some(code.to_string()),
                    message: why,
                };
                match err.class {
                    // A hot shard or a busy stream: wait a second, as for a throttled call.
                    Class::Retry => {
                        throttled |= err.throttled();
                        outcomes.retry(
                            i,
                            err.throttled().then(|| Duration::from_secs(1)),
                            &err.message,
                        )
                    }
                    Class::Fatal | Class::Reject => outcomes.reject(i, &err.message),
                }
            }
        }
    }
    host.counter_add("records_put", n as u64 - failed);
    if failed > 0 {
        host.counter_add("records_failed", failed);
    }
    if throttled {
        host.counter_add("throttled_calls", 1);
    }
    Ok(())
}

pub use sluice_sdk::events::{now_ms, test_event};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_and_targets_are_checked_and_errors_name_the_key() {
        let t = parse_target(
            r#"{"stream_arn":"arn:aws:kinesis:us-east-2:123456789012:stream/web","auth":{"role":{"role_arn":"arn:aws:iam::123456789012:role/x"},"creds":null},"external_id":"ac_1","partition_key":"event_id"}"#,
            "stream_arn",
            "kinesis",
            &["partition_key"],
        )
        .unwrap();
        assert_eq!(t.arn.region, "us-east-2");
        assert_eq!(t.arn.resource_name("stream/").unwrap(), "web");
        assert_eq!(
            t.auth,
            Auth::Role("arn:aws:iam::123456789012:role/x".into())
        );
        assert_eq!(t.extra["partition_key"], "event_id");
        let lg = Arn::parse("arn:aws:logs:eu-west-1:123456789012:log-group:/sluice/web:*").unwrap();
        assert_eq!(lg.resource_name("log-group:").unwrap(), "/sluice/web");
        for (cfg, want) in [
            ("{}", "`stream_arn` is required"),
            (r#"{"stream_arn":"nope"}"#, "not an ARN"),
            (
                r#"{"stream_arn":"arn:aws:firehose:us-east-1:1:deliverystream/x"}"#,
                "not `kinesis`",
            ),
            (
                r#"{"stream_arn":"arn:aws:kinesis::1:stream/x"}"#,
                "no region",
            ),
            (
                r#"{"stream_arn":"arn:aws:kinesis:us-east-1:1:stream/x","auth":{}}"#,
                "needs `role` or `creds`",
            ),
            (
                r#"{"stream_arn":"arn:aws:kinesis:us-east-1:1:stream/x","auth":{"creds":{"aws_access_key_id":"a"}}}"#,
                "aws_secret_access_key",
            ),
            (
                r#"{"stream_arn":"arn:aws:kinesis:us-east-1:1:stream/x","endpoint_url":"ftp://x"}"#,
                "`endpoint_url`",
            ),
            (
                r#"{"stream_arn":"arn:aws:kinesis:us-east-1:1:stream/x","shards":3}"#,
                "unknown configuration key `shards`",
            ),
        ] {
            let e = parse_target(cfg, "stream_arn", "kinesis", &["partition_key"]).unwrap_err();
            assert!(e.contains(want), "{cfg}: {e}");
        }
    }

    #[test]
    fn error_codes_map_to_classes() {
        assert_eq!(
            classify(Some("ProvisionedThroughputExceededException"), Some(400)),
            Class::Retry
        );
        assert_eq!(
            classify(Some("ThrottlingException"), Some(400)),
            Class::Retry
        );
        assert_eq!(
            classify(Some("ResourceNotFoundException"), Some(400)),
            Class::Fatal
        );
        assert_eq!(
            classify(Some("AccessDeniedException"), Some(400)),
            Class::Fatal
        );
        assert_eq!(
            classify(Some("InvalidArgumentException"), Some(400)),
            Class::Reject
        );
        assert_eq!(classify(Some("SomethingNew"), Some(503)), Class::Retry);
        assert_eq!(classify(None, Some(500)), Class::Retry);
        assert_eq!(classify(None, Some(403)), Class::Fatal);
        assert_eq!(classify(None, None), Class::Retry);
    }

    #[test]
    fn session_names_are_valid() {
        assert_eq!(session_name("ed_1"), "sluice-ed_1");
        assert_eq!(session_name("a b/c"), "sluice-a-b-c");
        assert!(session_name(&"x".repeat(200)).len() <= 64);
    }
}
