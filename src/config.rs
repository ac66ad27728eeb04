//! Configuration: TOML with `${VAR}` expansion, defaults in named consts, one `validate()`.
//!
//! Every error names the key it is about (`tables[1].partition_by`) and what is wrong
//! with it, so a user can fix the file without reading the source.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Default config file, looked up in the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "slot2lake.toml";
/// Default replication slot name.
pub const DEFAULT_SLOT: &str = "slot2lake";
/// Default publication name.
pub const DEFAULT_PUBLICATION: &str = "slot2lake";
/// Default folder for watermarks, as in the seed's layout.
pub const DEFAULT_METADATA_PREFIX: &str = "etl-metadata";
/// The daily flush: 01:00 UTC, the seed's rhythm.
pub const DEFAULT_SCHEDULE: &str = "0 1 * * *";
/// Largest Parquet file a flush writes (bytes of column data before compression).
pub const DEFAULT_MAX_FILE_SIZE: u64 = 256 * 1024 * 1024;
/// Rows per Parquet row group, at most.
pub const DEFAULT_ROW_GROUP_ROWS: usize = 1_000_000;
/// Memory for row groups being built, over all open files.
pub const DEFAULT_MEMORY_LIMIT: u64 = 128 * 1024 * 1024;
/// How often the slot is acknowledged while changes arrive.
pub const DEFAULT_ACK_INTERVAL: Duration = Duration::from_secs(60);
/// `source.query_timeout` when not set.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// A spool segment is sealed once it holds this many bytes.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// Flush early once the spool holds this much.
pub const DEFAULT_MAX_SPOOL_BYTES: u64 = 10 * 1024 * 1024 * 1024;
/// Loopback address of the admin HTTP API (`/metrics`, `/status`, `/flush`).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9187";
/// The partition scheme keyed on flush time, as in the seed's `customers` table.
pub const PROCESSING_DATE: &str = "processing_date";

/// A config problem: which key, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or unreadable.
    #[error("cannot read config file {path}: {source}. Create one (`slot2lake config example > slot2lake.toml`) or pass --config")]
    Read {
        /// The file that was tried.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: String,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// More than one key breaks a rule; one line each.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
    /// A key whose value breaks a rule.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted path of the key, e.g. `tables[0].partition_by`.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

/// One megabyte, as sizes like "1MB" are read.
const MB: u64 = 1_000_000;

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The PostgreSQL database, slot and publication.
    pub source: SourceConfig,
    /// Where the lake is written.
    pub output: OutputConfig,
    /// The durable change spool.
    pub spool: SpoolConfig,
    /// When and how changes are flushed to Parquet.
    pub flush: FlushConfig,
    /// The catalog told about new data after each flush.
    pub catalog: CatalogConfig,
    /// The admin HTTP API of `slot2lake run`.
    pub admin: AdminConfig,
    /// How failures that may pass (S3, Glue or PostgreSQL unavailable) are retried.
    pub retry: RetryConfig,
    /// What `slot2lake compact` keeps of an Iceberg table's history.
    pub maintenance: MaintenanceConfig,
    /// Log output.
    pub log: LogConfig,
    /// The tables to replicate.
    pub tables: Vec<TableConfig>,
}

/// The file's sections before they are typed: each is read on its own, so one section's
/// mistake does not hide another's.
#[derive(Deserialize)]
struct RawConfig {
    source: Option<toml::Value>,
    output: Option<toml::Value>,
    spool: Option<toml::Value>,
    flush: Option<toml::Value>,
    catalog: Option<toml::Value>,
    admin: Option<toml::Value>,
    retry: Option<toml::Value>,
    maintenance: Option<toml::Value>,
    log: Option<toml::Value>,
    tables: Option<Vec<toml::Value>>,
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

/// A key serde could not read, and its line in the report.
struct TypeError {
    key: String,
    line: String,
}

const SECTIONS: &str =
    "[source], [output], [spool], [flush], [catalog], [admin], [retry], [maintenance], [log], [[tables]]";

impl RawConfig {
    /// Types every section, collecting every error (one per key) instead of the first.
    fn typed(self, errors: &mut Vec<TypeError>) -> Option<Config> {
        for key in self.unknown.keys() {
            errors.push(TypeError {
                key: key.clone(),
                line: format!("{key}: unknown section; expected one of {SECTIONS}"),
            });
        }
        let source = required(self.source, "source", errors);
        let output = required(self.output, "output", errors);
        let spool = optional(self.spool, "spool", errors);
        let flush = optional(self.flush, "flush", errors);
        let catalog = optional(self.catalog, "catalog", errors);
        let admin = optional(self.admin, "admin", errors);
        let retry = optional(self.retry, "retry", errors);
        let maintenance = optional(self.maintenance, "maintenance", errors);
        let log = optional(self.log, "log", errors);
        let tables: Vec<Option<TableConfig>> = self
            .tables
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, t)| read(t, &format!("tables[{i}]"), errors))
            .collect();
        Some(Config {
            source: source?,
            output: output?,
            spool: spool?,
            flush: flush?,
            catalog: catalog?,
            admin: admin?,
            retry: retry?,
            maintenance: maintenance?,
            log: log?,
            tables: tables.into_iter().collect::<Option<_>>()?,
        })
    }
}

/// A section that must be there.
fn required<T: DeserializeOwned>(
    value: Option<toml::Value>,
    key: &str,
    errors: &mut Vec<TypeError>,
) -> Option<T> {
    if value.is_none() {
        errors.push(TypeError {
            key: key.to_string(),
            line: format!("[{key}] is required"),
        });
    }
    value.and_then(|v| read(v, key, errors))
}

/// A section that may be left out (its defaults apply).
fn optional<T: DeserializeOwned + Default>(
    value: Option<toml::Value>,
    key: &str,
    errors: &mut Vec<TypeError>,
) -> Option<T> {
    match value {
        Some(v) => read(v, key, errors),
        None => Some(T::default()),
    }
}

/// Values of one section set aside before reading it stops: past it, a file that is not
/// a slot2lake config at all gets a screenful of errors, not one per key. The error that
/// reaches the bound is still reported.
const MAX_SET_ASIDE: usize = 32;

