//! The table's metadata files in the lake itself, without a catalog server.
//!
//! The Hadoop layout: `<table>/metadata/v<N>.metadata.json`, and
//! `<table>/metadata/version-hint.text` holding N, which is what DuckDB's
//! `iceberg_scan('<table>')` and pyiceberg's `StaticTable.from_metadata('<table>')` read.
//! A commit is the create-only write of v<N+1> (atomic on a local filesystem and with
//! S3's conditional put), so of two writers on the same base exactly one wins; the hint
//! is written after it and may lag, so loading looks past it.

use bytes::Bytes;

use super::spec::{SpecError, TableMetadata};
use crate::config::OutputUrl;
use crate::lake::{Lake, LakeError};
use crate::retry::{Action, Classify};

/// Name of the file holding the current version number.
pub const VERSION_HINT: &str = "version-hint.text";

/// Reading or committing a table's metadata failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The lake's store failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// The metadata could not be built or written.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Another writer committed this version first: reload and try again.
    #[error("iceberg metadata {key} already exists: another writer committed first")]
    Conflict {
        /// The metadata file that exists.
        key: String,
    },
    /// A metadata file that cannot be read as table metadata.
    #[error("iceberg metadata {key}: {message}")]
    Corrupt {
        /// The file.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl Classify for CatalogError {
    fn action(&self) -> Action {
        match self {
            CatalogError::Conflict { .. } => Action::Backoff,
            CatalogError::Lake(e) => e.action(),
            CatalogError::Spec(_) | CatalogError::Corrupt { .. } => Action::Stop,
        }
    }
}

/// A table's current metadata and where it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// N of `v<N>.metadata.json`.
    pub version: u64,
    /// The file's key in the lake.
    pub metadata_key: String,
    /// Its content.
    pub metadata: TableMetadata,
}

/// The tables' metadata in a lake (any store: `file://` or `s3://`).
#[derive(Debug, Clone)]
pub struct LocalCatalog {
    lake: Lake,
    /// What lake keys are appended to for their absolute URI.
    base: String,
}

impl LocalCatalog {
    /// The catalog of the tables in `lake`.
    pub fn new(lake: Lake) -> Self {
        let base = base_uri(lake.url(), lake.local_root());
        Self { lake, base }
    }

    /// The lake.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// Absolute URI of a lake key, as Iceberg metadata names files: a plain absolute path
    /// in a local lake (DuckDB and pyiceberg read it, and it needs no percent-encoding),
    /// `s3://bucket/prefix/key` in S3.
    pub fn uri(&self, key: &str) -> String {
        let key = key.trim_start_matches('/');
        if self.base.ends_with('/') {
            format!("{}{key}", self.base)
        } else {
            format!("{}/{key}", self.base)
        }
    }

    /// The lake key of a URI from [`uri`](Self::uri) (a `file://` URI of the local lake
    /// too); a URI outside the lake is returned as it is, and reading it finds nothing.
    pub fn key_of(&self, uri: &str) -> String {
        let path = uri
            .strip_prefix("file://")
            .filter(|_| !self.base.starts_with("s3://"))
            .unwrap_or(uri);
        let base = self.base.trim_end_matches('/');
        match path.strip_prefix(base) {
            Some(rest) if rest.starts_with('/') => rest.trim_start_matches('/').to_string(),
            _ => uri.to_string(),
        }
    }

    /// Key of a table's metadata file of version `version`.
    pub fn metadata_key(table_key: &str, version: u64) -> String {
        format!("{}/v{version}.metadata.json", metadata_dir(table_key))
    }

    /// Whether the table exists, without reading its metadata: its version hint or its
    /// first metadata file is there (a HEAD each, at most).
    pub async fn exists(&self, table_key: &str) -> Result<bool, CatalogError> {
        let dir = metadata_dir(table_key);
        Ok(self.lake.exists(&format!("{dir}/{VERSION_HINT}")).await?
            || self.lake.exists(&Self::metadata_key(table_key, 1)).await?)
    }

