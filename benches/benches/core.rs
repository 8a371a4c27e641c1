//! Micro-benchmarks of the engine core, per event.
//!
//! Run: `cargo build --release --workspace && cargo bench -p sluice-bench --bench core`
//! (the ABI benchmark needs the blackhole plugin next to the bench binary's
//! directory, which the release build puts in target/release).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_engine::cel::Verdict;
use sluice_engine::cel::{Filter, FilterOptions};
use sluice_engine::config::{DeliveryConfig, Fsync, SourceSpec, WhenFull};
use sluice_engine::events::EventTypeId;
use sluice_engine::ingest::{Chunk as ReadChunk, NdjsonReader, shard_of};
use sluice_engine::internal::config::compile_source;
use sluice_engine::internal::delivery::{Chunk, Delivery};
use sluice_engine::internal::disk_buffer::{DiskBuffer, DiskOptions, SyncSignal};
use sluice_engine::internal::encode::Record;
use sluice_engine::internal::encode::{Encoder, Projection};
use sluice_engine::internal::ingest::{EventParser, LazyReader};
use sluice_engine::internal::route::{Snapshot, SubscriptionRt};
use sluice_engine::internal::settle::{Settled, settle, snapshot_of};
use sluice_engine::json::Json;
use sluice_engine::metrics::{DestinationStats, SubscriptionStats};
use sluice_engine::plugin::{PluginRegistry, RecordRef, SinkInstance, plugin_dirs};
use sluice_traffic::{GenConfig, Generator};
use std::hint::black_box;
use std::sync::Arc;

fn events(target: usize, n: usize) -> Vec<Vec<u8>> {
    let mut g = Generator::new(GenConfig {
        target_size: target,
        audit_share: 0.0,
        tcp_share: 0.0,
        prod_share: 0.5,
        error_share: 0.1,
        ..GenConfig::default()
    });
    (0..n)
        .map(|_| {
            let mut v = Vec::new();
            g.next_event(&mut v);
            v
        })
        .collect()
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (name, target) in [("650B", 650), ("1200B", 1200)] {
        let evs = events(target, 256);
        let avg = evs.iter().map(|e| e.len()).sum::<usize>() / evs.len();
        group.throughput(Throughput::Elements(1));
        let mut p = EventParser::new();
        let mut i = 0;
        group.bench_function(format!("{name} (avg {avg} bytes)"), |b| {
            b.iter(|| {
                i = (i + 1) % evs.len();
                p.parse(&evs[i], |r| {
                    black_box(r.map(|e| e.timestamp_ms).unwrap_or(0))
                })
            })
        });
    }
    group.finish();
}

/// Issue 18's question: what does an event every filter rejects cost if
/// only the fields its filters read are looked at? The same 650-byte events
/// as `parse`: the full parse onto a tape against reading the fields
/// filter-5pct reads (`conn.server_name`, `http.response.status_code`, and
/// the envelope's `account_id` and `event_type`) with sonic-rs's lazy,
/// skipping scan, against validating UTF-8 alone and one memchr pass
/// counting quotes (lower bounds: touching every byte once).
fn scan(c: &mut Criterion) {
    let mut group = c.benchmark_group("scan");
    let evs = events(650, 256);
    group.throughput(Throughput::Elements(1));
    let mut p = EventParser::new();
    let mut i = 0;
    group.bench_function("full parse onto the tape (today)", |b| {
        b.iter(|| {
            i = (i + 1) % evs.len();
            p.parse(&evs[i], |r| {
                black_box(r.map(|e| e.timestamp_ms).unwrap_or(0))
            })
        })
    });
    let mut tree = sonic_rs::PointerTree::new();
    tree.add_path(["account_id"]);
    tree.add_path(["event_type"]);
    tree.add_path(["object", "conn", "server_name"]);
    tree.add_path(["object", "http", "response", "status_code"]);
    let mut i = 0;
    group.bench_function("sonic-rs get_many, 4 fields (skipping the rest)", |b| {
        b.iter(|| {
            i = (i + 1) % evs.len();
            let v = sonic_rs::get_many(evs[i].as_slice(), &tree).expect("valid JSON");
            black_box(v.len())
        })
    });
    let mut i = 0;
    group.bench_function("UTF-8 validation alone (std)", |b| {
        b.iter(|| {
            i = (i + 1) % evs.len();
            black_box(std::str::from_utf8(&evs[i]).is_ok())
        })
    });
    let mut i = 0;
    group.bench_function("one memchr pass over the bytes (counting quotes)", |b| {
        b.iter(|| {
            i = (i + 1) % evs.len();
            black_box(quote_count(&evs[i]))
        })
    });
    group.finish();
}

