//! `slot2lake status`: where the slot, the spool and each table's watermark stand.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::checkpoint::{Checkpoints, FlushIntent, Watermark};
use crate::config::Config;
use crate::lake::Lake;
use crate::lsn::Lsn;
use crate::pipeline::{open_spool, RunError};
use crate::source::{self, introspect};

/// The slot as the server reports it.
#[derive(Debug, Serialize)]
pub struct SlotStatus {
    /// Slot name.
    pub name: String,
    /// Whether it exists.
    pub exists: bool,
    /// PID of the consumer streaming from it.
    pub active_pid: Option<i32>,
    /// Position the consumer confirmed.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// Oldest WAL retained for it.
    pub restart_lsn: Option<Lsn>,
    /// The server's current WAL position.
    pub current_wal_lsn: Lsn,
    /// WAL not yet confirmed by slot2lake, in bytes.
    pub lag_bytes: Option<u64>,
    /// WAL the server keeps for this slot, in bytes.
    pub wal_retained_bytes: Option<u64>,
    /// reserved, extended, unreserved or lost.
    pub wal_status: Option<String>,
}

/// The spool.
#[derive(Debug, Serialize)]
pub struct SpoolStatus {
    /// Directory.
    pub dir: String,
    /// Sealed segments.
    pub segments: usize,
    /// Their size.
    pub bytes: u64,
    /// End of the newest segment.
    pub durable_lsn: Option<Lsn>,
}

/// Everything `status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The lake's URL.
    pub lake: String,
    /// The slot.
    pub slot: SlotStatus,
    /// Watermark per table folder (`null` before the first snapshot or flush).
    pub tables: BTreeMap<String, Option<Watermark>>,
    /// The spool.
    pub spool: SpoolStatus,
    /// A flush that has started but not committed.
    pub flush_in_progress: Option<FlushIntent>,
    /// Rows copied so far by a snapshot or backfill that is running (or was interrupted).
    pub snapshot_in_progress: Option<serde_json::Value>,
    /// Changes of published relations that no configured table takes.
    pub unplaced_changes: crate::checkpoint::UnplacedChanges,
    /// Spooled changes lost (corrupt segments without a mirror), until backfilled.
    pub spool_damage: crate::checkpoint::SpoolDamage,
    /// The last compaction of every table (`compact`, or `run`'s `[maintenance] interval`).
    pub last_compaction: Option<crate::compact::LastCompaction>,
}

/// Gathers the status.
pub async fn gather(config: &Config) -> Result<Status, RunError> {
    let client = source::open(&config.source).await?;
    let current = introspect::current_wal_lsn(&client).await?;
    let slot = introspect::slot_info(&client, &config.source.slot).await?;
    let lake = Lake::open(&config.output).await?;
    let cps = Checkpoints::new(lake.clone(), &config.source.slot);
    let mut tables = BTreeMap::new();
    for t in &config.tables {
        tables.insert(t.folder().to_string(), cps.watermark(t.folder()).await?);
    }
    let spool = open_spool(config, &lake).await?;
    let segments = spool.segments()?;
    let diff = |l: Option<Lsn>| l.map(|l| current.0.saturating_sub(l.0));
    Ok(Status {
        lake: lake.url().to_string(),
        slot: SlotStatus {
            name: config.source.slot.clone(),
            exists: slot.is_some(),
            active_pid: slot.as_ref().and_then(|s| s.active_pid),
            confirmed_flush_lsn: slot.as_ref().and_then(|s| s.confirmed_flush),
            restart_lsn: slot.as_ref().and_then(|s| s.restart_lsn),
            current_wal_lsn: current,
            lag_bytes: diff(slot.as_ref().and_then(|s| s.confirmed_flush)),
            wal_retained_bytes: diff(slot.as_ref().and_then(|s| s.restart_lsn)),
            wal_status: slot.and_then(|s| s.wal_status),
        },
        tables,
        spool: SpoolStatus {
            dir: spool.dir().display().to_string(),
            segments: segments.len(),
            bytes: segments.iter().map(|s| s.bytes).sum(),
            durable_lsn: segments.iter().map(|s| s.end).max(),
        },
        flush_in_progress: cps.flush_intent().await?,
        snapshot_in_progress: snapshot_progress(&cps, &lake, &config.source.slot).await?,
        unplaced_changes: cps.unplaced().await?,
        spool_damage: cps.damage().await?,
        last_compaction: crate::compact::last_compaction(&cps).await?,
    })
}

