//! Queries against the source's system catalogs: server settings, tables, the
//! publication and the slot.

use super::{query_error, quote_ident, Conn, SourceError};
use crate::config::TableConfig;
use crate::decode::types::PgType;
use crate::decode::{ColumnSpec, TableSchema, TypeCatalog};
use crate::lsn::Lsn;

/// Server settings that decide whether logical replication can work.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `wal_level`
    pub wal_level: String,
    /// `server_version_num`, e.g. 150018.
    pub version_num: i32,
    /// `max_replication_slots`
    pub max_replication_slots: i32,
    /// `max_wal_senders`
    pub max_wal_senders: i32,
    /// The connected role.
    pub user: String,
    /// Whether the role may replicate (REPLICATION, superuser, or rds_replication).
    pub can_replicate: bool,
    /// Whether the role may create a publication (CREATE on the database).
    pub can_create_publication: bool,
}

/// Reads the settings and privileges `check` and `run` need.
pub async fn server_info(client: &Conn) -> Result<ServerInfo, SourceError> {
    let row = client
        .query_one(
            "reading server settings",
            "SELECT current_setting('wal_level'),
                current_setting('server_version_num')::int,
                current_setting('max_replication_slots')::int,
                current_setting('max_wal_senders')::int,
                current_user::text,
                (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)
                  OR EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = 'rds_replication'
                             AND pg_has_role(current_user, r.oid, 'member')),
                has_database_privilege(current_database(), 'CREATE')",
            &[],
        )
        .await?;
    let get = |e: tokio_postgres::Error| query_error("reading server settings", &e);
    Ok(ServerInfo {
        wal_level: row.try_get(0).map_err(get)?,
        version_num: row.try_get(1).map_err(get)?,
        max_replication_slots: row.try_get(2).map_err(get)?,
        max_wal_senders: row.try_get(3).map_err(get)?,
        user: row.try_get(4).map_err(get)?,
        can_replicate: row
            .try_get::<_, Option<bool>>(5)
            .map_err(get)?
            .unwrap_or(false),
        can_create_publication: row.try_get(6).map_err(get)?,
    })
}

impl ServerInfo {
    /// The one error that stops `run` before it starts, if any.
    pub fn require_logical(&self) -> Result<(), SourceError> {
        if self.wal_level != "logical" {
            return Err(SourceError::Setup(format!(
                "wal_level is {:?} but logical replication needs \"logical\": run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL (on RDS: set rds.logical_replication = 1 in the parameter group and reboot)",
                self.wal_level
            )));
        }
        if !self.can_replicate {
            return Err(SourceError::Setup(format!(
                "role {:?} may not replicate: run ALTER ROLE {} WITH REPLICATION; (on RDS: GRANT rds_replication TO {};)",
                self.user,
                quote_ident(&self.user),
                quote_ident(&self.user)
            )));
        }
        if self.version_num < 140000 {
            return Err(SourceError::Setup(format!(
                "PostgreSQL {} is too old: slot2lake needs 14 or newer",
                self.version_num / 10000
            )));
        }
        Ok(())
    }
}

/// What the catalog says about one configured table.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// The table's OID.
    pub oid: u32,
    /// `relreplident`: d (default: primary key), f (full), i (index), n (nothing).
    pub replica_identity: char,
    /// Whether a primary key exists.
    pub has_primary_key: bool,
    /// Columns as pgoutput will send them: not dropped, within the publication's column
    /// list, generated ones only where the publication publishes them (PostgreSQL 18).
    pub schema: TableSchema,
    /// Estimated rows, from `pg_class.reltuples` (-1 when never analyzed).
    pub estimated_rows: i64,
    /// A declaratively partitioned table (its changes need `publish_via_partition_root`).
    pub partitioned: bool,
    /// The publication's row filter for this table (PostgreSQL 15+), if any: snapshots
    /// copy exactly the rows the stream publishes.
    pub row_filter: Option<String>,
    /// Generated columns the publication does not send.
    pub unpublished_generated: Vec<String>,
}

