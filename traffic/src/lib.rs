//! # sluice-traffic
//!
//! A deterministic generator of realistic, high-cardinality account events.
//!
//! From a seed it produces `http_request_complete.v0` events carrying every
//! field of the registry (headers, TLS, timings, traffic-policy logs, the
//! auth modules when they apply), `tcp_connection_closed.v0` events, and a
//! small share of audit events across every audit type. Cardinality comes from
//! large IPv4 and IPv6 client pools (with heavy hitters), server names
//! Zipf-distributed over many accounts and domains, paths with ids in them,
//! and skewed methods, status codes and sizes.
//!
//! ```
//! use sluice_traffic::{GenConfig, Generator};
//! let mut g = Generator::new(GenConfig { seed: 7, accounts: 10, ..GenConfig::default() });
//! let mut line = Vec::new();
//! g.next_event(&mut line);
//! let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
//! assert_eq!(v["account_id"].as_str().unwrap().len(), 30);
//! ```

use sluice_engine::events::{EVENT_TYPES, EventClass};
use sluice_engine::json::write_str;
use std::io::Write;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenConfig {
    /// Seed: the same seed gives the same events.
    pub seed: u64,
    /// Number of accounts (ids `ac_...`), Zipf-distributed.
    pub accounts: u32,
    /// Domains per account.
    pub domains_per_account: u32,
    /// Share of traffic events that are `tcp_connection_closed.v0`.
    pub tcp_share: f64,
    /// Share of all events that are audit events.
    pub audit_share: f64,
    /// Share of HTTP requests to an account's `*-prod.ngrok.dev` domain.
    pub prod_share: f64,
    /// Share of HTTP responses that are 5xx.
    pub error_share: f64,
    /// Pad HTTP events with headers up to about this many bytes (0 = no padding).
    pub target_size: usize,
    /// Milliseconds between consecutive event timestamps (simulated time).
    pub tick_ms: f64,
    /// Simulated start time, ms since the epoch.
    pub start_ms: i64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 1,
            accounts: 100,
            domains_per_account: 4,
            tcp_share: 0.1,
            audit_share: 0.01,
            prod_share: 0.3,
            error_share: 0.03,
            target_size: 0,
            tick_ms: 0.01,
            start_ms: 1_793_491_200_000, // 2026-11-01T00:00:00Z
        }
    }
}

/// SplitMix64: small, fast, and stable across versions (unlike `rand`'s generators).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    /// Uniform in `[0, 1)`.
    #[inline]
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// True with probability `p`.
    #[inline]
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// One of `items`, by weight.
    pub fn weighted<'a, T>(&mut self, items: &'a [(T, u32)]) -> &'a T {
        let total: u32 = items.iter().map(|(_, w)| w).sum();
        let mut x = self.below(u64::from(total)) as u32;
        for (t, w) in items {
            if x < *w {
                return t;
            }
            x -= w;
        }
        &items[items.len() - 1].0
    }
    /// A log-normal sample with the given median and spread (sigma of ln).
    pub fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        // Box-Muller.
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        median * (sigma * z).exp()
    }
}

/// Samples `0..n` with probability proportional to `1 / (k+1)^s`.
#[derive(Clone, Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// A Zipf distribution over `n` items with exponent `s`.
    pub fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n.max(1));
        let mut acc = 0.0;
        for k in 0..n.max(1) {
            acc += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }
    /// One sample.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// An id like ngrok's: `prefix_` + 27 base62 characters, derived from `n`.
pub fn id(prefix: &str, n: u64, salt: u64) -> String {
    let mut s = String::with_capacity(prefix.len() + 28);
    s.push_str(prefix);
    s.push('_');
    let mut r = Rng::new(n.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ salt);
    for _ in 0..27 {
        s.push(BASE62[r.below(62) as usize] as char);
    }
    s
}

