//! Iceberg table maintenance (`slot2lake compact` on an Iceberg lake): per source table,
//! its current-state table and its changelog.
//!
//! ```text
//!  rewrite   current state: the files deletes point into, and the small ones, rewritten
//!            with the deletes applied into files of up to max_file_size (the others
//!            kept); one commit
//!            changelog: per partition its small files merged, all manifests merged into
//!            one; one "replace" commit (the rows are the same)
//!  expire    snapshots older than [maintenance] snapshot_retention dropped from the
//!            metadata (a commit), then the files only they listed deleted
//!  orphans   files in the table's folder no snapshot lists, older than orphan_age, deleted
//! ```
//!
//! Crash-safe without an intent file: a commit is atomic (the catalog's create-only
//! metadata write); new files are written under fresh names before it and are orphans
//! if it never happens; a file is deleted only after the commit that stops listing it,
//! and one a crash leaves behind is an orphan a later run removes. A flush committing
//! meanwhile makes a maintenance commit lose its race; it is made again on the new state.
//!
//! Never deleted: files the pair's other table lists (a first-run snapshot's files are
//! both the changelog's and the current state's), files outside the table's folder, a
//! flush's files not committed yet (named past the table's LSN), files named before the
//! table's first commit (a Parquet lake switched to Iceberg keeps them), and snapshots a
//! retried flush may look for its commit id in (past the table's watermark). Rewrite
//! commits carry the table's LSN unchanged, so "as of LSN X" still lines up.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::future::Future;
use std::io::BufWriter;
use std::path::PathBuf;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use chrono::{DateTime, NaiveDate, Utc};
use futures::stream::{self, StreamExt};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

use super::catalog::{Loaded, LocalCatalog};
use super::current;
use super::manifest::{EntryStatus, FileContent, ManifestContent, ManifestEntry};
use super::scan::{self, file_err, open, LiveRows};
use super::spec::{self, Snapshot, TableMetadata, LSN_PROPERTY};
use super::table::{self, Draft, IcebergError, NewFile, COMMIT_PROPERTY, FIRST_LSN_PROPERTY};
use crate::checkpoint::CompactReport;
use crate::failpoint;
use crate::lsn::Lsn;

/// Manifest lists, manifests and deletes in flight at once.
const CONCURRENT_READS: usize = 16;

/// What maintenance may do.
pub struct Settings {
    /// Files under half of this are small; merged files grow up to it.
    pub max_file_size: u64,
    /// Only changelog partitions dated before this day are merged.
    pub before: Option<NaiveDate>,
    /// Snapshots younger than this are kept.
    pub retention: Duration,
    /// Unlisted files younger than this are kept.
    pub orphan_age: Duration,
    /// How rewritten files are encoded.
    pub writer: WriterProperties,
    /// Where files are written before they are uploaded.
    pub tmp: PathBuf,
}

/// Maintains the changelog `changelog` and its current-state table; returns the tables
/// committed to, with their new metadata file (for the Glue pointer).
pub async fn maintain(
    catalog: &LocalCatalog,
    changelog: &str,
    watermark: Option<Lsn>,
    settings: &Settings,
    report: &mut CompactReport,
) -> Result<BTreeMap<String, String>, IcebergError> {
    let current = current::folder_of(changelog);
    let mut moved = BTreeMap::new();
    if let Some(l) = rewrite_current(catalog, &current, settings, report).await? {
        moved.insert(current.clone(), l.metadata_key);
    }
    if let Some(l) = rewrite_changelog(catalog, changelog, settings, report).await? {
        moved.insert(changelog.to_string(), l.metadata_key);
    }
    failpoint::hit(failpoint::AFTER_ICEBERG_REWRITE);
    let now = Utc::now();
    let none = HashSet::new();
    if let Some(l) = expire(catalog, &current, watermark, &none, settings, now, report).await? {
        moved.insert(current.clone(), l.metadata_key);
    }
    // The changelog's files the current state still lists stay.
    let listed_by_current = match catalog.load(&current).await? {
        Some(l) => references(catalog, &l).await?,
        None => HashSet::new(),
    };
    let protect = &listed_by_current;
    if let Some(l) = expire(
        catalog, changelog, watermark, protect, settings, now, report,
    )
    .await?
    {
        moved.insert(changelog.to_string(), l.metadata_key);
    }
    remove_orphans(catalog, &current, &none, settings, now, report).await?;
    remove_orphans(catalog, changelog, protect, settings, now, report).await?;
    Ok(moved)
}

