//! What a run opened (source, lake, checkpoints, spool, the configured tables) and the
//! steps that need all of them: recovery at start (decided by [`crate::recovery`]),
//! the first-run snapshot and backfills, and the flush (its states are
//! [`crate::flush::commit`]'s). `service` drives them for `run` and `run --once`.
//!
//! ```text
//!  open:      settings, tables, publication, lake, spool
//!  prepare:   recovery plan → finish an intent / a staged snapshot → first run or
//!             backfill of new tables → (replication stream, start position)
//!  flush:     segments → encode (temp folder) → intent → publish → watermarks
//!  after:     catalog → spool GC → partitions and reshaped keyless tables re-snapshotted
//! ```
//!
//! What is durable where, and why a crash anywhere loses nothing and writes nothing
//! twice: the slot is acknowledged only to what the spool or the watermarks hold, and
//! watermarks only after the files before them exist. A crash before the watermarks
//! leaves the intent (or only temp files), and the rerun writes the same file names
//! (existing ones are skipped); a crash after them leaves at most work that is repeated
//! idempotently (ack, catalog, GC).

mod flushes;
mod iceberg;
mod prepare;
mod snapshots;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::catalog::{self, CatalogError, CatalogTable};
use crate::checkpoint::SlotKeys;
use crate::checkpoint::{
    backfill_state, partition_action, seed_timestamp, CheckpointError, Checkpoints, FileSizes,
    FlushIntent, PartitionAction, PartitionRef, SnapshotPhase, SnapshotState, StagedFile,
    Watermark, WatermarkKind, FIRST_RUN,
};
use crate::config::{BinaryMode, Config};
use crate::decode::relation::KnownTable;
use crate::decode::{ColumnKind, TypeCatalog};
use crate::failpoint;
use crate::flush::commit::{self, CommitTable, Committed, Encoded};
use crate::flush::{self, FlushError, Flushed};
use crate::lake::{Lake, LakeError};
use crate::lsn::Lsn;
use crate::recovery::{self, Finish};
use crate::retry::{Action, Classify};
use crate::sink::{Sink, SinkError, SinkOptions, WrittenFile};
use crate::source::introspect::{self, TableError, TableInfo};
use crate::source::replication::{ReplicationStream, StreamOptions};
use crate::source::snapshot::{self, SnapshotError, SnapshotPlan, SnapshotTable};
use crate::source::{self, SourceClient, SourceError};
use crate::spool::{self, Segment, SegmentHeader, Spool, SpoolError, SpoolWriter};

