//! The partitioned Parquet writer: rows → right-sized files, one partition at a time,
//! whatever the number of partitions and the order rows arrive in.
//!
//! ```text
//!  append(row) ─▶ partition key ─▶ spill: wire values grouped by partition
//!                                   (memory: arena up to its budget; beyond it, run files)
//!  finish():  for each partition, in (table, partition) order, on `encoders` threads:
//!               its rows in arrival order ─▶ RowBatch (8192 rows) ─▶ ArrowWriter
//!               row group at row_group_rows or when the memory share is used
//!               file closed at max_file_size (wire bytes) or a schema change
//!               ─▶ Lake::publish (rename / upload; uploads run concurrently)
//! ```
//!
//! A partition is written as a whole, so it gets one file per `max_file_size` of data
//! (per writer): never a file per row because partitions outnumber open files. Memory
//! is the spill's arena plus, per encoder thread, one row group in progress, whatever the
//! number of partitions or the size of the table.
//!
//! Which rows land in which file depends only on the input order and on sizes measured
//! from the input (wire bytes), never on memory or encoder output, so a retried flush
//! over the same input produces the same files under the same names; with `may_exist`
//! files that already exist are skipped without being encoded again.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as Codec, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::partition::{FileName, PartitionKey};
use super::spill::{Spill, SpillError};
use crate::checkpoint::add_nulled;
use crate::config::Compression;
use crate::decode::schema::CHANGE_SEQ;
use crate::decode::Datum;
use crate::decode::{ColumnKind, DecodeError, RowBatch, RowMeta, TableSchema, Warnings};
use crate::lake::{Lake, LakeError, Published};
use crate::lsn::Lsn;
use crate::retry::{Action, Classify};

/// Parts are looked up once per row: SipHash's DoS resistance is not needed for keys
/// that are table numbers and dates.
type FastHash = foldhash::fast::FixedState;

/// Rows collected before they are handed to the Parquet encoder.
const BATCH_ROWS: usize = 8192;

/// Uploads of finished files in flight at once, per sink (object stores only).
pub const CONCURRENT_UPLOADS: usize = 16;

/// Rows of a part whose columns each fit one data page: parquet's row limit per page.
const ONE_PAGE_ROWS: u32 = parquet::file::properties::DEFAULT_DATA_PAGE_ROW_COUNT_LIMIT as u32;

/// Bytes of a part whose columns each fit one data page: parquet's size limit per page
/// (a few wide values fill pages long before the row limit).
const ONE_PAGE_BYTES: u64 = parquet::file::properties::DEFAULT_PAGE_SIZE as u64;

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
    /// Rows could not be spilled to or read back from local disk.
    #[error(transparent)]
    Spill(#[from] SpillError),
    /// Publishing a finished file failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// An encoder thread or upload task stopped unexpectedly.
    #[error("parquet encoder failed: {0}")]
    Worker(String),
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
    /// Memory for rows waiting to be encoded and row groups in progress.
    pub memory_limit: usize,
    /// Threads encoding partitions at the end.
    pub encoders: usize,
    /// Local folder for files being written and spilled rows.
    pub tmp_dir: PathBuf,
    /// Written under this key prefix instead of the table folders (snapshot staging).
    pub staging_prefix: Option<String>,
    /// Keep finished files in the temp folder; [`publish_deferred`] moves them later.
    pub defer_publish: bool,
    /// An earlier attempt may have written some of these files (a resumed flush): look
    /// for each before encoding it, and skip it when it exists.
    pub may_exist: bool,
}

/// The Parquet codec of `output.compression`.
pub fn codec(compression: Compression) -> Codec {
    match compression {
        Compression::Snappy => Codec::SNAPPY,
        Compression::Zstd => Codec::ZSTD(ZstdLevel::default()),
        Compression::None => Codec::UNCOMPRESSED,
    }
}

/// A file the sink closed.
#[derive(Debug, Clone)]
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
    /// Its size in bytes (0 when it was found from an earlier attempt).
    pub bytes: u64,
    /// Whether it was written now or found from an earlier attempt.
    pub published: Published,
    /// The finished file, while its publishing is deferred.
    pub pending: Option<PathBuf>,
    /// The table's columns as written in it (`None` when built outside a sink).
    pub schema: Option<Arc<TableSchema>>,
    /// Values written as NULL because the column's Parquet type cannot hold them
    /// (numeric `NaN` in a DECIMAL column, …), per column.
    pub nulled: BTreeMap<String, u64>,
}

