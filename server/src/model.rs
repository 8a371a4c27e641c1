//! The API's resources: how they are stored, validated, shown (secrets
//! redacted) and turned into the engine's pipeline configuration.

use crate::error::ApiError;
use crate::policy::TenantPolicy;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sluice_engine::config::{DeliveryConfig, DestinationSpec, SourceSpec, SubscriptionSpec};

/// AWS credentials of a target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AwsAuth {
    /// A role to assume.
    Role {
        /// Its ARN.
        role_arn: String,
    },
    /// Static keys.
    Creds {
        /// Key id.
        aws_access_key_id: String,
        /// Secret (write-only).
        aws_secret_access_key: String,
    },
}

/// Where a destination delivers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Amazon Kinesis Data Streams.
    Kinesis {
        /// Credentials.
        auth: AwsAuth,
        /// The stream.
        stream_arn: String,
    },
    /// Amazon Kinesis Data Firehose.
    Firehose {
        /// Credentials.
        auth: AwsAuth,
        /// The delivery stream.
        delivery_stream_arn: String,
    },
    /// Amazon CloudWatch Logs.
    CloudwatchLogs {
        /// Credentials.
        auth: AwsAuth,
        /// The log group.
        log_group_arn: String,
    },
    /// Datadog logs.
    Datadog {
        /// API key (write-only).
        api_key: String,
        /// Tags.
        ddtags: String,
        /// Service.
        service: String,
        /// Site.
        ddsite: String,
    },
    /// Azure Monitor Logs Ingestion.
    AzureLogsIngestion {
        /// Tenant.
        tenant_id: String,
        /// Application (client) id.
        client_id: String,
        /// Client secret (write-only).
        client_secret: String,
        /// Data collection endpoint.
        logs_ingestion_uri: String,
        /// DCR immutable id.
        data_collection_rule_id: String,
        /// Stream name in the DCR.
        data_collection_stream_name: String,
    },
    /// Any loaded plugin kind (a Sluice extension).
    Plugin {
        /// The plugin kind.
        kind: String,
        /// Its configuration.
        config: Value,
        /// Delivery settings.
        #[serde(default)]
        delivery: Option<DeliveryConfig>,
    },
}

/// The member names of `EventTarget`, in the order the API shows them.
pub const TARGET_MEMBERS: [&str; 5] = [
    "azure_logs_ingestion",
    "cloudwatch_logs",
    "datadog",
    "firehose",
    "kinesis",
];

/// Datadog sites (spec §8).
pub const DATADOG_SITES: &[&str] = &[
    "datadoghq.com",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "datadoghq.eu",
    "ap1.datadoghq.com",
    "ap2.datadoghq.com",
    "ddog-gov.com",
    "us2.ddog-gov.com",
];

impl Target {
    /// The member name (`kinesis`, ...) or `plugin`.
    pub fn member(&self) -> &'static str {
        match self {
            Target::Kinesis { .. } => "kinesis",
            Target::Firehose { .. } => "firehose",
            Target::CloudwatchLogs { .. } => "cloudwatch_logs",
            Target::Datadog { .. } => "datadog",
            Target::AzureLogsIngestion { .. } => "azure_logs_ingestion",
            Target::Plugin { .. } => "plugin",
        }
    }

    /// The plugin kind that delivers to it.
    pub fn kind(&self) -> &str {
        match self {
            Target::Plugin { kind, .. } => kind,
            other => other.member(),
        }
    }
}

/// A stored destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    /// `ed_...`
    pub id: String,
    /// Owner.
    pub account_id: String,
    /// RFC 3339.
    pub created_at: String,
    /// Description.
    pub description: String,
    /// Metadata.
    pub metadata: String,
    /// `json`.
    pub format: String,
    /// Target, secrets included.
    pub target: Target,
}

/// Plugin kinds that deliver to AWS with an assumed role: through the API,
/// their external id is always the owning account.
const AWS_KINDS: [&str; 3] = ["kinesis", "firehose", "cloudwatch_logs"];

/// A stored subscription.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    /// `esb_...`
    pub id: String,
    /// Owner.
    pub account_id: String,
    /// RFC 3339.
    pub created_at: String,
    /// Description.
    pub description: String,
    /// Metadata.
    pub metadata: String,
    /// Destinations, in order.
    pub destination_ids: Vec<String>,
    /// Sources, in order.
    pub sources: Vec<SourceSpec>,
}

fn auth_json(a: &AwsAuth) -> Value {
    match a {
        AwsAuth::Role { role_arn } => json!({ "creds": null, "role": { "role_arn": role_arn } }),
        AwsAuth::Creds {
            aws_access_key_id, ..
        } => json!({
            "creds": { "aws_access_key_id": aws_access_key_id, "aws_secret_access_key": "" },
            "role": null,
        }),
    }
}

