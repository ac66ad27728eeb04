//! `output.format = "iceberg"`: the changelog committed to an Iceberg table per source
//! table, read by pyiceberg and DuckDB's iceberg_scan.

use crate::support::{
    assert_rest_is_lake, connect, database, edit_config, free_addr, run_once, with_config,
    Consumer, Lake, RestCatalog, KEEP_NOTHING, SEED_TABLES,
};

fn lsns(check: &serde_json::Value) -> Vec<String> {
    check["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| s["slot2lake.lsn"].as_str().expect("lsn").to_string())
        .collect()
}

/// The changelog read by both readers equals its files; the current-state table reads
/// the same in both and stands at the changelog's LSN.
fn assert_readers_agree(lake: &Lake, folder: &str, key: &str) -> serde_json::Value {
    let c = lake.iceberg_check(folder, key);
    assert_eq!(c["pyiceberg_equals_disk"], true, "{folder}: {c}");
    assert_eq!(c["duckdb_equals_disk"], true, "{folder}: {c}");
    assert_eq!(c["files_listed"], c["files_on_disk"], "{folder}: {c}");
    assert_eq!(
        c["current"]["pyiceberg_equals_duckdb"], true,
        "{folder}: {c}"
    );
    assert_eq!(
        lsns(&c).last(),
        lsns(&c["current"]).last(),
        "{folder}: both tables at one LSN: {c}"
    );
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_tables_take_the_snapshot_and_each_flush_at_its_lsn() {
    let db = database("iceberg_flow").await;
    db.seed(40, 300).await;
    let lake = Lake::iceberg();
    let config = lake.config(&db, SEED_TABLES);

    run_once(&config).await;
    let c = assert_readers_agree(&lake, "orders", "order_id");
    assert_eq!(c["rows"], 300, "{c}");
    assert_eq!(
        lsns(&c),
        vec![lake.watermark("orders")["lsn"].as_str().expect("lsn")]
    );
    assert!(
        c["partition_spec"]
            .as_str()
            .is_some_and(|s| s.contains("day(")),
        "{c}"
    );
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    assert_eq!(c["current"]["rows"], 300, "{c}");

    // Key changes, deletes, a column added mid-stream, rows over new dates.
    db.exec(
        "UPDATE orders SET quantity = quantity + 1 WHERE order_id % 4 = 0;
         UPDATE orders SET order_id = order_id + 100000 WHERE order_id % 25 = 0;
         DELETE FROM orders WHERE order_id % 10 = 1;
         ALTER TABLE orders ADD COLUMN note text;
         INSERT INTO orders (customer_id, product_name, quantity, price, order_date, note)
           SELECT 1, 'late', 1, 2.5, current_date - i, 'n' || i FROM generate_series(1, 40) i;
         UPDATE customers SET email = 'changed' WHERE customer_id <= 5;",
    )
    .await;
    run_once(&config).await;
    let c = assert_readers_agree(&lake, "orders", "order_id");
    let wm = lake.watermark("orders");
    let l = lsns(&c);
    assert_eq!(l.len(), 2, "{c}");
    assert_eq!(l[1], wm["lsn"].as_str().expect("lsn"), "{c}");
    assert!(
        c["schema"]
            .as_array()
            .is_some_and(|s| s.iter().any(|f| f == "note")),
        "the added column is in the table's schema: {c}"
    );
    // Read through iceberg_scan (the lake's files listed by the table's snapshot).
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
    lake.assert_matches(&db, "public.customers", "customers", "customer_id");
    assert_readers_agree(&lake, "customers", "customer_id");
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    lake.assert_current_matches(&db, "public.customers", "customers", "customer_id");

    // `catalog views`: a plain SELECT of the current-state table, which DuckDB runs.
    let views = with_config(&["catalog", "views"], &config).await;
    let select = views
        .stdout
        .lines()
        .find(|l| l.contains("iceberg_scan(") && l.contains("orders_current"))
        .unwrap_or_else(|| panic!("no SELECT of orders_current: {}", views.stdout));
    let rows = lake.query(
        "orders",
        &select
            .replace("SELECT ", "SELECT count(*) FROM (SELECT ")
            .replace(";", ") AS s"),
    );
    assert_eq!(
        rows[0][0].as_i64(),
        Some(db.count("SELECT count(*) FROM orders").await),
        "{select}"
    );

    // A run with nothing new commits nothing.
    run_once(&config).await;
    let again = assert_readers_agree(&lake, "orders", "order_id");
    assert_eq!(again["version"], c["version"], "{again}");

    // TOASTed values: set in one flush, left unsent by an update of another column in
    // the next; the current state takes them from the table's earlier row.
    db.exec(
        "ALTER TABLE orders ADD COLUMN big text;
         UPDATE orders SET big = (SELECT string_agg(md5(random()::text || i), '') FROM generate_series(1, 300) i)
           WHERE order_id <= 6;",
    )
    .await;
    run_once(&config).await;
    // Order 10: set and then left unsent within one flush (taken from the flush's row).
    db.exec(
        "UPDATE orders SET quantity = quantity + 5 WHERE order_id <= 6;
         UPDATE orders SET big = (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 300) i)
           WHERE order_id = 10;
         UPDATE orders SET quantity = 77 WHERE order_id = 10;",
    )
    .await;
    run_once(&config).await;
    let unsent = lake.query_i64(
        "orders",
        "SELECT count(*) FROM {t} WHERE list_contains(unchanged_columns, 'big')",
    );
    assert!(
        unsent >= 5,
        "the update left the TOASTed values unsent: {unsent}"
    );
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    assert_readers_agree(&lake, "orders", "order_id");

    // TRUNCATE empties the current state; rows after it are all there is.
    db.exec(
        "TRUNCATE orders;
         INSERT INTO orders (customer_id, product_name, quantity, price, order_date)
           SELECT 2, 'after', i, 1.5, current_date - i FROM generate_series(1, 7) i;",
    )
    .await;
    run_once(&config).await;
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    let c = assert_readers_agree(&lake, "orders", "order_id");
    assert_eq!(c["current"]["rows"], 7, "{c}");
}

/// A backfill replaces the current state with its snapshot; the changelog gets the
/// snapshot behind its TRUNCATE row, which the current state does not show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_backfill_replaces_the_current_state() {
    let db = database("iceberg_backfill").await;
    db.seed(10, 120).await;
    let lake = Lake::iceberg();
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    db.exec("DELETE FROM orders WHERE order_id % 3 = 0; UPDATE orders SET quantity = 0 WHERE order_id % 5 = 0;")
        .await;
    run_once(&config).await;
    let run = with_config(&["backfill", "--table", "orders"], &config).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    db.exec("UPDATE orders SET quantity = 1 WHERE order_id % 7 = 0;")
        .await;
    run_once(&config).await;
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
    let c = assert_readers_agree(&lake, "orders", "order_id");
    let kinds: Vec<&str> = c["current"]["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| s["operation"].as_str().expect("operation"))
        .collect();
    assert_eq!(
        kinds,
        ["overwrite", "overwrite", "overwrite", "overwrite"],
        "{c}"
    );
}

/// Declaratively partitioned tables (a composite key, rows moving between leaves, a key
/// change across partitions, TRUNCATE) and a keyless table: the current state per key for
/// the first two, the changelog only for the keyless one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_partitioned_and_keyless_tables() {
    let db = database("iceberg_shapes").await;
    db.exec(
        "CREATE TABLE ev (id int, d date, v text, PRIMARY KEY (id, d)) PARTITION BY RANGE (d);
         CREATE TABLE ev_2024 PARTITION OF ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE ev_rest PARTITION OF ev DEFAULT;
         INSERT INTO ev SELECT i, date '2024-06-01' + (i * 3), 'v' || i FROM generate_series(1, 150) i;
         CREATE TABLE lst (id int PRIMARY KEY, region text NOT NULL, v int) PARTITION BY LIST (id);
         CREATE TABLE lst_a PARTITION OF lst FOR VALUES IN (1, 2, 3);
         CREATE TABLE lst_b PARTITION OF lst DEFAULT;
         INSERT INTO lst SELECT i, 'r' || (i % 3), i FROM generate_series(1, 30) i;
         CREATE TABLE k (a int, b text);
         ALTER TABLE k REPLICA IDENTITY FULL;
         INSERT INTO k VALUES (1, 'x'), (1, 'x'), (2, 'y');",
    )
    .await;
    let lake = Lake::iceberg();
    let config = lake.config(
        &db,
        "[[tables]]\nname = \"public.ev\"\npartition_by = \"d\"\n[[tables]]\nname = \"public.lst\"\n[[tables]]\nname = \"public.k\"\n",
    );
    run_once(&config).await;
    db.exec(
        "UPDATE ev SET v = 'in place' WHERE id <= 5;
         UPDATE ev SET d = date '2030-01-01' WHERE id IN (7, 8);
         DELETE FROM ev WHERE id % 10 = 0;
         UPDATE lst SET id = id + 100 WHERE id <= 3;
         UPDATE lst SET v = -v WHERE id > 20;
         UPDATE k SET a = 5 WHERE a = 2;
         INSERT INTO k VALUES (1, 'x');",
    )
    .await;
    run_once(&config).await;
    lake.assert_current_matches(&db, "public.ev", "ev", "id,d");
    lake.assert_current_matches(&db, "public.lst", "lst", "id");
    lake.assert_matches(&db, "public.k", "k", "");
    db.exec("TRUNCATE lst; INSERT INTO lst VALUES (1, 'again', 1), (500, 'new', 5);")
        .await;
    run_once(&config).await;
    lake.assert_current_matches(&db, "public.lst", "lst", "id");
    lake.assert_current_matches(&db, "public.ev", "ev", "id,d");
    assert_readers_agree(&lake, "ev", "id");
    assert!(
        !lake.root().join("k_current").exists(),
        "a keyless table has no current-state table"
    );
}

