//! Snapshots: the first run's (lined up with the new slot) and backfills (lined up with
//! a temporary slot), copied to staging and moved into place with their watermarks.
//!
//! Staging mirrors the table folders. On a local lake a table folder the lake does not
//! have yet is published by renaming its staged folder (one rename for thousands of
//! partitions); otherwise, and on object stores, file by file. Either way the state
//! records every staged → final pair, so a crash midway is finished file by file.

use futures::StreamExt;

use super::*;
use crate::sink::writer::nulled_in;

/// Backfills this process started (numbers their temporary slots).
static BACKFILLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Staged snapshot files moved into their partitions at once.
const CONCURRENT_MOVES: usize = 16;

impl Pipeline {
    /// Creates the slot with an exported snapshot and lands every table from it.
    pub(super) async fn first_run_snapshot(
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
    pub(super) async fn backfill_partitions(
        &self,
        folders: &[String],
        only_partitions: Option<&[String]>,
    ) -> Result<(BTreeMap<String, u64>, Vec<WrittenFile>), RunError> {
        for f in folders {
            if !self.tables.iter().any(|(t, _)| t == f) {
                return Err(RunError::Setup(format!(
                    "table {f} is not in [[tables]]; add it to the config first"
                )));
            }
            // A backfill that stopped while copying left only invisible staging files.
            let name = backfill_state(f);
            if let Some(old) = self.checkpoints.snapshot_state(&name).await? {
                self.discard_staged(&name, &old).await?;
            }
        }
        // A slot still being dropped (see below: the wait is bounded) never collides with
        // the next backfill of this process: each gets its own name.
        let n = BACKFILLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let temp_slot = format!("{}_backfill_{}_{n}", self.slot(), std::process::id());
        let mut repl = ReplicationStream::connect(
            &self.config.source.url,
            &StreamOptions {
                export_snapshot: true,
                temporary: true,
                ..self.stream_options(&temp_slot)
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
        // Dropping the connection drops the temporary slot, once the server's backend
        // has exited.
        drop(repl);
        if !introspect::wait_slot_gone(&*self.source.get().await?, &temp_slot).await? {
            tracing::warn!(slot = %temp_slot, "the backfill's temporary slot is still there; PostgreSQL drops it when its connection's backend exits");
        }
        Ok((rows, written))
    }

    /// Copies `folders` under an exported snapshot into staging; returns the staged state.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn snapshot_to_staging(
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
        let staging = self.checkpoints.keys().staging(cp, state_name);
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
            nulled_values: BTreeMap::new(),
            partitions: BTreeMap::new(),
            refresh: only_partitions.is_some(),
            file_stats: BTreeMap::new(),
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
            source: &self.config.source,
            snapshot_name,
            consistent_point: cp,
            tables: &tables,
            max_parallel: workers,
            progress: Some((
                self.lake.clone(),
                self.checkpoints.keys().snapshot_progress(),
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
        state.file_stats = copied
            .files
            .iter()
            .map(|f| {
                let stat = StagedFile {
                    rows: f.rows,
                    bytes: f.bytes,
                    day: f.partition.epoch_day(),
                };
                (f.key.clone(), stat)
            })
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
            let nulled = nulled_in(&copied.files, f);
            if !nulled.is_empty() {
                state.nulled_values.insert(f.clone(), nulled);
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
    pub(super) async fn publish_snapshot(
        &self,
        state_name: &str,
        state: SnapshotState,
    ) -> Result<(), RunError> {
        let mut files_per_table: BTreeMap<String, u64> = BTreeMap::new();
        // On S3 a move is a copy and a delete: thousands of partitions' files one after
        // the other would take minutes.
        let state_key = self.checkpoints.keys().snapshot_state(state_name);
        // A table the lake does not hold yet (the first run) moves as one folder.
        let mut moved_whole = std::collections::BTreeSet::new();
        for folder in state.rows.keys() {
            let staged = format!("{}/{folder}", state.staging);
            if self.lake.move_folder(&staged, folder)? {
                moved_whole.insert(folder.clone());
                failpoint::hit(failpoint::MID_SNAPSHOT_PUBLISH);
            }
        }
        let table_of = |key: &str| key.split('/').next().unwrap_or_default().to_string();
        let mut pending = Vec::new();
        for (staged, dest) in &state.files {
            let table = table_of(dest);
            if moved_whole.contains(&table) {
                *files_per_table.entry(table).or_default() += 1;
            } else {
                pending.push((staged.clone(), dest.clone()));
            }
        }
        let moves = pending.into_iter().map(|(staged, dest)| {
            let (lake, state_key) = (self.lake.clone(), state_key.clone());
            async move {
                if lake.exists(&staged).await? {
                    lake.rename(&staged, &dest).await?;
                } else if !lake.exists(&dest).await? {
                    return Err(RunError::State(format!(
                        "staged snapshot file {staged} is gone and {dest} does not exist; remove {state_key} and take the snapshot again"
                    )));
                }
                failpoint::hit(failpoint::MID_SNAPSHOT_PUBLISH);
                Ok(dest)
            }
        });
        let moved = futures::stream::iter(moves).buffer_unordered(CONCURRENT_MOVES);
        let mut moved = std::pin::pin!(moved);
        while let Some(dest) = moved.next().await {
            *files_per_table.entry(table_of(&dest?)).or_default() += 1;
        }
        self.lake.sync_dirs()?;
        self.lake.remove_empty_dirs(&state.staging);
        if self.iceberg() {
            let mut files = Vec::with_capacity(state.files.len());
            for (_, dest) in &state.files {
                let stat = state.file_stats.get(dest).ok_or_else(|| {
                    RunError::State(format!(
                        "snapshot file {dest} has no recorded size in {state_key} (a state from before Iceberg output); remove it and take the snapshot again"
                    ))
                })?;
                files.push(iceberg::of_snapshot(dest, stat));
            }
            let id = iceberg::snapshot_commit_id(state_name, &state);
            let kind = iceberg::CommitKind::Snapshot {
                refresh: state.refresh,
            };
            self.commit_iceberg(&id, state.consistent_point, files, &BTreeMap::new(), kind)
                .await?;
        }
        let time = state.snapshot_time.unwrap_or(state.processed_at);
        for (folder, rows) in &state.rows {
            let qualified = self
                .tables
                .iter()
                .find(|(f, _)| f == folder)
                .map(|(_, i)| i.schema.qualified_name())
                .unwrap_or_else(|| folder.clone());
            let partitions = state.partitions.get(folder).cloned();
            let nulled = state.nulled_values.get(folder).cloned().unwrap_or_default();
            commit::record_nulled(folder, &nulled);
            if state.refresh {
                // Rows restated on top of the table's: only the partitions, and values
                // the new rows hold as NULL, are recorded.
                if let Some(mut wm) = self.checkpoints.watermark(folder).await? {
                    if wm.record_refresh(partitions, &nulled) {
                        self.checkpoints.write_watermark(folder, &wm).await?;
                    }
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
                nulled_values: nulled,
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

    /// Deletes a snapshot's staging files (invisible to readers) and forgets its state.
    pub(super) async fn discard_staged(
        &self,
        name: &str,
        state: &SnapshotState,
    ) -> Result<(), RunError> {
        for obj in self.lake.list(&state.staging).await? {
            self.lake.delete(obj.location.as_ref()).await?;
        }
        self.lake.remove_empty_dirs(&state.staging);
        self.checkpoints.clear_snapshot_state(name).await?;
        Ok(())
    }
}
