//! Checkpoints in the lake: per-table watermarks, the flush intent and the snapshot
//! state, all small JSON objects next to the data they describe.
//!
//! Watermarks are the lake's own record of progress: a flush writes them after its
//! Parquet files and before acknowledging the slot, and a watermark's LSN never moves
//! backward. The flush intent fixes a flush's name-giving inputs (time and cut) before
//! any file is written, so a retried flush writes the same names.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::lake::{Lake, LakeError};
use crate::lsn::Lsn;
use crate::retry::{Action, Classify};

pub mod keys;

pub use keys::{backfill_state, SlotKeys, FIRST_RUN};

/// A partition of a partitioned table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PartitionRef {
    /// Its OID (names can be reused after a DROP).
    pub oid: u32,
    /// Its name, as `regclass` prints it.
    pub name: String,
}

/// What to do about a partitioned table whose partitions changed since the lake last
/// looked: PostgreSQL sends no rows for ATTACH, DETACH or DROP of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionAction {
    /// Nothing the lake lacks: record the partitions as they are.
    Record,
    /// Copy these added partitions' rows on top of the table's (a table with a key:
    /// a row the stream also sent is simply restated at the snapshot's position).
    Refresh(Vec<String>),
    /// Snapshot the whole table again behind a TRUNCATE row: removed partitions' rows
    /// must go, and a keyless table cannot restate rows without counting them twice.
    Resnapshot,
}

/// Decides what a change of partitions needs. `added_with_rows` are the added partitions
/// that hold rows now (an added partition that is empty has nothing the stream missed).
pub fn partition_action(
    keyless: bool,
    added_with_rows: &[String],
    removed: &[PartitionRef],
) -> PartitionAction {
    if !removed.is_empty() || (keyless && !added_with_rows.is_empty()) {
        PartitionAction::Resnapshot
    } else if !added_with_rows.is_empty() {
        PartitionAction::Refresh(added_with_rows.to_vec())
    } else {
        PartitionAction::Record
    }
}

/// Watermark file name under `etl-metadata/<table>/`.
pub const WATERMARK_FILE: &str = "watermark.json";
/// The seed's watermark file, kept for its users.
pub const LAST_PROCESSED_FILE: &str = "last_processed_timestamp.txt";
/// Format of `last_processed_timestamp.txt` (UTC).
pub const TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// A checkpoint that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The store failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// A checkpoint file is not valid JSON of the expected shape.
    #[error("{key} is not a valid slot2lake checkpoint ({source}); fix or remove it")]
    Corrupt {
        /// The object.
        key: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A watermark would move backward: the lake and this run disagree.
    #[error("refusing to move the watermark of {table} back from {current} to {new}; another slot2lake may be writing this lake")]
    Backward {
        /// Table folder.
        table: String,
        /// Stored LSN.
        current: Lsn,
        /// Proposed LSN.
        new: Lsn,
    },
}

/// What a watermark's last update was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatermarkKind {
    /// A snapshot backfill.
    Snapshot,
    /// A flush of streamed changes.
    Changes,
}

/// `etl-metadata/<table>/watermark.json`: how far the lake holds this table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// Format version.
    pub version: u32,
    /// `schema.table`
    pub table: String,
    /// Every change committed before this LSN is in the lake (the flush's cut, or the
    /// snapshot's consistent point).
    pub lsn: Lsn,
    /// Commit time (UTC) of the last transaction covered, `YYYY-MM-DD HH:MM:SS`, as in
    /// `last_processed_timestamp.txt`.
    pub timestamp: String,
    /// The same instant with microseconds.
    pub commit_time: DateTime<Utc>,
    /// When the flush ran (the files' `etl_processed_at`).
    pub flushed_at: DateTime<Utc>,
    /// Snapshot or changes.
    pub kind: WatermarkKind,
    /// Rows that flush wrote for this table.
    pub rows: u64,
    /// Files that flush wrote for this table.
    pub files: u64,
    /// The slot the changes came from.
    pub slot: String,
    /// Rows written since the table's last snapshot with a value nothing could resolve
    /// (an UPDATE that changed the key and left a TOASTed value unchanged); a backfill
    /// of the table repairs them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unresolved_values: u64,
    /// Values written as NULL since the table's last snapshot (its own included) because
    /// their column's Parquet type cannot hold them (numeric `NaN` in a DECIMAL
    /// column), per column: the lake holds NULL where the source holds a value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nulled_values: BTreeMap<String, u64>,
    /// Sizes of the files that flush wrote for this table, to see small files coming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_sizes: Option<FileSizes>,
    /// A partitioned table's partitions as of its last snapshot (or last check): rows
    /// ATTACH and DETACH PARTITION add or remove are never sent by PostgreSQL, so a
    /// change here is answered by snapshotting them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<PartitionRef>>,
    /// Why the table needs a new snapshot that slot2lake takes after the flush (kept
    /// until it is taken, so a crash in between does not lose it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resnapshot: Option<String>,
    /// The table's columns as of this watermark, to tell later which were added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
}

