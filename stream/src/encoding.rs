//! Message payloads on the wire: NDJSON, compressed with LZ4 when the
//! publisher's settings say so (`compress`, on by default). A compressed
//! payload carries the header `Sluice-Encoding: lz4` and starts with its
//! decompressed size (4 bytes, little-endian); a payload without the header
//! is plain NDJSON, so publishers that do not compress (an embedding tier's
//! own) are read as well. Compression cuts the bytes JetStream stores,
//! replicates and delivers to a fraction (repeated keys and values).

use async_nats::HeaderMap;
use bytes::Bytes;

/// The header naming a payload's encoding.
pub const HEADER: &str = "Sluice-Encoding";

/// The largest decompressed payload accepted (a message holds at most
/// `target_message_bytes`, or one event of up to 1 MiB; this leaves room).
pub const MAX_DECODED_BYTES: usize = 64 << 20;

/// `payload` compressed (size-prefixed LZ4 block).
pub fn compress(payload: &[u8]) -> Bytes {
    Bytes::from(lz4_flex::block::compress_prepend_size(payload))
}

/// The NDJSON of a message: its payload, decompressed when its headers say
/// `lz4`. An error names what is wrong (an unknown encoding, a size over
/// [`MAX_DECODED_BYTES`], a corrupt block).
pub fn decode(headers: Option<&HeaderMap>, payload: &Bytes) -> Result<Bytes, String> {
    let Some(encoding) = headers.and_then(|h| h.get(HEADER)) else {
        return Ok(payload.clone());
    };
    match encoding.as_str() {
        "lz4" => {
            let size = payload
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or("an lz4 payload shorter than its size prefix")?;
            if size > MAX_DECODED_BYTES {
                return Err(format!(
                    "an lz4 payload that claims {size} bytes, over the {MAX_DECODED_BYTES} allowed"
                ));
            }
            let out = lz4_flex::block::decompress_size_prepended(payload)
                .map_err(|e| format!("a corrupt lz4 payload: {e}"))?;
            // The decoder stops at the end of the input: a short result is
            // a cut or damaged payload, not a smaller one.
            if out.len() != size {
                return Err(format!(
                    "a corrupt lz4 payload: {} bytes decoded, {size} announced",
                    out.len()
                ));
            }
            Ok(Bytes::from(out))
        }
        other => Err(format!("an unknown {HEADER} '{other}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_bad_ones_are_named() {
        let ndjson = b"{\"account_id\":\"ac_1\",\"n\":1}\n".repeat(1000);
        let packed = compress(&ndjson);
        assert!(packed.len() * 10 < ndjson.len(), "{} bytes", packed.len());
        let mut h = HeaderMap::new();
        h.insert(HEADER, "lz4");
        assert_eq!(
            decode(Some(&h), &packed).unwrap(),
            Bytes::from(ndjson.clone())
        );
        // Plain: no header.
        let plain = Bytes::from(ndjson.clone());
        assert_eq!(decode(None, &plain).unwrap(), plain);
        assert_eq!(decode(Some(&HeaderMap::new()), &plain).unwrap(), plain);
        // A size prefix that claims too much is refused before allocating.
        let mut huge = vec![0xff, 0xff, 0xff, 0x7f];
        huge.extend_from_slice(&packed[4..]);
        let e = decode(Some(&h), &Bytes::from(huge)).unwrap_err();
        assert!(e.contains("over the"), "{e}");
        let e = decode(Some(&h), &Bytes::from_static(b"\x10\x00\x00\x00garbage")).unwrap_err();
        assert!(e.contains("corrupt"), "{e}");
        let e = decode(Some(&h), &Bytes::from_static(b"ab")).unwrap_err();
        assert!(e.contains("shorter"), "{e}");
        let mut z = HeaderMap::new();
        z.insert(HEADER, "zstd");
        assert!(decode(Some(&z), &plain).unwrap_err().contains("unknown"));
    }
}