/// A run that failed; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The source database.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A configured table.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The lake's store.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// A checkpoint.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The spool.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The snapshot.
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    /// Writing files.
    #[error("flush: {0}")]
    Flush(#[from] FlushError),
    /// Writing files.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The catalog step (data is committed).
    #[error("catalog (the data is committed; the next flush retries): {0}")]
    Catalog(#[from] CatalogError),
    /// Glue or a REST catalog not told of an Iceberg commit: the flush's watermarks are
    /// not written; retrying commits nothing twice.
    #[error("iceberg catalog (the flush finishes once the catalog is updated; a retry commits nothing twice): {0}")]
    IcebergCatalog(CatalogError),
    /// A COPY stream that does not parse.
    #[error(transparent)]
    Copy(#[from] crate::source::copy::CopyError),
    /// Committing a flush.
    #[error("flush: {0}")]
    Commit(#[from] crate::flush::commit::CommitError),
    /// The lake and the slot disagree (found at start).
    #[error(transparent)]
    Recovery(#[from] recovery::RecoveryError),
    /// The lake and the slot disagree in a way slot2lake will not resolve alone.
    #[error("{0}")]
    State(String),
    /// The configuration, the source or this machine is not set up for the run; the
    /// message says what to change.
    #[error("{0}")]
    Setup(String),
    /// A worker thread or task of this process failed (a bug, not the input).
    #[error("{0}")]
    Task(String),
    /// Committing to an Iceberg table (`output.format = "iceberg"`).
    #[error("iceberg: {0}")]
    Iceberg(#[from] crate::iceberg::table::IcebergError),
    /// `run --once` retried until its budget was spent.
    #[error("{source}; gave up after {attempts} attempts in {seconds} s (retry.run_once_budget); the next run resumes where this one stopped")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        seconds: u64,
        /// The last attempt's failure.
        source: Box<RunError>,
    },
}

/// What a `run --once` did.
#[derive(Debug, Default, Clone)]
pub struct RunReport {
    /// Rows written by the first-run snapshot, per table folder.
    pub snapshot_rows: BTreeMap<String, u64>,
    /// Changes spooled from the slot in this run.
    pub changes_received: u64,
    /// Rows written by the flush, per table folder.
    pub flushed_rows: BTreeMap<String, u64>,
    /// Files the run wrote (snapshot and flush).
    pub files: Vec<WrittenFile>,
    /// The position the slot was acknowledged to.
    pub acked: Option<Lsn>,
    /// Where the lake is.
    pub lake: String,
}

/// How long a run waits for a slot held by a consumer that may have just died.
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Everything a run needs, opened once.
pub struct Pipeline {
    config: Config,
    source: SourceClient,
    lake: Lake,
    checkpoints: Checkpoints,
    spool: Spool,
    tables: Vec<(String, TableInfo)>,
    binary: bool,
    /// Domains, enums and arrays of the source; refreshed before each flush.
    types: std::sync::RwLock<Arc<TypeCatalog>>,
}

impl Pipeline {
    /// Connects, checks the server and tables, ensures the publication, opens the lake.
    pub async fn open(config: Config) -> Result<Self, RunError> {
        let client = source::open(&config.source).await?;
        let server = introspect::server_info(&client).await?;
        server.require_logical()?;
        let types = introspect::type_catalog(&client).await?;
        let publication = introspect::publication_info(&client, &config.source.publication).await?;
        let mut tables = Vec::new();
        for t in &config.tables {
            let info =
                introspect::table_info(&client, t, &types, &config.source.publication).await?;
            if info.partitioned && publication.is_some_and(|p| !p.via_root) {
                return Err(RunError::Setup(format!(
                    "table {} is partitioned, but publication {:?} sends its changes under each partition's name, which slot2lake cannot place: run {}",
                    t.name,
                    config.source.publication,
                    introspect::via_root_remedy(&config.source.publication)
                )));
            }
            if !info.has_identity() {
                return Err(RunError::Setup(introspect::identity_remedy(
                    &t.name,
                    info.replica_identity,
                )));
            }
            for c in info
                .schema
                .columns
                .iter()
                .filter(|c| c.kind == ColumnKind::Other)
            {
                tracing::warn!(table = %t.name, column = %c.name, type_oid = c.type_oid, "no native mapping for this column's type: it is stored as its text form");
            }
            tables.push((t.folder().to_string(), info));
        }
        let binary = match config.source.binary {
            BinaryMode::On => true,
            BinaryMode::Off => false,
            BinaryMode::Auto => tables.iter().all(|(_, i)| i.schema.decodes_binary()),
        };
        introspect::ensure_publication(&client, &config.source.publication, &config.tables).await?;
        let lake = Lake::open(&config.output).await?;
        let checkpoints = Checkpoints::new(lake.clone(), &config.source.slot);
        let spool = open_spool(&config, &lake).await?;
        Ok(Self {
            source: SourceClient::new(config.source.url.clone(), client),
            config,
            lake,
            checkpoints,
            spool,
            tables,
            binary,
            types: std::sync::RwLock::new(Arc::new(types)),
        })
    }

    fn slot(&self) -> &str {
        &self.config.source.slot
    }

    fn tmp_dir(&self) -> PathBuf {
        tmp_dir(&self.config, &self.lake)
    }

    /// Sink options for one of `share` writers working at once (memory and open files
    /// split), publishing straight into the lake.
    fn sink_options(&self, share: usize, tmp_dir: PathBuf) -> SinkOptions {
        let o = &self.config.output;
        let share = share.max(1);
        SinkOptions {
            compression: o.compression,
            max_file_bytes: o.max_file_size.0,
            row_group_rows: o.row_group_rows,
            memory_limit: usize::try_from(self.config.flush.memory_limit.0 / share as u64)
                .unwrap_or(usize::MAX),
            // One sink per snapshot worker shares the cores; a flush's one sink takes them.
            encoders: (self.config.source.parallelism() / share).max(1),
            tmp_dir,
            staging_prefix: None,
            defer_publish: false,
            may_exist: false,
        }
    }

    fn sink(
        &self,
        opts: SinkOptions,
        processed_at: DateTime<Utc>,
        lsn: Lsn,
    ) -> Result<Sink, SinkError> {
        Sink::new(
            self.lake.clone(),
            tokio::runtime::Handle::current(),
            opts,
            processed_at,
            lsn,
        )
    }

    async fn watermarks(&self) -> Result<BTreeMap<String, Option<Watermark>>, RunError> {
        let mut out = BTreeMap::new();
        for (folder, _) in &self.tables {
            out.insert(folder.clone(), self.checkpoints.watermark(folder).await?);
        }
        Ok(out)
    }

    /// The source's types, re-read so types created since startup are known; the last
    /// known catalog when the source cannot be reached.
    async fn refresh_types(&self) -> Arc<TypeCatalog> {
        let fresh = match self.source.get().await {
            Ok(c) => introspect::type_catalog(&c).await.ok(),
            Err(_) => None,
        };
        let mut guard = self.types.write().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = fresh {
            *guard = Arc::new(t);
        }
        guard.clone()
    }

    /// The configured tables as the catalog sees them.
    pub fn catalog_tables(&self) -> Vec<CatalogTable> {
        self.tables
            .iter()
            .map(|(folder, info)| CatalogTable::new(folder, Arc::new(info.schema.clone())))
            .collect()
    }

    /// What the catalog said about a configured table (by folder) at startup.
    pub fn table_info(&self, folder: &str) -> Option<&TableInfo> {
        self.tables
            .iter()
            .find(|(f, _)| f == folder)
            .map(|(_, i)| i)
    }

    /// The lake.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// A spool writer continuing after `start`.
    pub fn spool_writer(&self, start: Lsn, segment_size: u64) -> SpoolWriter {
        let header = SegmentHeader {
            format_version: spool::FORMAT_VERSION,
            slot: self.slot().to_string(),
            protocol_version: 1,
            binary: self.binary,
        };
        self.spool.writer(header, start, segment_size)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The regular connection to the source.
    pub fn source(&self) -> &SourceClient {
        &self.source
    }

    /// The spool.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Opens a replication connection for streaming (not for a first snapshot).
    pub async fn connect_stream(&self) -> Result<ReplicationStream, RunError> {
        Ok(
            ReplicationStream::connect(&self.config.source.url, &self.stream_options(self.slot()))
                .await?,
        )
    }

    /// How a replication connection to `slot` is opened: the configured publication,
    /// this run's binary mode, an existing permanent slot, starting bounded.
    pub(crate) fn stream_options(&self, slot: &str) -> StreamOptions {
        StreamOptions {
            slot: slot.to_string(),
            publication: self.config.source.publication.clone(),
            binary: self.binary,
            export_snapshot: false,
            temporary: false,
            answer_within: Some(self.config.source.query_timeout),
        }
    }

    /// Waits (briefly) until the server shows the acknowledgement.
    pub async fn wait_for_ack(&self, lsn: Lsn) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let client = match self.source.get().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the slot's confirmed position");
                    return;
                }
            };
            match introspect::slot_info(&client, self.slot()).await {
                Ok(Some(s)) if s.confirmed_flush.is_some_and(|c| c >= lsn) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the slot's confirmed position");
                    return;
                }
            }
        }
        tracing::warn!(lsn = %lsn, "the server has not confirmed the acknowledgement yet; the next run repeats it");
    }
}

