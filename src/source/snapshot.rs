//! The snapshot: each table read with `COPY ... (FORMAT binary)` inside a transaction
//! that imported the slot's exported snapshot, so the rows are exactly those committed
//! before the slot's consistent point, and every later change comes from the slot.
//!
//! ```text
//!  CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT ──▶ snapshot name + consistent point (CP)
//!  BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT '<name>'
//!    COPY (SELECT … [WHERE snapshot_where] [ORDER BY partition column]) TO STDOUT (FORMAT binary)
//!      async: network ──chunks──▶ blocking thread: parse → decode → Sink (staging)
//!  COMMIT
//! ```
//!
//! Rows are tagged SNAPSHOT with `change_lsn` = CP and `change_seq` = 0, which sorts
//! before any change committed at or after CP. Files go to a staging prefix; the
//! caller moves them into the table folders only once every table is copied, so a
//! crash never leaves a partial snapshot where Athena reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::copy::{CopyError, CopyParser};
use super::{query_error, quote_ident, quote_literal, SourceError};
use crate::decode::{ChangeType, ColumnKind, Datum, DecodeError, RowMeta, TableSchema};
use crate::lsn::Lsn;
use crate::sink::{PartitionKey, Sink, SinkError, WrittenFile};

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
    /// The decoding thread stopped unexpectedly.
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
}

/// What a snapshot wrote.
#[derive(Debug, Default)]
pub struct Copied {
    /// Files, in staging.
    pub files: Vec<WrittenFile>,
    /// Rows per table folder.
    pub rows: BTreeMap<String, u64>,
}

enum Msg {
    Table(SnapshotTable),
    Chunk(bytes::Bytes),
}

fn copy_query(t: &SnapshotTable) -> String {
    let cols: Vec<String> = t
        .schema
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
    let mut q = format!(
        "COPY (SELECT {} FROM {}.{}",
        cols.join(", "),
        quote_ident(&t.schema.schema),
        quote_ident(&t.schema.name)
    );
    if let Some(w) = &t.where_clause {
        q.push_str(&format!(" WHERE ({w})"));
    }
    if let Some(idx) = t.schema.partition_column {
        // Rows arrive grouped by partition, so each partition gets few, large files.
        q.push_str(&format!(
            " ORDER BY {}",
            quote_ident(&t.schema.columns[idx].name)
        ));
    }
    q.push_str(") TO STDOUT (FORMAT binary)");
    q
}

/// Imports `snapshot_name` and copies every table into `sink`; returns what was written
/// and the snapshot's time (the transaction start).
pub async fn copy_tables(
    client: &mut Client,
    snapshot_name: &str,
    tables: &[SnapshotTable],
    consistent_point: Lsn,
    sink: Sink,
) -> Result<(Copied, DateTime<Utc>), SnapshotError> {
    let txn = client
        .transaction()
        .await
        .map_err(|e| query_error("starting the snapshot transaction", &e))?;
    txn.batch_execute(&format!(
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
        quote_literal(snapshot_name)
    ))
    .await
    .map_err(|e| query_error("importing the slot's snapshot", &e))?;
    let snapshot_us: i64 = txn
        .query_one("SELECT (extract(epoch FROM now()) * 1000000)::bigint", &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| query_error("reading the snapshot time", &e))?;
    let snapshot_time = DateTime::from_timestamp_micros(snapshot_us).unwrap_or_else(Utc::now);

    let (tx, rx) = mpsc::channel::<Msg>(32);
    let processing_date = sink.processed_at().date_naive();
    let worker = tokio::task::spawn_blocking(move || {
        decode_worker(rx, sink, consistent_point, snapshot_us, processing_date)
    });

    let mut send_failed = false;
    'tables: for t in tables {
        tracing::info!(table = %t.schema.qualified_name(), "snapshot: copying");
        if tx.send(Msg::Table(t.clone())).await.is_err() {
            send_failed = true;
            break;
        }
        let stream = txn
            .copy_out(&copy_query(t))
            .await
            .map_err(|e| query_error(format!("copying {}", t.schema.qualified_name()), &e))?;
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| query_error(format!("copying {}", t.schema.qualified_name()), &e))?;
            if tx.send(Msg::Chunk(chunk)).await.is_err() {
                send_failed = true;
                break 'tables;
            }
        }
    }
    drop(tx);
    let result = worker
        .await
        .map_err(|e| SnapshotError::Worker(e.to_string()))?;
    let copied = result?;
    if send_failed {
        return Err(SnapshotError::Worker("decoder stopped early".into()));
    }
    txn.commit()
        .await
        .map_err(|e| query_error("ending the snapshot transaction", &e))?;
    Ok((copied, snapshot_time))
}

fn copy_datum<'a>(kind: ColumnKind, field: Option<&'a [u8]>) -> Datum<'a> {
    match field {
        None => Datum::Null,
        // Columns without a binary decoder were selected as ::text.
        Some(b) if kind == ColumnKind::Other => Datum::Text(b),
        Some(b) => Datum::Binary(b),
    }
}

fn decode_worker(
    mut rx: mpsc::Receiver<Msg>,
    mut sink: Sink,
    consistent_point: Lsn,
    snapshot_us: i64,
    processing_date: chrono::NaiveDate,
) -> Result<Copied, SnapshotError> {
    let meta = RowMeta {
        change_type: ChangeType::Snapshot,
        lsn: consistent_point.as_i64(),
        seq: 0,
        commit_us: snapshot_us,
    };
    let mut rows = BTreeMap::new();
    let mut current: Option<(SnapshotTable, CopyParser, Vec<ColumnKind>)> = None;
    let finish_table = |cur: &Option<(SnapshotTable, CopyParser, Vec<ColumnKind>)>,
                        rows: &mut BTreeMap<String, u64>|
     -> Result<(), SnapshotError> {
        if let Some((t, p, _)) = cur {
            if !p.finished() {
                return Err(CopyError("stream ended before its trailer").into());
            }
            tracing::info!(table = %t.schema.qualified_name(), rows = p.rows(), "snapshot: copied");
            crate::failpoint::hit(crate::failpoint::MID_SNAPSHOT_COPY);
            rows.insert(t.folder.clone(), p.rows());
        }
        Ok(())
    };
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Table(t) => {
                finish_table(&current, &mut rows)?;
                let kinds = t.schema.columns.iter().map(|c| c.kind).collect();
                current = Some((t, CopyParser::new(), kinds));
            }
            Msg::Chunk(chunk) => {
                let Some((t, parser, kinds)) = current.as_mut() else {
                    continue;
                };
                parser.push(&chunk);
                parser.drain(|fields: &[Option<&[u8]>]| -> Result<(), SnapshotError> {
                    let key = PartitionKey::for_row(
                        &t.schema,
                        processing_date,
                        t.schema
                            .partition_column
                            .and_then(|i| Some(copy_datum(kinds[i], *fields.get(i)?))),
                    )?;
                    sink.append(&t.folder, &t.schema, key, |batch, warnings| {
                        batch.append(
                            kinds.iter().zip(fields).map(|(k, f)| copy_datum(*k, *f)),
                            &meta,
                            warnings,
                        )
                    })?;
                    Ok(())
                })?;
            }
        }
    }
    finish_table(&current, &mut rows)?;
    let files = sink.finish()?;
    Ok(Copied { files, rows })
}
