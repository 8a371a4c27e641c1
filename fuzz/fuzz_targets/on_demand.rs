//! Input: any bytes as one event. Whatever the on-demand reader settles
//! without the full parse, the full parse must decide the same for every
//! subscription (filters of every kind, alone and together).
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_engine::internal::route::Snapshot;
use sluice_engine::internal::settle::{check, snapshot_of};
use std::sync::OnceLock;

const FILTERS: &[&str] = &[
    r#"ev.conn.server_name.endsWith("-prod.ngrok.dev") && ev.http.response.status_code >= 500"#,
    r#"ev.http.response.status_code == 404 || ev.conn.server_port < 100"#,
    r#"has(ev.oauth.user) && ev.oauth.user.name == "x""#,
    r#"ev.http.request.method in ["post", "put"] || ev.conn.client_ip.startsWith("10.")"#,
    r#"size(ev.conn.server_name) > 40 || ev.tls.version == "1.3""#,
    r#"ev.http.response.status_code > 600.5 || ev.conn.server_port == -1"#,
    // First `&&` operands the reader tries alone first.
    r#"has(ev.oauth) && ev.conn.server_port == 443"#,
    r#"(ev.conn.server_port > 100 && ev.tls.version == "1.3") && ev.http.response.status_code >= 500"#,
];

fn snapshots() -> &'static [Snapshot] {
    static SNAPS: OnceLock<Vec<Snapshot>> = OnceLock::new();
    SNAPS.get_or_init(|| {
        let mut v: Vec<Snapshot> = FILTERS
            .iter()
            .map(|f| snapshot_of(&["ac_1"], "http_request_complete.v0", &[f]).unwrap())
            .collect();
        v.push(snapshot_of(&["ac_1"], "http_request_complete.v0", FILTERS).unwrap());
        v
    })
}

fuzz_target!(|data: &[u8]| {
    for snap in snapshots() {
        if let Err(e) = check(data, snap) {
            panic!("{e}");
        }
    }
});
