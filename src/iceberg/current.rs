//! The current-state table: one row per key, the newest version of each, deletes and
//! TRUNCATE applied and unchanged TOAST values resolved, committed beside the changelog
//! at the same LSN.
//!
//! ```text
//!  the flush's changelog files of the table (read back; ∝ the change)
//!    │  fold by (change_lsn, change_seq): per key its last version, or deleted;
//!    │  a TRUNCATE forgets everything before it
//!    ▼
//!  locate: the key columns of the table's live data files, scanned for the touched
//!    │  keys (→ their rows' positions), and the newest earlier row of each key whose
//!    │  update left TOASTed values unsent (→ those values)
//!    ▼
//!  write: one data file of the keys' new rows, one position-delete file of their old
//!    │  rows (merge-on-read: readers skip deleted positions)
//!    ▼
//!  commit (overwrite; a TRUNCATE drops every earlier file), exactly once by commit id
//! ```
//!
//! Merge-on-read with position deletes, not copy-on-write: a flush writes two files
//! whatever the table's size, and pyiceberg and DuckDB read position deletes (pyiceberg
//! does not read equality deletes). Finding the positions costs a scan of the live files'
//! key columns: the table has no key index yet. An older row found again (its key
//! changed twice since the table was compacted) is deleted again, which readers allow.
//! The table is not partitioned, so a flush's two files are all it adds (one data file per
//! key bucket when a flush too large for `flush.memory_limit` is folded in buckets).
//! `slot2lake compact` ([`super::maintain`]) rewrites it with its deletes applied.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_row::{RowConverter, SortField};
use arrow_schema::{DataType, Field, Schema as ArrowSchema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::file::properties::WriterProperties;

use super::catalog::LocalCatalog;
use super::table::{self, Append, Appended, IcebergError, NewFile};
use crate::decode::schema::{CHANGE_LSN, CHANGE_SEQ, CHANGE_TYPE, UNCHANGED_COLUMNS};
use crate::decode::TableSchema;
use crate::lsn::Lsn;

/// Field id of a position-delete file's `file_path` (reserved by the spec).
const DELETE_FILE_PATH_ID: &str = "2147483546";
/// Field id of a position-delete file's `pos` (reserved by the spec).
const DELETE_POS_ID: &str = "2147483545";

/// Rows handed to the Parquet writer at once.
const WRITE_SLICE_ROWS: usize = 65_536;

/// Why the current-state table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CurrentError {
    /// Reading the changelog files or the table's files.
    #[error("current-state table {table}: {message}")]
    Data {
        /// Table folder.
        table: String,
        /// What failed.
        message: String,
    },
}

/// The table folder of a source table's current state.
pub fn folder_of(changelog: &str) -> String {
    format!("{changelog}_current")
}

/// One flush's (or snapshot's) changes of one keyed table.
pub struct Changes<'a> {
    /// The changelog's table folder.
    pub changelog: &'a str,
    /// The table's latest columns.
    pub schema: &'a TableSchema,
    /// The changelog files this flush (or snapshot) wrote for the table.
    pub files: &'a [NewFile],
    /// The LSN the table is complete up to after this commit.
    pub lsn: Lsn,
    /// The commit id (the changelog's).
    pub commit_id: &'a str,
    /// How the table's own files are written (`output.compression`).
    pub writer: &'a WriterProperties,
    /// `flush.memory_limit`: a larger flush is folded in key buckets.
    pub memory_limit: u64,
}

/// What the commit did, and what it could not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The commit.
    pub appended: Appended,
    /// Rows whose TOASTed value was unsent and found nowhere (left NULL and named in
    /// `unchanged_columns`).
    pub unresolved: u64,
}

/// Memory the fold takes per change row beyond its bytes (keys, row numbers, the map,
/// the kept rows and their copy in the new file): measured, a flush of 1M updates of a
/// narrow table peaked at 583 MB in one bucket and at 285 MB in three (89 MB of which
/// the changelog's own writing).
const FOLD_ROW_BYTES: u64 = 512;
/// In-memory Arrow size of a changelog file's bytes, about.
const FOLD_BYTES_FACTOR: u64 = 4;
/// Key buckets of one flush, at most (each rescans the table's key columns).
const MAX_BUCKETS: u64 = 64;