/// Values `files` of table `folder` hold as NULL, per column (see [`WrittenFile::nulled`]).
pub fn nulled_in<'a>(
    files: impl IntoIterator<Item = &'a WrittenFile>,
    folder: &str,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for f in files.into_iter().filter(|f| f.table == folder) {
        add_nulled(&mut out, &f.nulled);
    }
    out
}

/// Publishes files a sink with `defer_publish` left in its temp folder, up to
/// [`CONCURRENT_UPLOADS`] at once (a flush of N files is not N round trips in series).
pub async fn publish_deferred(lake: &Lake, files: &mut [WrittenFile]) -> Result<(), LakeError> {
    use futures::StreamExt;
    let jobs: Vec<(usize, PathBuf, String)> = files
        .iter_mut()
        .enumerate()
        .filter_map(|(i, f)| Some((i, f.pending.take()?, f.written_key.clone())))
        .collect();
    let mut uploads = futures::stream::iter(jobs)
        .map(|(i, tmp, key)| publish_one(lake.clone(), i, tmp, key))
        .buffer_unordered(CONCURRENT_UPLOADS);
    while let Some(done) = uploads.next().await {
        let (i, published) = done?;
        files[i].published = published;
    }
    lake.sync_dirs()
}

async fn publish_one(
    lake: Lake,
    i: usize,
    tmp: PathBuf,
    key: String,
) -> Result<(usize, Published), LakeError> {
    Ok((i, lake.publish(&tmp, &key).await?))
}

/// One table partition: its folder (by number) and key.
type PartId = (u32, PartitionKey);

/// Where a partition's rows are: (sink, part number in that sink's spill).
type Sources = Vec<(usize, u32)>;

