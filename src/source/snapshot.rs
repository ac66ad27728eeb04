//! The snapshot: tables read with `COPY ... (FORMAT binary)` by parallel workers, each
//! in a transaction that imported the same exported snapshot, so every worker sees
//! exactly the rows committed before the slot's consistent point (CP), and every later
//! change comes from the slot.
//!
//! ```text
//!  exported snapshot + CP
//!    plan: per table (per partition of a partitioned one), pg_relation_size → CTID
//!          page ranges (one chunk for small ones); chunks go into one queue
//!    max_parallel workers, each: BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT '<name>'
//!      take a chunk → COPY (SELECT <published columns> … WHERE ctid range
//!                          [AND snapshot_where] [AND row filter]) TO STDOUT (FORMAT binary)
//!        async: network ──chunks──▶ blocking thread: parse → partition → the worker's
//!                                    Sink (rows grouped by partition, spilled past memory)
//!    all copied: the workers' sinks are encoded together, partition by partition
//!    progress: bars per table on a terminal, log lines otherwise, and
//!              `_slot2lake/<slot>/snapshot-progress.json` for `slot2lake status`
//! ```
//!
//! Rows are tagged SNAPSHOT with `change_lsn` = CP and a `change_seq` of their own (from
//! 0), which sorts before any change committed after CP. A re-snapshot (backfill) also writes a
//! TRUNCATE row at (CP, -1), so every older row of the table is superseded. Files go to
//! a staging prefix; the caller moves them into the table folders only once every chunk
//! is copied, so a crash never leaves a partial snapshot where Athena reads.
//! Memory: each worker's sink gets `1/max_parallel` of the flush memory. The server does
//! not sort by partition (it cost a fifth of the throughput): the sinks group the rows.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::Transaction;

use super::copy::{CopyError, CopyParser};
use super::{open, query_error, quote_ident, quote_literal, Conn, Deadline, SourceError};
use crate::checkpoint::PartitionRef;
use crate::config::SourceConfig;
use crate::decode::{ChangeType, ColumnKind, Datum, DecodeError, RowMeta, TableSchema};
use crate::lake::Lake;
use crate::lsn::Lsn;
use crate::retry::{Action, Classify};
use crate::sink::{PartitionKey, Sink, SinkError, WrittenFile};

/// Tables smaller than this many pages are copied in one chunk.
const MIN_CHUNK_PAGES: i64 = 2_000;
/// Bytes of COPY data handed from the network task to the decoder at once.
const HANDOFF_BYTES: usize = 512 * 1024;
/// Snapshot rows get distinct `change_seq`s: worker `w` numbers its rows from `w << 40`,
/// so even identical rows of a keyless table are distinct row versions.
const SEQ_WORKER_SHIFT: u32 = 40;
/// Chunks per worker, for balance when tables differ in size.
const CHUNKS_PER_WORKER: i64 = 4;

/// A snapshot failure.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading from the source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The COPY stream was malformed.
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// Writing Parquet failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A worker stopped unexpectedly.
    #[error("snapshot worker failed: {0}")]
    Worker(String),
}

impl From<DecodeError> for SnapshotError {
    fn from(e: DecodeError) -> Self {
        SnapshotError::Sink(SinkError::Decode(e))
    }
}

/// One table to copy.
#[derive(Debug, Clone)]
pub struct SnapshotTable {
    /// Folder in the lake.
    pub folder: String,
    /// Its columns.
    pub schema: Arc<TableSchema>,
    /// `snapshot_where`, if any.
    pub where_clause: Option<String>,
    /// The publication's row filter, so the snapshot holds exactly the rows it publishes.
    pub row_filter: Option<String>,
    /// A re-snapshot: a TRUNCATE row supersedes what the lake held before.
    pub supersede: bool,
    /// Copy only these partitions (as `regclass` text) of a partitioned table.
    pub only_partitions: Option<Vec<String>>,
}

