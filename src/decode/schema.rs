//! Table schemas: PostgreSQL columns, how each maps to Arrow/Parquet, and the metadata
//! columns slot2lake adds to every row.
//!
//! The snapshot path (catalog query) and the streaming path (pgoutput Relation
//! messages) both build a [`TableSchema`] from `(name, type oid, typmod)` triples, so a
//! table's files have the same Parquet schema whichever path wrote them.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Name of the metadata column holding INSERT, UPDATE, DELETE, SNAPSHOT or TRUNCATE.
pub const CHANGE_TYPE: &str = "change_type";
/// Name of the metadata column holding the commit LSN (snapshot rows: the consistent point).
pub const CHANGE_LSN: &str = "change_lsn";
/// Name of the metadata column ordering the changes of one transaction.
pub const CHANGE_SEQ: &str = "change_seq";
/// Name of the metadata column holding the commit time (UTC).
pub const COMMIT_TS: &str = "commit_ts";
/// Name of the metadata column holding the flush time (UTC).
pub const ETL_PROCESSED_AT: &str = "etl_processed_at";
/// Name of the metadata column listing the columns whose value the change did not carry
/// (TOASTed values an UPDATE left unchanged): their value is the row's previous one.
pub const UNCHANGED_COLUMNS: &str = "unchanged_columns";
/// All metadata column names, in file order after the source columns.
pub const METADATA_COLUMNS: [&str; 6] = [
    CHANGE_TYPE,
    CHANGE_LSN,
    CHANGE_SEQ,
    COMMIT_TS,
    ETL_PROCESSED_AT,
    UNCHANGED_COLUMNS,
];

/// Built-in type OIDs slot2lake decodes natively.
pub mod oid {
    #![allow(missing_docs)]
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
    pub const XML: u32 = 142;
    pub const TIME: u32 = 1083;
    pub const TIMETZ: u32 = 1266;
    pub const INTERVAL: u32 = 1186;
    pub const MONEY: u32 = 790;
    pub const BIT: u32 = 1560;
    pub const VARBIT: u32 = 1562;
    pub const INET: u32 = 869;
    pub const CIDR: u32 = 650;
    pub const MACADDR: u32 = 829;
    pub const MACADDR8: u32 = 774;
}

/// How a PostgreSQL column is decoded and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// `bool` → BOOLEAN
    Bool,
    /// `int2` → INT16
    Int16,
    /// `int4` → INT32
    Int32,
    /// `int8` → INT64
    Int64,
    /// `oid` → INT64 (unsigned 32-bit in PostgreSQL)
    Oid,
    /// `float4` → FLOAT
    Float32,
    /// `float8` → DOUBLE
    Float64,
    /// `numeric(p,s)` with p ≤ 38 and 0 ≤ s ≤ p → DECIMAL(p,s)
    Decimal {
        /// Total digits.
        precision: u8,
        /// Digits after the point.
        scale: i8,
    },
    /// `numeric` without a fitting typmod → its exact text
    NumericText,
    /// `text`, `varchar`, `char(n)`, `name`, `"char"`, `json` → STRING
    Text,
    /// `jsonb` → STRING (binary form has a version byte)
    Jsonb,
    /// `uuid` → STRING in the canonical 8-4-4-4-12 form
    Uuid,
    /// `bytea` → BINARY
    Bytea,
    /// `date` → DATE
    Date,
    /// `timestamp` → TIMESTAMP(MICROS, not UTC-adjusted)
    Timestamp,
    /// `timestamptz` → TIMESTAMP(MICROS, UTC-adjusted)
    TimestampTz,
    /// `time` → STRING as PostgreSQL prints it (Athena has no TIME type and Spark reads
    /// none by default)
    Time,
    /// `timetz` → STRING as PostgreSQL prints it (Parquet TIME cannot keep the offset)
    TimeTz,
    /// `interval` → STRING as PostgreSQL prints it (`1 year 2 mons 3 days 04:05:06`)
    Interval,
    /// `money` → DECIMAL(19,2)
    Money,
    /// `bit(n)`, `bit varying` → STRING of 0 and 1
    Bits,
    /// `inet`, `cidr` → STRING
    Inet,
    /// `macaddr`, `macaddr8` → STRING
    MacAddr,
    /// A one-dimensional array → LIST of its element kind
    List(&'static ColumnKind),
    /// Any other type (ranges, geometry, extension types): its text form → STRING.
    /// Needs text format on the wire.
    Other,
}

