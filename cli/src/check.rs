//! `sluice check`: validate a configuration, or compile one filter and show
//! how it runs (and, given an event, what it evaluates to).

use sluice_engine::PipelineSpec;
use sluice_engine::cel::{Filter, FilterOptions, Verdict};
use sluice_engine::events::{EVENT_TYPES, EventClass, EventTypeId};
use sluice_engine::json::Json;
use sluice_engine::metrics::DestinationStats;
use sluice_engine::plugin::{PluginRegistry, SinkInstance, plugin_dirs, verify_destination};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["config", "filter", "list_types"])))]
pub struct CheckArgs {
    /// A TOML configuration to validate.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A CEL filter to compile (`ev` is the event's object).
    #[arg(long)]
    filter: Option<String>,
    /// The event type the filter is for: enables checking of the fields it reads.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Allow only the fields ngrok allows in filters.
    #[arg(long)]
    strict: bool,
    /// Evaluate the filter on this event (a JSON envelope, or just its object).
    #[arg(long)]
    event: Option<String>,
    /// List every event type and the fields of the traffic types.
    #[arg(long)]
    list_types: bool,
    /// Directory searched first for sink plugins (to check destination kinds).
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// With --config: send this destination's test event through its plugin
    /// (one record of event_type `test`), proving the credentials and target work.
    #[arg(long, requires = "config")]
    destination: Option<String>,
}

pub fn check(a: CheckArgs) -> Result<ExitCode, String> {
    if a.list_types {
        list_types();
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(path) = &a.config {
        return check_config(path, a.plugin_dir.clone(), a.destination.as_deref());
    }
    let Some(src) = &a.filter else {
        return Err("give --config, --filter or --list-types".into());
    };
    let event_type = match &a.event_type {
        None => None,
        Some(t) => Some(EventTypeId::from_name(t).ok_or_else(|| {
            let hint = sluice_engine::events::closest(t, sluice_engine::events::type_names())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            format!("unknown event type `{t}`{hint}")
        })?),
    };
    let f = match Filter::compile(
        src,
        &FilterOptions {
            event_type,
            strict_ngrok: a.strict,
        },
    ) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: filter does not compile at {e}");
            return Ok(ExitCode::from(2));
        }
    };
    for w in f.warnings() {
        eprintln!("warning: {w}");
    }
    println!("parsed:  {}", f.parsed());
    match f.fallback_reason() {
        None => println!("runs on: the fast path (evaluated on the parsed event, no conversion)"),
        Some(why) => println!("runs on: the cel interpreter, fed only the fields it reads ({why})"),
    }
    println!(
        "reads:   {}",
        if f.reads().is_empty() {
            "nothing".to_string()
        } else {
            f.reads().join(", ")
        }
    );
    if let Some(ev) = &a.event {
        let mut bytes = ev.clone().into_bytes();
        let tape = simd_json::to_tape(&mut bytes)
            .map_err(|e| format!("--event is not valid JSON: {e}"))?;
        let root = Json::root(&tape.0).ok_or("--event is empty")?;
        let object = if root.get("event_type").is_some() {
            root.get("object")
                .ok_or("--event is an envelope without `object`")?
        } else {
            root
        };
        let value = f.evaluate(object);
        let verdict = f.matches(object);
        match value {
            Ok(v) => println!("value:   {v:?}"),
            Err(e) => println!("value:   error: {e}"),
        }
        println!(
            "verdict: {}",
            match verdict {
                Verdict::Match => "match (the event is delivered)",
                Verdict::NoMatch => "no match (the event is skipped)",
                Verdict::Error => "error (the event is skipped and counted as a filter error)",
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check_config(
    path: &std::path::Path,
    plugin_dir: Option<PathBuf>,
    destination: Option<&str>,
) -> Result<ExitCode, String> {
    let spec = match PipelineSpec::from_file(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let (mut problems, warnings): (Vec<String>, _) = match spec.check() {
        Ok(w) => (vec![], w),
        Err(e) => (
            e.in_file(path).0.iter().map(|e| e.to_string()).collect(),
            vec![],
        ),
    };
    let dirs = plugin_dirs(&plugin_dir.into_iter().collect::<Vec<_>>());
    let plugins = PluginRegistry::discover(&dirs);
    for d in &spec.destinations {
        // What `sluice run` would refuse: the plugin must exist and accept the
        // configuration (created and destroyed here, nothing sent).
        let created = plugins
            .get(&d.kind)
            .map_err(|e| e.to_string())
            .and_then(|lib| {
                SinkInstance::create(
                    lib,
                    &d.id,
                    &d.config.to_string(),
                    "",
                    Arc::new(DestinationStats::default()),
                )
                .map(drop)
                .map_err(|e| e.to_string())
            });
        if let Err(e) = created {
            problems.push(format!("{}: destination \"{}\": {e}", path.display(), d.id));
        }
    }
    for (item, w) in warnings {
        eprintln!("warning: {}: {item}: {w}", path.display());
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        return Ok(ExitCode::from(2));
    }
    if let Some(id) = destination {
        let Some(d) = spec.destinations.iter().find(|d| d.id == id) else {
            let ids: Vec<&str> = spec.destinations.iter().map(|d| d.id.as_str()).collect();
            eprintln!(
                "error: {}: no destination \"{id}\" (there are: {})",
                path.display(),
                ids.join(", ")
            );
            return Ok(ExitCode::from(2));
        };
        return Ok(match verify_destination(&plugins, d, "") {
            Ok(()) => {
                println!("destination \"{id}\" ({}): test event delivered", d.kind);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: destination \"{id}\" ({}): {e}", d.kind);
                ExitCode::from(1)
            }
        });
    }
    let (mut sources, mut filters, mut fast) = (0, 0, 0);
    for s in &spec.subscriptions {
        for src in &s.sources {
            sources += 1;
            if let Some(text) = src.filter.as_deref().filter(|f| !f.trim().is_empty())
                && let Ok(f) = Filter::compile(
                    text,
                    &FilterOptions {
                        event_type: EventTypeId::from_name(&src.event_type),
                        strict_ngrok: spec.strict_ngrok_filters,
                    },
                )
            {
                filters += 1;
                if f.is_fast() {
                    fast += 1;
                }
            }
        }
        if s.destination_ids.is_empty() {
            eprintln!(
                "warning: {}: subscription \"{}\" has no destinations; its events go nowhere",
                path.display(),
                s.id
            );
        }
    }
    println!(
        "{}: ok: {} destinations, {} subscriptions, {} sources, {} filters ({} on the fast path, {} in the interpreter)",
        path.display(),
        spec.destinations.len(),
        spec.subscriptions.len(),
        sources,
        filters,
        fast,
        filters - fast
    );
    Ok(ExitCode::SUCCESS)
}

fn list_types() {
    for t in EVENT_TYPES {
        match t.class {
            EventClass::Audit => println!("{:<40} audit    {}", t.name, t.description),
            EventClass::Traffic => {
                println!("{:<40} traffic  {}", t.name, t.description);
                for f in t.fields {
                    println!(
                        "    {:<34} {:<26} {}{}",
                        f.path,
                        f.ty.name(),
                        if f.filterable {
                            "[ngrok filterable] "
                        } else {
                            ""
                        },
                        f.description
                    );
                }
            }
        }
    }
}
