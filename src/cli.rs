//! The command line: parsing, dispatch, exit codes (0 ok, 2 usage or config, 1 failure).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, LogFormat, DEFAULT_CONFIG_PATH, EXAMPLE};
use crate::pipeline::Pipeline;

/// Stream PostgreSQL changes from a logical replication slot into a Hive-partitioned Parquet lake.
#[derive(Debug, Parser)]
#[command(name = "slot2lake", version, about, propagate_version = true)]
pub struct Cli {
    /// More detailed logs (RUST_LOG overrides).
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Log lines as text or JSON objects (default: `[log] format`, else text).
    #[arg(long, global = true, value_enum, env = "SLOT2LAKE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// Config file.
    #[arg(short, long, global = true, default_value = DEFAULT_CONFIG_PATH, env = "SLOT2LAKE_CONFIG")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume the slot: first run backfills from a snapshot, then streams changes.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Catch up to the WAL position current at start, flush, commit, exit.
        #[arg(long)]
        once: bool,
    },
    /// Ask the running consumer to flush now; returns when the flush is committed.
    Flush {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Re-snapshot one table.
    Backfill {
        #[command(flatten)]
        config: ConfigArg,
        /// The table, as named in [[tables]].
        #[arg(long)]
        table: String,
    },
    /// Merge each partition's small files into right-sized ones (crash-safe; rerun to resume);
    /// on an Iceberg lake also apply deletes, expire snapshots, remove orphan files.
    Compact {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this table (folder or name); repeatable.
        #[arg(long)]
        table: Vec<String>,
        /// Only partitions dated before this day (YYYY-MM-DD).
        #[arg(long)]
        before: Option<chrono::NaiveDate>,
    },
    /// Compare the lake with the source at one consistent point; exit 1 on a difference.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this table (folder name); repeatable.
        #[arg(long)]
        table: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Slot lag, WAL retained, watermarks, spooled changes.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Preflight: server settings, privileges, publication, replica identity, output.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Zero-configuration tour: a throwaway PostgreSQL, the seed's data, a backfill, a day of changes, a flush.
    Demo {
        /// Leave the database running and the lake on disk for exploring.
        #[arg(long)]
        keep: bool,
        /// Folder for the lake and config (default: a temp folder).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Table format of the lake (`output.format`).
        #[arg(long, value_enum, default_value = "parquet")]
        format: crate::config::TableFormat,
    },
    /// The catalog as Athena would see it: tables, describe, partitions, views.
    Catalog {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// Tables in the lake (SHOW TABLES).
    Tables,
    /// A table's columns and partition keys, from its newest file (DESCRIBE).
    Describe {
        /// Table (folder) name.
        table: String,
    },
    /// A table's partitions (SHOW PARTITIONS).
    Partitions {
        /// Table (folder) name.
        table: String,
    },
    /// Latest-state views (one row per key, deletes removed) in Athena and DuckDB SQL.
    Views,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print an annotated example config.
    Example,
}

impl Command {
    /// The config file the command reads, if any.
    fn config_path(&self) -> Option<&std::path::Path> {
        match self {
            Command::Run { config, .. }
            | Command::Flush { config }
            | Command::Backfill { config, .. }
            | Command::Compact { config, .. }
            | Command::Verify { config, .. }
            | Command::Status { config, .. }
            | Command::Check { config }
            | Command::Catalog { config, .. } => Some(&config.config),
            Command::Demo { .. } | Command::Config { .. } => None,
        }
    }
}

/// `[log] format` of a config file, read before logging starts (the full load, with its
/// errors, comes later).
fn configured_log_format(path: &std::path::Path) -> Option<LogFormat> {
    #[derive(serde::Deserialize)]
    struct Partial {
        #[serde(default)]
        log: Option<crate::config::LogConfig>,
    }
    let text = std::fs::read_to_string(path).ok()?;
    let partial: Partial = toml::from_str(&text).ok()?;
    partial.log.map(|l| l.format)
}

/// Exit code for usage and configuration errors.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for runtime failures.
pub const EXIT_FAILURE: u8 = 1;

/// Entry point of the `slot2lake` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli
        .log_format
        .or_else(|| cli.command.config_path().and_then(configured_log_format))
        .unwrap_or_default();
    crate::telemetry::init(cli.verbose, format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            let usage = e.chain().any(|c| c.downcast_ref::<ConfigError>().is_some());
            eprintln!("error: {}", render(&e));
            ExitCode::from(if usage { EXIT_USAGE } else { EXIT_FAILURE })
        }
    }
}

