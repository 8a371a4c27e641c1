//! Reading an event on demand: its envelope, and of its `object` only the
//! fields the routes for its `(account, type)` read, found through the
//! structural index ([`super::scan`]) without building a tape of the event.
//!
//! Two ways to find them, with the same answers:
//!
//! - **Search** (compact events without escapes, the common case): each key
//!   is found from the index's bitmaps (a string of the name's length that
//!   ends where a key ends, opened at the parent's depth plus one, then
//!   compared) inside its parent's span; the bytes between are not looked
//!   at. `object`'s span runs to the event's end rather than to its close,
//!   which would take a scan of the whole object to find: a key found is
//!   taken if `object` is still open there, a scan of the bytes before it.
//!   The members that the routes' first `&&` operands read are searched
//!   first; if each such operand is false on them (as it mostly is for a
//!   filter that rejects most events), the event is settled there and the
//!   other members are never looked for.
//! - **Walk** (spaces between tokens, escapes, or an object of many
//!   members): the members of each object on the way are visited in order,
//!   skipping the values not read.
//!
//! The fields read become a small tape of their own: an object holding only
//! those paths, with every value found on the way (a scalar where a path
//! expected an object stays that scalar), so that a filter evaluated on it
//! sees exactly what it would see on the whole event. Values are turned
//! into tape nodes here only when that is unambiguous: strings without
//! escapes, integers of at most 18 digits, `true`, `false`, `null`. For
//! anything else (an escape, a float, a list or object read whole, an
//! object of 64 members or more, which the evaluator's step budget counts,
//! a key with an escape, more than 128 brackets, bytes that are not the
//! JSON the reader expects) the reader answers [`Read::Full`] and the event
//! is parsed in full, which is always correct.
//!
//! The reader validates only what it reads: `account_id`, `event_type`,
//! `object` and the values it turns into nodes (the walk also the other
//! envelope fields and repeated envelope keys), and the size and nesting
//! bounds. An event it settles without the full parse is counted as
//! unvalidated (`docs/delivery.md`): never delivered, since a match goes to
//! the full parse.

use super::scan::Index;
use super::{MAX_DEPTH, MAX_EVENT_BYTES};
use crate::events::{EventTypeId, parse_rfc3339_ms};
use crate::json::Json;
use crate::short_eq::short_eq;
use simd_json::{Node, StaticNode, Tape};

/// The fields routes read of `object`, as a tree of member names.
#[derive(Clone, Debug, Default)]
pub struct FieldTree {
    children: Vec<FieldNode>,
    /// Whether every name in the tree is short enough for
    /// [`Index::find_key`] (else the event is walked).
    searchable: bool,
    /// How many of `children` (the first) the routes' first `&&` operands
    /// read: the search reads those, lets the routes try to settle the
    /// event on them, and reads the rest only if they do not.
    first: usize,
}

#[derive(Clone, Debug)]
struct FieldNode {
    name: Box<str>,
    /// The whole value is read.
    whole: bool,
    below: FieldTree,
}

/// The longest name [`Index::find_key`] finds.
const MAX_SEARCHED_NAME: usize = 62;

impl FieldTree {
    /// The tree of dotted paths (`conn.server_name`), none below another.
    pub(crate) fn new<S: AsRef<str>>(paths: &[S]) -> FieldTree {
        let mut tree = FieldTree::default();
        for p in paths {
            let mut node = &mut tree;
            let mut segs = p.as_ref().split('.').peekable();
            while let Some(seg) = segs.next() {
                let i = match node.children.iter().position(|c| *c.name == *seg) {
                    Some(i) => i,
                    None => {
                        node.children.push(FieldNode {
                            name: seg.into(),
                            whole: false,
                            below: FieldTree::default(),
                        });
                        node.children.len() - 1
                    }
                };
                let child = &mut node.children[i];
                if segs.peek().is_none() {
                    child.whole = true;
                }
                node = &mut child.below;
            }
        }
        tree.mark_searchable();
        tree.first = tree.children.len();
        tree
    }

    /// The tree with the members named in `first` moved ahead of the
    /// others (in their order), to be read first.
    pub(crate) fn read_first(mut self, first: &[&str]) -> FieldTree {
        let is_first = |c: &FieldNode| first.iter().any(|f| **f == *c.name);
        self.children.sort_by_key(|c| !is_first(c)); // stable: order kept
        self.first = self.children.iter().filter(|c| is_first(c)).count();
        self
    }

