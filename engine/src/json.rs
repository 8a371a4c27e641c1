//! Reading parsed JSON in place and writing compact JSON.
//!
//! Events are parsed once, by simd-json, into a *tape*: a flat array of nodes
//! whose strings borrow the (unescaped) input. [`Json`] is a view of one value
//! on that tape; lookups walk it without allocating. The writer functions
//! serialize a view back to compact JSON.

use crate::short_eq::short_eq;
use simd_json::{Node, StaticNode};

/// A view of one JSON value on a simd-json tape: `nodes[0]` is its head and
/// the slice spans exactly the value (all its descendants).
#[derive(Clone, Copy, Debug)]
pub struct Json<'t, 'i>(&'t [Node<'i>]);

/// The kind of a JSON value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `null`
    Null,
    /// `true` / `false`
    Bool,
    /// A number that fits `i64` / `u64` / neither.
    Number,
    /// A string.
    String,
    /// An array.
    Array,
    /// An object.
    Object,
}

#[inline]
fn span(n: &Node<'_>) -> usize {
    match n {
        Node::Object { count, .. } | Node::Array { count, .. } => *count + 1,
        _ => 1,
    }
}

impl<'t, 'i> Json<'t, 'i> {
    /// The root value of a tape.
    pub fn root(tape: &'t [Node<'i>]) -> Option<Json<'t, 'i>> {
        let first = tape.first()?;
        let n = span(first);
        tape.get(..n).map(Json)
    }

    /// The head node.
    #[inline]
    pub fn node(&self) -> Node<'i> {
        self.0[0]
    }

    /// The nodes spanned by this value.
    pub fn nodes(&self) -> &'t [Node<'i>] {
        self.0
    }

    /// The kind of value.
    #[inline]
    pub fn kind(&self) -> Kind {
        match self.0[0] {
            Node::String(_) => Kind::String,
            Node::Object { .. } => Kind::Object,
            Node::Array { .. } => Kind::Array,
            Node::Static(StaticNode::Null) => Kind::Null,
            Node::Static(StaticNode::Bool(_)) => Kind::Bool,
            Node::Static(_) => Kind::Number,
        }
    }

    /// The string, if this is one.
    #[inline]
    pub fn as_str(&self) -> Option<&'i str> {
        match self.0[0] {
            Node::String(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is an object.
    #[inline]
    pub fn is_object(&self) -> bool {
        matches!(self.0[0], Node::Object { .. })
    }

    /// Member `key` of an object (the first one, if the key repeats).
    #[inline(always)]
    pub fn get(&self, key: &str) -> Option<Json<'t, 'i>> {
        let Node::Object { len, .. } = self.0[0] else {
            return None;
        };
        let nodes = self.0;
        let mut idx = 1;
        for _ in 0..len {
            let k = nodes.get(idx)?;
            let vstart = idx + 1;
            let vlen = span(nodes.get(vstart)?);
            if let Node::String(s) = k
                && short_eq(s.as_bytes(), key.as_bytes())
            {
                return nodes.get(vstart..vstart + vlen).map(Json);
            }
            idx = vstart + vlen;
        }
        None
    }

    /// Follows a path of member names from this value.
    #[inline]
    pub fn path<S: AsRef<str>>(&self, path: &[S]) -> Option<Json<'t, 'i>> {
        let mut cur = *self;
        for seg in path {
            cur = cur.get(seg.as_ref())?;
        }
        Some(cur)
    }

    /// Number of members (object) or elements (array); 0 otherwise.
    pub fn len(&self) -> usize {
        match self.0[0] {
            Node::Object { len, .. } | Node::Array { len, .. } => len,
            _ => 0,
        }
    }

    /// Whether [`Json::len`] is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The members of an object, in document order (empty for anything else).
    pub fn entries(&self) -> Entries<'t, 'i> {
        match self.0[0] {
            Node::Object { len, .. } => Entries {
                nodes: &self.0[1..],
                left: len,
            },
            _ => Entries {
                nodes: &[],
                left: 0,
            },
        }
    }

    /// The elements of an array, in order (empty for anything else).
    pub fn elements(&self) -> Elements<'t, 'i> {
        match self.0[0] {
            Node::Array { len, .. } => Elements {
                nodes: &self.0[1..],
                left: len,
            },
            _ => Elements {
                nodes: &[],
                left: 0,
            },
        }
    }

    /// Element `i` of an array.
    pub fn index(&self, i: usize) -> Option<Json<'t, 'i>> {
        self.elements().nth(i)
    }

    /// Depth of nesting (a scalar is 0, `[]` is 1, `[[1]]` is 2).
    pub fn depth(&self) -> usize {
        let mut stack: Vec<usize> = Vec::new();
        let mut max = 0;
        for (i, n) in self.0.iter().enumerate() {
            while stack.last().is_some_and(|&end| i >= end) {
                stack.pop();
            }
            if let Node::Object { count, .. } | Node::Array { count, .. } = n {
                stack.push(i + 1 + count);
                max = max.max(stack.len());
            }
        }
        max
    }
}

/// Iterator over the members of an object.
pub struct Entries<'t, 'i> {
    nodes: &'t [Node<'i>],
    left: usize,
}