/// A Parquet lake switched to Iceberg: no Iceberg table lists its earlier rows, so the
/// first flush after the switch takes a new snapshot of each table, which starts both
/// Iceberg tables; nothing of the flush is lost on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_lake_switched_to_iceberg_starts_from_a_snapshot() {
    let db = database("iceberg_switch").await;
    db.seed(10, 80).await;
    let mut lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    db.exec("UPDATE orders SET quantity = 3 WHERE order_id % 4 = 0;")
        .await;
    run_once(&config).await;
    let parquet_files = lake.files("orders");
    lake.iceberg = true;
    let config = lake.config_with(&db.url, &db.name, SEED_TABLES, crate::support::KEEP_NOTHING);
    db.exec("DELETE FROM orders WHERE order_id % 5 = 0; UPDATE orders SET quantity = 9 WHERE order_id % 7 = 0;")
        .await;
    let run = run_once(&config).await;
    assert!(
        run.stderr.contains("no Iceberg table"),
        "the switch is reported: {}",
        run.stderr
    );
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    lake.assert_current_matches(&db, "public.customers", "customers", "customer_id");
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
    db.exec("UPDATE orders SET quantity = 1 WHERE order_id % 3 = 0;")
        .await;
    run_once(&config).await;
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    lake.assert_matches(&db, "public.orders", "orders", "order_id");

    // Maintenance with nothing kept back leaves the Parquet files from before the switch,
    // which no Iceberg table lists, where they are.
    let run = with_config(&["compact"], &config).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let now = lake.files("orders");
    let gone: Vec<&String> = parquet_files.iter().filter(|f| !now.contains(f)).collect();
    assert!(
        gone.is_empty(),
        "files from before the switch removed: {gone:?}"
    );
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
}