/// Where files are written before they go into the lake (a flush's, a snapshot's, a
/// compaction's): inside a local lake (a rename away), else beside the spool, on the
/// disk `spool.dir` names.
pub fn tmp_dir(config: &Config, lake: &Lake) -> PathBuf {
    match lake.local_root() {
        Some(root) => SlotKeys::new(&config.source.slot).local_tmp(root),
        None => spool_dir(config, lake).join("..").join("tmp"),
    }
}

/// The spool directory: `[spool] dir`, `_slot2lake/<slot>/spool` in a `file://` lake, or a
/// temp folder (the working copy of a spool kept in an `s3://` lake).
pub fn spool_dir(config: &Config, lake: &Lake) -> PathBuf {
    if let Some(dir) = &config.spool.dir {
        return dir.clone();
    }
    match lake.local_root() {
        Some(r) => SlotKeys::new(&config.source.slot).local_spool(r),
        // Keyed by the lake too: two instances on one machine may use the same slot name
        // for different databases.
        None => std::env::temp_dir()
            .join(format!(
                "slot2lake-{}-{:08x}",
                config.source.slot,
                crc32fast::hash(config.output.url.as_str().as_bytes())
            ))
            .join("spool"),
    }
}

/// Opens the spool, mirrored to the output store when configured (the default for S3).
pub async fn open_spool(config: &Config, lake: &Lake) -> Result<Spool, SpoolError> {
    let dir = spool_dir(config, lake);
    if config.spool.mirrored(&config.output.url) {
        let prefix = SlotKeys::new(&config.source.slot).spool_mirror();
        Spool::open_mirrored(dir, lake.clone(), prefix).await
    } else {
        Spool::open(dir)
    }
}

impl Classify for RunError {
    fn action(&self) -> Action {
        match self {
            RunError::Source(e) => e.action(),
            RunError::Lake(e) => e.action(),
            RunError::Checkpoint(e) => e.action(),
            RunError::Spool(e) => e.action(),
            RunError::Snapshot(e) => e.action(),
            RunError::Flush(e) => e.action(),
            RunError::Commit(e) => e.action(),
            RunError::Sink(e) => e.action(),
            RunError::Catalog(e) | RunError::IcebergCatalog(e) => e.action(),
            RunError::Iceberg(e) => e.action(),
            RunError::Table(_)
            | RunError::Recovery(_)
            | RunError::Copy(_)
            | RunError::State(_)
            | RunError::Setup(_)
            | RunError::Task(_)
            | RunError::GaveUp { .. } => Action::Stop,
        }
    }
}