/// What a snapshot wrote.
#[derive(Debug, Default)]
pub struct Copied {
    /// Files, in staging.
    pub files: Vec<WrittenFile>,
    /// Rows per table folder.
    pub rows: BTreeMap<String, u64>,
    /// When the snapshot was taken (the rows' `commit_ts`).
    pub snapshot_time: DateTime<Utc>,
    /// The partitions of each partitioned table as the snapshot saw them.
    pub partitions: BTreeMap<String, Vec<PartitionRef>>,
}

/// What the planner found: the chunks, per table its estimated rows and partitions.
struct Planned {
    chunks: Vec<Chunk>,
    estimates: Vec<i64>,
    partitions: BTreeMap<String, Vec<PartitionRef>>,
}

/// Where and how to copy.
pub struct SnapshotPlan<'a> {
    /// The database the workers connect to.
    pub source: &'a SourceConfig,
    /// The exported snapshot.
    pub snapshot_name: &'a str,
    /// The slot's consistent point.
    pub consistent_point: Lsn,
    /// The tables.
    pub tables: &'a [SnapshotTable],
    /// Workers (connections) at once.
    pub max_parallel: usize,
    /// Where progress is published for `status`: the lake and a key.
    pub progress: Option<(Lake, String)>,
}

/// A CTID page range of one table (or of one partition of it); `None` bounds are open.
#[derive(Debug, Clone)]
struct Chunk {
    table: usize,
    first: bool,
    /// The partition to read instead of the table, already quoted.
    partition: Option<String>,
    pages: Option<(i64, Option<i64>)>,
}

/// Opens a read-only transaction on an exported snapshot.
pub async fn import<'c>(
    conn: &'c mut Conn,
    snapshot_name: &str,
) -> Result<(Transaction<'c>, Deadline), SourceError> {
    let (client, deadline) = conn.transaction_parts();
    let txn = deadline
        .answer("starting the snapshot transaction", client.transaction())
        .await?;
    deadline
        .answer(
            "importing the slot's snapshot (it is only valid while the slot's creating connection waits)",
            txn.batch_execute(&format!(
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
                quote_literal(snapshot_name)
            )),
        )
        .await?;
    Ok((txn, deadline))
}

fn chunk_query(t: &SnapshotTable, chunk: &Chunk) -> String {
    let mut conds = Vec::new();
    if let Some((from, to)) = chunk.pages {
        conds.push(format!("ctid >= '({from},0)'::tid"));
        if let Some(to) = to {
            conds.push(format!("ctid < '({to},0)'::tid"));
        }
    }
    if let Some(w) = &t.where_clause {
        conds.push(format!("({w})"));
    }
    if let Some(f) = &t.row_filter {
        conds.push(format!("({f})"));
    }
    match &chunk.partition {
        Some(p) => copy_query_from(&t.schema, p, &conds),
        None => copy_query(&t.schema, &conds),
    }
}

/// `COPY (SELECT … FROM table [WHERE conds]) TO STDOUT (FORMAT binary)`; columns without
/// a binary decoder are selected as text, which [`copy_datum`] expects.
pub fn copy_query(schema: &TableSchema, conds: &[String]) -> String {
    let table = format!(
        "{}.{}",
        quote_ident(&schema.schema),
        quote_ident(&schema.name)
    );
    copy_query_from(schema, &table, conds)
}

/// [`copy_query`] reading `relation` (a partition of the table) instead of the table.
fn copy_query_from(schema: &TableSchema, relation: &str, conds: &[String]) -> String {
    let cols: Vec<String> = schema
        .columns
        .iter()
        .map(|c| {
            if c.kind == ColumnKind::Other {
                // No binary decoder: ask for the text form, as pgoutput's text mode sends it.
                format!("{}::text", quote_ident(&c.name))
            } else {
                quote_ident(&c.name)
            }
        })
        .collect();
    let mut q = format!("COPY (SELECT {} FROM {relation}", cols.join(", "));
    if !conds.is_empty() {
        q.push_str(&format!(" WHERE {}", conds.join(" AND ")));
    }
    q.push_str(") TO STDOUT (FORMAT binary)");
    q
}

