//! Named failure points for crash tests.
//!
//! Built with the `failpoints` feature, `SLOT2LAKE_FAILPOINT=<name>` makes the process
//! abort (no destructors, no flushing: like `kill -9`) when it reaches that point, and
//! `SLOT2LAKE_PAUSE=<name>` holds it at a pause point while `SLOT2LAKE_PAUSE_FILE` exists.
//! Without the feature, [`hit`] compiles to nothing.

/// Inside a transaction being written to the spool (not sealed).
pub const MID_SPOOL_WRITE: &str = "mid-spool-write";
/// A Parquet file is complete in its temp folder and not yet moved or uploaded.
pub const MID_PARQUET_WRITE: &str = "mid-parquet-write";
/// The slot acknowledged; the catalog not told and the spool not cleaned.
pub const AFTER_ACK: &str = "after-ack";
/// Spool segments sealed; nothing of this run is in the lake yet.
pub const AFTER_SPOOL_SEAL: &str = "after-spool-seal";
/// Two Parquet files of a flush (or of a snapshot, in staging) are closed, not all.
pub const MID_FLUSH_FILES: &str = "mid-flush-files";
/// All Parquet files of a flush are in place; no watermark written.
pub const AFTER_FLUSH_FILES: &str = "after-flush-files";
/// One table's Iceberg commit made, not every table's.
pub const MID_ICEBERG_COMMITS: &str = "mid-iceberg-commits";
/// The Iceberg tables committed (a flush's or a snapshot's); no watermark written.
pub const AFTER_ICEBERG_COMMIT: &str = "after-iceberg-commit";
/// Watermarks written; the slot not acknowledged.
pub const AFTER_WATERMARKS: &str = "after-watermarks";
/// Some snapshot tables copied to staging, not all.
pub const MID_SNAPSHOT_COPY: &str = "mid-snapshot-copy";
/// Snapshot staged; files not moved into place.
pub const AFTER_SNAPSHOT_STAGED: &str = "after-snapshot-staged";
/// Some staged snapshot files moved into place, not all.
pub const MID_SNAPSHOT_PUBLISH: &str = "mid-snapshot-publish";
/// A compaction published a merged file; its partition's small files are not all deleted.
pub const MID_COMPACT_PUBLISH: &str = "mid-compact-publish";
/// A compaction deleted one small file of a partition.
pub const MID_COMPACT_DELETE: &str = "mid-compact-delete";
/// Iceberg maintenance uploaded a table's rewritten files; not committed.
pub const MID_ICEBERG_REWRITE: &str = "mid-iceberg-rewrite";
/// Iceberg maintenance committed its rewrites; no snapshot expired.
pub const AFTER_ICEBERG_REWRITE: &str = "after-iceberg-rewrite";
/// Iceberg maintenance expired snapshots and deleted one of their files, not all.
pub const MID_ICEBERG_EXPIRY: &str = "mid-iceberg-expiry";

/// A flush committed and its callers answered; its maintenance not started (a pause point).
pub const BEFORE_MAINTENANCE: &str = "before-maintenance";

/// Aborts the process if `name` is the configured failure point.
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("SLOT2LAKE_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Waits while the file `SLOT2LAKE_PAUSE_FILE` exists, if `name` is `SLOT2LAKE_PAUSE`: a
/// test holds the process at a step to look at what others see meanwhile.
pub async fn pause(name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("SLOT2LAKE_PAUSE").is_ok_and(|v| v == name) {
        if let Some(file) = std::env::var_os("SLOT2LAKE_PAUSE_FILE") {
            let file = std::path::PathBuf::from(file);
            eprintln!("pause {name}: waiting while {} exists", file.display());
            while file.exists() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
