//! Splitting an NDJSON body into the messages of the stream: each event goes
//! to its account's partition, each partition's events are packed in order
//! into messages of at most `max_message_bytes`, and an event that cannot be
//! routed (no account, or over the event size limit) is refused with its
//! reason instead of being published.

use crate::partition::partition_of;
use bytes::{Bytes, BytesMut};
use sluice_engine::RejectedLine;
use sluice_engine::ingest::{MAX_EVENT_BYTES, RejectReason, lines, prescan_account};

/// One message of the stream: events of one partition, one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The partition (the subject's last token).
    pub partition: u32,
    /// Its place among this body's messages for the partition, from 0.
    pub chunk: u32,
    /// The events, each followed by `\n`.
    pub payload: Bytes,
    /// How many events.
    pub events: u32,
}

/// A body split into messages.
#[derive(Debug, Default)]
pub struct Split {
    /// The messages, by partition and then in order.
    pub messages: Vec<Message>,
    /// Lines refused, by byte offset in the body.
    pub rejected: Vec<RejectedLine>,
    /// Events placed in messages.
    pub events: usize,
}

/// Splits `body` into messages packed up to `max_message_bytes` each. An
/// event is never split: one larger than `max_message_bytes` (up to
/// [`MAX_EVENT_BYTES`]) gets a message of its own, so the transport's limit
/// must be over `MAX_EVENT_BYTES + 1` (the publisher checks it).
pub fn split(body: &[u8], partitions: u32, max_message_bytes: usize) -> Split {
    let partitions = partitions.max(1);
    let mut open: Vec<(BytesMut, u32, u32)> =
        (0..partitions).map(|_| (BytesMut::new(), 0, 0)).collect();
    let mut out = Split::default();
    for span in lines(body) {
        let raw = &body[span.start as usize..(span.start + span.len) as usize];
        if raw.len() > MAX_EVENT_BYTES {
            out.rejected.push(RejectedLine {
                offset: span.start,
                reason: RejectReason::TooLarge,
                detail: format!("{} bytes (at most {MAX_EVENT_BYTES})", raw.len()),
            });
            continue;
        }
        let Some(account) = prescan_account(raw) else {
            let (reason, detail) = unroutable(raw);
            out.rejected.push(RejectedLine {
                offset: span.start,
                reason,
                detail,
            });
            continue;
        };
        let p = partition_of(account, partitions);
        let (buf, chunk, events) = &mut open[p as usize];
        if !buf.is_empty() && buf.len() + raw.len() + 1 > max_message_bytes {
            out.messages.push(Message {
                partition: p,
                chunk: *chunk,
                payload: std::mem::take(buf).freeze(),
                events: *events,
            });
            *chunk += 1;
            *events = 0;
        }
        if buf.is_empty() {
            // About this partition's share of the body: growing past it
            // doubles, and reserving the whole body per partition would
            // cost `partitions` times the body.
            let share = body.len() / partitions as usize + raw.len() + 1;
            buf.reserve(max_message_bytes.min(share));
        }
        buf.extend_from_slice(raw);
        buf.extend_from_slice(b"\n");
        *events += 1;
        out.events += 1;
    }
    for (p, (buf, chunk, events)) in open.into_iter().enumerate() {
        if !buf.is_empty() {
            out.messages.push(Message {
                partition: p as u32,
                chunk,
                payload: buf.freeze(),
                events,
            });
        }
    }
    out.messages.sort_by_key(|m| (m.partition, m.chunk));
    out
}

