//! Reading an NDJSON stream in large chunks of whole lines, into buffers
//! that are used again once every event of theirs is done with.
//!
//! Each chunk handed out owns the buffer it was read into (a [`Bytes`]
//! over it, sliced by the engine into events without a copy). When the last
//! slice of it is dropped, the buffer goes back to the reader's pool and
//! the next read goes into it: its pages are already mapped and written,
//! so a read costs the copy of the input and nothing more (no zeroing of a
//! new buffer before each read, no page faults, no unmapping later). The
//! part line at a chunk's end is copied to the start of the next buffer.

use super::MAX_EVENT_BYTES;
use bytes::Bytes;
use std::io::Read;
use std::sync::{Arc, Mutex, Weak};

/// One item read from an NDJSON stream.
#[derive(Debug)]
pub enum Chunk {
    /// A buffer of complete lines.
    Lines(Bytes),
    /// A line longer than [`MAX_EVENT_BYTES`], skipped: its length and first bytes.
    Oversized {
        /// Full length of the line.
        len: usize,
        /// Bytes of input it covers: `len`, plus its newline if it had one
        /// (what an input offset advances by).
        consumed: usize,
        /// Its first bytes, for the rejects file.
        prefix: Bytes,
    },
}

/// Bytes of buffers kept for reuse when none of their events is held any
/// more (more are freed): 16 buffers of 1 MiB chunks (2 MiB each, with
/// room for a part line). Enough for every chunk the engine's queues hold
/// at once (8 batches per worker), which workers let go of in bursts
/// while the reader waits for room: with 4 kept, `sluice bench`'s
/// many-tenants zeroed a new 2 MiB buffer for one chunk in eight.
const FREE_BYTES: usize = 32 << 20;

/// The buffers of one reader that no chunk holds.
#[derive(Default)]
struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
    /// Buffers made (not taken back from `free`), for tests.
    #[cfg(test)]
    made: std::sync::atomic::AtomicUsize,
}

impl Pool {
    /// A buffer of `size` bytes: one given back, or a new one.
    fn take(&self, size: usize) -> Vec<u8> {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match reused {
            Some(b) if b.len() == size => b,
            _ => {
                #[cfg(test)]
                self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                vec![0; size]
            }
        }
    }

    fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if (free.len() + 1) * buf.len() <= FREE_BYTES.max(buf.len()) {
            free.push(buf);
        }
    }
}

/// A buffer handed out in a chunk: back to its pool when the chunk's last
/// slice is dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: Weak<Pool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give(std::mem::take(&mut self.buf));
        }
    }
}

/// Reads an NDJSON stream in large chunks of whole lines.
pub struct NdjsonReader<R> {
    inner: R,
    /// The buffer being read into, all of it initialized: `buf[..len]` is
    /// read and not yet handed out.
    buf: Vec<u8>,
    len: usize,
    chunk: usize,
    eof: bool,
    /// Bytes of an oversized line skipped so far, while still looking for its end.
    skipping: Option<(usize, Bytes)>,
    pool: Arc<Pool>,
}

impl<R: Read> NdjsonReader<R> {
    /// Reads `inner` in chunks of about `chunk` bytes (at least 64 KiB).
    pub fn new(inner: R, chunk: usize) -> NdjsonReader<R> {
        let chunk = chunk.max(64 << 10);
        let pool = Arc::new(Pool::default());
        NdjsonReader {
            inner,
            buf: pool.take(Self::size(chunk)),
            len: 0,
            chunk,
            eof: false,
            skipping: None,
            pool,
        }
    }

    /// The size of a buffer: a chunk after the longest part line kept
    /// (an event's limit and its line end).
    fn size(chunk: usize) -> usize {
        chunk + MAX_EVENT_BYTES + 2
    }