const WORDS: &[&str] = &[
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "cyberdyne",
    "soylent",
    "vandelay",
    "pied",
    "piper",
    "aperture",
    "oscorp",
    "gringotts",
    "monarch",
    "nakatomi",
    "virtucon",
];
const ENVS: &[&str] = &["staging", "dev", "qa", "canary", "edge"];
const PATHS: &[&str] = &[
    "/api/v1/users/{id}",
    "/api/v1/users/{id}/orders/{uuid}",
    "/api/v2/orders/{uuid}",
    "/api/v2/orders/{uuid}/items",
    "/graphql",
    "/healthz",
    "/static/js/app.{hex}.js",
    "/static/css/main.{hex}.css",
    "/images/{id}.png",
    "/webhooks/stripe",
    "/webhooks/github/{id}",
    "/v1/sessions/{uuid}",
    "/login",
    "/logout",
    "/search",
    "/docs/{slug}",
    "/blog/{slug}",
    "/api/v1/projects/{id}/builds/{id}",
    "/favicon.ico",
    "/",
];
const SLUGS: &[&str] = &[
    "getting-started",
    "pricing",
    "traffic-policy",
    "observability",
    "kubernetes",
    "release-notes",
];
const UAS: &[&str] = &[
    "mozilla/5.0 (x11; linux x86_64) applewebkit/537.36 (khtml, like gecko) chrome/131.0 safari/537.36",
    "mozilla/5.0 (macintosh; intel mac os x 14_5) applewebkit/605.1.15 (khtml, like gecko) version/17.5 safari/605.1.15",
    "mozilla/5.0 (iphone; cpu iphone os 17_5 like mac os x) applewebkit/605.1.15 mobile/15e148",
    "curl/8.5.0",
    "python-requests/2.32.3",
    "go-http-client/2.0",
    "stripe/1.0 (+https://stripe.com/docs/webhooks)",
    "github-hookshot/7a3f9c1",
    "okhttp/4.12.0",
    "axios/1.7.2",
    "k6/0.52.0 (https://k6.io/)",
];
const SHORT_UAS: &[&str] = &[
    "curl/8.5.0",
    "python-requests/2.32.3",
    "go-http-client/2.0",
    "okhttp/4.12.0",
    "axios/1.7.2",
];
const METHODS: &[(&str, u32)] = &[
    ("get", 700),
    ("post", 200),
    ("put", 40),
    ("delete", 30),
    ("patch", 20),
    ("head", 6),
    ("options", 4),
];
const OK_STATUS: &[(u16, u32)] = &[
    (200, 800),
    (201, 30),
    (204, 30),
    (301, 10),
    (302, 15),
    (304, 20),
    (400, 20),
    (401, 20),
    (403, 10),
    (404, 35),
    (429, 5),
];
const ERR_STATUS: &[(u16, u32)] = &[(500, 50), (502, 25), (503, 20), (504, 5)];
const CIPHERS: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
];
const DECISIONS: &[(&str, u32)] = &[("allow", 95), ("block", 5)];
const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "text/html; charset=utf-8",
    "image/png",
    "application/javascript",
    "text/css",
];

struct Account {
    id: String,
    domains: Vec<String>,
    prod: String,
    server_ips: Vec<String>,
}

/// The generator. One instance is one deterministic stream.
pub struct Generator {
    cfg: GenConfig,
    rng: Rng,
    accounts: Vec<Account>,
    account_zipf: Zipf,
    v4_zipf: Zipf,
    v6_zipf: Zipf,
    v4: Vec<[u8; 4]>,
    v6: Vec<[u16; 8]>,
    audit_types: Vec<usize>,
    n: u64,
}

const V4_POOL: usize = 1 << 20;
const V6_POOL: usize = 1 << 18;

impl Generator {
    /// A generator for `cfg`.
    pub fn new(cfg: GenConfig) -> Generator {
        let mut rng = Rng::new(cfg.seed);
        let accounts = (0..cfg.accounts.max(1) as u64)
            .map(|a| {
                let word = WORDS[(a as usize) % WORDS.len()];
                let name = format!("{word}{a}");
                let prod = format!("{name}-prod.ngrok.dev");
                let mut domains = vec![prod.clone()];
                for d in 1..cfg.domains_per_account.max(1) {
                    let env = ENVS[(d as usize - 1) % ENVS.len()];
                    domains.push(match d % 3 {
                        0 => format!("{env}.{name}.com"),
                        1 => format!("{name}-{env}.ngrok.dev"),
                        _ => format!("{name}-{env}.ngrok.app"),
                    });
                }
                let server_ips = (0..3)
                    .map(|i| format!("3.{}.{}.{}", 130 + (a % 60), (a * 7 + i) % 256, 10 + i))
                    .collect();
                Account {
                    id: id("ac", a, cfg.seed),
                    domains,
                    prod,
                    server_ips,
                }
            })
            .collect();
        let v4 = (0..V4_POOL)
            .map(|_| {
                let x = rng.next_u64();
                [
                    (x % 223 + 1) as u8,
                    (x >> 8) as u8,
                    (x >> 16) as u8,
                    (x >> 24) as u8,
                ]
            })
            .collect();
        let v6 = (0..V6_POOL)
            .map(|_| {
                let x = rng.next_u64();
                let y = rng.next_u64();
                [
                    0x2001 + (x % 0x3e00) as u16,
                    (x >> 16) as u16,
                    (x >> 32) as u16,
                    (x >> 48) as u16,
                    y as u16,
                    (y >> 16) as u16,
                    (y >> 32) as u16,
                    (y >> 48) as u16,
                ]
            })
            .collect();
        let audit_types = EVENT_TYPES
            .iter()
            .enumerate()
            .filter(|(_, t)| t.class == EventClass::Audit)
            .map(|(i, _)| i)
            .collect();
        Generator {
            account_zipf: Zipf::new(cfg.accounts.max(1) as usize, 1.07),
            v4_zipf: Zipf::new(V4_POOL, 0.9),
            v6_zipf: Zipf::new(V6_POOL, 0.9),
            cfg,
            rng,
            accounts,
            v4,
            v6,
            audit_types,
            n: 0,
        }
    }