/// Writes rows of many tables and partitions as Parquet files.
pub struct Sink {
    encoder: Encoder,
    spill: Spill,
    part_ids: PartIds,
    parts: Vec<PartId>,
    /// Table folders seen, so parts are keyed by a number instead of a string per row.
    folders: Vec<Arc<str>>,
    /// Schemas rows were written with, by number; per folder the latest one's number.
    schemas: Vec<Arc<TableSchema>>,
    latest_schema: HashMap<u32, u32, FastHash>,
    /// The schema of the row before, its table and its number.
    last: Option<(Arc<TableSchema>, u32, u32)>,
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
        let props = WriterProperties::builder()
            .set_compression(codec(opts.compression))
            .set_max_row_group_row_count(Some(opts.row_group_rows))
            .set_created_by(format!("slot2lake version {}", env!("CARGO_PKG_VERSION")))
            .build();
        // Rows wait in the spill while they arrive; the encoders get the memory once they
        // are all in.
        let spill = Spill::new(&opts.tmp_dir, opts.memory_limit);
        Ok(Self {
            encoder: Encoder {
                lake,
                handle,
                opts,
                props,
                processed_at,
                processed_us: processed_at.timestamp_micros(),
                lsn,
                closed: Arc::new(AtomicUsize::new(0)),
            },
            spill,
            part_ids: PartIds::default(),
            parts: Vec::new(),
            folders: Vec::new(),
            schemas: Vec::new(),
            latest_schema: HashMap::default(),
            last: None,
            warnings: Warnings::default(),
        })
    }

    /// Warnings logged once per table and column.
    pub fn warnings(&mut self) -> &mut Warnings {
        &mut self.warnings
    }

    /// The flush time stamped into `etl_processed_at` and file names.
    pub fn processed_at(&self) -> DateTime<Utc> {
        self.encoder.processed_at
    }

    /// The part number of `(folder, key)` and the number of `schema`.
    fn ids(&mut self, folder: &str, schema: &Arc<TableSchema>, key: PartitionKey) -> (u32, u32) {
        // The hot path: the same table and schema as the row before.
        if let Some((last, table, schema_id)) = &self.last {
            if Arc::ptr_eq(last, schema) {
                let (table, schema_id) = (*table, *schema_id);
                return (self.part_of(table, key), schema_id);
            }
        }
        let table = match self.folders.iter().position(|f| &**f == folder) {
            Some(i) => i as u32,
            None => {
                self.folders.push(Arc::from(folder));
                (self.folders.len() - 1) as u32
            }
        };
        let schema_id = match self.latest_schema.get(&table) {
            Some(&id)
                if Arc::ptr_eq(&self.schemas[id as usize], schema)
                    || self.schemas[id as usize].same_columns(schema) =>
            {
                id
            }
            _ => {
                self.schemas.push(schema.clone());
                let id = (self.schemas.len() - 1) as u32;
                self.latest_schema.insert(table, id);
                id
            }
        };
        self.last = Some((schema.clone(), table, schema_id));
        (self.part_of(table, key), schema_id)
    }

    /// The part number of a table's partition.
    fn part_of(&mut self, table: u32, key: PartitionKey) -> u32 {
        if let Some(p) = self.part_ids.get(table, key) {
            return p;
        }
        self.parts.push((table, key));
        let p = (self.parts.len() - 1) as u32;
        self.part_ids.insert(table, key, p);
        p
    }

    /// Appends one row of `schema` to `(folder, key)`: one value per source column.
    pub fn append<'a>(
        &mut self,
        folder: &str,
        schema: &Arc<TableSchema>,
        key: PartitionKey,
        meta: &RowMeta,
        values: impl Iterator<Item = Datum<'a>>,
    ) -> Result<(), SinkError> {
        let (part, schema_id) = self.ids(folder, schema, key);
        Ok(self.spill.push(part, schema_id, meta, Some(values))?)
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
        let (part, schema_id) = self.ids(folder, schema, key);
        Ok(self
            .spill
            .push(part, schema_id, meta, None::<std::iter::Empty<Datum<'_>>>)?)
    }

    /// Ends appending: the rows still in memory are sorted by partition and, beyond their
    /// share of memory, written out. A snapshot worker seals its sink when its last chunk
    /// is in, while the other workers still copy; [`finish_all`](Self::finish_all) seals
    /// the rest.
    pub fn seal(&mut self) -> Result<(), SinkError> {
        // Rows kept in memory and the encoders' row groups share the limit.
        let keep = self.encoder.opts.memory_limit / 2;
        Ok(self.spill.seal(keep)?)
    }

    /// Encodes every partition and closes every file; returns all files written or
    /// found, in (table, partition, sequence) order.
    pub fn finish(self) -> Result<Vec<WrittenFile>, SinkError> {
        Self::finish_all(vec![self])
    }

    /// Finishes sinks that took rows of the same tables side by side (snapshot workers):
    /// each partition's rows from all of them go into the same files, so a partition
    /// gets one file per `max_file_size` whatever the number of workers. Settings come
    /// from the first sink; memory and encoder threads are the sinks' together.
    pub fn finish_all(mut sinks: Vec<Sink>) -> Result<Vec<WrittenFile>, SinkError> {
        let limit: usize = sinks.iter().map(|s| s.encoder.opts.memory_limit).sum();
        let threads_wanted: usize = sinks.iter().map(|s| s.encoder.opts.encoders).sum();
        let mut spilled = 0;
        for s in &mut sinks {
            s.seal()?;
            spilled += s.spill.spilled_bytes();
        }
        // Every (table, partition) and where its rows are, in a fixed order.
        let mut merged: std::collections::BTreeMap<(Arc<str>, PartitionKey), Sources> =
            std::collections::BTreeMap::new();
        for (i, s) in sinks.iter().enumerate() {
            for p in s.spill.parts() {
                let (table, key) = s.parts[p as usize];
                merged
                    .entry((s.folders[table as usize].clone(), key))
                    .or_default()
                    .push((i, p));
            }
        }
        let order: Vec<((Arc<str>, PartitionKey), Sources)> = merged.into_iter().collect();
        let Some(first) = sinks.first() else {
            return Ok(Vec::new());
        };
        let started = std::time::Instant::now();
        let threads = threads_wanted.clamp(1, order.len().max(1));
        let in_memory: usize = sinks.iter().map(|s| s.spill.memory()).sum();
        let job = Job {
            sinks: &sinks,
            memory: limit.saturating_sub(in_memory) / threads,
        };
        let encoder = &first.encoder;
        let order = &order;
        let job = &job;
        // Threads take the next partition until none is left (a big partition does not
        // hold up the others); names do not depend on which thread writes a partition.
        let next = AtomicUsize::new(0);
        let encode = |warnings: &mut Warnings| -> Result<Vec<(usize, WrittenFile)>, SinkError> {
            let mut uploads = Uploads::default();
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(((folder, key), sources)) = order.get(i) else {
                    break;
                };
                for f in encoder.part(job, folder, *key, sources, warnings)? {
                    match f {
                        Closed::Done(f) => out.push((i, f)),
                        Closed::Uploading(task) => {
                            if uploads.tasks.len() >= CONCURRENT_UPLOADS {
                                out.extend(uploads.wait_one(&encoder.handle)?);
                            }
                            uploads.tasks.push_back((i, task));
                        }
                    }
                }
            }
            while !uploads.tasks.is_empty() {
                out.extend(uploads.wait_one(&encoder.handle)?);
            }
            Ok(out)
        };
        let mut results =
            if threads == 1 {
                encode(&mut Warnings::default())?
            } else {
                let encode = &encode;
                std::thread::scope(|scope| {
                    let handles: Vec<_> = (0..threads)
                        .map(|_| scope.spawn(move || encode(&mut Warnings::default())))
                        .collect();
                    let mut all = Vec::new();
                    for h in handles {
                        all.extend(h.join().map_err(|_| {
                            SinkError::Worker("an encoder thread panicked".into())
                        })??);
                    }
                    Ok::<_, SinkError>(all)
                })?
            };
        let partitions = order.len();
        let lake = encoder.lake.clone();
        // The runs are deleted before the lake is synced, so their pages are never written.
        for s in &mut sinks {
            s.spill.clear();
        }
        let encoded = started.elapsed();
        lake.sync_dirs()?;
        tracing::debug!(
            partitions,
            files = results.len(),
            spilled_bytes = spilled,
            threads,
            seconds = encoded.as_secs_f64(),
            sync_seconds = (started.elapsed() - encoded).as_secs_f64(),
            "partitions encoded"
        );
        results.sort_by(|(a, fa), (b, fb)| (a, &fa.key).cmp(&(b, &fb.key)));
        Ok(results.into_iter().map(|(_, f)| f).collect())
    }
}

