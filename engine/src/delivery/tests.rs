use super::*;

const RTT: Duration = Duration::from_millis(10);

#[test]
fn concurrency_grows_by_one_per_round_trip_while_busy_and_steady() {
    let mut a = Aimd::new(16, true);
    assert_eq!(a.limit(), 1, "starts at one batch in flight");
    // A round trip is `limit` completions, each adding 1/limit: about
    // one more batch per round trip, never more.
    let mut trips = 0;
    while a.limit() < 16 {
        let before = a.limit();
        for _ in 0..before {
            a.observe(RTT, false, true);
        }
        assert!(a.limit() <= before + 1, "{before} -> {}", a.limit());
        trips += 1;
    }
    assert!(
        (15..=24).contains(&trips),
        "{trips} round trips from 1 to 16"
    );
    for _ in 0..100 {
        a.observe(RTT, false, true);
    }
    assert_eq!(a.limit(), 16, "never above max_in_flight");
}

#[test]
fn concurrency_does_not_grow_when_idle_or_when_latency_rises() {
    let mut a = Aimd::new(16, true);
    for _ in 0..50 {
        a.observe(RTT, false, false);
    }
    assert_eq!(a.limit(), 1, "slots not in use: no reason to grow");
    for _ in 0..4 {
        a.observe(RTT, false, true);
    }
    let before = a.limit();
    a.observe(RTT * 10, false, true);
    assert_eq!(a.limit(), before, "latency well above its average: hold");
}

#[test]
fn concurrency_halves_on_congestion_once_per_round_trip_and_floors_at_one() {
    let mut a = Aimd::new(64, true);
    for _ in 0..2000 {
        a.observe(RTT, false, true);
    }
    let before = a.limit();
    assert!(before >= 32, "{before}");
    a.observe(RTT, true, true);
    assert_eq!(a.limit(), before / 2);
    // The other batches of the same round trip saw the same congestion.
    a.observe(RTT, true, true);
    a.observe(RTT, true, true);
    assert_eq!(a.limit(), before / 2, "one cut per round trip");
    for _ in 0..20 {
        std::thread::sleep(RTT * 2);
        a.observe(RTT, true, true);
    }
    assert_eq!(a.limit(), 1, "never below one");
}

#[test]
fn fixed_concurrency_ignores_what_it_observes() {
    let mut a = Aimd::new(8, false);
    assert_eq!(a.limit(), 8);
    a.observe(RTT, true, true);
    assert_eq!(a.limit(), 8);
}

#[test]
fn batches_close_on_a_millisecond_grid_never_after_their_linger() {
    let epoch = Instant::now();
    let linger = Duration::from_millis(10);
    let mut closes = std::collections::BTreeSet::new();
    // Starts 10 µs apart over 3 ms: each closes at most 1 ms before its
    // linger is up and never after, and starts within one millisecond of
    // the grid share their close.
    for i in 0..300u64 {
        let now = epoch + Duration::from_micros(10 * i);
        let d = lanes::close_at(epoch, now, linger);
        assert!(d <= now + linger, "closes after its linger");
        assert!(
            now + linger - d < Duration::from_millis(1),
            "closes more than 1 ms early"
        );
        assert_eq!(
            d.duration_since(epoch).subsec_nanos() % 1_000_000,
            0,
            "on the grid"
        );
        closes.insert(d);
    }
    assert_eq!(closes.len(), 3, "300 starts over 3 ms close at 3 instants");
    // A linger under 2 ms is kept exact.
    let now = epoch + Duration::from_micros(1234);
    let short = Duration::from_millis(1);
    assert_eq!(lanes::close_at(epoch, now, short), now + short);
}

#[test]
fn calls_are_fast_only_once_measured_under_the_threshold() {
    let mut a = Aimd::new(16, false);
    assert!(!a.fast_calls(), "nothing measured yet");
    for _ in 0..20 {
        a.observe_calls(Duration::from_micros(5));
    }
    assert!(a.fast_calls(), "5 µs per call");
    for _ in 0..20 {
        a.observe_calls(Duration::from_millis(20));
    }
    assert!(
        !a.fast_calls(),
        "20 ms per call: one batch per flight again"
    );
}

#[test]
fn refused_records_are_grouped_in_runs_of_one_reason_in_order() {
    let pending = |n: u8| {
        let rec = Record::from_parts(
            &[b'0' + n],
            "ac_1",
            "ev_1",
            crate::events::EventTypeId::from_name("http_request_complete.v0").unwrap(),
            0,
        );
        Pending::new(rec, Instant::now(), 0, None)
    };
    let items = [(0, "a"), (1, "a"), (2, "b"), (3, "a"), (4, "a"), (5, "a")]
        .map(|(n, reason)| (pending(n), reason));
    let got: Vec<(&str, Vec<u8>)> = retry::runs(items)
        .into_iter()
        .map(|(reason, run)| (reason, run.iter().map(|p| p.rec.data()[0] - b'0').collect()))
        .collect();
    assert_eq!(
        got,
        [("a", vec![0, 1]), ("b", vec![2]), ("a", vec![3, 4, 5])]
    );
}

#[test]
fn a_release_wakes_a_publisher_waiting_for_room_at_once() {
    // A release notifies only while someone waits: the waiter must be
    // counted, or it would sleep until its 100 ms re-check.
    let budget = Arc::new(ByteBudget::new(100, Arc::new(Stopping::default())));
    budget.acquire(100);
    let waiter = {
        let b = budget.clone();
        std::thread::spawn(move || {
            b.acquire(50);
            Instant::now()
        })
    };
    while budget.used.lock().unwrap().waiting == 0 {
        std::thread::yield_now();
    }
    // Well inside the waiter's first 100 ms wait.
    std::thread::sleep(Duration::from_millis(20));
    let released = Instant::now();
    budget.release(100);
    let took = waiter.join().unwrap() - released;
    assert!(
        took < Duration::from_millis(50),
        "woken {took:?} after the release"
    );
    assert_eq!(budget.used(), 50);
    assert_eq!(budget.used.lock().unwrap().waiting, 0);
    // With no one waiting, a release only gives the bytes back.
    budget.release(50);
    assert_eq!(budget.available(), 100);
}
