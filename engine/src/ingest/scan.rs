//! A structural index of one event's bytes: where its string quotes and its
//! brackets outside strings are, as bitmaps of 64 bytes each, built with
//! vector instructions (AVX2 where the CPU has it, a byte loop elsewhere).
//!
//! This is the first stage of a JSON parser and nothing more: no tape, no
//! values. It lets the on-demand reader ([`super::lazy`]) jump from a key to
//! the end of a value it does not need in a few bit operations per 64 bytes
//! instead of looking at each byte. The event is indexed whole, in one tight
//! loop (cheaper than block by block as the reader asks, and the nesting
//! bound needs every block anyway).
//!
//! The index says where quotes and brackets are if the bytes are JSON; it
//! checks nothing. Its reader treats anything unexpected as a reason to
//! parse the event in full.

use crate::short_eq::short_eq;

/// Bit `i` of a block: byte `64 * block + i`.
const BLOCK: usize = 64;

/// The bitmaps of one block of 64 bytes.
#[derive(Clone, Copy, Default)]
struct Block {
    /// Quotes that open or close a string (not escaped).
    quotes: u64,
    /// `{` and `[` outside strings.
    opens: u64,
    /// `}` and `]` outside strings.
    closes: u64,
    /// Bytes inside strings (an opening quote included, its closing quote not).
    strings: u64,
    /// Brackets open before the block's first byte.
    depth: i64,
    /// Quotes before the block's first byte.
    quotes_before: usize,
}

/// The structural bitmaps of one event, reused from event to event.
#[derive(Default)]
pub(crate) struct Index {
    blocks: Vec<Block>,
    /// Whether the event has a backslash.
    backslash: bool,
    /// Whether the event has a byte below 0x20 or above 0x7f.
    unusual: bool,
    /// Whether the event has no space or control byte outside strings.
    compact: bool,
    /// `{` and `[` outside strings in the event.
    opens_total: usize,
    /// Brackets open after the last byte.
    depth_end: i64,
    /// Whether to use AVX2.
    avx2: bool,
    /// Whether to use AVX-512 (byte compares straight to 64-bit masks)
    /// for the masks.
    avx512: bool,
}

impl Index {
    /// An index that picks its instructions for this CPU.
    pub fn new() -> Index {
        Index {
            avx2: avx2_available(),
            avx512: avx512_available(),
            ..Index::default()
        }
    }

    /// An index that uses AVX2 even where the CPU has AVX-512 (tests).
    #[cfg(test)]
    pub fn avx2_only() -> Index {
        Index {
            avx2: avx2_available(),
            ..Index::default()
        }
    }

    /// An index that uses the byte loop only (the reference in tests).
    #[cfg(test)]
    pub fn scalar() -> Index {
        Index::default()
    }