/// How many key buckets the fold of a flush of `rows` change rows in `bytes` of files
/// takes so that one bucket stays within `memory_limit`.
pub fn key_buckets(rows: u64, bytes: u64, memory_limit: u64) -> u64 {
    let need = rows
        .saturating_mul(FOLD_ROW_BYTES)
        .saturating_add(bytes.saturating_mul(FOLD_BYTES_FACTOR));
    need.div_ceil(memory_limit.max(1)).clamp(1, MAX_BUCKETS)
}

/// Folds `changes` into the current-state table and commits it, exactly once.
///
/// A flush larger than `flush.memory_limit` is folded in key buckets (a key's hash picks
/// its bucket; TRUNCATE rows are in every bucket), one after the other: each bucket's
/// keys are folded, located in the table (a key-column scan per bucket) and written as
/// their own data file; the deletes of all buckets go into one file, and one commit
/// takes them all.
pub async fn apply(catalog: &LocalCatalog, changes: &Changes<'_>) -> Result<Applied, IcebergError> {
    let folder = folder_of(changes.changelog);
    let err = |message: String| {
        IcebergError::Current(CurrentError::Data {
            table: folder.clone(),
            message,
        })
    };
    let schema = changes.schema.arrow.clone();
    let keys = key_columns(changes.schema);
    // Two passes, so memory follows the keys the flush touched, not its rows: the fold
    // reads the keys and the ordering columns; then only the rows it keeps are read whole.
    let mut narrow_cols = keys.clone();
    for m in [CHANGE_LSN, CHANGE_SEQ, CHANGE_TYPE, UNCHANGED_COLUMNS] {
        narrow_cols.push(
            schema
                .index_of(&changes.schema.meta(m))
                .map_err(|e| err(e.to_string()))?,
        );
    }
    let rows: u64 = changes.files.iter().map(|f| f.rows).sum();
    let bytes: u64 = changes.files.iter().map(|f| f.bytes).sum();
    let buckets = key_buckets(rows, bytes, changes.memory_limit);
    if buckets > 1 {
        tracing::info!(table = %folder, rows, buckets, "iceberg: current state folded in key buckets to stay within flush.memory_limit");
    }
    for _ in 0..table::COMMIT_ATTEMPTS {
        let base = catalog.load(&folder).await?;
        if let Some(done) = table::done_before(base.as_ref(), changes.commit_id) {
            return Ok(Applied {
                appended: done,
                unresolved: 0,
            });
        }
        let unique = format!("{}", chrono::Utc::now().timestamp_micros());
        let mut files = Vec::new();
        let mut positions = Vec::new();
        let mut unresolved = 0;
        let mut truncated = false;
        let mut live = None;
        for bucket in 0..buckets {
            let mut folded = fold_bucket(
                catalog,
                changes,
                &narrow_cols,
                keys.len(),
                (bucket, buckets),
            )
            .await?;
            truncated = folded.truncated;
            let all = kept_rows(catalog, changes.files, &schema, &mut folded).await?;
            if let (None, Some(b), false) = (&live, &base, folded.truncated) {
                live = Some(table::live_data_files(catalog, &b.metadata).await?);
            }
            let none = Vec::new();
            let table_files = match (&live, folded.truncated) {
                (Some(l), false) => l,
                _ => &none,
            };
            let found = locate(catalog, table_files, &folded, &schema, &keys).await?;
            let (rows, n) = resolve(&all, &folded, &found, changes.schema).map_err(&err)?;
            unresolved += n;
            positions.extend(found.positions);
            if rows.num_rows() > 0 {
                let key = format!("{folder}/data/{unique}-rows-{bucket:02}.parquet");
                files.push(put_file(catalog, &key, &rows, changes.writer).await?);
            }
        }
        positions.sort();
        let mut deletes = Vec::new();
        if !positions.is_empty() {
            let key = format!("{folder}/data/{unique}-deletes.parquet");
            deletes.push(put_deletes(catalog, &key, &positions, changes.writer).await?);
        }
        let append = Append {
            folder: &folder,
            arrow: &schema,
            partition_column: None,
            lsn: changes.lsn,
            commit_id: changes.commit_id.to_string(),
            files,
            deletes,
            replace: truncated,
        };
        if let Some(appended) = table::try_commit(catalog, base.as_ref(), &append).await? {
            return Ok(Applied {
                appended,
                unresolved,
            });
        }
    }
    Err(table::contended(&folder))
}

