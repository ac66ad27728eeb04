//! `slot2lake check`: a preflight that says, for every prerequisite, whether `run`
//! will work and what to do if not. It changes nothing in the database.

use serde::Serialize;

use crate::config::Config;
use crate::lake::Lake;
use crate::source::{self, introspect};

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Ok,
    /// Will be done by slot2lake (e.g. "will be created").
    Todo,
    /// Works, but worth knowing.
    Warn,
    /// `run` would fail.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Outcome.
    pub level: Level,
    /// What was checked.
    pub what: String,
    /// What was found, and what to do.
    pub detail: String,
}

/// Runs every check; never fails itself (a failed check is a finding).
pub async fn run(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |level, what: &str, detail: String| {
        out.push(Finding {
            level,
            what: what.to_string(),
            detail,
        })
    };
    add(Level::Ok, "config", "valid".into());

    let mut last = Ok(None);
    match Lake::open(&config.output).await {
        Ok(lake) => {
            let checkpoints =
                crate::checkpoint::Checkpoints::new(lake.clone(), &config.source.slot);
            last = crate::compact::last_compaction(&checkpoints).await;
            let key = crate::checkpoint::SlotKeys::new(&config.source.slot).check_probe();
            let probe = async {
                lake.put(&key, bytes::Bytes::from_static(b"probe")).await?;
                lake.delete(&key).await
            };
            match probe.await {
                Ok(()) => add(Level::Ok, "output", format!("{} is writable", lake.url())),
                Err(e) => add(
                    Level::Fail,
                    "output",
                    format!("{e}: make the output writable for this user"),
                ),
            }
        }
        Err(e) => add(Level::Fail, "output", e.to_string()),
    }

    match last {
        Ok(last) => add(Level::Ok, "maintenance", maintenance(config, last)),
        Err(e) => add(
            Level::Fail,
            "maintenance",
            format!(
                "{e}: remove {} (the next compaction writes it again)",
                crate::checkpoint::SlotKeys::new(&config.source.slot).maintenance()
            ),
        ),
    }

    use crate::catalog::Readiness;
    let readiness = match &config.catalog.target {
        crate::config::Catalog::IcebergRest(rest) => crate::catalog::rest::check(rest).await,
        _ => crate::catalog::glue::check(config).await,
    };
    let (level, detail) = match readiness {
        Readiness::Ready(d) => (Level::Ok, d),
        Readiness::WillCreate(d) => (Level::Todo, d),
        Readiness::Broken(d) => (Level::Fail, d),
    };
    add(level, "catalog", detail);

    let client = match source::open(&config.source).await {
        Ok(c) => {
            add(Level::Ok, "connection", source::target(&config.source.url));
            c
        }
        Err(e) => {
            add(Level::Fail, "connection", e.to_string());
            return out;
        }
    };
    match introspect::server_info(&client).await {
        Ok(info) => {
            match info.require_logical() {
                Ok(()) => add(
                    Level::Ok,
                    "server",
                    format!(
                        "PostgreSQL {}, wal_level = logical, role {:?} may replicate",
                        info.version_num / 10000,
                        info.user
                    ),
                ),
                Err(e) => add(Level::Fail, "server", e.to_string()),
            }
            if info.max_replication_slots < 1 || info.max_wal_senders < 1 {
                add(
                    Level::Fail,
                    "server",
                    "max_replication_slots and max_wal_senders must be at least 1; raise them and restart PostgreSQL".into(),
                );
            }
            match introspect::publication_missing(&client, &config.source.publication, &config.tables).await {
                Ok(None) if info.can_create_publication => add(
                    Level::Todo,
                    "publication",
                    format!("{:?} will be created for the configured tables", config.source.publication),
                ),
                Ok(None) => add(
                    Level::Fail,
                    "publication",
                    format!(
                        "{:?} does not exist and role {:?} may not create it: create it as the table owner (CREATE PUBLICATION {} FOR TABLE ...) or GRANT CREATE ON DATABASE to the role",
                        config.source.publication,
                        info.user,
                        config.source.publication
                    ),
                ),
                Ok(Some(missing)) if missing.is_empty() => add(Level::Ok, "publication", format!("{:?} covers every table", config.source.publication)),
                Ok(Some(missing)) => add(
                    Level::Todo,
                    "publication",
                    format!(
                        "{} will be added to {:?}",
                        missing.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", "),
                        config.source.publication
                    ),
                ),
                Err(e) => add(Level::Fail, "publication", e.to_string()),
            }
        }
        Err(e) => add(Level::Fail, "server", e.to_string()),
    }

    let types = introspect::type_catalog(&client).await.unwrap_or_default();
    for t in &config.tables {
        let what = format!("table {}", t.name);
        match introspect::table_info(&client, t, &types, &config.source.publication).await {
            Ok(info) if !info.has_identity() => add(
                Level::Fail,
                &what,
                introspect::identity_remedy(&t.name, info.replica_identity),
            ),
            Ok(info) => {
                let detail = format!(
                    "{} columns, replica identity {}, {}",
                    info.schema.columns.len(),
                    match info.replica_identity {
                        'f' => "FULL",
                        'i' => "USING INDEX",
                        _ => "primary key",
                    },
                    match info.estimated_rows {
                        n if n < 0 => "row count not estimated yet (never analyzed)".to_string(),
                        n => format!("about {n} rows"),
                    }
                );
                add(Level::Ok, &what, detail);
                if let Some(idx) = info.schema.partition_column {
                    let col = &info.schema.columns[idx];
                    if !col.is_key && info.replica_identity != 'f' {
                        add(
                            Level::Warn,
                            &what,
                            format!(
                                "DELETEs carry only the key, not {:?}, so they land in the year=__HIVE_DEFAULT_PARTITION__ partition; run ALTER TABLE {} REPLICA IDENTITY FULL; to file them under their date",
                                col.name, t.name
                            ),
                        );
                    }
                }
                for c in &info.schema.columns {
                    let odd = c.name.starts_with('_')
                        || !c
                            .name
                            .chars()
                            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
                    let clash = info
                        .schema
                        .columns
                        .iter()
                        .any(|o| o.name != c.name && o.name.eq_ignore_ascii_case(&c.name));
                    if odd || clash {
                        add(
                            Level::Warn,
                            &what,
                            format!(
                                "column {:?} {}: Athena needs it quoted or cannot tell it apart; rename it (ALTER TABLE {} RENAME COLUMN \"{}\" TO ...;)",
                                c.name,
                                if clash { "differs from another column only in case" } else { "starts with '_' or has characters other than letters, digits and '_'" },
                                t.name,
                                c.name
                            ),
                        );
                    }
                }
                if info.replica_identity != 'f' {
                    match toastable_columns(&client, info.oid).await {
                        Ok(cols) if !cols.is_empty() => add(
                            Level::Warn,
                            &what,
                            format!(
                                "column(s) {} can hold values large enough to be TOASTed; an UPDATE that leaves such a value unchanged does not send it, so without REPLICA IDENTITY FULL the row lists it in unchanged_columns and readers take it from the previous version (the latest-state views, verify); ALTER TABLE {} REPLICA IDENTITY FULL; makes every row complete on its own",
                                cols.join(", "),
                                t.name
                            ),
                        ),
                        Ok(_) => {}
                        Err(e) => add(Level::Warn, &what, e.to_string()),
                    }
                }
                if info.partitioned {
                    match introspect::publication_info(&client, &config.source.publication).await {
                        Ok(Some(p)) if !p.via_root => add(
                            Level::Fail,
                            &what,
                            format!(
                                "partitioned, but publication {:?} sends its changes under each partition's name, which slot2lake cannot place: run {}",
                                config.source.publication,
                                introspect::via_root_remedy(&config.source.publication)
                            ),
                        ),
                        Ok(_) => add(
                            Level::Ok,
                            &what,
                            "partitioned: its partitions' changes arrive as the table's (publish_via_partition_root); after ATTACH, DETACH or DROP PARTITION slot2lake copies the rows PostgreSQL does not send; a TRUNCATE of a single partition is not replicated at all: run `slot2lake backfill` after one".into(),
                        ),
                        Err(e) => add(Level::Fail, &what, e.to_string()),
                    }
                }
                if !info.unpublished_generated.is_empty() {
                    add(
                        Level::Warn,
                        &what,
                        format!(
                            "generated column(s) {} are not in the lake: PostgreSQL publishes stored generated columns from version 18 on (ALTER PUBLICATION {} SET (publish_generated_columns = stored);), never virtual ones; compute them in a view over the lake",
                            info.unpublished_generated.join(", "),
                            config.source.publication
                        ),
                    );
                }
                let other: Vec<&str> = info
                    .schema
                    .columns
                    .iter()
                    .filter(|c| !c.kind.decodes_binary())
                    .map(|c| c.name.as_str())
                    .collect();
                if !other.is_empty() {
                    add(
                        Level::Warn,
                        &what,
                        format!(
                            "column(s) {} have types stored as their text form",
                            other.join(", ")
                        ),
                    );
                }
            }
            Err(e) => add(Level::Fail, &what, e.to_string()),
        }
    }

    match introspect::slot_info(&client, &config.source.slot).await {
        Ok(None) => add(
            Level::Todo,
            "slot",
            format!("{:?} will be created (pgoutput)", config.source.slot),
        ),
        Ok(Some(s)) => match (s.active_pid, s.plugin.as_deref(), s.wal_status.as_deref()) {
            (Some(pid), _, _) => add(
                Level::Fail,
                "slot",
                format!(
                    "{:?} is in use by pid {pid}: one slot2lake per slot",
                    config.source.slot
                ),
            ),
            (_, plugin, _) if plugin != Some("pgoutput") => add(
                Level::Fail,
                "slot",
                format!(
                    "{:?} uses plugin {plugin:?}, not pgoutput",
                    config.source.slot
                ),
            ),
            (_, _, Some("lost")) => add(
                Level::Fail,
                "slot",
                format!("{:?} has lost WAL it needed", config.source.slot),
            ),
            _ => add(
                Level::Ok,
                "slot",
                format!(
                    "{:?} exists, confirmed to {}",
                    config.source.slot,
                    s.confirmed_flush.map(|l| l.to_string()).unwrap_or_default()
                ),
            ),
        },
        Err(e) => add(Level::Fail, "slot", e.to_string()),
    }
    out
}