    /// Indexes `raw`, forgetting the previous event.
    pub fn build(&mut self, raw: &[u8]) {
        self.blocks.clear();
        #[cfg(target_arch = "x86_64")]
        if self.avx512 {
            // SAFETY: `avx512` is set only when the CPU has AVX-512 BW, and
            // every such CPU has POPCNT and PCLMULQDQ.
            unsafe { self.build_avx512(raw) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: `avx2` is set only when the CPU has AVX2, and every
            // such CPU has POPCNT and PCLMULQDQ.
            unsafe { self.build_avx2(raw) };
            return;
        }
        self.build_with(raw, masks_scalar, pad_last(masks_scalar), prefix_xor);
    }

    /// [`Index::build`] with AVX2 for the masks and a carry-less
    /// multiplication for the strings.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,popcnt,pclmulqdq")]
    fn build_avx2(&mut self, raw: &[u8]) {
        let masks = |b: &[u8; BLOCK]| masks_avx2(b);
        self.build_with(raw, masks, pad_last(masks), |x| prefix_xor_clmul(x));
    }

    /// [`Index::build`] with AVX-512 for the masks: one compare per mask
    /// and block, no gathering of two halves' bits.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,popcnt,pclmulqdq")]
    fn build_avx512(&mut self, raw: &[u8]) {
        self.build_with(
            raw,
            |b| masks_avx512(b),
            |rest| masks_avx512_last(rest),
            |x| prefix_xor_clmul(x),
        );
    }

    #[inline(always)]
    fn build_with(
        &mut self,
        raw: &[u8],
        masks: impl Fn(&[u8; BLOCK]) -> [u64; 6],
        masks_last: impl Fn(&[u8]) -> [u64; 6],
        prefix_xor: impl Fn(u64) -> u64,
    ) {
        let (mut carry_escaped, mut carry_string) = (0u64, 0u64);
        let (mut backslashes, mut unusual, mut opens_total) = (0u64, 0u64, 0usize);
        let mut spaced = 0u64;
        let mut depth = 0i64;
        let mut quotes_before = 0usize;
        let mut absorb = |[quote, backslash, open, close, odd, low]: [u64; 6]| {
            backslashes |= backslash;
            unusual |= odd;
            let quotes = if backslash == 0 && carry_escaped == 0 {
                quote
            } else {
                quote & !escaped_bytes(backslash, &mut carry_escaped)
            };
            let strings = prefix_xor(quotes) ^ carry_string;
            carry_string = ((strings as i64) >> 63) as u64;
            let opens = open & !strings;
            opens_total += opens.count_ones() as usize;
            spaced |= low & !strings;
            let closes = close & !strings;
            let block = Block {
                quotes,
                opens,
                closes,
                strings,
                depth,
                quotes_before,
            };
            depth += opens.count_ones() as i64 - closes.count_ones() as i64;
            quotes_before += quotes.count_ones() as usize;
            block
        };
        // The block loop is written out here and in `plain_compact_with`:
        // one helper taking both as closures measured ~110 ns slower per
        // 757-byte event (criterion "rejected event": 325 → 435 ns).
        let mut chunks = raw.chunks_exact(BLOCK);
        for block in &mut chunks {
            let b = absorb(masks(block.try_into().expect("64 bytes")));
            self.blocks.push(b);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let b = absorb(masks_last(rest));
            self.blocks.push(b);
        }
        self.backslash = backslashes != 0;
        self.unusual = unusual != 0;
        self.compact = spaced == 0;
        self.opens_total = opens_total;
        self.depth_end = depth;
    }

    /// Whether this index uses AVX2 (and so may use POPCNT, BMI1 and
    /// PCLMULQDQ).
    pub fn avx2(&self) -> bool {
        self.avx2
    }

    /// Whether the event has a backslash.
    pub fn saw_backslash(&self) -> bool {
        self.backslash
    }

    /// Whether every byte of the event is printable ASCII or a space: then
    /// no string in it has an escape, a control character or anything but
    /// ASCII, and needs no further look to be taken as is.
    pub fn plain(&self) -> bool {
        !self.backslash && !self.unusual
    }

    /// Whether the event has no space, tab or line break outside strings
    /// (then no token is followed by whitespace).
    pub fn compact(&self) -> bool {
        self.compact
    }

    /// `{` and `[` outside strings: an upper bound on the depth of nesting.
    pub fn opens_total(&self) -> usize {
        self.opens_total
    }

    /// Brackets open before byte `pos` (outside strings): a member of the
    /// root object is at depth 1.
    #[inline(always)]
    pub fn depth_at(&self, pos: usize) -> i64 {
        let block = &self.blocks[pos / BLOCK];
        let below = (1u64 << (pos % BLOCK)) - 1;
        block.depth + (block.opens & below).count_ones() as i64
            - (block.closes & below).count_ones() as i64
    }

    /// Brackets open after the last byte (0 when they balance).
    #[inline(always)]
    pub fn depth_at_end(&self) -> i64 {
        self.depth_end
    }

    /// Whether byte `pos` is a quote that opens a string.
    #[cfg(test)]
    pub fn opens_string(&self, pos: usize) -> bool {
        let block = &self.blocks[pos / BLOCK];
        (block.quotes & block.strings) >> (pos % BLOCK) & 1 == 1
    }

    /// Where the value of the first key `name` in bytes `from..to` whose
    /// opening quote is at `depth` starts, in a compact event without
    /// escapes (where a key is `"name":` exactly). Keys are found from the
    /// bitmaps: an opening quote whose string closes `name.len()` bytes
    /// later; only those strings of the right length are looked at (first
    /// and last letters, the colon after, the depth, then the name).
    /// `name` must be shorter than 63 bytes.
    #[inline(always)]
    pub fn find_key(
        &self,
        raw: &[u8],
        name: &[u8],
        from: usize,
        to: usize,
        depth: i64,
    ) -> Option<usize> {
        let [found] = self.find_keys(raw, [name], from, to, depth);
        found
    }

    /// [`Index::find_key`] of several names of the same length in one
    /// pass over the blocks (their strings of that length are the same
    /// candidates): each name's first key, or `None`.
    #[inline(always)]
    pub fn find_keys<const N: usize>(
        &self,
        raw: &[u8],
        names: [&[u8]; N],
        from: usize,
        to: usize,
        depth: i64,
    ) -> [Option<usize>; N] {
        let mut found = [None; N];
        let mut missing = N;
        let shift = names[0].len() + 1;
        debug_assert!(shift < BLOCK && names.iter().all(|n| n.len() + 1 == shift));
        let blocks = &self.blocks;
        // Closing quotes: quotes outside strings.
        let ends = |b: usize| {
            blocks
                .get(b)
                .map_or(0, |block| block.quotes & !block.strings)
        };
        let (first, last) = (from / BLOCK, to.saturating_sub(1) / BLOCK);
        let mut ends_here = ends(first);
        // (Counted by hand: `skip` on a `take` was a call per search.)
        let last = last.min(blocks.len().saturating_sub(1));
        let mut b = first;
        while b <= last {
            let block = &blocks[b];
            let ends_next = ends(b + 1);
            // Opening quotes whose string closes `shift` bytes later.
            let mut cand = block.quotes
                & block.strings
                & ((ends_here >> shift) | (ends_next << (BLOCK - shift)));
            if b == first {
                cand &= !0u64 << (from % BLOCK);
            }
            while cand != 0 {
                let p = b * BLOCK + cand.trailing_zeros() as usize;
                if p + shift >= to {
                    return found;
                }
                // First and last letters and the colon, then the depth,
                // then the name for the few strings left.
                for (name, at) in names.iter().zip(found.iter_mut()) {
                    if at.is_none()
                        && raw.get(p + 1) == name.first()
                        && raw.get(p + shift - 1) == name.last()
                        && raw.get(p + shift + 1) == Some(&b':')
                        && self.depth_at(p) == depth
                        && raw.get(p + 1..p + shift).is_some_and(|k| short_eq(k, name))
                    {
                        *at = Some(p + shift + 2);
                        missing -= 1;
                        if missing == 0 {
                            return found;
                        }
                        break;
                    }
                }
                cand &= cand - 1;
            }
            ends_here = ends_next;
            b += 1;
        }
        found
    }

    /// Quotes in bytes `from..to` (`to` at most the event's length).
    #[inline(always)]
    pub fn quotes_between(&self, from: usize, to: usize) -> usize {
        self.quotes_before(to) - self.quotes_before(from)
    }

    /// Quotes before byte `pos` (at most the event's length).
    #[inline(always)]
    fn quotes_before(&self, pos: usize) -> usize {
        match self.blocks.get(pos / BLOCK) {
            Some(block) => {
                let below = (1u64 << (pos % BLOCK)) - 1;
                block.quotes_before + (block.quotes & below).count_ones() as usize
            }
            None => self
                .blocks
                .last()
                .map_or(0, |b| b.quotes_before + b.quotes.count_ones() as usize),
        }
    }

    /// The first quote at or after `from` (a string's opening or closing quote).
    #[inline(always)]
    pub fn next_quote(&self, from: usize) -> Option<usize> {
        let mut b = from / BLOCK;
        let mut m = !0u64 << (from % BLOCK);
        loop {
            let bits = self.blocks.get(b)?.quotes & m;
            if bits != 0 {
                return Some(b * BLOCK + bits.trailing_zeros() as usize);
            }
            b += 1;
            m = !0;
        }
    }

    /// Given an opening bracket at `open`, the position of the bracket that
    /// closes it (matching by depth only: `{` may be closed by `]` in
    /// malformed input, which the full parse then rejects).
    /// (Inlined: in the reader's AVX2 functions it counts with POPCNT.)
    #[inline(always)]
    pub fn matching_close(&self, open: usize) -> Option<usize> {
        self.close_before(open, usize::MAX)
    }

    /// [`Index::matching_close`] if that bracket is before `limit` (else
    /// `None`: the bracket at `open` is still open there); looks at the
    /// bytes before `limit` only.
    #[inline(always)]
    pub fn close_before(&self, open: usize, limit: usize) -> Option<usize> {
        let mut depth = 0usize;
        let mut b = open / BLOCK;
        let mut m = !0u64 << (open % BLOCK);
        loop {
            if b * BLOCK >= limit {
                return None;
            }
            let block = self.blocks.get(b)?;
            let o = block.opens & m;
            let mut c = block.closes & m;
            let (no, nc) = (o.count_ones() as usize, c.count_ones() as usize);
            if nc >= depth {
                // Depth may reach 0 here: at the k-th close of the block it
                // is `depth + opens before it - k`. Only the closes are
                // visited, and the test is rarely true (well predicted).
                let mut k = 0;
                while c != 0 {
                    let bit = c & c.wrapping_neg();
                    k += 1;
                    if depth + (o & (bit - 1)).count_ones() as usize == k {
                        let close = b * BLOCK + bit.trailing_zeros() as usize;
                        return (close < limit).then_some(close);
                    }
                    c ^= bit;
                }
            }
            depth = depth + no - nc;
            b += 1;
            m = !0;
        }
    }
}

/// Whether `raw`'s bytes are as Sluice's JSON writer would print the
/// strings and separators they hold: no backslash (so no escape the writer
/// might print otherwise), and outside strings no space, tab, line break
/// or other control byte and no `-` (so no `-0`, which the writer prints as
/// `0`). (A control byte inside a string is invalid JSON, which the full
/// parse rejects before this is asked.) Numbers with a fraction or an
/// exponent, repeated keys and the order of keys are for the caller to
/// check on the tape.
pub fn plain_compact(raw: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if avx2_available_cached() {
        // SAFETY: the CPU has AVX2 and PCLMULQDQ (checked once).
        return unsafe { plain_compact_avx2(raw) };
    }
    plain_compact_with(raw, plain_masks_scalar, prefix_xor)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,pclmulqdq")]
fn plain_compact_avx2(raw: &[u8]) -> bool {
    plain_compact_with(raw, |b| plain_masks_avx2(b), |x| prefix_xor_clmul(x))
}

#[inline(always)]
fn plain_compact_with(
    raw: &[u8],
    masks: impl Fn(&[u8; BLOCK]) -> [u64; 3],
    prefix_xor: impl Fn(u64) -> u64,
) -> bool {
    let mut carry_string = 0u64;
    let mut clean = |block: &[u8; BLOCK]| -> bool {
        let [quote, backslash, odd] = masks(block);
        let strings = prefix_xor(quote) ^ carry_string;
        carry_string = ((strings as i64) >> 63) as u64;
        backslash == 0 && (odd & !strings) == 0
    };
    let mut chunks = raw.chunks_exact(BLOCK);
    for block in &mut chunks {
        if !clean(block.try_into().expect("64 bytes")) {
            return false;
        }
    }
    let rest = chunks.remainder();
    let mut block = [b'A'; BLOCK];
    block[..rest.len()].copy_from_slice(rest);
    rest.is_empty() || clean(&block)
}

/// Quotes, backslashes, and bytes up to 0x20 or `-` of a block.
fn plain_masks_scalar(block: &[u8; BLOCK]) -> [u64; 3] {
    let mut m = [0u64; 3];
    for (i, &b) in block.iter().enumerate() {
        let bit = 1u64 << i;
        match b {
            b'"' => m[0] |= bit,
            b'\\' => m[1] |= bit,
            0..=0x20 | b'-' => m[2] |= bit,
            _ => {}
        }
    }
    m
}

/// [`plain_masks_scalar`] with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn plain_masks_avx2(block: &[u8; BLOCK]) -> [u64; 3] {
    use std::arch::x86_64::*;
    // SAFETY: both loads read 32 bytes inside the 64-byte block.
    let (lo, hi) = unsafe {
        (
            _mm256_loadu_si256(block.as_ptr().cast::<__m256i>()),
            _mm256_loadu_si256(block.as_ptr().add(32).cast::<__m256i>()),
        )
    };
    let pair = |a: __m256i, b: __m256i| -> u64 {
        (_mm256_movemask_epi8(a) as u32 as u64) | ((_mm256_movemask_epi8(b) as u32 as u64) << 32)
    };
    let quote = _mm256_set1_epi8(b'"' as i8);
    let backslash = _mm256_set1_epi8(b'\\' as i8);
    let c20 = _mm256_set1_epi8(0x20);
    let minus = _mm256_set1_epi8(b'-' as i8);
    let odd = |x: __m256i| {
        _mm256_or_si256(
            _mm256_cmpeq_epi8(_mm256_max_epu8(x, c20), c20),
            _mm256_cmpeq_epi8(x, minus),
        )
    };
    [
        pair(_mm256_cmpeq_epi8(lo, quote), _mm256_cmpeq_epi8(hi, quote)),
        pair(
            _mm256_cmpeq_epi8(lo, backslash),
            _mm256_cmpeq_epi8(hi, backslash),
        ),
        pair(odd(lo), odd(hi)),
    ]
}

/// [`avx2_available`], asked once.
fn avx2_available_cached() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(avx2_available)
}