/// Reads a section into its type. serde stops at the first error, so a value of the
/// wrong type is set aside and the section read again, up to a bound, to report the
/// keys after it too; `None` once anything was wrong.
fn read<T: DeserializeOwned>(
    mut value: toml::Value,
    key: &str,
    errors: &mut Vec<TypeError>,
) -> Option<T> {
    let mut set_aside: Vec<Vec<Step>> = Vec::new();
    loop {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => return set_aside.is_empty().then_some(t),
            Err(e) => e,
        };
        let steps: Vec<Step> = e.path().iter().map(Step::from).collect();
        // A required key set aside comes back as "missing" at its parent: not a new error.
        if set_aside
            .iter()
            .any(|s| s.len() == steps.len() + 1 && s.starts_with(&steps))
        {
            return None;
        }
        let path = e.path().to_string();
        let message = e.into_inner().message().to_string();
        let key = if path == "." {
            key.to_string()
        } else {
            format!("{key}.{path}")
        };
        errors.push(TypeError {
            line: format!("{key}: {message}"),
            key,
        });
        if steps.is_empty() || set_aside.len() >= MAX_SET_ASIDE || !remove(&mut value, &steps) {
            return None;
        }
        set_aside.push(steps);
    }
}

/// One step of a serde error's path.
#[derive(Debug, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
    Other,
}

impl From<&serde_path_to_error::Segment> for Step {
    fn from(s: &serde_path_to_error::Segment) -> Self {
        match s {
            serde_path_to_error::Segment::Map { key } => Step::Key(key.clone()),
            serde_path_to_error::Segment::Seq { index } => Step::Index(*index),
            _ => Step::Other,
        }
    }
}

/// Removes the value at a serde path from a TOML tree; `false` when it is not there.
fn remove(value: &mut toml::Value, steps: &[Step]) -> bool {
    let Some((last, parents)) = steps.split_last() else {
        return false;
    };
    let mut at = value;
    for step in parents {
        let next = match (step, at) {
            (Step::Key(key), toml::Value::Table(t)) => t.get_mut(key),
            (Step::Index(index), toml::Value::Array(a)) => a.get_mut(*index),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match (last, at) {
        (Step::Key(key), toml::Value::Table(t)) => t.remove(key).is_some(),
        _ => false,
    }
}

/// `[source]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `postgres://user:password@host:port/db`; the password never reaches logs.
    pub url: SecretUrl,
    /// Replication slot, created when missing.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Publication, created for `[[tables]]` when missing.
    #[serde(default = "default_publication")]
    pub publication: String,
    /// What to do about a first snapshot.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// pgoutput binary mode: `auto` uses it when every published column has a binary decoder.
    #[serde(default)]
    pub binary: BinaryMode,
    /// Connections copying a snapshot at once (default: the number of cores).
    pub max_parallel: Option<usize>,
    /// How long a catalog statement may wait for the server's answer before the
    /// connection is dropped and opened again (COPY and the stream are not bounded by it).
    #[serde(default = "default_query_timeout", with = "humantime_serde")]
    pub query_timeout: Duration,
}

impl SourceConfig {
    /// Snapshot workers: `max_parallel`, or the number of cores.
    pub fn parallelism(&self) -> usize {
        self.max_parallel
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1)
    }
}

/// `[source] snapshot`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Backfill each table from a snapshot that lines up with the slot on the first run.
    #[default]
    Initial,
    /// Never backfill; stream changes only.
    Never,
    /// Like `initial`, and take a new snapshot when the slot is missing or lost its WAL.
    WhenNeeded,
}

/// `[source] binary`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryMode {
    /// Binary when every published column type has a binary decoder, else text.
    #[default]
    Auto,
    /// Always ask pgoutput for binary values.
    On,
    /// Always ask pgoutput for text values.
    Off,
}

/// `[output]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// `file:///var/lib/lake`, a plain path, or `s3://bucket/prefix`.
    pub url: OutputUrl,
    /// Folder for watermarks, relative to the output.
    #[serde(default = "default_metadata_prefix")]
    pub metadata_prefix: String,
    /// Parquet compression codec.
    #[serde(default)]
    pub compression: Compression,
    /// Largest file written per table partition (e.g. "256MB").
    #[serde(default = "default_max_file_size")]
    pub max_file_size: ByteSize,
    /// Rows per row group, at most.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// S3: the bucket's region (default: from the AWS configuration chain).
    pub region: Option<String>,
    /// S3-compatible endpoint (MinIO, moto), e.g. `http://127.0.0.1:9000`; path-style requests.
    pub endpoint: Option<String>,
    /// S3 server-side encryption: `AES256` (SSE-S3) or `aws:kms` (SSE-KMS).
    pub sse: Option<String>,
    /// KMS key id or ARN for `sse = "aws:kms"` (default: the account's S3 key).
    pub sse_kms_key_id: Option<String>,
    /// Prefix of slot2lake's own columns (`change_type`, …), for tables that have a
    /// column of the same name: e.g. `"s2l_"` gives `s2l_change_type`.
    #[serde(default)]
    pub metadata_column_prefix: String,
    /// S3: retries of a failed request, with exponential backoff, before the flush fails.
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
    /// Table format: plain Hive-partitioned Parquet, or Apache Iceberg tables.
    #[serde(default)]
    pub format: TableFormat,
}

/// `[output] format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TableFormat {
    /// Hive-partitioned Parquet folders, read through the catalog's views.
    #[default]
    Parquet,
    /// The same Parquet files committed to an Apache Iceberg table per source table,
    /// its metadata in the table folder (`metadata/v<N>.metadata.json`).
    Iceberg,
}

/// Parquet compression codec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Snappy: Athena's default, fast.
    #[default]
    Snappy,
    /// Zstandard (level 3): smaller files.
    Zstd,
    /// No compression.
    None,
}

/// `[spool]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Local directory for spool segments; default `<lake>/_slot2lake/<slot>/spool` for a
    /// `file://` lake, a temp folder for an `s3://` lake (whose spool lives in the lake).
    pub dir: Option<PathBuf>,
    /// Where sealed segments are kept durably: `local` (the directory) or `output` (also
    /// under `_slot2lake/<slot>/spool/` in the output store; default for `s3://`).
    pub location: Option<SpoolLocation>,
    /// Acknowledge the slot at least this often while changes arrive (e.g. "60s").
    #[serde(default = "default_ack_interval", with = "humantime_serde")]
    pub ack_interval: Duration,
    /// Seal a segment once it holds this much.
    #[serde(default = "default_segment_size")]
    pub segment_size: ByteSize,
    /// Flush early once the spool holds this much, rather than grow without limit.
    #[serde(default = "default_max_spool_bytes")]
    pub max_spool_bytes: ByteSize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: None,
            location: None,
            ack_interval: DEFAULT_ACK_INTERVAL,
            segment_size: ByteSize(DEFAULT_SEGMENT_SIZE),
            max_spool_bytes: ByteSize(DEFAULT_MAX_SPOOL_BYTES),
        }
    }
}

