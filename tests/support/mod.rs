//! Test harness: one PostgreSQL cluster per test process (initdb in a temp dir,
//! wal_level = logical, a free loopback port; run as the `postgres` user when the tests
//! run as root), a fresh database per test, a temp lake, and the independent reader.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

/// A running PostgreSQL cluster.
pub struct Cluster {
    pub port: u16,
    pub base: PathBuf,
    pub bindir: PathBuf,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root.
fn pg_command(bindir: &Path, program: &str) -> Command {
    let exe = bindir.join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

fn bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("SLOT2LAKE_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    for v in ["18", "17", "16", "15", "14"] {
        let dir = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    panic!("PostgreSQL server binaries not found: install postgresql (Debian) or set SLOT2LAKE_PG_BINDIR");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn check(out: std::io::Result<Output>, what: &str) {
    let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// Starts a new cluster with extra `postgresql.conf` lines; it is stopped and
    /// removed when the test process exits.
    pub fn start(settings: &[&str]) -> Cluster {
        let bindir = bindir();
        let base = tempfile::Builder::new()
            .prefix("slot2lake-pg-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let data = base.join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        if is_root() {
            check(
                Command::new("chown").args(["-R", "postgres:postgres"]).arg(&base).output(),
                "chown",
            );
        }
        check(
            pg_command(&bindir, "initdb")
                .args(["-D"])
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
                .output(),
            "initdb",
        );
        let port = free_port();
        let mut conf = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             max_replication_slots = 64\nmax_wal_senders = 64\nmax_connections = 200\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = 128MB\n\
             wal_sender_timeout = 0\n",
            base.display()
        );
        if !settings.iter().any(|s| s.starts_with("wal_level")) {
            conf.push_str("wal_level = logical\n");
        }
        for s in settings {
            conf.push_str(s);
            conf.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).expect("postgresql.conf");
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).expect("write postgresql.conf");
        check(
            pg_command(&bindir, "pg_ctl")
                .args(["-D"])
                .arg(&data)
                .args(["-l"])
                .arg(base.join("server.log"))
                .args(["-w", "-t", "60", "start"])
                .stdout(Stdio::null())
                .output(),
            "pg_ctl start",
        );
        // A watchdog stops the server and removes its files once this process is gone.
        let stop = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {run}{pg_ctl} -D {data} stop -m immediate >/dev/null 2>&1; rm -rf {base}",
            pid = std::process::id(),
            run = if is_root() { "runuser -u postgres -- " } else { "" },
            pg_ctl = bindir.join("pg_ctl").display(),
            data = data.display(),
            base = base.display(),
        );
        {
            use std::os::unix::process::CommandExt;
            Command::new("sh")
                .args(["-c", &stop])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("watchdog");
        }
        Cluster { port, base, bindir }
    }

