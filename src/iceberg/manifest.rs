//! Iceberg format-version-2 manifests and manifest lists: Avro object container files, as the
//! spec's "Manifests" and "Manifest Lists" sections define them
//! (<https://iceberg.apache.org/spec/#manifests>).
//!
//! Readers (Java, so Spark, Trino and Athena; pyiceberg; DuckDB) match Avro fields by their
//! `field-id` attribute, not by name, so every field, list element and map key/value we write
//! carries the spec's id, and record names are the ones Java writes (`manifest_entry`, `r2`,
//! `r102`, `manifest_file`, `r508`). Reading goes by field id too: Java names some manifest
//! list fields differently from the spec (`added_data_files_count`), and other writers order
//! fields differently.
//!
//! Only what our tables use is modelled: Parquet files and a partition spec of at most one
//! `int` field (a `day` transform). A foreign file outside that (another format, several
//! partition fields, encrypted files, format version 3) is refused rather than half-read, since
//! whatever we read is written back into the next snapshot's manifests.

use std::collections::HashMap;

use apache_avro::schema::{Name, RecordSchema, ResolvedSchema, Schema};
use apache_avro::types::Value;
use apache_avro::{Codec, DeflateSettings, Reader, Writer};
use bytes::Bytes;
use serde_json::json;

/// What a data or delete file holds (the spec's `content`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileContent {
    /// Rows of the table.
    Data = 0,
    /// Deletes by (file path, row position).
    PositionDeletes = 1,
    /// Deletes by the values of `equality_ids` columns.
    EqualityDeletes = 2,
}

/// One file as a manifest lists it (the spec's `data_file` struct, the fields we use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// What the file holds.
    pub content: FileContent,
    /// Full URI, e.g. `s3://b/k.parquet` or `/abs/path.parquet`.
    pub file_path: String,
    /// Size of the file in bytes.
    pub file_size_in_bytes: u64,
    /// Number of rows (or deletes) in the file.
    pub record_count: u64,
    /// The value of the spec's single partition field (days since 1970-01-01 for a `day` transform); None = null. Ignored (empty partition struct) for unpartitioned specs.
    pub partition: Option<i32>,
    /// Field ids of an equality delete file (empty otherwise).
    pub equality_ids: Vec<i32>,
    /// For position delete files: the referenced data file, if all deletes are in one file (optional field 143 referenced_data_file). None otherwise.
    pub referenced_data_file: Option<String>,
}

/// Whether a manifest entry adds, keeps or removes its file (the spec's `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryStatus {
    /// Added by an earlier snapshot and still live.
    Existing = 0,
    /// Added by the snapshot that wrote the manifest.
    Added = 1,
    /// Removed by the snapshot that wrote the manifest.
    Deleted = 2,
}

/// One entry of a manifest (the spec's `manifest_entry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Added, existing or deleted.
    pub status: EntryStatus,
    /// Snapshot that added or deleted the file; None = inherit the manifest's `added_snapshot_id`.
    pub snapshot_id: Option<i64>,
    /// Data sequence number; None = inherit from the manifest list (allowed only for Added entries).
    pub sequence_number: Option<i64>,
    /// File sequence number; None = inherit from the manifest list when Added.
    pub file_sequence_number: Option<i64>,
    /// The file the entry tracks.
    pub file: DataFile,
}

/// Which partition spec and schema a manifest is written for (they go into the Avro header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestContext {
    /// The table's current schema as Iceberg JSON (header key "schema").
    pub schema_json: String,
    /// The schema's id (header "schema-id").
    pub schema_id: i32,
    /// The partition spec's id (header "partition-spec-id").
    pub spec_id: i32,
    /// The partition spec's fields as a JSON array (header "partition-spec").
    pub spec_fields_json: String,
    /// The single partition field: (partition field id, e.g. 1000; its name, e.g. "order_date_day"). None = unpartitioned.
    pub partition_field: Option<(i32, String)>,
}

/// What the files of a manifest hold (the spec's manifest `content`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManifestContent {
    /// Data files only.
    Data = 0,
    /// Position and equality delete files only.
    Deletes = 1,
}

/// One manifest as a manifest list lists it (the spec's `manifest_file` struct).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// Full URI of the manifest file.
    pub manifest_path: String,
    /// Size of the manifest file in bytes.
    pub manifest_length: i64,
    /// Partition spec the manifest's entries were written with.
    pub partition_spec_id: i32,
    /// Data or deletes.
    pub content: ManifestContent,
    /// Sequence number of the snapshot that added the manifest.
    pub sequence_number: i64,
    /// Lowest data sequence number of the manifest's live (added or existing) entries.
    pub min_sequence_number: i64,
    /// Snapshot that added the manifest.
    pub added_snapshot_id: i64,
    /// Number of Added entries.
    pub added_files_count: i32,
    /// Number of Existing entries.
    pub existing_files_count: i32,
    /// Number of Deleted entries.
    pub deleted_files_count: i32,
    /// Rows in Added entries.
    pub added_rows_count: i64,
    /// Rows in Existing entries.
    pub existing_rows_count: i64,
    /// Rows in Deleted entries.
    pub deleted_rows_count: i64,
    /// Summary of the single partition field: (contains_null, lower bound days, upper bound days). None when unpartitioned.
    pub partition_summary: Option<PartitionSummary>,
}

/// Bounds of the single partition field over a manifest's entries (the spec's `field_summary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSummary {
    /// Whether any entry has a null partition value.
    pub contains_null: bool,
    /// Smallest non-null partition value; None when all are null.
    pub lower: Option<i32>,
    /// Largest non-null partition value; None when all are null.
    pub upper: Option<i32>,
}

/// Errors (thiserror): an Avro encode/decode failure, or a file that is not what we expect.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Avro could not encode or decode the file.
    #[error("avro: {0}")]
    Avro(#[from] apache_avro::Error),
    /// The file (or the entries given to write) break the spec or use what we do not support.
    #[error("iceberg manifest: {0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(message.into())
}

const FORMAT_VERSION: &str = "2";
const PARQUET: &str = "PARQUET";

