//! Logging setup: structured, lowercase messages on stderr; `RUST_LOG` overrides.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Default filter: slot2lake at info, libraries at warn.
pub const DEFAULT_FILTER: &str = "warn,slot2lake=info,pg_walstream=error";

/// Installs the global subscriber (once).
pub fn init(verbose: bool, format: LogFormat) {
    let default = if verbose {
        "warn,slot2lake=debug,pg_walstream=warn"
    } else {
        DEFAULT_FILTER
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        // Colour codes only for a person at a terminal, never in a pipe, file or journal.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// Metric names and labels, all in one place (`slot2lake_<what>_<unit>`).
pub mod metric {
    /// Replication messages received, label `type`: insert, update, delete, truncate, begin, commit, relation, message.
    pub const EVENTS_RECEIVED: &str = "slot2lake_events_received_total";
    /// Bytes of pgoutput received.
    pub const RECEIVED_BYTES: &str = "slot2lake_received_bytes_total";
    /// Bytes held in sealed spool segments.
    pub const SPOOL_BYTES: &str = "slot2lake_spool_bytes";
    /// WAL between the server's current position and the slot's acknowledged position.
    pub const SLOT_LAG_BYTES: &str = "slot2lake_slot_lag_bytes";
    /// The position last acknowledged to the slot.
    pub const ACKED_LSN: &str = "slot2lake_acked_lsn";
    /// Attempts that failed and will be retried, label `step`: flush, spool, catalog, source.
    pub const RETRIES: &str = "slot2lake_retries_total";
    /// 1 while a step fails and is retried (`/health` says degraded), label `step`.
    pub const DEGRADED: &str = "slot2lake_degraded";
    /// Unix time of the last committed flush.
    pub const LAST_FLUSH_TIMESTAMP: &str = "slot2lake_last_flush_timestamp_seconds";
    /// Duration of the last committed flush.
    pub const LAST_FLUSH_DURATION: &str = "slot2lake_last_flush_duration_seconds";
    /// Rows written to Parquet, label `table`.
    pub const ROWS_WRITTEN: &str = "slot2lake_rows_written_total";
    /// Files the last flush (or snapshot) wrote, label `table`.
    pub const LAST_FLUSH_FILES: &str = "slot2lake_last_flush_files";
    /// The smallest file the last flush wrote, label `table`.
    pub const LAST_FLUSH_FILE_MIN_BYTES: &str = "slot2lake_last_flush_file_min_bytes";
    /// The median file the last flush wrote, label `table`.
    pub const LAST_FLUSH_FILE_MEDIAN_BYTES: &str = "slot2lake_last_flush_file_median_bytes";
    /// Flushes, label `result`: ok or error.
    pub const FLUSHES: &str = "slot2lake_flushes_total";
    /// Errors, label `stage`: source, spool, flush, catalog, maintenance.
    pub const ERRORS: &str = "slot2lake_errors_total";
    /// Changes of published relations that are not configured tables, label `relation`.
    pub const UNPLACED_CHANGES: &str = "slot2lake_unplaced_changes_total";
    /// Rows written with a value nothing could resolve (a key change that left a TOASTed
    /// value unchanged), label `table`.
    pub const UNRESOLVED_VALUES: &str = "slot2lake_unresolved_values_total";
    /// Values written as NULL because the column's Parquet type cannot hold them (numeric
    /// `NaN` in a DECIMAL column), labels `table`, `column`.
    pub const NULLED_VALUES: &str = "slot2lake_nulled_values_total";
    /// Reconnections to the source after a lost connection.
    pub const RECONNECTS: &str = "slot2lake_reconnects_total";
}

/// Installs the Prometheus recorder; the handle renders `/metrics`.
pub fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok()
}
