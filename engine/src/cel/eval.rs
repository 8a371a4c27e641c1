//! The fast evaluator: a compiled expression tree evaluated directly against
//! the parsed event on the simd-json tape.
//!
//! Nothing is converted into CEL values: field reads borrow the tape, string
//! operations borrow too, and regexes are compiled once. The semantics mirror
//! the `cel` crate exactly (the differential test holds us to it): CEL's
//! error-absorbing `&&`/`||`, heterogeneous numeric comparison, checked
//! integer arithmetic, and "no such key" as an error.

use crate::json::{Json, Kind};
use crate::short_eq::short_eq;
use regex::Regex;
use rustc_hash::FxHashSet;
use simd_json::{Node, StaticNode};
use std::cell::Cell;
use std::cmp::Ordering;

thread_local! {
    /// Steps left in the current evaluation ([`super::cost::FAST_STEP_BUDGET`]).
    static STEPS: Cell<u32> = const { Cell::new(u32::MAX) };
}

/// The error of an evaluation that ran out of steps.
pub const OUT_OF_STEPS: &str = "the filter's step budget per event is exhausted";

/// Starts an evaluation with `steps` to spend on work that grows with the
/// event (members scanned, bytes searched, elements compared).
#[inline]
pub fn start_budget(steps: u32) {
    STEPS.with(|s| s.set(steps));
}

/// Whether the current evaluation ran out of steps.
#[inline]
pub fn out_of_steps() -> bool {
    STEPS.with(|s| s.get() == 0)
}

/// The steps the current evaluation has left (for [`start_budget`] to go
/// on with later).
#[inline]
pub fn steps_left() -> u32 {
    STEPS.with(|s| s.get())
}

/// Work below this many steps is not counted: what every filter does on
/// ordinary events (a lookup in an object of a few dozen members, a search in
/// a short string) stays free of bookkeeping, and is bounded anyway by the
/// size of the expression.
pub(crate) const FREE_STEPS: usize = 64;

/// Spends `n` steps; false when there are not that many left, which leaves
/// none. Work under [`FREE_STEPS`] is free.
#[inline]
fn charge(n: usize) -> bool {
    if n < FREE_STEPS {
        return true;
    }
    STEPS.with(|s| {
        let left = s.get();
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if n < left {
            s.set(left - n);
            true
        } else {
            s.set(0);
            false
        }
    })
}

/// Steps for searching `bytes` bytes of a string.
#[inline]
fn scan(bytes: usize) -> usize {
    bytes / 16 + 1
}

/// A compile-time constant.
#[derive(Clone, Debug, PartialEq)]
pub enum Lit {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer (`1u`).
    Uint(u64),
    /// A double.
    Double(f64),
    /// A string.
    Str(Box<str>),
    /// A list of constants.
    List(Box<[Lit]>),
}

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// Arithmetic operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArithOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
}

/// String predicates with a string argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrOp {
    /// `startsWith`
    StartsWith,
    /// `endsWith`
    EndsWith,
    /// `contains`
    Contains,
    /// Equality that, unlike `==`, fails on non-strings: what
    /// `matches("^literal$")` becomes.
    Equals,
}

/// Type conversions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conv {
    /// `int()`
    Int,
    /// `uint()`
    Uint,
    /// `double()`
    Double,
    /// `string()`
    String,
}

/// A compiled expression.
#[derive(Debug)]
pub enum Ex {
    /// A constant.
    Lit(Lit),
    /// `ev` itself.
    Ev,
    /// `ev.a.b.c`: a member path from `ev`.
    Path(Box<[Box<str>]>),
    /// `x.f` on something other than `ev`.
    Select(Box<Ex>, Box<str>),
    /// `has(x.f)`
    Has(Box<Ex>, Box<str>),
    /// `x[i]`
    Index(Box<[Ex; 2]>),
    /// `!x`
    Not(Box<Ex>),
    /// `-x`
    Neg(Box<Ex>),
    /// `a && b && ...`
    And(Box<[Ex]>),
    /// `a || b || ...`
    Or(Box<[Ex]>),
    /// `c ? a : b`
    Cond(Box<[Ex; 3]>),
    /// A comparison.
    Cmp(CmpOp, Box<[Ex; 2]>),
    /// Arithmetic.
    Arith(ArithOp, Box<[Ex; 2]>),
    /// `x in list_or_map`
    In(Box<[Ex; 2]>),
    /// `x in ["a", "b", ...]` with only string constants: a hash lookup.
    InStrSet(Box<Ex>, Box<FxHashSet<Box<str>>>),
    /// A list built at run time.
    List(Box<[Ex]>),
    /// `size(x)` / `x.size()`
    Size(Box<Ex>),
    /// `x.startsWith(y)` and friends.
    Str(StrOp, Box<[Ex; 2]>),
    /// `x.matches("constant")`: the regex compiled once.
    Matches(Box<Ex>, Box<Regex>),
    /// `int(x)` and friends.
    Conv(Conv, Box<Ex>),
}

