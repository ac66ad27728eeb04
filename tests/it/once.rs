//! `run --once`: first-run snapshot, streamed changes, the seed's layout and watermarks.

use crate::support::{database, run_once, slot2lake_env, Lake, SEED_TABLES};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_snapshots_then_streams_changes() {
    let db = database("first_run").await;
    db.seed(50, 400).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);

    let run = run_once(&config).await;
    assert!(run.stdout.contains("450 snapshot rows"), "{}", run.stdout);
    lake.assert_matches(&db, "public.customers", "customers", "customer_id");
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
    let s = lake.summary("orders", "order_id");
    assert_eq!(s["change_types"]["SNAPSHOT"], 400, "{s}");
    let wm = lake.watermark("orders");
    assert_eq!(wm["kind"], "snapshot");
    assert_eq!(lake.staging_leftovers(&db.name), Vec::<String>::new());

    db.exec(
        "INSERT INTO customers (name, email) VALUES ('New', 'new@example.com');
         UPDATE orders SET quantity = quantity + 10 WHERE order_id <= 20;
         DELETE FROM orders WHERE order_id BETWEEN 21 AND 30;
         INSERT INTO orders (customer_id, product_name, quantity, price) VALUES (1, 'Fresh', 1, 9.99);",
    )
    .await;
    let run = run_once(&config).await;
    assert!(run.stdout.contains("0 snapshot rows"), "{}", run.stdout);
    lake.assert_matches(&db, "public.customers", "customers", "customer_id");
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
    let s = lake.summary("orders", "order_id");
    assert_eq!(s["change_types"]["UPDATE"], 20, "{s}");
    assert_eq!(s["change_types"]["DELETE"], 10, "{s}");
    assert_eq!(s["change_types"]["INSERT"], 1, "{s}");
    assert_eq!(s["duplicates"], 0, "{s}");
    let wm = lake.watermark("orders");
    assert_eq!(wm["kind"], "changes");
    assert_eq!(
        db.slot_confirmed(&db.name).await.as_deref(),
        wm["lsn"].as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_where_limits_only_the_first_snapshot() {
    let db = database("snapshot_where").await;
    db.seed(20, 300).await;
    let lake = Lake::new();
    let tables = SEED_TABLES.replace(
        "partition_by = \"order_date\"",
        "partition_by = \"order_date\"\nsnapshot_where = \"order_date >= current_date - 9\"",
    );
    let config = lake.config(&db, &tables);
    run_once(&config).await;
    let expected = db
        .count("SELECT count(*) FROM orders WHERE order_date >= current_date - 9")
        .await;
    assert!(expected > 0 && expected < 300);
    assert_eq!(
        lake.query_i64(
            "orders",
            "SELECT count(*) FROM {t} WHERE change_type = 'SNAPSHOT'"
        ),
        expected
    );
    assert_eq!(
        lake.query_i64(
            "orders",
            "SELECT count(*) FROM {t} WHERE order_date < current_date - 9"
        ),
        0
    );
    // Changes to rows outside the window still flow (polling with a window would miss them).
    db.exec("UPDATE orders SET quantity = 99 WHERE order_date = current_date - 40")
        .await;
    let updated = db
        .count("SELECT count(*) FROM orders WHERE quantity = 99")
        .await;
    run_once(&config).await;
    assert_eq!(
        lake.query_i64(
            "orders",
            "SELECT count(*) FROM {t} WHERE change_type = 'UPDATE' AND quantity = 99"
        ),
        updated
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_transactions_leave_no_trace() {
    let db = database("rollback").await;
    db.seed(5, 10).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    db.exec("BEGIN; INSERT INTO orders (customer_id, product_name) VALUES (1, 'ghost'); UPDATE orders SET product_name = 'ghost' WHERE order_id = 1; DELETE FROM orders WHERE order_id = 2; ROLLBACK;")
        .await;
    db.exec("BEGIN; SAVEPOINT s; INSERT INTO orders (customer_id, product_name) VALUES (1, 'ghost'); ROLLBACK TO SAVEPOINT s; INSERT INTO orders (customer_id, product_name) VALUES (1, 'real'); COMMIT;")
        .await;
    run_once(&config).await;
    assert_eq!(
        lake.query_i64(
            "orders",
            "SELECT count(*) FROM {t} WHERE product_name = 'ghost'"
        ),
        0
    );
    assert_eq!(
        lake.query_i64(
            "orders",
            "SELECT count(*) FROM {t} WHERE change_type = 'DELETE'"
        ),
        0
    );
    assert_eq!(
        lake.query_i64(
            "orders",
            "SELECT count(*) FROM {t} WHERE product_name = 'real'"
        ),
        1
    );
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_one_transaction_keep_their_order() {
    let db = database("one_txn").await;
    db.seed(5, 10).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    db.exec(
        "BEGIN;
         UPDATE orders SET quantity = 1 WHERE order_id = 3;
         UPDATE orders SET quantity = 2 WHERE order_id = 3;
         UPDATE orders SET quantity = 3 WHERE order_id = 3;
         INSERT INTO orders (order_id, customer_id, product_name, quantity) VALUES (1000, 1, 'short-lived', 1);
         DELETE FROM orders WHERE order_id = 1000;
         UPDATE orders SET quantity = 4 WHERE order_id = 3;
         COMMIT;",
    )
    .await;
    run_once(&config).await;
    let rows = lake.query(
        "orders",
        "SELECT order_id, change_type, quantity, change_seq, change_lsn FROM {t} WHERE change_type <> 'SNAPSHOT' ORDER BY change_seq",
    );
    let seq: Vec<i64> = rows.iter().map(|r| r[3].as_i64().expect("seq")).collect();
    assert_eq!(seq, vec![1, 2, 3, 4, 5, 6], "{rows:?}");
    let lsns: std::collections::HashSet<String> = rows.iter().map(|r| r[4].to_string()).collect();
    assert_eq!(lsns.len(), 1, "one transaction, one change_lsn: {rows:?}");
    let quantities: Vec<i64> = rows
        .iter()
        .filter(|r| r[0] == 3)
        .map(|r| r[2].as_i64().expect("qty"))
        .collect();
    assert_eq!(quantities, vec![1, 2, 3, 4]);
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_moves_an_order_to_its_new_date_partition() {
    let db = database("move_partition").await;
    db.seed(5, 10).await;
    db.exec("UPDATE orders SET order_date = DATE '2025-01-15' WHERE order_id = 4")
        .await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    assert!(lake
        .files("orders")
        .iter()
        .any(|f| f.starts_with("orders/year=2025/month=01/day=15/orders_")));
    db.exec("UPDATE orders SET order_date = DATE '2025-07-24' WHERE order_id = 4")
        .await;
    run_once(&config).await;
    let files = lake.files("orders");
    let moved: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with("orders/year=2025/month=07/day=24/"))
        .collect();
    assert_eq!(moved.len(), 1, "{files:?}");
    let rows = lake.query(
        "orders",
        "SELECT change_type, year, month, day FROM {t} WHERE order_id = 4 ORDER BY change_lsn, change_seq",
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1][0], "UPDATE");
    let text = |v: &serde_json::Value| v.to_string().trim_matches('"').to_string();
    assert_eq!(
        (text(&rows[1][1]), text(&rows[1][2]), text(&rows[1][3])),
        ("2025".into(), "07".into(), "24".into())
    );
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicode_and_nulls_round_trip() {
    let db = database("unicode").await;
    db.seed(1, 1).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    let insert = "INSERT INTO customers (name, email, created_at) VALUES
        ('Zoë Ångström', NULL, NULL), ('山田太郎', 'yamada@例え.jp', now()), ('🦀 ferris', '', now()),
        (NULL, NULL, NULL), ('quote '' and \\ backslash', 'tab\there', now());
        INSERT INTO orders (customer_id, product_name, quantity, price, order_date) VALUES
        (NULL, 'Ünïcødé', NULL, NULL, NULL), (2, NULL, 0, 0, '2024-02-29');";
    db.exec(insert).await;
    run_once(&config).await;
    db.exec(insert).await;
    run_once(&config).await;
    lake.assert_matches(&db, "public.customers", "customers", "customer_id");
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
    // A NULL partition value lands in Hive's NULL partition.
    assert!(lake
        .files("orders")
        .iter()
        .any(|f| f.starts_with("orders/year=__HIVE_DEFAULT_PARTITION__/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_edge_values_keep_their_precision() {
    let db = database("numeric").await;
    db.exec(
        "CREATE TABLE amounts (id int PRIMARY KEY, small numeric(5,2), money numeric(10,2),
                               wide numeric(38,0), fine numeric(38,10), frac numeric(5,5), free numeric);",
    )
    .await;
    let rows = "(1, 999.99, 99999999.99, 99999999999999999999999999999999999999, 9999999999999999999999999999.9999999999, 0.99999, 123456789012345678901234567890.123456789)
        , (2, -999.99, -0.01, -99999999999999999999999999999999999999, -0.0000000001, -0.00001, -1e-20)
        , (3, 0, 0.1, 0, 0, 0, 0)
        , (4, 0.01, 1.10, 1, 1.5, 0.5, 'NaN')
        , (5, NULL, NULL, NULL, NULL, NULL, NULL)";
    db.exec(&format!("INSERT INTO amounts VALUES {rows}")).await;
    let lake = Lake::new();
    let config = lake.config(&db, "[[tables]]\nname = \"public.amounts\"\n");
    run_once(&config).await;
    db.exec(&format!("INSERT INTO amounts SELECT id + 10, small, money, wide, fine, frac, free FROM (VALUES {rows}) v(id, small, money, wide, fine, frac, free)")).await;
    db.exec("UPDATE amounts SET money = money - 0.01 WHERE id IN (1, 12)")
        .await;
    run_once(&config).await;
    lake.assert_matches(&db, "public.amounts", "amounts", "id");
    let s = lake.summary("amounts", "id");
    assert_eq!(s["types"]["small"], "decimal128(5, 2)", "{s}");
    assert_eq!(s["types"]["wide"], "decimal128(38, 0)", "{s}");
    assert_eq!(s["types"]["fine"], "decimal128(38, 10)", "{s}");
    assert_eq!(s["types"]["frac"], "decimal128(5, 5)", "{s}");
    // Unconstrained numeric keeps every digit as text (and NaN).
    assert_eq!(s["types"]["free"], "string", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_run_writes_nothing_but_still_advances_the_slot() {
    let db = database("idle").await;
    db.seed(5, 10).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    db.exec("UPDATE orders SET quantity = 7 WHERE order_id = 1")
        .await;
    run_once(&config).await;
    let files = (lake.files("orders"), lake.files("customers"));
    let wm = lake.read("etl-metadata/orders/watermark.json");
    let ts = lake.read("etl-metadata/customers/last_processed_timestamp.txt");
    let before = db.slot_confirmed(&db.name).await.expect("slot");
    // Only an unpublished table changes: nothing for the lake, yet the slot must advance.
    db.exec("CREATE TABLE other (id int); INSERT INTO other SELECT generate_series(1, 1000);")
        .await;
    run_once(&config).await;
    assert_eq!((lake.files("orders"), lake.files("customers")), files);
    assert_eq!(lake.read("etl-metadata/orders/watermark.json"), wm);
    assert_eq!(
        lake.read("etl-metadata/customers/last_processed_timestamp.txt"),
        ts
    );
    let after = db.slot_confirmed(&db.name).await.expect("slot");
    let lsn = |s: &str| s.parse::<slot2lake::lsn::Lsn>().expect("lsn");
    assert!(
        lsn(&after) > lsn(&before),
        "slot did not advance: {before} -> {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_follow_the_files_and_match_the_slot() {
    let db = database("watermark").await;
    db.seed(5, 20).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    let snap = lake.watermark("customers");
    db.exec("UPDATE customers SET name = 'x' WHERE customer_id = 1; DELETE FROM orders WHERE order_id = 1;").await;
    run_once(&config).await;
    for folder in ["customers", "orders"] {
        let wm = lake.watermark(folder);
        let lsn: slot2lake::lsn::Lsn = wm["lsn"].as_str().expect("lsn").parse().expect("lsn");
        assert!(lsn > snap["lsn"].as_str().expect("lsn").parse().expect("lsn"));
        assert_eq!(
            db.slot_confirmed(&db.name).await.as_deref(),
            wm["lsn"].as_str()
        );
        let max_change = lake.query_i64(folder, "SELECT max(change_lsn) FROM {t}");
        assert!(
            (max_change as u64) < lsn.0,
            "{folder}: change {max_change} not before watermark {lsn}"
        );
        let ts = lake.read(&format!(
            "etl-metadata/{folder}/last_processed_timestamp.txt"
        ));
        assert_eq!(ts, wm["timestamp"].as_str().expect("timestamp"));
        assert!(
            chrono::NaiveDateTime::parse_from_str(&ts, "%Y-%m-%d %H:%M:%S").is_ok(),
            "{ts:?}"
        );
        // Written after every data file it covers.
        let wm_time = std::fs::metadata(
            lake.root()
                .join(format!("etl-metadata/{folder}/watermark.json")),
        )
        .and_then(|m| m.modified())
        .expect("mtime");
        for f in lake.files(folder) {
            let t = std::fs::metadata(lake.root().join(&f))
                .and_then(|m| m.modified())
                .expect("mtime");
            assert!(t <= wm_time, "{f} is newer than its watermark");
        }
    }
    assert_eq!(lake.watermark("orders")["rows"], 1);
    assert_eq!(lake.watermark("customers")["rows"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_is_recorded_and_clears_the_latest_state() {
    let db = database("truncate").await;
    db.seed(5, 20).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    db.exec("TRUNCATE orders; INSERT INTO orders (customer_id, product_name) VALUES (1, 'after');")
        .await;
    run_once(&config).await;
    assert_eq!(
        lake.query_i64(
            "orders",
            "SELECT count(*) FROM {t} WHERE change_type = 'TRUNCATE'"
        ),
        1
    );
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_many_spool_segments_is_encoded_while_it_streams() {
    let db = database("once_backlog").await;
    db.exec(slot2lake::demo::SEED_SCHEMA).await;
    db.exec(&slot2lake::demo::seed_data_sql(100, 2_000, 3650))
        .await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    // About 30 MB of pgoutput over ten years of dates: well past the 8 MB segments that
    // `run --once` seals so that encoding follows the stream, in 20 transactions, with
    // updates that move orders to other dates and deletes.
    for _ in 0..20 {
        db.exec(
            "INSERT INTO orders (customer_id, product_name, quantity, price, order_date)
               SELECT 1 + i % 100, repeat('p', 40), i % 7, i % 1000, current_date - (i % 3650)
               FROM generate_series(1, 10000) i;",
        )
        .await;
    }
    db.exec(
        "UPDATE orders SET order_date = order_date - 400 WHERE order_id % 5 = 0;
         DELETE FROM orders WHERE order_id % 11 = 0;",
    )
    .await;
    let run = slot2lake_env(
        &["run", "--once", "--config", &config.display().to_string()],
        &[("RUST_LOG", "warn,slot2lake=info,slot2lake::spool=debug")],
    )
    .await;
    run.ok();
    let sealed = run.stderr.matches("sealed spool segment").count();
    assert!(sealed >= 3, "{sealed} segments sealed:\n{}", run.stderr);
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
    lake.assert_matches(&db, "public.customers", "customers", "customer_id");
    assert_eq!(lake.summary("orders", "order_id")["duplicates"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_marker_is_flushed_to_wal_at_once_even_with_asynchronous_commit() {
    // The walsender sends only flushed WAL: under synchronous_commit = off (the test
    // clusters' default) a marker left to the WAL writer would reach the stream only
    // after wal_writer_delay, at every flush.
    let cluster =
        slot2lake::demo::TempCluster::start(&["wal_writer_delay = 10000ms"]).expect("cluster");
    let db = crate::support::database_on(&cluster, "marker_flush").await;
    let setting = db
        .count("SELECT (current_setting('synchronous_commit') = 'off')::int::bigint")
        .await;
    assert_eq!(setting, 1, "the cluster must commit asynchronously");
    let url = slot2lake::config::SecretUrl::new(db.url.clone());
    let conn = slot2lake::source::connect(&url, std::time::Duration::from_secs(30))
        .await
        .expect("connect");
    let marker = slot2lake::source::introspect::emit_marker(&conn, "test")
        .await
        .expect("marker");
    let flushed = db
        .count(&format!(
            "SELECT (pg_current_wal_flush_lsn() >= '{marker}'::pg_lsn)::int::bigint"
        ))
        .await;
    assert_eq!(flushed, 1, "marker {marker} is not flushed yet");
}
