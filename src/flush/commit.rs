//! The flush's commit transaction: a flush is a value that moves through named states,
//! each reached by one durable step, so a crash leaves it in a state the next start can
//! name (the README's recovery table lists the same four).
//!
//! ```text
//!  Encoded    files in the temp folder; names fixed by the intent's cut + processed_at
//!    │ intend:   _slot2lake/<slot>/flush.json written (skipped when no file was written,
//!    ▼           or when finishing an intent an earlier run wrote)
//!  Intended   a crash from here on is finished by the next start with the same names
//!    │ publish:  files moved or uploaded into the table folders, never replacing one
//!    ▼
//!  Published
//!    │ (iceberg: each table's snapshot committed, named by the intent; see
//!    │  `pipeline::iceberg`)
//!    │ commit:   watermarks, then the intent removed
//!    ▼
//!  Committed  the slot may be acknowledged to the cut; catalog and spool GC follow
//! ```
//!
//! Before `Intended` a crash loses temp files only: the spool still holds the changes,
//! and the next flush encodes them again. [`intent`] is the one place an intent is
//! built, [`changes_watermark`] the one place a flush's watermark is.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::Utc;

use super::Flushed;
use crate::checkpoint::{
    add_nulled, seed_timestamp, CheckpointError, Checkpoints, FileSizes, FlushIntent, Watermark,
    WatermarkKind,
};
use crate::failpoint;
use crate::lake::{Lake, LakeError, Published};
use crate::lsn::Lsn;
use crate::retry::{Action, Classify};
use crate::sink::writer::{nulled_in, publish_deferred};
use crate::telemetry::metric;

/// A commit step that failed; the flush stays in the state it had reached.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Writing or removing the intent or a watermark.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Moving files into the table folders.
    #[error(transparent)]
    Lake(#[from] LakeError),
}

/// A new flush of every change before `cut`; each table starts after its watermark.
pub fn intent(cut: Lsn, from: BTreeMap<String, Lsn>) -> FlushIntent {
    FlushIntent {
        version: 1,
        cut,
        processed_at: Utc::now(),
        from,
    }
}

/// A configured table as the commit records it.
#[derive(Debug, Clone)]
pub struct CommitTable {
    /// Lake folder.
    pub folder: String,
    /// `schema.table`
    pub qualified: String,
}

/// Files encoded into the temp folder (or found in place from an earlier attempt).
pub struct Encoded {
    intent: FlushIntent,
    flushed: Flushed,
    /// The intent was already durable (an earlier run wrote it).
    resumed: bool,
    started: Instant,
}

/// The intent is durable: the names are fixed.
pub struct Intended(Encoded);

/// The files are in the table folders.
pub struct PublishedFlush(Encoded);

/// Watermarks written and the intent removed.
pub struct Committed {
    /// The flush's intent (its cut and names).
    pub intent: FlushIntent,
    /// What it wrote.
    pub flushed: Flushed,
}

impl Encoded {
    /// The encoder's output for `intent`; `resumed` when the intent is already durable.
    pub fn new(intent: FlushIntent, flushed: Flushed, resumed: bool, started: Instant) -> Self {
        Self {
            intent,
            flushed,
            resumed,
            started,
        }
    }

    /// Makes the names durable, so any later crash repeats this flush exactly.
    ///
    /// The spool (and its mirror) must hold every change before the cut first: the
    /// next start re-encodes from it.
    pub async fn intend(self, checkpoints: &Checkpoints) -> Result<Intended, CommitError> {
        if !self.resumed && !self.flushed.files.is_empty() {
            checkpoints.write_flush_intent(&self.intent).await?;
        }
        Ok(Intended(self))
    }
}

impl Intended {
    /// Moves the encoded files into place; files an earlier attempt published stay.
    pub async fn publish(mut self, lake: &Lake) -> Result<PublishedFlush, CommitError> {
        publish_deferred(lake, &mut self.0.flushed.files).await?;
        failpoint::hit(failpoint::AFTER_FLUSH_FILES);
        Ok(PublishedFlush(self.0))
    }
}

impl PublishedFlush {
    /// The flush's intent.
    pub fn intent(&self) -> &FlushIntent {
        &self.0.intent
    }

    /// The flush's files, all in place.
    pub fn files(&self) -> &[crate::sink::WrittenFile] {
        &self.0.flushed.files
    }

    /// What the flush wrote.
    pub fn flushed(&self) -> &Flushed {
        &self.0.flushed
    }

