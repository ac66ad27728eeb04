//! `slot2lake compact`: merges each partition's small files into right-sized ones.
//!
//! ```text
//!  plan      list the table's committed files per partition (name LSN ≤ watermark);
//!            a partition with two or more files under half of max_file_size is merged
//!  intent    _slot2lake/<slot>/compact.json {time, partitions: inputs → output names},
//!            created with a conditional put: one compaction at a time
//!  per partition:
//!            inputs, grouped by schema, copied row for row into new files (temp folder)
//!            ─▶ published under the intent's names ─▶ the inputs deleted
//!  done      intent removed
//! ```
//!
//! Durable after each step, and what a rerun does: before the intent, nothing changed;
//! after it, a rerun finishes the intent before planning anew: outputs already in place
//! are kept (the rest are rewritten identically from the same inputs), then the inputs
//! still there are deleted. Inputs are deleted only once all of a partition's outputs
//! exist, so no row is ever missing; between an output's publication and its inputs'
//! deletion a reader of the raw files sees those rows twice. The latest-state views and
//! `verify` count a row version (`change_lsn`, `change_seq`) once, so what they return
//! never changes. Files of a flush or snapshot not yet committed (their LSN is past the
//! table's watermark) are never touched, so a retried flush finds its files where it
//! left them. Partition folders stay as they are, so Glue partitions stay right.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use arrow_array::RecordBatchReader;
use arrow_schema::SchemaRef;
use chrono::{DateTime, NaiveDate, Utc};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointError, Checkpoints, CompactReport};
use crate::config::Config;
use crate::lake::{Lake, LakeError};
use crate::lsn::Lsn;
use crate::sink::FileName;

/// A compaction that could not finish; rerunning `compact` resumes it.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// The store failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// A watermark could not be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Reading or writing Parquet failed.
    #[error("{key}: {source}")]
    Parquet {
        /// The file.
        key: String,
        /// The error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A local temp file failed.
    #[error("temporary file {path}: {source}")]
    Tmp {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Maintaining an Iceberg table failed.
    #[error(transparent)]
    Iceberg(#[from] crate::iceberg::table::IcebergError),
    /// Re-pointing Glue at a maintained Iceberg table failed.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    /// Another compaction holds the intent.
    #[error("another compaction started at the same moment ({key} appeared); let it finish, then run compact again")]
    Busy {
        /// The intent's key.
        key: String,
    },
}

/// One partition's merge: which files go in, which come out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMerge {
    /// Table folder.
    pub table: String,
    /// Partition folder below the table (`year=2025/month=01/day=15`).
    pub partition: String,
    /// Keys of the small files, in the order their rows are copied.
    pub inputs: Vec<String>,
}

/// `_slot2lake/<slot>/compact.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactIntent {
    /// Format version.
    pub version: u32,
    /// The compaction's time: output names.
    pub started: DateTime<Utc>,
    /// Partitions to merge.
    pub partitions: Vec<PartitionMerge>,
}

impl CompactIntent {
    /// What the names of its merged files share: `_<started>_compacted_`, to the
    /// microsecond (intents of version 1, from before, named them to the second).
    pub fn infix(&self) -> String {
        compacted_infix(self.version, self.started)
    }
}

/// The intent version this build writes.
const INTENT_VERSION: u32 = 2;

fn compacted_infix(version: u32, started: DateTime<Utc>) -> String {
    let format = if version < 2 {
        "%Y%m%d_%H%M%S"
    } else {
        "%Y%m%d_%H%M%S_%6f"
    };
    format!("_{}_compacted_", started.format(format))
}

/// A start time no listed file's name carries: two compactions within one clock tick
/// (or a clock set back) would otherwise name a merged file after one of its inputs, and
/// delete it with them.
pub fn fresh_start(now: DateTime<Utc>, keys: &[String]) -> DateTime<Utc> {
    let mut started = now;
    while keys
        .iter()
        .any(|k| k.contains(&compacted_infix(INTENT_VERSION, started)))
    {
        started += chrono::Duration::microseconds(1);
    }
    started
}

