//! What Sluice's HTTP log-intake sinks (`datadog`, `azure_logs_ingestion`)
//! share: a JSON-array body built by splicing fields into each record
//! (no parse), gzip, and what an intake's answer means for the records.

pub mod egress;

pub use egress::{check_url, client, describe, read_capped};
use sluice_sdk::{Batch, Outcomes};
use std::io::Write;
use std::time::{Duration, SystemTime};

/// Writes `[rec0,rec1,...]` for the records at `idx`, each record's opening
/// `{` followed by `prefix(record)` (which must be `"key":value,` pairs, each
/// ending with a comma); a record that is `{}` gets the pairs alone.
pub fn array_body(
    batch: &Batch<'_>,
    idx: &[usize],
    out: &mut Vec<u8>,
    mut prefix: impl FnMut(&sluice_sdk::Record<'_>, &mut Vec<u8>),
) {
    out.clear();
    // Room for every record and ~64 bytes of spliced fields each: one
    // allocation instead of a doubling series of copies.
    let need: usize = idx
        .iter()
        .filter_map(|&i| batch.get(i))
        .map(|r| r.data().len() + 64)
        .sum();
    out.reserve(need + 2);
    out.push(b'[');
    for (n, &i) in idx.iter().enumerate() {
        let Some(r) = batch.get(i) else { continue };
        if n > 0 {
            out.push(b',');
        }
        let data = r.data();
        let data = &data[data.iter().take_while(|b| b.is_ascii_whitespace()).count()..];
        out.push(b'{');
        let start = out.len();
        prefix(&r, out);
        let rest = data.strip_prefix(b"{").unwrap_or(data);
        let rest_trim = rest.iter().position(|b| !b.is_ascii_whitespace());
        if rest_trim.map(|p| rest[p]) == Some(b'}') || rest.is_empty() {
            // `{}`: drop the prefix's last comma.
            if out.len() > start && out.last() == Some(&b',') {
                out.pop();
            }
            out.push(b'}');
        } else {
            out.extend_from_slice(rest);
        }
    }
    out.push(b']');
}

pub use sluice_sdk::events::json_str;

/// Appends `ms` (milliseconds since the epoch) as a JSON string holding an
/// RFC 3339 UTC timestamp with milliseconds, without allocating.
pub fn json_rfc3339_ms(out: &mut Vec<u8>, ms: i64) {
    out.push(b'"');
    out.extend_from_slice(&sluice_sdk::events::rfc3339_ms(ms));
    out.push(b'"');
}

/// The `timeout_ms` option: a positive integer, 30 s when absent.
pub fn timeout_ms(obj: &serde_json::Map<String, serde_json::Value>) -> Result<Duration, String> {
    match obj.get("timeout_ms") {
        None => Ok(Duration::from_secs(30)),
        Some(v) => v
            .as_u64()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
            .ok_or_else(|| "`timeout_ms` must be a positive integer".to_string()),
    }
}

/// Gzips a body (fast level: intake bodies are JSON, ~8-10x smaller anyway).
pub fn gzip(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 6),
        flate2::Compression::fast(),
    );
    gz.write_all(raw)
        .and_then(|_| gz.finish())
        .map_err(|e| format!("gzip failed: {e}"))
}

/// `Retry-After`: seconds, or an HTTP date.
pub fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// An intake's answer.
#[derive(Clone, Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
    /// The start of the body, for reasons.
    pub body: String,
}

/// POSTs `body` gzipped with `headers`; a transport failure is `Err` (retry).
pub fn post(
    client: &reqwest::blocking::Client,
    url: &str,
    headers: &[(&str, &str)],
    raw: &[u8],
) -> Result<Answer, String> {
    let payload = gzip(raw)?;
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::CONTENT_ENCODING, "gzip");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.body(payload).send().map_err(|e| {
        if e.is_timeout() {
            "no response within the timeout".to_string()
        } else if e.is_connect() {
            format!("cannot connect: {}", describe(&e))
        } else {
            format!("request failed: {}", describe(&e))
        }
    })?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after);
    let body = String::from_utf8_lossy(&read_capped(resp)).into_owned();
    let mut body = body.trim().to_string();
    if body.len() > 300 {
        let mut cut = 300;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
    }
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// What an answer means for the records it carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted.
    Ok,
    /// Retry, not before the delay if given.
    Retry(Option<Duration>, String),
    /// Too large: split the records in halves and send each.
    Split(String),
    /// Refused for good.
    Reject(String),
}

/// The usual intake mapping: 2xx ok; 408, 429, 5xx retry (honouring
/// `Retry-After`); 413 split; any other status refused with the body;
/// `explain` adds the vendor's hint for a status and body (e.g. 403).
pub fn verdict(a: &Answer, explain: impl Fn(u16, &str) -> Option<String>) -> Verdict {
    let why = || {
        let mut s = format!("HTTP {}", a.status);
        if !a.body.is_empty() {
            s.push_str(": ");
            s.push_str(&a.body);
        }
        if let Some(hint) = explain(a.status, &a.body) {
            s.push_str(" (");
            s.push_str(&hint);
            s.push(')');
        }
        s
    };
    match a.status {
        200..=299 => Verdict::Ok,
        408 | 429 | 500..=599 => Verdict::Retry(a.retry_after, why()),
        413 => Verdict::Split(why()),
        _ => Verdict::Reject(why()),
    }
}

