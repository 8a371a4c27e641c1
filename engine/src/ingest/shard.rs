//! Choosing an event's worker: the ingest thread finds each event's
//! top-level `account_id` without parsing the event, and hashes it, so that
//! every event of an account is handled, in order, by one worker.
//!
//! Two ways to find the account, with the same answer for every event that
//! is valid JSON:
//!
//! - **Looked for** (the common case): one pass over the event's first
//!   [`LOOK_WITHIN`] bytes, 16 at a time, finds the first `"account_id":`
//!   that follows a `,` (or the `{`), and takes it if every byte before it
//!   belongs to a flat run of members (no bracket but the opening one, no
//!   escape, no whitespace). There it can only be the first top-level key
//!   of that name.
//! - **Walked**: otherwise the members are visited in order, each value
//!   skipped, until the key is found.
//!
//! For bytes that are not JSON the two may differ. Either answer only
//! picks a shard, or on the server the account a line is held back or
//! grouped for (`back_pressure`, the cluster's consumer): such a line is
//! rejected by the worker's parse whichever account it was taken for.

use crate::short_eq::short_eq;

/// How far into an event the account is looked for before it is walked to.
const LOOK_WITHIN: usize = 256;

/// The key as it reads in a compact event.
const KEY: &[u8] = b"\"account_id\":";

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
/// parsing the event, to choose a shard (and on the server to hold back or
/// group a line by account): the worker's parse is authoritative. Returns
/// `None` if the event does not look like an envelope.
#[inline]
pub fn prescan_account(b: &[u8]) -> Option<&[u8]> {
    match look_for_account(b) {
        Some(found) => Some(found),
        None => walk_to_account(b),
    }
}

/// The account's bytes if the key is found where nothing before it can
/// hide another of that name (see the module's comment), else `None`: walk.
#[inline]
fn look_for_account(b: &[u8]) -> Option<&[u8]> {
    if b.first() != Some(&b'{') {
        return None;
    }
    let v = key_at(b)? + KEY.len();
    if b.get(v) != Some(&b'"') {
        return None;
    }
    let end = quote_or_backslash(b, v + 1)?;
    (b[end] == b'"').then(|| &b[v + 1..end])
}

/// Where `"account_id":` first follows a `,` or the `{` within
/// [`LOOK_WITHIN`] bytes of `b`, if no byte before it after the `{` ends a
/// flat run of members: a bracket, an escape, whitespace (or any byte up to
/// a space). In JSON such a run holds only strings and scalars, every quote
/// delimits a string, and a quote after a `,` opens a top-level key.
#[inline]
fn key_at(b: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        key_at_sse2(b)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        key_at_from(b, 1, b.len().min(LOOK_WITHIN))
    }
}

/// [`key_at`] a byte at a time from `from` (at least 1) to `end`.
fn key_at_from(b: &[u8], from: usize, end: usize) -> Option<usize> {
    for i in from..end {
        match b[i] {
            b'"' if matches!(b[i - 1], b',' | b'{') && key_is_at(b, i, end) => return Some(i),
            c if flat_breaker(c) => return None,
            _ => {}
        }
    }
    None
}

/// A byte that ends the flat run: `{`, `[`, `\`, or a space or below.
#[inline(always)]
fn flat_breaker(c: u8) -> bool {
    matches!(c, b'{' | b'[' | b'\\') || c <= b' '
}

/// Whether `b[i..end]` starts with [`KEY`].
#[inline(always)]
fn key_is_at(b: &[u8], i: usize, end: usize) -> bool {
    i + KEY.len() <= end && short_eq(&b[i..i + KEY.len()], KEY)
}

/// [`key_at`] 16 bytes at a time: per block, the bytes that end the flat
/// run and the quotes after a `,` or `{` as bit masks; only such a quote is
/// compared with the key. The few bytes after the last whole block go a
/// byte at a time.
#[cfg(target_arch = "x86_64")]
#[inline]
fn key_at_sse2(b: &[u8]) -> Option<usize> {
    use std::arch::x86_64::*;
    let end = b.len().min(LOOK_WITHIN);
    let mut j = 1;
    while j + 16 <= end {
        // SAFETY: the 16 bytes from `j - 1` and from `j` are inside `b`
        // (`j >= 1`, `j + 16 <= end <= b.len()`); SSE2 is part of every
        // x86_64 CPU.
        let (breakers, opens) = unsafe {
            let v = _mm_loadu_si128(b.as_ptr().add(j).cast());
            let before = _mm_loadu_si128(b.as_ptr().add(j - 1).cast());
            let eq = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
            let low = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(b' ' as i8)), v);
            let breakers = _mm_or_si128(
                _mm_or_si128(eq(b'{'), eq(b'[')),
                _mm_or_si128(eq(b'\\'), low),
            );
            let after = _mm_or_si128(
                _mm_cmpeq_epi8(before, _mm_set1_epi8(b',' as i8)),
                _mm_cmpeq_epi8(before, _mm_set1_epi8(b'{' as i8)),
            );
            let opens = _mm_and_si128(eq(b'"'), after);
            (
                _mm_movemask_epi8(breakers) as u32,
                _mm_movemask_epi8(opens) as u32,
            )
        };
        let mut cand = opens;
        while cand != 0 {
            let k = cand.trailing_zeros();
            if breakers & ((1u32 << k) - 1) != 0 {
                return None;
            }
            let i = j + k as usize;
            if key_is_at(b, i, end) {
                return Some(i);
            }
            cand &= cand - 1;
        }
        if breakers != 0 {
            return None;
        }
        j += 16;
    }
    key_at_from(b, j, end)
}