/// A file in the lake, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The date of a partition folder, if it has one (`year=…/month=…/day=…`, or the
/// `processing_…` form).
fn partition_date(partition: &str) -> Option<NaiveDate> {
    let mut ymd = [0u32; 3];
    let parts: Vec<&str> = partition.split('/').collect();
    if parts.len() != 3 {
        return None;
    }
    for (slot, p) in ymd.iter_mut().zip(parts) {
        *slot = p.split_once('=')?.1.parse().ok()?;
    }
    NaiveDate::from_ymd_opt(ymd[0] as i32, ymd[1], ymd[2])
}

/// Decides which partitions of a table to merge: those with at least two small files,
/// counting only files of committed flushes (name LSN at or below the watermark) and,
/// with `before`, only partitions dated before it.
pub fn plan(
    table: &str,
    files: &[Listed],
    watermark: Option<Lsn>,
    small_below: u64,
    before: Option<NaiveDate>,
) -> Vec<PartitionMerge> {
    let mut by_partition: BTreeMap<&str, Vec<&Listed>> = BTreeMap::new();
    for f in files {
        let Some(rest) = f.key.strip_prefix(&format!("{table}/")) else {
            continue;
        };
        let Some((partition, name)) = rest.rsplit_once('/') else {
            continue;
        };
        if !name.ends_with(".parquet") || f.size >= small_below {
            continue;
        }
        let committed = match FileName::lsn_of(&f.key) {
            Some(lsn) => watermark.is_some_and(|w| lsn <= w),
            None => name.contains("_compacted_"),
        };
        if !committed {
            continue;
        }
        if let Some(before) = before {
            if partition_date(partition).is_none_or(|d| d >= before) {
                continue;
            }
        }
        by_partition.entry(partition).or_default().push(f);
    }
    by_partition
        .into_iter()
        .filter(|(_, fs)| fs.len() >= 2)
        .map(|(partition, fs)| {
            let mut inputs: Vec<String> = fs.iter().map(|f| f.key.clone()).collect();
            inputs.sort();
            PartitionMerge {
                table: table.to_string(),
                partition: partition.to_string(),
                inputs,
            }
        })
        .collect()
}

/// `_slot2lake/<slot>/maintenance.json`: the last compaction that finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCompaction {
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// What it did.
    pub report: CompactReport,
}

impl LastCompaction {
    /// When it finished, as `status` and `check` print it.
    pub fn when(&self) -> String {
        self.finished_at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    }
}

/// The last compaction of the lake's tables that finished, if any.
pub async fn last_compaction(
    checkpoints: &Checkpoints,
) -> Result<Option<LastCompaction>, CheckpointError> {
    checkpoints.read(&checkpoints.keys().maintenance()).await
}

/// Whether `run` maintains the lake after a flush: `[maintenance] interval` is set and
/// the last compaction of every table is that old, or one was left unfinished.
pub fn maintenance_due(
    interval: Option<std::time::Duration>,
    last: Option<DateTime<Utc>>,
    unfinished: bool,
    now: DateTime<Utc>,
) -> bool {
    let Some(interval) = interval else {
        return false;
    };
    let interval = chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX);
    unfinished || last.is_none_or(|l| now.signed_duration_since(l) >= interval)
}

/// Runs [`compact`] on every table when [`maintenance_due`]; `None` when it was not.
pub async fn compact_if_due(
    config: &Config,
    lake: &Lake,
) -> Result<Option<CompactReport>, CompactError> {
    if config.maintenance.interval.is_none() {
        // Not configured: no reads of the lake after every flush.
        return Ok(None);
    }
    let checkpoints = Checkpoints::new(lake.clone(), &config.source.slot);
    let last = last_compaction(&checkpoints).await?.map(|l| l.finished_at);
    let unfinished = lake.exists(&checkpoints.keys().compact_intent()).await?;
    if !maintenance_due(config.maintenance.interval, last, unfinished, Utc::now()) {
        return Ok(None);
    }
    compact(config, lake, &[], None).await.map(Some)
}

