//! The partitioned Parquet writer: rows → one file per table partition, rolled over at
//! `max_file_size`, with bounded memory and deterministic file names.
//!
//! ```text
//!  append(row) ─▶ RowBatch of its (table, partition) ─▶ every 8192 rows: ArrowWriter
//!                                                          │ (row group in memory)
//!               memory over limit: flush the biggest row group to its temp file
//!               file over max_file_size, evicted (max_open_files) or finish():
//!                   close ─▶ Lake::publish (rename / upload; an existing name is kept)
//! ```
//!
//! Which rows land in which file depends only on the input order and on sizes measured
//! from the input (wire bytes), never on encoder output, so a retried flush over the
//! same input produces the same files under the same names; files that already exist
//! are skipped without being encoded again.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as Codec, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use super::lake::{Lake, LakeError, Published};
use super::partition::{FileName, PartitionKey};
use crate::config::Compression;
use crate::decode::{DecodeError, RowBatch, RowMeta, TableSchema, Warnings};
use crate::lsn::Lsn;

/// Parts are looked up once per row: SipHash's DoS resistance is not needed for keys
/// that are table numbers and dates.
type FastHash = foldhash::fast::FixedState;

/// Rows collected per partition before they are handed to the Parquet encoder.
const BATCH_ROWS: usize = 8192;

/// A failure while writing Parquet.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A row could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Parquet encoding failed.
    #[error("writing Parquet for {table}: {source}")]
    Parquet {
        /// Table folder.
        table: String,
        /// The encoder's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A temporary file could not be created.
    #[error("temporary file {path}: {source}")]
    Tmp {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Publishing a finished file failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
}

/// Limits and settings for a [`Sink`].
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Codec.
    pub compression: Compression,
    /// A file is closed once this many wire bytes went into it.
    pub max_file_bytes: u64,
    /// Rows per row group, at most.
    pub row_group_rows: usize,
    /// Memory for row groups in progress, over all open files.
    pub memory_limit: usize,
    /// Open files at once.
    pub max_open_files: usize,
    /// Local folder for files being written.
    pub tmp_dir: PathBuf,
    /// Written under this key prefix instead of the table folders (snapshot staging).
    pub staging_prefix: Option<String>,
    /// Number of this writer among several writing the same partitions (in file names).
    pub part: Option<u32>,
    /// Keep finished files in the temp folder; [`publish_deferred`] moves them later.
    pub defer_publish: bool,
}

/// A file the sink closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Table folder.
    pub table: String,
    /// Its partition.
    pub partition: PartitionKey,
    /// Final key in the lake (`orders/year=…/orders_….parquet`).
    pub key: String,
    /// Key it was written to (differs from `key` when staging).
    pub written_key: String,
    /// Rows in it.
    pub rows: u64,
    /// Whether it was written now or found from an earlier attempt.
    pub published: Published,
    /// The finished file, while its publishing is deferred.
    pub pending: Option<PathBuf>,
}

/// Publishes files a sink with `defer_publish` left in its temp folder.
pub async fn publish_deferred(lake: &Lake, files: &mut [WrittenFile]) -> Result<(), LakeError> {
    for f in files.iter_mut() {
        if let Some(tmp) = f.pending.take() {
            f.published = lake.publish(&tmp, &f.written_key).await?;
        }
    }
    Ok(())
}

enum Out {
    Write {
        writer: Box<ArrowWriter<BufWriter<File>>>,
        tmp: PathBuf,
        key: String,
        written_key: String,
    },
    Skip {
        key: String,
        written_key: String,
    },
}

/// A table (by its index in `Sink::folders`) and a partition.
type PartId = (u32, PartitionKey);

struct Part {
    /// Its key in `Sink::parts`: the table's index in `Sink::folders` and the partition.
    id: PartId,
    folder: Arc<str>,
    batch: RowBatch,
    out: Option<Out>,
    file_bytes: u64,
    file_rows: u64,
    last_used: u64,
}

