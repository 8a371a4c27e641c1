//! `cloudwatch_logs`: delivers records to a CloudWatch Logs log group with
//! PutLogEvents, one log event per record, timestamped with the event's
//! `event_timestamp`. See `plugins/cloudwatch_logs/README.md`.
//!
//! - Events of a batch are sent in timestamp order, in calls spanning at most
//!   24 hours each (the service's rule).
//! - Events older than 14 days or more than 2 hours ahead are dead-lettered
//!   with that reason instead of being sent to be refused.
//! - Log streams are named by a template and created the first time a put
//!   says they are missing: no DescribeLogStreams per batch, no sequence tokens.
//! - The plugin declares `ordered`: the engine sends one batch per
//!   subscription at a time, so each subscription's events reach the stream
//!   in order.

use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use sluice_aws_common::{
    AwsError, Class, Target, block_on, describe, now_ms, parse_target, sdk_config, test_event,
};
use sluice_sdk::{Batch, Error, Host, Limits, Outcomes, Sink, SinkInfo};
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "cloudwatch_logs sink",
  "type": "object",
  "required": ["log_group_arn"],
  "properties": {
    "log_group_arn": {"type": "string", "description": "arn:aws:logs:REGION:ACCOUNT:log-group:NAME"},
    "auth": {"type": "object", "description": "{\"role\":{\"role_arn\":...}} or {\"creds\":{\"aws_access_key_id\":...,\"aws_secret_access_key\":...}}; absent: the AWS credential chain"},
    "external_id": {"type": "string", "description": "ExternalId for AssumeRole (sluice serve sets the owning account id)"},
    "endpoint_url": {"type": "string", "description": "another endpoint (tests, compatible services)"},
    "log_stream": {"type": "string", "description": "log stream name template: {node}, {destination}, {account_id}, {subscription_id}; default sluice-{node}-{destination}"},
    "node": {"type": "string", "description": "this Sluice node's name in {node} (default: the host name)"}
  },
  "additionalProperties": false
}"#;

const DAY_MS: i64 = 86_400_000;
/// CloudWatch Logs refuses events older than this.
const MAX_AGE_MS: i64 = 14 * DAY_MS;
/// ... or further ahead than this.
const MAX_AHEAD_MS: i64 = 2 * 3_600_000;
/// One PutLogEvents call spans at most this.
const MAX_SPAN_MS: i64 = DAY_MS;

/// The default log stream template.
pub const DEFAULT_STREAM: &str = "sluice-{node}-{destination}";

/// The cloudwatch_logs sink.
pub struct CloudWatchLogs {
    client: aws_sdk_cloudwatchlogs::Client,
    group: String,
    template: String,
    node: String,
    host: Host,
    /// Streams a put succeeded on: their events are sent without a spare copy.
    known_streams: Mutex<HashSet<String>>,
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// A log stream name from the template: `:` and `*` are not allowed, at most 512 characters.
pub fn stream_name(
    template: &str,
    node: &str,
    destination: &str,
    account: &str,
    subscription: &str,
) -> String {
    let s = template
        .replace("{node}", node)
        .replace("{destination}", destination)
        .replace("{account_id}", account)
        .replace("{subscription_id}", subscription);
    let mut s: String = s
        .chars()
        .map(|c| if c == ':' || c == '*' { '_' } else { c })
        .collect();
    if s.is_empty() {
        s.push('-');
    }
    while s.len() > 512 {
        s.pop();
    }
    s
}

/// Splits records (index, timestamp), sorted by timestamp, into runs each
/// spanning at most 24 hours.
pub fn spans(mut items: Vec<(usize, i64)>) -> Vec<Vec<(usize, i64)>> {
    items.sort_by_key(|&(i, ts)| (ts, i));
    let mut out: Vec<Vec<(usize, i64)>> = Vec::new();
    for it in items {
        match out.last_mut() {
            Some(run) if it.1 - run[0].1 <= MAX_SPAN_MS => run.push(it),
            _ => out.push(vec![it]),
        }
    }
    out
}

/// Why an event cannot be sent at all, if so.
pub fn out_of_range(ts: i64, now: i64) -> Option<&'static str> {
    if ts < now - MAX_AGE_MS {
        Some("event_timestamp is more than 14 days old: CloudWatch Logs does not accept it")
    } else if ts > now + MAX_AHEAD_MS {
        Some(
            "event_timestamp is more than 2 hours in the future: CloudWatch Logs does not accept it",
        )
    } else {
        None
    }
}