/// Part numbers by table and partition, looked up for every row: a table's days in an
/// array indexed by day (rows of a spread table alternate between thousands of dates),
/// other keys, and days too far apart for an array, in a map.
#[derive(Default)]
struct PartIds {
    days: Vec<DayIds>,
    other: HashMap<PartId, u32, FastHash>,
}

/// One table's part numbers for the days `first..first + ids.len()` (`u32::MAX`: none yet).
#[derive(Default)]
struct DayIds {
    first: i32,
    ids: Vec<u32>,
}

/// The widest range of days one table's array covers (4 bytes a day: at most 1 MB).
const DENSE_DAYS: i64 = 1 << 18;

impl PartIds {
    fn get(&self, table: u32, key: PartitionKey) -> Option<u32> {
        if let PartitionKey::Column(Some(day)) = key {
            if let Some(d) = self.days.get(table as usize) {
                let i = i64::from(day) - i64::from(d.first);
                if let Some(&p) = usize::try_from(i).ok().and_then(|i| d.ids.get(i)) {
                    if p != u32::MAX {
                        return Some(p);
                    }
                }
            }
        }
        self.other.get(&(table, key)).copied()
    }

    fn insert(&mut self, table: u32, key: PartitionKey, part: u32) {
        if let PartitionKey::Column(Some(day)) = key {
            if self.days.len() <= table as usize {
                self.days.resize_with(table as usize + 1, DayIds::default);
            }
            let d = &mut self.days[table as usize];
            if d.ids.is_empty() {
                d.first = day;
            }
            let last = i64::from(d.first) + d.ids.len() as i64 - 1;
            let (lo, hi) = (
                i64::from(day).min(i64::from(d.first)),
                i64::from(day).max(last),
            );
            if hi - lo < DENSE_DAYS {
                if i64::from(day) < i64::from(d.first) {
                    let grow = (i64::from(d.first) - i64::from(day)) as usize;
                    d.ids.splice(0..0, std::iter::repeat_n(u32::MAX, grow));
                    d.first = day;
                }
                let i = (i64::from(day) - i64::from(d.first)) as usize;
                if d.ids.len() <= i {
                    d.ids.resize(i + 1, u32::MAX);
                }
                d.ids[i] = part;
                return;
            }
        }
        self.other.insert((table, key), part);
    }
}

/// What the encoder threads share.
struct Job<'a> {
    /// The sinks whose rows are encoded (their spills and schemas).
    sinks: &'a [Sink],
    /// Memory for one thread's row group in progress.
    memory: usize,
}

/// Uploads in flight (object stores): finished files are uploaded while encoding goes
/// on, each tagged with its part's place in the sink's order.
#[derive(Default)]
struct Uploads {
    tasks: std::collections::VecDeque<(
        usize,
        tokio::task::JoinHandle<Result<WrittenFile, LakeError>>,
    )>,
}

