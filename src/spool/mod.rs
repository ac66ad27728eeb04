//! The spool: durable, LSN-ranged segments of changes waiting for the next flush.
//!
//! ```text
//!  replication frames ──▶ SpoolWriter ──▶ .open.seg (buffered, not durable)
//!                                            │ seal(): fsync, rename, fsync dir
//!                                            ▼
//!                                  <start>-<end>.seg   durable: the slot may be acked to <end>
//!                                            │
//!  flush ◀── SegmentReader (records in commit order) ◀┘   GC after the flush commits
//! ```
//!
//! Contract: a segment becomes visible under its final name only after its bytes are
//! on disk, and it holds whole transactions only; so the end LSN of the newest sealed
//! segment is a safe position to acknowledge to the slot. A crash loses at most the
//! open segment, whose transactions the slot still retains and sends again.

mod proto {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/slot2lake.spool.v1.rs"));
}

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use prost::Message;

pub use proto::spool_record::Record;
pub use proto::{Begin, Change, Commit, SegmentHeader, SpoolRecord};

use crate::lsn::Lsn;
use crate::retry::{Action, Classify};

mod manifest;

pub use manifest::Manifest;

/// Version written in every segment header.
pub const FORMAT_VERSION: u32 = 1;
const OPEN_NAME: &str = ".open.seg";
const FRAME_HEADER: usize = 8;
const READ_CHUNK: usize = 1 << 20;
/// Microseconds from 1970-01-01 to 2000-01-01 (pgoutput timestamps count from 2000).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A spool failure.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Reading or writing the spool directory failed (full disk, permissions).
    #[error("spool {path}: {source}")]
    Io {
        /// File or directory concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A sealed segment does not read back as written.
    #[error("spool segment {path} is corrupt: {detail}; the slot was acknowledged past its changes, so they cannot be read from PostgreSQL again: restore the segment from the lake's copy (_slot2lake/<slot>/spool/, with spool.location = \"output\"), or move it aside and run `slot2lake backfill --table T` for every table to take new snapshots")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Sealed segments the manifest lists are gone from the spool directory.
    #[error("spool segment(s) {} are missing from {dir} (changes committed from {from} to {to}): the slot was acknowledged past them, so they cannot be read from PostgreSQL again; the loss is recorded and `slot2lake status` shows it until every table is backfilled (`slot2lake backfill --table T`); the next run goes on", segments.join(", "))]
    Missing {
        /// The spool directory.
        dir: String,
        /// Their names.
        segments: Vec<String>,
        /// Start of the first.
        from: Lsn,
        /// End of the last.
        to: Lsn,
    },
    /// The spool's mirror in the lake's store failed.
    #[error("spool mirror: {0}")]
    Mirror(#[source] crate::lake::LakeError),
    /// A replication message too short for its type.
    #[error("malformed pgoutput {0} message")]
    Malformed(char),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A sealed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Resume position before its first record.
    pub start: Lsn,
    /// End LSN of its last commit.
    pub end: Lsn,
    /// Its file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

impl Segment {
    /// Its file name, which is also its name in the mirror.
    pub fn name(&self) -> String {
        segment_name(self.start, self.end)
    }
}

fn segment_name(start: Lsn, end: Lsn) -> String {
    format!("{:016X}-{:016X}.seg", start.0, end.0)
}

fn parse_segment_name(name: &str) -> Option<(Lsn, Lsn)> {
    let stem = name.strip_suffix(".seg")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((
        Lsn(u64::from_str_radix(a, 16).ok()?),
        Lsn(u64::from_str_radix(b, 16).ok()?),
    ))
}

/// A spool directory, optionally mirrored to a prefix of the lake's store.
///
/// With a mirror, a sealed segment counts as durable only once it is uploaded
/// ([`Spool::make_durable`]); the local directory is then a working copy that a new
/// machine rebuilds from the mirror ([`Spool::open_mirrored`]).
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    mirror: Option<Mirror>,
    manifest: Manifest,
}

#[derive(Debug, Clone)]
struct Mirror {
    lake: crate::lake::Lake,
    prefix: String,
    uploaded: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Spool {
    /// Opens (creating) a spool directory.
    ///
    /// An unsealed `.open.seg` a crash left is not a segment: readers ignore it and the
    /// next writer replaces it (its transactions are sent again by the slot). It is not
    /// removed here, because another process (a `backfill` next to a running consumer)
    /// may open the same spool.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, SpoolError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let manifest = Manifest::new(&dir);
        Ok(Self {
            dir,
            mirror: None,
            manifest,
        })
    }

    /// Opens a spool mirrored to `prefix` in `lake`: segments the mirror has and the
    /// local directory lacks (a new machine, a lost disk) are downloaded first.
    pub async fn open_mirrored(
        dir: impl Into<PathBuf>,
        lake: crate::lake::Lake,
        prefix: String,
    ) -> Result<Self, SpoolError> {
        let mut spool = Self::open(dir)?;
        let local: std::collections::HashSet<String> =
            spool.segments()?.iter().map(Segment::name).collect();
        let mut uploaded = std::collections::HashSet::new();
        for obj in lake.list(&prefix).await.map_err(SpoolError::Mirror)? {
            let key = obj.location.to_string();
            let Some(name) = key.rsplit('/').next().map(str::to_string) else {
                continue;
            };
            if parse_segment_name(&name).is_none() {
                continue;
            }
            if !local.contains(&name) {
                let bytes = lake
                    .get(&key)
                    .await
                    .map_err(SpoolError::Mirror)?
                    .unwrap_or_default();
                let tmp = spool.dir.join(format!(".download-{name}"));
                fs::write(&tmp, &bytes).map_err(io_err(&tmp))?;
                fs::rename(&tmp, spool.dir.join(&name)).map_err(io_err(&spool.dir))?;
                tracing::info!(segment = %name, "spool: restored segment from the mirror");
            }
            uploaded.insert(name);
        }
        spool.mirror = Some(Mirror {
            lake,
            prefix,
            uploaded: std::sync::Arc::new(std::sync::Mutex::new(uploaded)),
        });
        Ok(spool)
    }

    /// Uploads sealed segments the mirror lacks; after this, every sealed segment is
    /// durable and the slot may be acknowledged to its end.
    pub async fn make_durable(&self) -> Result<(), SpoolError> {
        let Some(m) = &self.mirror else { return Ok(()) };
        for seg in self.segments()? {
            let name = seg.name();
            let done = m
                .uploaded
                .lock()
                .map(|u| u.contains(&name))
                .unwrap_or(false);
            if done {
                continue;
            }
            let uploaded = m
                .lake
                .upload_file(&seg.path, &format!("{}/{name}", m.prefix))
                .await;
            match uploaded {
                Ok(_) => {}
                // A flush committed it and removed it meanwhile: nothing left to keep.
                Err(_) if !seg.path.exists() => continue,
                Err(e) => return Err(SpoolError::Mirror(e)),
            }
            if let Ok(mut u) = m.uploaded.lock() {
                u.insert(name);
            }
        }
        Ok(())
    }

    /// Replaces a corrupt local segment with the mirror's copy; `false` when there is no
    /// mirror, the mirror lacks it, or its copy does not read back either.
    pub async fn restore_from_mirror(&self, path: &Path) -> Result<bool, SpoolError> {
        let Some(m) = &self.mirror else {
            return Ok(false);
        };
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Ok(false);
        };
        let Some((start, end)) = parse_segment_name(name) else {
            return Ok(false);
        };
        let key = format!("{}/{name}", m.prefix);
        let Some(bytes) = m.lake.get(&key).await.map_err(SpoolError::Mirror)? else {
            return Ok(false);
        };
        let tmp = self.dir.join(format!(".download-{name}"));
        fs::write(&tmp, &bytes).map_err(io_err(&tmp))?;
        let copy = Segment {
            start,
            end,
            path: tmp.clone(),
            bytes: bytes.len() as u64,
        };
        let mut reader = SegmentReader::open(&copy)?;
        loop {
            match reader.next_record() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(segment = name, error = %e, "the mirror's copy is corrupt too");
                    let _ = fs::remove_file(&tmp);
                    return Ok(false);
                }
            }
        }
        fs::rename(&tmp, self.dir.join(name)).map_err(io_err(&self.dir))?;
        tracing::warn!(
            segment = name,
            "spool: replaced a corrupt segment with the mirror's copy"
        );
        Ok(true)
    }

    /// Deletes flushed segments here and in the mirror.
    pub async fn remove_flushed(&self, lsn: Lsn) -> Result<usize, SpoolError> {
        if let Some(m) = &self.mirror {
            let names: Vec<String> = m
                .uploaded
                .lock()
                .map(|u| u.iter().cloned().collect())
                .unwrap_or_default();
            for name in names {
                if parse_segment_name(&name).is_some_and(|(_, end)| end <= lsn) {
                    m.lake
                        .delete(&format!("{}/{name}", m.prefix))
                        .await
                        .map_err(SpoolError::Mirror)?;
                    if let Ok(mut u) = m.uploaded.lock() {
                        u.remove(&name);
                    }
                }
            }
        }
        self.remove_through(lsn)
    }

    /// Deletes every segment here and in the mirror.
    pub async fn clear(&self) -> Result<usize, SpoolError> {
        self.remove_flushed(Lsn(u64::MAX)).await
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sealed segments, oldest first.
    pub fn segments(&self) -> Result<Vec<Segment>, SpoolError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name();
            let Some((start, end)) = name.to_str().and_then(parse_segment_name) else {
                continue;
            };
            let bytes = entry.metadata().map_err(io_err(&entry.path()))?.len();
            out.push(Segment {
                start,
                end,
                path: entry.path(),
                bytes,
            });
        }
        out.sort_by_key(|s| (s.start, s.end));
        Ok(out)
    }

    /// End of the newest sealed segment: everything before it is durable here.
    pub fn durable_end(&self) -> Result<Option<Lsn>, SpoolError> {
        Ok(self.segments()?.iter().map(|s| s.end).max())
    }

    /// Deletes the segments whose every transaction ends at or before `lsn`.
    pub fn remove_through(&self, lsn: Lsn) -> Result<usize, SpoolError> {
        let gone: Vec<Segment> = self
            .segments()?
            .into_iter()
            .filter(|s| s.end <= lsn)
            .collect();
        // Recorded first: a crash before the deletes leaves segments the log lacks,
        // which are adopted, never segments it lists that are gone.
        self.manifest
            .removed(&gone.iter().map(Segment::name).collect::<Vec<_>>())?;
        for seg in &gone {
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
        }
        if !gone.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(gone.len())
    }

    /// Segments the manifest says were sealed here and that are not on disk (after a
    /// mirrored spool fetched what its mirror has): their changes are lost.
    pub fn missing(&self) -> Result<Vec<String>, SpoolError> {
        let here: std::collections::HashSet<String> =
            self.segments()?.iter().map(Segment::name).collect();
        Ok(self
            .manifest
            .live()?
            .into_iter()
            .filter(|n| !here.contains(n))
            .collect())
    }

    /// The error naming `names` as lost.
    pub fn missing_error(&self, names: &[String]) -> SpoolError {
        let ranges: Vec<(Lsn, Lsn)> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
        SpoolError::Missing {
            dir: self.dir.display().to_string(),
            segments: names.to_vec(),
            from: ranges.iter().map(|r| r.0).min().unwrap_or(Lsn::ZERO),
            to: ranges.iter().map(|r| r.1).max().unwrap_or(Lsn::ZERO),
        }
    }

    /// Stops expecting segments whose loss is on record.
    pub fn forget(&self, names: &[String]) -> Result<(), SpoolError> {
        self.manifest.removed(names)
    }

    /// The manifest (its writer compacts it at start).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// A writer that continues after `resume` (the end of what is already durable).
    pub fn writer(&self, header: SegmentHeader, resume: Lsn, segment_size: u64) -> SpoolWriter {
        SpoolWriter {
            dir: self.dir.clone(),
            header,
            segment_size,
            relations: BTreeMap::new(),
            file: None,
            seg_start: resume,
            last_end: resume,
            pending_begin: None,
            in_txn: false,
            skip_txn: false,
            txn_changes: 0,
            seg_bytes: 0,
            committed_len: 0,
            changes_written: 0,
            txn_first_change: 0,
            sealed: None,
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// What a replication message meant to the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A transaction committed; `end` is its end LSN.
    Committed {
        /// End LSN of the commit record.
        end: Lsn,
        /// Changes it contained (0 for a transaction of messages only).
        changes: u64,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        /// Its prefix.
        prefix: String,
        /// Its content.
        content: Bytes,
    },
    /// Anything else (begin, change, relation, type, origin).
    Other,
}

/// Appends replication messages to the open segment; seals at commit boundaries.
pub struct SpoolWriter {
    dir: PathBuf,
    header: SegmentHeader,
    segment_size: u64,
    relations: BTreeMap<u32, Bytes>,
    file: Option<BufWriter<File>>,
    seg_start: Lsn,
    last_end: Lsn,
    pending_begin: Option<Begin>,
    in_txn: bool,
    skip_txn: bool,
    txn_changes: u64,
    seg_bytes: u64,
    /// Bytes of the open segment up to the end of its last whole transaction.
    committed_len: u64,
    changes_written: u64,
    txn_first_change: u64,
    sealed: Option<Vec<Segment>>,
}

impl SpoolWriter {
    /// Starts keeping the segments this writer seals, for [`SpoolWriter::take_sealed`].
    pub fn keep_sealed(&mut self) {
        self.sealed.get_or_insert_with(Vec::new);
    }

    /// Segments sealed since the last call, oldest first (none unless kept).
    pub fn take_sealed(&mut self) -> Vec<Segment> {
        self.sealed.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// End LSN of the last commit received (durable only once sealed).
    pub fn last_end(&self) -> Lsn {
        self.last_end
    }

    /// Bytes in the open segment.
    pub fn open_bytes(&self) -> u64 {
        self.seg_bytes
    }

    /// Changes written since this writer was created.
    pub fn changes_written(&self) -> u64 {
        self.changes_written
    }

    /// Whether a transaction is being received.
    pub fn in_transaction(&self) -> bool {
        self.in_txn
    }

    /// Takes one pgoutput message (protocol 1 layout) and spools what must be kept.
    pub fn receive(&mut self, msg: Bytes) -> Result<Received, SpoolError> {
        let Some(&tag) = msg.first() else {
            return Ok(Received::Other);
        };
        match tag {
            b'B' => {
                let commit_lsn = Lsn(be_u64(&msg, 1).ok_or(SpoolError::Malformed('B'))?);
                let ts = be_i64(&msg, 9).ok_or(SpoolError::Malformed('B'))?;
                let xid = be_u32(&msg, 17).ok_or(SpoolError::Malformed('B'))?;
                self.in_txn = true;
                self.txn_changes = 0;
                self.txn_first_change = self.changes_written;
                // A transaction that ended before the resume point is already durable.
                self.skip_txn = commit_lsn < self.last_end;
                self.pending_begin = Some(Begin {
                    commit_lsn: commit_lsn.0,
                    commit_time_us: ts.saturating_add(PG_EPOCH_MICROS),
                    xid,
                });
                Ok(Received::Other)
            }
            b'C' => {
                let commit_lsn = be_u64(&msg, 2).ok_or(SpoolError::Malformed('C'))?;
                let end = Lsn(be_u64(&msg, 10).ok_or(SpoolError::Malformed('C'))?);
                let ts = be_i64(&msg, 18).ok_or(SpoolError::Malformed('C'))?;
                let changes = self.txn_changes;
                if self.pending_begin.take().is_none() && !self.skip_txn {
                    self.write(Record::Commit(Commit {
                        commit_lsn,
                        end_lsn: end.0,
                        commit_time_us: ts.saturating_add(PG_EPOCH_MICROS),
                    }))?;
                }
                self.in_txn = false;
                self.committed_len = self.seg_bytes;
                if !self.skip_txn && end > self.last_end {
                    self.last_end = end;
                }
                self.skip_txn = false;
                if self.seg_bytes >= self.segment_size {
                    self.seal()?;
                }
                Ok(Received::Committed { end, changes })
            }
            b'R' => {
                let id = be_u32(&msg, 1).ok_or(SpoolError::Malformed('R'))?;
                self.relations.insert(id, msg.clone());
                if self.file.is_some() {
                    self.write(Record::Relation(proto::Relation { pgoutput: msg }))?;
                }
                Ok(Received::Other)
            }
            b'I' | b'U' | b'D' | b'T' => {
                if self.skip_txn {
                    return Ok(Received::Other);
                }
                if let Some(begin) = self.pending_begin.take() {
                    self.write(Record::Begin(begin))?;
                }
                self.txn_changes += 1;
                self.changes_written += 1;
                self.write(Record::Change(Change { pgoutput: msg }))?;
                if self.txn_changes == 2 {
                    crate::failpoint::hit(crate::failpoint::MID_SPOOL_WRITE);
                }
                Ok(Received::Other)
            }
            b'M' => parse_message(&msg).ok_or(SpoolError::Malformed('M')),
            _ => Ok(Received::Other),
        }
    }

    fn write(&mut self, record: Record) -> Result<(), SpoolError> {
        if self.file.is_none() {
            self.start_segment()?;
        }
        self.write_frame(&SpoolRecord {
            record: Some(record),
        })
    }

    fn start_segment(&mut self) -> Result<(), SpoolError> {
        let path = self.dir.join(OPEN_NAME);
        let file = File::create(&path).map_err(io_err(&path))?;
        self.file = Some(BufWriter::with_capacity(1 << 20, file));
        self.seg_start = self.last_end;
        self.seg_bytes = 0;
        self.committed_len = 0;
        self.write_frame(&SpoolRecord {
            record: Some(Record::Header(self.header.clone())),
        })?;
        let relations: Vec<Bytes> = self.relations.values().cloned().collect();
        for pgoutput in relations {
            self.write_frame(&SpoolRecord {
                record: Some(Record::Relation(proto::Relation { pgoutput })),
            })?;
        }
        self.committed_len = self.seg_bytes;
        Ok(())
    }

    fn write_frame(&mut self, rec: &SpoolRecord) -> Result<(), SpoolError> {
        let payload = rec.encode_to_vec();
        let path = self.dir.join(OPEN_NAME);
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let len = u32::try_from(payload.len()).map_err(|_| SpoolError::Malformed('?'))?;
        let crc = crc32fast::hash(&payload);
        file.write_all(&len.to_le_bytes())
            .and_then(|()| file.write_all(&crc.to_le_bytes()))
            .and_then(|()| file.write_all(&payload))
            .map_err(io_err(&path))?;
        self.seg_bytes += (FRAME_HEADER + payload.len()) as u64;
        if !self.in_txn {
            self.committed_len = self.seg_bytes;
        }
        Ok(())
    }

    /// Drops what was received of an unfinished transaction (the connection broke
    /// mid-transaction); the server sends the whole transaction again after reconnecting.
    pub fn discard_partial(&mut self) -> Result<(), SpoolError> {
        if !self.in_txn {
            return Ok(());
        }
        self.in_txn = false;
        self.skip_txn = false;
        self.pending_begin = None;
        self.changes_written = self.txn_first_change;
        self.txn_changes = 0;
        let path = self.dir.join(OPEN_NAME);
        if let Some(file) = self.file.as_mut() {
            use std::io::{Seek, SeekFrom};
            file.flush().map_err(io_err(&path))?;
            let f = file.get_mut();
            f.set_len(self.committed_len).map_err(io_err(&path))?;
            f.seek(SeekFrom::Start(self.committed_len))
                .map_err(io_err(&path))?;
            self.seg_bytes = self.committed_len;
        }
        Ok(())
    }

    /// Makes everything received up to the last commit durable; returns that commit's end.
    ///
    /// Call between transactions only (the spool keeps whole transactions per segment).
    /// Returns the last commit's end even when nothing had to be written, so empty
    /// transactions (heartbeats) still let the slot advance.
    pub fn seal(&mut self) -> Result<Lsn, SpoolError> {
        if self.in_txn {
            return Ok(self.seg_start);
        }
        let Some(file) = self.file.take() else {
            return Ok(self.last_end);
        };
        let open = self.dir.join(OPEN_NAME);
        let file = file
            .into_inner()
            .map_err(|e| io_err(&open)(e.into_error()))?;
        file.sync_all().map_err(io_err(&open))?;
        drop(file);
        let sealed = self.dir.join(segment_name(self.seg_start, self.last_end));
        fs::rename(&open, &sealed).map_err(io_err(&sealed))?;
        sync_dir(&self.dir)?;
        Manifest::new(&self.dir).sealed(&[segment_name(self.seg_start, self.last_end)])?;
        tracing::debug!(segment = %sealed.display(), bytes = self.seg_bytes, "sealed spool segment");
        if let Some(kept) = &mut self.sealed {
            kept.push(Segment {
                start: self.seg_start,
                end: self.last_end,
                path: sealed,
                bytes: self.seg_bytes,
            });
        }
        self.seg_start = self.last_end;
        self.seg_bytes = 0;
        Ok(self.last_end)
    }
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
fn be_i64(b: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// 'M': flags u8, lsn u64, prefix cstring, length u32, content.
fn parse_message(msg: &Bytes) -> Option<Received> {
    let rest = msg.get(10..)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let prefix = String::from_utf8_lossy(&rest[..nul]).into_owned();
    let len = usize::try_from(be_u32(rest, nul + 1)?).ok()?;
    let start = 10 + nul + 5;
    let content = msg.slice(start..start.checked_add(len)?.min(msg.len()));
    Some(Received::Message { prefix, content })
}

/// Reads a sealed segment's records in order.
pub struct SegmentReader {
    path: PathBuf,
    file: File,
    buf: BytesMut,
    eof: bool,
}

impl SegmentReader {
    /// Opens a sealed segment.
    pub fn open(segment: &Segment) -> Result<Self, SpoolError> {
        let file = File::open(&segment.path).map_err(io_err(&segment.path))?;
        Ok(Self {
            path: segment.path.clone(),
            file,
            buf: BytesMut::new(),
            eof: false,
        })
    }

    fn fill(&mut self, need: usize) -> Result<bool, SpoolError> {
        while self.buf.len() < need && !self.eof {
            let old = self.buf.len();
            let want = READ_CHUNK.max(need - old);
            self.buf.resize(old + want, 0);
            let n = self
                .file
                .read(&mut self.buf[old..])
                .map_err(io_err(&self.path))?;
            self.buf.truncate(old + n);
            self.eof = n == 0;
        }
        Ok(self.buf.len() >= need)
    }

    fn corrupt(&self, detail: &str) -> SpoolError {
        SpoolError::Corrupt {
            path: self.path.clone(),
            detail: detail.to_string(),
        }
    }

    /// The next record, or `None` at the end of the segment.
    pub fn next_record(&mut self) -> Result<Option<Record>, SpoolError> {
        if !self.fill(FRAME_HEADER)? {
            return if self.buf.is_empty() {
                Ok(None)
            } else {
                Err(self.corrupt("truncated frame header"))
            };
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        let crc = u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        if !self.fill(FRAME_HEADER + len)? {
            return Err(self.corrupt("truncated frame"));
        }
        let _ = self.buf.split_to(FRAME_HEADER);
        let payload = self.buf.split_to(len).freeze();
        if crc32fast::hash(&payload) != crc {
            return Err(self.corrupt("checksum mismatch"));
        }
        let rec = SpoolRecord::decode(payload).map_err(|e| self.corrupt(&e.to_string()))?;
        rec.record
            .map(Some)
            .ok_or_else(|| self.corrupt("empty record"))
    }
}

impl Classify for SpoolError {
    fn action(&self) -> Action {
        match self {
            // The mirror lives in the lake's store: an S3 outage.
            SpoolError::Mirror(e) => e.action(),
            // A failed fsync of the local spool cannot be trusted on retry.
            SpoolError::Io { .. }
            | SpoolError::Corrupt { .. }
            | SpoolError::Missing { .. }
            | SpoolError::Malformed(_) => Action::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(commit_lsn: u64) -> Bytes {
        let mut v = vec![b'B'];
        v.extend_from_slice(&commit_lsn.to_be_bytes());
        v.extend_from_slice(&0i64.to_be_bytes());
        v.extend_from_slice(&7u32.to_be_bytes());
        v.into()
    }

    fn commit(commit_lsn: u64, end: u64) -> Bytes {
        let mut v = vec![b'C', 0];
        v.extend_from_slice(&commit_lsn.to_be_bytes());
        v.extend_from_slice(&end.to_be_bytes());
        v.extend_from_slice(&0i64.to_be_bytes());
        v.into()
    }

    fn header() -> SegmentHeader {
        SegmentHeader {
            format_version: FORMAT_VERSION,
            slot: "s".into(),
            protocol_version: 1,
            binary: true,
        }
    }

    #[test]
    fn seals_whole_transactions_and_skips_replayed_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let mut w = spool.writer(header(), Lsn(0x100), 1 << 20);
        w.receive(Bytes::from_static(b"R\0\0\0\x01rest"))
            .expect("rel");
        w.receive(begin(0x200)).expect("b");
        w.receive(Bytes::from_static(b"I\0\0\0\x01N\0\0"))
            .expect("i");
        assert_eq!(w.seal().expect("seal mid-txn is a no-op"), Lsn(0x100));
        assert_eq!(
            w.receive(commit(0x200, 0x210)).expect("c"),
            Received::Committed {
                end: Lsn(0x210),
                changes: 1
            }
        );
        assert_eq!(w.seal().expect("seal"), Lsn(0x210));
        // The same transaction again (a reconnect replays from the slot): skipped.
        w.receive(begin(0x200)).expect("b");
        w.receive(Bytes::from_static(b"I\0\0\0\x01N\0\0"))
            .expect("i");
        w.receive(commit(0x200, 0x210)).expect("c");
        assert_eq!(w.seal().expect("seal"), Lsn(0x210));

        let segs = spool.segments().expect("list");
        assert_eq!(segs.len(), 1);
        assert_eq!((segs[0].start, segs[0].end), (Lsn(0x100), Lsn(0x210)));
        let mut r = SegmentReader::open(&segs[0]).expect("read");
        let mut kinds = vec![];
        while let Some(rec) = r.next_record().expect("record") {
            kinds.push(match rec {
                Record::Header(_) => 'H',
                Record::Relation(_) => 'R',
                Record::Begin(_) => 'B',
                Record::Change(_) => 'I',
                Record::Commit(_) => 'C',
            });
        }
        assert_eq!(kinds, vec!['H', 'R', 'B', 'I', 'C']);
        assert_eq!(spool.remove_through(Lsn(0x210)).expect("gc"), 1);
    }

    #[test]
    fn a_broken_transaction_is_discarded_and_received_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let mut w = spool.writer(header(), Lsn(0), 1 << 20);
        w.receive(begin(0x10)).expect("b");
        w.receive(Bytes::from_static(b"I\0\0\0\x01N\0\0"))
            .expect("i");
        w.receive(commit(0x10, 0x20)).expect("c");
        w.receive(begin(0x30)).expect("b");
        w.receive(Bytes::from_static(b"I\0\0\0\x01N\0\0"))
            .expect("i");
        w.discard_partial().expect("discard");
        assert_eq!(w.changes_written(), 1);
        // The server resends the transaction in full.
        w.receive(begin(0x30)).expect("b");
        w.receive(Bytes::from_static(b"I\0\0\0\x01N\0\0"))
            .expect("i");
        w.receive(Bytes::from_static(b"D\0\0\0\x01K\0\0"))
            .expect("d");
        w.receive(commit(0x30, 0x40)).expect("c");
        assert_eq!(w.seal().expect("seal"), Lsn(0x40));
        let seg = spool.segments().expect("list").remove(0);
        let mut r = SegmentReader::open(&seg).expect("open");
        let mut kinds = String::new();
        while let Some(rec) = r.next_record().expect("record") {
            kinds.push(match rec {
                Record::Header(_) => 'H',
                Record::Relation(_) => 'R',
                Record::Begin(_) => 'B',
                Record::Change(_) => 'X',
                Record::Commit(_) => 'C',
            });
        }
        assert_eq!(kinds, "HBXCBXXC");
    }

    #[test]
    fn detects_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let mut w = spool.writer(header(), Lsn(0), 1 << 20);
        w.receive(begin(0x10)).expect("b");
        w.receive(Bytes::from_static(b"I\0\0\0\x01N\0\0"))
            .expect("i");
        w.receive(commit(0x10, 0x20)).expect("c");
        w.seal().expect("seal");
        let seg = spool.segments().expect("list").remove(0);
        let mut bytes = fs::read(&seg.path).expect("read");
        let last = bytes.len() - 3;
        bytes[last] ^= 0xFF;
        fs::write(&seg.path, bytes).expect("write");
        let mut r = SegmentReader::open(&seg).expect("open");
        let err = std::iter::from_fn(|| r.next_record().transpose()).find_map(Result::err);
        assert!(matches!(err, Some(SpoolError::Corrupt { .. })));
    }
}
