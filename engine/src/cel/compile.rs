//! From CEL source to an evaluable program: parse with the `cel` crate's
//! parser, check names and fields, then lower the AST to the fast evaluator's
//! tree ([`super::eval::Ex`]) with constants folded and regexes compiled, or
//! keep the `cel` crate's program when a construct is not covered.

use super::FilterError;
use super::eval::{self, ArithOp, CmpOp, Conv, Ex, Lit, StrOp, V};
use super::fallback::PathTrie;
use crate::events::{EventClass, EventTypeDef, PathLookup};
use crate::json::Json;
use cel::common::ast::{Expr, IdedExpr, LiteralValue, SourceInfo, operators};
use simd_json::Node;

/// Longest filter source accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 16 << 10;

/// Deepest expression accepted (nodes from the root to the deepest leaf).
/// Everything after parsing (checks, lowering, evaluation on the workers'
/// stacks, the interpreter, dropping the tree) recurses over the tree, so its
/// depth is bounded here. (`&&` and `||` chains are balanced by the parser,
/// and it refuses more than 96 nested groups itself.)
pub const MAX_DEPTH: usize = 256;

/// Deepest expression accepted for a filter the fast path does not cover:
/// the `cel` crate's interpreter, which evaluates it on the engine's workers,
/// takes tens of KiB of stack per level (measured in a debug build: 45
/// levels ran on a 2 MiB stack, 65 overflowed it).
pub const MAX_INTERPRETER_DEPTH: usize = 32;

/// Most bytes a filter's compiled regex may take (the `regex` crate refuses
/// a bigger one at compile time: `a{1000}{1000}` and the like).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Stack of the thread a filter is parsed on: the parser recurses once or
/// more per nesting level, so a 16 KiB source nested as deep as it can be
/// needs tens of MiB (measured: 64 MiB suffices in a debug build). Reserved
/// address space, touched only as deep as a parse goes.
pub const PARSE_STACK_BYTES: usize = 64 << 20;

/// The expressions of a map or struct entry.
fn entry_children(en: &cel::common::ast::EntryExpr) -> Vec<&IdedExpr> {
    match en {
        cel::common::ast::EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
        cel::common::ast::EntryExpr::StructField(f) => vec![&f.value],
    }
}

/// The children of a node, for walks that must not recurse.
fn children(e: &IdedExpr) -> Vec<&IdedExpr> {
    let entry = entry_children;
    match &e.expr {
        Expr::Select(s) => vec![&s.operand],
        Expr::Call(c) => c.target.iter().map(|t| &**t).chain(c.args.iter()).collect(),
        Expr::List(l) => l.elements.iter().collect(),
        Expr::Map(m) => m.entries.iter().flat_map(|en| entry(&en.expr)).collect(),
        Expr::Struct(st) => st.entries.iter().flat_map(|en| entry(&en.expr)).collect(),
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => vec![],
    }
}

/// Refuses an expression deeper than `limit` ([`MAX_DEPTH`], or
/// [`MAX_INTERPRETER_DEPTH`] with the reason the interpreter is needed),
/// pointing at the node where it gets too deep. Iterative: safe on any
/// stack, whatever the depth.
pub fn check_depth(src: &str, p: &Parsed, limit: usize, why: &str) -> Result<(), FilterError> {
    let mut stack: Vec<(&IdedExpr, usize)> = vec![(&p.expr, 1)];
    while let Some((e, d)) = stack.pop() {
        if d > limit {
            return Err(error_at(
                src,
                &p.info,
                e.id,
                format!("the expression is nested more than {limit} levels deep here{why}"),
            ));
        }
        stack.extend(children(e).into_iter().map(|c| (c, d + 1)));
    }
    Ok(())
}

/// Identifiers that name types; legal in expressions like `type(x) == int`.
const TYPE_NAMES: &[&str] = &[
    "int",
    "uint",
    "double",
    "string",
    "bool",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "timestamp",
    "duration",
    "dyn",
];

/// A parsed expression with its source positions.
pub struct Parsed {
    /// The AST.
    pub expr: IdedExpr,
    /// Where each node is in the source.
    pub info: SourceInfo,
}