    fn mark_searchable(&mut self) -> bool {
        let mut all = true;
        for c in &mut self.children {
            all &= c.name.len() <= MAX_SEARCHED_NAME && c.below.mark_searchable();
        }
        self.searchable = all;
        all
    }
}

/// What the routes for an event's `(account, type)` read of it, as the
/// reader's caller answers once it knows them.
pub(crate) enum Wants<'s> {
    /// No route wants such events.
    Nothing,
    /// A route reads the event whole.
    Whole,
    /// The routes read these fields of `object`.
    Fields(&'s FieldTree),
}

/// What the reader made of an event.
pub(crate) enum Read<R> {
    /// It needs the full parse.
    Full,
    /// No route wants it.
    Unrouted,
    /// What the caller's evaluation of the fields returned.
    Fields(R),
}

/// Why the reader stopped: the event needs the full parse.
struct Full;

/// The most members a walked object may have: from this many on, a
/// lookup in it costs the filter steps (the evaluator's `FREE_STEPS`, held
/// equal by a test in `settle`), which only the whole object counts right.
pub(crate) const MAX_MEMBERS: usize = 64;

/// The most children of one tree node the walk tracks.
const MAX_CHILDREN: usize = 32;

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

#[inline(always)]
fn ws(raw: &[u8], mut i: usize) -> usize {
    while i < raw.len() && matches!(raw[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

impl LazyReader {
    /// Reads `raw`: its envelope, then, once `lookup` has said what the
    /// routes for its account and type read, those fields, on which `eval`
    /// runs. `eval(object, false)` may run first, on the members the
    /// routes' first `&&` operands read ([`FieldTree::read_first`]): an
    /// answer settles the event, `None` has the rest read and
    /// `eval(object, true)` run (whose `None` sends the event to the full
    /// parse).
    #[inline]
    pub(crate) fn read<'s, R>(
        &mut self,
        raw: &[u8],
        lookup: impl FnMut(&str, EventTypeId) -> Wants<'s>,
        eval: impl FnMut(Json<'_, '_>, bool) -> Option<R>,
    ) -> Read<R> {
        #[cfg(target_arch = "x86_64")]
        if self.index.avx2() {
            // SAFETY: the index uses AVX2 only where the CPU has it, and
            // every such CPU has POPCNT, BMI1 and BMI2.
            return unsafe { self.read_avx2(raw, lookup, eval) };
        }
        self.read_in(raw, lookup, eval)
    }

    /// [`LazyReader::read`] compiled for AVX2 CPUs (bit counts and scans
    /// in one instruction each).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt,bmi1,bmi2")]
    fn read_avx2<'s, R>(
        &mut self,
        raw: &[u8],
        lookup: impl FnMut(&str, EventTypeId) -> Wants<'s>,
        eval: impl FnMut(Json<'_, '_>, bool) -> Option<R>,
    ) -> Read<R> {
        self.read_in(raw, lookup, eval)
    }

    #[inline(always)]
    fn read_in<'s, R>(
        &mut self,
        raw: &[u8],
        lookup: impl FnMut(&str, EventTypeId) -> Wants<'s>,
        mut eval: impl FnMut(Json<'_, '_>, bool) -> Option<R>,
    ) -> Read<R> {
        if raw.len() > MAX_EVENT_BYTES {
            return Read::Full;
        }
        // Indexed whole at once: one tight loop is cheaper than block by
        // block, and a settled event needs every block for the nesting
        // bound anyway.
        self.index.build(raw);
        if self.index.opens_total() > MAX_DEPTH {
            return Read::Full; // maybe too deep: the full parse decides
        }
        let mut tape: Tape<'_> = std::mem::replace(&mut self.tape, Tape(Vec::new()));
        tape.0.clear();
        let found = if self.index.compact() && !self.index.saw_backslash() {
            search(&self.index, raw, lookup, &mut tape.0)
        } else {
            walk(&self.index, raw, lookup, &mut tape.0)
        };
        let mut run = |tape: &[Node<'_>], all| Json::root(tape).and_then(|o| eval(o, all));
        let out = match found {
            Ok(Found::All) => run(&tape.0, true).map_or(Read::Full, Read::Fields),
            Ok(Found::First(rest)) => match run(&tape.0, false) {
                Some(r) => Read::Fields(r),
                None => match rest.read(&self.index, raw, &mut tape.0) {
                    Ok(()) => run(&tape.0, true).map_or(Read::Full, Read::Fields),
                    Err(Full) => Read::Full,
                },
            },
            Ok(Found::Unrouted) => Read::Unrouted,
            Err(Full) => Read::Full,
        };
        self.tape = tape.reset();
        out
    }
}

/// What the reader found of an event's fields.
enum Found<'s> {
    /// No route wants it.
    Unrouted,
    /// The fields the routes read are on the tape.
    All,
    /// The members the routes' first `&&` operands read are on the tape;
    /// these are still to be read.
    First(Rest<'s>),
}

/// The members of `object` still to be read after the first.
struct Rest<'s> {
    span: Span,
    children: &'s [FieldNode],
}

