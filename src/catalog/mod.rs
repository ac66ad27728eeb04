//! The catalog step: after a flush commits, tell the query engines about new data.
//!
//! * `local`: a `file://` lake is its own catalog (`slot2lake catalog tables|describe|partitions`);
//! * `glue`: start the Glue crawler (creating it when asked), queueing behind a running crawl;
//! * `glue-direct`: create/update the Glue database, tables and partitions directly, so
//!   Athena sees new data the moment the flush commits, without a crawler;
//! * `iceberg-rest`: an Iceberg REST catalog, kept at the Iceberg tables' commits ([`rest`]).
//!
//! It runs after the watermark is written and the slot acknowledged, so a failure here
//! never loses data and never rolls a watermark back. A failed update is recorded in
//! `_slot2lake/<slot>/catalog-pending.json` and retried by the next flush.

pub mod glue;
pub mod local;
pub mod rest;

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow_schema::DataType;
use serde::{Deserialize, Serialize};

use crate::config::{Catalog, Config};
use crate::decode::schema::{CHANGE_LSN, CHANGE_SEQ, CHANGE_TYPE, COMMIT_TS, UNCHANGED_COLUMNS};
use crate::decode::TableSchema;
use crate::lake::{Lake, LakeError};
use crate::retry::{Action, Classify};
use crate::sink::{PartitionKey, WrittenFile};

/// A catalog update that failed (the data itself is committed).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A Glue call failed.
    #[error("glue: {0}")]
    Glue(String),
    /// The crawl finished with a failure.
    #[error("glue crawler {crawler}: last crawl {status}: {message}")]
    CrawlFailed {
        /// Crawler name.
        crawler: String,
        /// FAILED or CANCELLED.
        status: String,
        /// Glue's message.
        message: String,
    },
    /// An Iceberg REST catalog call failed.
    #[error(transparent)]
    Rest(#[from] rest::RestError),
    /// Reading or writing the pending list.
    #[error(transparent)]
    Lake(#[from] LakeError),
}

/// Whether the catalog can take the lake's tables, for `slot2lake check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Everything needed exists.
    Ready(String),
    /// Something will be created by the first run.
    WillCreate(String),
    /// Something is missing or unreachable; the text says what to do.
    Broken(String),
}

/// Partitions (and a crawl) still owed to the catalog after a failed update.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    /// `(table folder, partition path)`.
    pub partitions: BTreeSet<(String, String)>,
}

/// One table as the catalog sees it.
#[derive(Debug, Clone)]
pub struct CatalogTable {
    /// Folder under the lake (and Glue table name).
    pub folder: String,
    /// Columns.
    pub schema: Arc<TableSchema>,
    /// `processing_*` or `year/month/day` partition keys.
    pub partition_keys: [&'static str; 3],
}

impl CatalogTable {
    /// The catalog's view of a configured table.
    pub fn new(folder: &str, schema: Arc<TableSchema>) -> Self {
        let key = if schema.partition_column.is_some() {
            PartitionKey::Column(None)
        } else {
            PartitionKey::Processing(chrono::NaiveDate::MIN)
        };
        Self {
            folder: folder.to_string(),
            schema,
            partition_keys: key.column_names(),
        }
    }
}

fn pending_key(slot: &str) -> String {
    crate::checkpoint::SlotKeys::new(slot).catalog_pending()
}

/// Updates the configured catalog for the files of a committed flush (plus whatever an
/// earlier failed update left pending).
pub async fn after_flush(
    config: &Config,
    lake: &Lake,
    tables: &[CatalogTable],
    files: &[WrittenFile],
) -> Result<(), CatalogError> {
    let target = &config.catalog.target;
    // Iceberg tables are registered by their commit (`pipeline::iceberg`).
    if target.database().is_none() || config.output.format == crate::config::TableFormat::Iceberg {
        return Ok(());
    }
    let key = pending_key(&config.source.slot);
    let existing = lake.get(&key).await?;
    let had_pending = existing.is_some();
    let mut pending: Pending = existing
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for f in files {
        pending
            .partitions
            .insert((f.table.clone(), f.partition.path()));
    }
    if pending.partitions.is_empty() && !had_pending {
        return Ok(());
    }
    let result = match target {
        Catalog::Glue { .. } => glue::crawl(config).await,
        Catalog::GlueDirect { .. } => glue::update(config, tables, &pending).await,
        Catalog::None | Catalog::Local | Catalog::IcebergRest(_) => Ok(()),
    };
    match &result {
        Ok(()) => {
            if had_pending {
                lake.delete(&key).await?;
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "catalog update failed; the next flush retries it (the data is committed)");
            metrics::counter!(crate::telemetry::metric::ERRORS, "stage" => "catalog").increment(1);
            let json = serde_json::to_vec_pretty(&pending).unwrap_or_default();
            lake.put(&key, bytes::Bytes::from(json)).await?;
        }
    }
    result
}

/// The Hive/Athena type of an Arrow column type.
pub fn hive_type(t: &DataType) -> String {
    match t {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 => "tinyint".into(),
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "int".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, _) => "timestamp".into(),
        DataType::Binary | DataType::LargeBinary => "binary".into(),
        DataType::List(f) | DataType::LargeList(f) => {
            format!("array<{}>", hive_type(f.data_type()))
        }
        _ => "string".into(),
    }
}

