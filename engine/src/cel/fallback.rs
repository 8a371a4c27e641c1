//! The fallback: the `cel` crate's interpreter, for the constructs the fast
//! evaluator does not cover (comprehension macros, timestamps, map literals,
//! ...). It is fed only the fields the expression references, converted from
//! the tape into CEL values for that one evaluation.

use crate::json::{Json, Kind};
use cel::objects::{Key, Value};
use simd_json::{Node, StaticNode};
use std::collections::HashMap;
use std::sync::Arc;

thread_local! {
    /// The root context (standard library) is costly to build (~40 µs): once per thread.
    static ROOT: cel::Context<'static, 'static> = cel::Context::default();
}

/// The subset of `ev` an expression reads: a trie of member paths.
#[derive(Debug, Default, Clone)]
pub struct PathTrie {
    /// The whole value at this node is read.
    pub whole: bool,
    /// Members read below this node.
    pub children: Vec<(Box<str>, PathTrie)>,
}

impl PathTrie {
    /// Adds a path (empty = the whole value).
    pub fn insert(&mut self, path: &[String]) {
        let Some((first, rest)) = path.split_first() else {
            self.whole = true;
            return;
        };
        let child = match self.children.iter().position(|(n, _)| **n == **first) {
            Some(i) => &mut self.children[i].1,
            None => {
                self.children
                    .push((first.as_str().into(), PathTrie::default()));
                &mut self.children.last_mut().expect("just pushed").1
            }
        };
        child.insert(rest);
    }
}

/// Converts a tape value into a CEL value (objects keep the first of repeated
/// keys; integers are `int` when they fit 64 signed bits, else `uint`).
pub fn to_cel(j: Json<'_, '_>) -> Value {
    match j.node() {
        Node::String(s) => Value::String(Arc::new(s.to_owned())),
        Node::Static(StaticNode::Null) => Value::Null,
        Node::Static(StaticNode::Bool(b)) => Value::Bool(b),
        Node::Static(StaticNode::I64(i)) => Value::Int(i),
        // As in the fast evaluator: an integer is an int when it fits.
        Node::Static(StaticNode::U64(u)) => match i64::try_from(u) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(u),
        },
        Node::Static(StaticNode::F64(f)) => Value::Float(f),
        #[allow(unreachable_patterns)]
        Node::Static(_) => Value::Null,
        Node::Object { len, .. } => {
            let mut m: HashMap<Key, Value> = HashMap::with_capacity(len);
            for (k, v) in j.entries() {
                m.entry(Key::from(k)).or_insert_with(|| to_cel(v));
            }
            Value::Map(m.into())
        }
        Node::Array { .. } => Value::List(Arc::new(j.elements().map(to_cel).collect())),
    }
}

/// What the interpreter may still be given for one event
/// ([`super::cost`]): elements per list or map, and bytes of strings.
struct Allowance {
    bytes: usize,
}

/// Why an event is too big for an interpreted filter (the start of the error).
pub const TOO_BIG: &str = "the fields this filter reads are too big for the cel interpreter";

impl Allowance {
    fn take_bytes(&mut self, n: usize) -> Result<(), String> {
        self.bytes = self.bytes.checked_sub(n).ok_or_else(|| {
            format!(
                "{TOO_BIG} (over {} bytes of strings)",
                super::cost::INTERPRETER_MAX_INPUT_BYTES
            )
        })?;
        Ok(())
    }

    fn check_len(&self, n: usize) -> Result<(), String> {
        if n > super::cost::INTERPRETER_MAX_ELEMENTS {
            return Err(format!(
                "{TOO_BIG} (a list or map of {n} elements, over {})",
                super::cost::INTERPRETER_MAX_ELEMENTS
            ));
        }
        Ok(())
    }
}

/// [`to_cel`] within an allowance.
fn to_cel_bounded(j: Json<'_, '_>, a: &mut Allowance) -> Result<Value, String> {
    Ok(match j.node() {
        Node::String(s) => {
            a.take_bytes(s.len())?;
            Value::String(Arc::new(s.to_owned()))
        }
        Node::Object { len, .. } => {
            a.check_len(len)?;
            let mut m: HashMap<Key, Value> = HashMap::with_capacity(len);
            for (k, v) in j.entries() {
                a.take_bytes(k.len())?;
                if let std::collections::hash_map::Entry::Vacant(slot) = m.entry(Key::from(k)) {
                    slot.insert(to_cel_bounded(v, a)?);
                }
            }
            Value::Map(m.into())
        }
        Node::Array { len, .. } => {
            a.check_len(len)?;
            Value::List(Arc::new(
                j.elements()
                    .map(|e| to_cel_bounded(e, a))
                    .collect::<Result<_, _>>()?,
            ))
        }
        _ => to_cel(j),
    })
}

/// Converts only the parts of `j` that `trie` names, within an allowance.
fn extract(j: Json<'_, '_>, trie: &PathTrie, a: &mut Allowance) -> Result<Value, String> {
    if trie.whole || j.kind() != Kind::Object {
        return to_cel_bounded(j, a);
    }
    let mut m: HashMap<Key, Value> = HashMap::with_capacity(trie.children.len());
    for (name, sub) in &trie.children {
        if let Some(v) = j.get(name) {
            m.insert(Key::from(&**name), extract(v, sub, a)?);
        }
    }
    Ok(Value::Map(m.into()))
}

/// A program run by the `cel` crate.
#[derive(Debug)]
pub struct Fallback {
    program: cel::Program,
    reads: PathTrie,
}

impl Fallback {
    /// Wraps a compiled program and the paths it reads.
    pub fn new(program: cel::Program, reads: PathTrie) -> Fallback {
        Fallback { program, reads }
    }

    /// Evaluates with `ev` bound to (the referenced parts of) `object`; an
    /// error if those parts are over the interpreter's input limits.
    pub fn eval(&self, object: Json<'_, '_>) -> Result<Value, String> {
        let mut allowance = Allowance {
            bytes: super::cost::INTERPRETER_MAX_INPUT_BYTES,
        };
        let ev = extract(object, &self.reads, &mut allowance)?;
        ROOT.with(|root| {
            let mut ctx = root.new_inner_scope();
            ctx.add_variable_from_value("ev", ev);
            self.program.execute(&ctx).map_err(|e| e.to_string())
        })
    }
}

/// Evaluates a program with `ev` bound to the whole object: the reference the
/// differential tests compare the fast evaluator against.
pub fn eval_reference(program: &cel::Program, object: Json<'_, '_>) -> Result<Value, String> {
    let ev = to_cel(object);
    ROOT.with(|root| {
        let mut ctx = root.new_inner_scope();
        ctx.add_variable_from_value("ev", ev);
        program.execute(&ctx).map_err(|e| e.to_string())
    })
}