/// Splits each table into CTID page ranges, sized from its current size on disk.
async fn plan_chunks(
    txn: &Transaction<'_>,
    deadline: &Deadline,
    tables: &[SnapshotTable],
    workers: usize,
) -> Result<Planned, SourceError> {
    let mut chunks = Vec::new();
    let mut estimates = Vec::new();
    let mut partitions = BTreeMap::new();
    for (i, t) in tables.iter().enumerate() {
        let name = format!(
            "{}.{}",
            quote_ident(&t.schema.schema),
            quote_ident(&t.schema.name)
        );
        // A partitioned table is read partition by partition (its leaves hold the rows),
        // so its partitions are copied in parallel and large ones split like tables.
        let rows = deadline
            .answer(
                format!("sizing {name}"),
                txn.query(
                "WITH target AS (SELECT oid, relkind FROM pg_class WHERE oid = $1::text::regclass),
                 leaves AS (
                   SELECT t.relid::oid AS relid FROM target, pg_partition_tree(target.oid) t
                   WHERE target.relkind = 'p' AND t.isleaf
                   UNION ALL SELECT oid FROM target WHERE relkind <> 'p')
                 SELECT CASE WHEN target.relkind = 'p' THEN l.relid::regclass::text END,
                        (pg_relation_size(l.relid) / current_setting('block_size')::bigint),
                        greatest(lc.reltuples, 0)::bigint,
                        l.relid
                 FROM target, leaves l JOIN pg_class lc ON lc.oid = l.relid
                 ORDER BY l.relid",
                &[&name],
            ),
            )
            .await?;
        let get = |e: tokio_postgres::Error| query_error(format!("sizing {name}"), &e);
        let mut estimate = 0;
        let first = chunks.len();
        for row in rows {
            let partition: Option<String> = row.try_get(0).map_err(get)?;
            if let Some(name) = &partition {
                partitions
                    .entry(t.folder.clone())
                    .or_insert_with(Vec::new)
                    .push(PartitionRef {
                        oid: row.try_get(3).map_err(get)?,
                        name: name.clone(),
                    });
                if t.only_partitions
                    .as_ref()
                    .is_some_and(|o| !o.contains(name))
                {
                    continue;
                }
            }
            let pages: i64 = row.try_get(1).map_err(get)?;
            estimate += row.try_get::<_, i64>(2).map_err(get)?;
            let n = if pages < MIN_CHUNK_PAGES {
                1
            } else {
                (pages / MIN_CHUNK_PAGES)
                    .min(workers as i64 * CHUNKS_PER_WORKER)
                    .max(1)
            };
            let step = (pages + n - 1) / n;
            for k in 0..n {
                // The last range is open: it also covers pages the planner did not count.
                let to = (k + 1 < n).then_some((k + 1) * step);
                chunks.push(Chunk {
                    table: i,
                    first: false,
                    partition: partition.clone(),
                    pages: (n > 1).then_some((k * step, to)),
                });
            }
        }
        match chunks.get_mut(first) {
            Some(c) => c.first = true,
            // A partitioned table without partitions: one (empty) read keeps its TRUNCATE row.
            None => chunks.push(Chunk {
                table: i,
                first: true,
                partition: None,
                pages: None,
            }),
        }
        estimates.push(estimate);
    }
    Ok(Planned {
        chunks,
        estimates,
        partitions,
    })
}

