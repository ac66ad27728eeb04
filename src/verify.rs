//! `slot2lake verify`: the lake against the source, at one consistent point.
//!
//! ```text
//!  temporary slot + exported snapshot ──▶ consistent point CP
//!  catch the lake up past CP: the running consumer's /flush, or `run --once` here
//!  source @ CP : COPY (FORMAT binary) under the snapshot ─▶ key ─▶ row hash
//!  lake   @ CP : every file of the table, rows with change_lsn < CP (snapshot rows ≤ CP)
//!                ─▶ latest version per key by (change_lsn, change_seq), deletes and rows
//!                   before a TRUNCATE removed ─▶ key ─▶ row hash
//!  compare: missing (in the source, not the lake), extra, different
//! ```
//!
//! Because every lake row carries its commit LSN, the lake's state at any LSN it covers
//! can be rebuilt, so the comparison needs no quiet database. Both sides are turned into
//! Arrow values and formatted the same way before hashing, so a row's hash does not
//! depend on where it was read; the source side uses slot2lake's own value decoders
//! (their correctness is what the test suite checks with DuckDB and psycopg2 — `verify`
//! checks what the pipeline did with the rows: lost, duplicated, stale, resurrected).
//! Memory: one entry per key of the table being verified.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Int64Array, ListArray, RecordBatch, StringArray};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use futures::StreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

use crate::decode::schema::{CHANGE_LSN, CHANGE_SEQ, CHANGE_TYPE, UNCHANGED_COLUMNS};
use crate::decode::{ChangeType, RowBatch, RowMeta, TableSchema, Warnings};
use crate::lake::Lake;
use crate::lsn::Lsn;
use crate::pipeline::{Pipeline, RunError};
use crate::source::copy::CopyParser;
use crate::source::replication::{ReplicationStream, StreamOptions};
use crate::source::snapshot::{copy_datum, copy_query, import};
use crate::source::{self, introspect, query_error};

/// Keys listed per kind of difference, at most.
const SHOWN: usize = 20;

/// Source rows decoded and compared at a time.
const BATCH_ROWS: usize = 8192;

/// How one table compares.
#[derive(Debug, Default, Serialize)]
pub struct TableReport {
    /// Table folder.
    pub table: String,
    /// Rows in the source at the consistent point.
    pub source_rows: u64,
    /// Live rows in the lake's latest state at the consistent point.
    pub lake_rows: u64,
    /// Keys in the source but not in the lake.
    pub missing: u64,
    /// Keys in the lake but not in the source.
    pub extra: u64,
    /// Keys whose latest row differs.
    pub different: u64,
    /// Source rows outside the table's `snapshot_where` that the lake never had: the
    /// first snapshot left them out and no change has brought them in. Not compared (a
    /// lost change of such a row cannot be told from an unchanged row).
    #[serde(skip_serializing_if = "crate::checkpoint::is_zero")]
    pub outside_snapshot_where: u64,
    /// Examples of each, as `column=value` lists.
    pub examples: Vec<String>,
    /// With `output.format = "iceberg"`: the current-state table against the changelog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_state: Option<CurrentReport>,
}

impl TableReport {
    /// Whether the lake equals the source (and the current state its changelog).
    pub fn ok(&self) -> bool {
        self.missing == 0
            && self.extra == 0
            && self.different == 0
            && self.current_state.as_ref().is_none_or(CurrentReport::ok)
    }
}

/// How a current-state Iceberg table compares with the changelog it is folded from, both
/// at their current snapshots: the changelog's latest version of each key (verified
/// against the source above) must be the current state's row.
#[derive(Debug, Default, Serialize)]
pub struct CurrentReport {
    /// The LSN both tables stand at.
    pub lsn: Option<Lsn>,
    /// Rows in the current-state table.
    pub rows: u64,
    /// Keys live in the changelog, absent from the current state.
    pub missing: u64,
    /// Keys in the current state that the changelog has deleted or never had.
    pub extra: u64,
    /// Keys whose row differs.
    pub different: u64,
    /// Examples of each.
    pub examples: Vec<String>,
    /// Why the tables could not be compared (they stand at different LSNs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_compared: Option<String>,
}