enum PutResult {
    /// Accepted, except the events at these positions of the call, with the reason.
    Done(Vec<(usize, &'static str)>),
    Failed(AwsError),
}

impl CloudWatchLogs {
    async fn put(&self, stream: &str, events: Vec<InputLogEvent>) -> PutResult {
        let n = events.len();
        // A stream not known to exist may need creating, and the events
        // sending again: keep a copy only then.
        let known = self
            .known_streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(stream);
        let (first, mut spare) = if known {
            (events, None)
        } else {
            (events.clone(), Some(events))
        };
        let put = |events: Vec<InputLogEvent>| {
            self.client
                .put_log_events()
                .log_group_name(&self.group)
                .log_stream_name(stream)
                .set_log_events(Some(events))
                .send()
        };
        let mut result = put(first).await;
        if let Err(e) = &result
            && e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception())
            && !describe(e).message.contains("log group")
        {
            // The stream does not exist (yet, or any more): create it, then put again.
            match self
                .client
                .create_log_stream()
                .log_group_name(&self.group)
                .log_stream_name(stream)
                .send()
                .await
            {
                Ok(_) => self.host.counter_add("log_streams_created", 1),
                Err(c)
                    if c.as_service_error()
                        .is_some_and(|s| s.is_resource_already_exists_exception()) => {}
                Err(c) => return PutResult::Failed(describe(&c)),
            }
            match spare.take() {
                Some(events) => result = put(events).await,
                None => {
                    return PutResult::Failed(AwsError {
                        class: Class::Retry,
                        code: None,
                        message: format!("log stream `{stream}` had gone; created it again"),
                    });
                }
            }
        }
        if result.is_ok() && !known {
            self.known_streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(stream.to_string());
        }
        match result {
            Ok(out) => {
                let mut refused = Vec::new();
                if let Some(r) = out.rejected_log_events_info() {
                    if let Some(end) = r.too_old_log_event_end_index() {
                        for i in up_to(end, n) {
                            refused.push((i, "CloudWatch Logs refused it as too old"));
                        }
                    }
                    if let Some(end) = r.expired_log_event_end_index() {
                        for i in up_to(end, n) {
                            refused.push((i, "CloudWatch Logs refused it as older than the log group's retention"));
                        }
                    }
                    if let Some(start) = r.too_new_log_event_start_index() {
                        for i in (start.max(0) as usize).min(n)..n {
                            refused
                                .push((i, "CloudWatch Logs refused it as too far in the future"));
                        }
                    }
                }
                PutResult::Done(refused)
            }
            Err(e) => PutResult::Failed(describe(&e)),
        }
    }
}

/// The events `0..=end` of a put of `n` events, as `rejectedLogEventsInfo`
/// numbers them: none when `end` is negative, at most all `n`.
fn up_to(end: i32, n: usize) -> std::ops::Range<usize> {
    match usize::try_from(end) {
        Ok(end) => 0..(end + 1).min(n),
        Err(_) => 0..0,
    }
}

impl Sink for CloudWatchLogs {
    fn info() -> SinkInfo {
        SinkInfo {
            kind: "cloudwatch_logs",
            version: env!("CARGO_PKG_VERSION"),
            description: "AWS CloudWatch Logs (PutLogEvents), one log event per record, in order",
            config_schema: SCHEMA,
            // PutLogEvents: 10,000 events, 1,048,576 bytes counting 26 per
            // event; an event of at most 256 KiB with those 26 bytes.
            limits: Limits {
                max_records: 10_000,
                record_overhead_bytes: 26,
                max_batch_bytes: 1_048_576,
                max_record_bytes: 262_144,
            },
            thread_safe: true,
            ordered: true,
        }
    }

