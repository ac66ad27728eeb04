//! Reading an Iceberg table's live rows: its data files, position deletes applied.

use std::collections::HashMap;
use std::fs::File;

use arrow_array::{BooleanArray, Int64Array, RecordBatch, RecordBatchReader, StringArray};
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::catalog::LocalCatalog;
use super::current::conform;
use super::manifest::{FileContent, ManifestEntry};
use super::spec::TableMetadata;
use super::table::{self, IcebergError};

/// The live rows of a table, batch by batch, each file read in turn (a local one in
/// place): memory is a row group, plus the positions the table's deletes remove.
pub struct LiveRows<'a> {
    catalog: &'a LocalCatalog,
    data: Vec<ManifestEntry>,
    deleted: HashMap<String, Vec<i64>>,
    schema: Option<SchemaRef>,
    next_file: usize,
    reading: Option<Reading>,
}

struct Reading {
    reader: ParquetRecordBatchReader,
    key: String,
    uri: String,
    pos: i64,
}

impl<'a> LiveRows<'a> {
    /// The rows of `data` without those at the `deleted` positions (per file URI),
    /// conformed to `schema` (by name; default: the columns of the newest data file).
    pub async fn new(
        catalog: &'a LocalCatalog,
        mut data: Vec<ManifestEntry>,
        deleted: HashMap<String, Vec<i64>>,
        schema: Option<SchemaRef>,
    ) -> Result<Self, IcebergError> {
        data.sort_by_key(|e| e.sequence_number);
        let schema = match schema {
            Some(s) => Some(s),
            None => newest_schema(catalog, &data).await?,
        };
        Ok(Self {
            catalog,
            deleted,
            data,
            schema,
            next_file: 0,
            reading: None,
        })
    }

    /// The table's live rows as of its current snapshot.
    pub async fn of_table(
        catalog: &'a LocalCatalog,
        metadata: &TableMetadata,
        schema: Option<SchemaRef>,
    ) -> Result<Self, IcebergError> {
        let (data, deletes): (Vec<ManifestEntry>, Vec<ManifestEntry>) =
            table::live_entries(catalog, metadata)
                .await?
                .into_iter()
                .partition(|e| e.file.content == FileContent::Data);
        let deleted = deleted_positions(catalog, &deletes).await?;
        Self::new(catalog, data, deleted, schema).await
    }

    /// The next batch of live rows; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<RecordBatch>, IcebergError> {
        let Some(schema) = self.schema.clone() else {
            return Ok(None);
        };
        loop {
            if self.reading.is_none() {
                let Some(e) = self.data.get(self.next_file) else {
                    return Ok(None);
                };
                self.next_file += 1;
                let key = self.catalog.key_of(&e.file.file_path);
                self.reading = Some(Reading {
                    reader: open(self.catalog, &key).await?,
                    key,
                    uri: e.file.file_path.clone(),
                    pos: 0,
                });
            }
            let Some(r) = self.reading.as_mut() else {
                continue;
            };
            let Some(batch) = r.reader.next() else {
                self.reading = None;
                continue;
            };
            let batch = batch.map_err(|e| file_err(&r.key, e))?;
            let first = r.pos;
            r.pos += batch.num_rows() as i64;
            let batch = conform(&batch, &schema).map_err(|e| file_err(&r.key, e))?;
            let gone = self.deleted.get(&r.uri).map(Vec::as_slice);
            let batch = without_positions(&batch, first, gone).map_err(|e| file_err(&r.key, e))?;
            if batch.num_rows() > 0 {
                return Ok(Some(batch));
            }
        }
    }
}