impl CurrentReport {
    /// Whether the current state is its changelog's.
    pub fn ok(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0 && self.not_compared.is_none()
    }
}

/// The outcome of `verify`.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    /// The position both sides were compared at.
    pub consistent_point: Lsn,
    /// Per table.
    pub tables: Vec<TableReport>,
}

/// The newest version of a key in the lake.
struct Latest {
    lsn: i64,
    seq: i64,
    live: bool,
    /// Hash of the columns that cannot be TOASTed, as the newest version has them.
    fixed: u64,
    /// Per TOASTable column: the newest version that carried it (not listed in
    /// `unchanged_columns`), and its value's hash.
    carried: Vec<Option<(i64, i64, u64)>>,
}

impl Latest {
    fn hash(&self) -> u64 {
        combine(
            self.fixed,
            self.carried.iter().map(|c| c.map_or(0, |c| c.2)),
        )
    }
}

/// What the lake holds for one table at the consistent point.
enum LakeState {
    /// The newest version of every key.
    Keyed(HashMap<String, Latest>),
    /// Without a key, the multiset of rows: copies of each row value (inserted minus deleted).
    Keyless(HashMap<String, i64>),
}

/// One row's hash from the hashes of its columns that cannot be TOASTed and those that can.
fn combine(fixed: u64, toasted: impl Iterator<Item = u64>) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    fixed.hash(&mut hasher);
    for h in toasted {
        h.hash(&mut hasher);
    }
    hasher.finish()
}

/// Why `verify` could not compare (as opposed to finding differences, which it reports).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// `--table` names no configured table.
    #[error("no configured table named {0}")]
    NoTable(String),
    /// The temporary slot was created without a position.
    #[error("the temporary slot reports no consistent point")]
    NoConsistentPoint,
    /// The lake could not be caught up past the consistent point.
    #[error("the lake was flushed only to {reached:?}, before the consistent point {cp}; run verify again")]
    Behind {
        /// How far the catch-up got.
        reached: Option<Lsn>,
        /// Where verify compares.
        cp: Lsn,
    },
    /// Connecting, reading the slot or the lake, or catching up failed.
    #[error(transparent)]
    Run(Box<RunError>),
    /// The running consumer did not answer the flush request.
    #[error(transparent)]
    Consumer(#[from] crate::service::admin::FlushClientError),
    /// A lake file or a source value could not be read for the comparison.
    #[error("{what}: {message}")]
    Read {
        /// What was being read.
        what: String,
        /// Why it failed.
        message: String,
    },
}

/// Errors of the steps verify shares with a run, taken as that run's error.
macro_rules! via_run_error {
    ($($t:ty),*) => {$(
        impl From<$t> for VerifyError {
            fn from(e: $t) -> Self {
                VerifyError::Run(Box::new(e.into()))
            }
        }
    )*};
}
via_run_error!(
    RunError,
    crate::source::SourceError,
    crate::lake::LakeError,
    crate::source::introspect::TableError,
    crate::source::copy::CopyError
);

impl VerifyError {
    fn read(what: &str, e: impl std::fmt::Display) -> Self {
        VerifyError::Read {
            what: what.to_string(),
            message: e.to_string(),
        }
    }
}