/// Why a line has no account the prescan could find, said as the engine's
/// parser would say it (such lines are rare: reading one whole is fine).
fn unroutable(raw: &[u8]) -> (RejectReason, String) {
    let v: serde_json::Value = match serde_json::from_slice(raw) {
        Ok(v) => v,
        Err(e) if e.is_syntax() || e.is_eof() => {
            let reason = if std::str::from_utf8(raw).is_err() {
                RejectReason::InvalidUtf8
            } else {
                RejectReason::BadJson
            };
            return (reason, e.to_string());
        }
        Err(e) => return (RejectReason::BadJson, e.to_string()),
    };
    let Some(obj) = v.as_object() else {
        return (
            RejectReason::NotAnObject,
            "the event is not a JSON object".into(),
        );
    };
    match obj.get("account_id") {
        None => (RejectReason::MissingField, "no account_id".into()),
        Some(serde_json::Value::String(_)) => (
            RejectReason::BadJson,
            "account_id could not be read from the envelope".into(),
        ),
        Some(_) => (
            RejectReason::IllTypedField,
            "account_id is not a string".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(account: &str, i: usize) -> String {
        format!(r#"{{"account_id":"{account}","event_type":"http_request_complete.v0","i":{i}}}"#)
    }

    #[test]
    fn every_event_lands_once_in_its_accounts_partition_in_order() {
        let mut body = String::new();
        for i in 0..2000 {
            body.push_str(&ev(&format!("ac_{}", i % 37), i));
            body.push('\n');
        }
        let s = split(body.as_bytes(), 16, 4096);
        assert!(s.rejected.is_empty());
        assert_eq!(s.events, 2000);
        let mut seen = Vec::new();
        for m in &s.messages {
            assert!(m.payload.len() <= 4096);
            let text = std::str::from_utf8(&m.payload).unwrap();
            assert_eq!(text.lines().count(), m.events as usize);
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let acct = v["account_id"].as_str().unwrap();
                assert_eq!(partition_of(acct.as_bytes(), 16), m.partition);
                seen.push((acct.to_string(), v["i"].as_u64().unwrap()));
            }
        }
        assert_eq!(seen.len(), 2000);
        // Per account, the order of the body.
        for a in 0..37 {
            let acct = format!("ac_{a}");
            let is: Vec<u64> = seen
                .iter()
                .filter(|(x, _)| *x == acct)
                .map(|(_, i)| *i)
                .collect();
            assert!(is.windows(2).all(|w| w[0] < w[1]), "{acct}: {is:?}");
        }
        // Chunks of a partition are numbered from 0 without gaps.
        for p in 0..16 {
            let chunks: Vec<u32> = s
                .messages
                .iter()
                .filter(|m| m.partition == p)
                .map(|m| m.chunk)
                .collect();
            assert_eq!(chunks, (0..chunks.len() as u32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_one_mebibyte_event_fits_alone_and_a_larger_one_is_refused() {
        let pad = "x".repeat(MAX_EVENT_BYTES - 100);
        let big = format!(r#"{{"account_id":"ac_1","p":"{pad}"}}"#);
        let huge = format!(r#"{{"account_id":"ac_1","p":"{pad}{pad}"}}"#);
        let body = format!("{}\n{big}\n{}\n{huge}\n", ev("ac_1", 0), ev("ac_1", 1));
        let s = split(body.as_bytes(), 4, MAX_EVENT_BYTES + 1024);
        assert_eq!(s.events, 3);
        assert_eq!(s.rejected.len(), 1);
        assert_eq!(s.rejected[0].reason, RejectReason::TooLarge);
        assert!(
            s.messages
                .iter()
                .all(|m| m.payload.len() <= MAX_EVENT_BYTES + 1024)
        );
        assert_eq!(s.messages.iter().map(|m| m.events).sum::<u32>(), 3);
    }

    #[test]
    fn lines_without_an_account_are_refused_with_the_parsers_reason() {
        let body = "not json\n[1,2]\n{\"event_type\":\"x\"}\n{\"account_id\":7}\n";
        let s = split(body.as_bytes(), 4, 1 << 20);
        let reasons: Vec<RejectReason> = s.rejected.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            [
                RejectReason::BadJson,
                RejectReason::NotAnObject,
                RejectReason::MissingField,
                RejectReason::IllTypedField
            ]
        );
        assert_eq!(s.rejected[2].offset, 15);
        assert!(s.messages.is_empty());
    }
}
