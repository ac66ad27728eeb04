//! Crashes at every step of the commit path (`--features failpoints`): the next run
//! finishes the work, every committed change is in the lake once, the latest state
//! equals the source, and no file is rewritten.

use std::collections::BTreeMap;
use std::time::SystemTime;

use slot2lake::failpoint as fp;

use crate::support::{database, run_once, slot2lake_env, with_config, Lake, TestDb, SEED_TABLES};

/// Every data file with its modification time.
fn data_files(lake: &Lake) -> BTreeMap<String, SystemTime> {
    ["customers", "orders"]
        .iter()
        .flat_map(|t| lake.files(t))
        .filter(|f| f.ends_with(".parquet"))
        .map(|f| {
            let t = std::fs::metadata(lake.root().join(&f))
                .and_then(|m| m.modified())
                .expect("mtime");
            (f, t)
        })
        .collect()
}

async fn crash_run(config: &std::path::Path, point: &str) {
    let run = slot2lake_env(
        &["run", "--once", "--config", &config.display().to_string()],
        &[("SLOT2LAKE_FAILPOINT", point)],
    )
    .await;
    assert_ne!(
        run.code, 0,
        "failpoint {point} was not reached:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!("failpoint {point}")),
        "{}",
        run.stderr
    );
}

fn assert_exactly_once(lake: &Lake, db: &TestDb) {
    lake.assert_matches(db, "public.customers", "customers", "customer_id");
    lake.assert_matches(db, "public.orders", "orders", "order_id");
    for (folder, key) in [("customers", "customer_id"), ("orders", "order_id")] {
        let s = lake.summary(folder, key);
        assert_eq!(s["duplicates"], 0, "{folder}: {s}");
    }
}

async fn crash_during_flush(point: &str) {
    crash_during_flush_into(point, Lake::new(), "crash").await;
}

/// Crashes a flush at `point` and runs again; returns the lake and the database.
async fn crash_during_flush_into(point: &str, lake: Lake, prefix: &str) -> (Lake, TestDb) {
    let db = database(&format!("{prefix}_{}", point.replace('-', "_"))).await;
    db.seed(30, 200).await;
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    db.exec(
        "UPDATE orders SET quantity = quantity + 1 WHERE order_id % 3 = 0;
         DELETE FROM orders WHERE order_id % 10 = 0;
         INSERT INTO customers (name) SELECT 'n' || i FROM generate_series(1, 5) i;",
    )
    .await;
    let confirmed = db.slot_confirmed(&db.name).await;
    crash_run(&config, point).await;
    if point != fp::AFTER_WATERMARKS && point != fp::AFTER_ACK {
        assert_eq!(
            db.slot_confirmed(&db.name).await,
            confirmed,
            "slot acknowledged before the watermark"
        );
    }
    let after_crash = data_files(&lake);
    db.exec("UPDATE customers SET email = 'later' WHERE customer_id < 4")
        .await;
    run_once(&config).await;
    let after_retry = data_files(&lake);
    for (file, mtime) in &after_crash {
        assert_eq!(
            after_retry.get(file),
            Some(mtime),
            "{file} was rewritten or removed"
        );
    }
    assert_exactly_once(&lake, &db);
    (lake, db)
}