    /// Writes each table's watermark, records unplaced changes, removes the intent.
    pub async fn commit(
        self,
        checkpoints: &Checkpoints,
        tables: &[CommitTable],
    ) -> Result<Committed, CommitError> {
        let Encoded {
            intent,
            flushed,
            resumed,
            started,
        } = self.0;
        if flushed.files.is_empty() {
            tracing::info!(cut = %intent.cut, "flush: no rows for the configured tables; watermarks unchanged");
        } else {
            for t in tables {
                let previous = checkpoints.watermark(&t.folder).await?;
                let Some(wm) =
                    changes_watermark(&intent, &flushed, t, checkpoints.slot(), previous.as_ref())
                else {
                    continue;
                };
                record_file_metrics(&t.folder, wm.files, wm.file_sizes);
                record_nulled(&t.folder, &nulled_in(&flushed.files, &t.folder));
                checkpoints
                    .replace_watermark(&t.folder, previous.as_ref(), &wm)
                    .await?;
            }
        }
        checkpoints
            .add_unplaced(intent.cut, &flushed.unplaced.0)
            .await?;
        failpoint::hit(failpoint::AFTER_WATERMARKS);
        if resumed || !flushed.files.is_empty() {
            checkpoints.clear_flush_intent().await?;
        }
        tracing::info!(
            cut = %intent.cut,
            rows = flushed.rows.values().sum::<u64>(),
            files = flushed.files.len(),
            new_files = flushed.files.iter().filter(|f| f.published == Published::Written).count(),
            transactions = flushed.transactions,
            seconds = started.elapsed().as_secs_f64(),
            "flush committed"
        );
        Ok(Committed { intent, flushed })
    }
}

/// The watermark a flush leaves for one table; `None` when the table was already past
/// the cut (its watermark stays) or the flush read no transaction.
pub fn changes_watermark(
    intent: &FlushIntent,
    flushed: &Flushed,
    table: &CommitTable,
    slot: &str,
    previous: Option<&Watermark>,
) -> Option<Watermark> {
    let folder = &table.folder;
    // Past the cut when the flush began (a backfill), or since (this commit, retried
    // after a crash: adding its counts again would count them twice).
    if intent.from.get(folder).is_some_and(|f| *f >= intent.cut)
        || previous.is_some_and(|p| p.lsn >= intent.cut)
    {
        return None;
    }
    let (_, commit_time) = flushed.last_commit?;
    let files = || flushed.files.iter().filter(|f| &f.table == folder);
    Some(Watermark {
        version: 1,
        table: table.qualified.clone(),
        lsn: intent.cut,
        timestamp: seed_timestamp(commit_time),
        commit_time,
        flushed_at: intent.processed_at,
        kind: WatermarkKind::Changes,
        rows: flushed.rows.get(folder).copied().unwrap_or(0),
        files: files().count() as u64,
        slot: slot.to_string(),
        unresolved_values: previous.map_or(0, |p| p.unresolved_values)
            + flushed.unresolved.get(folder).copied().unwrap_or(0),
        nulled_values: {
            let mut n = previous
                .map(|p| p.nulled_values.clone())
                .unwrap_or_default();
            add_nulled(&mut n, &nulled_in(&flushed.files, folder));
            n
        },
        file_sizes: FileSizes::of(files().map(|f| f.bytes)),
        partitions: previous.and_then(|p| p.partitions.clone()),
        resnapshot: flushed
            .resnapshot
            .get(folder)
            .cloned()
            .or(previous.and_then(|p| p.resnapshot.clone())),
        columns: flushed
            .columns
            .get(folder)
            .cloned()
            .or(previous.and_then(|p| p.columns.clone())),
    })
}

/// Values a flush or snapshot of `folder` wrote as NULL, for `/metrics` and the log.
pub fn record_nulled(folder: &str, nulled: &BTreeMap<String, u64>) {
    for (column, n) in nulled {
        metrics::counter!(metric::NULLED_VALUES, "table" => folder.to_string(), "column" => column.clone())
            .increment(*n);
        tracing::warn!(table = folder, column = %column, values = n, "values the column's Parquet type cannot hold were written as NULL (see `slot2lake status`)");
    }
}

/// Files per table and their sizes, for `/metrics` (small files show up here first).
pub fn record_file_metrics(folder: &str, files: u64, sizes: Option<FileSizes>) {
    metrics::gauge!(metric::LAST_FLUSH_FILES, "table" => folder.to_string()).set(files as f64);
    if let Some(s) = sizes {
        metrics::gauge!(metric::LAST_FLUSH_FILE_MIN_BYTES, "table" => folder.to_string())
            .set(s.min_bytes as f64);
        metrics::gauge!(metric::LAST_FLUSH_FILE_MEDIAN_BYTES, "table" => folder.to_string())
            .set(s.median_bytes as f64);
    }
}