/// Compares `tables` (all configured tables when empty) with the source.
pub async fn verify(pipeline: Pipeline, tables: &[String]) -> Result<VerifyReport, VerifyError> {
    let pipeline = Arc::new(pipeline);
    let config = pipeline.config().clone();
    let selected: Vec<(String, Arc<TableSchema>)> = pipeline
        .catalog_tables()
        .into_iter()
        .filter(|t| tables.is_empty() || tables.contains(&t.folder))
        .map(|t| (t.folder, t.schema))
        .collect();
    if selected.is_empty() {
        return Err(VerifyError::NoTable(tables.join(", ")));
    }
    let temp_slot = format!("{}_verify_{}", config.source.slot, std::process::id());
    let mut repl = ReplicationStream::connect(
        &config.source.url,
        &StreamOptions {
            binary: true,
            export_snapshot: true,
            temporary: true,
            ..pipeline.stream_options(&temp_slot)
        },
    )
    .await?;
    let snapshot = repl.create_slot_exporting().await?;
    // One connection reads the slot, then imports its snapshot for the comparison.
    let mut client = source::open(&config.source).await?;
    let cp = introspect::slot_info(&client, &temp_slot)
        .await?
        .and_then(|s| s.confirmed_flush)
        .ok_or(VerifyError::NoConsistentPoint)?;
    tracing::info!(consistent_point = %cp, "verify: catching the lake up");
    catch_up(&pipeline, cp).await?;

    let (txn, _) = import(&mut client, &snapshot).await?;

    let mut reports = Vec::new();
    for (folder, schema) in &selected {
        let files = parquet_files(pipeline.lake(), folder).await?;
        let mut latest = lake_state(pipeline.lake(), &files, schema, cp).await?;
        let mut report = TableReport {
            table: folder.clone(),
            lake_rows: match &latest {
                LakeState::Keyed(m) => m.values().filter(|l| l.live).count() as u64,
                LakeState::Keyless(m) => m.values().filter(|n| **n > 0).map(|n| *n as u64).sum(),
            },
            ..Default::default()
        };
        // The rows the publication publishes, as the snapshot copies them.
        let filter: Vec<String> = pipeline
            .table_info(folder)
            .and_then(|i| i.row_filter.clone())
            .map(|f| format!("({f})"))
            .into_iter()
            .collect();
        let snapshot_where = config
            .tables
            .iter()
            .find(|t| t.folder() == folder)
            .and_then(|t| t.snapshot_where.clone());
        match snapshot_where {
            None => compare_copy(&txn, &filter, schema, &mut latest, &mut report, false).await?,
            Some(w) => {
                // Rows the first snapshot took must be in the lake; rows it left out are
                // only if a change has brought them in since.
                let inside = [filter.clone(), vec![format!("({w})")]].concat();
                compare_copy(&txn, &inside, schema, &mut latest, &mut report, false).await?;
                let outside = [filter, vec![format!("({w}) IS NOT TRUE")]].concat();
                compare_copy(&txn, &outside, schema, &mut latest, &mut report, true).await?;
            }
        }
        let left: Vec<(&String, u64)> = match &latest {
            LakeState::Keyed(m) => m
                .iter()
                .filter(|(_, l)| l.live)
                .map(|(k, _)| (k, 1))
                .collect(),
            LakeState::Keyless(m) => m
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k, *n as u64))
                .collect(),
        };
        for (key, n) in left {
            report.extra += n;
            if report.examples.len() < SHOWN * 3 {
                report.examples.push(format!("extra in the lake: {key}"));
            }
        }
        if config.output.format == crate::config::TableFormat::Iceberg {
            report.current_state = current_state(pipeline.lake(), folder, schema).await?;
        }
        tracing::info!(table = %folder, ok = report.ok(), "verified");
        reports.push(report);
    }
    txn.commit()
        .await
        .map_err(|e| query_error("ending the verify transaction", &e))?;
    drop(repl);
    // Nothing of verify's may pin WAL once it returns.
    if !introspect::wait_slot_gone(&client, &temp_slot).await? {
        tracing::warn!(slot = %temp_slot, "verify's temporary slot is still there; PostgreSQL drops it when its connection's backend exits");
    }
    Ok(VerifyReport {
        consistent_point: cp,
        tables: reports,
    })
}

/// Makes sure every change committed before `cp` is in the lake.
async fn catch_up(pipeline: &Arc<Pipeline>, cp: Lsn) -> Result<(), VerifyError> {
    match crate::service::admin::request_flush(pipeline.config().admin.listen).await {
        Ok(answer) => {
            let cut: Option<Lsn> = answer["cut"].as_str().and_then(|s| s.parse().ok());
            if cut.is_some_and(|c| c >= cp) {
                return Ok(());
            }
            Err(VerifyError::Behind { reached: cut, cp })
        }
        Err(crate::service::admin::FlushClientError::NotRunning(_)) => {
            let report = crate::service::once(pipeline.clone()).await?;
            match report.acked {
                Some(a) if a >= cp => Ok(()),
                reached => Err(VerifyError::Behind { reached, cp }),
            }
        }
        Err(e) => Err(VerifyError::Consumer(e)),
    }
}