/// Encodes a manifest (status/snapshot/sequence per entry) as an Avro file; returns the bytes and the ManifestFile summary to put in a list (caller supplies path, snapshot id and sequence number used for the summary: the summary's sequence_number/min_sequence_number are the manifest list's; for a newly-written manifest, sequence_number = the new snapshot's sequence number, min_sequence_number = the lowest data sequence number of the live (Added/Existing) entries, an Added entry with None counting as `sequence_number`, else `sequence_number`).
pub fn write_manifest(
    ctx: &ManifestContext,
    content: ManifestContent,
    path: &str,
    added_snapshot_id: i64,
    sequence_number: i64,
    entries: &[ManifestEntry],
) -> Result<(Bytes, ManifestFile), ManifestError> {
    let partition_name = ctx
        .partition_field
        .as_ref()
        .map(|(id, name)| (*id, avro_name(name)));
    let schema = Schema::parse(&entry_schema_json(partition_name.as_ref()))?;

    let mut summary = Summary::default();
    let mut records = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        check_entry(content, added_snapshot_id, entry)
            .map_err(|m| invalid(format!("{path}: entry {i} ({}): {m}", entry.file.file_path)))?;
        summary.add(entry, sequence_number)?;
        records.push(entry_value(
            entry,
            added_snapshot_id,
            partition_name.as_ref(),
        )?);
    }

    let mut writer = Writer::with_codec(
        &schema,
        Vec::new(),
        Codec::Deflate(DeflateSettings::default()),
    );
    let content_name = match content {
        ManifestContent::Data => "data",
        ManifestContent::Deletes => "deletes",
    };
    for (key, value) in [
        ("schema", ctx.schema_json.clone()),
        ("schema-id", ctx.schema_id.to_string()),
        ("partition-spec", ctx.spec_fields_json.clone()),
        ("partition-spec-id", ctx.spec_id.to_string()),
        ("format-version", FORMAT_VERSION.to_string()),
        ("content", content_name.to_string()),
    ] {
        writer.add_user_metadata(key.to_string(), value)?;
    }
    for record in records {
        writer.append(record)?;
    }
    let bytes = writer.into_inner()?;

    let listed = ManifestFile {
        manifest_path: path.to_string(),
        manifest_length: i64::try_from(bytes.len())
            .map_err(|_| invalid(format!("{path}: manifest too large")))?,
        partition_spec_id: ctx.spec_id,
        content,
        sequence_number,
        min_sequence_number: summary.min_sequence_number.unwrap_or(sequence_number),
        added_snapshot_id,
        added_files_count: count(summary.added_files, path)?,
        existing_files_count: count(summary.existing_files, path)?,
        deleted_files_count: count(summary.deleted_files, path)?,
        added_rows_count: summary.added_rows,
        existing_rows_count: summary.existing_rows,
        deleted_rows_count: summary.deleted_rows,
        partition_summary: ctx.partition_field.as_ref().map(|_| PartitionSummary {
            contains_null: summary.contains_null,
            lower: summary.lower,
            upper: summary.upper,
        }),
    };
    Ok((Bytes::from(bytes), listed))
}

/// Decodes a manifest written by us or by another Iceberg writer (Spark, pyiceberg), with the sequence numbers inherited from its ManifestFile as the spec says (an Added entry with null sequence number takes the manifest's).
pub fn read_manifest(
    bytes: &[u8],
    listed: &ManifestFile,
) -> Result<Vec<ManifestEntry>, ManifestError> {
    let path = listed.manifest_path.as_str();
    let wrap = |e: ManifestError| match e {
        ManifestError::Invalid(m) => invalid(format!("{path}: {m}")),
        other => other,
    };
    let reader = Reader::new(bytes)?;
    check_format_version(reader.user_metadata()).map_err(wrap)?;
    let schema = reader.writer_schema().clone();
    let resolved = ResolvedSchema::try_from(&schema)?;
    let layout = EntryLayout::new(&schema, resolved.get_names()).map_err(wrap)?;
    let mut out = Vec::new();
    for value in reader {
        out.push(layout.entry(&value?, listed).map_err(wrap)?);
    }
    Ok(out)
}

/// Encodes a manifest list for snapshot `snapshot_id` (header keys: "snapshot-id", "parent-snapshot-id" (string "null" if none), "sequence-number", "format-version" = "2").
pub fn write_manifest_list(
    snapshot_id: i64,
    parent_snapshot_id: Option<i64>,
    sequence_number: i64,
    manifests: &[ManifestFile],
) -> Result<Bytes, ManifestError> {
    let schema = Schema::parse(&list_schema_json())?;
    let mut writer = Writer::with_codec(
        &schema,
        Vec::new(),
        Codec::Deflate(DeflateSettings::default()),
    );
    for (key, value) in [
        ("snapshot-id", snapshot_id.to_string()),
        (
            "parent-snapshot-id",
            parent_snapshot_id.map_or_else(|| "null".to_string(), |p| p.to_string()),
        ),
        ("sequence-number", sequence_number.to_string()),
        ("format-version", FORMAT_VERSION.to_string()),
    ] {
        writer.add_user_metadata(key.to_string(), value)?;
    }
    for manifest in manifests {
        writer.append(manifest_file_value(manifest))?;
    }
    Ok(Bytes::from(writer.into_inner()?))
}

