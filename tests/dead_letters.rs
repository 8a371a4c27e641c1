//! Dead letters as a feature, against a real `sluice serve` and a real HTTP
//! receiver: records a broken destination refuses are listed newest first
//! in pages with their reason; once the destination is fixed a replay
//! delivers every one of them, is audited, and repeating its id sends
//! nothing twice; records that fail again return to the queue with their
//! new reason; a full queue pauses its destination (nothing dropped) until
//! a replay makes room.

use serde_json::{Value, json};
use sluice_standins::http::{Action, Receiver};
use sluice_testkit::{Server, event, read_whole_ndjson};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const HTTP: &str = "http_request_complete.v0";

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every dead letter of `dest`, following `next_page_uri`, with the page
/// sizes seen.
fn all_dead_letters(s: &Server, dest: &str, query: &str) -> (Vec<Value>, Vec<usize>) {
    let mut path = format!("/event_destinations/{dest}/dead_letters?limit=100{query}");
    let (mut all, mut pages) = (Vec::new(), Vec::new());
    loop {
        let (st, page) = s.api_get(&path);
        assert_eq!(st, 200, "{page}");
        let items = page["dead_letters"].as_array().unwrap().clone();
        pages.push(items.len());
        all.extend(items);
        match page["next_page_uri"].as_str() {
            Some(next) => path = next.trim_start_matches(&s.url).to_string(),
            None => return (all, pages),
        }
    }
}

/// `n` events whose user agent is hostile markup and whose method is `method`.
fn ingest_events(s: &Server, prefix: &str, n: usize, method: &str) {
    let object = format!(
        r#"{{"http":{{"request":{{"method":"{method}","user_agent":"\"><img src=x onerror=alert(1)>"}}}}}}"#
    );
    let body: Vec<String> = (0..n)
        .map(|i| event(&format!("{prefix}_{i}"), &s.account, HTTP, &object))
        .collect();
    let (st, report) = s.ingest(&body.join("\n"));
    assert_eq!(st, 200, "{report}");
}

fn event_ids(records: &[Value]) -> HashSet<String> {
    records
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_string())
        .collect()
}

fn replay(s: &Server, dest: &str, body: Value) -> Value {
    let (st, r) = s.api_post(
        &format!("/event_destinations/{dest}/dead_letters/replay"),
        &body,
    );
    assert_eq!(st, 200, "{r}");
    r
}

fn wait_done(s: &Server, dest: &str, id: &str) -> Value {
    wait_for("the replay is done", || {
        let (st, r) = s.api_get(&format!(
            "/event_destinations/{dest}/dead_letters/replays/{id}"
        ));
        assert_eq!(st, 200, "{r}");
        (r["state"] == "done").then_some(r)
    })
}