/// Writes rows of many tables and partitions as Parquet files.
pub struct Sink {
    lake: Lake,
    handle: tokio::runtime::Handle,
    opts: SinkOptions,
    props: WriterProperties,
    processed_at: DateTime<Utc>,
    processed_us: i64,
    lsn: Lsn,
    parts: HashMap<PartId, Part, FastHash>,
    next_seq: HashMap<PartId, u32, FastHash>,
    /// Table folders seen, so parts are keyed by a number instead of a string per row.
    folders: Vec<Arc<str>>,
    tick: u64,
    tmp_seq: u64,
    files: Vec<WrittenFile>,
    warnings: Warnings,
}

impl Sink {
    /// A sink whose files are named after `processed_at` and `lsn`.
    ///
    /// Runs on a blocking thread; `handle` is used to reach the (async) object store.
    pub fn new(
        lake: Lake,
        handle: tokio::runtime::Handle,
        opts: SinkOptions,
        processed_at: DateTime<Utc>,
        lsn: Lsn,
    ) -> Result<Self, SinkError> {
        std::fs::create_dir_all(&opts.tmp_dir).map_err(|source| SinkError::Tmp {
            path: opts.tmp_dir.clone(),
            source,
        })?;
        let codec = match opts.compression {
            Compression::Snappy => Codec::SNAPPY,
            Compression::Zstd => Codec::ZSTD(ZstdLevel::default()),
            Compression::None => Codec::UNCOMPRESSED,
        };
        let props = WriterProperties::builder()
            .set_compression(codec)
            .set_max_row_group_row_count(Some(opts.row_group_rows))
            .set_created_by(format!("slot2lake version {}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self {
            lake,
            handle,
            opts,
            props,
            processed_at,
            processed_us: processed_at.timestamp_micros(),
            lsn,
            parts: HashMap::default(),
            next_seq: HashMap::default(),
            folders: Vec::new(),
            tick: 0,
            tmp_seq: 0,
            files: Vec::new(),
            warnings: Warnings::default(),
        })
    }

    /// The writer settings for one table's file.
    fn props_for(&self, schema: &TableSchema) -> WriterProperties {
        let mut keys = schema.columns.iter().filter(|c| c.is_key);
        match (keys.next(), keys.next()) {
            // A one-column key is (nearly) unique per row: a dictionary for it only fills
            // up and is dropped, after hashing every value.
            (Some(key), None) => self
                .props
                .clone()
                .into_builder()
                .set_column_dictionary_enabled(ColumnPath::from(key.name.as_str()), false)
                .build(),
            _ => self.props.clone(),
        }
    }

    /// Warnings logged once per table and column.
    pub fn warnings(&mut self) -> &mut Warnings {
        &mut self.warnings
    }

    /// The flush time stamped into `etl_processed_at` and file names.
    pub fn processed_at(&self) -> DateTime<Utc> {
        self.processed_at
    }

    /// Appends one row to `(folder, key)`; `fill` decodes the row into the batch.
    pub fn append(
        &mut self,
        folder: &str,
        schema: &Arc<TableSchema>,
        key: PartitionKey,
        fill: impl FnOnce(&mut RowBatch, &mut Warnings) -> Result<(), DecodeError>,
    ) -> Result<(), SinkError> {
        self.tick += 1;
        let table = match self.folders.iter().position(|f| &**f == folder) {
            Some(i) => i,
            None => {
                self.folders.push(Arc::from(folder));
                self.folders.len() - 1
            }
        };
        let id: PartId = (table as u32, key);
        let tick = self.tick;
        // The hot path: the row's part is open and its schema unchanged (one lookup).
        if let Some(part) = self.parts.get_mut(&id) {
            if Arc::ptr_eq(part.batch.schema(), schema) || part.batch.schema().same_columns(schema)
            {
                part.last_used = tick;
                fill(&mut part.batch, &mut self.warnings)?;
                if part.batch.rows() >= BATCH_ROWS {
                    self.write_batch(&id)?;
                }
                return Ok(());
            }
            // The table's columns changed: later rows go to a new file with the new schema.
            if let Some(part) = self.parts.remove(&id) {
                self.close_part(part)?;
            }
        }
        if self.parts.len() >= self.opts.max_open_files {
            self.evict_lru()?;
        }
        let mut batch = RowBatch::new(schema.clone(), BATCH_ROWS);
        fill(&mut batch, &mut self.warnings)?;
        let part = Part {
            id,
            folder: self.folders[table].clone(),
            batch,
            out: None,
            file_bytes: 0,
            file_rows: 0,
            last_used: tick,
        };
        self.parts.insert(id, part);
        Ok(())
    }