/// Decodes a manifest list.
pub fn read_manifest_list(bytes: &[u8]) -> Result<Vec<ManifestFile>, ManifestError> {
    let reader = Reader::new(bytes)?;
    check_format_version(reader.user_metadata())?;
    let schema = reader.writer_schema().clone();
    let resolved = ResolvedSchema::try_from(&schema)?;
    let layout = ListLayout::new(&schema, resolved.get_names())?;
    let mut out = Vec::new();
    for value in reader {
        out.push(layout.manifest_file(&value?)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Running totals for the `ManifestFile` of a manifest being written.
#[derive(Default)]
struct Summary {
    added_files: usize,
    existing_files: usize,
    deleted_files: usize,
    added_rows: i64,
    existing_rows: i64,
    deleted_rows: i64,
    min_sequence_number: Option<i64>,
    contains_null: bool,
    lower: Option<i32>,
    upper: Option<i32>,
}

impl Summary {
    fn add(&mut self, entry: &ManifestEntry, sequence_number: i64) -> Result<(), ManifestError> {
        let rows = to_long(entry.file.record_count, "record_count")?;
        let (files, total) = match entry.status {
            EntryStatus::Added => (&mut self.added_files, &mut self.added_rows),
            EntryStatus::Existing => (&mut self.existing_files, &mut self.existing_rows),
            EntryStatus::Deleted => (&mut self.deleted_files, &mut self.deleted_rows),
        };
        *files += 1;
        *total = total
            .checked_add(rows)
            .ok_or_else(|| invalid("row count overflows"))?;
        // Like Java's writer: deleted entries do not count, since readers use the minimum to
        // decide which delete files can still apply to the manifest's live files.
        if entry.status != EntryStatus::Deleted {
            let seq = entry.sequence_number.unwrap_or(sequence_number);
            self.min_sequence_number = Some(self.min_sequence_number.map_or(seq, |m| m.min(seq)));
        }
        // Bounds cover deleted entries too, as Java's do.
        match entry.file.partition {
            None => self.contains_null = true,
            Some(day) => {
                self.lower = Some(self.lower.map_or(day, |l| l.min(day)));
                self.upper = Some(self.upper.map_or(day, |u| u.max(day)));
            }
        }
        Ok(())
    }
}

fn count(n: usize, path: &str) -> Result<i32, ManifestError> {
    i32::try_from(n).map_err(|_| invalid(format!("{path}: too many entries")))
}

fn to_long(n: u64, what: &str) -> Result<i64, ManifestError> {
    i64::try_from(n).map_err(|_| invalid(format!("{what} {n} does not fit a long")))
}

/// Refuses entries that readers would reject or misread.
fn check_entry(
    content: ManifestContent,
    added_snapshot_id: i64,
    entry: &ManifestEntry,
) -> Result<(), String> {
    let file = &entry.file;
    match (content, file.content) {
        (ManifestContent::Data, FileContent::Data)
        | (ManifestContent::Deletes, FileContent::PositionDeletes | FileContent::EqualityDeletes) =>
            {}
        (content, file_content) => {
            return Err(format!("a {file_content:?} file in a {content:?} manifest"));
        }
    }
    if entry.sequence_number.is_none() {
        // Only an Added entry inherits, and only from the snapshot writing it (as Java checks).
        if entry.status != EntryStatus::Added {
            return Err("only Added entries may leave sequence_number null".into());
        }
        if entry.snapshot_id.is_some_and(|s| s != added_snapshot_id) {
            return Err(format!(
                "null sequence_number for an entry from snapshot {:?}, not {added_snapshot_id}",
                entry.snapshot_id
            ));
        }
    }
    match file.content {
        FileContent::EqualityDeletes if file.equality_ids.is_empty() => {
            return Err("an equality delete file needs equality_ids".into());
        }
        FileContent::Data | FileContent::PositionDeletes if !file.equality_ids.is_empty() => {
            return Err("equality_ids on a file that is not an equality delete file".into());
        }
        _ => {}
    }
    if file.referenced_data_file.is_some() && file.content != FileContent::PositionDeletes {
        return Err("referenced_data_file on a file that is not a position delete file".into());
    }
    Ok(())
}

fn null() -> Value {
    Value::Union(0, Box::new(Value::Null))
}

fn some(value: Value) -> Value {
    Value::Union(1, Box::new(value))
}

fn optional(value: Option<Value>) -> Value {
    value.map_or_else(null, some)
}

fn no_metrics() -> Value {
    some(Value::Array(Vec::new()))
}

fn entry_value(
    entry: &ManifestEntry,
    added_snapshot_id: i64,
    partition_field: Option<&(i32, String)>,
) -> Result<Value, ManifestError> {
    let file = &entry.file;
    let partition = match partition_field {
        Some((_, name)) => vec![(name.clone(), optional(file.partition.map(Value::Int)))],
        None => Vec::new(),
    };
    let equality_ids = (!file.equality_ids.is_empty())
        .then(|| Value::Array(file.equality_ids.iter().copied().map(Value::Int).collect()));
    let data_file = Value::Record(vec![
        ("content".into(), Value::Int(file.content as i32)),
        ("file_path".into(), Value::String(file.file_path.clone())),
        ("file_format".into(), Value::String(PARQUET.into())),
        ("partition".into(), Value::Record(partition)),
        (
            "record_count".into(),
            Value::Long(to_long(file.record_count, "record_count")?),
        ),
        (
            "file_size_in_bytes".into(),
            Value::Long(to_long(file.file_size_in_bytes, "file_size_in_bytes")?),
        ),
        // No column metrics: empty maps rather than null, which means the same to readers
        // but pyiceberg's `inspect.entries()` fails on a null `column_sizes`.
        ("column_sizes".into(), no_metrics()),
        ("value_counts".into(), no_metrics()),
        ("null_value_counts".into(), no_metrics()),
        ("nan_value_counts".into(), no_metrics()),
        ("lower_bounds".into(), no_metrics()),
        ("upper_bounds".into(), no_metrics()),
        ("key_metadata".into(), null()),
        ("split_offsets".into(), null()),
        ("equality_ids".into(), optional(equality_ids)),
        ("sort_order_id".into(), null()),
        (
            "referenced_data_file".into(),
            optional(file.referenced_data_file.clone().map(Value::String)),
        ),
    ]);
    // Java writes the committing snapshot's id on Added entries rather than relying on
    // inheritance; it is the same value, and some readers handle an explicit id better.
    let snapshot_id = match (entry.status, entry.snapshot_id) {
        (EntryStatus::Added, None) => Some(added_snapshot_id),
        (_, id) => id,
    };
    Ok(Value::Record(vec![
        ("status".into(), Value::Int(entry.status as i32)),
        ("snapshot_id".into(), optional(snapshot_id.map(Value::Long))),
        (
            "sequence_number".into(),
            optional(entry.sequence_number.map(Value::Long)),
        ),
        (
            "file_sequence_number".into(),
            optional(entry.file_sequence_number.map(Value::Long)),
        ),
        ("data_file".into(), data_file),
    ]))
}

fn manifest_file_value(m: &ManifestFile) -> Value {
    // Java writes an empty list for an unpartitioned spec: one summary per partition field.
    let partitions = m
        .partition_summary
        .iter()
        .map(|s| {
            let bound =
                |b: Option<i32>| optional(b.map(|d| Value::Bytes(d.to_le_bytes().to_vec())));
            Value::Record(vec![
                ("contains_null".into(), Value::Boolean(s.contains_null)),
                ("contains_nan".into(), some(Value::Boolean(false))),
                ("lower_bound".into(), bound(s.lower)),
                ("upper_bound".into(), bound(s.upper)),
            ])
        })
        .collect();
    Value::Record(vec![
        (
            "manifest_path".into(),
            Value::String(m.manifest_path.clone()),
        ),
        ("manifest_length".into(), Value::Long(m.manifest_length)),
        ("partition_spec_id".into(), Value::Int(m.partition_spec_id)),
        ("content".into(), Value::Int(m.content as i32)),
        ("sequence_number".into(), Value::Long(m.sequence_number)),
        (
            "min_sequence_number".into(),
            Value::Long(m.min_sequence_number),
        ),
        ("added_snapshot_id".into(), Value::Long(m.added_snapshot_id)),
        ("added_files_count".into(), Value::Int(m.added_files_count)),
        (
            "existing_files_count".into(),
            Value::Int(m.existing_files_count),
        ),
        (
            "deleted_files_count".into(),
            Value::Int(m.deleted_files_count),
        ),
        ("added_rows_count".into(), Value::Long(m.added_rows_count)),
        (
            "existing_rows_count".into(),
            Value::Long(m.existing_rows_count),
        ),
        (
            "deleted_rows_count".into(),
            Value::Long(m.deleted_rows_count),
        ),
        ("partitions".into(), some(Value::Array(partitions))),
        ("key_metadata".into(), null()),
    ])
}

/// An Avro name for a partition field: readers match by field id, but Avro itself only takes
/// `[A-Za-z_][A-Za-z0-9_]*`; other characters are escaped the way Java escapes them.
fn avro_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, c) in name.chars().enumerate() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if ok {
            out.push(c);
        } else if i == 0 && c.is_ascii_digit() {
            out.push('_');
            out.push(c);
        } else {
            out.push_str(&format!("_x{:X}", u32::from(c)));
        }
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// An optional field: a `["null", T]` union defaulting to null.
fn opt_field(name: &str, id: i32, ty: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "type": ["null", ty], "default": null, "field-id": id})
}