/// Who keeps the lake's files right-sized (and, for Iceberg, its history trimmed).
fn maintenance(config: &Config, last: Option<crate::compact::LastCompaction>) -> String {
    let m = &config.maintenance;
    let when = match m.interval {
        Some(i) => format!(
            "`run` compacts every table after a flush every {}",
            humantime::format_duration(i)
        ),
        None => "only `slot2lake compact` compacts (from cron; or set [maintenance] interval)"
            .to_string(),
    };
    let last = last.map_or("never".to_string(), |l| l.when());
    let iceberg = if config.output.format == crate::config::TableFormat::Iceberg {
        let glue = matches!(
            config.catalog.target,
            crate::config::Catalog::GlueDirect { .. }
        );
        format!(
            "; Iceberg snapshots kept {}, unlisted files removed after {}{}",
            humantime::format_duration(m.snapshot_retention),
            humantime::format_duration(m.orphan_age),
            if glue {
                "; Glue's table optimizers are not used"
            } else {
                ""
            }
        )
    } else {
        String::new()
    };
    format!("{when} (last: {last}){iceberg}")
}

/// Columns whose values can be stored out of line (TOAST): unbounded varlena types.
async fn toastable_columns(
    client: &source::Conn,
    table: u32,
) -> Result<Vec<String>, crate::source::SourceError> {
    let rows = client
        .query(
            "reading column storage",
            "SELECT attname::text FROM pg_attribute
         WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped
           AND attstorage IN ('x', 'e') AND (atttypmod < 0 OR atttypmod > 2004)
         ORDER BY attnum",
            &[&table],
        )
        .await?;
    Ok(rows.iter().filter_map(|r| r.try_get(0).ok()).collect())
}
