//! Pipeline configuration: destinations and subscriptions, read from the
//! standalone TOML file (`sluice run --config`) or built by the control plane,
//! and validated against the event registry and the loaded plugins.
//!
//! ```toml
//! strict_ngrok_filters = false     # true: filters may read only ngrok's filterable fields
//!
//! [[destination]]
//! id = "ed_file1"
//! kind = "file"
//! config = { path = "out/all.ndjson" }
//!   [destination.delivery]
//!   linger_ms = 200
//!
//! [[subscription]]
//! id = "esb_web5xx"
//! account_id = "ac_123"
//! destination_ids = ["ed_file1"]
//!   [[subscription.source]]
//!   type = "http_request_complete.v0"
//!   filter = 'ev.http.response.status_code >= 500'
//!   fields = ["conn.client_ip", "http.response.status_code"]
//! ```

use crate::cel::{Filter, FilterOptions};
use crate::events::{EventClass, EventTypeId, closest, type_names};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Delivery settings of one destination (`[destination.delivery]` in TOML,
/// `target.plugin.delivery` in the API). Every field is optional; this is the
/// one place the defaults are defined (see `Default`), and `docs/delivery.md`
/// explains them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Longest a record waits for its batch to fill before the batch is sent.
    /// Default 1000.
    pub linger_ms: u64,
    /// Most batches in flight at once to the destination. With
    /// `adaptive_concurrency` the engine finds the best number between 1 and
    /// this; without, it always uses this many. Default 16.
    pub max_in_flight: u32,
    /// Adapt the number of batches in flight (AIMD, like TCP congestion
    /// control): grow while send latency is steady, halve on throttling or
    /// errors. Default true.
    pub adaptive_concurrency: bool,
    /// Most records per batch (0 = the sink's limit; never above it).
    pub batch_max_records: u32,
    /// Most bytes per batch as the sink counts them (0 = the sink's limit;
    /// never above it).
    pub batch_max_bytes: u64,
    /// Attempts per record before it is dead-lettered (0 = no limit). Default 10.
    pub max_attempts: u32,
    /// Age of a record (since it was received) after which it is
    /// dead-lettered instead of retried (0 = no limit). Default 3600.
    pub max_age_s: u64,
    /// Longest a plugin's `send` may take; then the batch is retried (the
    /// call is abandoned, not interrupted: at most 4 such calls per
    /// destination, then it waits for them). 0 = no limit. Default 60000.
    pub send_timeout_ms: u64,
    /// Longest wait between two attempts of a record (the backoff is
    /// exponential from 100 ms with full jitter, capped here; a sink's
    /// retry-after may be longer). Default 30000.
    pub retry_max_backoff_ms: u64,
    /// Where accepted records wait for delivery: `memory` (lost if the
    /// process dies) or `disk` (an append-only segment log, replayed on
    /// restart). Default memory.
    pub durability: Durability,
    /// With `durability = "disk"`: when the log is fsynced. Default interval.
    pub fsync: Fsync,
    /// With `fsync = "interval"`: the interval. Default 200.
    pub fsync_interval_ms: u64,
    /// What happens when the buffer is full: `block` the workers (which
    /// pushes back to every publisher) or `drop_newest` (shed, and count, the
    /// records that do not fit). Default block.
    pub when_full: WhenFull,
    /// Most bytes of records held in memory (queued, batching, in flight,
    /// waiting to retry). With `durability = "memory"` this is the buffer;
    /// with `disk` it is the window read from disk. Default 64 MiB.
    pub buffer_max_bytes: u64,
    /// With `durability = "disk"`: most bytes of the log on disk. Default 1 GiB.
    pub disk_max_bytes: u64,
    /// Where the disk buffer lives: `<dir>/<destination id>/` (default: the
    /// engine's buffer directory).
    pub buffer_dir: Option<PathBuf>,
    /// Where dead-lettered records go: `<dir>/<destination id>.ndjson`
    /// (default: the engine's dead-letter directory).
    pub dead_letter_dir: Option<PathBuf>,
    /// Most bytes of the destination's dead-letter queue (0 = no bound).
    /// When a record would not fit, the destination pauses: it sends
    /// nothing, its records wait in its buffer, and it says why, until a
    /// replay or a delete makes room. Default 256 MiB.
    pub dead_letter_max_bytes: u64,
    /// The group whose destinations share one quota of concurrent plugin
    /// calls on an engine of many tenants (`EngineConfig::shared`):
    /// `sluice serve` sets the owning account. Never read from a file or the
    /// API; none: no quota.
    #[serde(skip)]
    pub call_group: Option<String>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            linger_ms: 1000,
            max_in_flight: 16,
            adaptive_concurrency: true,
            batch_max_records: 0,
            batch_max_bytes: 0,
            max_attempts: 10,
            max_age_s: 3600,
            retry_max_backoff_ms: 30_000,
            send_timeout_ms: 60_000,
            durability: Durability::Memory,
            fsync: Fsync::Interval,
            fsync_interval_ms: 200,
            when_full: WhenFull::Block,
            buffer_max_bytes: 64 << 20,
            disk_max_bytes: 1 << 30,
            buffer_dir: None,
            dead_letter_dir: None,
            dead_letter_max_bytes: 256 << 20,
            call_group: None,
        }
    }
}