/// Each value formatted the same way whichever side it came from.
fn cell(
    formatters: &[Option<ArrayFormatter<'_>>],
    columns: &[ArrayRef],
    col: usize,
    row: usize,
) -> String {
    match &formatters[col] {
        Some(f) if columns[col].is_valid(row) => f.value(row).to_string(),
        _ => "\u{2400}".to_string(),
    }
}

/// A row's identity and the hashes of its values: the key (all columns without a key),
/// the hash of the columns that cannot be TOASTed, and each TOASTable column's hash.
fn key_and_hash(
    schema: &TableSchema,
    formatters: &[Option<ArrayFormatter<'_>>],
    columns: &[ArrayRef],
    row: usize,
) -> (String, u64, Vec<u64>) {
    let keyless = !schema.columns.iter().any(|c| c.is_key);
    let mut key = String::new();
    let mut fixed = std::collections::hash_map::DefaultHasher::new();
    let mut toasted = Vec::new();
    for (i, c) in schema.columns.iter().enumerate() {
        let v = cell(formatters, columns, i, row);
        if c.is_key || keyless {
            if !key.is_empty() {
                key.push_str(", ");
            }
            key.push_str(&format!("{}={v}", c.name));
        }
        if c.kind.may_be_toasted() {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            v.hash(&mut h);
            toasted.push(h.finish());
        } else {
            v.hash(&mut fixed);
        }
    }
    (key, fixed.finish(), toasted)
}

/// The source's columns from a batch (missing ones as NULL), cast to the source's types.
fn aligned(batch: &RecordBatch, schema: &TableSchema) -> Result<Vec<ArrayRef>, VerifyError> {
    schema
        .columns
        .iter()
        .map(|c| {
            let want = c.kind.data_type();
            match batch.column_by_name(&c.name) {
                Some(a) if a.data_type() == &want => Ok(a.clone()),
                Some(a) => arrow_cast::cast(a, &want)
                    .map_err(|e| VerifyError::read(&format!("column {}", c.name), e)),
                None => Ok(arrow_array::new_null_array(&want, batch.num_rows())),
            }
        })
        .collect()
}

fn formatters<'a>(
    columns: &'a [ArrayRef],
    options: &'a FormatOptions<'a>,
) -> Vec<Option<ArrayFormatter<'a>>> {
    columns
        .iter()
        .map(|a| ArrayFormatter::try_new(a.as_ref(), options).ok())
        .collect()
}

/// Compares the source's rows matching `conds` with the lake's; `absent_expected`: a
/// row the lake never had is counted in `outside_snapshot_where`, not as missing.
async fn compare_copy(
    txn: &tokio_postgres::Transaction<'_>,
    conds: &[String],
    schema: &Arc<TableSchema>,
    latest: &mut LakeState,
    report: &mut TableReport,
    absent_expected: bool,
) -> Result<(), VerifyError> {
    let query = copy_query(schema, conds);
    let stream = txn
        .copy_out(&query)
        .await
        .map_err(|e| query_error(format!("reading {}", schema.qualified_name()), &e))?;
    let mut stream = std::pin::pin!(stream);
    let mut parser = CopyParser::new();
    let mut batch = RowBatch::new(schema.clone(), BATCH_ROWS);
    let mut warnings = Warnings::default();
    let meta = RowMeta {
        change_type: ChangeType::Snapshot,
        lsn: 0,
        seq: 0,
        commit_us: 0,
    };
    let kinds: Vec<_> = schema.columns.iter().map(|c| c.kind).collect();
    while let Some(data) = stream.next().await {
        let data =
            data.map_err(|e| query_error(format!("reading {}", schema.qualified_name()), &e))?;
        parser.feed(
            &data,
            |fields: &[Option<&[u8]>]| -> Result<(), VerifyError> {
                batch
                    .append(
                        kinds.iter().zip(fields).map(|(k, f)| copy_datum(*k, *f)),
                        &meta,
                        &mut warnings,
                    )
                    .map_err(|e| VerifyError::read("the source's COPY", e))
            },
        )?;
        if batch.rows() >= BATCH_ROWS {
            compare_source(&batch.finish(0), schema, latest, report, absent_expected)?;
        }
    }
    if batch.rows() > 0 {
        compare_source(&batch.finish(0), schema, latest, report, absent_expected)?;
    }
    Ok(())
}