    fn create(config: &str, host: Host) -> Result<Self, Error> {
        let t: Target = parse_target(config, "log_group_arn", "logs", &["log_stream", "node"])
            .map_err(|e| Error::fatal(format!("cloudwatch_logs: {e}")))?;
        let group = t
            .arn
            .resource_name("log-group:")
            .map_err(|e| Error::fatal(format!("cloudwatch_logs: `log_group_arn`: {e}")))?;
        let text = |k: &str| -> Result<Option<String>, Error> {
            match t.extra.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(|s| Some(s.to_string()))
                    .ok_or_else(|| {
                        Error::fatal(format!("cloudwatch_logs: `{k}` must be a non-empty string"))
                    }),
            }
        };
        let template = text("log_stream")?.unwrap_or_else(|| DEFAULT_STREAM.to_string());
        let node = text("node")?.unwrap_or_else(host_name);
        let conf = block_on(sdk_config(&t, &host.destination_id())).map_err(Error::fatal)?;
        Ok(CloudWatchLogs {
            client: aws_sdk_cloudwatchlogs::Client::new(&conf),
            group,
            template,
            node,
            host,
            known_streams: Mutex::new(HashSet::new()),
        })
    }

    fn send(&self, batch: &Batch<'_>, outcomes: &mut Outcomes<'_>) -> Result<(), Error> {
        let now = now_ms();
        let dest = self.host.destination_id();
        // By stream (the template may name the account or subscription), in range.
        let mut by_stream: BTreeMap<String, Vec<(usize, i64)>> = BTreeMap::new();
        let mut refused_early = 0u64;
        let mut last: Option<(String, String, String)> = None;
        for (i, r) in batch.iter().enumerate() {
            if let Some(why) = out_of_range(r.timestamp_ms(), now) {
                outcomes.reject(i, why);
                refused_early += 1;
                continue;
            }
            // Records of a batch mostly share their account and subscription.
            let (acc, sub) = (r.account_id(), r.subscription_id());
            if last.as_ref().is_none_or(|(a, s, _)| a != acc || s != sub) {
                let name = stream_name(&self.template, &self.node, &dest, acc, sub);
                last = Some((acc.to_string(), sub.to_string(), name));
            }
            let stream = &last.as_ref().expect("set above").2;
            match by_stream.get_mut(stream) {
                Some(v) => v.push((i, r.timestamp_ms())),
                None => {
                    by_stream.insert(stream.clone(), vec![(i, r.timestamp_ms())]);
                }
            }
        }
        if refused_early > 0 {
            self.host.counter_add("events_out_of_range", refused_early);
        }
        let mut fatal: Option<AwsError> = None;
        let mut delivered = 0;
        for (stream, items) in by_stream {
            for run in spans(items) {
                let mut events = Vec::with_capacity(run.len());
                for &(i, ts) in &run {
                    let data = batch
                        .get(i)
                        .map(|r| match std::str::from_utf8(r.data()) {
                            Ok(s) => s.to_owned(),
                            Err(_) => String::from_utf8_lossy(r.data()).into_owned(),
                        })
                        .unwrap_or_default();
                    events.push(
                        InputLogEvent::builder()
                            .timestamp(ts)
                            .message(data)
                            .build()
                            .map_err(|e| Error::fatal(format!("cloudwatch_logs: {e}")))?,
                    );
                }
                match block_on(self.put(&stream, events)).map_err(Error::retry)? {
                    PutResult::Done(refused) => {
                        delivered += 1;
                        for &(i, _) in &run {
                            outcomes.ok(i);
                        }
                        for (pos, why) in refused {
                            if let Some(&(i, _)) = run.get(pos) {
                                outcomes.reject(i, why);
                            }
                        }
                    }
                    PutResult::Failed(e) => {
                        if e.throttled() {
                            self.host.counter_add("throttled_calls", 1);
                        }
                        let msg = format!("cloudwatch_logs: {}", e.message);
                        match e.class {
                            Class::Reject => {
                                run.iter().for_each(|&(i, _)| outcomes.reject(i, &msg))
                            }
                            Class::Retry | Class::Fatal => {
                                let after = e.throttled().then(|| Duration::from_secs(1));
                                run.iter()
                                    .for_each(|&(i, _)| outcomes.retry(i, after, &msg));
                                if e.class == Class::Fatal {
                                    fatal = Some(e);
                                }
                            }
                        }
                    }
                }
            }
        }
        // Wrong group, permissions: when nothing of the batch was delivered
        // nor refused, the call as a whole failed (the destination is
        // unhealthy; every record is retried under the delivery policy).
        match fatal {
            Some(e) if delivered == 0 && refused_early == 0 => {
                Err(Error::fatal(format!("cloudwatch_logs: {}", e.message)))
            }
            _ => Ok(()),
        }
    }