    /// A TRUNCATE row (every source column NULL). It has no date of its own: it goes to
    /// a date-partitioned table's NULL partition, or to the processing date.
    pub fn append_truncate(
        &mut self,
        folder: &str,
        schema: &Arc<TableSchema>,
        processing_date: chrono::NaiveDate,
        meta: &RowMeta,
    ) -> Result<(), SinkError> {
        let key = match schema.partition_column {
            None => PartitionKey::Processing(processing_date),
            Some(_) => PartitionKey::Column(None),
        };
        self.append(folder, schema, key, |batch, _| {
            batch.append_all_null(meta);
            Ok(())
        })
    }

    fn evict_lru(&mut self) -> Result<(), SinkError> {
        let oldest = self
            .parts
            .iter()
            .min_by_key(|(_, p)| p.last_used)
            .map(|(id, _)| *id);
        if let Some(part) = oldest.and_then(|id| self.parts.remove(&id)) {
            self.close_part(part)?;
        }
        Ok(())
    }

    fn write_batch(&mut self, id: &PartId) -> Result<(), SinkError> {
        let Some(mut part) = self.parts.remove(id) else {
            return Ok(());
        };
        let result = self.write_part_batch(&mut part);
        let full = part.file_bytes >= self.opts.max_file_bytes;
        self.parts.insert(*id, part);
        result?;
        if full {
            self.close_file(id)?;
        }
        self.enforce_memory()
    }

    fn write_part_batch(&mut self, part: &mut Part) -> Result<(), SinkError> {
        if part.batch.rows() == 0 {
            return Ok(());
        }
        if part.out.is_none() {
            let folder = part.folder.clone();
            part.out = Some(self.open_file(part.id, &folder, part.batch.schema())?);
        }
        part.file_bytes += part.batch.bytes() as u64;
        part.file_rows += part.batch.rows() as u64;
        let batch = part.batch.finish(self.processed_us);
        if let Some(Out::Write { writer, .. }) = part.out.as_mut() {
            writer.write(&batch).map_err(|source| SinkError::Parquet {
                table: part.folder.to_string(),
                source,
            })?;
        }
        Ok(())
    }

    fn open_file(
        &mut self,
        id: PartId,
        folder: &str,
        schema: &Arc<TableSchema>,
    ) -> Result<Out, SinkError> {
        let key = id.1;
        let seq_slot = self.next_seq.entry(id).or_insert(0);
        let seq = *seq_slot;
        *seq_slot += 1;
        let name = FileName {
            table: folder.to_string(),
            processed_at: self.processed_at,
            lsn: self.lsn,
            seq,
            part: self.opts.part,
        };
        let final_key = format!("{folder}/{}/{name}", key.path());
        let written_key = match &self.opts.staging_prefix {
            Some(prefix) => format!("{prefix}/{final_key}"),
            None => final_key.clone(),
        };
        let lake = self.lake.clone();
        let (a, b) = (written_key.clone(), final_key.clone());
        let exists = self.handle.block_on(async move {
            Ok::<_, LakeError>(lake.exists(&a).await? || lake.exists(&b).await?)
        })?;
        if exists {
            return Ok(Out::Skip {
                key: final_key,
                written_key,
            });
        }
        self.tmp_seq += 1;
        let tmp = self
            .opts
            .tmp_dir
            .join(format!("{name}.{}.tmp", self.tmp_seq));
        let file = File::create(&tmp).map_err(|source| SinkError::Tmp {
            path: tmp.clone(),
            source,
        })?;
        let writer = ArrowWriter::try_new(
            BufWriter::with_capacity(256 * 1024, file),
            schema.arrow.clone(),
            Some(self.props_for(schema)),
        )
        .map_err(|source| SinkError::Parquet {
            table: folder.to_string(),
            source,
        })?;
        Ok(Out::Write {
            writer: Box::new(writer),
            tmp,
            key: final_key,
            written_key,
        })
    }