/// A flush over `flush.memory_limit` is folded into the current state in key buckets,
/// one after the other, and gives the state one fold would: every row updated, keys
/// changed and deleted, TOASTed values left unsent (by updates that keep the key: a key
/// change leaves them NULL and named, as in the changelog), another table truncated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_flush_over_the_memory_limit_is_folded_in_key_buckets() {
    let db = database("iceberg_buckets").await;
    db.seed(50, 6000).await;
    let lake = Lake::iceberg();
    let config = lake.config_with(
        &db.url,
        &db.name,
        SEED_TABLES,
        "[flush]\nmemory_limit = \"1MB\"\n",
    );
    run_once(&config).await;
    db.exec(
        "ALTER TABLE orders ADD COLUMN big text;
         UPDATE orders SET big = (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 300) i)
           WHERE order_id <= 20;",
    )
    .await;
    run_once(&config).await;
    db.exec(
        "UPDATE orders SET quantity = quantity + 1;
         UPDATE orders SET order_id = order_id + 100000 WHERE order_id % 9 = 0 AND order_id > 20;
         DELETE FROM orders WHERE order_id % 13 = 0;
         UPDATE orders SET quantity = 0 WHERE order_id % 5 = 0;
         TRUNCATE customers;
         INSERT INTO customers (name) SELECT 'c' || i FROM generate_series(1, 30) i;",
    )
    .await;
    let run = run_once(&config).await;
    assert!(
        run.stderr.contains("in key buckets"),
        "the flush crossed the limit: {}",
        run.stderr
    );
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    lake.assert_current_matches(&db, "public.customers", "customers", "customer_id");
    let c = assert_readers_agree(&lake, "orders", "order_id");
    assert_eq!(
        c["current"]["rows"].as_i64(),
        Some(db.count("SELECT count(*) FROM orders").await),
        "{c}"
    );
    assert_eq!(
        lake.query_i64(
            "orders_current",
            "SELECT count(*) FROM {t} WHERE big IS NOT NULL"
        ),
        db.count("SELECT count(*) FROM orders WHERE big IS NOT NULL")
            .await,
        "the unsent TOASTed values are taken from the table"
    );
}

