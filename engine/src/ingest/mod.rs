//! Ingest: framing NDJSON into events, choosing each event's shard by account,
//! and parsing events (`ingest::parse`); reading NDJSON streams into
//! reused buffers (`ingest::reader`).
//!
//! The publisher side does as little as possible per event: it finds line
//! ends (`memchr`) and scans the envelope just far enough to find
//! `account_id`, which picks the shard. The full parse happens once, on the
//! shard's worker thread.

pub(crate) mod lazy;
pub(crate) mod parse;
mod reader;
pub(crate) mod scan;

pub(crate) use parse::{Envelope, EventParser};
pub use parse::{MAX_DEPTH, MAX_EVENT_BYTES, RejectReason};
pub use reader::{Chunk, NdjsonReader};

/// Where one event sits in a batch's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Offset of the first byte.
    pub start: u32,
    /// Length in bytes (no line terminator).
    pub len: u32,
}

/// Iterates the non-blank lines of an NDJSON buffer as spans, without the
/// `\n` or `\r\n` terminator. The last line needs no terminator.
pub fn lines(buf: &[u8]) -> impl Iterator<Item = Span> + '_ {
    let mut start = 0usize;
    let mut ends = memchr::memchr_iter(b'\n', buf);
    let mut done = false;
    std::iter::from_fn(move || {
        loop {
            if done {
                return None;
            }
            let end = match ends.next() {
                Some(e) => e,
                None => {
                    done = true;
                    buf.len()
                }
            };
            let mut line = &buf[start..end];
            let s = start;
            start = end + 1;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            return Some(Span {
                start: s as u32,
                len: line.len() as u32,
            });
        }
    })
}

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Given `b[i] == '"'`, returns the end of the string content (index of the
/// closing quote).
#[inline]
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        let k = quote_or_backslash(b, j)?;
        if b[k] == b'"' {
            return Some(k);
        }
        j = k + 2;
    }
}

/// The first `"` or `\` at or after `from`. The strings of an envelope
/// are short (ids, a type, a timestamp): 16 bytes at a time, inline, cost
/// less than a call to `memchr2` per string (criterion "shard").
#[inline(always)]
fn quote_or_backslash(b: &[u8], from: usize) -> Option<usize> {
    let mut j = from;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        while j + 16 <= b.len() {
            // SAFETY: the 16 bytes from `j` are inside `b`; SSE2 is part
            // of every x86_64 CPU.
            let hits = unsafe {
                let v = _mm_loadu_si128(b.as_ptr().add(j).cast());
                let q = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
                let s = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
                _mm_movemask_epi8(_mm_or_si128(q, s))
            };
            if hits != 0 {
                return Some(j + hits.trailing_zeros() as usize);
            }
            j += 16;
        }
    }
    let rest = b.get(j..)?;
    rest.iter()
        .position(|&c| c == b'"' || c == b'\\')
        .map(|k| j + k)
}

/// Skips one JSON value starting at `b[i]` (no validation), returning the
/// index just after it.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => Some(string_end(b, i)? + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => j = string_end(b, j)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b' ' | b'\t' | b'\r' | b'\n') {
                j += 1;
            }
            Some(j)
        }
    }
}

/// Finds the raw bytes of the top-level `"account_id"` string value without
/// parsing the event. Used only to choose a shard: the worker's full parse is
/// authoritative. Returns `None` if the event does not look like an envelope.
pub fn prescan_account(b: &[u8]) -> Option<&[u8]> {
    let mut i = skip_ws(b, 0);
    if *b.get(i)? != b'{' {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        if *b.get(i)? != b'"' {
            return None;
        }
        let kend = string_end(b, i)?;
        let key = &b[i + 1..kend];
        i = skip_ws(b, kend + 1);
        if *b.get(i)? != b':' {
            return None;
        }
        i = skip_ws(b, i + 1);
        if key == b"account_id" {
            if *b.get(i)? != b'"' {
                return None;
            }
            let vend = string_end(b, i)?;
            return Some(&b[i + 1..vend]);
        }
        i = skip_ws(b, skip_value(b, i)?);
        if *b.get(i)? != b',' {
            return None;
        }
        i += 1;
    }
}

