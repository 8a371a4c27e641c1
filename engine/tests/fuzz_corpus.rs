//! Replays the checked-in fuzz corpora (`fuzz/corpus/*`) through the same
//! oracles the fuzz targets use, so every `cargo test` re-checks them.

use std::path::Path;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
}

#[test]
fn filter_differential_corpus_agrees() {
    for (name, data) in corpus("filter_differential") {
        let Some(nl) = data.iter().position(|b| *b == b'\n') else {
            continue;
        };
        let Ok(expr) = std::str::from_utf8(&data[..nl]) else {
            continue;
        };
        if let Err(e) = sluice_engine::internal::cel::compare(expr, &[&data[nl + 1..]]) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn ingest_corpus_round_trips() {
    let mut accepted = 0;
    for (name, data) in corpus("ingest") {
        let _ = sluice_engine::internal::ingest::lines(&data).count();
        let _ = sluice_engine::internal::ingest::shard_of(&data, 4);
        match sluice_engine::internal::encode::check_roundtrip(&data) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(e) => panic!("{name}: {e}"),
        }
    }
    assert!(accepted >= 2, "the corpus holds valid events too");
}
