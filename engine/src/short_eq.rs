//! Equality of short byte strings (member names, account ids, event type
//! names) compared inline, a few words at a time: a call to `memcmp` costs
//! more than the comparison itself at these lengths, and the on-demand
//! reader and the filters compare several names per event.

/// Whether `a` and `b` hold the same bytes.
#[inline(always)]
pub(crate) fn short_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n >= 8 {
        // Eight bytes at a time from the front, the last word overlapping.
        let mut i = 0;
        while i + 8 < n {
            if word8(a, i) != word8(b, i) {
                return false;
            }
            i += 8;
        }
        word8(a, n - 8) == word8(b, n - 8)
    } else if n >= 4 {
        word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4)
    } else {
        (0..n).all(|i| a[i] == b[i])
    }
}

#[inline(always)]
fn word8(s: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[at..at + 8]);
    u64::from_ne_bytes(w)
}

#[inline(always)]
fn word4(s: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&s[at..at + 4]);
    u32::from_ne_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::short_eq;

    #[test]
    fn agrees_with_slice_equality_at_every_length_and_difference() {
        let base: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        for n in 0..base.len() {
            let a = &base[..n];
            assert!(short_eq(a, a));
            assert!(!short_eq(a, &base[..n + 1]));
            for at in 0..n {
                let mut b = a.to_vec();
                b[at] ^= 0x20;
                assert!(!short_eq(a, &b), "length {n}, byte {at}");
            }
        }
    }
}
