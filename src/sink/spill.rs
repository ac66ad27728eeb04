//! Rows grouped by partition before they are encoded, in bounded memory.
//!
//! ```text
//!  append(row) ─▶ arena: the row's wire values, as received (no decoding yet)
//!                 index: (part, offset) per row
//!  arena over its budget: the index is sorted by part (stable: arrival order kept)
//!                 and the rows are written to a run file, each part's rows together
//!  finish: the arena's last rows are sorted the same way and stay in memory;
//!          each part then reads its rows from every run, oldest run first, and the arena
//! ```
//!
//! So whatever the number of partitions and the order rows arrive in, a part's rows come
//! back together and in arrival order, and memory holds at most the arena's budget; the
//! runs cost one sequential write and read of the rows' wire bytes on local disk.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::decode::{ChangeType, Datum, RowMeta};

/// A failure of the local files that hold spilled rows.
#[derive(Debug, thiserror::Error)]
#[error("spill file {path}: {source}")]
pub struct SpillError {
    /// The file.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// Bytes of a run file read at once.
const READ_CHUNK: u64 = 4 << 20;

/// Bytes the index takes per row (part number and offset), counted against the budget.
const INDEX_BYTES: usize = 8;

/// One row read back: its metadata, the schema it was written with, its values.
pub struct SpilledRow<'a> {
    /// The row's metadata columns.
    pub meta: RowMeta,
    /// Which of the sink's schemas the values follow.
    pub schema: u32,
    /// `None` for a TRUNCATE marker (every source column NULL).
    pub values: Option<SpilledValues<'a>>,
}

/// The values of a spilled row, read as they are iterated (no allocation per row).
pub struct SpilledValues<'a> {
    bytes: &'a [u8],
    pos: usize,
    left: usize,
}

impl<'a> Iterator for SpilledValues<'a> {
    type Item = Datum<'a>;

