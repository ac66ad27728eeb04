//! Test harness: one PostgreSQL cluster per test process (initdb in a temp dir,
//! wal_level = logical, a free loopback port; run as the `postgres` user when the tests
//! run as root), a fresh database per test, a temp lake, and the independent reader.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use slot2lake::demo::TempCluster;
use tokio_postgres::{Client, NoTls};

/// Creates a fresh database on `cluster` and connects to it.
pub async fn database_on(cluster: &TempCluster, prefix: &str) -> TestDb {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("{prefix}_{}", N.fetch_add(1, Ordering::SeqCst));
    let admin = connect(&cluster.url("postgres")).await;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let client = connect(&cluster.url(&name)).await;
    TestDb {
        name: name.clone(),
        url: cluster.url(&name),
        client,
    }
}

/// The cluster shared by all tests of this process (stopped by its watchdog at exit).
pub fn cluster() -> &'static TempCluster {
    static CLUSTER: OnceLock<TempCluster> = OnceLock::new();
    CLUSTER
        .get_or_init(|| TempCluster::start(&["shared_buffers = 128MB"]).expect("start PostgreSQL"))
}

/// A fresh database on the shared cluster.
pub async fn database(prefix: &str) -> TestDb {
    database_on(cluster(), prefix).await
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A database of one test.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub client: Client,
}

impl TestDb {
    /// The server's port.
    pub fn port(&self) -> u16 {
        self.url
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .expect("port in the test database's URL")
    }

    /// This database's URL through a proxy on `port`, without TLS (the proxies read the
    /// protocol).
    pub fn url_through(&self, port: u16) -> String {
        format!(
            "{}?sslmode=disable",
            self.url
                .replace(&format!(":{}/", self.port()), &format!(":{port}/"))
        )
    }

    pub async fn exec(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.client.query_one(sql, &[]).await.expect(sql).get(0)
    }

    /// Creates the seed's tables with `customers` customers and `orders` orders spread
    /// over the last 60 days.
    pub async fn seed(&self, customers: u32, orders: u32) {
        self.exec(slot2lake::demo::SEED_SCHEMA).await;
        self.exec(&slot2lake::demo::seed_data_sql(customers, orders, 60))
            .await;
    }

    pub async fn slot_confirmed(&self, slot: &str) -> Option<String> {
        self.client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .expect("slot query")
            .map(|r| r.get(0))
    }
}

/// A temporary lake folder and config file; or an S3 lake on moto.
pub struct Lake {
    pub dir: tempfile::TempDir,
    /// `(s3://bucket/prefix, host:port of the endpoint)` for an S3 lake.
    pub s3: Option<(String, String)>,
    /// `output.format = "iceberg"`; the readers go through the Iceberg tables.
    pub iceberg: bool,
}

/// The seed's two tables, partitioned as in the seed.
/// A `[maintenance]` section that keeps no old snapshot and no unlisted file, so one
/// `compact` shows everything maintenance removes.
pub const KEEP_NOTHING: &str = "[maintenance]\nsnapshot_retention = \"0s\"\norphan_age = \"0s\"\n";

pub const SEED_TABLES: &str = r#"
[[tables]]
name = "public.customers"
partition_by = "processing_date"

[[tables]]
name = "public.orders"
partition_by = "order_date"
"#;

impl Lake {
    pub fn new() -> Lake {
        Lake {
            dir: tempfile::Builder::new()
                .prefix("slot2lake-lake-")
                .tempdir()
                .expect("tempdir"),
            s3: None,
            iceberg: false,
        }
    }

    /// A local lake of Iceberg tables, read through them.
    pub fn iceberg() -> Lake {
        Lake {
            iceberg: true,
            ..Lake::new()
        }
    }

    /// A lake at `s3://<bucket>/lake` on moto (the bucket is created).
    pub async fn s3(moto: &Moto, bucket: &str) -> Lake {
        moto.create_bucket(bucket).await;
        let mut lake = Lake::new();
        lake.s3 = Some((
            format!("s3://{bucket}/lake"),
            format!("127.0.0.1:{}", moto.port),
        ));
        lake
    }