impl Uploads {
    /// Waits for the oldest upload.
    fn wait_one(
        &mut self,
        handle: &tokio::runtime::Handle,
    ) -> Result<Option<(usize, WrittenFile)>, SinkError> {
        let Some((i, task)) = self.tasks.pop_front() else {
            return Ok(None);
        };
        let file = handle
            .block_on(task)
            .map_err(|e| SinkError::Worker(format!("upload task: {e}")))??;
        Ok(Some((i, file)))
    }
}

/// A file a part closed: published, or being uploaded.
enum Closed {
    Done(WrittenFile),
    Uploading(tokio::task::JoinHandle<Result<WrittenFile, LakeError>>),
}

/// Writes one partition's rows as files: the settings every encoder thread shares.
struct Encoder {
    lake: Lake,
    handle: tokio::runtime::Handle,
    opts: SinkOptions,
    props: WriterProperties,
    processed_at: DateTime<Utc>,
    processed_us: i64,
    lsn: Lsn,
    /// Files closed so far, over all threads (for the mid-flush failure point).
    closed: Arc<AtomicUsize>,
}

/// The file being written for a part.
struct OpenFile {
    writer: ArrowWriter<BufWriter<File>>,
    tmp: PathBuf,
    key: String,
    written_key: String,
    bytes: u64,
    rows: u64,
    /// Written where it stays (a staged file on a local disk): nothing to move.
    direct: bool,
}

impl Encoder {
    /// The writer settings for one table's file; `one_page`: each column of the part
    /// fits one data page.
    fn props_for(&self, schema: &TableSchema, one_page: bool) -> WriterProperties {
        // Columns whose values are (nearly) unique per row: a dictionary for them only
        // fills up and is dropped, after hashing every value. A one-column key,
        // timestamps, and the row's position in its transaction.
        let mut keys = schema.columns.iter().filter(|c| c.is_key);
        let key = match (keys.next(), keys.next()) {
            (Some(key), None) => Some(key.name.clone()),
            _ => None,
        };
        let unique = key
            .into_iter()
            .chain(
                schema
                    .columns
                    .iter()
                    .filter(|c| matches!(c.kind, ColumnKind::Timestamp | ColumnKind::TimestampTz))
                    .map(|c| c.name.clone()),
            )
            .chain(std::iter::once(schema.meta(CHANGE_SEQ)));
        let mut b = self.props.clone().into_builder();
        if one_page {
            // A spread table's day, most daily flushes: a page index would repeat the
            // column's statistics, at a cost per file.
            b = b
                .set_statistics_enabled(EnabledStatistics::Chunk)
                .set_offset_index_disabled(true);
        }
        for c in unique {
            b = b.set_column_dictionary_enabled(ColumnPath::from(c.as_str()), false);
        }
        b.build()
    }

    /// Writes every row of part `p` into its files.
    fn part(
        &self,
        job: &Job<'_>,
        folder: &Arc<str>,
        key: PartitionKey,
        sources: &[(usize, u32)],
        warnings: &mut Warnings,
    ) -> Result<Vec<Closed>, SinkError> {
        // Most partitions of a spread table hold far fewer rows than a batch.
        let rows: u32 = sources
            .iter()
            .map(|(i, p)| job.sinks[*i].spill.rows(*p))
            .sum();
        let bytes: u64 = sources
            .iter()
            .map(|(i, p)| job.sinks[*i].spill.bytes(*p))
            .sum();
        let mut state = PartState {
            folder,
            key,
            one_page: rows <= ONE_PAGE_ROWS && bytes <= ONE_PAGE_BYTES,
            seq: 0,
            batch: None,
            file: None,
            skipping: None,
            nulled: BTreeMap::new(),
            files: Vec::new(),
        };
        let capacity = (rows as usize).min(BATCH_ROWS);
        for (i, p) in sources {
            let sink = &job.sinks[*i];
            sink.spill.for_each(*p, |row| -> Result<(), SinkError> {
                let schema = &sink.schemas[row.schema as usize];
                let same = state.batch.as_ref().is_some_and(|b| {
                    Arc::ptr_eq(b.schema(), schema) || b.schema().same_columns(schema)
                });
                if !same {
                    // The table's columns changed: later rows go to a new file.
                    self.write_batch(&mut state, job)?;
                    self.close_file(&mut state)?;
                    state.batch = Some(RowBatch::new(schema.clone(), capacity));
                }
                let Some(batch) = state.batch.as_mut() else {
                    return Ok(());
                };
                match row.values {
                    Some(values) => batch.append(values, &row.meta, warnings)?,
                    None => batch.append_all_null(&row.meta),
                }
                if batch.rows() >= BATCH_ROWS {
                    self.write_batch(&mut state, job)?;
                }
                Ok(())
            })?;
        }
        self.write_batch(&mut state, job)?;
        self.close_file(&mut state)?;
        state.files.into_iter().map(|f| self.publish(f)).collect()
    }

