//! Every name under `_slot2lake/<slot>/`: the one place that spells them, for the
//! object keys in the lake's store and the local folders of a `file://` lake.
//!
//! ```text
//!  _slot2lake/<slot>/flush.json                 flush intent (checkpoint)
//!                    snapshot.json              first-run snapshot state
//!                    backfill/<table>.json      backfill states
//!                    snapshot-progress.json     rows copied so far (status)
//!                    staging/<cp>-<state>/      snapshot files before they are published
//!                    unplaced.json, damaged.json
//!                    catalog-pending.json       catalog update to retry
//!                    compact.json               compaction intent
//!                    check-probe                `check`'s write test
//!                    spool/                     the spool's mirror (or, file://, the spool)
//!                    tmp/                       files being written (file:// lakes)
//! ```

use std::path::{Path, PathBuf};

use crate::lsn::Lsn;

/// The lake's top-level folder for slot2lake's own state; Hive, Glue and Athena skip
/// folders that start with `_`.
pub const INTERNAL_DIR: &str = "_slot2lake";

/// The first-run snapshot's state name.
pub const FIRST_RUN: &str = "snapshot.json";

/// Keys of one slot's state.
#[derive(Debug, Clone)]
pub struct SlotKeys {
    slot: String,
}

impl SlotKeys {
    /// The keys of `slot`.
    pub fn new(slot: &str) -> Self {
        Self {
            slot: slot.to_string(),
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{INTERNAL_DIR}/{}/{rest}", self.slot)
    }

    /// The flush intent.
    pub fn flush_intent(&self) -> String {
        self.key("flush.json")
    }

    /// Changes of relations no table takes.
    pub fn unplaced(&self) -> String {
        self.key("unplaced.json")
    }

    /// Spooled changes that were lost.
    pub fn damaged(&self) -> String {
        self.key("damaged.json")
    }

    /// A snapshot's state: [`FIRST_RUN`] or [`backfill_state`] names.
    pub fn snapshot_state(&self, name: &str) -> String {
        self.key(name)
    }

    /// The folder of backfill states.
    pub fn backfill_states(&self) -> String {
        self.key("backfill")
    }

    /// Rows copied by the snapshot in progress.
    pub fn snapshot_progress(&self) -> String {
        self.key("snapshot-progress.json")
    }

    /// Where a snapshot's files wait until they are published.
    pub fn staging(&self, consistent_point: Lsn, state_name: &str) -> String {
        self.key(&format!(
            "staging/{:016X}-{}",
            consistent_point.0,
            state_name.trim_end_matches(".json").replace('/', "-")
        ))
    }

    /// The catalog update to retry.
    pub fn catalog_pending(&self) -> String {
        self.key("catalog-pending.json")
    }

    /// The compaction intent.
    pub fn compact_intent(&self) -> String {
        self.key("compact.json")
    }

    /// The last compaction that finished (`run`'s maintenance schedule, `status`).
    pub fn maintenance(&self) -> String {
        self.key("maintenance.json")
    }

    /// What `slot2lake check` writes and deletes to see the lake is writable.
    pub fn check_probe(&self) -> String {
        self.key("check-probe")
    }

    /// The spool's mirror in the lake's store.
    pub fn spool_mirror(&self) -> String {
        self.key("spool")
    }

    /// The spool folder inside a `file://` lake at `root`.
    pub fn local_spool(&self, root: &Path) -> PathBuf {
        root.join(INTERNAL_DIR).join(&self.slot).join("spool")
    }

    /// The temp folder inside a `file://` lake at `root`.
    pub fn local_tmp(&self, root: &Path) -> PathBuf {
        root.join(INTERNAL_DIR).join(&self.slot).join("tmp")
    }
}

/// The state name of a backfill of `table`.
pub fn backfill_state(table: &str) -> String {
    format!("backfill/{table}.json")
}