/// Why an evaluation failed (for `sluice check` and debugging; a failed
/// filter means "not matched" either way).
pub type EvalError = &'static str;

/// A value during evaluation: borrows the tape and the program wherever it can.
#[derive(Clone, Debug)]
pub enum V<'a> {
    /// `null`
    Null,
    /// A bool.
    Bool(bool),
    /// An int.
    Int(i64),
    /// A uint.
    Uint(u64),
    /// A double.
    Double(f64),
    /// A borrowed string.
    Str(&'a str),
    /// A string made at run time.
    String(String),
    /// An object or array on the event's tape.
    Json(Json<'a, 'a>),
    /// A constant list of the program.
    Lits(&'a [Lit]),
    /// A list made at run time.
    List(Vec<V<'a>>),
    /// An error.
    Err(EvalError),
}

impl<'a> V<'a> {
    /// Converts a tape value: scalars become values, containers stay on the tape.
    #[inline]
    pub fn from_json(j: Json<'a, 'a>) -> V<'a> {
        match j.node() {
            Node::String(s) => V::Str(s),
            Node::Static(StaticNode::Null) => V::Null,
            Node::Static(StaticNode::Bool(b)) => V::Bool(b),
            Node::Static(StaticNode::I64(i)) => V::Int(i),
            // JSON has no unsigned type: an integer is a CEL int when it fits.
            Node::Static(StaticNode::U64(u)) => match i64::try_from(u) {
                Ok(i) => V::Int(i),
                Err(_) => V::Uint(u),
            },
            Node::Static(StaticNode::F64(f)) => V::Double(f),
            #[allow(unreachable_patterns)]
            Node::Static(_) => V::Err("unsupported number"),
            Node::Object { .. } | Node::Array { .. } => V::Json(j),
        }
    }

    #[inline]
    fn from_lit(l: &'a Lit) -> V<'a> {
        match l {
            Lit::Null => V::Null,
            Lit::Bool(b) => V::Bool(*b),
            Lit::Int(i) => V::Int(*i),
            Lit::Uint(u) => V::Uint(*u),
            Lit::Double(d) => V::Double(*d),
            Lit::Str(s) => V::Str(s),
            Lit::List(l) => V::Lits(l),
        }
    }

    #[inline]
    fn as_str(&self) -> Option<&str> {
        match self {
            V::Str(s) => Some(s),
            V::String(s) => Some(s),
            _ => None,
        }
    }

    fn is_list(&self) -> bool {
        match self {
            V::Json(j) => j.kind() == Kind::Array,
            V::Lits(_) | V::List(_) => true,
            _ => false,
        }
    }

    /// Converts to a compile-time constant, if this value can be one.
    pub fn to_lit(&self) -> Option<Lit> {
        Some(match self {
            V::Null => Lit::Null,
            V::Bool(b) => Lit::Bool(*b),
            V::Int(i) => Lit::Int(*i),
            V::Uint(u) => Lit::Uint(*u),
            V::Double(d) => Lit::Double(*d),
            V::Str(s) => Lit::Str((*s).into()),
            V::String(s) => Lit::Str(s.as_str().into()),
            V::Lits(l) => Lit::List((*l).into()),
            V::List(l) => Lit::List(l.iter().map(V::to_lit).collect::<Option<Vec<_>>>()?.into()),
            V::Json(_) | V::Err(_) => return None,
        })
    }
}

/// Iterates the elements of any list-like value.
enum ListIter<'b, 'a> {
    Json(crate::json::Elements<'a, 'a>),
    Lits(std::slice::Iter<'a, Lit>),
    List(std::slice::Iter<'b, V<'a>>),
}

impl<'a> Iterator for ListIter<'_, 'a> {
    type Item = V<'a>;
    fn next(&mut self) -> Option<V<'a>> {
        match self {
            ListIter::Json(e) => e.next().map(V::from_json),
            ListIter::Lits(i) => i.next().map(V::from_lit),
            ListIter::List(i) => i.next().cloned(),
        }
    }
}

fn list_iter<'b, 'a>(v: &'b V<'a>) -> Option<(usize, ListIter<'b, 'a>)> {
    match v {
        V::Json(j) if j.kind() == Kind::Array => Some((j.len(), ListIter::Json(j.elements()))),
        V::Lits(l) => Some((l.len(), ListIter::Lits(l.iter()))),
        V::List(l) => Some((l.len(), ListIter::List(l.iter()))),
        _ => None,
    }
}

/// Members of an object, skipping repeated keys (the first one wins, as in lookups).
fn unique_entries<'a>(j: Json<'a, 'a>) -> impl Iterator<Item = (&'a str, Json<'a, 'a>)> {
    j.entries()
        .enumerate()
        .filter(move |(i, (k, _))| !j.entries().take(*i).any(|(k2, _)| k2 == *k))
        .map(|(_, e)| e)
}

