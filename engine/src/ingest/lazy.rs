//! Reading an event on demand: its envelope, and of its `object` only the
//! fields the routes for its `(account, type)` read, found through the
//! structural index ([`super::scan`]) without building a tape of the event.
//!
//! The fields read become a small tape of their own: an object holding only
//! those paths, with every value found on the way (a scalar where a path
//! expected an object stays that scalar), so that a filter evaluated on it
//! sees exactly what it would see on the whole event. Values are turned
//! into tape nodes here only when that is unambiguous: strings without
//! escapes, integers of at most 18 digits, `true`, `false`, `null`. For
//! anything else (an escape, a float, a list or object read whole, an
//! object of 64 members or more, which the evaluator's step budget counts,
//! a key with an escape, a repeated envelope key, more than 128 brackets,
//! bytes that are not the JSON the reader expects) the reader answers
//! [`None`] and the event is parsed in full, which is always correct.
//!
//! The reader validates only what it reads: the envelope's strings (UTF-8,
//! no control characters), the event type, the timestamp, the nesting bound
//! and the values it turns into nodes. An event it settles without the full
//! parse is counted as unvalidated (`docs/delivery.md`).

use super::scan::Index;
use super::{MAX_DEPTH, MAX_EVENT_BYTES};
use crate::cel::fallback::PathTrie;
use crate::events::{EventTypeId, parse_rfc3339_ms};
use crate::json::Json;
use simd_json::{Node, StaticNode, Tape};

/// The envelope as the reader found it (what routing needs of it went to
/// [`LazyReader::envelope`]'s `wanted`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LazyEnvelope<'i> {
    /// `account_id`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub account_id: &'i str,
    /// Where `object`'s `{` is.
    object: usize,
}

/// Why the reader stopped: the event needs the full parse.
struct Full;

/// The most members a walked object may have: from this many on, a
/// lookup in it costs the filter steps ([`crate::cel::eval::FREE_STEPS`]),
/// which only the whole object counts right.
const MAX_MEMBERS: usize = crate::cel::eval::FREE_STEPS;

/// The most children of one trie node the reader tracks.
const MAX_CHILDREN: usize = 16;

/// An on-demand reader, reused from event to event (one per worker).
pub struct LazyReader {
    index: Index,
    tape: Tape<'static>,
}

impl Default for LazyReader {
    fn default() -> Self {
        LazyReader {
            index: Index::new(),
            tape: Tape(Vec::with_capacity(64)),
        }
    }
}