    /// Where the reader finds the lake.
    fn location(&self) -> String {
        match &self.s3 {
            Some((url, _)) => url.clone(),
            None => self.root().display().to_string(),
        }
    }

    fn reader_env(&self) -> Vec<(&str, String)> {
        let mut env = match &self.s3 {
            Some((_, ep)) => vec![("LAKE_CHECK_S3_ENDPOINT", ep.clone())],
            None => vec![],
        };
        if self.iceberg {
            env.push(("LAKE_CHECK_READ", "iceberg".into()));
        }
        env
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    /// Writes a config for `db` with `tables` (TOML) and returns its path.
    pub fn config(&self, db: &TestDb, tables: &str) -> PathBuf {
        self.config_with(&db.url, &db.name, tables, "")
    }

    /// A config for a consumer (`slot2lake run`): acks every second, admin API on `admin`.
    pub fn consumer_config(&self, db: &TestDb, tables: &str, admin: &str) -> PathBuf {
        let extra = format!("[spool]\nack_interval = \"1s\"\n[admin]\nlisten = \"{admin}\"\n");
        self.config_with(&db.url, &db.name, tables, &extra)
    }

    /// Writes a config with extra TOML appended.
    pub fn config_with(&self, url: &str, slot: &str, tables: &str, extra: &str) -> PathBuf {
        let output = match &self.s3 {
            Some((url, ep)) => {
                format!("url = \"{url}\"\nendpoint = \"http://{ep}\"\nregion = \"us-east-1\"\n")
            }
            None => format!("url = \"file://{}\"\n", self.root().display()),
        };
        let output = if self.iceberg {
            format!("{output}format = \"iceberg\"\n")
        } else {
            output
        };
        let text = format!(
            "[source]\nurl = \"{url}\"\nslot = \"{slot}\"\npublication = \"{slot}\"\n\n\
             [output]\n{output}\n{extra}\n{tables}"
        );
        let path = self.dir.path().join("slot2lake.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Whatever is left under a slot's snapshot staging folder (files and folders, after
    /// a snapshot was published or discarded: nothing).
    pub fn staging_leftovers(&self, slot: &str) -> Vec<String> {
        let root = self.root().join("_slot2lake").join(slot).join("staging");
        let mut left = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                left.push(p.strip_prefix(&root).unwrap_or(&p).display().to_string());
                if p.is_dir() {
                    dirs.push(p);
                }
            }
        }
        left
    }

    /// Files under a table folder (recursively), relative to the lake root.
    pub fn files(&self, folder: &str) -> Vec<String> {
        let mut out = Vec::new();
        let base = self.root();
        let mut stack = vec![base.join(folder)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(
                        p.strip_prefix(&base)
                            .expect("under lake")
                            .display()
                            .to_string(),
                    );
                }
            }
        }
        out.sort();
        out
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    pub fn watermark(&self, folder: &str) -> serde_json::Value {
        serde_json::from_str(&self.read(&format!("etl-metadata/{folder}/watermark.json")))
            .expect("watermark json")
    }

    /// Latest state per key in the lake vs the source table, via DuckDB and psycopg2.
    pub fn compare(&self, db: &TestDb, table: &str, folder: &str, key: &str) -> serde_json::Value {
        self.compare_with(db, table, folder, key, &[])
    }

    /// `lake_check.py compare` with extra arguments.
    fn compare_with(
        &self,
        db: &TestDb,
        table: &str,
        folder: &str,
        key: &str,
        extra: &[&str],
    ) -> serde_json::Value {
        let location = self.location();
        let mut args = vec![
            "compare", "--lake", &location, "--folder", folder, "--table", table, "--key", key,
            "--dsn", &db.url,
        ];
        args.extend_from_slice(extra);
        reader_json(python(&self.reader_env(), &args), "compare")
    }

    /// Asserts the current-state Iceberg table (`<folder>_current`), read by DuckDB's
    /// iceberg_scan, equals the source: one row per key, value for value.
    pub fn assert_current_matches(&self, db: &TestDb, table: &str, folder: &str, key: &str) {
        let report = self.compare_with(db, table, folder, key, &["--current"]);
        assert_eq!(
            report["ok"], true,
            "current state differs from {table}: {report}"
        );
    }