impl DeliveryConfig {
    /// Checks the values that have limits; says which one is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.linger_ms > 3_600_000 {
            return Err(format!(
                "delivery.linger_ms = {} is over an hour",
                self.linger_ms
            ));
        }
        if self.max_in_flight == 0 || self.max_in_flight > 1024 {
            return Err(format!(
                "delivery.max_in_flight = {} must be between 1 and 1024",
                self.max_in_flight
            ));
        }
        if self.buffer_max_bytes < 1024 {
            return Err(format!(
                "delivery.buffer_max_bytes = {} is under 1 KiB",
                self.buffer_max_bytes
            ));
        }
        if self.durability == Durability::Disk && self.disk_max_bytes < 1 << 20 {
            return Err(format!(
                "delivery.disk_max_bytes = {} is under 1 MiB",
                self.disk_max_bytes
            ));
        }
        if self.fsync_interval_ms == 0 || self.fsync_interval_ms > 60_000 {
            return Err(format!(
                "delivery.fsync_interval_ms = {} must be between 1 and 60000",
                self.fsync_interval_ms
            ));
        }
        if self.retry_max_backoff_ms == 0 {
            return Err("delivery.retry_max_backoff_ms must be over 0".into());
        }
        Ok(())
    }
}

/// Where accepted records wait for delivery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// In memory: fast; lost if the process dies.
    #[default]
    Memory,
    /// In an append-only segment log with a CRC per record, replayed on restart.
    Disk,
}

/// When the disk buffer is fsynced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// After every chunk of records appended (one per input batch and
    /// subscription), before it is acknowledged to the publisher.
    EveryBatch,
    /// Every `fsync_interval_ms`; acknowledgements wait for it.
    #[default]
    Interval,
}

/// What a full buffer does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Workers wait for room: every publisher is pushed back, and every other
    /// destination waits too.
    #[default]
    Block,
    /// Records that do not fit are shed and counted
    /// (`sluice_destination_dropped_total`); nothing else slows down.
    DropNewest,
}

/// One destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    /// Its id (`ed_...` from the API; any non-empty string in a file).
    pub id: String,
    /// The plugin kind that delivers to it.
    pub kind: String,
    /// The plugin's configuration, passed to it as JSON.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Delivery settings.
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// One source of a subscription: an event type, optionally filtered and projected.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// The event type, e.g. `http_request_complete.v0`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// A CEL expression over `ev` (the event's `object`); traffic types only.
    #[serde(default)]
    pub filter: Option<String>,
    /// The paths of `object` to keep; traffic types only.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

/// One subscription: an account's sources sent to destinations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Its id.
    pub id: String,
    /// The account whose events it selects.
    pub account_id: String,
    /// Where matched events go.
    #[serde(default)]
    pub destination_ids: Vec<String>,
    /// What it selects.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceSpec>,
}

/// A whole pipeline configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Restrict filters to the fields ngrok allows in filters.
    #[serde(default)]
    pub strict_ngrok_filters: bool,
    /// Destinations.
    #[serde(default, rename = "destination")]
    pub destinations: Vec<DestinationSpec>,
    /// Subscriptions.
    #[serde(default, rename = "subscription")]
    pub subscriptions: Vec<SubscriptionSpec>,
}

