//! Input: a CEL expression, a newline, then a JSON object. Sluice's filter
//! and the `cel` crate's interpreter must agree on it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(nl) = data.iter().position(|b| *b == b'\n') else { return };
    let Ok(expr) = std::str::from_utf8(&data[..nl]) else { return };
    if let Err(e) = sluice_engine::internal::cel::compare(expr, &[&data[nl + 1..]]) {
        panic!("{e}");
    }
});