    /// The table's current metadata; `None` when it has none yet.
    ///
    /// The newest version is the hint's or, past it, the last of the consecutive files
    /// that follow (a writer may have stopped between its commit and the hint); without
    /// a usable hint, the highest version listed.
    pub async fn load(&self, table_key: &str) -> Result<Option<Loaded>, CatalogError> {
        let dir = metadata_dir(table_key);
        let hinted = match self.lake.get(&format!("{dir}/{VERSION_HINT}")).await? {
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok()),
            None => None,
        };
        let start = match hinted {
            Some(n) if self.lake.exists(&Self::metadata_key(table_key, n)).await? => Some(n),
            _ => self.listed_version(&dir).await?,
        };
        let Some(mut version) = start else {
            return Ok(None);
        };
        while self
            .lake
            .exists(&Self::metadata_key(table_key, version + 1))
            .await?
        {
            version += 1;
        }
        let metadata_key = Self::metadata_key(table_key, version);
        // Metadata files are never deleted by a writer, so the file just seen is there.
        let bytes = self
            .lake
            .get(&metadata_key)
            .await?
            .ok_or_else(|| CatalogError::Corrupt {
                key: metadata_key.clone(),
                message: "listed but cannot be read".into(),
            })?;
        let metadata = TableMetadata::from_json(&bytes).map_err(|e| CatalogError::Corrupt {
            key: metadata_key.clone(),
            message: e.to_string(),
        })?;
        Ok(Some(Loaded {
            version,
            metadata_key,
            metadata,
        }))
    }

    /// The highest N of the `v<N>.metadata.json` files in `dir`.
    async fn listed_version(&self, dir: &str) -> Result<Option<u64>, CatalogError> {
        let prefix = format!("{dir}/");
        let listed = self.lake.list(dir).await?;
        Ok(listed
            .iter()
            .filter_map(|o| metadata_version(o.location.as_ref().strip_prefix(&prefix)?))
            .max())
    }

    /// Commits `new` as the version after `base` (version 1 for a new table).
    ///
    /// [`CatalogError::Conflict`] when that version exists: another writer moved the
    /// table since `base` was loaded, and the commit is to be rebuilt on a fresh load.
    pub async fn commit(
        &self,
        table_key: &str,
        base: Option<&Loaded>,
        new: &TableMetadata,
    ) -> Result<Loaded, CatalogError> {
        let version = base.map_or(1, |b| b.version + 1);
        let metadata_key = Self::metadata_key(table_key, version);
        let bytes = Bytes::from(new.to_json()?);
        if !self.lake.create(&metadata_key, bytes).await? {
            return Err(CatalogError::Conflict { key: metadata_key });
        }
        // The commit is done; a stale hint only delays readers that trust it (load
        // looks past it), so its failure must not make the caller commit again.
        let hint_key = format!("{}/{VERSION_HINT}", metadata_dir(table_key));
        if let Err(e) = self
            .lake
            .put(&hint_key, Bytes::from(version.to_string()))
            .await
        {
            tracing::warn!(key = %hint_key, version, error = %e, "iceberg: committed, but the version hint was not updated");
        }
        Ok(Loaded {
            version,
            metadata_key,
            metadata: new.clone(),
        })
    }
}

/// The URI lake keys are relative to: the local lake's absolute folder, or the S3 URL
/// without a trailing slash.
fn base_uri(url: &str, local_root: Option<&std::path::Path>) -> String {
    let base = match local_root {
        Some(root) => root.display().to_string(),
        None => match OutputUrl::parse(url) {
            Ok(OutputUrl::S3 { bucket, prefix, .. }) if prefix.is_empty() => {
                format!("s3://{bucket}")
            }
            Ok(OutputUrl::S3 { bucket, prefix, .. }) => format!("s3://{bucket}/{prefix}"),
            _ => url.to_string(),
        },
    };
    match base.trim_end_matches('/') {
        "" => "/".to_string(),
        b => b.to_string(),
    }
}

