//! A randomized soak: concurrent writes, `kill -9` of the consumer at random moments
//! (mid-flush included), PostgreSQL restarts; then the lake must equal the source with
//! nothing lost and nothing duplicated. `SLOT2LAKE_SOAK_TRIALS` sets the number of
//! kill/restart trials (`scripts/soak` runs 500); the suite runs a few.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use slot2lake::demo::TempCluster;

use crate::support::{
    database_on, free_addr, slot2lake, with_config, Consumer, Lake, TestDb, SEED_TABLES,
};

/// A small deterministic generator (no extra dependency, reproducible from a seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

async fn writer(url: String, stop: Arc<AtomicBool>, committed: Arc<AtomicU64>, seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut client = crate::support::connect(&url).await;
    while !stop.load(Ordering::SeqCst) {
        let n = 1 + rng.below(10);
        let id = 1 + rng.below(2000);
        let rollback = rng.below(10) == 0;
        let sql = format!(
            "BEGIN;
             INSERT INTO events (payload) SELECT md5(random()::text) FROM generate_series(1, {n});
             UPDATE orders SET quantity = quantity + 1 WHERE order_id BETWEEN {id} AND {id} + 20;
             DELETE FROM orders WHERE order_id = {};
             INSERT INTO orders (customer_id, product_name) VALUES ({id}, 'soak');
             {};",
            1 + rng.below(2000),
            if rollback { "ROLLBACK" } else { "COMMIT" }
        );
        match client.batch_execute(&sql).await {
            Ok(()) if !rollback => {
                committed.fetch_add(n, Ordering::SeqCst);
            }
            Ok(()) => {}
            // A commit whose answer was lost in a restart may or may not have happened,
            // so the source's own count is the truth the lake is compared with.
            // PostgreSQL restarting under the writer: reconnect and go on.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Ok((c, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    tokio::spawn(conn);
                    client = c;
                }
            }
        }
        // The write rate of a busy OLTP table, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn trials() -> u64 {
    std::env::var("SLOT2LAKE_SOAK_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_kill_and_restart_lose_and_duplicate_nothing() {
    let cluster = TempCluster::start(&[]).expect("cluster");
    let db = database_on(&cluster, "soak").await;
    db.seed(200, 2000).await;
    db.exec("CREATE TABLE events (id bigserial PRIMARY KEY, payload text);")
        .await;
    let lake = Lake::new();
    let admin = free_addr();
    let tables = format!("{SEED_TABLES}\n[[tables]]\nname = \"public.events\"\n");
    let config = lake.config_with(
        &db.url,
        &db.name,
        &tables,
        &format!(
            "[spool]\nack_interval = \"1s\"\nsegment_size = \"256KB\"\nmax_spool_bytes = \"2MB\"\n\
             [flush]\nschedule = \"0 1 1 1 *\"\n[admin]\nlisten = \"{admin}\"\n"
        ),
    );
    let seed = std::env::var("SLOT2LAKE_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = Rng(seed);
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(writer(
        db.url.clone(),
        stop.clone(),
        committed.clone(),
        seed,
    ));
    let (mut kills, mut mid_flush, mut restarts) = (0u64, 0u64, 0u64);
    let n = trials();
    for trial in 1..=n {
        let consumer = Consumer::start(&config, &admin).await;
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1300))).await;
        match rng.below(10) {
            0 => {
                cluster.pg_ctl(&["restart", "-m", "fast"]).expect("restart");
                restarts += 1;
                tokio::time::sleep(Duration::from_millis(rng.below(1500))).await;
            }
            1..=4 => {
                // Kill it while a flush it was asked for is running (or about to).
                let cfg = config.display().to_string();
                let flush =
                    tokio::spawn(async move { slot2lake(&["flush", "--config", &cfg]).await });
                tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
                flush.abort();
                mid_flush += 1;
            }
            _ => {}
        }
        consumer.kill().await;
        kills += 1;
        if trial % 50 == 0 {
            println!(
                "soak: {trial}/{n} trials, {} events committed",
                committed.load(Ordering::SeqCst)
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer");
    // A clean run flushes everything, then the independent reader and verify judge.
    let consumer = Consumer::start(&config, &admin).await;
    let run = with_config(&["flush"], &config).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, consumer.log());
    assert_eq!(consumer.stop().await, 0);
    let db = TestDb {
        client: crate::support::connect(&db.url).await,
        ..db
    };
    let mut lost = 0u64;
    let mut duplicated = 0u64;
    for (table, key) in [
        ("events", "id"),
        ("orders", "order_id"),
        ("customers", "customer_id"),
    ] {
        let report = lake.compare(&db, &format!("public.{table}"), table, key);
        lost += report["missing"].as_array().map_or(0, |a| a.len() as u64)
            + report["different"].as_array().map_or(0, |a| a.len() as u64)
            + report["extra"].as_array().map_or(0, |a| a.len() as u64);
        duplicated += lake.summary(table, key)["duplicates"].as_u64().unwrap_or(0);
    }
    let events = db.count("SELECT count(*) FROM events").await as u64;
    let lake_events = lake.query_i64(
        "events",
        "SELECT count(*) FROM {t} WHERE change_type IN ('INSERT', 'SNAPSHOT')",
    ) as u64;
    println!(
        "soak: {n} trials ({kills} kill -9, {mid_flush} during a flush request, {restarts} PostgreSQL restarts); \
         {} events committed, {events} in the source, {lake_events} in the lake; lost {lost}, duplicated {duplicated}",
        committed.load(Ordering::SeqCst)
    );
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(lake_events, events, "every committed event exactly once");
    let verify = with_config(&["verify"], &config).await;
    assert_eq!(verify.code, 0, "{}{}", verify.stdout, verify.stderr);
}

