//! Iceberg table metadata (format version 2) as JSON: schemas, partition specs, snapshots.
//!
//! Only what slot2lake writes is modelled in detail; what other writers put in a table's
//! metadata and we do not use (statistics, types we never write, ref retention) is kept
//! as read, so that our commit to a table they also write does not drop it.
//!
//! Field ids are the identity of a column across the table's life: files written under
//! an old schema are read by id, so a column keeps its id for as long as it keeps its
//! name, and a dropped column's id is never given to another.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use arrow_schema::{DataType, Schema as ArrowSchema, TimeUnit};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::lsn::Lsn;

/// Snapshot summary property holding the LSN the table is complete up to (`X/Y`, hex).
pub const LSN_PROPERTY: &str = "slot2lake.lsn";
/// Arrow field metadata key parquet-rs writes into a Parquet column's `field_id`.
pub const PARQUET_FIELD_ID: &str = "PARQUET:field_id";
/// The table format version written and read.
pub const FORMAT_VERSION: u8 = 2;
/// Partition field ids start here (spec: ids below 1000 are for columns in v1 tables).
const FIRST_PARTITION_FIELD_ID: i32 = 1000;
/// Table property bounding `metadata-log`, as Java's writer honours it.
const PREVIOUS_VERSIONS_MAX: &str = "write.metadata.previous-versions-max";
const DEFAULT_PREVIOUS_VERSIONS_MAX: usize = 100;

/// Table metadata that cannot be built, read or evolved.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A column whose Arrow type has no Iceberg counterpart here.
    #[error("column {column:?}: Arrow type {data_type} has no Iceberg type slot2lake writes")]
    Unsupported {
        /// The column.
        column: String,
        /// Its Arrow type.
        data_type: String,
    },
    /// A column's type changed in a way Iceberg's type promotion does not allow.
    #[error("column {column:?}: type changed from {from} to {to}, which Iceberg cannot promote")]
    TypeChange {
        /// The column.
        column: String,
        /// Its type in the table.
        from: String,
        /// The new type.
        to: String,
    },
    /// The partition column is missing or of a type the transform does not take.
    #[error("partition column {column:?}: {message}")]
    Partition {
        /// The column.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// Metadata of another format version.
    #[error("table metadata format-version {0}: only version 2 is supported")]
    FormatVersion(u8),
    /// Metadata that contradicts itself, or a schema Iceberg forbids.
    #[error("table metadata: {0}")]
    Invalid(String),
    /// Malformed JSON.
    #[error("table metadata JSON: {0}")]
    Json(#[from] serde_json::Error),
}

// ---------------------------------------------------------------------------------------
// Types and schemas

/// An Iceberg column type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IcebergType {
    /// `boolean`.
    Boolean,
    /// `int` (32-bit).
    Int,
    /// `long` (64-bit).
    Long,
    /// `float`.
    Float,
    /// `double`.
    Double,
    /// `decimal(P, S)`.
    Decimal {
        /// Digits in all.
        precision: u8,
        /// Digits after the point.
        scale: u8,
    },
    /// `string` (UTF-8).
    String,
    /// `binary`.
    Binary,
    /// `date`.
    Date,
    /// `timestamp`: microseconds, no time zone.
    Timestamp,
    /// `timestamptz`: microseconds since the epoch in UTC.
    Timestamptz,
    /// `list` of one element type.
    List {
        /// The element field's id.
        element_id: i32,
        /// Whether elements may not be null.
        element_required: bool,
        /// The element type.
        element: Box<IcebergType>,
    },
    /// A type slot2lake never writes (struct, map, uuid, fixed, time, …), kept verbatim.
    Other(Value),
}

impl IcebergType {
    fn primitive_name(&self) -> Option<String> {
        Some(match self {
            IcebergType::Boolean => "boolean".into(),
            IcebergType::Int => "int".into(),
            IcebergType::Long => "long".into(),
            IcebergType::Float => "float".into(),
            IcebergType::Double => "double".into(),
            // Java and pyiceberg write the space; every reader parses it.
            IcebergType::Decimal { precision, scale } => format!("decimal({precision}, {scale})"),
            IcebergType::String => "string".into(),
            IcebergType::Binary => "binary".into(),
            IcebergType::Date => "date".into(),
            IcebergType::Timestamp => "timestamp".into(),
            IcebergType::Timestamptz => "timestamptz".into(),
            IcebergType::List { .. } | IcebergType::Other(_) => return None,
        })
    }

    fn from_primitive_name(s: &str) -> Option<Self> {
        Some(match s {
            "boolean" => IcebergType::Boolean,
            "int" => IcebergType::Int,
            "long" => IcebergType::Long,
            "float" => IcebergType::Float,
            "double" => IcebergType::Double,
            "string" => IcebergType::String,
            "binary" => IcebergType::Binary,
            "date" => IcebergType::Date,
            "timestamp" => IcebergType::Timestamp,
            "timestamptz" => IcebergType::Timestamptz,
            _ => {
                let inner = s.strip_prefix("decimal(")?.strip_suffix(')')?;
                let (p, sc) = inner.split_once(',')?;
                IcebergType::Decimal {
                    precision: p.trim().parse().ok()?,
                    scale: sc.trim().parse().ok()?,
                }
            }
        })
    }

    fn to_json(&self) -> Value {
        match self {
            IcebergType::List {
                element_id,
                element_required,
                element,
            } => serde_json::json!({
                "type": "list",
                "element-id": element_id,
                "element": element.to_json(),
                "element-required": element_required,
            }),
            IcebergType::Other(v) => v.clone(),
            primitive => Value::String(primitive.primitive_name().unwrap_or_default()),
        }
    }

