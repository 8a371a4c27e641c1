//! The reader: the delivery task reads records back in order, skipping
//! what is acknowledged or lost to damage.

use super::*;

impl DiskBuffer {
    /// Records written and not read yet exist.
    pub fn unread(&self) -> bool {
        let r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        r.next_seq < self.written.load(Acquire)
    }

    /// Every record written is acknowledged.
    pub fn drained(&self) -> bool {
        self.acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .watermark()
            >= self.written.load(Acquire)
    }

    /// Reads records not read yet, up to about `max_bytes` of them, skipping
    /// those already acknowledged (after a restart). Blocking file I/O.
    pub fn read(&self, max_bytes: u64, out: &mut Vec<DiskEntry>) -> std::io::Result<u64> {
        let mut r = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut got = 0u64;
        while got < max_bytes && r.next_seq < self.written.load(Acquire) {
            let Some((seg_end, path)) = self.locate(&mut r) else {
                break;
            };
            if r.file.is_none() {
                r.file = Some(File::open(&path)?);
            }
            let avail = seg_end - r.offset;
            // Read about what is wanted (at least 64 KiB, at most 256 KiB, or
            // one whole frame), into an uninitialised buffer.
            let mut want = avail.min((max_bytes - got).clamp(64 << 10, 256 << 10)) as usize;
            let block = loop {
                let offset = r.offset;
                let f = r
                    .file
                    .as_mut()
                    .ok_or_else(|| std::io::Error::other("no file"))?;
                f.seek(SeekFrom::Start(offset))?;
                let mut v = Vec::with_capacity(want);
                (&mut *f).take(want as u64).read_to_end(&mut v)?;
                // A frame bigger than the block: read it whole.
                if let Frame::Short = parse_frame(&v, 0)
                    && v.len() >= 4
                {
                    let need = FRAME_HEAD + u32::from_le_bytes([v[0], v[1], v[2], v[3]]) as usize;
                    if need > want && need as u64 <= avail && need <= FRAME_HEAD + MAX_BODY {
                        want = need;
                        continue;
                    }
                }
                break Bytes::from(v);
            };
            let mut pos = 0usize;
            let mut damaged = None;
            while pos < block.len() {
                match parse_frame(&block, pos) {
                    Frame::Ok { seq, len } => {
                        if seq > r.next_seq {
                            self.skip_lost(&mut r, seq);
                        }
                        if seq == r.next_seq {
                            let acked = self
                                .acks
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .is_set(seq);
                            if !acked {
                                let e = self.decode(&mut r, block.slice(pos..pos + len))?;
                                got += e.record.data().len() as u64;
                                out.push(e);
                            }
                            r.next_seq = seq + 1;
                        }
                        pos += len;
                        if got >= max_bytes {
                            break;
                        }
                    }
                    Frame::Short => {
                        // Frames are whole up to `seg_end`: a short one at the
                        // end of what exists is damage.
                        if r.offset + block.len() as u64 >= seg_end {
                            damaged = Some("incomplete frame");
                        }
                        break;
                    }
                    Frame::Bad(why) => {
                        damaged = Some(why);
                        break;
                    }
                }
            }
            r.offset += pos as u64;
            if let Some(why) = damaged {
                let cut = seg_end - r.offset;
                tracing::error!(
                    segment = %path.display(),
                    offset = r.offset,
                    "disk buffer damaged ({why}); the {cut} bytes after it are skipped"
                );
                self.stats.disk_repaired_bytes.fetch_add(cut, Relaxed);
                self.stats.disk_errors.fetch_add(1, Relaxed);
                r.offset = seg_end;
            }
        }
        Ok(got)
    }

    /// Moves the reader to the segment holding its next record: that
    /// segment's end (bytes written so far) and path, or `None` when there is
    /// nothing more to read now.
    pub(super) fn locate(&self, r: &mut Reader) -> Option<(u64, PathBuf)> {
        loop {
            let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let i = w.segments.iter().position(|s| s.first_seq == r.seg_first);
            let next = match i {
                Some(i) => {
                    let s = &w.segments[i];
                    if r.offset < s.bytes {
                        return Some((s.bytes, s.path.clone()));
                    }
                    w.segments.get(i + 1).map(|n| n.first_seq)?
                }
                // Set aside as damaged: go on with the next one.
                None => {
                    w.segments
                        .iter()
                        .find(|s| s.first_seq > r.seg_first)?
                        .first_seq
                }
            };
            drop(w);
            self.skip_lost(r, next);
            r.seg_first = next;
            r.file = None;
            r.offset = HEADER;
        }
    }

    /// Records between the reader's position and `seq` were lost: acknowledge
    /// and count them.
    pub(super) fn skip_lost(&self, r: &mut Reader, seq: u64) {
        if seq <= r.next_seq {
            return;
        }
        let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let mut lost = 0;
        for s in r.next_seq..seq {
            if !acks.is_set(s) {
                lost += 1;
                acks.set(s);
            }
        }
        drop(acks);
        if lost > 0 {
            tracing::error!(
                destination_dir = %self.dir.display(),
                lost,
                "disk buffer damage: records {}..{} are lost",
                r.next_seq,
                seq
            );
            self.stats.disk_lost_records.fetch_add(lost, Relaxed);
            sub_saturating(&self.stats.disk_records, lost);
        }
        r.next_seq = seq;
    }

    pub(super) fn decode(&self, r: &mut Reader, frame: Bytes) -> std::io::Result<DiskEntry> {
        let b = &frame[FRAME_HEAD..];
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]) as usize;
        let seq = u64_at(0);
        let timestamp_ms = u64_at(8) as i64;
        let received = u64_at(16);
        let data_len = u32::from_le_bytes([b[24], b[25], b[26], b[27]]) as usize;
        let (account_len, id_len, sub_len, type_len) =
            (u16_at(28), u16_at(30), u16_at(32), u16_at(34));
        let mut p = BODY_FIXED;
        let sub = &b[p..p + sub_len];
        p += sub_len;
        let ty = &b[p..p + type_len];
        p += type_len;
        let subscription = match r.subs.get(sub) {
            Some(s) => s.clone(),
            None => {
                let s: Arc<str> = String::from_utf8_lossy(sub).into();
                r.subs.insert(sub.into(), s.clone());
                s
            }
        };
        let event_type = match r.types.get(ty) {
            Some(t) => *t,
            None => {
                let name = String::from_utf8_lossy(ty);
                let t = EventTypeId::from_name(&name).ok_or_else(|| {
                    std::io::Error::other(format!("unknown event type `{name}` in the disk buffer"))
                })?;
                r.types.insert(ty.into(), t);
                t
            }
        };
        let start = FRAME_HEAD + p;
        let rest = frame.slice(start..start + data_len + account_len + id_len);
        Ok(DiskEntry {
            seq,
            subscription,
            record: Record::from_shared(rest, data_len, account_len, event_type, timestamp_ms),
            received_unix_us: received,
        })
    }
}