/// The shard an event goes to: a hash of its account, so that every event of
/// an account is handled, in order, by one worker.
#[inline]
pub fn shard_of(event: &[u8], shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    match prescan_account(event) {
        Some(acct) => (rustc_hash::FxHasher::default_hash(acct) % shards as u64) as usize,
        None => 0,
    }
}

trait DefaultHash {
    fn default_hash(b: &[u8]) -> u64;
}

impl DefaultHash for rustc_hash::FxHasher {
    #[inline]
    fn default_hash(b: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut h = rustc_hash::FxHasher::default();
        h.write(b);
        // Fx mixes poorly in the low bits for short keys; finish with a multiply-shift.
        h.finish().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_skip_blanks_and_strip_terminators() {
        let buf = b"a\r\n\n  \nbc\nd";
        let got: Vec<_> = lines(buf)
            .map(|s| &buf[s.start as usize..(s.start + s.len) as usize])
            .collect();
        assert_eq!(got, [&b"a"[..], b"bc", b"d"]);
    }

    #[test]
    fn prescan_finds_the_top_level_account_only() {
        let ev = br#"{"event_id":"ev_1","principal":{"account_id":"ac_wrong"},"object":{"account_id":"x","s":"}\"{"},"account_id":"ac_right"}"#;
        assert_eq!(prescan_account(ev), Some(&b"ac_right"[..]));
        assert_eq!(
            prescan_account(br#" { "account_id" : "ac_1" } "#),
            Some(&b"ac_1"[..])
        );
        assert_eq!(prescan_account(br#"{"account_id":5}"#), None);
        assert_eq!(prescan_account(br#"[1]"#), None);
        assert_eq!(prescan_account(br#"{"a":"unterminated"#), None);
        assert_eq!(
            prescan_account(br#"{"a":1,"b":[1,{"x":"]"}],"account_id":"ac_2"}"#),
            Some(&b"ac_2"[..])
        );
    }

    #[test]
    fn strings_end_at_the_first_unescaped_quote_wherever_it_falls() {
        // Ends and escapes on each side of the 16-byte steps, against the
        // byte-by-byte answer.
        for len in 0..40 {
            for esc in [None, Some(0), Some(14), Some(15), Some(16), Some(31)] {
                let mut s = vec![b'"'];
                for k in 0..len {
                    if esc == Some(k) {
                        s.extend_from_slice(br#"\""#);
                    } else {
                        s.push(b'a' + (k % 26) as u8);
                    }
                }
                s.extend_from_slice(br#"","b":1"#);
                let mut want = 1;
                while s[want] != b'"' {
                    want += if s[want] == b'\\' { 2 } else { 1 };
                }
                assert_eq!(
                    string_end(&s, 0),
                    Some(want),
                    "{}",
                    String::from_utf8_lossy(&s)
                );
                // Unterminated: no end, wherever the bytes stop.
                assert_eq!(string_end(&s[..want], 0), None);
            }
        }
    }

    #[test]
    fn the_same_account_always_goes_to_the_same_shard() {
        let a = br#"{"account_id":"ac_7","event_id":"1"}"#;
        let b = br#"{"event_id":"2","account_id":"ac_7"}"#;
        for shards in 1..8 {
            assert_eq!(shard_of(a, shards), shard_of(b, shards));
        }
        let spread: std::collections::HashSet<_> = (0..100)
            .map(|i| shard_of(format!(r#"{{"account_id":"ac_{i}"}}"#).as_bytes(), 4))
            .collect();
        assert_eq!(spread.len(), 4, "accounts spread over every shard");
    }
}