    fn from_json(v: Value) -> Self {
        match &v {
            Value::String(s) => Self::from_primitive_name(s).unwrap_or(IcebergType::Other(v)),
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("list") => {
                let element_id = o
                    .get("element-id")
                    .and_then(Value::as_i64)
                    .and_then(|i| i32::try_from(i).ok());
                let element_required = o.get("element-required").and_then(Value::as_bool);
                match (element_id, element_required, o.get("element")) {
                    (Some(element_id), Some(element_required), Some(e)) => IcebergType::List {
                        element_id,
                        element_required,
                        element: Box::new(Self::from_json(e.clone())),
                    },
                    _ => IcebergType::Other(v),
                }
            }
            _ => IcebergType::Other(v),
        }
    }

    /// Whether a column of type `self` may become `new` (spec: "Schema Evolution").
    fn promotes_to(&self, new: &IcebergType) -> bool {
        use IcebergType as T;
        match (self, new) {
            (a, b) if a == b => true,
            (T::Int, T::Long) | (T::Float, T::Double) => true,
            (
                T::Decimal {
                    precision: p1,
                    scale: s1,
                },
                T::Decimal {
                    precision: p2,
                    scale: s2,
                },
            ) => s1 == s2 && p2 > p1,
            (T::List { element: a, .. }, T::List { element: b, .. }) => a.promotes_to(b),
            _ => false,
        }
    }
}

impl fmt::Display for IcebergType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IcebergType::List { element, .. } => write!(f, "list<{element}>"),
            IcebergType::Other(v) => write!(f, "{v}"),
            p => f.write_str(&p.primitive_name().unwrap_or_default()),
        }
    }
}

impl Serialize for IcebergType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for IcebergType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(Self::from_json)
    }
}

/// A column of a schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NestedField {
    /// Field id, unique in the table for all time.
    pub id: i32,
    /// Column name.
    pub name: String,
    /// Whether values may not be null.
    pub required: bool,
    /// Column type.
    #[serde(rename = "type")]
    pub field_type: IcebergType,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
}

/// A table schema (a struct of columns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "SchemaJson", from = "SchemaJson")]
pub struct Schema {
    /// Id among the table's schemas.
    pub schema_id: i32,
    /// Columns in order.
    pub fields: Vec<NestedField>,
    /// Columns that identify a row (for other writers' upserts; slot2lake sets none).
    pub identifier_field_ids: Vec<i32>,
}

/// The schema's JSON shape: a struct type with an id.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct SchemaJson {
    #[serde(rename = "type", default = "struct_tag")]
    kind: String,
    #[serde(default)]
    schema_id: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    identifier_field_ids: Vec<i32>,
    fields: Vec<NestedField>,
}

fn struct_tag() -> String {
    "struct".into()
}

impl From<Schema> for SchemaJson {
    fn from(s: Schema) -> Self {
        SchemaJson {
            kind: struct_tag(),
            schema_id: s.schema_id,
            identifier_field_ids: s.identifier_field_ids,
            fields: s.fields,
        }
    }
}

impl From<SchemaJson> for Schema {
    fn from(s: SchemaJson) -> Self {
        Schema {
            schema_id: s.schema_id,
            fields: s.fields,
            identifier_field_ids: s.identifier_field_ids,
        }
    }
}

impl Schema {
    /// The column of that name.
    pub fn field(&self, name: &str) -> Option<&NestedField> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The highest field id in the schema, list element ids included (0 when empty).
    pub fn highest_field_id(&self) -> i32 {
        fn highest(t: &IcebergType) -> i32 {
            match t {
                IcebergType::List {
                    element_id,
                    element,
                    ..
                } => (*element_id).max(highest(element)),
                _ => 0,
            }
        }
        self.fields
            .iter()
            .map(|f| f.id.max(highest(&f.field_type)))
            .max()
            .unwrap_or(0)
    }

    fn same_columns(&self, other: &Schema) -> bool {
        self.fields == other.fields && self.identifier_field_ids == other.identifier_field_ids
    }
}

/// An empty schema, for metadata whose current schema is missing (never read in practice:
/// [`TableMetadata::from_json`] rejects such metadata).
static NO_SCHEMA: Schema = Schema {
    schema_id: 0,
    fields: Vec::new(),
    identifier_field_ids: Vec::new(),
};

/// A column's Iceberg type; a list's element id is filled in later.
fn iceberg_type(column: &str, t: &DataType) -> Result<IcebergType, SpecError> {
    let unsupported = || SpecError::Unsupported {
        column: column.to_string(),
        data_type: t.to_string(),
    };
    Ok(match t {
        DataType::Boolean => IcebergType::Boolean,
        // Iceberg has no 16-bit integer: smallint is stored as int (Parquet's INT32
        // carries both, so the files need no change).
        DataType::Int16 | DataType::Int32 => IcebergType::Int,
        DataType::Int64 => IcebergType::Long,
        DataType::Float32 => IcebergType::Float,
        DataType::Float64 => IcebergType::Double,
        DataType::Decimal128(p, s) => IcebergType::Decimal {
            precision: *p,
            scale: u8::try_from(*s).map_err(|_| unsupported())?,
        },
        DataType::Utf8 => IcebergType::String,
        DataType::Binary => IcebergType::Binary,
        DataType::Date32 => IcebergType::Date,
        DataType::Timestamp(TimeUnit::Microsecond, None) => IcebergType::Timestamp,
        // Arrow holds UTC instants whatever zone is attached; Iceberg's timestamptz is that.
        DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => IcebergType::Timestamptz,
        DataType::List(element) => {
            let element_type = match element.data_type() {
                DataType::List(_) => return Err(unsupported()),
                other => iceberg_type(column, other).map_err(|_| unsupported())?,
            };
            IcebergType::List {
                element_id: 0,
                element_required: !element.is_nullable(),
                element: Box::new(element_type),
            }
        }
        _ => return Err(unsupported()),
    })
}

