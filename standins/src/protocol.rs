//! What both modes of the stand-ins know about each vendor's protocol: the
//! documented limits they enforce and the success answers they give, kept
//! once so that the strict stand-ins of the tests and the fast ones of the
//! benchmarks cannot drift apart.

use std::fmt::Write as _;

/// The Datadog logs intake v2 path.
pub const DATADOG_LOGS_PATH: &str = "/api/v2/logs";
/// Datadog: at most this many bytes per request, uncompressed ("5MB").
pub const DATADOG_MAX_BODY: usize = 5_000_000;
/// Datadog: at most this many entries per request.
pub const DATADOG_MAX_ENTRIES: usize = 1000;
/// Datadog: at most this many bytes per entry ("1MB").
pub const DATADOG_MAX_ENTRY: usize = 1_000_000;

/// Azure Monitor Logs Ingestion: at most this many bytes per request,
/// uncompressed.
pub const AZURE_MAX_BODY: usize = 1_048_576;
/// The Logs Ingestion API version Sluice speaks.
pub const AZURE_API_VERSION: &str = "api-version=2023-01-01";

/// The content type of the AWS JSON 1.1 protocol.
pub const AWS_JSON: &str = "application/x-amz-json-1.1";

/// A 56-digit Kinesis sequence number without its last 7 digits (the
/// record's index): answers as long as AWS's, so the plugin parses as much.
const SEQUENCE_PREFIX: &str = "4959033827149025660855969253836157109592157598913";

/// The answer to an AWS JSON 1.1 put of `target` that succeeded as a call,
/// one entry per record: `None` accepted it, `Some(code)` refused it with
/// that error code (Kinesis and Firehose batches only; other targets
/// answer success whatever `answers` holds).
pub fn aws_success(target: &str, answers: &[Option<String>]) -> String {
    let failed = answers.iter().filter(|a| a.is_some()).count();
    let each = |ok: &dyn Fn(&mut String, usize)| {
        let mut s = String::with_capacity(answers.len() * 110);
        for (i, a) in answers.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            match a {
                None => ok(&mut s, i),
                Some(code) => {
                    let _ = write!(
                        s,
                        r#"{{"ErrorCode":{},"ErrorMessage":{}}}"#,
                        serde_json::Value::from(code.as_str()),
                        serde_json::Value::from(format!("{code} (fake)"))
                    );
                }
            }
        }
        s
    };
    match target {
        "Kinesis_20131202.PutRecords" => format!(
            r#"{{"FailedRecordCount":{failed},"Records":[{}]}}"#,
            each(&|s, i| {
                let _ = write!(
                    s,
                    r#"{{"SequenceNumber":"{SEQUENCE_PREFIX}{i:07}","ShardId":"shardId-000000000000"}}"#
                );
            })
        ),
        "Firehose_20150804.PutRecordBatch" => format!(
            r#"{{"FailedPutCount":{failed},"Encrypted":false,"RequestResponses":[{}]}}"#,
            each(&|s, i| {
                let _ = write!(s, r#"{{"RecordId":"{SEQUENCE_PREFIX}{i:07}"}}"#);
            })
        ),
        "Kinesis_20131202.PutRecord" => {
            format!(
                r#"{{"SequenceNumber":"{SEQUENCE_PREFIX}0000000","ShardId":"shardId-000000000000"}}"#
            )
        }
        "Firehose_20150804.PutRecord" => {
            format!(r#"{{"RecordId":"{SEQUENCE_PREFIX}0000000","Encrypted":false}}"#)
        }
        "Logs_20140328.PutLogEvents" => r#"{"nextSequenceToken":"0"}"#.to_string(),
        _ => "{}".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_answers_are_json_with_one_entry_per_record() {
        let answers = vec![
            None,
            Some("ProvisionedThroughputExceededException".into()),
            None,
        ];
        let v: serde_json::Value =
            serde_json::from_str(&aws_success("Kinesis_20131202.PutRecords", &answers)).unwrap();
        assert_eq!(v["FailedRecordCount"], 1);
        let recs = v["Records"].as_array().unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0]["SequenceNumber"].as_str().unwrap().len(), 56);
        assert_eq!(
            recs[1]["ErrorCode"],
            "ProvisionedThroughputExceededException"
        );
        let v: serde_json::Value =
            serde_json::from_str(&aws_success("Firehose_20150804.PutRecordBatch", &answers))
                .unwrap();
        assert_eq!(v["FailedPutCount"], 1);
        assert_eq!(v["RequestResponses"].as_array().unwrap().len(), 3);
        for t in [
            "Kinesis_20131202.PutRecord",
            "Firehose_20150804.PutRecord",
            "Logs_20140328.PutLogEvents",
            "Other.Call",
        ] {
            serde_json::from_str::<serde_json::Value>(&aws_success(t, &[])).unwrap();
        }
    }
}