impl<'s> Rest<'s> {
    /// Adds the members to the object at the tape's head.
    #[inline(always)]
    fn read<'i>(self, ix: &Index, raw: &'i [u8], tape: &mut Vec<Node<'i>>) -> Result<(), Full>
    where
        's: 'i,
    {
        let mut span = self.span;
        add_members(ix, raw, &mut span, self.children, 0, tape)
    }
}

/// The search: a compact event without escapes.
#[inline(always)]
fn search<'i, 's: 'i>(
    ix: &Index,
    raw: &'i [u8],
    mut lookup: impl FnMut(&str, EventTypeId) -> Wants<'s>,
    tape: &mut Vec<Node<'i>>,
) -> Result<Found<'s>, Full> {
    // An object whose brackets balance by its last byte. (Not that its
    // first bracket closes only there: bytes after a first object would be
    // read as part of it. Such an event is unvalidated, never delivered.)
    if raw.first() != Some(&b'{') || raw.last() != Some(&b'}') || ix.depth_at_end() != 0 {
        return Err(Full);
    }
    let end = raw.len() - 1;
    // The two ten-letter keys in one pass.
    let [account, ty] = ix.find_keys(raw, [b"account_id", b"event_type"], 1, end, 1);
    let (account, ty) = (account.ok_or(Full)?, ty.ok_or(Full)?);
    let open = ix.find_key(raw, b"object", 1, end, 1).ok_or(Full)?;
    if raw.get(open) != Some(&b'{') {
        return Err(Full);
    }
    match lookup(string(ix, raw, account)?, event_type(ix, raw, ty)?) {
        Wants::Nothing => Ok(Found::Unrouted),
        Wants::Whole => Err(Full),
        Wants::Fields(fields) if !fields.searchable => {
            object(ix, raw, open, fields, tape).map(|_| Found::All)
        }
        Wants::Fields(fields) => {
            // Searched up to the event's end (`Span`), unless there may be
            // 64 members or more (each has a key: 128 quotes or more).
            let mut span = Span::unclosed(open, end);
            if ix.quotes_between(open, end) >= 2 * MAX_MEMBERS {
                let close = ix.matching_close(open).ok_or(Full)?;
                if ix.quotes_between(open, close) >= 2 * MAX_MEMBERS {
                    return object(ix, raw, open, fields, tape).map(|_| Found::All);
                }
                span = Span::closed(open, close);
            }
            let (first, rest) = fields.children.split_at(fields.first);
            tape.push(Node::Object { len: 0, count: 0 });
            add_members(ix, raw, &mut span, first, 0, tape)?;
            if rest.is_empty() {
                return Ok(Found::All);
            }
            Ok(Found::First(Rest {
                span,
                children: rest,
            }))
        }
    }
}

/// Appends to `tape` the object whose brackets are at `open` and `close`,
/// reduced to what `fields` reads, found by search (or, for an object that
/// may have too many members to tell, by the walk).
fn search_object<'i, 's: 'i>(
    ix: &Index,
    raw: &'i [u8],
    open: usize,
    close: usize,
    fields: &'s FieldTree,
    tape: &mut Vec<Node<'i>>,
) -> Result<(), Full> {
    #[cfg(target_arch = "x86_64")]
    if ix.avx2() {
        // SAFETY: as in `LazyReader::read`.
        return unsafe { search_object_avx2(ix, raw, open, close, fields, tape) };
    }
    search_object_in(ix, raw, open, close, fields, tape)
}