/// The Iceberg schema of `arrow`, with field ids kept from the previous current schema.
///
/// Columns are matched by name. A column of the previous schema keeps its id and its list
/// element id; a new column gets the next id after the table's last-column-id. Ids are
/// given in two passes, as Java and pyiceberg do on table creation: first every new
/// column in order, then the element ids of new list columns, so a first table numbers
/// its columns 1..n and their list elements n+1... A column missing from `arrow` is
/// dropped from the schema (its id is not reused).
///
/// A column stays optional once optional: Iceberg cannot make it required (old files may
/// hold nulls), and non-null data in an optional column is valid. Types may change only
/// as Iceberg promotes them (int→long, float→double, decimal precision widening); any
/// other change, or dropping the column the table is partitioned by, is an error for the
/// caller to decide on. Returns the schema and the table's new last-column-id.
pub fn schema_for(
    arrow: &ArrowSchema,
    previous: Option<&TableMetadata>,
) -> Result<(Schema, i32), SpecError> {
    let prev_schema = previous.map(TableMetadata::current_schema);
    let prev_by_name: HashMap<&str, &NestedField> = prev_schema
        .map(|s| s.fields.iter().map(|f| (f.name.as_str(), f)).collect())
        .unwrap_or_default();
    // Trust neither side alone: metadata from another writer may lag its own ids.
    let mut last_id = previous.map_or(0, |m| {
        m.schemas
            .iter()
            .map(Schema::highest_field_id)
            .fold(m.last_column_id, i32::max)
    });

    let mut seen = HashSet::new();
    let mut fields = Vec::with_capacity(arrow.fields().len());
    let mut prevs = Vec::with_capacity(arrow.fields().len());
    for f in arrow.fields() {
        let name = f.name();
        if !seen.insert(name.as_str()) {
            return Err(SpecError::Invalid(format!(
                "column {name:?} appears twice in the schema"
            )));
        }
        let field_type = iceberg_type(name, f.data_type())?;
        let prev = prev_by_name.get(name.as_str()).copied();
        let id = match prev {
            Some(p) => {
                if !p.field_type.promotes_to(&field_type) {
                    return Err(SpecError::TypeChange {
                        column: name.clone(),
                        from: p.field_type.to_string(),
                        to: field_type.to_string(),
                    });
                }
                p.id
            }
            None => {
                last_id += 1;
                last_id
            }
        };
        fields.push(NestedField {
            id,
            name: name.clone(),
            required: !f.is_nullable() && prev.is_none_or(|p| p.required),
            field_type,
            doc: prev.and_then(|p| p.doc.clone()),
        });
        prevs.push(prev);
    }
    for (field, prev) in fields.iter_mut().zip(prevs) {
        if let IcebergType::List {
            element_id,
            element_required,
            ..
        } = &mut field.field_type
        {
            match prev.map(|p| &p.field_type) {
                Some(IcebergType::List {
                    element_id: old_id,
                    element_required: old_required,
                    ..
                }) => {
                    *element_id = *old_id;
                    *element_required &= *old_required;
                }
                _ => {
                    last_id += 1;
                    *element_id = last_id;
                }
            }
        }
    }

    if let Some(m) = previous {
        check_partition_sources(m, &fields)?;
    }
    let ids: HashSet<i32> = fields.iter().map(|f| f.id).collect();
    let identifier_field_ids = prev_schema
        .map(|s| {
            s.identifier_field_ids
                .iter()
                .copied()
                .filter(|id| ids.contains(id))
                .collect()
        })
        .unwrap_or_default();
    let mut schema = Schema {
        schema_id: 0,
        fields,
        identifier_field_ids,
    };
    if let (Some(m), Some(prev)) = (previous, prev_schema) {
        schema.schema_id = if schema.same_columns(prev) {
            prev.schema_id
        } else {
            m.next_schema_id()
        };
    }
    Ok((schema, last_id))
}

