//! The relation cache: pgoutput Relation messages → the [`TableSchema`] of each
//! configured table, keyed by relation OID.
//!
//! pgoutput sends a Relation message before the first change of a table on every
//! connection and again after any schema change, so the cache is rebuilt from the
//! stream (and from the spool, which keeps those messages) rather than from the catalog.

use std::collections::HashMap;
use std::sync::Arc;

use pg_walstream::ColumnInfo;

use super::schema::{ColumnSpec, SchemaError, TableSchema};
use crate::config::TableConfig;

/// Known relations by OID; `None` marks a published relation that is not configured.
#[derive(Default)]
pub struct RelationCache {
    by_oid: HashMap<u32, Option<Arc<TableSchema>>>,
}

impl RelationCache {
    /// Records a Relation message; returns the new schema when the relation is configured.
    pub fn apply(
        &mut self,
        relation_id: u32,
        namespace: &str,
        name: &str,
        columns: &[ColumnInfo],
        tables: &[TableConfig],
    ) -> Result<Option<Arc<TableSchema>>, SchemaError> {
        // pgoutput sends an empty namespace for pg_catalog relations only.
        let namespace = if namespace.is_empty() {
            "pg_catalog"
        } else {
            namespace
        };
        let Some(table) = tables.iter().find(|t| t.qualified() == (namespace, name)) else {
            self.by_oid.insert(relation_id, None);
            return Ok(None);
        };
        let specs = columns
            .iter()
            .map(|c| ColumnSpec::new(c.name.to_string(), c.type_id, c.type_modifier, c.is_key()))
            .collect();
        let schema = Arc::new(TableSchema::new(
            namespace,
            name,
            specs,
            table.partition_column(),
        )?);
        self.by_oid.insert(relation_id, Some(schema.clone()));
        Ok(Some(schema))
    }

    /// The schema of a relation: `Some(None)` for a relation that is not configured,
    /// `None` when no Relation message has been seen for it.
    pub fn get(&self, relation_id: u32) -> Option<Option<&Arc<TableSchema>>> {
        self.by_oid.get(&relation_id).map(Option::as_ref)
    }
}
