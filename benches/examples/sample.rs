//! Prints a few generated events and their average size: `cargo run -p sluice-bench --example sample -- [target_size]`.
use sluice_traffic::{GenConfig, Generator};

fn main() {
    let target = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let mut g = Generator::new(GenConfig {
        target_size: target,
        ..GenConfig::default()
    });
    let mut buf = Vec::new();
    g.fill(20000, &mut buf);
    let lines: Vec<&[u8]> = buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let http: Vec<_> = lines
        .iter()
        .filter(|l| l.windows(21).any(|w| w == b"http_request_complete"))
        .collect();
    println!(
        "average size: all {} bytes, http {} bytes",
        buf.len() / lines.len(),
        http.iter().map(|l| l.len()).sum::<usize>() / http.len()
    );
    println!("{}", String::from_utf8_lossy(http[3]));
}
