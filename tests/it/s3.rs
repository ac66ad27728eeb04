//! S3 output and the Glue catalog against `moto_server` on loopback; the local catalog
//! and the latest-state views against a `file://` lake.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use aws_sdk_glue::Client as Glue;

use crate::support::{
    assert_rest_is_lake, database, flaky_proxy, free_addr, moto, run_once, silent_port, wait_until,
    with_config, Consumer, Lake, Moto, RestCatalog, TestDb, AWS_TEST_ENV, KEEP_NOTHING,
    SEED_TABLES,
};

async fn glue(moto: &Moto) -> Glue {
    for (k, v) in AWS_TEST_ENV {
        // The SDK reads credentials from the environment, as slot2lake does.
        std::env::set_var(k, v);
    }
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    Glue::from_conf(
        aws_sdk_glue::config::Builder::from(&sdk)
            .endpoint_url(moto.endpoint())
            .build(),
    )
}

fn s3_config(lake: &Lake, db: &TestDb, catalog: &str) -> std::path::PathBuf {
    lake.config_with(&db.url, &db.name, SEED_TABLES, catalog)
}

fn assert_exact(lake: &Lake, db: &TestDb) {
    lake.assert_matches(db, "public.customers", "customers", "customer_id");
    lake.assert_matches(db, "public.orders", "orders", "order_id");
    assert_eq!(
        lake.query_i64(
            "orders",
            "SELECT count(*) - count(DISTINCT (order_id, change_lsn, change_seq)) FROM {t}"
        ),
        0
    );
}

async fn glue_table(glue: &Glue, db: &str, name: &str) -> aws_sdk_glue::types::Table {
    glue.get_table()
        .database_name(db)
        .name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("Glue table {db}.{name}: {e:?}"))
        .table()
        .cloned()
        .expect("table")
}

async fn glue_partitions(
    glue: &Glue,
    db: &str,
    table: &str,
) -> Vec<aws_sdk_glue::types::Partition> {
    glue.get_partitions()
        .database_name(db)
        .table_name(table)
        .send()
        .await
        .unwrap_or_else(|e| panic!("Glue partitions of {db}.{table}: {e:?}"))
        .partitions()
        .to_vec()
}

