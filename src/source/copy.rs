//! A streaming parser for `COPY ... TO STDOUT (FORMAT binary)`.
//!
//! Chunks from the server are appended with [`CopyParser::push`]; complete rows are
//! handed out as slices into the buffer, so no value is copied before decoding.

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

    /// Adds a chunk received from the server.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Calls `row` for every complete row buffered; keeps a partial row for later.
    pub fn drain<E: From<CopyError>>(
        &mut self,
        mut row: impl FnMut(&[Option<&[u8]>]) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.header_done {
            if self.buf.len() < SIGNATURE.len() + 8 {
                return Ok(());
            }
            if &self.buf[..SIGNATURE.len()] != SIGNATURE {
                return Err(CopyError("bad signature").into());
            }
            let ext_at = SIGNATURE.len() + 4;
            let ext = u32::from_be_bytes([
                self.buf[ext_at],
                self.buf[ext_at + 1],
                self.buf[ext_at + 2],
                self.buf[ext_at + 3],
            ]) as usize;
            if self.buf.len() < ext_at + 4 + ext {
                return Ok(());
            }
            self.buf.advance(ext_at + 4 + ext);
            self.header_done = true;
        }
        let mut fields: Vec<Option<&[u8]>> = Vec::new();
        let data = &self.buf[..];
        let mut pos = 0;
        loop {
            if self.finished || data.len() < pos + 2 {
                break;
            }
            let count = i16::from_be_bytes([data[pos], data[pos + 1]]);
            if count == -1 {
                self.finished = true;
                pos += 2;
                break;
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
        drop(fields);
        self.buf.advance(pos);
        Ok(())
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
                p.push(chunk);
                p.drain(|f| {
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
}
