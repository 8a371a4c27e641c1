//! Encoding a delivered record: the envelope as compact JSON, with `object`
//! projected to a source's `fields`.
//!
//! A record is written once per (event, subscription) into a worker's arena
//! and shared, as [`bytes::Bytes`], by every destination of the subscription.

use crate::events::EventTypeId;
use crate::ingest::Envelope;
use crate::json::{Json, Out, write_str, write_value};
use bytes::{Bytes, BytesMut};

/// A compiled `fields` list: the member paths of `object` to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Projection {
    root: Node,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Node {
    keep_all: bool,
    children: Vec<(Box<str>, Node)>,
}

impl Node {
    fn child(&self, k: &str) -> Option<&Node> {
        self.children
            .iter()
            .find(|(n, _)| **n == *k)
            .map(|(_, c)| c)
    }
}

impl Projection {
    /// Builds a projection from dotted paths (`conn.client_ip`). A path keeps
    /// its whole value, objects included (`conn` keeps every `conn.*` member).
    pub fn new<S: AsRef<str>>(paths: &[S]) -> Projection {
        let mut root = Node::default();
        for p in paths {
            let mut node = &mut root;
            for seg in p.as_ref().split('.') {
                if node.keep_all {
                    break;
                }
                let i = match node.children.iter().position(|(n, _)| **n == *seg) {
                    Some(i) => i,
                    None => {
                        node.children.push((seg.into(), Node::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[i].1;
            }
            node.keep_all = true;
            node.children.clear();
        }
        Projection { root }
    }

    /// Writes the projected object. Parents are written only when something
    /// below them is kept; an object with nothing kept is `{}`.
    pub fn write<O: Out>(&self, out: &mut O, object: Json<'_, '_>) {
        if self.root.keep_all {
            write_value(out, object);
        } else if !write_node(out, &self.root, object) {
            out.put(b"{}");
        }
    }
}

/// Writes the members of `obj` that `node` keeps, as an object. Returns false
/// (and writes nothing) when none is kept.
fn write_node<O: Out>(out: &mut O, node: &Node, obj: Json<'_, '_>) -> bool {
    let start = out.position();
    let mut any = false;
    for (n, (k, v)) in obj.entries().enumerate() {
        let Some(child) = node.child(k) else {
            continue;
        };
        if obj.entries().take(n).any(|(k2, _)| k2 == k) {
            continue; // a repeated key: the first value only, as lookups see it
        }
        let mark = out.position();
        out.put_byte(if any { b',' } else { b'{' });
        write_str(out, k);
        out.put_byte(b':');
        if child.keep_all {
            write_value(out, v);
            any = true;
        } else if v.is_object() && write_node(out, child, v) {
            any = true;
        } else {
            out.truncate_to(mark);
        }
    }
    if any {
        out.put_byte(b'}');
    } else {
        out.truncate_to(start);
    }
    any
}

/// Writes the delivered form of an event: `event_id`, `event_type`,
/// `event_timestamp`, `account_id`, `principal` (when the input has it) and
/// `object` (projected when `projection` is given), in that order.
pub fn write_envelope<O: Out>(
    out: &mut O,
    env: &Envelope<'_, '_>,
    projection: Option<&Projection>,
) {
    out.put(b"{\"event_id\":");
    write_str(out, env.event_id);
    out.put(b",\"event_type\":\"");
    out.put(env.event_type.name().as_bytes());
    out.put(b"\",\"event_timestamp\":");
    write_str(out, env.event_timestamp);
    out.put(b",\"account_id\":");
    write_str(out, env.account_id);
    if let Some(p) = env.principal {
        out.put(b",\"principal\":");
        write_value(out, p);
    }
    out.put(b",\"object\":");
    match projection {
        Some(p) => p.write(out, env.object),
        None => write_value(out, env.object),
    }
    out.put_byte(b'}');
}

/// An encoded record and the metadata sinks need, sharing one buffer:
/// `bytes` holds the JSON, then the account id, then the event id.
#[derive(Clone, Debug)]
pub struct Record {
    bytes: Bytes,
    data_len: u32,
    account_len: u32,
    /// The event type.
    pub event_type: EventTypeId,
    /// `event_timestamp` in milliseconds since the epoch.
    pub timestamp_ms: i64,
}

impl Record {
    /// The encoded JSON.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.bytes[..self.data_len as usize]
    }

    /// The encoded JSON as shared bytes.
    pub fn data_bytes(&self) -> Bytes {
        self.bytes.slice(..self.data_len as usize)
    }

    /// The event's `account_id`.
    #[inline]
    pub fn account_id(&self) -> &str {
        let s = self.data_len as usize;
        std::str::from_utf8(&self.bytes[s..s + self.account_len as usize]).unwrap_or("")
    }

    /// The event's `event_id`.
    #[inline]
    pub fn event_id(&self) -> &str {
        let s = (self.data_len + self.account_len) as usize;
        std::str::from_utf8(&self.bytes[s..]).unwrap_or("")
    }

    /// Bytes the record occupies in memory (for queue accounting).
    pub fn footprint(&self) -> usize {
        self.bytes.len() + std::mem::size_of::<Record>()
    }

    /// A record over bytes laid out as `data`, account id, event id (read
    /// back from the disk buffer without a copy).
    pub fn from_shared(
        bytes: Bytes,
        data_len: usize,
        account_len: usize,
        event_type: EventTypeId,
        timestamp_ms: i64,
    ) -> Record {
        Record {
            bytes,
            data_len: data_len as u32,
            account_len: account_len as u32,
            event_type,
            timestamp_ms,
        }
    }

    /// The same record in its own allocation (a record read from disk
    /// shares its read block; one kept long, for a retry, should not pin it).
    pub fn detached(&self) -> Record {
        Record {
            bytes: Bytes::copy_from_slice(&self.bytes),
            ..self.clone()
        }
    }

    /// Builds a record from parts (tests, replay from disk).
    pub fn from_parts(
        data: &[u8],
        account_id: &str,
        event_id: &str,
        event_type: EventTypeId,
        timestamp_ms: i64,
    ) -> Record {
        let mut b = BytesMut::with_capacity(data.len() + account_id.len() + event_id.len());
        b.extend_from_slice(data);
        b.extend_from_slice(account_id.as_bytes());
        b.extend_from_slice(event_id.as_bytes());
        Record {
            bytes: b.freeze(),
            data_len: data.len() as u32,
            account_len: account_id.len() as u32,
            event_type,
            timestamp_ms,
        }
    }
}

/// Writes records into large shared blocks: one allocation per block, not
/// per record.
pub struct Encoder {
    arena: BytesMut,
    block: usize,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new(256 << 10)
    }
}

impl Encoder {
    /// An encoder allocating blocks of `block` bytes.
    pub fn new(block: usize) -> Encoder {
        Encoder {
            arena: BytesMut::with_capacity(block),
            block,
        }
    }

    /// Encodes one record.
    pub fn encode(&mut self, env: &Envelope<'_, '_>, projection: Option<&Projection>) -> Record {
        if self.arena.capacity() - self.arena.len() < 2048 {
            self.arena.reserve(self.block);
        }
        write_envelope(&mut self.arena, env, projection);
        self.finish(env)
    }

    /// The record of `env` delivered whole: its input bytes `raw` as they
    /// are when they are exactly what [`Encoder::encode`] would write
    /// ([`writes_as_read`]), else encoded.
    pub fn encode_whole(&mut self, env: &Envelope<'_, '_>, raw: &[u8]) -> Record {
        if !writes_as_read(env, raw) {
            return self.encode(env, None);
        }
        self.arena
            .reserve(raw.len() + env.account_id.len() + env.event_id.len());
        self.arena.extend_from_slice(raw);
        self.finish(env)
    }

    /// Appends the record's metadata after its JSON and cuts the record.
    fn finish(&mut self, env: &Envelope<'_, '_>) -> Record {
        let data_len = self.arena.len();
        self.arena.extend_from_slice(env.account_id.as_bytes());
        self.arena.extend_from_slice(env.event_id.as_bytes());
        let bytes = self.arena.split().freeze();
        Record {
            bytes,
            data_len: data_len as u32,
            account_len: env.account_id.len() as u32,
            event_type: env.event_type,
            timestamp_ms: env.timestamp_ms,
        }
    }
}

/// Whether `raw`, parsed as `env`, is byte for byte what [`write_envelope`]
/// writes for it: the envelope's members alone and in the writer's order,
/// compact, no escapes (strings print as read), no `-` outside strings (no
/// `-0`), no number with a fraction or exponent (which the writer prints
/// its own way), no repeated key (which the writer drops). Checked in one
/// vectorized pass over the bytes and one walk of the tape.
pub fn writes_as_read(env: &Envelope<'_, '_>, raw: &[u8]) -> bool {
    env.in_writer_order
        && crate::ingest::scan::plain_compact(raw)
        && env.principal.is_none_or(prints_as_read)
        && prints_as_read(env.object)
}

/// Whether the writer prints `v` as it was read, given compact input
/// without escapes: no float, no repeated key (objects over 32 members are
/// not checked for that and count as no).
fn prints_as_read(v: Json<'_, '_>) -> bool {
    use simd_json::{Node, StaticNode};
    match v.node() {
        Node::Static(StaticNode::F64(_)) => false,
        Node::Object { len, .. } => {
            if len > 32 {
                return false;
            }
            let mut keys: [&str; 32] = [""; 32];
            for (i, (k, child)) in v.entries().enumerate() {
                if keys[..i].contains(&k) || !prints_as_read(child) {
                    return false;
                }
                keys[i] = k;
            }
            true
        }
        Node::Array { .. } => v.elements().all(prints_as_read),
        _ => true,
    }
}

/// Parses `raw` as an event and, if it is accepted, checks that the encoded
/// record is valid JSON carrying the same envelope and object (the fuzz
/// oracle of ingest and encoding). `Ok(false)`: the event was rejected.
pub fn check_roundtrip(raw: &[u8]) -> Result<bool, String> {
    let mut parser = crate::ingest::EventParser::new();
    let mut enc = Encoder::new(4096);
    let recs = parser.parse(raw, |r| {
        r.ok()
            .map(|env| (enc.encode(&env, None), enc.encode_whole(&env, raw)))
    });
    let Some((rec, whole)) = recs else {
        return Ok(false);
    };
    // A record taken from the input bytes is the record the writer makes.
    if whole.data() != rec.data()
        || whole.account_id() != rec.account_id()
        || whole.event_id() != rec.event_id()
    {
        return Err(format!(
            "the record from the input differs from the encoded one:\n{}\n{}",
            String::from_utf8_lossy(whole.data()),
            String::from_utf8_lossy(rec.data())
        ));
    }
    let out: serde_json::Value = serde_json::from_slice(rec.data()).map_err(|e| {
        format!(
            "encoded record is not JSON ({e}): {}",
            String::from_utf8_lossy(rec.data())
        )
    })?;
    let input: serde_json::Value = match serde_json::from_slice(raw) {
        Ok(v) => v,
        // serde_json is stricter or looser in corners (duplicate keys, big
        // numbers); only compare when it reads the input too.
        Err(_) => return Ok(true),
    };
    for key in ["event_id", "event_type", "event_timestamp", "account_id"] {
        if out.get(key) != input.get(key) {
            return Err(format!(
                "{key} differs: {:?} vs {:?}",
                out.get(key),
                input.get(key)
            ));
        }
    }
    if rec.account_id() != out["account_id"].as_str().unwrap_or_default()
        || rec.event_id() != out["event_id"].as_str().unwrap_or_default()
    {
        return Err("record metadata differs from its JSON".into());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(paths: &[&str], obj: &str) -> String {
        let mut b = obj.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut b).unwrap();
        let mut out = Vec::new();
        Projection::new(paths).write(&mut out, Json::root(&tape.0).unwrap());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn projection_keeps_only_listed_paths_in_document_order() {
        let obj = r#"{"conn":{"client_ip":"1.2.3.4","server_name":"a","server_port":443},"http":{"request":{"method":"get"},"response":{"status_code":500,"body_length":7}},"tls":{"version":"1.3"}}"#;
        assert_eq!(
            project(&["http.response.status_code", "conn.client_ip"], obj),
            r#"{"conn":{"client_ip":"1.2.3.4"},"http":{"response":{"status_code":500}}}"#
        );
        assert_eq!(
            project(&["conn"], obj),
            r#"{"conn":{"client_ip":"1.2.3.4","server_name":"a","server_port":443}}"#
        );
        assert_eq!(
            project(&["conn", "conn.client_ip"], obj),
            project(&["conn"], obj)
        );
        assert_eq!(project(&["oauth.user.id"], obj), "{}");
        assert_eq!(
            project(&["tls.version.major"], obj),
            "{}",
            "a scalar is not descended into"
        );
        assert_eq!(
            project(&["http.request.method", "missing.x"], obj),
            r#"{"http":{"request":{"method":"get"}}}"#
        );
    }

    #[test]
    fn envelope_is_written_in_canonical_order() {
        let raw = br#"{"object":{"a":1},"account_id":"ac_1","principal":null,"event_timestamp":"2022-02-23T23:44:16Z","event_type":"ip_policy_created.v0","event_id":"ev_\"1","extra":true}"#;
        let mut p = crate::ingest::EventParser::new();
        let mut enc = Encoder::new(4096);
        let rec = p.parse(raw, |r| enc.encode(&r.unwrap(), None));
        assert_eq!(
            std::str::from_utf8(rec.data()).unwrap(),
            r#"{"event_id":"ev_\"1","event_type":"ip_policy_created.v0","event_timestamp":"2022-02-23T23:44:16Z","account_id":"ac_1","principal":null,"object":{"a":1}}"#
        );
        assert_eq!(rec.account_id(), "ac_1");
        assert_eq!(rec.event_id(), "ev_\"1");
        let v: serde_json::Value = serde_json::from_slice(rec.data()).unwrap();
        assert_eq!(v["object"]["a"], 1);
    }

    #[test]
    fn a_record_is_taken_from_the_input_only_when_the_writer_would_write_it() {
        let canonical = r#"{"event_id":"ev_1","event_type":"ip_policy_created.v0","event_timestamp":"2022-02-23T23:44:16Z","account_id":"ac_1","principal":null,"object":{"a":[1,true,{"b":"x y-z é"}],"n":18446744073709551615}}"#;
        let whole = |raw: &str| {
            let mut p = crate::ingest::EventParser::new();
            let mut enc = Encoder::new(4096);
            p.parse(raw.as_bytes(), |r| {
                let env = r.unwrap();
                let (a, b) = (
                    enc.encode(&env, None),
                    enc.encode_whole(&env, raw.as_bytes()),
                );
                assert_eq!(a.data(), b.data(), "{raw}");
                assert_eq!(
                    (a.account_id(), a.event_id()),
                    (b.account_id(), b.event_id())
                );
                writes_as_read(&env, raw.as_bytes())
            })
        };
        assert!(whole(canonical));
        assert!(whole(&canonical.replace(r#""principal":null,"#, "")));
        for other in [
            canonical.replace(r#""a":["#, r#""a": ["#),    // a space
            canonical.replace("x y-z", r#"x\u0020y"#),     // an escape
            canonical.replace("[1,", "[1.5,"),             // a float
            canonical.replace("[1,", "[-0,"),              // -0
            canonical.replace(r#""n":"#, r#""a":0,"n":"#), // a repeated key
            canonical.replace(r#""event_id":"ev_1","#, r#""x":1,"event_id":"ev_1","#), // a member more
            canonical.replace(
                // another order
                r#""event_id":"ev_1","event_type":"ip_policy_created.v0","#,
                r#""event_type":"ip_policy_created.v0","event_id":"ev_1","#,
            ),
        ] {
            assert!(!whole(&other), "{other}");
        }
    }

    #[test]
    fn a_control_byte_in_a_string_never_reaches_the_writer() {
        let raw = b"{\"event_id\":\"ev\x01\",\"event_type\":\"ip_policy_created.v0\",\"event_timestamp\":\"2022-02-23T23:44:16Z\",\"account_id\":\"ac_1\",\"object\":{}}";
        // Rejected, or, if accepted, its record from the input is the encoded one.
        assert!(check_roundtrip(raw).is_ok());
    }
}