#[inline]
fn ws(raw: &[u8], mut i: usize) -> usize {
    while i < raw.len() && matches!(raw[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

impl LazyReader {
    /// Reads the envelope of `raw`. Once `account_id` and `event_type` are
    /// known, at the latest when `object` starts, `wanted` is asked whether
    /// to go on: false (the routes read the event whole) stops the reader
    /// there. [`None`]: the event needs the full parse.
    pub(crate) fn envelope<'i>(
        &mut self,
        raw: &'i [u8],
        mut wanted: impl FnMut(&str, EventTypeId) -> bool,
    ) -> Option<LazyEnvelope<'i>> {
        if raw.len() > MAX_EVENT_BYTES {
            return None;
        }
        // Indexed whole at once: one tight loop is cheaper than block by
        // block as the walk goes, and a settled event needs every block for
        // the nesting bound anyway.
        self.index.build(raw);
        let root = ws(raw, 0);
        if raw.get(root) != Some(&b'{') {
            return None;
        }
        // event_id, event_type, event_timestamp, account_id, principal, object
        let mut at = [usize::MAX; 6];
        let mut asked = false;
        let end = self
            .entries(raw, root, |ix, key, v| {
                let Some(slot) = envelope_slot(key) else {
                    return Ok(());
                };
                if at[slot] != usize::MAX {
                    return Err(Full); // the full parse rejects a repeated envelope key
                }
                at[slot] = v;
                if slot == 5 && !asked && at[1] != usize::MAX && at[3] != usize::MAX {
                    asked = true;
                    let ty = event_type(ix, raw, at[1])?;
                    if !wanted(string(ix, raw, at[3])?, ty) {
                        return Err(Full);
                    }
                }
                Ok(())
            })
            .ok()?;
        if ws(raw, end) != raw.len() || at[..4].contains(&usize::MAX) || at[5] == usize::MAX {
            return None;
        }
        let ix = &mut self.index;
        // `object` is an object; `principal`, if there, an object or null.
        if raw[at[5]] != b'{' {
            return None;
        }
        if at[4] != usize::MAX && raw[at[4]] != b'{' {
            let end = skip_value(ix, raw, at[4]).ok()?;
            if &raw[at[4]..end] != b"null" {
                return None;
            }
        }
        string(ix, raw, at[0]).ok()?;
        let ts = string(ix, raw, at[2]).ok()?;
        parse_rfc3339_ms(ts)?;
        let event_type = event_type(ix, raw, at[1]).ok()?;
        let account_id = string(ix, raw, at[3]).ok()?;
        if ix.opens_total() > MAX_DEPTH {
            return None; // maybe too deep: the full parse decides
        }
        if !asked && !wanted(account_id, event_type) {
            return None;
        }
        Some(LazyEnvelope {
            account_id,
            object: at[5],
        })
    }

    /// Reads the fields of `env`'s object that `trie` names and calls `f`
    /// with an object of them. [`None`]: the event needs the full parse.
    pub(crate) fn fields<'i, R>(
        &mut self,
        raw: &'i [u8],
        env: &LazyEnvelope<'i>,
        trie: &'i PathTrie,
        f: impl FnOnce(Json<'_, 'i>) -> R,
    ) -> Option<R> {
        let mut tape: Tape<'i> = std::mem::replace(&mut self.tape, Tape(Vec::new()));
        tape.0.clear();
        let built = self.object(raw, env.object, trie, &mut tape.0);
        let out = match built {
            Ok(()) => Json::root(&tape.0).map(f),
            Err(Full) => None,
        };
        self.tape = tape.reset();
        out
    }

    /// Walks the members of the object whose `{` is at `open`, calling
    /// `visit(index, key, value_start)` for each; returns the position after
    /// its `}`.
    fn entries(
        &mut self,
        raw: &[u8],
        open: usize,
        mut visit: impl FnMut(&mut Index, &[u8], usize) -> Result<(), Full>,
    ) -> Result<usize, Full> {
        let ix = &mut self.index;
        let mut i = ws(raw, open + 1);
        if raw.get(i) == Some(&b'}') {
            return Ok(i + 1);
        }
        loop {
            if raw.get(i) != Some(&b'"') {
                return Err(Full);
            }
            let kend = ix.next_quote(i + 1).ok_or(Full)?;
            let key = &raw[i + 1..kend];
            if ix.saw_backslash() && key.contains(&b'\\') {
                return Err(Full);
            }
            i = ws(raw, kend + 1);
            if raw.get(i) != Some(&b':') {
                return Err(Full);
            }
            let v = ws(raw, i + 1);
            let vend = skip_value(ix, raw, v)?;
            visit(ix, key, v)?;
            i = ws(raw, vend);
            match raw.get(i) {
                Some(b',') => i = ws(raw, i + 1),
                Some(b'}') => return Ok(i + 1),
                _ => return Err(Full),
            }
        }
    }

    /// Appends to `tape` the object at `open` reduced to what `trie` reads.
    fn object<'i>(
        &mut self,
        raw: &'i [u8],
        open: usize,
        trie: &'i PathTrie,
        tape: &mut Vec<Node<'i>>,
    ) -> Result<(), Full> {
        let children = &trie.children;
        if children.len() > MAX_CHILDREN {
            return Err(Full);
        }
        let mut found = [usize::MAX; MAX_CHILDREN];
        let mut members = 0usize;
        self.entries(raw, open, |_, key, v| {
            members += 1;
            if members >= MAX_MEMBERS {
                return Err(Full);
            }
            // The first of repeated keys is the one lookups see.
            if let Some(c) = children
                .iter()
                .position(|(n, _)| same_key(n.as_bytes(), key))
                && found[c] == usize::MAX
            {
                found[c] = v;
            }
            Ok(())
        })?;
        let head = tape.len();
        tape.push(Node::Object { len: 0, count: 0 });
        let mut len = 0;
        for ((name, child), &v) in children.iter().zip(&found) {
            if v == usize::MAX {
                continue;
            }
            len += 1;
            tape.push(Node::String(name));
            if !child.whole && raw[v] == b'{' {
                self.object(raw, v, child, tape)?;
            } else {
                tape.push(scalar(&mut self.index, raw, v)?);
            }
        }
        tape[head] = Node::Object {
            len,
            count: tape.len() - head - 1,
        };
        Ok(())
    }
}

/// Which envelope field `key` names, in the order event_id, event_type,
/// event_timestamp, account_id, principal, object.
#[inline(always)]
fn envelope_slot(key: &[u8]) -> Option<usize> {
    /// `key` is `name` (compared as arrays: no call to `memcmp`).
    #[inline(always)]
    fn is<const N: usize>(key: &[u8], name: &[u8; N]) -> bool {
        <&[u8; N]>::try_from(key).is_ok_and(|k| k == name)
    }
    match key.len() {
        8 if is(key, b"event_id") => Some(0),
        10 if is(key, b"event_type") => Some(1),
        15 if is(key, b"event_timestamp") => Some(2),
        10 if is(key, b"account_id") => Some(3),
        9 if is(key, b"principal") => Some(4),
        6 if is(key, b"object") => Some(5),
        _ => None,
    }
}

