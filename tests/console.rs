//! The web console in a real browser (headless Chromium through
//! ChromeDriver) against a real `sluice serve` and a real HTTP receiver:
//! sign in; create a destination and send its test event; write a filter
//! with an error (the position is marked), then fix it and try it on a
//! sample event; ingest traffic and watch the live counts and the tail;
//! break the destination, see its dead letters, fix it, replay, and see
//! every record arrive. Tenant text full of markup stays text and nothing
//! of it runs; the page holds on a phone's width. Each step saves a
//! screenshot under `target/console-screenshots/`.

use serde_json::json;
use sluice_standins::http::{Action, Receiver};
use sluice_testkit::webdriver::Browser;
use sluice_testkit::{Server, event};
use std::collections::HashSet;
use std::time::Duration;

const HTTP: &str = "http_request_complete.v0";

/// Markup an attacker puts in the fields the console shows.
const HOSTILE_UA: &str =
    r#"<script>window.__pwned=1</script>"><img src=x onerror="window.__pwned=2">"#;

fn ingest(s: &Server, prefix: &str, n: usize) -> HashSet<String> {
    let object = json!({"http": {"request": {"method": "GET", "user_agent": HOSTILE_UA,
        "url": {"path": "/<b>bold</b>"}}, "response": {"status_code": 200}}});
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}_{i}")).collect();
    let body: Vec<String> = ids
        .iter()
        .map(|id| event(id, &s.account, HTTP, &object.to_string()))
        .collect();
    let (st, report) = s.ingest(&body.join("\n"));
    assert_eq!(st, 200, "{report}");
    ids.into_iter().collect()
}

/// Nothing tenant-controlled became markup or ran.
fn assert_inert(b: &Browser, area: &str) {
    let v = b.run(
        "return [window.__pwned === undefined, document.querySelectorAll(arguments[0] + ' img, ' + arguments[0] + ' script, ' + arguments[0] + ' b').length]",
        json!([area]),
    );
    assert_eq!(
        v,
        json!([true, 0]),
        "tenant text in {area} became markup or ran"
    );
}