fn map_len(j: Json<'_, '_>) -> usize {
    unique_entries(j).count()
}

/// Numeric comparison across int, uint and double, as the `cel` crate does it.
/// `None` if either side is not a number; `Some(None)` if incomparable (NaN).
#[inline]
fn num_cmp(a: &V<'_>, b: &V<'_>) -> Option<Option<Ordering>> {
    Some(match (a, b) {
        (V::Int(x), V::Int(y)) => Some(x.cmp(y)),
        (V::Int(x), V::Uint(y)) => Some(u64::try_from(*x).map_or(Ordering::Less, |x| x.cmp(y))),
        (V::Int(x), V::Double(y)) => (*x as f64).partial_cmp(y),
        (V::Uint(x), V::Uint(y)) => Some(x.cmp(y)),
        (V::Uint(x), V::Int(y)) => Some(i64::try_from(*x).map_or(Ordering::Greater, |x| x.cmp(y))),
        (V::Uint(x), V::Double(y)) => (*x as f64).partial_cmp(y),
        (V::Double(x), V::Double(y)) => x.partial_cmp(y),
        (V::Double(x), V::Int(y)) => x.partial_cmp(&(*y as f64)),
        (V::Double(x), V::Uint(y)) => x.partial_cmp(&(*y as f64)),
        _ => return None,
    })
}

/// CEL equality of two values that are not errors.
pub fn equals(a: &V<'_>, b: &V<'_>) -> bool {
    if let Some(o) = num_cmp(a, b) {
        return o == Some(Ordering::Equal);
    }
    match (a, b) {
        (V::Null, V::Null) => true,
        (V::Bool(x), V::Bool(y)) => x == y,
        _ => {
            if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
                return x == y;
            }
            if let (Some((la, ia)), Some((lb, ib))) = (list_iter(a), list_iter(b)) {
                return la == lb && ia.zip(ib).all(|(x, y)| equals(&x, &y));
            }
            if let (V::Json(x), V::Json(y)) = (a, b)
                && x.kind() == Kind::Object
                && y.kind() == Kind::Object
            {
                return map_len(*x) == map_len(*y)
                    && unique_entries(*x).all(|(k, v)| {
                        y.get(k)
                            .is_some_and(|w| equals(&V::from_json(v), &V::from_json(w)))
                    });
            }
            false
        }
    }
}

fn compare(a: &V<'_>, b: &V<'_>) -> Result<Ordering, EvalError> {
    if let Some(o) = num_cmp(a, b) {
        return o.ok_or("values are not comparable (NaN)");
    }
    match (a, b) {
        (V::Bool(x), V::Bool(y)) => Ok(x.cmp(y)),
        _ => match (a.as_str(), b.as_str()) {
            (Some(x), Some(y)) => Ok(x.cmp(y)),
            _ => Err("no matching overload for comparison"),
        },
    }
}

fn arith<'a>(op: ArithOp, a: V<'a>, b: V<'a>) -> V<'a> {
    use ArithOp::*;
    let overflow = V::Err("integer overflow");
    match (op, &a, &b) {
        (Add, V::Int(x), V::Int(y)) => x.checked_add(*y).map_or(overflow, V::Int),
        (Sub, V::Int(x), V::Int(y)) => x.checked_sub(*y).map_or(overflow, V::Int),
        (Mul, V::Int(x), V::Int(y)) => x.checked_mul(*y).map_or(overflow, V::Int),
        (Div, V::Int(_), V::Int(0)) => V::Err("division by zero"),
        (Div, V::Int(x), V::Int(y)) => x.checked_div(*y).map_or(overflow, V::Int),
        (Mod, V::Int(_), V::Int(0)) => V::Err("modulus by zero"),
        (Mod, V::Int(x), V::Int(y)) => x.checked_rem(*y).map_or(overflow, V::Int),
        (Add, V::Uint(x), V::Uint(y)) => x.checked_add(*y).map_or(overflow, V::Uint),
        (Sub, V::Uint(x), V::Uint(y)) => x.checked_sub(*y).map_or(overflow, V::Uint),
        (Mul, V::Uint(x), V::Uint(y)) => x.checked_mul(*y).map_or(overflow, V::Uint),
        (Div, V::Uint(_), V::Uint(0)) => V::Err("division by zero"),
        (Div, V::Uint(x), V::Uint(y)) => x.checked_div(*y).map_or(overflow, V::Uint),
        (Mod, V::Uint(_), V::Uint(0)) => V::Err("modulus by zero"),
        (Mod, V::Uint(x), V::Uint(y)) => x.checked_rem(*y).map_or(overflow, V::Uint),
        (Add, V::Double(x), V::Double(y)) => V::Double(x + y),
        (Sub, V::Double(x), V::Double(y)) => V::Double(x - y),
        (Mul, V::Double(x), V::Double(y)) => V::Double(x * y),
        (Div, V::Double(x), V::Double(y)) => V::Double(x / y),
        (Add, _, _) => {
            if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
                let mut s = String::with_capacity(x.len() + y.len());
                s.push_str(x);
                s.push_str(y);
                return V::String(s);
            }
            if let (Some((la, ia)), Some((lb, ib))) = (list_iter(&a), list_iter(&b)) {
                let mut out = Vec::with_capacity(la + lb);
                out.extend(ia);
                out.extend(ib);
                return V::List(out);
            }
            // A list plus a map appends the map's keys (as the cel crate
            // does; it iterates its hash map, we keep document order).
            if let (Some((la, ia)), V::Json(m)) = (list_iter(&a), &b)
                && m.kind() == Kind::Object
            {
                let mut out = Vec::with_capacity(la + m.len());
                out.extend(ia);
                out.extend(unique_entries(*m).map(|(k, _)| V::Str(k)));
                return V::List(out);
            }
            V::Err("no matching overload for +")
        }
        _ => V::Err("no matching overload for arithmetic"),
    }
}