impl ColumnKind {
    /// Maps a type OID and typmod to a column kind.
    pub fn of(type_oid: u32, typmod: i32) -> Self {
        match type_oid {
            oid::BOOL => Self::Bool,
            oid::INT2 => Self::Int16,
            oid::INT4 => Self::Int32,
            oid::INT8 => Self::Int64,
            oid::OID => Self::Oid,
            oid::FLOAT4 => Self::Float32,
            oid::FLOAT8 => Self::Float64,
            oid::NUMERIC => numeric_kind(typmod),
            oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::CHAR | oid::JSON => {
                Self::Text
            }
            oid::JSONB => Self::Jsonb,
            oid::UUID => Self::Uuid,
            oid::BYTEA => Self::Bytea,
            oid::DATE => Self::Date,
            oid::TIMESTAMP => Self::Timestamp,
            oid::TIMESTAMPTZ => Self::TimestampTz,
            oid::XML => Self::Text,
            oid::TIME => Self::Time,
            oid::TIMETZ => Self::TimeTz,
            oid::INTERVAL => Self::Interval,
            oid::MONEY => Self::Money,
            oid::BIT | oid::VARBIT => Self::Bits,
            oid::INET | oid::CIDR => Self::Inet,
            oid::MACADDR | oid::MACADDR8 => Self::MacAddr,
            _ => Self::Other,
        }
    }

    /// An array of `elem` (one interned value per element kind, so kinds stay `Copy`).
    pub fn list_of(elem: ColumnKind) -> ColumnKind {
        use std::sync::{Mutex, OnceLock};
        static KINDS: OnceLock<Mutex<Vec<&'static ColumnKind>>> = OnceLock::new();
        let kinds = KINDS.get_or_init(|| Mutex::new(Vec::new()));
        let mut kinds = kinds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = kinds.iter().find(|k| ***k == elem) {
            return ColumnKind::List(k);
        }
        let leaked: &'static ColumnKind = Box::leak(Box::new(elem));
        kinds.push(leaked);
        ColumnKind::List(leaked)
    }

    /// Whether values of this kind can be decoded from PostgreSQL's binary format.
    pub fn decodes_binary(self) -> bool {
        match self {
            Self::Other => false,
            Self::List(e) => e.decodes_binary(),
            _ => true,
        }
    }

    /// Whether PostgreSQL can store values of this kind out of line (TOAST), so that an
    /// UPDATE may leave them unchanged without sending them.
    pub fn may_be_toasted(self) -> bool {
        matches!(
            self,
            Self::Text
                | Self::Jsonb
                | Self::Bytea
                | Self::NumericText
                | Self::Bits
                | Self::List(_)
                | Self::Other
        )
    }

    /// Whether this kind can serve as a `year=/month=/day=` partition column.
    pub fn is_datelike(self) -> bool {
        matches!(self, Self::Date | Self::Timestamp | Self::TimestampTz)
    }

    /// The Arrow type the column is stored as.
    pub fn data_type(self) -> DataType {
        match self {
            Self::Bool => DataType::Boolean,
            Self::Int16 => DataType::Int16,
            Self::Int32 => DataType::Int32,
            Self::Int64 | Self::Oid => DataType::Int64,
            Self::Float32 => DataType::Float32,
            Self::Float64 => DataType::Float64,
            Self::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
            Self::NumericText
            | Self::Text
            | Self::Jsonb
            | Self::Uuid
            | Self::Time
            | Self::TimeTz
            | Self::Interval
            | Self::Bits
            | Self::Inet
            | Self::MacAddr
            | Self::Other => DataType::Utf8,
            Self::Money => DataType::Decimal128(19, 2),
            Self::List(e) => DataType::List(std::sync::Arc::new(Field::new(
                "element",
                e.data_type(),
                true,
            ))),
            Self::Bytea => DataType::Binary,
            Self::Date => DataType::Date32,
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Self::TimestampTz => utc_timestamp(),
        }
    }
}