fn accepted_ids(rx: &Receiver) -> HashSet<String> {
    rx.accepted()
        .iter()
        .filter_map(|r| r["event_id"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_user_configures_watches_and_repairs_an_export_in_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let rx = Receiver::start();
    rx.set(|_| Action::ok());

    // The page is served with a strict policy and loads nothing else.
    let page = reqwest::blocking::get(format!("{}/", s.url)).unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );

    let b = Browser::start(1280, 800);
    b.goto(&format!("{}/", s.url));
    // A wrong key is refused with what to do.
    b.type_into("#api-key", "not-a-key", false);
    b.click("#signin button[type=submit]");
    b.wait_text("#signin-error", "refused");
    b.type_into("#api-key", &s.key, true);
    b.click("#signin button[type=submit]");
    b.wait_text("main", "No destinations yet");
    let storage = b.run(
        "return [sessionStorage.getItem('sluice.api_key') !== null, localStorage.length, location.href]",
        json!([]),
    );
    assert_eq!(storage[0], true);
    assert_eq!(storage[1], 0, "the key is kept in session storage only");
    assert!(
        !storage[2].as_str().unwrap().contains(&s.key),
        "the key is in no URL"
    );
    b.screenshot("01-signed-in");

    // A destination against the receiver, and its test event.
    b.click("#new-destination");
    b.find("#kind");
    b.run(
        "const k = document.getElementById('kind'); k.value = 'http'; k.dispatchEvent(new Event('change'));",
        json!([]),
    );
    b.type_into("#cfg-url", &rx.url(), false);
    b.type_into("#description", "receiver", false);
    b.screenshot("02-new-destination");
    b.click("#create-destination");
    b.find("#send-test-event");
    let dest = b
        .run("return location.hash.split('/')[2]", json!([]))
        .as_str()
        .unwrap()
        .to_string();
    assert!(dest.starts_with("ed_"), "{dest}");
    assert!(
        b.text("main").contains("kind http (plugin)"),
        "{}",
        b.text("main")
    );
    b.click("#send-test-event");
    b.wait_text("#test-outcome", "Delivered");
    assert!(
        !rx.requests().is_empty(),
        "the test event reached the receiver"
    );
    b.screenshot("03-test-event");

    // A subscription whose filter has an error, marked where it is.
    b.goto(&format!("{}/#/subscriptions/new", s.url));
    b.type_into("#description", "GETs", false);
    b.click(&format!("#destination-choices input[value='{dest}']"));
    b.type_into(".filter", "ev.http.request.method == 'GET' &&", false);
    let msg = b.wait_text(".filter-message", "Line 1");
    let column = b.run(
        "return document.querySelector('.caret-line').dataset.column",
        json!([]),
    );
    let column: usize = column.as_str().unwrap().parse().unwrap();
    assert!(
        (33..=36).contains(&column),
        "the error is marked at the end of the text, column {column}: {msg}"
    );
    b.screenshot("04-filter-error");
    b.type_into(".filter", " ev.http.response.status_code < 500", false);
    b.wait_text(".filter-status", "Compiles");
    // Tried on the generated sample event: the value of each clause.
    b.run(
        "document.querySelectorAll('.source details').forEach(d => d.open = true)",
        json!([]),
    );
    b.click(".try-filter");
    b.wait_text(".verdict", "Match");
    let clauses = b.text(".clauses");
    assert!(
        clauses.contains("ev.http.request.method == 'GET'")
            && clauses.contains("true")
            && !clauses.contains("Bool("),
        "{clauses}"
    );
    b.run(
        "document.querySelector('.try-result').scrollIntoView()",
        json!([]),
    );
    b.screenshot("05-filter-fixed");
    b.click("#create-subscription");
    b.wait_text("#tap-status", "Live");
    let sub = b
        .run("return location.hash.split('/')[2]", json!([]))
        .as_str()
        .unwrap()
        .to_string();

    // Traffic: the tail shows it, as text.
    std::thread::sleep(Duration::from_millis(300));
    let first = ingest(&s, "ev_ok", 20);
    b.wait("records in the tail", || {
        (b.all(".tap-record").len() >= 20).then_some(())
    });
    let shown = b.text("#tap");
    assert!(
        shown.contains("<script>window.__pwned=1</script>"),
        "the markup is shown as text"
    );
    assert_inert(&b, "#tap");
    b.screenshot("06-live-tail");
    assert!(rx.wait_accepted(21, Duration::from_secs(10)));
    assert!(first.is_subset(&accepted_ids(&rx)));

    // The live view counts it.
    b.goto(&format!("{}/#/live", s.url));
    b.wait_text(
        &format!("#live-destinations tr[data-id='{dest}'] .delivered"),
        "20",
    );
    b.wait_text(
        &format!("#live-destinations tr[data-id='{dest}']"),
        "healthy",
    );
    b.screenshot("07-live-counts");

    // Broken: records are dead-lettered and listed with their reason.
    rx.set(|_| Action::status(400, None));
    let broken = ingest(&s, "ev_broken", 10);
    b.wait_text(
        &format!("#live-destinations tr[data-id='{dest}'] .dead-lettered"),
        "10",
    );
    b.goto(&format!("{}/#/dead-letters/{dest}", s.url));
    b.wait("10 dead letters", || {
        b.click("#refresh-dead-letters");
        (b.all(".dead-letter").len() >= 10).then_some(())
    });
    assert!(b.text("#dead-letters").contains("HTTP 400"));
    assert_inert(&b, "#dead-letters");
    b.screenshot("08-dead-letters");

    // Fixed, replayed: every record arrives.
    rx.set(|_| Action::ok());
    b.click("#replay");
    b.wait_text("#replay-state", "done");
    let got = accepted_ids(&rx);
    assert!(broken.is_subset(&got), "every replayed record arrived");
    b.wait("the dead letters gone", || {
        b.all(".dead-letter").is_empty().then_some(())
    });
    b.screenshot("09-replayed");

    // Edited: the subscription's filter (its form filled with what is
    // stored) and the destination's description and settings.
    b.goto(&format!("{}/#/subscriptions/{sub}", s.url));
    let stored = b.run("return document.querySelector('.filter').value", json!([]));
    assert_eq!(
        stored,
        "ev.http.request.method == 'GET' && ev.http.response.status_code < 500"
    );
    b.type_into(".filter", " && ev.http.request.url.path != '/x'", false);
    b.wait_text(".filter-status", "Compiles");
    b.click("#save-subscription");
    b.wait("the change stored", || {
        let (_, got) = s.api_get(&format!("/event_subscriptions/{sub}"));
        got["sources"][0]["filter"]
            .as_str()
            .is_some_and(|f| f.ends_with("!= '/x'"))
            .then_some(())
    });
    b.goto(&format!("{}/#/destinations/{dest}", s.url));
    b.type_into("#description", "receiver, edited", true);
    b.type_into("#cfg-timeout_ms", "5000", true);
    b.click("#save-destination");
    let edited = b.wait("the destination stored", || {
        let (_, got) = s.api_get(&format!("/event_destinations/{dest}"));
        (got["description"] == "receiver, edited").then_some(got)
    });
    let config = &edited["target"]["plugin"]["config"];
    assert_eq!(
        (config["url"].as_str(), config["timeout_ms"].as_u64()),
        (Some(rx.url().as_str()), Some(5000)),
        "{edited}"
    );
    b.screenshot("10-edited-destination");

    // A phone's width: nothing spills sideways.
    b.resize(390, 844);
    b.goto(&format!("{}/#/live", s.url));
    b.wait_text(
        &format!("#live-destinations tr[data-id='{dest}'] .delivered"),
        "30",
    );
    let widths = b.run(
        "return [document.documentElement.scrollWidth, window.innerWidth]",
        json!([]),
    );
    assert!(
        widths[0].as_u64() <= widths[1].as_u64(),
        "the page is wider than the phone: {widths}"
    );
    b.screenshot("11-phone-live");
}
