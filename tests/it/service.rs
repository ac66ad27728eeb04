//! `slot2lake run`: the always-on consumer, its flush triggers, restarts and WAL retention.

use slot2lake::demo::TempCluster;
use slot2lake::lsn::Lsn;

use crate::support::{
    database, database_on, free_addr, run_once, wait_until, with_config, Consumer, Lake, TestDb,
    SEED_TABLES,
};

fn service_config(lake: &Lake, db: &TestDb, admin: &str, spool: &str) -> std::path::PathBuf {
    service_config_via(lake, db, &db.url, admin, spool)
}

/// [`service_config`] reaching the database at `url` (through a proxy).
fn service_config_via(
    lake: &Lake,
    db: &TestDb,
    url: &str,
    admin: &str,
    spool: &str,
) -> std::path::PathBuf {
    lake.config_with(
        url,
        &db.name,
        SEED_TABLES,
        &format!("[spool]\nack_interval = \"1s\"\n{spool}\n[admin]\nlisten = \"{admin}\"\n"),
    )
}

async fn flush(config: &std::path::Path) -> crate::support::Run {
    let run = with_config(&["flush"], config).await;
    assert_eq!(run.code, 0, "flush failed: {}{}", run.stdout, run.stderr);
    run
}

fn assert_exact(lake: &Lake, db: &TestDb) {
    lake.assert_matches(db, "public.customers", "customers", "customer_id");
    lake.assert_matches(db, "public.orders", "orders", "order_id");
    for (folder, key) in [("customers", "customer_id"), ("orders", "order_id")] {
        assert_eq!(lake.summary(folder, key)["duplicates"], 0, "{folder}");
    }
}

