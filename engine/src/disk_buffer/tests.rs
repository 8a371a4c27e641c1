use super::frame::segment_path;
use super::*;

fn rec(i: u64, size: usize) -> Record {
    let data = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(size));
    Record::from_parts(
        data.as_bytes(),
        "ac_1",
        &format!("ev_{i}"),
        EventTypeId::from_name("http_request_complete.v0").unwrap(),
        1_700_000_000_000 + i as i64,
    )
}

fn opts(max: u64, seg: u64, when_full: WhenFull) -> DiskOptions {
    DiskOptions {
        fsync: Fsync::Interval,
        fsync_interval: Duration::from_millis(10),
        max_bytes: max,
        when_full,
        wait_for_room: true,
        segment_bytes: seg,
    }
}

fn open(dir: &Path, o: DiskOptions) -> (Arc<DiskBuffer>, OpenReport, Arc<DestinationStats>) {
    let stats = Arc::new(DestinationStats::default());
    let (b, r) = DiskBuffer::open(dir, o, stats.clone(), Arc::new(SyncSignal::default())).unwrap();
    (b, r, stats)
}

fn read_all(b: &DiskBuffer) -> Vec<DiskEntry> {
    let mut out = Vec::new();
    while b.read(1 << 20, &mut out).unwrap() > 0 {}
    out
}

fn ids(v: &[DiskEntry]) -> Vec<String> {
    v.iter().map(|e| e.record.event_id().to_string()).collect()
}

#[test]
fn records_come_back_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (b, report, _) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
    assert_eq!(report, OpenReport::default());
    let recs: Vec<Record> = (0..100).map(|i| rec(i, 10 + i as usize)).collect();
    b.append("esb_a", &recs[..60], 42, None).unwrap();
    b.append("esb_b", &recs[60..], 43, None).unwrap();
    let got = read_all(&b);
    assert_eq!(got.len(), 100);
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
        assert_eq!(e.record.data(), recs[i].data());
        assert_eq!(e.record.account_id(), "ac_1");
        assert_eq!(e.record.event_id(), format!("ev_{i}"));
        assert_eq!(e.record.timestamp_ms, recs[i].timestamp_ms);
        assert_eq!(e.record.event_type.name(), "http_request_complete.v0");
        assert_eq!(&*e.subscription, if i < 60 { "esb_a" } else { "esb_b" });
        assert_eq!(e.received_unix_us, if i < 60 { 42 } else { 43 });
    }
    assert!(!b.unread());
    assert!(!b.drained());
    b.ack(1..=100);
    assert!(b.drained());
}

#[test]
fn acknowledged_segments_are_deleted_and_size_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _, stats) = open(dir.path(), opts(1 << 20, 64 << 10, WhenFull::DropNewest));
    let recs: Vec<Record> = (0..20).map(|i| rec(i, 1000)).collect();
    let mut appended = 0;
    loop {
        match b.append("esb", &recs, 0, None) {
            Ok(()) => appended += recs.len(),
            Err(AppendError::Full) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(stats.disk_bytes.load(Relaxed) <= 1 << 20);
    let segs = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count()
    };
    let before = segs();
    assert!(before > 4, "{before} segments");
    let got = read_all(&b);
    assert_eq!(got.len(), appended);
    b.ack(got.iter().map(|e| e.seq));
    b.sync().unwrap();
    assert_eq!(segs(), 1, "only the active segment is left");
    assert!(stats.disk_bytes.load(Relaxed) < 64 << 10);
    // Room again.
    b.append("esb", &recs, 0, None).unwrap();
}

#[test]
fn a_restart_replays_only_what_was_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (b, _, _) = open(dir.path(), opts(1 << 30, 32 << 10, WhenFull::Block));
        let recs: Vec<Record> = (0..300).map(|i| rec(i, 200)).collect();
        b.append("esb", &recs, 0, None).unwrap();
        let got = read_all(&b);
        // Acknowledge all but every 7th, out of order.
        b.ack(got.iter().rev().filter(|e| e.seq % 7 != 0).map(|e| e.seq));
        b.finish().unwrap();
    }
    let (b, report, stats) = open(dir.path(), opts(1 << 30, 32 << 10, WhenFull::Block));
    assert_eq!(report.replay, 300 / 7);
    assert_eq!(stats.disk_replayed.load(Relaxed), 300 / 7);
    let got = read_all(&b);
    assert!(got.iter().all(|e| e.seq % 7 == 0), "{:?}", ids(&got));
    assert_eq!(got.len(), 300 / 7);
    // Writing goes on after the last record.
    b.append("esb", &[rec(999, 10)], 0, None).unwrap();
    let more = read_all(&b);
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].seq, 301);
}

