//! What a filter may cost per event, decided before it is accepted.
//!
//! The fast evaluator has no loops: its work is bounded by the size of the
//! expression and of the event, and it counts the work that grows with the
//! event against [`FAST_STEP_BUDGET`] (see `eval.rs`). The `cel` crate's
//! interpreter, which runs the rest (comprehension macros, map literals,
//! ...), cannot be stopped once started, so its worst case is bounded here,
//! statically, and its input at run time:
//!
//! * [`interpreter_cost`] weighs every node by how many times it can run:
//!   a comprehension multiplies its body by the size of its range, which is
//!   known for a literal list or map and at most [`INTERPRETER_MAX_ELEMENTS`]
//!   for anything else (a field of the event, a computed list). Calls weigh
//!   [`CALL_WEIGHT`] (they may walk a whole string or list), logic and
//!   comparisons 1. A filter over [`INTERPRETER_MAX_COST`] is refused with the
//!   position of its costliest comprehension.
//! * The interpreter is fed the fields a filter reads only while they hold
//!   at most [`INTERPRETER_MAX_ELEMENTS`] elements per list or map and
//!   [`INTERPRETER_MAX_INPUT_BYTES`] of strings in all; a bigger event is a
//!   filter error for that filter, counted like any other (`fallback.rs`).
//!
//! Together: at most 10,000 weighted steps, each over at most 64 KiB.

use super::FilterError;
use super::compile::{Parsed, error_at};
use cel::common::ast::{EntryExpr, Expr, IdedExpr};

/// Most weighted steps one evaluation of an interpreted filter may take.
pub const INTERPRETER_MAX_COST: u64 = 10_000;
/// Weight of a function call that may walk a string or a collection.
pub const CALL_WEIGHT: u64 = 10;
/// Most elements of one list or map the interpreter is given (and the range
/// assumed for a comprehension over anything but a literal).
pub const INTERPRETER_MAX_ELEMENTS: usize = 256;
/// Most bytes of strings (keys and values) the interpreter is given per event.
pub const INTERPRETER_MAX_INPUT_BYTES: usize = 64 << 10;

/// Steps of the fast evaluator per event and filter for the work that grows
/// with the event (object members scanned, bytes searched, list elements
/// compared): an evaluation past it is a filter error ("step budget
/// exceeded"). Calibrated with the criterion bench `filter/step budget, spent
/// whole` to about 100 µs of work (113–133 µs on the 2-core reference
/// machine; see BENCHMARKS.md).
pub const FAST_STEP_BUDGET: u32 = 64_000;

/// Calls that do a bounded amount of work whatever their operands.
const CHEAP_CALLS: &[&str] = &[
    "_&&_",
    "_||_",
    "!_",
    "_?_:_",
    "@not_strictly_false",
    "_<_",
    "_<=_",
    "_>_",
    "_>=_",
    "-_",
    "_-_",
    "_*_",
    "_/_",
    "_%_",
    "int",
    "uint",
    "double",
    "bool",
    "has",
];

/// Refuses an interpreted filter whose worst case is over
/// [`INTERPRETER_MAX_COST`]. The expression's depth must already be bounded
/// (the walk recurses once per level).
pub fn check_interpreter_cost(src: &str, p: &Parsed) -> Result<(), FilterError> {
    let mut worst: Option<(u64, u64)> = None;
    let total = cost(&p.expr, 1, &mut worst);
    if total <= INTERPRETER_MAX_COST {
        return Ok(());
    }
    let (id, _) = worst.unwrap_or((p.expr.id, total));
    Err(error_at(
        src,
        &p.info,
        id,
        format!(
            "this filter may take about {total} steps per event in the cel interpreter (at most {INTERPRETER_MAX_COST}): a comprehension here runs its body once per element, {INTERPRETER_MAX_ELEMENTS} times for a list from the event; use fewer or smaller ranges"
        ),
    ))
}

/// The weighted steps of `e` run `mult` times; `worst` keeps the
/// comprehension with the highest total (id, cost) for the error's position.
fn cost(e: &IdedExpr, mult: u64, worst: &mut Option<(u64, u64)>) -> u64 {
    let own = |w: u64| mult.saturating_mul(w);
    match &e.expr {
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => own(1),
        Expr::Select(s) => own(1).saturating_add(cost(&s.operand, mult, worst)),
        Expr::List(l) => l
            .elements
            .iter()
            .fold(own(1), |a, x| a.saturating_add(cost(x, mult, worst))),
        Expr::Map(m) => m.entries.iter().fold(own(1), |a, en| {
            a.saturating_add(entry_cost(&en.expr, mult, worst))
        }),
        Expr::Struct(st) => st.entries.iter().fold(own(1), |a, en| {
            a.saturating_add(entry_cost(&en.expr, mult, worst))
        }),
        Expr::Call(c) => {
            let w = if CHEAP_CALLS.contains(&c.func_name.as_str()) {
                1
            } else {
                CALL_WEIGHT
            };
            c.target
                .iter()
                .map(|t| &**t)
                .chain(c.args.iter())
                .fold(own(w), |a, x| a.saturating_add(cost(x, mult, worst)))
        }
        Expr::Comprehension(c) => {
            let n = range_size(&c.iter_range);
            let inner = mult.saturating_mul(n);
            let body =
                cost(&c.loop_cond, inner, worst).saturating_add(cost(&c.loop_step, inner, worst));
            let total = own(1)
                .saturating_add(cost(&c.iter_range, mult, worst))
                .saturating_add(cost(&c.accu_init, mult, worst))
                .saturating_add(body)
                .saturating_add(cost(&c.result, mult, worst));
            if worst.is_none_or(|(_, w)| total > w) {
                *worst = Some((e.id, total));
            }
            total
        }
    }
}