    /// Connection URL of a database.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a fresh database and connects to it.
    pub async fn database(&self, prefix: &str) -> TestDb {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("{prefix}_{}", N.fetch_add(1, Ordering::SeqCst));
        let admin = connect(&self.url("postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let client = connect(&self.url(&name)).await;
        TestDb {
            name: name.clone(),
            url: self.url(&name),
            client,
        }
    }
}

/// The cluster shared by all tests of this process.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start(&[]))
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

/// The seed's tables, as in its incremental-ETL guide.
pub const SEED_SCHEMA: &str = r#"
CREATE TABLE customers (
    customer_id SERIAL PRIMARY KEY,
    name VARCHAR(100),
    email VARCHAR(100),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE orders (
    order_id SERIAL PRIMARY KEY,
    customer_id INTEGER,
    product_name VARCHAR(100),
    quantity INTEGER,
    price DECIMAL(10,2),
    order_date DATE DEFAULT CURRENT_DATE,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE OR REPLACE FUNCTION update_updated_at_column() RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = CURRENT_TIMESTAMP;
    RETURN NEW;
END;
$$ language 'plpgsql';
CREATE TRIGGER update_customers_updated_at BEFORE UPDATE ON customers
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
CREATE TRIGGER update_orders_updated_at BEFORE UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
"#;

impl TestDb {
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
    pub async fn seed(&self, customers: i32, orders: i32) {
        self.exec(SEED_SCHEMA).await;
        self.exec(&format!(
            "INSERT INTO customers (name, email, created_at)
               SELECT 'Customer ' || i, 'c' || i || '@example.com', now() - (i || ' hours')::interval
               FROM generate_series(1, {customers}) i;
             INSERT INTO orders (customer_id, product_name, quantity, price, order_date)
               SELECT 1 + i % {customers}, 'Product ' || (i % 17), 1 + i % 5, (i % 1000) * 1.25 + 0.99,
                      current_date - (i % 60)
               FROM generate_series(1, {orders}) i;"
        ))
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

/// A temporary lake folder and config file.
pub struct Lake {
    pub dir: tempfile::TempDir,
}

/// The seed's two tables, partitioned as in the seed.
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
            dir: tempfile::Builder::new().prefix("slot2lake-lake-").tempdir().expect("tempdir"),
        }
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

    /// Writes a config with extra TOML appended.
    pub fn config_with(&self, url: &str, slot: &str, tables: &str, extra: &str) -> PathBuf {
        let text = format!(
            "[source]\nurl = \"{url}\"\nslot = \"{slot}\"\npublication = \"{slot}\"\n\n\
             [output]\nurl = \"file://{}\"\n\n{extra}\n{tables}",
            self.root().display()
        );
        let path = self.dir.path().join("slot2lake.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Files under a table folder (recursively), relative to the lake root.
    pub fn files(&self, folder: &str) -> Vec<String> {
        let mut out = Vec::new();
        let base = self.root();
        let mut stack = vec![base.join(folder)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(&base).expect("under lake").display().to_string());
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
        serde_json::from_str(&self.read(&format!("etl-metadata/{folder}/watermark.json"))).expect("watermark json")
    }

    /// Latest state per key in the lake vs the source table, via DuckDB and psycopg2.
    pub fn compare(&self, db: &TestDb, table: &str, folder: &str, key: &str) -> serde_json::Value {
        let out = python(&[
            "compare",
            "--lake",
            &self.root().display().to_string(),
            "--folder",
            folder,
            "--table",
            table,
            "--key",
            key,
            "--dsn",
            &db.url,
        ]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "lake_check compare: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Asserts the lake's latest state for `table` equals the source.
    pub fn assert_matches(&self, db: &TestDb, table: &str, folder: &str, key: &str) {
        let report = self.compare(db, table, folder, key);
        assert_eq!(report["ok"], true, "lake differs from {table}: {report}");
    }

    /// Rows per change type, partitions, duplicates and column types, via DuckDB and pyarrow.
    pub fn summary(&self, folder: &str, key: &str) -> serde_json::Value {
        let out = python(&[
            "summary",
            "--lake",
            &self.root().display().to_string(),
            "--folder",
            folder,
            "--key",
            key,
        ]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "lake_check summary: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

fn python(args: &[&str]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/lake_check.py");
    Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(script)
        .args(args)
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
        assert_eq!(self.code, 0, "slot2lake failed:\n{}\n{}", self.stdout, self.stderr);
        self
    }
}

/// Runs the slot2lake binary with a deadline.
pub async fn slot2lake(args: &[&str]) -> Run {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_slot2lake"))
        .args(args)
        .env("RUST_LOG", "warn,slot2lake=info")
        .kill_on_drop(true)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn slot2lake");
    let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("slot2lake did not finish within 300 s")
        .expect("slot2lake output");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `run --once` with a config file; asserts success.
pub async fn run_once(config: &Path) -> Run {
    let run = slot2lake(&["run", "--once", "--config", &config.display().to_string()]).await;
    run.ok();
    run
}