/// Whether two keys are the same, looking at their lengths and first bytes
/// before comparing them whole.
#[inline(always)]
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.first() == b.first() && a == b
}

/// The position just after the value starting at `v`.
fn skip_value(ix: &mut Index, raw: &[u8], v: usize) -> Result<usize, Full> {
    match raw.get(v) {
        Some(b'"') => Ok(ix.next_quote(v + 1).ok_or(Full)? + 1),
        Some(&open @ (b'{' | b'[')) => {
            let close = ix.matching_close(v).ok_or(Full)?;
            // `{` closes with `}`, `[` with `]` (two apart in ASCII).
            if raw[close] != open + 2 {
                return Err(Full);
            }
            Ok(close + 1)
        }
        Some(_) => {
            let mut j = v;
            while j < raw.len()
                && !matches!(
                    raw[j],
                    b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'{' | b'['
                )
            {
                j += 1;
            }
            if j == v { Err(Full) } else { Ok(j) }
        }
        None => Err(Full),
    }
}

/// The string starting at `v`, if it is one the reader takes as is: no
/// escapes, no control characters, valid UTF-8.
fn string<'i>(ix: &mut Index, raw: &'i [u8], v: usize) -> Result<&'i str, Full> {
    if raw.get(v) != Some(&b'"') {
        return Err(Full);
    }
    let end = ix.next_quote(v + 1).ok_or(Full)?;
    let s = &raw[v + 1..end];
    if ix.plain() {
        // Printable ASCII only (the index saw nothing else up to here).
        // SAFETY: ASCII is UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(s) });
    }
    if s.iter().any(|&b| b < 0x20 || b == b'\\') {
        return Err(Full);
    }
    std::str::from_utf8(s).map_err(|_| Full)
}

fn event_type(ix: &mut Index, raw: &[u8], v: usize) -> Result<EventTypeId, Full> {
    EventTypeId::from_name(string(ix, raw, v)?).ok_or(Full)
}

/// The value at `v` as a tape node, when it is a scalar the reader reads
/// exactly as the full parse does.
fn scalar<'i>(ix: &mut Index, raw: &'i [u8], v: usize) -> Result<Node<'i>, Full> {
    if raw[v] == b'"' {
        return string(ix, raw, v).map(Node::String);
    }
    let end = skip_value(ix, raw, v)?;
    let s = match &raw[v..end] {
        b"true" => StaticNode::Bool(true),
        b"false" => StaticNode::Bool(false),
        b"null" => StaticNode::Null,
        // As simd-json reads them: negative integers are `I64`, others `U64`.
        digits => match integer(digits).ok_or(Full)? {
            n if n < 0 => StaticNode::I64(n),
            n => StaticNode::U64(n as u64),
        },
    };
    Ok(Node::Static(s))
}

