//! Input: filter source text. Compiling it never crashes (any depth, any
//! size), and a filter that compiles evaluates within its cost limits on
//! ordinary and on oversized events: libFuzzer's timeout (`-timeout`) turns a
//! stall into a failure, its stack limit an overflow.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice_engine::cel::{Filter, FilterOptions};
use sluice_engine::events::EventTypeId;
use sluice_engine::json::Json;

/// An ordinary traffic event's object, and one with big lists, a big map and
/// a long string, parsed once.
fn tapes() -> &'static [simd_json::Tape<'static>] {
    static TAPES: std::sync::OnceLock<Vec<simd_json::Tape<'static>>> = std::sync::OnceLock::new();
    TAPES.get_or_init(|| {
        objects()
            .into_iter()
            .map(|b| simd_json::to_tape(Box::leak(b.into_boxed_slice())).expect("the fixed objects parse"))
            .collect()
    })
}

fn objects() -> Vec<Vec<u8>> {
    let ordinary = br#"{"conn":{"client_ip":"10.0.0.7","server_name":"api-prod.ngrok.dev","server_port":443},"http":{"request":{"method":"GET","url":{"path":"/v1/users/42"},"headers":{"User-Agent":["curl/8.5.0"]}},"response":{"status_code":503}},"l":[1,2,3],"s":"hello"}"#.to_vec();
    let mut big = String::from(r#"{"l":["#);
    for i in 0..2000 {
        big.push_str(&format!("{i},"));
    }
    big.push_str(r#"0],"m":{"#);
    for i in 0..2000 {
        big.push_str(&format!(r#""k{i}":{i},"#));
    }
    big.push_str(&format!(r#""z":0}},"s":"{}"}}"#, "ab".repeat(100_000)));
    vec![ordinary, big.into_bytes()]
}

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    for event_type in [None, EventTypeId::from_name("http_request_complete.v0")] {
        let opts = FilterOptions { event_type, strict_ngrok: false };
        let Ok(f) = Filter::compile(src, &opts) else { continue };
        for tape in tapes() {
            let obj = Json::root(&tape.0).expect("an object");
            let _ = f.matches(obj);
            let _ = f.evaluate(obj);
        }
    }
});