impl Watermark {
    /// Records a partition refresh (`partitions` as it saw them, the values it wrote as
    /// NULL); `false` when this refresh is already recorded: a retry after its watermark
    /// was written finds the partitions equal and must not count the values again.
    pub fn record_refresh(
        &mut self,
        partitions: Option<Vec<PartitionRef>>,
        nulled: &BTreeMap<String, u64>,
    ) -> bool {
        if self.partitions == partitions {
            return false;
        }
        self.partitions = partitions;
        add_nulled(&mut self.nulled_values, nulled);
        true
    }
}

/// `into` plus `more`, column by column.
pub fn add_nulled<'a>(
    into: &mut BTreeMap<String, u64>,
    more: impl IntoIterator<Item = (&'a String, &'a u64)>,
) {
    for (column, n) in more {
        *into.entry(column.clone()).or_default() += n;
    }
}

/// The smallest and the median size of a set of files, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSizes {
    /// The smallest file.
    pub min_bytes: u64,
    /// The median file.
    pub median_bytes: u64,
}

impl FileSizes {
    /// The sizes of `bytes` (files found from an earlier attempt, size 0, left out).
    pub fn of(bytes: impl IntoIterator<Item = u64>) -> Option<Self> {
        let mut b: Vec<u64> = bytes.into_iter().filter(|b| *b > 0).collect();
        b.sort_unstable();
        Some(FileSizes {
            min_bytes: *b.first()?,
            median_bytes: b[b.len() / 2],
        })
    }
}

/// For `skip_serializing_if`: counters are left out of JSON while zero.
pub(crate) fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `_slot2lake/<slot>/unplaced.json`: changes of published relations no configured table
/// takes, per relation, since slot2lake started counting (never silently dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnplacedChanges {
    /// Changes per `schema.relation`.
    pub relations: BTreeMap<String, u64>,
    /// The last flush that found any.
    pub last_cut: Option<Lsn>,
}

/// `_slot2lake/<slot>/damaged.json`: spooled changes that were lost (a corrupt or missing
/// segment with no mirror to restore it from), kept until every table is backfilled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolDamage {
    /// Segment file names (`<start>-<end>.seg`: the LSN range lost) and what was wrong.
    pub segments: BTreeMap<String, String>,
    /// Table folders whose changes in those ranges may be missing from the lake.
    pub tables: BTreeSet<String>,
}

/// `_slot2lake/<slot>/flush.json`: a flush in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushIntent {
    /// Format version.
    pub version: u32,
    /// Transactions that end at or before this LSN are in the flush.
    pub cut: Lsn,
    /// Flush time: file names, `etl_processed_at`, processing-date partitions.
    pub processed_at: DateTime<Utc>,
    /// Per table folder: changes committed at or after this LSN are in the flush.
    pub from: BTreeMap<String, Lsn>,
}

/// The first-run snapshot's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotPhase {
    /// The slot exists and tables are being copied; a crash here restarts the first run.
    Copying,
    /// Every table is in staging; a crash here resumes moving files into place.
    Staged,
}

/// `_slot2lake/<slot>/snapshot.json`: the first-run snapshot in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotState {
    /// Format version.
    pub version: u32,
    /// Where it is.
    pub phase: SnapshotPhase,
    /// The slot's consistent point.
    pub consistent_point: Lsn,
    /// Run time (file names, `etl_processed_at`).
    pub processed_at: DateTime<Utc>,
    /// Snapshot time (the rows' `commit_ts`).
    pub snapshot_time: Option<DateTime<Utc>>,
    /// Staging prefix.
    pub staging: String,
    /// Staged key → final key.
    pub files: Vec<(String, String)>,
    /// Rows per table folder.
    pub rows: BTreeMap<String, u64>,
    /// Sizes of the staged files per table folder.
    #[serde(default)]
    pub file_sizes: BTreeMap<String, FileSizes>,
    /// Values the staged files hold as NULL per table folder and column (see
    /// [`Watermark::nulled_values`]).
    #[serde(default)]
    pub nulled_values: BTreeMap<String, BTreeMap<String, u64>>,
    /// Partitions of each partitioned table as the snapshot saw them.
    #[serde(default)]
    pub partitions: BTreeMap<String, Vec<PartitionRef>>,
    /// Only some partitions were copied, on top of the table's rows (an ATTACH): the
    /// table's watermark stays where it is.
    #[serde(default)]
    pub refresh: bool,
    /// Rows, bytes and partition of each staged file, by final key (an Iceberg commit
    /// lists them).
    #[serde(default)]
    pub file_stats: BTreeMap<String, StagedFile>,
}