/// Whether this CPU has the AVX-512 byte instructions (and AVX2).
fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512bw") && avx2_available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has AVX2.
fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The bytes escaped by a backslash, given the block's backslashes and
/// whether its first byte is escaped (updated for the next block): a run of
/// backslashes escapes the byte after it when the run is odd. (The
/// carry-propagating addition of simdjson's stage 1.)
#[inline]
fn escaped_bytes(backslash: u64, carry: &mut u64) -> u64 {
    const EVEN: u64 = 0x5555_5555_5555_5555;
    let backslash = backslash & !*carry;
    let follows_escape = (backslash << 1) | *carry;
    let odd_starts = backslash & !EVEN & !follows_escape;
    let (even_starts, overflow) = odd_starts.overflowing_add(backslash);
    *carry = overflow as u64;
    let invert = even_starts << 1;
    (EVEN ^ invert) & follows_escape
}

/// Bit `i` of the result is the XOR of bits `0..=i` of `x`: set from an
/// opening quote up to (not including) its closing quote.
#[inline]
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// [`prefix_xor`] in one carry-less multiplication by all ones.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "pclmulqdq")]
#[inline]
fn prefix_xor_clmul(x: u64) -> u64 {
    use std::arch::x86_64::*;
    let product = _mm_clmulepi64_si128(_mm_set_epi64x(0, x as i64), _mm_set1_epi8(-1), 0);
    _mm_cvtsi128_si64(product) as u64
}

