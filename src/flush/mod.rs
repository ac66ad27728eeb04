//! The flush: spooled changes up to a cut LSN → Parquet files per table partition.
//!
//! ```text
//!  intent {cut, processed_at, from[table]} written   (names are now fixed)
//!    │
//!    ▼  segments in commit order; transactions with commit_lsn < cut,
//!       changes of table T with commit_lsn >= from[T]
//!  decode (relation cache from the spool's Relation records) → Sink → files in place
//!    │
//!    ▼  (caller) watermarks → ack slot → catalog → spool GC → intent removed
//! ```
//!
//! Durable after this step: the Parquet files, under names derived from the intent.
//! A crash before the watermarks are written repeats this step with the same intent;
//! files already in the lake are recognised by name and not written again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use pg_walstream::{ColumnData, LogicalReplicationMessage, LogicalReplicationParser, TupleData};

use crate::checkpoint::FlushIntent;
use crate::config::TableConfig;
use crate::decode::relation::{KnownTable, RelationCache};
use crate::decode::schema::SchemaError;
use crate::decode::TypeCatalog;
use crate::decode::{ChangeType, Datum, RowMeta};
use crate::lsn::Lsn;
use crate::retry::{Action, Classify};
use crate::sink::{PartitionKey, Sink, SinkError, WrittenFile};
use crate::spool::{Record, Segment, SegmentReader, SpoolError};

pub mod commit;
pub mod rows;

use rows::{update_rows, OldKind};

/// A flush that could not write its files.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// Reading the spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// Writing Parquet failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A table's new shape cannot be written.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A spooled message could not be understood.
    #[error("spooled change at commit {lsn}: {message}")]
    Protocol {
        /// Commit LSN of the transaction.
        lsn: Lsn,
        /// What was wrong.
        message: String,
    },
}

/// What a flush wrote.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Files closed, new or found from an earlier attempt.
    pub files: Vec<WrittenFile>,
    /// Rows per table folder.
    pub rows: BTreeMap<String, u64>,
    /// End LSN and commit time of the last transaction included.
    pub last_commit: Option<(Lsn, DateTime<Utc>)>,
    /// Transactions read.
    pub transactions: u64,
    /// Changes of published relations that are not configured tables.
    pub unplaced: Unplaced,
    /// Rows per table folder with a value that could not be resolved (see [`rows`]).
    pub unresolved: BTreeMap<String, u64>,
    /// Tables that need a new snapshot, with why (a keyless table that gained columns).
    pub resnapshot: BTreeMap<String, String>,
    /// Each table's columns as of the flush's last Relation message for it.
    pub columns: BTreeMap<String, Vec<String>>,
}

/// Changes the flush could not place in any table, per relation name: a published table
/// that is not in `[[tables]]`, or a partition arriving under its own name (a publication
/// without `publish_via_partition_root`). They are never dropped silently.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unplaced(pub BTreeMap<String, u64>);

impl Unplaced {
    fn record(&mut self, rels: &RelationCache, relation_id: u32) {
        let name = rels
            .name(relation_id)
            .unwrap_or_else(|| format!("relation {relation_id}"));
        let n = self.0.entry(name.clone()).or_default();
        if *n == 0 {
            tracing::warn!(relation = %name, "changes of a published relation that is not a configured table are not written; add it to [[tables]] (a partition: configure its parent and publish with publish_via_partition_root = true) or remove it from the publication");
        }
        *n += 1;
        metrics::counter!(crate::telemetry::metric::UNPLACED_CHANGES, "relation" => name)
            .increment(1);
    }
}

fn datum(c: &ColumnData) -> Datum<'_> {
    match c.data_type {
        b't' => Datum::Text(c.as_bytes()),
        b'b' => Datum::Binary(c.as_bytes()),
        b'u' => Datum::Unchanged,
        _ => Datum::Null,
    }
}

struct Txn {
    commit_lsn: Lsn,
    commit_us: i64,
    seq: i64,
}

