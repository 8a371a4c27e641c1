//! What tenants may do: the operator's policy for `sluice serve`, in one
//! place. Everything a tenant sends through the API is checked here (plugin
//! kinds, delivery knobs, quotas, write and test-event rates, file paths) or
//! turned into the restrictions every plugin instance receives (egress,
//! timeouts). The operator's own settings (environment endpoints, the serve
//! configuration, `sluice run` files) are not governed by it.
//!
//! The serve configuration's `[tenants]` table deserializes into
//! [`TenantPolicy`]; every key is also a `sluice serve` flag.

use crate::error::{ApiError, Code};
use serde::{Deserialize, Serialize};
use sluice_engine::config::DeliveryConfig;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// The ngrok targets: offered by default, like `http`.
pub const NGROK_KINDS: [&str; 5] = [
    "kinesis",
    "firehose",
    "cloudwatch_logs",
    "datadog",
    "azure_logs_ingestion",
];

/// The operator's rules for tenants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantPolicy {
    /// Destination kinds the API offers (ngrok targets and `plugin` kinds).
    /// Default: the ngrok targets and `http`. `file`, `blackhole` and test
    /// plugins are offered only if listed here.
    pub plugin_kinds: Vec<String>,
    /// Whether tenants' destinations may connect to loopback, private,
    /// shared or link-local addresses. Default false.
    pub allow_private_destinations: bool,
    /// Longest any one outbound call of a tenant's destination may take (ms).
    pub max_outbound_timeout_ms: u64,
    /// Destinations per account (ERR_NGROK_5102).
    pub max_destinations: usize,
    /// Subscriptions per account (ERR_NGROK_5131).
    pub max_subscriptions: usize,
    /// Destinations per subscription (ERR_NGROK_5126).
    pub max_destinations_per_subscription: usize,
    /// Sources per subscription.
    pub max_sources_per_subscription: usize,
    /// Bytes of one filter.
    pub max_filter_bytes: usize,
    /// API writes (create, update, delete) per account per minute (429, ERR_NGROK_226).
    pub writes_per_minute: u32,
    /// Test events (`verify_with_test_event`) per account per minute.
    pub test_events_per_minute: u32,
    /// Failed authentications per client address per minute, then 429.
    pub auth_failures_per_minute: u32,
    /// Bounds of the delivery settings a tenant may set in a `plugin` target.
    pub delivery: DeliveryBounds,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        TenantPolicy {
            plugin_kinds: NGROK_KINDS
                .iter()
                .chain(&["http"])
                .map(|k| k.to_string())
                .collect(),
            allow_private_destinations: false,
            max_outbound_timeout_ms: 30_000,
            max_destinations: 100,
            max_subscriptions: 1_000,
            max_destinations_per_subscription: 10,
            max_sources_per_subscription: 64,
            max_filter_bytes: 4096,
            writes_per_minute: 300,
            test_events_per_minute: 20,
            auth_failures_per_minute: 30,
            delivery: DeliveryBounds::default(),
        }
    }
}

/// An inclusive range, written `"MIN..MAX"` in the serve configuration and
/// on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    /// Least allowed.
    pub min: u64,
    /// Most allowed.
    pub max: u64,
}

impl Bound {
    const fn new(min: u64, max: u64) -> Bound {
        Bound { min, max }
    }
}

impl std::str::FromStr for Bound {
    type Err = String;
    fn from_str(s: &str) -> Result<Bound, String> {
        let (a, b) = s
            .split_once("..")
            .ok_or_else(|| format!("'{s}' is not a range MIN..MAX"))?;
        let n = |x: &str| {
            x.trim()
                .replace('_', "")
                .parse::<u64>()
                .map_err(|_| format!("'{x}' in '{s}' is not a whole number"))
        };
        let (min, max) = (n(a)?, n(b)?);
        if min > max {
            return Err(format!("'{s}': the minimum is over the maximum"));
        }
        Ok(Bound { min, max })
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.min, self.max)
    }
}

