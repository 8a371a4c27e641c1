//! The serve configuration file (`sluice serve --config serve.toml`): the
//! operator's settings. Every key is also a flag of `sluice serve`, and a
//! flag given wins over the file. `docs/security.md` lists them with their
//! defaults.
//!
//! ```toml
//! listen = "0.0.0.0:8080"
//! data_dir = "/var/lib/sluice"
//! metrics_addr = "127.0.0.1:9464"
//!
//! [tenants]
//! plugin_kinds = ["kinesis", "firehose", "cloudwatch_logs", "datadog", "azure_logs_ingestion", "http"]
//! allow_private_destinations = false
//! max_destinations = 100
//!
//! [tenants.delivery]
//! send_timeout_ms = "1000..60000"
//! ```

use crate::policy::TenantPolicy;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// What a serve configuration file may hold; absent keys take the flags'
/// values, then the defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--plugin-dir`.
    pub plugin_dir: Option<PathBuf>,
    /// `--ingest-token`.
    pub ingest_token: Option<String>,
    /// `--strict-ngrok-filters`.
    pub strict_ngrok_filters: Option<bool>,
    /// `--workers`.
    pub workers: Option<usize>,
    /// `--metrics-addr`.
    pub metrics_addr: Option<String>,
    /// `--cors-origin` (each).
    pub cors_origins: Option<Vec<String>>,
    /// `--drain-timeout-s`.
    pub drain_timeout_s: Option<u64>,
    /// What tenants may do (`--tenant-*`, `--max-*`, ... flags).
    #[serde(default)]
    pub tenants: TenantPolicy,
}

impl ServeFile {
    /// Reads and checks a serve configuration; errors name the file and,
    /// for TOML mistakes, the line.
    pub fn load(path: &Path) -> Result<ServeFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--config {}: {e}", path.display()))?;
        let f: ServeFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        f.tenants
            .check()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_loads_and_mistakes_name_the_key() {
        let dir = std::env::temp_dir().join(format!("sluice-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("serve.toml");
        let doc = include_str!("settings.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start())
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&p, doc).unwrap();
        let f = ServeFile::load(&p).unwrap();
        assert_eq!(f.listen.as_deref(), Some("0.0.0.0:8080"));
        assert_eq!(f.tenants.max_destinations, 100);
        assert_eq!(f.tenants.delivery.send_timeout_ms.max, 60_000);
        std::fs::write(&p, "[tenants]\nmax_destination = 3\n").unwrap();
        let e = ServeFile::load(&p).unwrap_err();
        assert!(e.contains("max_destination"), "{e}");
        std::fs::write(&p, "[tenants.delivery]\nsend_timeout_ms = \"9..1\"\n").unwrap();
        let e = ServeFile::load(&p).unwrap_err();
        assert!(e.contains("minimum is over the maximum"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
