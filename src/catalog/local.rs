//! The lake as its own catalog: what Athena's `SHOW TABLES`, `DESCRIBE` and
//! `SHOW PARTITIONS` would show, read from the files themselves (any store).

use std::collections::BTreeSet;

use arrow_schema::Schema;
use object_store::path::Path as ObjPath;
use object_store::ObjectStoreExt;
use parquet::file::metadata::ParquetMetaDataReader;

use super::hive_type;
use crate::checkpoint::keys::INTERNAL_DIR;
use crate::lake::{Lake, LakeError};

/// Reading the lake failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalCatalogError {
    /// The store.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// No files for the table.
    #[error("table {0} has no Parquet files in the lake (yet)")]
    NoFiles(String),
    /// A file's footer is unreadable.
    #[error("{key}: not a readable Parquet file ({message})")]
    BadFile {
        /// The object.
        key: String,
        /// Why.
        message: String,
    },
}

fn is_data(key: &str) -> bool {
    key.ends_with(".parquet")
}

/// Table folders holding Parquet files (`SHOW TABLES`).
pub async fn tables(lake: &Lake, metadata_prefix: &str) -> Result<Vec<String>, LocalCatalogError> {
    let mut out = BTreeSet::new();
    for obj in lake.list("").await? {
        let key = obj.location.as_ref();
        let Some((top, _)) = key.split_once('/') else {
            continue;
        };
        if is_data(key)
            && top != INTERNAL_DIR
            && top != metadata_prefix
            && !top.starts_with(['_', '.'])
        {
            out.insert(top.to_string());
        }
    }
    Ok(out.into_iter().collect())
}

/// Partition paths of a table (`SHOW PARTITIONS`), e.g. `year=2025/month=01/day=15`.
pub async fn partitions(lake: &Lake, table: &str) -> Result<Vec<String>, LocalCatalogError> {
    let mut out = BTreeSet::new();
    let prefix = format!("{table}/");
    for obj in lake.list(table).await? {
        let key = obj.location.as_ref();
        if let Some((dir, _)) = key.strip_prefix(&prefix).and_then(|r| r.rsplit_once('/')) {
            if is_data(key) {
                out.insert(dir.to_string());
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// Columns and partition keys of a table (`DESCRIBE`), from its newest file.
pub async fn describe(
    lake: &Lake,
    table: &str,
) -> Result<Vec<(String, String, bool)>, LocalCatalogError> {
    let newest = lake
        .list(table)
        .await?
        .into_iter()
        .filter(|o| is_data(o.location.as_ref()))
        .max_by_key(|o| (o.last_modified, o.location.to_string()))
        .ok_or_else(|| LocalCatalogError::NoFiles(table.to_string()))?;
    let key = newest.location.to_string();
    let bad = |message: String| LocalCatalogError::BadFile {
        key: key.clone(),
        message,
    };
    let size = newest.size;
    if size < 12 {
        return Err(bad("too small".into()));
    }
    let store = lake.store();
    let path = ObjPath::from(key.as_str());
    let tail = store
        .get_range(&path, size - 8..size)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if &tail[4..] != b"PAR1" || len + 8 > size {
        return Err(bad("no Parquet footer".into()));
    }
    let footer = store
        .get_range(&path, size - 8 - len..size - 8)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let meta = ParquetMetaDataReader::decode_metadata(&footer).map_err(|e| bad(e.to_string()))?;
    let fm = meta.file_metadata();
    let schema: Schema =
        parquet::arrow::parquet_to_arrow_schema(fm.schema_descr(), fm.key_value_metadata())
            .map_err(|e| bad(e.to_string()))?;
    let mut out: Vec<(String, String, bool)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), hive_type(f.data_type()), false))
        .collect();
    if let Some(rest) = key.strip_prefix(&format!("{table}/")) {
        for kv in rest.split('/') {
            if let Some((k, _)) = kv.split_once('=') {
                out.push((k.to_string(), "string".to_string(), true));
            }
        }
    }
    Ok(out)
}