/// The fold of one key bucket's rows (`bucket.0` of `bucket.1`): the narrow columns
/// (keys first, then the ordering columns) of the flush's rows whose key hashes into
/// it, and every TRUNCATE; row numbers are the flush's.
async fn fold_bucket(
    catalog: &LocalCatalog,
    changes: &Changes<'_>,
    narrow_cols: &[usize],
    key_count: usize,
    (bucket, buckets): (u64, u64),
) -> Result<Folded, IcebergError> {
    let schema = changes.schema.arrow.clone();
    let err = |message: String| data_err(changes.changelog, message);
    let narrow_schema = Arc::new(
        schema
            .project(narrow_cols)
            .map_err(|e| err(e.to_string()))?,
    );
    let narrow_keys: Vec<usize> = (0..key_count).collect();
    let kind_col = key_count + 2;
    let mut batches = Vec::new();
    // Per kept row: its number among all the flush's rows.
    let mut global = Vec::new();
    let mut offset = 0usize;
    for f in changes.files {
        for batch in read(catalog, &f.key, &schema, Some(narrow_cols)).await? {
            let n = batch.num_rows();
            if buckets == 1 {
                global.extend(offset..offset + n);
                batches.push(batch);
            } else {
                let rows = encode_keys(&batch, &narrow_keys).map_err(&err)?;
                let kinds = batch
                    .column(kind_col)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| err("change_type is not a string column".into()))?;
                let keep: Vec<bool> = (0..n)
                    .map(|i| {
                        kinds.value(i) == "TRUNCATE"
                            || bucket_of(rows.row(i).as_ref(), buckets) == bucket
                    })
                    .collect();
                global.extend((0..n).filter(|i| keep[*i]).map(|i| offset + i));
                let keep = arrow_array::BooleanArray::from(keep);
                batches.push(
                    arrow_select::filter::filter_record_batch(&batch, &keep)
                        .map_err(|e| err(e.to_string()))?,
                );
            }
            offset += n;
        }
    }
    let narrow = arrow_select::concat::concat_batches(&narrow_schema, &batches)
        .map_err(|e| err(e.to_string()))?;
    drop(batches);
    let mut folded = fold(&narrow, changes.schema, &narrow_keys).map_err(&err)?;
    for state in folded.keys.values_mut() {
        if let KeyState::Live { row, unsent } = state {
            *row = global[*row];
            for (_, s) in unsent.iter_mut() {
                if let Source::Flush(r) = s {
                    *r = global[*r];
                }
            }
        }
    }
    Ok(folded)
}

/// The bucket of an encoded key (the same within a process, which is all a flush needs).
fn bucket_of(key: &[u8], buckets: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish() % buckets
}

/// The rows of the flush `folded` keeps (each live key's newest row, and earlier rows
/// its unsent columns come from), read whole; `folded`'s row numbers are renumbered
/// into the returned batch.
async fn kept_rows(
    catalog: &LocalCatalog,
    files: &[NewFile],
    schema: &SchemaRef,
    folded: &mut Folded,
) -> Result<RecordBatch, IcebergError> {
    let mut needed: Vec<usize> = Vec::new();
    for state in folded.keys.values() {
        if let KeyState::Live { row, unsent } = state {
            needed.push(*row);
            needed.extend(unsent.iter().filter_map(|(_, s)| match s {
                Source::Flush(r) => Some(*r),
                Source::Table | Source::Missing => None,
            }));
        }
    }
    needed.sort_unstable();
    needed.dedup();
    let mut parts = Vec::new();
    let mut offset = 0usize;
    let mut next = 0usize;
    for f in files {
        let key = f.key.as_str();
        for batch in read(catalog, key, schema, None).await? {
            let end = offset + batch.num_rows();
            let from = next;
            while next < needed.len() && needed[next] < end {
                next += 1;
            }
            if next > from {
                let take = arrow_array::UInt32Array::from_iter_values(
                    needed[from..next].iter().map(|r| (r - offset) as u32),
                );
                parts.push(
                    arrow_select::take::take_record_batch(&batch, &take)
                        .map_err(|e| data_err(key, e.to_string()))?,
                );
            }
            offset = end;
        }
    }
    let renumber = |r: usize| needed.binary_search(&r).unwrap_or_default();
    for state in folded.keys.values_mut() {
        if let KeyState::Live { row, unsent } = state {
            *row = renumber(*row);
            for (_, s) in unsent.iter_mut() {
                if let Source::Flush(r) = s {
                    *r = renumber(*r);
                }
            }
        }
    }
    arrow_select::concat::concat_batches(schema, &parts)
        .map_err(|e| data_err("current", e.to_string()))
}