/// Keys whose values a plugin configuration keeps secret (redacted on read).
pub fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    [
        "secret",
        "password",
        "api_key",
        "apikey",
        "token",
        "private_key",
        "authorization",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Whether an HTTP header, by its name, carries a credential (`Authorization`,
/// `Cookie`, `X-Api-Key`, `DD-API-KEY`, `X-Auth-Token`, a signature...): its
/// value in a target's `headers` is write-only like any other secret.
pub fn is_secret_header(name: &str) -> bool {
    let n: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    [
        "auth",
        "cookie",
        "key",
        "token",
        "secret",
        "password",
        "passwd",
        "signature",
        "credential",
        "session",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// Whether member `k` of an object is a secret: by its own name, or, inside a
/// `headers` object, as a credential-bearing header.
fn is_secret_member(k: &str, in_headers: bool) -> bool {
    is_secret_key(k) || (in_headers && is_secret_header(k))
}

fn redact(v: &Value) -> Value {
    redact_in(v, false)
}

fn redact_in(v: &Value, in_headers: bool) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if is_secret_member(k, in_headers) && v.is_string() {
                        Value::String(String::new())
                    } else {
                        redact_in(v, k.eq_ignore_ascii_case("headers"))
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| redact_in(x, false)).collect()),
        other => other.clone(),
    }
}

impl Destination {
    /// The API representation, secrets redacted.
    pub fn to_json(&self, base: &str) -> Value {
        let mut target = Map::new();
        for m in TARGET_MEMBERS {
            target.insert(m.to_string(), Value::Null);
        }
        let (member, value) = match &self.target {
            Target::Kinesis { auth, stream_arn } => (
                "kinesis",
                json!({ "auth": auth_json(auth), "stream_arn": stream_arn }),
            ),
            Target::Firehose {
                auth,
                delivery_stream_arn,
            } => (
                "firehose",
                json!({ "auth": auth_json(auth), "delivery_stream_arn": delivery_stream_arn }),
            ),
            Target::CloudwatchLogs {
                auth,
                log_group_arn,
            } => (
                "cloudwatch_logs",
                json!({ "auth": auth_json(auth), "log_group_arn": log_group_arn }),
            ),
            Target::Datadog {
                ddtags,
                service,
                ddsite,
                ..
            } => (
                "datadog",
                json!({ "api_key": "", "ddsite": ddsite, "ddtags": ddtags, "service": service }),
            ),
            Target::AzureLogsIngestion {
                tenant_id,
                client_id,
                logs_ingestion_uri,
                data_collection_rule_id,
                data_collection_stream_name,
                ..
            } => (
                "azure_logs_ingestion",
                json!({
                    "client_id": client_id,
                    "client_secret": "",
                    "data_collection_rule_id": data_collection_rule_id,
                    "data_collection_stream_name": data_collection_stream_name,
                    "logs_ingestion_uri": logs_ingestion_uri,
                    "tenant_id": tenant_id,
                }),
            ),
            Target::Plugin {
                kind,
                config,
                delivery,
            } => (
                "plugin",
                json!({ "kind": kind, "config": redact(config), "delivery": delivery }),
            ),
        };
        target.insert(member.to_string(), value);
        json!({
            "created_at": self.created_at,
            "description": self.description,
            "format": self.format,
            "id": self.id,
            "metadata": self.metadata,
            "target": Value::Object(target),
            "uri": format!("{base}/event_destinations/{}", self.id),
        })
    }

    /// What the engine runs for it: delivery settings inside the operator's
    /// bounds (as they are now), a `file` path resolved under the account's
    /// file area of `data_dir`.
    pub fn to_spec(&self, policy: &TenantPolicy, data_dir: &std::path::Path) -> DestinationSpec {
        let aws = |auth: &AwsAuth, key: &str, arn: &str| {
            let auth = match auth {
                AwsAuth::Role { role_arn } => json!({ "role": { "role_arn": role_arn } }),
                AwsAuth::Creds {
                    aws_access_key_id,
                    aws_secret_access_key,
                } => json!({
                    "creds": { "aws_access_key_id": aws_access_key_id, "aws_secret_access_key": aws_secret_access_key }
                }),
            };
            // The owning account is the external id of AssumeRole: a role
            // trusting Sluice names the one account allowed to use it.
            let mut v = json!({ "auth": auth, "external_id": self.account_id });
            v[key] = Value::String(arn.to_string());
            v
        };
        let (config, delivery) = match &self.target {
            Target::Kinesis { auth, stream_arn } => (aws(auth, "stream_arn", stream_arn), None),
            Target::Firehose {
                auth,
                delivery_stream_arn,
            } => (aws(auth, "delivery_stream_arn", delivery_stream_arn), None),
            Target::CloudwatchLogs {
                auth,
                log_group_arn,
            } => (aws(auth, "log_group_arn", log_group_arn), None),
            Target::Datadog {
                api_key,
                ddtags,
                service,
                ddsite,
            } => (
                json!({ "api_key": api_key, "ddtags": ddtags, "service": service, "ddsite": ddsite }),
                None,
            ),
            Target::AzureLogsIngestion {
                tenant_id,
                client_id,
                client_secret,
                logs_ingestion_uri,
                data_collection_rule_id,
                data_collection_stream_name,
            } => (
                json!({
                    "tenant_id": tenant_id, "client_id": client_id, "client_secret": client_secret,
                    "logs_ingestion_uri": logs_ingestion_uri, "data_collection_rule_id": data_collection_rule_id,
                    "data_collection_stream_name": data_collection_stream_name,
                }),
                None,
            ),
            Target::Plugin {
                kind,
                config,
                delivery,
            } => {
                let mut config = config.clone();
                if AWS_KINDS.contains(&kind.as_str())
                    && let Some(o) = config.as_object_mut()
                {
                    o.insert("external_id".into(), Value::String(self.account_id.clone()));
                }
                if kind == "file"
                    && let Some(path) = config.get("path").and_then(Value::as_str)
                {
                    let root = crate::policy::files_root(data_dir, &self.account_id);
                    config["path"] = Value::String(root.join(path).to_string_lossy().into_owned());
                }
                (config, delivery.clone())
            }
        };
        let mut delivery = delivery.unwrap_or_default();
        // Bounds tightened since the destination was stored apply too.
        let _ = policy.delivery.apply(&mut delivery, &[]);
        // The account's destinations share one quota of plugin calls.
        delivery.call_group = Some(self.account_id.clone());
        DestinationSpec {
            id: self.id.clone(),
            kind: self.target.kind().to_string(),
            config,
            delivery,
        }
    }
}

impl Subscription {
    /// The API representation.
    pub fn to_json(&self, base: &str) -> Value {
        serde_json::to_value(SubscriptionJson { sub: self, base }).unwrap_or(Value::Null)
    }

    /// What the engine runs for it.
    pub fn to_spec(&self) -> SubscriptionSpec {
        SubscriptionSpec {
            id: self.id.clone(),
            account_id: self.account_id.clone(),
            destination_ids: self.destination_ids.clone(),
            sources: self.sources.clone(),
        }
    }
}

/// An `EventSource` object.
pub fn source_json(base: &str, sub: &str, s: &SourceSpec) -> Value {
    serde_json::to_value(SourceJson {
        base,
        sub,
        source: s,
    })
    .unwrap_or(Value::Null)
}

/// `base` and path parts, written as one string without building it.
struct Uri<'a>(&'a [&'a str]);

impl Serialize for Uri<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        struct Joined<'a>(&'a [&'a str]);
        impl std::fmt::Display for Joined<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.iter().try_for_each(|p| f.write_str(p))
            }
        }
        ser.collect_str(&Joined(self.0))
    }
}