#[test]
fn a_torn_tail_is_cut_and_counted_and_writing_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let seg;
    {
        let (b, _, _) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
        let recs: Vec<Record> = (0..10).map(|i| rec(i, 100)).collect();
        b.append("esb", &recs, 0, None).unwrap();
        b.finish().unwrap();
        seg = segment_path(dir.path(), 1);
    }
    // A write cut in the middle: half a frame at the end.
    let len = std::fs::metadata(&seg).unwrap().len();
    let mut frame = Vec::new();
    encode_frame(&mut frame, 11, "esb", &rec(10, 100), 0);
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&frame[..frame.len() / 2]).unwrap();
    drop(f);
    let (b, report, stats) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("incomplete frame"),
        "{:?}",
        report.problems
    );
    assert_eq!(report.repaired_bytes, frame.len() as u64 / 2);
    assert_eq!(
        stats.disk_repaired_bytes.load(Relaxed),
        frame.len() as u64 / 2
    );
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
    assert_eq!(report.replay, 10);
    b.append("esb", &[rec(10, 100)], 0, None).unwrap();
    let got = read_all(&b);
    assert_eq!(got.len(), 11);
    assert_eq!(got[10].seq, 11);
    assert_eq!(got[10].record.event_id(), "ev_10");
}

/// A damaged frame inside the last segment is cut as a torn tail; the
/// acknowledgements saved for the records after it must not cover the
/// new records that take their sequence numbers (they were lost before:
/// acknowledged to the publisher, never delivered).
#[test]
fn records_written_after_a_repair_are_not_taken_for_acknowledged_ones() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (b, _, _) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
        let recs: Vec<Record> = (0..40).map(|i| rec(i, 100)).collect();
        b.append("esb", &recs, 0, None).unwrap();
        b.sync().unwrap();
        // Everything delivered but 1..=5; the acknowledgements are saved.
        b.ack(6..=40);
        b.sync().unwrap();
        b.finish().unwrap();
    }
    // Flip a byte in the 10th frame: the tail from there is cut.
    let seg = segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&seg).unwrap();
    let mut at = 24;
    for _ in 0..9 {
        at += u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize + FRAME_HEAD;
    }
    bytes[at + FRAME_HEAD + 20] ^= 0xFF;
    std::fs::write(&seg, &bytes).unwrap();
    let (b, report, _) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
    assert!(report.repaired_bytes > 0, "{report:?}");
    assert_eq!(report.replay, 5, "records 1..=5 were never acknowledged");
    // New records take sequence numbers 10.. again: every one is delivered.
    let new: Vec<Record> = (100..132).map(|i| rec(i, 100)).collect();
    b.append("esb", &new, 0, None).unwrap();
    let got = ids(&read_all(&b));
    let want: Vec<String> = (0..5).chain(100..132).map(|i| format!("ev_{i}")).collect();
    assert_eq!(got, want);
    assert!(!b.drained());
}

/// The smallest bound the configuration accepts (1 MiB) carries a
/// stream many times its size as long as it is delivered: segments are an
/// eighth of the bound, so delivered ones are deleted and room comes back.
#[test]
fn the_smallest_bound_carries_a_delivered_stream() {
    let dir = tempfile::tempdir().unwrap();
    let max = 1 << 20;
    let o = opts(
        max,
        DiskOptions::segment_size_for(max),
        WhenFull::DropNewest,
    );
    let (b, _, stats) = open(dir.path(), o);
    let recs: Vec<Record> = (0..10).map(|i| rec(i, 1000)).collect();
    for round in 0..400 {
        if let Err(e) = b.append("esb", &recs, 0, None) {
            panic!("round {round} ({} KiB written): {e}", round * 10);
        }
        let got = read_all(&b);
        b.ack(got.iter().map(|e| e.seq));
        b.sync().unwrap();
        assert!(stats.disk_bytes.load(Relaxed) <= max);
    }
    assert!(b.drained());
}

#[test]
fn garbage_at_the_tail_is_cut_too() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (b, _, _) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
        b.append("esb", &[rec(0, 10), rec(1, 10)], 0, None).unwrap();
        b.finish().unwrap();
    }
    let seg = segment_path(dir.path(), 1);
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[0xAB; 100]).unwrap();
    drop(f);
    let (b, report, _) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
    assert_eq!(report.repaired_bytes, 100);
    assert_eq!(read_all(&b).len(), 2);
}