fn field(name: &str, id: i32, ty: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "type": ty, "field-id": id})
}

/// An `int`-keyed map, written as Java writes one: Avro maps only take string keys.
fn int_map(key_id: i32, value_id: i32, value: &str) -> serde_json::Value {
    json!({
        "type": "array",
        "logicalType": "map",
        "items": {
            "type": "record",
            "name": format!("k{key_id}_v{value_id}"),
            "fields": [field("key", key_id, json!("int")), field("value", value_id, json!(value))],
        },
    })
}

fn entry_schema_json(partition_field: Option<&(i32, String)>) -> serde_json::Value {
    let partition_fields: Vec<_> = partition_field
        .iter()
        .map(|(id, name)| opt_field(name, *id, json!("int")))
        .collect();
    let data_file = json!({
        "type": "record",
        "name": "r2",
        "fields": [
            field("content", 134, json!("int")),
            field("file_path", 100, json!("string")),
            field("file_format", 101, json!("string")),
            field("partition", 102, json!({"type": "record", "name": "r102", "fields": partition_fields})),
            field("record_count", 103, json!("long")),
            field("file_size_in_bytes", 104, json!("long")),
            opt_field("column_sizes", 108, int_map(117, 118, "long")),
            opt_field("value_counts", 109, int_map(119, 120, "long")),
            opt_field("null_value_counts", 110, int_map(121, 122, "long")),
            opt_field("nan_value_counts", 137, int_map(138, 139, "long")),
            opt_field("lower_bounds", 125, int_map(126, 127, "bytes")),
            opt_field("upper_bounds", 128, int_map(129, 130, "bytes")),
            opt_field("key_metadata", 131, json!("bytes")),
            opt_field("split_offsets", 132, json!({"type": "array", "items": "long", "element-id": 133})),
            opt_field("equality_ids", 135, json!({"type": "array", "items": "int", "element-id": 136})),
            opt_field("sort_order_id", 140, json!("int")),
            opt_field("referenced_data_file", 143, json!("string")),
        ],
    });
    json!({
        "type": "record",
        "name": "manifest_entry",
        "fields": [
            field("status", 0, json!("int")),
            opt_field("snapshot_id", 1, json!("long")),
            opt_field("sequence_number", 3, json!("long")),
            opt_field("file_sequence_number", 4, json!("long")),
            field("data_file", 2, data_file),
        ],
    })
}

fn list_schema_json() -> serde_json::Value {
    let summary = json!({
        "type": "record",
        "name": "r508",
        "fields": [
            field("contains_null", 509, json!("boolean")),
            opt_field("contains_nan", 518, json!("boolean")),
            opt_field("lower_bound", 510, json!("bytes")),
            opt_field("upper_bound", 511, json!("bytes")),
        ],
    });
    json!({
        "type": "record",
        "name": "manifest_file",
        "fields": [
            field("manifest_path", 500, json!("string")),
            field("manifest_length", 501, json!("long")),
            field("partition_spec_id", 502, json!("int")),
            field("content", 517, json!("int")),
            field("sequence_number", 515, json!("long")),
            field("min_sequence_number", 516, json!("long")),
            field("added_snapshot_id", 503, json!("long")),
            field("added_files_count", 504, json!("int")),
            field("existing_files_count", 505, json!("int")),
            field("deleted_files_count", 506, json!("int")),
            field("added_rows_count", 512, json!("long")),
            field("existing_rows_count", 513, json!("long")),
            field("deleted_rows_count", 514, json!("long")),
            opt_field("partitions", 507, json!({"type": "array", "items": summary, "element-id": 508})),
            opt_field("key_metadata", 519, json!("bytes")),
        ],
    })
}

// ---------------------------------------------------------------------------------------------
// Reading

type Names<'s> = HashMap<Name, &'s Schema>;

fn check_format_version(meta: &HashMap<String, Vec<u8>>) -> Result<(), ManifestError> {
    match meta.get("format-version").map(|v| v.as_slice()) {
        None | Some(b"1") | Some(b"2") => Ok(()),
        Some(v) => Err(invalid(format!(
            "format-version {} is not supported",
            String::from_utf8_lossy(v)
        ))),
    }
}

/// The schema a named reference points to.
fn deref<'s>(schema: &'s Schema, names: &Names<'s>) -> Result<&'s Schema, ManifestError> {
    match schema {
        Schema::Ref { name } => names
            .get(name)
            .copied()
            .ok_or_else(|| invalid(format!("unknown Avro type {name}"))),
        other => Ok(other),
    }
}

/// The non-null branch of an optional field's schema (the schema itself when not a union).
fn non_null<'s>(schema: &'s Schema, names: &Names<'s>) -> Result<&'s Schema, ManifestError> {
    match deref(schema, names)? {
        Schema::Union(union) => {
            let mut branches = union
                .variants()
                .iter()
                .filter(|s| !matches!(s, Schema::Null));
            match (branches.next(), branches.next()) {
                (Some(branch), None) => deref(branch, names),
                _ => Err(invalid("a union that is not [\"null\", T]")),
            }
        }
        other => Ok(other),
    }
}

/// A record schema's fields: their positions by Iceberg field id.
struct Fields<'s> {
    record: &'s RecordSchema,
    by_id: HashMap<i32, usize>,
}

impl<'s> Fields<'s> {
    fn new(schema: &'s Schema, names: &Names<'s>, what: &str) -> Result<Self, ManifestError> {
        let Schema::Record(record) = non_null(schema, names)? else {
            return Err(invalid(format!("{what} is not an Avro record")));
        };
        let by_id = record
            .fields
            .iter()
            .enumerate()
            .filter_map(|(pos, f)| {
                let id = f.custom_attributes.get("field-id")?.as_i64()?;
                Some((i32::try_from(id).ok()?, pos))
            })
            .collect();
        Ok(Self { record, by_id })
    }

    fn schema(&self, id: i32) -> Option<&'s Schema> {
        let pos = *self.by_id.get(&id)?;
        Some(&self.record.fields[pos].schema)
    }

    /// The field's value, None when the schema lacks it or it is null.
    fn get<'v>(&self, record: &'v [(String, Value)], id: i32) -> Option<&'v Value> {
        let (_, value) = record.get(*self.by_id.get(&id)?)?;
        match value {
            Value::Union(_, inner) => match inner.as_ref() {
                Value::Null => None,
                v => Some(v),
            },
            Value::Null => None,
            v => Some(v),
        }
    }
}