/// A subscription as the API shows it, serialized straight to the output:
/// lists of 100 subscriptions are the API's hottest path, and building a
/// `Value` tree for each costs more than the rest of the request.
pub struct SubscriptionJson<'a> {
    /// The subscription.
    pub sub: &'a Subscription,
    /// `scheme://host` of the request.
    pub base: &'a str,
}

impl Serialize for SubscriptionJson<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        struct Refs<'a>(&'a [String], &'a str);
        impl Serialize for Refs<'_> {
            fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                let mut seq = ser.serialize_seq(Some(self.0.len()))?;
                for d in self.0 {
                    seq.serialize_element(&DestinationRef {
                        id: d,
                        base: self.1,
                    })?;
                }
                seq.end()
            }
        }
        struct DestinationRef<'a> {
            id: &'a str,
            base: &'a str,
        }
        impl Serialize for DestinationRef<'_> {
            fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                let mut m = ser.serialize_map(Some(2))?;
                m.serialize_entry("id", self.id)?;
                m.serialize_entry("uri", &Uri(&[self.base, "/event_destinations/", self.id]))?;
                m.end()
            }
        }
        struct Sources<'a>(&'a Subscription, &'a str);
        impl Serialize for Sources<'_> {
            fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                let mut seq = ser.serialize_seq(Some(self.0.sources.len()))?;
                for s in &self.0.sources {
                    seq.serialize_element(&SourceJson {
                        base: self.1,
                        sub: &self.0.id,
                        source: s,
                    })?;
                }
                seq.end()
            }
        }
        let s = self.sub;
        // Keys in sorted order, as the `Value` form had them.
        let mut m = ser.serialize_map(Some(7))?;
        m.serialize_entry("created_at", &s.created_at)?;
        m.serialize_entry("description", &s.description)?;
        m.serialize_entry("destinations", &Refs(&s.destination_ids, self.base))?;
        m.serialize_entry("id", &s.id)?;
        m.serialize_entry("metadata", &s.metadata)?;
        m.serialize_entry("sources", &Sources(s, self.base))?;
        m.serialize_entry("uri", &Uri(&[self.base, "/event_subscriptions/", &s.id]))?;
        m.end()
    }
}

/// An `EventSource` as the API shows it.
struct SourceJson<'a> {
    base: &'a str,
    sub: &'a str,
    source: &'a SourceSpec,
}

impl Serialize for SourceJson<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let s = self.source;
        let mut m = ser.serialize_map(None)?;
        if let Some(f) = &s.fields {
            m.serialize_entry("fields", f)?;
        }
        if let Some(f) = &s.filter {
            m.serialize_entry("filter", f)?;
        }
        m.serialize_entry("type", &s.event_type)?;
        m.serialize_entry(
            "uri",
            &Uri(&[
                self.base,
                "/event_subscriptions/",
                self.sub,
                "/sources/",
                &s.event_type,
            ]),
        )?;
        m.end()
    }
}

// ---------------------------------------------------------------- parsing

/// Checks that `obj` has only `allowed` keys (ERR_NGROK_214 otherwise).
pub fn only_keys(obj: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), ApiError> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad(
                "ERR_NGROK_214",
                format!(
                    "The parameter '{k}' of {what} is unknown; supported fields are: {}.",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// An object member, or `None` when absent or null.
pub fn member<'a>(obj: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    obj.get(k).filter(|v| !v.is_null())
}

/// A string member (`None` when absent or null; ERR_NGROK_215 when not a string).
pub fn string(obj: &Map<String, Value>, k: &str) -> Result<Option<String>, ApiError> {
    match member(obj, k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad(
            "ERR_NGROK_215",
            format!("Invalid value for parameter '{k}': expected a string."),
        )),
    }
}

/// An object member (ERR_NGROK_215 when not an object).
pub fn object<'a>(
    obj: &'a Map<String, Value>,
    k: &str,
) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    match member(obj, k) {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(ApiError::bad(
            "ERR_NGROK_215",
            format!("Invalid value for parameter '{k}': expected an object."),
        )),
    }
}

/// Checks `description` and `metadata` lengths.
pub fn check_lengths(description: Option<&str>, metadata: Option<&str>) -> Result<(), ApiError> {
    if let Some(d) = description
        && d.len() > 255
    {
        return Err(ApiError::bad(
            "ERR_NGROK_215",
            format!(
                "Invalid value for parameter 'description': it is {} bytes, the maximum is 255.",
                d.len()
            ),
        ));
    }
    if let Some(m) = metadata
        && m.len() > 4096
    {
        return Err(ApiError::bad(
            "ERR_NGROK_215",
            format!(
                "Invalid value for parameter 'metadata': it is {} bytes, the maximum is 4096.",
                m.len()
            ),
        ));
    }
    Ok(())
}