/// Quotes, backslashes, `{`/`[`, `}`/`]`, bytes below 0x20 or above 0x7f,
/// and bytes up to 0x20 (spaces and controls) of a block, a byte at a time.
fn masks_scalar(block: &[u8; BLOCK]) -> [u64; 6] {
    let mut m = [0u64; 6];
    for (i, &b) in block.iter().enumerate() {
        let bit = 1u64 << i;
        match b {
            b'"' => m[0] |= bit,
            b'\\' => m[1] |= bit,
            b'{' | b'[' => m[2] |= bit,
            b'}' | b']' => m[3] |= bit,
            0..0x20 | 0x80.. => m[4] |= bit,
            _ => {}
        }
        if b <= 0x20 {
            m[5] |= bit;
        }
    }
    m
}

/// [`masks_scalar`] with AVX2, on the block's two 32-byte halves.
/// (`{`/`[` and `}`/`]` differ only in bit 5, so one compare after setting
/// it finds both.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn masks_avx2(block: &[u8; BLOCK]) -> [u64; 6] {
    use std::arch::x86_64::*;
    // SAFETY: both loads read 32 bytes inside the 64-byte block.
    let (lo, hi) = unsafe {
        (
            _mm256_loadu_si256(block.as_ptr().cast::<__m256i>()),
            _mm256_loadu_si256(block.as_ptr().add(32).cast::<__m256i>()),
        )
    };
    let bit5 = _mm256_set1_epi8(0x20);
    let (lo5, hi5) = (_mm256_or_si256(lo, bit5), _mm256_or_si256(hi, bit5));
    let pair = |a: __m256i, b: __m256i| -> u64 {
        (_mm256_movemask_epi8(a) as u32 as u64) | ((_mm256_movemask_epi8(b) as u32 as u64) << 32)
    };
    let quote = _mm256_set1_epi8(b'"' as i8);
    let backslash = _mm256_set1_epi8(b'\\' as i8);
    let open = _mm256_set1_epi8(b'{' as i8);
    let close = _mm256_set1_epi8(b'}' as i8);
    // Below 0x20: max(x, 0x1f) == 0x1f; above 0x7f: the sign bit.
    let c1f = _mm256_set1_epi8(0x1f);
    let unusual = |x: __m256i| _mm256_or_si256(_mm256_cmpeq_epi8(_mm256_max_epu8(x, c1f), c1f), x);
    // Up to 0x20: max(x, 0x20) == 0x20.
    let c20 = _mm256_set1_epi8(0x20);
    let low = |x: __m256i| _mm256_cmpeq_epi8(_mm256_max_epu8(x, c20), c20);
    [
        pair(_mm256_cmpeq_epi8(lo, quote), _mm256_cmpeq_epi8(hi, quote)),
        pair(
            _mm256_cmpeq_epi8(lo, backslash),
            _mm256_cmpeq_epi8(hi, backslash),
        ),
        pair(_mm256_cmpeq_epi8(lo5, open), _mm256_cmpeq_epi8(hi5, open)),
        pair(_mm256_cmpeq_epi8(lo5, close), _mm256_cmpeq_epi8(hi5, close)),
        pair(unusual(lo), unusual(hi)),
        pair(low(lo), low(hi)),
    ]
}

