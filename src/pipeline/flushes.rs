//! The flush as the pipeline runs it: encode on a blocking thread, then the commit
//! states of [`crate::flush::commit`]; and the steps after a commit.

use super::*;

impl Pipeline {
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
            if self.iceberg() && !self.has_iceberg_table(folder).await? {
                tracing::warn!(table = %info.schema.qualified_name(), "the lake holds rows of the table but no Iceberg table (it was written with output.format = \"parquet\"): taking a new snapshot of the table to start its Iceberg tables");
                let (_, files) = self.backfill(std::slice::from_ref(folder)).await?;
                written.extend(files);
                continue;
            }
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

    /// Each table's watermark LSN (zero before its first flush): where a flush starts.
    pub(super) async fn watermark_lsns(&self) -> Result<BTreeMap<String, Lsn>, RunError> {
        Ok(self
            .watermarks()
            .await?
            .into_iter()
            .map(|(f, w)| (f, w.map_or(Lsn::ZERO, |w| w.lsn)))
            .collect())
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
    pub(super) async fn commit(&self, encoded: Encoded) -> Result<Committed, RunError> {
        let tables: Vec<CommitTable> = self
            .tables
            .iter()
            .map(|(folder, info)| CommitTable {
                folder: folder.clone(),
                qualified: info.schema.qualified_name(),
            })
            .collect();
        let published = encoded
            .intend(&self.checkpoints)
            .await?
            .publish(&self.lake)
            .await?;
        if self.iceberg() {
            let mut files = Vec::with_capacity(published.files().len());
            for f in published.files() {
                files.push(iceberg::Registered::of_flush(&self.lake, f).await?);
            }
            let id = iceberg::flush_commit_id(published.intent());
            let columns = &published.flushed().columns;
            self.commit_iceberg(
                &id,
                published.intent().cut,
                files,
                columns,
                iceberg::CommitKind::Flush,
            )
            .await?;
        }
        Ok(published.commit(&self.checkpoints, &tables).await?)
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
    pub(super) async fn spawn_flush_worker(
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
}

async fn join_flush(
    worker: tokio::task::JoinHandle<Result<Flushed, FlushError>>,
) -> Result<Flushed, RunError> {
    Ok(worker
        .await
        .map_err(|e| RunError::Task(format!("flush worker failed: {e}")))??)
}