impl<'t, 'i> Iterator for Entries<'t, 'i> {
    type Item = (&'i str, Json<'t, 'i>);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let Node::String(k) = *self.nodes.first()? else {
            return None;
        };
        let n = span(self.nodes.get(1)?);
        let v = Json(self.nodes.get(1..1 + n)?);
        self.nodes = &self.nodes[1 + n..];
        Some((k, v))
    }
}

/// Iterator over the elements of an array.
pub struct Elements<'t, 'i> {
    nodes: &'t [Node<'i>],
    left: usize,
}

impl<'t, 'i> Iterator for Elements<'t, 'i> {
    type Item = Json<'t, 'i>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let n = span(self.nodes.first()?);
        let v = Json(self.nodes.get(..n)?);
        self.nodes = &self.nodes[n..];
        Some(v)
    }
}

/// Byte sink for the writers: implemented for `Vec<u8>` and `bytes::BytesMut`.
pub trait Out {
    /// Appends bytes.
    fn put(&mut self, b: &[u8]);
    /// Appends one byte.
    fn put_byte(&mut self, b: u8);
    /// Bytes written so far.
    fn position(&self) -> usize;
    /// Forgets everything after `pos`.
    fn truncate_to(&mut self, pos: usize);
}

impl Out for Vec<u8> {
    #[inline]
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b)
    }
    #[inline]
    fn put_byte(&mut self, b: u8) {
        self.push(b)
    }
    #[inline]
    fn position(&self) -> usize {
        self.len()
    }
    #[inline]
    fn truncate_to(&mut self, pos: usize) {
        self.truncate(pos)
    }
}

impl Out for bytes::BytesMut {
    #[inline]
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b)
    }
    #[inline]
    fn put_byte(&mut self, b: u8) {
        self.extend_from_slice(&[b])
    }
    #[inline]
    fn position(&self) -> usize {
        self.len()
    }
    #[inline]
    fn truncate_to(&mut self, pos: usize) {
        self.truncate(pos)
    }
}

// 0 = copy as is; b'u' = \u00XX; anything else = the letter after the backslash.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Writes `s` as a JSON string literal (quotes included).
#[inline]
pub fn write_str<O: Out>(out: &mut O, s: &str) {
    out.put_byte(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let e = ESCAPE[b as usize];
        if e == 0 {
            continue;
        }
        if start < i {
            out.put(&bytes[start..i]);
        }
        if e == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.put(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]);
        } else {
            out.put(&[b'\\', e]);
        }
        start = i + 1;
    }
    if start < bytes.len() {
        out.put(&bytes[start..]);
    }
    out.put_byte(b'"');
}

/// Writes a static node (null, bool or number).
#[inline]
pub fn write_static<O: Out>(out: &mut O, s: StaticNode) {
    match s {
        StaticNode::Null => out.put(b"null"),
        StaticNode::Bool(true) => out.put(b"true"),
        StaticNode::Bool(false) => out.put(b"false"),
        StaticNode::I64(i) => out.put(itoa::Buffer::new().format(i).as_bytes()),
        StaticNode::U64(u) => out.put(itoa::Buffer::new().format(u).as_bytes()),
        StaticNode::F64(f) => {
            if f.is_finite() {
                out.put(ryu::Buffer::new().format_finite(f).as_bytes())
            } else {
                out.put(b"null")
            }
        }
        #[allow(unreachable_patterns)]
        _ => out.put(b"null"),
    }
}

/// Writes a value as compact JSON.
pub fn write_value<O: Out>(out: &mut O, v: Json<'_, '_>) {
    write_nodes(out, v.0);
}