    /// The account ids, most active first.
    pub fn account_ids(&self) -> Vec<String> {
        self.accounts.iter().map(|a| a.id.clone()).collect()
    }

    /// Events generated so far.
    pub fn generated(&self) -> u64 {
        self.n
    }

    fn client_ip(&mut self, out: &mut String) {
        use std::fmt::Write as _;
        if self.rng.chance(0.3) {
            let a = self.v6[self.v6_zipf.sample(&mut self.rng)];
            let _ = write!(
                out,
                "{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}",
                a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
            );
        } else {
            let a = self.v4[self.v4_zipf.sample(&mut self.rng)];
            let _ = write!(out, "{}.{}.{}.{}", a[0], a[1], a[2], a[3]);
        }
    }

    fn path(&mut self) -> String {
        let t = PATHS[self.rng.below(PATHS.len() as u64) as usize];
        let mut s = String::with_capacity(t.len() + 40);
        let mut rest = t;
        while let Some(i) = rest.find('{') {
            s.push_str(&rest[..i]);
            let j = rest[i..].find('}').map_or(rest.len(), |j| i + j + 1);
            match &rest[i..j] {
                "{id}" => s.push_str(&(self.rng.below(5_000_000) + 1).to_string()),
                "{uuid}" => {
                    let a = self.rng.next_u64();
                    let b = self.rng.next_u64();
                    s.push_str(&format!(
                        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                        a >> 32,
                        (a >> 16) & 0xffff,
                        a & 0xfff,
                        (b >> 48) | 0x8000,
                        b & 0xffff_ffff_ffff
                    ))
                }
                "{hex}" => s.push_str(&format!("{:08x}", self.rng.next_u64() as u32)),
                _ => s.push_str(SLUGS[self.rng.below(SLUGS.len() as u64) as usize]),
            }
            rest = &rest[j..];
        }
        s.push_str(rest);
        s
    }