fn numeric_kind(typmod: i32) -> ColumnKind {
    if typmod < 4 {
        return ColumnKind::NumericText;
    }
    let t = typmod - 4;
    let precision = (t >> 16) & 0xFFFF;
    // PostgreSQL 15 allows scales outside 0..=precision; Parquet DECIMAL does not.
    let scale = ((t & 0x7FF) ^ 1024) - 1024;
    if (1..=38).contains(&precision) && (0..=precision).contains(&scale) {
        ColumnKind::Decimal {
            precision: precision as u8,
            scale: scale as i8,
        }
    } else {
        ColumnKind::NumericText
    }
}

/// `TIMESTAMP(MICROS)` adjusted to UTC.
pub fn utc_timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The type of [`UNCHANGED_COLUMNS`]: a list of column names, NULL when every value was sent.
pub fn unchanged_columns_type() -> DataType {
    DataType::List(Arc::new(Field::new("element", DataType::Utf8, true)))
}

/// One source column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    /// Column name, as in PostgreSQL.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier (-1 when none).
    pub typmod: i32,
    /// How it is decoded and stored.
    pub kind: ColumnKind,
    /// Part of the replica identity (primary key by default).
    pub is_key: bool,
}

impl ColumnSpec {
    /// A column of a built-in type.
    pub fn new(name: impl Into<String>, type_oid: u32, typmod: i32, is_key: bool) -> Self {
        Self::resolved(
            name,
            type_oid,
            typmod,
            is_key,
            &super::TypeCatalog::default(),
        )
    }

    /// A column whose type is resolved through the database's types (domains, enums, arrays).
    pub fn resolved(
        name: impl Into<String>,
        type_oid: u32,
        typmod: i32,
        is_key: bool,
        types: &super::TypeCatalog,
    ) -> Self {
        Self {
            name: name.into(),
            type_oid,
            typmod,
            kind: types.resolve(type_oid, typmod),
            is_key,
        }
    }
}

/// A problem with a table's shape that makes it unwritable.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The configured partition column does not exist.
    #[error("table {table}: partition_by column {column:?} does not exist; use processing_date or a date/timestamp column")]
    MissingPartitionColumn {
        /// `schema.table`
        table: String,
        /// The configured column.
        column: String,
    },
    /// The configured partition column is not a date or timestamp.
    #[error("table {table}: partition_by column {column:?} has a type that is not date, timestamp or timestamptz")]
    PartitionColumnType {
        /// `schema.table`
        table: String,
        /// The configured column.
        column: String,
    },
    /// A source column has the name of a metadata column.
    #[error("table {table}: column {column:?} collides with slot2lake's metadata column of that name; set output.metadata_column_prefix (e.g. \"s2l_\") or rename the column")]
    ReservedColumn {
        /// `schema.table`
        table: String,
        /// The colliding column.
        column: String,
    },
}

/// A source table's columns and the Arrow schema of its files.
#[derive(Debug, Clone)]
pub struct TableSchema {
    /// PostgreSQL schema.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Source columns, in table order.
    pub columns: Vec<ColumnSpec>,
    /// Index into `columns` of the partition column, if partitioned by a column.
    pub partition_column: Option<usize>,
    /// Prefix of the metadata columns' names.
    pub meta_prefix: String,
    /// Source columns followed by the metadata columns.
    pub arrow: SchemaRef,
}

impl TableSchema {
    /// Builds the schema; `partition_by` is the configured partition column, if any.
    pub fn new(
        schema: &str,
        name: &str,
        columns: Vec<ColumnSpec>,
        partition_by: Option<&str>,
    ) -> Result<Self, SchemaError> {
        Self::with_meta_prefix(schema, name, columns, partition_by, "")
    }