/// Writes `batch` as the table's Parquet file `key`.
async fn put_file(
    catalog: &LocalCatalog,
    key: &str,
    batch: &RecordBatch,
    props: &WriterProperties,
) -> Result<NewFile, IcebergError> {
    let slices = (0..batch.num_rows())
        .step_by(WRITE_SLICE_ROWS)
        .map(|at| Ok(batch.slice(at, WRITE_SLICE_ROWS.min(batch.num_rows() - at))));
    put_slices(catalog, key, batch.schema(), slices, props).await
}

/// Writes `positions` as the position-delete file `key`, a slice at a time (a delete
/// file's paths repeat: built whole, a million of them would take 100 MB).
async fn put_deletes(
    catalog: &LocalCatalog,
    key: &str,
    positions: &[(Arc<str>, i64)],
    props: &WriterProperties,
) -> Result<NewFile, IcebergError> {
    let slices = positions.chunks(WRITE_SLICE_ROWS).map(delete_batch);
    put_slices(catalog, key, Arc::new(delete_schema()), slices, props).await
}

/// Writes batches handed over one at a time as the table's Parquet file `key`: the
/// writer closes a row group at its size limit instead of holding all.
async fn put_slices(
    catalog: &LocalCatalog,
    key: &str,
    schema: SchemaRef,
    slices: impl Iterator<Item = Result<RecordBatch, String>>,
    props: &WriterProperties,
) -> Result<NewFile, IcebergError> {
    let mut rows = 0u64;
    let write = || -> Result<Bytes, String> {
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, schema, Some(props.clone()))
            .map_err(|e| e.to_string())?;
        for slice in slices {
            let slice = slice?;
            rows += slice.num_rows() as u64;
            w.write(&slice).map_err(|e| e.to_string())?;
        }
        w.close().map_err(|e| e.to_string())?;
        Ok(Bytes::from(buf))
    };
    let bytes = write().map_err(|e| data_err(key, e))?;
    let file = NewFile {
        key: key.to_string(),
        rows,
        bytes: bytes.len() as u64,
        day: None,
    };
    catalog.lake().put(key, bytes).await?;
    Ok(file)
}

fn key_columns(schema: &TableSchema) -> Vec<usize> {
    schema
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_key)
        .map(|(i, _)| i)
        .collect()
}

/// Reads a Parquet object, its columns matched to `schema` by name (a column the file
/// lacks reads as NULL; a narrower type is cast); `only`: just these columns.
async fn read(
    catalog: &LocalCatalog,
    key: &str,
    schema: &SchemaRef,
    only: Option<&[usize]>,
) -> Result<Vec<RecordBatch>, IcebergError> {
    let target: SchemaRef = match only {
        Some(cols) => Arc::new(
            schema
                .project(cols)
                .map_err(|e| data_err(key, e.to_string()))?,
        ),
        None => schema.clone(),
    };
    // A local file is read in place (the footer and the projected columns only).
    if let Some(path) = catalog.lake().local_path(key) {
        let file = std::fs::File::open(&path).map_err(|e| data_err(key, e.to_string()))?;
        return decode(file, key, &target);
    }
    let bytes = catalog
        .lake()
        .get(key)
        .await?
        .ok_or_else(|| data_err(key, "the file is missing".into()))?;
    decode(bytes, key, &target)
}

fn decode<R: parquet::file::reader::ChunkReader + 'static>(
    reader: R,
    key: &str,
    target: &SchemaRef,
) -> Result<Vec<RecordBatch>, IcebergError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(reader)
        .map_err(|e| data_err(key, e.to_string()))?;
    let mask = {
        let file = builder.schema();
        let names: Vec<&str> = target
            .fields()
            .iter()
            .filter(|f| file.field_with_name(f.name()).is_ok())
            .map(|f| f.name().as_str())
            .collect();
        ProjectionMask::columns(builder.parquet_schema(), names)
    };
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| data_err(key, e.to_string()))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| data_err(key, e.to_string()))?;
        out.push(conform(&batch, target).map_err(|e| data_err(key, e))?);
    }
    Ok(out)
}

