//! AWS Glue: starting the crawler (`glue`) or maintaining tables and partitions
//! directly (`glue-direct`).

use std::time::{Duration, Instant};

use aws_sdk_glue::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_glue::types::{
    Column, CrawlerState, CrawlerTargets, DatabaseInput, DeleteBehavior, LastCrawlStatus,
    PartitionInput, S3Target, SchemaChangePolicy, SerDeInfo, StorageDescriptor, TableInput,
    UpdateBehavior,
};
use aws_sdk_glue::Client;

use super::{hive_type, CatalogError, CatalogTable, Pending, Readiness};
use crate::config::{Catalog, Config};

/// How long a start waits behind a crawl that is already running.
const QUEUE_WAIT: Duration = Duration::from_secs(30 * 60);
/// How often the crawler's state is polled.
const POLL: Duration = Duration::from_secs(2);
/// Crawler settings: new columns are added to the table, partitions inherit its schema.
const CRAWLER_CONFIGURATION: &str = r#"{"Version":1.0,"CrawlerOutput":{"Partitions":{"AddOrUpdateBehavior":"InheritFromTable"},"Tables":{"AddOrUpdateBehavior":"MergeNewColumns"}},"Grouping":{"TableGroupingPolicy":"CombineCompatibleSchemas"}}"#;

fn code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    e.as_service_error().and_then(|s| s.code())
}

fn glue_err<E: std::error::Error + 'static>(what: &str, e: E) -> CatalogError {
    CatalogError::Glue(format!("{what}: {}", DisplayErrorContext(e)))
}

/// A Glue client from the AWS chain, with `[catalog]` region and endpoint overrides.
pub async fn client(config: &Config) -> Client {
    let region = config
        .catalog
        .region
        .as_deref()
        .or(config.output.region.as_deref());
    let sdk = crate::aws::sdk_config(region).await;
    let mut b = aws_sdk_glue::config::Builder::from(&sdk);
    if let Some(ep) = &config.catalog.endpoint {
        b = b.endpoint_url(ep);
    }
    Client::from_conf(b.build())
}

fn table_location(config: &Config, folder: &str) -> String {
    format!(
        "{}/{folder}/",
        config.output.url.as_str().trim_end_matches('/')
    )
}

fn database(config: &Config) -> &str {
    config.catalog.target.database().unwrap_or("default")
}

/// Starts the crawler (creating it when configured to), queueing behind a running
/// crawl; with `wait`, waits for the crawl and fails when it did.
pub async fn crawl(config: &Config) -> Result<(), CatalogError> {
    let Catalog::Glue {
        crawler: name,
        create_with_role,
        wait,
        ..
    } = &config.catalog.target
    else {
        return Ok(());
    };
    let glue = client(config).await;
    match glue.get_crawler().name(name).send().await {
        Ok(_) => {}
        Err(e) if code(&e) == Some("EntityNotFoundException") && create_with_role.is_some() => {
            let role = create_with_role.as_deref().unwrap_or_default();
            create_crawler(&glue, config, name, role).await?;
        }
        Err(e) if code(&e) == Some("EntityNotFoundException") => {
            return Err(CatalogError::Glue(format!(
                "crawler {name:?} does not exist: create it, or set catalog.create = true and catalog.role"
            )));
        }
        Err(e) => return Err(glue_err(&format!("reading crawler {name:?}"), e)),
    }
    let deadline = Instant::now() + QUEUE_WAIT;
    loop {
        match glue.start_crawler().name(name).send().await {
            Ok(_) => break,
            Err(e) if code(&e) == Some("CrawlerRunningException") => {
                if Instant::now() > deadline {
                    return Err(CatalogError::Glue(format!(
                        "crawler {name:?} is still running after {} minutes; the next flush starts it again",
                        QUEUE_WAIT.as_secs() / 60
                    )));
                }
                tracing::info!(
                    crawler = name,
                    "crawler is running; starting it again once it is done"
                );
                tokio::time::sleep(POLL).await;
            }
            Err(e) => return Err(glue_err(&format!("starting crawler {name:?}"), e)),
        }
    }
    tracing::info!(crawler = name, "crawler started");
    if *wait {
        wait_for_crawl(&glue, name).await?;
    }
    Ok(())
}

