//! A streaming parser for `COPY ... TO STDOUT (FORMAT binary)`.
//!
//! Chunks from the server are parsed where they are with [`CopyParser::feed`]; complete
//! rows are handed out as slices, so no value is copied before decoding.

use bytes::{Buf, BytesMut};

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// A COPY stream that does not follow the binary format.
#[derive(Debug, thiserror::Error)]
#[error("malformed COPY binary stream: {0}")]
pub struct CopyError(pub &'static str);

/// Incremental parser state.
#[derive(Default)]
pub struct CopyParser {
    buf: BytesMut,
    header_done: bool,
    finished: bool,
    rows: u64,
}

impl CopyParser {
    /// A parser expecting the COPY header.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows parsed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether the trailer was seen.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Parses a chunk received from the server, calling `row` for every complete row;
    /// a partial row at its end is kept for the next chunk. Rows are parsed where they
    /// are: only a row split across chunks is copied.
    pub fn feed<E: From<CopyError>>(
        &mut self,
        chunk: &[u8],
        mut row: impl FnMut(&[Option<&[u8]>]) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.buf.is_empty() {
            let used = self.parse(chunk, &mut row)?;
            self.buf.extend_from_slice(&chunk[used..]);
        } else {
            self.buf.extend_from_slice(chunk);
            let buf = std::mem::take(&mut self.buf);
            let used = self.parse(&buf, &mut row);
            self.buf = buf;
            self.buf.advance(used?);
        }
        Ok(())
    }

    /// Parses the header (once) and every complete row of `data`; returns the bytes used.
    fn parse<E: From<CopyError>>(
        &mut self,
        data: &[u8],
        row: &mut impl FnMut(&[Option<&[u8]>]) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut pos = 0;
        if !self.header_done {
            if data.len() < SIGNATURE.len() + 8 {
                return Ok(0);
            }
            if &data[..SIGNATURE.len()] != SIGNATURE {
                return Err(CopyError("bad signature").into());
            }
            let ext_at = SIGNATURE.len() + 4;
            let ext = u32::from_be_bytes([
                data[ext_at],
                data[ext_at + 1],
                data[ext_at + 2],
                data[ext_at + 3],
            ]) as usize;
            if data.len() < ext_at + 4 + ext {
                return Ok(0);
            }
            pos = ext_at + 4 + ext;
            self.header_done = true;
        }
        let mut fields: Vec<Option<&[u8]>> = Vec::new();
        loop {
            if self.finished {
                // Nothing follows the trailer.
                return Ok(data.len());
            }
            if data.len() < pos + 2 {
                break;
            }
            let count = i16::from_be_bytes([data[pos], data[pos + 1]]);
            if count == -1 {
                self.finished = true;
                continue;
            }
            let count = usize::try_from(count).map_err(|_| CopyError("negative field count"))?;
            let mut p = pos + 2;
            fields.clear();
            let mut complete = true;
            for _ in 0..count {
                if data.len() < p + 4 {
                    complete = false;
                    break;
                }
                let len = i32::from_be_bytes([data[p], data[p + 1], data[p + 2], data[p + 3]]);
                p += 4;
                if len < 0 {
                    fields.push(None);
                    continue;
                }
                let len = len as usize;
                if data.len() < p + len {
                    complete = false;
                    break;
                }
                fields.push(Some(&data[p..p + len]));
                p += len;
            }
            if !complete {
                break;
            }
            row(&fields)?;
            self.rows += 1;
            pos = p;
        }
        Ok(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&0u32.to_be_bytes());
        for i in 0..3i32 {
            v.extend_from_slice(&2i16.to_be_bytes());
            v.extend_from_slice(&4i32.to_be_bytes());
            v.extend_from_slice(&i.to_be_bytes());
            v.extend_from_slice(&(-1i32).to_be_bytes());
        }
        v.extend_from_slice(&(-1i16).to_be_bytes());
        v
    }

    #[test]
    fn parses_rows_split_anywhere() {
        let all = stream();
        for split in 1..all.len() {
            let mut p = CopyParser::new();
            let mut seen = vec![];
            for chunk in [&all[..split], &all[split..]] {
                p.feed(chunk, |f| {
                    assert_eq!(f.len(), 2);
                    assert!(f[1].is_none());
                    seen.push(i32::from_be_bytes(
                        f[0].expect("value").try_into().expect("4 bytes"),
                    ));
                    Ok::<_, CopyError>(())
                })
                .expect("valid");
            }
            assert_eq!(seen, vec![0, 1, 2], "split at {split}");
            assert!(p.finished());
        }
    }

    #[test]
    fn parses_rows_fed_one_byte_at_a_time() {
        let mut p = CopyParser::new();
        let mut seen = vec![];
        for b in stream() {
            p.feed(&[b], |f| {
                seen.push(i32::from_be_bytes(
                    f[0].expect("value").try_into().expect("4 bytes"),
                ));
                Ok::<_, CopyError>(())
            })
            .expect("valid");
        }
        assert_eq!(seen, vec![0, 1, 2]);
        assert!(p.finished());
    }
}