/// What an Iceberg manifest says of a staged snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedFile {
    /// Rows in it.
    pub rows: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its partition's day (days since 1970-01-01), `None` for NULL.
    pub day: Option<i32>,
}

/// What a compaction did (`compact`, or the maintenance after a flush); recorded in
/// `maintenance.json`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactReport {
    /// Partitions merged.
    pub partitions: usize,
    /// Small files merged (Iceberg: also current-state data and delete files rewritten).
    pub files_in: usize,
    /// Files written.
    pub files_out: usize,
    /// Iceberg snapshots expired.
    pub snapshots_expired: usize,
    /// Files deleted with them.
    pub files_deleted: usize,
    /// Files no Iceberg snapshot listed, removed.
    pub orphans_removed: usize,
}

/// Reads and writes checkpoints of one slot in one lake.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    lake: Lake,
    slot: String,
    keys: SlotKeys,
}

impl Checkpoints {
    /// Checkpoints for `slot` in `lake`.
    pub fn new(lake: Lake, slot: &str) -> Self {
        Self {
            lake,
            slot: slot.to_string(),
            keys: SlotKeys::new(slot),
        }
    }

    /// The slot name.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// A JSON record of this slot's state, `None` when absent.
    pub(crate) async fn read<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<T>, CheckpointError> {
        match self.lake.get(key).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| {
                CheckpointError::Corrupt {
                    key: key.to_string(),
                    source,
                }
            }),
        }
    }

    /// Writes a JSON record of this slot's state.
    pub(crate) async fn write<T: Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), CheckpointError> {
        let mut json =
            serde_json::to_vec_pretty(value).map_err(|source| CheckpointError::Corrupt {
                key: key.to_string(),
                source,
            })?;
        json.push(b'\n');
        self.lake.put(key, Bytes::from(json)).await?;
        Ok(())
    }

    /// A table's watermark, `None` before its first snapshot or flush.
    pub async fn watermark(&self, table: &str) -> Result<Option<Watermark>, CheckpointError> {
        self.read(&self.lake.metadata_key(table, WATERMARK_FILE))
            .await
    }

    /// Writes `watermark.json`, then `last_processed_timestamp.txt`; never moves backward.
    pub async fn write_watermark(
        &self,
        folder: &str,
        wm: &Watermark,
    ) -> Result<(), CheckpointError> {
        let current = self.watermark(folder).await?;
        self.replace_watermark(folder, current.as_ref(), wm).await
    }

    /// [`write_watermark`](Self::write_watermark) for a caller that just read the
    /// table's `current` watermark (one writer per slot: it cannot have moved since).
    pub async fn replace_watermark(
        &self,
        folder: &str,
        current: Option<&Watermark>,
        wm: &Watermark,
    ) -> Result<(), CheckpointError> {
        if let Some(current) = current {
            if current.lsn > wm.lsn {
                return Err(CheckpointError::Backward {
                    table: folder.to_string(),
                    current: current.lsn,
                    new: wm.lsn,
                });
            }
        }
        self.write(&self.lake.metadata_key(folder, WATERMARK_FILE), wm)
            .await?;
        self.lake
            .put(
                &self.lake.metadata_key(folder, LAST_PROCESSED_FILE),
                Bytes::from(wm.timestamp.clone()),
            )
            .await?;
        Ok(())
    }

    /// The keys of this slot's state.
    pub fn keys(&self) -> &SlotKeys {
        &self.keys
    }

    /// The flush in progress, if a previous run stopped during one.
    pub async fn flush_intent(&self) -> Result<Option<FlushIntent>, CheckpointError> {
        self.read(&self.keys.flush_intent()).await
    }

    /// Records a flush before it writes any file.
    pub async fn write_flush_intent(&self, intent: &FlushIntent) -> Result<(), CheckpointError> {
        self.write(&self.keys.flush_intent(), intent).await
    }

    /// Forgets the flush intent once the flush is committed.
    pub async fn clear_flush_intent(&self) -> Result<(), CheckpointError> {
        Ok(self.lake.delete(&self.keys.flush_intent()).await?)
    }

    /// Changes no configured table took, as counted by earlier flushes.
    pub async fn unplaced(&self) -> Result<UnplacedChanges, CheckpointError> {
        Ok(self.read(&self.keys.unplaced()).await?.unwrap_or_default())
    }

    /// Adds a flush's unplaced changes to the record.
    pub async fn add_unplaced(
        &self,
        cut: Lsn,
        found: &BTreeMap<String, u64>,
    ) -> Result<(), CheckpointError> {
        if found.is_empty() {
            return Ok(());
        }
        let mut all = self.unplaced().await?;
        for (relation, n) in found {
            *all.relations.entry(relation.clone()).or_default() += n;
        }
        all.last_cut = Some(cut);
        self.write(&self.keys.unplaced(), &all).await
    }

    /// Lost spooled changes not yet repaired by a backfill.
    pub async fn damage(&self) -> Result<SpoolDamage, CheckpointError> {
        Ok(self.read(&self.keys.damaged()).await?.unwrap_or_default())
    }

    /// Records that `segment`'s changes are lost for `tables`.
    pub async fn record_damage(
        &self,
        segment: &str,
        detail: &str,
        tables: impl IntoIterator<Item = String>,
    ) -> Result<(), CheckpointError> {
        let mut d = self.damage().await?;
        d.segments.insert(segment.to_string(), detail.to_string());
        d.tables.extend(tables);
        self.write(&self.keys.damaged(), &d).await
    }

    /// A backfill of `table` took its rows anew: its lost changes no longer matter.
    pub async fn repaired(&self, table: &str) -> Result<(), CheckpointError> {
        let mut d = self.damage().await?;
        if !d.tables.remove(table) {
            return Ok(());
        }
        if d.tables.is_empty() {
            Ok(self.lake.delete(&self.keys.damaged()).await?)
        } else {
            self.write(&self.keys.damaged(), &d).await
        }
    }

    /// A snapshot in progress, if any: [`FIRST_RUN`] or [`backfill_state`]'s name.
    pub async fn snapshot_state(
        &self,
        name: &str,
    ) -> Result<Option<SnapshotState>, CheckpointError> {
        self.read(&self.keys.snapshot_state(name)).await
    }

    /// Records a snapshot's progress.
    pub async fn write_snapshot_state(
        &self,
        name: &str,
        state: &SnapshotState,
    ) -> Result<(), CheckpointError> {
        self.write(&self.keys.snapshot_state(name), state).await
    }

    /// Forgets a snapshot state once every table has its watermark.
    pub async fn clear_snapshot_state(&self, name: &str) -> Result<(), CheckpointError> {
        Ok(self.lake.delete(&self.keys.snapshot_state(name)).await?)
    }

    /// Names of the backfill states present (one per table being backfilled).
    pub async fn backfill_states(&self) -> Result<Vec<String>, CheckpointError> {
        let prefix = self.keys.backfill_states();
        Ok(self
            .lake
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|o| {
                o.location
                    .as_ref()
                    .rsplit('/')
                    .next()
                    .filter(|n| n.ends_with(".json"))
                    .map(|n| format!("backfill/{n}"))
            })
            .collect())
    }
}