fn index<'a>(c: V<'a>, i: V<'a>) -> V<'a> {
    match &c {
        V::Json(j) if j.kind() == Kind::Object => match i.as_str() {
            Some(k) => j.get(k).map_or(V::Err("no such key"), V::from_json),
            None => V::Err("no such key"),
        },
        _ if c.is_list() => {
            let idx = match i {
                V::Int(n) => usize::try_from(n).ok(),
                V::Uint(n) => usize::try_from(n).ok(),
                V::Double(d)
                    if d > i64::MIN as f64 && d < i64::MAX as f64 && (d as i64) as f64 == d =>
                {
                    usize::try_from(d as i64).ok()
                }
                _ => return V::Err("no matching overload for index"),
            };
            let Some(idx) = idx else {
                return V::Err("index out of bounds");
            };
            match &c {
                V::Json(j) => j
                    .index(idx)
                    .map_or(V::Err("index out of bounds"), V::from_json),
                V::Lits(l) => l
                    .get(idx)
                    .map_or(V::Err("index out of bounds"), V::from_lit),
                V::List(l) => l.get(idx).cloned().unwrap_or(V::Err("index out of bounds")),
                _ => V::Err("no matching overload for index"),
            }
        }
        _ => V::Err("no matching overload for index"),
    }
}

fn contains<'a>(needle: &V<'a>, hay: &V<'a>) -> V<'a> {
    if let Some((_, mut it)) = list_iter(hay) {
        return V::Bool(it.any(|e| equals(&e, needle)));
    }
    if let V::Json(j) = hay
        && j.kind() == Kind::Object
    {
        return match needle {
            V::Str(s) => V::Bool(j.get(s).is_some()),
            V::String(s) => V::Bool(j.get(s).is_some()),
            V::Int(_) | V::Uint(_) | V::Bool(_) | V::Double(_) => V::Bool(false),
            _ => V::Err("unsupported map key type"),
        };
    }
    V::Err("no matching overload for in")
}

fn size(v: &V<'_>) -> V<'static> {
    match v {
        V::Str(s) => V::Int(s.chars().count() as i64),
        V::String(s) => V::Int(s.chars().count() as i64),
        V::Json(j) if j.kind() == Kind::Object => V::Int(map_len(*j) as i64),
        V::Json(j) => V::Int(j.len() as i64),
        V::Lits(l) => V::Int(l.len() as i64),
        V::List(l) => V::Int(l.len() as i64),
        _ => V::Err("no matching overload for size"),
    }
}

fn convert<'a>(c: Conv, v: V<'a>) -> V<'a> {
    match (c, v) {
        (Conv::Int, V::Int(i)) => V::Int(i),
        (Conv::Int, V::Uint(u)) => i64::try_from(u).map_or(V::Err("integer overflow"), V::Int),
        (Conv::Int, V::Double(d)) => {
            if d > i64::MIN as f64 && d < i64::MAX as f64 {
                V::Int(d as i64)
            } else {
                V::Err("integer overflow")
            }
        }
        (Conv::Uint, V::Uint(u)) => V::Uint(u),
        (Conv::Uint, V::Int(i)) => {
            u64::try_from(i).map_or(V::Err("unsigned integer overflow"), V::Uint)
        }
        (Conv::Uint, V::Double(d)) => {
            if d >= 0.0 && d < u64::MAX as f64 {
                V::Uint(d as u64)
            } else {
                V::Err("unsigned integer overflow")
            }
        }
        (Conv::Double, V::Double(d)) => V::Double(d),
        (Conv::Double, V::Int(i)) => V::Double(i as f64),
        (Conv::Double, V::Uint(u)) => V::Double(u as f64),
        (Conv::String, V::Bool(b)) => V::Str(if b { "true" } else { "false" }),
        (Conv::String, V::Int(i)) => V::String(i.to_string()),
        (Conv::String, V::Uint(u)) => V::String(u.to_string()),
        (Conv::String, V::Double(d)) => V::String(d.to_string()),
        (Conv::String, v @ (V::Str(_) | V::String(_))) => v,
        (c, v) => match v.as_str() {
            Some(s) => match c {
                Conv::Int => s
                    .parse::<i64>()
                    .map_or(V::Err("string parse error"), V::Int),
                Conv::Uint => s
                    .parse::<u64>()
                    .map_or(V::Err("string parse error"), V::Uint),
                Conv::Double => s
                    .parse::<f64>()
                    .map_or(V::Err("string parse error"), V::Double),
                Conv::String => V::Err("unreachable"),
            },
            None => V::Err("no matching overload for conversion"),
        },
    }
}