/// The table's partitioning refers to its source columns by id: dropping one would leave
/// the partition spec unbound for every reader.
fn check_partition_sources(m: &TableMetadata, fields: &[NestedField]) -> Result<(), SpecError> {
    let Some(spec) = m.default_spec() else {
        return Ok(());
    };
    for pf in &spec.fields {
        if !fields.iter().any(|f| f.id == pf.source_id) {
            let column = m
                .current_schema()
                .fields
                .iter()
                .find(|f| f.id == pf.source_id)
                .map_or_else(|| format!("#{}", pf.source_id), |f| f.name.clone());
            return Err(SpecError::Partition {
                column,
                message: "the table is partitioned by it; it cannot be dropped".into(),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Partitioning and sorting

/// A partition field: a transform of one source column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PartitionField {
    /// The source column's field id.
    pub source_id: i32,
    /// The partition field's id (1000 and up).
    pub field_id: i32,
    /// The partition field's name.
    pub name: String,
    /// The transform: `day`, `identity`, or what another writer chose.
    pub transform: String,
}

/// How a table is partitioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PartitionSpec {
    /// Id among the table's specs.
    pub spec_id: i32,
    /// Partition fields in order.
    pub fields: Vec<PartitionField>,
}

impl PartitionSpec {
    /// The `fields` array as JSON, as manifest headers carry it (`partition-spec`).
    pub fn fields_json(&self) -> Result<String, SpecError> {
        Ok(serde_json::to_string(&self.fields)?)
    }
}

/// Spec 0 partitioning the table by the day of `source_column` (a date or timestamp).
pub fn day_spec(schema: &Schema, source_column: &str) -> Result<PartitionSpec, SpecError> {
    let err = |message: &str| SpecError::Partition {
        column: source_column.to_string(),
        message: message.to_string(),
    };
    let source = schema
        .field(source_column)
        .ok_or_else(|| err("not a column of the table"))?;
    match source.field_type {
        IcebergType::Date | IcebergType::Timestamp | IcebergType::Timestamptz => {}
        _ => {
            return Err(err(&format!(
                "the day transform needs a date or timestamp, not {}",
                source.field_type
            )))
        }
    }
    Ok(PartitionSpec {
        spec_id: 0,
        fields: vec![PartitionField {
            source_id: source.id,
            field_id: FIRST_PARTITION_FIELD_ID,
            name: format!("{source_column}_day"),
            transform: "day".into(),
        }],
    })
}

/// A sort order; slot2lake's tables are unsorted (order 0, no fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SortOrder {
    /// Id among the table's sort orders.
    pub order_id: i64,
    /// Sort fields as read (another writer's).
    #[serde(default)]
    pub fields: Vec<Value>,
}

// ---------------------------------------------------------------------------------------
// Snapshots

/// A snapshot: the table's files at one commit, listed by a manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Snapshot {
    /// Unique id.
    pub snapshot_id: i64,
    /// The snapshot this one was committed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_snapshot_id: Option<i64>,
    /// The commit's data sequence number.
    #[serde(default)]
    pub sequence_number: i64,
    /// Commit time, ms since the epoch.
    pub timestamp_ms: i64,
    /// Absolute URI of the manifest list.
    pub manifest_list: String,
    /// `operation` (append, overwrite, delete, replace) and string properties.
    #[serde(default)]
    pub summary: BTreeMap<String, String>,
    /// The schema current when the snapshot was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_id: Option<i32>,
}

/// The LSN recorded in a snapshot's summary by slot2lake's commit.
pub fn lsn_of(snapshot: &Snapshot) -> Option<u64> {
    let lsn: Lsn = snapshot.summary.get(LSN_PROPERTY)?.parse().ok()?;
    Some(lsn.0)
}

/// A named reference to a snapshot (`main` is the table's current state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotRef {
    /// The snapshot.
    pub snapshot_id: i64,
    /// `branch` or `tag`.
    #[serde(rename = "type")]
    pub ref_type: String,
    /// Retention settings another writer set, kept as read.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// When the current snapshot changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SnapshotLogEntry {
    /// The snapshot made current.
    pub snapshot_id: i64,
    /// When, ms since the epoch.
    pub timestamp_ms: i64,
}

/// A previous metadata file of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MetadataLogEntry {
    /// Its absolute URI.
    pub metadata_file: String,
    /// Its last-updated-ms.
    pub timestamp_ms: i64,
}

// ---------------------------------------------------------------------------------------
// Table metadata

/// A table's metadata file (`v<N>.metadata.json`), format version 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct TableMetadata {
    /// Always 2.
    pub format_version: u8,
    /// The table's UUID; a writer finding another in its base knows the table was replaced.
    pub table_uuid: String,
    /// The table's base URI (data and metadata lie below it).
    pub location: String,
    /// Highest sequence number given to a snapshot.
    pub last_sequence_number: i64,
    /// Last change, ms since the epoch.
    pub last_updated_ms: i64,
    /// Highest field id ever given in the table.
    pub last_column_id: i32,
    /// Every schema the table had.
    pub schemas: Vec<Schema>,
    /// The schema in force.
    pub current_schema_id: i32,
    /// Every partition spec the table had.
    pub partition_specs: Vec<PartitionSpec>,
    /// The spec new files are written with.
    pub default_spec_id: i32,
    /// Highest partition field id ever given.
    pub last_partition_id: i32,
    /// Table properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// The current snapshot; absent while the table has none (readers also take -1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_snapshot_id: Option<i64>,
    /// Snapshots still valid.
    #[serde(default)]
    pub snapshots: Vec<Snapshot>,
    /// History of the current snapshot.
    #[serde(default)]
    pub snapshot_log: Vec<SnapshotLogEntry>,
    /// Previous metadata files.
    #[serde(default)]
    pub metadata_log: Vec<MetadataLogEntry>,
    /// Sort orders.
    #[serde(default = "unsorted")]
    pub sort_orders: Vec<SortOrder>,
    /// The sort order new files are written with.
    #[serde(default)]
    pub default_sort_order_id: i64,
    /// Branches and tags; `main` names the current snapshot.
    #[serde(default)]
    pub refs: BTreeMap<String, SnapshotRef>,
    /// Fields we do not model (statistics, …), kept so our commit does not drop them.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn unsorted() -> Vec<SortOrder> {
    vec![SortOrder {
        order_id: 0,
        fields: Vec::new(),
    }]
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// 64 random bits without a random-number crate: std's hasher keys are seeded from the
/// OS per thread and change with every `RandomState`; time and a counter are mixed in.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

