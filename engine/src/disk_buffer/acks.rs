//! Acknowledgements: the watermark and the bitmap above it, persisted in
//! `acked` at each sync, and the `synced` mark that keeps sequence numbers
//! from going back after damage.

use super::*;

impl Acks {
    /// Every record below this is acknowledged.
    pub(super) fn watermark(&self) -> u64 {
        self.base + self.bits.front().map_or(0, |w| w.trailing_ones() as u64)
    }

    pub(super) fn set(&mut self, seq: u64) {
        if seq < self.base {
            return;
        }
        let i = ((seq - self.base) / 64) as usize;
        if i >= self.bits.len() {
            self.bits.resize(i + 1, 0);
        }
        self.bits[i] |= 1 << ((seq - self.base) % 64);
        while self.bits.front() == Some(&u64::MAX) {
            self.bits.pop_front();
            self.base += 64;
        }
    }

    pub(super) fn is_set(&self, seq: u64) -> bool {
        if seq < self.base {
            return true;
        }
        let i = ((seq - self.base) / 64) as usize;
        self.bits
            .get(i)
            .is_some_and(|w| w & (1 << ((seq - self.base) % 64)) != 0)
    }

    /// Forgets the acknowledgements of `seq` and everything after it: when a
    /// repair cut the log back to end before `seq`, new records take those
    /// sequence numbers, and the old acknowledgements must not cover them.
    /// (Used where `seq` is at or above `base`; below it there is nothing to forget.)
    pub(super) fn forget_from(&mut self, seq: u64) {
        let Some(off) = seq.checked_sub(self.base) else {
            return;
        };
        let word = (off / 64) as usize;
        let bit = off % 64;
        self.bits.truncate(word + 1);
        if let Some(w) = self.bits.get_mut(word) {
            *w &= (1u64 << bit) - 1;
        }
    }

    /// Acknowledges everything below `seq` (records known to be gone).
    pub(super) fn skip_to(&mut self, seq: u64) {
        if self.watermark() >= seq {
            return;
        }
        while self.base + 64 <= seq {
            self.bits.pop_front();
            self.base += 64;
        }
        for s in self.base..seq {
            self.set(s);
        }
    }
}

impl DiskBuffer {
    /// Acknowledges records: delivered or dead-lettered.
    pub fn ack(&self, seqs: impl IntoIterator<Item = u64>) {
        let mut a = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for s in seqs {
            if !a.is_set(s) {
                a.set(s);
                n += 1;
            }
        }
        drop(a);
        sub_saturating(&self.stats.disk_records, n);
    }

    /// Writes the acknowledgement state if it changed (at most every 100 ms
    /// unless `force`).
    pub(super) fn persist_acks(&self, force: bool) -> std::io::Result<()> {
        let (base, words) = {
            let mut a = self.acks.lock().unwrap_or_else(|p| p.into_inner());
            let key = (
                a.watermark(),
                a.bits.iter().map(|w| w.count_ones() as usize).sum(),
            );
            if a.persisted == Some(key) {
                return Ok(());
            }
            if !force
                && a.last_persist
                    .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
            {
                return Ok(());
            }
            a.persisted = Some(key);
            a.last_persist = Some(Instant::now());
            (a.base, a.bits.iter().copied().collect::<Vec<u64>>())
        };
        let mut b = Vec::with_capacity(16 + words.len() * 8);
        b.extend_from_slice(&base.to_le_bytes());
        b.extend_from_slice(&(words.len() as u64).to_le_bytes());
        for w in &words {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let tmp = self.dir.join("acked.tmp");
        std::fs::write(&tmp, &b)?;
        std::fs::rename(&tmp, self.dir.join("acked"))
    }
}

/// Records the sequence number after the last fsynced record (`synced`):
/// on open, a log that ends before it lost records that were safe.
pub(super) fn write_synced(dir: &Path, next: u64) -> std::io::Result<()> {
    let mut b = next.to_le_bytes().to_vec();
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("synced.tmp");
    std::fs::write(&tmp, &b)?;
    std::fs::rename(&tmp, dir.join("synced"))
}

/// Reads the mark of [`write_synced`]: `Ok(None)` when there is none.
pub(super) fn load_synced(path: &Path) -> Result<Option<u64>, String> {
    let b = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if b.len() != 12 || crc32fast::hash(&b[..8]) != u32::from_le_bytes([b[8], b[9], b[10], b[11]]) {
        return Err("damaged".into());
    }
    Ok(Some(u64::from_le_bytes(
        b[..8].try_into().unwrap_or([0; 8]),
    )))
}

/// Reads a persisted acknowledgement state: `Ok(None)` when there is none.
pub(super) fn load_acks(path: &Path) -> Result<Option<(u64, Vec<u64>)>, String> {
    let b = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if b.len() < 20 || (b.len() - 20) % 8 != 0 {
        return Err("truncated".into());
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().unwrap_or([0; 4])) {
        return Err("CRC mismatch".into());
    }
    let base = u64::from_le_bytes(body[..8].try_into().unwrap_or([0; 8]));
    let n = u64::from_le_bytes(body[8..16].try_into().unwrap_or([0; 8])) as usize;
    if n != (body.len() - 16) / 8 || base % 64 != 0 {
        return Err("inconsistent".into());
    }
    let words = body[16..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    Ok(Some((base, words)))
}