async fn lsn(db: &TestDb, sql: &str) -> Lsn {
    let s: String = db.client.query_one(sql, &[]).await.expect(sql).get(0);
    s.parse().expect("lsn")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_and_flush_requests() {
    let db = database("svc_flush").await;
    db.seed(20, 100).await;
    let lake = Lake::new();
    let admin = free_addr();
    let config = service_config(&lake, &db, &admin, "");
    let consumer = Consumer::start(&config, &admin).await;
    let writer_url = db.url.clone();
    let writes = tokio::spawn(async move {
        let c = crate::support::connect(&writer_url).await;
        for i in 0..40 {
            c.batch_execute(&format!(
                "INSERT INTO orders (customer_id, product_name) VALUES ({i}, 'w{i}');
                 UPDATE orders SET quantity = {i} WHERE order_id = {};
                 DELETE FROM customers WHERE customer_id = {};",
                1 + i % 100,
                1 + i % 20
            ))
            .await
            .expect("write");
        }
    });
    // A flush while writes are still arriving: later changes wait for the next one.
    flush(&config).await;
    writes.await.expect("writer");
    let run = flush(&config).await;
    assert!(run.stdout.contains("flush committed"), "{}", run.stdout);
    assert_exact(&lake, &db);
    let metrics = consumer.get("/metrics").await;
    for name in [
        "slot2lake_events_received_total",
        "slot2lake_flushes_total",
        "slot2lake_spool_bytes",
        "slot2lake_acked_lsn",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    let status: serde_json::Value =
        serde_json::from_str(&consumer.get("/status").await).expect("status json");
    assert_eq!(status["tables"]["orders"]["kind"], "changes", "{status}");
    assert_eq!(consumer.get("/health").await.trim(), "ok");
    assert_eq!(consumer.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_restart_lose_and_repeat_nothing() {
    let db = database("svc_restart").await;
    db.seed(10, 50).await;
    let lake = Lake::new();
    let admin = free_addr();
    let config = service_config(&lake, &db, &admin, "");
    let consumer = Consumer::start(&config, &admin).await;
    db.exec("UPDATE orders SET quantity = 42 WHERE order_id <= 25; INSERT INTO customers (name) VALUES ('a');").await;
    let target = lsn(&db, "SELECT pg_current_wal_lsn()::text").await;
    wait_until(60, "the slot to be acknowledged", || async {
        db.slot_confirmed(&db.name)
            .await
            .and_then(|s| s.parse::<Lsn>().ok())
            .is_some_and(|c| c >= target)
    })
    .await;
    assert_eq!(consumer.stop().await, 0);
    db.exec("DELETE FROM orders WHERE order_id > 40; UPDATE customers SET name = 'b';")
        .await;
    let consumer = Consumer::start(&config, &admin).await;
    db.exec("INSERT INTO orders (customer_id) VALUES (7);")
        .await;
    flush(&config).await;
    assert_exact(&lake, &db);
    assert_eq!(consumer.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_before_a_flush_reaches_its_cut_commits_nothing_partial() {
    let db = database("svc_term_mid_flush").await;
    db.seed(10, 50).await;
    let lake = Lake::new();
    let admin = free_addr();
    let config = service_config(&lake, &db, &admin, "");
    let consumer = Consumer::start(&config, &admin).await;
    assert_eq!(consumer.stop().await, 0);
    // A backlog that takes the server seconds to decode: the flush asked for below starts
    // at once and is still waiting for its marker's commit behind it.
    db.exec("INSERT INTO orders (customer_id, quantity) SELECT 1 + i % 10, i FROM generate_series(1, 400000) i;")
        .await;
    let consumer = Consumer::start(&config, &admin).await;
    let asked = {
        let config = config.clone();
        tokio::spawn(async move { with_config(&["flush"], &config).await })
    };
    wait_until(60, "the flush to start", || async {
        consumer.log().contains("flush started")
    })
    .await;
    let log_at_term = consumer.log();
    assert_eq!(consumer.stop().await, 0);
    let answer = asked.await.expect("flush request");
    if !log_at_term.contains("flush done") {
        // Stopped before the cut: the flush must not have committed what it had.
        assert_ne!(answer.code, 0, "{}", answer.stdout);
        assert!(
            answer.stderr.contains("taken again by the next run"),
            "{}",
            answer.stderr
        );
    }
    let consumer = Consumer::start(&config, &admin).await;
    flush(&config).await;
    assert_exact(&lake, &db);
    assert_eq!(consumer.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_a_running_consumer() {
    let cluster = TempCluster::start(&[]).expect("cluster");
    let db = database_on(&cluster, "svc_pg_restart").await;
    db.seed(10, 50).await;
    let lake = Lake::new();
    let admin = free_addr();
    let config = service_config(&lake, &db, &admin, "");
    let consumer = Consumer::start(&config, &admin).await;
    db.exec("UPDATE orders SET quantity = 1 WHERE order_id % 2 = 0;")
        .await;
    cluster.pg_ctl(&["stop", "-m", "fast"]).expect("stop");
    // While the server is down the consumer stays up and says why it is degraded.
    wait_until(60, "/health to report the lost source", || async {
        let h = consumer.get("/health").await;
        h.starts_with("degraded") && h.contains("source:")
    })
    .await;
    cluster.pg_ctl(&["start"]).expect("start");
    wait_until(60, "/health to recover", || async {
        consumer.get("/health").await.trim() == "ok"
    })
    .await;
    let metrics = consumer.get("/metrics").await;
    assert!(
        metrics.contains("slot2lake_retries_total{step=\"source\"}"),
        "{metrics}"
    );
    let db = TestDb {
        client: crate::support::connect(&db.url).await,
        ..db
    };
    db.exec("UPDATE orders SET quantity = 2 WHERE order_id % 3 = 0; INSERT INTO customers (name) VALUES ('after restart');").await;
    flush(&config).await;
    assert_exact(&lake, &db);
    assert!(consumer.log().contains("reconnected"), "{}", consumer.log());
    assert_eq!(consumer.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_size_cap_flushes_without_being_asked() {
    let db = database("svc_cap").await;
    db.seed(5, 5).await;
    let lake = Lake::new();
    let admin = free_addr();
    let config = service_config(
        &lake,
        &db,
        &admin,
        "max_spool_bytes = \"1MB\"\nsegment_size = \"256KB\"",
    );
    let consumer = Consumer::start(&config, &admin).await;
    db.exec("INSERT INTO orders (customer_id, product_name) SELECT i, repeat('x', 100) FROM generate_series(1, 20000) i;").await;
    wait_until(120, "a flush triggered by the spool size", || async {
        std::fs::read_to_string(lake.root().join("etl-metadata/orders/watermark.json"))
            .is_ok_and(|w| w.contains("\"changes\""))
    })
    .await;
    assert!(
        consumer.log().contains("max_spool_bytes"),
        "{}",
        consumer.log()
    );
    assert_eq!(consumer.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_large_transaction_leaves_nothing() {
    let db = database("svc_big_rollback").await;
    db.seed(5, 5).await;
    let lake = Lake::new();
    let admin = free_addr();
    let config = service_config(&lake, &db, &admin, "");
    let consumer = Consumer::start(&config, &admin).await;
    db.exec("BEGIN; INSERT INTO orders (customer_id, product_name) SELECT i, 'rolled back' FROM generate_series(1, 200000) i; ROLLBACK;").await;
    db.exec("INSERT INTO orders (customer_id, product_name) VALUES (1, 'kept');")
        .await;
    flush(&config).await;
    assert_eq!(
        lake.query_i64(
            "orders",
            "SELECT count(*) FROM {t} WHERE product_name = 'rolled back'"
        ),
        0
    );
    assert_eq!(
        lake.query_i64(
            "orders",
            "SELECT count(*) FROM {t} WHERE change_type = 'INSERT'"
        ),
        1
    );
    assert_exact(&lake, &db);
    assert_eq!(consumer.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_wal_retention_bounded_while_another_table_is_busy() {
    let db = database("svc_heartbeat").await;
    db.seed(5, 5).await;
    db.exec("CREATE TABLE noise (id bigint, payload text);")
        .await;
    let lake = Lake::new();
    let admin = free_addr();
    let config = service_config(&lake, &db, &admin, "");
    let consumer = Consumer::start(&config, &admin).await;
    let start = lsn(&db, "SELECT pg_current_wal_lsn()::text").await;
    for _ in 0..8 {
        db.exec("INSERT INTO noise SELECT i, repeat('n', 200) FROM generate_series(1, 40000) i;")
            .await;
    }
    let end = lsn(&db, "SELECT pg_current_wal_lsn()::text").await;
    assert!(
        end.0 - start.0 > 64 << 20,
        "wrote only {} bytes of WAL",
        end.0 - start.0
    );
    // No published table changed, yet the slot must move past the noise, releasing its WAL.
    wait_until(
        60,
        "the slot to confirm past the unpublished writes",
        || async {
            db.slot_confirmed(&db.name)
                .await
                .and_then(|s| s.parse::<Lsn>().ok())
                .is_some_and(|c| c >= end)
        },
    )
    .await;
    wait_until(60, "restart_lsn to follow", || async {
        let retained = lsn(
            &db,
            &format!(
                "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = '{}'",
                db.name
            ),
        )
        .await;
        retained.0 + (16 << 20) >= end.0
    })
    .await;
    assert_eq!(consumer.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_flushes_what_a_killed_consumer_left_in_the_spool() {
    let db = database("svc_killed").await;
    db.seed(10, 30).await;
    let lake = Lake::new();
    let admin = free_addr();
    let config = service_config(&lake, &db, &admin, "");
    let consumer = Consumer::start(&config, &admin).await;
    db.exec("UPDATE orders SET quantity = 9 WHERE order_id < 10; DELETE FROM customers WHERE customer_id = 3;").await;
    let target = lsn(&db, "SELECT pg_current_wal_lsn()::text").await;
    wait_until(60, "the changes to be spooled and acknowledged", || async {
        db.slot_confirmed(&db.name)
            .await
            .and_then(|s| s.parse::<Lsn>().ok())
            .is_some_and(|c| c >= target)
    })
    .await;
    consumer.kill().await;
    // The slot no longer has these changes; only the spool does.
    run_once(&config).await;
    assert_exact(&lake, &db);
    assert_eq!(
        lake.query_i64(
            "orders",
            "SELECT count(*) FROM {t} WHERE quantity = 9 AND change_type = 'UPDATE'"
        ),
        9
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_without_a_consumer_is_one_clear_error() {
    let db = database("svc_none").await;
    let lake = Lake::new();
    let admin = free_addr();
    let config = service_config(&lake, &db, &admin, "");
    let run = with_config(&["flush"], &config).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains(&format!("no slot2lake consumer is running at {admin}")),
        "{}",
        run.stderr
    );
}

/// A second process on the same slot stops before touching the lake: a `run --once`
/// beside a running consumer writes nothing, leaves the consumer's temp folder and
/// intent alone, and the consumer's next flush succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_beside_a_running_consumer_changes_nothing() {
    let db = database("second_writer").await;
    db.seed(20, 100).await;
    let lake = Lake::new();
    let admin = free_addr();
    let config = service_config(&lake, &db, &admin, "");
    let consumer = Consumer::start(&config, &admin).await;
    db.exec("UPDATE orders SET quantity = quantity + 1 WHERE order_id % 4 = 0;")
        .await;
    let before = lake.files("orders");
    // A file the consumer is writing in its temp folder: not the second process's to remove.
    let tmp = lake.root().join("_slot2lake").join(&db.name).join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    std::fs::write(tmp.join("in-progress.parquet.tmp"), b"x").expect("tmp file");
    let run = with_config(&["run", "--once"], &config).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("in use"), "{}", run.stderr);
    assert!(!run.stderr.contains("finishing a flush"), "{}", run.stderr);
    assert_eq!(
        lake.files("orders"),
        before,
        "the second process wrote files"
    );
    assert!(
        tmp.join("in-progress.parquet.tmp").exists(),
        "the second process cleaned the consumer's temp folder"
    );
    flush(&config).await;
    assert_eq!(consumer.stop().await, 0);
    assert_exact(&lake, &db);
}

/// Leaves sealed, acknowledged (and, with a mirror, uploaded) spool segments in `spool`:
/// the slot no longer has their changes.
async fn spool_acknowledged_changes(
    config: &std::path::Path,
    admin: &str,
    db: &TestDb,
    spool: &std::path::Path,
) {
    let consumer = Consumer::start(config, admin).await;
    // After the first-run snapshot, so the changes go through the spool.
    wait_until(60, "the consumer to stream", || async {
        consumer.get("/health").await.trim() == "ok"
    })
    .await;
    db.exec("UPDATE orders SET quantity = 42 WHERE order_id <= 30; DELETE FROM customers WHERE customer_id = 2;").await;
    let target = lsn(db, "SELECT pg_current_wal_lsn()::text").await;
    let sealed = || {
        std::fs::read_dir(spool)
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.ends_with(".seg") && !n.ends_with(".open.seg")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    wait_until(60, "the changes to be spooled and acknowledged", || async {
        sealed() > 0
            && db
                .slot_confirmed(&db.name)
                .await
                .and_then(|s| s.parse::<Lsn>().ok())
                .is_some_and(|c| c >= target)
    })
    .await;
    assert_eq!(consumer.stop().await, 0);
}

/// Flips a byte in the middle of every sealed segment; returns them.
/// What happens to the spool's sealed segments.
#[derive(Clone, Copy)]
enum Damage {
    /// A byte flipped in the middle.
    Corrupt,
    /// Deleted.
    Delete,
}

fn damage_segments(dir: &std::path::Path, damage: Damage) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("spool dir").flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".seg") || name.ends_with(".open.seg") {
            continue;
        }
        let mut bytes = std::fs::read(&p).expect("segment");
        if bytes.len() < 16 {
            continue;
        }
        if let Damage::Delete = damage {
            std::fs::remove_file(&p).expect("delete");
            out.push(p);
            continue;
        }
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xFF;
        std::fs::write(&p, bytes).expect("corrupt");
        out.push(p);
    }
    out
}

/// A lake whose spool (in its own folder, at `location`) holds acknowledged segments,
/// each then corrupted or deleted; returns them with the config.
struct CorruptSpool {
    db: TestDb,
    lake: Lake,
    config: std::path::PathBuf,
    damaged: Vec<std::path::PathBuf>,
    _spool: tempfile::TempDir,
}

async fn corrupt_spool(name: &str, location: &str, damage: Damage) -> CorruptSpool {
    let db = database(name).await;
    db.seed(10, 50).await;
    let lake = Lake::new();
    let spool = tempfile::tempdir().expect("spool dir");
    let admin = free_addr();
    let config = service_config(
        &lake,
        &db,
        &admin,
        &format!(
            "dir = \"{}\"\nlocation = \"{location}\"\n",
            spool.path().display()
        ),
    );
    spool_acknowledged_changes(&config, &admin, &db, spool.path()).await;
    let damaged = damage_segments(spool.path(), damage);
    assert!(!damaged.is_empty(), "no sealed segment");
    CorruptSpool {
        db,
        lake,
        config,
        damaged,
        _spool: spool,
    }
}

/// `status` warns about each table's lost changes until that table is backfilled, and
/// only until then.
async fn warned_until_backfilled(config: &std::path::Path) {
    for table in ["orders", "customers"] {
        let status = with_config(&["status"], config).await;
        assert!(
            status
                .stdout
                .contains(&format!("WARNING: changes of {table} in spool segment(s)")),
            "{}",
            status.stdout
        );
        let run = with_config(&["backfill", "--table", table], config).await;
        assert_eq!(run.code, 0, "{}", run.stderr);
        let status = with_config(&["status"], config).await;
        assert!(
            !status
                .stdout
                .contains(&format!("WARNING: changes of {table}")),
            "{}",
            status.stdout
        );
    }
}

/// A mirrored spool repairs damage from the mirror: the run says so (`logged`), the lake
/// equals the source, and `status` has nothing to warn about.
async fn mirror_repairs(name: &str, damage: Damage, logged: &str) {
    let CorruptSpool {
        db,
        lake,
        config,
        _spool,
        ..
    } = corrupt_spool(name, "output", damage).await;
    let run = run_once(&config).await;
    assert!(run.stderr.contains(logged), "{}", run.stderr);
    assert_exact(&lake, &db);
    let status = with_config(&["status"], &config).await;
    assert!(!status.stdout.contains("WARNING"), "{}", status.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_segment_is_replaced_by_its_mirrored_copy() {
    mirror_repairs(
        "corrupt_mirrored",
        Damage::Corrupt,
        "with the mirror's copy",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_segment_without_a_mirror_stays_reported_until_backfilled() {
    let CorruptSpool {
        db,
        lake,
        config,
        damaged,
        _spool,
    } = corrupt_spool("corrupt_local", "local", Damage::Corrupt).await;
    // The flush stops on it, names it and the repair, and acknowledges nothing more.
    let run = with_config(&["run", "--once"], &config).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("is corrupt"), "{}", run.stderr);
    assert!(run.stderr.contains("backfill"), "{}", run.stderr);
    // Following the advice (move it aside) lets the flushes go on, but the loss stays on
    // record: `status` warns for every table until each is backfilled.
    let aside = tempfile::tempdir().expect("aside");
    for p in &damaged {
        std::fs::rename(p, aside.path().join(p.file_name().expect("name"))).expect("move aside");
    }
    run_once(&config).await;
    assert_ne!(
        lake.query_i64(
            "orders",
            "SELECT count(*) FROM {t} WHERE quantity = 42 AND change_type = 'UPDATE'"
        ),
        30,
        "the lost changes cannot be in the lake"
    );
    warned_until_backfilled(&config).await;
    assert_exact(&lake, &db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_segment_comes_back_from_the_mirror() {
    mirror_repairs(
        "missing_mirrored",
        Damage::Delete,
        "restored segment from the mirror",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_segment_without_a_mirror_is_named_and_stays_reported_until_backfilled() {
    let CorruptSpool {
        db,
        lake,
        config,
        damaged,
        _spool,
    } = corrupt_spool("missing_local", "local", Damage::Delete).await;
    // Never skipped in silence: the run stops once, naming the segments, the LSN range
    // and the repair.
    let run = with_config(&["run", "--once"], &config).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("are missing from"), "{}", run.stderr);
    for p in &damaged {
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        assert!(
            run.stderr.contains(&name),
            "{name} not named: {}",
            run.stderr
        );
    }
    assert!(run.stderr.contains("backfill --table"), "{}", run.stderr);
    // The loss is on record; runs go on, and `status` warns until each table is backfilled.
    run_once(&config).await;
    warned_until_backfilled(&config).await;
    assert_exact(&lake, &db);
}

/// A compaction that fails after a flush (here: a damaged compaction intent) leaves the
/// flush committed, shows on `/health` and `/metrics`, and is tried again after the next
/// flush; once it can run, `/health` recovers and `status` shows the compaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_maintenance_keeps_the_flush_and_is_retried() {
    let db = database("svc_maintenance").await;
    db.seed(10, 50).await;
    let lake = Lake::new();
    let admin = free_addr();
    let config = service_config(&lake, &db, &admin, "[maintenance]\ninterval = \"1d\"\n");
    let intent = lake
        .root()
        .join("_slot2lake")
        .join(&db.name)
        .join("compact.json");
    std::fs::create_dir_all(intent.parent().expect("parent")).expect("mkdir");
    std::fs::write(&intent, "{ damaged").expect("write");
    let consumer = Consumer::start(&config, &admin).await;
    db.exec("UPDATE orders SET quantity = 7 WHERE order_id % 2 = 0;")
        .await;
    let run = flush(&config).await;
    assert!(run.stdout.contains("flush committed"), "{}", run.stdout);
    assert_exact(&lake, &db);
    wait_until(60, "/health to report the failing maintenance", || async {
        let h = consumer.get("/health").await;
        h.starts_with("degraded") && h.contains("maintenance:") && h.contains("compact.json")
    })
    .await;
    let metrics = consumer.get("/metrics").await;
    assert!(
        metrics.contains("slot2lake_errors_total{stage=\"maintenance\"}"),
        "{metrics}"
    );

    std::fs::remove_file(&intent).expect("remove");
    db.exec("UPDATE orders SET quantity = 8 WHERE order_id % 3 = 0;")
        .await;
    flush(&config).await;
    wait_until(60, "/health to recover", || async {
        consumer.get("/health").await.trim() == "ok"
    })
    .await;
    assert_exact(&lake, &db);
    let status = with_config(&["status"], &config).await;
    assert!(
        status.stdout.contains("last compaction: 2"),
        "{}",
        status.stdout
    );
    assert_eq!(consumer.stop().await, 0);
}

/// `POST /flush` (`slot2lake flush`) answers once the flush is committed: the compaction
/// `[maintenance] interval` runs after it (held here at a pause point) does not hold
/// the caller, and runs once let go.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_is_answered_before_its_maintenance() {
    let db = database("svc_flush_first").await;
    db.seed(10, 50).await;
    let lake = Lake::new();
    let admin = free_addr();
    let config = service_config(&lake, &db, &admin, "[maintenance]\ninterval = \"0s\"\n");
    let hold = config.with_file_name("hold-maintenance");
    std::fs::write(&hold, "").expect("write");
    let consumer = Consumer::start_with_env(
        &config,
        &admin,
        &[
            ("SLOT2LAKE_PAUSE", "before-maintenance"),
            ("SLOT2LAKE_PAUSE_FILE", &hold.display().to_string()),
        ],
    )
    .await;
    db.exec("UPDATE orders SET quantity = 7 WHERE order_id % 2 = 0;")
        .await;
    let answered = tokio::time::timeout(std::time::Duration::from_secs(60), flush(&config))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the flush was not answered while its maintenance waits:\n{}",
                consumer.log()
            )
        });
    assert!(
        answered.stdout.contains("flush committed"),
        "{}",
        answered.stdout
    );
    assert_exact(&lake, &db);
    let metrics = consumer.get("/metrics").await;
    assert!(
        metrics.contains("slot2lake_flushes_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    let maintenance = lake
        .root()
        .join(format!("_slot2lake/{}/maintenance.json", db.name));
    assert!(
        !maintenance.exists(),
        "the maintenance ran before the answer"
    );

    std::fs::remove_file(&hold).expect("remove");
    wait_until(60, "the maintenance after the flush", || async {
        maintenance.exists()
    })
    .await;
    db.exec("UPDATE orders SET quantity = 8 WHERE order_id % 3 = 0;")
        .await;
    flush(&config).await;
    assert_exact(&lake, &db);
    assert_eq!(consumer.stop().await, 0);
}

/// A proxy that goes silent under the replication stream, keeping both connections open:
/// TCP keepalives still succeed, so only the server knows the stream is gone (its
/// walsender times out and leaves the slot inactive). `run` sees the inactive slot,
/// drops the stream and reconnects, and what was written meanwhile reaches the lake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_a_proxy_silences_is_reconnected() {
    let db = database("svc_silenced").await;
    db.seed(5, 40).await;
    // The walsender gives up on a silent client after 15 s (above the 10 s feedback).
    db.exec(&format!(
        "ALTER DATABASE {} SET wal_sender_timeout = '15s'",
        db.name
    ))
    .await;
    let proxy = crate::support::SilencingProxy::start(db.port()).await;
    let lake = Lake::new();
    let admin = free_addr();
    let config = service_config_via(&lake, &db, &db.url_through(proxy.port), &admin, "");
    crate::support::edit_config(&config, |c| {
        c.replacen("[source]\n", "[source]\nquery_timeout = \"5s\"\n", 1)
    });
    let consumer = Consumer::start(&config, &admin).await;
    db.exec("UPDATE orders SET quantity = 1 WHERE order_id % 2 = 0;")
        .await;
    flush(&config).await;
    assert_exact(&lake, &db);

    proxy.silence_replication();
    db.exec("UPDATE orders SET quantity = 2 WHERE order_id % 3 = 0; INSERT INTO customers (name) VALUES ('late');")
        .await;
    wait_until(120, "the consumer to reconnect", || async {
        consumer
            .get("/metrics")
            .await
            .lines()
            .any(|l| l.starts_with("slot2lake_reconnects_total ") && !l.ends_with(" 0"))
    })
    .await;
    flush(&config).await;
    assert_exact(&lake, &db);
    assert_eq!(consumer.stop().await, 0);
}