fn compare_source(
    batch: &RecordBatch,
    schema: &TableSchema,
    latest: &mut LakeState,
    report: &mut TableReport,
    absent_expected: bool,
) -> Result<(), VerifyError> {
    let columns = aligned(batch, schema)?;
    let options = FormatOptions::default();
    let f = formatters(&columns, &options);
    for row in 0..batch.num_rows() {
        report.source_rows += 1;
        let (key, fixed, toasted) = key_and_hash(schema, &f, &columns, row);
        let latest = match latest {
            LakeState::Keyed(m) => m,
            LakeState::Keyless(m) => {
                let n = m.entry(key.clone()).or_default();
                *n -= 1;
                if *n < 0 && absent_expected {
                    report.outside_snapshot_where += 1;
                } else if *n < 0 {
                    report.missing += 1;
                    if report.examples.len() < SHOWN * 3 {
                        report
                            .examples
                            .push(format!("missing from the lake: {key}"));
                    }
                }
                continue;
            }
        };
        let hash = combine(fixed, toasted.into_iter());
        match latest.remove(&key) {
            Some(l) if l.live && l.hash() == hash => {}
            Some(l) if l.live => {
                report.different += 1;
                if report.examples.len() < SHOWN * 3 {
                    report.examples.push(format!("different: {key}"));
                }
            }
            None if absent_expected => report.outside_snapshot_where += 1,
            _ => {
                report.missing += 1;
                if report.examples.len() < SHOWN * 3 {
                    report
                        .examples
                        .push(format!("missing from the lake: {key}"));
                }
            }
        }
    }
    Ok(())
}

/// The lake's latest state of a table as of `cp`.
async fn lake_state(
    lake: &Lake,
    files: &[String],
    schema: &TableSchema,
    cp: Lsn,
) -> Result<LakeState, VerifyError> {
    let cp = cp.as_i64();
    let keyless = !schema.columns.iter().any(|c| c.is_key);
    // Without a key a row value's copies are counted, which needs the last TRUNCATE
    // before counting: a first pass finds it. With a key, superseded keys are dropped
    // at the end.
    let mut truncated: Option<(i64, i64)> = None;
    if keyless {
        for_each_row(lake, files, schema, cp, |row| {
            if row.change_type == "TRUNCATE" {
                truncated = truncated.max(Some((row.lsn, row.seq)));
            }
        })
        .await?;
        let mut copies: HashMap<String, i64> = HashMap::new();
        // A row version seen twice (while `compact` swaps files) counts once.
        let mut seen = std::collections::HashSet::new();
        for_each_row(lake, files, schema, cp, |row| {
            if row.change_type == "TRUNCATE" || truncated.is_some_and(|c| (row.lsn, row.seq) <= c) {
                return;
            }
            if !seen.insert((row.lsn, row.seq)) {
                return;
            }
            let (key, _, _) = key_and_hash(schema, row.formatters, row.columns, row.index);
            *copies.entry(key).or_default() += if row.change_type == "DELETE" { -1 } else { 1 };
        })
        .await?;
        return Ok(LakeState::Keyless(copies));
    }
    let toasted: Vec<usize> = schema
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.kind.may_be_toasted())
        .map(|(i, _)| i)
        .collect();
    let mut latest: HashMap<String, Latest> = HashMap::new();
    for_each_row(lake, files, schema, cp, |row| {
        let (l, s) = (row.lsn, row.seq);
        if row.change_type == "TRUNCATE" {
            truncated = truncated.max(Some((l, s)));
            return;
        }
        let (k, fixed, hashes) = key_and_hash(schema, row.formatters, row.columns, row.index);
        let entry = latest.entry(k).or_insert_with(|| Latest {
            lsn: i64::MIN,
            seq: i64::MIN,
            live: false,
            fixed: 0,
            carried: vec![None; toasted.len()],
        });
        if (l, s) > (entry.lsn, entry.seq) {
            entry.lsn = l;
            entry.seq = s;
            entry.live = row.change_type != "DELETE";
            entry.fixed = fixed;
        }
        if row.change_type == "DELETE" {
            return;
        }
        for (slot, (col, h)) in entry.carried.iter_mut().zip(toasted.iter().zip(hashes)) {
            let name = &schema.columns[*col].name;
            if row.unchanged.contains(name) {
                continue;
            }
            if slot.is_none_or(|(sl, ss, _)| (l, s) > (sl, ss)) {
                *slot = Some((l, s, h));
            }
        }
    })
    .await?;
    if let Some(cut) = truncated {
        latest.retain(|_, l| (l.lsn, l.seq) > cut);
    }
    Ok(LakeState::Keyed(latest))
}