/// Copies every table with up to `max_parallel` workers; `make_sink()` gives each worker
/// its own sink, and once all have copied, their rows are encoded together (one set of
/// files per partition).
pub async fn copy_tables(
    plan: SnapshotPlan<'_>,
    make_sink: impl Fn() -> Result<Sink, SinkError>,
) -> Result<Copied, SnapshotError> {
    let workers = plan.max_parallel.max(1);
    let mut planner = open(plan.source).await?;
    let (txn, deadline) = import(&mut planner, plan.snapshot_name).await?;
    let snapshot_us: i64 = deadline
        .answer(
            "reading the snapshot time",
            txn.query_one("SELECT (extract(epoch FROM now()) * 1000000)::bigint", &[]),
        )
        .await?
        .try_get(0)
        .map_err(|e| query_error("reading the snapshot time", &e))?;
    let Planned {
        chunks,
        estimates,
        partitions,
    } = plan_chunks(&txn, &deadline, plan.tables, workers).await?;
    let snapshot_time = DateTime::from_timestamp_micros(snapshot_us).unwrap_or_else(Utc::now);
    let progress = Progress::new(plan.tables, &estimates);
    let reporter = progress.spawn_reporter(plan.progress.clone());
    tracing::info!(
        tables = plan.tables.len(),
        chunks = chunks.len(),
        workers,
        "snapshot: copying"
    );
    let queue = Arc::new(Mutex::new(chunks));
    let mut tasks = Vec::new();
    for w in 0..workers
        .min(queue.lock().map(|q| q.len()).unwrap_or(1))
        .max(1)
    {
        let sink = make_sink()?;
        let worker = Worker {
            number: w as u32,
            source: plan.source.clone(),
            snapshot_name: plan.snapshot_name.to_string(),
            tables: plan.tables.to_vec(),
            queue: queue.clone(),
            progress: progress.clone(),
            meta: (plan.consistent_point, snapshot_us),
        };
        tasks.push(tokio::spawn(worker.run(sink)));
    }
    let mut copied = Copied {
        snapshot_time,
        partitions,
        ..Copied::default()
    };
    let mut first_error = None;
    let mut sinks = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(sink)) => sinks.push(sink),
            Ok(Err(e)) => {
                // The others stop once the queue is emptied.
                if let Ok(mut q) = queue.lock() {
                    q.clear();
                }
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(SnapshotError::Worker(e.to_string()));
            }
        }
    }
    reporter.finish().await;
    if let Some(e) = first_error {
        return Err(e);
    }
    deadline
        .answer("ending the snapshot transaction", txn.commit())
        .await?;
    crate::failpoint::hit(crate::failpoint::MID_SNAPSHOT_COPY);
    // Every worker's rows of a partition go into the same files.
    copied.files = tokio::task::spawn_blocking(move || Sink::finish_all(sinks))
        .await
        .map_err(|e| SnapshotError::Worker(e.to_string()))??;
    copied.rows = progress.rows();
    Ok(copied)
}

struct Worker {
    number: u32,
    source: SourceConfig,
    snapshot_name: String,
    tables: Vec<SnapshotTable>,
    queue: Arc<Mutex<Vec<Chunk>>>,
    progress: Progress,
    meta: (Lsn, i64),
}

enum Msg {
    Chunk(Chunk),
    Data(bytes::Bytes),
}

impl Worker {
    /// Copies chunks until the queue is empty; returns the sink holding the rows.
    async fn run(self, sink: Sink) -> Result<Sink, SnapshotError> {
        let mut client = open(&self.source).await?;
        let (txn, deadline) = import(&mut client, &self.snapshot_name).await?;
        let (tx, rx) = mpsc::channel::<Msg>(4);
        let decoder = {
            let tables = self.tables.clone();
            let progress = self.progress.clone();
            let (cp, snapshot_us) = self.meta;
            let first_seq = i64::from(self.number) << SEQ_WORKER_SHIFT;
            tokio::task::spawn_blocking(move || {
                decode(rx, sink, &tables, &progress, cp, snapshot_us, first_seq)
            })
        };
        let mut stopped = false;
        'chunks: loop {
            let next = self.queue.lock().ok().and_then(|mut q| q.pop());
            let Some(chunk) = next else { break };
            let t = &self.tables[chunk.table];
            let query = chunk_query(t, &chunk);
            if tx.send(Msg::Chunk(chunk)).await.is_err() {
                stopped = true;
                break;
            }
            let what = || format!("copying {}", t.schema.qualified_name());
            let stream = txn
                .copy_out(&query)
                .await
                .map_err(|e| query_error(what(), &e))?;
            let mut stream = std::pin::pin!(stream);
            // The server sends one message per row: hand the decoder large batches, so the
            // threads do not wake each other for every row.
            // The messages are copied into one buffer: holding on to them instead would keep
            // the connection's read buffers alive, and it would allocate new ones.
            let mut batch = bytes::BytesMut::with_capacity(HANDOFF_BYTES);
            while let Some(data) = stream.next().await {
                let data = data.map_err(|e| query_error(what(), &e))?;
                if batch.capacity() - batch.len() < data.len() {
                    batch.reserve(HANDOFF_BYTES.max(data.len()));
                }
                batch.extend_from_slice(&data);
                if batch.len() >= HANDOFF_BYTES
                    && tx.send(Msg::Data(batch.split().freeze())).await.is_err()
                {
                    stopped = true;
                    break 'chunks;
                }
            }
            if !batch.is_empty() && tx.send(Msg::Data(batch.split().freeze())).await.is_err() {
                stopped = true;
                break;
            }
        }
        drop(tx);
        let sink = decoder
            .await
            .map_err(|e| SnapshotError::Worker(e.to_string()))??;
        if stopped {
            return Err(SnapshotError::Worker("decoder stopped early".into()));
        }
        deadline
            .answer("ending a snapshot transaction", txn.commit())
            .await?;
        Ok(sink)
    }
}