    fn ts(ms: i64, extra_ns: u64) -> String {
        let secs = ms.div_euclid(1000);
        let ns = (ms.rem_euclid(1000) as u64) * 1_000_000 + extra_ns % 1_000_000;
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = sluice_engine::events::civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ns:09}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }

    fn now_ms(&self) -> i64 {
        self.cfg.start_ms + (self.n as f64 * self.cfg.tick_ms) as i64
    }

    /// Appends one event (a JSON object, no newline) to `out`.
    pub fn next_event(&mut self, out: &mut Vec<u8>) {
        self.n += 1;
        let acct = self.account_zipf.sample(&mut self.rng);
        if self.rng.chance(self.cfg.audit_share) {
            self.audit(acct, out);
        } else if self.rng.chance(self.cfg.tcp_share) {
            self.tcp(acct, out);
        } else {
            self.http(acct, out);
        }
    }

    /// Appends `n` events as NDJSON lines to `out`.
    pub fn fill(&mut self, n: usize, out: &mut Vec<u8>) {
        for _ in 0..n {
            self.next_event(out);
            out.push(b'\n');
        }
    }

    /// Writes `n` events as NDJSON.
    pub fn write_ndjson(&mut self, n: u64, w: &mut impl Write) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(1 << 20);
        for _ in 0..n {
            self.next_event(&mut buf);
            buf.push(b'\n');
            if buf.len() > (1 << 20) - 4096 {
                w.write_all(&buf)?;
                buf.clear();
            }
        }
        w.write_all(&buf)
    }

    fn envelope_start(&mut self, out: &mut Vec<u8>, type_name: &str, acct: usize) -> i64 {
        let ms = self.now_ms();
        out.extend_from_slice(b"{\"event_id\":\"");
        out.extend_from_slice(id("ev", self.n, self.cfg.seed ^ 0x5eed).as_bytes());
        out.extend_from_slice(b"\",\"event_type\":\"");
        out.extend_from_slice(type_name.as_bytes());
        out.extend_from_slice(b"\",\"event_timestamp\":\"");
        out.extend_from_slice(&Self::ts(ms, 0).as_bytes()[..19]);
        out.extend_from_slice(b"Z\",\"account_id\":\"");
        out.extend_from_slice(self.accounts[acct].id.as_bytes());
        out.push(b'"');
        ms
    }

    fn kv(out: &mut Vec<u8>, first: &mut bool, k: &str, v: &str) {
        if !*first {
            out.push(b',');
        }
        *first = false;
        write_str(out, k);
        out.push(b':');
        write_str(out, v);
    }

    fn kn(out: &mut Vec<u8>, first: &mut bool, k: &str, v: impl std::fmt::Display) {
        if !*first {
            out.push(b',');
        }
        *first = false;
        write_str(out, k);
        out.push(b':');
        out.extend_from_slice(v.to_string().as_bytes());
    }

    fn http(&mut self, acct: usize, out: &mut Vec<u8>) {
        let start = out.len();
        let ms = self.envelope_start(out, "http_request_complete.v0", acct);
        let (server, server_ip) = {
            let a = &self.accounts[acct];
            let server = if a.domains.len() == 1 || self.rng.chance(self.cfg.prod_share) {
                a.prod.clone()
            } else {
                a.domains[1 + self.rng.below(a.domains.len() as u64 - 1) as usize].clone()
            };
            (server, a.server_ips[self.rng.below(3) as usize].clone())
        };
        let mut client = String::new();
        self.client_ip(&mut client);
        let port = if self.rng.chance(0.97) { 443 } else { 80 };
        let method = *self.rng.weighted(METHODS);
        let status = if self.rng.chance(self.cfg.error_share) {
            *self.rng.weighted(ERR_STATUS)
        } else {
            *self.rng.weighted(OK_STATUS)
        };
        let path = self.path();
        let query = if self.rng.chance(0.3) {
            format!(
                "page={}&limit={}",
                self.rng.below(50) + 1,
                [10, 25, 50, 100][self.rng.below(4) as usize]
            )
        } else {
            String::new()
        };
        // Lean events (a small target size) carry short user agents, no
        // duplicate raw URL and only padding headers.
        let lean = self.cfg.target_size > 0 && self.cfg.target_size < 900;
        let ua = if lean {
            SHORT_UAS[self.rng.below(SHORT_UAS.len() as u64) as usize]
        } else {
            UAS[self.rng.below(UAS.len() as u64) as usize]
        };
        let resp_len = if status == 204 || status == 304 || method == "head" {
            0
        } else {
            self.rng.lognormal(4000.0, 1.6).min(50e6) as u64
        };
        let req_len = if method == "get" || method == "head" || method == "delete" {
            0
        } else {
            self.rng.lognormal(600.0, 1.2).min(10e6) as u64
        };
        let dur_us = self.rng.lognormal(25_000.0, 1.0) as u64 + 200;
        let conn_start = ms - (dur_us / 1000) as i64 - self.rng.below(5000) as i64;

        out.extend_from_slice(b",\"object\":{");
        let mut first = true;
        if self.rng.chance(0.6) {
            out.extend_from_slice(b"\"backend\":{\"connection_reused\":");
            out.extend_from_slice(if self.rng.chance(0.8) {
                b"true"
            } else {
                b"false"
            });
            out.push(b'}');
            first = false;
        }
        if self.rng.chance(0.05) {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(b"\"basic_auth\":{");
            let mut f = true;
            let decision = *self.rng.weighted(DECISIONS);
            Self::kv(out, &mut f, "decision", decision);
            Self::kv(
                out,
                &mut f,
                "username",
                &format!("user{}", self.rng.below(1000)),
            );
            out.push(b'}');
        }
        if self.rng.chance(0.03) {
            if !first {
                out.push(b',');
            }
            first = false;
            let d = *self
                .rng
                .weighted(&[("allow", 90), ("block", 5), ("allow_while_open", 5)]);
            out.extend_from_slice(
                format!("\"circuit_breaker\":{{\"decision\":\"{d}\"}}").as_bytes(),
            );
        }
        if self.rng.chance(0.2) {
            if !first {
                out.push(b',');
            }
            first = false;
            let alg = *self
                .rng
                .weighted(&[("gzip", 70), ("deflate", 5), ("none", 25)]);
            let saved = if alg == "none" { 0 } else { resp_len / 3 };
            out.extend_from_slice(
                format!("\"compression\":{{\"algorithm\":\"{alg}\",\"bytes_saved\":{saved}}}")
                    .as_bytes(),
            );
        }
        if !first {
            out.push(b',');
        }
        out.extend_from_slice(b"\"conn\":{");
        let mut f = true;
        Self::kv(out, &mut f, "client_ip", &client);
        Self::kv(out, &mut f, "server_ip", &server_ip);
        Self::kv(out, &mut f, "server_name", &server);
        Self::kn(out, &mut f, "server_port", port);
        let st = Self::ts(conn_start, self.rng.below(1_000_000));
        Self::kv(out, &mut f, "start_ts", &st);
        // The timing fields of the seeds' example payload (request and
        // response first/last byte times, HTTP version), on about one event in
        // ten. Decided and valued from what is already drawn, so that the
        // rest of the stream is the same with or without them.
        let timing = dur_us.is_multiple_of(10);
        let times = |at: i64| Self::ts(at, dur_us * 7 % 1_000_000);
        let req_start = ms - (dur_us / 1000) as i64;
        out.extend_from_slice(b"},\"http\":{\"request\":{");
        let mut f = true;
        Self::kn(out, &mut f, "body_length", req_len);
        if timing {
            // As in the example, a request without a body has no byte times.
            if req_len == 0 {
                out.extend_from_slice(b",\"first_byte_ts\":null");
            } else {
                Self::kv(out, &mut f, "first_byte_ts", &times(req_start));
            }
        }
        out.extend_from_slice(b",\"headers\":{");
        let mut hf = true;
        let mut header = |out: &mut Vec<u8>, k: &str, v: &str| {
            if !hf {
                out.push(b',');
            }
            hf = false;
            write_str(out, k);
            out.extend_from_slice(b":[");
            write_str(out, v);
            out.push(b']');
        };
        if !lean {
            header(out, "Accept", "*/*");
            header(out, "User-Agent", ua);
            if req_len > 0 {
                header(out, "Content-Type", "application/json");
            }
        }
        // Pad towards the target size with realistic request headers.
        let tail = if lean { 230 } else { 420 } + if timing { 230 } else { 0 };
        let mut pad = 0u64;
        while self.cfg.target_size > 0 && out.len() - start + tail + 60 < self.cfg.target_size {
            let v = format!("{:016x}{:016x}", self.rng.next_u64(), self.rng.next_u64());
            let names = [
                "X-Request-Id",
                "X-Amzn-Trace-Id",
                "X-Correlation-Id",
                "Traceparent",
                "X-Client-Version",
                "X-Forwarded-For",
            ];
            let k = names[(pad as usize) % names.len()];
            let v = if pad as usize >= names.len() {
                format!("{v}-{pad}")
            } else {
                v
            };
            header(out, k, &v);
            pad += 1;
            if pad > 200 {
                break;
            }
        }
        out.push(b'}');
        if timing {
            if req_len == 0 {
                out.extend_from_slice(b",\"last_byte_ts\":null");
            } else {
                Self::kv(out, &mut f, "last_byte_ts", &times(req_start + 1));
            }
        }
        Self::kv(out, &mut f, "method", method);
        out.extend_from_slice(b",\"url\":{");
        let mut uf = true;
        Self::kv(out, &mut uf, "host", &server);
        Self::kv(out, &mut uf, "path", &path);
        Self::kv(out, &mut uf, "query", &query);
        if !lean {
            let raw = if query.is_empty() {
                format!("https://{server}{path}")
            } else {
                format!("https://{server}{path}?{query}")
            };
            Self::kv(out, &mut uf, "raw", &raw);
        }
        Self::kv(
            out,
            &mut uf,
            "scheme",
            if port == 443 { "https" } else { "http" },
        );
        out.push(b'}');
        Self::kv(out, &mut f, "user_agent", ua);
        if timing {
            let v = if port == 443 { "HTTP/2.0" } else { "HTTP/1.1" };
            Self::kv(out, &mut f, "version", v);
        }
        out.extend_from_slice(b"},\"response\":{");
        let mut f = true;
        Self::kn(out, &mut f, "body_length", resp_len);
        if timing {
            Self::kv(out, &mut f, "first_byte_ts", &times(ms - 2));
        }
        if !lean {
            out.extend_from_slice(b",\"headers\":{\"Content-Type\":[");
            write_str(
                out,
                CONTENT_TYPES[self.rng.below(CONTENT_TYPES.len() as u64) as usize],
            );
            out.extend_from_slice(b"]}");
        }
        if timing {
            Self::kv(out, &mut f, "last_byte_ts", &times(ms));
        }
        Self::kn(out, &mut f, "status_code", status);
        out.extend_from_slice(b"}}");
        if self.rng.chance(0.1) {
            let d = *self.rng.weighted(DECISIONS);
            out.extend_from_slice(format!(",\"ip_policy\":{{\"decision\":\"{d}\"}}").as_bytes());
        }
        if !lean || self.rng.chance(0.2) {
            out.extend_from_slice(
                format!(
                    ",\"ja4_fingerprint\":\"t13d{:02}{:02}h2_{:012x}_{:012x}\"",
                    10 + self.rng.below(9),
                    8 + self.rng.below(9),
                    self.rng.next_u64() & 0xffff_ffff_ffff,
                    self.rng.next_u64() & 0xffff_ffff_ffff
                )
                .as_bytes(),
            );
        }
        if self.rng.chance(0.04) {
            let d = *self.rng.weighted(DECISIONS);
            let uid = self.rng.below(100_000);
            out.extend_from_slice(
                format!(",\"oauth\":{{\"app_client_id\":\"{}\",\"decision\":\"{d}\",\"user\":{{\"id\":\"{uid}\",\"name\":\"user{uid}@example.com\"}}}}", id("oac", acct as u64, 3)).as_bytes(),
            );
        }
        if port == 443 {
            let cipher = CIPHERS[self.rng.below(CIPHERS.len() as u64) as usize];
            let version = if cipher.starts_with("TLS_AES") || cipher.starts_with("TLS_CHACHA") {
                "1.3"
            } else {
                "1.2"
            };
            out.extend_from_slice(format!(",\"tls\":{{\"cipher_suite\":\"{cipher}\"").as_bytes());
            if self.rng.chance(0.02) {
                out.extend_from_slice(
                    format!(",\"client_cert\":{{\"serial_number\":\"{:032x}\",\"subject\":{{\"cn\":\"device-{}\"}}}}", self.rng.next_u64() as u128 * 7919, self.rng.below(10_000)).as_bytes(),
                );
            }
            out.extend_from_slice(format!(",\"version\":\"{version}\"}}").as_bytes());
        }
        if self.rng.chance(0.08) {
            out.extend_from_slice(
                b",\"traffic_policy\":{\"logs\":[{\"action\":\"log\",\"rule\":\"",
            );
            out.extend_from_slice(
                ["rate-limit", "geo-block", "add-headers", "jwt-validation"]
                    [self.rng.below(4) as usize]
                    .as_bytes(),
            );
            out.extend_from_slice(b"\",\"message\":\"");
            out.extend_from_slice(format!("matched {}", self.rng.below(1000)).as_bytes());
            out.extend_from_slice(b"\"}]}");
        }
        if self.rng.chance(0.03) {
            let d = *self.rng.weighted(DECISIONS);
            out.extend_from_slice(
                format!(",\"webhook_verification\":{{\"decision\":\"{d}\"}}").as_bytes(),
            );
        }
        out.extend_from_slice(b"}}");
    }

    fn tcp(&mut self, acct: usize, out: &mut Vec<u8>) {
        let ms = self.envelope_start(out, "tcp_connection_closed.v0", acct);
        let (server, server_ip) = {
            let a = &self.accounts[acct];
            (
                format!("{}.tcp.ngrok.io", a.id[3..11].to_lowercase()),
                a.server_ips[0].clone(),
            )
        };
        let mut client = String::new();
        self.client_ip(&mut client);
        let dur_ms = self.rng.lognormal(20_000.0, 2.0) as i64 + 1;
        out.extend_from_slice(b",\"object\":{\"conn\":{");
        let mut f = true;
        Self::kn(
            out,
            &mut f,
            "bytes_in",
            self.rng.lognormal(5000.0, 2.0) as u64,
        );
        Self::kn(
            out,
            &mut f,
            "bytes_out",
            self.rng.lognormal(80_000.0, 2.0) as u64,
        );
        Self::kv(out, &mut f, "client_ip", &client);
        let end = Self::ts(ms, self.rng.below(1_000_000));
        Self::kv(out, &mut f, "end_ts", &end);
        Self::kv(out, &mut f, "server_ip", &server_ip);
        Self::kv(out, &mut f, "server_name", &server);
        Self::kn(out, &mut f, "server_port", 10_000 + self.rng.below(20_000));
        let st = Self::ts(ms - dur_ms, self.rng.below(1_000_000));
        Self::kv(out, &mut f, "start_ts", &st);
        out.push(b'}');
        if self.rng.chance(0.1) {
            let d = *self.rng.weighted(DECISIONS);
            out.extend_from_slice(format!(",\"ip_policy\":{{\"decision\":\"{d}\"}}").as_bytes());
        }
        out.extend_from_slice(
            format!(
                ",\"ja4_fingerprint\":\"t13d1516h2_{:012x}_{:012x}\"",
                self.rng.next_u64() & 0xffff_ffff_ffff,
                self.rng.next_u64() & 0xffff_ffff_ffff
            )
            .as_bytes(),
        );
        if self.rng.chance(0.05) {
            out.extend_from_slice(
                b",\"traffic_policy\":{\"logs\":[{\"action\":\"log\",\"rule\":\"tcp-allow\"}]}",
            );
        }
        out.extend_from_slice(b"}}");
    }

    fn audit(&mut self, acct: usize, out: &mut Vec<u8>) {
        let t = self.audit_types[self.rng.below(self.audit_types.len() as u64) as usize];
        let def = &EVENT_TYPES[t];
        let ms = self.envelope_start(out, def.name, acct);
        let resource = def.name.rsplit_once('_').map_or(def.name, |(r, _)| r);
        let prefix: String = resource
            .split('_')
            .filter_map(|w| w.chars().next())
            .collect();
        let rid = id(&prefix, self.rng.below(1_000_000), 11);
        let via_api = self.rng.chance(0.7);
        out.extend_from_slice(b",\"principal\":{\"id\":\"");
        out.extend_from_slice(id("usr", acct as u64 * 8 + self.rng.below(8), 5).as_bytes());
        out.extend_from_slice(
            format!(
                "\",\"subject\":\"admin{}@example.com\",\"source\":\"{}\",\"credential\":",
                self.rng.below(8),
                if via_api { "API" } else { "Dashboard" }
            )
            .as_bytes(),
        );
        if via_api {
            let ak = id("ak", acct as u64, 9);
            out.extend_from_slice(
                format!("{{\"id\":\"{ak}\",\"uri\":\"https://api.ngrok.com/api_keys/{ak}\"}}")
                    .as_bytes(),
            );
        } else {
            out.extend_from_slice(b"null");
        }
        out.extend_from_slice(b"},\"object\":{");
        let created = Self::ts(ms - 86_400_000 * self.rng.below(400) as i64, 0);
        for (i, k) in def.object_keys.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, k);
            out.push(b':');
            match *k {
                "id" => write_str(out, &rid),
                "uri" => write_str(out, &format!("https://api.ngrok.com/{resource}s/{rid}")),
                "created_at" | "updated_at" | "started_at" | "not_before" | "issued_at"
                | "valid_after" => write_str(out, &created[..19]),
                "not_after" | "expires_at" | "valid_until" => {
                    write_str(out, "2027-11-01T00:00:00Z")
                }
                "metadata" => write_str(out, "{\"team\":\"platform\"}"),
                "description" => write_str(out, &format!("{resource} managed by terraform")),
                "enforced" => out.extend_from_slice(b"true"),
                "acl"
                | "key_usages"
                | "extended_key_usages"
                | "principals"
                | "ip_policies"
                | "resolves_to" => out.extend_from_slice(b"[]"),
                "target"
                | "certificate_management_policy"
                | "certificate_management_status"
                | "critical_options"
                | "extensions"
                | "subject_alternative_names"
                | "deprecated" => out.extend_from_slice(b"{}"),
                "ip_policy" | "session" | "credential" | "certificate" | "created_by"
                | "last_updated_by" | "vault" => {
                    let r = id("ref", self.rng.below(1000), 13);
                    out.extend_from_slice(
                        format!("{{\"id\":\"{r}\",\"uri\":\"https://api.ngrok.com/refs/{r}\"}}")
                            .as_bytes(),
                    );
                }
                "action" => write_str(
                    out,
                    if self.rng.chance(0.8) {
                        "allow"
                    } else {
                        "deny"
                    },
                ),
                "cidr" => write_str(
                    out,
                    &format!(
                        "{}.{}.0.0/16",
                        10 + self.rng.below(200),
                        self.rng.below(256)
                    ),
                ),
                "region" => write_str(
                    out,
                    ["us", "eu", "ap", "au", "sa", "jp", "in"][self.rng.below(7) as usize],
                ),
                _ => write_str(out, &format!("{k}-{}", self.rng.below(10_000))),
            }
        }
        out.extend_from_slice(b"}}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::events::{EventTypeId, FieldType};
    use sluice_engine::internal::ingest::EventParser;
    use std::collections::HashSet;

    #[test]
    fn the_same_seed_gives_the_same_events() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        Generator::new(GenConfig::default()).fill(500, &mut a);
        Generator::new(GenConfig::default()).fill(500, &mut b);
        assert_eq!(a, b);
        let mut c = Vec::new();
        Generator::new(GenConfig {
            seed: 2,
            ..GenConfig::default()
        })
        .fill(500, &mut c);
        assert_ne!(a, c);
    }

    /// Every generated event is valid for the engine, and together they use
    /// every field of both traffic types, with the registry's types.
    #[test]
    fn events_are_valid_and_cover_every_registry_field() {
        let mut g = Generator::new(GenConfig {
            audit_share: 0.05,
            ..GenConfig::default()
        });
        let mut p = EventParser::new();
        let mut seen: HashSet<(String, String)> = HashSet::new();
        let mut types = HashSet::new();
        for _ in 0..20_000 {
            let mut line = Vec::new();
            g.next_event(&mut line);
            p.parse(&line, |r| {
                let env = r.unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&line)));
                types.insert(env.event_type);
                for f in env.event_type.def().fields {
                    let segs: Vec<&str> = f.path.split('.').collect();
                    if let Some(v) = env.object.path(&segs) {
                        let ok = match f.ty {
                            FieldType::Bool => v.kind() == sluice_engine::json::Kind::Bool,
                            FieldType::String => v.as_str().is_some(),
                            // Null where nothing happened (a request without a body).
                            FieldType::Timestamp => {
                                v.as_str().is_some() || v.kind() == sluice_engine::json::Kind::Null
                            }
                            FieldType::Int32 | FieldType::Int64 => {
                                v.kind() == sluice_engine::json::Kind::Number
                            }
                            FieldType::StringListMap => v.is_object(),
                            FieldType::StringMapList => {
                                v.kind() == sluice_engine::json::Kind::Array
                            }
                        };
                        assert!(
                            ok,
                            "{} has the wrong type in {}",
                            f.path,
                            String::from_utf8_lossy(&line)
                        );
                        seen.insert((env.event_type.name().to_string(), f.path.to_string()));
                    }
                }
            });
        }
        for t in ["http_request_complete.v0", "tcp_connection_closed.v0"] {
            let def = EventTypeId::from_name(t).unwrap().def();
            for f in def.fields {
                assert!(
                    seen.contains(&(t.to_string(), f.path.to_string())),
                    "{t}: {} never generated",
                    f.path
                );
            }
        }
        assert!(types.len() > 40, "audit types are spread: {}", types.len());
    }

    #[test]
    fn target_size_is_approached() {
        for target in [650usize, 1200] {
            let mut g = Generator::new(GenConfig {
                target_size: target,
                tcp_share: 0.0,
                audit_share: 0.0,
                ..GenConfig::default()
            });
            let mut buf = Vec::new();
            g.fill(2000, &mut buf);
            let avg = buf.len() / 2000;
            assert!(
                avg > target * 85 / 100 && avg < target * 125 / 100,
                "target {target}, got {avg}"
            );
        }
    }

    #[test]
    fn selectivity_knobs_hold() {
        let mut g = Generator::new(GenConfig {
            prod_share: 0.5,
            error_share: 0.1,
            tcp_share: 0.0,
            audit_share: 0.0,
            ..GenConfig::default()
        });
        let mut p = EventParser::new();
        let f = sluice_engine::cel::Filter::compile(
            r#"ev.conn.server_name.matches(".*-prod\\.ngrok\\.dev") && ev.http.response.status_code >= 500"#,
            &Default::default(),
        )
        .unwrap();
        let mut hits = 0;
        let n = 40_000;
        for _ in 0..n {
            let mut line = Vec::new();
            g.next_event(&mut line);
            p.parse(&line, |r| {
                if f.matches(r.unwrap().object) == sluice_engine::cel::Verdict::Match {
                    hits += 1;
                }
            });
        }
        let share = hits as f64 / n as f64;
        assert!((0.04..0.06).contains(&share), "{share}");
    }
}