async fn create_crawler(
    glue: &Client,
    config: &Config,
    name: &str,
    role: &str,
) -> Result<(), CatalogError> {
    let targets = config
        .tables
        .iter()
        .map(|t| {
            S3Target::builder()
                .path(table_location(config, t.folder()))
                .build()
        })
        .collect::<Vec<_>>();
    glue.create_crawler()
        .name(name)
        .role(role)
        .database_name(database(config))
        .targets(
            CrawlerTargets::builder()
                .set_s3_targets(Some(targets))
                .build(),
        )
        .schema_change_policy(
            SchemaChangePolicy::builder()
                .update_behavior(UpdateBehavior::UpdateInDatabase)
                .delete_behavior(DeleteBehavior::Log)
                .build(),
        )
        .configuration(CRAWLER_CONFIGURATION)
        .send()
        .await
        .map_err(|e| glue_err(&format!("creating crawler {name:?}"), e))?;
    tracing::info!(crawler = name, "created the crawler");
    Ok(())
}

async fn wait_for_crawl(glue: &Client, name: &str) -> Result<(), CatalogError> {
    loop {
        let out = glue
            .get_crawler()
            .name(name)
            .send()
            .await
            .map_err(|e| glue_err(&format!("reading crawler {name:?}"), e))?;
        let crawler = out.crawler();
        if crawler.and_then(|c| c.state()) == Some(&CrawlerState::Ready) {
            let last = crawler.and_then(|c| c.last_crawl());
            return match last.and_then(|l| l.status()) {
                Some(LastCrawlStatus::Failed) | Some(LastCrawlStatus::Cancelled) => {
                    Err(CatalogError::CrawlFailed {
                        crawler: name.to_string(),
                        status: last
                            .and_then(|l| l.status())
                            .map(|s| s.as_str().to_string())
                            .unwrap_or_default(),
                        message: last
                            .and_then(|l| l.error_message())
                            .unwrap_or("")
                            .to_string(),
                    })
                }
                _ => {
                    tracing::info!(crawler = name, "crawl finished");
                    Ok(())
                }
            };
        }
        tokio::time::sleep(POLL).await;
    }
}

fn columns(table: &CatalogTable) -> Result<Vec<Column>, CatalogError> {
    columns_of(&table.schema.arrow)
}

/// Glue columns of an Arrow schema, with their Hive types.
fn columns_of(arrow: &arrow_schema::Schema) -> Result<Vec<Column>, CatalogError> {
    arrow
        .fields()
        .iter()
        .map(|f| {
            Column::builder()
                .name(f.name())
                .r#type(hive_type(f.data_type()))
                .build()
                .map_err(|e| glue_err("building a column", e))
        })
        .collect()
}

/// Creates the Glue database when it does not exist.
async fn ensure_database(glue: &Client, db: &str) -> Result<(), CatalogError> {
    if let Err(e) = glue.get_database().name(db).send().await {
        if code(&e) != Some("EntityNotFoundException") {
            return Err(glue_err(&format!("reading database {db:?}"), e));
        }
        let input = DatabaseInput::builder()
            .name(db)
            .description("Created by slot2lake")
            .build()
            .map_err(|e| glue_err("building the database", e))?;
        match glue.create_database().database_input(input).send().await {
            Ok(_) => tracing::info!(database = db, "created the Glue database"),
            Err(e) if code(&e) == Some("AlreadyExistsException") => {}
            Err(e) => return Err(glue_err(&format!("creating database {db:?}"), e)),
        }
    }
    Ok(())
}