/// Which current-state data files to rewrite, given each one's size and whether deletes
/// point into it: every file with deletes (they are applied), and the small ones when
/// there are deletes or at least two of them (they are merged). The files left out stay
/// as they are, so the cost follows what changed, not the table.
pub fn current_rewrite(files: &[(u64, bool)], small_below: u64) -> Vec<usize> {
    let small = files
        .iter()
        .filter(|(bytes, _)| *bytes < small_below)
        .count();
    if !files.iter().any(|(_, deleted)| *deleted) && small < 2 {
        return Vec::new();
    }
    (0..files.len())
        .filter(|i| files[*i].1 || files[*i].0 < small_below)
        .collect()
}

/// The current state's files that have deletes or are small, rewritten with the deletes
/// applied into right-sized files; one commit, the other files kept.
async fn rewrite_current(
    catalog: &LocalCatalog,
    folder: &str,
    settings: &Settings,
    report: &mut CompactReport,
) -> Result<Option<Loaded>, IcebergError> {
    for _ in 0..table::COMMIT_ATTEMPTS {
        let Some(base) = catalog.load(folder).await? else {
            return Ok(None);
        };
        let (data, deletes): (Vec<ManifestEntry>, Vec<ManifestEntry>) =
            table::live_entries(catalog, &base.metadata)
                .await?
                .into_iter()
                .partition(|e| e.file.content == FileContent::Data);
        let deleted = scan::deleted_positions(catalog, &deletes).await?;
        let sized: Vec<(u64, bool)> = data
            .iter()
            .map(|e| {
                (
                    e.file.file_size_in_bytes,
                    deleted.contains_key(&e.file.file_path),
                )
            })
            .collect();
        let chosen = current_rewrite(&sized, settings.max_file_size / 2);
        // Delete files that point at no live file are dropped all the same.
        if chosen.is_empty() && deletes.is_empty() {
            return Ok(None);
        }
        let rewritten: Vec<ManifestEntry> = chosen.iter().map(|i| data[*i].clone()).collect();
        let kept: Vec<&ManifestEntry> = (0..data.len())
            .filter(|i| chosen.binary_search(i).is_err())
            .map(|i| &data[i])
            .collect();
        let unique = Utc::now().timestamp_micros();
        let mut out = Rolling::new(settings, None);
        let schema = scan::newest_schema(catalog, &data).await?;
        let mut rows = LiveRows::new(catalog, rewritten.clone(), deleted, schema).await?;
        let name = |n: usize| format!("{folder}/data/{unique}-rewritten-{n:04}.parquet");
        while let Some(batch) = rows.next().await? {
            out.write(catalog, &batch, name).await?;
        }
        let files = out.finish(catalog).await?;
        failpoint::hit(failpoint::MID_ICEBERG_REWRITE);
        let removed: Vec<&ManifestEntry> = rewritten.iter().chain(&deletes).collect();
        let metadata = with_first_lsn(base.metadata.clone());
        let draft = Draft::new(&metadata)?;
        let mut entries: Vec<ManifestEntry> = kept.iter().map(|e| existing(e)).collect();
        entries.extend(
            files
                .iter()
                .map(|f| draft.added(catalog, f, FileContent::Data)),
        );
        let mut manifests = Vec::new();
        if !entries.is_empty() {
            manifests.push(
                draft
                    .manifest(catalog, folder, ManifestContent::Data, &entries)
                    .await?,
            );
        }
        let live: Vec<NewFile> = kept
            .iter()
            .map(|e| new_file(catalog, e))
            .chain(files.iter().cloned())
            .collect();
        let rewrite = Rewrite {
            added: &files,
            removed: &removed,
            live: &live,
        };
        if let Some(l) = commit_rewrite(
            catalog, folder, &base, metadata, draft, &manifests, &rewrite,
        )
        .await?
        {
            tracing::info!(
                table = folder,
                files_in = removed.len(),
                files_out = files.len(),
                kept = kept.len(),
                "iceberg: current state rewritten, deletes applied"
            );
            report.files_in += removed.len();
            report.files_out += files.len();
            return Ok(Some(l));
        }
    }
    Err(table::contended(folder))
}

/// A live entry carried into a new manifest unchanged.
fn existing(e: &ManifestEntry) -> ManifestEntry {
    ManifestEntry {
        status: EntryStatus::Existing,
        file_sequence_number: e.file_sequence_number.or(e.sequence_number),
        ..e.clone()
    }
}

/// A data file as merge planning sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sized {
    /// Its key in the lake.
    pub key: String,
    /// Its partition (days since the epoch).
    pub day: Option<i32>,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Which changelog files to merge: per partition folder, its files under `small_below`
