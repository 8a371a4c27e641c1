//! `kinesis`: delivers records to an AWS Kinesis data stream with
//! PutRecords. See `plugins/kinesis/README.md` for the configuration, the
//! IAM policy and the partition-key choice.

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use sluice_aws_common::{
    Target, apply_results, block_on, describe, fail_call, parse_target, sdk_config, test_event,
};
use sluice_sdk::{Batch, Error, Host, Limits, Outcomes, Record, Sink, SinkInfo};

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "kinesis sink",
  "type": "object",
  "required": ["stream_arn"],
  "properties": {
    "stream_arn": {"type": "string", "description": "arn:aws:kinesis:REGION:ACCOUNT:stream/NAME"},
    "auth": {"type": "object", "description": "{\"role\":{\"role_arn\":...}} or {\"creds\":{\"aws_access_key_id\":...,\"aws_secret_access_key\":...}}; absent: the AWS credential chain"},
    "external_id": {"type": "string", "description": "ExternalId for AssumeRole (sluice serve sets the owning account id)"},
    "endpoint_url": {"type": "string", "description": "another endpoint (tests, compatible services)"},
    "partition_key": {"type": "string", "description": "account_id (default), event_id, subscription_id, or field:<dotted path in the record>"}
  },
  "additionalProperties": false
}"#;

/// Where a record's partition key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionKey {
    /// The event's account: one account's events in order on one shard.
    Account,
    /// The event id: spread evenly, no order.
    Event,
    /// The subscription.
    Subscription,
    /// A field of the record (dotted path), the account when absent.
    Field(Vec<String>),
}

impl PartitionKey {
    /// Parses the `partition_key` option.
    pub fn parse(v: Option<&serde_json::Value>) -> Result<PartitionKey, String> {
        let Some(v) = v else {
            return Ok(PartitionKey::Account);
        };
        match v.as_str() {
            Some("account_id") => Ok(PartitionKey::Account),
            Some("event_id") => Ok(PartitionKey::Event),
            Some("subscription_id") => Ok(PartitionKey::Subscription),
            Some(s) if s.starts_with("field:") && s.len() > 6 => Ok(PartitionKey::Field(
                s[6..].split('.').map(str::to_string).collect(),
            )),
            _ => Err(format!(
                "`partition_key` must be account_id, event_id, subscription_id or field:<path>, got {v}"
            )),
        }
    }