/// Sends the records at `idx` with `send` (which builds and posts their
/// body), splitting in halves on 413 down to single records (a single
/// record answered 413 is refused), and sets each record's outcome.
///
/// `send` returns `Err` when the destination could not be reached or would
/// not let Sluice in (no connection, no token): on the first call, that
/// error is returned, so the engine retries the whole batch and marks the
/// destination unhealthy; on a later call (after a 413 split), the records
/// without an outcome yet are retried with its message and the outcomes
/// already set stand.
pub fn deliver(
    kind: &str,
    idx: &[usize],
    outcomes: &mut Outcomes<'_>,
    send: &mut dyn FnMut(&[usize]) -> Result<Verdict, sluice_sdk::Error>,
) -> Result<(), sluice_sdk::Error> {
    let mut first = true;
    let mut todo: Vec<&[usize]> = vec![idx];
    while let Some(part) = todo.pop() {
        if part.is_empty() {
            continue;
        }
        let answer = send(part);
        let was_first = std::mem::replace(&mut first, false);
        match answer {
            Err(e) if was_first => return Err(e),
            Err(e) => {
                for p in std::iter::once(part).chain(todo.drain(..)) {
                    p.iter().for_each(|&i| outcomes.retry(i, None, e.message()));
                }
            }
            Ok(Verdict::Ok) => part.iter().for_each(|&i| outcomes.ok(i)),
            Ok(Verdict::Retry(after, why)) => {
                let why = format!("{kind}: {why}");
                part.iter().for_each(|&i| outcomes.retry(i, after, &why))
            }
            Ok(Verdict::Reject(why)) => {
                let why = format!("{kind}: {why}");
                part.iter().for_each(|&i| outcomes.reject(i, &why))
            }
            Ok(Verdict::Split(why)) if part.len() == 1 => {
                outcomes.reject(part[0], &format!("{kind}: {why}"))
            }
            Ok(Verdict::Split(_)) => {
                let (a, b) = part.split_at(part.len() / 2);
                todo.push(b);
                todo.push(a);
            }
        }
    }
    Ok(())
}

/// What the answer to a test event means: 2xx verified; 408, 429 and 5xx
/// "try again later" (retry); anything else refused (fatal), with the
/// vendor's hint.
pub fn test_event_result(
    kind: &str,
    answer: Result<Answer, sluice_sdk::Error>,
    explain: impl Fn(u16, &str) -> Option<String>,
) -> Result<(), sluice_sdk::Error> {
    use sluice_sdk::Error;
    let a = answer.map_err(|e| {
        let msg = format!(
            "{kind}: the test event was not sent: {}",
            e.message()
                .strip_prefix(kind)
                .and_then(|m| m.strip_prefix(": "))
                .unwrap_or(e.message())
        );
        // A refused secret stays fatal; no answer stays "try again".
        if e.is_retryable() {
            Error::retry(msg)
        } else {
            Error::fatal(msg)
        }
    })?;
    match verdict(&a, explain) {
        Verdict::Ok => Ok(()),
        Verdict::Retry(_, why) => Err(Error::retry(format!(
            "{kind}: the endpoint could not take the test event now: {why}"
        ))),
        Verdict::Split(why) | Verdict::Reject(why) => Err(Error::fatal(format!(
            "{kind}: the test event was refused: {why}"
        ))),
    }
}

/// A one-entry JSON array holding the SDK's test event stamped `now`
/// (milliseconds since the epoch) with `prefix` (as for [`array_body`]:
/// `"key":value,` pairs, which may carry the same time) spliced in first.
pub fn test_event_array_at(destination_id: &str, now: i64, prefix: &[u8]) -> Vec<u8> {
    let event = sluice_sdk::events::test_event_at(destination_id, now);
    let mut out = Vec::with_capacity(event.len() + prefix.len() + 2);
    out.extend_from_slice(b"[{");
    out.extend_from_slice(prefix);
    out.extend_from_slice(&event.as_bytes()[1..]);
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_verdicts() {
        let a = |status, body: &str| Answer {
            status,
            retry_after: Some(Duration::from_secs(7)),
            body: body.into(),
        };
        let hint = |s: u16, _: &str| (s == 403).then(|| "check the key".to_string());
        assert_eq!(verdict(&a(202, ""), hint), Verdict::Ok);
        assert_eq!(
            verdict(&a(429, "slow"), hint),
            Verdict::Retry(Some(Duration::from_secs(7)), "HTTP 429: slow".into())
        );
        assert!(matches!(verdict(&a(503, ""), hint), Verdict::Retry(..)));
        assert!(matches!(verdict(&a(408, ""), hint), Verdict::Retry(..)));
        assert!(matches!(verdict(&a(413, ""), hint), Verdict::Split(_)));
        assert_eq!(
            verdict(&a(403, "Forbidden"), hint),
            Verdict::Reject("HTTP 403: Forbidden (check the key)".into())
        );
        assert_eq!(retry_after("12"), Some(Duration::from_secs(12)));
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn strings_are_escaped() {
        let mut out = Vec::new();
        json_str(&mut out, "a\"b\\c\n");
        assert_eq!(out, br#""a\"b\\c\u000a""#);
    }
}
