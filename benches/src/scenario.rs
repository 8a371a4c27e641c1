//! Scenario files (`benches/scenarios/*.toml`): what to generate, how to
//! run it, and the pipeline to run it through.
//!
//! ```toml
//! name = "filter-5pct"
//! description = "one subscription keeping 5% of HTTP events"
//!
//! [generator]                 # the traffic (see `traffic::GenConfig`)
//! events = 2000000
//! accounts = 1
//! size = 650
//! prod_share = 0.5
//! error_share = 0.1
//!
//! [run]
//! repeat = 3                  # runs, for the spread
//! rate = 0                    # offered events/s (open loop); 0 = as fast as possible
//!
//! [[destination]]             # as in sluice.toml
//! id = "ed_bh"
//! kind = "blackhole"
//!
//! [[subscriptions]]           # a template, expanded per account
//! accounts = "all"            # "all", "first", or N (the N busiest)
//! per_account = 1             # copies per account
//! destination_ids = ["ed_bh"]
//!   [[subscriptions.source]]
//!   type = "http_request_complete.v0"
//!   filter = 'ev.http.response.status_code >= 500'
//! ```

use serde::{Deserialize, Serialize};
use sluice_engine::config::{DestinationSpec, PipelineSpec, SourceSpec, SubscriptionSpec};
use sluice_traffic::GenConfig;
use std::path::{Path, PathBuf};

/// The traffic of a scenario.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorSpec {
    /// Events per run.
    pub events: u64,
    /// Accounts.
    pub accounts: u32,
    /// HTTP event size target in bytes (0: natural, ~1 KB).
    pub size: usize,
    /// Share of traffic events that are TCP.
    pub tcp_share: f64,
    /// Share of all events that are audit events.
    pub audit_share: f64,
    /// Share of HTTP requests to `*-prod.ngrok.dev`.
    pub prod_share: f64,
    /// Share of 5xx responses.
    pub error_share: f64,
    /// Seed.
    pub seed: u64,
    /// Stamp events from the last hour (the hour before the current one)
    /// rather than a fixed date, for destinations that refuse old events
    /// (CloudWatch Logs: 14 days; Datadog: 18 hours). The input is generated
    /// again each hour.
    pub recent: bool,
}

impl Default for GeneratorSpec {
    fn default() -> Self {
        let g = GenConfig::default();
        GeneratorSpec {
            events: 1_000_000,
            accounts: g.accounts,
            size: 650,
            tcp_share: g.tcp_share,
            audit_share: g.audit_share,
            prod_share: g.prod_share,
            error_share: g.error_share,
            seed: g.seed,
            recent: false,
        }
    }
}

impl GeneratorSpec {
    /// The generator configuration.
    pub fn gen_config(&self) -> GenConfig {
        GenConfig {
            seed: self.seed,
            accounts: self.accounts,
            target_size: self.size,
            tcp_share: self.tcp_share,
            audit_share: self.audit_share,
            prod_share: self.prod_share,
            error_share: self.error_share,
            start_ms: if self.recent {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                now - now % 3_600_000 - 3_600_000
            } else {
                GenConfig::default().start_ms
            },
            ..GenConfig::default()
        }
    }
}

/// Where the engine runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// In this process, through the library API.
    #[default]
    InProcess,
    /// In a `sluice serve` child process, over HTTP ingest.
    Http,
    /// `sluice serve --cluster` nodes on NATS JetStream, over HTTP ingest,
    /// each round also run through one `sluice serve` without the stream.
    Cluster,
}

/// How to run a scenario.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunSpec {
    /// Runs (the report gives the median and the spread).
    pub repeat: u32,
    /// Offered load in events/s (open loop); 0 = as fast as possible.
    pub rate: u64,
    /// Filter workers (0: one per core).
    pub workers: usize,
    /// In process or over HTTP.
    pub mode: Mode,
    /// Concurrent HTTP connections (HTTP and cluster modes).
    pub connections: usize,
    /// Bytes of each HTTP ingest body (HTTP and cluster modes), cut at line
    /// ends. Default 1 MiB.
    pub body_bytes: usize,
    /// Sluice nodes (cluster mode).
    pub nodes: usize,
    /// NATS servers (cluster mode): 1, or 3 for a replicated cluster.
    pub nats_servers: usize,
    /// Partitions of the stream (cluster mode). Default 16.
    pub partitions: u32,
    /// Keep a live tap open on the first subscription, read by a thread of
    /// its own (in-process mode), to measure what a tap costs.
    pub tap: bool,
    /// Events the naive baseline runs on (it is slow; its rate is per event).
    pub baseline_events: u64,
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            repeat: 3,
            rate: 0,
            workers: 0,
            mode: Mode::InProcess,
            connections: 4,
            body_bytes: 1 << 20,
            nodes: 1,
            nats_servers: 1,
            partitions: 16,
            tap: false,
            baseline_events: 100_000,
        }
    }
}

/// Which generated accounts a template expands over.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum AccountSelect {
    /// `"all"` or `"first"`.
    Named(String),
    /// The N busiest accounts.
    Count(u32),
}

impl Default for AccountSelect {
    fn default() -> Self {
        AccountSelect::Named("all".into())
    }
}