    const HAS_VERIFY: bool = true;

    fn verify(&self) -> Result<(), Error> {
        let dest = self.host.destination_id();
        let stream = stream_name(&self.template, &self.node, &dest, "test", "test");
        let event = InputLogEvent::builder()
            .timestamp(now_ms())
            .message(test_event(&dest))
            .build()
            .map_err(|e| Error::fatal(format!("cloudwatch_logs: {e}")))?;
        match block_on(self.put(&stream, vec![event])).map_err(Error::retry)? {
            PutResult::Done(refused) if refused.is_empty() => Ok(()),
            PutResult::Done(refused) => Err(Error::fatal(format!(
                "cloudwatch_logs: the test event was refused: {}",
                refused[0].1
            ))),
            PutResult::Failed(e) => Err(Error::fatal(format!(
                "cloudwatch_logs: the test event was refused: {}",
                e.message
            ))),
        }
    }
}

sluice_sdk::export_sink!(CloudWatchLogs);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_index_ranges_stay_in_the_put() {
        assert_eq!(up_to(2, 10), 0..3);
        assert_eq!(up_to(0, 10), 0..1);
        assert_eq!(up_to(50, 10), 0..10);
        // Before: -1 as usize saturated to the whole put, refusing every event.
        assert_eq!(up_to(-1, 10), 0..0);
    }

    #[test]
    fn runs_are_sorted_and_span_at_most_a_day() {
        let h = 3_600_000;
        let runs = spans(vec![
            (0, 30 * h),
            (1, 0),
            (2, 10 * h),
            (3, 25 * h),
            (4, 10 * h),
        ]);
        assert_eq!(
            runs,
            vec![
                vec![(1, 0), (2, 10 * h), (4, 10 * h)],
                vec![(3, 25 * h), (0, 30 * h)]
            ]
        );
    }

    #[test]
    fn out_of_range_events_are_named() {
        let now = 100 * DAY_MS;
        assert!(
            out_of_range(now - 15 * DAY_MS, now)
                .unwrap()
                .contains("14 days")
        );
        assert!(
            out_of_range(now + 3 * 3_600_000, now)
                .unwrap()
                .contains("future")
        );
        assert_eq!(out_of_range(now - 13 * DAY_MS, now), None);
    }

    #[test]
    fn stream_names_follow_the_template() {
        assert_eq!(
            stream_name(DEFAULT_STREAM, "n1", "ed_x", "ac_1", "esb_1"),
            "sluice-n1-ed_x"
        );
        assert_eq!(
            stream_name("{account_id}/{subscription_id}", "n", "d", "ac:1", "esb*1"),
            "ac_1/esb_1"
        );
        assert_eq!(stream_name(&"x".repeat(600), "", "", "", "").len(), 512);
    }
}
