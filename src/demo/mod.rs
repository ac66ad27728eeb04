//! `slot2lake demo`: zero configuration, end to end, in well under a minute.
//!
//! A throwaway PostgreSQL, the seed's sample customers and orders, the first-run
//! backfill, a simulated day of changes (including what timestamp polling misses:
//! deletes, updates to old orders, a rolled-back transaction), the daily flush, and a
//! summary of what landed where.

pub mod postgres;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::config::{Config, ConfigError};
use crate::decode::schema::CHANGE_TYPE;
use crate::pipeline::{Pipeline, RunError, RunReport};
use crate::source::{self, SourceError};
pub use postgres::{ClusterError, TempCluster};

/// The seed's tables, as in its incremental-ETL guide (including the `updated_at` trigger).
pub const SEED_SCHEMA: &str = r#"
CREATE TABLE customers (
    customer_id SERIAL PRIMARY KEY,
    name VARCHAR(100),
    email VARCHAR(100),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE orders (
    order_id SERIAL PRIMARY KEY,
    customer_id INTEGER,
    product_name VARCHAR(100),
    quantity INTEGER,
    price DECIMAL(10,2),
    order_date DATE DEFAULT CURRENT_DATE,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE OR REPLACE FUNCTION update_updated_at_column() RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = CURRENT_TIMESTAMP;
    RETURN NEW;
END;
$$ language 'plpgsql';
CREATE TRIGGER update_customers_updated_at BEFORE UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
CREATE TRIGGER update_orders_updated_at BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
"#;

/// Inserts `customers` customers and `orders` orders spread over the last `days` days.
pub fn seed_data_sql(customers: u32, orders: u32, days: u32) -> String {
    format!(
        "INSERT INTO customers (name, email, created_at, updated_at)
           SELECT 'Customer ' || i, 'customer' || i || '@example.com',
                  now() - ((i % {days}) || ' days')::interval, now() - ((i % {days}) || ' days')::interval
           FROM generate_series(1, {customers}) i;
         INSERT INTO orders (customer_id, product_name, quantity, price, order_date, updated_at)
           SELECT 1 + (i * 7) % {customers}, (ARRAY['Laptop','Mouse','Keyboard','Monitor','Headset','Webcam','Dock'])[1 + i % 7],
                  1 + i % 5, round((19.99 + (i % 200) * 3.5)::numeric, 2),
                  current_date - (i % {days}), now() - ((i % {days}) || ' days')::interval
           FROM generate_series(1, {orders}) i;"
    )
}

/// A day of changes, as the seed's `simulate_incremental_data.py` makes them, plus the
/// ones timestamp polling misses.
pub const SIMULATED_DAY: &str = "
INSERT INTO customers (name, email)
  SELECT 'New customer ' || i, 'new' || i || '@example.com' FROM generate_series(1, 25) i;
INSERT INTO orders (customer_id, product_name, quantity, price)
  SELECT 1 + i % 100, 'Laptop', 1 + i % 3, 999.00 FROM generate_series(1, 120) i;
UPDATE orders SET quantity = quantity + 1 WHERE order_id % 97 = 0;
UPDATE orders SET order_date = order_date - 1 WHERE order_id = 5;
UPDATE customers SET email = 'changed' || customer_id || '@example.com' WHERE customer_id % 50 = 0;
DELETE FROM orders WHERE order_id % 211 = 0;
";

/// A transaction that is rolled back: it must never reach the lake.
// Sent on its own: in one multi-statement query, a BEGIN would pull the statements
// before it into its transaction and the ROLLBACK would undo them too.
pub const ROLLED_BACK: &str = "
BEGIN;
INSERT INTO orders (customer_id, product_name, quantity, price) VALUES (1, 'Never committed', 1, 1.00);
ROLLBACK;
";

/// The demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The throwaway cluster.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The pipeline.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The generated config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Loading data.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Local files.
    #[error("demo folder {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Demo settings.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Leave the database running and the lake on disk.
    pub keep: bool,
    /// Folder for the lake and config (default: a new temp folder).
    pub dir: Option<PathBuf>,
    /// Table format of the lake.
    pub format: crate::config::TableFormat,
}

fn step(n: u32, text: &str) {
    println!("{n}. {text}");
}

/// Runs the demo, printing as it goes.
pub async fn run(opts: DemoOptions) -> Result<(), DemoError> {
    let started = std::time::Instant::now();
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("slot2lake-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| DemoError::Io(dir.clone(), e))?;
    let mut cluster = TempCluster::start(&[])?;
    step(
        1,
        &format!(
            "started a throwaway PostgreSQL ({}) at 127.0.0.1:{} with wal_level = logical",
            cluster.bindir().display(),
            cluster.port
        ),
    );
    let admin = source::connect(
        &crate::config::SecretUrl::new(cluster.url("postgres")),
        crate::config::DEFAULT_QUERY_TIMEOUT,
    )
    .await?;
    admin
        .batch_execute("creating analytics_db", "CREATE DATABASE analytics_db")
        .await?;
    let url = crate::config::SecretUrl::new(cluster.url("analytics_db"));
    let db = source::connect(&url, crate::config::DEFAULT_QUERY_TIMEOUT).await?;
    db.batch_execute("creating the seed's tables", SEED_SCHEMA)
        .await?;
    db.batch_execute("loading sample data", &seed_data_sql(1000, 5000, 90))
        .await?;
    step(2, "loaded the seed's sample data into analytics_db: 1000 customers, 5000 orders over the last 90 days");

    let lake = dir.join("lake");
    let format = match opts.format {
        crate::config::TableFormat::Parquet => "parquet",
        crate::config::TableFormat::Iceberg => "iceberg",
    };
    let config_text = format!(
        "[source]\nurl = \"{}\"\n\n[output]\nurl = \"file://{}\"\nformat = \"{format}\"\n\n[catalog]\nkind = \"local\"\n\n\
         [[tables]]\nname = \"public.customers\"\npartition_by = \"processing_date\"\n\n\
         [[tables]]\nname = \"public.orders\"\npartition_by = \"order_date\"\n\
         snapshot_where = \"order_date >= current_date - 30\"\n",
        url.expose(),
        lake.display()
    );
    let config_path = dir.join("slot2lake.toml");
    std::fs::write(&config_path, &config_text)
        .map_err(|e| DemoError::Io(config_path.clone(), e))?;
    let config = Config::parse(&config_text, &config_path.display().to_string(), &|_| None)?;

    let pipeline = std::sync::Arc::new(Pipeline::open(config.clone()).await?);
    let first = crate::service::once(pipeline.clone()).await?;
    step(
        3,
        &format!(
            "first run: created slot \"slot2lake\" with an exported snapshot and backfilled {} customers and {} orders (snapshot_where: the last 30 days, as the seed's first run)",
            first.snapshot_rows.get("customers").copied().unwrap_or(0),
            first.snapshot_rows.get("orders").copied().unwrap_or(0)
        ),
    );
    for sql in [SIMULATED_DAY, ROLLED_BACK] {
        db.batch_execute("simulating a day of changes", sql).await?;
    }
    step(
        4,
        "simulated a day: 25 new customers, 120 new orders, updates to old orders (one moved to another day), 20 changed emails, deletes, and a rolled-back transaction",
    );
    let second = crate::service::once(pipeline.clone()).await?;
    step(
        5,
        &format!(
            "daily flush (`slot2lake run --once`): {} changes from the slot, {} rows written, slot acknowledged to {}",
            second.changes_received,
            second.flushed_rows.values().sum::<u64>(),
            second.acked.map(|l| l.to_string()).unwrap_or_default()
        ),
    );
    drop(pipeline);
    println!();
    print!("{}", summary(&lake, &[first, second], opts.format));
    println!();
    println!("Config: {}", config_path.display());
    println!("Finished in {:.1} s.", started.elapsed().as_secs_f64());
    if opts.keep {
        cluster.keep();
        println!(
            "Kept: PostgreSQL at {} (stop: {}), lake and config in {}",
            cluster.url("analytics_db"),
            cluster.stop_command(),
            dir.display()
        );
    } else {
        drop(cluster);
        if opts.dir.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        println!("Removed the throwaway database and lake (run `slot2lake demo --keep` to explore them).");
    }
    Ok(())
}

fn summary(lake: &Path, runs: &[RunReport], format: crate::config::TableFormat) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Lake: {}", lake.display());
    let mut tables: BTreeMap<String, BTreeMap<String, (u64, u64)>> = BTreeMap::new();
    let mut by_type: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for f in runs.iter().flat_map(|r| &r.files) {
        let part = f.partition.path();
        let entry = tables
            .entry(f.table.clone())
            .or_default()
            .entry(part)
            .or_default();
        entry.0 += 1;
        entry.1 += f.rows;
        for (t, n) in change_types(&lake.join(&f.key)) {
            *by_type
                .entry(f.table.clone())
                .or_default()
                .entry(t)
                .or_default() += n;
        }
    }
    for (table, parts) in &tables {
        let files: u64 = parts.values().map(|p| p.0).sum();
        let _ = writeln!(s, "  {table}/  {} partitions, {files} files", parts.len());
        for (i, (part, (files, rows))) in parts.iter().enumerate() {
            if i == 6 && parts.len() > 8 {
                let _ = writeln!(s, "    … {} more partitions", parts.len() - 7);
                continue;
            }
            if i > 6 && i + 1 < parts.len() && parts.len() > 8 {
                continue;
            }
            let _ = writeln!(s, "    {part}/  {files} file(s), {rows} rows");
        }
    }
    let _ = writeln!(s, "Rows by change_type:");
    for (table, types) in &by_type {
        let list: Vec<String> = types.iter().map(|(t, n)| format!("{t} {n}")).collect();
        let _ = writeln!(s, "  {table}: {}", list.join(", "));
    }
    let _ = writeln!(s, "Watermarks:");
    for table in tables.keys() {
        let path = lake.join("etl-metadata").join(table);
        let ts =
            std::fs::read_to_string(path.join("last_processed_timestamp.txt")).unwrap_or_default();
        let lsn = std::fs::read_to_string(path.join("watermark.json"))
            .ok()
            .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
            .and_then(|v| v["lsn"].as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  etl-metadata/{table}/last_processed_timestamp.txt  \"{ts}\"   watermark.json lsn {lsn}"
        );
    }
    if format == crate::config::TableFormat::Iceberg {
        let _ = writeln!(s, "Iceberg tables (changelog, current state):");
        for table in tables.keys() {
            for folder in [table.clone(), crate::iceberg::current::folder_of(table)] {
                let hint = lake
                    .join(&folder)
                    .join("metadata")
                    .join("version-hint.text");
                if let Ok(version) = std::fs::read_to_string(&hint) {
                    let _ = writeln!(s, "  {folder}/metadata/v{}.metadata.json", version.trim());
                }
            }
        }
        let _ = writeln!(s, "Try (pip install duckdb==1.5.5 duckdb-extension-iceberg==1.5.5 duckdb-extension-avro==1.5.5):");
        let _ = writeln!(
            s,
            "  duckdb -c \"SELECT change_type, count(*) FROM iceberg_scan('{}/orders') GROUP BY 1\"",
            lake.display()
        );
        let _ = writeln!(
            s,
            "  duckdb -c \"SELECT * FROM iceberg_scan('{}/orders_current') ORDER BY order_id LIMIT 10\"",
            lake.display()
        );
    }
    let _ = writeln!(s, "Try (pip install duckdb):");
    let _ = writeln!(
        s,
        "  duckdb -c \"SELECT change_type, count(*) FROM read_parquet('{}/orders/**/*.parquet', hive_partitioning = true) GROUP BY 1\"",
        lake.display()
    );
    let _ = writeln!(
        s,
        "  duckdb -c \"SELECT * EXCLUDE (rn) FROM (SELECT *, row_number() OVER (PARTITION BY order_id ORDER BY change_lsn DESC, change_seq DESC) AS rn FROM read_parquet('{}/orders/**/*.parquet', hive_partitioning = true)) WHERE rn = 1 AND change_type <> 'DELETE' ORDER BY order_id LIMIT 10\"",
        lake.display()
    );
    let _ = writeln!(
        s,
        "  slot2lake catalog views --config <the config below>   # (with --keep) the full latest-state view per table, for DuckDB and Athena"
    );
    s
}

/// Rows per `change_type` in one Parquet file (read back with the parquet crate).
fn change_types(path: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(file) = std::fs::File::open(path) else {
        return out;
    };
    let Ok(builder) = ParquetRecordBatchReaderBuilder::try_new(file) else {
        return out;
    };
    let Some(idx) = builder.schema().index_of(CHANGE_TYPE).ok() else {
        return out;
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), [idx]);
    let Ok(reader) = builder.with_projection(mask).build() else {
        return out;
    };
    for batch in reader.flatten() {
        if let Some(col) = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
        {
            for v in col.iter().flatten() {
                *out.entry(v.to_string()).or_default() += 1;
            }
        }
    }
    out
}