/// Maintenance rewrites the current state's files that have deletes (and the small ones)
/// and keeps the rest as they are: its cost follows the change, not the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_maintenance_rewrites_only_the_files_a_change_touched() {
    let db = database("iceberg_touched").await;
    db.seed(50, 200_000).await;
    let lake = Lake::iceberg();
    let config = lake.config_with(
        &db.url,
        &db.name,
        SEED_TABLES,
        &format!("max_file_size = \"1MB\"\n{}", crate::support::KEEP_NOTHING),
    );
    run_once(&config).await;
    let run = with_config(&["compact"], &config).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let c = lake.iceberg_check("orders", "order_id");
    let files = c["current"]["data_files"].as_u64().expect("files");
    assert!(files >= 3, "the current state is in several files: {c}");

    // One day's orders change: their rows sit together in one rewritten file.
    db.exec(
        "UPDATE orders SET quantity = quantity + 1
           WHERE order_date = (SELECT min(order_date) FROM orders);",
    )
    .await;
    run_once(&config).await;
    let run = with_config(&["compact"], &config).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let kept: u64 = run
        .stderr
        .lines()
        .find(|l| l.contains("current state rewritten") && l.contains("orders_current"))
        .and_then(|l| l.split("kept=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{}", run.stderr));
    assert!(kept >= 1, "files without deletes are kept: {}", run.stderr);
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    let c = assert_readers_agree(&lake, "orders", "order_id");
    assert_eq!(c["current"]["delete_files"], 0, "{c}");
    assert_eq!(
        c["current"]["files_on_disk"], c["current"]["data_files"],
        "{c}"
    );
}

