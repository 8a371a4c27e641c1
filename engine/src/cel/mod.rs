//! CEL filters over events.
//!
//! A filter is a CEL boolean expression in which `ev` is the event's `object`.
//! [`Filter::compile`] parses it once (with the `cel` crate's parser), checks
//! that it reads only `ev` and only fields the event type has, and lowers it to
//! a tree that [`Filter::matches`] evaluates straight against the parsed event
//! on the simd-json tape: no conversion into CEL values, regexes compiled once,
//! constants folded, no allocation unless the expression builds strings or
//! lists. What the fast evaluator does not cover (comprehension macros,
//! timestamps, map literals, ...) runs in the `cel` crate's interpreter,
//! fed only the fields the expression reads.
//!
//! A missing field or a type error makes the filter fail: the event is not
//! matched and the failure is counted as a filter error.
//!
//! ```
//! use sluice_engine::cel::{Filter, FilterOptions, Verdict};
//!
//! let f = Filter::compile(r#"ev.conn.server_port == 443 && ev.conn.server_name.endsWith(".ngrok.app")"#,
//!                         &FilterOptions::default()).unwrap();
//! assert!(f.is_fast());
//! let mut event = br#"{"conn":{"server_port":443,"server_name":"a.ngrok.app"}}"#.to_vec();
//! let tape = simd_json::to_tape(&mut event).unwrap();
//! let object = sluice_engine::json::Json::root(&tape.0).unwrap();
//! assert_eq!(f.matches(object), Verdict::Match);
//! ```

pub(crate) mod compile;
pub(crate) mod cost;
pub(crate) mod differential;
pub(crate) mod eval;
pub(crate) mod fallback;

use crate::events::EventTypeId;
use crate::json::Json;
use compile::Lower;
use eval::{Ex, V};
use fallback::Fallback;

/// The outcome of a filter on one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The expression is `true`: deliver.
    Match,
    /// The expression is `false`: skip.
    NoMatch,
    /// The expression failed (missing field, type error) or is not a bool:
    /// skip, and count a filter error.
    Error,
}

/// A filter that does not compile: what is wrong and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError {
    /// What is wrong.
    pub message: String,
    /// 1-based line of the offending position.
    pub line: usize,
    /// 1-based column (in characters) of the offending position.
    pub column: usize,
    /// The filter's source.
    pub source: String,
}

impl FilterError {
    /// The source line of the error with a caret under the position.
    pub fn snippet(&self) -> String {
        let line = self
            .source
            .lines()
            .nth(self.line.saturating_sub(1))
            .unwrap_or("");
        format!(
            "  | {line}\n  | {}^",
            " ".repeat(self.column.saturating_sub(1))
        )
    }
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}\n{}",
            self.line,
            self.column,
            self.message,
            self.snippet()
        )
    }
}

impl std::error::Error for FilterError {}

/// How to compile a filter.
#[derive(Clone, Copy, Debug, Default)]
pub struct FilterOptions {
    /// The event type the filter applies to: enables checking of the fields
    /// it reads against the registry.
    pub event_type: Option<EventTypeId>,
    /// Allow only the fields ngrok allows in filters (the four `conn.*`
    /// address fields).
    pub strict_ngrok: bool,
}

/// How a compiled filter runs.
#[derive(Debug)]
enum Plan {
    Fast(Ex),
    Fallback(Fallback, String),
}

/// A compiled filter.
#[derive(Debug)]
pub struct Filter {
    source: String,
    parsed: String,
    plan: Plan,
    reads: Vec<String>,
    warnings: Vec<String>,
}

