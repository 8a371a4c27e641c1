//! Resource ids: `prefix_` + 27 base62 characters, increasing with creation
//! time (a millisecond timestamp and a counter, then random bytes), so that
//! sorting ids sorts by age.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Length of the part after the prefix.
pub const ID_CHARS: usize = 27;

/// Random bytes from the operating system. Their failure is fatal: API keys,
/// ingest tokens and ids must be unpredictable, and no fallback is (a key
/// made from the clock could be guessed), so the process stops with the
/// reason rather than hand out a weak one.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if let Err(e) = getrandom::fill(&mut b) {
        tracing::error!(
            "the operating system's random number generator failed ({e}); \
             stopping rather than make guessable keys and ids"
        );
        std::process::abort();
    }
    b
}

/// Lowercase hex of `bytes`, two digits each.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Encodes 20 bytes as 27 base62 digits (big-endian), preserving order.
fn base62_20(bytes: [u8; 20]) -> String {
    let mut n = bytes;
    let mut out = [b'0'; ID_CHARS];
    for slot in out.iter_mut().rev() {
        // n /= 62, remainder is the digit.
        let mut rem: u32 = 0;
        for b in n.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 62) as u8;
            rem = cur % 62;
        }
        *slot = BASE62[rem as usize];
    }
    String::from_utf8_lossy(&out).into_owned()
}

static LAST: Mutex<(u64, u16)> = Mutex::new((0, 0));

/// A new id with `prefix` (`ed`, `esb`, `ev`, `op`, `ac`, `ak`).
pub fn new_id(prefix: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (ms, seq) = {
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        let (ms, seq) = if now > last.0 {
            (now, 0)
        } else if last.1 == u16::MAX {
            (last.0 + 1, 0)
        } else {
            (last.0, last.1 + 1)
        };
        *last = (ms, seq);
        (ms, seq)
    };
    let mut b = [0u8; 20];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6..8].copy_from_slice(&seq.to_be_bytes());
    b[8..].copy_from_slice(&random_bytes::<12>());
    format!("{prefix}_{}", base62_20(b))
}

/// A random base62 secret of `n` characters.
pub fn secret(n: usize) -> String {
    let mut s = String::with_capacity(n);
    while s.len() < n {
        for b in random_bytes::<32>() {
            // Rejection sampling keeps the digits uniform.
            if b < 248 && s.len() < n {
                s.push(BASE62[(b % 62) as usize] as char);
            }
        }
    }
    s
}

/// Whether `s` is `prefix_` followed by 27 base62 characters.
pub fn is_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .is_some_and(|r| r.len() == ID_CHARS && r.bytes().all(|c| c.is_ascii_alphanumeric()))
}

/// Whether `s` looks like some resource id (`xx_` + base62).
pub fn looks_like_id(s: &str) -> bool {
    s.split_once('_').is_some_and(|(p, r)| {
        !p.is_empty()
            && p.bytes().all(|c| c.is_ascii_lowercase())
            && !r.is_empty()
            && r.bytes().all(|c| c.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lowercase_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f, 0xff]), "00ab7fff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn ids_have_the_shape_and_sort_by_creation() {
        let ids: Vec<String> = (0..2000).map(|_| new_id("ed")).collect();
        assert!(ids.iter().all(|i| is_id(i, "ed")), "{}", ids[0]);
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids, "lexicographic order is creation order");
        let set: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(set.len(), ids.len());
        assert!(!is_id("ed_short", "ed"));
        assert!(!is_id(&ids[0], "esb"));
        assert!(looks_like_id("esb_abc") && !looks_like_id("nope"));
    }

    #[test]
    fn base62_keeps_order_and_width() {
        assert_eq!(base62_20([0; 20]), "0".repeat(27));
        assert_eq!(base62_20([255; 20]).len(), 27);
        let mut a = [0u8; 20];
        a[19] = 61;
        assert_eq!(&base62_20(a)[26..], "z");
        assert_eq!(secret(40).len(), 40);
    }
}