/// `compact` beside a running consumer: flushes and maintenance commit to the same
/// tables, and whichever loses a race commits again on the winner's state. In the end
/// the current state is the source's and no change row is there twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_maintenance_beside_a_running_consumer() {
    let db = database("iceberg_beside").await;
    db.seed(20, 2000).await;
    let lake = Lake::iceberg();
    let admin = free_addr();
    // Both the flushes and the compactions bring a REST catalog along, racing.
    let rest = RestCatalog::start();
    let config = lake.config_with(
        &db.url,
        &db.name,
        SEED_TABLES,
        &format!(
            "[spool]\nack_interval = \"1s\"\n[admin]\nlisten = \"{admin}\"\n{}",
            rest.section("live")
        ),
    );
    let consumer = Consumer::start(&config, &admin).await;
    let writer = {
        let (config, url) = (config.clone(), db.url.clone());
        tokio::spawn(async move {
            let c = connect(&url).await;
            for i in 0..12 {
                c.batch_execute(&format!(
                    "UPDATE orders SET quantity = quantity + 1 WHERE order_id % 12 = {i};
                     DELETE FROM orders WHERE order_id = {};",
                    1 + i * 7
                ))
                .await
                .expect("write");
                let run = with_config(&["flush"], &config).await;
                assert_eq!(run.code, 0, "flush: {}{}", run.stdout, run.stderr);
            }
        })
    };
    let mut compactions = 0;
    while !writer.is_finished() {
        let run = with_config(&["compact"], &config).await;
        assert_eq!(run.code, 0, "compact: {}{}", run.stdout, run.stderr);
        compactions += 1;
    }
    writer.await.expect("writer");
    assert!(compactions > 1, "compact ran beside the flushes");
    // A file no snapshot lists yet, as a commit under way leaves it: younger than
    // orphan_age (3 days), so it stays.
    let young = lake.root().join("orders_current/data/0-rows-00.parquet");
    let listed = lake
        .files("orders_current")
        .into_iter()
        .find(|f| f.ends_with(".parquet"))
        .expect("a data file");
    std::fs::copy(lake.root().join(listed), &young).expect("copy");
    let run = with_config(&["compact"], &config).await;
    assert_eq!(run.code, 0, "compact: {}{}", run.stdout, run.stderr);
    assert!(
        young.exists(),
        "a young unlisted file was removed: {}",
        run.stdout
    );
    std::fs::remove_file(&young).expect("remove");
    consumer.stop().await;
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
    // Replaced files stay on disk until their snapshots expire (5 days): compare the
    // readers with each other, not with the folder.
    let c = lake.iceberg_check("orders", "order_id");
    assert_eq!(c["rows"], c["duckdb_rows"], "{c}");
    assert_eq!(c["current"]["pyiceberg_equals_duckdb"], true, "{c}");
    let s = lake.summary("orders", "order_id");
    assert_eq!(s["duplicates"], 0, "{s}");
    let c = lake.rest_check(&rest, "live", "orders");
    assert_rest_is_lake(&c, "orders_changes");
    assert_rest_is_lake(&c, "orders");
}

