//! Input: any bytes as one event. Framing, sharding and parsing must not
//! panic, and an accepted event must encode to valid JSON with the same envelope.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice_engine::internal::ingest::lines(data).count();
    let _ = sluice_engine::internal::ingest::shard_of(data, 4);
    if let Err(e) = sluice_engine::internal::encode::check_roundtrip(data) {
        panic!("{e}");
    }
});