/// Reading an NDJSON stream in chunks of whole lines (`NdjsonReader`, 1 MiB
/// chunks, as `sluice bench` reads its input), each chunk's lines counted
/// and the chunk held until four more are read, as the engine's queues hold
/// chunks while its workers catch up; from memory, so that the read is a
/// copy as the kernel's is from the page cache.
fn read(c: &mut Criterion) {
    let evs = events(650, 512);
    let mut input = Vec::new();
    for e in evs.iter().cycle().take(48 << 10) {
        input.extend_from_slice(e);
        input.push(b'\n');
    }
    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.sample_size(20);
    let mib = input.len() >> 20;
    group.bench_function(format!("NdjsonReader, 1 MiB chunks, {mib} MiB"), |b| {
        b.iter(|| {
            let mut lines = 0;
            let mut held = std::collections::VecDeque::new();
            for chunk in NdjsonReader::new(std::io::Cursor::new(&input[..]), 1 << 20) {
                if let Ok(ReadChunk::Lines(b)) = chunk {
                    lines += memchr::memchr_iter(b'\n', &b).count();
                    held.push_back(b);
                    if held.len() > 4 {
                        held.pop_front();
                    }
                }
            }
            black_box(lines)
        })
    });
    group.finish();
}

/// Choosing an event's worker: the ingest thread finds each event's
/// `account_id` (`prescan_account`) and hashes it, for every event in
/// either mode.
fn shard(c: &mut Criterion) {
    let evs = events(650, 512);
    let mut group = c.benchmark_group("shard");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("shard_of, 2 workers (avg ~740 bytes)", |b| {
        b.iter(|| {
            i = (i + 1) % evs.len();
            black_box(shard_of(&evs[i], 2))
        })
    });
    group.finish();
}

/// Issue 18's target: the cost of an event every filter rejects, read on
/// demand (structural index, envelope, route lookup, the fields the filter
/// reads, the filter), against the full parse of the same events followed
/// by the same lookup and filter. Only events the filter rejects are
/// measured.
fn rejected(c: &mut Criterion) {
    let mut group = c.benchmark_group("rejected event");
    group.throughput(Throughput::Elements(1));
    for (name, filter) in [
        (
            "endsWith",
            r#"ev.conn.server_name.endsWith("-prod.ngrok.dev") && ev.http.response.status_code >= 500"#,
        ),
        (
            "regex (docs style)",
            r#"ev.conn.server_name.matches(".*-prod\\.ngrok\\.dev") && ev.http.response.status_code >= 500"#,
        ),
    ] {
        let accounts = Generator::new(GenConfig::default()).account_ids();
        let accounts: Vec<&str> = accounts.iter().map(String::as_str).collect();
        let snap = snapshot_of(&accounts, "http_request_complete.v0", &[filter]).unwrap();
        let mut lazy = LazyReader::default();
        let mut verdicts = Vec::new();
        let evs: Vec<Vec<u8>> = events(650, 512)
            .into_iter()
            .filter(|e| {
                matches!(
                    settle(e, &snap, &mut lazy, &mut verdicts),
                    Settled::Rejected(_)
                )
            })
            .collect();
        assert!(evs.len() > 400, "most events are settled on demand");
        let avg = evs.iter().map(|e| e.len()).sum::<usize>() / evs.len();
        let mut i = 0;
        group.bench_function(format!("{name}, on demand (avg {avg} bytes)"), |b| {
            b.iter(|| {
                i = (i + 1) % evs.len();
                black_box(matches!(
                    settle(&evs[i], &snap, &mut lazy, &mut verdicts),
                    Settled::Rejected(_)
                ))
            })
        });
        let mut p = EventParser::new();
        let mut i = 0;
        group.bench_function(format!("{name}, full parse"), |b| {
            b.iter(|| {
                i = (i + 1) % evs.len();
                p.parse(&evs[i], |r| {
                    let env = r.expect("valid");
                    let routes = snap.routes(env.account_id, env.event_type);
                    black_box(
                        routes
                            .iter()
                            .filter_map(|r| r.source.filter.as_ref())
                            .all(|f| f.matches(env.object) != Verdict::Match),
                    )
                })
            })
        });
    }
    group.finish();
}