/// The account found by visiting the top-level members in order.
fn walk_to_account(b: &[u8]) -> Option<&[u8]> {
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

    /// Events where the first `"account_id":` in the bytes is not the
    /// top-level key, or is not the first: the search must step aside.
    #[test]
    fn the_search_steps_aside_wherever_the_first_match_may_not_be_the_key() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            // A nested key of that name first.
            (
                br#"{"principal":{"account_id":"ac_x"},"account_id":"ac_1"}"#,
                Some(b"ac_1"),
            ),
            (
                br#"{"l":["x",{"account_id":"ac_x"}],"account_id":"ac_1"}"#,
                Some(b"ac_1"),
            ),
            // An earlier key of that name spelled with a space; one spelled
            // with an escape is not read as the key (by neither way).
            (
                br#"{"account_id" :"ac_1","account_id":"ac_x"}"#,
                Some(b"ac_1"),
            ),
            (
                br#"{"account\u005fid":"ac_1","account_id":"ac_x"}"#,
                Some(b"ac_x"),
            ),
            // A value that spells the key inside a string with escapes.
            (
                br#"{"s":"\"account_id\":\"ac_x","account_id":"ac_1"}"#,
                Some(b"ac_1"),
            ),
            // The first key of that name holds no string: no account.
            (br#"{"account_id":5,"account_id":"ac_x"}"#, None),
            (br#"{"a":1,"account_id":null}"#, None),
            // An escape in the value: the walk returns the raw bytes.
            (br#"{"account_id":"ac_\"1"}"#, Some(br#"ac_\"1"#)),
            // Spaces before the first brace; the key first.
            (br#" {"account_id":"ac_1"}"#, Some(b"ac_1")),
            (br#"{"account_id":"ac_1"}"#, Some(b"ac_1")),
        ];
        for (ev, want) in cases {
            assert_eq!(
                prescan_account(ev),
                *want,
                "{}",
                String::from_utf8_lossy(ev)
            );
        }
        let mut far = br#"{"pad":""#.to_vec();
        far.extend(std::iter::repeat_n(b'x', LOOK_WITHIN));
        far.extend_from_slice(br#"","account_id":"ac_far"}"#);
        assert_eq!(look_for_account(&far), None, "past the window");
        assert_eq!(prescan_account(&far), Some(&b"ac_far"[..]));
        let usual = br#"{"event_id":"ev_1","event_type":"t.v0","account_id":"ac_1","object":{}}"#;
        assert_eq!(
            look_for_account(usual),
            Some(&b"ac_1"[..]),
            "found by the search"
        );
    }

    proptest::proptest! {
        /// Wherever the search answers for valid JSON, the walk answers the
        /// same: members of every kind, nested or not, before and after
        /// the account, which may appear twice.
        #[test]
        fn the_search_and_the_walk_agree_on_json(
            members in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["event_id", "account_id", "object", "a b", "account\\u005fid"]),
                    proptest::sample::select(vec![
                        r#""ac_1""#, r#""ac_2""#, "5", "null", r#"{"account_id":"ac_n"}"#,
                        r#"["account_id"]"#, r#""x\"y""#, r#""account_id""#, "[]",
                    ]),
                    proptest::sample::select(vec![":", " :", ": "]),
                ),
                0..6,
            ),
            spaced in proptest::bool::ANY,
        ) {
            let sep = if spaced { ", " } else { "," };
            let body: Vec<String> = members
                .iter()
                .map(|(k, v, colon)| format!(r#""{k}"{colon}{v}"#))
                .collect();
            let ev = format!("{{{}}}", body.join(sep));
            proptest::prop_assume!(serde_json::from_str::<serde_json::Value>(&ev).is_ok());
            let b = ev.as_bytes();
            proptest::prop_assert_eq!(
                key_at(b),
                key_at_from(b, 1, b.len().min(LOOK_WITHIN)),
                "16 bytes at a time as one at a time: {}",
                ev
            );
            if let Some(found) = look_for_account(b) {
                proptest::prop_assert_eq!(Some(found), walk_to_account(b), "{}", ev);
            }
        }
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
