//! Decoding: PostgreSQL wire values → Arrow, and the schema of each table's files.

pub mod batch;
pub mod relation;
pub mod schema;
pub mod types;
pub mod value;

pub use batch::{ChangeType, DecodeError, RowBatch, RowMeta, Warnings};
pub use schema::{ColumnKind, ColumnSpec, TableSchema};
pub use types::TypeCatalog;
pub use value::Datum;