    /// Asserts the lake's latest state for `table` equals the source. `key` is the key's
    /// columns, comma-separated; empty for a keyless table (compared as a multiset).
    pub fn assert_matches(&self, db: &TestDb, table: &str, folder: &str, key: &str) {
        let report = self.compare(db, table, folder, key);
        assert_eq!(report["ok"], true, "lake differs from {table}: {report}");
    }

    /// Asserts that slot2lake's DuckDB latest-state view (`catalog views`), run by DuckDB,
    /// equals the source table value for value.
    pub async fn assert_view_matches(
        &self,
        config: &Path,
        db: &TestDb,
        table: &str,
        folder: &str,
        key: &str,
    ) {
        let views = with_config(&["catalog", "views"], config).await;
        assert_eq!(views.code, 0, "{}{}", views.stdout, views.stderr);
        let sql = views
            .stdout
            .split("-- ")
            .find(|s| s.starts_with(&format!("{table}: DuckDB")))
            .and_then(|s| s.split_once('\n'))
            .map(|(_, sql)| sql.trim().to_string())
            .unwrap_or_else(|| panic!("no DuckDB view for {table}:\n{}", views.stdout));
        let file = self.dir.path().join(format!("{folder}_view.sql"));
        std::fs::write(&file, &sql).expect("view sql");
        let file = file.display().to_string();
        let report = self.compare_with(db, table, folder, key, &["--view-sql", &file]);
        assert_eq!(
            report["ok"], true,
            "the view differs from {table}: {report}\n{sql}"
        );
    }

    /// Asserts Spark, with default settings, reads every file of a table through the
    /// schema the catalog declares (`catalog describe`), as DuckDB reads them.
    pub async fn assert_spark_reads(&self, config: &Path, folder: &str) {
        let describe = with_config(&["catalog", "describe", folder], config).await;
        assert_eq!(describe.code, 0, "{}{}", describe.stdout, describe.stderr);
        let ddl: Vec<String> = describe
            .stdout
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('\t'))
            .map(|(name, ty)| format!("`{}` {}", name.trim(), ty.trim()))
            .collect();
        let out = python(
            &self.reader_env(),
            &[
                "spark",
                "--lake",
                &self.location(),
                "--folder",
                folder,
                "--ddl",
                &ddl.join(", "),
            ],
        );
        let report: serde_json::Value = reader_json(out, "spark");
        assert_eq!(
            report["ok"], true,
            "Spark through the catalog's schema: {report}\n{ddl:?}"
        );
    }

    /// Asserts `slot2lake verify` finds the lake equal to the source.
    pub async fn assert_verified(&self, config: &Path, folder: &str) {
        let run = with_config(&["verify", "--table", folder, "--json"], config).await;
        assert_eq!(run.code, 0, "verify {folder}: {}{}", run.stdout, run.stderr);
    }

    /// Rows per change type, partitions, duplicates and column types, via DuckDB and pyarrow.
    pub fn summary(&self, folder: &str, key: &str) -> serde_json::Value {
        let out = python(
            &self.reader_env(),
            &[
                "summary",
                "--lake",
                &self.location(),
                "--folder",
                folder,
                "--key",
                key,
            ],
        );
        reader_json(out, "summary")
    }
}

impl Lake {
    /// The folder's Iceberg table read by pyiceberg and DuckDB beside its files on disk
    /// (`lake_check.py iceberg`).
    pub fn iceberg_check(&self, folder: &str, key: &str) -> serde_json::Value {
        let out = python(
            &self.reader_env(),
            &[
                "iceberg",
                "--lake",
                &self.location(),
                "--folder",
                folder,
                "--key",
                key,
            ],
        );
        reader_json(out, "iceberg")
    }

