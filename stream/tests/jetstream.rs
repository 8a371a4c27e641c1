//! The stream against real nats-server processes (from `.venv-nats`): a
//! 3-server JetStream cluster on loopback, started and stopped by each test.

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::pull};
use bytes::Bytes;
use sluice_stream::{ConsumeSettings, Delivery, Node, Publisher, StreamSettings, partition_of};
use sluice_testkit::nats::NatsCluster;
use sluice_traffic::{GenConfig, Generator};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `n` generated events of many accounts, as NDJSON bodies of `per_body`.
fn bodies(n: usize, per_body: usize) -> Vec<Vec<u8>> {
    let mut g = Generator::new(GenConfig {
        accounts: 300,
        ..GenConfig::default()
    });
    (0..n / per_body)
        .map(|_| {
            let mut b = Vec::new();
            g.fill(per_body, &mut b);
            b
        })
        .collect()
}

fn account(line: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(line).expect("an event");
    v["account_id"].as_str().expect("account_id").to_string()
}

/// Every message of the stream: (subject, payload), in stream order.
async fn read_all(client: &async_nats::Client, settings: &StreamSettings) -> Vec<(String, Bytes)> {
    use futures_util::StreamExt;
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream(&settings.stream).await.expect("the stream");
    let total = stream.info().await.expect("stream info").state.messages;
    // Right after a leader was killed, the cluster may still be settling:
    // making the consumer is tried again for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    let consumer = loop {
        match stream
            .create_consumer(pull::Config {
                ack_policy: AckPolicy::None,
                ..Default::default()
            })
            .await
        {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("no consumer yet ({e}); trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("a consumer: {e}"),
        }
    };
    let mut msgs = consumer.messages().await.expect("messages");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (out.len() as u64) < total {
        assert!(
            Instant::now() < deadline,
            "read {} of {total} messages",
            out.len()
        );
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .unwrap_or_else(|_| panic!("no message for 10 s after {} of {total}", out.len()))
            .expect("a message")
            .expect("no error");
        // Compressed on the wire (the publisher's default), decoded here.
        assert!(
            m.headers
                .as_ref()
                .is_some_and(|h| h.get(sluice_stream::encoding::HEADER).is_some())
        );
        let payload =
            sluice_stream::encoding::decode(m.headers.as_ref(), &m.payload).expect("decodes");
        out.push((m.subject.to_string(), payload));
    }
    out
}

/// Checks that the stream holds exactly the events of `bodies`, each on
/// its account's partition, and (when `ordered`) in the order published
/// per account.
fn check_stream(
    msgs: &[(String, Bytes)],
    bodies: &[Vec<u8>],
    settings: &StreamSettings,
    ordered: bool,
) {
    let mut want: HashMap<String, Vec<&[u8]>> = HashMap::new();
    for b in bodies {
        for line in b.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
            want.entry(account(line)).or_default().push(line);
        }
    }
    let mut got: HashMap<String, Vec<&[u8]>> = HashMap::new();
    for (subject, payload) in msgs {
        let p: u32 = subject
            .strip_prefix(&format!("{}.", settings.subject_prefix))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("subject {subject}"));
        for line in payload.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
            let a = account(line);
            assert_eq!(
                partition_of(a.as_bytes(), settings.partitions),
                p,
                "{a} on {subject}"
            );
            got.entry(a).or_default().push(line);
        }
    }
    assert_eq!(got.len(), want.len(), "accounts");
    for (a, lines) in &want {
        let mut g = got.get(a).cloned().unwrap_or_default();
        assert_eq!(g.len(), lines.len(), "events of {a}");
        if ordered {
            assert!(
                g == *lines,
                "the events of {a} are not in the order published"
            );
        } else {
            let mut l = lines.clone();
            g.sort();
            l.sort();
            assert!(g == l, "the events of {a} differ from those published");
        }
    }
}