#[test]
fn dead_letters_are_listed_replayed_once_fixed_and_a_full_queue_pauses_its_destination() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let rx = Receiver::start();
    rx.set(|_| Action::status(400, None));
    let (st, d) = s.api_post(
        "/event_destinations",
        &json!({"target": {"plugin": {"kind": "http", "config": {"url": rx.url()},
            "delivery": {"linger_ms": 10, "max_attempts": 1}}}}),
    );
    assert_eq!(st, 201, "{d}");
    let dest = d["id"].as_str().unwrap().to_string();
    let (st, sub) = s.api_post(
        "/event_subscriptions",
        &json!({"sources": [{"type": HTTP, "filter": "ev.http.request.method == 'GET'"}],
            "destination_ids": [dest]}),
    );
    assert_eq!(st, 201, "{sub}");
    // The audit trail of replays, in a file.
    let (st, audit) = s.api_post(
        "/event_destinations",
        &json!({"target": {"plugin": {"kind": "file", "config": {"path": "audit.ndjson"},
            "delivery": {"linger_ms": 10}}}}),
    );
    assert_eq!(st, 201, "{audit}");
    let (st, _) = s.api_post(
        "/event_subscriptions",
        &json!({"sources": [{"type": "event_destination_dead_letters_replayed.v0"}],
            "destination_ids": [audit["id"]]}),
    );
    assert_eq!(st, 201);

    // Refused records are listed, newest first, in pages, with the reason.
    ingest_events(&s, "ev_a", 250, "GET");
    let (letters, pages) = wait_for("250 dead letters", || {
        let (l, p) = all_dead_letters(&s, &dest, "");
        (l.len() == 250).then_some((l, p))
    });
    assert_eq!(pages, vec![100, 100, 50]);
    let ids: Vec<u64> = letters.iter().map(|l| l["id"].as_u64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first, ids unique"
    );
    let records: Vec<Value> = letters.iter().map(|l| l["record"].clone()).collect();
    assert_eq!(event_ids(&records).len(), 250);
    assert!(
        letters
            .iter()
            .all(|l| l["reason"].as_str().unwrap().contains("HTTP 400")
                && l["subscription_id"] == sub["id"]
                && l["attempts"] == 1)
    );
    assert_eq!(
        letters[0]["record"]["object"]["http"]["request"]["user_agent"],
        "\"><img src=x onerror=alert(1)>",
        "tenant text is kept as data"
    );
    let (st, e) = s.api_get(&format!(
        "/event_destinations/{dest}/dead_letters?since=yesterday"
    ));
    assert_eq!(
        (st, e["error_code"].as_str()),
        (400, Some("ERR_NGROK_215")),
        "{e}"
    );

    // A long reason of multi-byte characters is refused, not a crash.
    let long = "%C3%A9".repeat(300);
    let (st, e) = s.api_get(&format!(
        "/event_destinations/{dest}/dead_letters?reason={long}"
    ));
    assert_eq!(
        (st, e["error_code"].as_str()),
        (400, Some("ERR_NGROK_215")),
        "{e}"
    );

    // Fixed: a replay by reason delivers every record, once.
    rx.set(|_| Action::ok());
    let r = replay(&s, &dest, json!({"id": "fix-1", "reason": "HTTP 400"}));
    assert_eq!(
        (r["id"].as_str(), r["records"].as_u64()),
        (Some("fix-1"), Some(250))
    );
    wait_done(&s, &dest, "fix-1");
    assert!(rx.wait_accepted(250, Duration::from_secs(10)));
    assert_eq!(event_ids(&rx.accepted()).len(), 250);
    assert!(all_dead_letters(&s, &dest, "").0.is_empty());
    // The same id again: nothing is sent twice.
    let again = replay(&s, &dest, json!({"id": "fix-1"}));
    assert_eq!(
        (again["repeated"].as_bool(), again["records"].as_u64()),
        (Some(true), Some(250))
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rx.accepted().len(), 250);
    let audit_file = s
        .data_dir
        .join("files")
        .join(&s.account)
        .join("audit.ndjson");
    let audits = wait_for("the replay's audit event", || {
        let a = read_whole_ndjson(&audit_file);
        (!a.is_empty()).then_some(a)
    });
    assert_eq!(
        audits.len(),
        1,
        "one audit event per replay, none for the repeat"
    );
    assert_eq!(
        audits[0]["event_type"],
        "event_destination_dead_letters_replayed.v0"
    );
    assert_eq!(audits[0]["object"]["id"], "fix-1");
    assert_eq!(audits[0]["object"]["selection"]["reason"], "HTTP 400");

    // Failing again: back in the queue with the new reason.
    rx.set(|_| Action::status(400, None));
    ingest_events(&s, "ev_b", 40, "GET");
    wait_for("40 dead letters", || {
        (all_dead_letters(&s, &dest, "").0.len() == 40).then_some(())
    });
    rx.set(|_| Action::status(422, None));
    let r = replay(&s, &dest, json!({}));
    let rid = r["id"].as_str().unwrap().to_string();
    assert!(rid.starts_with("dlr_"), "{r}");
    wait_done(&s, &dest, &rid);
    let (back, _) = all_dead_letters(&s, &dest, "&reason=HTTP%20422");
    assert_eq!(back.len(), 40, "every record that failed again is back");
    assert_eq!(
        event_ids(&back.iter().map(|l| l["record"].clone()).collect::<Vec<_>>()).len(),
        40
    );

    // A full queue pauses the destination; a replay makes room.
    let (st, small) = s.api_post(
        "/event_destinations",
        &json!({"target": {"plugin": {"kind": "http", "config": {"url": rx.url()},
            "delivery": {"linger_ms": 10, "max_attempts": 1, "dead_letter_max_bytes": 65536}}}}),
    );
    assert_eq!(st, 201, "{small}");
    let small = small["id"].as_str().unwrap().to_string();
    let (st, _) = s.api_post(
        "/event_subscriptions",
        &json!({"sources": [{"type": HTTP, "filter": "ev.http.request.method == 'PUT'"}],
            "destination_ids": [small]}),
    );
    assert_eq!(st, 201);
    rx.set(|_| Action::status(400, None));
    ingest_events(&s, "ev_c", 300, "PUT");
    let page = wait_for("the destination pauses", || {
        let (_, p) = s.api_get(&format!("/event_destinations/{small}/dead_letters?limit=1"));
        (p["paused_records"].as_u64().unwrap_or(0) > 0).then_some(p)
    });
    assert!(page["bytes"].as_u64().unwrap() <= 65536, "{page}");
    assert_eq!(page["max_bytes"], 65536);
    let before = rx.accepted().len();
    rx.set(|_| Action::ok());
    let mut n = 0;
    wait_for("every ev_c record delivered", || {
        n += 1;
        let r = replay(&s, &small, json!({"id": format!("room-{n}")}));
        wait_done(&s, &small, r["id"].as_str().unwrap());
        let got: HashSet<String> = event_ids(&rx.accepted()[before..])
            .into_iter()
            .filter(|e| e.starts_with("ev_c"))
            .collect();
        (got.len() == 300).then_some(())
    });
    assert!(
        n >= 2,
        "the paused records waited for the room a replay made"
    );
    let (_, p) = s.api_get(&format!("/event_destinations/{small}/dead_letters"));
    assert_eq!(
        (
            p["paused_records"].as_u64(),
            p["dead_letters"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0))
    );
}