/// A JSON integer of at most 18 digits (which fits an `i64`), not `-0`.
fn integer(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, b),
    };
    if digits.is_empty()
        || digits.len() > 18
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits[0] == b'0' && (digits.len() > 1 || neg))
    {
        return None;
    }
    let n = digits
        .iter()
        .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    Some(if neg { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::EventParser;

    const EV: &str = r#"{"event_id":"ev_1","event_type":"http_request_complete.v0","event_timestamp":"2022-02-23T23:44:16Z","account_id":"ac_1","object":{"conn":{"server_name":"a-prod.ngrok.dev","server_port":443,"client_ip":"1.2.3.4"},"http":{"request":{"method":"GET","headers":{"x":["1"]}},"response":{"status_code":503}},"tls":null}}"#;

    fn trie(paths: &[&str]) -> PathTrie {
        let mut t = PathTrie::default();
        let mut paths = paths.to_vec();
        paths.sort_unstable();
        for p in paths {
            let segs: Vec<String> = p.split('.').map(str::to_string).collect();
            t.insert(&segs);
        }
        t
    }

    /// The reduced object as JSON, or None when the reader gives up.
    fn read(raw: &str, paths: &[&str]) -> Option<String> {
        let t = trie(paths);
        let mut r = LazyReader::default();
        let env = r.envelope(raw.as_bytes(), |_, _| true)?;
        r.fields(raw.as_bytes(), &env, &t, |o| {
            let mut out = Vec::new();
            crate::json::write_value(&mut out, o);
            String::from_utf8(out).unwrap()
        })
    }

    #[test]
    fn reads_only_the_named_fields_of_the_object() {
        assert_eq!(
            read(EV, &["conn.server_name", "http.response.status_code"]).as_deref(),
            Some(
                r#"{"conn":{"server_name":"a-prod.ngrok.dev"},"http":{"response":{"status_code":503}}}"#
            )
        );
        // Missing fields are left out; a scalar on the way stays.
        assert_eq!(
            read(EV, &["oauth.user", "tls.version", "conn.server_port"]).as_deref(),
            Some(r#"{"conn":{"server_port":443},"tls":null}"#)
        );
        // A list or object read whole needs the full parse.
        assert_eq!(read(EV, &["http.request.headers"]), None);
        assert_eq!(read(EV, &["conn"]), None);
    }

    #[test]
    fn the_envelope_is_read_like_the_full_parse_reads_it() {
        let mut r = LazyReader::default();
        let env = r.envelope(EV.as_bytes(), |_, _| true).unwrap();
        assert_eq!(env.account_id, "ac_1");
        let mut seen = None;
        r.envelope(EV.as_bytes(), |a, t| {
            seen = Some((a.to_string(), t.name()));
            true
        });
        assert_eq!(seen, Some(("ac_1".to_string(), "http_request_complete.v0")));
        // Envelope keys in any order, with spaces.
        let shuffled = r#" { "object" : {"a":1} , "account_id":"ac_2", "event_timestamp":"2022-02-23T23:44:16Z","event_type":"api_key_created.v0","event_id":"e","principal":null } "#;
        let env = r.envelope(shuffled.as_bytes(), |_, _| true).unwrap();
        assert_eq!(env.account_id, "ac_2");
        // `wanted` saying no stops the reader.
        assert!(r.envelope(EV.as_bytes(), |_, _| false).is_none());
    }

    #[test]
    fn anything_unusual_goes_to_the_full_parse() {
        let cases = [
            EV.replace("\"ev_1\"", "\"ev_\\u0031\""), // an escape in the envelope
            EV.replace(
                "\"account_id\":\"ac_1\",",
                "\"account_id\":\"ac_1\",\"account_id\":\"ac_2\",",
            ), // repeated
            EV.replace("\"account_id\":\"ac_1\",", ""), // missing
            EV.replace("2022-02-23T23:44:16Z", "soon"), // bad timestamp
            EV.replace("http_request_complete.v0", "nope.v0"), // unknown type
            format!("{EV}x"),                         // trailing bytes
            EV.replace("\"object\":{", "\"object\":["), // object not an object
            format!(
                "{}{}",
                &EV[..EV.len() - 2],
                ",\"deep\":".to_string() + &"[".repeat(130) + &"]".repeat(130) + "}}"
            ),
        ];
        for c in &cases {
            let mut r = LazyReader::default();
            assert!(r.envelope(c.as_bytes(), |_, _| true).is_none(), "{c}");
        }
        // A mismatched bracket in an object the reader walks.
        let ev = EV.replace("\"tls\":null", "\"tls\":null,\"x\":[1}");
        assert_eq!(read(&ev, &["tls"]), None);
        // Values read: a float, an escape, -0, a big integer.
        for (from, to) in [
            ("503", "503.0"),
            ("503", "-0"),
            ("503", "12345678901234567890"),
            ("a-prod.ngrok.dev", "a\\u002dprod"),
        ] {
            let ev = EV.replace(from, to);
            assert_eq!(
                read(&ev, &["conn.server_name", "http.response.status_code"]),
                None,
                "{ev}"
            );
        }
        // Escapes elsewhere do not matter.
        let ev = EV.replace("\"GET\"", "\"G\\\"ET\"");
        assert!(read(&ev, &["conn.server_name"]).is_some());
    }

    #[test]
    fn nodes_are_those_of_the_full_parse() {
        let t = trie(&["http.response.status_code"]);
        let path = ["http", "response", "status_code"];
        for v in [
            "0",
            "-1",
            "42",
            "-999999999999999999",
            "999999999999999999",
            "true",
            "false",
            "null",
            "\"héllo\"",
            "\"\"",
        ] {
            let ev = EV.replace("503", v);
            let full = EventParser::new().parse(ev.as_bytes(), |r| {
                format!("{:?}", r.unwrap().object.path(&path).unwrap().node())
            });
            let mut r = LazyReader::default();
            let env = r.envelope(ev.as_bytes(), |_, _| true).unwrap();
            let lazy = r
                .fields(ev.as_bytes(), &env, &t, |o| {
                    format!("{:?}", o.path(&path).unwrap().node())
                })
                .unwrap();
            assert_eq!(lazy, full, "{v}");
        }
    }
}
