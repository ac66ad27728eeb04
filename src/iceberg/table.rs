//! Registering published Parquet files in a table's next Iceberg snapshot.
//!
//! ```text
//!  load the table's current metadata (none: the table is created with this commit)
//!    │  a snapshot carrying this commit's id already? → nothing to do (a retry)
//!    ▼
//!  manifest of the new files (written under a fresh name: an earlier attempt's is an
//!  orphan, never reused) → manifest list = the parent's manifests + it
//!    │
//!    ▼  metadata v<N+1> via the catalog; a conflict (another writer moved the table)
//!       starts again from the load
//! ```
//!
//! The files keep slot2lake's names and Hive folders; the table's location is the table
//! folder, its metadata under `metadata/`. They are written without Iceberg field ids:
//! the table property `schema.name-mapping.default` maps their column names to ids, as
//! the spec provides for files written outside Iceberg (every column a name, so renames
//! are added to the mapping rather than rewriting files).

use std::collections::BTreeMap;

use arrow_schema::Schema as ArrowSchema;
use chrono::Utc;

use super::catalog::{CatalogError, Loaded, LocalCatalog};
use super::manifest::{
    self, DataFile, EntryStatus, FileContent, ManifestContent, ManifestContext, ManifestEntry,
    ManifestError,
};
use super::spec::{
    self, IcebergType, PartitionSpec, Schema, Snapshot, SpecError, TableMetadata, LSN_PROPERTY,
};
use crate::lake::LakeError;
use crate::lsn::Lsn;
use crate::retry::{Action, Classify};

/// Snapshot summary property: which flush or snapshot made this commit (a retry finds it).
pub const COMMIT_PROPERTY: &str = "slot2lake.commit";

/// Table property: the LSN of the table's first commit.
pub const FIRST_LSN_PROPERTY: &str = "slot2lake.first-lsn";

/// A commit to an Iceberg table that failed.
#[derive(Debug, thiserror::Error)]
pub enum IcebergError {
    /// Reading or writing the table's metadata.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Writing a manifest or manifest list.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The table's schema cannot take the new files.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Writing a file into the lake.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// Building the current-state table's files.
    #[error(transparent)]
    Current(#[from] super::current::CurrentError),
    /// A data file (or a local temporary file) maintenance reads or writes.
    #[error("{key}: {message}")]
    File {
        /// The file.
        key: String,
        /// What failed.
        message: String,
    },
    /// Another writer kept moving the table.
    #[error("iceberg table {table}: {attempts} commits in a row lost to another writer")]
    Contended {
        /// Table folder.
        table: String,
        /// Attempts made.
        attempts: usize,
    },
}

impl Classify for IcebergError {
    fn action(&self) -> Action {
        match self {
            IcebergError::Catalog(e) => e.action(),
            IcebergError::Lake(e) => e.action(),
            IcebergError::Contended { .. } => Action::Backoff,
            IcebergError::Manifest(_)
            | IcebergError::Spec(_)
            | IcebergError::Current(_)
            | IcebergError::File { .. } => Action::Stop,
        }
    }
}

/// A published Parquet file to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFile {
    /// Its key in the lake.
    pub key: String,
    /// Rows in it.
    pub rows: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its partition: days since 1970-01-01 of the partition column (or of the flush,
    /// for tables partitioned by processing date); `None` for NULL.
    pub day: Option<i32>,
}

/// One commit to one table: the files of a flush or a snapshot.
#[derive(Debug, Clone)]
pub struct Append<'a> {
    /// Table folder (and the table's location below the lake).
    pub folder: &'a str,
    /// The files' Arrow schema.
    pub arrow: &'a ArrowSchema,
    /// The column the table is partitioned by (its `day` transform); `None`: unpartitioned.
    pub partition_column: Option<&'a str>,
    /// The LSN the table is complete up to after this commit.
    pub lsn: Lsn,
    /// Names this commit among all of the table's (a flush's cut and time, a snapshot's name).
    pub commit_id: String,
    /// The data files.
    pub files: Vec<NewFile>,
    /// Position delete files (rows of earlier data files this commit replaces).
    pub deletes: Vec<NewFile>,
    /// The commit replaces every file the table had (a TRUNCATE).
    pub replace: bool,
}

/// What [`append`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The new snapshot's id; `None` when an earlier attempt had committed it.
    pub snapshot_id: Option<i64>,
    /// The table's current metadata file (a key in the lake).
    pub metadata_key: String,
}