/// [`search_object`] compiled for AVX2 CPUs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt,bmi1,bmi2")]
fn search_object_avx2<'i, 's: 'i>(
    ix: &Index,
    raw: &'i [u8],
    open: usize,
    close: usize,
    fields: &'s FieldTree,
    tape: &mut Vec<Node<'i>>,
) -> Result<(), Full> {
    search_object_in(ix, raw, open, close, fields, tape)
}

#[inline(always)]
fn search_object_in<'i, 's: 'i>(
    ix: &Index,
    raw: &'i [u8],
    open: usize,
    close: usize,
    fields: &'s FieldTree,
    tape: &mut Vec<Node<'i>>,
) -> Result<(), Full> {
    // Each member has a key: under 128 quotes, under 64 members.
    if ix.quotes_between(open, close) >= 2 * MAX_MEMBERS {
        return object(ix, raw, open, fields, tape).map(|_| ());
    }
    let head = tape.len();
    tape.push(Node::Object { len: 0, count: 0 });
    add_members(
        ix,
        raw,
        &mut Span::closed(open, close),
        &fields.children,
        head,
        tape,
    )
}

/// The bytes an object's members are searched in: from its opening
/// bracket to its closing one, or, where that is not known yet, to a
/// bound past it (then a key found is taken only if the object is still
/// open there, which costs a scan of the bytes before the key instead of
/// the whole object).
#[derive(Clone, Copy)]
struct Span {
    open: usize,
    /// The closing bracket, or the bound past it.
    to: usize,
    /// Whether `to` is the closing bracket.
    closed: bool,
}

impl Span {
    fn closed(open: usize, close: usize) -> Span {
        Span {
            open,
            to: close,
            closed: true,
        }
    }

    fn unclosed(open: usize, bound: usize) -> Span {
        Span {
            open,
            to: bound,
            closed: false,
        }
    }

    /// Whether a key at depth one below the object's bracket whose value
    /// starts at `v` is one of its members (else the object closed before
    /// it, and the span ends there now).
    #[inline(always)]
    fn holds(&mut self, ix: &Index, v: usize) -> bool {
        if self.closed {
            return true;
        }
        match ix.close_before(self.open, v) {
            None => true,
            Some(close) => {
                *self = Span::closed(self.open, close);
                false
            }
        }
    }
}

/// Adds to the object at `tape[head]` (the object `span` holds) the
/// members `children` read, found by search.
#[inline(always)]
fn add_members<'i, 's: 'i>(
    ix: &Index,
    raw: &'i [u8],
    span: &mut Span,
    children: &'s [FieldNode],
    head: usize,
    tape: &mut Vec<Node<'i>>,
) -> Result<(), Full> {
    let depth = ix.depth_at(span.open) + 1;
    let Node::Object { mut len, .. } = tape[head] else {
        return Err(Full);
    };
    for child in children {
        let name = child.name.as_bytes();
        let Some(v) = ix.find_key(raw, name, span.open + 1, span.to, depth) else {
            continue;
        };
        if !span.holds(ix, v) {
            continue;
        }
        len += 1;
        tape.push(Node::String(&child.name));
        if !child.whole && raw.get(v) == Some(&b'{') {
            // (Its close is looked for here: for a member object, a span
            // to its parent's bound measured slower.)
            let close = ix.matching_close(v).ok_or(Full)?;
            if raw[close] != b'}' {
                return Err(Full);
            }
            search_object(ix, raw, v, close, &child.below, tape)?;
        } else {
            let end = skip_value(ix, raw, v)?;
            tape.push(scalar(ix, raw, v, end)?);
        }
    }
    tape[head] = Node::Object {
        len,
        count: tape.len() - head - 1,
    };
    Ok(())
}

