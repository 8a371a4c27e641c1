//! `include/sluice_sink.h` must match `src/abi.rs`: every constant with the
//! same value, every struct with the same size, alignment and field offsets.
//! A C program compiled against the header prints what the C compiler sees;
//! this test compares it with what Rust sees. (Needs a C compiler: `cc`, or
//! `$CC`.)

use sluice_sdk::abi::*;
use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of};
use std::path::Path;

/// (size, align, [(field, offset)]) of a struct.
type Layout = (usize, usize, Vec<(&'static str, usize)>);

/// Struct name -> its layout, as Rust lays it out.
fn rust_layouts() -> BTreeMap<&'static str, Layout> {
    macro_rules! layout {
        ($t:ident { $($f:ident),* $(,)? }) => {
            (stringify!($t), (size_of::<$t>(), align_of::<$t>(), vec![$((stringify!($f), offset_of!($t, $f))),*]))
        };
    }
    BTreeMap::from([
        layout!(SluiceStr { ptr, len }),
        layout!(SluiceLimits {
            max_records,
            record_overhead_bytes,
            max_batch_bytes,
            max_record_bytes
        }),
        layout!(SluiceRecord {
            data,
            len,
            account_id,
            event_id,
            event_type,
            subscription_id,
            timestamp_ms
        }),
        layout!(SluiceBatch {
            struct_size,
            record_size,
            records,
            len
        }),
        layout!(SluiceOutcome {
            code,
            retry_after_ms
        }),
        layout!(SluiceCall {
            struct_size,
            reserved,
            ctx,
            set_error,
            set_reason
        }),
        layout!(SluiceHost {
            struct_size,
            abi_major,
            abi_minor,
            reserved,
            ctx,
            log,
            counter_add,
            gauge_set,
            destination_id,
            restrictions
        }),
        layout!(SluiceSinkVTable {
            abi_major,
            abi_minor,
            struct_size,
            flags,
            kind,
            version,
            description,
            config_schema,
            limits,
            create,
            send,
            flush,
            verify,
            destroy,
        }),
    ])
}

/// Constant name in C -> value as Rust has it.
fn rust_constants() -> BTreeMap<&'static str, i64> {
    BTreeMap::from([
        ("SLUICE_ABI_MAJOR", ABI_MAJOR as i64),
        ("SLUICE_ABI_MINOR", ABI_MINOR as i64),
        ("SLUICE_FLAG_THREAD_SAFE", FLAG_THREAD_SAFE as i64),
        ("SLUICE_FLAG_ORDERED", FLAG_ORDERED as i64),
        ("SLUICE_STATUS_OK", STATUS_OK as i64),
        ("SLUICE_STATUS_RETRY", STATUS_RETRY as i64),
        ("SLUICE_STATUS_FATAL", STATUS_FATAL as i64),
        ("SLUICE_OUTCOME_OK", OUTCOME_OK as i64),
        ("SLUICE_OUTCOME_RETRY", OUTCOME_RETRY as i64),
        ("SLUICE_OUTCOME_REJECT", OUTCOME_REJECT as i64),
        ("SLUICE_OUTCOME_UNSET", OUTCOME_UNSET as i64),
        ("SLUICE_LOG_ERROR", LOG_ERROR as i64),
        ("SLUICE_LOG_WARN", LOG_WARN as i64),
        ("SLUICE_LOG_INFO", LOG_INFO as i64),
        ("SLUICE_LOG_DEBUG", LOG_DEBUG as i64),
    ])
}

#[test]
fn the_c_header_matches_the_rust_abi() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = std::fs::read_to_string(root.join("include/sluice_sink.h")).unwrap();
    let layouts = rust_layouts();
    let constants = rust_constants();

    // Every numeric #define of the header is known to Rust, and the reverse
    // (function-like macros such as SLUICE_HAS_FIELD are helpers, not ABI).
    let defined: Vec<&str> = header
        .lines()
        .filter_map(|l| l.strip_prefix("#define SLUICE_"))
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| n.trim())
        .filter(|n| *n != "SINK_H" && *n != "ENTRY_SYMBOL" && !n.contains('('))
        .collect();
    for name in &defined {
        assert!(
            constants.contains_key(format!("SLUICE_{name}").as_str()),
            "SLUICE_{name} is in the header but not in abi.rs (or this test)"
        );
    }
    assert_eq!(
        defined.len(),
        constants.len(),
        "constants missing from the header: {defined:?}"
    );
    // Every struct of the header is checked here.
    let typedefs: Vec<&str> = header
        .lines()
        .filter_map(|l| l.strip_prefix("typedef struct "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut want: Vec<&str> = layouts.keys().copied().collect();
    want.sort();
    let mut have = typedefs.clone();
    have.sort();
    assert_eq!(have, want, "structs of the header vs abi.rs");
    assert!(header.contains(&format!(
        "#define SLUICE_ENTRY_SYMBOL \"{}\"",
        std::str::from_utf8(&ENTRY_SYMBOL[..ENTRY_SYMBOL.len() - 1]).unwrap()
    )));

    // A C program prints what the C compiler sees.
    let mut c = String::from(
        "#include <sluice_sink.h>\n#include <stdio.h>\n#include <stdalign.h>\nint main(void) {\n",
    );
    for name in constants.keys() {
        c.push_str(&format!(
            "  printf(\"const {name} %lld\\n\", (long long)({name}));\n"
        ));
    }
    for (s, (_, _, fields)) in &layouts {
        c.push_str(&format!(
            "  printf(\"size {s} %zu %zu\\n\", sizeof({s}), alignof({s}));\n"
        ));
        for (f, _) in fields {
            c.push_str(&format!(
                "  printf(\"field {s}.{f} %zu\\n\", offsetof({s}, {f}));\n"
            ));
        }
    }
    c.push_str("  return 0;\n}\n");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("layout.c"), c).unwrap();
    let exe = dir.path().join("layout");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = std::process::Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(root.join("include"))
        .arg(dir.path().join("layout.c"))
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("a C compiler is needed for this test");
    assert!(status.success(), "the header does not compile");
    let out = std::process::Command::new(&exe).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut checked = 0;
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts[0] {
            "const" => {
                let v: i64 = parts[2].parse().unwrap();
                assert_eq!(v, constants[parts[1]], "{} in C vs Rust", parts[1]);
            }
            "size" => {
                let (size, align, _) = &layouts[parts[1]];
                assert_eq!(
                    parts[2].parse::<usize>().unwrap(),
                    *size,
                    "sizeof({}) in C vs Rust",
                    parts[1]
                );
                assert_eq!(
                    parts[3].parse::<usize>().unwrap(),
                    *align,
                    "alignof({}) in C vs Rust",
                    parts[1]
                );
            }
            "field" => {
                let (s, f) = parts[1].split_once('.').unwrap();
                let off = layouts[s].2.iter().find(|(n, _)| *n == f).unwrap().1;
                assert_eq!(
                    parts[2].parse::<usize>().unwrap(),
                    off,
                    "offsetof({s}, {f}) in C vs Rust"
                );
            }
            other => panic!("unexpected line {other}"),
        }
        checked += 1;
    }
    let fields: usize = layouts.values().map(|l| l.2.len()).sum();
    assert_eq!(checked, constants.len() + layouts.len() + fields);
}