/// Commits `append.files` as the table's next snapshot, exactly once per `commit_id`.
pub async fn append(catalog: &LocalCatalog, append: &Append<'_>) -> Result<Appended, IcebergError> {
    for _ in 0..COMMIT_ATTEMPTS {
        let base = catalog.load(append.folder).await?;
        if let Some(done) = done_before(base.as_ref(), &append.commit_id) {
            return Ok(done);
        }
        if let Some(done) = try_commit(catalog, base.as_ref(), append).await? {
            return Ok(done);
        }
    }
    Err(contended(append.folder))
}

/// The answer for a commit an earlier attempt made: the table's snapshots name it.
pub fn done_before(base: Option<&Loaded>, commit_id: &str) -> Option<Appended> {
    base.filter(|b| committed(&b.metadata, commit_id))
        .map(|b| Appended {
            snapshot_id: None,
            metadata_key: b.metadata_key.clone(),
        })
}

/// Commits on top of `base`; `None` when another writer moved the table first (load it
/// again and start over).
pub async fn try_commit(
    catalog: &LocalCatalog,
    base: Option<&Loaded>,
    append: &Append<'_>,
) -> Result<Option<Appended>, IcebergError> {
    let metadata = table_for(catalog, base, append)?;
    let (metadata, snapshot_id) = snapshot(catalog, metadata, base, append).await?;
    Ok(commit_unless_moved(catalog, append.folder, base, &metadata)
        .await?
        .map(|now| Appended {
            snapshot_id: Some(snapshot_id),
            metadata_key: now.metadata_key,
        }))
}