/// The publication as the server has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicationInfo {
    /// `publish_via_partition_root`: partitions' changes arrive as their root table's.
    pub via_root: bool,
    /// `publish_generated_columns = stored` (PostgreSQL 18).
    pub generated: bool,
}

/// Reads the publication; `None` when it does not exist.
pub async fn publication_info(
    client: &Conn,
    publication: &str,
) -> Result<Option<PublicationInfo>, SourceError> {
    // `pubgencols` exists from PostgreSQL 18 on; read through jsonb so older servers answer.
    let row = client
        .query_opt(
            "reading the publication",
            "SELECT p.pubviaroot, coalesce(to_jsonb(p) ->> 'pubgencols', 'n') = 's'
         FROM pg_publication p WHERE p.pubname = $1",
            &[&publication],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let get = |e: tokio_postgres::Error| query_error("reading the publication", &e);
    Ok(Some(PublicationInfo {
        via_root: row.try_get(0).map_err(get)?,
        generated: row.try_get(1).map_err(get)?,
    }))
}

/// The statement that makes a publication send partitions' changes as their root's.
pub fn via_root_remedy(publication: &str) -> String {
    format!(
        "ALTER PUBLICATION {} SET (publish_via_partition_root = true);",
        quote_ident(publication)
    )
}

impl TableInfo {
    /// Whether UPDATE and DELETE carry enough to identify the row.
    pub fn has_identity(&self) -> bool {
        match self.replica_identity {
            'f' | 'i' => true,
            'd' => self.has_primary_key,
            _ => false,
        }
    }
}

/// A problem with a configured table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The table does not exist (or is not visible to the role).
    #[error("table {0} does not exist (or the role cannot see it); check [[tables]] name")]
    Missing(String),
    /// The relation is a view or another kind that cannot be replicated.
    #[error(
        "{0} is not a table (relkind {1}); only ordinary and partitioned tables can be replicated"
    )]
    NotATable(String, char),
    /// The table's columns cannot be written as configured.
    #[error(transparent)]
    Schema(#[from] crate::decode::schema::SchemaError),
    /// The query failed.
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// The database's domains, enums, arrays and extension types.
pub async fn type_catalog(client: &Conn) -> Result<TypeCatalog, SourceError> {
    let rows = client
        .query(
            "reading pg_type",
            "SELECT t.oid, t.typtype::text, t.typbasetype, t.typtypmod, t.typelem,
                t.typcategory::text, t.typsend::text
         FROM pg_type t
         WHERE t.typtype IN ('d', 'e') OR t.typcategory = 'A' OR t.oid >= 16384",
            &[],
        )
        .await?;
    let get = |e: tokio_postgres::Error| query_error("reading pg_type", &e);
    let ch = |s: String| s.chars().next().unwrap_or(' ');
    let mut types = Vec::with_capacity(rows.len());
    for r in rows {
        types.push((
            r.try_get::<_, u32>(0).map_err(get)?,
            PgType {
                typtype: ch(r.try_get(1).map_err(get)?),
                base: r.try_get(2).map_err(get)?,
                base_typmod: r.try_get(3).map_err(get)?,
                elem: r.try_get(4).map_err(get)?,
                category: ch(r.try_get(5).map_err(get)?),
                send: r.try_get(6).map_err(get)?,
            },
        ));
    }
    Ok(TypeCatalog::new(types))
}

/// Looks up a configured table, with the columns and rows `publication` publishes of it.
pub async fn table_info(
    client: &Conn,
    table: &TableConfig,
    types: &TypeCatalog,
    publication: &str,
) -> Result<TableInfo, TableError> {
    let (schema, name) = table.qualified();
    let what = || format!("reading the columns of {}", table.name);
    let rel = client
        .query_opt(
            what(),
            "SELECT c.oid, c.relreplident::text, c.relkind::text,
                EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                c.reltuples::bigint
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &name],
        )
        .await?
        .ok_or_else(|| TableError::Missing(table.name.clone()))?;
    let get = |e: tokio_postgres::Error| TableError::Source(query_error(what(), &e));
    let oid: u32 = rel.try_get(0).map_err(get)?;
    let ident: String = rel.try_get(1).map_err(get)?;
    let relkind: String = rel.try_get(2).map_err(get)?;
    let replica_identity = ident.chars().next().unwrap_or('d');
    let relkind = relkind.chars().next().unwrap_or('r');
    if relkind != 'r' && relkind != 'p' {
        return Err(TableError::NotATable(table.name.clone(), relkind));
    }
    let publication_info = publication_info(client, publication).await?;
    // PostgreSQL 15+ lists the published columns and the row filter per table. Read
    // through jsonb so older servers answer too.
    let published = client
        .query_opt(
            what(),
            "SELECT (SELECT array_agg(x)
                     FROM jsonb_array_elements_text(to_jsonb(pt) -> 'attnames') x),
                to_jsonb(pt) ->> 'rowfilter'
         FROM pg_publication_tables pt
         WHERE pt.pubname = $1 AND pt.schemaname = $2 AND pt.tablename = $3",
            &[&publication, &schema, &name],
        )
        .await?;
    let (attnames, row_filter): (Option<Vec<String>>, Option<String>) = match &published {
        Some(r) => (r.try_get(0).map_err(get)?, r.try_get(1).map_err(get)?),
        None => (None, None),
    };
    let version = server_version(client).await?;
    // Stored generated columns are sent from PostgreSQL 18 on when the publication says
    // so (a publication slot2lake creates does); before 18 never, whatever attnames says.
    let generated_published =
        version >= 180000 && publication_info.is_none_or(|p| p.generated || attnames.is_some());
    let rows = client
        .query(
            what(),
            "SELECT a.attname::text, a.atttypid, a.atttypmod,
                COALESCE(a.attnum = ANY (
                  SELECT unnest(i.indkey) FROM pg_index i
                  WHERE i.indrelid = a.attrelid
                    AND ((c.relreplident IN ('d', 'f') AND i.indisprimary)
                      OR (c.relreplident = 'i' AND i.indisreplident))), false),
                a.attgenerated::text
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attnum",
            &[&oid],
        )
        .await?;
    let mut columns = Vec::with_capacity(rows.len());
    let mut unpublished_generated = Vec::new();
    for r in rows {
        let col: String = r.try_get(0).map_err(get)?;
        let generated: String = r.try_get(4).map_err(get)?;
        let listed = attnames.as_ref().is_none_or(|a| a.contains(&col));
        let sent = match generated.as_str() {
            "" => listed,
            // Stored generated columns: from 18 on, when the publication sends them.
            "s" => generated_published && listed,
            // Virtual ones are never sent.
            _ => false,
        };
        if !sent {
            if !generated.is_empty() {
                unpublished_generated.push(col);
            }
            continue;
        }
        columns.push(ColumnSpec::resolved(
            col,
            r.try_get(1).map_err(get)?,
            r.try_get(2).map_err(get)?,
            r.try_get::<_, Option<bool>>(3)
                .map_err(get)?
                .unwrap_or(false),
            types,
        ));
    }
    Ok(TableInfo {
        oid,
        replica_identity,
        has_primary_key: rel.try_get(3).map_err(get)?,
        schema: TableSchema::with_meta_prefix(
            schema,
            name,
            columns,
            table.partition_column(),
            &table.meta_prefix,
        )?,
        estimated_rows: rel.try_get(4).map_err(get)?,
        partitioned: relkind == 'p',
        row_filter,
        unpublished_generated,
    })
}