    fn next(&mut self) -> Option<Datum<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let b = self.bytes;
        let tag = *b.get(self.pos)?;
        self.pos += 1;
        Some(match tag {
            1 | 2 => {
                let len = u32::from_le_bytes(four(&b[self.pos..])) as usize;
                let v = &b[self.pos + 4..self.pos + 4 + len];
                self.pos += 4 + len;
                if tag == 1 {
                    Datum::Text(v)
                } else {
                    Datum::Binary(v)
                }
            }
            3 => Datum::Unchanged,
            _ => Datum::Null,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for SpilledValues<'_> {}

/// Where a part's rows are in one run file.
#[derive(Debug, Clone, Copy)]
struct Range {
    run: usize,
    offset: u64,
    len: u64,
}

/// The rows of every part, held in memory up to a budget and spilled beyond it.
pub struct Spill {
    dir: PathBuf,
    budget: usize,
    arena: Vec<u8>,
    /// `(part, offset into arena)` per row, in arrival order until sorted.
    index: Vec<(u32, u32)>,
    /// Run files, with a handle each for reading them back (positioned reads, so the
    /// encoder threads share it).
    runs: Vec<(PathBuf, Option<File>)>,
    /// Per part, its ranges in the run files, oldest first.
    ranges: Vec<Vec<Range>>,
    /// Per part, the rows in the arena once sorted: `index[start..end]`.
    tail: Vec<(usize, usize)>,
    /// Rows per part.
    counts: Vec<u32>,
    spilled_bytes: u64,
}

impl Spill {
    /// An empty spill writing run files into `dir`, holding up to `budget` bytes of rows.
    pub fn new(dir: &Path, budget: usize) -> Self {
        Self {
            dir: dir.to_path_buf(),
            budget: budget.max(1 << 20),
            arena: Vec::new(),
            index: Vec::new(),
            runs: Vec::new(),
            ranges: Vec::new(),
            tail: Vec::new(),
            counts: Vec::new(),
            spilled_bytes: 0,
        }
    }

    /// Bytes of rows written to run files so far.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled_bytes
    }

    /// Bytes held in memory.
    pub fn memory(&self) -> usize {
        self.arena.len() + self.index.len() * INDEX_BYTES
    }

    /// Appends a row of `part`; `values` is `None` for a TRUNCATE marker.
    pub fn push<'a>(
        &mut self,
        part: u32,
        schema: u32,
        meta: &RowMeta,
        values: Option<impl Iterator<Item = Datum<'a>>>,
    ) -> Result<(), SpillError> {
        if self.arena.len() > u32::MAX as usize - (64 << 20) || self.memory() >= self.budget {
            self.spill()?;
        }
        let start = self.arena.len();
        self.index.push((part, start as u32));
        if self.counts.len() <= part as usize {
            self.counts.resize(part as usize + 1, 0);
        }
        self.counts[part as usize] += 1;
        // Length placeholder, filled in once the row is written.
        self.arena.extend_from_slice(&[0; 4]);
        self.arena.push(change_type_code(meta.change_type));
        self.arena.extend_from_slice(&meta.lsn.to_le_bytes());
        self.arena.extend_from_slice(&meta.seq.to_le_bytes());
        self.arena.extend_from_slice(&meta.commit_us.to_le_bytes());
        self.arena.extend_from_slice(&schema.to_le_bytes());
        match values {
            None => self.arena.extend_from_slice(&u32::MAX.to_le_bytes()),
            Some(values) => {
                let count_at = self.arena.len();
                self.arena.extend_from_slice(&[0; 4]);
                let mut count = 0u32;
                for d in values {
                    count += 1;
                    let (tag, bytes): (u8, &[u8]) = match d {
                        Datum::Null => (0, &[]),
                        Datum::Text(b) => (1, b),
                        Datum::Binary(b) => (2, b),
                        Datum::Unchanged => (3, &[]),
                    };
                    self.arena.push(tag);
                    if tag == 1 || tag == 2 {
                        self.arena
                            .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                        self.arena.extend_from_slice(bytes);
                    }
                }
                self.arena[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
            }
        }
        let len = (self.arena.len() - start - 4) as u32;
        self.arena[start..start + 4].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }

    /// Sorts the index by part, keeping arrival order within a part (counting sort).
    fn sort_index(&mut self) -> Vec<(usize, usize)> {
        let parts = self
            .index
            .iter()
            .map(|(p, _)| *p as usize + 1)
            .max()
            .unwrap_or(0);
        let mut bounds = vec![0usize; parts + 1];
        for (p, _) in &self.index {
            bounds[*p as usize + 1] += 1;
        }
        for i in 1..bounds.len() {
            bounds[i] += bounds[i - 1];
        }
        let mut next = bounds.clone();
        let mut sorted = vec![(0u32, 0u32); self.index.len()];
        for e in &self.index {
            let slot = &mut next[e.0 as usize];
            sorted[*slot] = *e;
            *slot += 1;
        }
        self.index = sorted;
        bounds.windows(2).map(|w| (w[0], w[1])).collect()
    }

    /// Writes the arena's rows to a new run file, grouped by part.
    fn spill(&mut self) -> Result<(), SpillError> {
        if self.index.is_empty() {
            return Ok(());
        }
        let groups = self.sort_index();
        // Unique in the process: several sinks (snapshot workers) share the folder.
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("spill-{}-{n}.run", std::process::id()));
        let err = |source| SpillError {
            path: path.clone(),
            source,
        };
        let file = File::create(&path).map_err(err)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let run = self.runs.len();
        let mut offset = 0u64;
        for (part, (start, end)) in groups.into_iter().enumerate() {
            if start == end {
                continue;
            }
            let first = offset;
            for (_, at) in &self.index[start..end] {
                let at = *at as usize;
                let len = u32::from_le_bytes(four(&self.arena[at..])) as usize;
                out.write_all(&self.arena[at..at + 4 + len]).map_err(err)?;
                offset += 4 + len as u64;
            }
            if self.ranges.len() <= part {
                self.ranges.resize(part + 1, Vec::new());
            }
            self.ranges[part].push(Range {
                run,
                offset: first,
                len: offset - first,
            });
        }
        out.flush().map_err(err)?;
        self.spilled_bytes += offset;
        self.runs.push((path, None));
        self.arena.clear();
        self.index.clear();
        Ok(())
    }

    /// Ends appending: the rows still in memory are grouped by part; when they take more
    /// than `keep` bytes they go to a run file, so the encoders get the memory instead.
    pub fn seal(&mut self, keep: usize) -> Result<(), SpillError> {
        if self.memory() > keep {
            self.spill()?;
        }
        self.tail = self.sort_index();
        for (path, file) in &mut self.runs {
            *file = Some(File::open(&*path).map_err(|source| SpillError {
                path: path.clone(),
                source,
            })?);
        }
        Ok(())
    }

    /// Rows of a part.
    pub fn rows(&self, part: u32) -> u32 {
        self.counts.get(part as usize).copied().unwrap_or(0)
    }

    /// Parts that have rows.
    pub fn parts(&self) -> Vec<u32> {
        let n = self.ranges.len().max(self.tail.len());
        (0..n)
            .filter(|p| {
                self.ranges.get(*p).is_some_and(|r| !r.is_empty())
                    || self.tail.get(*p).is_some_and(|(s, e)| s < e)
            })
            .map(|p| p as u32)
            .collect()
    }

    /// Calls `f` for every row of `part`, in arrival order (after [`seal`](Self::seal)).
    pub fn for_each<E: From<SpillError>>(
        &self,
        part: u32,
        mut f: impl FnMut(SpilledRow<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut buf = Vec::new();
        for range in self.ranges.get(part as usize).into_iter().flatten() {
            let (path, file) = &self.runs[range.run];
            let err = |source| SpillError {
                path: path.clone(),
                source,
            };
            let file = file
                .as_ref()
                .ok_or_else(|| err(std::io::Error::other("spill read before it was sealed")))?;
            // A range is read in pieces of at most a few megabytes, each ending on a row.
            let (mut at, end) = (range.offset, range.offset + range.len);
            while at < end {
                let want = (end - at).min(READ_CHUNK) as usize;
                buf.resize(want, 0);
                file.read_exact_at(&mut buf, at).map_err(err)?;
                let mut pos = 0;
                while pos + 4 <= want {
                    let len = u32::from_le_bytes(four(&buf[pos..])) as usize;
                    if pos + 4 + len > want {
                        break;
                    }
                    f(decode_row(&buf[pos + 4..pos + 4 + len]))?;
                    pos += 4 + len;
                }
                if pos == 0 {
                    // One row bigger than the piece: read exactly it.
                    let mut len = [0u8; 4];
                    file.read_exact_at(&mut len, at).map_err(err)?;
                    let len = u32::from_le_bytes(len) as usize;
                    buf.resize(len, 0);
                    file.read_exact_at(&mut buf, at + 4).map_err(err)?;
                    f(decode_row(&buf))?;
                    pos = 4 + len;
                }
                at += pos as u64;
            }
        }
        if let Some((start, end)) = self.tail.get(part as usize) {
            for (_, at) in &self.index[*start..*end] {
                let at = *at as usize;
                let len = u32::from_le_bytes(four(&self.arena[at..])) as usize;
                f(decode_row(&self.arena[at + 4..at + 4 + len]))?;
            }
        }
        Ok(())
    }
}

impl Spill {
    /// Deletes the run files and frees the memory (before the lake is synced, so the
    /// runs' pages are never written back).
    pub fn clear(&mut self) {
        for (run, _) in self.runs.drain(..) {
            let _ = std::fs::remove_file(run);
        }
        self.arena = Vec::new();
        self.index = Vec::new();
        self.ranges.clear();
        self.tail.clear();
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        self.clear();
    }
}

fn four(b: &[u8]) -> [u8; 4] {
    [b[0], b[1], b[2], b[3]]
}

fn eight(b: &[u8]) -> [u8; 8] {
    [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

fn change_type_code(t: ChangeType) -> u8 {
    match t {
        ChangeType::Insert => 0,
        ChangeType::Update => 1,
        ChangeType::Delete => 2,
        ChangeType::Snapshot => 3,
        ChangeType::Truncate => 4,
    }
}

fn change_type_of(code: u8) -> ChangeType {
    match code {
        0 => ChangeType::Insert,
        1 => ChangeType::Update,
        2 => ChangeType::Delete,
        3 => ChangeType::Snapshot,
        _ => ChangeType::Truncate,
    }
}

/// Reads a row [`Spill::push`] wrote (the bytes after its length). The bytes were
/// written by this process, so their layout is known to hold.
fn decode_row(b: &[u8]) -> SpilledRow<'_> {
    let meta = RowMeta {
        change_type: change_type_of(b[0]),
        lsn: i64::from_le_bytes(eight(&b[1..])),
        seq: i64::from_le_bytes(eight(&b[9..])),
        commit_us: i64::from_le_bytes(eight(&b[17..])),
    };
    let schema = u32::from_le_bytes(four(&b[25..]));
    let count = u32::from_le_bytes(four(&b[29..]));
    let values = (count != u32::MAX).then_some(SpilledValues {
        bytes: b,
        pos: 33,
        left: count as usize,
    });
    SpilledRow {
        meta,
        schema,
        values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(seq: i64) -> RowMeta {
        RowMeta {
            change_type: ChangeType::Update,
            lsn: 7,
            seq,
            commit_us: 9,
        }
    }

    /// Reads back every part's rows as (seq, first value).
    fn read_all(spill: &Spill) -> Vec<(u32, Vec<(i64, String)>)> {
        spill
            .parts()
            .into_iter()
            .map(|p| {
                let mut rows = Vec::new();
                spill
                    .for_each(p, |r| -> Result<(), SpillError> {
                        let values: Option<Vec<Datum<'_>>> = r.values.map(Iterator::collect);
                        let v = match values.as_deref() {
                            Some([Datum::Text(t), Datum::Null, Datum::Unchanged]) => {
                                String::from_utf8_lossy(t).to_string()
                            }
                            Some(other) => format!("{other:?}"),
                            None => "truncate".into(),
                        };
                        rows.push((r.meta.seq, v));
                        Ok(())
                    })
                    .expect("read");
                (p, rows)
            })
            .collect()
    }

    #[test]
    fn rows_come_back_grouped_by_part_in_arrival_order_across_runs() {
        let dir = tempfile::tempdir().expect("dir");
        // A budget far below the data: many runs.
        let mut spill = Spill::new(dir.path(), 0);
        spill.budget = 300;
        let parts = 7u32;
        for i in 0..500i64 {
            let part = ((i * 13) % i64::from(parts)) as u32;
            let text = format!("v{i}");
            let values = [Datum::Text(text.as_bytes()), Datum::Null, Datum::Unchanged];
            spill
                .push(part, 0, &meta(i), Some(values.into_iter()))
                .expect("push");
        }
        spill
            .push(3, 1, &meta(1000), None::<std::iter::Empty<Datum<'_>>>)
            .expect("push");
        assert!(spill.runs.len() > 10, "{} runs", spill.runs.len());
        spill.seal(usize::MAX).expect("seal");
        let all = read_all(&spill);
        assert_eq!(all.len(), parts as usize);
        let mut total = 0;
        for (part, rows) in &all {
            let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let mut sorted = seqs.clone();
            sorted.sort();
            assert_eq!(seqs, sorted, "part {part} out of order");
            for (seq, v) in rows {
                if *seq == 1000 {
                    assert_eq!((*part, v.as_str()), (3, "truncate"));
                } else {
                    assert_eq!(((seq * 13) % 7) as u32, *part);
                    assert_eq!(v, &format!("v{seq}"));
                }
            }
            total += rows.len();
        }
        assert_eq!(total, 501);
        let runs: Vec<PathBuf> = spill.runs.iter().map(|(p, _)| p.clone()).collect();
        drop(spill);
        assert!(runs.iter().all(|r| !r.exists()), "run files are removed");
    }

    #[test]
    fn ranges_larger_than_a_read_and_rows_larger_than_a_read_come_back_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let mut spill = Spill::new(dir.path(), 64 << 20);
        let big = vec![b'x'; (READ_CHUNK as usize) + 12_345];
        let mut sent = Vec::new();
        for i in 0..30_000i64 {
            let text = if i == 777 {
                String::from_utf8(big.clone()).expect("utf8")
            } else {
                format!("{i:0>300}")
            };
            let values = [Datum::Text(text.as_bytes()), Datum::Null, Datum::Unchanged];
            spill
                .push(0, 0, &meta(i), Some(values.into_iter()))
                .expect("push");
            sent.push(text);
        }
        // Everything goes to one run: 30k rows of 300 bytes and one of over 4 MB.
        spill.seal(0).expect("seal");
        assert_eq!(spill.runs.len(), 1);
        assert!(spill.spilled_bytes() > 2 * READ_CHUNK);
        let got = read_all(&spill);
        assert_eq!(got.len(), 1);
        let texts: Vec<&String> = got[0].1.iter().map(|(_, v)| v).collect();
        assert_eq!(texts.len(), sent.len());
        for (i, (g, s)) in texts.iter().zip(&sent).enumerate() {
            assert!(*g == s, "row {i} differs");
        }
    }

    #[test]
    fn rows_that_fit_the_budget_never_touch_disk() {
        let dir = tempfile::tempdir().expect("dir");
        let mut spill = Spill::new(dir.path(), 64 << 20);
        for i in 0..100i64 {
            let values = [Datum::Text(b"x"), Datum::Null, Datum::Unchanged];
            spill
                .push((i % 3) as u32, 0, &meta(i), Some(values.into_iter()))
                .expect("push");
        }
        spill.seal(usize::MAX).expect("seal");
        assert_eq!(spill.spilled_bytes(), 0);
        assert_eq!(
            read_all(&spill).iter().map(|p| p.1.len()).sum::<usize>(),
            100
        );
    }
}