/// `[spool] location`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolLocation {
    /// The local directory is the durable spool.
    Local,
    /// Segments are also uploaded to the output store before the slot is acknowledged.
    Output,
}

impl SpoolConfig {
    /// Whether sealed segments are mirrored to the output store.
    pub fn mirrored(&self, output_url: &OutputUrl) -> bool {
        match self.location {
            Some(l) => l == SpoolLocation::Output,
            None => output_url.is_s3(),
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address the admin HTTP API listens on; `slot2lake flush` connects to it.
    #[serde(
        default = "default_admin_listen",
        deserialize_with = "deserialize_listen"
    )]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

/// `[retry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First delay before a failed flush (or `run --once`) is tried again.
    #[serde(default = "default_retry_min", with = "humantime_serde")]
    pub min_delay: Duration,
    /// Longest delay between attempts; `run` retries without end, degraded in `/health`.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub max_delay: Duration,
    /// How long `run --once` keeps trying before it gives up.
    #[serde(default = "default_retry_budget", with = "humantime_serde")]
    pub run_once_budget: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            min_delay: default_retry_min(),
            max_delay: default_retry_max(),
            run_once_budget: default_retry_budget(),
        }
    }
}

impl RetryConfig {
    /// The delays between attempts.
    pub fn backoff(&self) -> crate::retry::Backoff {
        crate::retry::Backoff {
            min: self.min_delay,
            max: self.max_delay,
        }
    }
}

/// `[maintenance]`: when `run` compacts the lake, and what Iceberg maintenance keeps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// `run` and `run --once` run `compact` on every table after a flush once the last
    /// compaction is this old; unset, only `slot2lake compact` (from cron) does.
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Snapshots older than this are expired (the current one, and any a retried flush
    /// may still look for, are always kept); their files go with them.
    #[serde(default = "default_snapshot_retention", with = "humantime_serde")]
    pub snapshot_retention: Duration,
    /// Files no snapshot lists are removed once this old (younger ones may belong to a
    /// commit under way).
    #[serde(default = "default_orphan_age", with = "humantime_serde")]
    pub orphan_age: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            interval: None,
            snapshot_retention: default_snapshot_retention(),
            orphan_age: default_orphan_age(),
        }
    }
}

fn default_snapshot_retention() -> Duration {
    Duration::from_secs(5 * 24 * 3600)
}
fn default_orphan_age() -> Duration {
    Duration::from_secs(3 * 24 * 3600)
}

fn default_query_timeout() -> Duration {
    DEFAULT_QUERY_TIMEOUT
}
fn default_retry_min() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(300)
}
fn default_retry_budget() -> Duration {
    Duration::from_secs(15 * 60)
}

/// `[log]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json` (one object per line, for log collectors).
    #[serde(default)]
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (colour only at a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[flush]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlushConfig {
    /// Cron expression, UTC.
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// Memory for rows waiting to be encoded and row groups being built.
    #[serde(default = "default_memory_limit")]
    pub memory_limit: ByteSize,
    /// No longer used (partitions are written one at a time); accepted so older configs load.
    #[serde(default)]
    pub max_open_files: Option<usize>,
}

impl Default for FlushConfig {
    fn default() -> Self {
        Self {
            schedule: default_schedule(),
            memory_limit: default_memory_limit(),
            max_open_files: None,
        }
    }
}

/// `[catalog]` as written; [`CatalogConfig`] is what it means. No `Debug`: it holds a
/// REST catalog's token or client secret in the clear.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    /// Which catalog to update after a flush.
    #[serde(default)]
    kind: CatalogKind,
    /// Glue database.
    database: Option<String>,
    /// Glue crawler (`kind = "glue"`).
    crawler: Option<String>,
    /// Create the crawler when it does not exist (needs `role`).
    #[serde(default)]
    create: bool,
    /// IAM role the crawler runs as, for `create = true`.
    role: Option<String>,
    /// Wait for the crawl to finish and report its status.
    #[serde(default)]
    wait: bool,
    /// Glue endpoint override (tests, private endpoints).
    endpoint: Option<String>,
    /// Glue region (default: `output.region`, then the AWS configuration chain).
    region: Option<String>,
    /// Iceberg REST catalog base URI (`kind = "iceberg-rest"`).
    uri: Option<String>,
    /// Iceberg REST warehouse, sent to the catalog's `/v1/config`.
    warehouse: Option<String>,
    /// Iceberg REST namespace (dot-separated levels).
    namespace: Option<String>,
    /// Iceberg REST bearer token.
    token: Option<String>,
    /// Iceberg REST OAuth2 client credentials, `client_id:client_secret`.
    credential: Option<String>,
    /// Iceberg REST OAuth2 token endpoint (default: `<uri>/v1/oauth/tokens`).
    oauth2_uri: Option<String>,
    /// Iceberg REST OAuth2 scope.
    scope: Option<String>,
}

/// `[catalog]`: the catalog told about new data after each flush, with the fields its
/// kind needs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "RawCatalog")]
pub struct CatalogConfig {
    /// Which catalog, and what it needs.
    pub target: Catalog,
    /// Glue endpoint override (tests, private endpoints).
    pub endpoint: Option<String>,
    /// Glue region (default: `output.region`, then the AWS configuration chain).
    pub region: Option<String>,
}

/// The catalog kinds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Catalog {
    /// No catalog.
    None,
    /// The lake itself is the catalog (`slot2lake catalog ...`).
    #[default]
    Local,
    /// Start an AWS Glue crawler after each flush.
    Glue {
        /// The Glue database the crawler writes into.
        database: String,
        /// The crawler.
        crawler: String,
        /// Create the crawler when missing, running as this IAM role.
        create_with_role: Option<String>,
        /// Wait for the crawl and fail when it does.
        wait: bool,
    },
    /// Create and update Glue tables and partitions directly.
    GlueDirect {
        /// The Glue database (created when missing).
        database: String,
    },
    /// Register the Iceberg tables in an Iceberg REST catalog and keep it at their commits.
    IcebergRest(RestCatalogConfig),
}