/// One configuration problem: where and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, if the configuration came from one.
    pub file: Option<PathBuf>,
    /// The item: `destination "ed_1"`, `subscription "esb_1", source "x.v0"`.
    pub item: String,
    /// What is wrong.
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if !self.item.is_empty() {
            write!(f, "{}: ", self.item)?;
        }
        write!(f, "{}", self.problem)
    }
}

/// Every problem found in a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// Attaches a file name to every error.
    pub fn in_file(mut self, file: &Path) -> ConfigErrors {
        for e in &mut self.0 {
            e.file = Some(file.to_path_buf());
        }
        self
    }
}

impl PipelineSpec {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<PipelineSpec, ConfigErrors> {
        toml::from_str(text).map_err(|e| {
            let item = e
                .span()
                .map(|s| {
                    let (line, col) = line_col(text, s.start);
                    format!("line {line}, column {col}")
                })
                .unwrap_or_default();
            ConfigErrors(vec![ConfigError {
                file: None,
                item,
                problem: e.message().to_string(),
            }])
        })
    }

    /// Reads and parses a TOML file; errors name the file.
    pub fn from_file(path: &Path) -> Result<PipelineSpec, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: Some(path.to_path_buf()),
                item: String::new(),
                problem: format!("cannot read: {e}"),
            }])
        })?;
        Self::from_toml(&text).map_err(|e| e.in_file(path))
    }

    /// Checks everything that does not need the plugins: ids, references,
    /// event types, filters, fields. Returns every problem found.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        self.check().map(drop)
    }

    /// [`PipelineSpec::validate`], and, when valid, the warnings: paths of
    /// filters and `fields` the registry does not know, as `(item, warning)`
    /// with the item named as in errors (`sluice check` prints them and
    /// `sluice run` logs them). Compiles each source once.
    pub fn check(&self) -> Result<Vec<(String, String)>, ConfigErrors> {
        let mut errs = self.validate_structure();
        let mut warnings = Vec::new();
        // Each distinct source compiled once: a configuration of many
        // accounts repeats the same few (10,000 subscriptions of 10 sources
        // in `many-tenants`).
        let mut compiled: HashMap<&SourceSpec, Result<Vec<String>, String>> = HashMap::new();
        for s in &self.subscriptions {
            for src in &s.sources {
                let item = format!("subscription \"{}\", source \"{}\"", s.id, src.event_type);
                let outcome = compiled.entry(src).or_insert_with(|| {
                    compile_source(src, self.strict_ngrok_filters).map(|c| c.warnings)
                });
                match outcome {
                    Ok(w) => warnings.extend(w.iter().map(|w| (item.clone(), w.clone()))),
                    Err(problem) => errs.push(ConfigError {
                        file: None,
                        item,
                        problem: problem.clone(),
                    }),
                }
            }
        }
        if errs.is_empty() {
            Ok(warnings)
        } else {
            Err(ConfigErrors(errs))
        }
    }

    /// Checks ids, references and duplicates, without compiling sources.
    pub fn validate_structure(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let mut err = |item: String, problem: String| {
            errs.push(ConfigError {
                file: None,
                item,
                problem,
            })
        };
        let mut dest_ids = HashSet::new();
        for d in &self.destinations {
            let item = format!("destination \"{}\"", d.id);
            if d.id.trim().is_empty() {
                err(item.clone(), "`id` must not be empty".into());
            } else if !dest_ids.insert(d.id.as_str()) {
                err(item.clone(), "duplicate destination id".into());
            }
            if d.kind.trim().is_empty() {
                err(item.clone(), "`kind` must not be empty".into());
            }
            if !d.config.is_object() {
                err(item.clone(), "`config` must be a table (object)".into());
            }
            if let Err(problem) = d.delivery.check() {
                err(item, problem);
            }
        }
        let mut sub_ids = HashSet::new();
        for s in &self.subscriptions {
            let item = format!("subscription \"{}\"", s.id);
            if s.id.trim().is_empty() {
                err(item.clone(), "`id` must not be empty".into());
            } else if !sub_ids.insert(s.id.as_str()) {
                err(item.clone(), "duplicate subscription id".into());
            }
            if s.account_id.trim().is_empty() {
                err(item.clone(), "`account_id` must not be empty".into());
            }
            for d in &s.destination_ids {
                if !dest_ids.contains(d.as_str()) {
                    let hint = closest(d, dest_ids.iter().copied())
                        .map(|c| format!(" (did you mean \"{c}\"?)"))
                        .unwrap_or_default();
                    err(item.clone(), format!("unknown destination \"{d}\"{hint}"));
                }
            }
            let mut seen = HashSet::new();
            for src in &s.sources {
                if !seen.insert(src.event_type.as_str()) {
                    err(
                        format!("{item}, source \"{}\"", src.event_type),
                        "duplicate source type in this subscription".into(),
                    );
                }
            }
        }
        errs
    }
}

