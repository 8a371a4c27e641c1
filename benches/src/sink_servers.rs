//! The vendor stand-ins a scenario names: each destination `config` string
//! holding a placeholder (`$HTTP_SINK_URL`, `$AWS_SINK_URL`, ... see
//! `sluice_standins::fast`) gets the URL of a fast stand-in started for the
//! run, and what each stand-in saw becomes part of the record.

use crate::report::SinkServerReport;
use crate::scenario::Scenario;
use sluice_standins::fast::{Kind, ServerCounts, SinkServers};

fn uses(s: &Scenario, placeholder: &str) -> bool {
    s.destinations
        .iter()
        .any(|d| d.config.to_string().contains(placeholder))
}

fn replace(v: &mut serde_json::Value, placeholder: &str, with: &str) {
    match v {
        serde_json::Value::String(s) if s.contains(placeholder) => {
            *s = s.replace(placeholder, with);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| replace(x, placeholder, with)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| replace(x, placeholder, with)),
        _ => {}
    }
}

/// Starts the stand-ins the scenario's destinations name and puts their
/// URLs in place of the placeholders; they stop when the result is dropped.
pub fn start_for(s: &mut Scenario) -> Result<SinkServers, String> {
    let mut servers = SinkServers::default();
    for kind in Kind::ALL {
        let placeholder = kind.placeholder();
        if uses(s, placeholder) {
            let url = servers.start(kind)?;
            for d in &mut s.destinations {
                replace(&mut d.config, placeholder, &url);
            }
        }
    }
    Ok(servers)
}

/// What the stand-in named `name` saw, for the benchmark record.
pub fn report(name: &str, c: ServerCounts) -> SinkServerReport {
    SinkServerReport {
        server: name.to_string(),
        records: c.records,
        requests: c.requests,
        connections: c.connections,
        wire_bytes: c.wire_bytes,
        body_bytes: c.body_bytes,
        compression_ratio: if c.wire_bytes > 0 && c.wire_bytes != c.body_bytes {
            c.body_bytes as f64 / c.wire_bytes as f64
        } else {
            1.0
        },
    }
}