pub(super) fn data_err(key: &str, message: String) -> IcebergError {
    IcebergError::Current(CurrentError::Data {
        table: key.split('/').next().unwrap_or_default().to_string(),
        message: format!("{key}: {message}"),
    })
}

/// `batch` with `schema`'s columns, by name.
pub(super) fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, String> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => arrow_cast::cast(c, f.data_type()).map_err(|e| e.to_string()),
            None => Ok(arrow_array::new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<ArrayRef>, String>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}

/// Where a column of a key's newest row comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A row of the flush.
    Flush(usize),
    /// The key's row in the table before this flush.
    Table,
    /// Nowhere: NULL, and named in `unchanged_columns`.
    Missing,
}

/// Columns a key's newest row did not carry, and where each comes from.
type Unsent = Vec<(usize, Source)>;

/// A key's state after the flush's changes.
#[derive(Debug, Clone)]
enum KeyState {
    Deleted,
    /// Its newest row, and where its unsent columns come from.
    Live {
        row: usize,
        unsent: Unsent,
    },
}

/// The flush's changes reduced to one state per key.
struct Folded {
    /// Encoded key → state, in the order keys were first seen.
    keys: HashMap<Vec<u8>, KeyState>,
    /// A TRUNCATE came: the table's rows before the flush are all gone.
    truncated: bool,
}

fn fold(all: &RecordBatch, schema: &TableSchema, keys: &[usize]) -> Result<Folded, String> {
    let lsn = column::<Int64Array>(all, &schema.meta(CHANGE_LSN))?;
    let seq = column::<Int64Array>(all, &schema.meta(CHANGE_SEQ))?;
    let kind = column::<StringArray>(all, &schema.meta(CHANGE_TYPE))?;
    let unsent_lists = all
        .column_by_name(&schema.meta(UNCHANGED_COLUMNS))
        .and_then(|c| c.as_any().downcast_ref::<arrow_array::ListArray>())
        .ok_or("no unchanged_columns column")?;
    let rows = encode_keys(all, keys)?;
    let mut order: Vec<usize> = (0..all.num_rows()).collect();
    order.sort_by_key(|&i| (lsn.value(i), seq.value(i)));
    let index_of = |name: &str| schema.columns.iter().position(|c| c.name == name);
    let mut out = Folded {
        keys: HashMap::new(),
        truncated: false,
    };
    for i in order {
        match kind.value(i) {
            "TRUNCATE" => {
                out.keys.clear();
                out.truncated = true;
                continue;
            }
            "DELETE" => {
                out.keys
                    .insert(rows.row(i).as_ref().to_vec(), KeyState::Deleted);
                continue;
            }
            _ => {}
        }
        let key = rows.row(i).as_ref().to_vec();
        let names: Vec<usize> = if unsent_lists.is_null(i) {
            Vec::new()
        } else {
            let v = unsent_lists.value(i);
            let names = v
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or("unchanged_columns is not a list of strings")?;
            names.iter().flatten().filter_map(index_of).collect()
        };
        let previous = out.keys.get(&key);
        let unsent = names
            .into_iter()
            .map(|c| {
                let from = match previous {
                    Some(KeyState::Live { row, unsent }) => unsent
                        .iter()
                        .find(|(col, _)| *col == c)
                        .map_or(Source::Flush(*row), |(_, s)| *s),
                    Some(KeyState::Deleted) => Source::Missing,
                    None if out.truncated => Source::Missing,
                    None => Source::Table,
                };
                (c, from)
            })
            .collect();
        out.keys.insert(key, KeyState::Live { row: i, unsent });
    }
    Ok(out)
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, String> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| format!("column {name} missing or of another type"))
}