/// An Iceberg lake crashed at `point` of a flush: after the rerun each table lists
/// exactly its files on disk, and no flush was committed twice.
async fn crash_during_iceberg_flush(point: &str) {
    let (lake, db) = crash_during_flush_into(point, Lake::iceberg(), "ice").await;
    lake.assert_current_matches(&db, "public.customers", "customers", "customer_id");
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    // The snapshot, the crashed flush, and for customers the flush after it.
    for (folder, key, snapshots) in [("customers", "customer_id", 3), ("orders", "order_id", 2)] {
        let c = lake.iceberg_check(folder, key);
        assert_eq!(
            c["current"]["pyiceberg_equals_duckdb"], true,
            "{folder}: {c}"
        );
        let current = c["current"]["snapshots"]
            .as_array()
            .expect("current snapshots");
        assert_eq!(
            current.len(),
            snapshots,
            "{folder}: current state committed once each: {c}"
        );
        assert_eq!(c["pyiceberg_equals_disk"], true, "{folder}: {c}");
        assert_eq!(c["duckdb_equals_disk"], true, "{folder}: {c}");
        assert_eq!(c["files_listed"], c["files_on_disk"], "{folder}: {c}");
        let commits: Vec<&str> = c["snapshots"]
            .as_array()
            .expect("snapshots")
            .iter()
            .map(|s| s["slot2lake.commit"].as_str().expect("commit id"))
            .collect();
        let mut unique = commits.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            commits.len(),
            "{folder}: committed twice: {c}"
        );
        assert_eq!(commits.len(), snapshots, "{folder}: {c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_crash_after_the_files_before_the_commit() {
    crash_during_iceberg_flush(fp::AFTER_FLUSH_FILES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_crash_between_two_tables_commits() {
    crash_during_iceberg_flush(fp::MID_ICEBERG_COMMITS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_crash_after_the_commit_before_the_watermark() {
    crash_during_iceberg_flush(fp::AFTER_ICEBERG_COMMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_while_writing_the_spool() {
    crash_during_flush(fp::MID_SPOOL_WRITE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_while_a_parquet_file_is_written() {
    crash_during_flush(fp::MID_PARQUET_WRITE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_ack_before_the_catalog() {
    crash_during_flush(fp::AFTER_ACK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_spool_is_sealed() {
    crash_during_flush(fp::AFTER_SPOOL_SEAL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_some_files_of_a_flush() {
    crash_during_flush(fp::MID_FLUSH_FILES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_files_before_the_watermark() {
    crash_during_flush(fp::AFTER_FLUSH_FILES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_watermark_before_the_ack() {
    crash_during_flush(fp::AFTER_WATERMARKS).await;
}

/// `restarts`: the crash loses the exported snapshot, so the first run starts over and
/// its snapshot includes the row inserted after the crash.
async fn crash_during_first_run(point: &str, partial_visible: bool, restarts: bool) {
    let db = database(&format!("crash_{}", point.replace('-', "_"))).await;
    db.seed(30, 200).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    crash_run(&config, point).await;
    if !partial_visible {
        assert!(
            data_files(&lake).is_empty(),
            "partial snapshot visible: {:?}",
            data_files(&lake)
        );
    }
    db.exec(
        "INSERT INTO orders (customer_id) VALUES (1); DELETE FROM customers WHERE customer_id = 2;",
    )
    .await;
    run_once(&config).await;
    assert_exactly_once(&lake, &db);
    assert_eq!(
        lake.query_i64(
            "orders",
            "SELECT count(*) FROM {t} WHERE change_type = 'SNAPSHOT'"
        ),
        if restarts { 201 } else { 200 },
        "one snapshot, not two"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_while_copying_the_first_snapshot() {
    crash_during_first_run(fp::MID_SNAPSHOT_COPY, false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_snapshot_is_staged() {
    crash_during_first_run(fp::AFTER_SNAPSHOT_STAGED, false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_while_moving_the_snapshot_into_place() {
    crash_during_first_run(fp::MID_SNAPSHOT_PUBLISH, true, false).await;
}

async fn current_lsn(db: &TestDb) -> slot2lake::lsn::Lsn {
    let text: String = db
        .client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);
    text.parse().expect("lsn")
}

/// A spool directory reused by a new deployment (same slot name, another cluster) holds
/// segments whose LSNs are ahead of the new server: they are discarded, not streamed
/// towards or flushed into the new lake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_left_by_a_slot_on_another_cluster_is_discarded() {
    let new_cluster = slot2lake::demo::TempCluster::start(&[]).expect("cluster");
    let new_db = crate::support::database_on(&new_cluster, "moved_new").await;
    new_db.seed(20, 100).await;
    let old_db = database("moved_old").await;
    old_db.seed(20, 100).await;
    // The old segments must lie ahead of everything the new cluster writes.
    let target = current_lsn(&new_db).await.0 + (64 << 20);
    while current_lsn(&old_db).await.0 < target {
        old_db
            .exec("SELECT pg_logical_emit_message(false, 'pad', 'x'); SELECT pg_switch_wal();")
            .await;
    }
    let spool = tempfile::tempdir().expect("spool dir");
    let extra = format!("[spool]\ndir = \"{}\"\n", spool.path().display());
    let old_lake = Lake::new();
    let old_config = old_lake.config_with(&old_db.url, "moved", SEED_TABLES, &extra);
    run_once(&old_config).await;
    old_db
        .exec("UPDATE orders SET quantity = 99 WHERE order_id < 10; DELETE FROM orders WHERE order_id = 50;")
        .await;
    crash_run(&old_config, fp::AFTER_SPOOL_SEAL).await;
    let segments = || {
        std::fs::read_dir(spool.path())
            .expect("spool")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .count()
    };
    let left = segments();
    assert!(left > 0, "the crash left no spooled segment");

    // The old lake on the new server: one clear error, and nothing is touched.
    let reused = old_lake.config_with(&new_db.url, "moved", SEED_TABLES, &extra);
    let run = with_config(&["run", "--once"], &reused).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("another cluster"), "{}", run.stderr);
    assert_eq!(segments(), left);
    assert_eq!(new_db.slot_confirmed("moved").await, None);

    let new_lake = Lake::new();
    let new_config = new_lake.config_with(&new_db.url, "moved", SEED_TABLES, &extra);
    let run = run_once(&new_config).await;
    assert!(run.stderr.contains("discarding them"), "{}", run.stderr);
    assert_exactly_once(&new_lake, &new_db);
}

/// Small files from many daily flushes, merged by `compact`, killed at each of its steps
/// and rerun: no row lost or duplicated, the latest state unchanged, and in the end one
/// file per partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_killed_at_any_step_finishes_on_rerun() {
    let db = database("crash_compact").await;
    db.seed(10, 300).await;
    let lake = Lake::new();
    let config = lake.config(&db, SEED_TABLES);
    run_once(&config).await;
    // A week of small daily flushes into the same old partitions.
    for day in 0..7 {
        db.exec(&format!(
            "UPDATE orders SET quantity = quantity + 1 WHERE order_id % 7 = {day};
             DELETE FROM orders WHERE order_id = {};",
            100 + day
        ))
        .await;
        run_once(&config).await;
    }
    let before: BTreeMap<String, usize> = partition_counts(&lake, "orders");
    assert!(before.values().any(|n| *n >= 5), "{before:?}");
    let rows_before = lake.query_i64("orders", "SELECT count(*) FROM {t}");
    let compact = |point| compact_at(&config, point);
    for point in [fp::MID_COMPACT_PUBLISH, fp::MID_COMPACT_DELETE] {
        let run = compact(Some(point)).await;
        assert_ne!(
            run.code, 0,
            "failpoint {point} not reached:\n{}{}",
            run.stdout, run.stderr
        );
        // Readable at every moment, and no change row is missing.
        lake.assert_matches(&db, "public.orders", "orders", "order_id");
    }
    let run = compact(None).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let after = partition_counts(&lake, "orders");
    assert!(after.values().all(|n| *n == 1), "{after:?}");
    assert_eq!(
        lake.query_i64("orders", "SELECT count(*) FROM {t}"),
        rows_before
    );
    assert_exactly_once(&lake, &db);
    lake.assert_view_matches(&config, &db, "public.orders", "orders", "order_id")
        .await;
    // Nothing left to do; later flushes and compactions carry on.
    let run = compact(None).await;
    assert!(
        run.stdout.contains("compact: 0 partitions"),
        "{}",
        run.stdout
    );
    db.exec("UPDATE orders SET price = price + 1 WHERE order_id % 5 = 0;")
        .await;
    run_once(&config).await;
    assert_exactly_once(&lake, &db);
}

/// An Iceberg lake after a week of small flushes: `compact` rewrites the current state
/// (deletes applied) and the changelog's small files, expires snapshots and removes
/// orphan files. Killed at each step and rerun: readers see the same rows throughout, and
/// in the end one file per partition, no delete file, and no file no snapshot lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_maintenance_killed_at_any_step_finishes_on_rerun() {
    let db = database("crash_ice_maint").await;
    db.seed(10, 300).await;
    let lake = Lake::iceberg();
    let config = lake.config_with(&db.url, &db.name, SEED_TABLES, crate::support::KEEP_NOTHING);
    run_once(&config).await;
    for day in 0..7 {
        db.exec(&format!(
            "UPDATE orders SET quantity = quantity + 1 WHERE order_id % 7 = {day};
             UPDATE orders SET order_id = order_id + 10000 WHERE order_id = {};
             DELETE FROM orders WHERE order_id = {};",
            50 + day,
            100 + day
        ))
        .await;
        run_once(&config).await;
    }
    let before = lake.iceberg_check("orders", "order_id");
    assert!(
        before["current"]["delete_files"].as_u64() > Some(0)
            && before["current"]["data_files"].as_u64() > Some(1),
        "{before}"
    );
    let compact = |point| compact_at(&config, point);
    for point in [
        fp::MID_ICEBERG_REWRITE,
        fp::AFTER_ICEBERG_REWRITE,
        fp::MID_ICEBERG_EXPIRY,
    ] {
        let run = compact(Some(point)).await;
        assert_ne!(
            run.code, 0,
            "failpoint {point} not reached:\n{}{}",
            run.stdout, run.stderr
        );
        lake.assert_matches(&db, "public.orders", "orders", "order_id");
        lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
        let c = lake.iceberg_check("orders", "order_id");
        assert_eq!(c["rows"], before["rows"], "{point}: {c}");
        assert_eq!(
            c["current"]["pyiceberg_equals_duckdb"], true,
            "{point}: {c}"
        );
    }
    let run = compact(None).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let orphans: u64 = run
        .stdout
        .split(" orphan files removed")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(
        orphans > 0,
        "the killed runs' files are orphans: {}",
        run.stdout
    );
    let c = lake.iceberg_check("orders", "order_id");
    assert_eq!(c["rows"], before["rows"], "{c}");
    assert_eq!(c["pyiceberg_equals_disk"], true, "{c}");
    assert_eq!(c["duckdb_equals_disk"], true, "{c}");
    assert_eq!(c["files_listed"], c["files_on_disk"], "{c}");
    assert_eq!(c["snapshots"].as_array().map(Vec::len), Some(1), "{c}");
    assert_eq!(c["current"]["delete_files"], 0, "{c}");
    assert_eq!(c["current"]["data_files"], 1, "{c}");
    assert_eq!(c["current"]["files_on_disk"], 1, "{c}");
    let counts = partition_counts(&lake, "orders");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    assert_exactly_once(&lake, &db);
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    lake.assert_current_matches(&db, "public.customers", "customers", "customer_id");

    // Flushes go on over the rewritten files: their rows are deleted by position too.
    db.exec("UPDATE orders SET price = price + 1 WHERE order_id % 5 = 0; DELETE FROM orders WHERE order_id % 11 = 0;")
        .await;
    run_once(&config).await;
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    assert_exactly_once(&lake, &db);
    let run = compact(None).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    lake.assert_current_matches(&db, "public.orders", "orders", "order_id");
    let c = lake.iceberg_check("orders", "order_id");
    assert_eq!(c["current"]["delete_files"], 0, "{c}");
    assert_eq!(c["files_listed"], c["files_on_disk"], "{c}");
}

/// Runs `compact`, aborting at failpoint `point` when given.
async fn compact_at(config: &std::path::Path, point: Option<&str>) -> crate::support::Run {
    let config = config.display().to_string();
    let env: Vec<(&str, &str)> = point
        .map(|p| ("SLOT2LAKE_FAILPOINT", p))
        .into_iter()
        .collect();
    slot2lake_env(&["compact", "--config", &config], &env).await
}

/// Data files per partition folder (Iceberg metadata left out).
fn partition_counts(lake: &Lake, folder: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for f in lake
        .files(folder)
        .into_iter()
        .filter(|f| f.ends_with(".parquet"))
    {
        if let Some((dir, _)) = f.rsplit_once('/') {
            *out.entry(dir.to_string()).or_default() += 1;
        }
    }
    out
}
