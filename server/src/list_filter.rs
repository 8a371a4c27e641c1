//! The `filter` query parameter of the list endpoints: CEL over `obj`
//! (spec §6.3), with ngrok's subset: `! && ||`, comparisons, `in`, `size()`,
//! `startsWith contains endsWith`, `timestamp(...)`, `timestamp(time.now)`,
//! and `.add("7d")` / `.subtract("24h")` on timestamps. Fields: `id`,
//! `created_at` (a timestamp), `description`, `metadata`. Anything else is
//! refused with ERR_NGROK_250 "Invalid CEL query: ...".

use crate::error::{ApiError, Code};
use cel::common::ast::{Expr, IdedExpr, operators};
use cel::extractors::This;
use cel::objects::{Key, Value};
use chrono::{DateTime, FixedOffset};
use std::collections::HashMap;
use std::sync::Arc;

const FIELDS: &[&str] = &["id", "created_at", "description", "metadata"];

/// A compiled list filter.
#[derive(Debug)]
pub struct ListFilter {
    program: cel::Program,
}

fn invalid(msg: impl std::fmt::Display) -> ApiError {
    ApiError::new(Code::InvalidListFilter, format!("Invalid CEL query: {msg}"))
}

fn check(e: &IdedExpr) -> Result<(), ApiError> {
    match &e.expr {
        Expr::Literal(_) => Ok(()),
        Expr::List(l) => l.elements.iter().try_for_each(check),
        Expr::Ident(n) => Err(invalid(format!("unsupported identifier: {n}"))),
        Expr::Select(s) => match &s.operand.expr {
            Expr::Ident(root) if root == "obj" && !s.test => {
                if FIELDS.contains(&s.field.as_str()) {
                    Ok(())
                } else {
                    Err(invalid(format!("unsupported field: {}", s.field)))
                }
            }
            Expr::Ident(root) if root == "time" && s.field == "now" && !s.test => Ok(()),
            _ => Err(invalid("unsupported field selection")),
        },
        Expr::Call(c) => {
            let allowed = matches!(
                c.func_name.as_str(),
                operators::LOGICAL_AND
                    | operators::LOGICAL_OR
                    | operators::LOGICAL_NOT
                    | operators::EQUALS
                    | operators::NOT_EQUALS
                    | operators::LESS
                    | operators::LESS_EQUALS
                    | operators::GREATER
                    | operators::GREATER_EQUALS
                    | operators::IN
                    | "size"
                    | "timestamp"
                    | "startsWith"
                    | "contains"
                    | "endsWith"
                    | "add"
                    | "subtract"
            );
            if !allowed {
                return Err(invalid(format!(
                    "unsupported function or operator: {}",
                    c.func_name.trim_matches('_')
                )));
            }
            if let Some(t) = &c.target {
                check(t)?;
            }
            c.args.iter().try_for_each(check)
        }
        Expr::Map(_) | Expr::Struct(_) => Err(invalid("map literals are not supported")),
        Expr::Comprehension(_) => Err(invalid("macros are not supported")),
        Expr::Unspecified => Err(invalid("empty expression")),
    }
}

/// Parses "7d", "24h", "15m", "30s" or combinations ("1h30m").
pub fn parse_duration(s: &str) -> Option<chrono::Duration> {
    let mut total = chrono::Duration::zero();
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().ok()?;
        num.clear();
        total += match c {
            'd' => chrono::Duration::days(n),
            'h' => chrono::Duration::hours(n),
            'm' => chrono::Duration::minutes(n),
            's' => chrono::Duration::seconds(n),
            _ => return None,
        };
        any = true;
    }
    (any && num.is_empty()).then_some(total)
}

fn shift(t: DateTime<FixedOffset>, d: &str, sign: i32) -> Result<Value, cel::ExecutionError> {
    let dur = parse_duration(d).ok_or_else(|| {
        cel::ExecutionError::function_error(
            "add",
            format!("invalid duration '{d}' (use 7d, 24h, 15m, 30s)"),
        )
    })?;
    let r = if sign > 0 {
        t.checked_add_signed(dur)
    } else {
        t.checked_sub_signed(dur)
    };
    r.map(Value::Timestamp)
        .ok_or_else(|| cel::ExecutionError::function_error("add", "timestamp out of range"))
}

