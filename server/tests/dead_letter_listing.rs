//! Listing a destination's dead letters in a cluster (`SLUICE_DEAD_LETTERS`)
//! pages newest first and fetches only the messages a page reaches, one at
//! a time: a request never holds a whole queue (up to 256 messages of up
//! to 1 MiB each). Against a real nats-server (from `.venv-nats`), on
//! loopback.

mod common;

use bytes::Bytes;
use sluice_engine::dead_letter_file::Selection;
use sluice_serve::dead_letters::DeadLetterStore;
use sluice_stream::async_nats::{self, jetstream};

/// `n` dead letters as the nodes store them (NDJSON), records `{"n":from..}`.
fn letters(from: usize, n: usize) -> Bytes {
    let mut out = String::new();
    for i in from..from + n {
        out.push_str(&format!(
            r#"{{"time":"2026-12-07T10:00:00.000Z","subscription":"esb_1","reason":"refused: 400","attempts":1,"record":{{"n":{i}}}}}"#
        ));
        out.push('\n');
    }
    out.into()
}

/// The records' `n` of a page, in its order.
fn ns(page: &sluice_engine::dead_letter_file::Page) -> Vec<u64> {
    page.dead_letters
        .iter()
        .map(|d| {
            serde_json::from_str::<serde_json::Value>(d.record.get()).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn pages_go_newest_first_and_read_only_the_messages_they_reach() {
    let nats = common::Nats::start();
    let (rt, publisher, settings) = (&nats.rt, &nats.publisher, &nats.settings);
    let client = publisher.client().clone();
    // Three messages of dead letters (0-2, 3-6, 7-8), another
    // destination's in between.
    for (i, (from, n)) in [(0, 3), (3, 4), (7, 2)].into_iter().enumerate() {
        rt.block_on(publisher.dead_letters("ed_a", letters(from, n), &format!("a{i}")))
            .unwrap();
        rt.block_on(publisher.dead_letters("ed_other", letters(100, 2), &format!("o{i}")))
            .unwrap();
    }
    // ed_b: a message nothing can decode, then a good one after it.
    rt.block_on(publisher.dead_letters("ed_b", letters(0, 2), "b0"))
        .unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(sluice_stream::encoding::HEADER, "bogus");
    rt.block_on(async {
        jetstream::new(client)
            .publish_with_headers(
                settings.dead_letter_subject("ed_b"),
                headers,
                Bytes::from_static(b"not what it says"),
            )
            .await
            .unwrap()
            .await
            .unwrap()
    });
    rt.block_on(publisher.dead_letters("ed_b", letters(10, 3), "b2"))
        .unwrap();
    let q = nats.queue();
    let all = Selection::default();

    // Newest first, page by page, across messages, nothing twice.
    let mut seen = Vec::new();
    let mut before = None;
    for _ in 0..10 {
        let page = q.list("ed_a", &all, before, 2).unwrap();
        seen.extend(ns(&page));
        match page.next_before {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(seen, (0..9).rev().collect::<Vec<u64>>());
    // A page that starts at a message's first id (7's) takes only the
    // messages before it; one that starts inside a message (at 5), the
    // rest of it too.
    let page = q.list("ed_a", &all, None, 2).unwrap();
    assert_eq!(ns(&page), [8, 7]);
    let first_of_last = page.dead_letters.last().unwrap().id;
    let below = q.list("ed_a", &all, Some(first_of_last), 100).unwrap();
    assert_eq!(ns(&below), (0..7).rev().collect::<Vec<u64>>());
    assert_eq!(below.next_before, None);
    let five = below.dead_letters[1].id;
    let inside = q.list("ed_a", &all, Some(five), 100).unwrap();
    assert_eq!(ns(&inside), [4, 3, 2, 1, 0]);

    // The newest page of ed_b never reaches the bad message, and is
    // answered; the page that does reach it fails with what was wrong.
    let page = q.list("ed_b", &all, None, 3).unwrap();
    assert_eq!(ns(&page), [12, 11, 10]);
    let deeper = q.list("ed_b", &all, page.next_before, 3);
    let err = deeper.expect_err("the bad message is reached");
    assert!(err.to_string().contains("bogus"), "{err}");
}