/// Where an Iceberg REST catalog is and how to sign in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestCatalogConfig {
    /// Base URI (the part before `/v1/`).
    pub uri: String,
    /// Warehouse, when the catalog serves several.
    pub warehouse: Option<String>,
    /// Namespace levels.
    pub namespace: Vec<String>,
    /// How to authenticate.
    pub auth: RestAuth,
}

/// Iceberg REST authentication.
#[derive(Clone, PartialEq, Eq)]
pub enum RestAuth {
    /// No `Authorization` header.
    None,
    /// A fixed bearer token.
    Token(String),
    /// OAuth2 client credentials exchanged for a token at `uri`.
    ClientCredentials {
        /// The token endpoint.
        uri: String,
        /// Client id.
        id: String,
        /// Client secret.
        secret: String,
        /// Requested scope.
        scope: String,
    },
}

impl fmt::Debug for RestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestAuth::None => f.write_str("None"),
            RestAuth::Token(_) => f.write_str("Token(***)"),
            RestAuth::ClientCredentials { uri, id, scope, .. } => write!(
                f,
                "ClientCredentials {{ uri: {uri:?}, id: {id:?}, secret: ***, scope: {scope:?} }}"
            ),
        }
    }
}

impl Catalog {
    /// The Glue database, for Glue kinds.
    pub fn database(&self) -> Option<&str> {
        match self {
            Catalog::Glue { database, .. } | Catalog::GlueDirect { database } => Some(database),
            Catalog::None | Catalog::Local | Catalog::IcebergRest(_) => None,
        }
    }

    /// `kind` as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            Catalog::None => "none",
            Catalog::Local => "local",
            Catalog::Glue { .. } => "glue",
            Catalog::GlueDirect { .. } => "glue-direct",
            Catalog::IcebergRest(_) => "iceberg-rest",
        }
    }
}

impl TryFrom<RawCatalog> for CatalogConfig {
    type Error = String;

    fn try_from(raw: RawCatalog) -> Result<Self, String> {
        let database = || {
            raw.database
                .clone()
                .ok_or("database is required for a Glue catalog")
        };
        let target = match raw.kind {
            CatalogKind::None => Catalog::None,
            CatalogKind::Local => Catalog::Local,
            CatalogKind::GlueDirect => Catalog::GlueDirect {
                database: database()?,
            },
            CatalogKind::IcebergRest => Catalog::IcebergRest(rest_catalog(&raw)?),
            CatalogKind::Glue => Catalog::Glue {
                database: database()?,
                crawler: raw
                    .crawler
                    .clone()
                    .ok_or("crawler is required when kind = \"glue\"")?,
                create_with_role: match (raw.create, raw.role.clone()) {
                    (true, None) => {
                        return Err("role is required to create the crawler (create = true)".into())
                    }
                    (true, role) => role,
                    (false, _) => None,
                },
                wait: raw.wait,
            },
        };
        Ok(CatalogConfig {
            target,
            endpoint: raw.endpoint,
            region: raw.region,
        })
    }
}

/// The `iceberg-rest` fields of `[catalog]`.
fn rest_catalog(raw: &RawCatalog) -> Result<RestCatalogConfig, String> {
    let uri = raw.uri.clone().ok_or(
        "uri is required when kind = \"iceberg-rest\" (the catalog's base URI, before /v1/)",
    )?;
    if !(uri.starts_with("http://") || uri.starts_with("https://")) {
        return Err(format!("uri must be http:// or https:// (got {uri:?})"));
    }
    let uri = uri.trim_end_matches('/').to_string();
    let namespace: Vec<String> = raw
        .namespace
        .as_deref()
        .ok_or("namespace is required when kind = \"iceberg-rest\"")?
        .split('.')
        .map(str::to_string)
        .collect();
    if namespace.iter().any(String::is_empty) {
        return Err("namespace: empty level (write levels as a.b)".into());
    }
    let auth = match (&raw.token, &raw.credential) {
        (Some(_), Some(_)) => return Err("set token or credential, not both".into()),
        (Some(t), None) => RestAuth::Token(t.clone()),
        (None, Some(c)) => {
            let (id, secret) = c
                .split_once(':')
                .ok_or("credential must be client_id:client_secret")?;
            RestAuth::ClientCredentials {
                uri: raw
                    .oauth2_uri
                    .clone()
                    .unwrap_or_else(|| format!("{uri}/v1/oauth/tokens")),
                id: id.to_string(),
                secret: secret.to_string(),
                scope: raw.scope.clone().unwrap_or_else(|| "catalog".into()),
            }
        }
        (None, None) => RestAuth::None,
    };
    Ok(RestCatalogConfig {
        uri,
        warehouse: raw.warehouse.clone(),
        namespace,
        auth,
    })
}

/// `[catalog] kind`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum CatalogKind {
    /// No catalog.
    None,
    /// The lake itself is the catalog (`slot2lake catalog ...`).
    #[default]
    Local,
    /// Start an AWS Glue crawler.
    Glue,
    /// Update Glue tables and partitions directly.
    GlueDirect,
    /// Keep an Iceberg REST catalog at the Iceberg tables' commits.
    IcebergRest,
}

/// `[[tables]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `schema.table` (or `table`, meaning `public.table`).
    pub name: String,
    /// `processing_date`, or a date/timestamp column of the table.
    #[serde(default = "default_partition_by")]
    pub partition_by: String,
    /// SQL condition limiting the first snapshot, e.g. `order_date >= current_date - 30`.
    pub snapshot_where: Option<String>,
    /// Folder (and Glue table) name; default: the table's name. Set it to keep the old
    /// folder after renaming the table in PostgreSQL.
    pub folder: Option<String>,
    /// `output.metadata_column_prefix`, copied here when the config is loaded.
    #[serde(skip)]
    pub meta_prefix: String,
}

impl TableConfig {
    /// The table's schema and name, `public` when no schema is given.
    pub fn qualified(&self) -> (&str, &str) {
        match self.name.split_once('.') {
            Some((schema, name)) => (schema, name),
            None => ("public", self.name.as_str()),
        }
    }

    /// The folder under the output, and the name used in file names and watermarks.
    pub fn folder(&self) -> &str {
        self.folder.as_deref().unwrap_or(self.qualified().1)
    }

    /// The partition column, when partitioned by a column rather than flush time.
    pub fn partition_column(&self) -> Option<&str> {
        (self.partition_by != PROCESSING_DATE).then_some(self.partition_by.as_str())
    }
}

