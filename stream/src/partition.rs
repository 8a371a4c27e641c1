//! Which partition an account's events go to.
//!
//! The function is part of the wire contract: every node and every
//! publisher must agree on it, across versions, so it is spelled out here
//! (64-bit FNV-1a of the account id's bytes, as they appear in the event,
//! modulo the partition count) rather than taken from a hasher whose output
//! may change between releases.

/// The partition of `account` among `partitions` (at least 1).
#[inline]
pub fn partition_of(account: &[u8], partitions: u32) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for &b in account {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    (h % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_function_is_fnv1a_and_stays_so() {
        // Published FNV-1a 64 test vectors: "" and "a".
        assert_eq!(
            partition_of(b"", u32::MAX),
            (0xcbf2_9ce4_8422_2325u64 % u64::from(u32::MAX)) as u32
        );
        assert_eq!(
            partition_of(b"a", u32::MAX),
            (0xaf63_dc4c_8601_ec8cu64 % u64::from(u32::MAX)) as u32
        );
        // A fixed account always lands where it did.
        assert_eq!(
            partition_of(b"ac_2Ai1OiCVVBXhbtOoAJaGMDUPRoI", 16),
            partition_of(b"ac_2Ai1OiCVVBXhbtOoAJaGMDUPRoI", 16)
        );
        assert_eq!(partition_of(b"anything", 1), 0);
        assert_eq!(partition_of(b"anything", 0), 0);
    }

    #[test]
    fn accounts_spread_over_the_partitions() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[partition_of(format!("ac_{i:08}").as_bytes(), 16) as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread: {counts:?}");
        }
    }
}
