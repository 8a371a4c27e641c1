//! A replay in a cluster takes a destination's selected dead letters from
//! its queue in `SLUICE_DEAD_LETTERS`, then sends them or puts them back,
//! one message in memory at a time: a queue holds up to 256 messages of up
//! to 1 MiB, and neither a replay nor a tenant asking for many of them may
//! cost a node a whole queue's worth of memory. Against a real nats-server
//! (from `.venv-nats`), on loopback; the heap is counted by this test's
//! allocator, for every thread of the process.

mod common;

use bytes::Bytes;
use sluice_engine::dead_letter_file::{Selection, Taken};
use sluice_serve::dead_letters::DeadLetterStore;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting the bytes in use and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is passed on to `System` unchanged; the counters
// only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller promised for `layout`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` or `realloc` with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller promised for `ptr` and `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static HEAP: Counting = Counting;

/// Runs `f` and returns what it returned and how far the heap grew above
/// where it started, at its peak.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let out = f();
    (out, PEAK.load(Relaxed).saturating_sub(base))
}

const MIB: usize = 1 << 20;
/// Messages in the queue, dead letters per message.
const MESSAGES: usize = 20;
const PER_MESSAGE: usize = 600;

/// One message's dead letters (about 0.9 MiB), `{"n":..}` records padded to
/// ~1.5 KB; every other one refused with a 400, the others with a 503.
fn message(m: usize) -> Bytes {
    let pad = "x".repeat(1400);
    let mut out = String::new();
    for i in 0..PER_MESSAGE {
        let n = m * PER_MESSAGE + i;
        let status = if n.is_multiple_of(2) { 400 } else { 503 };
        out.push_str(&format!(
            r#"{{"time":"2026-12-07T10:00:00.000Z","subscription":"esb_1","reason":"refused: {status}","attempts":1,"record":{{"n":{n},"pad":"{pad}"}}}}"#
        ));
        out.push('\n');
    }
    assert!(out.len() < MIB, "a message fits the queue's pieces");
    out.into()
}

/// Every dead letter of the destination's queue, newest first.
fn listed(q: &dyn DeadLetterStore, destination: &str, selection: &Selection) -> Vec<u64> {
    let (mut out, mut before) = (Vec::new(), None);
    loop {
        let page = q.list(destination, selection, before, 1000).unwrap();
        out.extend(page.dead_letters.iter().map(|d| n_of(d.record.get())));
        match page.next_before {
            Some(b) => before = Some(b),
            None => return out,
        }
    }
}

fn n_of(record: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(record).unwrap()["n"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_replay_takes_sends_and_puts_back_one_message_at_a_time() {
    let nats = common::Nats::start();
    let (rt, publisher) = (&nats.rt, &nats.publisher);
    for m in 0..MESSAGES {
        rt.block_on(publisher.dead_letters("ed_big", message(m), &format!("m{m}")))
            .unwrap();
    }
    let queue_bytes = MESSAGES * message(0).len();
    let q = nats.queue();
    let refused_400 = Selection {
        reason: Some("refused: 400".into()),
        ..Selection::default()
    };
    let total = (MESSAGES * PER_MESSAGE) as u64;

    // Taking: half of every message's lines go to the journal, the other
    // half are stored again.
    let (taken, grew) = peak_of(|| q.take_for_replay("ed_big", "r1", &refused_400).unwrap());
    let Taken::New(r) = taken else {
        panic!("a new replay")
    };
    assert_eq!(r.records, total / 2);
    assert!(
        grew < 8 * MIB,
        "taking from a {} MiB queue held {} MiB at its peak",
        queue_bytes / MIB,
        grew / MIB
    );
    let left = listed(&q, "ed_big", &Selection::default());
    assert_eq!(left.len() as u64, total / 2, "the others stay");
    assert!(
        left.iter().all(|n| !n.is_multiple_of(2)),
        "only the 503s stay"
    );

    // Sending: what the replay took, oldest first, each once.
    let (sent, grew) = peak_of(|| {
        q.letters("ed_big", "r1")
            .unwrap()
            .map(|d| n_of(d.unwrap().record.get()))
            .collect::<Vec<_>>()
    });
    let expected: Vec<u64> = (0..total).filter(|n| n.is_multiple_of(2)).collect();
    assert_eq!(sent, expected, "every taken dead letter, in order");
    assert!(
        grew < 8 * MIB,
        "sending a {} MiB journal held {} MiB at its peak",
        queue_bytes / 2 / MIB,
        grew / MIB
    );

    // Putting back (its destination went away): the queue holds them all.
    let ((), grew) = peak_of(|| q.put_back("ed_big", "r1").unwrap());
    assert!(
        grew < 8 * MIB,
        "putting back a {} MiB journal held {} MiB at its peak",
        queue_bytes / 2 / MIB,
        grew / MIB
    );
    let mut all = listed(&q, "ed_big", &Selection::default());
    all.sort_unstable();
    assert_eq!(
        all,
        (0..total).collect::<Vec<_>>(),
        "nothing lost or doubled"
    );

    // The same id again is the same replay, not a second take.
    match q.take_for_replay("ed_big", "r1", &refused_400).unwrap() {
        Taken::Existing(again) => assert_eq!(again.records, total / 2),
        Taken::New(_) => panic!("replay r1 taken twice"),
    }
}