    /// Runs SQL over a table's files in DuckDB (`{t}` names the table); rows as JSON.
    pub fn query(&self, folder: &str, sql: &str) -> Vec<Vec<serde_json::Value>> {
        let out = python(
            &self.reader_env(),
            &[
                "query",
                "--lake",
                &self.location(),
                "--folder",
                folder,
                "--sql",
                sql,
            ],
        );
        reader_json(out, "query")
    }

    /// A single number from a query.
    pub fn query_i64(&self, folder: &str, sql: &str) -> i64 {
        let rows = self.query(folder, sql);
        rows[0][0]
            .as_i64()
            .unwrap_or_else(|| panic!("{sql}: {rows:?}"))
    }
}

/// The JSON a `lake_check.py` command printed; its output when it printed none.
fn reader_json<T: serde::de::DeserializeOwned>(out: Output, command: &str) -> T {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "lake_check {command}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn python(env: &[(&str, String)], args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/lake_check.py");
    Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(script)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("python3 with duckdb, pyarrow and psycopg2 (pip install -r tests/requirements.txt)")
}

/// Result of running the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "slot2lake failed:\n{}\n{}",
            self.stdout, self.stderr
        );
        self
    }
    /// The line `slot2lake check` printed for `what` (its second word: `catalog`,
    /// `output`, ...).
    pub fn check_line(&self, what: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(what))
            .unwrap_or_else(|| panic!("no {what} line:\n{}\n{}", self.stdout, self.stderr))
    }
}

/// Runs the slot2lake binary with a deadline.
pub async fn slot2lake(args: &[&str]) -> Run {
    slot2lake_env(args, &[]).await
}

/// Runs the slot2lake binary with extra environment variables.
pub async fn slot2lake_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    // Output goes to files, so a run that overstays its deadline still shows what it did.
    let stdout = tempfile::tempfile().expect("stdout file");
    let stderr = tempfile::tempfile().expect("stderr file");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_slot2lake"))
        .args(args)
        .envs(AWS_TEST_ENV.iter().copied())
        .env("RUST_LOG", "warn,slot2lake=info")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .stdout(stdout.try_clone().expect("stdout file"))
        .stderr(stderr.try_clone().expect("stderr file"))
        .spawn()
        .expect("spawn slot2lake");
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut text = String::new();
        let _ = f.rewind();
        let _ = f.read_to_string(&mut text);
        text
    };
    let Ok(status) = tokio::time::timeout(Duration::from_secs(300), child.wait()).await else {
        let _ = child.kill().await;
        panic!(
            "slot2lake {args:?} did not finish within 300 s; its log:\n{}",
            read(stderr)
        );
    };
    Run {
        code: status.expect("slot2lake status").code().unwrap_or(-1),
        stdout: read(stdout),
        stderr: read(stderr),
    }
}

/// `slot2lake <args> --config <config>`, whatever its outcome.
pub async fn with_config(args: &[&str], config: &Path) -> Run {
    let path = config.display().to_string();
    let mut all = args.to_vec();
    all.extend(["--config", &path]);
    slot2lake(&all).await
}

/// `run --once` with a config file; asserts success.
pub async fn run_once(config: &Path) -> Run {
    let run = with_config(&["run", "--once"], config).await;
    run.ok();
    run
}

/// A free loopback address for a consumer's admin API.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// A running `slot2lake run`.
pub struct Consumer {
    child: tokio::process::Child,
    pub admin: String,
    log: PathBuf,
}

impl Consumer {
    /// Starts `slot2lake run` and waits until its admin API answers.
    pub async fn start(config: &Path, admin: &str) -> Consumer {
        Self::start_with_env(config, admin, &[]).await
    }

