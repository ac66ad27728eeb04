//! The catalog step: after a flush commits, tell the query engines about new data.
//!
//! It runs after the watermark is written and the slot acknowledged, so a failure here
//! never loses data and never rolls a watermark back; it is reported and the next
//! flush tries again.

use crate::config::{CatalogConfig, CatalogKind};
use crate::sink::WrittenFile;

/// A catalog update that failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The configured catalog kind is not available in this build.
    #[error("catalog.kind = {0:?} is not available in this build; use \"local\" or \"none\"")]
    Unsupported(&'static str),
}

/// Tells the catalog which files a flush added.
pub async fn after_flush(
    config: &CatalogConfig,
    files: &[WrittenFile],
) -> Result<(), CatalogError> {
    match config.kind {
        // A file:// lake is its own catalog: `slot2lake catalog` reads it directly.
        CatalogKind::None | CatalogKind::Local => {
            tracing::debug!(files = files.len(), "catalog: nothing to update");
            Ok(())
        }
        CatalogKind::Glue => Err(CatalogError::Unsupported("glue")),
        CatalogKind::GlueDirect => Err(CatalogError::Unsupported("glue-direct")),
    }
}