/// Normalizes `format`: empty means `json`; anything but JSON is ERR_NGROK_235.
pub fn check_format(f: Option<&str>) -> Result<String, ApiError> {
    match f.map(str::trim) {
        None | Some("") => Ok("json".into()),
        Some(f) if f.eq_ignore_ascii_case("json") => Ok("json".into()),
        Some(f) => Err(ApiError::bad(
            "ERR_NGROK_235",
            format!("The format '{f}' is not valid; the only supported format is 'json'."),
        )),
    }
}

const PARTITIONS: &[&str] = &[
    "aws",
    "aws-cn",
    "aws-us-gov",
    "aws-iso",
    "aws-iso-b",
    "aws-iso-e",
    "aws-iso-f",
    "ngrok-local",
];

/// The parts of an ARN: partition, service, region, account, resource.
pub struct Arn<'a> {
    /// Partition.
    pub partition: &'a str,
    /// Service.
    pub service: &'a str,
    /// Region.
    pub region: &'a str,
    /// Account id.
    pub account: &'a str,
    /// Resource.
    pub resource: &'a str,
}

fn region_ok(r: &str) -> bool {
    // us-east-1, eu-central-2, us-gov-west-1, ap-southeast-4, il-central-1, ...
    let parts: Vec<&str> = r.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[0].bytes().all(|b| b.is_ascii_lowercase())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// Parses and checks an ARN for `service` with a resource starting `resource_prefix`.
/// `field` names the parameter in messages. The region is required unless
/// `service` is `iam`.
pub fn check_arn<'a>(
    arn: &'a str,
    field: &str,
    service: &str,
    resource_prefix: &str,
) -> Result<Arn<'a>, ApiError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" {
        return Err(ApiError::bad(
            "ERR_NGROK_5120",
            format!(
                "'{field}' is not a valid ARN: expected arn:<partition>:<service>:<region>:<account>:<resource>, got '{arn}'."
            ),
        ));
    }
    let a = Arn {
        partition: parts[1],
        service: parts[2],
        region: parts[3],
        account: parts[4],
        resource: parts[5],
    };
    if !PARTITIONS.contains(&a.partition) {
        return Err(ApiError::bad(
            "ERR_NGROK_5118",
            format!(
                "'{field}' has an unknown partition '{}'; expected one of {}.",
                a.partition,
                PARTITIONS.join(", ")
            ),
        ));
    }
    const SERVICES: &[&str] = &["kinesis", "firehose", "logs", "iam", "s3", "sts"];
    if !SERVICES.contains(&a.service) {
        return Err(ApiError::bad(
            "ERR_NGROK_5119",
            format!("'{field}' names an unknown service '{}'.", a.service),
        ));
    }
    if a.service != service {
        return Err(ApiError::bad(
            "ERR_NGROK_5129",
            format!(
                "'{field}' is an ARN of service '{}', but this field needs a '{service}' ARN.",
                a.service
            ),
        ));
    }
    if service == "iam" {
        if !a.region.is_empty() {
            return Err(ApiError::bad(
                "ERR_NGROK_5120",
                format!("'{field}': IAM ARNs have no region, got '{}'.", a.region),
            ));
        }
    } else if !region_ok(a.region) {
        return Err(ApiError::bad(
            "ERR_NGROK_5120",
            format!("'{field}' has an invalid region '{}'.", a.region),
        ));
    }
    if a.account.len() != 12 || !a.account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad(
            "ERR_NGROK_5120",
            format!(
                "'{field}' has an invalid account id '{}': expected 12 digits.",
                a.account
            ),
        ));
    }
    let name = a.resource.strip_prefix(resource_prefix);
    if name.is_none_or(|n| n.is_empty() || n == "*") {
        return Err(ApiError::bad(
            "ERR_NGROK_5130",
            format!(
                "'{field}' must name a resource '{resource_prefix}<name>', got '{}'.",
                a.resource
            ),
        ));
    }
    Ok(a)
}

fn parse_auth(t: &Map<String, Value>, old: Option<&AwsAuth>) -> Result<AwsAuth, ApiError> {
    let Some(auth) = object(t, "auth")? else {
        return Err(ApiError::bad(
            "ERR_NGROK_5106",
            "An AWS target needs 'auth': exactly one of 'role' or 'creds'.",
        ));
    };
    only_keys(auth, &["role", "creds"], "auth")?;
    let role = object(auth, "role")?;
    let creds = object(auth, "creds")?;
    match (role, creds) {
        (Some(_), Some(_)) => Err(ApiError::bad(
            "ERR_NGROK_5116",
            "'auth' must have exactly one of 'role' or 'creds', not both.",
        )),
        (None, None) => Err(ApiError::bad(
            "ERR_NGROK_5107",
            "'auth' must have one of 'role' or 'creds'.",
        )),
        (Some(r), None) => {
            only_keys(r, &["role_arn"], "role")?;
            let arn = string(r, "role_arn")?.unwrap_or_default();
            check_arn(&arn, "role_arn", "iam", "role/").map_err(|e| {
                ApiError::bad(
                    "ERR_NGROK_5104",
                    format!("'role_arn' is not a valid IAM role ARN: {}", e.msg),
                )
            })?;
            Ok(AwsAuth::Role { role_arn: arn })
        }
        (None, Some(c)) => {
            only_keys(c, &["aws_access_key_id", "aws_secret_access_key"], "creds")?;
            let id = string(c, "aws_access_key_id")?.unwrap_or_default();
            let mut secret = string(c, "aws_secret_access_key")?.unwrap_or_default();
            // A redacted secret sent back unchanged keeps the stored one.
            if secret.is_empty()
                && let Some(AwsAuth::Creds {
                    aws_access_key_id,
                    aws_secret_access_key,
                }) = old
                && *aws_access_key_id == id
            {
                secret = aws_secret_access_key.clone();
            }
            if id.is_empty() || secret.is_empty() {
                return Err(ApiError::bad(
                    "ERR_NGROK_5140",
                    "'creds' needs both 'aws_access_key_id' and 'aws_secret_access_key'.",
                ));
            }
            Ok(AwsAuth::Creds {
                aws_access_key_id: id,
                aws_secret_access_key: secret,
            })
        }
    }
}

