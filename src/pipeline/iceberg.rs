//! The Iceberg commit of a flush or a snapshot (`output.format = "iceberg"`): after its
//! files are published, before its watermarks, so a crash in between commits again on
//! the next start, and the commit id makes that a no-op when the first got through.

use super::*;
use crate::catalog::rest::RestCatalog;
use crate::config::Catalog;
use crate::config::TableFormat;
use crate::decode::schema::ETL_PROCESSED_AT;
use crate::decode::TableSchema;
use crate::iceberg::catalog::LocalCatalog;
use crate::iceberg::current;
use crate::iceberg::table::{self as iceberg_table, Append, NewFile};

/// Current-state files close a row group at this size, so encoding one holds no more.
const CURRENT_ROW_GROUP_BYTES: usize = 64 * 1024 * 1024;

/// A published file, as the Iceberg commit needs it.
pub(super) struct Registered {
    /// Table folder.
    pub table: String,
    /// The file.
    pub file: NewFile,
    /// Its columns, when the writer recorded them.
    pub schema: Option<Arc<TableSchema>>,
}

impl Registered {
    /// A file a flush published; its size looked up when an earlier attempt wrote it.
    pub(super) async fn of_flush(lake: &Lake, f: &WrittenFile) -> Result<Self, RunError> {
        let bytes = match f.bytes {
            0 => lake.size(&f.key).await?,
            n => n,
        };
        Ok(Self {
            table: f.table.clone(),
            file: NewFile {
                key: f.key.clone(),
                rows: f.rows,
                bytes,
                day: f.partition.epoch_day(),
            },
            schema: f.schema.clone(),
        })
    }
}

impl Pipeline {
    /// Whether `folder`'s changelog Iceberg table exists; `false` for a table the lake
    /// holds as Parquet only (a lake written before `output.format = "iceberg"`) or not
    /// at all.
    pub(super) async fn has_iceberg_table(&self, folder: &str) -> Result<bool, RunError> {
        Ok(LocalCatalog::new(self.lake.clone())
            .exists(folder)
            .await
            .map_err(iceberg_table::IcebergError::from)?)
    }

    /// Whether the lake's tables are Iceberg tables.
    pub(super) fn iceberg(&self) -> bool {
        self.config.output.format == TableFormat::Iceberg
    }

    /// Commits each table's files as one Iceberg snapshot carrying `lsn` to its changelog,
    /// then folds them into its current-state table (keyed tables); `commit_id` names the
    /// flush or snapshot, so a retry finds each commit done. `columns`: each table's latest
    /// columns, when the files may have been written under several.
    pub(super) async fn commit_iceberg(
        &self,
        commit_id: &str,
        lsn: Lsn,
        files: Vec<Registered>,
        columns: &BTreeMap<String, Vec<String>>,
        kind: CommitKind,
    ) -> Result<(), RunError> {
        let catalog = LocalCatalog::new(self.lake.clone());
        let rest = RestCatalog::configured(&self.config)
            .await
            .map_err(|e| RunError::IcebergCatalog(e.into()))?;
        let writer = parquet::file::properties::WriterProperties::builder()
            .set_compression(crate::sink::writer::codec(self.config.output.compression))
            .set_max_row_group_row_count(Some(self.config.output.row_group_rows))
            .set_max_row_group_bytes(Some(CURRENT_ROW_GROUP_BYTES))
            .build();
        for (folder, info) in &self.tables {
            let mine: Vec<&Registered> = files.iter().filter(|r| &r.table == folder).collect();
            if mine.is_empty() {
                continue;
            }
            // The table's columns as of the last Relation message; files written before
            // a change keep theirs and are read by name. Files are in partition order,
            // not time order, so the latest schema is the one with the latest columns.
            let named: Vec<Arc<TableSchema>> =
                mine.iter().filter_map(|r| r.schema.clone()).collect();
            let schema = columns
                .get(folder)
                .and_then(|cols| {
                    named
                        .iter()
                        .find(|s| s.columns.iter().map(|c| &c.name).eq(cols.iter()))
                })
                .or(named.last())
                .cloned()
                .unwrap_or_else(|| Arc::new(info.schema.clone()));
            let partition_column = match schema.partition_column {
                Some(i) => schema.columns[i].name.clone(),
                None => schema.meta(ETL_PROCESSED_AT),
            };
            if kind == CommitKind::Flush
                && !self.has_iceberg_table(folder).await?
                && self.checkpoints.watermark(folder).await?.is_some()
            {
                // The table's rows so far were written as Parquet, and no Iceberg table
                // lists them: a snapshot starts its tables after this flush
                // (`follow_source_changes`); until then its flushes are Parquet only.
                continue;
            }
            let append = Append {
                folder,
                arrow: &schema.arrow,
                partition_column: Some(&partition_column),
                lsn,
                commit_id: commit_id.to_string(),
                files: mine.iter().map(|r| r.file.clone()).collect(),
                deletes: Vec::new(),
                replace: false,
            };
            let done = iceberg_table::append(&catalog, &append).await?;
            match done.snapshot_id {
                Some(snapshot_id) => {
                    tracing::info!(table = %folder, snapshot_id, files = append.files.len(), lsn = %lsn, "iceberg: committed");
                }
                None => {
                    tracing::info!(table = %folder, commit = commit_id, "iceberg: an earlier attempt committed this; not again");
                }
            }
            failpoint::hit(failpoint::MID_ICEBERG_COMMITS);
            self.point_catalog(
                &catalog,
                rest.as_ref(),
                &crate::iceberg::changelog_glue_name(folder),
                folder,
                &done.metadata_key,
                &schema,
            )
            .await?;
            if !schema.columns.iter().any(|c| c.is_key) {
                // Without a key there is no "current row" to keep: the changelog only.
                continue;
            }
            let changes = current::Changes {
                changelog: folder,
                schema: &schema,
                files: &append.files,
                lsn,
                commit_id,
                writer: &writer,
                memory_limit: self.config.flush.memory_limit.0,
            };
            let applied = match kind {
                CommitKind::Snapshot { refresh: false } => {
                    current::replace_with_snapshot(&catalog, &changes).await?
                }
                CommitKind::Flush | CommitKind::Snapshot { refresh: true } => {
                    current::apply(&catalog, &changes).await?
                }
            };
            if applied.unresolved > 0 {
                tracing::warn!(table = %folder, rows = applied.unresolved, "iceberg: current-state rows whose unsent TOASTed value was found nowhere are NULL there and named in unchanged_columns");
            }
            let current = current::folder_of(folder);
            self.point_catalog(
                &catalog,
                rest.as_ref(),
                folder,
                &current,
                &applied.appended.metadata_key,
                &schema,
            )
            .await?;
        }
        failpoint::hit(failpoint::AFTER_ICEBERG_COMMIT);
        Ok(())
    }
}