/// Quotes in `bytes`: one vectorized pass (memchr) over every byte.
fn quote_count(bytes: &[u8]) -> usize {
    memchr::memchr_iter(b'"', bytes).count()
}

const FILTERS: &[(&str, &str)] = &[
    (
        "eq_string",
        r#"ev.conn.server_name == "acme0-prod.ngrok.dev""#,
    ),
    ("cmp_int", "ev.http.response.status_code >= 500"),
    (
        "regex_and_cmp (docs style)",
        r#"ev.conn.server_name.matches(".*-prod\\.ngrok\\.dev") && ev.http.response.status_code >= 500"#,
    ),
    (
        "endswith_and_cmp",
        r#"ev.conn.server_name.endsWith("-prod.ngrok.dev") && ev.http.response.status_code >= 500"#,
    ),
    (
        "three_clauses",
        r#"ev.conn.server_port == 443 && ev.http.request.method == "get" && ev.conn.client_ip.startsWith("10.")"#,
    ),
    (
        "in_set",
        r#"ev.http.request.method in ["post", "put", "patch", "delete"]"#,
    ),
    (
        "header_index",
        r#"ev.http.request.headers["User-Agent"][0].startsWith("curl/")"#,
    ),
    (
        "interpreter_exists",
        r#"ev.http.request.headers.exists(k, k == "X-Request-Id")"#,
    ),
];

fn filter(c: &mut Criterion) {
    let evs = events(1200, 256);
    // Parse once; keep the tapes.
    let mut bufs: Vec<Vec<u8>> = evs.clone();
    let tapes: Vec<simd_json::Tape<'_>> = bufs
        .iter_mut()
        .map(|b| simd_json::to_tape(b).unwrap())
        .collect();
    let objects: Vec<Json<'_, '_>> = tapes
        .iter()
        .map(|t| Json::root(&t.0).unwrap().get("object").unwrap())
        .collect();
    let mut group = c.benchmark_group("filter");
    group.throughput(Throughput::Elements(1));
    let opts = FilterOptions {
        event_type: EventTypeId::from_name("http_request_complete.v0"),
        strict_ngrok: false,
    };
    for (name, src) in FILTERS {
        let f = Filter::compile(src, &opts).unwrap();
        let mut i = 0;
        group.bench_function(*name, |b| {
            b.iter(|| {
                i = (i + 1) % objects.len();
                black_box(f.matches(objects[i]))
            })
        });
    }
    // The naive way, for scale: convert the whole object to CEL values and interpret.
    let program = cel::Program::compile(FILTERS[2].1).unwrap();
    let mut i = 0;
    group.bench_function(
        "naive: convert object + cel interpreter (regex_and_cmp)",
        |b| {
            b.iter(|| {
                i = (i + 1) % objects.len();
                black_box(
                    sluice_engine::internal::cel::eval_reference(&program, objects[i]).is_ok(),
                )
            })
        },
    );
    // What an evaluation that spends the whole step budget costs (the
    // budget is calibrated to about 100 µs): lookups of absent members in an
    // object of 10,000, each 10,000 steps, until the budget runs out.
    let mut wide = String::from("{");
    for i in 0..10_000 {
        wide.push_str(&format!("\"k{i}\":{i},"));
    }
    wide.push_str("\"z\":0}");
    let mut wide_buf = wide.into_bytes();
    let wide_tape = simd_json::to_tape(&mut wide_buf).unwrap();
    let wide_obj = Json::root(&wide_tape.0).unwrap();
    let greedy = (0..200)
        .map(|i| format!("has(ev.a{i})"))
        .collect::<Vec<_>>()
        .join(" || ");
    let f = Filter::compile(&greedy, &FilterOptions::default()).unwrap();
    assert_eq!(f.matches(wide_obj), sluice_engine::cel::Verdict::Error);
    group.bench_function("step budget, spent whole", |b| {
        b.iter(|| black_box(f.matches(wide_obj)))
    });
    group.finish();
}

