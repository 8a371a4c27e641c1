//! The API's resources: how they are stored (the types here), shown with
//! secrets redacted (`view`), parsed and validated from request bodies
//! (`parse`), and turned into the engine's pipeline configuration (`spec`).

mod parse;
mod spec;
mod view;

pub use parse::*;
pub use view::*;

use crate::policy::TenantPolicy;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sluice_engine::config::{DeliveryConfig, SourceSpec};

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
pub(crate) const AWS_KINDS: [&str; 3] = ["kinesis", "firehose", "cloudwatch_logs"];

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

#[cfg(test)]
mod tests;