/// Checks one source: known type, filter and fields allowed and valid.
/// Returns the problem as a sentence.
pub fn check_source(src: &SourceSpec, strict: bool) -> Result<(), String> {
    compile_source(src, strict).map(|_| ())
}

/// A source compiled: its type, filter and projection.
#[derive(Debug)]
pub struct CompiledSource {
    /// The event type.
    pub event_type: EventTypeId,
    /// The filter, if any.
    pub filter: Option<Filter>,
    /// The projection, if any.
    pub fields: Option<crate::encode::Projection>,
    /// Paths of the filter or `fields` that the registry does not know
    /// (accepted; see [`check_fields`]): at most one sentence for each.
    pub warnings: Vec<String>,
}

/// Most entries in one source's `fields`.
pub const MAX_FIELDS: usize = 100;
/// Longest `fields` entry, in bytes.
pub const MAX_FIELD_PATH_BYTES: usize = 256;
/// Most dotted segments in a `fields` entry (the registry's deepest is 4).
pub const MAX_FIELD_SEGMENTS: usize = 16;
/// Checks a source's `fields` against the registry and the size bounds (a
/// projection is a tree as deep as its longest path, built and dropped by
/// recursion). `Ok(warning)`: one naming the paths the registry does not know
/// but that are no likely typo, if any; an error for a path over the bounds,
/// a likely typo or, under `strict`, any unknown path. The API and
/// `sluice run` both use it, so both say the same.
pub fn check_fields(
    def: &crate::events::EventTypeDef,
    fields: &[String],
    strict: bool,
) -> Result<Option<String>, String> {
    if fields.len() > MAX_FIELDS {
        return Err(format!(
            "{} entries, the limit is {MAX_FIELDS}",
            fields.len()
        ));
    }
    let mut unknown = Vec::new();
    for p in fields {
        if p.len() > MAX_FIELD_PATH_BYTES || p.split('.').count() > MAX_FIELD_SEGMENTS {
            return Err(format!(
                "`{}` is over the limits of {MAX_FIELD_PATH_BYTES} bytes and {MAX_FIELD_SEGMENTS} segments",
                crate::events::shown_path(p)
            ));
        }
        if def.lookup(p).unknown_policy(def, p, strict)? {
            unknown.push(format!("`{p}`"));
        }
    }
    Ok(crate::events::unknown_paths_warning(def, &unknown))
}