/// A COPY binary field as a datum (columns without a binary decoder were selected as text).
pub fn copy_datum(kind: ColumnKind, field: Option<&[u8]>) -> Datum<'_> {
    match field {
        None => Datum::Null,
        // Columns without a binary decoder were selected as ::text.
        Some(b) if kind == ColumnKind::Other => Datum::Text(b),
        Some(b) => Datum::Binary(b),
    }
}

fn decode(
    mut rx: mpsc::Receiver<Msg>,
    mut sink: Sink,
    tables: &[SnapshotTable],
    progress: &Progress,
    cp: Lsn,
    snapshot_us: i64,
    first_seq: i64,
) -> Result<Sink, SnapshotError> {
    let processing_date: NaiveDate = sink.processed_at().date_naive();
    let mut meta = RowMeta {
        change_type: ChangeType::Snapshot,
        lsn: cp.as_i64(),
        seq: first_seq,
        commit_us: snapshot_us,
    };
    let mut current: Option<(usize, CopyParser, Vec<ColumnKind>)> = None;
    let finish = |cur: &Option<(usize, CopyParser, Vec<ColumnKind>)>| -> Result<(), SnapshotError> {
        match cur {
            Some((_, p, _)) if !p.finished() => {
                Err(CopyError("stream ended before its trailer").into())
            }
            _ => Ok(()),
        }
    };
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Chunk(chunk) => {
                finish(&current)?;
                let t = &tables[chunk.table];
                if chunk.first && t.supersede {
                    let marker = RowMeta {
                        change_type: ChangeType::Truncate,
                        seq: -1,
                        ..meta
                    };
                    sink.append_truncate(&t.folder, &t.schema, processing_date, &marker)?;
                }
                let kinds = t.schema.columns.iter().map(|c| c.kind).collect();
                current = Some((chunk.table, CopyParser::new(), kinds));
            }
            Msg::Data(data) => {
                let Some((ti, parser, kinds)) = current.as_mut() else {
                    continue;
                };
                let t = &tables[*ti];
                let before = parser.rows();
                parser.feed(
                    &data,
                    |fields: &[Option<&[u8]>]| -> Result<(), SnapshotError> {
                        let key = PartitionKey::for_row(
                            &t.schema,
                            processing_date,
                            t.schema
                                .partition_column
                                .and_then(|i| Some(copy_datum(kinds[i], *fields.get(i)?))),
                        )?;
                        sink.append(
                            &t.folder,
                            &t.schema,
                            key,
                            &meta,
                            kinds.iter().zip(fields).map(|(k, f)| copy_datum(*k, *f)),
                        )?;
                        meta.seq += 1;
                        Ok(())
                    },
                )?;
                progress.add(*ti, parser.rows() - before);
            }
        }
    }
    finish(&current)?;
    sink.seal()?;
    Ok(sink)
}

/// Rows copied per table, shared by the workers and the reporter.
#[derive(Clone)]
struct Progress {
    names: Arc<Vec<String>>,
    folders: Arc<Vec<String>>,
    estimates: Arc<Vec<u64>>,
    rows: Arc<Vec<AtomicU64>>,
}

