//! Rows of one table → an Arrow [`RecordBatch`] with the metadata columns filled in.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch, TimestampMicrosecondArray};

use super::schema::TableSchema;
use super::value::{ColumnBuilder, Datum, ValueError};

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeType {
    /// A row inserted.
    Insert,
    /// A row's new version.
    Update,
    /// A row deleted; only the replica identity columns are set unless REPLICA IDENTITY FULL.
    Delete,
    /// A row as of the first snapshot.
    Snapshot,
    /// The table was truncated; every source column is NULL.
    Truncate,
}

impl ChangeType {
    /// The value stored in `change_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Insert => "INSERT",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
            Self::Snapshot => "SNAPSHOT",
            Self::Truncate => "TRUNCATE",
        }
    }
}

/// The metadata of one row.
#[derive(Debug, Clone, Copy)]
pub struct RowMeta {
    /// What happened.
    pub change_type: ChangeType,
    /// Commit LSN (snapshot rows: the consistent point).
    pub lsn: i64,
    /// Position within the transaction, from 1; snapshot rows have 0.
    pub seq: i64,
    /// Commit time, microseconds since the Unix epoch (UTC).
    pub commit_us: i64,
}

/// A value that could not be decoded, with the table and column it belongs to.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A malformed value.
    #[error("table {table}, column {column}: {source}")]
    Value {
        /// `schema.table`
        table: String,
        /// Column name.
        column: String,
        /// What was wrong.
        #[source]
        source: ValueError,
    },
    /// A row with a different number of columns than the table.
    #[error("table {table}: row has {got} columns, table has {expected}")]
    Arity {
        /// `schema.table`
        table: String,
        /// Columns in the table schema.
        expected: usize,
        /// Columns in the row.
        got: usize,
    },
}

/// Warnings logged once per table, column and reason, so a bad column does not flood the log.
#[derive(Debug, Default)]
pub struct Warnings {
    seen: HashSet<(String, String, String)>,
}

impl Warnings {
    /// Logs `message` for a column the first time it happens.
    pub fn once(&mut self, table: &str, column: &str, message: &str) {
        if self
            .seen
            .insert((table.to_string(), column.to_string(), message.to_string()))
        {
            tracing::warn!(table, column, "{message}");
        }
    }
}

/// Builders for one table's rows, plus the metadata columns.
pub struct RowBatch {
    schema: Arc<TableSchema>,
    columns: Vec<ColumnBuilder>,
    change_type: StringBuilder,
    change_lsn: Int64Builder,
    change_seq: Int64Builder,
    commit_ts: TimestampMicrosecondBuilder,
    unchanged: ListBuilder<StringBuilder>,
    rows: usize,
    bytes: usize,
    nulled: BTreeMap<String, u64>,
}

impl RowBatch {
    /// An empty batch for `schema`.
    pub fn new(schema: Arc<TableSchema>, capacity: usize) -> Self {
        let columns = schema
            .columns
            .iter()
            .map(|c| ColumnBuilder::new(c.kind, capacity))
            .collect();
        Self {
            schema,
            columns,
            change_type: StringBuilder::with_capacity(capacity, capacity * 8),
            change_lsn: Int64Builder::with_capacity(capacity),
            change_seq: Int64Builder::with_capacity(capacity),
            commit_ts: TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            unchanged: ListBuilder::new(StringBuilder::new()).with_field(Arc::new(
                arrow_schema::Field::new("element", arrow_schema::DataType::Utf8, true),
            )),
            rows: 0,
            bytes: 0,
            nulled: BTreeMap::new(),
        }
    }

    /// The table these rows belong to.
    pub fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }

    /// Rows appended since the last [`finish`](Self::finish).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Wire bytes of the values appended since the last finish (a deterministic size measure).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Values stored as NULL because their column's Parquet type cannot hold them, per
    /// column, since the last call.
    pub fn take_nulled(&mut self) -> BTreeMap<String, u64> {
        std::mem::take(&mut self.nulled)
    }

    /// Appends one row; `datums` yields one value per source column, in table order.
    ///
    /// A value the Parquet type cannot hold is stored as NULL with a one-time warning;
    /// a malformed value is an error, after which the batch must be discarded. A value
    /// the change did not carry ([`Datum::Unchanged`]) is stored as NULL and its column
    /// named in `unchanged_columns`, so readers take the row's previous value instead.
    pub fn append<'a>(
        &mut self,
        datums: impl ExactSizeIterator<Item = Datum<'a>>,
        meta: &RowMeta,
        warnings: &mut Warnings,
    ) -> Result<(), DecodeError> {
        if datums.len() != self.columns.len() {
            return Err(DecodeError::Arity {
                table: self.schema.qualified_name(),
                expected: self.columns.len(),
                got: datums.len(),
            });
        }
        let mut unchanged = false;
        for ((builder, spec), datum) in self
            .columns
            .iter_mut()
            .zip(&self.schema.columns)
            .zip(datums)
        {
            self.bytes += datum.len();
            if matches!(datum, Datum::Unchanged) {
                self.unchanged.values().append_value(&spec.name);
                unchanged = true;
            }
            match builder.append(spec.kind, datum) {
                Ok(()) => {}
                Err(ValueError::Unrepresentable(what)) => {
                    builder.append_null();
                    *self.nulled.entry(spec.name.clone()).or_default() += 1;
                    warnings.once(
                        &self.schema.qualified_name(),
                        &spec.name,
                        &format!("{what} cannot be stored in Parquet; written as NULL"),
                    );
                }
                Err(source) => {
                    return Err(DecodeError::Value {
                        table: self.schema.qualified_name(),
                        column: spec.name.clone(),
                        source,
                    })
                }
            }
        }
        self.unchanged.append(unchanged);
        self.append_meta(meta);
        Ok(())
    }

    /// Appends a row whose source columns are all NULL (a TRUNCATE marker).
    pub fn append_all_null(&mut self, meta: &RowMeta) {
        for b in &mut self.columns {
            b.append_null();
        }
        self.unchanged.append(false);
        self.append_meta(meta);
    }

    fn append_meta(&mut self, meta: &RowMeta) {
        self.change_type.append_value(meta.change_type.as_str());
        self.change_lsn.append_value(meta.lsn);
        self.change_seq.append_value(meta.seq);
        self.commit_ts.append_value(meta.commit_us);
        self.rows += 1;
        // Metadata columns: roughly 40 bytes a row once encoded.
        self.bytes += 40;
    }

    /// Turns the rows appended so far into a batch; `processed_at_us` fills `etl_processed_at`.
    pub fn finish(&mut self, processed_at_us: i64) -> RecordBatch {
        let rows = self.rows;
        let mut arrays: Vec<ArrayRef> = self.columns.iter_mut().map(|b| b.finish()).collect();
        arrays.push(Arc::new(self.change_type.finish()));
        arrays.push(Arc::new(self.change_lsn.finish()));
        arrays.push(Arc::new(self.change_seq.finish()));
        arrays.push(Arc::new(self.commit_ts.finish()));
        arrays.push(Arc::new(
            TimestampMicrosecondArray::from(vec![processed_at_us; rows]).with_timezone("UTC"),
        ));
        arrays.push(Arc::new(self.unchanged.finish()));
        self.rows = 0;
        self.bytes = 0;
        // The builders were made from this schema's own field types: a mismatch is a bug.
        RecordBatch::try_new(self.schema.arrow.clone(), arrays)
            .expect("builders match the table schema")
    }
}