fn default_slot() -> String {
    DEFAULT_SLOT.into()
}
fn default_publication() -> String {
    DEFAULT_PUBLICATION.into()
}
fn default_metadata_prefix() -> String {
    DEFAULT_METADATA_PREFIX.into()
}
fn default_schedule() -> Schedule {
    Schedule::parse(DEFAULT_SCHEDULE).unwrap_or_else(|e| panic!("the default schedule: {e}"))
}
fn default_max_file_size() -> ByteSize {
    ByteSize(DEFAULT_MAX_FILE_SIZE)
}
fn default_row_group_rows() -> usize {
    DEFAULT_ROW_GROUP_ROWS
}
fn default_memory_limit() -> ByteSize {
    ByteSize(DEFAULT_MEMORY_LIMIT)
}
fn default_ack_interval() -> Duration {
    DEFAULT_ACK_INTERVAL
}
fn default_segment_size() -> ByteSize {
    ByteSize(DEFAULT_SEGMENT_SIZE)
}
fn default_max_retries() -> usize {
    10
}
fn default_max_spool_bytes() -> ByteSize {
    ByteSize(DEFAULT_MAX_SPOOL_BYTES)
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9187))
}

fn deserialize_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an address like {DEFAULT_ADMIN_LISTEN}"
        ))
    })
}

/// `[output] url`, parsed: where the lake is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputUrl {
    /// A local folder: `file:///path` or a plain path (relative to the working directory).
    File {
        /// As written.
        raw: String,
        /// The folder.
        path: PathBuf,
    },
    /// An S3 bucket and key prefix: `s3://bucket/prefix`.
    S3 {
        /// As written.
        raw: String,
        /// The bucket.
        bucket: String,
        /// Key prefix inside it, without leading or trailing `/` (may be empty).
        prefix: String,
    },
}

impl OutputUrl {
    /// Parses `file://…`, `s3://bucket/prefix` or a plain path.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if let Some(rest) = raw.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err("s3:// needs a bucket: s3://bucket/prefix".into());
            }
            return Ok(Self::S3 {
                raw: raw.to_string(),
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        let path = match raw.strip_prefix("file://") {
            Some(rest) => rest,
            None => match raw.split_once("://") {
                Some((scheme, _)) => {
                    return Err(format!(
                        "unsupported scheme {scheme}://; use file:///path or s3://bucket/prefix"
                    ))
                }
                None => raw,
            },
        };
        Ok(Self::File {
            raw: raw.to_string(),
            path: PathBuf::from(path),
        })
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        match self {
            Self::File { raw, .. } | Self::S3 { raw, .. } => raw,
        }
    }

    /// Whether the lake is in S3.
    pub fn is_s3(&self) -> bool {
        matches!(self, Self::S3 { .. })
    }
}

impl fmt::Display for OutputUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for OutputUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `[flush] schedule`, parsed once: a cron expression in UTC.
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    cron: croner::Cron,
}

impl Schedule {
    /// Parses `minute hour day month weekday`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cron = text.parse::<croner::Cron>().map_err(|e| {
            format!("{text:?} is not a cron expression (minute hour day month weekday, UTC): {e}")
        })?;
        Ok(Self {
            text: text.to_string(),
            cron,
        })
    }

    /// The next time the schedule fires after `t`.
    pub fn next_after(
        &self,
        t: &chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        self.cron.find_next_occurrence(t, false).ok()
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}
fn default_partition_by() -> String {
    PROCESSING_DATE.into()
}

/// A size written as `"256MB"`, `"1GiB"` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => s
                .parse::<bytesize::ByteSize>()
                .map(|b| ByteSize(b.as_u64()))
                .map_err(|e| serde::de::Error::custom(format!("invalid size {s:?}: {e}"))),
        }
    }
}

/// A connection URL whose password is never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replaces the password of a URL or key=value connection string with `***`.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.has_host() => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let secret = k.eq_ignore_ascii_case("password");
                    (
                        k.into_owned(),
                        if secret { "***".into() } else { v.into_owned() },
                    )
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        _ => raw
            .split_whitespace()
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