    /// Moves a closed file into the lake: at once on a local disk, as an upload task on an
    /// object store (uploads overlap with encoding), or not yet when publishing is deferred.
    fn publish(&self, mut f: WrittenFile) -> Result<Closed, SinkError> {
        if self.opts.defer_publish {
            return Ok(Closed::Done(f));
        }
        let Some(tmp) = f.pending.take() else {
            return Ok(Closed::Done(f));
        };
        let lake = self.lake.clone();
        let publish = async move {
            f.published = lake.publish(&tmp, &f.written_key).await?;
            Ok(f)
        };
        if self.lake.local_root().is_some() {
            Ok(Closed::Done(self.handle.block_on(publish)?))
        } else {
            Ok(Closed::Uploading(self.handle.spawn(publish)))
        }
    }

    /// Hands the batch to the part's file (opening one if needed); rolls the file over
    /// at `max_file_size` and ends the row group when the memory share is used.
    fn write_batch(&self, state: &mut PartState<'_>, job: &Job<'_>) -> Result<(), SinkError> {
        let Some(batch) = state.batch.as_mut() else {
            return Ok(());
        };
        if batch.rows() == 0 {
            return Ok(());
        }
        let (rows, bytes) = (batch.rows() as u64, batch.bytes() as u64);
        add_nulled(&mut state.nulled, &batch.take_nulled());
        let schema = batch.schema().clone();
        if state.file.is_none() && state.skipping.is_none() {
            self.open(state, &schema)?;
        }
        let Some(batch) = state.batch.as_mut() else {
            return Ok(());
        };
        let record = batch.finish(self.processed_us);
        match (&mut state.file, &mut state.skipping) {
            (Some(f), _) => {
                f.writer
                    .write(&record)
                    .map_err(|source| SinkError::Parquet {
                        table: state.folder.to_string(),
                        source,
                    })?;
                f.bytes += bytes;
                f.rows += rows;
                if f.writer.memory_size() > job.memory {
                    // Ends the row group: its pages go to the temp file, its buffers are freed.
                    f.writer.flush().map_err(|source| SinkError::Parquet {
                        table: state.folder.to_string(),
                        source,
                    })?;
                }
            }
            (None, Some(s)) => {
                s.bytes += bytes;
                s.rows += rows;
            }
            (None, None) => {}
        }
        let full = state
            .file
            .as_ref()
            .map(|f| f.bytes)
            .or(state.skipping.as_ref().map(|s| s.bytes))
            >= Some(self.opts.max_file_bytes);
        if full {
            self.close_file(state)?;
        }
        Ok(())
    }

