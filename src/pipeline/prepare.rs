//! Recovery at start: observe, ask [`crate::recovery`] for the plan, carry it out.

use super::*;

impl Pipeline {
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
        let mut first_run = self.checkpoints.snapshot_state(FIRST_RUN).await?;
        let mut staged_backfills = Vec::new();
        for name in self.checkpoints.backfill_states().await? {
            if let Some(state) = self.checkpoints.snapshot_state(&name).await? {
                if state.phase == SnapshotPhase::Staged {
                    staged_backfills.push((name, state));
                }
            }
        }
        let mut intent = self.checkpoints.flush_intent().await?;
        // Another process streaming from the slot owns the lake: the plan stops before
        // the temp folder is cleaned or anything it may be finishing itself is touched.
        let plan = recovery::unfinished(&recovery::Leftovers {
            slot_name: self.slot().to_string(),
            slot: self.slot_when_free().await?.as_ref().map(slot_seen),
            intent: intent.is_some(),
            first_run: first_run.as_ref().map(|s| s.phase),
            staged_backfills: staged_backfills.iter().map(|(n, _)| n.clone()).collect(),
            missing_segments: self.spool.missing()?,
            recorded_losses: damage.segments.keys().cloned().collect(),
        })?;
        let mut staged_backfills = staged_backfills.into_iter();
        for step in plan {
            match step {
                Finish::RecordLost(names) => {
                    for name in &names {
                        self.checkpoints
                            .record_damage(
                                name,
                                "missing from the spool directory",
                                self.tables.iter().map(|(f, _)| f.clone()),
                            )
                            .await?;
                    }
                    self.spool.forget(&names)?;
                    return Err(self.spool.missing_error(&names).into());
                }
                Finish::ForgetLost(names) => {
                    tracing::warn!(segments = ?names, "spool segments whose loss is on record are gone; no longer expecting them");
                    self.spool.forget(&names)?;
                }
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
        self.spool.manifest().rewrite()?;
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
        let slot = slot.filter(|_| !plan.drop_slot);
        if plan.discard_spool {
            self.discard_orphaned_spool().await?;
        }
        let mut repl = ReplicationStream::connect(
            &self.config.source.url,
            &StreamOptions {
                export_snapshot: plan.first_run.is_some(),
                // Without a snapshot, starting the stream creates a missing slot, which
                // waits for the transactions running on the source.
                answer_within: (plan.first_run.is_some() || slot.is_some())
                    .then_some(self.config.source.query_timeout),
                ..self.stream_options(self.slot())
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
        if let Some(s) = slot {
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

    /// Without the slot, spooled segments belong to an earlier slot of the same name: one
    /// that was dropped (the new snapshot supersedes them), or one on another cluster,
    /// whose LSNs mean nothing here and would make the stream wait for a position this
    /// server has not reached.
    pub(super) async fn discard_orphaned_spool(&self) -> Result<(), RunError> {
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

    pub(super) fn clean_tmp(&self) {
        let dir = self.tmp_dir();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    pub(super) async fn drop_slot(&self, name: &str) -> Result<(), RunError> {
        let conn = self.source.get().await?;
        conn.query(
            format!("dropping slot {name:?}"),
            "SELECT pg_drop_replication_slot($1)",
            &[&name],
        )
        .await?;
        Ok(())
    }

    /// Reads the slot, giving a consumer that just died a moment to release it.
    ///
    /// After a crash the server notices the closed connection and frees the slot within
    /// moments; a slot still in use after that belongs to another live consumer.
    pub async fn slot_when_free(&self) -> Result<Option<introspect::SlotInfo>, RunError> {
        let deadline = Instant::now() + SLOT_RELEASE_WAIT;
        loop {
            let slot = introspect::slot_info(&*self.source.get().await?, self.slot()).await?;
            match &slot {
                Some(s) if s.active_pid.is_some() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => return Ok(slot),
            }
        }
    }

    /// Undoes a first run that died while copying: its exported snapshot is gone.
    pub(super) async fn abandon_first_run(&self, state: &SnapshotState) -> Result<(), RunError> {
        if introspect::slot_info(&*self.source.get().await?, self.slot())
            .await?
            .is_some()
        {
            self.drop_slot(self.slot()).await?;
        }
        self.discard_staged(FIRST_RUN, state).await
    }
}

/// The slot as recovery needs to see it.
fn slot_seen(s: &introspect::SlotInfo) -> recovery::SlotSeen {
    recovery::SlotSeen {
        active_pid: s.active_pid,
        plugin: s.plugin.clone(),
        wal_lost: s.wal_status.as_deref() == Some("lost"),
    }
}
