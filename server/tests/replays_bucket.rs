//! The cluster's replays bucket (`SLUICE_REPLAYS`) stays bounded per
//! destination, as the file queue's replays log does: every running replay
//! and the last finished ones are remembered, older finished ones are
//! forgotten. Against a real nats-server (from `.venv-nats`), on loopback.

mod common;

use sluice_engine::dead_letter_file::{Selection, Taken};
use sluice_serve::dead_letters::DeadLetterStore;

#[test]
fn a_destination_remembers_its_running_replays_and_its_last_finished_ones() {
    let nats = common::Nats::start();
    let q = nats.queue().with_replays_kept(3);
    let all = Selection::default();
    assert!(matches!(
        q.take_for_replay("ed_t", "open", &all).unwrap(),
        Taken::New(_)
    ));
    for i in 0..20 {
        let id = format!("r{i}");
        assert!(matches!(
            q.take_for_replay("ed_t", &id, &all).unwrap(),
            Taken::New(_)
        ));
        q.finish_replay("ed_t", &id).unwrap();
    }
    let remembered: Vec<usize> = (0..20)
        .filter(|i| q.replay("ed_t", &format!("r{i}")).unwrap().is_some())
        .collect();
    assert!(
        (3..6).contains(&remembered.len()) && remembered.ends_with(&[17, 18, 19]),
        "the last finished replays, at most twice as many: {remembered:?}"
    );
    let open: Vec<String> = q
        .unfinished("ed_t")
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(open, ["open"], "a running replay is never forgotten");
    assert!(matches!(
        q.take_for_replay("ed_t", "r19", &all).unwrap(),
        Taken::Existing(_)
    ));
    assert!(
        matches!(
            q.take_for_replay("ed_t", "r0", &all).unwrap(),
            Taken::New(_)
        ),
        "a forgotten id starts a new replay"
    );
}

#[test]
fn a_destination_s_replay_keys_are_read_without_the_others() {
    use sluice_stream::async_nats::jetstream;
    let nats = common::Nats::start();
    let _q = nats.queue(); // makes the bucket
    let (rt, client) = (&nats.rt, nats.publisher.client());
    let _in_runtime = rt.enter();
    let kv = rt
        .block_on(jetstream::new(client.clone()).get_key_value("SLUICE_REPLAYS"))
        .unwrap();
    for key in ["ed_a.r1", "ed_a.r2", "ed_a.r3", "ed_ab.r1", "ed_b.r1"] {
        rt.block_on(kv.put(key, "v".into())).unwrap();
    }
    rt.block_on(kv.put("ed_a.r2", "again".into())).unwrap();
    rt.block_on(kv.delete("ed_a.r3")).unwrap();
    rt.block_on(kv.purge("ed_b.r1")).unwrap();
    let keys = |prefix: &str| {
        let mut k = rt
            .block_on(sluice_stream::bucket_keys(client, "SLUICE_REPLAYS", prefix))
            .unwrap();
        k.sort();
        k
    };
    assert_eq!(
        keys("ed_a."),
        ["ed_a.r1", "ed_a.r2"],
        "each live key once, not a deleted one, not another destination's"
    );
    assert_eq!(keys("ed_ab."), ["ed_ab.r1"]);
    assert!(keys("ed_b.").is_empty(), "a purged key is gone");
    assert!(keys("ed_none.").is_empty());
}