/// The masks of a last, partial block (under 64 bytes), padded with a
/// letter (which marks nothing).
#[inline(always)]
fn pad_last(masks: impl Fn(&[u8; BLOCK]) -> [u64; 6]) -> impl Fn(&[u8]) -> [u64; 6] {
    move |rest| {
        let mut block = [PAD; BLOCK];
        block[..rest.len()].copy_from_slice(rest);
        masks(&block)
    }
}

/// What a last, partial block is padded with: a letter, which marks nothing.
const PAD: u8 = b'A';

/// [`masks_scalar`] with AVX-512: each mask is one compare of the whole
/// block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
fn masks_avx512(block: &[u8; BLOCK]) -> [u64; 6] {
    use std::arch::x86_64::*;
    // SAFETY: the load reads the block's 64 bytes.
    masks_avx512_of(unsafe { _mm512_loadu_si512(block.as_ptr().cast()) })
}

/// [`masks_avx512`] of a last, partial block (under 64 bytes), padded by
/// a masked load (no copy through memory, whose 64-byte reload would wait
/// for the copy's stores).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
fn masks_avx512_last(rest: &[u8]) -> [u64; 6] {
    use std::arch::x86_64::*;
    debug_assert!(rest.len() < BLOCK);
    let loaded = (1u64 << rest.len()) - 1;
    // SAFETY: only the bytes of `rest` are read (a masked load reads
    // nothing, and faults on nothing, where its mask is clear).
    let x = unsafe {
        _mm512_mask_loadu_epi8(_mm512_set1_epi8(PAD as i8), loaded, rest.as_ptr().cast())
    };
    masks_avx512_of(x)
}