#[test]
fn damage_inside_a_closed_segment_skips_to_the_next_and_counts_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (b, _, _) = open(dir.path(), opts(1 << 30, 8 << 10, WhenFull::Block));
        for i in 0..40 {
            b.append("esb", &[rec(i, 1000)], 0, None).unwrap();
        }
        b.finish().unwrap();
    }
    // Flip a byte in the body of the 2nd record of the first segment.
    let seg = segment_path(dir.path(), 1);
    let mut bytes = std::fs::read(&seg).unwrap();
    let first_len = u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize + FRAME_HEAD;
    bytes[24 + first_len + FRAME_HEAD + 50] ^= 0xFF;
    std::fs::write(&seg, &bytes).unwrap();
    let (b, report, stats) = open(dir.path(), opts(1 << 30, 8 << 10, WhenFull::Block));
    assert!(
        report.problems.is_empty(),
        "closed segments are checked when read"
    );
    let got = read_all(&b);
    let per_segment = got
        .iter()
        .filter(|e| e.seq > 1)
        .map(|e| e.seq)
        .min()
        .unwrap()
        - 1;
    assert_eq!(got[0].seq, 1);
    assert!(
        per_segment > 2,
        "the rest of segment 1 is skipped: next read is seq {}",
        per_segment + 1
    );
    assert_eq!(stats.disk_lost_records.load(Relaxed), per_segment - 1);
    assert_eq!(got.len() as u64, 40 - (per_segment - 1));
    assert!(stats.disk_errors.load(Relaxed) >= 1);
}

#[test]
fn holds_are_released_by_the_fsync_that_covers_them() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _, _) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
    let (tx, rx) = std::sync::mpsc::channel();
    let t = crate::ack::Ticket::new(true, Box::new(move |r| tx.send(r).unwrap()));
    t.expect(1);
    b.append("esb", &[rec(0, 10)], 0, Some(t.hold())).unwrap();
    t.finish_batch(1, Vec::new());
    assert!(rx.try_recv().is_err(), "not fsynced yet");
    b.sync().unwrap();
    assert_eq!(rx.try_recv().unwrap().accepted, 1);
    assert_eq!(b.synced(), 2);
}

#[test]
fn a_blocked_writer_goes_on_when_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _, _) = open(dir.path(), opts(1 << 20, 64 << 10, WhenFull::Block));
    let recs: Vec<Record> = (0..10).map(|i| rec(i, 1000)).collect();
    while b.stats.disk_bytes.load(Relaxed) + 11_000 < 1 << 20 {
        b.append("esb", &recs, 0, None).unwrap();
    }
    let b2 = b.clone();
    let writer = std::thread::spawn(move || b2.append("esb", &recs, 0, None));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!writer.is_finished(), "blocked while full");
    let got = read_all(&b);
    b.ack(got.iter().map(|e| e.seq));
    b.sync().unwrap();
    writer.join().unwrap().unwrap();
    // And a writer blocked at shutdown gives up.
    let recs: Vec<Record> = (0..10).map(|i| rec(i, 1000)).collect();
    while b.stats.disk_bytes.load(Relaxed) + 11_000 < 1 << 20 {
        b.append("esb", &recs, 0, None).unwrap();
    }
    let b3 = b.clone();
    let writer = std::thread::spawn(move || b3.append("esb", &recs, 0, None));
    std::thread::sleep(Duration::from_millis(100));
    b.close();
    assert!(matches!(writer.join().unwrap(), Err(AppendError::Full)));
}

/// A model of the log, checked at random against the real one: appends,
/// reads with acknowledgements of random subsets, clean restarts, and
/// damage (a flipped byte or a cut at a random place of a random
/// segment) followed by a restart and more appends. After every restart
/// the log gives back exactly the records appended and not acknowledged,
/// byte for byte, except records lost to the damage, and only when the
/// damage was reported; no acknowledged record ever comes back, and no
/// record appended after a repair is ever taken for an acknowledged one.
#[test]
fn the_log_matches_a_model_through_random_damage_and_restarts() {
    for seed in 1..=32u64 {
        model_run(seed);
    }
}