impl Config {
    /// Reads, expands and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), &|name| {
            std::env::var(name).ok()
        })
    }

    /// Parses config text; `env` resolves `${VAR}` references.
    pub fn parse(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: origin.to_string(),
            message,
        };
        let mut value: toml::Value = toml::from_str(text)
            .map_err(|e| parse_err(e.message().to_string() + &location(text, e.span())))?;
        let mut all = Vec::new();
        expand_env(&mut value, "", env, &mut all);
        // The paths name the keys even after `${VAR}` expansion dropped the spans.
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            parse_err(format!("{path}: {}", e.into_inner().message()))
        })?;
        let mut errors = Vec::new();
        let typed = raw.typed(&mut errors);
        // A key whose variable is unset is reported once, not again for its `${…}` value.
        let unset: Vec<String> = all
            .iter()
            .filter_map(|e| match e {
                ConfigError::Invalid { key, .. } => Some(key.clone()),
                _ => None,
            })
            .collect();
        all.extend(
            errors
                .into_iter()
                .filter(|e| !unset.contains(&e.key))
                .map(|e| parse_err(e.line)),
        );
        let mut config = match typed {
            Some(config) if all.is_empty() => config,
            _ => {
                return Err(match all.len() {
                    1 => all.remove(0),
                    _ => ConfigError::Several(all),
                });
            }
        };
        for t in &mut config.tables {
            t.meta_prefix = config.output.metadata_column_prefix.clone();
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule that serde cannot express; each error names its key, and all
    /// are reported at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let s = &self.source;
        if s.url.expose().trim().is_empty() {
            errors.push(invalid("source.url", "must not be empty"));
        }
        if !(s.url.expose().starts_with("postgres://")
            || s.url.expose().starts_with("postgresql://"))
        {
            errors.push(invalid(
                "source.url",
                format!("must start with postgres:// (got {})", s.url.redacted()),
            ));
        }
        errors.extend(check_identifier("source.slot", &s.slot, true).err());
        errors.extend(check_identifier("source.publication", &s.publication, false).err());

        let o = &self.output;
        if o.metadata_prefix.trim_matches('/').is_empty() || o.metadata_prefix.starts_with('_') {
            errors.push(invalid(
                "output.metadata_prefix",
                "must be a non-empty folder name not starting with '_' (names starting with '_' are slot2lake's own)",
            ));
        }
        if o.max_file_size.0 < MB {
            errors.push(invalid("output.max_file_size", "must be at least 1MB"));
        }
        if !o.metadata_column_prefix.is_empty() {
            errors.extend(
                check_identifier(
                    "output.metadata_column_prefix",
                    &o.metadata_column_prefix,
                    true,
                )
                .err(),
            );
        }
        if o.row_group_rows == 0 {
            errors.push(invalid("output.row_group_rows", "must be at least 1"));
        }
        if self.flush.memory_limit.0 < MB {
            errors.push(invalid("flush.memory_limit", "must be at least 1MB"));
        }
        if self.retry.min_delay.is_zero() || self.retry.max_delay < self.retry.min_delay {
            errors.push(invalid(
                "retry.max_delay",
                "retry.min_delay must be greater than 0s and at most retry.max_delay",
            ));
        }
        if self.spool.ack_interval.is_zero() {
            errors.push(invalid("spool.ack_interval", "must be greater than 0s"));
        }
        if self.spool.max_spool_bytes.0 < MB {
            errors.push(invalid("spool.max_spool_bytes", "must be at least 1MB"));
        }
        if let Some(sse) = &o.sse {
            if sse != "AES256" && sse != "aws:kms" {
                errors.push(invalid(
                    "output.sse",
                    format!("{sse:?}: use \"AES256\" (SSE-S3) or \"aws:kms\" (SSE-KMS)"),
                ));
            }
        }
        if o.sse_kms_key_id.is_some() && o.sse.as_deref() != Some("aws:kms") {
            errors.push(invalid(
                "output.sse_kms_key_id",
                "needs output.sse = \"aws:kms\"",
            ));
        }
        let s3 = o.url.is_s3();
        if !s3 && (o.region.is_some() || o.endpoint.is_some() || o.sse.is_some()) {
            errors.push(invalid(
                "output.url",
                "region, endpoint and sse apply to s3:// outputs only",
            ));
        }
        if o.format == TableFormat::Iceberg && matches!(self.catalog.target, Catalog::Glue { .. }) {
            errors.push(invalid(
                "catalog.kind",
                "\"glue\" (a crawler) with output.format = \"iceberg\": slot2lake registers its Iceberg tables itself; use \"glue-direct\" (or \"local\")",
            ));
        }
        if o.format != TableFormat::Iceberg
            && matches!(self.catalog.target, Catalog::IcebergRest(_))
        {
            errors.push(invalid(
                "catalog.kind",
                "\"iceberg-rest\" registers Iceberg tables: set output.format = \"iceberg\" (or use \"glue-direct\" or \"local\" for the Parquet layout)",
            ));
        }
        if self.catalog.target.database().is_some() && !s3 {
            errors.push(invalid(
                "catalog.kind",
                "Glue catalogs need an s3:// output (Athena reads S3); use \"local\" for a file:// lake",
            ));
        }

        if self.tables.is_empty() {
            errors.push(invalid(
                "tables",
                "no [[tables]] configured; add at least one, e.g. [[tables]] name = \"public.customers\"",
            ));
        }
        let mut names = HashSet::new();
        let mut folders = HashSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            let key = format!("tables[{i}]");
            let (schema, name) = t.qualified();
            errors.extend(check_identifier(&format!("{key}.name"), schema, false).err());
            errors.extend(check_identifier(&format!("{key}.name"), name, false).err());
            if let Some(f) = &t.folder {
                errors.extend(check_identifier(&format!("{key}.folder"), f, false).err());
            }
            let name = t.folder();
            if name.starts_with('_') || name.starts_with('.') {
                errors.push(invalid(
                    format!("{key}.name"),
                    "table folders starting with '_' or '.' are skipped by Hive, Glue and Athena",
                ));
            }
            if name == o.metadata_prefix.trim_matches('/') {
                errors.push(invalid(
                    format!("{key}.name"),
                    "collides with output.metadata_prefix",
                ));
            }
            if !names.insert((schema.to_string(), name.to_string())) {
                errors.push(invalid(
                    format!("{key}.name"),
                    format!("{} is listed twice", t.name),
                ));
            }
            if !folders.insert(name.to_string()) {
                errors.push(invalid(
                    format!("{key}.name"),
                    format!("another table is also named {name}; each table needs its own folder"),
                ));
            }
            if let Some(col) = t.partition_column() {
                errors.extend(check_identifier(&format!("{key}.partition_by"), col, false).err());
            }
            if let Some(w) = &t.snapshot_where {
                if w.trim().is_empty() {
                    errors.push(invalid(
                        format!("{key}.snapshot_where"),
                        "must not be empty",
                    ));
                }
                if w.contains(';') {
                    errors.push(invalid(
                        format!("{key}.snapshot_where"),
                        "must be one SQL condition, without ';'",
                    ));
                }
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ConfigError::Several(errors)),
        }
    }

    /// The `[[tables]]` entry for `schema.table`.
    pub fn table(&self, schema: &str, name: &str) -> Option<&TableConfig> {
        self.tables.iter().find(|t| t.qualified() == (schema, name))
    }
}

/// Postgres identifiers we create or quote: plain names keep SQL and object paths simple.
fn check_identifier(key: &str, value: &str, slot: bool) -> Result<(), ConfigError> {
    let ok_char = |c: char| {
        if slot {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
        } else {
            c.is_alphanumeric() || c == '_' || c == '$'
        }
    };
    if value.is_empty() || value.len() > 63 || !value.chars().all(ok_char) {
        let rule = if slot {
            "lowercase letters, digits and '_' (PostgreSQL's rule for slot names), at most 63"
        } else {
            "letters, digits, '_' and '$', at most 63"
        };
        return Err(invalid(
            key,
            format!("{value:?} is not a valid name: use {rule}"),
        ));
    }
    Ok(())
}

/// Expands `${VAR}` in every string value; each error names the key and the variable.
fn expand_env(
    value: &mut toml::Value,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) {
    match value {
        toml::Value::String(s) if s.contains("${") => match expand_str(s, key, env) {
            Ok(expanded) => *s = expanded,
            Err(e) => errors.push(e),
        },
        toml::Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                expand_env(v, &format!("{key}[{i}]"), env, errors);
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                let sub = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                expand_env(v, &sub, env, errors);
            }
        }
        _ => {}
    }
}