/// The walk: the envelope, and `object` as far as the routes read it (onto
/// `tape`).
#[inline(always)]
fn walk<'i, 's: 'i>(
    ix: &Index,
    raw: &'i [u8],
    mut lookup: impl FnMut(&str, EventTypeId) -> Wants<'s>,
    tape: &mut Vec<Node<'i>>,
) -> Result<Found<'s>, Full> {
    let compact = ix.compact();
    let root = if compact { 0 } else { ws(raw, 0) };
    if raw.get(root) != Some(&b'{') {
        return Err(Full);
    }
    // event_id, event_type, event_timestamp, account_id, principal, object
    let mut at = [usize::MAX; 6];
    let mut wants = None;
    let end = entries(ix, raw, root, compact, |key, v| {
        let Some(slot) = envelope_slot(key) else {
            return Ok(None);
        };
        if at[slot] != usize::MAX {
            return Err(Full); // the full parse rejects a repeated envelope key
        }
        at[slot] = v;
        if slot == 5 && at[1] != usize::MAX && at[3] != usize::MAX {
            // `object` in the same pass, its routes known.
            let w = lookup(string(ix, raw, at[3])?, event_type(ix, raw, at[1])?);
            let end = match w {
                Wants::Whole => return Err(Full),
                Wants::Nothing => None,
                Wants::Fields(fields) if raw.get(v) == Some(&b'{') => {
                    Some(object(ix, raw, v, fields, tape)?)
                }
                Wants::Fields(_) => return Err(Full),
            };
            wants = Some(w);
            return Ok(end);
        }
        Ok(None)
    })?;
    if ws(raw, end) != raw.len() {
        return Err(Full);
    }
    if at[..4].contains(&usize::MAX) || at[5] == usize::MAX || raw[at[5]] != b'{' {
        return Err(Full);
    }
    // `principal`, if there, is an object or null.
    if at[4] != usize::MAX && raw[at[4]] != b'{' {
        let end = skip_value(ix, raw, at[4])?;
        if &raw[at[4]..end] != b"null" {
            return Err(Full);
        }
    }
    string(ix, raw, at[0])?;
    parse_rfc3339_ms(string(ix, raw, at[2])?).ok_or(Full)?;
    let wants = match wants {
        Some(w) => w,
        None => {
            // `object` came before the account or the type: a second pass.
            let w = lookup(string(ix, raw, at[3])?, event_type(ix, raw, at[1])?);
            if let Wants::Fields(fields) = w {
                object(ix, raw, at[5], fields, tape)?;
            }
            w
        }
    };
    match wants {
        Wants::Nothing => Ok(Found::Unrouted),
        Wants::Whole => Err(Full),
        Wants::Fields(_) => Ok(Found::All),
    }
}

/// Walks the members of the object whose `{` is at `open`, calling
/// `visit(key, value_start)` for each, which returns where the value ends
/// if it read it (else it is skipped); returns the position after the `}`.
#[inline(always)]
fn entries(
    ix: &Index,
    raw: &[u8],
    open: usize,
    compact: bool,
    mut visit: impl FnMut(&[u8], usize) -> Result<Option<usize>, Full>,
) -> Result<usize, Full> {
    let sp = |i: usize| if compact { i } else { ws(raw, i) };
    let mut i = sp(open + 1);
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
        i = sp(kend + 1);
        if raw.get(i) != Some(&b':') {
            return Err(Full);
        }
        let v = sp(i + 1);
        let vend = match visit(key, v)? {
            Some(end) => end,
            None => skip_value(ix, raw, v)?,
        };
        i = sp(vend);
        match raw.get(i) {
            Some(b',') => i = sp(i + 1),
            Some(b'}') => return Ok(i + 1),
            _ => return Err(Full),
        }
    }
}

/// Appends to `tape` the object at `open` reduced to what `fields` reads,
/// walking its members; returns the position after its `}`.
fn object<'i, 's: 'i>(
    ix: &Index,
    raw: &'i [u8],
    open: usize,
    fields: &'s FieldTree,
    tape: &mut Vec<Node<'i>>,
) -> Result<usize, Full> {
    #[cfg(target_arch = "x86_64")]
    if ix.avx2() {
        // SAFETY: as in `LazyReader::read`.
        return unsafe { object_avx2(ix, raw, open, fields, tape) };
    }
    object_in(ix, raw, open, fields, tape)
}

/// [`object`] compiled for AVX2 CPUs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt,bmi1,bmi2")]
fn object_avx2<'i, 's: 'i>(
    ix: &Index,
    raw: &'i [u8],
    open: usize,
    fields: &'s FieldTree,
    tape: &mut Vec<Node<'i>>,
) -> Result<usize, Full> {
    object_in(ix, raw, open, fields, tape)
}

