//! `sluice tap`: a live tail of the records a subscription makes, printed
//! as they come (one JSON record per line on stdout; how many were skipped,
//! on stderr), from a running `sluice serve` (its API, with a key) or a
//! running `sluice run` (its `--metrics-addr`, no key).

use std::io::{BufRead, Write};
use std::process::ExitCode;

/// `sluice tap` flags.
#[derive(clap::Args)]
pub struct TapArgs {
    /// The subscription (esb_...).
    #[arg(long)]
    subscription: String,
    /// `sluice serve`'s API, or the `--metrics-addr` of `sluice run`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// For `sluice serve`: an API key of the subscription's account (else
    /// $SLUICE_API_KEY).
    #[arg(long, env = "SLUICE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Records a second at most (1 to 1000); the rest are skipped and counted.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Stop after this many records.
    #[arg(long)]
    limit: Option<u64>,
}

pub fn tap(a: TapArgs) -> Result<ExitCode, String> {
    let url = format!(
        "{}/event_subscriptions/{}/tap?rate={}",
        a.server.trim_end_matches('/'),
        a.subscription,
        a.rate
    );
    let mut req = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .map_err(|e| e.to_string())?
        .get(&url)
        .header("ngrok-version", "2");
    if let Some(key) = &a.api_key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let resp = req.send().map_err(|e| format!("{}: {e}", a.server))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: serde_json::Value = resp.json().unwrap_or_default();
        return Err(format!(
            "{status}: {}",
            body["msg"].as_str().unwrap_or("the server refused the tap")
        ));
    }
    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    let mut skipped = 0u64;
    for line in std::io::BufReader::new(resp).lines() {
        let line = line.map_err(|e| format!("the tap ended: {e}"))?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if let Some(r) = v.get("record") {
            if writeln!(out, "{r}").is_err() {
                break; // stdout closed (a pipe into `head`)
            }
            printed += 1;
            if a.limit.is_some_and(|l| printed >= l) {
                break;
            }
        } else if let Some(s) = v["tap"]["skipped"].as_u64()
            && s > skipped
        {
            eprintln!(
                "sluice tap: {} records skipped so far (over --rate, or read too slowly)",
                s
            );
            skipped = s;
        }
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}