fn encode_keys(batch: &RecordBatch, keys: &[usize]) -> Result<arrow_row::Rows, String> {
    let fields = keys
        .iter()
        .map(|&k| SortField::new(batch.schema().field(k).data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields).map_err(|e| e.to_string())?;
    let cols: Vec<ArrayRef> = keys.iter().map(|&k| batch.column(k).clone()).collect();
    converter.convert_columns(&cols).map_err(|e| e.to_string())
}

/// The touched keys' rows in the table before the flush.
#[derive(Default)]
struct Found {
    /// (data file URI, position) of every row of a touched key.
    positions: Vec<(Arc<str>, i64)>,
    /// The newest earlier row of each key some column is wanted from.
    rows: Option<RecordBatch>,
    /// Encoded key → row in `rows`.
    row_of: HashMap<Vec<u8>, usize>,
}

async fn locate(
    catalog: &LocalCatalog,
    live: &[(super::manifest::DataFile, i64)],
    folded: &Folded,
    schema: &SchemaRef,
    keys: &[usize],
) -> Result<Found, IcebergError> {
    let mut found = Found::default();
    if folded.keys.is_empty() {
        return Ok(found);
    }
    let wanted: HashSet<&[u8]> = folded
        .keys
        .iter()
        .filter(|(_, s)| match s {
            KeyState::Live { unsent, .. } => unsent.iter().any(|(_, s)| *s == Source::Table),
            KeyState::Deleted => false,
        })
        .map(|(k, _)| k.as_slice())
        .collect();
    // The key columns' places in a batch read with only them.
    let projected: Vec<usize> = (0..keys.len()).collect();
    // Per wanted key: (sequence number, file, position) of its newest row.
    let mut newest: HashMap<Vec<u8>, (i64, usize, usize)> = HashMap::new();
    for (f, (file, seq)) in live.iter().enumerate() {
        let key = catalog.key_of(&file.file_path);
        let path: Arc<str> = file.file_path.as_str().into();
        let mut pos = 0usize;
        for batch in read(catalog, &key, schema, Some(keys)).await? {
            let rows = encode_keys(&batch, &projected).map_err(|e| data_err(&key, e))?;
            for i in 0..batch.num_rows() {
                let k = rows.row(i);
                if folded.keys.contains_key(k.as_ref()) {
                    found.positions.push((path.clone(), (pos + i) as i64));
                    if wanted.contains(k.as_ref())
                        && newest.get(k.as_ref()).is_none_or(|(s, _, _)| *s < *seq)
                    {
                        newest.insert(k.as_ref().to_vec(), (*seq, f, pos + i));
                    }
                }
            }
            pos += batch.num_rows();
        }
    }
    found.positions.sort();
    // The wanted rows, file by file.
    let mut by_file: HashMap<usize, Vec<(usize, Vec<u8>)>> = HashMap::new();
    for (k, (_, f, p)) in newest {
        by_file.entry(f).or_default().push((p, k));
    }
    let mut parts = Vec::new();
    for (f, mut wanted) in by_file {
        wanted.sort();
        let key = catalog.key_of(&live[f].0.file_path);
        let batches = read(catalog, &key, schema, None).await?;
        let whole = arrow_select::concat::concat_batches(schema, &batches)
            .map_err(|e| data_err(&key, e.to_string()))?;
        let take =
            arrow_array::UInt32Array::from_iter_values(wanted.iter().map(|(p, _)| *p as u32));
        let rows = arrow_select::take::take_record_batch(&whole, &take)
            .map_err(|e| data_err(&key, e.to_string()))?;
        let base: usize = parts.iter().map(RecordBatch::num_rows).sum();
        for (i, (_, k)) in wanted.into_iter().enumerate() {
            found.row_of.insert(k, base + i);
        }
        parts.push(rows);
    }
    if !parts.is_empty() {
        found.rows = Some(
            arrow_select::concat::concat_batches(schema, &parts)
                .map_err(|e| data_err("current", e.to_string()))?,
        );
    }
    Ok(found)
}

/// The new rows of the live keys, unsent columns filled; and how many stayed unresolved.
fn resolve(
    all: &RecordBatch,
    folded: &Folded,
    found: &Found,
    schema: &TableSchema,
) -> Result<(RecordBatch, u64), String> {
    let arrow = &schema.arrow;
    let empty = RecordBatch::new_empty(arrow.clone());
    let old = found.rows.as_ref().unwrap_or(&empty);
    let nulls: Vec<ArrayRef> = arrow
        .fields()
        .iter()
        .map(|f| arrow_array::new_null_array(f.data_type(), 1))
        .collect();
    let mut live: Vec<(&Vec<u8>, usize, &Unsent)> = folded
        .keys
        .iter()
        .filter_map(|(k, s)| match s {
            KeyState::Live { row, unsent } => Some((k, *row, unsent)),
            KeyState::Deleted => None,
        })
        .collect();
    live.sort_by_key(|(_, row, _)| *row);
    let unchanged_idx = arrow
        .index_of(&schema.meta(UNCHANGED_COLUMNS))
        .map_err(|e| e.to_string())?;
    let mut unresolved = 0u64;
    let mut still: Vec<Vec<String>> = Vec::with_capacity(live.len());
    // Most columns come from each key's newest row; only columns some row did not carry
    // are picked per row: (0 = the flush, 1 = the table, 2 = NULL, row).
    let newest = arrow_array::UInt32Array::from_iter_values(live.iter().map(|(_, r, _)| *r as u32));
    let mut picks: std::collections::BTreeMap<usize, Vec<(usize, usize)>> = live
        .iter()
        .flat_map(|(_, _, unsent)| unsent.iter().map(|(c, _)| (*c, Vec::new())))
        .collect();
    for (k, row, unsent) in &live {
        let mut left = Vec::new();
        for (c, pick) in picks.iter_mut() {
            let source = unsent.iter().find(|(col, _)| col == c).map(|(_, s)| *s);
            let at = match source {
                None => (0, *row),
                Some(Source::Flush(r)) => (0, r),
                Some(Source::Table) => match found.row_of.get(*k) {
                    Some(r) => (1, *r),
                    None => {
                        left.push(schema.columns[*c].name.clone());
                        (2, 0)
                    }
                },
                Some(Source::Missing) => {
                    left.push(schema.columns[*c].name.clone());
                    (2, 0)
                }
            };
            pick.push(at);
        }
        if !left.is_empty() {
            unresolved += 1;
        }
        still.push(left);
    }
    let mut columns = Vec::with_capacity(arrow.fields().len());
    for (c, null) in nulls.iter().enumerate() {
        if c == unchanged_idx {
            let mut b = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
                "element",
                DataType::Utf8,
                true,
            )));
            for names in &still {
                if names.is_empty() {
                    b.append_null();
                } else {
                    for n in names {
                        b.values().append_value(n);
                    }
                    b.append(true);
                }
            }
            columns.push(Arc::new(b.finish()) as ArrayRef);
            continue;
        }
        let column = match picks.get(&c) {
            Some(pick) => {
                let sources: [&dyn Array; 3] = [all.column(c), old.column(c), null];
                arrow_select::interleave::interleave(&sources, pick)
            }
            None => arrow_select::take::take(all.column(c), &newest, None),
        };
        columns.push(column.map_err(|e| e.to_string())?);
    }
    let batch = RecordBatch::try_new(arrow.clone(), columns).map_err(|e| e.to_string())?;
    Ok((batch, unresolved))
}