fn route(c: &mut Criterion) {
    let mut subs = Vec::new();
    let src = Arc::new(
        compile_source(
            &SourceSpec {
                event_type: "http_request_complete.v0".into(),
                filter: None,
                fields: None,
            },
            false,
        )
        .unwrap(),
    );
    for a in 0..1000 {
        for s in 0..10 {
            subs.push((
                SubscriptionRt {
                    id: format!("esb_{a}_{s}").into(),
                    account_id: format!("ac_{a:027}").into(),
                    destinations: Box::new([]),
                    stats: Arc::new(SubscriptionStats::default()),
                },
                vec![src.clone()],
            ));
        }
    }
    let snap = Snapshot::new(1, subs, vec![]);
    let t = EventTypeId::from_name("http_request_complete.v0").unwrap();
    let keys: Vec<String> = (0..4096)
        .map(|i| format!("ac_{:027}", (i * 7919) % 1500))
        .collect();
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("lookup, 10k subscriptions over 1k accounts", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(snap.routes(&keys[i], t).len())
        })
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let evs = events(1200, 256);
    let mut p = EventParser::new();
    let mut enc = Encoder::default();
    let proj = Projection::new(&[
        "conn.client_ip",
        "conn.server_name",
        "http.request.method",
        "http.request.url.path",
        "http.response.status_code",
    ]);
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("envelope, whole object (parse included)", |b| {
        b.iter(|| {
            i = (i + 1) % evs.len();
            p.parse(&evs[i], |r| black_box(enc.encode(&r.unwrap(), None)))
        })
    });
    group.bench_function("envelope, 5 projected fields (parse included)", |b| {
        b.iter(|| {
            i = (i + 1) % evs.len();
            p.parse(&evs[i], |r| black_box(enc.encode(&r.unwrap(), Some(&proj))))
        })
    });
    group.bench_function("parse only, for subtraction", |b| {
        b.iter(|| {
            i = (i + 1) % evs.len();
            p.parse(&evs[i], |r| black_box(r.is_ok()))
        })
    });
    group.finish();
}

/// The ABI's view of events as records.
fn record_refs(evs: &[Vec<u8>]) -> Vec<RecordRef<'_>> {
    evs.iter()
        .map(|d| RecordRef {
            data: d,
            account_id: "ac_1",
            event_id: "ev_1",
            event_type: "http_request_complete.v0",
            subscription_id: "esb_1",
            timestamp_ms: 0,
        })
        .collect()
}

fn abi(c: &mut Criterion) {
    let reg = PluginRegistry::discover(&plugin_dirs(&[]));
    let Ok(lib) = reg.get("blackhole") else {
        eprintln!("abi: blackhole plugin not found; build the workspace in release first");
        return;
    };
    let sink = SinkInstance::create(
        lib,
        "ed_bench",
        "{}",
        "",
        Arc::new(DestinationStats::default()),
    )
    .unwrap();
    let evs = events(650, 500);
    let mut group = c.benchmark_group("abi");
    group.throughput(Throughput::Elements(500));
    // Building the record array is part of the crossing, as in the engine.
    group.bench_function("blackhole send, batch of 500 records", |b| {
        b.iter(|| black_box(sink.send(&record_refs(&evs)).outcomes.len()))
    });
    // The same batch through the http plugin to a local server: the time a
    // real send takes, against which the crossing above is measured.
    if let (Ok(http), Ok((_server, url))) =
        (reg.get("http"), sluice_standins::fast::SinkServers::http())
    {
        let sink = SinkInstance::create(
            http,
            "ed_bench_http",
            &format!(r#"{{"url":"{url}"}}"#),
            "",
            Arc::new(DestinationStats::default()),
        )
        .unwrap();
        group.bench_function("http send, batch of 500 records, to a local server", |b| {
            b.iter(|| black_box(sink.send(&record_refs(&evs)).outcomes.len()))
        });
    }
    group.finish();
}

/// 1,000 records of about 600 bytes, as the encoder makes them.
fn records_600() -> Vec<Record> {
    let ty = EventTypeId::from_name("http_request_complete.v0").expect("known type");
    events(500, 1000)
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let v: serde_json::Value = serde_json::from_slice(e).expect("generated JSON");
            let data = serde_json::to_vec(&v).expect("re-encode");
            Record::from_parts(&data, "ac_1", &format!("ev_{i}"), ty, 0)
        })
        .collect()
}

