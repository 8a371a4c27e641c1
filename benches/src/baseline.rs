//! The naive pipeline a user would write, for scale: parse each event with
//! serde_json, look its subscriptions up in a hash map, convert the object
//! into CEL values, evaluate each filter with the `cel` interpreter (programs
//! compiled once), project the fields and encode matches with serde_json.
//! It runs on the same events with as many threads as Sluice has workers, so
//! that the ratio compares pipelines, not parallelism.

use crate::results::BaselineResult;
use crate::scenario::Scenario;
use sluice_traffic::Generator;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Converts a JSON value into a CEL value, the obvious way.
fn to_cel(v: &serde_json::Value) -> cel::Value {
    use serde_json::Value as J;
    match v {
        J::Null => cel::Value::Null,
        J::Bool(b) => cel::Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => cel::Value::String(Arc::new(s.clone())),
        J::Array(a) => cel::Value::List(Arc::new(a.iter().map(to_cel).collect())),
        J::Object(o) => {
            let m: HashMap<cel::objects::Key, cel::Value> = o
                .iter()
                .map(|(k, v)| (cel::objects::Key::from(k.as_str()), to_cel(v)))
                .collect();
            cel::Value::Map(m.into())
        }
    }
}

fn project(obj: &serde_json::Value, fields: &[String]) -> serde_json::Value {
    fn insert(
        node: &mut serde_json::Map<String, serde_json::Value>,
        segs: &[&str],
        v: &serde_json::Value,
    ) {
        match segs {
            [] => {}
            [last] => {
                node.insert(last.to_string(), v.clone());
            }
            [first, rest @ ..] => {
                let e = node
                    .entry(first.to_string())
                    .or_insert_with(|| serde_json::Value::Object(Default::default()));
                if let serde_json::Value::Object(m) = e {
                    insert(m, rest, v);
                }
            }
        }
    }
    let mut out = serde_json::Map::new();
    for f in fields {
        let segs: Vec<&str> = f.split('.').collect();
        if let Some(v) = segs.iter().try_fold(obj, |cur, s| cur.get(s)) {
            insert(&mut out, &segs, v);
        }
    }
    serde_json::Value::Object(out)
}

type Route = (Option<String>, Option<Vec<String>>);

/// Runs the baseline on the first `max_events` events of `data`.
pub fn run_baseline(
    s: &Scenario,
    data: &Path,
    max_events: u64,
    threads: usize,
) -> Result<BaselineResult, String> {
    let accounts = Generator::new(s.generator.gen_config()).account_ids();
    let spec = s.pipeline(&accounts)?;
    let mut routes: HashMap<(String, String), Vec<Route>> = HashMap::new();
    for sub in &spec.subscriptions {
        for src in &sub.sources {
            routes
                .entry((sub.account_id.clone(), src.event_type.clone()))
                .or_default()
                .push((src.filter.clone(), src.fields.clone()));
        }
    }
    let file = std::fs::File::open(data).map_err(|e| format!("{}: {e}", data.display()))?;
    let lines: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .take(max_events as usize)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let threads = threads.max(1);
    let per = lines.len().div_ceil(threads).max(1);
    let start = Instant::now();
    let matched: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = lines
            .chunks(per)
            .map(|chunk| {
                let routes = &routes;
                scope.spawn(move || {
                    let root = cel::Context::default();
                    let mut programs: HashMap<String, cel::Program> = HashMap::new();
                    for rs in routes.values() {
                        for (f, _) in rs {
                            if let Some(f) = f
                                && !programs.contains_key(f)
                                && let Ok(p) = cel::Program::compile(f)
                            {
                                programs.insert(f.clone(), p);
                            }
                        }
                    }
                    let mut matched = 0u64;
                    let mut out: Vec<u8> = Vec::with_capacity(1 << 20);
                    for line in chunk {
                        let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
                            continue;
                        };
                        let key = (
                            ev["account_id"].as_str().unwrap_or_default().to_string(),
                            ev["event_type"].as_str().unwrap_or_default().to_string(),
                        );
                        let Some(rs) = routes.get(&key) else { continue };
                        for (filter, fields) in rs {
                            let pass = match filter.as_ref().and_then(|f| programs.get(f)) {
                                None => true,
                                Some(p) => {
                                    let mut ctx = root.new_inner_scope();
                                    ctx.add_variable_from_value("ev", to_cel(&ev["object"]));
                                    matches!(p.execute(&ctx), Ok(cel::Value::Bool(true)))
                                }
                            };
                            if pass {
                                matched += 1;
                                let rec = match fields {
                                    None => ev.clone(),
                                    Some(f) => {
                                        let mut e = ev.clone();
                                        e["object"] = project(&ev["object"], f);
                                        e
                                    }
                                };
                                let _ = serde_json::to_writer(&mut out, &rec);
                                out.push(b'\n');
                                if out.len() > 1 << 20 {
                                    out.clear();
                                }
                            }
                        }
                    }
                    matched
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    Ok(BaselineResult {
        events: lines.len() as u64,
        threads,
        elapsed_s: elapsed,
        events_per_s: lines.len() as f64 / elapsed,
        matched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_keeps_the_listed_paths() {
        let v: serde_json::Value = serde_json::json!({"conn":{"a":1,"b":2},"http":{"x":{"y":3}}});
        let p = project(&v, &["conn.a".into(), "http.x.y".into(), "nope.z".into()]);
        assert_eq!(p, serde_json::json!({"conn":{"a":1},"http":{"x":{"y":3}}}));
    }
}