/// when there are at least two (with `before`, only partitions dated before it).
pub fn plan_merges(
    files: &[Sized],
    small_below: u64,
    before: Option<NaiveDate>,
) -> Vec<Vec<usize>> {
    let before_day = before.map(|d| (d - NaiveDate::default()).num_days());
    let mut by_folder: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        if f.bytes >= small_below {
            continue;
        }
        if let Some(b) = before_day {
            if f.day.is_none_or(|d| i64::from(d) >= b) {
                continue;
            }
        }
        let folder = f.key.rsplit_once('/').map_or("", |(d, _)| d);
        by_folder.entry(folder).or_default().push(i);
    }
    by_folder
        .into_values()
        .filter(|v| v.len() >= 2)
        .map(|mut v| {
            v.sort_by(|a, b| files[*a].key.cmp(&files[*b].key));
            v
        })
        .collect()
}

/// The changelog's small files merged per partition, its manifests merged into one.
async fn rewrite_changelog(
    catalog: &LocalCatalog,
    folder: &str,
    settings: &Settings,
    report: &mut CompactReport,
) -> Result<Option<Loaded>, IcebergError> {
    for _ in 0..table::COMMIT_ATTEMPTS {
        let Some(base) = catalog.load(folder).await? else {
            return Ok(None);
        };
        let Some(parent) = base.metadata.current_snapshot() else {
            return Ok(None);
        };
        let manifests = table::manifest_list(catalog, parent).await?;
        let (data, deletes): (Vec<ManifestEntry>, Vec<ManifestEntry>) =
            table::live_entries(catalog, &base.metadata)
                .await?
                .into_iter()
                .partition(|e| e.file.content == FileContent::Data);
        let sized: Vec<Sized> = data
            .iter()
            .map(|e| Sized {
                key: catalog.key_of(&e.file.file_path),
                day: e.file.partition,
                bytes: e.file.file_size_in_bytes,
            })
            .collect();
        let groups = plan_merges(&sized, settings.max_file_size / 2, settings.before);
        let data_manifests = manifests
            .iter()
            .filter(|m| m.content == ManifestContent::Data)
            .count();
        if groups.is_empty() && data_manifests <= 1 {
            return Ok(None);
        }
        let stamp = Utc::now().format("%Y%m%d_%H%M%S_%6f").to_string();
        let mut added = Vec::new();
        let mut removed = HashSet::new();
        for group in &groups {
            let mut out = Rolling::new(settings, sized[group[0]].day);
            let dir = sized[group[0]].key.rsplit_once('/').map_or("", |(d, _)| d);
            for &i in group {
                let key = &sized[i].key;
                for batch in open(catalog, key).await? {
                    let batch = batch.map_err(|e| file_err(key, e))?;
                    let name =
                        |n: usize| format!("{dir}/{folder}_{stamp}_rewritten_{n:04}.parquet");
                    out.write(catalog, &batch, name).await?;
                }
                removed.insert(data[i].file.file_path.clone());
            }
            added.extend(out.finish(catalog).await?);
        }
        failpoint::hit(failpoint::MID_ICEBERG_REWRITE);
        let metadata = with_first_lsn(base.metadata.clone());
        let draft = Draft::new(&metadata)?;
        let (kept, gone): (Vec<&ManifestEntry>, Vec<&ManifestEntry>) = data
            .iter()
            .partition(|e| !removed.contains(&e.file.file_path));
        let mut entries: Vec<ManifestEntry> = kept.iter().map(|e| existing(e)).collect();
        entries.extend(
            added
                .iter()
                .map(|f| draft.added(catalog, f, FileContent::Data)),
        );
        let mut listed = vec![
            draft
                .manifest(catalog, folder, ManifestContent::Data, &entries)
                .await?,
        ];
        // Delete manifests (another writer's: the changelog has none of its own) stay.
        listed.extend(
            manifests
                .into_iter()
                .filter(|m| m.content == ManifestContent::Deletes),
        );
        let live: Vec<NewFile> = kept
            .iter()
            .copied()
            .chain(&deletes)
            .map(|e| new_file(catalog, e))
            .chain(added.iter().cloned())
            .collect();
        let rewrite = Rewrite {
            added: &added,
            removed: &gone,
            live: &live,
        };
        if let Some(l) =
            commit_rewrite(catalog, folder, &base, metadata, draft, &listed, &rewrite).await?
        {
            tracing::info!(
                table = folder,
                partitions = groups.len(),
                files_in = gone.len(),
                files_out = added.len(),
                manifests_in = data_manifests,
                "iceberg: changelog files and manifests merged"
            );
            report.partitions += groups.len();
            report.files_in += gone.len();
            report.files_out += added.len();
            return Ok(Some(l));
        }
    }
    Err(table::contended(folder))
}

