//! `POST /event_filters/check` (Sluice's own): compiles a filter for an
//! event type and says where it is wrong, or what it reads and, given a
//! sample event, whether it matches and the value of each top-level clause.
//! What the console's filter editor calls as the user types; it changes
//! nothing, so it is not counted as a write (a meter of its own).

use super::*;
use sluice_engine::cel::{Filter, FilterOptions, Verdict};
use sluice_engine::json::Json;

/// Filter checks an account may make a minute.
pub(super) const CHECKS_PER_MINUTE: u32 = 600;

/// Clauses tried one by one on a sample event (each is compiled on its
/// own: a filter of a thousand clauses must not cost a thousand compiles).
const MAX_CLAUSES: usize = 16;

/// Longest filter a check takes (a subscription's own limit is the same).
const MAX_FILTER: usize = 4096;

/// The top-level clauses of `src`: its text split at `&&` and `||` outside
/// brackets and strings (one clause when there is none).
pub(super) fn clauses(src: &str) -> Vec<&str> {
    let (mut out, mut depth, mut quote, mut start) = (Vec::new(), 0i32, None, 0);
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(_) if c == b'\\' => i += 1,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                b'\'' | b'"' => quote = Some(c),
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                b'&' | b'|' if depth == 0 && b.get(i + 1) == Some(&c) => {
                    out.push(src[start..i].trim());
                    start = i + 2;
                    i += 1;
                }
                _ => {}
            },
        }
        i += 1;
    }
    out.push(src[start..].trim());
    out.retain(|c| !c.is_empty());
    out
}

/// A CEL value as a person reads it: `Bool(true)` is `true`, `String("a")`
/// is `"a"`; other values as the interpreter prints them.
fn shown(debug: &str) -> String {
    for prefix in ["Bool(", "Int(", "UInt(", "Float(", "String("] {
        if let Some(inner) = debug.strip_prefix(prefix).and_then(|r| r.strip_suffix(')')) {
            return inner.to_string();
        }
    }
    debug.to_string()
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Match => "match",
        Verdict::NoMatch => "no_match",
        Verdict::Error => "error",
    }
}

pub(super) async fn check_filter(
    axum::extract::State(app): Shared,
    Call { ctx, body }: Call,
) -> Result<Response, ApiError> {
    app.filter_checks
        .take(&ctx.account)
        .map_err(|s| rate_limited("filter checks for this account", s))?;
    let obj = body_object(&body)?;
    only_keys(&obj, &["type", "filter", "event"], "EventFilterCheck")?;
    let ty = string(&obj, "type")?.unwrap_or_else(|| "http_request_complete.v0".into());
    let event_type = EventTypeId::from_name(&ty).ok_or_else(|| {
        ApiError::new(
            Code::InvalidFieldValue,
            format!("'{ty}' is not an event type."),
        )
    })?;
    let filter = string(&obj, "filter")?.unwrap_or_default();
    if filter.len() > MAX_FILTER {
        return Err(ApiError::new(
            Code::InvalidFieldValue,
            format!("The filter is longer than {MAX_FILTER} bytes."),
        ));
    }
    let event = match member(&obj, "event") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.to_string().into_bytes()),
        Some(_) => {
            return Err(ApiError::new(
                Code::InvalidFieldValue,
                "event must be a JSON object (an envelope, or its object).",
            ));
        }
    };
    let opts = FilterOptions {
        event_type: Some(event_type),
        strict_ngrok: app.strict_ngrok_filters,
    };
    let answer = blocking(move || {
        let f = match Filter::compile(&filter, &opts) {
            Ok(f) => f,
            Err(e) => {
                return Ok(json!({
                    "ok": false,
                    "error": { "message": e.message, "line": e.line, "column": e.column },
                }));
            }
        };
        let mut out = json!({
            "ok": true,
            "parsed": f.parsed(),
            "reads": f.reads(),
            "warnings": f.warnings(),
            "runs_on": if f.is_fast() { "fast path" } else { "cel interpreter" },
        });
        let Some(mut bytes) = event else {
            return Ok(out);
        };
        let tape = simd_json::to_tape(&mut bytes).map_err(|e| {
            ApiError::new(Code::InvalidFieldValue, format!("event is not JSON: {e}"))
        })?;
        let Some(root) = Json::root(&tape.0) else {
            return Ok(out);
        };
        let object = match root.get("event_type").and(root.get("object")) {
            Some(o) => o,
            None => root,
        };
        let value = |f: &Filter| match f.evaluate(object) {
            Ok(v) => shown(&format!("{v:?}")),
            Err(e) => format!("error: {e}"),
        };
        let all = clauses(f.source());
        let parts: Vec<Value> = all
            .iter()
            .take(MAX_CLAUSES)
            .map(|&c| match Filter::compile(c, &opts) {
                Ok(cf) => json!({ "clause": c, "value": value(&cf) }),
                Err(e) => json!({ "clause": c, "value": format!("error: {}", e.message) }),
            })
            .collect();
        out["result"] = json!({
            "verdict": verdict_name(f.matches(object)),
            "value": value(&f),
            "clauses": parts,
            "clauses_not_shown": all.len().saturating_sub(MAX_CLAUSES),
        });
        Ok(out)
    })
    .await?;
    Ok(Json(answer).into_response())
}

/// `GET /event_types` (Sluice's own): every event type with its fields, for
/// the console's field picker. The same for every account.
pub(super) async fn list_event_types(Call { .. }: Call) -> Result<Response, ApiError> {
    let types: Vec<Value> = EventTypeId::all()
        .map(|t| {
            let d = t.def();
            json!({
                "type": d.name,
                "class": if d.class == EventClass::Audit { "audit" } else { "traffic" },
                "description": d.description,
                "fields": d.fields.iter().map(|f| json!({
                    "path": f.path,
                    "type": f.ty.name(),
                    "filterable": f.filterable,
                    "description": f.description,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({ "event_types": types })).into_response())
}

#[cfg(test)]
mod tests {
    use super::{clauses, shown};

    #[test]
    fn values_read_as_cel_writes_them() {
        assert_eq!(shown("Bool(true)"), "true");
        assert_eq!(shown("String(\"a)\")"), "\"a)\"");
        assert_eq!(shown("Null"), "Null");
    }

    #[test]
    fn clauses_split_at_top_level_only() {
        assert_eq!(
            clauses("a == 1 && (b || c) || d.startsWith('x && y')"),
            vec!["a == 1", "(b || c)", "d.startsWith('x && y')"]
        );
        assert_eq!(clauses("  x  "), vec!["x"]);
        assert_eq!(clauses("'it\\'s' == s && t"), vec!["'it\\'s' == s", "t"]);
    }
}