/// The current-state Iceberg table of a keyed table against the latest versions in the
/// changelog files its changelog table lists, both at their current snapshots; `None`
/// for a table without both tables (keyless, or not yet committed).
async fn current_state(
    lake: &Lake,
    folder: &str,
    schema: &TableSchema,
) -> Result<Option<CurrentReport>, VerifyError> {
    use crate::iceberg::{catalog::LocalCatalog, current, scan::LiveRows, spec, table};
    let catalog = LocalCatalog::new(lake.clone());
    let iceberg = |e: table::IcebergError| VerifyError::read(folder, e);
    let load = |t: String| {
        let catalog = &catalog;
        async move { catalog.load(&t).await.map_err(|e| iceberg(e.into())) }
    };
    let (Some(changelog), Some(state)) = (
        load(folder.to_string()).await?,
        load(current::folder_of(folder)).await?,
    ) else {
        return Ok(None);
    };
    let lsn_of = |m: &spec::TableMetadata| m.current_snapshot().and_then(spec::lsn_of).map(Lsn);
    let mut report = CurrentReport {
        lsn: lsn_of(&state.metadata),
        ..Default::default()
    };
    if lsn_of(&changelog.metadata) != report.lsn {
        report.not_compared = Some(format!(
            "the changelog stands at {:?} and the current state at {:?}: a commit between them is missing (the next flush retries it)",
            lsn_of(&changelog.metadata),
            report.lsn
        ));
        return Ok(Some(report));
    }
    let files: Vec<String> = table::live_data_files(&catalog, &changelog.metadata)
        .await
        .map_err(iceberg)?
        .into_iter()
        .map(|(f, _)| catalog.key_of(&f.file_path))
        .collect();
    let LakeState::Keyed(mut latest) = lake_state(lake, &files, schema, Lsn(u64::MAX)).await?
    else {
        return Ok(None);
    };
    let toasted: Vec<&str> = schema
        .columns
        .iter()
        .filter(|c| c.kind.may_be_toasted())
        .map(|c| c.name.as_str())
        .collect();
    let example = |report: &mut CurrentReport, e: String| {
        if report.examples.len() < SHOWN * 3 {
            report.examples.push(e);
        }
    };
    let mut rows = LiveRows::of_table(&catalog, &state.metadata, Some(schema.arrow.clone()))
        .await
        .map_err(iceberg)?;
    while let Some(batch) = rows.next().await.map_err(iceberg)? {
        let columns = aligned(&batch, schema)?;
        let options = FormatOptions::default();
        let formatters = formatters(&columns, &options);
        let unchanged = batch.column_by_name(&schema.meta(UNCHANGED_COLUMNS));
        let unchanged = unchanged
            .as_ref()
            .and_then(|a| a.as_any().downcast_ref::<ListArray>());
        for row in 0..batch.num_rows() {
            report.rows += 1;
            let (key, fixed, mut hashes) = key_and_hash(schema, &formatters, &columns, row);
            // A value found nowhere is NULL here and named; the changelog has none either.
            if let Some(list) = unchanged.filter(|l| l.is_valid(row)) {
                let names = list.value(row);
                if let Some(names) = names.as_any().downcast_ref::<StringArray>() {
                    for (h, name) in hashes.iter_mut().zip(&toasted) {
                        if names.iter().flatten().any(|n| n == *name) {
                            *h = 0;
                        }
                    }
                }
            }
            match latest.remove(&key) {
                Some(l) if l.live && l.hash() == combine(fixed, hashes.into_iter()) => {}
                Some(l) if l.live => {
                    report.different += 1;
                    example(
                        &mut report,
                        format!("different in the current state: {key}"),
                    );
                }
                _ => {
                    report.extra += 1;
                    example(&mut report, format!("extra in the current state: {key}"));
                }
            }
        }
    }
    for (key, l) in latest {
        if l.live {
            report.missing += 1;
            example(
                &mut report,
                format!("missing from the current state: {key}"),
            );
        }
    }
    Ok(Some(report))
}