impl Serialize for Bound {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bound {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bound, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The range of every delivery setting a tenant may set. A setting outside
/// its range is refused (ERR_NGROK_215, naming the range); one the tenant
/// leaves out takes the engine's default, brought inside the range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryBounds {
    /// `linger_ms`.
    pub linger_ms: Bound,
    /// `max_in_flight`.
    pub max_in_flight: Bound,
    /// `max_attempts` (0, unlimited, only if the range allows it).
    pub max_attempts: Bound,
    /// `max_age_s` (0, unlimited, only if the range allows it).
    pub max_age_s: Bound,
    /// `send_timeout_ms` (0, unlimited, only if the range allows it).
    pub send_timeout_ms: Bound,
    /// `retry_max_backoff_ms`.
    pub retry_max_backoff_ms: Bound,
    /// `buffer_max_bytes`.
    pub buffer_max_bytes: Bound,
    /// `disk_max_bytes`.
    pub disk_max_bytes: Bound,
    /// `dead_letter_max_bytes`: the space of a destination's dead letters
    /// (full: the destination pauses).
    pub dead_letter_max_bytes: Bound,
    /// `fsync_interval_ms`.
    pub fsync_interval_ms: Bound,
}

impl Default for DeliveryBounds {
    fn default() -> Self {
        DeliveryBounds {
            linger_ms: Bound::new(0, 60_000),
            max_in_flight: Bound::new(1, 64),
            max_attempts: Bound::new(1, 50),
            max_age_s: Bound::new(1, 86_400),
            send_timeout_ms: Bound::new(1_000, 60_000),
            retry_max_backoff_ms: Bound::new(100, 300_000),
            buffer_max_bytes: Bound::new(64 << 10, 64 << 20),
            disk_max_bytes: Bound::new(1 << 20, 1 << 30),
            dead_letter_max_bytes: Bound::new(64 << 10, 256 << 20),
            fsync_interval_ms: Bound::new(10, 60_000),
        }
    }
}

impl DeliveryBounds {
    /// Each bounded setting: its name, its range, and the value in `d`.
    fn each<'a>(&'a self, d: &'a mut DeliveryConfig) -> [(&'static str, Bound, Knob<'a>); 10] {
        [
            ("linger_ms", self.linger_ms, Knob::U64(&mut d.linger_ms)),
            (
                "max_in_flight",
                self.max_in_flight,
                Knob::U32(&mut d.max_in_flight),
            ),
            (
                "max_attempts",
                self.max_attempts,
                Knob::U32(&mut d.max_attempts),
            ),
            ("max_age_s", self.max_age_s, Knob::U64(&mut d.max_age_s)),
            (
                "send_timeout_ms",
                self.send_timeout_ms,
                Knob::U64(&mut d.send_timeout_ms),
            ),
            (
                "retry_max_backoff_ms",
                self.retry_max_backoff_ms,
                Knob::U64(&mut d.retry_max_backoff_ms),
            ),
            (
                "buffer_max_bytes",
                self.buffer_max_bytes,
                Knob::U64(&mut d.buffer_max_bytes),
            ),
            (
                "disk_max_bytes",
                self.disk_max_bytes,
                Knob::U64(&mut d.disk_max_bytes),
            ),
            (
                "dead_letter_max_bytes",
                self.dead_letter_max_bytes,
                Knob::U64(&mut d.dead_letter_max_bytes),
            ),
            (
                "fsync_interval_ms",
                self.fsync_interval_ms,
                Knob::U64(&mut d.fsync_interval_ms),
            ),
        ]
    }

