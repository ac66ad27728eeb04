//! `run --once`: the whole path from the slot to committed Parquet, wired from the
//! pipeline's stages.
//!
//! ```text
//!  preflight: settings, tables, publication
//!  recover:   finish an interrupted flush (intent) or first-run snapshot (state)
//!  first run: create slot + export snapshot → COPY to staging → move into place → watermarks
//!  stream:    START_REPLICATION from what is durable; write a marker; spool every
//!             transaction until the marker's commit; seal the spool (fsync)
//!  flush:     intent → Parquet files → watermarks → ack slot → catalog → spool GC
//! ```
//!
//! What is durable where, and why a crash anywhere loses nothing and writes nothing
//! twice: the slot is acknowledged only after the watermarks name a position, and
//! watermarks only after the files before them exist. A crash before the watermarks
//! leaves the intent, and the rerun writes the same file names (existing ones are
//! skipped); a crash after them leaves at most work that is repeated idempotently
//! (ack, catalog, GC).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::catalog::{self, CatalogError, CatalogTable};
use crate::checkpoint::{
    backfill_state, partition_action, seed_timestamp, CheckpointError, Checkpoints, FileSizes,
    FlushIntent, PartitionAction, PartitionRef, SnapshotPhase, SnapshotState, Watermark,
    WatermarkKind, FIRST_RUN,
};
use crate::config::{BinaryMode, Config};
use crate::decode::relation::KnownTable;
use crate::decode::{ColumnKind, TypeCatalog};
use crate::failpoint;
use crate::flush::commit::{self, CommitTable, Committed, Encoded};
use crate::flush::{self, FlushError, Flushed};
use crate::lsn::Lsn;
use crate::recovery::{self, Finish};
use crate::sink::lake::INTERNAL_DIR;
use crate::sink::{Lake, LakeError, Sink, SinkError, SinkOptions, WrittenFile};
use crate::source::introspect::{self, TableError, TableInfo};
use crate::source::replication::{ReplicationStream, StreamOptions};
use crate::source::snapshot::{self, SnapshotError, SnapshotPlan, SnapshotTable};
use crate::source::{self, SourceClient, SourceError};
use crate::spool::{self, Segment, SegmentHeader, Spool, SpoolError, SpoolWriter};