    fn close_file(&mut self, id: &PartId) -> Result<(), SinkError> {
        let Some(part) = self.parts.get_mut(id) else {
            return Ok(());
        };
        let Some(out) = part.out.take() else {
            return Ok(());
        };
        let rows = std::mem::take(&mut part.file_rows);
        part.file_bytes = 0;
        let (table, partition) = (part.folder.to_string(), part.id.1);
        let file = match out {
            Out::Write {
                writer,
                tmp,
                key,
                written_key,
            } => {
                writer.close().map_err(|source| SinkError::Parquet {
                    table: table.clone(),
                    source,
                })?;
                crate::failpoint::hit(crate::failpoint::MID_PARQUET_WRITE);
                let (published, pending) = if self.opts.defer_publish {
                    (Published::Written, Some(tmp))
                } else {
                    let lake = self.lake.clone();
                    let wk = written_key.clone();
                    let p = self
                        .handle
                        .block_on(async move { lake.publish(&tmp, &wk).await })?;
                    (p, None)
                };
                WrittenFile {
                    table,
                    partition,
                    key,
                    written_key,
                    rows,
                    published,
                    pending,
                }
            }
            Out::Skip { key, written_key } => WrittenFile {
                table,
                partition,
                key,
                written_key,
                rows,
                published: Published::AlreadyThere,
                pending: None,
            },
        };
        tracing::debug!(key = %file.key, rows = file.rows, published = ?file.published, "closed parquet file");
        self.files.push(file);
        if self.files.len() == 2 {
            crate::failpoint::hit(crate::failpoint::MID_FLUSH_FILES);
        }
        Ok(())
    }

    fn close_part(&mut self, mut part: Part) -> Result<(), SinkError> {
        self.write_part_batch(&mut part)?;
        let id = part.id;
        self.parts.insert(id, part);
        self.close_file(&id)?;
        self.parts.remove(&id);
        Ok(())
    }

    /// Keeps row groups in progress under the memory limit by flushing the biggest.
    fn enforce_memory(&mut self) -> Result<(), SinkError> {
        // Encoders (page and dictionary buffers) plus rows waiting in builders.
        let usage = |p: &Part| {
            p.batch.bytes()
                + match &p.out {
                    Some(Out::Write { writer, .. }) => writer.memory_size(),
                    _ => 0,
                }
        };
        let mut total: usize = self.parts.values().map(usage).sum();
        let mut flushed = std::collections::HashSet::new();
        while total > self.opts.memory_limit {
            let biggest = self
                .parts
                .iter()
                .filter(|(id, p)| {
                    !flushed.contains(*id) && matches!(p.out, Some(Out::Write { .. }))
                })
                .max_by_key(|(_, p)| usage(p))
                .map(|(id, _)| *id);
            let Some(id) = biggest else { return Ok(()) };
            flushed.insert(id);
            let Some(part) = self.parts.get_mut(&id) else {
                return Ok(());
            };
            let before = usage(part);
            if let Some(Out::Write { writer, .. }) = &mut part.out {
                // Ends the row group: its pages go to the temp file, its buffers are freed.
                writer.flush().map_err(|source| SinkError::Parquet {
                    table: part.folder.to_string(),
                    source,
                })?;
            }
            total = (total + usage(part)).saturating_sub(before);
        }
        Ok(())
    }

    /// Closes every file; returns all files written or found, in the order they closed.
    pub fn finish(mut self) -> Result<Vec<WrittenFile>, SinkError> {
        let mut ids: Vec<_> = self.parts.keys().cloned().collect();
        ids.sort();
        for id in ids {
            if let Some(part) = self.parts.remove(&id) {
                self.close_part(part)?;
            }
        }
        Ok(self.files)
    }
}