    /// The key of one record (at most 256 characters, never empty).
    pub fn of(&self, r: &Record<'_>) -> String {
        let k = match self {
            PartitionKey::Account => r.account_id().to_string(),
            PartitionKey::Event => r.event_id().to_string(),
            PartitionKey::Subscription => r.subscription_id().to_string(),
            PartitionKey::Field(path) => serde_json::from_slice::<serde_json::Value>(r.data())
                .ok()
                .and_then(|v| {
                    let mut cur = &v;
                    for p in path {
                        cur = cur.get(p)?;
                    }
                    Some(match cur {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                })
                .unwrap_or_else(|| r.account_id().to_string()),
        };
        let mut k = if k.is_empty() { "-".to_string() } else { k };
        if k.len() > 256 {
            let mut cut = 256;
            while !k.is_char_boundary(cut) {
                cut -= 1;
            }
            k.truncate(cut);
        }
        k
    }
}

/// The kinesis sink.
pub struct Kinesis {
    client: aws_sdk_kinesis::Client,
    stream: String,
    key: PartitionKey,
    host: Host,
}

impl Sink for Kinesis {
    fn info() -> SinkInfo {
        SinkInfo {
            kind: "kinesis",
            version: env!("CARGO_PKG_VERSION"),
            description: "AWS Kinesis Data Streams (PutRecords)",
            config_schema: SCHEMA,
            // PutRecords: 500 records, 5 MiB in total and 1 MiB per record,
            // each counting its data and its partition key (up to 256).
            limits: Limits {
                max_records: 500,
                record_overhead_bytes: 256,
                max_batch_bytes: 5 << 20,
                max_record_bytes: 1 << 20,
            },
            thread_safe: true,
            ordered: false,
        }
    }

    fn create(config: &str, host: Host) -> Result<Self, Error> {
        let t: Target = parse_target(config, "stream_arn", "kinesis", &["partition_key"])
            .map_err(|e| Error::fatal(format!("kinesis: {e}")))?;
        let key = PartitionKey::parse(t.extra.get("partition_key"))
            .map_err(|e| Error::fatal(format!("kinesis: {e}")))?;
        let stream = t
            .arn
            .resource_name("stream/")
            .map_err(|e| Error::fatal(format!("kinesis: `stream_arn`: {e}")))?;
        let conf = block_on(sdk_config(&t, &host.destination_id())).map_err(Error::fatal)?;
        Ok(Kinesis {
            client: aws_sdk_kinesis::Client::new(&conf),
            stream,
            key,
            host,
        })
    }

    fn send(&self, batch: &Batch<'_>, outcomes: &mut Outcomes<'_>) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(()); // the service refuses a call without records
        }
        let mut entries = Vec::with_capacity(batch.len());
        for r in batch.iter() {
            let e = PutRecordsRequestEntry::builder()
                .data(Blob::new(r.data()))
                .partition_key(self.key.of(&r))
                .build()
                .map_err(|e| Error::fatal(format!("kinesis: {e}")))?;
            entries.push(e);
        }
        let result = block_on(
            self.client
                .put_records()
                .stream_name(&self.stream)
                .set_records(Some(entries))
                .send(),
        )
        .map_err(Error::retry)?;
        let out = match result {
            Ok(out) => out,
            Err(e) => return fail_call("kinesis", &e, batch.len(), &self.host, outcomes),
        };
        let results: Vec<_> = out
            .records()
            .iter()
            .map(|r| r.error_code().map(|c| (c, r.error_message().unwrap_or(""))))
            .collect();
        apply_results("kinesis", batch.len(), &results, &self.host, outcomes)
    }

    const HAS_VERIFY: bool = true;

    fn verify(&self) -> Result<(), Error> {
        block_on(
            self.client
                .put_record()
                .stream_name(&self.stream)
                .data(Blob::new(test_event(&self.host.destination_id())))
                .partition_key("sluice-test-event")
                .send(),
        )
        .map_err(Error::retry)?
        .map(|_| ())
        .map_err(|e| {
            Error::fatal(format!(
                "kinesis: the test record was refused: {}",
                describe(&e).message
            ))
        })
    }
}

sluice_sdk::export_sink!(Kinesis);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_keys_parse() {
        assert_eq!(PartitionKey::parse(None).unwrap(), PartitionKey::Account);
        assert_eq!(
            PartitionKey::parse(Some(&serde_json::json!("field:object.conn.server_name"))).unwrap(),
            PartitionKey::Field(vec!["object".into(), "conn".into(), "server_name".into()])
        );
        assert!(PartitionKey::parse(Some(&serde_json::json!("shard"))).is_err());
        assert!(PartitionKey::parse(Some(&serde_json::json!("field:"))).is_err());
    }

    #[test]
    fn a_bad_configuration_names_the_key() {
        let e = Kinesis::create(
            r#"{"stream_arn":"arn:aws:kinesis:us-east-1:1:stream/x","partition_key":3}"#,
            Host::detached(),
        )
        .err()
        .unwrap();
        assert!(e.message().contains("`partition_key`"), "{}", e.message());
        let e = Kinesis::create(
            r#"{"stream_arn":"arn:aws:kinesis:us-east-1:1:deliverystream/x"}"#,
            Host::detached(),
        )
        .err()
        .unwrap();
        assert!(e.message().contains("stream/"), "{}", e.message());
    }
}