/// Parses an `EventTarget`. `old` is the current target of a destination
/// being updated (secrets not re-sent are kept from it). The operator's
/// `policy` says which kinds are offered (of the `loaded` plugin kinds) and
/// bounds the delivery settings.
pub fn parse_target(
    v: &Value,
    old: Option<&Target>,
    policy: &TenantPolicy,
    loaded: &[String],
) -> Result<Target, ApiError> {
    let Value::Object(t) = v else {
        return Err(ApiError::bad(
            "ERR_NGROK_236",
            "'target' must be an object with exactly one of kinesis, firehose, cloudwatch_logs, datadog, azure_logs_ingestion.",
        ));
    };
    let mut allowed: Vec<&str> = TARGET_MEMBERS.to_vec();
    allowed.push("plugin");
    allowed.push("s3");
    allowed.push("debug");
    only_keys(t, &allowed, "target")?;
    let set: Vec<&str> = allowed
        .iter()
        .copied()
        .filter(|k| member(t, k).is_some())
        .collect();
    match set.len() {
        0 => {
            return Err(ApiError::bad(
                "ERR_NGROK_5100",
                "The target must contain exactly one of: kinesis, firehose, cloudwatch_logs, datadog, azure_logs_ingestion (or plugin).",
            ));
        }
        1 => {}
        _ => {
            return Err(ApiError::bad(
                "ERR_NGROK_5115",
                format!(
                    "The target must contain exactly one member, found {}.",
                    set.join(", ")
                ),
            ));
        }
    }
    let name = set[0];
    if name == "s3" || name == "debug" {
        return Err(ApiError::bad(
            "ERR_NGROK_236",
            format!("The '{name}' target is not supported: reach S3 through firehose."),
        ));
    }
    let m = object(t, name)?
        .ok_or_else(|| ApiError::bad("ERR_NGROK_236", "target member must be an object"))?;
    if name != "plugin" {
        policy.check_kind(name, loaded)?;
    }
    let old_auth = match old {
        Some(
            Target::Kinesis { auth, .. }
            | Target::Firehose { auth, .. }
            | Target::CloudwatchLogs { auth, .. },
        ) => Some(auth),
        _ => None,
    };
    Ok(match name {
        "kinesis" => {
            only_keys(m, &["auth", "stream_arn"], "kinesis")?;
            let auth = parse_auth(m, old_auth)?;
            let arn = string(m, "stream_arn")?.unwrap_or_default();
            check_arn(&arn, "stream_arn", "kinesis", "stream/")?;
            Target::Kinesis {
                auth,
                stream_arn: arn,
            }
        }
        "firehose" => {
            only_keys(m, &["auth", "delivery_stream_arn"], "firehose")?;
            let auth = parse_auth(m, old_auth)?;
            let arn = string(m, "delivery_stream_arn")?.unwrap_or_default();
            check_arn(&arn, "delivery_stream_arn", "firehose", "deliverystream/")?;
            Target::Firehose {
                auth,
                delivery_stream_arn: arn,
            }
        }
        "cloudwatch_logs" => {
            only_keys(m, &["auth", "log_group_arn"], "cloudwatch_logs")?;
            let auth = parse_auth(m, old_auth)?;
            let arn = string(m, "log_group_arn")?.unwrap_or_default();
            check_arn(&arn, "log_group_arn", "logs", "log-group:")?;
            Target::CloudwatchLogs {
                auth,
                log_group_arn: arn,
            }
        }
        "datadog" => {
            only_keys(m, &["api_key", "ddtags", "service", "ddsite"], "datadog")?;
            let mut api_key = string(m, "api_key")?.unwrap_or_default();
            if api_key.is_empty()
                && let Some(Target::Datadog { api_key: k, .. }) = old
            {
                api_key = k.clone();
            }
            if api_key.is_empty() {
                return Err(ApiError::bad(
                    "ERR_NGROK_5133",
                    "A Datadog target needs an 'api_key'.",
                ));
            }
            let ddsite = string(m, "ddsite")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "datadoghq.com".into());
            if !DATADOG_SITES.contains(&ddsite.as_str()) {
                return Err(ApiError::bad(
                    "ERR_NGROK_5134",
                    format!(
                        "'ddsite' must be one of {}, got '{ddsite}'.",
                        DATADOG_SITES.join(", ")
                    ),
                ));
            }
            Target::Datadog {
                api_key,
                ddtags: string(m, "ddtags")?.unwrap_or_default(),
                service: string(m, "service")?.unwrap_or_default(),
                ddsite,
            }
        }
        "azure_logs_ingestion" => {
            only_keys(
                m,
                &[
                    "tenant_id",
                    "client_id",
                    "client_secret",
                    "logs_ingestion_uri",
                    "data_collection_rule_id",
                    "data_collection_stream_name",
                ],
                "azure_logs_ingestion",
            )?;
            let get = |k: &str| string(m, k).map(Option::unwrap_or_default);
            let dcr = get("data_collection_rule_id")?;
            if !dcr.starts_with("dcr-") || dcr.len() < 8 {
                return Err(ApiError::bad(
                    "ERR_NGROK_5136",
                    format!(
                        "'data_collection_rule_id' must be a DCR immutable id (dcr-...), got '{dcr}'."
                    ),
                ));
            }
            let stream = get("data_collection_stream_name")?;
            if stream.is_empty() {
                return Err(ApiError::bad(
                    "ERR_NGROK_5137",
                    "'data_collection_stream_name' is required (e.g. Custom-NgrokEvents_CL).",
                ));
            }
            let uri = get("logs_ingestion_uri")?;
            let uri_ok = (uri.starts_with("https://") || uri.starts_with("http://"))
                && uri.split("://").nth(1).is_some_and(|h| !h.is_empty());
            if !uri_ok {
                return Err(ApiError::bad(
                    "ERR_NGROK_5138",
                    format!(
                        "'logs_ingestion_uri' must be the data collection endpoint URL, got '{uri}'."
                    ),
                ));
            }
            let mut secret = get("client_secret")?;
            if secret.is_empty()
                && let Some(Target::AzureLogsIngestion { client_secret, .. }) = old
            {
                secret = client_secret.clone();
            }
            let (tenant, client) = (get("tenant_id")?, get("client_id")?);
            if tenant.is_empty() || client.is_empty() || secret.is_empty() {
                return Err(ApiError::bad(
                    "ERR_NGROK_5139",
                    "'tenant_id', 'client_id' and 'client_secret' are all required.",
                ));
            }
            Target::AzureLogsIngestion {
                tenant_id: tenant,
                client_id: client,
                client_secret: secret,
                logs_ingestion_uri: uri,
                data_collection_rule_id: dcr,
                data_collection_stream_name: stream,
            }
        }
        _ => {
            only_keys(m, &["kind", "config", "delivery"], "plugin")?;
            let kind = string(m, "kind")?.unwrap_or_default();
            policy.check_kind(&kind, loaded)?;
            let mut config = member(m, "config").cloned().unwrap_or_else(|| json!({}));
            if !config.is_object() {
                return Err(ApiError::bad(
                    "ERR_NGROK_215",
                    "Invalid value for parameter 'config': expected an object.",
                ));
            }
            // Endpoints are the operator's (environment), never a tenant's.
            let operator_keys: &[&str] = match kind.as_str() {
                "datadog" => &["intake_url"],
                "azure_logs_ingestion" => &["authority_url"],
                _ => &[],
            };
            if let Some(k) = operator_keys.iter().find(|k| config.get(**k).is_some()) {
                return Err(ApiError::bad(
                    "ERR_NGROK_5140",
                    format!(
                        "'{k}' of a {kind} plugin target is set by the operator, not through the API."
                    ),
                ));
            }
            if AWS_KINDS.contains(&kind.as_str()) {
                // A tenant's AWS plugin target gets the guarantees of the
                // native targets: its own account as the external id, its
                // own credentials, the real AWS endpoints.
                for k in ["external_id", "endpoint_url"] {
                    if config.get(k).is_some() {
                        return Err(ApiError::bad(
                            "ERR_NGROK_5140",
                            format!(
                                "'{k}' of a {kind} plugin target is set by the operator, not through the API."
                            ),
                        ));
                    }
                }
                if config.get("auth").is_none_or(Value::is_null) {
                    return Err(ApiError::bad(
                        "ERR_NGROK_5106",
                        format!("A {kind} target requires 'auth' (a role or credentials)."),
                    ));
                }
            }
            // Redacted secrets sent back unchanged keep the stored values.
            if let Some(Target::Plugin {
                kind: k,
                config: old_config,
                ..
            }) = old
                && *k == kind
            {
                restore_secrets(&mut config, old_config);
            }
            // Directories are the operator's: no tenant names a path on the
            // server (`sluice serve` puts buffers and dead letters under its
            // data directory).
            if let Some(Value::Object(d)) = member(m, "delivery")
                && let Some(k) = ["buffer_dir", "dead_letter_dir"]
                    .into_iter()
                    .find(|k| d.contains_key(*k))
            {
                return Err(ApiError::bad(
                    "ERR_NGROK_215",
                    format!(
                        "Invalid value for parameter 'delivery': '{k}' is set by the server's operator, not through the API."
                    ),
                ));
            }
            if kind == "file" {
                check_file_config(&mut config)?;
            }
            let delivery = match member(m, "delivery") {
                None => None,
                Some(d) => {
                    let bad = |e: String| {
                        ApiError::bad(
                            "ERR_NGROK_215",
                            format!("Invalid value for parameter 'delivery': {e}"),
                        )
                    };
                    let mut parsed = serde_json::from_value::<DeliveryConfig>(d.clone())
                        .map_err(|e| bad(e.to_string()))?;
                    let given: Vec<&str> = d
                        .as_object()
                        .map(|o| o.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    policy.delivery.apply(&mut parsed, &given).map_err(bad)?;
                    parsed.check().map_err(bad)?;
                    Some(parsed)
                }
            };
            Target::Plugin {
                kind,
                config,
                delivery,
            }
        }
    })
}