/// Evaluates `ex` with `ev` bound to `object`.
#[inline]
pub fn eval<'a>(ex: &'a Ex, ev: Json<'a, 'a>) -> V<'a> {
    conjunct(ex, ev)
}

/// [`eval`] of an operand: a member path or a constant (what most
/// comparisons and string tests take) without a call to the interpreter.
/// (Inlined in optimized builds only: unoptimized frames do not share
/// stack slots, and the interpreter's frame with every call site's copy
/// would not fit the deepest accepted filter on a worker's stack.)
#[cfg_attr(debug_assertions, inline(never))]
#[cfg_attr(not(debug_assertions), inline(always))]
fn operand<'a>(ex: &'a Ex, ev: Json<'a, 'a>) -> V<'a> {
    match ex {
        Ex::Path(p) => path(p, ev),
        Ex::Lit(l) => V::from_lit(l),
        _ => eval_in(ex, ev),
    }
}

/// `ev.a.b.c` (inlined as [`operand`] is)
#[cfg_attr(debug_assertions, inline(never))]
#[cfg_attr(not(debug_assertions), inline(always))]
fn path<'a>(p: &'a [Box<str>], ev: Json<'a, 'a>) -> V<'a> {
    let mut cur = ev;
    for seg in p.iter() {
        if !cur.is_object() {
            return V::Err("field selection on a non-map value");
        }
        if !charge(cur.len()) {
            return V::Err(OUT_OF_STEPS);
        }
        match cur.get(seg) {
            Some(n) => cur = n,
            None => return V::Err("no such key"),
        }
    }
    V::from_json(cur)
}

