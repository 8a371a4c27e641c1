//! The per-event path of a worker allocates nothing when every filter rejects
//! the event: parse (reused tape), route (borrowed lookup), filter (borrowed
//! values). Checked with a counting global allocator, on this thread only.

use sluice_engine::cel::Verdict;
use sluice_engine::config::SourceSpec;
use sluice_engine::internal::config::compile_source;
use sluice_engine::internal::ingest::{EventParser, LazyReader};
use sluice_engine::internal::route::{Snapshot, SubscriptionRt};
use sluice_engine::internal::settle::{Settled, settle};
use sluice_engine::metrics::SubscriptionStats;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: delegates to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if TRACK.with(|t| t.get()) {
            ALLOCS.fetch_add(1, Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if TRACK.with(|t| t.get()) {
            ALLOCS.fetch_add(1, Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn ev(i: usize, account: &str, name: &str, status: u32) -> String {
    format!(
        r#"{{"event_id":"ev_{i:027}","event_type":"http_request_complete.v0","event_timestamp":"2026-11-01T00:00:{:02}.123456789Z","account_id":"{account}","object":{{"conn":{{"client_ip":"2001:db8::{i:x}","server_ip":"3.1.2.3","server_name":"{name}","server_port":443,"start_ts":"2026-11-01T00:00:00.1Z"}},"http":{{"request":{{"body_length":0,"headers":{{"User-Agent":["curl/8.5.0"],"X-Request-Id":["{i:032x}"]}},"method":"get","url":{{"host":"{name}","path":"/api/v1/users/{i}","query":"a=\"b\"\\n"}},"user_agent":"curl/8.5.0"}},"response":{{"body_length":{},"status_code":{status}}}}},"tls":{{"cipher_suite":"TLS_AES_128_GCM_SHA256","version":"1.3"}}}}}}"#,
        i % 60,
        i * 37
    )
}

#[test]
fn the_reject_path_allocates_nothing_per_event() {
    let filters = [
        r#"ev.conn.server_name.matches(".*-prod\\.ngrok\\.dev") && ev.http.response.status_code >= 500"#,
        r#"ev.conn.server_name.endsWith("-prod.ngrok.dev") && ev.http.response.status_code >= 500"#,
        r#"ev.http.request.method in ["post", "put"] || ev.conn.client_ip.startsWith("10.")"#,
        r#"has(ev.oauth) && ev.oauth.user.name == "x""#,
        r#"ev.http.request.headers["User-Agent"][0].contains("python") || size(ev.http.request.url.path) > 1000"#,
        r#"int(ev.conn.server_port) == 80 || ev.oauth.decision == "block""#,
    ];
    let build = |filters: &[&str]| -> Snapshot {
        let subs = filters
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let c = compile_source(
                    &SourceSpec {
                        event_type: "http_request_complete.v0".into(),
                        filter: Some(f.to_string()),
                        fields: None,
                    },
                    false,
                )
                .unwrap();
                assert!(c.filter.as_ref().unwrap().is_fast(), "{f}");
                (
                    SubscriptionRt {
                        id: format!("esb_{i}").into(),
                        account_id: "ac_1".into(),
                        destinations: Box::new([]),
                        stats: Arc::new(SubscriptionStats::default()),
                    },
                    vec![Arc::new(c)],
                )
            })
            .collect();
        Snapshot::new(1, subs, vec![])
    };
    let snap = build(&filters);
    let events: Vec<String> = (0..64)
        .map(|i| {
            let acct = if i % 8 == 0 { "ac_other" } else { "ac_1" };
            ev(
                i,
                acct,
                &format!("svc{i}-dev.ngrok.app"),
                [200, 404, 503][i % 3],
            )
        })
        .collect();
    let mut parser = EventParser::new();
    let mut run = |count: &mut u64| {
        for e in &events {
            parser.parse(e.as_bytes(), |r| {
                let env = r.unwrap();
                for route in snap.routes(env.account_id, env.event_type) {
                    if let Some(f) = &route.source.filter {
                        match f.matches(env.object) {
                            Verdict::Match => panic!("no event should match"),
                            Verdict::NoMatch | Verdict::Error => *count += 1,
                        }
                    }
                }
            });
        }
    };
    let mut evaluated = 0;
    run(&mut evaluated); // warm up: buffers grow to size
    ALLOCS.store(0, Relaxed);
    TRACK.with(|t| t.set(true));
    for _ in 0..50 {
        run(&mut evaluated);
    }
    TRACK.with(|t| t.set(false));
    assert!(evaluated > 10_000, "{evaluated}");
    assert_eq!(
        ALLOCS.load(Relaxed),
        0,
        "allocations on the reject path over {} events",
        events.len() * 50
    );

    // The same events settled on demand, by the filters that read no list
    // or object whole (one that does sends the event to the full parse,
    // checked above).
    let snap: Snapshot = build(&[filters[0], filters[1], filters[2], filters[3], filters[5]]);
    let mut lazy = LazyReader::default();
    let mut verdicts = Vec::new();
    let mut settle_all = |count: &mut u64| {
        for e in &events {
            if !matches!(
                settle(e.as_bytes(), &snap, &mut lazy, &mut verdicts),
                Settled::Full
            ) {
                *count += 1;
            }
        }
    };
    let mut settled = 0;
    settle_all(&mut settled);
    ALLOCS.store(0, Relaxed);
    TRACK.with(|t| t.set(true));
    for _ in 0..50 {
        settle_all(&mut settled);
    }
    TRACK.with(|t| t.set(false));
    assert_eq!(
        settled,
        51 * events.len() as u64,
        "every event is settled on demand"
    );
    assert_eq!(
        ALLOCS.load(Relaxed),
        0,
        "allocations on the on-demand reject path over {} events",
        events.len() * 50
    );
}