/// A subscription template.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionTemplate {
    /// Accounts to create it for.
    #[serde(default)]
    pub accounts: AccountSelect,
    /// Copies per account.
    #[serde(default = "one")]
    pub per_account: u32,
    /// Destinations.
    pub destination_ids: Vec<String>,
    /// Sources.
    #[serde(rename = "source")]
    pub sources: Vec<SourceSpec>,
}

fn one() -> u32 {
    1
}

/// A scenario.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Traffic.
    #[serde(default)]
    pub generator: GeneratorSpec,
    /// How to run it.
    #[serde(default)]
    pub run: RunSpec,
    /// Filters restricted to ngrok's fields.
    #[serde(default)]
    pub strict_ngrok_filters: bool,
    /// Destinations.
    #[serde(default, rename = "destination")]
    pub destinations: Vec<DestinationSpec>,
    /// Subscription templates.
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionTemplate>,
    /// The control-plane benchmark (needs `sluice serve`).
    #[serde(default)]
    pub api: Option<ApiSpec>,
}

impl Scenario {
    /// Reads a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let s: Scenario = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if s.subscriptions.is_empty() && s.api.is_none() {
            return Err(format!(
                "{}: no [[subscriptions]] and no [api]: nothing to run",
                path.display()
            ));
        }
        if s.generator.events == 0 {
            return Err(format!("{}: generator.events must be > 0", path.display()));
        }
        Ok(s)
    }

    /// The pipeline, with templates expanded over `accounts` (busiest first).
    pub fn pipeline(&self, accounts: &[String]) -> Result<PipelineSpec, String> {
        let mut subs = Vec::new();
        for (t, tpl) in self.subscriptions.iter().enumerate() {
            let chosen: &[String] = match &tpl.accounts {
                AccountSelect::Named(n) if n == "all" => accounts,
                AccountSelect::Named(n) if n == "first" => &accounts[..accounts.len().min(1)],
                AccountSelect::Named(n) => {
                    return Err(format!(
                        "subscriptions[{t}].accounts: `{n}` is not \"all\", \"first\" or a number"
                    ));
                }
                AccountSelect::Count(c) => &accounts[..accounts.len().min(*c as usize)],
            };
            for (a, acct) in chosen.iter().enumerate() {
                for c in 0..tpl.per_account.max(1) {
                    subs.push(SubscriptionSpec {
                        id: format!("esb_t{t}_a{a}_c{c}"),
                        account_id: acct.clone(),
                        destination_ids: tpl.destination_ids.clone(),
                        sources: tpl.sources.clone(),
                    });
                }
            }
        }
        let spec = PipelineSpec {
            strict_ngrok_filters: self.strict_ngrok_filters,
            destinations: self.destinations.clone(),
            subscriptions: subs,
        };
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }
}

/// Where the pre-generated input of a scenario is kept: generated once per
/// generator configuration, then reused (and read from the page cache).
pub fn data_path(dir: &Path, g: &GeneratorSpec) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{:?}", g.gen_config()).hash(&mut h);
    g.events.hash(&mut h);
    dir.join(format!("events-{}-{:016x}.ndjson", g.events, h.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_over_accounts() {
        let s: Scenario = toml::from_str(
            r#"
            name = "t"
            [[destination]]
            id = "ed"
            kind = "blackhole"
            [[subscriptions]]
            accounts = "all"
            destination_ids = ["ed"]
              [[subscriptions.source]]
              type = "http_request_complete.v0"
            [[subscriptions]]
            accounts = "first"
            per_account = 3
            destination_ids = ["ed"]
              [[subscriptions.source]]
              type = "tcp_connection_closed.v0"
            [[subscriptions]]
            accounts = 2
            destination_ids = ["ed"]
              [[subscriptions.source]]
              type = "ip_policy_created.v0"
            "#,
        )
        .unwrap();
        let accts: Vec<String> = (0..5).map(|i| format!("ac_{i}")).collect();
        let p = s.pipeline(&accts).unwrap();
        assert_eq!(p.subscriptions.len(), 5 + 3 + 2);
        assert_eq!(p.subscriptions[5].account_id, "ac_0");
        assert_eq!(p.subscriptions[9].account_id, "ac_1");
    }
}

/// How to run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Plugin directories.
    pub plugin_dirs: Vec<PathBuf>,
    /// Show a progress bar.
    pub progress: bool,
    /// Override the scenario's offered rate.
    pub rate: Option<u64>,
    /// Override the scenario's worker count.
    pub workers: Option<usize>,
    /// Force the full parse of every event (the on-demand reader off).
    pub full_parse: bool,
}

/// The control-plane benchmark of a scenario's `[api]` table.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSpec {
    /// Subscriptions stored (in one account).
    pub subscriptions: usize,
    /// Concurrent clients for get and list.
    pub clients: usize,
    /// How long they run.
    pub seconds: u64,
    /// Changes timed one after the other.
    pub changes: usize,
}

impl Default for ApiSpec {
    fn default() -> Self {
        ApiSpec {
            subscriptions: 10_000,
            clients: 64,
            seconds: 10,
            changes: 20,
        }
    }
}