fn eval_in<'a>(ex: &'a Ex, ev: Json<'a, 'a>) -> V<'a> {
    match ex {
        Ex::Lit(l) => V::from_lit(l),
        Ex::Ev => V::Json(ev),
        Ex::Path(p) => path(p, ev),
        Ex::Select(x, f) => match operand(x, ev) {
            V::Json(j) if j.kind() == Kind::Object => {
                if !charge(j.len()) {
                    return V::Err(OUT_OF_STEPS);
                }
                j.get(f).map_or(V::Err("no such key"), V::from_json)
            }
            e @ V::Err(_) => e,
            _ => V::Err("field selection on a non-map value"),
        },
        Ex::Has(x, f) => match operand(x, ev) {
            V::Json(j) if j.kind() == Kind::Object => {
                if !charge(j.len()) {
                    return V::Err(OUT_OF_STEPS);
                }
                V::Bool(j.get(f).is_some())
            }
            e @ V::Err(_) => e,
            _ => V::Err("has() on a non-map value"),
        },
        Ex::Index(b) => {
            let c = operand(&b[0], ev);
            if let V::Err(_) = c {
                return c;
            }
            let i = operand(&b[1], ev);
            if let V::Err(_) = i {
                return i;
            }
            if let V::Json(j) = &c
                && !charge(j.len())
            {
                return V::Err(OUT_OF_STEPS);
            }
            index(c, i)
        }
        Ex::Not(x) => match operand(x, ev) {
            V::Bool(b) => V::Bool(!b),
            e @ V::Err(_) => e,
            _ => V::Err("no matching overload for !"),
        },
        Ex::Neg(x) => match operand(x, ev) {
            V::Int(i) => i.checked_neg().map_or(V::Err("integer overflow"), V::Int),
            V::Double(d) => V::Double(-d),
            e @ V::Err(_) => e,
            _ => V::Err("no matching overload for -"),
        },
        Ex::And(xs) => {
            // false if any operand is false; true if all are true; else an error.
            let mut err = None;
            for x in xs.iter() {
                if and_operand(conjunct(x, ev), &mut err) {
                    return V::Bool(false);
                }
            }
            err.map_or(V::Bool(true), V::Err)
        }
        Ex::Or(xs) => {
            let mut err = None;
            for x in xs.iter() {
                match operand(x, ev) {
                    V::Bool(true) => return V::Bool(true),
                    V::Bool(false) => {}
                    V::Err(e) => err = err.or(Some(e)),
                    _ => err = err.or(Some("no matching overload for ||")),
                }
            }
            err.map_or(V::Bool(false), V::Err)
        }
        Ex::Cond(b) => match operand(&b[0], ev) {
            V::Bool(true) => operand(&b[1], ev),
            V::Bool(false) => operand(&b[2], ev),
            e @ V::Err(_) => e,
            _ => V::Err("condition is not a bool"),
        },
        Ex::Cmp(op, b) => {
            let l = operand(&b[0], ev);
            if let V::Err(_) = l {
                return l;
            }
            let r = operand(&b[1], ev);
            if let V::Err(_) = r {
                return r;
            }
            if !charge(weight(&l).min(weight(&r))) {
                return V::Err(OUT_OF_STEPS);
            }
            let out = cmp_test(*op, &l, &r);
            discard(l);
            discard(r);
            bool_or_err(out)
        }
        Ex::Arith(op, b) => {
            let l = operand(&b[0], ev);
            if let V::Err(_) = l {
                return l;
            }
            let r = operand(&b[1], ev);
            if let V::Err(_) = r {
                return r;
            }
            arith(*op, l, r)
        }
        Ex::In(b) => {
            let l = operand(&b[0], ev);
            if let V::Err(_) = l {
                return l;
            }
            let r = operand(&b[1], ev);
            if let V::Err(_) = r {
                return r;
            }
            if !charge(weight(&r)) {
                return V::Err(OUT_OF_STEPS);
            }
            contains(&l, &r)
        }
        Ex::InStrSet(x, set) => match operand(x, ev) {
            V::Str(s) if !charge(scan(s.len())) => V::Err(OUT_OF_STEPS),
            V::String(s) if !charge(scan(s.len())) => V::Err(OUT_OF_STEPS),
            V::Str(s) => V::Bool(set.contains(s)),
            V::String(s) => V::Bool(set.contains(s.as_str())),
            e @ V::Err(_) => e,
            _ => V::Bool(false),
        },
        Ex::List(xs) => {
            let mut out = Vec::with_capacity(xs.len());
            for x in xs.iter() {
                let v = operand(x, ev);
                if let V::Err(_) = v {
                    return v;
                }
                out.push(v);
            }
            V::List(out)
        }
        Ex::Size(x) => match operand(x, ev) {
            e @ V::Err(_) => e,
            v if !charge(weight(&v)) => V::Err(OUT_OF_STEPS),
            v => size(&v),
        },
        Ex::Str(op, b) => {
            let l = operand(&b[0], ev);
            if let V::Err(_) = l {
                return l;
            }
            let r = operand(&b[1], ev);
            if let V::Err(_) = r {
                return r;
            }
            let out = match (l.as_str(), r.as_str()) {
                (Some(s), _) if !charge(scan(s.len())) => Err(OUT_OF_STEPS),
                (Some(s), Some(t)) => Ok(str_test(*op, s, t)),
                _ => Err("no matching overload for string function"),
            };
            discard(l);
            discard(r);
            bool_or_err(out)
        }
        Ex::Matches(x, re) => match operand(x, ev) {
            V::Str(s) if !charge(s.len() / 4 + 1) => V::Err(OUT_OF_STEPS),
            V::String(s) if !charge(s.len() / 4 + 1) => V::Err(OUT_OF_STEPS),
            V::Str(s) => V::Bool(re.is_match(s)),
            V::String(s) => V::Bool(re.is_match(&s)),
            e @ V::Err(_) => e,
            _ => V::Err("no matching overload for matches"),
        },
        Ex::Conv(c, x) => match operand(x, ev) {
            e @ V::Err(_) => e,
            v => convert(*c, v),
        },
    }
}

/// A comparison of two values (`Ex::Cmp`'s, once its steps are paid).
#[inline(always)]
fn cmp_test(op: CmpOp, l: &V<'_>, r: &V<'_>) -> Result<bool, EvalError> {
    match op {
        CmpOp::Eq => Ok(equals(l, r)),
        CmpOp::Ne => Ok(!equals(l, r)),
        _ => compare(l, r).map(|o| match op {
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            _ => o != Ordering::Less,
        }),
    }
}

/// A string test of `s` with argument `t` (`Ex::Str`'s, once its steps
/// are paid).
#[inline(always)]
fn str_test(op: StrOp, s: &str, t: &str) -> bool {
    match op {
        StrOp::StartsWith => s
            .as_bytes()
            .get(..t.len())
            .is_some_and(|h| short_eq(h, t.as_bytes())),
        StrOp::EndsWith => s
            .len()
            .checked_sub(t.len())
            .is_some_and(|at| short_eq(&s.as_bytes()[at..], t.as_bytes())),
        StrOp::Contains => contains_str(s.as_bytes(), t.as_bytes()),
        StrOp::Equals => short_eq(s.as_bytes(), t.as_bytes()),
    }
}

