//! The relation cache: pgoutput Relation messages → the [`TableSchema`] of each
//! configured table, keyed by relation OID.
//!
//! pgoutput sends a Relation message before the first change of a table on every
//! connection and again after any schema change, so the cache is rebuilt from the
//! stream (and from the spool, which keeps those messages) rather than from the catalog.
//! Configured tables are also known by OID, so a renamed table keeps its folder.

use std::collections::HashMap;
use std::sync::Arc;

use pg_walstream::ColumnInfo;

use super::schema::{ColumnSpec, SchemaError, TableSchema};
use super::types::TypeCatalog;
use crate::config::TableConfig;

/// A configured table as the flush writes it.
#[derive(Debug, Clone)]
pub struct Relation {
    /// Folder in the lake (from the config, even after a rename).
    pub folder: String,
    /// Columns as of the latest Relation message.
    pub schema: Arc<TableSchema>,
    /// Per column: part of the table's key (none for a keyless table, whose rows are
    /// identified by all their columns).
    pub is_key: Vec<bool>,
}

/// A configured table known by OID at startup.
#[derive(Debug, Clone)]
pub struct KnownTable {
    /// Its `[[tables]]` entry.
    pub config: TableConfig,
    /// The key's columns: the primary key or the replica identity index; empty for a
    /// keyless table. pgoutput flags every column as a key under REPLICA IDENTITY FULL,
    /// so the catalog, not the Relation message, says what the key is.
    pub keys: Vec<String>,
    /// Its columns as the lake last recorded them (the last flush or snapshot).
    pub lake_columns: Option<Vec<String>>,
}

/// Known relations by OID; `None` marks a published relation that is not configured.
pub struct RelationCache {
    by_oid: HashMap<u32, Option<Relation>>,
    /// `schema.name` of every relation seen.
    names: HashMap<u32, String>,
    /// Configured tables by OID (from the catalog at startup).
    known: HashMap<u32, KnownTable>,
    types: Arc<TypeCatalog>,
}

impl RelationCache {
    /// A cache resolving types through `types`; `known` maps table OIDs to their config.
    pub fn new(known: HashMap<u32, KnownTable>, types: Arc<TypeCatalog>) -> Self {
        Self {
            by_oid: HashMap::new(),
            names: HashMap::new(),
            known,
            types,
        }
    }

    /// Records a Relation message; returns the table when it is configured.
    pub fn apply(
        &mut self,
        relation_id: u32,
        namespace: &str,
        name: &str,
        columns: &[ColumnInfo],
        tables: &[TableConfig],
    ) -> Result<Option<Relation>, SchemaError> {
        // pgoutput sends an empty namespace for pg_catalog relations only.
        let namespace = if namespace.is_empty() {
            "pg_catalog"
        } else {
            namespace
        };
        self.names
            .insert(relation_id, format!("{namespace}.{name}"));
        let keys = self.known.get(&relation_id).map(|k| &k.keys);
        let table = match self.known.get(&relation_id).map(|k| &k.config) {
            Some(t) => {
                if t.qualified() != (namespace, name) {
                    tracing::warn!(
                        table = %t.name,
                        now = %format!("{namespace}.{name}"),
                        "table was renamed; its changes still go to folder {}; update [[tables]] name",
                        t.folder()
                    );
                }
                Some(t)
            }
            None => tables.iter().find(|t| t.qualified() == (namespace, name)),
        };
        let Some(table) = table else {
            self.by_oid.insert(relation_id, None);
            return Ok(None);
        };
        let specs: Vec<ColumnSpec> = columns
            .iter()
            .map(|c| {
                let is_key = match keys {
                    Some(keys) => keys.iter().any(|k| **k == *c.name),
                    None => c.is_key(),
                };
                ColumnSpec::resolved(
                    c.name.to_string(),
                    c.type_id,
                    c.type_modifier,
                    is_key,
                    &self.types,
                )
            })
            .collect();
        let is_key = specs.iter().map(|c| c.is_key).collect();
        let schema = Arc::new(TableSchema::with_meta_prefix(
            namespace,
            name,
            specs,
            table.partition_column(),
            &table.meta_prefix,
        )?);
        let rel = Relation {
            folder: table.folder().to_string(),
            schema,
            is_key,
        };
        self.by_oid.insert(relation_id, Some(rel.clone()));
        Ok(Some(rel))
    }

    /// The columns a relation had before its latest Relation message: as that message's
    /// predecessor said, or for the first one, as the lake last recorded them.
    pub fn columns_before(&self, relation_id: u32) -> Option<Vec<String>> {
        match self.by_oid.get(&relation_id) {
            Some(Some(r)) => Some(r.schema.columns.iter().map(|c| c.name.clone()).collect()),
            _ => self
                .known
                .get(&relation_id)
                .and_then(|k| k.lake_columns.clone()),
        }
    }

    /// The `schema.name` of a relation seen in a Relation message.
    pub fn name(&self, relation_id: u32) -> Option<String> {
        self.names.get(&relation_id).cloned()
    }

    /// The table of a relation: `Some(None)` for a relation that is not configured,
    /// `None` when no Relation message has been seen for it.
    pub fn get(&self, relation_id: u32) -> Option<Option<&Relation>> {
        self.by_oid.get(&relation_id).map(Option::as_ref)
    }
}