fn expand_str(
    s: &str,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| invalid(key, "unterminated ${ in value; write ${NAME}"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(
                key,
                format!("${{{name}}} is not a valid variable name"),
            ));
        }
        let v = env(name).ok_or_else(|| {
            invalid(
                key,
                format!("environment variable {name} is not set (referenced as ${{{name}}})"),
            )
        })?;
        out.push_str(&v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => {
            let line = text[..r.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

/// An annotated example config, printed by `slot2lake config example`.
pub const EXAMPLE: &str = include_str!("../slot2lake.example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PGPASSWORD" => Some("s3cr3t".into()),
            _ => None,
        }
    }

    const MINIMAL: &str = r#"
[source]
url = "postgres://u:${PGPASSWORD}@127.0.0.1:5432/db"
[output]
url = "file:///tmp/lake"
[[tables]]
name = "public.customers"
"#;

    #[test]
    fn type_errors_name_the_key_path() {
        let cases = [
            ("[spool]\nack_interval = \"soon\"\n", "spool.ack_interval"),
            ("[retry]\nmax_delay = 5\n", "retry.max_delay"),
            ("[log]\nformat = \"xml\"\n", "log.format"),
            (
                "[[tables]]\nname = \"a.b\"\n[[tables]]\nname = 42\n",
                "tables[2].name",
            ),
        ];
        for (extra, key) in cases {
            let text = format!("{MINIMAL}{extra}");
            let err = Config::parse(&text, "t.toml", &env)
                .expect_err(extra)
                .to_string();
            assert!(err.contains(key), "{extra:?}: {err}");
        }
        let missing = "[source]\nslot = \"s\"\n[output]\nurl = \"file:///x\"\n";
        let err = Config::parse(missing, "t.toml", &env)
            .expect_err("missing url")
            .to_string();
        assert!(err.contains("source") && err.contains("url"), "{err}");
    }

    #[test]
    fn parsed_values_name_their_key() {
        let cases = [
            (
                "[admin]\nlisten = \"localhost\"\n",
                "admin.listen",
                "not an address",
            ),
            (
                "[flush]\nschedule = \"daily\"\n",
                "flush.schedule",
                "not a cron",
            ),
        ];
        for (extra, key, what) in cases {
            let text = format!("{MINIMAL}{extra}");
            let err = Config::parse(&text, "t.toml", &env)
                .expect_err(extra)
                .to_string();
            assert!(err.contains(key) && err.contains(what), "{extra:?}: {err}");
        }
        for (url, what) in [
            ("s3:///x", "needs a bucket"),
            ("gs://b/p", "unsupported scheme gs://"),
            ("  ", "must not be empty"),
        ] {
            let text = MINIMAL.replace("file:///tmp/lake", url);
            let err = Config::parse(&text, "t.toml", &env)
                .expect_err(url)
                .to_string();
            assert!(
                err.contains("output.url") && err.contains(what),
                "{url:?}: {err}"
            );
        }
        let parsed = [
            ("s3://bucket/a/b/", ("bucket", "a/b")),
            ("s3://bucket", ("bucket", "")),
        ];
        for (url, (b, p)) in parsed {
            match OutputUrl::parse(url) {
                Ok(OutputUrl::S3 { bucket, prefix, .. }) => {
                    assert_eq!((bucket.as_str(), prefix.as_str()), (b, p), "{url}")
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        assert!(matches!(
            OutputUrl::parse("lake"),
            Ok(OutputUrl::File { path, .. }) if path == Path::new("lake")
        ));
    }

    #[test]
    fn every_broken_rule_is_reported_at_once() {
        let text = format!(
            "{MINIMAL}[spool]\nack_interval = \"0s\"\n[flush]\nmemory_limit = \"10\"\n[[tables]]\nname = \"public.customers\"\n"
        );
        let err = Config::parse(&text, "t.toml", &env)
            .expect_err("three rules broken")
            .to_string();
        for key in ["spool.ack_interval", "flush.memory_limit", "tables[1].name"] {
            assert!(err.contains(key), "{key} missing from: {err}");
        }
        // One line per broken rule (a repeated table breaks two).
        assert!(err.lines().count() >= 3, "{err}");
    }

    #[test]
    fn every_type_error_is_reported_at_once() {
        // Each case: extra TOML, and the exact error lines (after "t.toml: ").
        let cases: [(&str, &[&str]); 5] = [
            // Two wrong types in one section, one in another.
            (
                "[spool]\nack_interval = \"soon\"\nsegment_size = true\n[retry]\nmax_delay = 5\n",
                &[
                    "spool.ack_interval",
                    "spool.segment_size",
                    "retry.max_delay",
                ],
            ),
            // A required key of the wrong type is one error, not also "missing".
            (
                "[[tables]]\nname = 42\n[[tables]]\nname = \"public.x\"\npartition_by = 7\n",
                &["tables[1].name", "tables[2].partition_by"],
            ),
            // An unknown key is set aside like a wrong type.
            (
                "[flush]\nschedul = \"0 1 * * *\"\n[log]\nformat = \"xml\"\n",
                &["flush.schedul: unknown field", "log.format"],
            ),
            // An unknown section, and a type error elsewhere.
            (
                "[sorce]\nslot = \"x\"\n[admin]\nlisten = 8080\n",
                &["sorce: unknown section", "admin.listen"],
            ),
            // A section read through its own raw form; lines follow the sections' order.
            (
                "[catalog]\nkind = 3\n[spool]\nack_interval = []\n",
                &["spool.ack_interval", "catalog.kind"],
            ),
        ];
        for (extra, keys) in cases {
            let err = Config::parse(&format!("{MINIMAL}{extra}"), "t.toml", &env)
                .expect_err(extra)
                .to_string();
            let lines: Vec<&str> = err.lines().collect();
            assert_eq!(lines.len(), keys.len(), "{extra}\n{err}");
            for (line, key) in lines.iter().zip(keys) {
                assert!(
                    line.starts_with(&format!("t.toml: {key}")),
                    "{extra}\n{err}"
                );
            }
        }
        let missing = Config::parse("[spool]\nack_interval = 1\n", "t.toml", &env)
            .expect_err("no [source], no [output]")
            .to_string();
        for key in [
            "[source] is required",
            "[output] is required",
            "spool.ack_interval",
        ] {
            assert!(missing.contains(key), "{key} missing from: {missing}");
        }
        let text = format!("{MINIMAL}[admin]\nlisten = \"${{NOPE}}\"\n[log]\nformat = 1\n")
            .replace("${PGPASSWORD}", "${ALSO_NOPE}");
        let unset = Config::parse(&text, "t.toml", &env)
            .expect_err("unset variables")
            .to_string();
        for key in [
            "source.url",
            "ALSO_NOPE",
            "admin.listen",
            "NOPE",
            "log.format",
        ] {
            assert!(unset.contains(key), "{key} missing from: {unset}");
        }
        assert_eq!(unset.lines().count(), 3, "{unset}");
    }

    #[test]
    fn a_section_full_of_mistakes_is_reported_up_to_the_bound() {
        // Twice the bound of unknown keys in one section, and one type error elsewhere:
        // the section stops at the bound, the other section is still read.
        let spool: String = (0..2 * MAX_SET_ASIDE)
            .map(|i| format!("unknown_{i} = 1\n"))
            .collect();
        let text = format!("{MINIMAL}[spool]\n{spool}[log]\nformat = 1\n");
        let err = Config::parse(&text, "t.toml", &env)
            .expect_err("mistakes")
            .to_string();
        let spool_lines = err.lines().filter(|l| l.contains("t.toml: spool.")).count();
        assert_eq!(spool_lines, MAX_SET_ASIDE + 1, "{err}");
        assert!(
            err.lines().any(|l| l.starts_with("t.toml: log.format")),
            "{err}"
        );
    }

    #[test]
    fn expands_env_and_applies_defaults() {
        let c = Config::parse(MINIMAL, "t.toml", &env).expect("valid");
        assert_eq!(
            c.source.url.expose(),
            "postgres://u:s3cr3t@127.0.0.1:5432/db"
        );
        assert_eq!(c.source.slot, DEFAULT_SLOT);
        assert_eq!(c.flush.schedule.as_str(), DEFAULT_SCHEDULE);
        assert_eq!(c.tables[0].partition_by, PROCESSING_DATE);
        assert!(!format!("{:?}", c.source.url).contains("s3cr3t"));
    }

    #[test]
    fn example_config_is_valid() {
        let all = |_: &str| Some("x".to_string());
        Config::parse(EXAMPLE, "example", &all).expect("example parses");
        // The configs docker/docker-compose.yml mounts (it cannot run here).
        for (name, text) in [
            (
                "docker/slot2lake.toml",
                include_str!("../docker/slot2lake.toml"),
            ),
            (
                "docker/slot2lake-iceberg.toml",
                include_str!("../docker/slot2lake-iceberg.toml"),
            ),
        ] {
            Config::parse(text, name, &all).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let text = MINIMAL.replace("[output]", "[output]\nurll = \"x\"");
        let err = Config::parse(&text, "t.toml", &env)
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("urll"), "{err}");
    }

    #[test]
    fn missing_variable_is_named_with_key() {
        let text = MINIMAL.replace("${PGPASSWORD}", "${NOPE}");
        let err = Config::parse(&text, "t.toml", &env)
            .expect_err("unset var")
            .to_string();
        assert!(err.contains("source.url") && err.contains("NOPE"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let text = MINIMAL.replace(
            "name = \"public.customers\"",
            "name = \"public.customers\"\npartition_by = \"bad col\"",
        );
        let err = Config::parse(&text, "t.toml", &env)
            .expect_err("bad column")
            .to_string();
        assert!(err.starts_with("tables[0].partition_by"), "{err}");
        let text = MINIMAL.replace("[output]", "[flush]\nmemory_limit = \"1KB\"\n[output]");
        let err = Config::parse(&text, "t.toml", &env)
            .expect_err("too small")
            .to_string();
        assert!(err.starts_with("flush.memory_limit"), "{err}");
    }

    #[test]
    fn an_iceberg_rest_catalog_is_read_with_its_credentials_kept_out_of_debug() {
        let iceberg = MINIMAL.replace("[output]", "[output]\nformat = \"iceberg\"");
        let with =
            |catalog: &str| format!("{iceberg}[catalog]\nkind = \"iceberg-rest\"\n{catalog}");
        let c = Config::parse(
            &with("uri = \"https://cat.example/api/\"\nnamespace = \"lake.shop\"\ncredential = \"id:${PGPASSWORD}\"\n"),
            "t.toml",
            &env,
        )
        .expect("valid");
        let Catalog::IcebergRest(rest) = &c.catalog.target else {
            panic!("{:?}", c.catalog.target);
        };
        assert_eq!(rest.uri, "https://cat.example/api");
        assert_eq!(rest.namespace, vec!["lake", "shop"]);
        assert_eq!(
            rest.auth,
            RestAuth::ClientCredentials {
                uri: "https://cat.example/api/v1/oauth/tokens".into(),
                id: "id".into(),
                secret: "s3cr3t".into(),
                scope: "catalog".into(),
            }
        );
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let token = Config::parse(
            &with("uri = \"http://h\"\nnamespace = \"n\"\ntoken = \"${PGPASSWORD}\"\n"),
            "t.toml",
            &env,
        )
        .expect("valid");
        assert!(!format!("{token:?}").contains("s3cr3t"));

        for (catalog, want) in [
            ("namespace = \"n\"\n", "uri is required"),
            (
                "uri = \"cat.example\"\nnamespace = \"n\"\n",
                "http:// or https://",
            ),
            ("uri = \"http://h\"\n", "namespace is required"),
            ("uri = \"http://h\"\nnamespace = \"a..b\"\n", "empty level"),
            (
                "uri = \"http://h\"\nnamespace = \"n\"\ncredential = \"nocolon\"\n",
                "client_id:client_secret",
            ),
            (
                "uri = \"http://h\"\nnamespace = \"n\"\ncredential = \"a:b\"\ntoken = \"t\"\n",
                "not both",
            ),
        ] {
            let err = Config::parse(&with(catalog), "t.toml", &env)
                .expect_err(catalog)
                .to_string();
            assert!(err.contains(want), "{catalog:?}: {err}");
        }
        let parquet = format!(
            "{MINIMAL}[catalog]\nkind = \"iceberg-rest\"\nuri = \"http://h\"\nnamespace = \"n\"\n"
        );
        let err = Config::parse(&parquet, "t.toml", &env)
            .expect_err("parquet")
            .to_string();
        assert!(err.contains("output.format = \"iceberg\""), "{err}");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url("postgres://u@h/db?password=pw&sslmode=require"),
            "postgres://u@h/db?password=***&sslmode=require"
        );
        assert_eq!(redact_url("host=h password=pw"), "host=h password=***");
    }
}
