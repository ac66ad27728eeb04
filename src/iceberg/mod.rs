//! Apache Iceberg (format version 2) tables, written against the specification
//! (<https://iceberg.apache.org/spec/>) around our own Parquet files: per source table a
//! changelog (every change row, the Parquet layout's files) and, for keyed tables, the
//! current state ([`current`]), committed one after the other at the same LSN.
//!
//! ```text
//!  flush / snapshot: Parquet files published in the table folder (as for the Hive layout)
//!    │
//!    ▼  table: manifest (Avro) of the new files → manifest list (Avro) → table metadata
//!       v<N+1>.metadata.json, its snapshot's summary carrying `slot2lake.lsn` (the cut)
//!       and `slot2lake.commit` (which flush)
//!    │
//!    ▼  catalog: the table's current metadata moves from v<N> to v<N+1> (a create-only
//!       write; a conflict is retried from a fresh read)
//! ```
//!
//! Exactly once: a retried flush finds its commit id among the table's snapshots and
//! does not commit again.
//!
//! Why not the `iceberg` crate: 0.10 pins Arrow/Parquet 58 (we are on 60, and 58 encodes
//! measurably slower), and its transaction can only fast-append: the action trait and
//! the commit builder are crate-private, so row deltas and overwrites cannot be written
//! with it. The spec's metadata is small; the files stay ours.

pub mod catalog;
pub mod current;
pub mod maintain;
pub mod manifest;
pub mod scan;
pub mod spec;
pub mod table;

/// The Glue name of a table's changelog (the table's own name is kept for its current
/// state).
pub fn changelog_glue_name(folder: &str) -> String {
    format!("{folder}_changes")
}