/// What an Iceberg commit carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CommitKind {
    /// A flush's changes.
    Flush,
    /// A snapshot's rows: the whole table, or (`refresh`) some partitions on top of it.
    Snapshot {
        /// Only some partitions were copied.
        refresh: bool,
    },
}

impl Pipeline {
    /// Points the configured catalog's table `name` at the Iceberg table in `folder`:
    /// a REST catalog (`rest`, connected when configured) to its state, Glue
    /// (`glue-direct`) at its metadata file;
    /// also after a retried commit (the crash may have come before the catalog heard).
    async fn point_catalog(
        &self,
        catalog: &LocalCatalog,
        rest: Option<&RestCatalog>,
        name: &str,
        folder: &str,
        metadata_key: &str,
        schema: &TableSchema,
    ) -> Result<(), RunError> {
        if let Some(rest) = rest {
            rest.point(name, catalog, folder)
                .await
                .map_err(|e| RunError::IcebergCatalog(e.into()))?;
        }
        if let Catalog::GlueDirect { .. } = self.config.catalog.target {
            catalog::glue::point_iceberg_table(
                &self.config,
                name,
                &catalog.uri(folder),
                &catalog.uri(metadata_key),
                &schema.arrow,
            )
            .await
            .map_err(RunError::IcebergCatalog)?;
        }
        Ok(())
    }
}

/// The commit id of a flush: its cut and time fix its files' names too.
pub(super) fn flush_commit_id(intent: &FlushIntent) -> String {
    format!(
        "flush {} {}",
        intent.cut,
        intent.processed_at.format("%Y-%m-%dT%H:%M:%S%.6fZ")
    )
}

/// The commit id of a snapshot: its state's name and consistent point.
pub(super) fn snapshot_commit_id(state_name: &str, state: &SnapshotState) -> String {
    format!(
        "snapshot {state_name} {} {}",
        state.consistent_point,
        state.processed_at.format("%Y-%m-%dT%H:%M:%S%.6fZ")
    )
}

/// A staged snapshot file as the Iceberg commit needs it.
pub(super) fn of_snapshot(dest: &str, stat: &StagedFile) -> Registered {
    Registered {
        table: dest.split('/').next().unwrap_or_default().to_string(),
        file: NewFile {
            key: dest.to_string(),
            rows: stat.rows,
            bytes: stat.bytes,
            day: stat.day,
        },
        schema: None,
    }
}