#[inline(always)]
fn object_in<'i, 's: 'i>(
    ix: &Index,
    raw: &'i [u8],
    open: usize,
    fields: &'s FieldTree,
    tape: &mut Vec<Node<'i>>,
) -> Result<usize, Full> {
    let children = &fields.children;
    if children.len() > MAX_CHILDREN {
        return Err(Full);
    }
    let head = tape.len();
    tape.push(Node::Object { len: 0, count: 0 });
    let (mut found, mut len, mut members) = (0u32, 0usize, 0usize);
    let end = entries(ix, raw, open, ix.compact(), |key, v| {
        members += 1;
        if members >= MAX_MEMBERS {
            return Err(Full);
        }
        // The first of repeated keys is the one lookups see.
        let Some(c) = children
            .iter()
            .position(|n| same_key(n.name.as_bytes(), key))
            .filter(|&c| found & (1 << c) == 0)
        else {
            return Ok(None);
        };
        found |= 1 << c;
        len += 1;
        let child = &children[c];
        tape.push(Node::String(&child.name));
        if !child.whole && raw.get(v) == Some(&b'{') {
            object(ix, raw, v, &child.below, tape).map(Some)
        } else {
            let end = skip_value(ix, raw, v)?;
            tape.push(scalar(ix, raw, v, end)?);
            Ok(Some(end))
        }
    })?;
    tape[head] = Node::Object {
        len,
        count: tape.len() - head - 1,
    };
    Ok(end)
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
    a.len() == b.len() && a.first() == b.first() && short_eq(a, b)
}

/// The position just after the value starting at `v`.
#[inline(always)]
fn skip_value(ix: &Index, raw: &[u8], v: usize) -> Result<usize, Full> {
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
#[inline(always)]
fn string<'i>(ix: &Index, raw: &'i [u8], v: usize) -> Result<&'i str, Full> {
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

#[inline(always)]
fn event_type(ix: &Index, raw: &[u8], v: usize) -> Result<EventTypeId, Full> {
    EventTypeId::from_name(string(ix, raw, v)?).ok_or(Full)
}

