//! `slot2lake verify`: agrees with an exact lake, and finds what a damaged one lacks.

use crate::support::{
    database, free_addr, moto, run_once, with_config, Consumer, Lake, SEED_TABLES,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_agrees_with_an_exact_lake_and_finds_a_damaged_one() {
    let db = database("verify_local").await;
    db.seed(30, 300).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    db.exec(
        "UPDATE orders SET quantity = 0 WHERE order_id % 3 = 0; DELETE FROM orders WHERE order_id % 5 = 0;
         TRUNCATE customers; INSERT INTO customers (name) SELECT 'c' || i FROM generate_series(1, 7) i;",
    )
    .await;
    // Changes not flushed yet: verify catches the lake up first (no consumer: run --once).
    let run = with_config(&["verify"], &config).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("ok      orders: source"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("ok      customers: source 7 rows, lake 7 rows"),
        "{}",
        run.stdout
    );

    // verify's own slot was temporary: nothing pins WAL once it is done.
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database() AND slot_name <> '{}'",
            db.name
        ))
        .await,
        0,
        "verify left a replication slot behind"
    );

    // Lose the files holding the updates: verify must name the damage.
    let sql = format!(
        "SELECT DISTINCT filename FROM read_parquet('{}/orders/**/*.parquet', filename = true) WHERE change_type = 'UPDATE'",
        lake.root().display()
    );
    let files: Vec<String> = lake
        .query("orders", &sql)
        .into_iter()
        .map(|r| r[0].as_str().expect("file").to_string())
        .collect();
    assert!(!files.is_empty());
    for f in &files {
        std::fs::remove_file(f).expect("remove");
    }
    let run = with_config(&["verify", "--table", "orders", "--json"], &config).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let t = &report["tables"][0];
    assert!(
        t["different"].as_u64().expect("n") + t["extra"].as_u64().expect("n") > 0,
        "{report}"
    );
    assert!(
        !t["examples"].as_array().expect("examples").is_empty(),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_works_with_a_running_consumer_and_an_s3_lake() {
    let moto = moto();
    let db = database("verify_s3").await;
    db.seed(20, 100).await;
    let lake = Lake::s3(moto, &db.name.replace('_', "-")).await;
    let admin = free_addr();
    let config = lake.consumer_config(&db, SEED_TABLES, &admin);
    let consumer = Consumer::start(&config, &admin).await;
    db.exec("UPDATE orders SET quantity = 3 WHERE order_id < 40; DELETE FROM customers WHERE customer_id = 2;").await;
    let run = with_config(&["verify"], &config).await;
    assert_eq!(
        run.code,
        0,
        "{}{}\n{}",
        run.stdout,
        run.stderr,
        consumer.log()
    );
    assert_eq!(run.stdout.matches("ok      ").count(), 2, "{}", run.stdout);
    assert_eq!(consumer.stop().await, 0);
}

/// A table with `snapshot_where`: source rows the first snapshot left out and no change
/// brought in are counted apart (not compared), not as missing; rows it took that the
/// lake lost are still missing, and rows brought in by changes are compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_counts_rows_outside_snapshot_where_apart() {
    let db = database("verify_where").await;
    // Over verify's 8,192-row batches on both sides of the condition.
    db.seed(10, 20_000).await;
    let lake = Lake::new();
    let tables = SEED_TABLES.replace(
        "name = \"public.orders\"\n",
        "name = \"public.orders\"\nsnapshot_where = \"order_id % 2 = 0\"\n",
    );
    let config = lake.config(&db, &tables);
    run_once(&config).await;
    // Some rows the snapshot left out come in by a change.
    db.exec("UPDATE orders SET quantity = quantity + 1 WHERE order_id % 10 IN (1, 2);")
        .await;
    let orders = |stdout: &str| -> serde_json::Value {
        let report: serde_json::Value = serde_json::from_str(stdout).expect("json");
        report["tables"][0].clone()
    };
    let run = with_config(&["verify", "--table", "orders", "--json"], &config).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let outside = db
        .count("SELECT count(*) FROM orders WHERE order_id % 2 = 1 AND order_id % 10 <> 1")
        .await;
    assert!(outside > 0);
    let t = orders(&run.stdout);
    assert_eq!(t["outside_snapshot_where"], outside, "{t}");
    assert_eq!(t["missing"], 0, "{t}");
    assert_eq!(
        t["lake_rows"].as_i64().expect("n") + outside,
        t["source_rows"].as_i64().expect("n"),
        "{t}"
    );
    let run = with_config(&["verify", "--table", "orders"], &config).await;
    assert!(
        run.stdout
            .contains(&format!("{outside} source rows outside snapshot_where")),
        "{}",
        run.stdout
    );

    // Lose the snapshot's files: the rows it took (and no change touched since) are
    // missing, not "outside"; the count outside stays what it was.
    let sql = format!(
        "SELECT DISTINCT filename FROM read_parquet('{}/orders/**/*.parquet', filename = true) WHERE change_type = 'SNAPSHOT'",
        lake.root().display()
    );
    for r in lake.query("orders", &sql) {
        std::fs::remove_file(r[0].as_str().expect("file")).expect("remove");
    }
    let run = with_config(&["verify", "--table", "orders", "--json"], &config).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let t = orders(&run.stdout);
    let lost = db
        .count("SELECT count(*) FROM orders WHERE order_id % 2 = 0 AND order_id % 10 <> 2")
        .await;
    assert_eq!(t["missing"], lost, "{t}");
    assert_eq!(t["outside_snapshot_where"], outside, "{t}");
}

/// With Iceberg tables verify also holds each current-state table to its changelog, and
/// names a current state whose deletes were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_holds_the_iceberg_current_state_to_its_changelog() {
    let db = database("verify_iceberg").await;
    db.seed(20, 200).await;
    let lake = Lake::iceberg();
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    db.exec(
        "UPDATE orders SET quantity = 0 WHERE order_id % 3 = 0; DELETE FROM orders WHERE order_id % 5 = 0;
         UPDATE orders SET order_id = order_id + 1000 WHERE order_id % 7 = 0;",
    )
    .await;
    let run = with_config(&["verify", "--json"], &config).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    for t in report["tables"].as_array().expect("tables") {
        let c = &t["current_state"];
        assert_eq!(c["rows"], t["lake_rows"], "{t}");
        assert_eq!(c["missing"], 0, "{t}");
    }

    // The current state loses its deletes: the deleted and replaced rows come back.
    let deletes: Vec<String> = lake
        .files("orders_current")
        .into_iter()
        .filter(|f| f.ends_with("-deletes.parquet"))
        .collect();
    assert!(!deletes.is_empty());
    for f in &deletes {
        let path = lake.root().join(f);
        let tmp = lake.root().join("emptied.parquet");
        lake.query(
            "orders",
            &format!(
                "COPY (SELECT file_path, pos FROM read_parquet('{}') WHERE false) TO '{}' (FORMAT parquet)",
                path.display(),
                tmp.display()
            ),
        );
        std::fs::rename(&tmp, &path).expect("replace");
    }
    let run = with_config(&["verify", "--table", "orders", "--json"], &config).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let t = &report["tables"][0];
    assert_eq!(t["missing"], 0, "the changelog is still right: {t}");
    let c = &t["current_state"];
    assert!(
        c["extra"].as_u64().expect("n") + c["different"].as_u64().expect("n") > 0,
        "{t}"
    );
    assert!(
        !c["examples"].as_array().expect("examples").is_empty(),
        "{t}"
    );
}