thread_local! {
    static ROOT: cel::Context<'static, 'static> = {
        let mut c = cel::Context::default();
        let _ = c.add_function("add", |This(t): This<DateTime<FixedOffset>>, d: Arc<String>| shift(t, &d, 1));
        let _ = c.add_function("subtract", |This(t): This<DateTime<FixedOffset>>, d: Arc<String>| shift(t, &d, -1));
        c
    };
}

impl ListFilter {
    /// Compiles a list filter, refusing what ngrok's API filtering does not support.
    pub fn compile(src: &str) -> Result<ListFilter, ApiError> {
        if src.len() > 4096 {
            return Err(invalid("the filter is longer than 4096 bytes"));
        }
        let ast = cel::parser::Parser::new().parse(src).map_err(|e| {
            let first = e.errors.first();
            invalid(first.map_or_else(
                || "syntax error".into(),
                |e| format!("{} at {}:{}", e.msg, e.pos.0, e.pos.1),
            ))
        })?;
        check(&ast)?;
        let program =
            cel::Program::compile(src).map_err(|e| invalid(e.to_string().replace('\n', " ")))?;
        Ok(ListFilter { program })
    }

    /// Whether a resource matches. Errors and non-bool results do not match.
    pub fn matches(&self, id: &str, created_at: &str, description: &str, metadata: &str) -> bool {
        let created =
            DateTime::parse_from_rfc3339(created_at).map_or(Value::Null, Value::Timestamp);
        let mut obj: HashMap<Key, Value> = HashMap::with_capacity(4);
        obj.insert(Key::from("id"), Value::String(Arc::new(id.to_string())));
        obj.insert(Key::from("created_at"), created);
        obj.insert(
            Key::from("description"),
            Value::String(Arc::new(description.to_string())),
        );
        obj.insert(
            Key::from("metadata"),
            Value::String(Arc::new(metadata.to_string())),
        );
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut time: HashMap<Key, Value> = HashMap::new();
        time.insert(Key::from("now"), Value::String(Arc::new(now)));
        ROOT.with(|root| {
            let mut ctx = root.new_inner_scope();
            ctx.add_variable_from_value("obj", Value::Map(obj.into()));
            ctx.add_variable_from_value("time", Value::Map(time.into()));
            matches!(self.program.execute(&ctx), Ok(Value::Bool(true)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(f: &str, created: &str, desc: &str) -> bool {
        ListFilter::compile(f)
            .unwrap()
            .matches("ed_1", created, desc, "{\"env\":\"prod\"}")
    }

    #[test]
    fn the_documented_forms_work() {
        assert!(m(r#"obj.description == "x""#, "2025-01-01T00:00:00Z", "x"));
        assert!(m(
            r#"obj.description in ["a", "x"] && obj.metadata.contains("prod")"#,
            "2025-01-01T00:00:00Z",
            "x"
        ));
        assert!(m(
            r#"obj.description.startsWith("kin") || size(obj.description) == 0"#,
            "2025-01-01T00:00:00Z",
            ""
        ));
        assert!(m(
            r#"obj.created_at > timestamp("2024-12-31T00:00:00Z")"#,
            "2025-01-01T00:00:00Z",
            ""
        ));
        assert!(!m(
            r#"obj.created_at > timestamp(time.now).subtract("7d")"#,
            "2025-01-01T00:00:00Z",
            ""
        ));
        let recent = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        assert!(m(
            r#"obj.created_at > timestamp(time.now).subtract("1h30m")"#,
            &recent,
            ""
        ));
        assert!(m(
            r#"obj.created_at < timestamp(time.now).add("1d")"#,
            &recent,
            ""
        ));
        assert!(m(r#"obj.description == """#, "2025-01-01T00:00:00Z", ""));
    }

    #[test]
    fn unsupported_things_are_refused_with_err_ngrok_250() {
        for (f, want) in [
            ("obj.target == 1", "unsupported field: target"),
            (
                "obj.description.matches('x')",
                "unsupported function or operator: matches",
            ),
            ("obj.id + 'x' == 'y'", "unsupported function or operator: +"),
            ("x == 1", "unsupported identifier: x"),
            ("obj.description == ", "Invalid CEL query"),
            ("[1].exists(x, x == 1)", "not supported"),
        ] {
            let e = ListFilter::compile(f).unwrap_err();
            assert_eq!(e.code, Some(Code::InvalidListFilter));
            assert!(e.msg.contains(want), "{f}: {}", e.msg);
        }
        assert_eq!(parse_duration("1h30m"), Some(chrono::Duration::minutes(90)));
        assert_eq!(parse_duration("7x"), None);
        assert_eq!(parse_duration("7"), None);
    }
}