    /// Opens the part's next file, or notes that an earlier attempt already wrote it.
    fn open(&self, state: &mut PartState<'_>, schema: &Arc<TableSchema>) -> Result<(), SinkError> {
        let name = FileName {
            table: state.folder.to_string(),
            processed_at: self.processed_at,
            lsn: self.lsn,
            seq: state.seq,
        };
        state.seq += 1;
        let key = format!("{}/{}/{name}", state.folder, state.key.path());
        // Staging mirrors the table folders, so a table the lake does not hold yet is
        // published by moving its folder whole; the staged → final pairs are recorded
        // too, so nothing parses these names.
        let written_key = match &self.opts.staging_prefix {
            Some(prefix) => format!("{prefix}/{key}"),
            None => key.clone(),
        };
        if self.opts.may_exist {
            let lake = self.lake.clone();
            let (a, b) = (written_key.clone(), key.clone());
            let exists = self.handle.block_on(async move {
                Ok::<_, LakeError>(lake.exists(&a).await? || lake.exists(&b).await?)
            })?;
            if exists {
                state.skipping = Some(Skipped {
                    key,
                    written_key,
                    bytes: 0,
                    rows: 0,
                });
                return Ok(());
            }
        }
        // Staged files are invisible to readers until the snapshot is published, so on a
        // local disk they are written in place: no rename (renames across folders take a
        // filesystem-wide lock, thousands of them serialise the encoders).
        let direct = match (
            &self.opts.staging_prefix,
            self.lake.local_path(&written_key),
        ) {
            (Some(_), Some(path)) if !self.opts.defer_publish => Some(path),
            _ => None,
        };
        let tmp = match &direct {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    self.lake.create_dirs(dir)?;
                }
                path.clone()
            }
            None => {
                static TMP_SEQ: AtomicUsize = AtomicUsize::new(0);
                self.opts.tmp_dir.join(format!(
                    "{name}.{}.tmp",
                    TMP_SEQ.fetch_add(1, Ordering::Relaxed)
                ))
            }
        };
        let file = File::create(&tmp).map_err(|source| SinkError::Tmp {
            path: tmp.clone(),
            source,
        })?;
        let writer = ArrowWriter::try_new(
            BufWriter::with_capacity(256 * 1024, file),
            schema.arrow.clone(),
            Some(self.props_for(schema, state.one_page)),
        )
        .map_err(|source| SinkError::Parquet {
            table: state.folder.to_string(),
            source,
        })?;
        state.file = Some(OpenFile {
            writer,
            tmp,
            key,
            written_key,
            bytes: 0,
            rows: 0,
            direct: direct.is_some(),
        });
        Ok(())
    }

    /// Closes the part's current file (or skipped file) and records it.
    fn close_file(&self, state: &mut PartState<'_>) -> Result<(), SinkError> {
        let schema = state.batch.as_ref().map(|b| b.schema().clone());
        let file = match (state.file.take(), state.skipping.take()) {
            (Some(f), _) => {
                let file = f.writer.into_inner().map_err(|source| SinkError::Parquet {
                    table: state.folder.to_string(),
                    source,
                })?;
                let bytes = file
                    .into_inner()
                    .map_err(|e| SinkError::Tmp {
                        path: f.tmp.clone(),
                        source: e.into_error(),
                    })?
                    .metadata()
                    .map(|m| m.len())
                    .unwrap_or(0);
                crate::failpoint::hit(crate::failpoint::MID_PARQUET_WRITE);
                let pending = if f.direct {
                    self.lake.note_written(&f.tmp);
                    None
                } else {
                    Some(f.tmp)
                };
                WrittenFile {
                    table: state.folder.to_string(),
                    partition: state.key,
                    key: f.key,
                    written_key: f.written_key,
                    rows: f.rows,
                    bytes,
                    published: Published::Written,
                    pending,
                    schema,
                    nulled: std::mem::take(&mut state.nulled),
                }
            }
            (None, Some(s)) => WrittenFile {
                table: state.folder.to_string(),
                partition: state.key,
                key: s.key,
                written_key: s.written_key,
                rows: s.rows,
                bytes: 0,
                published: Published::AlreadyThere,
                pending: None,
                schema,
                nulled: std::mem::take(&mut state.nulled),
            },
            (None, None) => return Ok(()),
        };
        tracing::debug!(key = %file.key, rows = file.rows, "closed parquet file");
        state.files.push(file);
        if self.closed.fetch_add(1, Ordering::SeqCst) + 1 == 2 {
            crate::failpoint::hit(crate::failpoint::MID_FLUSH_FILES);
        }
        Ok(())
    }
}

/// A file an earlier attempt already wrote: its rows are counted, not encoded.
struct Skipped {
    key: String,
    written_key: String,
    bytes: u64,
    rows: u64,
}

/// One part while its rows are encoded.
struct PartState<'a> {
    folder: &'a Arc<str>,
    key: PartitionKey,
    /// Each column of the part, over all its files, fits one data page.
    one_page: bool,
    /// The next file's sequence number within the part.
    seq: u32,
    batch: Option<RowBatch>,
    file: Option<OpenFile>,
    skipping: Option<Skipped>,
    /// Values of the current file stored as NULL, per column (see [`WrittenFile::nulled`]).
    nulled: BTreeMap<String, u64>,
    files: Vec<WrittenFile>,
}