fn model_run(seed: u64) {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n.max(1)
    };
    let dir = tempfile::tempdir().unwrap();
    let o = || opts(1 << 20, 4 << 10, WhenFull::DropNewest);
    let (mut b, _, _) = open(dir.path(), o());
    // id -> record data, for records appended and not acknowledged.
    let mut pending: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
    let mut acked: std::collections::BTreeSet<u64> = Default::default();
    let mut next_id = 0u64;
    for step in 0..80 {
        match next(10) {
            // Append a few records of random sizes.
            0..=3 => {
                let recs: Vec<Record> = (0..1 + next(8))
                    .map(|_| {
                        next_id += 1;
                        rec(next_id, 20 + next(300) as usize)
                    })
                    .collect();
                match b.append("esb", &recs, 0, None) {
                    Ok(()) => {
                        for r in &recs {
                            let id: u64 = r.event_id()[3..].parse().unwrap();
                            pending.insert(id, r.data().to_vec());
                        }
                    }
                    Err(AppendError::Full) => {}
                    Err(e) => panic!("seed {seed} step {step}: {e}"),
                }
            }
            // Deliver what is unread; acknowledge a random part of it.
            4..=5 => {
                let got = read_all(&b);
                let mut acks = Vec::new();
                for e in &got {
                    let id: u64 = e.record.event_id()[3..].parse().unwrap();
                    if next(3) > 0 {
                        acks.push(e.seq);
                        pending.remove(&id);
                        acked.insert(id);
                    }
                }
                b.ack(acks);
            }
            6 => b.sync().unwrap(),
            // Restart, perhaps after damage.
            _ => {
                b.sync().unwrap();
                b.finish().unwrap();
                drop(b);
                let damage = next(2) == 0;
                let damage = damage && damage_a_segment(dir.path(), &mut next);
                let (nb, report, nstats) = open(dir.path(), o());
                let got = read_all(&nb);
                let mut seen = std::collections::BTreeSet::new();
                for e in &got {
                    let id: u64 = e.record.event_id()[3..].parse().unwrap();
                    assert!(
                        !acked.contains(&id),
                        "seed {seed} step {step}: acknowledged record {id} came back"
                    );
                    let want = pending.get(&id).unwrap_or_else(|| {
                        panic!("seed {seed} step {step}: record {id} was never appended")
                    });
                    assert_eq!(
                        e.record.data(),
                        &want[..],
                        "seed {seed}: record {id} changed"
                    );
                    assert!(seen.insert(id), "seed {seed}: record {id} twice");
                }
                let missing: Vec<u64> = pending
                    .keys()
                    .filter(|id| !seen.contains(id))
                    .copied()
                    .collect();
                if !missing.is_empty() {
                    let reported = report.repaired_bytes > 0
                        || !report.problems.is_empty()
                        || nstats.disk_lost_records.load(Relaxed) > 0;
                    assert!(
                        damage && reported,
                        "seed {seed} step {step}: {} records lost ({missing:?}) without {} (damage: {damage}, report: {report:?})",
                        missing.len(),
                        if damage { "a report" } else { "damage" }
                    );
                    for id in missing {
                        pending.remove(&id);
                    }
                }
                // What was read back is delivered again: acknowledge a part.
                let mut acks = Vec::new();
                for e in &got {
                    let id: u64 = e.record.event_id()[3..].parse().unwrap();
                    if next(2) == 0 {
                        acks.push(e.seq);
                        pending.remove(&id);
                        acked.insert(id);
                    }
                }
                nb.ack(acks);
                // The rest stays unacknowledged: it must come back at the
                // next restart; make the log forget it was read.
                nb.sync().unwrap();
                nb.finish().unwrap();
                drop(nb);
                let (nb, _, _) = open(dir.path(), o());
                let again = read_all(&nb);
                let back: std::collections::BTreeSet<u64> = again
                    .iter()
                    .map(|e| e.record.event_id()[3..].parse().unwrap())
                    .collect();
                assert_eq!(
                    back,
                    pending.keys().copied().collect(),
                    "seed {seed} step {step}: a clean restart gives back exactly the unacknowledged records"
                );
                b = nb;
            }
        }
    }
}

/// Flips a byte or cuts the file at a random place of a random segment;
/// false if there was none.
fn damage_a_segment(dir: &Path, next: &mut impl FnMut(u64) -> u64) -> bool {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    if segs.is_empty() {
        return false;
    }
    let seg = &segs[next(segs.len() as u64) as usize];
    let mut bytes = std::fs::read(seg).unwrap();
    if bytes.is_empty() {
        return false;
    }
    let at = next(bytes.len() as u64) as usize;
    if next(2) == 0 {
        bytes[at] ^= 1 << next(8);
        eprintln!("flip {} of {} at {at}", seg.display(), bytes.len());
    } else {
        eprintln!("cut {} of {} at {at}", seg.display(), bytes.len());
        bytes.truncate(at);
    }
    std::fs::write(seg, &bytes).unwrap();
    true
}

#[test]
fn a_buffer_is_opened_by_one_engine_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _, _) = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
    let second = DiskBuffer::open(
        dir.path(),
        opts(1 << 30, 1 << 20, WhenFull::Block),
        Arc::new(DestinationStats::default()),
        Arc::new(SyncSignal::default()),
    );
    let Err(e) = second else {
        panic!("a second engine opened a buffer in use")
    };
    assert!(e.to_string().contains("in use by another engine"), "{e}");
    drop(b);
    let _ = open(dir.path(), opts(1 << 30, 1 << 20, WhenFull::Block));
}
