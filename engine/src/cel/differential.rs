//! The differential oracle: Sluice's filter against the `cel` crate's
//! interpreter given the whole object. Used by the differential tests, the
//! fuzz target and the corpus replay.

use super::fallback::eval_reference;
use super::{Filter, FilterOptions};
use crate::json::Json;

/// What a comparison found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agreement {
    /// Neither side accepts the expression.
    BothRefuse,
    /// Sluice refused at compile time what the interpreter accepts and fails
    /// on at run time: an invalid constant regex, or a variable other than
    /// `ev` (as cel-go's type checker refuses undeclared references); or
    /// what the interpreter would run at a cost over Sluice's limits
    /// (`cel::cost`).
    RefusedAtCompileTime,
    /// The event is over what this filter may cost (`cel::cost`: the
    /// interpreter's input limits, the fast path's step budget): Sluice
    /// answers a filter error, the reference a value.
    OverInputLimits,
    /// Both produced the same value (`true` if it is a value, not an error).
    Same {
        /// Whether the result was a value rather than an error.
        value: bool,
        /// Whether the value was `true`.
        truth: bool,
        /// Whether Sluice ran it on the fast path.
        fast: bool,
    },
}

/// Equality of CEL values where NaN equals NaN.
pub fn same_value(a: &cel::Value, b: &cel::Value) -> bool {
    use cel::Value as V;
    match (a, b) {
        (V::Float(x), V::Float(y)) => (x.is_nan() && y.is_nan()) || x == y,
        (V::List(x), V::List(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| same_value(p, q))
        }
        _ => a == b,
    }
}

/// Compiles `expr` both ways and evaluates it on each JSON object of
/// `objects` (inputs that are not JSON objects are skipped). `Err` describes
/// the first disagreement.
pub fn compare(expr: &str, objects: &[&[u8]]) -> Result<Vec<Agreement>, String> {
    let theirs_prog = cel::Program::compile(expr);
    let ours = Filter::compile(expr, &FilterOptions::default());
    let (program, f) = match (theirs_prog, ours) {
        (Err(_), Err(_)) => return Ok(vec![Agreement::BothRefuse]),
        (Err(_), Ok(_)) => return Err(format!("we accept `{expr}`, cel does not")),
        (Ok(_), Err(e))
            if e.message.contains("invalid regular expression")
                || e.message.starts_with("unknown variable")
                || e.message.contains("steps per event")
                || e.message.contains("must be a constant string") =>
        {
            return Ok(vec![Agreement::RefusedAtCompileTime]);
        }
        (Ok(_), Err(e)) => return Err(format!("we refuse `{expr}`: {e}")),
        (Ok(p), Ok(f)) => (p, f),
    };
    let mut out = Vec::with_capacity(objects.len());
    for object in objects {
        let mut bytes = object.to_vec();
        let Ok(tape) = simd_json::to_tape(&mut bytes) else {
            continue;
        };
        let Some(obj) = Json::root(&tape.0).filter(|j| j.is_object()) else {
            continue;
        };
        let ours = f.evaluate(obj);
        let theirs = eval_reference(&program, obj);
        out.push(match (&ours, &theirs) {
            (Err(e), _)
                if e.starts_with(super::fallback::TOO_BIG) || e == super::eval::OUT_OF_STEPS =>
            {
                Agreement::OverInputLimits
            }
            (Err(_), Err(_)) => Agreement::Same {
                value: false,
                truth: false,
                fast: f.is_fast(),
            },
            (Ok(a), Ok(b)) if same_value(a, b) => Agreement::Same {
                value: true,
                truth: *b == cel::Value::Bool(true),
                fast: f.is_fast(),
            },
            _ => {
                return Err(format!(
                    "`{expr}` ({}) on {}:\n  ours {ours:?}\n  cel  {theirs:?}",
                    if f.is_fast() {
                        "fast path"
                    } else {
                        "interpreter"
                    },
                    String::from_utf8_lossy(object)
                ));
            }
        });
    }
    Ok(out)
}