/// SQL dialects the latest-state views are printed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// Athena engine 3 / Trino.
    Athena,
    /// DuckDB.
    DuckDb,
}

/// Plain `SELECT`s of a keyed table's current state from its Iceberg table
/// (`output.format = "iceberg"`): Athena's (through Glue, where the table has its own
/// name) and DuckDB's (`iceberg_scan` of `<location>/<folder>_current`).
pub fn current_state_selects(
    table: &CatalogTable,
    database: &str,
    location: &str,
) -> (String, String) {
    let cols: Vec<String> = table
        .schema
        .columns
        .iter()
        .map(|c| format!("\"{}\"", c.name.replace('"', "\"\"")))
        .collect();
    let cols = cols.join(", ");
    let athena = format!("SELECT {cols} FROM \"{database}\".\"{}\";", table.folder);
    let duckdb = format!(
        "SELECT {cols} FROM iceberg_scan('{location}/{}');",
        crate::iceberg::current::folder_of(&table.folder)
    );
    (athena, duckdb)
}

/// The latest-state view of a table (what the source holds), in Athena (Trino) SQL and in
/// DuckDB SQL.
///
/// Rows before the last TRUNCATE are dropped. With a key: the newest version of each key
/// (by `change_lsn`, `change_seq`) unless it is a DELETE, and a value the newest version
/// lists in `unchanged_columns` comes from the newest older version that carried it.
/// Without a key every column identifies the row and duplicates are real: the view is
/// the multiset of row values, each kept as often as it was inserted minus deleted. Every
/// row version has its own `(change_lsn, change_seq)`, so a version seen twice (while
/// `compact` swaps files) counts once.
pub fn latest_state_views(
    table: &CatalogTable,
    database: &str,
    lake_location: &str,
) -> (String, String) {
    let athena = format!(
        "CREATE OR REPLACE VIEW \"{database}\".\"{name}_latest\" AS\n{};",
        latest_state_sql(
            table,
            &format!("\"{database}\".\"{}\"", table.folder),
            Dialect::Athena
        ),
        name = table.folder
    );
    let duckdb = format!(
        "CREATE OR REPLACE VIEW {name}_latest AS\n{};",
        latest_state_sql(
            table,
            &format!(
                "read_parquet('{}/{}/**/*.parquet', hive_partitioning = true, union_by_name = true)",
                lake_location.trim_end_matches('/'),
                table.folder
            ),
            Dialect::DuckDb
        ),
        name = table.folder
    );
    (athena, duckdb)
}