/// Writes the changes of `segments` selected by `intent` into `sink`.
///
/// Runs on a blocking thread (decoding and encoding are CPU work).
pub fn write_changes(
    segments: impl IntoIterator<Item = Segment>,
    tables: &[TableConfig],
    known: HashMap<u32, KnownTable>,
    types: Arc<TypeCatalog>,
    intent: &FlushIntent,
    mut sink: Sink,
) -> Result<Flushed, FlushError> {
    let mut rels = RelationCache::new(known, types);
    let mut parser = LogicalReplicationParser::with_protocol_version(1);
    let processing_date = intent.processed_at.date_naive();
    let mut out = Flushed::default();
    let mut txn: Option<Txn> = None;
    'segments: for seg in segments.into_iter().filter(|s| s.start < intent.cut) {
        let mut reader = SegmentReader::open(&seg)?;
        while let Some(rec) = reader.next_record()? {
            match rec {
                Record::Header(_) => {}
                Record::Relation(r) => {
                    let lsn = txn.as_ref().map_or(Lsn::ZERO, |t| t.commit_lsn);
                    if let LogicalReplicationMessage::Relation {
                        relation_id,
                        namespace,
                        relation_name,
                        columns,
                        ..
                    } = parse(&mut parser, r.pgoutput, lsn)?
                    {
                        let before = rels.columns_before(relation_id);
                        let now =
                            rels.apply(relation_id, &namespace, &relation_name, &columns, tables)?;
                        if let Some(now) = &now {
                            out.columns.insert(
                                now.folder.clone(),
                                now.schema.columns.iter().map(|c| c.name.clone()).collect(),
                            );
                        }
                        if let (Some(before), Some(now)) = (before, now) {
                            let keyless = !now.is_key.iter().any(|k| *k);
                            let added: Vec<&str> = now
                                .schema
                                .columns
                                .iter()
                                .filter(|c| !before.contains(&c.name))
                                .map(|c| c.name.as_str())
                                .collect();
                            // Relation messages precede their transaction's Begin in the
                            // spool, so this cannot be limited to the flush's range; a
                            // transition already handled finds the lake's columns current.
                            if keyless && !added.is_empty() {
                                out.resnapshot.insert(
                                    now.folder.clone(),
                                    format!(
                                        "column(s) {} added to a table without a key: rows written before read them as NULL while PostgreSQL may give them a default, so their DELETEs could not be matched",
                                        added.join(", ")
                                    ),
                                );
                            }
                        }
                    }
                }
                Record::Begin(b) => {
                    if Lsn(b.commit_lsn) >= intent.cut {
                        break 'segments;
                    }
                    txn = Some(Txn {
                        commit_lsn: Lsn(b.commit_lsn),
                        commit_us: b.commit_time_us,
                        seq: 0,
                    });
                }
                Record::Change(c) => {
                    let Some(t) = txn.as_mut() else {
                        return Err(FlushError::Protocol {
                            lsn: Lsn::ZERO,
                            message: "change outside a transaction".into(),
                        });
                    };
                    t.seq += 1;
                    let msg = parse(&mut parser, c.pgoutput, t.commit_lsn)?;
                    apply_change(&mut sink, &rels, intent, processing_date, t, msg, &mut out)?;
                }
                Record::Commit(c) => {
                    if let Some(t) = txn.take() {
                        out.transactions += 1;
                        let at =
                            DateTime::from_timestamp_micros(c.commit_time_us).unwrap_or_default();
                        out.last_commit = Some((Lsn(c.end_lsn), at));
                        debug_assert_eq!(t.commit_lsn.0, c.commit_lsn);
                    }
                }
            }
        }
    }
    out.files = sink.finish()?;
    Ok(out)
}

fn parse(
    parser: &mut LogicalReplicationParser,
    bytes: Bytes,
    lsn: Lsn,
) -> Result<LogicalReplicationMessage, FlushError> {
    parser
        .parse_wal_message_bytes(bytes)
        .map(|m| m.message)
        .map_err(|e| FlushError::Protocol {
            lsn,
            message: e.to_string(),
        })
}