/// Converts a char offset into the source into 1-based (line, column).
pub fn line_col(src: &str, char_offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut col = 1;
    for (i, c) in src.chars().enumerate() {
        if i == char_offset {
            break;
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

pub(crate) fn error_at(src: &str, info: &SourceInfo, id: u64, message: String) -> FilterError {
    let (line, column) = info
        .offset_for(id)
        .map(|(start, _)| line_col(src, start as usize))
        .unwrap_or((1, 1));
    FilterError {
        message,
        line,
        column,
        source: src.to_string(),
    }
}

/// Parses `src`, reporting the first syntax error with its position.
pub fn parse(src: &str) -> Result<Parsed, FilterError> {
    if src.len() > MAX_SOURCE_BYTES {
        return Err(FilterError {
            message: format!(
                "filter is {} bytes, the limit is {MAX_SOURCE_BYTES}",
                src.len()
            ),
            line: 1,
            column: 1,
            source: src.chars().take(200).collect(),
        });
    }
    if src.trim().is_empty() {
        return Err(FilterError {
            message: "filter is empty".into(),
            line: 1,
            column: 1,
            source: src.to_string(),
        });
    }
    match cel::parser::Parser::new().parse_with_source_info(src) {
        Ok((expr, info)) => Ok(Parsed { expr, info }),
        Err(errs) => {
            let e = errs.errors.first();
            let (line, column) = e
                .map(|e| (e.pos.0.max(1) as usize, e.pos.1.max(1) as usize))
                .unwrap_or((1, 1));
            let message = e.map_or_else(|| "syntax error".to_string(), |e| e.msg.clone());
            Err(FilterError {
                message,
                line,
                column,
                source: src.to_string(),
            })
        }
    }
}

/// A member path read from `ev`, with the expression that reads it.
pub struct Reference {
    /// Member names below `ev` (empty: `ev` itself).
    pub path: Vec<String>,
    /// The AST node that reads it.
    pub id: u64,
}

/// Collects every path of `ev` the expression reads, and checks that `ev` is
/// the only free variable.
pub fn references(src: &str, p: &Parsed) -> Result<Vec<Reference>, FilterError> {
    let mut out = Vec::new();
    let mut scope: Vec<String> = Vec::new();
    walk(src, &p.info, &p.expr, &mut scope, &mut out)?;
    Ok(out)
}

/// The segments of `a.b.c` if it is an identifier followed by field selections.
fn name_chain(e: &Expr) -> Option<(String, Vec<String>)> {
    let mut segs = Vec::new();
    let mut cur = e;
    loop {
        match cur {
            Expr::Ident(n) => {
                segs.reverse();
                return Some((n.clone(), segs));
            }
            Expr::Select(s) if !s.test => {
                segs.push(s.field.clone());
                cur = &s.operand.expr;
            }
            _ => return None,
        }
    }
}

fn walk(
    src: &str,
    info: &SourceInfo,
    e: &IdedExpr,
    scope: &mut Vec<String>,
    out: &mut Vec<Reference>,
) -> Result<(), FilterError> {
    match &e.expr {
        Expr::Ident(name) => {
            if scope.iter().any(|s| s == name) {
                return Ok(());
            }
            if name == "ev" {
                out.push(Reference {
                    path: vec![],
                    id: e.id,
                });
                return Ok(());
            }
            if TYPE_NAMES.contains(&name.as_str()) {
                return Ok(());
            }
            Err(error_at(
                src,
                info,
                e.id,
                format!(
                    "unknown variable `{name}`: a filter can only read `ev`, the event's object"
                ),
            ))
        }
        Expr::Select(s) => {
            let chain = if s.test {
                name_chain(&s.operand.expr).map(|(root, mut segs)| {
                    segs.push(s.field.clone());
                    (root, segs)
                })
            } else {
                name_chain(&e.expr)
            };
            if let Some((root, segs)) = chain
                && root == "ev"
                && !scope.iter().any(|v| v == "ev")
            {
                // Point at the start of the chain (`ev`), not at its last dot.
                let mut root_id = e.id;
                let mut cur = e;
                while let Expr::Select(s) = &cur.expr {
                    cur = &s.operand;
                    root_id = cur.id;
                }
                out.push(Reference {
                    path: segs,
                    id: root_id,
                });
                return Ok(());
            }
            walk(src, info, &s.operand, scope, out)
        }
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                walk(src, info, t, scope, out)?;
            }
            for a in &c.args {
                walk(src, info, a, scope, out)?;
            }
            Ok(())
        }
        Expr::List(l) => l
            .elements
            .iter()
            .try_for_each(|x| walk(src, info, x, scope, out)),
        Expr::Map(m) => m.entries.iter().try_for_each(|en| match &en.expr {
            cel::common::ast::EntryExpr::MapEntry(me) => {
                walk(src, info, &me.key, scope, out)?;
                walk(src, info, &me.value, scope, out)
            }
            cel::common::ast::EntryExpr::StructField(f) => walk(src, info, &f.value, scope, out),
        }),
        Expr::Struct(st) => st.entries.iter().try_for_each(|en| match &en.expr {
            cel::common::ast::EntryExpr::MapEntry(me) => {
                walk(src, info, &me.key, scope, out)?;
                walk(src, info, &me.value, scope, out)
            }
            cel::common::ast::EntryExpr::StructField(f) => walk(src, info, &f.value, scope, out),
        }),
        Expr::Comprehension(c) => {
            walk(src, info, &c.iter_range, scope, out)?;
            walk(src, info, &c.accu_init, scope, out)?;
            let n = scope.len();
            scope.push(c.iter_var.clone());
            if let Some(v2) = &c.iter_var2 {
                scope.push(v2.clone());
            }
            scope.push(c.accu_var.clone());
            let r = walk(src, info, &c.loop_cond, scope, out)
                .and_then(|_| walk(src, info, &c.loop_step, scope, out))
                .and_then(|_| walk(src, info, &c.result, scope, out));
            scope.truncate(n);
            r
        }
        Expr::Literal(_) | Expr::Unspecified => Ok(()),
    }
}

/// Checks a path read from `ev` against the event type's fields: `Ok(false)`
/// for a known path, `Ok(true)` for a path the registry does not know but
/// that is no likely typo (see [`PathLookup::unknown_policy`]), and an error
/// for a likely typo, for any unknown path under `strict`, and for a field
/// ngrok does not let filters read under `strict`.
pub fn check_path(def: &EventTypeDef, path: &[String], strict: bool) -> Result<bool, String> {
    let joined = path.join(".");
    let not_filterable = |p: &str| {
        format!(
            "field `{p}` of {} cannot be used in a filter under strict_ngrok_filters (ngrok allows only {})",
            def.name,
            def.fields
                .iter()
                .filter(|f| f.filterable)
                .map(|f| f.path)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let found = def.lookup(&joined);
    match found {
        PathLookup::Field(f) | PathLookup::InContainer(f) if strict && !f.filterable => {
            Err(not_filterable(f.path))
        }
        PathLookup::Parent
            if strict
                && def.class == EventClass::Traffic
                && !joined.is_empty()
                && !def
                    .fields
                    .iter()
                    .any(|f| f.filterable && f.path.starts_with(&format!("{joined}."))) =>
        {
            Err(not_filterable(&joined))
        }
        _ => found.unknown_policy(def, &joined, strict),
    }
}

/// Why the fast evaluator cannot take an expression, or a hard error.
pub enum Lower {
    /// A construct the fast path does not cover: fall back to the interpreter.
    Unsupported(String),
    /// An error the user must fix (bad regex, ...).
    Invalid(FilterError),
}

struct Lowerer<'s> {
    src: &'s str,
    info: &'s SourceInfo,
}

fn unsupported<T>(what: impl Into<String>) -> Result<T, Lower> {
    Err(Lower::Unsupported(what.into()))
}

fn lit_of(l: &LiteralValue) -> Result<Lit, Lower> {
    Ok(match l {
        LiteralValue::Boolean(b) => Lit::Bool(*b.inner()),
        LiteralValue::Int(i) => Lit::Int(*i.inner()),
        LiteralValue::UInt(u) => Lit::Uint(*u.inner()),
        LiteralValue::Double(d) => Lit::Double(*d.inner()),
        LiteralValue::String(s) => Lit::Str(s.inner().into()),
        LiteralValue::Null => Lit::Null,
        LiteralValue::Bytes(_) => return unsupported("bytes literals"),
    })
}

/// Folds a node whose operands are all constants into a constant.
fn fold(ex: Ex) -> Ex {
    let pure_children = match &ex {
        Ex::Lit(_) | Ex::Ev | Ex::Path(_) => return ex,
        Ex::Select(x, _)
        | Ex::Has(x, _)
        | Ex::Not(x)
        | Ex::Neg(x)
        | Ex::Size(x)
        | Ex::Conv(_, x)
        | Ex::Matches(x, _)
        | Ex::InStrSet(x, _) => {
            matches!(**x, Ex::Lit(_))
        }
        Ex::Index(b) | Ex::Cmp(_, b) | Ex::Arith(_, b) | Ex::In(b) | Ex::Str(_, b) => {
            b.iter().all(|x| matches!(x, Ex::Lit(_)))
        }
        Ex::Cond(b) => b.iter().all(|x| matches!(x, Ex::Lit(_))),
        Ex::And(xs) | Ex::Or(xs) | Ex::List(xs) => xs.iter().all(|x| matches!(x, Ex::Lit(_))),
    };
    if !pure_children {
        return ex;
    }
    let empty = [Node::Object { len: 0, count: 0 }];
    let Some(ev) = Json::root(&empty) else {
        return ex;
    };
    eval::start_budget(u32::MAX);
    let lit = match eval::eval(&ex, ev) {
        V::Err(_) => None,
        v => v.to_lit(),
    };
    match lit {
        Some(l) => Ex::Lit(l),
        None => ex,
    }
}

impl Lowerer<'_> {
    fn invalid(&self, id: u64, msg: String) -> Lower {
        Lower::Invalid(error_at(self.src, self.info, id, msg))
    }

    fn boxed2(&self, a: &IdedExpr, b: &IdedExpr) -> Result<Box<[Ex; 2]>, Lower> {
        Ok(Box::new([self.lower(a)?, self.lower(b)?]))
    }

    fn flatten(&self, op: &str, e: &IdedExpr, out: &mut Vec<Ex>) -> Result<(), Lower> {
        if let Expr::Call(c) = &e.expr
            && c.func_name == op
            && c.target.is_none()
            && c.args.len() == 2
        {
            self.flatten(op, &c.args[0], out)?;
            return self.flatten(op, &c.args[1], out);
        }
        out.push(self.lower(e)?);
        Ok(())
    }

    fn lower(&self, e: &IdedExpr) -> Result<Ex, Lower> {
        let ex = match &e.expr {
            Expr::Literal(l) => Ex::Lit(lit_of(l)?),
            Expr::Ident(n) if n == "ev" => Ex::Ev,
            Expr::Ident(n) => return unsupported(format!("identifier `{n}`")),
            Expr::Select(s) => {
                if s.test {
                    Ex::Has(Box::new(self.lower(&s.operand)?), s.field.as_str().into())
                } else if let Some((root, segs)) = name_chain(&e.expr)
                    && root == "ev"
                {
                    Ex::Path(segs.into_iter().map(|s| s.into_boxed_str()).collect())
                } else {
                    Ex::Select(Box::new(self.lower(&s.operand)?), s.field.as_str().into())
                }
            }
            Expr::List(l) => {
                if !l.optional_indices.is_empty() {
                    return unsupported("optional list elements");
                }
                let xs = l
                    .elements
                    .iter()
                    .map(|x| self.lower(x))
                    .collect::<Result<Vec<_>, _>>()?;
                Ex::List(xs.into())
            }
            Expr::Call(c) => self.lower_call(e.id, c)?,
            Expr::Map(_) => return unsupported("map literals"),
            Expr::Struct(_) => return unsupported("message literals"),
            Expr::Comprehension(_) => {
                return unsupported("comprehension macros (all, exists, map, filter)");
            }
            Expr::Unspecified => return unsupported("an unspecified expression"),
        };
        Ok(fold(ex))
    }

    fn lower_call(&self, id: u64, c: &cel::common::ast::CallExpr) -> Result<Ex, Lower> {
        let name = c.func_name.as_str();
        let args = &c.args;
        let ex = match (&c.target, name, args.len()) {
            (None, operators::LOGICAL_AND, 2) | (None, operators::LOGICAL_OR, 2) => {
                let mut xs = Vec::new();
                self.flatten(name, &args[0], &mut xs)?;
                self.flatten(name, &args[1], &mut xs)?;
                if name == operators::LOGICAL_AND {
                    Ex::And(xs.into())
                } else {
                    Ex::Or(xs.into())
                }
            }
            (None, operators::LOGICAL_NOT, 1) => Ex::Not(Box::new(self.lower(&args[0])?)),
            (None, operators::NEGATE, 1) => Ex::Neg(Box::new(self.lower(&args[0])?)),
            (None, operators::CONDITIONAL, 3) => Ex::Cond(Box::new([
                self.lower(&args[0])?,
                self.lower(&args[1])?,
                self.lower(&args[2])?,
            ])),
            (None, op, 2) if cmp_op(op).is_some() => Ex::Cmp(
                cmp_op(op).unwrap_or(CmpOp::Eq),
                self.boxed2(&args[0], &args[1])?,
            ),
            (None, op, 2) if arith_op(op).is_some() => Ex::Arith(
                arith_op(op).unwrap_or(ArithOp::Add),
                self.boxed2(&args[0], &args[1])?,
            ),
            (None, operators::IN, 2) => {
                let needle = self.lower(&args[0])?;
                let hay = self.lower(&args[1])?;
                if let Ex::Lit(Lit::List(items)) = &hay
                    && !items.is_empty()
                    && items.iter().all(|i| matches!(i, Lit::Str(_)))
                {
                    let set = items
                        .iter()
                        .filter_map(|i| match i {
                            Lit::Str(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect();
                    Ex::InStrSet(Box::new(needle), Box::new(set))
                } else {
                    Ex::In(Box::new([needle, hay]))
                }
            }
            (None, operators::INDEX, 2) => Ex::Index(self.boxed2(&args[0], &args[1])?),
            (None, "size", 1) => Ex::Size(Box::new(self.lower(&args[0])?)),
            (Some(t), "size", 0) => Ex::Size(Box::new(self.lower(t)?)),
            (Some(t), f @ ("startsWith" | "endsWith" | "contains"), 1) => {
                let op = match f {
                    "startsWith" => StrOp::StartsWith,
                    "endsWith" => StrOp::EndsWith,
                    _ => StrOp::Contains,
                };
                Ex::Str(op, self.boxed2(t, &args[0])?)
            }
            (Some(t), "matches", 1) => self.matches(t, &args[0])?,
            (None, "matches", 2) => self.matches(&args[0], &args[1])?,
            (None, f @ ("int" | "uint" | "double" | "string"), 1) => {
                let conv = match f {
                    "int" => Conv::Int,
                    "uint" => Conv::Uint,
                    "double" => Conv::Double,
                    _ => Conv::String,
                };
                Ex::Conv(conv, Box::new(self.lower(&args[0])?))
            }
            _ => {
                let _ = id;
                return unsupported(format!("function `{name}`"));
            }
        };
        Ok(ex)
    }

    fn matches(&self, subject: &IdedExpr, pattern: &IdedExpr) -> Result<Ex, Lower> {
        let s = self.lower(subject)?;
        let p = self.lower(pattern)?;
        if let Ex::Lit(Lit::Str(pat)) = &p {
            return match regex::RegexBuilder::new(pat)
                .size_limit(REGEX_SIZE_LIMIT)
                .dfa_size_limit(REGEX_SIZE_LIMIT)
                .build()
            {
                Ok(re) => Ok(match literal_plan(pat) {
                    Some((op, lit)) => Ex::Str(op, Box::new([s, Ex::Lit(Lit::Str(lit.into()))])),
                    None => Ex::Matches(Box::new(s), Box::new(re)),
                }),
                Err(err) => Err(self.invalid(
                    pattern.id,
                    format!(
                        "invalid regular expression: {}",
                        err.to_string().replace('\n', " ")
                    ),
                )),
            };
        }
        // A pattern from the event would be compiled for every event, and
        // its size would be the event's to choose.
        Err(self.invalid(
            pattern.id,
            "the pattern of matches() must be a constant string (a pattern built from the event would be compiled for every event)".into(),
        ))
    }
}

/// When a constant pattern only ever matches a literal, the string operation
/// that decides `matches` the same way: `"-prod\\.ngrok\\.dev"` is `contains`,
/// `"^/api"` is `startsWith`, `"\\.dev$"` is `endsWith`, `"^x$"` is equality.
/// Unanchored, a leading or trailing `X*` can always match empty, so it is
/// dropped (`".*-prod\\.ngrok\\.dev"` is `contains`).
pub fn literal_plan(pattern: &str) -> Option<(StrOp, String)> {
    use regex_syntax::hir::{Hir, HirKind, Look};
    let hir = regex_syntax::Parser::new().parse(pattern).ok()?;
    let items: &[Hir] = match hir.kind() {
        HirKind::Concat(xs) => xs,
        _ => std::slice::from_ref(&hir),
    };
    let (mut i, mut j) = (0, items.len());
    let (mut start, mut end) = (false, false);
    if i < j && matches!(items[i].kind(), HirKind::Look(Look::Start)) {
        start = true;
        i += 1;
    }
    if j > i && matches!(items[j - 1].kind(), HirKind::Look(Look::End)) {
        end = true;
        j -= 1;
    }
    let optional = |h: &Hir| matches!(h.kind(), HirKind::Repetition(r) if r.min == 0);
    if !start {
        while i < j && optional(&items[i]) {
            i += 1;
        }
    }
    if !end {
        while j > i && optional(&items[j - 1]) {
            j -= 1;
        }
    }
    let mut lit = Vec::new();
    for h in &items[i..j] {
        match h.kind() {
            HirKind::Literal(l) => lit.extend_from_slice(&l.0),
            HirKind::Empty => {}
            _ => return None,
        }
    }
    let lit = String::from_utf8(lit).ok()?;
    Some((
        match (start, end) {
            (false, false) => StrOp::Contains,
            (true, false) => StrOp::StartsWith,
            (false, true) => StrOp::EndsWith,
            (true, true) => StrOp::Equals,
        },
        lit,
    ))
}

fn cmp_op(op: &str) -> Option<CmpOp> {
    Some(match op {
        operators::EQUALS => CmpOp::Eq,
        operators::NOT_EQUALS => CmpOp::Ne,
        operators::LESS => CmpOp::Lt,
        operators::LESS_EQUALS => CmpOp::Le,
        operators::GREATER => CmpOp::Gt,
        operators::GREATER_EQUALS => CmpOp::Ge,
        _ => return None,
    })
}

fn arith_op(op: &str) -> Option<ArithOp> {
    Some(match op {
        operators::ADD => ArithOp::Add,
        operators::SUBSTRACT => ArithOp::Sub,
        operators::MULTIPLY => ArithOp::Mul,
        operators::DIVIDE => ArithOp::Div,
        operators::MODULO => ArithOp::Mod,
        _ => return None,
    })
}

/// Lowers a parsed expression for the fast evaluator.
pub fn lower(src: &str, p: &Parsed) -> Result<Ex, Lower> {
    Lowerer { src, info: &p.info }.lower(&p.expr)
}

/// Builds the trie of paths an expression reads.
pub fn reads(refs: &[Reference]) -> PathTrie {
    let mut t = PathTrie::default();
    for r in refs {
        t.insert(&r.path);
    }
    t
}

/// Writes an expression back as CEL source, fully parenthesized: what
/// `sluice check --filter` prints as the parsed expression.
pub fn unparse(e: &IdedExpr) -> String {
    let mut s = String::new();
    unparse_into(e, &mut s);
    s
}

fn lit_source(l: &LiteralValue) -> String {
    match l {
        LiteralValue::Boolean(b) => b.inner().to_string(),
        LiteralValue::Int(i) => i.inner().to_string(),
        LiteralValue::UInt(u) => format!("{}u", u.inner()),
        LiteralValue::Double(d) => {
            let s = format!("{:?}", d.inner());
            if s.contains(['.', 'e', 'E', 'N', 'i']) {
                s
            } else {
                format!("{s}.0")
            }
        }
        LiteralValue::String(s) => serde_json::to_string(s.inner()).unwrap_or_default(),
        LiteralValue::Bytes(b) => format!(
            "b{}",
            serde_json::to_string(&String::from_utf8_lossy(b.inner())).unwrap_or_default()
        ),
        LiteralValue::Null => "null".into(),
    }
}

fn unparse_into(e: &IdedExpr, s: &mut String) {
    match &e.expr {
        Expr::Literal(l) => s.push_str(&lit_source(l)),
        Expr::Ident(n) => s.push_str(n),
        Expr::Select(sel) => {
            if sel.test {
                s.push_str("has(");
                unparse_into(&sel.operand, s);
                s.push('.');
                s.push_str(&sel.field);
                s.push(')');
            } else {
                unparse_into(&sel.operand, s);
                s.push('.');
                s.push_str(&sel.field);
            }
        }
        Expr::Call(c) => {
            let infix = |op: &str| -> Option<&'static str> {
                Some(match op {
                    operators::LOGICAL_AND => "&&",
                    operators::LOGICAL_OR => "||",
                    operators::EQUALS => "==",
                    operators::NOT_EQUALS => "!=",
                    operators::LESS => "<",
                    operators::LESS_EQUALS => "<=",
                    operators::GREATER => ">",
                    operators::GREATER_EQUALS => ">=",
                    operators::ADD => "+",
                    operators::SUBSTRACT => "-",
                    operators::MULTIPLY => "*",
                    operators::DIVIDE => "/",
                    operators::MODULO => "%",
                    operators::IN => "in",
                    _ => return None,
                })
            };
            match (c.target.as_deref(), c.func_name.as_str(), c.args.as_slice()) {
                (None, op, [a, b]) if infix(op).is_some() => {
                    s.push('(');
                    unparse_into(a, s);
                    s.push(' ');
                    s.push_str(infix(op).unwrap_or("?"));
                    s.push(' ');
                    unparse_into(b, s);
                    s.push(')');
                }
                (None, operators::LOGICAL_NOT, [a]) => {
                    s.push('!');
                    unparse_into(a, s);
                }
                (None, operators::NEGATE, [a]) => {
                    s.push('-');
                    unparse_into(a, s);
                }
                (None, operators::CONDITIONAL, [a, b, c]) => {
                    s.push('(');
                    unparse_into(a, s);
                    s.push_str(" ? ");
                    unparse_into(b, s);
                    s.push_str(" : ");
                    unparse_into(c, s);
                    s.push(')');
                }
                (None, operators::INDEX, [a, b]) => {
                    unparse_into(a, s);
                    s.push('[');
                    unparse_into(b, s);
                    s.push(']');
                }
                (target, f, args) => {
                    if let Some(t) = target {
                        unparse_into(t, s);
                        s.push('.');
                    }
                    s.push_str(f);
                    s.push('(');
                    for (i, a) in args.iter().enumerate() {
                        if i > 0 {
                            s.push_str(", ");
                        }
                        unparse_into(a, s);
                    }
                    s.push(')');
                }
            }
        }
        Expr::List(l) => {
            s.push('[');
            for (i, x) in l.elements.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                unparse_into(x, s);
            }
            s.push(']');
        }
        Expr::Map(m) => {
            s.push('{');
            for (i, en) in m.entries.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                if let cel::common::ast::EntryExpr::MapEntry(me) = &en.expr {
                    unparse_into(&me.key, s);
                    s.push_str(": ");
                    unparse_into(&me.value, s);
                }
            }
            s.push('}');
        }
        Expr::Struct(st) => {
            s.push_str(&st.type_name);
            s.push_str("{...}");
        }
        Expr::Comprehension(c) => {
            s.push_str("__comprehension__(");
            unparse_into(&c.iter_range, s);
            s.push_str(", ");
            s.push_str(&c.iter_var);
            s.push_str(", ");
            unparse_into(&c.loop_step, s);
            s.push(')');
        }
        Expr::Unspecified => s.push_str("<unspecified>"),
    }
}