impl Classify for SinkError {
    fn action(&self) -> Action {
        match self {
            SinkError::Lake(e) => e.action(),
            _ => Action::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_ids_find_every_key_they_were_given_and_no_other() {
        let mut ids = PartIds::default();
        let date = chrono::NaiveDate::from_ymd_opt(2025, 1, 2).expect("date");
        // Days arriving out of order, below the first, far beyond the array's range (a
        // sentinel year 9999 next to 1970), NULL and processing-date keys, two tables.
        let days = [20_000, 19_990, 20_500, 0, 2_932_896, -719_162, 20_001];
        let mut keys: Vec<(u32, PartitionKey)> = Vec::new();
        for table in [0u32, 2] {
            for d in days {
                keys.push((table, PartitionKey::Column(Some(d))));
            }
            keys.push((table, PartitionKey::Column(None)));
            keys.push((table, PartitionKey::Processing(date)));
        }
        for (n, (table, key)) in keys.iter().enumerate() {
            assert_eq!(ids.get(*table, *key), None, "{key:?} before insert");
            ids.insert(*table, *key, n as u32);
        }
        for (n, (table, key)) in keys.iter().enumerate() {
            assert_eq!(ids.get(*table, *key), Some(n as u32), "{table} {key:?}");
        }
        for missing in [19_995, 20_499, 1, 2_932_895] {
            assert_eq!(ids.get(0, PartitionKey::Column(Some(missing))), None);
            assert_eq!(ids.get(1, PartitionKey::Column(Some(missing))), None);
        }
        assert!(ids.days[0].ids.len() as i64 <= DENSE_DAYS);
    }

    #[test]
    fn a_page_index_is_written_only_for_parts_that_span_pages() {
        // Rows held in memory, and rows spilled to run files (a memory limit the part's
        // rows cross), are measured alike.
        for (memory_limit, spills) in [(16 << 20, false), (1 << 20, true)] {
            page_index_by_part_size(memory_limit, spills);
        }
    }

    fn page_index_by_part_size(memory_limit: usize, spills: bool) {
        use crate::decode::schema::oid;
        use crate::decode::{ChangeType, ColumnSpec};
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let dir = tempfile::tempdir().expect("tmp");
        let output: crate::config::OutputConfig =
            toml::from_str(&format!("url = \"file://{}\"", dir.path().display())).expect("url");
        let lake = rt.block_on(Lake::open(&output)).expect("lake");
        let opts = SinkOptions {
            compression: Compression::Snappy,
            max_file_bytes: 256 << 20,
            row_group_rows: 1_000_000,
            memory_limit,
            encoders: 1,
            tmp_dir: dir.path().join("tmp"),
            staging_prefix: None,
            defer_publish: false,
            may_exist: false,
        };
        let mut sink =
            Sink::new(lake, rt.handle().clone(), opts, Utc::now(), Lsn(1)).expect("sink");
        let cols = vec![
            ColumnSpec::new("id", oid::INT4, -1, true),
            ColumnSpec::new("day", oid::DATE, -1, false),
            ColumnSpec::new("notes", oid::TEXT, -1, false),
        ];
        let schema = Arc::new(TableSchema::new("public", "t", cols, Some("day")).expect("schema"));
        let mut meta = RowMeta {
            change_type: ChangeType::Snapshot,
            lsn: 1,
            seq: 0,
            commit_us: 0,
        };
        // Day 1 just crosses one page's worth of rows, day 2 stays far below it, day 3
        // has few rows but more than a page of bytes (large TOASTed values).
        let big = ONE_PAGE_ROWS as i32 + 1;
        let wide = "x".repeat(40_000);
        for (day, rows, notes) in [(1i32, big, ""), (2, 10, ""), (3, 40, wide.as_str())] {
            for id in 0..rows {
                let (id, d) = (id.to_be_bytes(), day.to_be_bytes());
                let values = [
                    Datum::Binary(&id),
                    Datum::Binary(&d),
                    Datum::Text(notes.as_bytes()),
                ];
                sink.append(
                    "t",
                    &schema,
                    PartitionKey::Column(Some(day)),
                    &meta,
                    values.into_iter(),
                )
                .expect("append");
                meta.seq += 1;
            }
        }
        assert_eq!(sink.spill.spilled_bytes() > 0, spills, "rows spilled");
        let files = rt.block_on(async { tokio::task::block_in_place(|| sink.finish()) });
        let files = files.expect("finish");
        assert_eq!(files.len(), 3);
        for f in files {
            let file = File::open(dir.path().join(&f.key)).expect("file");
            let reader =
                parquet::file::serialized_reader::SerializedFileReader::new(file).expect("parquet");
            let meta = parquet::file::reader::FileReader::metadata(&reader);
            let has_index = meta.row_group(0).column(0).offset_index_offset().is_some();
            let wide = f.rows == 40;
            assert_eq!(
                has_index,
                f.rows > u64::from(ONE_PAGE_ROWS) || wide,
                "{} rows",
                f.rows
            );
        }
    }
}