#[allow(clippy::too_many_arguments)]
fn apply_change(
    sink: &mut Sink,
    rels: &RelationCache,
    intent: &FlushIntent,
    processing_date: NaiveDate,
    txn: &mut Txn,
    msg: LogicalReplicationMessage,
    out: &mut Flushed,
) -> Result<(), FlushError> {
    let commit = (txn.commit_lsn.as_i64(), txn.commit_us);
    let meta = |change_type, seq| RowMeta {
        change_type,
        lsn: commit.0,
        seq,
        commit_us: commit.1,
    };
    let (relation_id, change_type, tuple, old) = match msg {
        LogicalReplicationMessage::Insert { relation_id, tuple } => {
            (relation_id, ChangeType::Insert, tuple, None)
        }
        LogicalReplicationMessage::Update {
            relation_id,
            old_tuple,
            new_tuple,
            key_type,
        } => {
            let kind = match key_type {
                Some('O') => Some(OldKind::Full),
                Some('K') => Some(OldKind::Key),
                _ => None,
            };
            let old = kind.zip(old_tuple);
            (relation_id, ChangeType::Update, new_tuple, old)
        }
        LogicalReplicationMessage::Delete {
            relation_id,
            old_tuple,
            ..
        } => (relation_id, ChangeType::Delete, old_tuple, None),
        LogicalReplicationMessage::Truncate { relation_ids, .. } => {
            for id in relation_ids {
                let Some(Some(rel)) = rels.get(id) else {
                    out.unplaced.record(rels, id);
                    continue;
                };
                if !included(intent, &rel.folder, txn.commit_lsn) {
                    continue;
                }
                let m = meta(ChangeType::Truncate, txn.seq);
                sink.append_truncate(&rel.folder, &rel.schema, processing_date, &m)?;
                count_row(&mut out.rows, &rel.folder);
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    let rel = match rels.get(relation_id) {
        Some(Some(r)) => r,
        Some(None) => {
            out.unplaced.record(rels, relation_id);
            return Ok(());
        }
        None => {
            return Err(FlushError::Protocol {
                lsn: txn.commit_lsn,
                message: format!("change for relation {relation_id} before its Relation message"),
            })
        }
    };
    let (folder, schema) = (rel.folder.as_str(), &rel.schema);
    if !included(intent, folder, txn.commit_lsn) {
        return Ok(());
    }
    let tuple = if change_type == ChangeType::Update {
        let rows = update_rows(&rel.is_key, old, tuple);
        if rows.unresolvable {
            count_row(&mut out.unresolved, folder);
            metrics::counter!(crate::telemetry::metric::UNRESOLVED_VALUES, "table" => folder.to_string())
                .increment(1);
            sink.warnings().once(
                &schema.qualified_name(),
                "",
                "an UPDATE changed the key and left a TOASTed value unchanged: pgoutput sent neither the value nor a full old row, so it cannot be resolved under the new key (written as unchanged_columns; run `slot2lake backfill` for this table, or set REPLICA IDENTITY FULL)",
            );
        }
        if let Some(old) = rows.delete_old {
            // The old key (or, without a key, the old version) ends here; the new row
            // follows it in the transaction's order.
            append_row(
                sink,
                folder,
                schema,
                processing_date,
                &old,
                meta(ChangeType::Delete, txn.seq),
            )?;
            count_row(&mut out.rows, folder);
            txn.seq += 1;
        }
        rows.new
    } else {
        tuple
    };
    append_row(
        sink,
        folder,
        schema,
        processing_date,
        &tuple,
        meta(change_type, txn.seq),
    )?;
    count_row(&mut out.rows, folder);
    Ok(())
}

fn count_row(rows: &mut BTreeMap<String, u64>, folder: &str) {
    match rows.get_mut(folder) {
        Some(n) => *n += 1,
        None => {
            rows.insert(folder.to_string(), 1);
        }
    }
}

fn append_row(
    sink: &mut Sink,
    folder: &str,
    schema: &Arc<crate::decode::TableSchema>,
    processing_date: NaiveDate,
    tuple: &TupleData,
    m: RowMeta,
) -> Result<(), FlushError> {
    let key = PartitionKey::for_row(
        schema,
        processing_date,
        schema
            .partition_column
            .and_then(|i| tuple.columns.get(i))
            .map(datum),
    )
    .map_err(SinkError::from)?;
    sink.append(folder, schema, key, &m, tuple.columns.iter().map(datum))?;
    Ok(())
}

fn included(intent: &FlushIntent, folder: &str, commit_lsn: Lsn) -> bool {
    intent
        .from
        .get(folder)
        .is_none_or(|from| commit_lsn >= *from)
}

impl Classify for FlushError {
    fn action(&self) -> Action {
        match self {
            FlushError::Spool(e) => e.action(),
            FlushError::Sink(e) => e.action(),
            FlushError::Schema(_) | FlushError::Protocol { .. } => Action::Stop,
        }
    }
}