    /// Sets one bound by name (`sluice serve --tenant-delivery NAME=MIN..MAX`).
    pub fn set(&mut self, name: &str, bound: Bound) -> Result<(), String> {
        let slot = match name {
            "linger_ms" => &mut self.linger_ms,
            "max_in_flight" => &mut self.max_in_flight,
            "max_attempts" => &mut self.max_attempts,
            "max_age_s" => &mut self.max_age_s,
            "send_timeout_ms" => &mut self.send_timeout_ms,
            "retry_max_backoff_ms" => &mut self.retry_max_backoff_ms,
            "buffer_max_bytes" => &mut self.buffer_max_bytes,
            "disk_max_bytes" => &mut self.disk_max_bytes,
            "dead_letter_max_bytes" => &mut self.dead_letter_max_bytes,
            "fsync_interval_ms" => &mut self.fsync_interval_ms,
            other => {
                return Err(format!(
                    "'{other}' is not a bounded delivery setting (linger_ms, max_in_flight, max_attempts, max_age_s, send_timeout_ms, retry_max_backoff_ms, buffer_max_bytes, disk_max_bytes, dead_letter_max_bytes, fsync_interval_ms)"
                ));
            }
        };
        *slot = bound;
        Ok(())
    }

    /// Checks the settings a tenant gave (`given`: the keys it sent) and
    /// brings the others inside their ranges.
    pub fn apply(&self, d: &mut DeliveryConfig, given: &[&str]) -> Result<(), String> {
        for (name, b, knob) in self.each(d) {
            let v = knob.get();
            if (b.min..=b.max).contains(&v) {
                continue;
            }
            if given.contains(&name) {
                return Err(format!(
                    "delivery.{name} = {v} is outside what this server allows ({b})"
                ));
            }
            knob.set(v.clamp(b.min, b.max));
        }
        Ok(())
    }

    /// The delivery settings of a destination a tenant did not tune: the
    /// engine's defaults inside the ranges.
    pub fn defaults(&self) -> DeliveryConfig {
        let mut d = DeliveryConfig::default();
        let _ = self.apply(&mut d, &[]);
        d
    }
}

enum Knob<'a> {
    U64(&'a mut u64),
    U32(&'a mut u32),
}

impl Knob<'_> {
    fn get(&self) -> u64 {
        match self {
            Knob::U64(v) => **v,
            Knob::U32(v) => u64::from(**v),
        }
    }
    fn set(self, v: u64) {
        match self {
            Knob::U64(x) => *x = v,
            Knob::U32(x) => *x = u32::try_from(v).unwrap_or(u32::MAX),
        }
    }
}

impl TenantPolicy {
    /// Checks the policy itself (a serve configuration or flags).
    pub fn check(&self) -> Result<(), String> {
        if self.max_outbound_timeout_ms == 0 {
            return Err("tenants.max_outbound_timeout_ms must be over 0".into());
        }
        let mut d = DeliveryConfig::default();
        self.delivery.apply(&mut d, &[])?;
        d.check()
            .map_err(|e| format!("tenants.delivery bounds allow a setting the engine refuses: {e}"))
    }

    /// The restrictions every plugin instance of a tenant receives
    /// (`sluice_sdk::restrictions`).
    pub fn restrictions(&self) -> String {
        let mut r = format!("max_timeout_ms={}", self.max_outbound_timeout_ms);
        if !self.allow_private_destinations {
            r.insert_str(0, "egress=public;");
        }
        r
    }

    /// Refuses a destination kind the operator does not offer (or that is
    /// not loaded). `loaded`: the plugin kinds found.
    pub fn check_kind(&self, kind: &str, loaded: &[String]) -> Result<(), ApiError> {
        let offered = self.offered(loaded);
        if offered.iter().any(|k| k == kind) {
            return Ok(());
        }
        Err(ApiError::new(
            Code::InvalidDestination,
            if self.plugin_kinds.iter().any(|k| k == kind) {
                format!(
                    "No plugin of kind '{kind}' is loaded; kinds offered: {}.",
                    offered.join(", ")
                )
            } else {
                format!(
                    "Destinations of kind '{kind}' are not offered by this server; kinds offered: {}.",
                    offered.join(", ")
                )
            },
        ))
    }

    /// The kinds tenants can use: allowed by the operator and loaded (the
    /// ngrok targets are offered even when their plugin is missing: their
    /// records are dead-lettered with the reason).
    pub fn offered(&self, loaded: &[String]) -> Vec<String> {
        self.plugin_kinds
            .iter()
            .filter(|k| NGROK_KINDS.contains(&k.as_str()) || loaded.contains(k))
            .cloned()
            .collect()
    }