/// Finishes an interrupted compaction, then merges the small files of `tables` (all
/// configured tables when empty); a compaction of every table is recorded as the last.
pub async fn compact(
    config: &Config,
    lake: &Lake,
    tables: &[String],
    before: Option<NaiveDate>,
) -> Result<CompactReport, CompactError> {
    let report = if config.output.format == crate::config::TableFormat::Iceberg {
        compact_iceberg(config, lake, tables, before).await?
    } else {
        compact_parquet(config, lake, tables, before).await?
    };
    if tables.is_empty() && before.is_none() {
        let last = LastCompaction {
            finished_at: Utc::now(),
            report: report.clone(),
        };
        let checkpoints = Checkpoints::new(lake.clone(), &config.source.slot);
        checkpoints
            .write(&checkpoints.keys().maintenance(), &last)
            .await?;
    }
    Ok(report)
}

async fn compact_parquet(
    config: &Config,
    lake: &Lake,
    tables: &[String],
    before: Option<NaiveDate>,
) -> Result<CompactReport, CompactError> {
    let checkpoints = Checkpoints::new(lake.clone(), &config.source.slot);
    let key = crate::checkpoint::SlotKeys::new(&config.source.slot).compact_intent();
    let mut report = CompactReport::default();
    if let Some(bytes) = lake.get(&key).await? {
        let intent: CompactIntent =
            serde_json::from_slice(&bytes).map_err(|source| CheckpointError::Corrupt {
                key: key.clone(),
                source,
            })?;
        tracing::warn!(
            partitions = intent.partitions.len(),
            "finishing a compaction an earlier run left incomplete"
        );
        execute(config, lake, &intent, &mut report).await?;
        lake.delete(&key).await?;
    }
    let small_below = config.output.max_file_size.0 / 2;
    let mut partitions = Vec::new();
    let mut listed = Vec::new();
    for t in &config.tables {
        let folder = t.folder();
        if !tables.is_empty() && !tables.iter().any(|x| x == folder || *x == t.name) {
            continue;
        }
        let watermark = checkpoints.watermark(folder).await?.map(|w| w.lsn);
        let files: Vec<Listed> = lake
            .list(&format!("{folder}/"))
            .await?
            .into_iter()
            .map(|o| Listed {
                key: o.location.to_string(),
                size: o.size,
            })
            .collect();
        partitions.extend(plan(folder, &files, watermark, small_below, before));
        listed.extend(files.into_iter().map(|f| f.key));
    }
    if partitions.is_empty() {
        return Ok(report);
    }
    let intent = CompactIntent {
        version: INTENT_VERSION,
        started: fresh_start(Utc::now(), &listed),
        partitions,
    };
    let body = serde_json::to_vec_pretty(&intent).map_err(|source| CheckpointError::Corrupt {
        key: key.clone(),
        source,
    })?;
    if !lake.create(&key, bytes::Bytes::from(body)).await? {
        return Err(CompactError::Busy { key });
    }
    execute(config, lake, &intent, &mut report).await?;
    lake.delete(&key).await?;
    Ok(report)
}