/// The schema of a position-delete file, with the field ids the spec reserves.
fn delete_schema() -> ArrowSchema {
    let id = |n: &str| HashMap::from([(super::spec::PARQUET_FIELD_ID.to_string(), n.to_string())]);
    ArrowSchema::new(vec![
        Field::new("file_path", DataType::Utf8, false).with_metadata(id(DELETE_FILE_PATH_ID)),
        Field::new("pos", DataType::Int64, false).with_metadata(id(DELETE_POS_ID)),
    ])
}

fn delete_batch(positions: &[(Arc<str>, i64)]) -> Result<RecordBatch, String> {
    RecordBatch::try_new(
        Arc::new(delete_schema()),
        vec![
            Arc::new(StringArray::from_iter_values(
                positions.iter().map(|(f, _)| &**f),
            )),
            Arc::new(Int64Array::from_iter_values(
                positions.iter().map(|(_, p)| *p),
            )),
        ],
    )
    .map_err(|e| e.to_string())
}

/// A snapshot's files become the whole current-state table (they hold one row per key),
/// registered where they are rather than copied; a backfill's TRUNCATE row is deleted by
/// position.
pub async fn replace_with_snapshot(
    catalog: &LocalCatalog,
    changes: &Changes<'_>,
) -> Result<Applied, IcebergError> {
    let files = changes.files;
    let folder = folder_of(changes.changelog);
    let schema = changes.schema.arrow.clone();
    let change_type = schema
        .index_of(&changes.schema.meta(CHANGE_TYPE))
        .map_err(|e| data_err(changes.changelog, e.to_string()))?;
    // TRUNCATE rows have every source column NULL: they are only in the NULL partition
    // (or the processing date's).
    let mut positions = Vec::new();
    for f in files {
        if f.day.is_some() && changes.schema.partition_column.is_some() {
            continue;
        }
        let mut pos = 0i64;
        for batch in read(catalog, &f.key, &schema, Some(&[change_type])).await? {
            let kinds = column::<StringArray>(&batch, &changes.schema.meta(CHANGE_TYPE))
                .map_err(|e| data_err(&f.key, e))?;
            for (i, k) in kinds.iter().enumerate() {
                if k == Some("TRUNCATE") {
                    positions.push((catalog.uri(&f.key).into(), pos + i as i64));
                }
            }
            pos += batch.num_rows() as i64;
        }
    }
    for _ in 0..table::COMMIT_ATTEMPTS {
        let base = catalog.load(&folder).await?;
        if let Some(done) = table::done_before(base.as_ref(), changes.commit_id) {
            return Ok(Applied {
                appended: done,
                unresolved: 0,
            });
        }
        // Replacing a table that already holds later changes would lose them.
        if let Some(ahead) = base
            .as_ref()
            .and_then(|b| b.metadata.current_snapshot())
            .and_then(super::spec::lsn_of)
            .filter(|l| *l > changes.lsn.0)
        {
            return Err(data_err(
                &folder,
                format!(
                    "the table holds changes up to {} and the snapshot is at {}: replacing it would lose them; run the backfill again while no flush runs (stop `slot2lake run`)",
                    Lsn(ahead),
                    changes.lsn
                ),
            ));
        }
        let mut deletes = Vec::new();
        if !positions.is_empty() {
            let unique = chrono::Utc::now().timestamp_micros();
            let key = format!("{folder}/data/{unique}-deletes.parquet");
            deletes.push(put_deletes(catalog, &key, &positions, changes.writer).await?);
        }
        let append = Append {
            folder: &folder,
            arrow: &schema,
            partition_column: None,
            lsn: changes.lsn,
            commit_id: changes.commit_id.to_string(),
            files: files
                .iter()
                .map(|f| NewFile {
                    day: None,
                    ..f.clone()
                })
                .collect(),
            deletes,
            replace: true,
        };
        if let Some(appended) = table::try_commit(catalog, base.as_ref(), &append).await? {
            return Ok(Applied {
                appended,
                unresolved: 0,
            });
        }
    }
    Err(table::contended(&folder))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_over_the_memory_limit_is_folded_in_buckets() {
        const MB: u64 = 1 << 20;
        for (rows, bytes, limit, want) in [
            (0, 0, 128 * MB, 1),
            (10_000, 400_000, 128 * MB, 1),
            // 1M updates of a narrow table: about 512 MB + 4 × 40 MB.
            (1_000_000, 40 * MB, 128 * MB, 6),
            (1_000_000, 40 * MB, 1024 * MB, 1),
            (20_000, 600_000, MB, 13),
            // Never more than MAX_BUCKETS scans of the table.
            (u64::MAX, u64::MAX, MB, MAX_BUCKETS),
        ] {
            assert_eq!(
                key_buckets(rows, bytes, limit),
                want,
                "{rows} rows, {bytes} bytes, limit {limit}"
            );
        }
    }

    /// More rows than one slice, and row groups closed at their byte limit: every row
    /// comes back, in order.
    #[tokio::test]
    async fn large_files_are_written_in_slices_and_row_groups() {
        let dir = tempfile::tempdir().expect("tmp");
        let text = format!("url = \"file://{}\"", dir.path().display());
        let output: crate::config::OutputConfig = toml::from_str(&text).expect("output");
        let catalog = LocalCatalog::new(crate::lake::Lake::open(&output).await.expect("lake"));
        let n = 3 * WRITE_SLICE_ROWS + 17;
        let positions: Vec<(Arc<str>, i64)> = (0..n as i64)
            .map(|p| (Arc::<str>::from("/lake/t/f.parquet"), p))
            .collect();
        let props = WriterProperties::builder()
            .set_max_row_group_bytes(Some(256 * 1024))
            .build();
        let written = put_deletes(&catalog, "t/d.parquet", &positions, &props)
            .await
            .expect("write");
        assert_eq!(written.rows, n as u64);
        let file = std::fs::File::open(dir.path().join("t/d.parquet")).expect("file");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("reader");
        assert!(
            reader.metadata().num_row_groups() > 1,
            "row groups closed at the limit"
        );
        let mut pos = Vec::new();
        for b in reader.build().expect("build") {
            let b = b.expect("batch");
            let col = b
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("pos");
            pos.extend(col.values().iter().copied());
        }
        assert_eq!(pos, (0..n as i64).collect::<Vec<_>>());
    }
}
