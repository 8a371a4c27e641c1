use super::*;
use crate::events::EventTypeId;

fn with_object<R>(json: &str, f: impl FnOnce(Json<'_, '_>) -> R) -> R {
    let mut b = json.as_bytes().to_vec();
    let tape = simd_json::to_tape(&mut b).unwrap();
    f(Json::root(&tape.0).unwrap())
}

fn verdict(expr: &str, obj: &str) -> Verdict {
    let f = Filter::compile(expr, &FilterOptions::default()).unwrap();
    with_object(obj, |o| f.matches(o))
}

const OBJ: &str = r#"{"conn":{"server_name":"api-prod.ngrok.dev","server_port":443,"client_ip":"10.0.0.1"},"http":{"response":{"status_code":503},"request":{"headers":{"User-Agent":["curl/8"]}}}}"#;

#[test]
fn docs_examples_evaluate() {
    assert_eq!(
        verdict(
            r#"ev.conn.server_name.matches(".*-prod\\.ngrok\\.dev") && ev.http.response.status_code >= 500"#,
            OBJ
        ),
        Verdict::Match
    );
    assert_eq!(
        verdict(
            r#"ev.conn.server_name.matches(".*-your-org\\.ngrok\\.dev") && ev.conn.server_port == 80"#,
            OBJ
        ),
        Verdict::NoMatch
    );
    assert_eq!(
        verdict(
            r#"ev.conn.client_ip != "2601:0:8200:0:4cd7:fd52:0:7823" && ev.conn.server_name == "api-prod.ngrok.dev""#,
            OBJ
        ),
        Verdict::Match
    );
}

#[test]
fn missing_fields_are_errors_and_absorbed_by_short_circuit() {
    assert_eq!(verdict("ev.nope == 1", OBJ), Verdict::Error);
    assert_eq!(
        verdict("ev.nope == 1 || ev.conn.server_port == 443", OBJ),
        Verdict::Match
    );
    assert_eq!(
        verdict("ev.nope == 1 && ev.conn.server_port == 80", OBJ),
        Verdict::NoMatch
    );
    assert_eq!(
        verdict("ev.nope == 1 && ev.conn.server_port == 443", OBJ),
        Verdict::Error
    );
    assert_eq!(verdict("has(ev.conn.nope)", OBJ), Verdict::NoMatch);
    assert_eq!(
        verdict("ev.conn.server_port", OBJ),
        Verdict::Error,
        "not a bool"
    );
}

#[test]
fn compile_errors_carry_the_position() {
    let e = Filter::compile("ev.conn.server_port == ", &FilterOptions::default()).unwrap_err();
    assert_eq!(e.line, 1);
    assert!(e.column >= 23, "{e}");
    let e = Filter::compile("foo.bar == 1", &FilterOptions::default()).unwrap_err();
    assert_eq!((e.line, e.column), (1, 1), "{e}");
    assert!(e.message.contains("unknown variable `foo`"));
    let e = Filter::compile(
        "ev.conn.server_name.matches('(')",
        &FilterOptions::default(),
    )
    .unwrap_err();
    assert!(e.message.contains("invalid regular expression"), "{e}");
    assert_eq!(e.column, 29, "{e}");
    let opts = FilterOptions {
        event_type: EventTypeId::from_name("http_request_complete.v0"),
        strict_ngrok: false,
    };
    let e = Filter::compile("ev.conn.server_nam == 'x'", &opts).unwrap_err();
    assert!(e.message.contains("did you mean `conn.server_name`"), "{e}");
    let snippet = e.to_string();
    assert!(
        snippet.contains("| ev.conn.server_nam == 'x'\n  | ^"),
        "{snippet}"
    );
}

#[test]
fn uncovered_constructs_fall_back_with_only_the_fields_they_read() {
    let f = Filter::compile(
        r#"ev.http.request.headers.exists(k, k == "User-Agent")"#,
        &FilterOptions::default(),
    )
    .unwrap();
    assert!(!f.is_fast());
    assert!(f.fallback_reason().unwrap().contains("comprehension"));
    assert_eq!(f.reads(), ["ev.http.request.headers"]);
    with_object(OBJ, |o| assert_eq!(f.matches(o), Verdict::Match));
}

#[test]
fn constants_fold_and_string_sets_hash() {
    let f = Filter::compile(
        r#"ev.conn.server_port == 400 + 43 && ev.conn.client_ip in ["10.0.0.1", "10.0.0.2"]"#,
        &FilterOptions::default(),
    )
    .unwrap();
    assert!(f.is_fast());
    with_object(OBJ, |o| assert_eq!(f.matches(o), Verdict::Match));
    match &f.plan {
        Plan::Fast(Ex::And(xs)) => {
            assert!(
                matches!(&xs[0], Ex::Cmp(_, b) if matches!(b[1], Ex::Lit(eval::Lit::Int(443))))
            );
            assert!(matches!(&xs[1], Ex::InStrSet(..)));
        }
        other => panic!("unexpected plan {other:?}"),
    }
}