/// `[maintenance] interval` makes `run --once` maintain both tables after its flush
/// (here after every flush, nothing kept back): deletes applied, one snapshot, no
/// unlisted file; without it, `run` leaves the delete files to `compact`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_run_maintains_the_tables_after_a_flush_when_configured() {
    let db = database("iceberg_run_maintains").await;
    db.seed(20, 2000).await;
    let lake = Lake::iceberg();
    let config = lake.config_with(&db.url, &db.name, SEED_TABLES, crate::support::KEEP_NOTHING);
    run_once(&config).await;
    let change = |round: i32| {
        format!(
            "UPDATE orders SET quantity = quantity + 1 WHERE order_id % 4 = {round};
             DELETE FROM orders WHERE order_id % 13 = {round};"
        )
    };
    db.exec(&change(0)).await;
    run_once(&config).await;
    let c = lake.iceberg_check("orders", "order_id");
    assert!(
        c["current"]["delete_files"].as_u64() > Some(0),
        "no interval, no maintenance: {c}"
    );
    let status = with_config(&["status"], &config).await;
    assert!(
        status.stdout.contains("last compaction: never"),
        "{}",
        status.stdout
    );
    let check = with_config(&["check"], &config).await;
    assert!(
        check.stdout.lines().any(|l| l.contains("maintenance")
            && l.contains("only `slot2lake compact`")
            && l.contains("(last: never); Iceberg snapshots kept 0s")),
        "{}",
        check.stdout
    );

    crate::support::edit_config(&config, |c| {
        c.replace("[maintenance]\n", "[maintenance]\ninterval = \"0s\"\n")
    });
    for round in 1..3 {
        db.exec(&change(round)).await;
        let run = run_once(&config).await;
        assert!(run.stderr.contains("compaction done"), "{}", run.stderr);
        lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
        lake.assert_matches(&db, "public.orders", "orders", "order_id");
        let c = assert_readers_agree(&lake, "orders", "order_id");
        assert_eq!(c["current"]["delete_files"], 0, "round {round}: {c}");
        assert_eq!(
            c["current"]["files_on_disk"], c["current"]["data_files"],
            "round {round}: {c}"
        );
        assert_eq!(lsns(&c).len(), 1, "round {round}: {c}");
    }
    let status = with_config(&["status"], &config).await;
    assert!(
        status.stdout.contains("last compaction: 2"),
        "{}",
        status.stdout
    );
}

