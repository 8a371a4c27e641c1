//! `firehose`: delivers records to an Amazon Data Firehose delivery stream
//! (and so to S3, or wherever the stream writes) with PutRecordBatch. Each
//! record ends with a newline, so the objects Firehose writes are NDJSON.
//! See `plugins/firehose/README.md`.

use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::Record as FirehoseRecord;
use sluice_aws_common::{
    Target, apply_results, block_on, describe, fail_call, parse_target, sdk_config, test_event,
};
use sluice_sdk::{Batch, Error, Host, Limits, Outcomes, Sink, SinkInfo};

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "firehose sink",
  "type": "object",
  "required": ["delivery_stream_arn"],
  "properties": {
    "delivery_stream_arn": {"type": "string", "description": "arn:aws:firehose:REGION:ACCOUNT:deliverystream/NAME"},
    "auth": {"type": "object", "description": "{\"role\":{\"role_arn\":...}} or {\"creds\":{\"aws_access_key_id\":...,\"aws_secret_access_key\":...}}; absent: the AWS credential chain"},
    "external_id": {"type": "string", "description": "ExternalId for AssumeRole (sluice serve sets the owning account id)"},
    "endpoint_url": {"type": "string", "description": "another endpoint (tests, compatible services)"}
  },
  "additionalProperties": false
}"#;

/// The firehose sink.
pub struct Firehose {
    client: aws_sdk_firehose::Client,
    stream: String,
    host: Host,
}

/// A record's bytes as Firehose gets them: the JSON and a newline.
fn line(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.extend_from_slice(data);
    v.push(b'\n');
    v
}

impl Sink for Firehose {
    fn info() -> SinkInfo {
        SinkInfo {
            kind: "firehose",
            version: env!("CARGO_PKG_VERSION"),
            description: "Amazon Data Firehose (PutRecordBatch), and S3 through it; one JSON record per line",
            config_schema: SCHEMA,
            // PutRecordBatch: 500 records, 4 MiB in total, 1,000 KiB per
            // record; each record carries one more byte, its newline.
            limits: Limits {
                max_records: 500,
                record_overhead_bytes: 1,
                max_batch_bytes: 4 << 20,
                max_record_bytes: 1000 * 1024,
            },
            thread_safe: true,
            ordered: false,
        }
    }

    fn create(config: &str, host: Host) -> Result<Self, Error> {
        let t: Target = parse_target(config, "delivery_stream_arn", "firehose", &[])
            .map_err(|e| Error::fatal(format!("firehose: {e}")))?;
        let stream = t
            .arn
            .resource_name("deliverystream/")
            .map_err(|e| Error::fatal(format!("firehose: `delivery_stream_arn`: {e}")))?;
        let conf = block_on(sdk_config(&t, &host.destination_id())).map_err(Error::fatal)?;
        Ok(Firehose {
            client: aws_sdk_firehose::Client::new(&conf),
            stream,
            host,
        })
    }

    fn send(&self, batch: &Batch<'_>, outcomes: &mut Outcomes<'_>) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(()); // the service refuses a call without records
        }
        let mut records = Vec::with_capacity(batch.len());
        for r in batch.iter() {
            records.push(
                FirehoseRecord::builder()
                    .data(Blob::new(line(r.data())))
                    .build()
                    .map_err(|e| Error::fatal(format!("firehose: {e}")))?,
            );
        }
        let result = block_on(
            self.client
                .put_record_batch()
                .delivery_stream_name(&self.stream)
                .set_records(Some(records))
                .send(),
        )
        .map_err(Error::retry)?;
        let out = match result {
            Ok(out) => out,
            Err(e) => return fail_call("firehose", &e, batch.len(), &self.host, outcomes),
        };
        let results: Vec<_> = out
            .request_responses()
            .iter()
            .map(|r| r.error_code().map(|c| (c, r.error_message().unwrap_or(""))))
            .collect();
        apply_results("firehose", batch.len(), &results, &self.host, outcomes)
    }

    const HAS_VERIFY: bool = true;

    fn verify(&self) -> Result<(), Error> {
        let record = FirehoseRecord::builder()
            .data(Blob::new(line(
                test_event(&self.host.destination_id()).as_bytes(),
            )))
            .build()
            .map_err(|e| Error::fatal(format!("firehose: {e}")))?;
        block_on(
            self.client
                .put_record()
                .delivery_stream_name(&self.stream)
                .record(record)
                .send(),
        )
        .map_err(Error::retry)?
        .map(|_| ())
        .map_err(|e| {
            Error::fatal(format!(
                "firehose: the test record was refused: {}",
                describe(&e).message
            ))
        })
    }
}

sluice_sdk::export_sink!(Firehose);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_end_with_a_newline_and_bad_arns_are_named() {
        assert_eq!(line(b"{}"), b"{}\n");
        let e = Firehose::create(
            r#"{"delivery_stream_arn":"arn:aws:firehose:us-east-1:1:stream/x"}"#,
            Host::detached(),
        )
        .err()
        .unwrap();
        assert!(e.message().contains("deliverystream/"), "{}", e.message());
    }
}