impl Filter {
    /// Compiles `source`, or explains why it does not compile. Runs on a
    /// thread of its own with a stack big enough for the deepest source the
    /// parser accepts (`PARSE_STACK_BYTES`), so no filter text can
    /// overflow the caller's stack; blocks until it is done.
    pub fn compile(source: &str, opts: &FilterOptions) -> Result<Filter, FilterError> {
        let failed = |message: String| FilterError {
            message,
            line: 1,
            column: 1,
            source: source.chars().take(200).collect(),
        };
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("sluice-filter-compile".into())
                .stack_size(compile::PARSE_STACK_BYTES)
                .spawn_scoped(scope, || Filter::compile_here(source, opts))
                .map_err(|e| failed(format!("cannot start the filter compiler: {e}")))?
                .join()
                .unwrap_or_else(|_| {
                    Err(failed(
                        "the filter compiler failed (a bug): please report this filter".into(),
                    ))
                })
        })
    }

    /// [`Filter::compile`] on the calling thread's stack.
    fn compile_here(source: &str, opts: &FilterOptions) -> Result<Filter, FilterError> {
        let parsed = compile::parse(source)?;
        // Everything below recurses over the tree: bound its depth first.
        compile::check_depth(source, &parsed, compile::MAX_DEPTH, "")?;
        let refs = compile::references(source, &parsed)?;
        let mut unknown: Vec<String> = Vec::new();
        if let Some(t) = opts.event_type {
            for r in &refs {
                let checked = compile::check_path(t.def(), &r.path, opts.strict_ngrok);
                if let Ok(false) = checked {
                    continue;
                }
                let (line, column) = parsed
                    .info
                    .offset_for(r.id)
                    .map(|(s, _)| compile::line_col(source, s as usize))
                    .unwrap_or((1, 1));
                match checked {
                    Err(message) => {
                        return Err(FilterError {
                            message,
                            line,
                            column,
                            source: source.to_string(),
                        });
                    }
                    Ok(true) => {
                        let name = format!(
                            "`{}` at {line}:{column}",
                            crate::events::shown_path(&r.path.join("."))
                        );
                        if !unknown.contains(&name) {
                            unknown.push(name);
                        }
                    }
                    Ok(false) => {}
                }
            }
        }
        let warnings: Vec<String> = opts
            .event_type
            .and_then(|t| crate::events::unknown_paths_warning(t.def(), &unknown))
            .into_iter()
            .collect();
        let mut reads: Vec<String> = refs
            .iter()
            .map(|r| {
                if r.path.is_empty() {
                    "ev".to_string()
                } else {
                    format!("ev.{}", r.path.join("."))
                }
            })
            .collect();
        reads.sort();
        reads.dedup();
        let plan = match compile::lower(source, &parsed) {
            Ok(ex) => Plan::Fast(ex),
            Err(Lower::Invalid(e)) => return Err(e),
            Err(Lower::Unsupported(why)) => {
                compile::check_depth(
                    source,
                    &parsed,
                    compile::MAX_INTERPRETER_DEPTH,
                    &format!(" for the cel interpreter, which this filter needs ({why})"),
                )?;
                cost::check_interpreter_cost(source, &parsed)?;
                let program = cel::Program::compile(source).map_err(|e| FilterError {
                    message: e.to_string(),
                    line: 1,
                    column: 1,
                    source: source.to_string(),
                })?;
                Plan::Fallback(Fallback::new(program, compile::reads(&refs)), why)
            }
        };
        Ok(Filter {
            source: source.to_string(),
            parsed: compile::unparse(&parsed.expr),
            plan,
            reads,
            warnings,
        })
    }

    /// The filter as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The parsed expression, fully parenthesized.
    pub fn parsed(&self) -> &str {
        &self.parsed
    }

    /// Whether the fast evaluator runs it (else the `cel` interpreter does).
    pub fn is_fast(&self) -> bool {
        matches!(self.plan, Plan::Fast(_))
    }

    /// Why the filter runs in the interpreter, if it does.
    pub fn fallback_reason(&self) -> Option<&str> {
        match &self.plan {
            Plan::Fast(_) => None,
            Plan::Fallback(_, why) => Some(why),
        }
    }

    /// The paths of `ev` the filter reads (`ev.conn.server_name`, ...).
    pub fn reads(&self) -> &[String] {
        &self.reads
    }

    /// At most one warning naming the paths the filter reads that the
    /// registry does not know (with their line:column): accepted and
    /// evaluated on what each event carries, but worth a look (`sluice check`
    /// prints it, `sluice run` and `sluice serve` log it). Empty when there
    /// are none or when compiled without an event type.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Evaluates the filter with `ev` bound to `object`.
    #[inline]
    pub fn matches(&self, object: Json<'_, '_>) -> Verdict {
        match &self.plan {
            Plan::Fast(ex) => {
                eval::start_budget(cost::FAST_STEP_BUDGET);
                verdict_of(eval::eval(ex, object))
            }
            Plan::Fallback(fb, _) => match fb.eval(object) {
                Ok(cel::Value::Bool(true)) => Verdict::Match,
                Ok(cel::Value::Bool(false)) => Verdict::NoMatch,
                _ => Verdict::Error,
            },
        }
    }

    /// The members of `ev` that the filter's first `&&` operand reads
    /// ([`eval::first_conjunct`]; `None`: the filter runs in the
    /// interpreter, or that operand reads `ev` whole). The on-demand reader
    /// reads these first.
    pub(crate) fn first_members(&self) -> Option<Vec<&str>> {
        let Plan::Fast(ex) = &self.plan else {
            return None;
        };
        let mut out = Vec::new();
        eval::members_read(eval::first_conjunct(ex), &mut out).then_some(out)
    }

    /// The filter's first `&&` operand evaluated on `object` as
    /// [`Filter::matches`] evaluates it first, on a fresh budget (`None`:
    /// the filter runs in the interpreter).
    #[inline]
    pub(crate) fn first_conjunct(&self, object: Json<'_, '_>) -> Option<First> {
        let Plan::Fast(ex) = &self.plan else {
            return None;
        };
        let first = eval::first_conjunct(ex);
        // The commonest operands without the interpreter: what it would
        // make of them, with the whole budget left (and not kept).
        if let Some(value) = eval::Quick::of(first).and_then(|q| q.decide(object)) {
            return Some(First {
                value: Ok(value),
                steps_left: cost::FAST_STEP_BUDGET,
            });
        }
        eval::start_budget(cost::FAST_STEP_BUDGET);
        let value = match eval::eval(first, object) {
            V::Bool(b) => Ok(b),
            V::Err(e) => Err(e),
            // Not a bool: an error to `&&` (and to `Filter::matches`).
            _ => Err("no matching overload for &&"),
        };
        Some(First {
            value,
            steps_left: eval::steps_left(),
        })
    }

    /// Whether the filter's first `&&` operand is `false` on `object`, so
    /// that the filter is too, whatever else `object` holds (an operand
    /// that ran out of steps decides nothing).
    #[inline]
    pub(crate) fn first_conjunct_rejects(&self, object: Json<'_, '_>) -> bool {
        self.first_conjunct(object).is_some_and(|f| f.rejects())
    }

    /// [`Filter::matches`] of `object` given what its first `&&` operand
    /// made of (an object holding the same values of) it: the same verdict,
    /// without evaluating that operand again.
    #[inline]
    pub(crate) fn matches_given(&self, object: Json<'_, '_>, first: First) -> Verdict {
        let Plan::Fast(ex) = &self.plan else {
            return self.matches(object);
        };
        eval::start_budget(first.steps_left);
        let first = first.value.map_or_else(V::Err, V::Bool);
        verdict_of(eval::eval_given_first(ex, object, first))
    }

    /// Evaluates the filter and returns its value as a CEL value, or the
    /// error: for `sluice check` and for differential testing.
    pub fn evaluate(&self, object: Json<'_, '_>) -> Result<cel::Value, String> {
        match &self.plan {
            Plan::Fast(ex) => {
                eval::start_budget(cost::FAST_STEP_BUDGET);
                let v = eval::eval(ex, object);
                if eval::out_of_steps() {
                    return Err(eval::OUT_OF_STEPS.to_string());
                }
                to_cel_value(&v)
            }
            Plan::Fallback(fb, _) => fb.eval(object),
        }
    }
}