    /// Builds the schema with metadata columns named `<prefix>change_type` and so on.
    pub fn with_meta_prefix(
        schema: &str,
        name: &str,
        columns: Vec<ColumnSpec>,
        partition_by: Option<&str>,
        meta_prefix: &str,
    ) -> Result<Self, SchemaError> {
        let qualified = format!("{schema}.{name}");
        if let Some(c) = columns.iter().find(|c| {
            METADATA_COLUMNS
                .iter()
                .any(|m| c.name == format!("{meta_prefix}{m}"))
        }) {
            return Err(SchemaError::ReservedColumn {
                table: qualified,
                column: c.name.clone(),
            });
        }
        let partition_column = match partition_by {
            None => None,
            Some(col) => {
                let idx = columns.iter().position(|c| c.name == col).ok_or_else(|| {
                    SchemaError::MissingPartitionColumn {
                        table: qualified.clone(),
                        column: col.to_string(),
                    }
                })?;
                if !columns[idx].kind.is_datelike() {
                    return Err(SchemaError::PartitionColumnType {
                        table: qualified,
                        column: col.to_string(),
                    });
                }
                Some(idx)
            }
        };
        let mut fields: Vec<Field> = columns
            .iter()
            .map(|c| Field::new(&c.name, c.kind.data_type(), true))
            .collect();
        let m = |n: &str| format!("{meta_prefix}{n}");
        fields.push(Field::new(m(CHANGE_TYPE), DataType::Utf8, false));
        fields.push(Field::new(m(CHANGE_LSN), DataType::Int64, false));
        fields.push(Field::new(m(CHANGE_SEQ), DataType::Int64, false));
        fields.push(Field::new(m(COMMIT_TS), utc_timestamp(), false));
        fields.push(Field::new(m(ETL_PROCESSED_AT), utc_timestamp(), false));
        fields.push(Field::new(
            m(UNCHANGED_COLUMNS),
            unchanged_columns_type(),
            true,
        ));
        Ok(Self {
            schema: schema.to_string(),
            name: name.to_string(),
            columns,
            partition_column,
            meta_prefix: meta_prefix.to_string(),
            arrow: Arc::new(Schema::new(fields)),
        })
    }

    /// The name of a metadata column in this table's files (with the configured prefix).
    pub fn meta(&self, column: &str) -> String {
        format!("{}{column}", self.meta_prefix)
    }

    /// `schema.table`
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Whether every column can be decoded from binary values.
    pub fn decodes_binary(&self) -> bool {
        self.columns.iter().all(|c| c.kind.decodes_binary())
    }

    /// Whether the source columns (names and types) equal another schema's.
    pub fn same_columns(&self, other: &TableSchema) -> bool {
        self.columns.len() == other.columns.len()
            && self
                .columns
                .iter()
                .zip(&other.columns)
                .all(|(a, b)| a.name == b.name && a.kind == b.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_typmods() {
        let typmod = |p: i32, s: i32| ((p << 16) | (s & 0x7FF)) + 4;
        assert_eq!(
            ColumnKind::of(oid::NUMERIC, typmod(10, 2)),
            ColumnKind::Decimal {
                precision: 10,
                scale: 2
            }
        );
        assert_eq!(
            ColumnKind::of(oid::NUMERIC, typmod(38, 0)),
            ColumnKind::Decimal {
                precision: 38,
                scale: 0
            }
        );
        assert_eq!(
            ColumnKind::of(oid::NUMERIC, typmod(39, 2)),
            ColumnKind::NumericText
        );
        assert_eq!(
            ColumnKind::of(oid::NUMERIC, typmod(5, -2)),
            ColumnKind::NumericText
        );
        assert_eq!(ColumnKind::of(oid::NUMERIC, -1), ColumnKind::NumericText);
    }

    #[test]
    fn rejects_reserved_names_and_bad_partition_columns() {
        let cols = vec![
            ColumnSpec::new("id", oid::INT4, -1, true),
            ColumnSpec::new("change_type", oid::TEXT, -1, false),
        ];
        assert!(matches!(
            TableSchema::new("public", "t", cols, None),
            Err(SchemaError::ReservedColumn { .. })
        ));
        let cols = vec![ColumnSpec::new("id", oid::INT4, -1, true)];
        assert!(matches!(
            TableSchema::new("public", "t", cols.clone(), Some("id")),
            Err(SchemaError::PartitionColumnType { .. })
        ));
        assert!(matches!(
            TableSchema::new("public", "t", cols, Some("nope")),
            Err(SchemaError::MissingPartitionColumn { .. })
        ));
    }
}