/// Formats a time the way `last_processed_timestamp.txt` holds it.
pub fn seed_timestamp(t: DateTime<Utc>) -> String {
    t.format(TIMESTAMP_FORMAT).to_string()
}

impl Classify for CheckpointError {
    fn action(&self) -> Action {
        match self {
            CheckpointError::Lake(e) => e.action(),
            CheckpointError::Corrupt { .. } | CheckpointError::Backward { .. } => Action::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_changes_get_the_least_work_that_keeps_the_lake_exact() {
        let p = |n: &str| PartitionRef {
            oid: 1,
            name: n.into(),
        };
        let s = |n: &str| n.to_string();
        // (keyless, added with rows, removed) -> action
        let cases = [
            (false, vec![], vec![], PartitionAction::Record),
            (
                false,
                vec![s("ev_2026")],
                vec![],
                PartitionAction::Refresh(vec![s("ev_2026")]),
            ),
            (
                true,
                vec![s("ev_2026")],
                vec![],
                PartitionAction::Resnapshot,
            ),
            (
                false,
                vec![],
                vec![p("ev_2019")],
                PartitionAction::Resnapshot,
            ),
            (
                false,
                vec![s("ev_2026")],
                vec![p("ev_2019")],
                PartitionAction::Resnapshot,
            ),
            (true, vec![], vec![], PartitionAction::Record),
        ];
        for (keyless, added, removed, want) in cases {
            assert_eq!(
                partition_action(keyless, &added, &removed),
                want,
                "keyless {keyless}, added {added:?}, removed {removed:?}"
            );
        }
    }
}