/// `catalog.kind = "iceberg-rest"`: both tables of each source table are registered in
/// the REST catalog (signing in with client credentials) and moved to every commit of
/// the lake: a flush, a column added, a catalog left behind for a flush (caught up in
/// one commit), and `compact`'s expiry; pyiceberg's RestCatalog and DuckDB's REST
/// attach read through it what the lake's metadata holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_tables_are_kept_in_a_rest_catalog() {
    let mut rest = RestCatalog::start();
    let db = database("iceberg_rest").await;
    db.seed(20, 200).await;
    let lake = Lake::iceberg();
    let extra = format!("{}{KEEP_NOTHING}", rest.section("shop"));
    let config = lake.config_with(&db.url, &db.name, SEED_TABLES, &extra);

    let check = with_config(&["check"], &config).await;
    assert!(
        check.stdout.contains("namespace \"shop\" will be created"),
        "{}",
        check.stdout
    );
    let first = run_once(&config).await;
    for (folder, key) in [("orders", "order_id"), ("customers", "customer_id")] {
        let c = lake.rest_check(&rest, "shop", folder);
        let changes = assert_rest_is_lake(&c, &format!("{folder}_changes"));
        let current = assert_rest_is_lake(&c, folder);
        let lsn = lake.watermark(folder)["lsn"].clone();
        assert_eq!(changes["lsn"], lsn, "{c}");
        assert_eq!(current["lsn"], lsn, "{c}");
        lake.assert_current_matches(&db, &format!("public.{folder}"), folder, key);
    }
    let c = lake.rest_check(&rest, "shop", "orders");
    assert_eq!(c["orders"]["rows"], 200, "{c}");
    let views = with_config(&["catalog", "views"], &config).await;
    assert!(
        views.stdout.contains("attached to the REST catalog")
            && views.stdout.contains("FROM \"shop\".\"orders\";"),
        "{}",
        views.stdout
    );
    let registered = rest
        .requests()
        .iter()
        .filter(|r| r.contains("/register ") && r.ends_with(" 200"))
        .count();
    assert_eq!(registered, 4, "{:?}", rest.requests());

    // Changes and a new column: one commit each, the schema added through the catalog.
    db.exec(
        "UPDATE orders SET quantity = quantity + 1 WHERE order_id % 3 = 0;
         DELETE FROM orders WHERE order_id % 7 = 0;
         ALTER TABLE orders ADD COLUMN note text;
         INSERT INTO orders (customer_id, product_name, quantity, price, order_date, note)
           SELECT 1, 'late', 1, 2.5, current_date - i, 'n' || i FROM generate_series(1, 30) i;",
    )
    .await;
    let second = run_once(&config).await;
    let c = lake.rest_check(&rest, "shop", "orders");
    assert_rest_is_lake(&c, "orders_changes");
    assert_rest_is_lake(&c, "orders");
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    assert_eq!(
        c["orders"]["rows"].as_i64(),
        Some(db.count("SELECT count(*) FROM orders").await),
        "{c}"
    );

    // A flush the catalog does not hear of (as after a crash between the lake's commit
    // and the catalog's): the next one brings it both snapshots in one commit.
    edit_config(&config, |t| {
        t.replace("kind = \"iceberg-rest\"", "kind = \"local\"")
    });
    db.exec("UPDATE orders SET note = 'missed' WHERE order_id <= 10")
        .await;
    run_once(&config).await;
    let behind = lake.rest_check(&rest, "shop", "orders");
    assert_ne!(
        behind["orders"]["current"], behind["orders"]["lake_current"],
        "the catalog was not told: {behind}"
    );
    edit_config(&config, |t| {
        t.replace("kind = \"local\"", "kind = \"iceberg-rest\"")
    });
    db.exec("UPDATE orders SET note = 'caught up' WHERE order_id > 190")
        .await;
    let commits_before = rest.requests().len();
    run_once(&config).await;
    let c = lake.rest_check(&rest, "shop", "orders");
    assert_rest_is_lake(&c, "orders_changes");
    assert_rest_is_lake(&c, "orders");
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    let posts: Vec<String> = rest.requests()[commits_before..]
        .iter()
        .filter(|r| r.starts_with("POST ") && r.contains("/tables/orders"))
        .cloned()
        .collect();
    assert_eq!(posts.len(), 2, "one commit per table: {posts:?}");

    // The catalog down: the flush commits to the lake but does not finish (no watermark,
    // nothing acknowledged) and says why; once the catalog is back, the retried flush
    // commits nothing twice and brings the catalog along.
    rest.stop();
    edit_config(&config, |t| {
        format!("{t}\n[retry]\nrun_once_budget = \"2s\"\n")
    });
    let watermark = lake.watermark("orders");
    let snapshots = || {
        lake.iceberg_check("orders", "order_id")["snapshots"]
            .as_array()
            .map(Vec::len)
    };
    let snapshots_before = snapshots();
    db.exec("DELETE FROM orders WHERE order_id BETWEEN 100 AND 120")
        .await;
    let down = with_config(&["run", "--once"], &config).await;
    assert_ne!(down.code, 0, "{}", down.stderr);
    assert!(
        down.stderr.contains("iceberg rest catalog")
            && down
                .stderr
                .contains("the flush finishes once the catalog is updated")
            && down.stderr.contains("Connection refused"),
        "names the catalog, what is done and why: {}",
        down.stderr
    );
    assert_eq!(lake.watermark("orders"), watermark, "no watermark moved");
    let old_uri = rest.uri();
    rest.restart();
    edit_config(&config, |t| t.replace(&old_uri, &rest.uri()));
    run_once(&config).await;
    let c = lake.rest_check(&rest, "shop", "orders");
    assert_rest_is_lake(&c, "orders_changes");
    assert_rest_is_lake(&c, "orders");
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    assert_eq!(
        snapshots(),
        snapshots_before.map(|n| n + 1),
        "the retried flush committed once"
    );

    // Commits that lose to another writer are read again and retried, up to 5 in a row
    // (rest::COMMIT_ATTEMPTS): 4 losses, then it lands; past 5 the flush does not finish
    // and says why, and lands once the catalog takes commits again.
    let conflicts = |from: usize| {
        rest.requests()[from..]
            .iter()
            .filter(|r| r.contains("/tables/orders_changes ") && r.ends_with(" 409"))
            .count()
    };
    let from = rest.requests().len();
    rest.conflicts(4);
    db.exec("UPDATE orders SET quantity = 1 WHERE order_id BETWEEN 121 AND 130")
        .await;
    run_once(&config).await;
    assert_eq!(conflicts(from), 4);
    assert_rest_is_lake(&lake.rest_check(&rest, "shop", "orders"), "orders_changes");
    let watermark = lake.watermark("orders");
    rest.conflicts(1000);
    db.exec("UPDATE orders SET quantity = 2 WHERE order_id BETWEEN 121 AND 130")
        .await;
    let lost = with_config(&["run", "--once"], &config).await;
    assert_ne!(lost.code, 0, "{}", lost.stderr);
    assert!(
        lost.stderr
            .contains("5 commits in a row lost to another writer"),
        "{}",
        lost.stderr
    );
    assert_eq!(lake.watermark("orders"), watermark, "no watermark moved");
    rest.conflicts(0);
    run_once(&config).await;
    let c = lake.rest_check(&rest, "shop", "orders");
    assert_rest_is_lake(&c, "orders_changes");
    assert_rest_is_lake(&c, "orders");
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");

    // compact expires every snapshot but the current one and removes unlisted files
    // at once (KEEP_NOTHING): the catalog drops the same snapshots and keeps its own
    // metadata files, which it still reads.
    let compacted = with_config(&["compact"], &config).await;
    compacted.ok();
    for folder in ["orders", "customers"] {
        let c = lake.rest_check(&rest, "shop", folder);
        let t = assert_rest_is_lake(&c, folder);
        assert_eq!(t["snapshot_ids"].as_array().map(Vec::len), Some(1), "{c}");
        assert_rest_is_lake(&c, &format!("{folder}_changes"));
    }

    // Another writer commits to a table through the catalog: slot2lake will not drop
    // its snapshot, stops, and says what to do; done, the table is registered anew.
    rest.python("cat.load_table('shop.customers_changes').delete('customer_id = 3')");
    db.exec("UPDATE customers SET email = 'after the other writer' WHERE customer_id = 4")
        .await;
    let foreign = with_config(&["run", "--once"], &config).await;
    assert_ne!(foreign.code, 0, "{}", foreign.stderr);
    assert!(
        foreign.stderr.contains("that slot2lake did not commit")
            && foreign.stderr.contains("drop the table from the catalog")
            && !foreign.stderr.contains("retrying"),
        "stops at once with the remedy: {}",
        foreign.stderr
    );
    rest.python("cat.drop_table('shop.customers_changes')");
    run_once(&config).await;
    let c = lake.rest_check(&rest, "shop", "customers");
    assert_rest_is_lake(&c, "customers_changes");
    assert_rest_is_lake(&c, "customers");
    lake.assert_current_matches(&db, "public.customers", "customers", "customer_id");

    // The client secret and the token never reach the output.
    for run in [&first, &second, &compacted, &check, &down, &lost, &foreign] {
        for secret in ["client-s3cret", RestCatalog::TOKEN] {
            assert!(
                !run.stderr.contains(secret) && !run.stdout.contains(secret),
                "{secret} in the output"
            );
        }
    }
}

/// A REST catalog that accepts connections and never answers is reported in bounded
/// time (rest::REQUEST_TIMEOUT, 60 s), not waited on forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_rest_catalog_is_a_timeout_not_a_hang() {
    let port = crate::support::silent_port().await;
    let db = database("silent_rest").await;
    let lake = Lake::iceberg();
    let config = lake.config_with(
        &db.url,
        &db.name,
        SEED_TABLES,
        &format!(
            "[catalog]\nkind = \"iceberg-rest\"\nuri = \"http://127.0.0.1:{port}\"\nnamespace = \"shop\"\n"
        ),
    );
    let started = std::time::Instant::now();
    let run = with_config(&["check"], &config).await;
    let catalog = run.check_line("catalog");
    assert!(
        catalog.starts_with("FAIL") && catalog.contains("timed out"),
        "{catalog}"
    );
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(60) && took < std::time::Duration::from_secs(90),
        "check took {took:?}"
    );
}