/// The progress file, while a snapshot or backfill state says one is under way.
async fn snapshot_progress(
    cps: &Checkpoints,
    lake: &Lake,
    slot: &str,
) -> Result<Option<serde_json::Value>, RunError> {
    let mut running = cps
        .snapshot_state(crate::checkpoint::FIRST_RUN)
        .await?
        .is_some();
    for name in cps.backfill_states().await? {
        running |= cps.snapshot_state(&name).await?.is_some();
    }
    if !running {
        return Ok(None);
    }
    let key = crate::checkpoint::SlotKeys::new(slot).snapshot_progress();
    Ok(lake
        .get(&key)
        .await?
        .and_then(|b| serde_json::from_slice(&b).ok()))
}

impl Status {
    /// A short human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("lake: {}\n", self.lake));
        let sl = &self.slot;
        if sl.exists {
            s.push_str(&format!(
                "slot {}: confirmed {} (lag {} bytes), WAL retained {} bytes, {}{}\n",
                sl.name,
                sl.confirmed_flush_lsn
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "-".into()),
                sl.lag_bytes.unwrap_or(0),
                sl.wal_retained_bytes.unwrap_or(0),
                sl.wal_status.as_deref().unwrap_or("-"),
                sl.active_pid
                    .map(|p| format!(", streaming to pid {p}"))
                    .unwrap_or_default()
            ));
        } else {
            s.push_str(&format!(
                "slot {}: does not exist yet (created by the first run)\n",
                sl.name
            ));
        }
        for (table, wm) in &self.tables {
            match wm {
                Some(w) => s.push_str(&format!(
                    "table {table}: watermark {} at {} ({:?}, {} rows in {} files in the last flush{})\n",
                    w.lsn,
                    w.timestamp,
                    w.kind,
                    w.rows,
                    w.files,
                    w.file_sizes
                        .map(|f| format!(
                            ", smallest {} bytes, median {} bytes",
                            f.min_bytes, f.median_bytes
                        ))
                        .unwrap_or_default()
                )),
                None => s.push_str(&format!("table {table}: no watermark yet\n")),
            }
            for (column, n) in wm.iter().flat_map(|w| &w.nulled_values) {
                s.push_str(&format!(
                    "  WARNING: {n} values of column {column} are NULL in the lake where the source holds a value its Parquet type cannot hold (numeric 'NaN' in a DECIMAL column); to keep them, make the column unconstrained numeric (written as exact text)\n"
                ));
            }
            if let Some(w) = wm.as_ref().filter(|w| w.unresolved_values > 0) {
                s.push_str(&format!(
                    "  WARNING: {} rows hold a value that could not be resolved (a key change left a TOASTed value unchanged); run `slot2lake backfill --table {table}`\n",
                    w.unresolved_values
                ));
            }
        }
        for (relation, n) in &self.unplaced_changes.relations {
            s.push_str(&format!(
                "WARNING: {n} changes of {relation} were not written: it is published but no [[tables]] entry takes it (a partition: configure its parent and set publish_via_partition_root = true)\n"
            ));
        }
        if !self.spool_damage.tables.is_empty() {
            let segments: Vec<&str> = self
                .spool_damage
                .segments
                .keys()
                .map(String::as_str)
                .collect();
            for table in &self.spool_damage.tables {
                s.push_str(&format!(
                    "WARNING: changes of {table} in spool segment(s) {} (LSN ranges start-end) were lost; run `slot2lake backfill --table {table}`\n",
                    segments.join(", ")
                ));
            }
        }
        s.push_str(&format!(
            "spool: {} segments, {} bytes in {}\n",
            self.spool.segments, self.spool.bytes, self.spool.dir
        ));
        if let Some(p) = &self.snapshot_in_progress {
            if let Some(tables) = p["tables"].as_object() {
                for (t, v) in tables {
                    s.push_str(&format!(
                        "snapshot in progress: {t} {} of about {} rows\n",
                        v["rows"], v["estimated_rows"]
                    ));
                }
            }
        }
        if let Some(i) = &self.flush_in_progress {
            s.push_str(&format!(
                "flush in progress: cut {}, started {}\n",
                i.cut, i.processed_at
            ));
        }
        match &self.last_compaction {
            Some(c) => {
                let r = &c.report;
                s.push_str(&format!(
                    "last compaction: {}: {} files merged into {}, {} snapshots expired, {} files deleted, {} orphans removed\n",
                    c.when(),
                    r.files_in,
                    r.files_out,
                    r.snapshots_expired,
                    r.files_deleted,
                    r.orphans_removed
                ));
            }
            None => s.push_str("last compaction: never\n"),
        }
        s
    }
}