/// An operand of the commonest shape, a member path tested against a
/// constant (`ev.conn.server_name.endsWith("-prod.ngrok.dev")`,
/// `ev.conn.bytes_out > 50000000`), decided without the interpreter: the
/// path is looked up on the tape and the test run on its value, with no
/// call per operand and no value built for the constant. It decides only
/// where [`eval`] would give a bool without taking a step from the budget,
/// so the budget is left as [`eval`] would leave it.
pub struct Quick<'a> {
    path: &'a [Box<str>],
    test: QuickTest<'a>,
}

/// The test of a [`Quick`] operand.
enum QuickTest<'a> {
    /// `path.op(constant)`
    Str(StrOp, &'a str),
    /// `path op constant`, a scalar constant.
    Cmp(CmpOp, &'a Lit),
}

impl<'a> Quick<'a> {
    /// `ex` as a [`Quick`] operand, if it has that shape.
    #[inline(always)]
    pub fn of(ex: &'a Ex) -> Option<Quick<'a>> {
        let (path, test) = match ex {
            Ex::Str(op, b) => match &**b {
                [Ex::Path(p), Ex::Lit(Lit::Str(t))] => (p, QuickTest::Str(*op, t)),
                _ => return None,
            },
            Ex::Cmp(op, b) => match &**b {
                [Ex::Path(p), Ex::Lit(l)] if !matches!(l, Lit::List(_)) => {
                    (p, QuickTest::Cmp(*op, l))
                }
                _ => return None,
            },
            _ => return None,
        };
        Some(Quick { path, test })
    }

    /// The operand's value on `ev` where [`eval`] would give a bool
    /// without taking a step from the budget (every object on the path
    /// under [`FREE_STEPS`] members, a searched string under
    /// `16 * (FREE_STEPS - 1)` bytes); `None`: evaluate it with [`eval`]
    /// (an error, a missing member, a long string).
    #[inline(always)]
    pub fn decide(&self, ev: Json<'_, '_>) -> Option<bool> {
        let mut cur = ev;
        for seg in self.path.iter() {
            if !cur.is_object() || cur.len() >= FREE_STEPS {
                return None;
            }
            cur = cur.get(seg)?;
        }
        let l = V::from_json(cur);
        let out = match self.test {
            QuickTest::Str(op, t) => match l.as_str() {
                Some(s) if scan(s.len()) < FREE_STEPS => Some(str_test(op, s, t)),
                _ => None,
            },
            QuickTest::Cmp(op, lit) => {
                let r = V::from_lit(lit);
                if weight(&l).min(weight(&r)) < FREE_STEPS {
                    cmp_test(op, &l, &r).ok()
                } else {
                    None
                }
            }
        };
        discard(l);
        out
    }
}

/// [`eval`] of `ex` itself in the interpreter, never [`Quick`] (the
/// reference it is tested against; operands of `&&` below `ex` may be).
#[cfg(test)]
pub fn interpret<'a>(ex: &'a Ex, ev: Json<'a, 'a>) -> V<'a> {
    eval_in(ex, ev)
}

/// [`eval`] of an operand of `&&` (or of a whole filter): a [`Quick`] one
/// without the interpreter where it decides, else as [`operand`]. (Inlined
/// in optimized builds only, as [`operand`] is.)
#[cfg_attr(debug_assertions, inline(never))]
#[cfg_attr(not(debug_assertions), inline(always))]
fn conjunct<'a>(x: &'a Ex, ev: Json<'a, 'a>) -> V<'a> {
    match Quick::of(x).and_then(|q| q.decide(ev)) {
        Some(b) => V::Bool(b),
        None => operand(x, ev),
    }
}

/// Takes one operand's value into `&&`: true if it is `false` (which
/// decides), else notes in `err` the first error (a value that is not a
/// bool is one).
#[inline(always)]
fn and_operand(v: V<'_>, err: &mut Option<EvalError>) -> bool {
    match v {
        V::Bool(false) => return true,
        V::Bool(true) => {}
        V::Err(e) => *err = err.or(Some(e)),
        v => {
            discard(v);
            *err = err.or(Some("no matching overload for &&"));
        }
    }
    false
}

/// [`eval`] of `ex` when its [`first_conjunct`] is known to have
/// evaluated to `first` (and the budget holds the steps it left): the
/// other operands of the chain of `&&` are evaluated in the same order,
/// with the same answer.
pub fn eval_given_first<'a>(ex: &'a Ex, ev: Json<'a, 'a>, first: V<'a>) -> V<'a> {
    match ex {
        Ex::And(xs) if !xs.is_empty() => {
            let mut err = None;
            if and_operand(eval_given_first(&xs[0], ev, first), &mut err) {
                return V::Bool(false);
            }
            for x in xs[1..].iter() {
                if and_operand(eval(x, ev), &mut err) {
                    return V::Bool(false);
                }
            }
            err.map_or(V::Bool(true), V::Err)
        }
        _ => first,
    }
}

