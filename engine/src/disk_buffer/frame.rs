//! The on-disk format: segment files (header, CRC-framed records), their
//! names, and scanning a segment for its last whole frame.

use super::*;

pub(super) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

pub(super) fn new_segment(dir: &Path, first_seq: u64) -> std::io::Result<Segment> {
    let path = segment_path(dir, first_seq);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .read(true)
        .open(&path)?;
    let mut h = Vec::with_capacity(HEADER as usize);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&first_seq.to_le_bytes());
    f.write_all(&h)?;
    Ok(Segment {
        first_seq,
        path,
        bytes: HEADER,
        file: Some(Arc::new(f)),
    })
}

/// Reads a segment's header: its first sequence number.
pub(super) fn read_header(f: &mut File) -> Option<u64> {
    let mut h = [0u8; HEADER as usize];
    f.read_exact(&mut h).ok()?;
    if &h[..8] != MAGIC || u32::from_le_bytes(h[8..12].try_into().ok()?) != VERSION {
        return None;
    }
    Some(u64::from_le_bytes(h[16..24].try_into().ok()?))
}

/// One frame parsed from `buf` at `pos`: (seq, frame length), or why not.
pub(super) enum Frame {
    Ok {
        seq: u64,
        len: usize,
    },
    /// Not enough bytes for a whole frame.
    Short,
    /// Bad length or CRC.
    Bad(&'static str),
}

pub(super) fn parse_frame(buf: &[u8], pos: usize) -> Frame {
    let rest = &buf[pos..];
    if rest.len() < FRAME_HEAD {
        return Frame::Short;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if !(BODY_FIXED..=MAX_BODY).contains(&len) {
        return Frame::Bad("impossible frame length");
    }
    if rest.len() < FRAME_HEAD + len {
        return Frame::Short;
    }
    let body = &rest[FRAME_HEAD..FRAME_HEAD + len];
    if crc32fast::hash(body) != crc {
        return Frame::Bad("CRC mismatch");
    }
    let seq = u64::from_le_bytes(body[..8].try_into().unwrap_or([0; 8]));
    let var = u16::from_le_bytes([body[28], body[29]]) as usize
        + u16::from_le_bytes([body[30], body[31]]) as usize
        + u16::from_le_bytes([body[32], body[33]]) as usize
        + u16::from_le_bytes([body[34], body[35]]) as usize
        + u32::from_le_bytes([body[24], body[25], body[26], body[27]]) as usize;
    if BODY_FIXED + var != len {
        return Frame::Bad("inconsistent lengths");
    }
    Frame::Ok {
        seq,
        len: FRAME_HEAD + len,
    }
}

/// Scans a whole segment file: (first seq, next seq after the last good
/// frame, length of the good prefix, why it stopped early).
pub(super) fn scan(path: &Path) -> std::io::Result<(Option<u64>, u64, u64, Option<&'static str>)> {
    let mut f = File::open(path)?;
    let Some(first) = read_header(&mut f) else {
        return Ok((None, 0, 0, Some("bad segment header")));
    };
    let mut data = Vec::new();
    f.read_to_end(&mut data)?;
    let (mut pos, mut next) = (0usize, first);
    loop {
        if pos == data.len() {
            return Ok((Some(first), next, HEADER + pos as u64, None));
        }
        match parse_frame(&data, pos) {
            Frame::Ok { seq, len } if seq == next => {
                pos += len;
                next += 1;
            }
            Frame::Ok { .. } => {
                return Ok((Some(first), next, HEADER + pos as u64, Some("sequence gap")));
            }
            Frame::Short => {
                return Ok((
                    Some(first),
                    next,
                    HEADER + pos as u64,
                    Some("incomplete frame"),
                ));
            }
            Frame::Bad(why) => return Ok((Some(first), next, HEADER + pos as u64, Some(why))),
        }
    }
}

pub(super) fn encode_frame(buf: &mut Vec<u8>, seq: u64, sub: &str, r: &Record, received_us: u64) {
    let ty = r.event_type.name().as_bytes();
    let (data, account, id) = (r.data(), r.account_id().as_bytes(), r.event_id().as_bytes());
    let sub = &sub.as_bytes()[..sub.len().min(u16::MAX as usize)];
    let account = &account[..account.len().min(u16::MAX as usize)];
    let id = &id[..id.len().min(u16::MAX as usize)];
    let len = BODY_FIXED + sub.len() + ty.len() + data.len() + account.len() + id.len();
    let head = buf.len();
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    let body = buf.len();
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&(r.timestamp_ms as u64).to_le_bytes());
    buf.extend_from_slice(&received_us.to_le_bytes());
    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(account.len() as u16).to_le_bytes());
    buf.extend_from_slice(&(id.len() as u16).to_le_bytes());
    buf.extend_from_slice(&(sub.len() as u16).to_le_bytes());
    buf.extend_from_slice(&(ty.len() as u16).to_le_bytes());
    buf.extend_from_slice(sub);
    buf.extend_from_slice(ty);
    buf.extend_from_slice(data);
    buf.extend_from_slice(account);
    buf.extend_from_slice(id);
    let crc = crc32fast::hash(&buf[body..]);
    buf[head + 4..head + 8].copy_from_slice(&crc.to_le_bytes());
}