/// Batching, dispatch and outcome handling: chunks of 1,000 records pushed
/// to a blackhole destination (memory durability, linger 0), per record.
fn delivery(c: &mut Criterion) {
    let reg = PluginRegistry::discover(&plugin_dirs(&[]));
    let Ok(lib) = reg.get("blackhole") else {
        eprintln!("delivery: blackhole plugin not found; build the workspace in release first");
        return;
    };
    let recs = records_600();
    let tmp = std::env::temp_dir().join(format!("sluice-bench-delivery-{}", std::process::id()));
    let d = Delivery::new(2, tmp.join("dead"), tmp.join("buffer")).expect("runtime");
    let stats = Arc::new(DestinationStats::default());
    let sink = SinkInstance::create(lib, "ed_bench", "{}", "", stats.clone()).expect("blackhole");
    let cfg = DeliveryConfig {
        linger_ms: 0,
        ..DeliveryConfig::default()
    };
    let h = d.start(
        "ed_bench",
        "blackhole",
        String::new(),
        &cfg,
        sluice_engine::internal::delivery::SinkSource::Ready(sink),
        stats.clone(),
        None,
    );
    let sub: Arc<str> = "esb_bench".into();
    let mut group = c.benchmark_group("delivery");
    group.throughput(Throughput::Elements(recs.len() as u64));
    group.bench_function(
        "chunk of 1000 records to the blackhole, batched, sent, settled",
        |b| {
            b.iter_custom(|iters| {
                let target = stats.delivered() + iters * recs.len() as u64;
                let t0 = std::time::Instant::now();
                for _ in 0..iters {
                    h.push(Chunk {
                        subscription: sub.clone(),
                        records: recs.clone(),
                        received: std::time::Instant::now(),
                        hold: None,
                    });
                }
                while stats.delivered() < target {
                    std::hint::spin_loop();
                }
                t0.elapsed()
            })
        },
    );
    group.finish();
    drop(h);
    d.shutdown(std::time::Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The disk buffer: appending a chunk of 1,000 records (one write, no
/// fsync), and reading it back, acknowledging it and syncing.
fn disk_buffer(c: &mut Criterion) {
    let recs = records_600();
    let dir = std::env::temp_dir().join(format!("sluice-bench-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = DiskOptions {
        fsync: Fsync::Interval,
        fsync_interval: std::time::Duration::from_secs(3600),
        max_bytes: 1 << 40,
        when_full: WhenFull::Block,
        wait_for_room: true,
        segment_bytes: 64 << 20,
    };
    let (buf, _) = DiskBuffer::open(
        &dir,
        opts,
        Arc::new(DestinationStats::default()),
        Arc::new(SyncSignal::default()),
    )
    .expect("open");
    let mut group = c.benchmark_group("disk_buffer");
    group.throughput(Throughput::Elements(recs.len() as u64));
    // Steady state: what is appended is acknowledged, and every 64 chunks
    // (38 MB) a sync round fsyncs and deletes the delivered segments, as the
    // syncer thread would; without it the log would grow to gigabytes and
    // the kernel's dirty-page throttling would be measured instead.
    let mut n = 0u64;
    let mut next = 1u64;
    group.bench_function(
        "append 1000 records of ~600 B (sync every 64 chunks)",
        |b| {
            b.iter(|| {
                buf.append("esb_bench", &recs, 0, None).expect("append");
                buf.ack(next..next + recs.len() as u64);
                next += recs.len() as u64;
                n += 1;
                if n.is_multiple_of(64) {
                    let mut skip = Vec::new();
                    while buf.read(u64::MAX, &mut skip).expect("read") > 0 {
                        skip.clear();
                    }
                    buf.sync().expect("sync");
                }
            })
        },
    );
    let mut out = Vec::with_capacity(recs.len());
    group.bench_function(
        "append, read back, acknowledge 1000 records (sync every 64 chunks)",
        |b| {
            b.iter(|| {
                buf.append("esb_bench", &recs, 0, None).expect("append");
                out.clear();
                while buf.read(u64::MAX, &mut out).expect("read") > 0 {}
                buf.ack(out.iter().map(|e| e.seq));
                n += 1;
                if n.is_multiple_of(64) {
                    buf.sync().expect("sync");
                }
                black_box(out.len())
            })
        },
    );
    group.finish();
    let _ = buf.sync();
    drop(buf);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(
    benches,
    parse,
    scan,
    read,
    shard,
    rejected,
    filter,
    route,
    encode,
    abi,
    delivery,
    disk_buffer
);
criterion_main!(benches);