    /// [`start`](Self::start) with more environment variables (a pause point).
    pub async fn start_with_env(config: &Path, admin: &str, env: &[(&str, &str)]) -> Consumer {
        let log = config.with_extension(format!(
            "{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let file = std::fs::File::create(&log).expect("log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_slot2lake"))
            .args(["run", "--config", &config.display().to_string()])
            .envs(AWS_TEST_ENV.iter().copied())
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn,slot2lake=info")
            .kill_on_drop(true)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn slot2lake run");
        let mut consumer = Consumer {
            child,
            admin: admin.to_string(),
            log,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if tokio::net::TcpStream::connect(admin).await.is_ok()
                && consumer.get("/health").await.trim() == "ok"
            {
                break;
            }
            if let Ok(Some(status)) = consumer.child.try_wait() {
                panic!("slot2lake run exited ({status}):\n{}", consumer.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "slot2lake run did not start:\n{}",
                consumer.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        consumer
    }

    /// What the consumer logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends SIGTERM and returns the exit code.
    pub async fn stop(mut self) -> i32 {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        let status = tokio::time::timeout(Duration::from_secs(120), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("slot2lake run ignored SIGTERM:\n{}", self.log()))
            .expect("wait");
        status.code().unwrap_or(-1)
    }

    /// Kills the consumer like `kill -9`.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill");
    }

    /// A GET on the admin API; the response body.
    pub async fn get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("admin api: {e}; the consumer's log:\n{}", self.log()));
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(out)
    }
}

/// Polls `cond` every 100 ms until it holds; panics with `what` after `secs` seconds.
pub async fn wait_until<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Credentials and region for moto; no instance-metadata lookups.
pub const AWS_TEST_ENV: [(&str, &str); 5] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/dev/null"),
];

/// A `moto_server` on loopback, standing in for S3 and Glue.
pub struct Moto {
    pub port: u16,
}

/// The moto server shared by this test process (stopped by a watchdog at exit).
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let script = format!(
            "moto_server -H 127.0.0.1 -p {port} >/dev/null 2>&1 & M=$!; \
             while kill -0 {pid} 2>/dev/null; do sleep 1; done; kill $M",
            pid = std::process::id()
        );
        {
            use std::os::unix::process::CommandExt;
            let _ = Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::null())
                .process_group(0)
                .spawn();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { port }
    })
}

impl Moto {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sends one HTTP request; returns the status code and body.
    pub async fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("moto");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let code = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (
            code,
            out.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
        )
    }

    /// Creates a bucket (object_store does not create buckets).
    pub async fn create_bucket(&self, bucket: &str) {
        let (code, body) = self.http("PUT", &format!("/{bucket}"), "").await;
        assert_eq!(code, 200, "create bucket {bucket}: {body}");
    }
}

/// A TCP proxy in front of moto that answers 503 to the next `fail` connections
/// (all of them while `fail` is negative).
pub async fn flaky_proxy(target: u16, fail: Arc<AtomicI64>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let failing = fail.load(Ordering::SeqCst) != 0;
            if failing && fail.load(Ordering::SeqCst) > 0 {
                fail.fetch_sub(1, Ordering::SeqCst);
            }
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                if failing {
                    let mut buf = [0u8; 4096];
                    let _ = inbound.read(&mut buf).await;
                    let _ = inbound
                        .write_all(b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                }
                if let Ok(mut outbound) =
                    tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

/// Rewrites a test's config file in place (keys added to a section by replacing its
/// header or a key in it).
pub fn edit_config(config: &Path, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(config).expect("read config");
    std::fs::write(config, edit(text)).expect("write config");
}

/// A loopback port that accepts connections and never answers (a stuck proxy, pooler
/// or endpoint); the connections stay open.
pub async fn silent_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    port
}

/// A TCP proxy in front of PostgreSQL that passes the startup handshake and then never
/// answers again while keeping the connection open: a stuck pooler mid-session. Clients
/// must connect with `sslmode=disable` (the proxy reads the server's messages).
pub async fn silent_after_startup(target: u16) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            let (mut from_client, mut to_client) = inbound.into_split();
            let (mut from_server, mut to_server) = outbound.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
            });
            tokio::spawn(async move {
                // Server messages are a type byte and a length that counts itself; pass
                // them up to the first ReadyForQuery, then swallow everything.
                let mut pending = Vec::new();
                let mut ready = false;
                let mut buf = [0u8; 8192];
                loop {
                    let n = match from_server.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if ready {
                        continue;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    let mut pass = 0;
                    while pending.len() >= pass + 5 {
                        let len = u32::from_be_bytes(
                            pending[pass + 1..pass + 5].try_into().expect("4 bytes"),
                        ) as usize;
                        if pending.len() < pass + 1 + len {
                            break;
                        }
                        let kind = pending[pass];
                        pass += 1 + len;
                        if kind == b'Z' {
                            ready = true;
                            break;
                        }
                    }
                    if to_client.write_all(&pending[..pass]).await.is_err() {
                        break;
                    }
                    pending.drain(..pass);
                }
                // Keep the client's side open: the proxy stays silent, it does not hang up.
                std::future::pending::<()>().await;
                drop(to_client);
            });
        }
    });
    port
}