/// Iceberg maintenance of each table's changelog and current state (see
/// [`crate::iceberg::maintain`]); Glue or the REST catalog is pointed at every table it
/// committed to.
async fn compact_iceberg(
    config: &Config,
    lake: &Lake,
    tables: &[String],
    before: Option<NaiveDate>,
) -> Result<CompactReport, CompactError> {
    use crate::iceberg::{catalog::LocalCatalog, maintain};
    let checkpoints = Checkpoints::new(lake.clone(), &config.source.slot);
    let catalog = LocalCatalog::new(lake.clone());
    let tmp = work_dir(config, lake)?;
    let settings = maintain::Settings {
        max_file_size: config.output.max_file_size.0,
        before,
        retention: config.maintenance.snapshot_retention,
        orphan_age: config.maintenance.orphan_age,
        writer: parquet::file::properties::WriterProperties::builder()
            .set_compression(crate::sink::writer::codec(config.output.compression))
            .set_max_row_group_row_count(Some(config.output.row_group_rows))
            .build(),
        tmp: tmp.clone(),
    };
    // Connected once a table has moved: a catalog that is down does not stop a
    // compaction that commits nothing.
    let mut rest = None;
    let glue = matches!(
        config.catalog.target,
        crate::config::Catalog::GlueDirect { .. }
    );
    let mut report = CompactReport::default();
    for t in &config.tables {
        let folder = t.folder();
        if !tables.is_empty() && !tables.iter().any(|x| x == folder || *x == t.name) {
            continue;
        }
        let watermark = checkpoints.watermark(folder).await?.map(|w| w.lsn);
        let moved = maintain::maintain(&catalog, folder, watermark, &settings, &mut report).await?;
        if rest.is_none() && !moved.is_empty() {
            rest = crate::catalog::rest::RestCatalog::configured(config)
                .await
                .map_err(crate::catalog::CatalogError::from)?;
        }
        for table in moved.into_keys() {
            let name = match table.strip_suffix("_current") {
                Some(source) if source == folder => folder.to_string(),
                _ => crate::iceberg::changelog_glue_name(folder),
            };
            if let Some(rest) = &rest {
                rest.point(&name, &catalog, &table)
                    .await
                    .map_err(crate::catalog::CatalogError::from)?;
            }
            if !glue {
                continue;
            }
            let loaded = catalog.load(&table).await;
            let Some(now) = loaded.map_err(crate::iceberg::table::IcebergError::from)? else {
                continue;
            };
            let Some(columns) =
                crate::iceberg::scan::latest_columns(&catalog, &now.metadata).await?
            else {
                continue;
            };
            crate::catalog::glue::point_iceberg_table(
                config,
                &name,
                &catalog.uri(&table),
                &catalog.uri(&now.metadata_key),
                &columns,
            )
            .await?;
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(report)
}

/// This process's folder for files on their way into the lake, where flushes put theirs
/// (removed when the compaction is done).
fn work_dir(config: &Config, lake: &Lake) -> Result<PathBuf, CompactError> {
    let tmp =
        crate::pipeline::tmp_dir(config, lake).join(format!("compact-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|source| CompactError::Tmp {
        path: tmp.clone(),
        source,
    })?;
    Ok(tmp)
}

/// Carries out an intent: merged files first, then the inputs deleted, per partition.
async fn execute(
    config: &Config,
    lake: &Lake,
    intent: &CompactIntent,
    report: &mut CompactReport,
) -> Result<(), CompactError> {
    let tmp = work_dir(config, lake)?;
    for p in &intent.partitions {
        let remaining: Vec<&String> = {
            let mut v = Vec::new();
            for k in &p.inputs {
                if lake.exists(k).await? {
                    v.push(k);
                }
            }
            v
        };
        // Some inputs already deleted: every output of this partition was in place.
        if remaining.len() == p.inputs.len() {
            let written = merge(config, lake, intent, p, &tmp).await?;
            report.files_out += written;
        }
        // The merged files are durable before their inputs go.
        lake.sync_dirs()?;
        for k in remaining {
            lake.delete(k).await?;
            crate::failpoint::hit(crate::failpoint::MID_COMPACT_DELETE);
        }
        report.partitions += 1;
        report.files_in += p.inputs.len();
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Copies a partition's inputs into files of up to `max_file_size`, one schema per
/// file, under names fixed by the intent; returns the files written.
async fn merge(
    config: &Config,
    lake: &Lake,
    intent: &CompactIntent,
    p: &PartitionMerge,
    tmp: &std::path::Path,
) -> Result<usize, CompactError> {
    let max = config.output.max_file_size.0;
    let mut seq = 0u32;
    let mut out: Option<(ArrowWriter<BufWriter<File>>, PathBuf, String, SchemaRef)> = None;
    let mut written = 0;
    for input in &p.inputs {
        let bytes = lake
            .get(input)
            .await?
            .ok_or_else(|| CompactError::Parquet {
                key: input.clone(),
                source: parquet::errors::ParquetError::General("listed, then gone".into()),
            })?;
        let perr = |source| CompactError::Parquet {
            key: input.clone(),
            source,
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(perr)?;
        let schema = reader.schema();
        for batch in reader {
            let batch = batch.map_err(|e| perr(e.into()))?;
            let full = out.as_ref().is_some_and(|(w, _, _, s)| {
                s != &schema || w.bytes_written() + w.in_progress_size() >= max as usize
            });
            if full {
                if let Some((w, path, key, _)) = out.take() {
                    written += finish(lake, w, path, key).await?;
                }
            }
            if out.is_none() {
                let name = format!("{}{}{seq:04}.parquet", p.table, intent.infix());
                seq += 1;
                let key = format!("{}/{}/{name}", p.table, p.partition);
                let path = tmp.join(&name);
                let file = File::create(&path).map_err(|source| CompactError::Tmp {
                    path: path.clone(),
                    source,
                })?;
                let writer = ArrowWriter::try_new(BufWriter::new(file), schema.clone(), None)
                    .map_err(|source| CompactError::Parquet {
                        key: key.clone(),
                        source,
                    })?;
                out = Some((writer, path, key, schema.clone()));
            }
            if let Some((w, _, key, _)) = out.as_mut() {
                w.write(&batch).map_err(|source| CompactError::Parquet {
                    key: key.clone(),
                    source,
                })?;
            }
        }
    }
    if let Some((w, path, key, _)) = out.take() {
        written += finish(lake, w, path, key).await?;
    }
    Ok(written)
}

/// Closes a merged file and publishes it (kept when a rerun finds it in place).
async fn finish(
    lake: &Lake,
    writer: ArrowWriter<BufWriter<File>>,
    path: PathBuf,
    key: String,
) -> Result<usize, CompactError> {
    writer.close().map_err(|source| CompactError::Parquet {
        key: key.clone(),
        source,
    })?;
    lake.publish(&path, &key).await?;
    crate::failpoint::hit(crate::failpoint::MID_COMPACT_PUBLISH);
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_files_never_take_a_listed_name() {
        let now: DateTime<Utc> = "2026-12-07T02:00:00.123456789Z".parse().expect("time");
        let key = |stamp: &str| format!("orders/year=2026/orders{stamp}0000.parquet");
        let taken = compacted_infix(INTENT_VERSION, now);
        assert_eq!(taken, "_20261207_020000_123456_compacted_");
        // (name, listed keys, microseconds the start moves)
        let cases = [
            ("nothing listed", vec![], 0),
            (
                "other files only",
                vec![key("_20261207_020000_compacted_")],
                0,
            ),
            ("a compaction in the same microsecond", vec![key(&taken)], 1),
            (
                "and the next one too",
                vec![key(&taken), key("_20261207_020000_123457_compacted_")],
                2,
            ),
        ];
        for (name, keys, moved) in cases {
            let started = fresh_start(now, &keys);
            assert_eq!(
                started - now,
                chrono::Duration::microseconds(moved),
                "{name}"
            );
            let intent = CompactIntent {
                version: INTENT_VERSION,
                started,
                partitions: Vec::new(),
            };
            assert!(keys.iter().all(|k| !k.contains(&intent.infix())), "{name}");
        }
        // An intent an older version left is finished under the names it chose.
        let old = CompactIntent {
            version: 1,
            started: now,
            partitions: Vec::new(),
        };
        assert_eq!(old.infix(), "_20261207_020000_compacted_");
    }

    #[test]
    fn maintenance_runs_when_configured_and_the_last_compaction_is_old_enough() {
        let now = Utc::now();
        let day = std::time::Duration::from_secs(86_400);
        let ago = |h: i64| Some(now - chrono::Duration::hours(h));
        // (name, interval, last compaction, intent left unfinished, due)
        let cases = [
            (
                "no interval: only `slot2lake compact`",
                None,
                None,
                false,
                false,
            ),
            (
                "no interval, even with an unfinished compaction",
                None,
                None,
                true,
                false,
            ),
            ("never compacted", Some(day), None, false, true),
            ("compacted 23 h ago", Some(day), ago(23), false, false),
            (
                "compacted exactly a day ago",
                Some(day),
                ago(24),
                false,
                true,
            ),
            ("compacted 2 days ago", Some(day), ago(48), false, true),
            (
                "unfinished compaction is finished at once",
                Some(day),
                ago(1),
                true,
                true,
            ),
            (
                "interval 0: after every flush",
                Some(std::time::Duration::ZERO),
                ago(0),
                false,
                true,
            ),
            ("a clock that went back", Some(day), ago(-5), false, false),
        ];
        for (name, interval, last, unfinished, due) in cases {
            assert_eq!(
                maintenance_due(interval, last, unfinished, now),
                due,
                "{name}"
            );
        }
    }

    fn f(key: &str, size: u64) -> Listed {
        Listed {
            key: key.into(),
            size,
        }
    }

    #[test]
    fn plans_merges_of_committed_small_files_only() {
        let p = "orders/year=2024/month=01/day=15";
        let q = "orders/year=2025/month=03/day=01";
        let files = vec![
            f(&format!("{p}/orders_20240116_010000_0000000000000100_0000.parquet"), 10),
            f(&format!("{p}/orders_20240117_010000_0000000000000200_0000.parquet"), 10),
            // A flush not committed yet (past the watermark): never touched.
            f(&format!("{p}/orders_20240118_010000_0000000000000900_0000.parquet"), 10),
            // Big enough already.
            f(&format!("{p}/orders_20240119_010000_0000000000000300_0000.parquet"), 900),
            // A snapshot worker's file and an earlier compaction's output.
            f(&format!("{q}/orders_20250302_010000_0000000000000050_w01-0000.parquet"), 10),
            f(&format!("{q}/orders_20250401_020000_compacted_0000.parquet"), 10),
            // One small file alone is left alone.
            f("orders/year=2025/month=04/day=01/orders_20250402_010000_0000000000000100_0000.parquet", 10),
            // Not this table, not data.
            f(&format!("customers/{}/c.parquet", "processing_year=2024/processing_month=01/processing_day=15"), 1),
            f(&format!("{p}/notes.txt"), 1),
        ];
        let got = plan("orders", &files, Some(Lsn(0x500)), 500, None);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].partition, "year=2024/month=01/day=15");
        assert_eq!(got[0].inputs.len(), 2);
        assert!(got[0]
            .inputs
            .iter()
            .all(|k| !k.contains("0900") && !k.contains("0300_")));
        assert_eq!(got[1].inputs.len(), 2);
        // Without a watermark no flush is committed: only compacted files count.
        assert!(plan("orders", &files, None, 500, None).is_empty());
        // --before keeps older partitions only.
        let before = NaiveDate::from_ymd_opt(2025, 1, 1);
        let old = plan("orders", &files, Some(Lsn(0x500)), 500, before);
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].partition, "year=2024/month=01/day=15");
    }

    #[test]
    fn reads_dates_from_partitions() {
        assert_eq!(
            partition_date("processing_year=2025/processing_month=07/processing_day=24"),
            NaiveDate::from_ymd_opt(2025, 7, 24)
        );
        assert_eq!(
            partition_date("year=__HIVE_DEFAULT_PARTITION__/month=__HIVE_DEFAULT_PARTITION__/day=__HIVE_DEFAULT_PARTITION__"),
            None
        );
    }
}
