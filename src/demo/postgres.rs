//! A throwaway PostgreSQL cluster: initdb into a temp folder, `wal_level = logical`, a
//! free loopback port. Used by `slot2lake demo` and by the integration tests.
//!
//! PostgreSQL refuses to run as root, so as root the server runs as the `postgres` OS
//! user. A watchdog process stops the server and removes its folder when the owning
//! process exits, however it exits (Ctrl-C, a panic, kill), unless the cluster is kept.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Starting the cluster failed; the message names what to install or fix.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No PostgreSQL server binaries.
    #[error("PostgreSQL server binaries (initdb, pg_ctl) not found: install them (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql@16), put initdb on PATH, or set SLOT2LAKE_PG_BINDIR")]
    NotInstalled,
    /// A step failed.
    #[error("{step} failed: {detail}")]
    Step {
        /// What was run.
        step: String,
        /// Its output.
        detail: String,
    },
}

/// A running throwaway cluster.
#[derive(Debug)]
pub struct TempCluster {
    /// Loopback port.
    pub port: u16,
    /// Folder holding `data/` and `server.log`.
    pub base: PathBuf,
    bindir: PathBuf,
    keep: bool,
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Finds `initdb`: `SLOT2LAKE_PG_BINDIR`, `PATH`, `pg_config --bindir`, Debian's folders.
pub fn find_bindir() -> Result<PathBuf, ClusterError> {
    if let Ok(dir) = std::env::var("SLOT2LAKE_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    debian.sort();
    candidates.extend(debian.into_iter().rev());
    candidates
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
        .map(|d| {
            std::fs::canonicalize(d.join("initdb"))
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or(d)
        })
        .ok_or(ClusterError::NotInstalled)
}

fn run(step: &str, out: std::io::Result<Output>) -> Result<(), ClusterError> {
    let out = out.map_err(|e| ClusterError::Step {
        step: step.to_string(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(ClusterError::Step {
        step: step.to_string(),
        detail: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

impl TempCluster {
    /// Runs a server binary, as `postgres` when we are root.
    fn command(&self, program: &str) -> Command {
        command(&self.bindir, program)
    }

    /// Starts a cluster with extra `postgresql.conf` lines (e.g. `wal_level = replica`).
    pub fn start(settings: &[&str]) -> Result<Self, ClusterError> {
        Self::start_in(find_bindir()?, settings)
    }

    /// Like [`TempCluster::start`], with the server binaries in `bindir`.
    pub fn start_in(bindir: PathBuf, settings: &[&str]) -> Result<Self, ClusterError> {
        let base = std::env::temp_dir().join(format!(
            "slot2lake-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let data = base.join("data");
        let step = |s: &str, e: std::io::Error| ClusterError::Step {
            step: s.to_string(),
            detail: e.to_string(),
        };
        std::fs::create_dir_all(&data).map_err(|e| step("creating the data folder", e))?;
        if is_root() {
            run(
                "chown postgres",
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&base)
                    .output(),
            )?;
        }
        run(
            "initdb",
            command(&bindir, "initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ])
                .output(),
        )?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| step("finding a free port", e))?;
        let mut conf = format!(
            "\n# slot2lake throwaway cluster\nport = {port}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nmax_replication_slots = 256\nmax_wal_senders = 64\n\
             max_connections = 200\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
            base.display()
        );
        if !settings
            .iter()
            .any(|s| s.trim_start().starts_with("wal_level"))
        {
            conf.push_str("wal_level = logical\n");
        }
        for s in settings {
            conf.push_str(s);
            conf.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&conf_path).map_err(|e| step("reading postgresql.conf", e))?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text).map_err(|e| step("writing postgresql.conf", e))?;
        let cluster = Self {
            port,
            base,
            bindir,
            keep: false,
        };
        cluster.spawn_watchdog();
        run(
            "pg_ctl start",
            cluster
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(cluster.base.join("server.log"))
                .args(["-w", "-t", "60", "start"])
                .stdout(Stdio::null())
                .output(),
        )?;
        Ok(cluster)
    }

    /// Keeps the server running and its files after this process exits.
    pub fn keep(&mut self) {
        self.keep = true;
        let _ = std::fs::write(self.base.join("keep"), b"");
    }

    /// The data folder.
    pub fn data_dir(&self) -> PathBuf {
        self.base.join("data")
    }

    /// The server binaries' folder.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Connection URL of a database (superuser `postgres`, trust authentication).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The shell command that stops this cluster (as the `postgres` user when run as
    /// root, who cannot run `pg_ctl`).
    pub fn stop_command(&self) -> String {
        format!(
            "{}{} -D {} stop",
            if is_root() {
                "runuser -u postgres -- "
            } else {
                ""
            },
            self.bindir.join("pg_ctl").display(),
            self.data_dir().display()
        )
    }

    /// Runs `pg_ctl` with `args` against this cluster (e.g. `["restart", "-m", "fast"]`).
    pub fn pg_ctl(&self, args: &[&str]) -> Result<(), ClusterError> {
        run(
            &format!("pg_ctl {}", args.join(" ")),
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.base.join("server.log"))
                .args(["-w", "-t", "60"])
                .args(args)
                .stdout(Stdio::null())
                .output(),
        )
    }

    fn spawn_watchdog(&self) {
        use std::os::unix::process::CommandExt;
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             [ -e {base}/keep ] && exit 0; \
             {stop} -m immediate >/dev/null 2>&1; rm -rf {base}",
            pid = std::process::id(),
            base = self.base.display(),
            stop = self.stop_command(),
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
    }
}

fn command(bindir: &Path, program: &str) -> Command {
    let exe = bindir.join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if !self.keep {
            let _ = self.pg_ctl(&["stop", "-m", "fast"]);
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}