    /// One `read` call (whatever is available, so that a live stream is not
    /// held back waiting for a full chunk).
    fn fill(&mut self) -> std::io::Result<usize> {
        let to = (self.len + self.chunk).min(self.buf.len());
        loop {
            match self.inner.read(&mut self.buf[self.len..to]) {
                Ok(k) => {
                    self.len += k;
                    if k == 0 {
                        self.eof = true;
                    }
                    return Ok(k);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Hands out `buf[..n]` (the buffer goes with it) and carries on with
    /// the rest at the start of a buffer from the pool. A chunk under a
    /// quarter of `chunk` (a live stream's few lines) is copied out
    /// instead, so that slow streams do not pin a whole buffer per chunk
    /// while the engine holds them.
    fn hand_out(&mut self, n: usize) -> Bytes {
        if n < self.chunk / 4 {
            let small = Bytes::copy_from_slice(&self.buf[..n]);
            self.discard(n);
            return small;
        }
        let mut next = self.pool.take(self.buf.len());
        let rest = self.len - n;
        next[..rest].copy_from_slice(&self.buf[n..self.len]);
        let full = std::mem::replace(&mut self.buf, next);
        self.len = rest;
        Bytes::from_owner(Pooled {
            buf: full,
            pool: Arc::downgrade(&self.pool),
        })
        .slice(..n)
    }

    /// Drops `buf[..n]`, keeping the rest.
    fn discard(&mut self, n: usize) {
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// The first bytes of what is read, copied (for the rejects file).
    fn prefix(&self) -> Bytes {
        Bytes::copy_from_slice(&self.buf[..256.min(self.len)])
    }
}

impl<R: Read> Iterator for NdjsonReader<R> {
    type Item = std::io::Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((len, prefix)) = self.skipping.take() {
                // Discard up to the end of the oversized line.
                if let Some(nl) = memchr::memchr(b'\n', &self.buf[..self.len]) {
                    self.discard(nl + 1);
                    return Some(Ok(Chunk::Oversized {
                        len: len + nl,
                        consumed: len + nl + 1,
                        prefix,
                    }));
                }
                let n = self.len;
                self.len = 0;
                if self.eof {
                    return Some(Ok(Chunk::Oversized {
                        len: len + n,
                        consumed: len + n,
                        prefix,
                    }));
                }
                self.skipping = Some((len + n, prefix));
                if let Err(e) = self.fill() {
                    return Some(Err(e));
                }
                continue;
            }
            let read = &self.buf[..self.len];
            if let Some(nl) = memchr::memrchr(b'\n', read) {
                // Hand out every complete line, unless the first one is too long.
                let first_nl = memchr::memchr(b'\n', read).unwrap_or(nl);
                if first_nl > MAX_EVENT_BYTES + 1 {
                    let prefix = self.prefix();
                    self.discard(first_nl + 1);
                    return Some(Ok(Chunk::Oversized {
                        len: first_nl,
                        consumed: first_nl + 1,
                        prefix,
                    }));
                }
                return Some(Ok(Chunk::Lines(self.hand_out(nl + 1))));
            }
            if self.len > MAX_EVENT_BYTES + 1 {
                let prefix = self.prefix();
                let n = self.len;
                self.len = 0;
                self.skipping = Some((n, prefix));
                continue;
            }
            if self.eof {
                if self.len == 0 {
                    return None;
                }
                let n = self.len;
                return Some(Ok(Chunk::Lines(self.hand_out(n))));
            }
            if let Err(e) = self.fill() {
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_yields_whole_lines_and_skips_oversized_ones() {
        let big = "x".repeat(MAX_EVENT_BYTES + 10);
        let input = format!("l1\nl2\n{big}\nl3\nl4");
        let items: Vec<_> = NdjsonReader::new(std::io::Cursor::new(input.into_bytes()), 64 << 10)
            .map(|r| r.unwrap())
            .collect();
        let mut text = String::new();
        let mut oversized = vec![];
        for it in items {
            match it {
                Chunk::Lines(b) => text.push_str(std::str::from_utf8(&b).unwrap()),
                Chunk::Oversized { len, consumed, .. } => {
                    assert!(consumed == len + 1 || consumed == len, "{len} {consumed}");
                    oversized.push(len)
                }
            }
        }
        assert_eq!(text, "l1\nl2\nl3\nl4");
        assert_eq!(oversized, vec![MAX_EVENT_BYTES + 10]);
    }

    /// A reader that hands out at most `step` bytes per call, as a pipe does.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn buffers_are_used_again_only_once_no_chunk_holds_them() {
        let mut input = Vec::new();
        for i in 0..30_000 {
            input.extend_from_slice(
                format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "y".repeat(i % 50)).as_bytes(),
            );
        }
        let chunks = |held: bool| {
            let reader = NdjsonReader::new(
                Trickle {
                    data: &input,
                    step: 100_000,
                },
                64 << 10,
            );
            let mut kept: Vec<Bytes> = Vec::new();
            let mut text = Vec::new();
            let mut addresses = std::collections::HashSet::new();
            let mut count = 0;
            for item in reader {
                let Chunk::Lines(b) = item.unwrap() else {
                    panic!("no line is oversized")
                };
                addresses.insert(b.as_ptr() as usize);
                text.extend_from_slice(&b);
                count += 1;
                if held {
                    kept.push(b);
                }
            }
            // Chunks held to the end still hold what was read into them.
            let joined: Vec<u8> = kept.iter().flat_map(|b| b.iter().copied()).collect();
            if held {
                assert_eq!(joined, input, "held chunks unchanged");
            }
            assert_eq!(text, input);
            (count, addresses.len())
        };
        let (count, distinct) = chunks(false);
        assert!(count > 10, "{count} chunks");
        assert!(
            distinct <= 2,
            "chunks dropped at once reuse the same buffers: {distinct} buffers for {count} chunks"
        );
        let (count, distinct) = chunks(true);
        assert_eq!(distinct, count, "a held chunk's buffer is never reused");
    }

    #[test]
    fn a_slow_stream_s_small_chunks_do_not_each_hold_a_buffer() {
        let mut input = Vec::new();
        for i in 0..2_000 {
            input.extend_from_slice(
                format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "z".repeat(900)).as_bytes(),
            );
        }
        let mut reader = NdjsonReader::new(
            Trickle {
                data: &input,
                step: 1_000,
            },
            64 << 10,
        );
        let mut held = Vec::new();
        for item in reader.by_ref() {
            let Chunk::Lines(b) = item.unwrap() else {
                panic!("no line is oversized")
            };
            held.push(b);
        }
        assert!(held.len() > 1_000, "small chunks: {}", held.len());
        let joined: Vec<u8> = held.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(joined, input);
        let made = reader.pool.made.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(made, 1, "one buffer read into, not one per held chunk");
    }

    /// Chunks held ten at a time, as the engine's queues hold them, and let
    /// go all at once: once ten buffers exist, every read reuses one.
    #[test]
    fn chunks_let_go_in_bursts_are_read_into_again() {
        let mut input = Vec::new();
        for i in 0..40_000 {
            input.extend_from_slice(
                format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "z".repeat(300)).as_bytes(),
            );
        }
        let mut reader = NdjsonReader::new(std::io::Cursor::new(input), 64 << 10);
        let mut held = Vec::new();
        let mut chunks = 0;
        for item in reader.by_ref() {
            let Chunk::Lines(b) = item.unwrap() else {
                panic!("no line is oversized")
            };
            held.push(b);
            chunks += 1;
            if held.len() == 10 {
                held.clear();
            }
        }
        assert!(chunks > 150, "many chunks: {chunks}");
        let made = reader.pool.made.load(std::sync::atomic::Ordering::Relaxed);
        assert!(made <= 12, "{made} buffers made for {chunks} chunks");
    }
}