fn latest_state_sql(table: &CatalogTable, source: &str, dialect: Dialect) -> String {
    let q = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
    let schema = &table.schema;
    let m = |c: &str| q(&schema.meta(c));
    let (ct, cl, cs, cts) = (m(CHANGE_TYPE), m(CHANGE_LSN), m(CHANGE_SEQ), m(COMMIT_TS));
    let unchanged = m(UNCHANGED_COLUMNS);
    let cols: Vec<String> = schema.columns.iter().map(|c| q(&c.name)).collect();
    let keys: Vec<String> = schema
        .columns
        .iter()
        .filter(|c| c.is_key)
        .map(|c| q(&c.name))
        .collect();
    let head = format!(
        "WITH t AS (SELECT * FROM {source}),\n\
         cut AS (SELECT coalesce(max({cl}), -1) AS slot2lake_cut_lsn FROM t WHERE {ct} = 'TRUNCATE'),\n\
         cut_seq AS (SELECT coalesce(max({cs}), -1) AS slot2lake_cut_seq FROM t, cut\n\
         \x20           WHERE {ct} = 'TRUNCATE' AND {cl} = slot2lake_cut_lsn),\n\
         live AS (\n\
         \x20 SELECT t.* FROM t, cut, cut_seq\n\
         \x20 WHERE {ct} <> 'TRUNCATE'\n\
         \x20   AND ({cl} > slot2lake_cut_lsn OR ({cl} = slot2lake_cut_lsn AND {cs} > slot2lake_cut_seq))\n\
         ),\n"
    );
    if keys.is_empty() {
        let cols = cols.join(", ");
        let copies = "slot2lake_copies";
        let expand = match dialect {
            Dialect::Athena => format!(
                "SELECT {cols} FROM counted CROSS JOIN UNNEST(sequence(1, {copies})) AS slot2lake_copy(n) WHERE {copies} > 0"
            ),
            Dialect::DuckDb => format!(
                "SELECT {cols} FROM counted, range({copies}) AS slot2lake_copy(n) WHERE {copies} > 0"
            ),
        };
        return format!(
            "{head}counted AS (\n\
             \x20 SELECT {cols}, CAST(sum(CASE WHEN {ct} = 'DELETE' THEN -1 ELSE 1 END) AS BIGINT) AS {copies}\n\
             \x20 FROM (SELECT DISTINCT {cols}, {ct}, {cl}, {cs} FROM live) AS versions GROUP BY {cols}\n\
             )\n{expand}"
        );
    }
    let window = format!(
        "PARTITION BY {} ORDER BY {cl} DESC, {cs} DESC",
        keys.join(", ")
    );
    let listed = |col: &str| match dialect {
        Dialect::Athena => format!("coalesce(contains({unchanged}, '{col}'), false)"),
        Dialect::DuckDb => format!("coalesce(list_contains({unchanged}, '{col}'), false)"),
    };
    let mut prev = String::new();
    let mut out_cols = Vec::new();
    for c in &schema.columns {
        let name = q(&c.name);
        if !c.kind.may_be_toasted() {
            out_cols.push(name);
            continue;
        }
        let lit = c.name.replace('\'', "''");
        let carried = format!(
            "CASE WHEN {ct} <> 'DELETE' AND NOT {} THEN {name} END",
            listed(&lit)
        );
        let prev_name = q(&format!("slot2lake_prev_{}", c.name));
        let first = match dialect {
            Dialect::Athena => format!("first_value({carried}) IGNORE NULLS"),
            Dialect::DuckDb => format!("first_value({carried} IGNORE NULLS)"),
        };
        prev.push_str(&format!(
            ",\n    {first} OVER ({window} ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS {prev_name}"
        ));
        out_cols.push(format!(
            "CASE WHEN {} THEN {prev_name} ELSE {name} END AS {name}",
            listed(&lit)
        ));
    }
    format!(
        "{head}ranked AS (\n\
         \x20 SELECT live.*, row_number() OVER ({window}) AS slot2lake_rank{prev}\n\
         \x20 FROM live\n\
         )\n\
         SELECT {}, {cl}, {cs}, {cts} FROM ranked WHERE slot2lake_rank = 1 AND {ct} <> 'DELETE'",
        out_cols.join(", ")
    )
}

impl Classify for CatalogError {
    fn action(&self) -> Action {
        match self {
            CatalogError::Glue(_) | CatalogError::CrawlFailed { .. } => Action::Backoff,
            CatalogError::Rest(e) => e.action(),
            CatalogError::Lake(e) => e.action(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::schema::oid;
    use crate::decode::ColumnSpec;

    fn table(keyed: bool) -> CatalogTable {
        let cols = vec![
            ColumnSpec::new("id", oid::INT4, -1, keyed),
            ColumnSpec::new("body", oid::TEXT, -1, false),
            ColumnSpec::new("n", oid::INT8, -1, false),
        ];
        let schema = TableSchema::new("public", "docs", cols, None).expect("schema");
        CatalogTable::new("docs", Arc::new(schema))
    }

    #[test]
    fn views_resolve_unchanged_values_and_count_keyless_rows_in_each_dialect() {
        let (athena, duckdb) = latest_state_views(&table(true), "db", "/lake");
        // Only the TOASTable column takes its previous value.
        for (sql, listed) in [
            (
                &athena,
                "coalesce(contains(\"unchanged_columns\", 'body'), false)",
            ),
            (
                &duckdb,
                "coalesce(list_contains(\"unchanged_columns\", 'body'), false)",
            ),
        ] {
            assert!(sql.contains(listed), "{sql}");
            assert!(sql.contains("\"slot2lake_prev_body\""), "{sql}");
            assert!(!sql.contains("slot2lake_prev_n"), "{sql}");
            assert!(sql.contains("PARTITION BY \"id\""), "{sql}");
        }
        assert!(athena.contains("first_value(CASE"), "{athena}");
        assert!(athena.contains("END) IGNORE NULLS OVER"), "{athena}");
        assert!(duckdb.contains("END IGNORE NULLS) OVER"), "{duckdb}");
        assert!(athena.starts_with("CREATE OR REPLACE VIEW \"db\".\"docs_latest\""));

        let (athena, duckdb) = latest_state_views(&table(false), "db", "/lake");
        assert!(
            athena.contains("CROSS JOIN UNNEST(sequence(1, slot2lake_copies))"),
            "{athena}"
        );
        assert!(duckdb.contains("range(slot2lake_copies)"), "{duckdb}");
        for sql in [&athena, &duckdb] {
            assert!(
                sql.contains("SELECT DISTINCT \"id\", \"body\", \"n\""),
                "{sql}"
            );
            assert!(sql.contains("GROUP BY \"id\", \"body\", \"n\""), "{sql}");
            assert!(!sql.contains("row_number()"), "{sql}");
        }
    }
}