fn new_file(catalog: &LocalCatalog, e: &ManifestEntry) -> NewFile {
    NewFile {
        key: catalog.key_of(&e.file.file_path),
        rows: e.file.record_count,
        bytes: e.file.file_size_in_bytes,
        day: e.file.partition,
    }
}

/// The metadata with the LSN of the table's first commit recorded (tables created
/// before the property existed: the oldest snapshot's, before any expires).
fn with_first_lsn(mut metadata: TableMetadata) -> TableMetadata {
    if !metadata.properties.contains_key(FIRST_LSN_PROPERTY) {
        if let Some(first) = metadata.snapshots.iter().filter_map(spec::lsn_of).min() {
            metadata
                .properties
                .insert(FIRST_LSN_PROPERTY.into(), Lsn(first).to_string());
        }
    }
    metadata
}

fn first_lsn(metadata: &TableMetadata) -> Option<Lsn> {
    match metadata.properties.get(FIRST_LSN_PROPERTY) {
        Some(v) => v.parse().ok(),
        None => metadata
            .snapshots
            .iter()
            .filter_map(spec::lsn_of)
            .min()
            .map(Lsn),
    }
}

/// What a rewrite commit changes: files added and removed, and the files live after it.
struct Rewrite<'a> {
    added: &'a [NewFile],
    removed: &'a [&'a ManifestEntry],
    live: &'a [NewFile],
}

/// Writes the rewrite's snapshot (its manifests written) and commits it on `base`;
/// `None` when another writer moved the table first.
async fn commit_rewrite(
    catalog: &LocalCatalog,
    folder: &str,
    base: &Loaded,
    metadata: TableMetadata,
    draft: Draft,
    manifests: &[super::manifest::ManifestFile],
    rewrite: &Rewrite<'_>,
) -> Result<Option<Loaded>, IcebergError> {
    let summary = rewrite_summary(&base.metadata, rewrite);
    let metadata = draft
        .finish(catalog, folder, metadata, Some(base), manifests, summary)
        .await?;
    table::commit_unless_moved(catalog, folder, Some(base), &metadata).await
}