/// A run that failed; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The source database.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A configured table.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The lake's store.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// A checkpoint.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The spool.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The snapshot.
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    /// Writing files.
    #[error("flush: {0}")]
    Flush(#[from] FlushError),
    /// Writing files.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The catalog step (data is committed).
    #[error("catalog (the data is committed; the next flush retries): {0}")]
    Catalog(#[from] CatalogError),
    /// A COPY stream that does not parse.
    #[error(transparent)]
    Copy(#[from] crate::source::copy::CopyError),
    /// Committing a flush.
    #[error("flush: {0}")]
    Commit(#[from] crate::flush::commit::CommitError),
    /// The lake and the slot disagree (found at start).
    #[error(transparent)]
    Recovery(#[from] recovery::RecoveryError),
    /// The lake and the slot disagree in a way slot2lake will not resolve alone.
    #[error("{0}")]
    State(String),
    /// `run --once` retried until its budget was spent.
    #[error("{source}; gave up after {attempts} attempts in {seconds} s (retry.run_once_budget); the next run resumes where this one stopped")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        seconds: u64,
        /// The last attempt's failure.
        source: Box<RunError>,
    },
}

/// What a `run --once` did.
#[derive(Debug, Default, Clone)]
pub struct RunReport {
    /// Rows written by the first-run snapshot, per table folder.
    pub snapshot_rows: BTreeMap<String, u64>,
    /// Changes spooled from the slot in this run.
    pub changes_received: u64,
    /// Rows written by the flush, per table folder.
    pub flushed_rows: BTreeMap<String, u64>,
    /// Files the run wrote (snapshot and flush).
    pub files: Vec<WrittenFile>,
    /// The position the slot was acknowledged to.
    pub acked: Option<Lsn>,
    /// Where the lake is.
    pub lake: String,
}

/// How long a run waits for a slot held by a consumer that may have just died.
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Everything a run needs, opened once.
pub struct Pipeline {
    config: Config,
    source: SourceClient,
    lake: Lake,
    checkpoints: Checkpoints,
    spool: Spool,
    tables: Vec<(String, TableInfo)>,
    binary: bool,
    /// Domains, enums and arrays of the source; refreshed before each flush.
    types: std::sync::RwLock<Arc<TypeCatalog>>,
}

impl Pipeline {
    /// Connects, checks the server and tables, ensures the publication, opens the lake.
    pub async fn open(config: Config) -> Result<Self, RunError> {
        let client = source::connect(&config.source.url).await?;
        let server = introspect::server_info(&client).await?;
        server.require_logical()?;
        let types = introspect::type_catalog(&client).await?;
        let publication = introspect::publication_info(&client, &config.source.publication).await?;
        let mut tables = Vec::new();
        for t in &config.tables {
            let info =
                introspect::table_info(&client, t, &types, &config.source.publication).await?;
            if info.partitioned && publication.is_some_and(|p| !p.via_root) {
                return Err(RunError::State(format!(
                    "table {} is partitioned, but publication {:?} sends its changes under each partition's name, which slot2lake cannot place: run {}",
                    t.name,
                    config.source.publication,
                    introspect::via_root_remedy(&config.source.publication)
                )));
            }
            if !info.has_identity() {
                return Err(RunError::State(identity_remedy(
                    &t.name,
                    info.replica_identity,
                )));
            }
            for c in info
                .schema
                .columns
                .iter()
                .filter(|c| c.kind == ColumnKind::Other)
            {
                tracing::warn!(table = %t.name, column = %c.name, type_oid = c.type_oid, "no native mapping for this column's type: it is stored as its text form");
            }
            tables.push((t.folder().to_string(), info));
        }
        let binary = match config.source.binary {
            BinaryMode::On => true,
            BinaryMode::Off => false,
            BinaryMode::Auto => tables.iter().all(|(_, i)| i.schema.decodes_binary()),
        };
        introspect::ensure_publication(&client, &config.source.publication, &config.tables).await?;
        let lake = Lake::open(&config.output).await?;
        let checkpoints = Checkpoints::new(lake.clone(), &config.source.slot);
        let spool = open_spool(&config, &lake).await?;
        Ok(Self {
            source: SourceClient::new(config.source.url.clone(), client),
            config,
            lake,
            checkpoints,
            spool,
            tables,
            binary,
            types: std::sync::RwLock::new(Arc::new(types)),
        })
    }

    fn slot(&self) -> &str {
        &self.config.source.slot
    }

    fn tmp_dir(&self) -> PathBuf {
        match self.lake.local_root() {
            Some(root) => root.join(INTERNAL_DIR).join(self.slot()).join("tmp"),
            None => self.spool.dir().join("..").join("tmp"),
        }
    }

    /// Sink options for one of `share` writers working at once (memory and open files
    /// split), publishing straight into the lake.
    fn sink_options(&self, share: usize, tmp_dir: PathBuf) -> SinkOptions {
        let o = &self.config.output;
        let share = share.max(1);
        SinkOptions {
            compression: o.compression,
            max_file_bytes: o.max_file_size.0,
            row_group_rows: o.row_group_rows,
            memory_limit: usize::try_from(self.config.flush.memory_limit.0 / share as u64)
                .unwrap_or(usize::MAX),
            // One sink per snapshot worker shares the cores; a flush's one sink takes them.
            encoders: (self.config.source.parallelism() / share).max(1),
            tmp_dir,
            staging_prefix: None,
            defer_publish: false,
            may_exist: false,
        }
    }

    fn sink(
        &self,
        opts: SinkOptions,
        processed_at: DateTime<Utc>,
        lsn: Lsn,
    ) -> Result<Sink, SinkError> {
        Sink::new(
            self.lake.clone(),
            tokio::runtime::Handle::current(),
            opts,
            processed_at,
            lsn,
        )
    }

    async fn watermarks(&self) -> Result<BTreeMap<String, Option<Watermark>>, RunError> {
        let mut out = BTreeMap::new();
        for (folder, _) in &self.tables {
            out.insert(folder.clone(), self.checkpoints.watermark(folder).await?);
        }
        Ok(out)
    }

    /// The steps after a flush committed and the slot was acknowledged: the catalog,
    /// then the spool's flushed segments are removed.
    ///
    /// The spool is cleaned even when the catalog fails: the data is committed, and the
    /// catalog update is retried by the next flush.
    pub async fn after_commit(&self, cut: Lsn, files: &[WrittenFile]) -> Result<(), RunError> {
        let catalog =
            catalog::after_flush(&self.config, &self.lake, &self.catalog_tables(), files).await;
        let removed = self.spool.remove_flushed(cut).await?;
        tracing::debug!(segments = removed, "spool: removed flushed segments");
        let copied = self.follow_source_changes().await?;
        if !copied.is_empty() {
            catalog::after_flush(&self.config, &self.lake, &self.catalog_tables(), &copied).await?;
        }
        Ok(catalog?)
    }

    /// Changes of the source the stream cannot carry, answered with a snapshot: a table
    /// a flush marked (a keyless table that gained columns), and partitioned tables whose
    /// partitions changed since the lake last looked (ATTACH, DETACH, DROP or CREATE …
    /// PARTITION OF), for which PostgreSQL sends no rows ([`partition_action`] says how
    /// much to copy).
    pub async fn follow_source_changes(&self) -> Result<Vec<WrittenFile>, RunError> {
        let mut written = Vec::new();
        for (folder, info) in &self.tables {
            let Some(mut wm) = self.checkpoints.watermark(folder).await? else {
                continue;
            };
            if let Some(reason) = &wm.resnapshot {
                tracing::warn!(table = %info.schema.qualified_name(), reason = %reason, "taking a new snapshot of the table");
                let (_, files) = self.backfill(std::slice::from_ref(folder)).await?;
                written.extend(files);
                continue;
            }
            if !info.partitioned {
                continue;
            }
            let client = self.source.get().await?;
            let current = introspect::leaf_partitions(&client, info.oid).await?;
            let Some(known) = wm.partitions.clone() else {
                // A lake from before partitions were recorded: start recording.
                wm.partitions = Some(current);
                self.checkpoints.write_watermark(folder, &wm).await?;
                continue;
            };
            if known == current {
                continue;
            }
            let removed: Vec<PartitionRef> = known
                .iter()
                .filter(|p| !current.contains(p))
                .cloned()
                .collect();
            let mut added_with_rows = Vec::new();
            for p in current.iter().filter(|p| !known.contains(p)) {
                if introspect::has_rows(&client, &p.name).await? {
                    added_with_rows.push(p.name.clone());
                }
            }
            let keyless = !info.schema.columns.iter().any(|c| c.is_key);
            let action = partition_action(keyless, &added_with_rows, &removed);
            tracing::warn!(
                table = %info.schema.qualified_name(),
                added = %added_with_rows.join(", "),
                removed = %removed.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
                action = ?action,
                "the table's partitions changed; PostgreSQL sends no rows for ATTACH, DETACH or DROP PARTITION"
            );
            match action {
                PartitionAction::Record => {
                    wm.partitions = Some(current);
                    self.checkpoints.write_watermark(folder, &wm).await?;
                }
                PartitionAction::Refresh(leaves) => {
                    let (_, files) = self
                        .backfill_partitions(std::slice::from_ref(folder), Some(&leaves))
                        .await?;
                    written.extend(files);
                }
                PartitionAction::Resnapshot => {
                    let (_, files) = self.backfill(std::slice::from_ref(folder)).await?;
                    written.extend(files);
                }
            }
        }
        Ok(written)
    }

    /// The source's types, re-read so types created since startup are known; the last
    /// known catalog when the source cannot be reached.
    async fn refresh_types(&self) -> Arc<TypeCatalog> {
        let fresh = match self.source.get().await {
            Ok(c) => introspect::type_catalog(&c).await.ok(),
            Err(_) => None,
        };
        let mut guard = self.types.write().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = fresh {
            *guard = Arc::new(t);
        }
        guard.clone()
    }

    /// The configured tables as the catalog sees them.
    pub fn catalog_tables(&self) -> Vec<CatalogTable> {
        self.tables
            .iter()
            .map(|(folder, info)| CatalogTable::new(folder, Arc::new(info.schema.clone())))
            .collect()
    }

    /// What the catalog said about a configured table (by folder) at startup.
    pub fn table_info(&self, folder: &str) -> Option<&TableInfo> {
        self.tables
            .iter()
            .find(|(f, _)| f == folder)
            .map(|(_, i)| i)
    }

    /// The lake.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// Recovers what an earlier run left unfinished, checks the slot, takes the
    /// first-run snapshot (or backfills tables added since) when needed, and returns a
    /// replication connection with the position to start streaming from (everything
    /// before it is in the spool or the lake). [`recovery`] decides; this carries it out.
    pub async fn prepare(
        &self,
        report: &mut RunReport,
    ) -> Result<(ReplicationStream, Lsn), RunError> {
        report.lake = self.lake.url().to_string();
        let damage = self.checkpoints.damage().await?;
        if !damage.tables.is_empty() {
            tracing::error!(
                segments = ?damage.segments.keys().collect::<Vec<_>>(),
                tables = ?damage.tables,
                "spooled changes were lost (a corrupt segment with no mirror): the lake may miss changes of these tables until each is backfilled (`slot2lake backfill --table T`)"
            );
        }
        let first_run = self.checkpoints.snapshot_state(FIRST_RUN).await?;
        let mut staged_backfills = Vec::new();
        for name in self.checkpoints.backfill_states().await? {
            if let Some(state) = self.checkpoints.snapshot_state(&name).await? {
                if state.phase == SnapshotPhase::Staged {
                    staged_backfills.push((name, state));
                }
            }
        }
        let intent = self.checkpoints.flush_intent().await?;
        // Another process streaming from the slot owns the lake: the plan stops before
        // the temp folder is cleaned or anything it may be finishing itself is touched.
        let plan = recovery::unfinished(&recovery::Leftovers {
            slot_name: self.slot().to_string(),
            slot: self.slot_when_free().await?.as_ref().map(slot_seen),
            intent: intent.is_some(),
            first_run: first_run.as_ref().map(|s| s.phase),
            staged_backfills: staged_backfills.iter().map(|(n, _)| n.clone()).collect(),
        })?;
        let (mut intent, mut first_run) = (intent, first_run);
        let mut staged_backfills = staged_backfills.into_iter();
        for step in plan {
            match step {
                Finish::CleanTmp => self.clean_tmp(),
                Finish::FinishFlush => {
                    if let Some(intent) = intent.take() {
                        tracing::warn!(cut = %intent.cut, "finishing a flush an earlier run left incomplete");
                        let done = self.finish_flush(intent).await?;
                        report.files.extend(done.flushed.files);
                    }
                }
                Finish::PublishFirstRun => {
                    if let Some(state) = first_run.take() {
                        tracing::warn!("finishing a first-run snapshot an earlier run left staged");
                        report.snapshot_rows = state.rows.clone();
                        self.publish_snapshot(FIRST_RUN, state).await?;
                    }
                }
                Finish::AbandonFirstRun => {
                    if let Some(state) = first_run.take() {
                        tracing::warn!(
                            "an earlier first run stopped while copying; starting the first run again"
                        );
                        self.abandon_first_run(&state).await?;
                    }
                }
                Finish::PublishBackfill(name) => {
                    if let Some((_, state)) = staged_backfills.next() {
                        tracing::warn!(state = %name, "finishing a backfill an earlier run left staged");
                        self.publish_snapshot(&name, state).await?;
                    }
                }
            }
        }
        let slot = introspect::slot_info(&*self.source.get().await?, self.slot()).await?;
        let watermarks = self.watermarks().await?;
        let plan = recovery::start(&recovery::Position {
            slot_name: self.slot().to_string(),
            slot: slot.as_ref().map(slot_seen),
            mode: self.config.source.snapshot,
            watermarks: watermarks
                .iter()
                .map(|(f, w)| (f.clone(), w.as_ref().map(|w| w.lsn)))
                .collect(),
            spool_end: self.spool.durable_end()?,
            spool_dir: self.spool.dir().display().to_string(),
            server: introspect::current_wal_lsn(&*self.source.get().await?).await?,
        })?;
        if plan.drop_slot {
            tracing::error!(slot = self.slot(), "the slot lost WAL it needed (wal_status = lost): dropping it and taking a new snapshot of every table (snapshot = \"when_needed\")");
            self.drop_slot(self.slot()).await?;
        } else if plan.first_run == Some(true) {
            tracing::error!(slot = self.slot(), "the slot is missing: changes since it was dropped are lost; taking a new snapshot of every table that supersedes the lake's rows (snapshot = \"when_needed\")");
        }
        if plan.discard_spool {
            self.discard_orphaned_spool().await?;
        }
        let mut repl = ReplicationStream::connect(
            &self.config.source.url,
            &StreamOptions {
                slot: self.slot().to_string(),
                publication: self.config.source.publication.clone(),
                binary: self.binary,
                export_snapshot: plan.first_run.is_some(),
                temporary: false,
            },
        )
        .await?;
        let mut start = None;
        if let Some(supersede) = plan.first_run {
            start = Some(
                self.first_run_snapshot(&mut repl, report, supersede)
                    .await?,
            );
        } else if !plan.backfill.is_empty() {
            // Tables added to the config since the slot was created: each gets a snapshot
            // lined up with a temporary slot, while the main slot keeps its position.
            tracing::info!(tables = %plan.backfill.join(", "), "tables without a watermark: backfilling them");
            let (rows, files) = self.backfill(&plan.backfill).await?;
            report.snapshot_rows.extend(rows);
            report.files.extend(files);
        }
        if let Some(s) = slot.filter(|_| !plan.drop_slot) {
            start = start.or(s.confirmed_flush);
        }
        let durable = self.spool.durable_end()?.unwrap_or(Lsn::ZERO);
        let min_wm = self
            .watermarks()
            .await?
            .values()
            .filter_map(|w| w.as_ref().map(|w| w.lsn))
            .min();
        let start = [start, Some(durable), min_wm]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(Lsn::ZERO);
        Ok((repl, start))
    }

    /// Each table's watermark LSN (zero before its first flush): where a flush starts.
    async fn watermark_lsns(&self) -> Result<BTreeMap<String, Lsn>, RunError> {
        Ok(self
            .watermarks()
            .await?
            .into_iter()
            .map(|(f, w)| (f, w.map_or(Lsn::ZERO, |w| w.lsn)))
            .collect())
    }

    /// Without the slot, spooled segments belong to an earlier slot of the same name: one
    /// that was dropped (the new snapshot supersedes them), or one on another cluster,
    /// whose LSNs mean nothing here and would make the stream wait for a position this
    /// server has not reached.
    async fn discard_orphaned_spool(&self) -> Result<(), RunError> {
        let segments = self.spool.segments()?;
        if let (Some(first), Some(last)) = (segments.first(), segments.last()) {
            tracing::warn!(
                segments = segments.len(),
                from = %first.start,
                to = %last.end,
                spool = %self.spool.dir().display(),
                "the spool holds segments of a slot that no longer exists; discarding them"
            );
            self.spool.clear().await?;
        }
        Ok(())
    }

    fn clean_tmp(&self) {
        let dir = self.tmp_dir();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    async fn drop_slot(&self, name: &str) -> Result<(), RunError> {
        self.source
            .get()
            .await?
            .execute("SELECT pg_drop_replication_slot($1)", &[&name])
            .await
            .map_err(|e| source::query_error(format!("dropping slot {name:?}"), &e))?;
        Ok(())
    }

    /// Creates the slot with an exported snapshot and lands every table from it.
    async fn first_run_snapshot(
        &self,
        repl: &mut ReplicationStream,
        report: &mut RunReport,
        supersede: bool,
    ) -> Result<Lsn, RunError> {
        let snapshot_name = repl.create_slot_exporting().await?;
        let cp = introspect::slot_info(&*self.source.get().await?, self.slot())
            .await?
            .and_then(|s| s.confirmed_flush)
            .ok_or_else(|| RunError::State("the new slot reports no consistent point".into()))?;
        tracing::info!(slot = self.slot(), consistent_point = %cp, "created slot; copying the snapshot");
        let folders: Vec<String> = self.tables.iter().map(|(f, _)| f.clone()).collect();
        let (state, files) = self
            .snapshot_to_staging(
                &folders,
                &snapshot_name,
                cp,
                supersede,
                FIRST_RUN,
                self.tmp_dir(),
                None,
            )
            .await?;
        report.snapshot_rows = state.rows.clone();
        report.files.extend(files);
        self.publish_snapshot(FIRST_RUN, state).await?;
        Ok(cp)
    }

    /// Re-snapshots tables while streaming goes on elsewhere (`slot2lake backfill`).
    ///
    /// A temporary slot exports a snapshot at its own consistent point CP_T; the tables
    /// are copied under it and moved into place behind a TRUNCATE row at (CP_T, -1), and
    /// their watermark becomes CP_T. Changes committed before CP_T are in the snapshot;
    /// the main slot still delivers everything after it, and the flush skips the table's
    /// changes before its watermark. So the snapshot and the stream neither overlap nor
    /// leave a gap, and no stale row wins: the TRUNCATE row supersedes every older row of
    /// the table, including ones a concurrent flush writes below CP_T.
    pub async fn backfill(
        &self,
        folders: &[String],
    ) -> Result<(BTreeMap<String, u64>, Vec<WrittenFile>), RunError> {
        self.backfill_partitions(folders, None).await
    }

    /// [`backfill`](Self::backfill), or with `only_partitions` a refresh: those
    /// partitions' rows are copied on top of the table's, with no TRUNCATE row and the
    /// watermark left where it is (other partitions' changes may still be in the spool).
    async fn backfill_partitions(
        &self,
        folders: &[String],
        only_partitions: Option<&[String]>,
    ) -> Result<(BTreeMap<String, u64>, Vec<WrittenFile>), RunError> {
        for f in folders {
            if !self.tables.iter().any(|(t, _)| t == f) {
                return Err(RunError::State(format!(
                    "table {f} is not in [[tables]]; add it to the config first"
                )));
            }
            // A backfill that stopped while copying left only invisible staging files.
            let name = backfill_state(f);
            if let Some(old) = self.checkpoints.snapshot_state(&name).await? {
                self.discard_staged(&name, &old).await?;
            }
        }
        let temp_slot = format!("{}_backfill_{}", self.slot(), std::process::id());
        let mut repl = ReplicationStream::connect(
            &self.config.source.url,
            &StreamOptions {
                slot: temp_slot.clone(),
                publication: self.config.source.publication.clone(),
                binary: self.binary,
                export_snapshot: true,
                temporary: true,
            },
        )
        .await?;
        let snapshot_name = repl.create_slot_exporting().await?;
        let cp = introspect::slot_info(&*self.source.get().await?, &temp_slot)
            .await?
            .and_then(|s| s.confirmed_flush)
            .ok_or_else(|| {
                RunError::State("the temporary slot reports no consistent point".into())
            })?;
        tracing::info!(tables = %folders.join(", "), consistent_point = %cp, "backfill: copying");
        let tmp = self
            .tmp_dir()
            .with_file_name(format!("tmp-backfill-{}", std::process::id()));
        let mut rows = BTreeMap::new();
        let mut written = Vec::new();
        // One state per table, so a table's backfill is resumed or cleaned on its own.
        for f in folders {
            let name = backfill_state(f);
            let (state, files) = self
                .snapshot_to_staging(
                    std::slice::from_ref(f),
                    &snapshot_name,
                    cp,
                    only_partitions.is_none(),
                    &name,
                    tmp.clone(),
                    only_partitions,
                )
                .await?;
            rows.extend(state.rows.clone());
            written.extend(files);
            self.publish_snapshot(&name, state).await?;
            if only_partitions.is_none() {
                self.checkpoints.repaired(f).await?;
            }
        }
        let _ = std::fs::remove_dir_all(&tmp);
        // Dropping the connection drops the temporary slot.
        drop(repl);
        Ok((rows, written))
    }

    /// Copies `folders` under an exported snapshot into staging; returns the staged state.
    #[allow(clippy::too_many_arguments)]
    async fn snapshot_to_staging(
        &self,
        folders: &[String],
        snapshot_name: &str,
        cp: Lsn,
        supersede: bool,
        state_name: &str,
        tmp_dir: PathBuf,
        only_partitions: Option<&[String]>,
    ) -> Result<(SnapshotState, Vec<WrittenFile>), RunError> {
        let processed_at = Utc::now();
        let staging = self.lake.internal_key(
            self.slot(),
            &format!(
                "staging/{:016X}-{}",
                cp.0,
                state_name.trim_end_matches(".json").replace('/', "-")
            ),
        );
        let mut state = SnapshotState {
            version: 1,
            phase: SnapshotPhase::Copying,
            consistent_point: cp,
            processed_at,
            snapshot_time: None,
            staging: staging.clone(),
            files: vec![],
            rows: BTreeMap::new(),
            file_sizes: BTreeMap::new(),
            partitions: BTreeMap::new(),
            refresh: only_partitions.is_some(),
        };
        self.checkpoints
            .write_snapshot_state(state_name, &state)
            .await?;
        let tables: Vec<SnapshotTable> = self
            .tables
            .iter()
            .filter(|(folder, _)| folders.contains(folder))
            .map(|(folder, info)| SnapshotTable {
                folder: folder.clone(),
                schema: Arc::new(info.schema.clone()),
                where_clause: self
                    .config
                    .tables
                    .iter()
                    .find(|t| t.folder() == folder)
                    .and_then(|t| t.snapshot_where.clone()),
                row_filter: info.row_filter.clone(),
                supersede,
                only_partitions: only_partitions.map(<[String]>::to_vec),
            })
            .collect();
        let workers = self.config.source.parallelism();
        let started = Instant::now();
        let plan = SnapshotPlan {
            url: &self.config.source.url,
            snapshot_name,
            consistent_point: cp,
            tables: &tables,
            max_parallel: workers,
            progress: Some((
                self.lake.clone(),
                self.lake
                    .internal_key(self.slot(), "snapshot-progress.json"),
            )),
        };
        let copied = snapshot::copy_tables(plan, || {
            let opts = SinkOptions {
                staging_prefix: Some(staging.clone()),
                ..self.sink_options(workers, tmp_dir.clone())
            };
            self.sink(opts, processed_at, cp)
        })
        .await?;
        let total: u64 = copied.rows.values().sum();
        tracing::info!(
            rows = total,
            seconds = started.elapsed().as_secs_f64(),
            rows_per_second = (total as f64 / started.elapsed().as_secs_f64().max(1e-9)) as u64,
            "snapshot copied"
        );
        state.phase = SnapshotPhase::Staged;
        state.snapshot_time = Some(copied.snapshot_time);
        state.files = copied
            .files
            .iter()
            .map(|f| (f.written_key.clone(), f.key.clone()))
            .collect();
        state.rows = copied.rows.clone();
        state.partitions = copied.partitions.clone();
        for f in folders {
            let sizes = FileSizes::of(
                copied
                    .files
                    .iter()
                    .filter(|w| &w.table == f)
                    .map(|w| w.bytes),
            );
            if let Some(sizes) = sizes {
                state.file_sizes.insert(f.clone(), sizes);
            }
        }
        // Tables with no rows still get their watermark.
        for f in folders {
            state.rows.entry(f.clone()).or_insert(0);
        }
        self.checkpoints
            .write_snapshot_state(state_name, &state)
            .await?;
        failpoint::hit(failpoint::AFTER_SNAPSHOT_STAGED);
        Ok((state, copied.files))
    }

    /// Moves staged snapshot files into the table folders, then writes the watermarks.
    ///
    /// A watermark already past the snapshot (a flush committed meanwhile) stays where it is.
    async fn publish_snapshot(
        &self,
        state_name: &str,
        state: SnapshotState,
    ) -> Result<(), RunError> {
        let mut files_per_table: BTreeMap<String, u64> = BTreeMap::new();
        for (staged, dest) in &state.files {
            if self.lake.exists(staged).await? {
                self.lake.rename(staged, dest).await?;
            } else if !self.lake.exists(dest).await? {
                return Err(RunError::State(format!(
                    "staged snapshot file {staged} is gone and {dest} does not exist; remove {} and take the snapshot again",
                    self.lake.internal_key(self.slot(), state_name)
                )));
            }
            failpoint::hit(failpoint::MID_SNAPSHOT_PUBLISH);
            let table = dest.split('/').next().unwrap_or_default().to_string();
            *files_per_table.entry(table).or_default() += 1;
        }
        self.lake.sync_dirs()?;
        let time = state.snapshot_time.unwrap_or(state.processed_at);
        for (folder, rows) in &state.rows {
            let qualified = self
                .tables
                .iter()
                .find(|(f, _)| f == folder)
                .map(|(_, i)| i.schema.qualified_name())
                .unwrap_or_else(|| folder.clone());
            let partitions = state.partitions.get(folder).cloned();
            if state.refresh {
                // Rows restated on top of the table's: only the partitions are recorded.
                if let Some(mut wm) = self.checkpoints.watermark(folder).await? {
                    wm.partitions = partitions;
                    self.checkpoints.write_watermark(folder, &wm).await?;
                }
                continue;
            }
            let wm = Watermark {
                version: 1,
                table: qualified,
                lsn: state.consistent_point,
                timestamp: seed_timestamp(time),
                commit_time: time,
                flushed_at: state.processed_at,
                kind: WatermarkKind::Snapshot,
                rows: *rows,
                files: files_per_table.get(folder).copied().unwrap_or(0),
                slot: self.slot().to_string(),
                unresolved_values: 0,
                file_sizes: state.file_sizes.get(folder).copied(),
                partitions,
                resnapshot: None,
                columns: self
                    .tables
                    .iter()
                    .find(|(f, _)| f == folder)
                    .map(|(_, i)| i.schema.columns.iter().map(|c| c.name.clone()).collect()),
            };
            commit::record_file_metrics(folder, wm.files, wm.file_sizes);
            let ahead = self
                .checkpoints
                .watermark(folder)
                .await?
                .is_some_and(|w| w.lsn > state.consistent_point);
            if !ahead {
                self.checkpoints.write_watermark(folder, &wm).await?;
            }
        }
        self.checkpoints.clear_snapshot_state(state_name).await?;
        Ok(())
    }

    /// Reads the slot, giving a consumer that just died a moment to release it.
    ///
    /// After a crash the server notices the closed connection and frees the slot within
    /// moments; a slot still in use after that belongs to another live consumer.
    async fn slot_when_free(&self) -> Result<Option<introspect::SlotInfo>, RunError> {
        let deadline = Instant::now() + SLOT_RELEASE_WAIT;
        loop {
            let slot = introspect::slot_info(&*self.source.get().await?, self.slot()).await?;
            match &slot {
                Some(s) if s.active_pid.is_some() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => return Ok(slot),
            }
        }
    }

    /// Undoes a first run that died while copying: its exported snapshot is gone.
    async fn abandon_first_run(&self, state: &SnapshotState) -> Result<(), RunError> {
        if introspect::slot_info(&*self.source.get().await?, self.slot())
            .await?
            .is_some()
        {
            self.drop_slot(self.slot()).await?;
        }
        self.discard_staged(FIRST_RUN, state).await
    }

    /// Deletes a snapshot's staging files (invisible to readers) and forgets its state.
    async fn discard_staged(&self, name: &str, state: &SnapshotState) -> Result<(), RunError> {
        for obj in self.lake.list(&state.staging).await? {
            self.lake.delete(obj.location.as_ref()).await?;
        }
        self.checkpoints.clear_snapshot_state(name).await?;
        Ok(())
    }

    /// A spool writer continuing after `start`.
    pub fn spool_writer(&self, start: Lsn, segment_size: u64) -> SpoolWriter {
        let header = SegmentHeader {
            format_version: spool::FORMAT_VERSION,
            slot: self.slot().to_string(),
            protocol_version: 1,
            binary: self.binary,
        };
        self.spool.writer(header, start, segment_size)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The regular connection to the source.
    pub fn source(&self) -> &SourceClient {
        &self.source
    }

    /// The spool.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Opens a replication connection for streaming (not for a first snapshot).
    pub async fn connect_stream(&self) -> Result<ReplicationStream, RunError> {
        Ok(ReplicationStream::connect(
            &self.config.source.url,
            &StreamOptions {
                slot: self.slot().to_string(),
                publication: self.config.source.publication.clone(),
                binary: self.binary,
                export_snapshot: false,
                temporary: false,
            },
        )
        .await?)
    }

    /// Flushes every change before `cut`, encoding segments as they arrive on `segments`
    /// (the caller closes it once the spool holds every transaction before the cut);
    /// `None` when every table is already past the cut.
    ///
    /// A flush an earlier attempt left unfinished (its intent) is completed first.
    pub async fn flush(
        &self,
        cut: Lsn,
        segments: std::sync::mpsc::Receiver<Segment>,
    ) -> Result<Option<Committed>, RunError> {
        if let Some(intent) = self.checkpoints.flush_intent().await? {
            tracing::warn!(cut = %intent.cut, "finishing a flush that did not complete");
            self.finish_flush(intent).await?;
        }
        let from = self.watermark_lsns().await?;
        if from.values().all(|l| *l >= cut) {
            return Ok(None);
        }
        let intent = commit::intent(cut, from);
        let started = Instant::now();
        let worker = self.spawn_flush_worker(&intent, segments, false).await?;
        let flushed = join_flush(worker).await?;
        // The intent fixes the names once a new machine could re-encode them: from the
        // spool's mirror.
        self.spool.make_durable().await?;
        self.commit(Encoded::new(intent, flushed, false, started))
            .await
            .map(Some)
    }

    /// Completes a flush whose intent an earlier attempt wrote: the same names, files
    /// already in the lake skipped.
    pub async fn finish_flush(&self, intent: FlushIntent) -> Result<Committed, RunError> {
        let started = Instant::now();
        let worker = self
            .spawn_flush_worker(&intent, self.spool.segments()?, true)
            .await?;
        let flushed = join_flush(worker).await?;
        self.commit(Encoded::new(intent, flushed, true, started))
            .await
    }

    /// Carries encoded files through intent, publishing and watermarks.
    async fn commit(&self, encoded: Encoded) -> Result<Committed, RunError> {
        let tables: Vec<CommitTable> = self
            .tables
            .iter()
            .map(|(folder, info)| CommitTable {
                folder: folder.clone(),
                qualified: info.schema.qualified_name(),
            })
            .collect();
        Ok(encoded
            .intend(&self.checkpoints)
            .await?
            .publish(&self.lake)
            .await?
            .commit(&self.checkpoints, &tables)
            .await?)
    }

    /// After a failure on a corrupt spool segment: restores it from the mirror (`true`:
    /// try again), or records that every table may have lost its changes, so `status`
    /// shows it until each is backfilled.
    pub async fn repair_spool(&self, e: &RunError) -> Result<bool, RunError> {
        let (RunError::Spool(SpoolError::Corrupt { path, detail })
        | RunError::Flush(FlushError::Spool(SpoolError::Corrupt { path, detail }))) = e
        else {
            return Ok(false);
        };
        if self.spool.restore_from_mirror(path).await? {
            return Ok(true);
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.checkpoints
            .record_damage(&name, detail, self.tables.iter().map(|(f, _)| f.clone()))
            .await?;
        Ok(false)
    }

    /// Decodes and encodes the segments arriving on `segments` into the temp folder, on
    /// a blocking thread. `resumed`: an earlier attempt of this intent may have
    /// published some of its files.
    async fn spawn_flush_worker(
        &self,
        intent: &FlushIntent,
        segments: impl IntoIterator<Item = Segment> + Send + 'static,
        resumed: bool,
    ) -> Result<tokio::task::JoinHandle<Result<Flushed, FlushError>>, RunError> {
        let opts = SinkOptions {
            defer_publish: true,
            may_exist: resumed,
            ..self.sink_options(1, self.tmp_dir())
        };
        let sink = self.sink(opts, intent.processed_at, intent.cut)?;
        let tables = self.config.tables.clone();
        let job_intent = intent.clone();
        let mut known: std::collections::HashMap<u32, KnownTable> = self
            .tables
            .iter()
            .filter_map(|(folder, info)| {
                self.config
                    .tables
                    .iter()
                    .find(|t| t.folder() == folder)
                    .map(|t| {
                        let keys = info
                            .schema
                            .columns
                            .iter()
                            .filter(|c| c.is_key)
                            .map(|c| c.name.clone())
                            .collect();
                        let config = t.clone();
                        let known = KnownTable {
                            config,
                            keys,
                            lake_columns: None,
                        };
                        (info.oid, known)
                    })
            })
            .collect();
        for (oid, k) in known.iter_mut() {
            if let Some((folder, _)) = self.tables.iter().find(|(_, i)| i.oid == *oid) {
                k.lake_columns = self
                    .checkpoints
                    .watermark(folder)
                    .await?
                    .and_then(|w| w.columns);
            }
        }
        let types = self.refresh_types().await;
        Ok(tokio::task::spawn_blocking(move || {
            flush::write_changes(segments, &tables, known, types, &job_intent, sink)
        }))
    }

    /// Waits (briefly) until the server shows the acknowledgement.
    pub async fn wait_for_ack(&self, lsn: Lsn) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let client = match self.source.get().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the slot's confirmed position");
                    return;
                }
            };
            match introspect::slot_info(&client, self.slot()).await {
                Ok(Some(s)) if s.confirmed_flush.is_some_and(|c| c >= lsn) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the slot's confirmed position");
                    return;
                }
            }
        }
        tracing::warn!(lsn = %lsn, "the server has not confirmed the acknowledgement yet; the next run repeats it");
    }
}

async fn join_flush(
    worker: tokio::task::JoinHandle<Result<Flushed, FlushError>>,
) -> Result<Flushed, RunError> {
    Ok(worker
        .await
        .map_err(|e| RunError::State(format!("flush worker failed: {e}")))??)
}

/// The spool directory: `[spool] dir`, `_slot2lake/<slot>/spool` in a `file://` lake, or a
/// temp folder (the working copy of a spool kept in an `s3://` lake).
pub fn spool_dir(config: &Config, lake: &Lake) -> PathBuf {
    if let Some(dir) = &config.spool.dir {
        return dir.clone();
    }
    match lake.local_root() {
        Some(r) => r.join(INTERNAL_DIR).join(&config.source.slot).join("spool"),
        // Keyed by the lake too: two instances on one machine may use the same slot name
        // for different databases.
        None => std::env::temp_dir()
            .join(format!(
                "slot2lake-{}-{:08x}",
                config.source.slot,
                crc32fast::hash(config.output.url.as_bytes())
            ))
            .join("spool"),
    }
}

/// Opens the spool, mirrored to the output store when configured (the default for S3).
pub async fn open_spool(config: &Config, lake: &Lake) -> Result<Spool, SpoolError> {
    let dir = spool_dir(config, lake);
    if config.spool.mirrored(&config.output.url) {
        let prefix = lake.internal_key(&config.source.slot, "spool");
        Spool::open_mirrored(dir, lake.clone(), prefix).await
    } else {
        Spool::open(dir)
    }
}

/// The error (and fix) for a table whose updates and deletes cannot be replicated.
pub fn identity_remedy(table: &str, replica_identity: char) -> String {
    let why = if replica_identity == 'n' {
        "has REPLICA IDENTITY NOTHING"
    } else {
        "has no primary key and no replica identity"
    };
    format!(
        "table {table} {why}, so its UPDATEs and DELETEs cannot be replicated (PostgreSQL rejects them once the table is published); add a primary key and run ALTER TABLE {table} REPLICA IDENTITY DEFAULT;, or run ALTER TABLE {table} REPLICA IDENTITY FULL;"
    )
}

/// The slot as recovery needs to see it.
fn slot_seen(s: &introspect::SlotInfo) -> recovery::SlotSeen {
    recovery::SlotSeen {
        active_pid: s.active_pid,
        plugin: s.plugin.clone(),
        wal_lost: s.wal_status.as_deref() == Some("lost"),
    }
}