/// Commits `metadata` on top of `base`; `None` when another writer moved the table first.
pub async fn commit_unless_moved(
    catalog: &LocalCatalog,
    folder: &str,
    base: Option<&Loaded>,
    metadata: &TableMetadata,
) -> Result<Option<Loaded>, IcebergError> {
    match catalog.commit(folder, base, metadata).await {
        Ok(now) => Ok(Some(now)),
        Err(CatalogError::Conflict { key }) => {
            tracing::warn!(table = folder, metadata = %key, "iceberg: another writer committed first; retrying from its metadata");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The error after [`COMMIT_ATTEMPTS`] lost races.
pub fn contended(folder: &str) -> IcebergError {
    IcebergError::Contended {
        table: folder.to_string(),
        attempts: COMMIT_ATTEMPTS,
    }
}

/// Attempts of one commit when another writer moves the table meanwhile.
pub const COMMIT_ATTEMPTS: usize = 5;

/// Whether a snapshot of the table carries `commit_id`.
pub fn committed(metadata: &TableMetadata, commit_id: &str) -> bool {
    metadata
        .snapshots
        .iter()
        .any(|s| s.summary.get(COMMIT_PROPERTY).map(String::as_str) == Some(commit_id))
}

/// The table as the commit leaves its schema: created, or with the files' columns.
fn table_for(
    catalog: &LocalCatalog,
    base: Option<&Loaded>,
    append: &Append<'_>,
) -> Result<TableMetadata, IcebergError> {
    let previous = base.map(|b| &b.metadata);
    let (schema, last_column_id) = spec::schema_for(append.arrow, previous)?;
    let mut metadata = match previous {
        Some(m) => m.clone().with_schema(schema, last_column_id),
        None => {
            let spec = match append.partition_column {
                Some(column) => spec::day_spec(&schema, column)?,
                None => PartitionSpec {
                    spec_id: 0,
                    fields: Vec::new(),
                },
            };
            // Files in the folder named before this LSN are not the table's (a Parquet lake
            // switched to Iceberg keeps them): orphan removal leaves them alone.
            let properties =
                BTreeMap::from([(FIRST_LSN_PROPERTY.to_string(), append.lsn.to_string())]);
            TableMetadata::new(&catalog.uri(append.folder), schema, spec, properties)
        }
    };
    let mapping = name_mapping(&metadata);
    metadata
        .properties
        .insert("schema.name-mapping.default".into(), mapping);
    Ok(metadata)
}

/// The name mapping of every schema the table had: a column's names over time map to
/// its id, so files written before a rename still read.
pub fn name_mapping(metadata: &TableMetadata) -> String {
    // Per field id: its names, and its list element's id.
    let mut names: BTreeMap<i32, (Vec<String>, Option<i32>)> = BTreeMap::new();
    for schema in &metadata.schemas {
        for f in &schema.fields {
            let entry = names.entry(f.id).or_default();
            if !entry.0.contains(&f.name) {
                entry.0.push(f.name.clone());
            }
            if let IcebergType::List { element_id, .. } = &f.field_type {
                entry.1 = Some(*element_id);
            }
        }
    }
    let fields: Vec<serde_json::Value> = names
        .into_iter()
        .map(|(id, (names, element))| {
            let mut v = serde_json::json!({ "field-id": id, "names": names });
            if let Some(eid) = element {
                v["fields"] = serde_json::json!([{ "field-id": eid, "names": ["element"] }]);
            }
            v
        })
        .collect();
    serde_json::Value::Array(fields).to_string()
}

/// Writes the manifest and manifest list of the new snapshot; the metadata with it.
async fn snapshot(
    catalog: &LocalCatalog,
    metadata: TableMetadata,
    base: Option<&Loaded>,
    append: &Append<'_>,
) -> Result<(TableMetadata, i64), IcebergError> {
    let draft = Draft::new(&metadata)?;
    let parent = metadata.current_snapshot().cloned();
    // A TRUNCATE leaves the earlier manifests out: their files are no longer the table's.
    let mut manifests = match &parent {
        Some(p) if !append.replace => manifest_list(catalog, p).await?,
        _ => Vec::new(),
    };
    let added = [
        (ManifestContent::Data, FileContent::Data, &append.files),
        (
            ManifestContent::Deletes,
            FileContent::PositionDeletes,
            &append.deletes,
        ),
    ];
    for (manifest_content, file_content, files) in added {
        if files.is_empty() {
            continue;
        }
        let entries: Vec<ManifestEntry> = files
            .iter()
            .map(|f| draft.added(catalog, f, file_content))
            .collect();
        manifests.push(
            draft
                .manifest(catalog, append.folder, manifest_content, &entries)
                .await?,
        );
    }
    let summary = summary(append, parent.as_ref());
    let snapshot_id = draft.snapshot_id;
    let metadata = draft
        .finish(catalog, append.folder, metadata, base, &manifests, summary)
        .await?;
    Ok((metadata, snapshot_id))
}

/// A snapshot being written: its id, sequence number and the stem of its files' names.
pub struct Draft {
    /// The new snapshot's id.
    pub snapshot_id: i64,
    /// Its data sequence number.
    pub sequence_number: i64,
    unique: String,
    ctx: ManifestContext,
    written: std::sync::atomic::AtomicUsize,
}

impl Draft {
    /// The next snapshot of the table `metadata` describes (its current schema and spec).
    pub fn new(metadata: &TableMetadata) -> Result<Self, IcebergError> {
        let snapshot_id = metadata.new_snapshot_id();
        let ctx = manifest_context(metadata.current_schema(), &default_spec(metadata)?)?;
        Ok(Self {
            snapshot_id,
            sequence_number: metadata.next_sequence_number(),
            // Fresh names: an earlier attempt's manifests are orphans, never reused.
            unique: format!("{snapshot_id}-{}", Utc::now().timestamp_micros()),
            ctx,
            written: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The manifest entry of a file this snapshot adds.
    pub fn added(
        &self,
        catalog: &LocalCatalog,
        f: &NewFile,
        content: FileContent,
    ) -> ManifestEntry {
        ManifestEntry {
            status: EntryStatus::Added,
            snapshot_id: Some(self.snapshot_id),
            sequence_number: None,
            file_sequence_number: None,
            file: DataFile {
                content,
                file_path: catalog.uri(&f.key),
                file_size_in_bytes: f.bytes,
                record_count: f.rows,
                partition: f.day,
                equality_ids: Vec::new(),
                referenced_data_file: None,
            },
        }
    }

    /// Writes a manifest of `entries` into the table's metadata folder.
    pub async fn manifest(
        &self,
        catalog: &LocalCatalog,
        folder: &str,
        content: ManifestContent,
        entries: &[ManifestEntry],
    ) -> Result<manifest::ManifestFile, IcebergError> {
        let n = self
            .written
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = format!("{folder}/metadata/{}-m{n}.avro", self.unique);
        let (bytes, listed) = manifest::write_manifest(
            &self.ctx,
            content,
            &catalog.uri(&key),
            self.snapshot_id,
            self.sequence_number,
            entries,
        )?;
        catalog.lake().put(&key, bytes).await?;
        Ok(listed)
    }

    /// Writes the manifest list of `manifests`; `metadata` with the snapshot as current.
    pub async fn finish(
        self,
        catalog: &LocalCatalog,
        folder: &str,
        metadata: TableMetadata,
        base: Option<&Loaded>,
        manifests: &[manifest::ManifestFile],
        summary: BTreeMap<String, String>,
    ) -> Result<TableMetadata, IcebergError> {
        let parent = metadata.current_snapshot().map(|p| p.snapshot_id);
        let list_key = format!("{folder}/metadata/snap-{}.avro", self.unique);
        let list = manifest::write_manifest_list(
            self.snapshot_id,
            parent,
            self.sequence_number,
            manifests,
        )?;
        catalog.lake().put(&list_key, list).await?;
        let snapshot = Snapshot {
            snapshot_id: self.snapshot_id,
            parent_snapshot_id: parent,
            sequence_number: self.sequence_number,
            timestamp_ms: Utc::now().timestamp_millis(),
            manifest_list: catalog.uri(&list_key),
            summary,
            schema_id: Some(metadata.current_schema().schema_id),
        };
        Ok(metadata.with_snapshot(snapshot, previous_file(catalog, base)))
    }
}

/// The metadata-log entry of the version a commit replaces.
pub fn previous_file(catalog: &LocalCatalog, base: Option<&Loaded>) -> Option<(String, i64)> {
    base.map(|b| (catalog.uri(&b.metadata_key), b.metadata.last_updated_ms))
}

/// The manifests a snapshot lists.
pub async fn manifest_list(
    catalog: &LocalCatalog,
    snapshot: &Snapshot,
) -> Result<Vec<manifest::ManifestFile>, IcebergError> {
    let list = catalog
        .lake()
        .get(&catalog.key_of(&snapshot.manifest_list))
        .await?
        .ok_or_else(|| CatalogError::Corrupt {
            key: snapshot.manifest_list.clone(),
            message: "a snapshot's manifest list is missing".into(),
        })?;
    Ok(manifest::read_manifest_list(&list)?)
}

/// The data files of the table's current snapshot, with their data sequence numbers.
pub async fn live_data_files(
    catalog: &LocalCatalog,
    metadata: &TableMetadata,
) -> Result<Vec<(DataFile, i64)>, IcebergError> {
    Ok(live_entries(catalog, metadata)
        .await?
        .into_iter()
        .filter(|e| e.file.content == FileContent::Data)
        .map(|e| {
            let seq = e.sequence_number.unwrap_or_default();
            (e.file, seq)
        })
        .collect())
}

/// The live (added or existing) entries of the current snapshot, data and delete files,
/// their sequence numbers resolved.
pub async fn live_entries(
    catalog: &LocalCatalog,
    metadata: &TableMetadata,
) -> Result<Vec<ManifestEntry>, IcebergError> {
    let Some(current) = metadata.current_snapshot() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for listed in manifest_list(catalog, current).await? {
        for mut e in read_entries(catalog, &listed).await? {
            if e.status != EntryStatus::Deleted {
                e.sequence_number = Some(e.sequence_number.unwrap_or(listed.sequence_number));
                out.push(e);
            }
        }
    }
    Ok(out)
}

/// Every entry of a manifest.
pub async fn read_entries(
    catalog: &LocalCatalog,
    listed: &manifest::ManifestFile,
) -> Result<Vec<ManifestEntry>, IcebergError> {
    let key = catalog.key_of(&listed.manifest_path);
    let bytes = catalog
        .lake()
        .get(&key)
        .await?
        .ok_or_else(|| CatalogError::Corrupt {
            key: key.clone(),
            message: "a manifest a snapshot lists is missing".into(),
        })?;
    Ok(manifest::read_manifest(&bytes, listed)?)
}

fn default_spec(metadata: &TableMetadata) -> Result<PartitionSpec, IcebergError> {
    metadata
        .partition_specs
        .iter()
        .find(|s| s.spec_id == metadata.default_spec_id)
        .cloned()
        .ok_or_else(|| {
            IcebergError::Catalog(CatalogError::Corrupt {
                key: metadata.location.clone(),
                message: format!("no partition spec {}", metadata.default_spec_id),
            })
        })
}

fn manifest_context(
    schema: &Schema,
    spec: &PartitionSpec,
) -> Result<ManifestContext, IcebergError> {
    Ok(ManifestContext {
        schema_json: serde_json::to_string(schema).map_err(SpecError::from)?,
        schema_id: schema.schema_id,
        spec_id: spec.spec_id,
        spec_fields_json: spec.fields_json()?,
        partition_field: spec.fields.first().map(|f| (f.field_id, f.name.clone())),
    })
}

/// The snapshot summary: the spec's counts plus where the table is in the WAL.
fn summary(append: &Append<'_>, parent: Option<&Snapshot>) -> BTreeMap<String, String> {
    let total = |k: &str| -> u64 {
        if append.replace {
            return 0;
        }
        parent
            .and_then(|p| p.summary.get(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let rows: u64 = append.files.iter().map(|f| f.rows).sum();
    let bytes: u64 = append.files.iter().map(|f| f.bytes).sum();
    let deleted: u64 = append.deletes.iter().map(|f| f.rows).sum();
    let delete_bytes: u64 = append.deletes.iter().map(|f| f.bytes).sum();
    let files = append.files.len() as u64;
    let delete_files = append.deletes.len() as u64;
    let operation = if append.replace || delete_files > 0 {
        "overwrite"
    } else {
        "append"
    };
    BTreeMap::from([
        ("operation".into(), operation.into()),
        (LSN_PROPERTY.into(), append.lsn.to_string()),
        (COMMIT_PROPERTY.into(), append.commit_id.clone()),
        ("added-data-files".into(), files.to_string()),
        ("added-records".into(), rows.to_string()),
        (
            "added-files-size".into(),
            (bytes + delete_bytes).to_string(),
        ),
        ("added-delete-files".into(), delete_files.to_string()),
        ("added-position-deletes".into(), deleted.to_string()),
        (
            "total-data-files".into(),
            (total("total-data-files") + files).to_string(),
        ),
        (
            "total-records".into(),
            (total("total-records") + rows).to_string(),
        ),
        (
            "total-files-size".into(),
            (total("total-files-size") + bytes + delete_bytes).to_string(),
        ),
        (
            "total-delete-files".into(),
            (total("total-delete-files") + delete_files).to_string(),
        ),
        (
            "total-position-deletes".into(),
            (total("total-position-deletes") + deleted).to_string(),
        ),
        ("total-equality-deletes".into(), "0".into()),
    ])
}

#[cfg(test)]
mod tests {
    use arrow_schema::{DataType, Field};

    use super::*;
    use crate::config::OutputConfig;
    use crate::lake::Lake;

    fn add<'a>(arrow: &'a ArrowSchema, i: u64) -> Append<'a> {
        Append {
            folder: "t",
            arrow,
            partition_column: Some("d"),
            lsn: Lsn(i),
            commit_id: format!("flush {i}"),
            files: vec![NewFile {
                key: format!("t/f{i}.parquet"),
                rows: 1,
                bytes: 10,
                day: Some(i as i32),
            }],
            deletes: Vec::new(),
            replace: false,
        }
    }

    /// A commit that lost the race to another writer is made again on top of the
    /// winner's: both snapshots, both files, each commit once.
    #[tokio::test]
    async fn a_commit_that_lost_a_race_is_made_on_top_of_the_winner() {
        let dir = tempfile::tempdir().expect("tmp");
        let text = format!("url = \"file://{}\"", dir.path().display());
        let output: OutputConfig = toml::from_str(&text).expect("output");
        let cat = LocalCatalog::new(Lake::open(&output).await.expect("lake"));
        let arrow = ArrowSchema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("d", DataType::Date32, true),
        ]);
        append(&cat, &add(&arrow, 1)).await.expect("first");
        let stale = cat.load("t").await.expect("load");
        append(&cat, &add(&arrow, 2)).await.expect("the winner");
        let lost = try_commit(&cat, stale.as_ref(), &add(&arrow, 3))
            .await
            .expect("no error");
        assert_eq!(lost, None, "a commit on a stale base must lose");
        let done = append(&cat, &add(&arrow, 3)).await.expect("retried");
        assert!(done.snapshot_id.is_some());
        let again = append(&cat, &add(&arrow, 3)).await.expect("repeated");
        assert_eq!(again.snapshot_id, None, "a commit id is committed once");
        let now = cat.load("t").await.expect("load").expect("table");
        assert_eq!(now.metadata.snapshots.len(), 3);
        let mut files: Vec<String> = live_data_files(&cat, &now.metadata)
            .await
            .expect("files")
            .into_iter()
            .map(|(f, _)| cat.key_of(&f.file_path))
            .collect();
        files.sort();
        assert_eq!(files, ["t/f1.parquet", "t/f2.parquet", "t/f3.parquet"]);
    }
}