/// Whether the key at `key_idx` already appeared in the object whose head is
/// at `obj`. Allocation-free (objects are small; this is a short scan).
fn repeated_key(nodes: &[Node<'_>], obj: usize, key_idx: usize) -> bool {
    let Node::String(key) = nodes[key_idx] else {
        return false;
    };
    let mut i = obj + 1;
    while i < key_idx {
        if let Node::String(k) = nodes[i]
            && k == key
        {
            return true;
        }
        i += 1 + span(&nodes[i + 1]);
    }
    false
}

fn write_nodes<O: Out>(out: &mut O, nodes: &[Node<'_>]) {
    // Iterative, with a stack of open containers. A key repeated within an
    // object is written once, with its first value: the value lookups (and so
    // filters) see, whatever a reader of the output would pick.
    struct Frame {
        left: usize,
        object: bool,
        first: bool,
        start: usize,
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < nodes.len() {
        // Separators and closing of finished containers.
        if let Some(top) = stack.last_mut() {
            if top.left == 0 {
                out.put_byte(if top.object { b'}' } else { b']' });
                stack.pop();
                continue;
            }
            top.left -= 1;
            if top.object && repeated_key(nodes, top.start, i) {
                i += 1 + span(&nodes[i + 1]);
                continue;
            }
            if !top.first {
                out.put_byte(b',');
            }
            top.first = false;
            if top.object {
                if let Node::String(k) = nodes[i] {
                    write_str(out, k);
                }
                out.put_byte(b':');
                i += 1;
            }
        }
        match nodes[i] {
            Node::String(s) => write_str(out, s),
            Node::Static(s) => write_static(out, s),
            Node::Object { len, .. } => {
                out.put_byte(b'{');
                stack.push(Frame {
                    left: len,
                    object: true,
                    first: true,
                    start: i,
                });
            }
            Node::Array { len, .. } => {
                out.put_byte(b'[');
                stack.push(Frame {
                    left: len,
                    object: false,
                    first: true,
                    start: i,
                });
            }
        }
        i += 1;
    }
    while let Some(top) = stack.pop() {
        out.put_byte(if top.object { b'}' } else { b']' });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(s: &str) -> String {
        let mut b = s.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut b).unwrap();
        let root = Json::root(&tape.0).unwrap();
        let mut out = Vec::new();
        write_value(&mut out, root);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_compact_json() {
        assert_eq!(
            roundtrip(r#" { "a" : [1, 2 , {"b":null}], "c": {} , "d":[] } "#),
            r#"{"a":[1,2,{"b":null}],"c":{},"d":[]}"#
        );
        assert_eq!(roundtrip(r#"[[[]],[{}],"x"]"#), r#"[[[]],[{}],"x"]"#);
        assert_eq!(
            roundtrip(r#""tab\t quote\" nl\n \u0001 é""#),
            "\"tab\\t quote\\\" nl\\n \\u0001 é\""
        );
        assert_eq!(roundtrip("1.5"), "1.5");
        assert_eq!(roundtrip("-7"), "-7");
        assert_eq!(roundtrip("18446744073709551615"), "18446744073709551615");
        assert_eq!(
            roundtrip(r#"{"a":1,"b":{"x":[1],"x":2},"a":{"c":3},"d":4}"#),
            r#"{"a":1,"b":{"x":[1]},"d":4}"#
        );
    }

    #[test]
    fn navigates_objects_and_arrays() {
        let mut b = br#"{"a":{"b":[10,{"c":"x"}],"b2":true},"z":1,"a":"dup"}"#.to_vec();
        let tape = simd_json::to_tape(&mut b).unwrap();
        let root = Json::root(&tape.0).unwrap();
        assert_eq!(root.len(), 3);
        let c = root
            .path(&["a", "b"])
            .unwrap()
            .index(1)
            .unwrap()
            .get("c")
            .unwrap();
        assert_eq!(c.as_str(), Some("x"));
        assert_eq!(
            root.get("a").unwrap().kind(),
            Kind::Object,
            "first duplicate wins"
        );
        assert!(root.get("nope").is_none());
        assert_eq!(
            root.entries().map(|(k, _)| k).collect::<Vec<_>>(),
            ["a", "z", "a"]
        );
        assert_eq!(root.depth(), 4);
    }
}