/// The `file` plugin's configuration, as a tenant may give it: `path`
/// relative to the account's file area (resolved by [`Destination::to_spec`]),
/// rotation bounded so that one tenant cannot fill the disk.
fn check_file_config(config: &mut Value) -> Result<(), ApiError> {
    let bad = |msg: String| ApiError::bad("ERR_NGROK_5140", format!("file target: {msg}"));
    let path = config
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("'path' (a string) is required".into()))?;
    crate::policy::check_file_path(path).map_err(bad)?;
    let o = config
        .as_object_mut()
        .ok_or_else(|| bad("'config' must be an object".into()))?;
    for (key, default, min, max) in [
        ("max_files", 10, 1, 100),
        ("max_bytes", 128 << 20, 1 << 20, 1 << 30),
    ] {
        match o.get(key).map(Value::as_u64) {
            None => {
                o.insert(key.into(), json!(default));
            }
            Some(Some(v)) if (min..=max).contains(&v) => {}
            Some(_) => {
                return Err(bad(format!(
                    "'{key}' must be a whole number from {min} to {max} on this server"
                )));
            }
        }
    }
    Ok(())
}

fn restore_secrets(new: &mut Value, old: &Value) {
    restore_secrets_in(new, old, false)
}

/// An update that sends a secret back redacted (empty) keeps the stored one.
fn restore_secrets_in(new: &mut Value, old: &Value, in_headers: bool) {
    if let (Value::Object(n), Value::Object(o)) = (new, old) {
        for (k, v) in n.iter_mut() {
            let headers = k.eq_ignore_ascii_case("headers");
            match (v, o.get(k)) {
                (Value::String(s), Some(Value::String(prev)))
                    if s.is_empty() && is_secret_member(k, in_headers) =>
                {
                    *s = prev.clone()
                }
                (v @ Value::Object(_), Some(prev)) => restore_secrets_in(v, prev, headers),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_headers_are_redacted_and_kept_on_update() {
        let cfg = json!({"url": "https://x", "headers": {
            "X-Api-Key": "k1", "DD-API-KEY": "k2", "Authorization": "Bearer t", "Cookie": "c",
            "X-Auth-Token": "t2", "Content-Type": "application/json", "X-Team": "net"}});
        let r = redact(&cfg);
        for h in [
            "X-Api-Key",
            "DD-API-KEY",
            "Authorization",
            "Cookie",
            "X-Auth-Token",
        ] {
            assert_eq!(r["headers"][h], "", "{h}");
        }
        assert_eq!(r["headers"]["Content-Type"], "application/json");
        assert_eq!(r["headers"]["X-Team"], "net");
        // Outside `headers`, names keep their own rule: a partition key is no secret.
        assert_eq!(redact(&json!({"partition_key": "p"}))["partition_key"], "p");
        let mut back = r.clone();
        restore_secrets(&mut back, &cfg);
        assert_eq!(back, cfg);
    }

    fn test_policy() -> TenantPolicy {
        let mut p = TenantPolicy::default();
        p.plugin_kinds.push("file".into());
        p
    }

    fn dest(account: &str, target: Target) -> Destination {
        Destination {
            id: "ed_1".into(),
            account_id: account.into(),
            created_at: String::new(),
            description: String::new(),
            metadata: String::new(),
            format: "json".into(),
            target,
        }
    }

    fn target(v: Value) -> Result<Target, ApiError> {
        parse_target(&v, None, &test_policy(), &["file".to_string()])
    }

    fn code(v: Value) -> &'static str {
        target(v).unwrap_err().code.unwrap_or("")
    }

    #[test]
    fn aws_plugin_targets_get_the_account_as_external_id_and_no_endpoint() {
        let kinds = vec!["kinesis".to_string()];
        let parse = |c: Value| {
            parse_target(
                &json!({"plugin": {"kind": "kinesis", "config": c}}),
                None,
                &test_policy(),
                &kinds,
            )
        };
        let arn = "arn:aws:kinesis:us-east-1:1:stream/s";
        let auth = json!({"creds": {"aws_access_key_id": "a", "aws_secret_access_key": "b"}});
        for (c, code) in [
            (
                json!({"stream_arn": arn, "auth": auth, "external_id": "ac_other"}),
                "ERR_NGROK_5140",
            ),
            (
                json!({"stream_arn": arn, "auth": auth, "endpoint_url": "http://169.254.169.254"}),
                "ERR_NGROK_5140",
            ),
            (json!({"stream_arn": arn}), "ERR_NGROK_5106"),
        ] {
            assert_eq!(parse(c.clone()).unwrap_err().code, Some(code), "{c}");
        }
        let t =
            parse(json!({"stream_arn": arn, "auth": auth, "partition_key": "event_id"})).unwrap();
        let d = dest("ac_1", t);
        let spec = d.to_spec(&test_policy(), std::path::Path::new("/data"));
        assert_eq!(spec.config["external_id"], "ac_1");
        assert_eq!(spec.config["partition_key"], "event_id");
    }

    #[test]
    fn the_docs_example_parses_and_renders_with_every_member() {
        let t = target(json!({"kinesis":{"auth":{"role":{"role_arn":"arn:aws:iam::123456789012:role/example"}},"stream_arn":"arn:ngrok-local:kinesis:us-east-2:123456789012:stream/mystream2"}})).unwrap();
        let d = Destination {
            id: "ed_1".into(),
            account_id: "ac_1".into(),
            created_at: "2024-08-02T07:15:39Z".into(),
            description: "kinesis dev stream".into(),
            metadata: "{}".into(),
            format: "json".into(),
            target: t,
        };
        let v = d.to_json("https://x");
        assert_eq!(v["target"]["datadog"], Value::Null);
        assert_eq!(v["target"]["kinesis"]["auth"]["creds"], Value::Null);
        assert_eq!(
            v["target"]["kinesis"]["auth"]["role"]["role_arn"],
            "arn:aws:iam::123456789012:role/example"
        );
        assert_eq!(v["uri"], "https://x/event_destinations/ed_1");
        let spec = d.to_spec(&test_policy(), std::path::Path::new("/data"));
        assert_eq!(spec.kind, "kinesis");
        assert_eq!(spec.config["external_id"], d.account_id.as_str());
        assert_eq!(
            spec.config["stream_arn"],
            v["target"]["kinesis"]["stream_arn"]
        );
    }

    #[test]
    fn each_target_mistake_has_its_code() {
        let role = json!({"role":{"role_arn":"arn:aws:iam::123456789012:role/x"}});
        let k = |arn: &str| json!({"kinesis":{"auth": role, "stream_arn": arn}});
        assert_eq!(code(json!({})), "ERR_NGROK_5100");
        assert_eq!(
            code(json!({"kinesis": null, "firehose": null})),
            "ERR_NGROK_5100"
        );
        assert_eq!(code(json!({"kinesis":{}, "datadog":{}})), "ERR_NGROK_5115");
        assert_eq!(
            code(json!({"kinesis":{"stream_arn":"x"}})),
            "ERR_NGROK_5106"
        );
        assert_eq!(
            code(json!({"kinesis":{"auth":{}, "stream_arn":"x"}})),
            "ERR_NGROK_5107"
        );
        assert_eq!(
            code(json!({"kinesis":{"auth":{"role":{"role_arn":"a"},"creds":{}}}})),
            "ERR_NGROK_5116"
        );
        assert_eq!(
            code(
                json!({"kinesis":{"auth":{"role":{"role_arn":"arn:aws:iam::123456789012:user/x"}}}})
            ),
            "ERR_NGROK_5104"
        );
        assert_eq!(code(k("nope")), "ERR_NGROK_5120");
        assert_eq!(
            code(k("arn:azure:kinesis:us-east-1:123456789012:stream/s")),
            "ERR_NGROK_5118"
        );
        assert_eq!(
            code(k("arn:aws:dynamo:us-east-1:123456789012:stream/s")),
            "ERR_NGROK_5119"
        );
        assert_eq!(
            code(k(
                "arn:aws:firehose:us-east-1:123456789012:deliverystream/s"
            )),
            "ERR_NGROK_5129"
        );
        assert_eq!(
            code(k("arn:aws:kinesis:us-east-1:123456789012:table/s")),
            "ERR_NGROK_5130"
        );
        assert_eq!(
            code(k("arn:aws:kinesis:mars-1:123456789012:stream/s")),
            "ERR_NGROK_5120"
        );
        assert_eq!(
            code(json!({"datadog":{"ddsite":"datadoghq.com"}})),
            "ERR_NGROK_5133"
        );
        assert_eq!(
            code(json!({"datadog":{"api_key":"k","ddsite":"datadoghq.org"}})),
            "ERR_NGROK_5134"
        );
        let az = json!({"tenant_id":"t","client_id":"c","client_secret":"s","logs_ingestion_uri":"https://dce.ingest.monitor.azure.com","data_collection_rule_id":"dcr-0123456789","data_collection_stream_name":"Custom-X_CL"});
        assert!(target(json!({"azure_logs_ingestion": az})).is_ok());
        let mut bad = az.clone();
        bad["data_collection_rule_id"] = json!("x");
        assert_eq!(code(json!({"azure_logs_ingestion": bad})), "ERR_NGROK_5136");
        let mut bad = az.clone();
        bad["data_collection_stream_name"] = json!("");
        assert_eq!(code(json!({"azure_logs_ingestion": bad})), "ERR_NGROK_5137");
        let mut bad = az.clone();
        bad["logs_ingestion_uri"] = json!("dce");
        assert_eq!(code(json!({"azure_logs_ingestion": bad})), "ERR_NGROK_5138");
        let mut bad = az;
        bad["client_secret"] = json!("");
        assert_eq!(code(json!({"azure_logs_ingestion": bad})), "ERR_NGROK_5139");
        assert_eq!(
            code(
                json!({"kinesis":{"auth": role, "stream_arn":"arn:aws:kinesis:us-east-1:123456789012:stream/s", "extra": 1}})
            ),
            "ERR_NGROK_214"
        );
        assert_eq!(code(json!({"plugin":{"kind":"nope"}})), "ERR_NGROK_5140");
        assert!(target(json!({"plugin":{"kind":"file","config":{"path":"x"}}})).is_ok());
    }

    #[test]
    fn secrets_are_redacted_and_kept_when_sent_back_redacted() {
        let creds = json!({"kinesis":{"auth":{"creds":{"aws_access_key_id":"AK","aws_secret_access_key":"SECRET"}},"stream_arn":"arn:aws:kinesis:us-east-1:123456789012:stream/s"}});
        let t = target(creds).unwrap();
        let d = dest("a", t.clone());
        let shown = d.to_json("http://h");
        assert!(!shown.to_string().contains("SECRET"));
        assert_eq!(
            shown["target"]["kinesis"]["auth"]["creds"]["aws_secret_access_key"],
            ""
        );
        assert!(
            d.to_spec(&test_policy(), std::path::Path::new("/data"))
                .config
                .to_string()
                .contains("SECRET"),
            "the engine gets the secret"
        );
        let again = parse_target(&shown["target"], Some(&t), &test_policy(), &[]).unwrap();
        assert_eq!(again, t);
        let p = Target::Plugin {
            kind: "x".into(),
            config: json!({"url":"u","headers":{"Authorization":"Bearer T"},"api_key":"K"}),
            delivery: None,
        };
        let d2 = Destination { target: p, ..d };
        let s = d2.to_json("h").to_string();
        assert!(!s.contains("Bearer T") && !s.contains("\"K\""), "{s}");
    }

    #[test]
    fn file_targets_stay_in_the_account_area_and_delivery_in_its_bounds() {
        let file = |config: Value| json!({"plugin": {"kind": "file", "config": config}});
        for bad in [
            json!({"path": "/etc/x"}),
            json!({"path": "../../sluice.db"}),
            json!({"path": "x", "max_files": 0}),
            json!({"path": "x", "max_bytes": 1}),
            json!({}),
        ] {
            assert_eq!(code(file(bad.clone())), "ERR_NGROK_5140", "{bad}");
        }
        let t = target(file(json!({"path": "a/x.ndjson"}))).unwrap();
        let d = dest("ac_1", t);
        let spec = d.to_spec(&test_policy(), std::path::Path::new("/data"));
        assert_eq!(spec.config["path"], "/data/files/ac_1/a/x.ndjson");
        assert_eq!(spec.config["max_files"], 10);
        let e = parse_target(
            &file(json!({"path": "x"})),
            None,
            &TenantPolicy::default(),
            &["file".to_string()],
        )
        .unwrap_err();
        assert!(e.msg.contains("not offered"), "{}", e.msg);
        let slow = json!({"plugin": {"kind": "file", "config": {"path": "x"}, "delivery": {"send_timeout_ms": 0}}});
        assert_eq!(code(slow), "ERR_NGROK_215");
    }
}