/// The verdict of a fast evaluation's value.
#[inline(always)]
fn verdict_of(v: V<'_>) -> Verdict {
    match v {
        // A value decided after running out (absorbed by `||` or `&&`) is
        // an overrun all the same.
        _ if eval::out_of_steps() => Verdict::Error,
        V::Bool(true) => Verdict::Match,
        V::Bool(false) => Verdict::NoMatch,
        _ => Verdict::Error,
    }
}

/// What a filter's first `&&` operand made of an event
/// ([`Filter::first_conjunct`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct First {
    /// Its value as `&&` takes it: a bool or an error.
    value: Result<bool, eval::EvalError>,
    /// The steps it left of the budget.
    steps_left: u32,
}

impl First {
    /// Whether it decides that the filter does not match.
    pub(crate) fn rejects(&self) -> bool {
        self.value == Ok(false) && self.steps_left > 0
    }
}

/// Converts a fast-evaluator value into a CEL value.
pub fn to_cel_value(v: &V<'_>) -> Result<cel::Value, String> {
    use std::sync::Arc;
    Ok(match v {
        V::Null => cel::Value::Null,
        V::Bool(b) => cel::Value::Bool(*b),
        V::Int(i) => cel::Value::Int(*i),
        V::Uint(u) => cel::Value::UInt(*u),
        V::Double(d) => cel::Value::Float(*d),
        V::Str(s) => cel::Value::String(Arc::new((*s).to_string())),
        V::String(s) => cel::Value::String(Arc::new(s.clone())),
        V::Json(j) => fallback::to_cel(*j),
        V::Lits(l) => {
            let items: Result<Vec<_>, _> = l.iter().map(|x| to_cel_value(&lit_value(x))).collect();
            cel::Value::List(Arc::new(items?))
        }
        V::List(l) => {
            let items: Result<Vec<_>, _> = l.iter().map(to_cel_value).collect();
            cel::Value::List(Arc::new(items?))
        }
        V::Err(e) => return Err((*e).to_string()),
    })
}

fn lit_value(l: &eval::Lit) -> V<'_> {
    match l {
        eval::Lit::Null => V::Null,
        eval::Lit::Bool(b) => V::Bool(*b),
        eval::Lit::Int(i) => V::Int(*i),
        eval::Lit::Uint(u) => V::Uint(*u),
        eval::Lit::Double(d) => V::Double(*d),
        eval::Lit::Str(s) => V::Str(s),
        eval::Lit::List(l) => V::Lits(l),
    }
}

#[cfg(test)]
mod tests;