/// The summary of a commit that rewrote files without changing rows: the table's LSN
/// stays, the totals are those of the live files.
fn rewrite_summary(base: &TableMetadata, rewrite: &Rewrite<'_>) -> BTreeMap<String, String> {
    let Rewrite {
        added,
        removed,
        live,
    } = rewrite;
    let parent = base.current_snapshot();
    let lsn = parent
        .and_then(|p| p.summary.get(LSN_PROPERTY))
        .cloned()
        .unwrap_or_default();
    let sum = |files: &mut dyn Iterator<Item = (u64, u64)>| {
        files.fold((0u64, 0u64, 0u64), |(n, r, b), (rows, bytes)| {
            (n + 1, r + rows, b + bytes)
        })
    };
    let (added_files, added_rows, added_bytes) = sum(&mut added.iter().map(|f| (f.rows, f.bytes)));
    let removed_of = |c: FileContent| {
        sum(&mut removed
            .iter()
            .filter(|e| e.file.content == c)
            .map(|e| (e.file.record_count, e.file.file_size_in_bytes)))
    };
    let (removed_data, removed_rows, removed_data_bytes) = removed_of(FileContent::Data);
    let (removed_deletes, removed_positions, removed_delete_bytes) =
        removed_of(FileContent::PositionDeletes);
    let (total_files, total_rows, total_bytes) = sum(&mut live.iter().map(|f| (f.rows, f.bytes)));
    BTreeMap::from([
        // The table's rows are the same: the spec's "replace".
        ("operation".into(), "replace".into()),
        (LSN_PROPERTY.into(), lsn),
        (
            COMMIT_PROPERTY.into(),
            format!("compact {}", Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ")),
        ),
        ("added-data-files".into(), added_files.to_string()),
        ("added-records".into(), added_rows.to_string()),
        ("added-files-size".into(), added_bytes.to_string()),
        ("deleted-data-files".into(), removed_data.to_string()),
        ("deleted-records".into(), removed_rows.to_string()),
        ("removed-delete-files".into(), removed_deletes.to_string()),
        (
            "removed-position-deletes".into(),
            removed_positions.to_string(),
        ),
        (
            "removed-files-size".into(),
            (removed_data_bytes + removed_delete_bytes).to_string(),
        ),
        ("total-data-files".into(), total_files.to_string()),
        ("total-records".into(), total_rows.to_string()),
        ("total-files-size".into(), total_bytes.to_string()),
        ("total-delete-files".into(), "0".into()),
        ("total-position-deletes".into(), "0".into()),
        ("total-equality-deletes".into(), "0".into()),
    ])
}

/// Snapshots to expire: older than `retention`, not the current one, and not past the
/// table's watermark (a flush retried after a crash looks for its commit id there).
pub fn plan_expiry(
    snapshots: &[Snapshot],
    current: Option<i64>,
    now: DateTime<Utc>,
    retention: Duration,
    watermark: Option<Lsn>,
) -> HashSet<i64> {
    let oldest_kept =
        now.timestamp_millis() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    snapshots
        .iter()
        .filter(|s| Some(s.snapshot_id) != current && s.timestamp_ms < oldest_kept)
        .filter(|s| match (watermark, spec::lsn_of(s)) {
            (None, _) => false,
            (Some(w), Some(l)) => l <= w.0,
            (Some(_), None) => true,
        })
        .map(|s| s.snapshot_id)
        .collect()
}

/// Expires the table's old snapshots, then deletes the files only they listed.
async fn expire(
    catalog: &LocalCatalog,
    folder: &str,
    watermark: Option<Lsn>,
    protect: &HashSet<String>,
    settings: &Settings,
    now: DateTime<Utc>,
    report: &mut CompactReport,
) -> Result<Option<Loaded>, IcebergError> {
    for _ in 0..table::COMMIT_ATTEMPTS {
        let Some(base) = catalog.load(folder).await? else {
            return Ok(None);
        };
        let m = &base.metadata;
        let expired = plan_expiry(
            &m.snapshots,
            m.current_snapshot_id,
            now,
            settings.retention,
            watermark,
        );
        if expired.is_empty() {
            return Ok(None);
        }
        let (gone, kept): (Vec<&Snapshot>, Vec<&Snapshot>) = m
            .snapshots
            .iter()
            .partition(|s| expired.contains(&s.snapshot_id));
        let still = reachable(catalog, &kept, &HashSet::new()).await?;
        let only_gone = reachable(catalog, &gone, &still).await?;
        let metadata = with_first_lsn(m.clone())
            .without_snapshots(&expired, table::previous_file(catalog, Some(&base)));
        let Some(l) = table::commit_unless_moved(catalog, folder, Some(&base), &metadata).await?
        else {
            continue;
        };
        let prefix = format!("{folder}/");
        let doomed = only_gone
            .difference(&still)
            .filter(|k| k.starts_with(&prefix) && !protect.contains(*k))
            .cloned()
            .collect();
        let deleted = delete_all(catalog, doomed, Some(failpoint::MID_ICEBERG_EXPIRY)).await?;
        tracing::info!(
            table = folder,
            snapshots = expired.len(),
            files = deleted,
            "iceberg: snapshots expired"
        );
        report.snapshots_expired += expired.len();
        report.files_deleted += deleted;
        return Ok(Some(l));
    }
    Err(table::contended(folder))
}

/// Keys of the manifest lists, manifests and files `snapshots` list; manifests in
/// `known` are not read (their files are known too). Lists and manifests are read
/// [`CONCURRENT_READS`] at a time: a table flushed every minute keeps thousands of
/// snapshots within the retention, one GET each on S3.
async fn reachable(
    catalog: &LocalCatalog,
    snapshots: &[&Snapshot],
    known: &HashSet<String>,
) -> Result<HashSet<String>, IcebergError> {
    let mut reads = Vec::with_capacity(snapshots.len());
    for s in snapshots {
        reads.push(table::manifest_list(catalog, s));
    }
    let mut out: HashSet<String> = snapshots
        .iter()
        .map(|s| catalog.key_of(&s.manifest_list))
        .collect();
    let mut manifests = Vec::new();
    for list in few_at_a_time(reads).await {
        for listed in list? {
            let key = catalog.key_of(&listed.manifest_path);
            if !known.contains(&key) && out.insert(key) {
                manifests.push(listed);
            }
        }
    }
    let mut reads = Vec::with_capacity(manifests.len());
    for m in &manifests {
        reads.push(table::read_entries(catalog, m));
    }
    for entries in few_at_a_time(reads).await {
        out.extend(entries?.iter().map(|e| catalog.key_of(&e.file.file_path)));
    }
    Ok(out)
}

/// Deletes `keys` [`CONCURRENT_READS`] at a time, passing failpoint `after_each` after
/// each; returns how many.
async fn delete_all(
    catalog: &LocalCatalog,
    keys: Vec<String>,
    after_each: Option<&str>,
) -> Result<usize, IcebergError> {
    let mut deletes = Vec::with_capacity(keys.len());
    for k in &keys {
        deletes.push(async move {
            catalog.lake().delete(k).await?;
            if let Some(name) = after_each {
                failpoint::hit(name);
            }
            Ok::<_, IcebergError>(())
        });
    }
    let mut deleted = 0;
    for done in few_at_a_time(deletes).await {
        done?;
        deleted += 1;
    }
    Ok(deleted)
}

/// Runs `jobs` [`CONCURRENT_READS`] at a time; their outputs in order. (Callers build
/// `jobs` in loops, not with `map` closures, whose futures the compiler cannot prove
/// `Send` for `run`'s flush task.)
async fn few_at_a_time<F: Future>(jobs: Vec<F>) -> Vec<F::Output> {
    stream::iter(jobs)
        .buffered(CONCURRENT_READS)
        .collect()
        .await
}

/// Every key the table's metadata refers to: its snapshots' files, its metadata files.
async fn references(
    catalog: &LocalCatalog,
    table: &Loaded,
) -> Result<HashSet<String>, IcebergError> {
    let all: Vec<&Snapshot> = table.metadata.snapshots.iter().collect();
    let mut out = reachable(catalog, &all, &HashSet::new()).await?;
    out.insert(table.metadata_key.clone());
    out.extend(
        table
            .metadata
            .metadata_log
            .iter()
            .map(|e| catalog.key_of(&e.metadata_file)),
    );
    Ok(out)
}

/// Whether an unlisted file in table folder `folder` is the table's to remove: the
/// metadata files slot2lake writes (a REST catalog's own `NNNNN-<uuid>.metadata.json`
/// are the catalog's to keep or drop), its rewritten or current-state files, and flush
/// files named between the table's first commit and its current LSN (later ones await a
/// retried commit).
pub fn is_orphan(folder: &str, key: &str, first: Option<Lsn>, table_lsn: Option<Lsn>) -> bool {
    let Some(rest) = key.strip_prefix(folder).and_then(|r| r.strip_prefix('/')) else {
        return false;
    };
    if let Some(name) = rest.strip_prefix("metadata/") {
        let ours = super::catalog::metadata_version(name).is_some() || name.ends_with(".avro");
        return ours && !name.contains('/');
    }
    let Some(name) = rest.rsplit('/').next().filter(|n| n.ends_with(".parquet")) else {
        return false;
    };
    if rest.starts_with("data/") || name.contains("_rewritten_") {
        return true;
    }
    match (crate::sink::FileName::lsn_of(key), first, table_lsn) {
        (Some(l), Some(f), Some(t)) => f <= l && l <= t,
        _ => false,
    }
}

/// Removes the table folder's files no snapshot lists and no one wrote lately.
async fn remove_orphans(
    catalog: &LocalCatalog,
    folder: &str,
    protect: &HashSet<String>,
    settings: &Settings,
    now: DateTime<Utc>,
    report: &mut CompactReport,
) -> Result<(), IcebergError> {
    let Some(table) = catalog.load(folder).await? else {
        return Ok(());
    };
    let listed = references(catalog, &table).await?;
    let first = first_lsn(&table.metadata);
    let table_lsn = table
        .metadata
        .current_snapshot()
        .and_then(spec::lsn_of)
        .map(Lsn);
    let cutoff =
        now - chrono::Duration::from_std(settings.orphan_age).unwrap_or(chrono::Duration::MAX);
    let orphans = catalog
        .lake()
        .list(&format!("{folder}/"))
        .await?
        .into_iter()
        .filter(|obj| obj.last_modified <= cutoff)
        .map(|obj| obj.location.to_string())
        .filter(|key| {
            !listed.contains(key)
                && !protect.contains(key)
                && is_orphan(folder, key, first, table_lsn)
        })
        .collect();
    let removed = delete_all(catalog, orphans, None).await?;
    if removed > 0 {
        tracing::info!(
            table = folder,
            files = removed,
            "iceberg: orphan files removed"
        );
    }
    report.orphans_removed += removed;
    Ok(())
}

/// Writes batches into files of up to `max_file_size` (a new one when the schema
/// changes), each uploaded when closed.
struct Rolling<'a> {
    settings: &'a Settings,
    day: Option<i32>,
    open: Option<Open>,
    done: Vec<NewFile>,
}