/// N of a metadata file named `v<N>.metadata.json` (the names this layout writes).
pub fn metadata_version(name: &str) -> Option<u64> {
    name.strip_prefix('v')?
        .strip_suffix(".metadata.json")?
        .parse()
        .ok()
}

fn metadata_dir(table_key: &str) -> String {
    format!("{}/metadata", table_key.trim_matches('/'))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use arrow_schema::{DataType, Field, Schema as ArrowSchema, TimeUnit};

    use super::*;
    use crate::config::OutputConfig;
    use crate::iceberg::spec::{self, Snapshot};

    async fn catalog(root: &Path) -> LocalCatalog {
        let text = format!("url = \"file://{}\"", root.display());
        let output: OutputConfig = toml::from_str(&text).expect("output");
        LocalCatalog::new(Lake::open(&output).await.expect("lake"))
    }

    fn metadata(location: &str) -> TableMetadata {
        let arrow = ArrowSchema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]);
        let (schema, _) = spec::schema_for(&arrow, None).expect("schema");
        let part = spec::day_spec(&schema, "ts").expect("spec");
        TableMetadata::new(location, schema, part, BTreeMap::new())
    }

    fn with_snapshot(m: TableMetadata, lsn: &str) -> TableMetadata {
        let s = Snapshot {
            snapshot_id: m.new_snapshot_id(),
            parent_snapshot_id: m.current_snapshot_id,
            sequence_number: m.next_sequence_number(),
            timestamp_ms: 1,
            manifest_list: "x".into(),
            summary: BTreeMap::from([
                ("operation".into(), "append".into()),
                (spec::LSN_PROPERTY.into(), lsn.into()),
            ]),
            schema_id: Some(m.current_schema_id),
        };
        m.with_snapshot(s, None)
    }

    #[tokio::test]
    async fn commits_versions_and_detects_conflicts() {
        let dir = tempfile::tempdir().expect("tmp");
        let cat = catalog(dir.path()).await;
        assert!(cat.load("orders").await.expect("load").is_none());

        let m1 = metadata(&cat.uri("orders"));
        let v1 = cat.commit("orders", None, &m1).await.expect("v1");
        assert_eq!(
            (v1.version, v1.metadata_key.as_str()),
            (1, "orders/metadata/v1.metadata.json")
        );
        let hint = dir.path().join("orders/metadata/version-hint.text");
        assert_eq!(std::fs::read_to_string(&hint).expect("hint"), "1");
        let loaded = cat.load("orders").await.expect("load").expect("v1");
        assert_eq!(loaded, v1);

        let m2 = with_snapshot(loaded.metadata.clone(), "0/10");
        let v2 = cat.commit("orders", Some(&loaded), &m2).await.expect("v2");
        assert_eq!(v2.version, 2);
        // A writer still on v1 loses.
        let m2b = with_snapshot(loaded.metadata.clone(), "0/20");
        match cat.commit("orders", Some(&loaded), &m2b).await {
            Err(e @ CatalogError::Conflict { .. }) => assert_eq!(e.action(), Action::Backoff),
            other => panic!("{other:?}"),
        }
        // A second table creating at the same time loses too.
        assert!(matches!(
            cat.commit("orders", None, &m1).await,
            Err(CatalogError::Conflict { .. })
        ));
        let now = cat.load("orders").await.expect("load").expect("v2");
        assert_eq!(now.version, 2);
        assert_eq!(
            now.metadata.current_snapshot().and_then(spec::lsn_of),
            Some(0x10)
        );
    }

    #[tokio::test]
    async fn exists_by_its_hint_or_first_version() {
        let dir = tempfile::tempdir().expect("tmp");
        let cat = catalog(dir.path()).await;
        assert!(!cat.exists("orders").await.expect("exists"));
        let m1 = metadata(&cat.uri("orders"));
        cat.commit("orders", None, &m1).await.expect("v1");
        assert!(cat.exists("orders").await.expect("exists"));
        std::fs::remove_file(dir.path().join("orders/metadata/version-hint.text")).expect("rm");
        assert!(cat.exists("orders").await.expect("exists"));
        assert!(!cat.exists("customers").await.expect("exists"));
    }

    #[tokio::test]
    async fn looks_past_a_lagging_or_missing_hint() {
        let dir = tempfile::tempdir().expect("tmp");
        let cat = catalog(dir.path()).await;
        let v1 = cat
            .commit("t", None, &metadata(&cat.uri("t")))
            .await
            .expect("v1");
        let v2 = cat
            .commit("t", Some(&v1), &with_snapshot(v1.metadata.clone(), "0/1"))
            .await
            .expect("v2");
        let v3 = cat
            .commit("t", Some(&v2), &with_snapshot(v2.metadata.clone(), "0/2"))
            .await
            .expect("v3");
        let hint = dir.path().join("t/metadata/version-hint.text");

        // Crashed between the commit and the hint.
        std::fs::write(&hint, "1").expect("hint");
        assert_eq!(cat.load("t").await.expect("load"), Some(v3.clone()));
        // Written by another tool with a newline.
        std::fs::write(&hint, "2\n").expect("hint");
        assert_eq!(cat.load("t").await.expect("load"), Some(v3.clone()));
        // No hint, an unreadable one, or one ahead of the files: the listing decides.
        std::fs::remove_file(&hint).expect("rm");
        assert_eq!(cat.load("t").await.expect("load"), Some(v3.clone()));
        for bad in ["garbage", "9"] {
            std::fs::write(&hint, bad).expect("hint");
            assert_eq!(
                cat.load("t").await.expect("load"),
                Some(v3.clone()),
                "{bad}"
            );
        }
        // Files that are not versions are ignored by the listing.
        std::fs::remove_file(&hint).expect("rm");
        std::fs::write(dir.path().join("t/metadata/snap-1.avro"), "x").expect("file");
        std::fs::write(dir.path().join("t/metadata/v10.metadata.json.tmp"), "x").expect("file");
        assert_eq!(
            cat.load("t").await.expect("load").map(|l| l.version),
            Some(3)
        );
    }

    #[tokio::test]
    async fn unreadable_metadata_is_corrupt() {
        let dir = tempfile::tempdir().expect("tmp");
        let cat = catalog(dir.path()).await;
        std::fs::create_dir_all(dir.path().join("t/metadata")).expect("dir");
        std::fs::write(dir.path().join("t/metadata/v1.metadata.json"), "{").expect("file");
        match cat.load("t").await {
            Err(e @ CatalogError::Corrupt { .. }) => assert_eq!(e.action(), Action::Stop),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn uris_and_keys() {
        let dir = tempfile::tempdir().expect("tmp");
        let cat = catalog(dir.path()).await;
        let root = dir.path().display().to_string();
        assert_eq!(
            cat.uri("t/metadata/x.avro"),
            format!("{root}/t/metadata/x.avro")
        );
        assert_eq!(cat.key_of(&cat.uri("t/a b.parquet")), "t/a b.parquet");
        assert_eq!(cat.key_of(&format!("file://{root}/t/x")), "t/x");
        assert_eq!(cat.key_of("s3://elsewhere/x"), "s3://elsewhere/x");

        for (url, want) in [
            ("s3://bucket/some/prefix/", "s3://bucket/some/prefix/t/x"),
            ("s3://bucket", "s3://bucket/t/x"),
        ] {
            let cat = LocalCatalog {
                lake: cat.lake.clone(),
                base: base_uri(url, None),
            };
            assert_eq!(cat.uri("t/x"), want);
            assert_eq!(cat.key_of(want), "t/x");
            assert_eq!(
                cat.key_of(&format!("file://{root}/t/x")),
                format!("file://{root}/t/x")
            );
        }
    }
}