/// The masks of 64 bytes in a vector.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
fn masks_avx512_of(x: std::arch::x86_64::__m512i) -> [u64; 6] {
    use std::arch::x86_64::*;
    let splat = |c: u8| _mm512_set1_epi8(c as i8);
    // `{`/`[` and `}`/`]` differ only in bit 5, as in `masks_avx2`.
    let x5 = _mm512_or_si512(x, splat(0x20));
    // Printable ASCII is 0x20..=0x7f: 0x00..=0x5f once 0x20 is taken away
    // (wrapping), which leaves everything else above 0x5f.
    let unusual = _mm512_cmpgt_epu8_mask(_mm512_sub_epi8(x, splat(0x20)), splat(0x5f));
    [
        _mm512_cmpeq_epi8_mask(x, splat(b'"')),
        _mm512_cmpeq_epi8_mask(x, splat(b'\\')),
        _mm512_cmpeq_epi8_mask(x5, splat(b'{')),
        _mm512_cmpeq_epi8_mask(x5, splat(b'}')),
        unusual,
        _mm512_cmple_epu8_mask(x, splat(0x20)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quotes, brackets and bytes in strings found by walking the bytes one by one.
    /// (A backslash escapes the next byte wherever it is, as in the index:
    /// outside strings that is invalid JSON, which the full parse rejects.)
    fn reference(raw: &[u8]) -> (Vec<usize>, Vec<usize>, Vec<usize>, Vec<bool>) {
        let (mut quotes, mut opens, mut closes, mut strings) = (vec![], vec![], vec![], vec![]);
        let (mut in_str, mut escaped) = (false, false);
        for (i, &b) in raw.iter().enumerate() {
            let is_escaped = escaped;
            escaped = b == b'\\' && !is_escaped;
            if b == b'"' && !is_escaped {
                quotes.push(i);
                in_str = !in_str;
                strings.push(in_str);
                continue;
            }
            if !in_str {
                match b {
                    b'{' | b'[' => opens.push(i),
                    b'}' | b']' => closes.push(i),
                    _ => {}
                }
            }
            strings.push(in_str);
        }
        (quotes, opens, closes, strings)
    }

    fn bits(ix: &Index, mask: impl Fn(&Block) -> u64, len: usize) -> Vec<usize> {
        (0..len)
            .filter(|&i| mask(&ix.blocks[i / 64]) >> (i % 64) & 1 == 1)
            .collect()
    }

    fn check(raw: &[u8], ix: &mut Index) {
        ix.build(raw);
        let (q, o, c, s) = reference(raw);
        let text = String::from_utf8_lossy(raw);
        let n = raw.len();
        assert_eq!(bits(ix, |b| b.quotes, n), q, "quotes of {text}");
        assert_eq!(bits(ix, |b| b.opens, n), o, "opens of {text}");
        assert_eq!(bits(ix, |b| b.closes, n), c, "closes of {text}");
        assert_eq!(ix.opens_total(), o.len());
        assert_eq!(
            ix.plain(),
            !raw.iter()
                .any(|&b| !(0x20..0x80).contains(&b) || b == b'\\'),
            "plain: {text}"
        );
        let mut depth = 0i64;
        for (i, &in_string) in s.iter().enumerate() {
            assert_eq!(ix.depth_at(i), depth, "depth at {i} of {text}");
            assert_eq!(
                ix.opens_string(i),
                q.contains(&i) && in_string,
                "quote {i} of {text}"
            );
            depth += o.contains(&i) as i64 - c.contains(&i) as i64;
        }
        assert_eq!(ix.quotes_between(0, n), q.len());
        // Every compact key `"k":` is found where a string opens (at its
        // depth, after any earlier key of the same name at that depth).
        if ix.compact() && !ix.saw_backslash() {
            for (i, _) in raw.windows(4).enumerate().filter(|(_, w)| w == b"\"a\":") {
                if ix.opens_string(i) {
                    let d = ix.depth_at(i);
                    let first = (0..=i).find(|&j| {
                        raw[j..].starts_with(b"\"a\":") && ix.opens_string(j) && ix.depth_at(j) == d
                    });
                    assert_eq!(
                        ix.find_key(raw, b"a", 0, n, d),
                        first.map(|j| j + 4),
                        "{text}"
                    );
                }
            }
        }
        assert_eq!(
            ix.quotes_between(n / 3, 2 * n / 3),
            q.iter().filter(|&&i| i >= n / 3 && i < 2 * n / 3).count()
        );
        assert_eq!(
            ix.compact(),
            !(0..n).any(|i| raw[i] <= 0x20 && !s[i]),
            "compact: {text}"
        );
    }

    #[test]
    fn the_index_agrees_with_a_byte_by_byte_walk() {
        // Random bytes drawn from the characters that matter, over many
        // blocks, so that backslash runs and strings cross block edges.
        let alphabet = b"\"\\{}[]a:, \"\\{}[]a:, \t\xc3";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let (mut simd, mut scalar) = (Index::new(), Index::scalar());
        let mut avx2 = Index::avx2_only();
        for round in 0..3000 {
            let len = 1 + round % 300;
            let raw: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            check(&raw, &mut simd);
            check(&raw, &mut avx2);
            check(&raw, &mut scalar);
        }
        // Runs of backslashes of every length ending exactly at a block edge.
        for run in 0..130 {
            for pad in 0..3 {
                let mut raw = vec![b'"'];
                raw.extend(std::iter::repeat_n(b'a', 62 - pad.min(62)));
                raw.extend(std::iter::repeat_n(b'\\', run));
                raw.extend_from_slice(b"\"}{\"");
                check(&raw, &mut simd);
                check(&raw, &mut avx2);
                check(&raw, &mut scalar);
            }
        }
    }

    #[test]
    fn a_key_whose_colon_starts_the_next_block_is_found() {
        // The key's closing quote is byte 63, its colon byte 64.
        let raw = format!(r#"{{"p":"{}","k":1}}"#, "a".repeat(53));
        let raw = raw.as_bytes();
        assert_eq!((raw[63], raw[64]), (b'"', b':'));
        for mut ix in [Index::new(), Index::avx2_only(), Index::scalar()] {
            ix.build(raw);
            assert_eq!(ix.find_key(raw, b"k", 1, raw.len(), 1), Some(65));
            assert_eq!(raw[65], b'1');
        }
    }

    #[test]
    fn a_value_spelled_like_the_key_is_not_taken_for_it() {
        let raw = br#"{"a":"k","b":["k"],"k":1}"#;
        let end = raw.iter().position(|&b| b == b'1').unwrap();
        for mut ix in [Index::new(), Index::avx2_only(), Index::scalar()] {
            ix.build(raw);
            assert_eq!(ix.find_key(raw, b"k", 1, raw.len(), 1), Some(end));
            assert_eq!(ix.find_key(raw, b"k", 1, end - 4, 1), None);
        }
    }

    #[test]
    fn keys_of_one_length_are_found_together_as_one_by_one() {
        // Repeated keys, keys nested below, values spelled like keys, one
        // key missing; every window and depth, both orders of the names.
        let events: [&[u8]; 5] = [
            br#"{"ab":1,"cd":{"ab":2,"cd":[3]},"xy":"cd","cd":4,"ab":5}"#,
            br#"{"xy":"ab","cd":{"xy":{"ab":1}},"ab":{"cd":2},"cd":3}"#,
            br#"{"ab":[{"cd":1}],"ab":2}"#,
            br#"{"xy":{"cd":1,"ab":2},"zz":3}"#,
            br#"{}"#,
        ];
        for raw in events {
            let n = raw.len();
            for mut ix in [Index::new(), Index::avx2_only(), Index::scalar()] {
                ix.build(raw);
                for depth in 1..4 {
                    for from in 0..n {
                        for to in from..=n {
                            let one = |k: &[u8]| ix.find_key(raw, k, from, to, depth);
                            let [ab, cd] = ix.find_keys(raw, [b"ab", b"cd"], from, to, depth);
                            assert_eq!((ab, cd), (one(b"ab"), one(b"cd")), "{from}..{to}");
                            let [cd, ab] = ix.find_keys(raw, [b"cd", b"ab"], from, to, depth);
                            assert_eq!((ab, cd), (one(b"ab"), one(b"cd")), "{from}..{to}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn plain_compact_looks_outside_strings() {
        let ok = br#"{"a":"x y-z","b":[1,2],"c":{"d":true}}"#;
        assert!(plain_compact(ok));
        assert!(plain_compact_with(ok, plain_masks_scalar, prefix_xor));
        for bad in [
            &br#"{"a": 1}"#[..],
            br#"{"a":-1}"#,
            br#"{"a":"x\"y"}"#,
            b"{\"a\":1}\n",
            br#" {"a":1}"#,
        ] {
            assert!(!plain_compact(bad), "{}", String::from_utf8_lossy(bad));
            assert!(!plain_compact_with(bad, plain_masks_scalar, prefix_xor));
        }
        // Across blocks: a long string with spaces and dashes.
        let long = format!(r#"{{"a":"{}","b":1}}"#, "- ".repeat(100));
        assert!(plain_compact(long.as_bytes()));
        let long = format!(r#"{{"a":"{}", "b":1}}"#, "x".repeat(100));
        assert!(!plain_compact(long.as_bytes()));
    }

    #[test]
    fn matching_close_skips_nested_values_and_strings() {
        let raw = br#"{"a":{"b":[1,{"c":"}]"}],"d":"{"},"e":[[[]]]}"#;
        let mut ix = Index::new();
        ix.build(raw);
        assert_eq!(ix.matching_close(0), Some(raw.len() - 1));
        let a = 5;
        assert_eq!(raw[a], b'{');
        assert_eq!(raw[ix.matching_close(a).unwrap()], b'}');
        assert_eq!(ix.matching_close(a), Some(32));
        // Unbalanced: no close.
        let raw = br#"{"a":[1,2}"#;
        ix.build(raw);
        assert_eq!(ix.matching_close(0), None);
        // Long values span blocks and are skipped by counting.
        let long = format!(
            r#"{{"x":[{}],"y":"{}"}}"#,
            "[1,{\"k\":\"]]\"}],".repeat(40) + "0",
            "}".repeat(100)
        );
        ix.build(long.as_bytes());
        assert_eq!(ix.matching_close(0), Some(long.len() - 1));
        let close = ix.matching_close(5).unwrap();
        assert_eq!(&long[close..close + 5], r#"],"y""#);
    }
}
