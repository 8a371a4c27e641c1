//! The JSON the API answers: every schema key present (null when unused),
//! secrets redacted, written straight from the resources.

use super::*;

pub(crate) fn auth_json(a: &AwsAuth) -> Value {
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
pub(crate) fn is_secret_member(k: &str, in_headers: bool) -> bool {
    is_secret_key(k) || (in_headers && is_secret_header(k))
}

pub(crate) fn redact(v: &Value) -> Value {
    redact_in(v, false)
}

pub(crate) fn redact_in(v: &Value, in_headers: bool) -> Value {
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
}

impl Subscription {
    /// The API representation.
    pub fn to_json(&self, base: &str) -> Value {
        serde_json::to_value(SubscriptionJson { sub: self, base }).unwrap_or(Value::Null)
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
pub(crate) struct Uri<'a>(&'a [&'a str]);

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
pub(crate) struct SourceJson<'a> {
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