/// Compiles one source, or explains what is wrong with it.
pub fn compile_source(src: &SourceSpec, strict: bool) -> Result<CompiledSource, String> {
    let t = EventTypeId::from_name(&src.event_type).ok_or_else(|| {
        match closest(&src.event_type, type_names()) {
            Some(s) => format!(
                "unknown event type `{}` (did you mean `{s}`?)",
                src.event_type
            ),
            None => format!(
                "unknown event type `{}`; `sluice check --list-types` lists them",
                src.event_type
            ),
        }
    })?;
    let def = t.def();
    if def.class == EventClass::Audit {
        if src.filter.as_deref().is_some_and(|f| !f.trim().is_empty()) {
            return Err(format!(
                "{} is an audit type: it may not have a filter (only traffic types can be filtered)",
                def.name
            ));
        }
        if src.fields.as_ref().is_some_and(|f| !f.is_empty()) {
            return Err(format!(
                "{} is an audit type: it may not select fields (only traffic types can)",
                def.name
            ));
        }
    }
    let filter = match src.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        None => None,
        Some(f) => Some(
            Filter::compile(
                f,
                &FilterOptions {
                    event_type: Some(t),
                    strict_ngrok: strict,
                },
            )
            .map_err(|e| format!("filter does not compile at {e}"))?,
        ),
    };
    let mut warnings: Vec<String> = filter
        .iter()
        .flat_map(|f| f.warnings())
        .map(|w| format!("filter: {w}"))
        .collect();
    let fields = match &src.fields {
        None => None,
        Some(list) if list.is_empty() => None,
        Some(list) => {
            let w = check_fields(def, list, strict).map_err(|e| format!("`fields`: {e}"))?;
            warnings.extend(w.map(|w| format!("`fields`: {w}")));
            Some(crate::encode::Projection::new(list))
        }
    };
    Ok(CompiledSource {
        event_type: t,
        filter,
        fields,
        warnings,
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[destination]]
id = "ed_file1"
kind = "file"
config = { path = "out/all.ndjson" }

[[subscription]]
id = "esb_web5xx"
account_id = "ac_123"
destination_ids = ["ed_file1"]

  [[subscription.source]]
  type = "http_request_complete.v0"
  filter = 'ev.http.response.status_code >= 500'
  fields = ["conn.client_ip", "http.response.status_code"]
"#;

    fn problems(toml: &str) -> Vec<String> {
        match PipelineSpec::from_toml(toml).and_then(|s| s.validate()) {
            Ok(()) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn the_design_example_is_valid() {
        let spec = PipelineSpec::from_toml(GOOD).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.destinations[0].config["path"], "out/all.ndjson");
        assert_eq!(spec.destinations[0].delivery, DeliveryConfig::default());
        assert_eq!(
            spec.subscriptions[0].sources[0]
                .fields
                .as_ref()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn each_problem_is_named_with_its_item() {
        let cases = [
            (
                GOOD.replace("http_request_complete.v0", "http_request_completed.v0"),
                "subscription \"esb_web5xx\", source \"http_request_completed.v0\": unknown event type `http_request_completed.v0` (did you mean `http_request_complete.v0`?)",
            ),
            (
                GOOD.replace(">= 500", ">= "),
                "filter does not compile at 1:",
            ),
            (
                GOOD.replace("conn.client_ip\"", "conn.clientip\""),
                "`fields`: unknown field `conn.clientip` of http_request_complete.v0 (did you mean `conn.client_ip`?)",
            ),
            (
                GOOD.replace(
                    "destination_ids = [\"ed_file1\"]",
                    "destination_ids = [\"ed_fil1\"]",
                ),
                "subscription \"esb_web5xx\": unknown destination \"ed_fil1\" (did you mean \"ed_file1\"?)",
            ),
            (
                GOOD.replace(
                    "type = \"http_request_complete.v0\"",
                    "type = \"ip_policy_created.v0\"",
                ),
                "ip_policy_created.v0 is an audit type: it may not have a filter",
            ),
            (
                GOOD.replace("status_code >= 500", "status_cod >= 500"),
                "unknown field `http.response.status_cod` of http_request_complete.v0 (did you mean `http.response.status_code`?)",
            ),
        ];
        for (toml, want) in cases {
            let p = problems(&toml);
            assert!(
                p.iter().any(|e| e.contains(want)),
                "want {want:?} in {p:#?}"
            );
        }
    }

    /// The payload contract lets fields appear without a new version: a path
    /// the registry does not know compiles with a warning, unless it is one or
    /// two edits from a known one (a typo) or the configuration is strict.
    #[test]
    fn unknown_paths_far_from_known_ones_compile_with_a_warning() {
        let novel = GOOD
            .replace("status_code >= 500", "protocol_details == \"h3\"")
            .replace("\"conn.client_ip\"", "\"conn.tunnel_session\"");
        assert!(problems(&novel).is_empty(), "{:?}", problems(&novel));
        let spec = PipelineSpec::from_toml(&novel).unwrap();
        let w: Vec<String> = spec
            .check()
            .unwrap()
            .into_iter()
            .map(|(i, w)| format!("{i}: {w}"))
            .collect();
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(
            w[0].contains("filter: `http.response.protocol_details` at 1:")
                && w[0].contains("is not in Sluice's registry of http_request_complete.v0"),
            "{w:#?}"
        );
        assert!(
            w[1].contains("`fields`: `conn.tunnel_session` is not in Sluice's registry"),
            "{w:#?}"
        );
        assert!(w.iter().all(|w| {
            w.starts_with("subscription \"esb_web5xx\", source \"http_request_complete.v0\"")
        }));
        // Strict: every unknown path is refused.
        let strict = format!("strict_ngrok_filters = true\n{novel}");
        assert!(
            problems(&strict).iter().any(|e| e.contains(
                "unknown field `http.response.protocol_details` of http_request_complete.v0: strict_ngrok_filters allows only"
            )),
            "{:?}",
            problems(&strict)
        );
        let strict_fields = format!(
            "strict_ngrok_filters = true\n{}",
            GOOD.replace("filter = 'ev.http.response.status_code >= 500'", "")
                .replace("\"conn.client_ip\"", "\"conn.tunnel_session\"")
        );
        assert!(
            problems(&strict_fields)
                .iter()
                .any(|e| e.contains("`fields`: unknown field `conn.tunnel_session`")),
            "{:?}",
            problems(&strict_fields)
        );
        // However many unknown paths, one warning names five and counts the rest.
        let many = GOOD.replace(
            "\"conn.client_ip\"",
            &(0..7)
                .map(|i| format!("\"new{i}.v\""))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let w = PipelineSpec::from_toml(&many).unwrap().check().unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].1.contains("`new4.v` and 2 more are not in"), "{w:?}");
        // Bounds: a projection is a tree as deep as its longest path.
        let deep = GOOD.replace(
            "\"conn.client_ip\"",
            &format!("\"{}\"", vec!["x"; 17].join(".")),
        );
        assert!(
            problems(&deep)
                .iter()
                .any(|e| e.contains("over the limits of 256 bytes and 16 segments")),
            "{:?}",
            problems(&deep)
        );
        let wide = GOOD.replace(
            "\"conn.client_ip\"",
            &(0..101)
                .map(|i| format!("\"f{i}\""))
                .collect::<Vec<_>>()
                .join(", "),
        );
        assert!(
            problems(&wide)
                .iter()
                .any(|e| e.contains("102 entries, the limit is 100")),
            "{:?}",
            problems(&wide)
        );
        // The fields of the seeds' example payload are known: no warning.
        let seeds = GOOD
            .replace("status_code >= 500", "first_byte_ts != \"\"")
            .replace(
                "\"conn.client_ip\"",
                "\"http.request.version\", \"http.request.last_byte_ts\"",
            );
        assert!(problems(&seeds).is_empty(), "{:?}", problems(&seeds));
        assert!(
            PipelineSpec::from_toml(&seeds)
                .unwrap()
                .check()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_source_shared_by_subscriptions_is_reported_for_each() {
        // Compiled once for all of them, but each is named.
        let second = |toml: &str| {
            let sub = &toml[toml.find("[[subscription]]").unwrap()..];
            format!("{toml}\n{}", sub.replace("esb_web5xx", "esb_other"))
        };
        let bad = second(&GOOD.replace(">= 500", ">= "));
        let p = problems(&bad);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("esb_web5xx") && p[1].contains("esb_other"),
            "{p:?}"
        );
        assert!(p.iter().all(|e| e.contains("does not compile")), "{p:?}");
        let warned = second(&GOOD.replace("conn.client_ip", "new0.v"));
        let w = PipelineSpec::from_toml(&warned).unwrap().check().unwrap();
        let items: Vec<&str> = w.iter().map(|(item, _)| item.as_str()).collect();
        assert_eq!(items.len(), 2, "{w:?}");
        assert!(items[0].contains("esb_web5xx") && items[1].contains("esb_other"));
    }

    #[test]
    fn fields_on_an_audit_type_are_refused() {
        let toml = GOOD
            .replace(
                "type = \"http_request_complete.v0\"",
                "type = \"ip_policy_created.v0\"",
            )
            .replace("filter = 'ev.http.response.status_code >= 500'", "");
        let p = problems(&toml);
        assert!(
            p.iter().any(|e| e.contains("may not select fields")),
            "{p:?}"
        );
    }

    #[test]
    fn strict_mode_allows_only_the_conn_address_fields() {
        let strict = format!("strict_ngrok_filters = true\n{GOOD}");
        let p = problems(&strict);
        assert!(
            p.iter()
                .any(|e| e.contains("cannot be used in a filter under strict_ngrok_filters")),
            "{p:?}"
        );
        let ok = strict.replace(
            "ev.http.response.status_code >= 500",
            "ev.conn.server_port == 443",
        );
        assert_eq!(problems(&ok), Vec::<String>::new());
    }

    #[test]
    fn toml_syntax_and_unknown_keys_are_located() {
        let p = problems("[[destination]]\nid = \"x\"\nkind = \"file\"\nconfgi = {}\n");
        assert!(p[0].contains("line 4") && p[0].contains("confgi"), "{p:?}");
    }
}