#[test]
fn parsed_expression_is_printed_fully_parenthesized() {
    let f = Filter::compile(
        "ev.a == 1 && !(ev.b < 2.5) || ev.c in [1u, 'x']",
        &FilterOptions::default(),
    )
    .unwrap();
    assert_eq!(
        f.parsed(),
        r#"(((ev.a == 1) && !(ev.b < 2.5)) || (ev.c in [1u, "x"]))"#
    );
}

#[test]
fn literal_patterns_become_string_operations() {
    use compile::literal_plan;
    use eval::StrOp::*;
    let plan = literal_plan;
    assert_eq!(
        plan(r".*-prod\.ngrok\.dev"),
        Some((Contains, "-prod.ngrok.dev".into()))
    );
    assert_eq!(
        plan(r"ngrok-docs-examples\.ngrok\.dev"),
        Some((Contains, "ngrok-docs-examples.ngrok.dev".into()))
    );
    assert_eq!(plan("^/api/"), Some((StartsWith, "/api/".into())));
    assert_eq!(plan(r"\.dev$"), Some((EndsWith, ".dev".into())));
    assert_eq!(plan("^get$"), Some((Equals, "get".into())));
    assert_eq!(plan(".*"), Some((Contains, String::new())));
    assert_eq!(plan("[a-z]*x.*"), Some((Contains, "x".into())));
    assert_eq!(plan("^.*x"), None, "anchored .* does not cross newlines");
    assert_eq!(plan("a|b"), None);
    assert_eq!(plan("(?i)abc"), None);
    assert_eq!(plan("(?m)^abc"), None);
    assert_eq!(plan("a+b"), None);
    let f = Filter::compile(
        r#"ev.s.matches(".*-prod\\.ngrok\\.dev")"#,
        &FilterOptions::default(),
    )
    .unwrap();
    assert!(
        matches!(&f.plan, Plan::Fast(Ex::Str(Contains, _))),
        "{:?}",
        f.plan
    );
    // Same answers as the regex, including on non-strings and newlines.
    for (obj, want) in [
        (r#"{"s":"a-prod.ngrok.dev"}"#, Verdict::Match),
        (r#"{"s":"x\n-prod.ngrok.dev"}"#, Verdict::Match),
        (r#"{"s":"a-prodXngrok.dev"}"#, Verdict::NoMatch),
        (r#"{"s":5}"#, Verdict::Error),
    ] {
        with_object(obj, |o| assert_eq!(f.matches(o), want, "{obj}"));
    }
}

/// Runs `f` on a thread with a small stack, as a tokio worker or an API
/// handler has, and returns what it returned.
fn on_small_stack<R: Send>(stack: usize, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(stack)
            .spawn_scoped(s, f)
            .unwrap()
            .join()
            .unwrap()
    })
}

/// No filter text can overflow the stack of whoever compiles it: the deepest
/// sources that fit in the size limit are refused with the position where
/// they get too deep, from a thread with a 256 KiB stack.
#[test]
fn deep_filters_are_refused_without_overflowing_any_stack() {
    let n = 5_000;
    let cases = [
        ("plus", format!("{} > 0", vec!["1"; n].join("+"))),
        ("parens", format!("{}1{} > 0", "(".repeat(n), ")".repeat(n))),
        ("lists", format!("{}{} == []", "[".repeat(n), "]".repeat(n))),
        ("select", format!("ev{} == 1", ".a".repeat(n))),
        (
            "calls",
            format!("{}\"x\"{} > 0", "size(".repeat(n / 3), ")".repeat(n / 3)),
        ),
    ];
    for (name, src) in cases {
        assert!(
            src.len() <= compile::MAX_SOURCE_BYTES,
            "{name}: {}",
            src.len()
        );
        let r = on_small_stack(256 << 10, || {
            Filter::compile(&src, &FilterOptions::default()).map(|_| ())
        });
        let e = r.expect_err(name);
        // Ours, or the parser's own limit on nested groups.
        assert!(
            e.message.contains("nested more than 256 levels")
                || e.message.contains("Recursion limit"),
            "{name}: {e}"
        );
    }
    // Repeated negations collapse and `||`/`&&` chains are balanced by the
    // parser (as in cel-go): long, not deep, and accepted.
    for src in [
        format!("{}true", "!".repeat(3 * n)),
        vec!["ev.a == 1"; 1_200].join(" || "),
    ] {
        let r = on_small_stack(256 << 10, || {
            Filter::compile(&src, &FilterOptions::default()).map(|_| ())
        });
        assert!(r.is_ok(), "{r:?}");
    }
    // The plus chain is refused for its depth, at a position inside it.
    let e = Filter::compile(
        &format!("{} > 0", vec!["1"; n].join("+")),
        &FilterOptions::default(),
    )
    .unwrap_err();
    assert!(e.message.contains("nested more than 256 levels"), "{e}");
}

/// Filters just under the depth limits (the fast path's and the
/// interpreter's) compile, evaluate and are dropped on a thread with the
/// default 2 MiB stack of the engine's workers. (An `||` chain is balanced by
/// the parser, so depth takes a `+` chain.)
#[test]
fn the_deepest_accepted_filter_runs_on_a_worker_sized_stack() {
    // `>`, then k additions, then the three levels of `ev.conn.server_port`.
    let chain = |k: usize| format!("ev.conn.server_port{} > 199", " + 0".repeat(k));
    let src = chain(compile::MAX_DEPTH - 4);
    assert!(
        Filter::compile(&chain(compile::MAX_DEPTH - 3), &FilterOptions::default()).is_err(),
        "the test filter is at the limit"
    );
    let f = Filter::compile(&src, &FilterOptions::default()).unwrap();
    // The interpreter has a lower limit of its own (one level more for the `||`).
    let interp_at = |k: usize| {
        Filter::compile(
            &format!("{} || ev.conn.ports.exists(p, p == 443)", chain(k)),
            &FilterOptions::default(),
        )
    };
    let e = interp_at(compile::MAX_INTERPRETER_DEPTH - 4).unwrap_err();
    assert!(e.message.contains("for the cel interpreter"), "{e}");
    let interp = interp_at(compile::MAX_INTERPRETER_DEPTH - 5).unwrap();
    assert!(!interp.is_fast());
    on_small_stack(2 << 20, move || {
        with_object(r#"{"conn":{"server_port":200,"ports":[443]}}"#, |o| {
            assert_eq!(f.matches(o), Verdict::Match);
            assert_eq!(interp.matches(o), Verdict::Match);
        });
        drop(f);
        drop(interp);
    });
}

#[test]
fn the_first_operand_of_a_chain_of_ands_and_what_it_reads() {
    let first = |expr: &str| {
        let f = Filter::compile(expr, &FilterOptions::default()).unwrap();
        f.first_members()
            .map(|m| m.into_iter().map(String::from).collect::<Vec<_>>())
    };
    let members = |m: &[&str]| Some(m.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(
        first(r#"ev.conn.server_name.endsWith("x") && ev.http.response.status_code >= 500"#),
        members(&["conn"])
    );
    assert_eq!(
        first("has(ev.oauth) && ev.conn.server_port == 443"),
        members(&["oauth"])
    );
    assert_eq!(
        first("(ev.tls.version == '1.3' && ev.conn.server_port > 1) && ev.http.x == 1"),
        members(&["tls"])
    );
    // Not a chain of `&&`: the whole filter.
    assert_eq!(
        first("ev.conn.a == 1 || ev.http.b == 2"),
        members(&["conn", "http"])
    );
    // An operand that reads `ev` whole, or a filter the interpreter runs.
    assert_eq!(first("size(ev) > 1 && ev.conn.a == 1"), None);
    assert_eq!(
        first(r#"ev.http.request.headers.exists(k, k == "x") && ev.conn.a == 1"#),
        None
    );
}

#[test]
fn a_false_first_operand_rejects_and_anything_else_decides_nothing() {
    let rejects = |expr: &str| {
        let f = Filter::compile(expr, &FilterOptions::default()).unwrap();
        with_object(OBJ, |o| f.first_conjunct_rejects(o))
    };
    assert!(rejects(
        "ev.conn.server_port == 80 && ev.http.response.status_code >= 500"
    ));
    assert!(rejects("(ev.conn.server_port == 80 && ev.nope) && ev.nope"));
    // True, or an error, which a later `false` would absorb.
    assert!(!rejects(
        "ev.conn.server_port == 443 && ev.http.response.status_code >= 600"
    ));
    assert!(!rejects("ev.conn.nope == 1 && ev.conn.server_port == 80"));
}

#[test]
fn a_filter_given_its_first_operand_decides_as_it_does_whole() {
    let objects = [
        OBJ,
        r#"{"conn":{"server_port":80},"http":{"response":{"status_code":503}}}"#,
        r#"{"conn":{"server_port":"443"},"http":{"response":{"status_code":200}}}"#,
        r#"{"conn":{"server_port":443}}"#,
        "{}",
    ];
    let filters = [
        "ev.conn.server_port == 443 && ev.http.response.status_code >= 500",
        "ev.conn.server_port > 100 && ev.http.response.status_code < 500",
        "(ev.conn.server_port == 443 && ev.conn.nope) || ev.http.response.status_code >= 500",
        "(ev.conn.server_port >= 80 && has(ev.http)) && ev.http.response.status_code >= 500",
        "ev.conn.server_port && ev.http.response.status_code >= 500",
        "ev.conn.server_port == 443",
    ];
    for src in filters {
        let f = Filter::compile(src, &FilterOptions::default()).unwrap();
        for obj in objects {
            with_object(obj, |o| {
                let first = f.first_conjunct(o).expect("a fast filter");
                assert_eq!(f.matches_given(o, first), f.matches(o), "{src} on {obj}");
            });
        }
    }
}

#[test]
fn a_path_tested_against_a_constant_is_decided_as_the_interpreter_decides_it() {
    let long = format!(
        r#"{{"conn":{{"server_name":"{}-prod.ngrok.dev"}}}}"#,
        "a".repeat(2000)
    );
    let wide = format!(
        r#"{{"conn":{{{}"server_name":"a-prod.ngrok.dev","server_port":443}}}}"#,
        (0..70)
            .map(|i| format!(r#""m{i}":{i},"#))
            .collect::<String>()
    );
    let objects = [
        OBJ,
        r#"{"conn":{"server_name":"web.example.com","server_port":"443"}}"#,
        r#"{"conn":{"server_name":null,"server_port":80.5}}"#,
        r#"{"conn":[1,2]}"#,
        "{}",
        &long,
        &wide,
    ];
    let filters = [
        r#"ev.conn.server_name.endsWith("-prod.ngrok.dev") && ev.http.response.status_code >= 500"#,
        r#"ev.conn.server_name.startsWith("api") && ev.nope"#,
        r#"ev.conn.server_name.matches(".*-prod\\.ngrok\\.dev")"#,
        r#"ev.conn.server_name.matches("^web\\.example\\.com$")"#,
        r#"ev.conn.server_name == "api-prod.ngrok.dev""#,
        r#"ev.conn.server_name < "b""#,
        "ev.conn.server_port > 100 && ev.http.response.status_code < 500",
        "ev.conn.server_port != 443",
        "ev.conn.server_port >= 80.5",
        "ev.conn.server_port == 443u",
        "ev.conn.server_name == null",
        "ev.conn.server_port == true",
    ];
    let mut decided = 0;
    for src in filters {
        let f = Filter::compile(src, &FilterOptions::default()).unwrap();
        let Plan::Fast(ex) = &f.plan else {
            panic!("{src}: not a fast filter")
        };
        let quick = eval::Quick::of(eval::first_conjunct(ex))
            .unwrap_or_else(|| panic!("{src}: no quick form"));
        for obj in objects {
            with_object(obj, |o| {
                eval::start_budget(cost::FAST_STEP_BUDGET);
                let general = eval::interpret(eval::first_conjunct(ex), o);
                let left = eval::steps_left();
                if let Some(b) = quick.decide(o) {
                    decided += 1;
                    assert!(
                        matches!(general, V::Bool(g) if g == b),
                        "{src} on {obj}: quick {b}, interpreter {general:?}"
                    );
                    assert_eq!(left, cost::FAST_STEP_BUDGET, "{src} on {obj}");
                }
            });
        }
        // An ordinary event's operand is decided quickly.
        assert!(with_object(OBJ, |o| quick.decide(o)).is_some(), "{src}");
        // What the interpreter would charge steps for is left to it: a
        // search in a long string (a comparison costs the shorter side),
        // a lookup in a wide object.
        for obj in [long.as_str(), wide.as_str()] {
            if src.contains("server_name.") || obj == wide {
                assert_eq!(with_object(obj, |o| quick.decide(o)), None, "{src}");
            }
        }
    }
    // Beyond the ordinary event: the other objects' strings and numbers.
    assert!(decided > 2 * filters.len(), "decided {decided}");
    // Other shapes keep to the interpreter.
    for src in [
        "size(ev.conn.server_name) > 1",
        "443 == ev.conn.server_port",
        r#"ev.conn.server_name in ["a", "b"]"#,
        "ev.conn.server_port == ev.conn.server_port",
    ] {
        let f = Filter::compile(src, &FilterOptions::default()).unwrap();
        let Plan::Fast(ex) = &f.plan else {
            panic!("{src}: not a fast filter")
        };
        assert!(eval::Quick::of(ex).is_none(), "{src}");
    }
}