fn as_record<'v>(value: &'v Value, what: &str) -> Result<&'v [(String, Value)], ManifestError> {
    match value {
        Value::Record(fields) => Ok(fields),
        Value::Union(_, inner) => as_record(inner, what),
        _ => Err(invalid(format!("{what} is not a record"))),
    }
}

fn get_int(value: Option<&Value>, what: &str) -> Result<Option<i32>, ManifestError> {
    match value {
        None => Ok(None),
        Some(Value::Int(v) | Value::Date(v)) => Ok(Some(*v)),
        Some(other) => Err(invalid(format!("{what}: expected an int, found {other:?}"))),
    }
}

fn get_long(value: Option<&Value>, what: &str) -> Result<Option<i64>, ManifestError> {
    match value {
        None => Ok(None),
        Some(Value::Long(v)) => Ok(Some(*v)),
        Some(Value::Int(v)) => Ok(Some(i64::from(*v))),
        Some(other) => Err(invalid(format!("{what}: expected a long, found {other:?}"))),
    }
}

fn get_string(value: Option<&Value>, what: &str) -> Result<Option<String>, ManifestError> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(format!(
            "{what}: expected a string, found {other:?}"
        ))),
    }
}

fn required<T>(value: Option<T>, what: &str) -> Result<T, ManifestError> {
    value.ok_or_else(|| invalid(format!("required field {what} is missing or null")))
}

fn unsigned(value: i64, what: &str) -> Result<u64, ManifestError> {
    u64::try_from(value).map_err(|_| invalid(format!("{what} is negative: {value}")))
}

/// Where a manifest file's fields are, by field id, so each entry is read without lookups by name.
struct EntryLayout<'s> {
    entry: Fields<'s>,
    data_file: Fields<'s>,
    /// The partition struct and the id of its single field; None when the struct is empty.
    partition: Option<(Fields<'s>, i32)>,
}

impl<'s> EntryLayout<'s> {
    fn new(schema: &'s Schema, names: &Names<'s>) -> Result<Self, ManifestError> {
        let entry = Fields::new(schema, names, "manifest_entry")?;
        let data_file_schema = required(entry.schema(2), "data_file")?;
        let data_file = Fields::new(data_file_schema, names, "data_file")?;
        let partition_schema = required(data_file.schema(102), "partition")?;
        let partition = Fields::new(partition_schema, names, "partition")?;
        let partition = match partition.record.fields.len() {
            0 => None,
            1 => {
                let id = required(partition.by_id.keys().next().copied(), "partition field id")?;
                Some((partition, id))
            }
            n => {
                return Err(invalid(format!(
                    "{n} partition fields; only a single int partition field is supported"
                )));
            }
        };
        Ok(Self {
            entry,
            data_file,
            partition,
        })
    }

    fn entry(&self, value: &Value, listed: &ManifestFile) -> Result<ManifestEntry, ManifestError> {
        let e = as_record(value, "manifest_entry")?;
        let status = match required(get_int(self.entry.get(e, 0), "status")?, "status")? {
            0 => EntryStatus::Existing,
            1 => EntryStatus::Added,
            2 => EntryStatus::Deleted,
            s => return Err(invalid(format!("unknown entry status {s}"))),
        };
        let snapshot_id = get_long(self.entry.get(e, 1), "snapshot_id")?;
        let sequence_number = get_long(self.entry.get(e, 3), "sequence_number")?;
        let file_sequence_number = get_long(self.entry.get(e, 4), "file_sequence_number")?;

        let d = as_record(required(self.entry.get(e, 2), "data_file")?, "data_file")?;
        // A v1 manifest has no content field: all its files are data files.
        let content = match get_int(self.data_file.get(d, 134), "content")?.unwrap_or(0) {
            0 => FileContent::Data,
            1 => FileContent::PositionDeletes,
            2 => FileContent::EqualityDeletes,
            c => return Err(invalid(format!("unknown file content {c}"))),
        };
        let file_path = required(
            get_string(self.data_file.get(d, 100), "file_path")?,
            "file_path",
        )?;
        let format = required(
            get_string(self.data_file.get(d, 101), "file_format")?,
            "file_format",
        )?;
        // We would write the file back as Parquet; anything else must not pass through.
        if !format.eq_ignore_ascii_case(PARQUET) {
            return Err(invalid(format!(
                "{file_path}: file format {format} is not supported"
            )));
        }
        if self.data_file.get(d, 131).is_some() {
            return Err(invalid(format!(
                "{file_path}: encrypted files are not supported"
            )));
        }
        let partition = match &self.partition {
            None => None,
            Some((fields, id)) => {
                let p = as_record(
                    required(self.data_file.get(d, 102), "partition")?,
                    "partition",
                )?;
                get_int(fields.get(p, *id), "partition value")?
            }
        };
        let equality_ids = match self.data_file.get(d, 135) {
            None => Vec::new(),
            Some(Value::Array(ids)) => ids
                .iter()
                .map(|v| match v {
                    Value::Int(id) => Ok(*id),
                    // pyiceberg declares the element as a long.
                    Value::Long(id) => i32::try_from(*id)
                        .map_err(|_| invalid(format!("equality id {id} out of range"))),
                    other => Err(invalid(format!("equality_ids: unexpected {other:?}"))),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(invalid(format!("equality_ids: unexpected {other:?}"))),
        };
        let file = DataFile {
            content,
            file_size_in_bytes: unsigned(
                required(
                    get_long(self.data_file.get(d, 104), "file_size_in_bytes")?,
                    "file_size_in_bytes",
                )?,
                "file_size_in_bytes",
            )?,
            record_count: unsigned(
                required(
                    get_long(self.data_file.get(d, 103), "record_count")?,
                    "record_count",
                )?,
                "record_count",
            )?,
            partition,
            equality_ids,
            referenced_data_file: get_string(self.data_file.get(d, 143), "referenced_data_file")?,
            file_path,
        };

        // The spec's inheritance, as Java applies it: the snapshot id always; sequence numbers
        // for Added entries (and for everything in a manifest listed with sequence number 0,
        // i.e. one written before the table was v2).
        let inherits = listed.sequence_number == 0 || status == EntryStatus::Added;
        let inherit = |own: Option<i64>| own.or(inherits.then_some(listed.sequence_number));
        Ok(ManifestEntry {
            status,
            snapshot_id: snapshot_id.or(Some(listed.added_snapshot_id)),
            sequence_number: inherit(sequence_number),
            file_sequence_number: inherit(file_sequence_number),
            file,
        })
    }
}

/// Where a manifest list's fields are, by field id.
struct ListLayout<'s> {
    file: Fields<'s>,
    summary: Option<Fields<'s>>,
}

impl<'s> ListLayout<'s> {
    fn new(schema: &'s Schema, names: &Names<'s>) -> Result<Self, ManifestError> {
        let file = Fields::new(schema, names, "manifest_file")?;
        let summary = match file.schema(507) {
            None => None,
            Some(partitions) => match non_null(partitions, names)? {
                Schema::Array(array) => Some(Fields::new(&array.items, names, "field_summary")?),
                _ => return Err(invalid("partitions is not an array")),
            },
        };
        Ok(Self { file, summary })
    }