/// The first operand of `ex`'s chain of `&&` (`a` of `a && b && c`, of
/// `(a && b) && c` too), or `ex` itself: if it is `false`, so is `ex`,
/// whatever the other operands are (an error included).
pub fn first_conjunct(ex: &Ex) -> &Ex {
    match ex {
        Ex::And(xs) if !xs.is_empty() => first_conjunct(&xs[0]),
        _ => ex,
    }
}

/// Adds to `out` the members of `ev` that `ex` reads (the first name of
/// each path); false if it reads `ev` whole.
pub fn members_read<'a>(ex: &'a Ex, out: &mut Vec<&'a str>) -> bool {
    match ex {
        Ex::Lit(_) => true,
        Ex::Ev => false,
        Ex::Path(p) => match p.first() {
            Some(m) => {
                out.push(m);
                true
            }
            None => false,
        },
        Ex::Select(x, f) | Ex::Has(x, f) => match **x {
            Ex::Ev => {
                out.push(f);
                true
            }
            _ => members_read(x, out),
        },
        Ex::Not(x)
        | Ex::Neg(x)
        | Ex::Size(x)
        | Ex::Conv(_, x)
        | Ex::Matches(x, _)
        | Ex::InStrSet(x, _) => members_read(x, out),
        Ex::And(xs) | Ex::Or(xs) | Ex::List(xs) => xs.iter().all(|x| members_read(x, out)),
        Ex::Index(xs) | Ex::Cmp(_, xs) | Ex::Arith(_, xs) | Ex::In(xs) | Ex::Str(_, xs) => {
            xs.iter().all(|x| members_read(x, out))
        }
        Ex::Cond(xs) => xs.iter().all(|x| members_read(x, out)),
    }
}

/// The value of a test that the operands' drops came between: made
/// after them, in the return slot. (Made before and kept on the stack
/// across them, the value was written in narrow pieces and copied out in
/// 16-byte loads, which waited on those stores: `perf annotate` put 22%
/// of the interpreter's samples on that load in criterion's "rejected
/// event".)
#[inline(always)]
fn bool_or_err(r: Result<bool, EvalError>) -> V<'static> {
    match r {
        Ok(b) => V::Bool(b),
        Err(e) => V::Err(e),
    }
}

/// Drops a value, with the test for the variants that own memory inlined
/// (the generic drop is a call per value, and most values own nothing).
#[inline(always)]
fn discard(v: V<'_>) {
    match v {
        V::String(s) => drop(s),
        V::List(l) => drop(l),
        _ => {}
    }
}

/// Whether `needle` occurs in `hay`. In a short string (most fields a
/// filter searches: host names, paths) each place where the first byte
/// matches is compared inline, which costs less than setting up the
/// standard library's two-way search for every event.
fn contains_str(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, _)) = needle.split_first() else {
        return true;
    };
    if hay.len() > 64 {
        return memchr::memmem::find(hay, needle).is_some();
    }
    let Some(last_start) = hay.len().checked_sub(needle.len()) else {
        return false;
    };
    (0..=last_start).any(|i| hay[i] == first && short_eq(&hay[i..i + needle.len()], needle))
}

/// Steps to walk a value whole (compare it, count it, search it).
fn weight(v: &V<'_>) -> usize {
    match v {
        V::Str(s) => scan(s.len()),
        V::String(s) => scan(s.len()),
        // Nodes on the tape: every element and member, nested ones too.
        V::Json(j) => match j.node() {
            Node::String(s) => scan(s.len()),
            Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
            _ => 1,
        },
        V::Lits(l) => l.len() + 1,
        V::List(l) => l.len() + 1,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::contains_str;

    #[test]
    fn contains_str_agrees_with_the_standard_search() {
        let hays = [
            "",
            "a",
            "stark5-prod.ngrok.dev",
            "-prod.ngrok.dev",
            "x-prod.ngrok.de",
            "ééé-prod.ngrok.devé",
        ];
        let long = "ab".repeat(40) + "-prod.ngrok.dev" + &"c".repeat(10);
        let needles = [
            "",
            "a",
            "-prod.ngrok.dev",
            "v",
            "é-",
            "ngrok.dev",
            "cc",
            "zz",
        ];
        for h in hays.iter().copied().chain([long.as_str()]) {
            for n in needles {
                assert_eq!(
                    contains_str(h.as_bytes(), n.as_bytes()),
                    h.contains(n),
                    "{h:?} contains {n:?}"
                );
            }
        }
    }
}