struct Reporter {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Reporter {
    async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

impl Progress {
    fn new(tables: &[SnapshotTable], estimates: &[i64]) -> Self {
        Self {
            names: Arc::new(tables.iter().map(|t| t.schema.qualified_name()).collect()),
            folders: Arc::new(tables.iter().map(|t| t.folder.clone()).collect()),
            estimates: Arc::new(estimates.iter().map(|e| (*e).max(0) as u64).collect()),
            rows: Arc::new(tables.iter().map(|_| AtomicU64::new(0)).collect()),
        }
    }

    fn add(&self, table: usize, n: u64) {
        if let Some(r) = self.rows.get(table) {
            r.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn rows(&self) -> BTreeMap<String, u64> {
        self.folders
            .iter()
            .zip(self.rows.iter())
            .map(|(f, r)| (f.clone(), r.load(Ordering::Relaxed)))
            .collect()
    }

    fn json(&self) -> serde_json::Value {
        let tables: serde_json::Map<String, serde_json::Value> = self
            .folders
            .iter()
            .enumerate()
            .map(|(i, f)| {
                (
                    f.clone(),
                    serde_json::json!({
                        "rows": self.rows[i].load(Ordering::Relaxed),
                        "estimated_rows": self.estimates[i],
                    }),
                )
            })
            .collect();
        serde_json::json!({ "updated_at": Utc::now(), "tables": tables })
    }

    /// Progress bars on a terminal, else a log line every 10 s; and the progress file.
    fn spawn_reporter(&self, file: Option<(Lake, String)>) -> Reporter {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let me = self.clone();
        let task = tokio::spawn(async move {
            let bars = std::io::stderr().is_terminal().then(|| {
                let multi = indicatif::MultiProgress::new();
                let style = indicatif::ProgressStyle::with_template(
                    "{prefix:>24} {bar:30} {human_pos:>11}/{human_len:<11} rows {per_sec:>12} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
                me.names
                    .iter()
                    .zip(me.estimates.iter())
                    .map(|(n, e)| {
                        let b = multi.add(indicatif::ProgressBar::new(*e));
                        b.set_style(style.clone());
                        b.set_prefix(n.clone());
                        b
                    })
                    .collect::<Vec<_>>()
            });
            let mut tick = tokio::time::interval(Duration::from_millis(if bars.is_some() {
                200
            } else {
                10_000
            }));
            let mut since_file = 0u32;
            loop {
                let done = tokio::select! {
                    _ = tick.tick() => false,
                    _ = &mut stopped => true,
                };
                match &bars {
                    Some(bars) => {
                        for (i, b) in bars.iter().enumerate() {
                            let n = me.rows[i].load(Ordering::Relaxed);
                            if n > b.length().unwrap_or(0) {
                                b.set_length(n);
                            }
                            b.set_position(n);
                            if done {
                                b.finish();
                            }
                        }
                    }
                    None if !done => {
                        for (i, name) in me.names.iter().enumerate() {
                            tracing::info!(
                                table = %name,
                                rows = me.rows[i].load(Ordering::Relaxed),
                                estimated_rows = me.estimates[i],
                                "snapshot progress"
                            );
                        }
                    }
                    None => {}
                }
                since_file += 1;
                if let Some((lake, key)) = &file {
                    if done || bars.is_none() || since_file >= 25 {
                        since_file = 0;
                        let body = bytes::Bytes::from(me.json().to_string());
                        if let Err(e) = lake.put(key, body).await {
                            tracing::debug!(error = %e, "could not write snapshot progress");
                        }
                    }
                }
                if done {
                    return;
                }
            }
        });
        Reporter { stop, task }
    }
}

impl Classify for SnapshotError {
    fn action(&self) -> Action {
        match self {
            SnapshotError::Source(e) => e.action(),
            SnapshotError::Sink(e) => e.action(),
            SnapshotError::Copy(_) | SnapshotError::Worker(_) => Action::Stop,
        }
    }
}