/// A random UUID in version 4's shape.
fn random_uuid() -> String {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&random_u64().to_be_bytes());
    b[8..].copy_from_slice(&random_u64().to_be_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

impl TableMetadata {
    /// A new table without snapshots, at `location` (absolute URI, no trailing slash).
    pub fn new(
        location: &str,
        schema: Schema,
        spec: PartitionSpec,
        properties: BTreeMap<String, String>,
    ) -> Self {
        let last_partition_id = spec
            .fields
            .iter()
            .map(|f| f.field_id)
            .max()
            .unwrap_or(FIRST_PARTITION_FIELD_ID - 1);
        TableMetadata {
            format_version: FORMAT_VERSION,
            table_uuid: random_uuid(),
            location: location.trim_end_matches('/').to_string(),
            last_sequence_number: 0,
            last_updated_ms: now_ms(),
            last_column_id: schema.highest_field_id(),
            current_schema_id: schema.schema_id,
            schemas: vec![schema],
            default_spec_id: spec.spec_id,
            partition_specs: vec![spec],
            last_partition_id,
            properties,
            current_snapshot_id: None,
            snapshots: Vec::new(),
            snapshot_log: Vec::new(),
            metadata_log: Vec::new(),
            sort_orders: unsorted(),
            default_sort_order_id: 0,
            refs: BTreeMap::new(),
            extra: BTreeMap::new(),
        }
    }

    /// The schema in force.
    pub fn current_schema(&self) -> &Schema {
        self.schemas
            .iter()
            .find(|s| s.schema_id == self.current_schema_id)
            .unwrap_or(&NO_SCHEMA)
    }

    /// The partition spec new files are written with.
    pub fn default_spec(&self) -> Option<&PartitionSpec> {
        self.partition_specs
            .iter()
            .find(|s| s.spec_id == self.default_spec_id)
    }

    /// The current snapshot (`None` for a table without one).
    pub fn current_snapshot(&self) -> Option<&Snapshot> {
        let id = self.current_snapshot_id?;
        self.snapshots.iter().find(|s| s.snapshot_id == id)
    }

    fn next_schema_id(&self) -> i32 {
        self.schemas
            .iter()
            .map(|s| s.schema_id)
            .max()
            .map_or(0, |m| m + 1)
    }

    /// The metadata with `schema` current: a schema already in the table is made current
    /// again under its id, a new one is added under the next id; the same columns as the
    /// current schema change nothing.
    pub fn with_schema(mut self, schema: Schema, last_column_id: i32) -> Self {
        self.last_column_id = self.last_column_id.max(last_column_id);
        if schema.same_columns(self.current_schema()) {
            return self;
        }
        let id = match self.schemas.iter().find(|s| s.same_columns(&schema)) {
            Some(existing) => existing.schema_id,
            None => {
                let id = self.next_schema_id();
                self.schemas.push(Schema {
                    schema_id: id,
                    ..schema
                });
                id
            }
        };
        self.current_schema_id = id;
        self.last_updated_ms = self.last_updated_ms.max(now_ms());
        self
    }

    /// The metadata with `snapshot` committed as the current state of `main`;
    /// `previous_metadata_file` (URI, its last-updated-ms) joins the metadata log.
    pub fn with_snapshot(
        mut self,
        snapshot: Snapshot,
        previous_metadata_file: Option<(String, i64)>,
    ) -> Self {
        let id = snapshot.snapshot_id;
        // Readers reject a log entry later than the table's last update.
        self.last_updated_ms = now_ms()
            .max(snapshot.timestamp_ms)
            .max(self.last_updated_ms);
        self.last_sequence_number = self.last_sequence_number.max(snapshot.sequence_number);
        self.snapshot_log.push(SnapshotLogEntry {
            snapshot_id: id,
            timestamp_ms: snapshot.timestamp_ms,
        });
        self.log_previous(previous_metadata_file);
        match self.refs.get_mut("main") {
            Some(main) => main.snapshot_id = id,
            None => {
                self.refs.insert(
                    "main".into(),
                    SnapshotRef {
                        snapshot_id: id,
                        ref_type: "branch".into(),
                        extra: BTreeMap::new(),
                    },
                );
            }
        }
        self.current_snapshot_id = Some(id);
        self.snapshots.push(snapshot);
        self
    }

    /// The metadata without the snapshots `expired` (never the current one); the
    /// previous metadata file goes into the metadata log.
    pub fn without_snapshots(
        mut self,
        expired: &std::collections::HashSet<i64>,
        previous_metadata_file: Option<(String, i64)>,
    ) -> Self {
        let gone = |id: &i64| expired.contains(id) && Some(*id) != self.current_snapshot_id;
        let gone: std::collections::HashSet<i64> = self
            .snapshots
            .iter()
            .map(|s| s.snapshot_id)
            .filter(gone)
            .collect();
        self.snapshots.retain(|s| !gone.contains(&s.snapshot_id));
        self.snapshot_log.retain(|e| !gone.contains(&e.snapshot_id));
        self.refs.retain(|_, r| !gone.contains(&r.snapshot_id));
        self.last_updated_ms = now_ms().max(self.last_updated_ms);
        self.log_previous(previous_metadata_file);
        self
    }

    /// Records the metadata file this version replaces, keeping the newest
    /// `write.metadata.previous-versions-max` entries.
    fn log_previous(&mut self, previous_metadata_file: Option<(String, i64)>) {
        let Some((metadata_file, timestamp_ms)) = previous_metadata_file else {
            return;
        };
        self.metadata_log.push(MetadataLogEntry {
            metadata_file,
            timestamp_ms,
        });
        let max = self
            .properties
            .get(PREVIOUS_VERSIONS_MAX)
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_PREVIOUS_VERSIONS_MAX)
            .max(1);
        let excess = self.metadata_log.len().saturating_sub(max);
        self.metadata_log.drain(..excess);
    }

    /// The sequence number of the next snapshot.
    pub fn next_sequence_number(&self) -> i64 {
        self.last_sequence_number + 1
    }

    /// A positive snapshot id no snapshot of the table has.
    pub fn new_snapshot_id(&self) -> i64 {
        loop {
            // Positive 63 bits, like Java's ids: some readers treat negative ids as unset.
            let id = i64::try_from(random_u64() >> 1).unwrap_or(1);
            if id > 0 && !self.snapshots.iter().any(|s| s.snapshot_id == id) {
                return id;
            }
        }
    }

    /// The metadata file's bytes.
    pub fn to_json(&self) -> Result<Vec<u8>, SpecError> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Reads a metadata file, ours or another v2 writer's (unknown fields are kept).
    pub fn from_json(bytes: &[u8]) -> Result<Self, SpecError> {
        Self::checked(serde_json::from_slice(bytes)?)
    }

    /// Metadata another writer produced (read as JSON) held to what this module
    /// relies on: format version 2, current schema, spec and snapshot among the listed.
    pub fn checked(mut m: TableMetadata) -> Result<Self, SpecError> {
        if m.format_version != FORMAT_VERSION {
            return Err(SpecError::FormatVersion(m.format_version));
        }
        if !m.schemas.iter().any(|s| s.schema_id == m.current_schema_id) {
            return Err(SpecError::Invalid(format!(
                "current-schema-id {} is not among the schemas",
                m.current_schema_id
            )));
        }
        if m.default_spec().is_none() {
            return Err(SpecError::Invalid(format!(
                "default-spec-id {} is not among the partition specs",
                m.default_spec_id
            )));
        }
        // Older writers mark "no snapshot" with -1.
        if m.current_snapshot_id == Some(-1) {
            m.current_snapshot_id = None;
        }
        if let Some(id) = m.current_snapshot_id {
            if m.current_snapshot().is_none() {
                return Err(SpecError::Invalid(format!(
                    "current-snapshot-id {id} is not among the snapshots"
                )));
            }
            m.refs.entry("main".into()).or_insert_with(|| SnapshotRef {
                snapshot_id: id,
                ref_type: "branch".into(),
                extra: BTreeMap::new(),
            });
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::Field;
    use std::sync::Arc;

    fn arrow(fields: Vec<Field>) -> ArrowSchema {
        ArrowSchema::new(fields)
    }

    fn list_of(t: DataType) -> DataType {
        DataType::List(Arc::new(Field::new("element", t, true)))
    }

    fn utc() -> DataType {
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    }

    fn table(fields: Vec<Field>) -> TableMetadata {
        let (schema, _) = schema_for(&arrow(fields), None).expect("schema");
        let spec = day_spec(&schema, "ts").expect("spec");
        TableMetadata::new("/lake/t/", schema, spec, BTreeMap::new())
    }

    fn snapshot(m: &TableMetadata, lsn: &str) -> Snapshot {
        Snapshot {
            snapshot_id: m.new_snapshot_id(),
            parent_snapshot_id: m.current_snapshot_id,
            sequence_number: m.next_sequence_number(),
            timestamp_ms: 1_700_000_000_000,
            manifest_list: "/lake/t/metadata/snap-1.avro".into(),
            summary: BTreeMap::from([
                ("operation".into(), "append".into()),
                (LSN_PROPERTY.into(), lsn.into()),
            ]),
            schema_id: Some(m.current_schema_id),
        }
    }

    #[test]
    fn each_arrow_type_maps_to_its_iceberg_type() {
        let cases: Vec<(DataType, IcebergType)> = vec![
            (DataType::Boolean, IcebergType::Boolean),
            (DataType::Int16, IcebergType::Int),
            (DataType::Int32, IcebergType::Int),
            (DataType::Int64, IcebergType::Long),
            (DataType::Float32, IcebergType::Float),
            (DataType::Float64, IcebergType::Double),
            (
                DataType::Decimal128(12, 3),
                IcebergType::Decimal {
                    precision: 12,
                    scale: 3,
                },
            ),
            (DataType::Utf8, IcebergType::String),
            (DataType::Binary, IcebergType::Binary),
            (DataType::Date32, IcebergType::Date),
            (
                DataType::Timestamp(TimeUnit::Microsecond, None),
                IcebergType::Timestamp,
            ),
            (utc(), IcebergType::Timestamptz),
        ];
        for (dt, want) in cases {
            let (s, last) =
                schema_for(&arrow(vec![Field::new("c", dt.clone(), false)]), None).expect("map");
            assert_eq!(s.fields[0].field_type, want, "{dt}");
            assert!(s.fields[0].required, "{dt}");
            assert_eq!((s.fields[0].id, last), (1, 1), "{dt}");
            // And back from JSON.
            let json = serde_json::to_string(&s).expect("json");
            let back: Schema = serde_json::from_str(&json).expect("parse");
            assert_eq!(back, s, "{json}");
        }
        let lists = arrow(vec![
            Field::new("a", list_of(DataType::Int64), true),
            Field::new("b", DataType::Utf8, true),
            Field::new("c", list_of(DataType::Utf8), true),
        ]);
        let (s, last) = schema_for(&lists, None).expect("map");
        let ids: Vec<i32> = s.fields.iter().map(|f| f.id).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(last, 5);
        assert_eq!(
            s.fields[0].field_type,
            IcebergType::List {
                element_id: 4,
                element_required: false,
                element: Box::new(IcebergType::Long)
            }
        );
        assert!(!s.fields[0].required);
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(
            json["fields"][2]["type"],
            serde_json::json!({"type": "list", "element-id": 5, "element": "string", "element-required": false})
        );
        assert_eq!(json["type"], "struct");
        assert_eq!(
            serde_json::to_value(IcebergType::Decimal {
                precision: 9,
                scale: 2
            })
            .expect("json"),
            "decimal(9, 2)"
        );

        for bad in [
            DataType::UInt32,
            DataType::LargeUtf8,
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            DataType::Decimal128(10, -2),
            list_of(list_of(DataType::Int32)),
        ] {
            let err = schema_for(&arrow(vec![Field::new("bad_col", bad.clone(), true)]), None)
                .expect_err("unsupported");
            assert!(
                matches!(&err, SpecError::Unsupported { column, .. } if column == "bad_col"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn ids_follow_names_across_schemas() {
        let m = table(vec![
            Field::new("id", DataType::Int32, false),
            Field::new("tags", list_of(DataType::Utf8), true),
            Field::new("ts", utc(), true),
            Field::new("price", DataType::Decimal128(10, 2), true),
            Field::new("gone", DataType::Float32, true),
        ]);
        assert_eq!(m.last_column_id, 6);
        // Reordered, one dropped, one added, int→long and decimal widening promoted.
        let next = arrow(vec![
            Field::new("ts", utc(), true),
            Field::new("added", list_of(DataType::Boolean), true),
            Field::new("id", DataType::Int64, true),
            Field::new("tags", list_of(DataType::Utf8), true),
            Field::new("price", DataType::Decimal128(12, 2), true),
        ]);
        let (s, last) = schema_for(&next, Some(&m)).expect("evolve");
        let got: Vec<(&str, i32, String, bool)> = s
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.id, f.field_type.to_string(), f.required))
            .collect();
        assert_eq!(
            got,
            [
                ("ts", 3, "timestamptz".into(), false),
                ("added", 7, "list<boolean>".into(), false),
                ("id", 1, "long".into(), false),
                ("tags", 2, "list<string>".into(), false),
                ("price", 4, "decimal(12, 2)".into(), false),
            ]
        );
        let element_id = |f: &NestedField| match &f.field_type {
            IcebergType::List { element_id, .. } => *element_id,
            _ => 0,
        };
        assert_eq!(element_id(&s.fields[3]), 6, "kept");
        assert_eq!(element_id(&s.fields[1]), 8, "after the new column");
        assert_eq!(last, 8);
        assert_eq!(s.schema_id, 1);

        let m = m.with_schema(s.clone(), last);
        assert_eq!(
            (m.current_schema_id, m.schemas.len(), m.last_column_id),
            (1, 2, 8)
        );
        // The same columns again: nothing changes.
        let (same, last) = schema_for(&next, Some(&m)).expect("same");
        assert_eq!(same.schema_id, 1);
        let m = m.with_schema(same, last);
        assert_eq!((m.current_schema_id, m.schemas.len()), (1, 2));

        // A column that comes back is a new column.
        let back = arrow(vec![
            Field::new("ts", utc(), true),
            Field::new("gone", DataType::Float32, true),
        ]);
        let (s, last) = schema_for(&back, Some(&m)).expect("re-added");
        assert_eq!((s.field("gone").map(|f| f.id), last), (Some(9), 9));
    }

    #[test]
    fn forbidden_changes_are_errors() {
        let m = table(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("ts", utc(), true),
            Field::new("tags", list_of(DataType::Int32), true),
        ]);
        let cases = [
            ("id", DataType::Int32, "long", "int"),
            ("id", DataType::Utf8, "long", "string"),
            ("tags", list_of(DataType::Utf8), "list<int>", "list<string>"),
            ("tags", DataType::Int32, "list<int>", "int"),
        ];
        for (col, dt, from_t, to_t) in cases {
            let mut fields = vec![
                Field::new("id", DataType::Int64, false),
                Field::new("ts", utc(), true),
                Field::new("tags", list_of(DataType::Int32), true),
            ];
            let i = fields.iter().position(|f| f.name() == col).expect("col");
            fields[i] = Field::new(col, dt, true);
            let err = schema_for(&arrow(fields), Some(&m)).expect_err("forbidden");
            match &err {
                SpecError::TypeChange { column, from, to } => {
                    assert_eq!(
                        (column.as_str(), from.as_str(), to.as_str()),
                        (col, from_t, to_t)
                    );
                }
                other => panic!("{col}: {other}"),
            }
        }
        // list<int> → list<long> is a promotion of the element.
        let ok = arrow(vec![
            Field::new("ts", utc(), true),
            Field::new("tags", list_of(DataType::Int64), true),
        ]);
        schema_for(&ok, Some(&m)).expect("element promoted");
        // Dropping the partition column is refused.
        let no_ts = arrow(vec![Field::new("id", DataType::Int64, false)]);
        let err = schema_for(&no_ts, Some(&m)).expect_err("partition column");
        assert!(
            matches!(&err, SpecError::Partition { column, .. } if column == "ts"),
            "{err}"
        );
        let twice = arrow(vec![
            Field::new("ts", utc(), true),
            Field::new("ts", utc(), true),
        ]);
        assert!(matches!(
            schema_for(&twice, None),
            Err(SpecError::Invalid(_))
        ));
        // A required column stays optional once optional.
        let (s, _) =
            schema_for(&arrow(vec![Field::new("ts", utc(), false)]), Some(&m)).expect("required");
        assert!(!s.fields[0].required);
    }

    #[test]
    fn day_spec_needs_a_date_or_timestamp() {
        let (s, _) = schema_for(
            &arrow(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("d", DataType::Date32, true),
            ]),
            None,
        )
        .expect("schema");
        let spec = day_spec(&s, "d").expect("day");
        assert_eq!(
            spec.fields_json().expect("json"),
            r#"[{"source-id":2,"field-id":1000,"name":"d_day","transform":"day"}]"#
        );
        assert!(day_spec(&s, "id").is_err());
        assert!(day_spec(&s, "nope").is_err());
    }

    #[test]
    fn metadata_round_trips_and_commits_snapshots() {
        let m = table(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("ts", utc(), true),
        ]);
        assert_eq!(m.location, "/lake/t");
        assert_eq!(m.table_uuid.len(), 36);
        assert_eq!(&m.table_uuid[14..15], "4");
        assert_eq!(m.last_partition_id, 1000);
        let json: Value = serde_json::from_slice(&m.to_json().expect("json")).expect("value");
        for key in [
            "format-version",
            "table-uuid",
            "last-sequence-number",
            "last-updated-ms",
            "last-column-id",
            "current-schema-id",
            "partition-specs",
            "default-spec-id",
            "last-partition-id",
            "sort-orders",
            "default-sort-order-id",
            "refs",
        ] {
            assert!(json.get(key).is_some(), "{key} in {json}");
        }
        assert!(json.get("current-snapshot-id").is_none());
        assert_eq!(
            json["sort-orders"],
            serde_json::json!([{"order-id": 0, "fields": []}])
        );
        assert_eq!(
            TableMetadata::from_json(&m.to_json().expect("json")).expect("read"),
            m
        );
        assert!(m.current_snapshot().is_none());
        assert_eq!(m.next_sequence_number(), 1);

        let s1 = snapshot(&m, "0/16B3748");
        let id1 = s1.snapshot_id;
        assert!(id1 > 0);
        let m = m.with_snapshot(s1, None);
        assert_eq!(m.current_snapshot_id, Some(id1));
        assert_eq!(m.refs["main"].snapshot_id, id1);
        assert_eq!(m.refs["main"].ref_type, "branch");
        assert_eq!(m.last_sequence_number, 1);
        assert!(m.metadata_log.is_empty());
        assert!(m.last_updated_ms >= 1_700_000_000_000);

        let s2 = snapshot(&m, "1/A");
        let id2 = s2.snapshot_id;
        assert_ne!(id1, id2);
        let m = m.with_snapshot(s2, Some(("/lake/t/metadata/v1.metadata.json".into(), 42)));
        assert_eq!(m.current_snapshot().map(|s| s.snapshot_id), Some(id2));
        assert_eq!(
            m.current_snapshot().and_then(|s| s.parent_snapshot_id),
            Some(id1)
        );
        assert_eq!(m.refs["main"].snapshot_id, id2);
        assert_eq!((m.last_sequence_number, m.next_sequence_number()), (2, 3));
        assert_eq!(m.snapshot_log.len(), 2);
        assert_eq!(m.metadata_log[0].timestamp_ms, 42);
        assert_eq!(m.current_snapshot().and_then(lsn_of), Some(0x1_0000_000A));

        let bytes = m.to_json().expect("json");
        let back = TableMetadata::from_json(&bytes).expect("read");
        assert_eq!(back, m);
        let json: Value = serde_json::from_slice(&bytes).expect("value");
        assert_eq!(json["snapshots"][1]["summary"]["operation"], "append");
        assert_eq!(json["refs"]["main"]["type"], "branch");
        assert_eq!(json["current-snapshot-id"], id2);
    }

    #[test]
    fn lsn_of_reads_the_summary() {
        let m = table(vec![Field::new("ts", utc(), true)]);
        let mut s = snapshot(&m, "16/B374D848");
        assert_eq!(lsn_of(&s), Some(0x16_B374_D848));
        s.summary.insert(LSN_PROPERTY.into(), "garbage".into());
        assert_eq!(lsn_of(&s), None);
        s.summary.remove(LSN_PROPERTY);
        assert_eq!(lsn_of(&s), None);
    }

    #[test]
    fn reads_other_writers_metadata() {
        // As pyiceberg and Java write it: -1 for no snapshot, extra fields, types we do
        // not write, a tag with retention.
        let json = r#"{
          "format-version": 2, "table-uuid": "fb072c92-a02b-11e9-ae9c-1bb7bc9eca94",
          "location": "s3://b/t", "last-sequence-number": 1, "last-updated-ms": 1,
          "last-column-id": 4, "current-schema-id": 0,
          "schemas": [{"type": "struct", "schema-id": 0, "identifier-field-ids": [1], "fields": [
            {"id": 1, "name": "id", "required": true, "type": "long"},
            {"id": 2, "name": "m", "required": false, "type":
              {"type": "map", "key-id": 3, "key": "string", "value-id": 4, "value": "int", "value-required": false}},
            {"id": 5, "name": "u", "required": false, "type": "uuid", "doc": "x"}]}],
          "partition-specs": [{"spec-id": 0, "fields": []}], "default-spec-id": 0,
          "last-partition-id": 999, "properties": {"owner": "spark"},
          "current-snapshot-id": -1, "snapshots": [], "statistics": [],
          "partition-statistics": [], "sort-orders": [{"order-id": 0, "fields": []}],
          "default-sort-order-id": 0, "future-field": {"a": 1}
        }"#;
        let m = TableMetadata::from_json(json.as_bytes()).expect("read");
        assert_eq!(m.current_snapshot_id, None);
        assert_eq!(m.current_schema().fields.len(), 3);
        assert!(matches!(
            m.current_schema().fields[1].field_type,
            IcebergType::Other(_)
        ));
        assert_eq!(m.current_schema().identifier_field_ids, [1]);
        let again: Value = serde_json::from_slice(&m.to_json().expect("json")).expect("value");
        let orig: Value = serde_json::from_str(json).expect("value");
        assert_eq!(again["schemas"], orig["schemas"]);
        assert_eq!(again["future-field"], orig["future-field"]);
        assert!(again.get("current-snapshot-id").is_none());

        let v1 = json.replace("\"format-version\": 2", "\"format-version\": 1");
        assert!(matches!(
            TableMetadata::from_json(v1.as_bytes()),
            Err(SpecError::FormatVersion(1))
        ));
        let dangling = json.replace("\"current-snapshot-id\": -1", "\"current-snapshot-id\": 7");
        assert!(matches!(
            TableMetadata::from_json(dangling.as_bytes()),
            Err(SpecError::Invalid(_))
        ));
    }
}