/// Attempts to move a Glue Iceberg table's pointer when another writer moves it meanwhile.
const POINTER_ATTEMPTS: usize = 5;

/// Points Glue table `name` at an Iceberg table's current metadata file (creating it,
/// `table_type = ICEBERG`, as Athena reads it), with the Hive types of `arrow` as its
/// columns for display. Glue's `VersionId` guards the swap; a table already pointing
/// there is left alone (a retried flush).
pub async fn point_iceberg_table(
    config: &Config,
    name: &str,
    location: &str,
    metadata_location: &str,
    arrow: &arrow_schema::Schema,
) -> Result<(), CatalogError> {
    let glue = client(config).await;
    let db = database(config);
    ensure_database(&glue, db).await?;
    let cols = columns_of(arrow)?;
    for _ in 0..POINTER_ATTEMPTS {
        let existing = match glue.get_table().database_name(db).name(name).send().await {
            Ok(out) => out.table().cloned(),
            Err(e) if code(&e) == Some("EntityNotFoundException") => None,
            Err(e) => return Err(glue_err(&format!("reading table {db}.{name}"), e)),
        };
        let params = existing
            .as_ref()
            .and_then(|t| t.parameters().cloned())
            .unwrap_or_default();
        if existing.is_some()
            && !params
                .get("table_type")
                .is_some_and(|t| t.eq_ignore_ascii_case("ICEBERG"))
        {
            return Err(CatalogError::Glue(format!(
                "table {db}.{name} exists and is not an Iceberg table; drop it or set catalog.database to another database"
            )));
        }
        let previous = params.get("metadata_location").cloned();
        if previous.as_deref() == Some(metadata_location) {
            return Ok(());
        }
        let mut input = TableInput::builder()
            .name(name)
            .table_type("EXTERNAL_TABLE")
            .parameters("table_type", "ICEBERG")
            .parameters("metadata_location", metadata_location)
            .parameters("EXTERNAL", "TRUE")
            .storage_descriptor(
                StorageDescriptor::builder()
                    .location(location)
                    .set_columns(Some(cols.clone()))
                    .build(),
            );
        if let Some(p) = &previous {
            input = input.parameters("previous_metadata_location", p);
        }
        let input = input
            .build()
            .map_err(|e| glue_err("building the table", e))?;
        let sent = match &existing {
            None => glue
                .create_table()
                .database_name(db)
                .table_input(input)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| {
                    (
                        code(&e) == Some("AlreadyExistsException"),
                        glue_err(&format!("creating table {db}.{name}"), e),
                    )
                }),
            Some(t) => glue
                .update_table()
                .database_name(db)
                .table_input(input)
                .set_version_id(t.version_id().map(str::to_string))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| {
                    (
                        code(&e) == Some("ConcurrentModificationException"),
                        glue_err(&format!("updating table {db}.{name}"), e),
                    )
                }),
        };
        match sent {
            Ok(()) => {
                tracing::info!(table = %format!("{db}.{name}"), metadata = metadata_location, "glue: iceberg table points at its new metadata");
                return Ok(());
            }
            // Someone else created or moved it first: read it again.
            Err((true, _)) => continue,
            Err((false, e)) => return Err(e),
        }
    }
    Err(CatalogError::Glue(format!(
        "table {db}.{name}: {POINTER_ATTEMPTS} updates in a row lost to another writer"
    )))
}

/// Whether Hive type `new` reads every value of `old` (Athena reads Parquet columns of
/// the narrower type through the wider table type).
fn widens(old: &str, new: &str) -> bool {
    let decimal = |t: &str| -> Option<(u32, u32)> {
        let (p, s) = t
            .strip_prefix("decimal(")?
            .strip_suffix(')')?
            .split_once(',')?;
        Some((p.trim().parse().ok()?, s.trim().parse().ok()?))
    };
    match (old, new) {
        ("tinyint", "smallint" | "int" | "bigint")
        | ("smallint", "int" | "bigint")
        | ("int", "bigint")
        | ("float", "double") => true,
        _ => match (decimal(old), decimal(new)) {
            (Some((p1, s1)), Some((p2, s2))) => s1 == s2 && p2 >= p1,
            _ => false,
        },
    }
}