    fn manifest_file(&self, value: &Value) -> Result<ManifestFile, ManifestError> {
        let m = as_record(value, "manifest_file")?;
        let f = &self.file;
        let manifest_path = required(get_string(f.get(m, 500), "manifest_path")?, "manifest_path")?;
        let wrap = |e: ManifestError| match e {
            ManifestError::Invalid(msg) => invalid(format!("{manifest_path}: {msg}")),
            other => other,
        };
        let int = |id: i32, what: &str| -> Result<i32, ManifestError> {
            required(get_int(f.get(m, id), what)?, what).map_err(wrap)
        };
        let long = |id: i32, what: &str| -> Result<i64, ManifestError> {
            required(get_long(f.get(m, id), what)?, what).map_err(wrap)
        };
        // Fields a v1 list lacks default to 0, as the spec says.
        let content = match get_int(f.get(m, 517), "content")?.unwrap_or(0) {
            0 => ManifestContent::Data,
            1 => ManifestContent::Deletes,
            c => return Err(wrap(invalid(format!("unknown manifest content {c}")))),
        };
        let partition_summary = match (&self.summary, f.get(m, 507)) {
            (Some(fields), Some(Value::Array(summaries))) => match summaries.as_slice() {
                [] => None,
                [one] => Some(read_summary(fields, one).map_err(wrap)?),
                many => {
                    return Err(wrap(invalid(format!(
                        "{} partition field summaries; only one partition field is supported",
                        many.len()
                    ))));
                }
            },
            (_, None) => None,
            (_, Some(other)) => {
                return Err(wrap(invalid(format!("partitions: unexpected {other:?}"))))
            }
        };
        Ok(ManifestFile {
            manifest_length: long(501, "manifest_length")?,
            partition_spec_id: int(502, "partition_spec_id")?,
            content,
            sequence_number: get_long(f.get(m, 515), "sequence_number")?.unwrap_or(0),
            min_sequence_number: get_long(f.get(m, 516), "min_sequence_number")?.unwrap_or(0),
            added_snapshot_id: long(503, "added_snapshot_id")?,
            added_files_count: int(504, "added_files_count")?,
            existing_files_count: int(505, "existing_files_count")?,
            deleted_files_count: int(506, "deleted_files_count")?,
            added_rows_count: long(512, "added_rows_count")?,
            existing_rows_count: long(513, "existing_rows_count")?,
            deleted_rows_count: long(514, "deleted_rows_count")?,
            partition_summary,
            manifest_path,
        })
    }
}

fn read_summary(fields: &Fields<'_>, value: &Value) -> Result<PartitionSummary, ManifestError> {
    let s = as_record(value, "field_summary")?;
    let contains_null = match fields.get(s, 509) {
        Some(Value::Boolean(b)) => *b,
        _ => {
            return Err(invalid(
                "field_summary.contains_null is missing or not a boolean",
            ))
        }
    };
    // Single-value serialization of an int (and of a date): 4 bytes, little endian.
    let bound = |id: i32, what: &str| -> Result<Option<i32>, ManifestError> {
        match fields.get(s, id) {
            None => Ok(None),
            Some(Value::Bytes(b)) => match <[u8; 4]>::try_from(b.as_slice()) {
                Ok(le) => Ok(Some(i32::from_le_bytes(le))),
                Err(_) => Err(invalid(format!(
                    "{what} is {} bytes; only an int partition field is supported",
                    b.len()
                ))),
            },
            Some(other) => Err(invalid(format!("{what}: unexpected {other:?}"))),
        }
    };
    Ok(PartitionSummary {
        contains_null,
        lower: bound(510, "lower_bound")?,
        upper: bound(511, "upper_bound")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(partitioned: bool) -> ManifestContext {
        ManifestContext {
            schema_json: r#"{"type":"struct","schema-id":3,"fields":[{"id":1,"name":"id","required":true,"type":"long"},{"id":2,"name":"order_date","required":false,"type":"date"}]}"#.into(),
            schema_id: 3,
            spec_id: if partitioned { 1 } else { 0 },
            spec_fields_json: if partitioned {
                r#"[{"name":"order_date_day","transform":"day","source-id":2,"field-id":1000}]"#.into()
            } else {
                "[]".into()
            },
            partition_field: partitioned.then(|| (1000, "order_date_day".to_string())),
        }
    }

    fn file(content: FileContent, path: &str, partition: Option<i32>) -> DataFile {
        DataFile {
            content,
            file_path: path.into(),
            file_size_in_bytes: 4096,
            record_count: 10,
            partition,
            equality_ids: Vec::new(),
            referenced_data_file: None,
        }
    }

    fn entry(status: EntryStatus, snapshot: i64, seq: i64, file: DataFile) -> ManifestEntry {
        ManifestEntry {
            status,
            snapshot_id: Some(snapshot),
            sequence_number: Some(seq),
            file_sequence_number: Some(seq),
            file,
        }
    }

    #[test]
    fn partitioned_data_manifest_round_trips() {
        let entries = vec![
            entry(
                EntryStatus::Added,
                7,
                5,
                file(FileContent::Data, "s3://b/t/data/a.parquet", Some(19_000)),
            ),
            entry(
                EntryStatus::Existing,
                6,
                3,
                file(FileContent::Data, "s3://b/t/data/b.parquet", None),
            ),
            entry(
                EntryStatus::Deleted,
                7,
                2,
                file(FileContent::Data, "s3://b/t/data/c.parquet", Some(19_010)),
            ),
        ];
        let (bytes, listed) = write_manifest(
            &ctx(true),
            ManifestContent::Data,
            "s3://b/t/m.avro",
            7,
            5,
            &entries,
        )
        .expect("write");
        assert_eq!(listed.manifest_length, bytes.len() as i64);
        assert_eq!(listed.partition_spec_id, 1);
        assert_eq!(listed.sequence_number, 5);
        // The Deleted entry's 2 does not count: only live entries do.
        assert_eq!(listed.min_sequence_number, 3);
        assert_eq!(
            (
                listed.added_files_count,
                listed.existing_files_count,
                listed.deleted_files_count
            ),
            (1, 1, 1)
        );
        assert_eq!(
            (listed.added_rows_count, listed.existing_rows_count),
            (10, 10)
        );
        assert_eq!(
            listed.partition_summary,
            Some(PartitionSummary {
                contains_null: true,
                lower: Some(19_000),
                upper: Some(19_010)
            })
        );
        assert_eq!(read_manifest(&bytes, &listed).expect("read"), entries);
    }

    #[test]
    fn unpartitioned_delete_manifest_round_trips() {
        let mut pos = file(
            FileContent::PositionDeletes,
            "/lake/t/data/d1.parquet",
            None,
        );
        pos.referenced_data_file = Some("/lake/t/data/a.parquet".into());
        let mut eq = file(
            FileContent::EqualityDeletes,
            "/lake/t/data/d2.parquet",
            None,
        );
        eq.equality_ids = vec![1, 2];
        let entries = vec![
            entry(EntryStatus::Added, 9, 4, pos),
            entry(EntryStatus::Added, 9, 4, eq),
        ];
        let (bytes, listed) = write_manifest(
            &ctx(false),
            ManifestContent::Deletes,
            "/lake/t/m.avro",
            9,
            4,
            &entries,
        )
        .expect("write");
        assert_eq!(listed.content, ManifestContent::Deletes);
        assert_eq!(listed.partition_summary, None);
        assert_eq!(listed.min_sequence_number, 4);
        assert_eq!(read_manifest(&bytes, &listed).expect("read"), entries);

        let meta = Reader::new(&bytes[..])
            .expect("reader")
            .user_metadata()
            .clone();
        let header = |k: &str| String::from_utf8(meta[k].clone()).expect("utf8");
        assert_eq!(header("content"), "deletes");
        assert_eq!(header("format-version"), "2");
        assert_eq!(header("partition-spec-id"), "0");
        assert_eq!(header("partition-spec"), "[]");
        assert_eq!(header("schema-id"), "3");
        assert!(header("schema").contains("order_date"));
    }

    #[test]
    fn added_entries_inherit_the_listed_sequence_number() {
        let added = ManifestEntry {
            status: EntryStatus::Added,
            snapshot_id: None,
            sequence_number: None,
            file_sequence_number: None,
            file: file(FileContent::Data, "/t/a.parquet", Some(1)),
        };
        let existing = entry(
            EntryStatus::Existing,
            3,
            2,
            file(FileContent::Data, "/t/b.parquet", Some(2)),
        );
        let (bytes, mut listed) = write_manifest(
            &ctx(true),
            ManifestContent::Data,
            "/t/m.avro",
            11,
            8,
            &[added.clone(), existing.clone()],
        )
        .expect("write");
        assert_eq!(listed.min_sequence_number, 2);
        // A retried commit lists the same manifest under a later sequence number.
        listed.sequence_number = 9;
        let read = read_manifest(&bytes, &listed).expect("read");
        assert_eq!(read[0].snapshot_id, Some(11));
        assert_eq!(read[0].sequence_number, Some(9));
        assert_eq!(read[0].file_sequence_number, Some(9));
        assert_eq!(read[0].file, added.file);
        assert_eq!(read[1], existing);
    }

    #[test]
    fn min_sequence_number_defaults_to_the_snapshot() {
        let added = ManifestEntry {
            status: EntryStatus::Added,
            snapshot_id: None,
            sequence_number: None,
            file_sequence_number: None,
            file: file(FileContent::Data, "/t/a.parquet", None),
        };
        let (_, listed) = write_manifest(
            &ctx(false),
            ManifestContent::Data,
            "/t/m.avro",
            1,
            6,
            &[added],
        )
        .expect("write");
        assert_eq!(listed.min_sequence_number, 6);
        let (bytes, listed) =
            write_manifest(&ctx(true), ManifestContent::Data, "/t/e.avro", 1, 6, &[])
                .expect("write");
        assert_eq!(listed.min_sequence_number, 6);
        assert_eq!(
            listed.partition_summary,
            Some(PartitionSummary {
                contains_null: false,
                lower: None,
                upper: None
            })
        );
        assert!(read_manifest(&bytes, &listed).expect("read").is_empty());
    }

    #[test]
    fn refuses_entries_readers_would_misread() {
        let write = |content, e: ManifestEntry| {
            write_manifest(&ctx(false), content, "/t/m.avro", 1, 2, &[e])
        };
        let mut existing = entry(
            EntryStatus::Existing,
            1,
            1,
            file(FileContent::Data, "/a", None),
        );
        existing.sequence_number = None;
        assert!(matches!(
            write(ManifestContent::Data, existing),
            Err(ManifestError::Invalid(_))
        ));
        let delete = entry(
            EntryStatus::Added,
            1,
            2,
            file(FileContent::PositionDeletes, "/d", None),
        );
        assert!(matches!(
            write(ManifestContent::Data, delete),
            Err(ManifestError::Invalid(_))
        ));
        let eq = entry(
            EntryStatus::Added,
            1,
            2,
            file(FileContent::EqualityDeletes, "/d", None),
        );
        assert!(matches!(
            write(ManifestContent::Deletes, eq),
            Err(ManifestError::Invalid(_))
        ));
        let mut other = entry(
            EntryStatus::Added,
            5,
            2,
            file(FileContent::Data, "/a", None),
        );
        other.sequence_number = None;
        assert!(matches!(
            write(ManifestContent::Data, other),
            Err(ManifestError::Invalid(_))
        ));
    }

    fn listed(path: &str, summary: Option<PartitionSummary>) -> ManifestFile {
        ManifestFile {
            manifest_path: path.into(),
            manifest_length: 1234,
            partition_spec_id: 1,
            content: ManifestContent::Data,
            sequence_number: 4,
            min_sequence_number: 2,
            added_snapshot_id: 77,
            added_files_count: 1,
            existing_files_count: 2,
            deleted_files_count: 3,
            added_rows_count: 10,
            existing_rows_count: 20,
            deleted_rows_count: 30,
            partition_summary: summary,
        }
    }

    #[test]
    fn manifest_list_round_trips() {
        let mut deletes = listed("s3://b/t/m2.avro", None);
        deletes.content = ManifestContent::Deletes;
        deletes.partition_spec_id = 0;
        let manifests = vec![
            listed(
                "s3://b/t/m1.avro",
                Some(PartitionSummary {
                    contains_null: false,
                    lower: Some(-3),
                    upper: Some(19_010),
                }),
            ),
            listed(
                "s3://b/t/m3.avro",
                Some(PartitionSummary {
                    contains_null: true,
                    lower: None,
                    upper: None,
                }),
            ),
            deletes,
        ];
        let bytes = write_manifest_list(78, Some(77), 4, &manifests).expect("write");
        assert_eq!(read_manifest_list(&bytes).expect("read"), manifests);

        let meta = Reader::new(&bytes[..])
            .expect("reader")
            .user_metadata()
            .clone();
        let header = |k: &str| String::from_utf8(meta[k].clone()).expect("utf8");
        assert_eq!(header("snapshot-id"), "78");
        assert_eq!(header("parent-snapshot-id"), "77");
        assert_eq!(header("sequence-number"), "4");
        assert_eq!(header("format-version"), "2");
        let first = write_manifest_list(1, None, 1, &[]).expect("write");
        let meta = Reader::new(&first[..])
            .expect("reader")
            .user_metadata()
            .clone();
        assert_eq!(meta["parent-snapshot-id"], b"null");
        assert!(read_manifest_list(&first).expect("read").is_empty());
    }

    /// The JSON of the schema in the file's header.
    fn header_schema(bytes: &[u8]) -> serde_json::Value {
        let reader = Reader::new(bytes).expect("reader");
        serde_json::to_value(reader.writer_schema()).expect("json")
    }

    fn field_of<'a>(record: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        record["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no field {name}"))
    }

    /// Every record field in the schema, however deep, with its field id.
    fn all_fields(schema: &serde_json::Value, out: &mut Vec<(String, Option<i64>)>) {
        match schema {
            serde_json::Value::Array(branches) => branches.iter().for_each(|b| all_fields(b, out)),
            serde_json::Value::Object(o) => {
                if let Some(fields) = o.get("fields").and_then(|f| f.as_array()) {
                    for f in fields {
                        out.push((f["name"].to_string(), f["field-id"].as_i64()));
                        all_fields(&f["type"], out);
                    }
                }
                if let Some(items) = o.get("items") {
                    all_fields(items, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn written_schemas_carry_field_ids() {
        let e = entry(
            EntryStatus::Added,
            1,
            1,
            file(FileContent::Data, "/a", Some(5)),
        );
        let (bytes, listed) =
            write_manifest(&ctx(true), ManifestContent::Data, "/m.avro", 1, 1, &[e])
                .expect("write");
        let schema = header_schema(&bytes);
        assert_eq!(schema["name"], "manifest_entry");
        let data_file = field_of(&schema, "data_file");
        assert_eq!(data_file["field-id"], 2);
        assert_eq!(data_file["type"]["name"], "r2");
        let record = &data_file["type"];
        assert_eq!(field_of(record, "file_path")["field-id"], 100);
        assert_eq!(field_of(record, "content")["field-id"], 134);
        let partition = field_of(record, "partition");
        assert_eq!(partition["field-id"], 102);
        assert_eq!(partition["type"]["name"], "r102");
        assert_eq!(
            field_of(&partition["type"], "order_date_day")["field-id"],
            1000
        );
        let equality_ids = &field_of(record, "equality_ids")["type"][1];
        assert_eq!(equality_ids["element-id"], 136);
        let column_sizes = &field_of(record, "column_sizes")["type"][1];
        assert_eq!(column_sizes["logicalType"], "map");
        assert_eq!(field_of(&column_sizes["items"], "key")["field-id"], 117);
        assert_eq!(field_of(&column_sizes["items"], "value")["field-id"], 118);
        let mut fields = Vec::new();
        all_fields(&schema, &mut fields);
        assert!(fields.len() > 25);
        assert!(fields.iter().all(|(_, id)| id.is_some()), "{fields:?}");

        let list = write_manifest_list(1, None, 1, &[listed]).expect("write");
        let schema = header_schema(&list);
        assert_eq!(schema["name"], "manifest_file");
        assert_eq!(field_of(&schema, "manifest_path")["field-id"], 500);
        assert_eq!(field_of(&schema, "min_sequence_number")["field-id"], 516);
        let partitions = field_of(&schema, "partitions");
        assert_eq!(partitions["field-id"], 507);
        assert_eq!(partitions["type"][1]["element-id"], 508);
        let summary = &partitions["type"][1]["items"];
        assert_eq!(summary["name"], "r508");
        assert_eq!(field_of(summary, "contains_null")["field-id"], 509);
        assert_eq!(field_of(summary, "lower_bound")["field-id"], 510);
        let mut fields = Vec::new();
        all_fields(&schema, &mut fields);
        assert!(fields.iter().all(|(_, id)| id.is_some()), "{fields:?}");
    }

    #[test]
    fn lists_are_read_by_field_id_not_name() {
        // Java's names and an order of its own, as another writer may use.
        let schema = Schema::parse(&json!({
            "type": "record", "name": "manifest_file", "fields": [
                field("added_snapshot_id", 503, json!("long")),
                field("manifest_path", 500, json!("string")),
                field("manifest_length", 501, json!("long")),
                field("partition_spec_id", 502, json!("int")),
                field("content", 517, json!("int")),
                field("sequence_number", 515, json!("long")),
                field("min_sequence_number", 516, json!("long")),
                field("added_data_files_count", 504, json!("int")),
                field("existing_data_files_count", 505, json!("int")),
                field("deleted_data_files_count", 506, json!("int")),
                field("added_rows_count", 512, json!("long")),
                field("existing_rows_count", 513, json!("long")),
                field("deleted_rows_count", 514, json!("long")),
            ]
        }))
        .expect("schema");
        let mut writer = Writer::new(&schema, Vec::new());
        let value = Value::Record(vec![
            ("added_snapshot_id".into(), Value::Long(77)),
            (
                "manifest_path".into(),
                Value::String("s3://b/t/m1.avro".into()),
            ),
            ("manifest_length".into(), Value::Long(1234)),
            ("partition_spec_id".into(), Value::Int(1)),
            ("content".into(), Value::Int(0)),
            ("sequence_number".into(), Value::Long(4)),
            ("min_sequence_number".into(), Value::Long(2)),
            ("added_data_files_count".into(), Value::Int(1)),
            ("existing_data_files_count".into(), Value::Int(2)),
            ("deleted_data_files_count".into(), Value::Int(3)),
            ("added_rows_count".into(), Value::Long(10)),
            ("existing_rows_count".into(), Value::Long(20)),
            ("deleted_rows_count".into(), Value::Long(30)),
        ]);
        writer.append(value).expect("append");
        let bytes = writer.into_inner().expect("bytes");
        assert_eq!(
            read_manifest_list(&bytes).expect("read"),
            vec![listed("s3://b/t/m1.avro", None)]
        );
    }

    #[test]
    fn partition_names_are_made_avro_names() {
        assert_eq!(avro_name("order_date_day"), "order_date_day");
        assert_eq!(avro_name("1st"), "_1st");
        assert_eq!(avro_name("order-date"), "order_x2Ddate");
        let mut c = ctx(true);
        c.partition_field = Some((1000, "order-date day".into()));
        let e = entry(
            EntryStatus::Added,
            1,
            1,
            file(FileContent::Data, "/a", Some(5)),
        );
        let (bytes, listed) = write_manifest(
            &c,
            ManifestContent::Data,
            "/m.avro",
            1,
            1,
            std::slice::from_ref(&e),
        )
        .expect("write");
        assert_eq!(read_manifest(&bytes, &listed).expect("read"), vec![e]);
    }
}
