//! What sinks commonly write besides the records: the test event every
//! Sluice sink sends from `verify`, and RFC 3339 timestamps, without
//! allocating, for vendors that want a date field of their own.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `ms` (milliseconds since the Unix epoch) as an RFC 3339 UTC timestamp
/// with milliseconds, `2026-11-21T08:00:00.123Z`: the format of
/// `event_timestamp`. Times outside years 0000-9999, which RFC 3339 cannot
/// write, give the epoch.
///
/// ```
/// let t = sluice_sdk::events::rfc3339_ms(1_793_491_200_123);
/// assert_eq!(&t, b"2026-11-01T00:00:00.123Z");
/// ```
pub fn rfc3339_ms(ms: i64) -> [u8; 24] {
    // 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z.
    const MIN: i64 = -62_167_219_200_000;
    const MAX: i64 = 253_402_300_799_999;
    let ms = if (MIN..=MAX).contains(&ms) { ms } else { 0 };
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut b = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, rem / 3_600_000);
    put(14, 2, rem / 60_000 % 60);
    put(17, 2, rem / 1000 % 60);
    put(20, 3, rem % 1000);
    b
}

/// The test event a sink's `verify` sends, the same for every Sluice sink
/// and shaped like ngrok's test events:
/// `{"event_id":"ev_test_<ms>","event_type":"test","event_timestamp":"<RFC 3339>","destination_id":"<id>","object":{}}`.
///
/// ```
/// let e = sluice_sdk::events::test_event("ed_1");
/// assert!(e.starts_with(r#"{"event_id":"ev_test_"#));
/// assert!(e.ends_with(r#","destination_id":"ed_1","object":{}}"#));
/// ```
pub fn test_event(destination_id: &str) -> String {
    test_event_at(destination_id, now_ms())
}

/// [`test_event`] stamped `now` (milliseconds since the Unix epoch) instead
/// of the clock's time: for a sink that also writes the time in a field of
/// its own, which must then be the event's `event_timestamp` to the
/// millisecond.
///
/// ```
/// let e = sluice_sdk::events::test_event_at("ed_1", 1_793_491_200_123);
/// assert!(e.starts_with(r#"{"event_id":"ev_test_1793491200123","event_type":"test","event_timestamp":"2026-11-01T00:00:00.123Z","#));
/// ```
pub fn test_event_at(destination_id: &str, now: i64) -> String {
    let ts = rfc3339_ms(now);
    let mut s = Vec::with_capacity(140 + destination_id.len());
    s.extend_from_slice(b"{\"event_id\":\"ev_test_");
    s.extend_from_slice(now.to_string().as_bytes());
    s.extend_from_slice(b"\",\"event_type\":\"test\",\"event_timestamp\":\"");
    s.extend_from_slice(&ts);
    s.extend_from_slice(b"\",\"destination_id\":");
    json_str(&mut s, destination_id);
    s.extend_from_slice(b",\"object\":{}}");
    // Only ASCII and the (valid UTF-8) id went in.
    String::from_utf8(s).unwrap_or_default()
}

/// Appends `s` as a JSON string: quotes and backslashes escaped, control
/// characters as `\u00XX`.
///
/// ```
/// let mut out = Vec::new();
/// sluice_sdk::events::json_str(&mut out, "a\"b\n");
/// assert_eq!(out, br#""a\"b\u000a""#);
/// ```
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                let b = c as usize;
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[b >> 4], HEX[b & 15]]);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Days since the epoch by counting, the slow way: checks the fast
    /// formula on every day of years 1600-2500 and the edges.
    #[test]
    fn timestamps_are_right_on_every_day() {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mut days: i64 = 0;
        // Walk back from 1970 to 1600.
        for y in (1600..1970).rev() {
            days -= if leap(y) { 366 } else { 365 };
        }
        for y in 1600..2500 {
            for m in 1..=12 {
                let n = match m {
                    2 if leap(y) => 29,
                    2 => 28,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                for d in 1..=n {
                    let ms = days * 86_400_000 + 13 * 3_600_000 + 7 * 60_000 + 9_042;
                    let want = format!("{y:04}-{m:02}-{d:02}T13:07:09.042Z");
                    assert_eq!(std::str::from_utf8(&rfc3339_ms(ms)).unwrap(), want);
                    days += 1;
                }
            }
        }
        assert_eq!(&rfc3339_ms(-1), b"1969-12-31T23:59:59.999Z");
        assert_eq!(
            &rfc3339_ms(-62_167_219_200_000),
            b"0000-01-01T00:00:00.000Z"
        );
        assert_eq!(
            &rfc3339_ms(253_402_300_799_999),
            b"9999-12-31T23:59:59.999Z"
        );
        assert_eq!(&rfc3339_ms(i64::MAX), b"1970-01-01T00:00:00.000Z");
        assert_eq!(&rfc3339_ms(i64::MIN), b"1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn the_test_event_is_json_with_the_id_escaped() {
        let e = test_event("ed_\"x\\\n");
        assert!(e.contains(r#""destination_id":"ed_\"x\\\u000a""#), "{e}");
        assert!(e.contains(r#""event_type":"test""#));
        let ts = e.split("\"event_timestamp\":\"").nth(1).unwrap();
        assert_eq!(ts.as_bytes()[23], b'Z');
    }
}
