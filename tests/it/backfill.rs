//! Snapshots at scale: parallel CTID chunks, online backfills while changes stream,
//! crashes during a backfill, and re-snapshots when the slot is gone.

#[cfg(feature = "failpoints")]
use crate::support::slot2lake_env;
use crate::support::{
    database, edit_config, free_addr, run_once, with_config, Consumer, Lake, TestDb, SEED_TABLES,
};

fn assert_exact(lake: &Lake, db: &TestDb, table: &str, key: &str) {
    lake.assert_matches(db, &format!("public.{table}"), table, key);
    assert_eq!(lake.summary(table, key)["duplicates"], 0, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_chunked_snapshot_of_a_table_with_holes_and_dead_tuples() {
    let db = database("chunked").await;
    db.exec(
        "CREATE TABLE big (id bigint PRIMARY KEY, grp int, payload text) WITH (autovacuum_enabled = false);
         INSERT INTO big SELECT i * 3, i % 97, repeat(md5(i::text), 4) FROM generate_series(1, 300000) i;
         DELETE FROM big WHERE id % 7 = 0 OR id BETWEEN 30000 AND 90000;
         UPDATE big SET grp = -grp WHERE id % 5 = 0;",
    )
    .await;
    let pages = db.count("SELECT pg_relation_size('big') / 8192").await;
    assert!(
        pages >= 6000,
        "table too small to be chunked: {pages} pages"
    );
    let lake = Lake::new();
    let config = lake.config_with(&db.url, &db.name, "[[tables]]\nname = \"public.big\"\n", "");
    edit_config(&config, |t| {
        t.replace("[output]", "max_parallel = 3\n\n[output]")
    });
    let run = run_once(&config).await;
    assert_exact(&lake, &db, "big", "id");
    // Copied in CTID chunks by three workers, encoded together: one file.
    assert!(
        run.stderr.contains("workers=3") && !run.stderr.contains("chunks=1 "),
        "{}",
        run.stderr
    );
    assert_eq!(lake.files("big").len(), 1, "{:?}", lake.files("big"));
    assert_eq!(
        lake.query_i64(
            "big",
            "SELECT count(*) FROM {t} WHERE change_type = 'SNAPSHOT'"
        ),
        db.count("SELECT count(*) FROM big").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_to_the_config_is_backfilled_in_line_with_the_stream() {
    let db = database("added").await;
    db.seed(20, 200).await;
    let lake = Lake::new();
    let customers_only = "[[tables]]\nname = \"public.customers\"\n";
    let config = lake.config(&db, customers_only);
    run_once(&config).await;
    db.exec("UPDATE orders SET quantity = 5 WHERE order_id < 50; INSERT INTO customers (name) VALUES ('x');").await;
    let config = lake.config(&db, SEED_TABLES);
    let run = run_once(&config).await;
    assert!(run.stderr.contains("backfilling"), "{}", run.stderr);
    db.exec("DELETE FROM orders WHERE order_id % 4 = 0; UPDATE orders SET quantity = 6 WHERE order_id < 10;").await;
    run_once(&config).await;
    assert_exact(&lake, &db, "orders", "order_id");
    assert_exact(&lake, &db, "customers", "customer_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backfill_under_concurrent_writes_equals_the_source() {
    let db = database("online_backfill").await;
    db.seed(20, 300).await;
    let lake = Lake::new();
    let admin = free_addr();
    let config = lake.consumer_config(&db, SEED_TABLES, &admin);
    let consumer = Consumer::start(&config, &admin).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let url = db.url.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let c = crate::support::connect(&url).await;
            let mut i = 0i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                c.batch_execute(&format!(
                    "UPDATE orders SET quantity = {i} WHERE order_id = {};
                     INSERT INTO orders (customer_id, product_name) VALUES ({i}, 'during backfill');
                     DELETE FROM orders WHERE order_id = {};",
                    1 + i % 300,
                    2 + (i * 7) % 300
                ))
                .await
                .expect("write");
            }
            i
        })
    };
    let _cfg = config.display().to_string();
    let run = with_config(&["backfill", "--table", "public.orders"], &config).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    // The backfill's slot was temporary: only the consumer's slot is left.
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database() AND slot_name <> '{}'",
            db.name
        ))
        .await,
        0,
        "backfill left a replication slot behind"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let writes = writer.await.expect("writer");
    assert!(writes > 0);
    let run = with_config(&["flush"], &config).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, consumer.log());
    assert_exact(&lake, &db, "orders", "order_id");
    assert_eq!(
        lake.query_i64(
            "orders",
            "SELECT count(*) FROM {t} WHERE change_type = 'TRUNCATE' AND change_seq = -1"
        ),
        1
    );
    assert_eq!(consumer.stop().await, 0);
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_mid_copy_leaves_nothing_visible_and_runs_again() {
    let db = database("backfill_crash").await;
    db.seed(20, 300).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    db.exec("UPDATE orders SET quantity = 1 WHERE order_id < 100;")
        .await;
    run_once(&config).await;
    let before = lake.files("orders");
    let cfg = config.display().to_string();
    let run = slot2lake_env(
        &["backfill", "--table", "orders", "--config", &cfg],
        &[(
            "SLOT2LAKE_FAILPOINT",
            slot2lake::failpoint::MID_SNAPSHOT_COPY,
        )],
    )
    .await;
    assert_ne!(run.code, 0, "failpoint not reached: {}", run.stderr);
    assert_eq!(
        lake.files("orders"),
        before,
        "a partial backfill is visible"
    );
    db.exec("DELETE FROM orders WHERE order_id > 250;").await;
    let run = with_config(&["backfill", "--table", "orders"], &config).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    run_once(&config).await;
    assert_exact(&lake, &db, "orders", "order_id");
    assert_eq!(
        lake.query_i64(
            "orders",
            "SELECT count(*) FROM {t} WHERE change_type = 'TRUNCATE'"
        ),
        1
    );
    // Neither the discarded attempt nor the published one leaves folders in staging.
    assert_eq!(lake.staging_leftovers(&db.name), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_slot_is_resnapshotted_only_when_needed() {
    let db = database("when_needed").await;
    db.seed(20, 100).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    db.exec(&format!("SELECT pg_drop_replication_slot('{}')", db.name))
        .await;
    // Changes the lake never hears of as changes: they must not survive as stale rows.
    db.exec("DELETE FROM orders WHERE order_id <= 30; UPDATE customers SET name = 'changed';")
        .await;
    let _cfg = config.display().to_string();
    let run = with_config(&["run", "--once"], &config).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("when_needed"), "{}", run.stderr);
    edit_config(&config, |t| {
        t.replace("[output]", "snapshot = \"when_needed\"\n\n[output]")
    });
    let run = run_once(&config).await;
    assert!(
        run.stderr.contains("taking a new snapshot"),
        "{}",
        run.stderr
    );
    assert_exact(&lake, &db, "orders", "order_id");
    assert_exact(&lake, &db, "customers", "customer_id");
}