/// One lake row as [`for_each_row`] hands it out.
struct LakeRow<'a> {
    change_type: &'a str,
    lsn: i64,
    seq: i64,
    /// Columns the change did not carry.
    unchanged: Vec<String>,
    formatters: &'a [Option<ArrayFormatter<'a>>],
    columns: &'a [ArrayRef],
    index: usize,
}

/// The Parquet files in a table folder.
async fn parquet_files(lake: &Lake, folder: &str) -> Result<Vec<String>, VerifyError> {
    Ok(lake
        .list(&format!("{folder}/"))
        .await?
        .into_iter()
        .map(|o| o.location.to_string())
        .filter(|k| k.ends_with(".parquet"))
        .collect())
}

/// Calls `f` for every row of `files` that the lake held at `cp`.
async fn for_each_row(
    lake: &Lake,
    files: &[String],
    schema: &TableSchema,
    cp: i64,
    mut f: impl FnMut(LakeRow<'_>),
) -> Result<(), VerifyError> {
    for key in files {
        let bytes = lake
            .get(key)
            .await?
            .ok_or_else(|| VerifyError::read(key, "listed, then not found"))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| VerifyError::read(key, e))?;
        for batch in reader {
            let batch = batch.map_err(|e| VerifyError::read(key, e))?;
            let col = |name: &str| batch.column_by_name(&schema.meta(name)).cloned();
            let (Some(ct), Some(lsn), Some(seq)) =
                (col(CHANGE_TYPE), col(CHANGE_LSN), col(CHANGE_SEQ))
            else {
                continue;
            };
            let (Some(ct), Some(lsn), Some(seq)) = (
                ct.as_any().downcast_ref::<StringArray>(),
                lsn.as_any().downcast_ref::<Int64Array>(),
                seq.as_any().downcast_ref::<Int64Array>(),
            ) else {
                continue;
            };
            let unchanged = col(UNCHANGED_COLUMNS);
            let unchanged = unchanged
                .as_ref()
                .and_then(|a| a.as_any().downcast_ref::<ListArray>());
            let columns = aligned(&batch, schema)?;
            let options = FormatOptions::default();
            let formatters = formatters(&columns, &options);
            for row in 0..batch.num_rows() {
                let (t, l, s) = (ct.value(row), lsn.value(row), seq.value(row));
                let at_snapshot = t == "SNAPSHOT" || (t == "TRUNCATE" && s < 0);
                if l > cp || (l == cp && !at_snapshot) {
                    continue;
                }
                let unchanged = match unchanged {
                    Some(list) if list.is_valid(row) => {
                        let names = list.value(row);
                        names
                            .as_any()
                            .downcast_ref::<StringArray>()
                            .map(|a| a.iter().flatten().map(str::to_string).collect())
                            .unwrap_or_default()
                    }
                    _ => Vec::new(),
                };
                f(LakeRow {
                    change_type: t,
                    lsn: l,
                    seq: s,
                    unchanged,
                    formatters: &formatters,
                    columns: &columns,
                    index: row,
                });
            }
        }
    }
    Ok(())
}