/// An error and its causes on one line, without repeating a cause the message already contains.
fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !out.contains(&s) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&s);
        }
    }
    out
}

fn load(arg: &ConfigArg) -> anyhow::Result<Config> {
    Ok(Config::load(&arg.config)?)
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config, once } => {
            let config = load(&config)?;
            if !once {
                crate::service::run(config).await?;
                return Ok(ExitCode::SUCCESS);
            }
            let report = crate::service::run_once(config)
                .await
                .context("run --once")?;
            let snap: u64 = report.snapshot_rows.values().sum();
            let rows: u64 = report.flushed_rows.values().sum();
            println!(
                "run --once: {snap} snapshot rows, {} changes received, {rows} rows flushed, {} files; slot acknowledged to {}; lake {}",
                report.changes_received,
                report.files.len(),
                report.acked.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                report.lake
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Flush { config } => {
            let config = load(&config)?;
            let answer = crate::service::admin::request_flush(config.admin.listen).await?;
            if let Some(e) = answer["catalog_error"].as_str() {
                anyhow::bail!("flush committed (cut {}), but the catalog update failed: {e}; the next flush retries it", answer["cut"].as_str().unwrap_or("-"));
            }
            println!(
                "flush committed: cut {}, {} rows, {} files, {:.1} s",
                answer["cut"].as_str().unwrap_or("-"),
                answer["rows"],
                answer["files"],
                answer["seconds"].as_f64().unwrap_or(0.0)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Backfill { config, table } => {
            let config = load(&config)?;
            let folder = config
                .tables
                .iter()
                .find(|t| {
                    t.name == table
                        || t.folder() == table
                        || format!("public.{}", t.folder()) == table
                })
                .map(|t| t.folder().to_string())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "table {table} is not in [[tables]]; add it to the config first"
                    )
                })?;
            let pipeline = Pipeline::open(config).await?;
            let (rows, files) = pipeline.backfill(&[folder]).await.context("backfill")?;
            crate::catalog::after_flush(
                pipeline.config(),
                pipeline.lake(),
                &pipeline.catalog_tables(),
                &files,
            )
            .await
            .context("backfill committed; catalog")?;
            for (t, n) in rows {
                println!("backfill {t}: {n} rows, in place behind a TRUNCATE marker; the table's watermark moved to the snapshot");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Compact {
            config,
            table,
            before,
        } => {
            let config = load(&config)?;
            let lake = crate::lake::Lake::open(&config.output).await?;
            let report = crate::compact::compact(&config, &lake, &table, before)
                .await
                .context("compact (run it again to finish)")?;
            println!(
                "compact: {} partitions, {} small files merged into {}",
                report.partitions, report.files_in, report.files_out
            );
            if config.output.format == crate::config::TableFormat::Iceberg {
                println!(
                    "iceberg: {} snapshots expired, {} of their files deleted, {} orphan files removed",
                    report.snapshots_expired, report.files_deleted, report.orphans_removed
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            config,
            table,
            json,
        } => {
            let config = load(&config)?;
            let pipeline = Pipeline::open(config).await?;
            let report = crate::verify::verify(pipeline, &table)
                .await
                .context("verify")?;
            let ok = report.tables.iter().all(|t| t.ok());
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("verified at {}", report.consistent_point);
                for t in &report.tables {
                    println!(
                        "{:<7} {}: source {} rows, lake {} rows; missing {}, extra {}, different {}",
                        if t.ok() { "ok" } else { "DIFFERS" },
                        t.table,
                        t.source_rows,
                        t.lake_rows,
                        t.missing,
                        t.extra,
                        t.different
                    );
                    if t.outside_snapshot_where > 0 {
                        println!(
                            "        {} source rows outside snapshot_where not in the lake: the first snapshot left them out and no change brought them in (not compared)",
                            t.outside_snapshot_where
                        );
                    }
                    for e in &t.examples {
                        println!("        {e}");
                    }
                    if let Some(c) = &t.current_state {
                        match &c.not_compared {
                            Some(why) => println!("        current state not compared: {why}"),
                            None => println!(
                                "        current state at {}: {} rows; missing {}, extra {}, different {}",
                                c.lsn.map(|l| l.to_string()).unwrap_or_default(),
                                c.rows,
                                c.missing,
                                c.extra,
                                c.different
                            ),
                        }
                        for e in &c.examples {
                            println!("        {e}");
                        }
                    }
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILURE)
            })
        }
        Command::Status { config, json } => {
            let config = load(&config)?;
            let status = crate::status::gather(&config).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let config = load(&config)?;
            let findings = crate::check::run(&config).await;
            let mut failed = false;
            for f in &findings {
                let tag = match f.level {
                    crate::check::Level::Ok => "ok  ",
                    crate::check::Level::Todo => "todo",
                    crate::check::Level::Warn => "warn",
                    crate::check::Level::Fail => {
                        failed = true;
                        "FAIL"
                    }
                };
                println!("{tag}  {:<22} {}", f.what, f.detail);
            }
            Ok(if failed {
                ExitCode::from(EXIT_FAILURE)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Catalog { config, command } => {
            let config = load(&config)?;
            catalog_command(&config, command).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { keep, dir, format } => {
            crate::demo::run(crate::demo::DemoOptions { keep, dir, format }).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Example,
        } => {
            print!("{EXAMPLE}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn catalog_command(config: &Config, command: CatalogCommand) -> anyhow::Result<()> {
    use crate::catalog::local;
    let lake = crate::lake::Lake::open(&config.output).await?;
    let prefix = config.output.metadata_prefix.trim_matches('/');
    match command {
        CatalogCommand::Tables => {
            for t in local::tables(&lake, prefix).await? {
                println!("{t}");
            }
        }
        CatalogCommand::Describe { table } => {
            let cols = local::describe(&lake, &table).await?;
            for (name, ty, _) in cols.iter().filter(|c| !c.2) {
                println!("{name:<30}\t{ty}");
            }
            println!("\n# Partition Information\n# {:<28}\tdata_type", "col_name");
            for (name, ty, _) in cols.iter().filter(|c| c.2) {
                println!("{name:<30}\t{ty}");
            }
        }
        CatalogCommand::Partitions { table } => {
            for p in local::partitions(&lake, &table).await? {
                println!("{p}");
            }
        }
        CatalogCommand::Views => {
            let client = crate::source::open(&config.source).await?;
            // Where the first SELECT finds the tables: Glue's database (Athena), or the
            // REST catalog's namespace (any engine attached to it).
            let (engine, schema) = match &config.catalog.target {
                crate::config::Catalog::IcebergRest(rest) => (
                    "Trino, Spark or DuckDB attached to the REST catalog",
                    rest.namespace.join("."),
                ),
                target => ("Athena", target.database().unwrap_or("default").to_string()),
            };
            let schema = schema.as_str();
            let location = match lake.local_root() {
                Some(root) => root.display().to_string(),
                None => config.output.url.to_string(),
            };
            let types = crate::source::introspect::type_catalog(&client).await?;
            for t in &config.tables {
                let info = crate::source::introspect::table_info(
                    &client,
                    t,
                    &types,
                    &config.source.publication,
                )
                .await?;
                let table =
                    crate::catalog::CatalogTable::new(t.folder(), std::sync::Arc::new(info.schema));
                let keyed = table.schema.columns.iter().any(|c| c.is_key);
                let (athena, duckdb) =
                    if keyed && config.output.format == crate::config::TableFormat::Iceberg {
                        crate::catalog::current_state_selects(&table, schema, &location)
                    } else {
                        crate::catalog::latest_state_views(&table, schema, &location)
                    };
                println!(
                    "-- {}: {engine}\n{athena}\n\n-- {}: DuckDB\n{duckdb}\n",
                    t.name, t.name
                );
            }
        }
    }
    Ok(())
}
