//! Request bodies to resources: unknown keys refused, every field checked
//! (lengths, formats, ARNs, targets the operator offers), secrets sent back
//! redacted on a PATCH kept as they were.

use super::*;
use crate::error::{ApiError, Code};

/// Checks that `obj` has only `allowed` keys (ERR_NGROK_214 otherwise).
pub fn only_keys(obj: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), ApiError> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::new(
                Code::UnknownField,
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
        Some(_) => Err(ApiError::new(
            Code::InvalidFieldValue,
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
        Some(_) => Err(ApiError::new(
            Code::InvalidFieldValue,
            format!("Invalid value for parameter '{k}': expected an object."),
        )),
    }
}

/// Checks `description` and `metadata` lengths.
pub fn check_lengths(description: Option<&str>, metadata: Option<&str>) -> Result<(), ApiError> {
    if let Some(d) = description
        && d.len() > 255
    {
        return Err(ApiError::new(
            Code::InvalidFieldValue,
            format!(
                "Invalid value for parameter 'description': it is {} bytes, the maximum is 255.",
                d.len()
            ),
        ));
    }
    if let Some(m) = metadata
        && m.len() > 4096
    {
        return Err(ApiError::new(
            Code::InvalidFieldValue,
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
        Some(f) => Err(ApiError::new(
            Code::InvalidFormat,
            format!("The format '{f}' is not valid; the only supported format is 'json'."),
        )),
    }
}

pub(crate) const PARTITIONS: &[&str] = &[
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

pub(crate) fn region_ok(r: &str) -> bool {
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
        return Err(ApiError::new(
            Code::InvalidArn,
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
        return Err(ApiError::new(
            Code::ArnPartition,
            format!(
                "'{field}' has an unknown partition '{}'; expected one of {}.",
                a.partition,
                PARTITIONS.join(", ")
            ),
        ));
    }
    const SERVICES: &[&str] = &["kinesis", "firehose", "logs", "iam", "s3", "sts"];
    if !SERVICES.contains(&a.service) {
        return Err(ApiError::new(
            Code::ArnService,
            format!("'{field}' names an unknown service '{}'.", a.service),
        ));
    }
    if a.service != service {
        return Err(ApiError::new(
            Code::ArnServiceMismatch,
            format!(
                "'{field}' is an ARN of service '{}', but this field needs a '{service}' ARN.",
                a.service
            ),
        ));
    }
    if service == "iam" {
        if !a.region.is_empty() {
            return Err(ApiError::new(
                Code::InvalidArn,
                format!("'{field}': IAM ARNs have no region, got '{}'.", a.region),
            ));
        }
    } else if !region_ok(a.region) {
        return Err(ApiError::new(
            Code::InvalidArn,
            format!("'{field}' has an invalid region '{}'.", a.region),
        ));
    }
    if a.account.len() != 12 || !a.account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::new(
            Code::InvalidArn,
            format!(
                "'{field}' has an invalid account id '{}': expected 12 digits.",
                a.account
            ),
        ));
    }
    let name = a.resource.strip_prefix(resource_prefix);
    if name.is_none_or(|n| n.is_empty() || n == "*") {
        return Err(ApiError::new(
            Code::ArnResourceTypeMismatch,
            format!(
                "'{field}' must name a resource '{resource_prefix}<name>', got '{}'.",
                a.resource
            ),
        ));
    }
    Ok(a)
}

pub(crate) fn parse_auth(
    t: &Map<String, Value>,
    old: Option<&AwsAuth>,
) -> Result<AwsAuth, ApiError> {
    let Some(auth) = object(t, "auth")? else {
        return Err(ApiError::new(
            Code::MissingAwsAuth,
            "An AWS target needs 'auth': exactly one of 'role' or 'creds'.",
        ));
    };
    only_keys(auth, &["role", "creds"], "auth")?;
    let role = object(auth, "role")?;
    let creds = object(auth, "creds")?;
    match (role, creds) {
        (Some(_), Some(_)) => Err(ApiError::new(
            Code::SeveralAuthTypes,
            "'auth' must have exactly one of 'role' or 'creds', not both.",
        )),
        (None, None) => Err(ApiError::new(
            Code::EmptyAwsAuth,
            "'auth' must have one of 'role' or 'creds'.",
        )),
        (Some(r), None) => {
            only_keys(r, &["role_arn"], "role")?;
            let arn = string(r, "role_arn")?.unwrap_or_default();
            check_arn(&arn, "role_arn", "iam", "role/").map_err(|e| {
                ApiError::new(
                    Code::InvalidRoleArn,
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
                return Err(ApiError::new(
                    Code::InvalidDestination,
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

/// The JSON schema of an ngrok target's object (the keys
/// [`parse_target`] takes), for forms such as the console's; `None` for a
/// plugin kind (its plugin declares its own).
pub fn target_schema(kind: &str) -> Option<Value> {
    let aws_auth = serde_json::json!({"type": "object",
        "description": "{\"role\": {\"role_arn\": \"arn:aws:iam::ACCOUNT:role/NAME\"}} or {\"creds\": {\"aws_access_key_id\": ..., \"aws_secret_access_key\": ...}}"});
    let aws = |arn: &str, what: &str| {
        serde_json::json!({"type": "object", "required": ["auth", arn], "properties": {
            "auth": aws_auth,
            arn: {"type": "string", "description": what},
        }})
    };
    Some(match kind {
        "kinesis" => aws("stream_arn", "arn:aws:kinesis:REGION:ACCOUNT:stream/NAME"),
        "firehose" => aws(
            "delivery_stream_arn",
            "arn:aws:firehose:REGION:ACCOUNT:deliverystream/NAME",
        ),
        "cloudwatch_logs" => aws(
            "log_group_arn",
            "arn:aws:logs:REGION:ACCOUNT:log-group:NAME",
        ),
        "datadog" => serde_json::json!({"type": "object", "required": ["api_key"], "properties": {
            "api_key": {"type": "string", "description": "a Datadog API key"},
            "ddsite": {"type": "string", "description": "the Datadog site, e.g. datadoghq.eu"},
            "ddtags": {"type": "string", "description": "tags, comma-separated"},
            "service": {"type": "string"},
        }}),
        "azure_logs_ingestion" => serde_json::json!({"type": "object", "required": [
            "tenant_id", "client_id", "client_secret", "logs_ingestion_uri",
            "data_collection_rule_id", "data_collection_stream_name"], "properties": {
            "tenant_id": {"type": "string"},
            "client_id": {"type": "string"},
            "client_secret": {"type": "string"},
            "logs_ingestion_uri": {"type": "string", "description": "https://NAME.REGION.ingest.monitor.azure.com"},
            "data_collection_rule_id": {"type": "string", "description": "dcr-..."},
            "data_collection_stream_name": {"type": "string", "description": "Custom-..."},
        }}),
        _ => return None,
    })
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
        return Err(ApiError::new(
            Code::InvalidTarget,
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
            return Err(ApiError::new(
                Code::NoTarget,
                "The target must contain exactly one of: kinesis, firehose, cloudwatch_logs, datadog, azure_logs_ingestion (or plugin).",
            ));
        }
        1 => {}
        _ => {
            return Err(ApiError::new(
                Code::SeveralTargets,
                format!(
                    "The target must contain exactly one member, found {}.",
                    set.join(", ")
                ),
            ));
        }
    }
    let name = set[0];
    if name == "s3" || name == "debug" {
        return Err(ApiError::new(
            Code::InvalidTarget,
            format!("The '{name}' target is not supported: reach S3 through firehose."),
        ));
    }
    let m = object(t, name)?
        .ok_or_else(|| ApiError::new(Code::InvalidTarget, "target member must be an object"))?;
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
                return Err(ApiError::new(
                    Code::DatadogApiKeyMissing,
                    "A Datadog target needs an 'api_key'.",
                ));
            }
            let ddsite = string(m, "ddsite")?
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "datadoghq.com".into());
            if !DATADOG_SITES.contains(&ddsite.as_str()) {
                return Err(ApiError::new(
                    Code::InvalidDatadogSite,
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
                return Err(ApiError::new(
                    Code::AzureDcrId,
                    format!(
                        "'data_collection_rule_id' must be a DCR immutable id (dcr-...), got '{dcr}'."
                    ),
                ));
            }
            let stream = get("data_collection_stream_name")?;
            if stream.is_empty() {
                return Err(ApiError::new(
                    Code::AzureStreamName,
                    "'data_collection_stream_name' is required (e.g. Custom-NgrokEvents_CL).",
                ));
            }
            let uri = get("logs_ingestion_uri")?;
            let uri_ok = (uri.starts_with("https://") || uri.starts_with("http://"))
                && uri.split("://").nth(1).is_some_and(|h| !h.is_empty());
            if !uri_ok {
                return Err(ApiError::new(
                    Code::AzureIngestionUri,
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
                return Err(ApiError::new(
                    Code::AzureConfig,
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
                return Err(ApiError::new(
                    Code::InvalidFieldValue,
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
                return Err(ApiError::new(
                    Code::InvalidDestination,
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
                        return Err(ApiError::new(
                            Code::InvalidDestination,
                            format!(
                                "'{k}' of a {kind} plugin target is set by the operator, not through the API."
                            ),
                        ));
                    }
                }
                if config.get("auth").is_none_or(Value::is_null) {
                    return Err(ApiError::new(
                        Code::MissingAwsAuth,
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
                return Err(ApiError::new(
                    Code::InvalidFieldValue,
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
                        ApiError::new(
                            Code::InvalidFieldValue,
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
pub(crate) fn check_file_config(config: &mut Value) -> Result<(), ApiError> {
    let bad = |msg: String| ApiError::new(Code::InvalidDestination, format!("file target: {msg}"));
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

pub(crate) fn restore_secrets(new: &mut Value, old: &Value) {
    restore_secrets_in(new, old, false)
}

/// An update that sends a secret back redacted (empty) keeps the stored one.
pub(crate) fn restore_secrets_in(new: &mut Value, old: &Value, in_headers: bool) {
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