/// The value at `v` as a tape node, when it is a scalar the reader reads
/// exactly as the full parse does.
#[inline(always)]
fn scalar<'i>(ix: &Index, raw: &'i [u8], v: usize, end: usize) -> Result<Node<'i>, Full> {
    if raw[v] == b'"' {
        return string(ix, raw, v).map(Node::String);
    }
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

    fn trie(paths: &[&str]) -> FieldTree {
        let mut paths = paths.to_vec();
        paths.sort_unstable();
        FieldTree::new(&paths)
    }

    /// The reduced object as JSON, or None when the reader gives up.
    fn read(raw: &str, paths: &[&str]) -> Option<String> {
        let t = trie(paths);
        let mut r = LazyReader::default();
        let got = r.read(
            raw.as_bytes(),
            |_, _| Wants::Fields(&t),
            |o, _| {
                let mut out = Vec::new();
                crate::json::write_value(&mut out, o);
                Some(String::from_utf8(out).unwrap())
            },
        );
        match got {
            Read::Fields(s) => Some(s),
            _ => None,
        }
    }

    fn needs_full_parse(raw: &str) -> bool {
        let mut r = LazyReader::default();
        matches!(
            r.read(raw.as_bytes(), |_, _| Wants::Nothing, |_, _| Some(())),
            Read::Full
        )
    }

    #[test]
    fn the_first_members_are_read_first_and_the_rest_only_when_asked_for() {
        let t = trie(&["conn.server_name", "http.response.status_code"]).read_first(&["http"]);
        let mut r = LazyReader::default();
        for settle_first in [true, false] {
            let mut seen = Vec::new();
            let got = r.read(
                EV.as_bytes(),
                |_, _| Wants::Fields(&t),
                |o, all| {
                    let status = o.path(&["http", "response", "status_code"]);
                    seen.push((all, o.get("conn").is_some(), status.is_some()));
                    (all || settle_first).then_some(())
                },
            );
            assert!(matches!(got, Read::Fields(())));
            if settle_first {
                assert_eq!(seen, [(false, false, true)]);
            } else {
                assert_eq!(seen, [(false, false, true), (true, true, true)]);
            }
        }
        // A key of another envelope member (after `object`, searched
        // before `object`'s close is known) is not taken as `object`'s.
        let ev = EV.replace(r#""conn":{"#, r#""cnn":{"#).replace(
            r#""tls":null}}"#,
            r#""tls":null},"meta":{"conn":{"server_name":"x"}}}"#,
        );
        let t = trie(&["conn.server_name"]);
        let got = r.read(
            ev.as_bytes(),
            |_, _| Wants::Fields(&t),
            |o, _| Some(o.get("conn").is_some()),
        );
        assert!(matches!(got, Read::Fields(false)));
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
        // The same with `object` first (a second pass) and with spaces.
        let moved = EV.replace(r#""account_id":"ac_1","#, "").replace(
            r#""event_id":"ev_1","#,
            r#""event_id" : "ev_1" , "account_id":"ac_1" ,"#,
        );
        let moved = format!(
            "{{{},{}",
            &moved[moved.find("\"object\"").unwrap()..moved.len() - 1],
            &moved[1..moved.find("\"object\"").unwrap() - 1]
        ) + "}";
        assert!(moved.starts_with("{\"object\""), "{moved}");
        assert_eq!(
            read(&moved, &["conn.server_name", "http.response.status_code"]),
            read(EV, &["conn.server_name", "http.response.status_code"])
        );
    }

    #[test]
    fn the_envelope_is_read_like_the_full_parse_reads_it() {
        let mut r = LazyReader::default();
        let mut seen = None;
        let got = r.read(
            EV.as_bytes(),
            |a, t| {
                seen = Some((a.to_string(), t.name()));
                Wants::Nothing
            },
            |_, _| Some(()),
        );
        assert!(matches!(got, Read::Unrouted));
        assert_eq!(seen, Some(("ac_1".to_string(), "http_request_complete.v0")));
        // Envelope keys in any order, with spaces.
        let shuffled = r#" { "object" : {"a":1} , "account_id":"ac_2", "event_timestamp":"2022-02-23T23:44:16Z","event_type":"api_key_created.v0","event_id":"e","principal":null } "#;
        let got = r.read(
            shuffled.as_bytes(),
            |a, _| {
                seen = Some((a.to_string(), ""));
                Wants::Nothing
            },
            |_, _| Some(()),
        );
        assert!(matches!(got, Read::Unrouted));
        assert_eq!(seen, Some(("ac_2".to_string(), "")));
        // Routes that read the event whole: the full parse.
        let got = r.read(EV.as_bytes(), |_, _| Wants::Whole, |_, _| Some(()));
        assert!(matches!(got, Read::Full));
    }

    #[test]
    fn anything_unusual_goes_to_the_full_parse() {
        let deep = format!(
            "{},\"deep\":{}{}}}}}",
            &EV[..EV.len() - 2],
            "[".repeat(130),
            "]".repeat(130)
        );
        let cases = [
            EV.replace("\"ev_1\"", "\"ev_\\u0031\""), // an escape in the envelope
            EV.replace("\"account_id\":\"ac_1\",", ""), // missing
            EV.replace("http_request_complete.v0", "nope.v0"), // unknown type
            format!("{EV}x"),                         // trailing bytes
            EV.replace("\"object\":{", "\"object\":["), // object not an object
            deep,
        ];
        // What only the walk checks (the search does not look at the other
        // envelope fields: such an event, settled, is unvalidated).
        for c in [
            EV.replace(
                "\"account_id\":\"ac_1\",",
                "\"account_id\":\"ac_1\",\"account_id\":\"ac_2\",",
            ), // repeated
            EV.replace("\"event_id\":\"ev_1\",", ""), // missing
            EV.replace("2022-02-23T23:44:16Z", "soon"), // bad timestamp
        ] {
            assert!(!needs_full_parse(&c), "searched: {c}");
            assert!(needs_full_parse(&c.replacen('{', "{ ", 1)), "walked: {c}");
        }
        for c in &cases {
            assert!(needs_full_parse(c), "{c}");
        }
        assert!(!needs_full_parse(EV));
        // A mismatched bracket: the walk sees it in an object it walks; the
        // search does not look at the bytes between the fields it reads
        // (the event, settled, is unvalidated).
        let ev = EV.replace("\"tls\":null", "\"tls\":null,\"x\":[1}");
        assert_eq!(read(&ev.replacen('{', "{ ", 1), &["tls"]), None);
        assert_eq!(read(&ev, &["tls"]).as_deref(), Some(r#"{"tls":null}"#));
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
            let lazy = r.read(
                ev.as_bytes(),
                |_, _| Wants::Fields(&t),
                |o, _| Some(format!("{:?}", o.path(&path).unwrap().node())),
            );
            let Read::Fields(lazy) = lazy else {
                panic!("{v}: not read");
            };
            assert_eq!(lazy, full, "{v}");
        }
    }
}