/// A TCP proxy in front of PostgreSQL that can go silent under the replication
/// connections open at that moment ([`SilencingProxy::silence_replication`]): it stops
/// passing bytes either way and keeps both sides open, as a proxy whose peer vanished
/// may. Connections made later pass. Clients connect with `sslmode=disable` (the proxy
/// reads the startup packet to tell replication connections apart).
pub struct SilencingProxy {
    pub port: u16,
    next: Arc<AtomicU64>,
    silent_below: Arc<AtomicU64>,
}

impl SilencingProxy {
    pub async fn start(target: u16) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (next, silent_below) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (ids, below) = (next.clone(), silent_below.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let id = ids.fetch_add(1, SeqCst);
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                else {
                    return;
                };
                let below = below.clone();
                tokio::spawn(async move {
                    let (mut from_client, to_client) = inbound.into_split();
                    let (from_server, mut to_server) = outbound.into_split();
                    // The startup packet: its length, then the protocol and the parameters.
                    let mut startup = vec![0u8; 4];
                    if from_client.read_exact(&mut startup).await.is_err() {
                        return;
                    }
                    let len =
                        u32::from_be_bytes(startup[..4].try_into().expect("4 bytes")) as usize;
                    startup.resize(len.max(4), 0);
                    if from_client.read_exact(&mut startup[4..]).await.is_err() {
                        return;
                    }
                    let replication = startup.windows(12).any(|w| w == b"replication\0");
                    let silent = move || replication && id < below.load(SeqCst);
                    if tokio::io::AsyncWriteExt::write_all(&mut to_server, &startup)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let up = tokio::spawn(pass(from_client, to_server, silent.clone()));
                    pass(from_server, to_client, silent).await;
                    let _ = up.await;
                });
            }
        });
        Self {
            port,
            next,
            silent_below,
        }
    }

    /// From now on, the replication connections open so far pass nothing.
    pub fn silence_replication(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.silent_below.store(self.next.load(SeqCst), SeqCst);
    }
}

/// Copies `from` to `to` until either ends, or holds both open and silent once `silent()`.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: impl Fn() -> bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 8192];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if silent() {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// The tests' Iceberg REST catalog (`tests/support/rest_catalog.py`: the specification's
/// routes over pyiceberg's SqlCatalog), signing clients in with OAuth2 client
/// credentials; stopped when dropped.
pub struct RestCatalog {
    child: std::process::Child,
    dir: tempfile::TempDir,
    pub port: u16,
    props: Vec<String>,
}

impl RestCatalog {
    /// Client id and secret the catalog accepts.
    pub const CREDENTIAL: &'static str = "slot2lake:client-s3cret";
    /// The token it hands out for them.
    pub const TOKEN: &'static str = "t0ken-for-slot2lake";

    pub fn start() -> RestCatalog {
        Self::start_with(&[])
    }

    /// A catalog whose FileIO (reading and writing metadata files) is on moto's S3.
    pub fn on_s3(moto: &Moto) -> RestCatalog {
        Self::start_with(&[
            format!("s3.endpoint={}", moto.endpoint()),
            "s3.access-key-id=test".into(),
            "s3.secret-access-key=test".into(),
            "s3.region=us-east-1".into(),
        ])
    }

    fn start_with(props: &[String]) -> RestCatalog {
        let dir = tempfile::Builder::new()
            .prefix("slot2lake-rest-")
            .tempdir()
            .expect("tempdir");
        let (child, port) = Self::spawn(dir.path(), props);
        RestCatalog {
            child,
            dir,
            port,
            props: props.to_vec(),
        }
    }

