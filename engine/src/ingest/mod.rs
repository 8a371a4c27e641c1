//! Ingest: framing NDJSON into events, choosing each event's shard by account
//! (`ingest::shard`), and parsing events (`ingest::parse`); reading NDJSON
//! streams into reused buffers (`ingest::reader`).
//!
//! The publisher side does as little as possible per event: it finds line
//! ends (`memchr`) and scans the envelope just far enough to find
//! `account_id`, which picks the shard. The full parse happens once, on the
//! shard's worker thread.

pub(crate) mod lazy;
pub(crate) mod parse;
mod reader;
pub(crate) mod scan;
mod shard;

pub(crate) use parse::{Envelope, EventParser};
pub use parse::{MAX_DEPTH, MAX_EVENT_BYTES, RejectReason};
pub use reader::{Chunk, NdjsonReader};
pub use shard::{prescan_account, shard_of};

/// Where one event sits in a batch's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Offset of the first byte.
    pub start: u32,
    /// Length in bytes (no line terminator).
    pub len: u32,
}

/// Iterates the non-blank lines of an NDJSON buffer as spans, without the
/// `\n` or `\r\n` terminator. The last line needs no terminator.
pub fn lines(buf: &[u8]) -> impl Iterator<Item = Span> + '_ {
    let mut start = 0usize;
    let mut ends = memchr::memchr_iter(b'\n', buf);
    let mut done = false;
    std::iter::from_fn(move || {
        loop {
            if done {
                return None;
            }
            let end = match ends.next() {
                Some(e) => e,
                None => {
                    done = true;
                    buf.len()
                }
            };
            let mut line = &buf[start..end];
            let s = start;
            start = end + 1;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            return Some(Span {
                start: s as u32,
                len: line.len() as u32,
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_skip_blanks_and_strip_terminators() {
        let buf = b"a\r\n\n  \nbc\nd";
        let got: Vec<_> = lines(buf)
            .map(|s| &buf[s.start as usize..(s.start + s.len) as usize])
            .collect();
        assert_eq!(got, [&b"a"[..], b"bc", b"d"]);
    }
}