struct Open {
    writer: ArrowWriter<BufWriter<File>>,
    path: PathBuf,
    key: String,
    schema: SchemaRef,
    rows: u64,
}

impl<'a> Rolling<'a> {
    fn new(settings: &'a Settings, day: Option<i32>) -> Self {
        Self {
            settings,
            day,
            open: None,
            done: Vec::new(),
        }
    }

    /// Appends `batch`; a new file is named `name(n)`, n counting this writer's files.
    async fn write(
        &mut self,
        catalog: &LocalCatalog,
        batch: &RecordBatch,
        name: impl Fn(usize) -> String,
    ) -> Result<(), IcebergError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let full = self.open.as_ref().is_some_and(|o| {
            o.schema != batch.schema()
                || (o.writer.bytes_written() + o.writer.in_progress_size()) as u64
                    >= self.settings.max_file_size
        });
        if full {
            self.close(catalog).await?;
        }
        let o = match self.open.as_mut() {
            Some(o) => o,
            None => {
                let key = name(self.done.len());
                let path = self.settings.tmp.join(key.replace('/', "_"));
                let file =
                    File::create(&path).map_err(|e| file_err(&path.display().to_string(), e))?;
                let writer = ArrowWriter::try_new(
                    BufWriter::new(file),
                    batch.schema(),
                    Some(self.settings.writer.clone()),
                )
                .map_err(|e| file_err(&key, e))?;
                self.open.insert(Open {
                    writer,
                    path,
                    key,
                    schema: batch.schema(),
                    rows: 0,
                })
            }
        };
        o.writer.write(batch).map_err(|e| file_err(&o.key, e))?;
        o.rows += batch.num_rows() as u64;
        Ok(())
    }

    async fn close(&mut self, catalog: &LocalCatalog) -> Result<(), IcebergError> {
        let Some(o) = self.open.take() else {
            return Ok(());
        };
        o.writer.close().map_err(|e| file_err(&o.key, e))?;
        let bytes = std::fs::metadata(&o.path)
            .map_err(|e| file_err(&o.path.display().to_string(), e))?
            .len();
        catalog.lake().upload_file(&o.path, &o.key).await?;
        let _ = std::fs::remove_file(&o.path);
        self.done.push(NewFile {
            key: o.key,
            rows: o.rows,
            bytes,
            day: self.day,
        });
        Ok(())
    }

    async fn finish(mut self, catalog: &LocalCatalog) -> Result<Vec<NewFile>, IcebergError> {
        self.close(catalog).await?;
        Ok(self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_run_sixteen_at_a_time_and_answer_in_order() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (running, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let mut jobs = Vec::new();
        for i in 0..40usize {
            let (running, most) = (&running, &most);
            jobs.push(async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // Later jobs finish sooner: completion order is not the job order.
                for _ in 0..(40 - i) {
                    tokio::task::yield_now().await;
                }
                running.fetch_sub(1, Ordering::SeqCst);
                i
            });
        }
        let out = few_at_a_time(jobs).await;
        assert_eq!(out, (0..40).collect::<Vec<_>>());
        assert_eq!(most.load(Ordering::SeqCst), CONCURRENT_READS);
    }

    fn sized(key: &str, day: i32, bytes: u64) -> Sized {
        Sized {
            key: key.into(),
            day: Some(day),
            bytes,
        }
    }

    #[test]
    fn merges_partitions_with_two_small_files_or_more() {
        let a = "t/year=2024/month=01/day=15";
        let b = "t/year=2025/month=03/day=01";
        let files = vec![
            sized(&format!("{a}/t_2_0000000000000200_0000.parquet"), 19737, 10),
            sized(&format!("{a}/t_1_0000000000000100_0000.parquet"), 19737, 10),
            sized(&format!("{a}/big.parquet"), 19737, 900),
            sized(&format!("{b}/t_1_0000000000000100_0000.parquet"), 20148, 10),
            sized(&format!("{b}/big.parquet"), 20148, 800),
            sized("t/year=2025/month=04/day=01/x.parquet", 20179, 1),
            sized("t/year=2025/month=04/day=01/y.parquet", 20179, 1),
        ];
        let got = plan_merges(&files, 500, None);
        // Each group in name order; one small file alone is left alone.
        assert_eq!(got, vec![vec![1, 0], vec![5, 6]]);
        let before = NaiveDate::from_ymd_opt(2025, 1, 1);
        assert_eq!(plan_merges(&files, 500, before), vec![vec![1, 0]]);
        assert!(plan_merges(&files, 1, None).is_empty());
    }

    #[test]
    fn current_state_rewrites_the_files_with_deletes_and_the_small_ones() {
        let big = 900;
        let small = 10;
        for (files, want) in [
            (vec![], vec![]),
            (vec![(big, false), (small, false)], vec![]),
            (
                vec![(big, false), (small, false), (small, false)],
                vec![1, 2],
            ),
            // Deletes: their files, and the small files merged along.
            (vec![(big, false), (big, true), (small, false)], vec![1, 2]),
            (vec![(big, true), (big, false)], vec![0]),
            (vec![(big, false), (big, false)], vec![]),
        ] {
            assert_eq!(current_rewrite(&files, 500), want, "{files:?}");
        }
    }

    fn snap(id: i64, age_hours: i64, lsn: Option<u64>, now: DateTime<Utc>) -> Snapshot {
        let mut summary = BTreeMap::new();
        if let Some(l) = lsn {
            summary.insert(LSN_PROPERTY.to_string(), Lsn(l).to_string());
        }
        Snapshot {
            snapshot_id: id,
            parent_snapshot_id: None,
            sequence_number: id,
            timestamp_ms: (now - chrono::Duration::hours(age_hours)).timestamp_millis(),
            manifest_list: format!("snap-{id}.avro"),
            summary,
            schema_id: None,
        }
    }

    #[test]
    fn expires_old_snapshots_but_never_the_current_or_one_past_the_watermark() {
        let now = Utc::now();
        let day = Duration::from_secs(24 * 3600);
        let snapshots = vec![
            snap(1, 100, Some(0x10), now),
            snap(2, 50, Some(0x20), now),
            // Another writer's snapshot, without an LSN.
            snap(3, 49, None, now),
            // Committed by a flush whose watermark is not written: a retry looks for it.
            snap(4, 48, Some(0x40), now),
            // Young.
            snap(5, 1, Some(0x30), now),
            // Current, however old.
            snap(6, 47, Some(0x30), now),
        ];
        let mut got: Vec<i64> = plan_expiry(&snapshots, Some(6), now, day, Some(Lsn(0x30)))
            .into_iter()
            .collect();
        got.sort();
        assert_eq!(got, vec![1, 2, 3]);
        // Without a watermark nothing is known committed: all kept.
        assert!(plan_expiry(&snapshots, Some(6), now, day, None).is_empty());
        // A retention of zero keeps only what must be kept.
        let mut all: Vec<i64> =
            plan_expiry(&snapshots, Some(6), now, Duration::ZERO, Some(Lsn(0x30)))
                .into_iter()
                .collect();
        all.sort();
        assert_eq!(all, vec![1, 2, 3, 5]);
    }

    #[test]
    fn orphans_are_only_the_tables_own_files() {
        let first = Some(Lsn(0x100));
        let at = Some(Lsn(0x500));
        let p = "orders/year=2025/month=01/day=02";
        for (key, want) in [
            ("orders/metadata/v3.metadata.json", true),
            ("orders/metadata/123-m0.avro", true),
            ("orders/metadata/snap-123.avro", true),
            ("orders/metadata/version-hint.text", false),
            // A REST catalog's metadata files, and other tools' statistics.
            (
                "orders/metadata/00002-0b6e3c1a-9f7e-4a51-8f0e-0d9f7c2b4a11.metadata.json",
                false,
            ),
            ("orders/metadata/stats-1.puffin", false),
            // A rewrite that never committed.
            (
                &format!("{p}/orders_20250102_010000_000001_rewritten_0000.parquet") as &str,
                true,
            ),
            // A flush file between the table's first commit and its LSN, unlisted.
            (
                &format!("{p}/orders_20250102_010000_0000000000000200_0000.parquet"),
                true,
            ),
            // Written before the table was Iceberg (a switched Parquet lake).
            (
                &format!("{p}/orders_20250101_010000_0000000000000050_0000.parquet"),
                false,
            ),
            (
                &format!("{p}/orders_20250101_010000_compacted_0000.parquet"),
                false,
            ),
            // A flush not committed yet.
            (
                &format!("{p}/orders_20250103_010000_0000000000000900_0000.parquet"),
                false,
            ),
            // Not ours.
            (&format!("{p}/notes.txt"), false),
            ("orders_current/data/1-rows.parquet", false),
            ("other/metadata/v1.metadata.json", false),
        ] {
            assert_eq!(is_orphan("orders", key, first, at), want, "{key}");
        }
        assert!(is_orphan(
            "orders_current",
            "orders_current/data/1-rows.parquet",
            None,
            None
        ));
    }
}