fn entry_cost(en: &EntryExpr, mult: u64, worst: &mut Option<(u64, u64)>) -> u64 {
    match en {
        EntryExpr::MapEntry(me) => {
            cost(&me.key, mult, worst).saturating_add(cost(&me.value, mult, worst))
        }
        EntryExpr::StructField(f) => cost(&f.value, mult, worst),
    }
}

/// How many elements a comprehension's range can have.
fn range_size(e: &IdedExpr) -> u64 {
    match &e.expr {
        Expr::List(l) => l.elements.len() as u64,
        Expr::Map(m) => m.entries.len() as u64,
        // A list made by `map` or `filter` has at most its range's size.
        Expr::Comprehension(c) => range_size(&c.iter_range),
        // Concatenated lists.
        Expr::Call(c) if c.func_name == "_+_" && c.target.is_none() && c.args.len() == 2 => {
            range_size(&c.args[0]).saturating_add(range_size(&c.args[1]))
        }
        // The event's lists and maps are given to the interpreter only up
        // to this size; anything else computed is assumed as big.
        _ => INTERPRETER_MAX_ELEMENTS as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Filter, FilterOptions};

    fn compile(src: &str) -> Result<Filter, String> {
        Filter::compile(src, &FilterOptions::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn nested_comprehensions_over_big_ranges_are_refused_where_they_are() {
        let list = format!(
            "[{}]",
            (0..200)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        // Four levels of 200 elements: 1.6e9 runs of the innermost body.
        let src = format!(
            "{list}.all(a, {list}.all(b, {list}.all(c, {list}.all(d, a + b + c + d >= 0))))"
        );
        let e = compile(&src).unwrap_err();
        assert!(e.contains("steps per event"), "{e}");
        assert!(e.starts_with("1:"), "the position is given: {e}");
        // Two levels over the event's lists: 65,536 runs.
        let e = compile("ev.a.exists(x, ev.b.exists(y, x == y))").unwrap_err();
        assert!(e.contains("steps per event"), "{e}");
    }

    #[test]
    fn ordinary_comprehensions_are_accepted() {
        for src in [
            "ev.http.request.headers.exists(k, k.startsWith('x-'))",
            "[1, 2, 3].all(x, x > 0)",
            "ev.tags.filter(t, t == 'a').size() > 0",
            "{'a': 1}.exists(k, k == 'a') && ev.a.map(x, x * 2).exists(y, y > 2)",
        ] {
            let f = compile(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert!(!f.is_fast(), "{src} needs the interpreter");
        }
    }

    fn on<T>(json: &str, f: impl FnOnce(crate::json::Json<'_, '_>) -> T) -> T {
        let mut bytes = json.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut bytes).unwrap();
        f(crate::json::Json::root(&tape.0).unwrap())
    }

    #[test]
    fn the_fast_path_stops_at_its_step_budget_and_says_so() {
        use super::super::Verdict;
        // An object of 200,000 members and a filter that looks for absent
        // ones 800 times: 160 million members scanned without a budget.
        let mut big = String::from("{");
        for i in 0..200_000 {
            big.push_str(&format!("\"k{i}\":0,"));
        }
        big.push_str("\"last\":1}");
        let src = (0..800)
            .map(|i| format!("has(ev.a{i})"))
            .collect::<Vec<_>>()
            .join(" || ");
        let f = compile(&src).unwrap();
        assert!(f.is_fast());
        let started = std::time::Instant::now();
        let (verdict, value) = on(&big, |o| (f.matches(o), f.evaluate(o)));
        assert_eq!(verdict, Verdict::Error);
        assert_eq!(value.unwrap_err(), super::super::eval::OUT_OF_STEPS);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "stopped early: {:?}",
            started.elapsed()
        );
        // The same filter on an ordinary event is decided as before.
        let ok = on(r#"{"a7":1}"#, |o| f.matches(o));
        assert_eq!(ok, Verdict::Match);
        // A budget exhausted on one evaluation does not leak into the next.
        let small = compile("ev.last == 1").unwrap();
        assert_eq!(on(r#"{"last":1}"#, |o| small.matches(o)), Verdict::Match);
    }

    #[test]
    fn regexes_have_a_size_limit_and_a_constant_pattern() {
        let e = compile(r#"ev.s.matches("(a{1000}){1000}")"#).unwrap_err();
        assert!(e.contains("invalid regular expression"), "{e}");
        let e = compile("ev.s.matches(ev.p)").unwrap_err();
        assert!(e.contains("must be a constant string"), "{e}");
        compile(r#"ev.s.matches("^[a-z]{1,64}$")"#).unwrap();
    }

    #[test]
    fn the_interpreter_is_not_fed_events_over_its_input_limits() {
        use super::super::Verdict;
        let f = compile("ev.l.exists(x, x == 1)").unwrap();
        assert!(!f.is_fast());
        let long = format!(
            "{{\"l\":[{}1]}}",
            "0,".repeat(super::INTERPRETER_MAX_ELEMENTS)
        );
        assert_eq!(on(&long, |o| f.matches(o)), Verdict::Error);
        let e = on(&long, |o| f.evaluate(o)).unwrap_err();
        assert!(e.contains("too big for the cel interpreter"), "{e}");
        assert_eq!(on(r#"{"l":[0,1]}"#, |o| f.matches(o)), Verdict::Match);
    }
}
