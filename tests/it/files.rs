//! Files sized for the lake, not for the code's buffers: a snapshot or flush writes at
//! most one file per partition per `max_file_size` (per snapshot worker), whatever the
//! number of partitions and the order of the rows, also when the rows outgrow the
//! memory limit and are grouped on local disk.

use std::collections::BTreeMap;

use crate::support::{database, edit_config, run_once, Lake, SEED_TABLES};

/// Parquet files per partition folder of a table.
fn files_per_partition(lake: &Lake, folder: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for f in lake.files(folder) {
        if let Some((dir, _)) = f.rsplit_once('/') {
            *out.entry(dir.to_string()).or_default() += 1;
        }
    }
    out
}

/// The seed's orders spread round-robin over `days` dates (consecutive rows on different
/// dates: the order that used to close a file per row), with a memory limit the rows
/// outgrow, then a day of changes touching every date.
async fn spread(days: u32) {
    let db = database(&format!("spread_{days}")).await;
    db.exec(slot2lake::demo::SEED_SCHEMA).await;
    db.exec(&slot2lake::demo::seed_data_sql(100, 30_000, days))
        .await;
    let lake = Lake::new();
    let config = lake.config_with(
        &db.url,
        &db.name,
        SEED_TABLES,
        "[flush]\nmemory_limit = \"1MB\"\n",
    );
    run_once(&config).await;
    let snapshot = files_per_partition(&lake, "orders");
    assert_eq!(snapshot.len(), days as usize, "one folder per date");
    // 30k rows are one chunk (one snapshot worker): one file per partition.
    assert!(
        snapshot.values().all(|n| *n == 1),
        "more than one file in a partition: {:?}",
        snapshot
            .iter()
            .filter(|(_, n)| **n > 1)
            .take(5)
            .collect::<Vec<_>>()
    );
    let wm = lake.watermark("orders");
    assert_eq!(wm["files"], days, "{wm}");
    assert!(
        wm["file_sizes"]["median_bytes"].as_u64() >= wm["file_sizes"]["min_bytes"].as_u64()
            && wm["file_sizes"]["min_bytes"].as_u64() > Some(0),
        "{wm}"
    );

    // A day of changes over every date, in one transaction and in many.
    db.exec(&format!(
        "INSERT INTO orders (customer_id, product_name, quantity, price, order_date)
           SELECT 1, 'Dock', 1, 10, current_date - (i % {days}) FROM generate_series(1, 4000) i;
         UPDATE orders SET quantity = quantity + 1 WHERE order_id % 7 = 0;
         DELETE FROM orders WHERE order_id % 101 = 0;"
    ))
    .await;
    for i in 0..20 {
        db.exec(&format!(
            "UPDATE orders SET price = price + 1 WHERE order_id % 20 = {i};"
        ))
        .await;
    }
    run_once(&config).await;
    let after = files_per_partition(&lake, "orders");
    let new: BTreeMap<_, _> = after
        .iter()
        .map(|(p, n)| (p.clone(), n - snapshot.get(p).copied().unwrap_or(0)))
        .collect();
    // DELETEs carry only the key (default identity): they go to the NULL partition.
    assert!(
        new.values().all(|n| *n <= 1),
        "the flush wrote more than one file in a partition: {:?}",
        new.iter()
            .filter(|(_, n)| **n > 1)
            .take(5)
            .collect::<Vec<_>>()
    );
    let flushed = lake.watermark("orders");
    assert_eq!(
        flushed["files"].as_u64(),
        Some(new.values().filter(|n| **n > 0).count() as u64),
        "{flushed}"
    );
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
    lake.assert_matches(&db, "public.customers", "customers", "customer_id");
    let s = lake.summary("orders", "order_id");
    assert_eq!(s["duplicates"], 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_dates_get_one_file_each() {
    spread(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_years_of_dates_get_one_file_each() {
    spread(3650).await;
}

/// A partition bigger than `max_file_size` is split into files of about that size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_partition_rolls_over_at_max_file_size() {
    let db = database("rollover").await;
    db.exec(slot2lake::demo::SEED_SCHEMA).await;
    db.exec(&slot2lake::demo::seed_data_sql(10, 60_000, 2))
        .await;
    let lake = Lake::new();
    let config = lake.config_with(
        &db.url,
        &db.name,
        SEED_TABLES,
        "[flush]\nmemory_limit = \"1MB\"\n",
    );
    edit_config(&config, |t| {
        t.replace("[output]\n", "[output]\nmax_file_size = \"1MB\"\n")
    });
    run_once(&config).await;
    let files = files_per_partition(&lake, "orders");
    assert_eq!(files.len(), 2);
    // 30k rows of about 80 wire bytes per date: 2.4 MB, so three files of 1 MB.
    for (p, n) in &files {
        assert!((2..=3).contains(n), "{p}: {n} files");
    }
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
}

/// A table large enough to be split across both snapshot workers, whose rows outgrow the
/// memory limit in each: the workers group their rows on disk side by side, and each
/// partition's rows from both go into one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_workers_that_both_spill_keep_their_rows_apart() {
    let db = database("spill_workers").await;
    db.exec(slot2lake::demo::SEED_SCHEMA).await;
    // 600k rows: over 4,000 pages, so the snapshot is split into CTID chunks.
    db.exec(&slot2lake::demo::seed_data_sql(10, 600_000, 400))
        .await;
    let lake = Lake::new();
    let config = lake.config_with(
        &db.url,
        &db.name,
        "[[tables]]\nname = \"public.orders\"\npartition_by = \"order_date\"\n",
        "",
    );
    edit_config(&config, |t| {
        t.replace("publication = ", "max_parallel = 2\npublication = ")
            .replace("[output]\n", "[flush]\nmemory_limit = \"2MB\"\n[output]\n")
    });
    let run = run_once(&config).await;
    assert!(
        run.stderr.contains("workers=2") && !run.stderr.contains("chunks=1 "),
        "{}",
        run.stderr
    );
    let files = files_per_partition(&lake, "orders");
    assert_eq!(files.len(), 400);
    assert!(files.values().all(|n| *n == 1), "{files:?}");
    lake.assert_matches(&db, "public.orders", "orders", "order_id");
    assert_eq!(lake.summary("orders", "order_id")["duplicates"], 0);
}

/// `[maintenance] interval` makes `run --once` compact after its flush once the last
/// compaction is that old (here: after every flush): a week of small daily flushes into
/// the same partitions still leaves one file per partition, with every change row kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_compacts_after_a_flush_when_maintenance_has_an_interval() {
    let db = database("run_compacts").await;
    db.seed(10, 300).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    let flush = |day: i32| {
        format!(
            "UPDATE orders SET quantity = quantity + 1 WHERE order_id % 7 = {day};
             DELETE FROM orders WHERE order_id = {};",
            100 + day
        )
    };
    // Without an interval, `run` never compacts: small files pile up.
    for day in 0..3 {
        db.exec(&flush(day)).await;
        run_once(&config).await;
    }
    let piled = files_per_partition(&lake, "orders");
    assert!(piled.values().any(|n| *n >= 3), "{piled:?}");
    let rows = lake.query_i64("orders", "SELECT count(*) FROM {t}");

    edit_config(&config, |c| {
        format!("{c}\n[maintenance]\ninterval = \"0s\"\n")
    });
    for day in 3..6 {
        db.exec(&flush(day)).await;
        let run = run_once(&config).await;
        assert!(run.stderr.contains("compaction done"), "{}", run.stderr);
        let after = files_per_partition(&lake, "orders");
        assert!(after.values().all(|n| *n == 1), "day {day}: {after:?}");
        lake.assert_matches(&db, "public.orders", "orders", "order_id");
    }
    // Three more flushes' change rows, none lost or doubled by the merges.
    let changed = db
        .count("SELECT count(*) FROM orders WHERE order_id % 7 IN (3, 4, 5)")
        .await;
    assert_eq!(
        lake.query_i64("orders", "SELECT count(*) FROM {t}"),
        rows + changed + 3
    );
    let status = crate::support::with_config(&["status"], &config).await;
    assert!(
        status.stdout.contains("last compaction: 2"),
        "{}",
        status.stdout
    );
    let check = crate::support::with_config(&["check"], &config).await;
    assert!(
        check
            .stdout
            .lines()
            .any(|l| l.contains("maintenance") && l.contains("after a flush every 0s (last: 2")),
        "{}",
        check.stdout
    );
    // A damaged record of the last compaction is named, not shown as "never".
    let record = lake
        .root()
        .join(format!("_slot2lake/{}/maintenance.json", db.name));
    std::fs::write(&record, "{").expect("damage");
    let check = crate::support::with_config(&["check"], &config).await;
    assert!(
        check.stdout.lines().any(|l| l.contains("maintenance")
            && l.contains("maintenance.json")
            && l.contains("remove")),
        "{}",
        check.stdout
    );
}