/// Asserts the Glue table has these (column, Hive type) pairs.
fn assert_columns(table: &aws_sdk_glue::types::Table, want: &[(&str, &str)]) {
    let cols: Vec<(String, String)> = table
        .storage_descriptor()
        .map(|sd| {
            sd.columns()
                .iter()
                .map(|c| (c.name().to_string(), c.r#type().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    for (name, ty) in want {
        assert!(
            cols.contains(&(name.to_string(), ty.to_string())),
            "({name}, {ty}) not in {cols:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_into_s3_with_glue_direct_tables_and_partitions() {
    let moto = moto();
    let db = database("s3_direct").await;
    db.seed(20, 200).await;
    let lake = Lake::s3(moto, &db.name.replace('_', "-")).await;
    let catalog = format!(
        "[catalog]\nkind = \"glue-direct\"\ndatabase = \"{}\"\nendpoint = \"{}\"\n",
        db.name,
        moto.endpoint()
    );
    let config = s3_config(&lake, &db, &catalog);
    run_once(&config).await;
    assert_exact(&lake, &db);
    db.exec("UPDATE orders SET order_date = DATE '2024-02-29' WHERE order_id = 1; DELETE FROM customers WHERE customer_id = 2;").await;
    run_once(&config).await;
    assert_exact(&lake, &db);

    let glue = glue(moto).await;
    let table = glue_table(&glue, &db.name, "orders").await;
    assert_columns(
        &table,
        &[
            ("order_id", "int"),
            ("price", "decimal(10,2)"),
            ("order_date", "date"),
            ("change_lsn", "bigint"),
            ("commit_ts", "timestamp"),
        ],
    );
    let keys: Vec<&str> = table.partition_keys().iter().map(|c| c.name()).collect();
    assert_eq!(keys, ["year", "month", "day"]);
    assert!(table
        .storage_descriptor()
        .and_then(|s| s.location())
        .is_some_and(|l| l.ends_with("/lake/orders/")));
    let parts = glue_partitions(&glue, &db.name, "orders").await;
    let glue_parts: std::collections::BTreeSet<String> = parts
        .iter()
        .map(|p| {
            let v = p.values();
            format!("year={}/month={}/day={}", v[0], v[1], v[2])
        })
        .collect();
    let lake_parts: std::collections::BTreeSet<String> = lake
        .query("orders", "SELECT DISTINCT regexp_extract(filename, 'orders/(.*)/[^/]*$', 1) FROM read_parquet('LAKE/orders/**/*.parquet', filename = true)".replace("LAKE", &lake.s3.as_ref().expect("s3").0).as_str())
        .into_iter()
        .map(|r| r[0].as_str().expect("path").to_string())
        .collect();
    assert_eq!(glue_parts, lake_parts);
    assert!(glue_parts.contains("year=2024/month=02/day=29"));

    // A column that widens (int → bigint) is widened in Glue, so Athena reads old and new
    // files through it; a new column is added.
    db.exec("ALTER TABLE orders ALTER COLUMN quantity TYPE bigint; ALTER TABLE orders ADD COLUMN note text; INSERT INTO orders (customer_id, quantity, note) VALUES (1, 5000000000, 'big');").await;
    run_once(&config).await;
    assert_exact(&lake, &db);
    assert_columns(
        &glue_table(&glue, &db.name, "orders").await,
        &[
            ("quantity", "bigint"),
            ("note", "string"),
            ("order_id", "int"),
        ],
    );
}

/// Iceberg tables on S3 with their pointers in Glue (`<folder>_changes` and `<folder>`,
/// `table_type = ICEBERG`, as Athena reads them), following each commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_tables_on_s3_are_registered_in_glue() {
    let moto = moto();
    let db = database("s3_iceberg").await;
    db.seed(20, 200).await;
    let mut lake = Lake::s3(moto, &db.name.replace('_', "-")).await;
    lake.iceberg = true;
    let catalog = format!(
        "[catalog]\nkind = \"glue-direct\"\ndatabase = \"{}\"\nendpoint = \"{}\"\n",
        db.name,
        moto.endpoint()
    );
    let config = s3_config(&lake, &db, &catalog);
    run_once(&config).await;
    db.exec("UPDATE orders SET quantity = 7 WHERE order_id < 50; DELETE FROM customers WHERE customer_id = 2;").await;
    run_once(&config).await;
    // Read through iceberg_scan on S3.
    assert_exact(&lake, &db);
    let glue = glue(moto).await;
    for (folder, key) in [("orders", "order_id"), ("customers", "customer_id")] {
        let c = lake.iceberg_check(folder, key);
        assert_eq!(c["pyiceberg_equals_disk"], true, "{folder}: {c}");
        assert_eq!(c["duckdb_equals_disk"], true, "{folder}: {c}");
        let table = glue_table(&glue, &db.name, &format!("{folder}_changes")).await;
        let params = assert_iceberg_at(&lake, &table, folder, &c["version"]);
        assert!(
            params.contains_key("previous_metadata_location"),
            "{params:?}"
        );
    }
    // The table's own name is its current state, an Iceberg table too (no Hive table).
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    let c = lake.iceberg_check("orders", "order_id");
    let table = glue_table(&glue, &db.name, "orders").await;
    assert_iceberg_at(&lake, &table, "orders_current", &c["current"]["version"]);

    // Maintenance on S3: deletes applied, small files merged, old snapshots and their
    // files gone, and Glue pointed at each table's new metadata.
    let maintained = format!("{catalog}{}", crate::support::KEEP_NOTHING);
    let config = s3_config(&lake, &db, &maintained);
    let run = with_config(&["compact"], &config).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert_exact(&lake, &db);
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    let c = lake.iceberg_check("orders", "order_id");
    assert_eq!(c["files_listed"], c["files_on_disk"], "{c}");
    assert_eq!(c["current"]["delete_files"], 0, "{c}");
    assert_eq!(
        c["current"]["files_on_disk"], c["current"]["data_files"],
        "{c}"
    );
    assert_ne!(c["current"]["version"], 2, "{c}");
    let table = glue_table(&glue, &db.name, "orders").await;
    assert_iceberg_at(&lake, &table, "orders_current", &c["current"]["version"]);
    let table = glue_table(&glue, &db.name, "orders_changes").await;
    assert_iceberg_at(&lake, &table, "orders", &c["version"]);
}

/// Asserts a Glue table is an Iceberg table pointing at `folder`'s metadata `version`;
/// returns its parameters.
fn assert_iceberg_at<'t>(
    lake: &Lake,
    table: &'t aws_sdk_glue::types::Table,
    folder: &str,
    version: &serde_json::Value,
) -> &'t std::collections::HashMap<String, String> {
    let params = table.parameters().expect("parameters");
    assert_eq!(
        params.get("table_type").map(String::as_str),
        Some("ICEBERG")
    );
    let (url, _) = lake.s3.as_ref().expect("s3");
    assert_eq!(
        params.get("metadata_location"),
        Some(&format!("{url}/{folder}/metadata/v{version}.metadata.json")),
        "{folder}: Glue points at the table's current metadata"
    );
    params
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_into_s3_starts_the_glue_crawler() {
    let moto = moto();
    let db = database("s3_crawler").await;
    db.seed(5, 20).await;
    let lake = Lake::s3(moto, &db.name.replace('_', "-")).await;
    let glue = glue(moto).await;
    glue.create_database()
        .database_input(
            aws_sdk_glue::types::DatabaseInput::builder()
                .name(&db.name)
                .build()
                .expect("db"),
        )
        .send()
        .await
        .expect("create database");
    let crawler = format!("{}-crawler", db.name);
    let catalog = format!(
        "[catalog]\nkind = \"glue\"\ndatabase = \"{}\"\ncrawler = \"{crawler}\"\ncreate = true\nrole = \"arn:aws:iam::123456789012:role/glue\"\nendpoint = \"{}\"\n",
        db.name,
        moto.endpoint()
    );
    let config = s3_config(&lake, &db, &catalog);
    let run = run_once(&config).await;
    let state = glue
        .get_crawler()
        .name(&crawler)
        .send()
        .await
        .expect("crawler created");
    let c = state.crawler().expect("crawler");
    assert_eq!(c.state().map(|s| s.as_str()), Some("RUNNING"), "{c:?}");
    let targets: Vec<&str> = c
        .targets()
        .expect("targets")
        .s3_targets()
        .iter()
        .filter_map(|t| t.path())
        .collect();
    assert!(
        targets.iter().any(|t| t.ends_with("/lake/orders/")),
        "{targets:?}"
    );
    assert_eq!(
        c.schema_change_policy()
            .and_then(|p| p.update_behavior())
            .map(|b| b.as_str()),
        Some("UPDATE_IN_DATABASE")
    );
    assert!(run.stderr.contains("crawler started"), "{}", run.stderr);
    // The crawl now finishes after a moment; the next run queues behind it, then starts it.
    let (code, body) = moto
        .http(
            "POST",
            "/moto-api/state-manager/set-transition",
            r#"{"model_name":"glue::crawl","transition":{"progression":"time","seconds":2}}"#,
        )
        .await;
    assert_eq!(code, 201, "{body}");
    db.exec("INSERT INTO orders (customer_id) VALUES (1);")
        .await;
    let run = run_once(&config).await;
    assert!(run.stderr.contains("crawler started"), "{}", run.stderr);
    assert_exact(&lake, &db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_errors_end_in_a_retried_flush_without_duplicate_files() {
    let moto = moto();
    let db = database("s3_faults").await;
    db.seed(30, 300).await;
    let mut lake = Lake::s3(moto, &db.name.replace('_', "-")).await;
    let fail = Arc::new(AtomicI64::new(0));
    let proxy = flaky_proxy(moto.port, fail.clone()).await;
    // slot2lake talks to S3 through the proxy; the reader goes to moto directly.
    let reader = lake.s3.clone().expect("s3");
    lake.s3 = Some((reader.0.clone(), format!("127.0.0.1:{proxy}")));
    // Per-request retries and `run --once`'s retry budget, shortened for the test.
    let settings = |max_retries: u32, budget: &str| {
        format!(
            "max_retries = {max_retries}\n[retry]\nmin_delay = \"50ms\"\nmax_delay = \"200ms\"\nrun_once_budget = \"{budget}\"\n"
        )
    };
    let config = s3_config(&lake, &db, &settings(2, "60s"));
    let proxied = lake.s3.replace(reader.clone());

    // A short outage: the client's retries ride it out.
    fail.store(2, Ordering::SeqCst);
    run_once(&config).await;
    assert_exact(&lake, &db);

    // An outage longer than one request's retries: the attempt fails, and `run --once`
    // tries again (from recovery) until it succeeds.
    lake.s3 = proxied.clone();
    let config = s3_config(&lake, &db, &settings(0, "60s"));
    lake.s3 = Some(reader.clone());
    db.exec("UPDATE orders SET quantity = quantity + 1 WHERE order_id % 3 = 0;")
        .await;
    fail.store(3, Ordering::SeqCst);
    let run = run_once(&config).await;
    assert!(
        run.stderr.contains("run --once failed; retrying"),
        "{}",
        run.stderr
    );
    assert_eq!(fail.load(Ordering::SeqCst), 0, "the outage was not crossed");
    assert_exact(&lake, &db);

    // An outage longer than the budget: the run fails, nothing is acknowledged or moved
    // forward...
    lake.s3 = proxied;
    let config = s3_config(&lake, &db, &settings(0, "1s"));
    lake.s3 = Some(reader);
    db.exec("UPDATE orders SET quantity = quantity + 5 WHERE order_id % 2 = 0; DELETE FROM orders WHERE order_id % 7 = 0;").await;
    let confirmed = db.slot_confirmed(&db.name).await;
    fail.store(-1, Ordering::SeqCst);
    let run = with_config(&["run", "--once"], &config).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("gave up after"), "{}", run.stderr);
    assert_eq!(db.slot_confirmed(&db.name).await, confirmed);
    // ...then the endpoint recovers and the retried flush completes, with no duplicates.
    fail.store(0, Ordering::SeqCst);
    run_once(&config).await;
    assert_exact(&lake, &db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_degrades_the_consumer_until_the_flush_lands() {
    let moto = moto();
    let db = database("s3_outage_run").await;
    db.seed(20, 100).await;
    let mut lake = Lake::s3(moto, &db.name.replace('_', "-")).await;
    let fail = Arc::new(AtomicI64::new(0));
    let proxy = flaky_proxy(moto.port, fail.clone()).await;
    let reader = lake.s3.clone().expect("s3");
    lake.s3 = Some((reader.0.clone(), format!("127.0.0.1:{proxy}")));
    let admin = free_addr();
    // The spool stays local, so the flush (not the spool mirror) is what meets the outage.
    let config = s3_config(
        &lake,
        &db,
        &format!(
            "max_retries = 1\n[spool]\nlocation = \"local\"\nack_interval = \"1s\"\n\
             [retry]\nmin_delay = \"100ms\"\nmax_delay = \"1s\"\n[admin]\nlisten = \"{admin}\"\n"
        ),
    );
    lake.s3 = Some(reader);
    let consumer = Consumer::start(&config, &admin).await;
    db.exec("UPDATE orders SET quantity = 9 WHERE order_id % 4 = 0; DELETE FROM customers WHERE customer_id = 3;").await;

    fail.store(-1, Ordering::SeqCst);
    let asked = with_config(&["flush"], &config).await;
    assert_eq!(asked.code, 1, "{}", asked.stdout);
    assert!(asked.stderr.contains("retrying in"), "{}", asked.stderr);
    wait_until(60, "/health to report the failing flush", || async {
        let h = consumer.get("/health").await;
        h.starts_with("degraded") && h.contains("flush:")
    })
    .await;
    // Retries go on by themselves (not at the next trigger) and are counted.
    let retries = || async {
        let metrics = consumer.get("/metrics").await;
        metrics
            .lines()
            .find(|l| l.starts_with("slot2lake_retries_total{step=\"flush\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    wait_until(60, "the flush to be retried", || async {
        retries().await >= 3.0
    })
    .await;
    db.exec("INSERT INTO orders (customer_id, product_name) VALUES (1, 'during the outage');")
        .await;

    fail.store(0, Ordering::SeqCst);
    wait_until(60, "the retried flush to land", || async {
        consumer.get("/health").await.trim() == "ok"
    })
    .await;
    let run = with_config(&["flush"], &config).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_exact(&lake, &db);
    assert!(consumer.log().contains("retrying"), "{}", consumer.log());
    assert_eq!(consumer.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_catalog_keeps_the_data_and_is_retried_next_flush() {
    let moto = moto();
    let db = database("s3_catalog_retry").await;
    db.seed(5, 20).await;
    let lake = Lake::s3(moto, &db.name.replace('_', "-")).await;
    let dead = "http://127.0.0.1:9";
    let catalog = |ep: &str| {
        format!(
            "[catalog]\nkind = \"glue-direct\"\ndatabase = \"{}\"\nendpoint = \"{ep}\"\n",
            db.name
        )
    };
    let config = s3_config(&lake, &db, &catalog(dead));
    let run = with_config(&["run", "--once"], &config).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("the data is committed"),
        "{}",
        run.stderr
    );
    assert_exact(&lake, &db);
    let config = s3_config(&lake, &db, &catalog(&moto.endpoint()));
    run_once(&config).await;
    let glue = glue(moto).await;
    let parts = glue_partitions(&glue, &db.name, "orders").await;
    assert!(
        !parts.is_empty(),
        "partitions from the failed run were not added"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_catalog_and_the_duckdb_view_describe_a_real_lake() {
    let db = database("local_catalog").await;
    db.seed(10, 60).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    db.exec("UPDATE orders SET quantity = 0 WHERE order_id < 5; DELETE FROM orders WHERE order_id BETWEEN 5 AND 9; TRUNCATE customers; INSERT INTO customers (name) VALUES ('after truncate');").await;
    run_once(&config).await;
    let _cfg = config.display().to_string();
    let tables = with_config(&["catalog", "tables"], &config).await;
    assert_eq!(
        tables.stdout.lines().collect::<Vec<_>>(),
        ["customers", "orders"],
        "{}",
        tables.stderr
    );
    let describe = with_config(&["catalog", "describe", "orders"], &config).await;
    assert!(
        describe.stdout.contains("price") && describe.stdout.contains("decimal(10,2)"),
        "{}",
        describe.stdout
    );
    assert!(
        describe.stdout.contains("# Partition Information"),
        "{}",
        describe.stdout
    );
    let parts = with_config(&["catalog", "partitions", "orders"], &config).await;
    let expected = lake.query_i64(
        "orders",
        "SELECT count(DISTINCT (year, month, day)) FROM {t}",
    );
    assert_eq!(
        parts.stdout.lines().count() as i64,
        expected,
        "{}",
        parts.stdout
    );
    assert!(
        parts.stdout.lines().all(|l| l.starts_with("year=")),
        "{}",
        parts.stdout
    );

    // The DuckDB view, run by DuckDB itself, equals the source table.
    let views = with_config(&["catalog", "views"], &config).await;
    assert_eq!(views.code, 0, "{}", views.stderr);
    for (table, key) in [("orders", "order_id"), ("customers", "customer_id")] {
        let sql = views
            .stdout
            .split("-- ")
            .find(|s| s.starts_with(&format!("public.{table}: DuckDB")))
            .and_then(|s| s.split_once('\n'))
            .map(|(_, sql)| sql.trim().to_string())
            .expect("duckdb view");
        let count = lake.query_i64(
            table,
            &format!("{sql}\nSELECT count(*) FROM {table}_latest"),
        );
        assert_eq!(
            count,
            db.count(&format!("SELECT count(*) FROM {table}")).await,
            "{sql}"
        );
        let sum = lake.query_i64(
            table,
            &format!("{sql}\nSELECT coalesce(sum({key}), 0)::bigint FROM {table}_latest"),
        );
        assert_eq!(
            sum,
            db.count(&format!(
                "SELECT coalesce(sum({key}), 0)::bigint FROM {table}"
            ))
            .await
        );
    }
    assert!(
        views
            .stdout
            .contains("CREATE OR REPLACE VIEW \"default\".\"orders_latest\""),
        "{}",
        views.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_of_an_s3_lake_survives_losing_the_machine() {
    let moto = moto();
    let db = database("s3_spool").await;
    db.seed(10, 30).await;
    let lake = Lake::s3(moto, &db.name.replace('_', "-")).await;
    let admin = crate::support::free_addr();
    let spool_dir = lake.path().join("spool");
    let config = s3_config(
        &lake,
        &db,
        &format!(
            "[spool]\ndir = \"{}\"\nack_interval = \"1s\"\n[admin]\nlisten = \"{admin}\"\n",
            spool_dir.display()
        ),
    );
    let consumer = crate::support::Consumer::start(&config, &admin).await;
    db.exec("UPDATE orders SET quantity = 77 WHERE order_id <= 12; DELETE FROM customers WHERE customer_id = 4;").await;
    let target: slot2lake::lsn::Lsn = db
        .client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn")
        .get::<_, String>(0)
        .parse()
        .expect("lsn");
    crate::support::wait_until(60, "the changes to be acknowledged", || async {
        db.slot_confirmed(&db.name)
            .await
            .and_then(|s| s.parse::<slot2lake::lsn::Lsn>().ok())
            .is_some_and(|c| c >= target)
    })
    .await;
    consumer.kill().await;
    // A new machine: no local spool. The slot no longer has the changes; the lake's mirror does.
    std::fs::remove_dir_all(&spool_dir).expect("remove spool");
    run_once(&config).await;
    assert_exact(&lake, &db);
    assert_eq!(
        lake.query_i64(
            "orders",
            "SELECT count(*) FROM {t} WHERE quantity = 77 AND change_type = 'UPDATE'"
        ),
        12
    );
}

/// An S3 lake gets the same files as a local one for the same data: one per partition,
/// over a year of dates, for the snapshot and for a flush (uploaded concurrently).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_lake_gets_as_many_objects_as_a_local_one() {
    let moto = moto();
    let db = database("s3_spread").await;
    db.exec(slot2lake::demo::SEED_SCHEMA).await;
    db.exec(&slot2lake::demo::seed_data_sql(50, 5_000, 365))
        .await;
    let s3 = Lake::s3(moto, &db.name.replace('_', "-")).await;
    let s3_config = s3_config(&s3, &db, "");
    let local = Lake::new();
    // A second slot on the same database for the local lake.
    let local_config = local.config_with(&db.url, &format!("{}_local", db.name), SEED_TABLES, "");
    run_once(&s3_config).await;
    run_once(&local_config).await;
    db.exec(
        "INSERT INTO orders (customer_id, product_name, quantity, price, order_date)
           SELECT 1, 'Dock', 1, 10, current_date - (i % 365) FROM generate_series(1, 2000) i;
         UPDATE orders SET quantity = quantity + 1 WHERE order_id % 3 = 0;",
    )
    .await;
    run_once(&s3_config).await;
    run_once(&local_config).await;
    let objects = s3.query_i64("orders", "SELECT count(*) FROM files");
    let files = local.query_i64("orders", "SELECT count(*) FROM files");
    assert_eq!(objects, files, "S3 objects vs local files");
    // A snapshot and a flush, each at most one file per date (plus the NULL partition).
    assert!(files <= 2 * 366, "{files} files");
    assert_exact(&s3, &db);
    assert_exact(&local, &db);
    // `compact` merges each date's snapshot and flush files, on S3 as on a local disk.
    for config in [&s3_config, &local_config] {
        let run = with_config(&["compact"], config).await;
        assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    }
    let objects = s3.query_i64("orders", "SELECT count(*) FROM files");
    let merged = local.query_i64("orders", "SELECT count(*) FROM files");
    assert_eq!(
        objects, merged,
        "S3 objects vs local files after compaction"
    );
    assert!(
        merged < files && merged <= 366,
        "{merged} files after compaction"
    );
    assert_exact(&s3, &db);
    assert_exact(&local, &db);
}

/// A Glue endpoint that accepts and never answers is reported as unreachable in
/// bounded time, not waited on forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_glue_endpoint_is_a_timeout_not_a_hang() {
    let port = silent_port().await;
    let moto = moto();
    let db = database("silent_glue").await;
    db.seed(2, 2).await;
    let lake = Lake::s3(moto, &db.name.replace('_', "-")).await;
    let config = s3_config(
        &lake,
        &db,
        &format!(
            "[catalog]\nkind = \"glue-direct\"\ndatabase = \"lake\"\nendpoint = \"http://127.0.0.1:{port}\"\n"
        ),
    );
    let started = std::time::Instant::now();
    let run = with_config(&["check"], &config).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let catalog = run.check_line("catalog");
    assert!(
        catalog.starts_with("FAIL") && catalog.contains("not reachable"),
        "{catalog}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(90),
        "check took {:?}",
        started.elapsed()
    );
}

/// Iceberg tables on S3 kept in a REST catalog whose own FileIO is on the same S3 (a
/// bearer token this time): the
/// catalog registers the lake's metadata, writes its own beside it, and pyiceberg and
/// DuckDB read through it from S3 what the lake's metadata holds, after flushes and
/// after `compact`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_tables_on_s3_are_kept_in_a_rest_catalog() {
    let moto = moto();
    let rest = RestCatalog::on_s3(moto);
    let db = database("s3_iceberg_rest").await;
    db.seed(20, 200).await;
    let mut lake = Lake::s3(moto, &db.name.replace('_', "-")).await;
    lake.iceberg = true;
    // Signed in with a bearer token (the local test uses client credentials).
    let config = s3_config(
        &lake,
        &db,
        &format!("{}{KEEP_NOTHING}", rest.section_with_token("s3shop")),
    );
    run_once(&config).await;
    db.exec("UPDATE orders SET quantity = 7 WHERE order_id < 50; DELETE FROM customers WHERE customer_id = 2;").await;
    run_once(&config).await;
    with_config(&["compact"], &config).await.ok();
    db.exec("UPDATE orders SET quantity = 8 WHERE order_id > 150")
        .await;
    run_once(&config).await;
    assert_exact(&lake, &db);
    for (folder, key) in [("orders", "order_id"), ("customers", "customer_id")] {
        let c = lake.rest_check(&rest, "s3shop", folder);
        let current = assert_rest_is_lake(&c, folder);
        assert_rest_is_lake(&c, &format!("{folder}_changes"));
        assert!(
            current["metadata_location"]
                .as_str()
                .is_some_and(|l| l.starts_with("s3://")),
            "{c}"
        );
        lake.assert_current_matches(&db, &format!("public.{folder}"), folder, key);
    }
}