/// Per data file URI, the positions position deletes remove, sorted.
pub async fn deleted_positions(
    catalog: &LocalCatalog,
    deletes: &[ManifestEntry],
) -> Result<HashMap<String, Vec<i64>>, IcebergError> {
    let mut out: HashMap<String, Vec<i64>> = HashMap::new();
    for e in deletes {
        let key = catalog.key_of(&e.file.file_path);
        for batch in open(catalog, &key).await? {
            let batch = batch.map_err(|e| file_err(&key, e))?;
            let (Some(paths), Some(pos)) = (
                batch
                    .column_by_name("file_path")
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>()),
                batch
                    .column_by_name("pos")
                    .and_then(|c| c.as_any().downcast_ref::<Int64Array>()),
            ) else {
                return Err(file_err(
                    &key,
                    "not a position delete file (file_path, pos)",
                ));
            };
            for (p, n) in paths.iter().zip(pos.iter()) {
                if let (Some(p), Some(n)) = (p, n) {
                    out.entry(p.to_string()).or_default().push(n);
                }
            }
        }
    }
    for v in out.values_mut() {
        v.sort_unstable();
    }
    Ok(out)
}

/// `batch` (rows `first..` of its file) without the rows at `gone` positions.
fn without_positions(
    batch: &RecordBatch,
    first: i64,
    gone: Option<&[i64]>,
) -> Result<RecordBatch, String> {
    let Some(gone) = gone else {
        return Ok(batch.clone());
    };
    let end = first + batch.num_rows() as i64;
    let from = gone.partition_point(|p| *p < first);
    let to = gone.partition_point(|p| *p < end);
    if from == to {
        return Ok(batch.clone());
    }
    let mut keep = vec![true; batch.num_rows()];
    for p in &gone[from..to] {
        keep[(p - first) as usize] = false;
    }
    arrow_select::filter::filter_record_batch(batch, &BooleanArray::from(keep))
        .map_err(|e| e.to_string())
}

/// The schema of the table's newest data file (the latest columns).
pub async fn newest_schema(
    catalog: &LocalCatalog,
    data: &[ManifestEntry],
) -> Result<Option<SchemaRef>, IcebergError> {
    let Some(newest) = data.iter().max_by_key(|e| e.sequence_number) else {
        return Ok(None);
    };
    let key = catalog.key_of(&newest.file.file_path);
    Ok(Some(open(catalog, &key).await?.schema()))
}

/// The Arrow schema of the table's newest data file; `None` when it has none.
pub async fn latest_columns(
    catalog: &LocalCatalog,
    metadata: &TableMetadata,
) -> Result<Option<SchemaRef>, IcebergError> {
    let data: Vec<ManifestEntry> = table::live_entries(catalog, metadata)
        .await?
        .into_iter()
        .filter(|e| e.file.content == FileContent::Data)
        .collect();
    newest_schema(catalog, &data).await
}

/// Reads a Parquet file of the lake batch by batch (a local one in place).
pub(super) async fn open(
    catalog: &LocalCatalog,
    key: &str,
) -> Result<ParquetRecordBatchReader, IcebergError> {
    let built = match catalog.lake().local_path(key) {
        Some(path) => {
            let file = File::open(&path).map_err(|e| file_err(key, e))?;
            ParquetRecordBatchReaderBuilder::try_new(file).and_then(|b| b.build())
        }
        None => {
            let bytes = catalog
                .lake()
                .get(key)
                .await?
                .ok_or_else(|| file_err(key, "listed by the table, but missing"))?;
            ParquetRecordBatchReaderBuilder::try_new(bytes).and_then(|b| b.build())
        }
    };
    built.map_err(|e| file_err(key, e))
}

pub(super) fn file_err(key: &str, e: impl std::fmt::Display) -> IcebergError {
    IcebergError::File {
        key: key.to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn position_deletes_drop_rows_by_their_place_in_the_file() {
        let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
            "id",
            arrow_schema::DataType::Int64,
            false,
        )]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![10, 11, 12, 13]))],
        )
        .expect("batch");
        // The batch holds rows 100..104 of its file.
        let gone = [3, 101, 103, 104, 200];
        let kept = without_positions(&batch, 100, Some(&gone)).expect("filter");
        let ids = kept
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("ids");
        assert_eq!(ids.values(), &[10, 12]);
        assert_eq!(
            without_positions(&batch, 0, Some(&gone))
                .expect("row 3")
                .num_rows(),
            3
        );
        assert_eq!(
            without_positions(&batch, 0, None).expect("none").num_rows(),
            4
        );
    }
}
