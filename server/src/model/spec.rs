//! From resources to what the engine runs: delivery settings inside the
//! operator's bounds, `file` paths inside the account's file area.

use super::*;
use sluice_engine::config::{DestinationSpec, SubscriptionSpec};

impl Destination {
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