async fn server_version(client: &Conn) -> Result<i32, SourceError> {
    client
        .value(
            "reading the server version",
            "SELECT current_setting('server_version_num')::int",
            &[],
        )
        .await
}

/// The leaf partitions of a partitioned table, by OID.
pub async fn leaf_partitions(
    client: &Conn,
    table: u32,
) -> Result<Vec<crate::checkpoint::PartitionRef>, SourceError> {
    let rows = client
        .query(
            "reading the table's partitions",
            "SELECT relid::oid, relid::regclass::text FROM pg_partition_tree($1::oid::regclass)
         WHERE isleaf ORDER BY 1",
            &[&table],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(crate::checkpoint::PartitionRef {
                oid: r.try_get(0)?,
                name: r.try_get(1)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(|e| query_error("reading the table's partitions", &e))
}

/// Whether a relation (a `regclass` name) holds any row.
pub async fn has_rows(client: &Conn, relation: &str) -> Result<bool, SourceError> {
    client
        .value(
            format!("reading {relation}"),
            &format!("SELECT EXISTS (SELECT 1 FROM {relation})"),
            &[],
        )
        .await
}

/// The state of the replication slot.
#[derive(Debug, Clone)]
pub struct SlotInfo {
    /// Output plugin (must be pgoutput).
    pub plugin: Option<String>,
    /// Database the slot belongs to.
    pub database: Option<String>,
    /// PID of the process using it, if any.
    pub active_pid: Option<i32>,
    /// Position up to which the consumer confirmed changes.
    pub confirmed_flush: Option<Lsn>,
    /// Oldest WAL the slot retains.
    pub restart_lsn: Option<Lsn>,
    /// `wal_status`: reserved, extended, unreserved or lost.
    pub wal_status: Option<String>,
}

fn parse_lsn_opt(v: Option<String>) -> Option<Lsn> {
    v.and_then(|s| s.parse().ok())
}

/// How long a closed connection's temporary slot is waited for to go.
pub const TEMP_SLOT_DROP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until `slot` no longer exists: PostgreSQL drops a temporary slot only once its
/// closed connection's backend has exited, after the client has moved on. `false` when
/// it is still there after [`TEMP_SLOT_DROP_WAIT`].
pub async fn wait_slot_gone(client: &Conn, slot: &str) -> Result<bool, SourceError> {
    let deadline = tokio::time::Instant::now() + TEMP_SLOT_DROP_WAIT;
    while slot_info(client, slot).await?.is_some() {
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(true)
}

/// Reads the slot, `None` when it does not exist.
pub async fn slot_info(client: &Conn, slot: &str) -> Result<Option<SlotInfo>, SourceError> {
    let row = client
        .query_opt(
            "reading the replication slot",
            "SELECT plugin::text, database::text, active_pid, confirmed_flush_lsn::text,
                restart_lsn::text, wal_status
         FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let get = |e: tokio_postgres::Error| query_error("reading the replication slot", &e);
    Ok(Some(SlotInfo {
        plugin: row.try_get(0).map_err(get)?,
        database: row.try_get(1).map_err(get)?,
        active_pid: row.try_get(2).map_err(get)?,
        confirmed_flush: parse_lsn_opt(row.try_get(3).map_err(get)?),
        restart_lsn: parse_lsn_opt(row.try_get(4).map_err(get)?),
        wal_status: row.try_get(5).map_err(get)?,
    }))
}

/// An LSN the server printed as text.
fn server_lsn(text: &str) -> Result<Lsn, SourceError> {
    text.parse()
        .map_err(|e: crate::lsn::ParseLsnError| SourceError::Replication(e.to_string()))
}

/// The server's current WAL insert position (ahead of the write position under
/// asynchronous commit).
pub async fn current_wal_lsn(client: &Conn) -> Result<Lsn, SourceError> {
    let s: String = client
        .value(
            "reading the current WAL position",
            "SELECT pg_current_wal_insert_lsn()::text",
            &[],
        )
        .await?;
    server_lsn(&s)
}

/// The server's current WAL insert position and whether a process streams from `slot`
/// (`None`: no such slot), in one query: the consumer looks every 10 s.
pub async fn position_and_slot_activity(
    client: &Conn,
    slot: &str,
) -> Result<(Lsn, Option<bool>), SourceError> {
    const WHAT: &str = "reading the current WAL position and the slot's activity";
    let row = client
        .query_one(
            WHAT,
            "SELECT pg_current_wal_insert_lsn()::text,
                (SELECT active_pid IS NOT NULL FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await?;
    let get = |e: tokio_postgres::Error| query_error(WHAT, &e);
    let current: String = row.try_get(0).map_err(get)?;
    Ok((server_lsn(&current)?, row.try_get(1).map_err(get)?))
}

/// Writes a transactional logical-decoding message and returns its LSN; the transaction
/// that carries it is a commit boundary every earlier commit is sent before.
///
/// Its commit flushes the WAL (`synchronous_commit = local` for this transaction only):
/// the walsender sends only flushed WAL, and with `synchronous_commit = off` the marker
/// would wait for the WAL writer (up to `wal_writer_delay`, 200 ms) at every flush.
/// `local`, not `on`: the marker never waits for synchronous standbys.
pub async fn emit_marker(client: &Conn, content: &str) -> Result<Lsn, SourceError> {
    let s: String = client
        .value(
            "writing a position marker (pg_logical_emit_message)",
            "SELECT pg_logical_emit_message(true, $1, $2)::text \
             FROM (SELECT set_config('synchronous_commit', 'local', true)) AS flush_at_commit",
            &[&crate::source::replication::MARKER_PREFIX, &content],
        )
        .await?;
    server_lsn(&s)
}

/// Which configured tables the publication lacks; `None` when it does not exist.
///
/// A table is in it when it, or (for a partitioned table) any of its partitions, is
/// listed in `pg_publication_tables`, which names the root or the partitions depending
/// on `publish_via_partition_root` and covers `FOR ALL TABLES` and schema publications.
pub async fn publication_missing(
    client: &Conn,
    publication: &str,
    tables: &[TableConfig],
) -> Result<Option<Vec<TableConfig>>, SourceError> {
    if publication_info(client, publication).await?.is_none() {
        return Ok(None);
    }
    let mut missing = Vec::new();
    for t in tables {
        let (schema, name) = t.qualified();
        let qualified = format!("{}.{}", quote_ident(schema), quote_ident(name));
        let member: bool = client
            .value(
                "reading the publication's tables",
                "SELECT EXISTS (
                   SELECT 1 FROM pg_publication_tables pt
                   JOIN pg_namespace n ON n.nspname = pt.schemaname
                   JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
                   WHERE pt.pubname = $1
                     AND (c.oid = to_regclass($2)
                          OR c.oid IN (SELECT relid FROM pg_partition_tree(to_regclass($2)))))",
                &[&publication, &qualified],
            )
            .await?;
        if !member {
            missing.push(t.clone());
        }
    }
    Ok(Some(missing))
}

/// Creates the publication for the configured tables, or adds the ones it lacks.
pub async fn ensure_publication(
    client: &Conn,
    publication: &str,
    tables: &[TableConfig],
) -> Result<(), SourceError> {
    let list = |ts: &[TableConfig]| {
        ts.iter()
            .map(|t| {
                let (s, n) = t.qualified();
                format!("{}.{}", quote_ident(s), quote_ident(n))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sql = match publication_missing(client, publication, tables).await? {
        // Partitions' changes arrive as their root table's, the configured one; from
        // PostgreSQL 18 on stored generated columns are sent too.
        None => format!(
            "CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true{})",
            quote_ident(publication),
            list(tables),
            if server_version(client).await? >= 180000 {
                ", publish_generated_columns = stored"
            } else {
                ""
            }
        ),
        Some(missing) if missing.is_empty() => return Ok(()),
        Some(missing) => format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            quote_ident(publication),
            list(&missing)
        ),
    };
    tracing::info!(publication, "{sql}");
    client
        .batch_execute(
            format!("creating publication {publication:?} ({sql})"),
            &sql,
        )
        .await
}

/// The error (and fix) for a table whose updates and deletes cannot be replicated.
pub fn identity_remedy(table: &str, replica_identity: char) -> String {
    let why = if replica_identity == 'n' {
        "has REPLICA IDENTITY NOTHING"
    } else {
        "has no primary key and no replica identity"
    };
    format!(
        "table {table} {why}, so its UPDATEs and DELETEs cannot be replicated (PostgreSQL rejects them once the table is published); add a primary key and run ALTER TABLE {table} REPLICA IDENTITY DEFAULT;, or run ALTER TABLE {table} REPLICA IDENTITY FULL;"
    )
}