    /// Refuses a new destination past the account's quota.
    pub fn check_destinations(&self, count: usize) -> Result<(), ApiError> {
        if count >= self.max_destinations {
            return Err(ApiError::new(
                Code::DestinationLimit,
                format!(
                    "This account has reached its limit of {} event destinations; delete one first.",
                    self.max_destinations
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a new subscription past the account's quota.
    pub fn check_subscriptions(&self, count: usize) -> Result<(), ApiError> {
        if count >= self.max_subscriptions {
            return Err(ApiError::new(
                Code::SubscriptionLimit,
                format!(
                    "This account has reached its limit of {} event subscriptions; delete one first.",
                    self.max_subscriptions
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a subscription with too many destinations or sources.
    pub fn check_subscription_shape(
        &self,
        destinations: usize,
        sources: usize,
    ) -> Result<(), ApiError> {
        if destinations > self.max_destinations_per_subscription {
            return Err(ApiError::new(
                Code::DestinationsPerSubscriptionLimit,
                format!(
                    "A subscription may send to at most {} destinations; this one names {destinations}.",
                    self.max_destinations_per_subscription
                ),
            ));
        }
        if sources > self.max_sources_per_subscription {
            return Err(ApiError::new(
                Code::InvalidFieldValue,
                format!(
                    "Invalid value for parameter 'sources': at most {} sources per subscription, got {sources}.",
                    self.max_sources_per_subscription
                ),
            ));
        }
        Ok(())
    }

    /// Refuses a filter longer than the operator allows.
    pub fn check_filter(&self, filter: &str) -> Result<(), ApiError> {
        if filter.len() > self.max_filter_bytes {
            return Err(ApiError::new(
                Code::InvalidFieldValue,
                format!(
                    "Invalid value for parameter 'filter': {} bytes, over this server's limit of {} bytes.",
                    filter.len(),
                    self.max_filter_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// Where a tenant's `file` destination writes: `<data-dir>/files/<account>/`.
pub fn files_root(data_dir: &Path, account: &str) -> PathBuf {
    data_dir.join("files").join(account)
}

/// Checks the `path` a tenant gave a `file` destination: relative, plain
/// names only (no `..`, no root, no `.`-only tricks), at most 8 levels and
/// 255 bytes a name. It is resolved under [`files_root`].
pub fn check_file_path(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if path.is_empty() || path.len() > 1024 || path.contains('\0') {
        return Err("'path' must be 1 to 1024 bytes, without NUL".into());
    }
    let mut n = 0;
    for c in p.components() {
        match c {
            Component::Normal(name) if name.len() <= 255 => n += 1,
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "'path' must be relative to this account's file area, without '..' ('{path}')"
                ));
            }
        }
    }
    if n == 0 || n > 8 {
        return Err(format!(
            "'path' must name a file at most 8 levels deep ('{path}')"
        ));
    }
    Ok(())
}

/// Resolves a checked relative `path` under `root`, refusing a symbolic link
/// anywhere between them (the file area is the server's; a link found there
/// was not made through the API and is not followed).
pub fn resolve_file_path(root: &Path, path: &str) -> Result<PathBuf, String> {
    check_file_path(path)?;
    let full = root.join(path);
    let mut at = root.to_path_buf();
    for c in Path::new(path).components() {
        if let Component::Normal(name) = c {
            at.push(name);
            if std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(format!(
                    "'{}' is a symbolic link; file destinations do not follow links",
                    at.display()
                ));
            }
        }
    }
    Ok(full)
}

/// Counts events per key over a sliding minute (a token bucket refilled at
/// `per_minute` a minute): API writes and test events per account, failed
/// authentications per address.
pub struct RateMeter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateMeter {
    /// A meter allowing `per_minute` a minute per key (0: nothing).
    pub fn new(per_minute: u32) -> RateMeter {
        RateMeter {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one unit for `key`; `Err(seconds to wait)` when there is none.
    pub fn take(&self, key: &str) -> Result<(), u64> {
        self.check(key, true)
    }

    /// Whether `key` has a unit left, without taking it.
    pub fn has_room(&self, key: &str) -> Result<(), u64> {
        self.check(key, false)
    }

    fn check(&self, key: &str, take: bool) -> Result<(), u64> {
        let cap = f64::from(self.per_minute);
        let rate = cap / 60.0;
        if rate == 0.0 {
            return Err(60);
        }
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        // Forget idle keys now and then so that random keys cannot grow it.
        if b.len() > 10_000 {
            b.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < cap
            });
        }
        let (tokens, at) = b.entry(key.to_string()).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(cap);
        *at = now;
        if *tokens >= 1.0 {
            if take {
                *tokens -= 1.0;
            }
            Ok(())
        } else {
            Err(((1.0 - *tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

/// 429 `ERR_NGROK_226` with `Retry-After`.
pub fn rate_limited(what: &str, retry_after: u64) -> ApiError {
    ApiError {
        retry_after: Some(retry_after),
        ..ApiError::new(
            Code::RateLimited,
            format!("Too many {what}; try again in {retry_after} s."),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_offer_the_ngrok_targets_and_http_only() {
        let p = TenantPolicy::default();
        p.check().unwrap();
        let loaded: Vec<String> = ["http", "file", "blackhole", "faulty", "kinesis"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(p.check_kind("http", &loaded).is_ok());
        assert!(p.check_kind("datadog", &loaded).is_ok());
        for k in ["file", "blackhole", "faulty"] {
            let e = p.check_kind(k, &loaded).unwrap_err();
            assert!(e.msg.contains("not offered"), "{k}: {}", e.msg);
        }
        assert_eq!(p.restrictions(), "egress=public;max_timeout_ms=30000");
    }

    #[test]
    fn delivery_settings_are_refused_outside_their_range_and_defaults_clamped() {
        let b = DeliveryBounds::default();
        let mut d = DeliveryConfig {
            send_timeout_ms: 0,
            ..DeliveryConfig::default()
        };
        let e = b.apply(&mut d, &["send_timeout_ms"]).unwrap_err();
        assert!(
            e.contains("send_timeout_ms = 0") && e.contains("1000..60000"),
            "{e}"
        );
        let mut d = DeliveryConfig {
            max_attempts: 0,
            max_age_s: 0,
            buffer_max_bytes: 1024,
            ..DeliveryConfig::default()
        };
        assert!(b.apply(&mut d, &["max_attempts"]).is_err());
        let mut tight = b.clone();
        tight
            .set("buffer_max_bytes", "1048576..2097152".parse().unwrap())
            .unwrap();
        assert_eq!(tight.defaults().buffer_max_bytes, 2 << 20);
        assert!(tight.set("nope", Bound::new(1, 2)).is_err());
        assert!("5..1".parse::<Bound>().is_err());
        assert_eq!(
            "1_000..2000".parse::<Bound>().unwrap(),
            Bound::new(1000, 2000)
        );
    }

    #[test]
    fn file_paths_stay_in_the_account_area() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/../b", "..", "."] {
            assert!(check_file_path(bad).is_err(), "{bad}");
        }
        for good in ["x.ndjson", "a/b/c.ndjson", "./x"] {
            check_file_path(good).unwrap();
        }
        let dir = std::env::temp_dir().join(format!("sluice-policy-{}", std::process::id()));
        let root = dir.join("files/ac_1");
        std::fs::create_dir_all(&root).unwrap();
        assert_eq!(
            resolve_file_path(&root, "x.ndjson").unwrap(),
            root.join("x.ndjson")
        );
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("/tmp", root.join("out")).unwrap();
            let e = resolve_file_path(&root, "out/x.ndjson").unwrap_err();
            assert!(e.contains("symbolic link"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_rate_meter_refills_over_a_minute() {
        let m = RateMeter::new(2);
        assert!(m.take("a").is_ok());
        assert!(m.take("a").is_ok());
        let wait = m.take("a").unwrap_err();
        assert!((1..=30).contains(&wait), "{wait}");
        assert!(m.take("b").is_ok(), "keys are separate");
        assert!(RateMeter::new(0).take("a").is_err());
    }
}
