//! The table of filter semantics in `data/filter_semantics.txt`: every case
//! is evaluated by the fast evaluator and by the `cel` crate's interpreter,
//! and both must give the expected verdict.

use sluice_engine::cel::{Filter, FilterOptions, Verdict};
use sluice_engine::internal::cel::eval_reference;
use sluice_engine::json::Json;
use std::collections::HashMap;

fn verdict_of(v: &Result<cel::Value, String>) -> Verdict {
    match v {
        Ok(cel::Value::Bool(true)) => Verdict::Match,
        Ok(cel::Value::Bool(false)) => Verdict::NoMatch,
        _ => Verdict::Error,
    }
}

#[test]
fn filter_semantics_table() {
    let text = include_str!("data/filter_semantics.txt");
    let mut events: HashMap<String, String> = HashMap::new();
    let mut failures = Vec::new();
    let mut cases = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("@event ") {
            let (name, json) = rest.split_once('=').expect("@event name = json");
            events.insert(name.trim().to_string(), json.trim().to_string());
            continue;
        }
        let mut parts = line.splitn(3, '|');
        let (want, ev, expr) = (
            parts.next().unwrap().trim(),
            parts.next().expect("event").trim(),
            parts.next().expect("expression").trim(),
        );
        if want == "refused" {
            cases += 1;
            if Filter::compile(expr, &FilterOptions::default()).is_ok() {
                failures.push(format!(
                    "line {}: `{expr}` compiles; it must be refused",
                    n + 1
                ));
            }
            continue;
        }
        let want = match want {
            "match" => Verdict::Match,
            "nomatch" => Verdict::NoMatch,
            "error" => Verdict::Error,
            other => panic!("line {}: bad expectation {other}", n + 1),
        };
        let json = events
            .get(ev)
            .unwrap_or_else(|| panic!("line {}: no event {ev}", n + 1));
        cases += 1;
        let f = match Filter::compile(expr, &FilterOptions::default()) {
            Ok(f) => f,
            Err(e) => {
                failures.push(format!("line {}: `{expr}` does not compile: {e}", n + 1));
                continue;
            }
        };
        let program = cel::Program::compile(expr).expect("the cel crate parses what we parse");
        let mut bytes = json.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut bytes).unwrap();
        let obj = Json::root(&tape.0).unwrap();
        let fast = f.matches(obj);
        let reference = verdict_of(&eval_reference(&program, obj));
        if fast != want || reference != want {
            failures.push(format!(
                "line {}: `{expr}` on {ev}: want {want:?}, ours {fast:?} ({:?}, {}), cel {reference:?} ({:?})",
                n + 1,
                f.evaluate(obj),
                if f.is_fast() { "fast" } else { "interpreter" },
                eval_reference(&program, obj)
            ));
        }
    }
    assert!(cases > 100, "only {cases} cases");
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