    /// The catalog's server process on its database in `dir`, and its port.
    fn spawn(dir: &Path, props: &[String]) -> (std::process::Child, u16) {
        use std::io::BufRead;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/rest_catalog.py");
        let mut child = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
            .arg(script)
            .arg("--db")
            .arg(dir.join("catalog.db"))
            .args(["--token", Self::TOKEN, "--client", Self::CREDENTIAL])
            .args(props.iter().flat_map(|p| ["--prop", p.as_str()]))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "python3 with pyiceberg and sqlalchemy (pip install -r tests/requirements.txt)",
            );
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the catalog's port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("rest_catalog.py printed {line:?}, not its port"));
        (child, port)
    }

    /// Stops the server; its tables stay in its database.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same tables (on a new port).
    pub fn restart(&mut self) {
        self.stop();
        let (child, port) = Self::spawn(self.dir.path(), &self.props);
        self.child = child;
        self.port = port;
    }

    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A `[catalog]` section for namespace `namespace` of warehouse `lake`, signing in
    /// with the client credentials.
    pub fn section(&self, namespace: &str) -> String {
        self.section_signed(namespace, &format!("credential = \"{}\"", Self::CREDENTIAL))
    }

    /// The same, with the catalog's token given directly.
    pub fn section_with_token(&self, namespace: &str) -> String {
        self.section_signed(namespace, &format!("token = \"{}\"", Self::TOKEN))
    }

    fn section_signed(&self, namespace: &str, auth: &str) -> String {
        format!(
            "[catalog]\nkind = \"iceberg-rest\"\nuri = \"{}\"\nwarehouse = \"lake\"\nnamespace = \"{namespace}\"\n{auth}\n",
            self.uri()
        )
    }

    /// Runs Python with `cat`, a pyiceberg REST client of this catalog (another writer).
    pub fn python(&self, code: &str) {
        let prelude = format!(
            "from pyiceberg.catalog.rest import RestCatalog\ncat = RestCatalog('rest', uri='{}', warehouse='lake', token='{}')\n",
            self.uri(),
            Self::TOKEN
        );
        let out = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
            .args(["-c", &format!("{prelude}{code}")])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{code}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The catalog answers the next `n` table commits with 409 (another writer first).
    pub fn conflicts(&self, n: usize) {
        self.python(&format!(
            "import requests\nrequests.post('{}/test/conflicts', json={{'n': {n}}}).raise_for_status()",
            self.uri()
        ));
    }

    /// Every request the catalog answered, as `METHOD PATH STATUS`.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("requests.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for RestCatalog {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Lake {
    /// The folder's changelog and current-state tables read through the REST catalog
    /// beside the lake's own metadata (`lake_check.py rest`).
    pub fn rest_check(
        &self,
        rest: &RestCatalog,
        namespace: &str,
        folder: &str,
    ) -> serde_json::Value {
        let uri = rest.uri();
        let out = python(
            &self.reader_env(),
            &[
                "rest",
                "--lake",
                &self.location(),
                "--folder",
                folder,
                "--uri",
                &uri,
                "--warehouse",
                "lake",
                "--namespace",
                namespace,
                "--token",
                RestCatalog::TOKEN,
            ],
        );
        reader_json(out, "rest")
    }
}

/// The REST catalog's table `name` has the lake's snapshots, current one included, and
/// both readers read through it what they read from the lake's metadata.
pub fn assert_rest_is_lake(check: &serde_json::Value, name: &str) -> serde_json::Value {
    let t = &check[name];
    assert!(t["error"].is_null(), "{name}: {t}");
    assert_eq!(t["snapshot_ids"], t["lake_snapshot_ids"], "{name}: {t}");
    assert_eq!(t["current"], t["lake_current"], "{name}: {t}");
    assert_eq!(t["pyiceberg_equals_lake"], true, "{name}: {t}");
    assert_eq!(t["duckdb_equals_lake"], true, "{name}: {t}");
    assert_eq!(t["rows"], t["duckdb_rows"], "{name}: {t}");
    t.clone()
}
