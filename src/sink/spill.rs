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
//! runs cost one sequential write and read of the rows on local disk.
//!
//! A row is kept compact, since every byte of it is copied up to four times (arena, run
//! file write, read back): a byte for the change type, the metadata as varint
//! differences from the first row's (a snapshot's rows share LSN and commit time, and
//! their `change_seq`s count up), then per value one varint holding tag and length
//! before the value's wire bytes. In a run file each row is preceded by its length.

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
        let head = varint(b, &mut self.pos);
        Some(match head & 3 {
            TAG_NULL => Datum::Null,
            TAG_UNCHANGED => Datum::Unchanged,
            tag => {
                let len = (head >> 2) as usize;
                let v = &b[self.pos..self.pos + len];
                self.pos += len;
                if tag == TAG_TEXT {
                    Datum::Text(v)
                } else {
                    Datum::Binary(v)
                }
            }
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
    /// Rows back to back, in arrival order: a row ends where the next begins.
    arena: Vec<u8>,
    /// `(part, offset into arena)` per row, in arrival order.
    index: Vec<(u32, u32)>,
    /// After [`seal`](Self::seal): the rows still in memory, as positions in `index`
    /// grouped by part (arrival order within a part).
    order: Vec<u32>,
    /// The first row's metadata: every row's is stored as its difference from it.
    base: Option<RowMeta>,
    /// Run files, with a handle each for reading them back (positioned reads, so the
    /// encoder threads share it).
    runs: Vec<(PathBuf, Option<File>)>,
    /// Per part, its ranges in the run files, oldest first.
    ranges: Vec<Vec<Range>>,
    /// Per part, the rows in the arena once sorted: `order[start..end]`.
    tail: Vec<(usize, usize)>,
    /// Rows per part.
    counts: Vec<u32>,
    spilled_bytes: u64,
    /// [`seal`](Self::seal) was called: no more rows come.
    sealed: bool,
}

impl Spill {
    /// An empty spill writing run files into `dir`, holding up to `budget` bytes of rows.
    pub fn new(dir: &Path, budget: usize) -> Self {
        Self {
            dir: dir.to_path_buf(),
            budget: budget.max(1 << 20),
            arena: Vec::new(),
            index: Vec::new(),
            order: Vec::new(),
            base: None,
            runs: Vec::new(),
            ranges: Vec::new(),
            tail: Vec::new(),
            counts: Vec::new(),
            spilled_bytes: 0,
            sealed: false,
        }
    }

    /// Bytes of rows written to run files so far.
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled_bytes
    }

    /// Bytes held in memory.
    pub fn memory(&self) -> usize {
        self.arena.len() + self.index.len() * INDEX_BYTES + self.order.len() * 4
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
        let base = *self.base.get_or_insert(*meta);
        let a = &mut self.arena;
        let code = change_type_code(meta.change_type);
        a.push(if values.is_none() {
            code | NO_VALUES
        } else {
            code
        });
        put_varint(a, zigzag(meta.lsn.wrapping_sub(base.lsn)));
        put_varint(a, zigzag(meta.seq.wrapping_sub(base.seq)));
        put_varint(a, zigzag(meta.commit_us.wrapping_sub(base.commit_us)));
        put_varint(a, u64::from(schema));
        if let Some(values) = values {
            // The count is only known at the end: values go first into the arena after a
            // one-byte count, which is widened (the values moved) only past 127 columns.
            let count_at = a.len();
            a.push(0);
            let mut count = 0u64;
            for d in values {
                count += 1;
                match d {
                    Datum::Null => a.push(TAG_NULL as u8),
                    Datum::Unchanged => a.push(TAG_UNCHANGED as u8),
                    Datum::Text(b) => {
                        put_varint(a, (b.len() as u64) << 2 | TAG_TEXT);
                        a.extend_from_slice(b);
                    }
                    Datum::Binary(b) => {
                        put_varint(a, (b.len() as u64) << 2 | TAG_BINARY);
                        a.extend_from_slice(b);
                    }
                }
            }
            if count < 0x80 {
                a[count_at] = count as u8;
            } else {
                let mut head = Vec::with_capacity(10);
                put_varint(&mut head, count);
                a.splice(count_at..count_at + 1, head);
            }
        }
        Ok(())
    }

    /// The arena's rows grouped by part, keeping arrival order within a part (counting
    /// sort): positions in `index`, and per part its range of them.
    fn sort_index(&self) -> (Vec<u32>, Vec<(usize, usize)>) {
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
        let mut order = vec![0u32; self.index.len()];
        for (i, (p, _)) in self.index.iter().enumerate() {
            let slot = &mut next[*p as usize];
            order[*slot] = i as u32;
            *slot += 1;
        }
        (order, bounds.windows(2).map(|w| (w[0], w[1])).collect())
    }

    /// The bytes of the row at position `i` of the index.
    fn row_bytes(&self, i: u32) -> &[u8] {
        let i = i as usize;
        let start = self.index[i].1 as usize;
        let end = self
            .index
            .get(i + 1)
            .map_or(self.arena.len(), |(_, at)| *at as usize);
        &self.arena[start..end]
    }

    /// Writes the arena's rows to a new run file, grouped by part.
    fn spill(&mut self) -> Result<(), SpillError> {
        if self.index.is_empty() {
            return Ok(());
        }
        let (order, groups) = self.sort_index();
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
        let mut len = Vec::with_capacity(10);
        for (part, (start, end)) in groups.into_iter().enumerate() {
            if start == end {
                continue;
            }
            let first = offset;
            for i in &order[start..end] {
                let row = self.row_bytes(*i);
                len.clear();
                put_varint(&mut len, row.len() as u64);
                out.write_all(&len).map_err(err)?;
                out.write_all(row).map_err(err)?;
                offset += (len.len() + row.len()) as u64;
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
    /// Sealing again does nothing.
    pub fn seal(&mut self, keep: usize) -> Result<(), SpillError> {
        if self.sealed {
            return Ok(());
        }
        self.sealed = true;
        if self.memory() > keep {
            self.spill()?;
        }
        let (order, tail) = self.sort_index();
        self.order = order;
        self.tail = tail;
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

    /// Bytes of a part's rows, after [`seal`](Self::seal): their wire values plus a few
    /// bytes of framing per row, from where they are (run files and memory).
    pub fn bytes(&self, part: u32) -> u64 {
        let spilled: u64 = self
            .ranges
            .get(part as usize)
            .into_iter()
            .flatten()
            .map(|r| r.len)
            .sum();
        let kept = self.tail.get(part as usize).map_or(0, |(start, end)| {
            self.order[*start..*end]
                .iter()
                .map(|i| self.row_bytes(*i).len() as u64)
                .sum()
        });
        spilled + kept
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
        let Some(base) = self.base else {
            return Ok(());
        };
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
                while let Some((body, len)) = length_prefixed(&buf[pos..want]) {
                    f(decode_row(&buf[pos + body..pos + body + len], base))?;
                    pos += body + len;
                }
                if pos == 0 {
                    // One row bigger than the piece: read exactly it.
                    let mut head = [0u8; 10];
                    let n = head.len().min((end - at) as usize);
                    file.read_exact_at(&mut head[..n], at).map_err(err)?;
                    let mut body = 0;
                    let len = varint(&head[..n], &mut body) as usize;
                    buf.resize(len, 0);
                    file.read_exact_at(&mut buf, at + body as u64)
                        .map_err(err)?;
                    f(decode_row(&buf, base))?;
                    pos = body + len;
                }
                at += pos as u64;
            }
        }
        if let Some((start, end)) = self.tail.get(part as usize) {
            for i in &self.order[*start..*end] {
                f(decode_row(self.row_bytes(*i), base))?;
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
        self.order = Vec::new();
        self.ranges.clear();
        self.tail.clear();
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Value tags, in the low two bits of a value's varint (its length above them).
const TAG_NULL: u64 = 0;
const TAG_TEXT: u64 = 1;
const TAG_BINARY: u64 = 2;
const TAG_UNCHANGED: u64 = 3;

/// Set in a row's first byte for a TRUNCATE marker (no values follow).
const NO_VALUES: u8 = 0x80;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint [`put_varint`] wrote at `*pos` and moves past it.
fn varint(b: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*pos];
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return v;
        }
        shift += 7;
    }
}

/// The row at the start of `b` in a run file: where its body starts and its length;
/// `None` when `b` does not hold all of it.
fn length_prefixed(b: &[u8]) -> Option<(usize, usize)> {
    let mut v = 0usize;
    for (i, byte) in b.iter().take(10).enumerate() {
        v |= usize::from(byte & 0x7f) << (7 * i);
        if *byte < 0x80 {
            let body = i + 1;
            return (b.len() - body >= v).then_some((body, v));
        }
    }
    None
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
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

/// Reads a row [`Spill::push`] wrote, whose metadata is relative to `base`. The bytes
/// were written by this process, so their layout is known to hold.
fn decode_row(b: &[u8], base: RowMeta) -> SpilledRow<'_> {
    let mut pos = 1;
    let meta = RowMeta {
        change_type: change_type_of(b[0] & !NO_VALUES),
        lsn: base.lsn.wrapping_add(unzigzag(varint(b, &mut pos))),
        seq: base.seq.wrapping_add(unzigzag(varint(b, &mut pos))),
        commit_us: base.commit_us.wrapping_add(unzigzag(varint(b, &mut pos))),
    };
    let schema = varint(b, &mut pos) as u32;
    let values = (b[0] & NO_VALUES == 0).then(|| {
        let left = varint(b, &mut pos) as usize;
        SpilledValues {
            bytes: b,
            pos,
            left,
        }
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

    #[test]
    fn metadata_and_values_of_every_shape_come_back_exactly() {
        let dir = tempfile::tempdir().expect("dir");
        let mut spill = Spill::new(dir.path(), 0);
        spill.budget = 4096;
        // Deltas from the first row in both directions and at the type's ends; value
        // lengths on both sides of each varint byte boundary; rows of 200 columns
        // (the count takes two bytes).
        let metas = [
            (ChangeType::Snapshot, 1_000, 5, 1_700_000_000_000_000),
            (ChangeType::Truncate, 1_000, -1, 1_700_000_000_000_000),
            (ChangeType::Insert, i64::MAX, i64::MAX, i64::MIN),
            (ChangeType::Delete, 0, i64::MIN, 0),
            (ChangeType::Update, 999, 4, 1_699_999_999_999_999),
        ];
        let lens = [0usize, 1, 31, 32, 127, 128, 16_383, 16_384, 70_000];
        let mut sent = Vec::new();
        for round in 0..6 {
            for (k, (t, lsn, seq, commit_us)) in metas.iter().enumerate() {
                let meta = RowMeta {
                    change_type: *t,
                    lsn: *lsn,
                    seq: *seq,
                    commit_us: *commit_us,
                };
                let columns = if k % 2 == 0 { 3 } else { 200 };
                let owned: Vec<Vec<u8>> = (0..columns)
                    .map(|c| vec![(c + round) as u8; lens[(c + k + round) % lens.len()]])
                    .collect();
                let values: Vec<Datum<'_>> = owned
                    .iter()
                    .enumerate()
                    .map(|(c, v)| match (c + k) % 4 {
                        0 => Datum::Null,
                        1 => Datum::Text(v),
                        2 => Datum::Binary(v),
                        _ => Datum::Unchanged,
                    })
                    .collect();
                let part = (round % 2) as u32;
                let truncate = *t == ChangeType::Truncate;
                let values_in = (!truncate).then(|| values.clone().into_iter());
                spill.push(part, k as u32, &meta, values_in).expect("push");
                let shown = (!truncate).then(|| format!("{values:?}"));
                sent.push((part, format!("{meta:?}"), k as u32, shown));
            }
        }
        assert!(spill.runs.len() > 2, "{} runs", spill.runs.len());
        spill.seal(usize::MAX).expect("seal");
        let mut got = Vec::new();
        for part in spill.parts() {
            spill
                .for_each(part, |r| -> Result<(), SpillError> {
                    let values = r.values.map(|v| format!("{:?}", v.collect::<Vec<_>>()));
                    got.push((part, format!("{:?}", r.meta), r.schema, values));
                    Ok(())
                })
                .expect("read");
        }
        sent.sort_by_key(|s| s.0);
        assert_eq!(got.len(), sent.len());
        for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
            assert!(g == s, "row {i}: {g:?} != {s:?}");
        }
    }
}