/// How long each outage of [`outages_of_s3_and_postgres_are_ridden_out`] lasts
/// (`SLOT2LAKE_OUTAGE_SECS`; `scripts/outage` runs 600, the suite a few seconds).
fn outage() -> Duration {
    Duration::from_secs(
        std::env::var("SLOT2LAKE_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4),
    )
}

/// Holds for `how_long` while an outage lasts, checking every second that the consumer
/// is alive and reports `step` degraded.
async fn hold_outage(consumer: &Consumer, step: &str, how_long: Duration) {
    let until = tokio::time::Instant::now() + how_long;
    let mut seen = false;
    while tokio::time::Instant::now() < until {
        let health = consumer.get("/health").await;
        seen |= health.starts_with("degraded") && health.contains(&format!("{step}:"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    crate::support::wait_until(
        60,
        &format!("/health to report {step} degraded"),
        || async {
            seen || {
                let h = consumer.get("/health").await;
                h.starts_with("degraded") && h.contains(&format!("{step}:"))
            }
        },
    )
    .await;
}

/// The consumer outlives an S3 outage and then a PostgreSQL outage under steady writes:
/// it stays up, says degraded, and once each returns the flush lands with nothing lost or
/// duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_of_s3_and_postgres_are_ridden_out() {
    let moto = crate::support::moto();
    let cluster = TempCluster::start(&[]).expect("cluster");
    let db = database_on(&cluster, "outage").await;
    db.seed(100, 1000).await;
    db.exec("CREATE TABLE events (id bigserial PRIMARY KEY, payload text);")
        .await;
    let mut lake = Lake::s3(moto, "outage-soak").await;
    let fail = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let proxy = crate::support::flaky_proxy(moto.port, fail.clone()).await;
    let reader = lake.s3.clone().expect("s3");
    lake.s3 = Some((reader.0.clone(), format!("127.0.0.1:{proxy}")));
    let admin = free_addr();
    let tables = format!("{SEED_TABLES}\n[[tables]]\nname = \"public.events\"\n");
    let config = lake.config_with(
        &db.url,
        &db.name,
        &tables,
        &format!(
            "max_retries = 2\n[spool]\nack_interval = \"1s\"\nsegment_size = \"256KB\"\n\
             [retry]\nmin_delay = \"200ms\"\nmax_delay = \"5s\"\n\
             [flush]\nschedule = \"* * * * *\"\n[admin]\nlisten = \"{admin}\"\n"
        ),
    );
    lake.s3 = Some(reader);
    let consumer = Consumer::start(&config, &admin).await;
    crate::support::wait_until(120, "the consumer to stream", || async {
        consumer.get("/health").await.trim() == "ok"
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let writes = tokio::spawn(writer(db.url.clone(), stop.clone(), committed.clone(), 7));

    // S3 refuses every request: the spool mirror and the flushes fail and are retried.
    fail.store(-1, Ordering::SeqCst);
    let cfg = config.display().to_string();
    let asked = tokio::spawn(async move { slot2lake(&["flush", "--config", &cfg]).await });
    hold_outage(&consumer, "spool", outage()).await;
    fail.store(0, Ordering::SeqCst);
    crate::support::wait_until(120, "/health to recover from the S3 outage", || async {
        consumer.get("/health").await.trim() == "ok"
    })
    .await;
    // Asked during the outage: committed, or failed with the retry it will make.
    let asked = asked.await.expect("flush request");
    assert!(
        asked.code == 0 || asked.stderr.contains("retrying in"),
        "{}{}",
        asked.stderr,
        consumer.log()
    );

    // PostgreSQL stops: the stream and the writer wait for it.
    cluster.pg_ctl(&["stop", "-m", "fast"]).expect("stop");
    hold_outage(&consumer, "source", outage()).await;
    cluster.pg_ctl(&["start"]).expect("start");
    crate::support::wait_until(
        120,
        "/health to recover from the PostgreSQL outage",
        || async { consumer.get("/health").await.trim() == "ok" },
    )
    .await;

    stop.store(true, Ordering::SeqCst);
    writes.await.expect("writer");
    let run = with_config(&["flush"], &config).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, consumer.log());
    let retries = consumer.get("/metrics").await;
    assert_eq!(consumer.stop().await, 0);
    let db = TestDb {
        client: crate::support::connect(&db.url).await,
        ..db
    };
    for (table, key) in [
        ("events", "id"),
        ("orders", "order_id"),
        ("customers", "customer_id"),
    ] {
        lake.assert_matches(&db, &format!("public.{table}"), table, key);
        let duplicates = lake.query_i64(
            table,
            &format!(
                "SELECT count(*) - count(DISTINCT ({key}, change_lsn, change_seq)) FROM {{t}}"
            ),
        );
        assert_eq!(duplicates, 0, "{table}");
    }
    let events = db.count("SELECT count(*) FROM events").await;
    println!(
        "outage: S3 and PostgreSQL each down {} s under writes; {} events committed, {events} in the source and the lake; {}",
        outage().as_secs(),
        committed.load(Ordering::SeqCst),
        retries
            .lines()
            .filter(|l| l.starts_with("slot2lake_retries_total"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