/// One 3-server cluster at a time: on 2 cores, several at once (and
/// JetStream's elections in each) slow each other past every timeout.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A 3-server cluster (its stores in the returned directory), a publisher
/// with the default settings, and the guard that keeps other tests' clusters
/// from starting meanwhile.
async fn cluster_and_publisher() -> (
    tokio::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    NatsCluster,
    StreamSettings,
    Publisher,
) {
    let guard = ONE_CLUSTER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let nats = tokio::task::spawn_blocking({
        let d = dir.path().to_path_buf();
        move || NatsCluster::start(&d, 3)
    })
    .await
    .unwrap();
    let settings = StreamSettings::default();
    let p = Publisher::connect(&nats.urls(), settings.clone())
        .await
        .expect("connect");
    (guard, dir, nats, settings, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_stored_once_by_partition_in_order_and_a_retry_is_not_stored_twice() {
    let (_one, _dir, nats, settings, p) = cluster_and_publisher().await;
    assert_eq!(p.replicas(), 3, "three servers: three copies");
    let bodies = bodies(100_000, 10_000);
    let mut messages = 0;
    for (i, b) in bodies.iter().enumerate() {
        let r = p.publish(b, &format!("body-{i}")).await.expect("published");
        assert_eq!(r.events, 10_000);
        assert!(r.rejected.is_empty());
        assert_eq!(r.duplicates, 0);
        messages += r.messages;
    }
    // Batched: on average hundreds of events per message, never one each.
    assert!(
        100_000 / messages >= 100,
        "{messages} messages for 100,000 events"
    );
    // The same body again under the same id: JetStream has every message.
    let again = p
        .publish(&bodies[3], "body-3")
        .await
        .expect("published again");
    assert_eq!(again.duplicates, again.messages);
    let msgs = read_all(p.client(), &settings).await;
    assert_eq!(msgs.len(), messages, "stored once");
    check_stream(&msgs, &bodies, &settings, true);
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_goes_on_when_the_stream_leader_is_killed_and_loses_nothing() {
    let (_one, _dir, mut nats, settings, p) = cluster_and_publisher().await;
    let bodies = bodies(60_000, 2_000);
    let mut retries = 0;
    for (i, b) in bodies.iter().enumerate() {
        if i == 5 {
            // (The monitor is read with a blocking client.)
            tokio::task::block_in_place(|| {
                let leader = nats
                    .stream_leader(&settings.stream)
                    .expect("a stream leader");
                nats.kill(leader);
            });
        }
        let r = p
            .publish(b, &format!("body-{i}"))
            .await
            .expect("published despite the kill");
        assert_eq!(r.events, 2_000);
        retries += r.retries;
    }
    eprintln!("retries over the failover: {retries}");
    // A failover may reorder what was retried (docs/cluster.md): every
    // event exactly once is the promise here.
    let msgs = read_all(p.client(), &settings).await;
    check_stream(&msgs, &bodies, &settings, false);
}

/// The event lines a node's handler saw.
type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

/// A handler that records every line it is given and answers `Ok`, or,
/// when `stuck`, never answers.
fn recording_handler(seen: Seen, stuck: bool) -> sluice_stream::Handler {
    Arc::new(move |d: Delivery| {
        {
            let mut s = seen.lock().unwrap();
            for line in d.payload.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
                s.push(line.to_vec());
            }
        }
        Box::pin(async move {
            let done: sluice_stream::Completion = Box::pin(async move {
                if stuck {
                    // Mid-message forever, as a node that hangs and then dies.
                    std::future::pending::<()>().await;
                }
                Ok(())
            });
            Ok(done)
        })
    })
}

async fn node(
    nats: &NatsCluster,
    settings: &StreamSettings,
    name: &str,
    seen: Seen,
    stuck: bool,
) -> (async_nats::Client, Node) {
    node_with_lease(nats, settings, name, seen, stuck, Duration::from_secs(2)).await
}

/// [`node`] with leases of `lease_ttl` (renewed every third of it).
async fn node_with_lease(
    nats: &NatsCluster,
    settings: &StreamSettings,
    name: &str,
    seen: Seen,
    stuck: bool,
    lease_ttl: Duration,
) -> (async_nats::Client, Node) {
    let client = sluice_stream::connect(&nats.urls()).await.expect("connect");
    let consume = ConsumeSettings {
        ack_wait: Duration::from_secs(4),
        lease_ttl,
        ..ConsumeSettings::new(name)
    };
    let n = Node::start(
        client.clone(),
        settings.clone(),
        consume,
        3,
        recording_handler(seen, stuck),
    )
    .await
    .expect("a node");
    (client, n)
}

/// Waits until `f` holds, polling; panics with `what` after `timeout`.
async fn until(timeout: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn all_lines(bodies: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = bodies
        .iter()
        .flat_map(|b| {
            b.split(|c| *c == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
        })
        .collect();
    v.sort();
    v
}

fn distinct(seen: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut v = seen.to_vec();
    v.sort();
    v.dedup();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_partitions_and_handle_every_event() {
    let (_one, _dir, nats, settings, p) = cluster_and_publisher().await;
    let (sa, sb): (Seen, Seen) = Default::default();
    let (_ca, a) = node(&nats, &settings, "node-a", sa.clone(), false).await;
    let (_cb, b) = node(&nats, &settings, "node-b", sb.clone(), false).await;
    until(Duration::from_secs(20), "8 partitions each", async || {
        a.partitions().await.len() == 8 && b.partitions().await.len() == 8
    })
    .await;
    let bodies = bodies(20_000, 2_000);
    for (i, body) in bodies.iter().enumerate() {
        p.publish(body, &format!("body-{i}"))
            .await
            .expect("published");
    }
    let want = all_lines(&bodies);
    until(Duration::from_secs(60), "every event handled", async || {
        let mut all = sa.lock().unwrap().clone();
        all.extend(sb.lock().unwrap().iter().cloned());
        distinct(&all) == want
    })
    .await;
    assert!(!sa.lock().unwrap().is_empty() && !sb.lock().unwrap().is_empty());
    // No failure, no handoff after publishing: each account's events were
    // handled once, by one node, in the order published.
    let mut published: HashMap<String, Vec<&[u8]>> = HashMap::new();
    for line in bodies
        .iter()
        .flat_map(|b| b.split(|c| *c == b'\n').filter(|l| !l.is_empty()))
    {
        published.entry(account(line)).or_default().push(line);
    }
    for seen in [&sa, &sb] {
        let seen = seen.lock().unwrap();
        let mut handled: HashMap<String, Vec<&[u8]>> = HashMap::new();
        for line in seen.iter() {
            handled.entry(account(line)).or_default().push(line);
        }
        for (acct, lines) in handled {
            assert!(
                lines == published[&acct],
                "{acct}: handled out of order or twice"
            );
        }
    }
    let acked = a.stats.acked.load(Ordering::Relaxed) + b.stats.acked.load(Ordering::Relaxed);
    assert!(acked >= 16, "messages acked: {acked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_message_loses_nothing_and_its_partitions_move() {
    let (_one, _dir, nats, settings, p) = cluster_and_publisher().await;
    let (sa, sb): (Seen, Seen) = Default::default();
    // Node A takes messages and never finishes them; then it dies.
    let (ca, a) = node(&nats, &settings, "node-a", sa.clone(), true).await;
    let (_cb, b) = node(&nats, &settings, "node-b", sb.clone(), false).await;
    until(Duration::from_secs(20), "8 partitions each", async || {
        a.partitions().await.len() == 8 && b.partitions().await.len() == 8
    })
    .await;
    let bodies = bodies(10_000, 1_000);
    for (i, body) in bodies.iter().enumerate() {
        p.publish(body, &format!("body-{i}"))
            .await
            .expect("published");
    }
    until(
        Duration::from_secs(20),
        "node A in the middle of a message",
        async || !sa.lock().unwrap().is_empty(),
    )
    .await;
    let killed = Instant::now();
    a.kill().await;
    drop(ca);
    let want = all_lines(&bodies);
    until(
        Duration::from_secs(60),
        "node B handled every event",
        async || distinct(&sb.lock().unwrap()) == want,
    )
    .await;
    let took = killed.elapsed();
    assert_eq!(b.partitions().await.len(), 16, "B took over A's partitions");
    let redelivered = b.stats.redelivered.load(Ordering::Relaxed);
    assert!(redelivered >= 1, "A's unacked messages came back to B");
    eprintln!("delivery complete {took:?} after the kill; {redelivered} messages redelivered");
    // Lease expiry (2 s) and the ack wait (4 s), plus a few seconds.
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

/// A cluster and one node, "node-a", once it holds all 16 partitions (with
/// its client).
async fn one_node_holding_every_partition() -> (
    tokio::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    NatsCluster,
    async_nats::Client,
    Node,
) {
    let (one, dir, nats, settings, _p) = cluster_and_publisher().await;
    let seen: Seen = Default::default();
    let (client, a) = node(&nats, &settings, "node-a", seen, false).await;
    until(Duration::from_secs(20), "all 16 partitions", async || {
        a.partitions().await.len() == 16
    })
    .await;
    (one, dir, nats, client, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_consuming_a_partition_whose_lease_another_holds() {
    let (_one, _dir, _nats, client, a) = one_node_holding_every_partition().await;
    // Another node's claim replaces A's lease on partition 3 (as after A's
    // lease expired unseen): A must give the partition up at its next
    // renewal, and not take it back while the claim is renewed.
    let leases = jetstream::new(client)
        .get_key_value("SLUICE_LEASES")
        .await
        .expect("the lease bucket");
    leases.delete("part.3").await.expect("delete");
    let mut rev = leases
        .create("part.3", Bytes::from_static(b"intruder"))
        .await
        .expect("claim");
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut gave_up = false;
    while Instant::now() < deadline {
        rev = leases
            .update("part.3", Bytes::from_static(b"intruder"), rev)
            .await
            .expect("the intruder keeps its claim");
        if !a.partitions().await.contains(&3) {
            gave_up = true;
        } else {
            assert!(!gave_up, "A took partition 3 back while claimed");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        gave_up,
        "A kept consuming partition 3 under another's lease"
    );
    assert_eq!(a.partitions().await.len(), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_hands_its_partitions_over_at_once_without_duplicates() {
    let (_one, _dir, nats, settings, p) = cluster_and_publisher().await;
    let (sa, sb): (Seen, Seen) = Default::default();
    // Leases of 6 s: a hand-over is seen at the other node's next count of
    // the live nodes (every 2 s), well before the lease could expire, even
    // on a loaded machine; with 2 s leases the margin was a fraction of a
    // tick, and a count that came late failed the test.
    let lease = Duration::from_secs(6);
    let (_ca, a) = node_with_lease(&nats, &settings, "node-a", sa.clone(), false, lease).await;
    let (_cb, b) = node_with_lease(&nats, &settings, "node-b", sb.clone(), false, lease).await;
    until(Duration::from_secs(30), "8 partitions each", async || {
        a.partitions().await.len() == 8 && b.partitions().await.len() == 8
    })
    .await;
    let bodies = bodies(20_000, 1_000);
    let (first, rest) = bodies.split_at(bodies.len() / 2);
    for (i, body) in first.iter().enumerate() {
        p.publish(body, &format!("first-{i}"))
            .await
            .expect("published");
    }
    let stopped = Instant::now();
    a.stop(Duration::from_secs(5)).await;
    until(
        Duration::from_secs(10),
        "B holds all 16 partitions",
        async || b.partitions().await.len() == 16,
    )
    .await;
    let handover = stopped.elapsed();
    for (i, body) in rest.iter().enumerate() {
        p.publish(body, &format!("rest-{i}"))
            .await
            .expect("published");
    }
    let want = all_lines(&bodies);
    until(Duration::from_secs(60), "every event handled", async || {
        let mut all = sa.lock().unwrap().clone();
        all.extend(sb.lock().unwrap().iter().cloned());
        distinct(&all) == want
    })
    .await;
    let handled = sa.lock().unwrap().len() + sb.lock().unwrap().len();
    eprintln!("handed over {handover:?} after the stop; {handled} events handled");
    assert_eq!(handled, want.len(), "no event handled twice");
    // Before the lease (6 s) could have expired: the lease was handed back.
    assert!(
        handover < lease - Duration::from_millis(100),
        "took {handover:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_write_its_heartbeat_counts_it_and_keeps_its_partitions() {
    let (_one, _dir, _nats, client, a) = one_node_holding_every_partition().await;
    let failures = || a.stats.heartbeat_failures.load(Ordering::Relaxed);
    // (A put may fail while the new bucket's servers settle.)
    let before = failures();
    eprintln!("{before} heartbeat failures before the bucket went");
    // With the heartbeat bucket gone, every heartbeat put fails.
    jetstream::new(client)
        .delete_key_value("SLUICE_NODES")
        .await
        .expect("delete the heartbeat bucket");
    until(
        Duration::from_secs(5),
        "a failed heartbeat counted",
        async || failures() > before,
    )
    .await;
    // It goes on counting them, and its leases, in another bucket, still
    // renew: it keeps every partition (three more ticks).
    let counted = failures();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(failures() > counted, "failures counted at every tick");
    assert_eq!(a.partitions().await.len(), 16);
}