fn storage(location: String, columns: Vec<Column>) -> StorageDescriptor {
    StorageDescriptor::builder()
        .set_columns(Some(columns))
        .location(location)
        .input_format("org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat")
        .output_format("org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat")
        .serde_info(
            SerDeInfo::builder()
                .serialization_library(
                    "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
                )
                .parameters("serialization.format", "1")
                .build(),
        )
        .build()
}

/// Creates or updates the database, each table (new columns are added) and the
/// partitions the flush wrote.
pub async fn update(
    config: &Config,
    tables: &[CatalogTable],
    pending: &Pending,
) -> Result<(), CatalogError> {
    let glue = client(config).await;
    let db = database(config);
    ensure_database(&glue, db).await?;
    for table in tables {
        let location = table_location(config, &table.folder);
        let mut cols = columns(table)?;
        let existing = match glue
            .get_table()
            .database_name(db)
            .name(&table.folder)
            .send()
            .await
        {
            Ok(out) => out.table().cloned(),
            Err(e) if code(&e) == Some("EntityNotFoundException") => None,
            Err(e) => return Err(glue_err(&format!("reading table {db}.{}", table.folder), e)),
        };
        let keys = table
            .partition_keys
            .iter()
            .map(|k| Column::builder().name(*k).r#type("string").build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| glue_err("building partition keys", e))?;
        let changed = match &existing {
            None => true,
            Some(t) => {
                // Keep columns Glue knows (readers of old files need them); add new ones;
                // widen a column whose type grew.
                let mut changed = false;
                let mut merged: Vec<Column> = Vec::new();
                for o in t
                    .storage_descriptor()
                    .map(|sd| sd.columns())
                    .unwrap_or_default()
                {
                    let now = cols.iter().find(|c| c.name() == o.name());
                    match now.and_then(|c| c.r#type()).zip(o.r#type()) {
                        Some((new, old)) if new != old && widens(old, new) => {
                            tracing::info!(table = %table.folder, column = o.name(), from = old, to = new, "widening the column in the Glue table");
                            merged.push(now.cloned().unwrap_or_else(|| o.clone()));
                            changed = true;
                        }
                        Some((new, old)) if new != old => {
                            tracing::warn!(table = %table.folder, column = o.name(), glue = old, files = new, "the column's type changed in a way Athena cannot read across old and new files; the Glue table keeps the old type: rename the column in PostgreSQL, or recreate the Glue table and re-snapshot (slot2lake backfill)");
                            merged.push(o.clone());
                        }
                        _ => merged.push(o.clone()),
                    }
                }
                for c in &cols {
                    if !merged.iter().any(|m| m.name() == c.name()) {
                        merged.push(c.clone());
                        changed = true;
                    }
                }
                cols = merged;
                changed
            }
        };
        if changed {
            let input = TableInput::builder()
                .name(&table.folder)
                .table_type("EXTERNAL_TABLE")
                .parameters("classification", "parquet")
                .parameters("EXTERNAL", "TRUE")
                .storage_descriptor(storage(location.clone(), cols.clone()))
                .set_partition_keys(Some(keys))
                .build()
                .map_err(|e| glue_err("building the table", e))?;
            let what = format!(
                "{} table {db}.{}",
                if existing.is_some() {
                    "updating"
                } else {
                    "creating"
                },
                table.folder
            );
            if existing.is_some() {
                glue.update_table()
                    .database_name(db)
                    .table_input(input)
                    .send()
                    .await
                    .map_err(|e| glue_err(&what, e))?;
            } else {
                glue.create_table()
                    .database_name(db)
                    .table_input(input)
                    .send()
                    .await
                    .map_err(|e| glue_err(&what, e))?;
            }
            tracing::info!(table = %table.folder, "{what}");
        }
        let parts: Vec<PartitionInput> = pending
            .partitions
            .iter()
            .filter(|(t, _)| *t == table.folder)
            .map(|(_, path)| {
                let values = path
                    .split('/')
                    .map(|kv| kv.split_once('=').map_or(kv, |(_, v)| v).to_string())
                    .collect::<Vec<_>>();
                PartitionInput::builder()
                    .set_values(Some(values))
                    .storage_descriptor(storage(format!("{location}{path}/"), cols.clone()))
                    .build()
            })
            .collect();
        for chunk in parts.chunks(100) {
            let out = glue
                .batch_create_partition()
                .database_name(db)
                .table_name(&table.folder)
                .set_partition_input_list(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| glue_err(&format!("adding partitions to {db}.{}", table.folder), e))?;
            for err in out.errors() {
                let code = err
                    .error_detail()
                    .and_then(|d| d.error_code())
                    .unwrap_or("");
                if code != "AlreadyExistsException" {
                    return Err(CatalogError::Glue(format!(
                        "adding partition {:?} to {db}.{}: {code} {}",
                        err.partition_values(),
                        table.folder,
                        err.error_detail()
                            .and_then(|d| d.error_message())
                            .unwrap_or("")
                    )));
                }
            }
        }
        if !parts.is_empty() {
            tracing::info!(table = %table.folder, partitions = parts.len(), "glue partitions up to date");
        }
    }
    Ok(())
}

/// The catalog as the first run will find it: reachable, and what will be created.
pub async fn check(config: &Config) -> Readiness {
    let target = &config.catalog.target;
    let Some(db) = target.database() else {
        return Readiness::Ready(target.kind().to_string());
    };
    let glue = client(config).await;
    let direct = matches!(target, Catalog::GlueDirect { .. });
    let db_state = match glue.get_database().name(db).send().await {
        Ok(_) => format!("database {db:?} exists"),
        Err(e) if code(&e) == Some("EntityNotFoundException") && direct => {
            format!("database {db:?} will be created")
        }
        Err(e) if code(&e) == Some("EntityNotFoundException") => {
            return Readiness::Broken(format!(
                "Glue database {db:?} does not exist: create it (the crawler writes into it)"
            ));
        }
        Err(e) => {
            return Readiness::Broken(format!("Glue is not reachable: {}", DisplayErrorContext(e)))
        }
    };
    let Catalog::Glue {
        crawler: name,
        create_with_role,
        ..
    } = target
    else {
        return Readiness::Ready(format!("glue-direct: {db_state}"));
    };
    match glue.get_crawler().name(name).send().await {
        Ok(_) => Readiness::Ready(format!("glue: {db_state}, crawler {name:?} exists")),
        Err(e) if code(&e) == Some("EntityNotFoundException") && create_with_role.is_some() => {
            Readiness::WillCreate(format!("glue: {db_state}, crawler {name:?} will be created"))
        }
        Err(e) if code(&e) == Some("EntityNotFoundException") => Readiness::Broken(format!(
            "crawler {name:?} does not exist: create it, or set catalog.create = true and catalog.role"
        )),
        Err(e) => Readiness::Broken(format!(
            "Glue is not reachable: {}",
            DisplayErrorContext(e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::widens;

    #[test]
    fn only_widening_type_changes_are_taken() {
        assert!(widens("int", "bigint"));
        assert!(widens("float", "double"));
        assert!(widens("decimal(10,2)", "decimal(18,2)"));
        assert!(!widens("bigint", "int"));
        assert!(!widens("decimal(10,2)", "decimal(12,4)"));
        assert!(!widens("int", "string"));
    }
}