impl Classify for CommitError {
    fn action(&self) -> Action {
        use CommitError as E;
        match self {
            E::Checkpoint(e) => e.action(),
            E::Lake(e) => e.action(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{PartitionKey, WrittenFile};

    fn table() -> CommitTable {
        CommitTable {
            folder: "orders".into(),
            qualified: "public.orders".into(),
        }
    }

    fn file(table: &str, bytes: u64) -> WrittenFile {
        WrittenFile {
            table: table.into(),
            partition: PartitionKey::Column(None),
            key: format!("{table}/f{bytes}.parquet"),
            written_key: format!("{table}/f{bytes}.parquet"),
            rows: 1,
            bytes,
            published: Published::Written,
            pending: None,
            schema: None,
            nulled: BTreeMap::from([("amount".into(), bytes / 10)]),
        }
    }

    fn previous(lsn: u64) -> Watermark {
        let t = Utc::now();
        Watermark {
            version: 1,
            table: "public.orders".into(),
            lsn: Lsn(lsn),
            timestamp: seed_timestamp(t),
            commit_time: t,
            flushed_at: t,
            kind: WatermarkKind::Snapshot,
            rows: 9,
            files: 9,
            slot: "s".into(),
            unresolved_values: 2,
            nulled_values: BTreeMap::from([("amount".into(), 5)]),
            file_sizes: None,
            partitions: Some(Vec::new()),
            resnapshot: Some("gained a column".into()),
            columns: Some(vec!["id".into()]),
        }
    }

    #[test]
    fn a_partition_refresh_counts_its_nulled_values_once() {
        let p = |n: &str| crate::checkpoint::PartitionRef {
            oid: 7,
            name: n.into(),
        };
        let mut wm = previous(0x10);
        let seen = Some(vec![p("ev_2025"), p("ev_2026")]);
        let nulled = BTreeMap::from([("amount".to_string(), 3)]);
        assert!(wm.record_refresh(seen.clone(), &nulled));
        assert_eq!(wm.nulled_values, BTreeMap::from([("amount".into(), 8)]));
        assert_eq!(wm.partitions, seen);
        // Retried after its watermark was written: nothing changes.
        assert!(!wm.record_refresh(seen.clone(), &nulled));
        assert_eq!(wm.nulled_values, BTreeMap::from([("amount".into(), 8)]));
        // The next refresh (another partition attached) counts its own.
        let later = Some(vec![p("ev_2025"), p("ev_2026"), p("ev_2027")]);
        assert!(wm.record_refresh(later.clone(), &nulled));
        assert_eq!(wm.nulled_values, BTreeMap::from([("amount".into(), 11)]));
    }

    /// (lsn, files, unresolved values, values nulled in `amount`, resnapshot kept, columns)
    type Expected = (u64, u64, u64, u64, bool, Option<Vec<String>>);

    #[test]
    fn a_flush_watermark_carries_what_the_table_had_and_adds_this_flush() {
        let now = Utc::now();
        struct Case {
            name: &'static str,
            from: u64,
            last_commit: bool,
            previous: Option<Watermark>,
            /// `None`: no watermark.
            want: Option<Expected>,
        }
        let cases = [
            Case {
                name: "first flush of a table",
                from: 0,
                last_commit: true,
                previous: None,
                want: Some((100, 2, 1, 4, false, Some(vec!["id".into(), "note".into()]))),
            },
            Case {
                name: "after a snapshot: partitions, resnapshot and unresolved carried",
                from: 50,
                last_commit: true,
                previous: Some(previous(50)),
                want: Some((100, 2, 3, 9, true, Some(vec!["id".into(), "note".into()]))),
            },
            Case {
                name: "commit retried after its watermark was written: counted once",
                from: 50,
                last_commit: true,
                previous: Some(previous(100)),
                want: None,
            },
            Case {
                name: "table already past the cut (a backfill) keeps its watermark",
                from: 100,
                last_commit: true,
                previous: Some(previous(120)),
                want: None,
            },
            Case {
                name: "no transaction read",
                from: 0,
                last_commit: false,
                previous: None,
                want: None,
            },
        ];
        for c in cases {
            let flushed = Flushed {
                files: vec![file("orders", 10), file("orders", 30), file("other", 5)],
                rows: BTreeMap::from([("orders".into(), 7)]),
                last_commit: c.last_commit.then_some((Lsn(99), now)),
                unresolved: BTreeMap::from([("orders".into(), 1)]),
                columns: BTreeMap::from([("orders".into(), vec!["id".into(), "note".into()])]),
                ..Default::default()
            };
            let intent = FlushIntent {
                version: 1,
                cut: Lsn(100),
                processed_at: now,
                from: BTreeMap::from([("orders".into(), Lsn(c.from))]),
            };
            let had_partitions = c.previous.is_some();
            let got = changes_watermark(&intent, &flushed, &table(), "s", c.previous.as_ref());
            let got = got.map(|w| {
                assert_eq!(w.kind, WatermarkKind::Changes, "{}", c.name);
                assert_eq!(w.rows, 7, "{}", c.name);
                assert_eq!(w.partitions.is_some(), had_partitions, "{}", c.name);
                assert_eq!(
                    w.file_sizes,
                    Some(FileSizes {
                        min_bytes: 10,
                        median_bytes: 30
                    }),
                    "{}",
                    c.name
                );
                (
                    w.lsn.0,
                    w.files,
                    w.unresolved_values,
                    w.nulled_values.get("amount").copied().unwrap_or(0),
                    w.resnapshot.is_some(),
                    w.columns,
                )
            });
            assert_eq!(got, c.want, "{}", c.name);
        }
    }
}
