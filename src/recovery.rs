//! What a run does at start, decided from what it observes: a pure function of the
//! slot, the lake's `_slot2lake/<slot>/` state, the watermarks and the spool, unit-tested
//! as a table of cases. `pipeline::Pipeline::prepare` observes and carries the plan out.
//!
//! Two decisions, because the first changes what the second sees:
//!
//! 1. [`unfinished`]: work an earlier run left (a flush intent, a first-run snapshot,
//!    staged backfills), or a slot another process holds, which stops the run before it
//!    touches anything.
//! 2. [`start`]: how to begin streaming once that work is done (a first-run snapshot,
//!    backfills of new tables, dropping a slot that lost WAL, discarding a spool that
//!    belongs to no slot), or why the lake and the slot disagree beyond repair.
//!
//! The README's "Recovery at start" table lists the same cases, row for row.

use crate::checkpoint::SnapshotPhase;
use crate::config::SnapshotMode;
use crate::lsn::Lsn;

/// The lake and the slot disagree in a way slot2lake will not resolve alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    /// Another process streams from the slot and owns the lake.
    #[error("replication slot {slot:?} is in use by another process (pid {pid}); stop the other consumer (one slot2lake per slot) or set [source] slot to another name")]
    SlotInUse {
        /// Slot name.
        slot: String,
        /// The active walsender's pid.
        pid: i32,
    },
    /// The slot was made by another output plugin.
    #[error("slot {slot:?} uses plugin {plugin:?}, not pgoutput; drop it or set [source] slot to another name")]
    WrongPlugin {
        /// Slot name.
        slot: String,
        /// Its plugin.
        plugin: Option<String>,
    },
    /// The server removed WAL the slot still needed.
    #[error("slot {slot:?} has lost WAL it needed (wal_status = lost): changes are missing; set [source] snapshot = \"when_needed\" to take a new snapshot, or drop the slot and remove the lake's watermarks")]
    WalLost {
        /// Slot name.
        slot: String,
    },
    /// The slot is gone but the lake has watermarks.
    #[error("slot {slot:?} does not exist but the lake has watermarks: the slot was dropped and changes since then are lost; set [source] snapshot = \"when_needed\" to take a new snapshot that supersedes the lake's rows, or remove etl-metadata/*/watermark.json to start over")]
    SlotMissing {
        /// Slot name.
        slot: String,
    },
    /// Positions written from another cluster.
    #[error("{what} reached {lsn}, past this server's WAL position {server}: they were written from another cluster; give this server a new [output] url (and [spool] dir)")]
    AnotherCluster {
        /// The lake's watermarks or the spool.
        what: String,
        /// Their furthest position.
        lsn: Lsn,
        /// The server's current WAL position.
        server: Lsn,
    },
}

/// The slot as the server reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotSeen {
    /// The walsender streaming from it, if any.
    pub active_pid: Option<i32>,
    /// Its output plugin.
    pub plugin: Option<String>,
    /// `wal_status = lost`.
    pub wal_lost: bool,
}

/// What an earlier run may have left, observed before anything is touched.
#[derive(Debug, Clone, Default)]
pub struct Leftovers {
    /// `[source] slot`.
    pub slot_name: String,
    /// The slot, if it exists (after waiting briefly for a just-dead consumer to free it).
    pub slot: Option<SlotSeen>,
    /// `flush.json` exists.
    pub intent: bool,
    /// The first-run snapshot's recorded phase.
    pub first_run: Option<SnapshotPhase>,
    /// Backfill states recorded as staged.
    pub staged_backfills: Vec<String>,
    /// Segments the spool's manifest lists that are not on disk.
    pub missing_segments: Vec<String>,
    /// Segments whose loss `damaged.json` already records.
    pub recorded_losses: Vec<String>,
}

/// A step that finishes or undoes an earlier run's work, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Delete the temp folder's files (encoded but never intended, or half written).
    CleanTmp,
    /// Repeat the flush the intent names, under the same file names.
    FinishFlush,
    /// Move the staged first-run snapshot into place and write its watermarks.
    PublishFirstRun,
    /// Drop the first run's slot and staging files; the first run starts over.
    AbandonFirstRun,
    /// Move a staged backfill into place.
    PublishBackfill(String),
    /// Record missing segments as lost (every table may miss changes), stop expecting
    /// them, and stop the run with the error that names them and the repair.
    RecordLost(Vec<String>),
    /// Stop expecting missing segments whose loss is already on record.
    ForgetLost(Vec<String>),
}

/// Decides what to finish before streaming; a slot in use stops the run untouched.
pub fn unfinished(seen: &Leftovers) -> Result<Vec<Finish>, RecoveryError> {
    if let Some(pid) = seen.slot.as_ref().and_then(|s| s.active_pid) {
        return Err(RecoveryError::SlotInUse {
            slot: seen.slot_name.clone(),
            pid,
        });
    }
    let mut steps = Vec::new();
    if !seen.missing_segments.is_empty() {
        let known = seen
            .missing_segments
            .iter()
            .all(|m| seen.recorded_losses.contains(m));
        if !known {
            return Ok(vec![Finish::RecordLost(seen.missing_segments.clone())]);
        }
        steps.push(Finish::ForgetLost(seen.missing_segments.clone()));
    }
    steps.push(Finish::CleanTmp);
    if seen.intent {
        steps.push(Finish::FinishFlush);
    }
    match seen.first_run {
        Some(SnapshotPhase::Staged) => steps.push(Finish::PublishFirstRun),
        Some(SnapshotPhase::Copying) => steps.push(Finish::AbandonFirstRun),
        None => {}
    }
    steps.extend(
        seen.staged_backfills
            .iter()
            .cloned()
            .map(Finish::PublishBackfill),
    );
    Ok(steps)
}

/// What the start sees once earlier work is finished.
#[derive(Debug, Clone, Default)]
pub struct Position {
    /// `[source] slot`.
    pub slot_name: String,
    /// The slot, if it exists (an abandoned first run dropped it).
    pub slot: Option<SlotSeen>,
    /// `[source] snapshot`.
    pub mode: SnapshotMode,
    /// Each configured table's watermark LSN (`None`: never snapshotted or flushed).
    pub watermarks: Vec<(String, Option<Lsn>)>,
    /// The spool's sealed end, if it holds segments.
    pub spool_end: Option<Lsn>,
    /// Where the spool is, for messages.
    pub spool_dir: String,
    /// The server's current WAL position.
    pub server: Lsn,
}

/// How to begin streaming.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Start {
    /// Drop the slot first (it lost WAL; a new snapshot replaces it).
    pub drop_slot: bool,
    /// Delete the spool's segments: they belong to a slot that no longer exists.
    pub discard_spool: bool,
    /// Create the slot with an exported snapshot and copy every table;
    /// `Some(true)`: the snapshot supersedes rows already in the lake.
    pub first_run: Option<bool>,
    /// Tables without a watermark to backfill beside an existing slot.
    pub backfill: Vec<String>,
}

/// Decides how to begin streaming, or why the lake and the slot cannot be reconciled.
pub fn start(seen: &Position) -> Result<Start, RecoveryError> {
    let mut plan = Start::default();
    let mut slot = seen.slot.clone();
    let when_needed = seen.mode == SnapshotMode::WhenNeeded;
    if let Some(s) = &slot {
        if s.plugin.as_deref() != Some("pgoutput") {
            return Err(RecoveryError::WrongPlugin {
                slot: seen.slot_name.clone(),
                plugin: s.plugin.clone(),
            });
        }
        if s.wal_lost {
            if !when_needed {
                return Err(RecoveryError::WalLost {
                    slot: seen.slot_name.clone(),
                });
            }
            plan.drop_slot = true;
            slot = None;
        }
    }
    let furthest = seen.watermarks.iter().filter_map(|(_, w)| *w).max();
    ahead_of_server("the lake's watermarks", furthest, seen.server)?;
    let marked = furthest.is_some();
    let resnapshot = slot.is_none() && marked;
    if resnapshot && !when_needed {
        return Err(RecoveryError::SlotMissing {
            slot: seen.slot_name.clone(),
        });
    }
    plan.discard_spool = slot.is_none() && seen.spool_end.is_some();
    if !plan.discard_spool {
        ahead_of_server(
            &format!("the spool in {}", seen.spool_dir),
            seen.spool_end,
            seen.server,
        )?;
    }
    if seen.mode != SnapshotMode::Never {
        if slot.is_none() {
            plan.first_run = Some(resnapshot);
        } else {
            plan.backfill = seen
                .watermarks
                .iter()
                .filter(|(_, w)| w.is_none())
                .map(|(f, _)| f.clone())
                .collect();
        }
    }
    Ok(plan)
}

/// LSNs from another cluster (a lake or spool reused after moving to a new server) would
/// make the stream wait for a position this server has not reached, and order the old
/// rows after every new one.
fn ahead_of_server(what: &str, lsn: Option<Lsn>, server: Lsn) -> Result<(), RecoveryError> {
    match lsn {
        Some(lsn) if lsn > server => Err(RecoveryError::AnotherCluster {
            what: what.to_string(),
            lsn,
            server,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(pid: Option<i32>, plugin: &str, wal_lost: bool) -> Option<SlotSeen> {
        Some(SlotSeen {
            active_pid: pid,
            plugin: Some(plugin.into()),
            wal_lost,
        })
    }

    #[test]
    fn unfinished_work_is_finished_in_order_and_a_held_slot_stops_everything() {
        use Finish::*;
        type Case = (&'static str, Leftovers, Result<Vec<Finish>, &'static str>);
        let lost = || vec!["0-1.seg".to_string()];
        let cases: [Case; 8] = [
            ("nothing left", Leftovers::default(), Ok(vec![CleanTmp])),
            (
                "a segment gone from the spool: recorded, and the run stops",
                Leftovers {
                    intent: true,
                    missing_segments: lost(),
                    ..Default::default()
                },
                Ok(vec![RecordLost(lost())]),
            ),
            (
                "a segment gone whose loss is on record: forgotten, the run goes on",
                Leftovers {
                    intent: true,
                    missing_segments: lost(),
                    recorded_losses: lost(),
                    ..Default::default()
                },
                Ok(vec![ForgetLost(lost()), CleanTmp, FinishFlush]),
            ),
            (
                "another process streams from the slot",
                Leftovers {
                    slot: slot(Some(42), "pgoutput", false),
                    intent: true,
                    first_run: Some(SnapshotPhase::Staged),
                    ..Default::default()
                },
                Err("in use"),
            ),
            (
                "a flush intent",
                Leftovers {
                    slot: slot(None, "pgoutput", false),
                    intent: true,
                    ..Default::default()
                },
                Ok(vec![CleanTmp, FinishFlush]),
            ),
            (
                "a staged first run",
                Leftovers {
                    slot: slot(None, "pgoutput", false),
                    first_run: Some(SnapshotPhase::Staged),
                    ..Default::default()
                },
                Ok(vec![CleanTmp, PublishFirstRun]),
            ),
            (
                "a first run that stopped copying",
                Leftovers {
                    slot: slot(None, "pgoutput", false),
                    first_run: Some(SnapshotPhase::Copying),
                    ..Default::default()
                },
                Ok(vec![CleanTmp, AbandonFirstRun]),
            ),
            (
                "an intent and two staged backfills",
                Leftovers {
                    slot: slot(None, "pgoutput", false),
                    intent: true,
                    staged_backfills: vec!["a".into(), "b".into()],
                    ..Default::default()
                },
                Ok(vec![
                    CleanTmp,
                    FinishFlush,
                    PublishBackfill("a".into()),
                    PublishBackfill("b".into()),
                ]),
            ),
        ];
        for (name, seen, want) in cases {
            let got = unfinished(&seen).map_err(|e| e.to_string());
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{name}"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{name}: {g}"),
                (g, w) => panic!("{name}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn the_start_follows_the_slot_the_watermarks_and_the_spool() {
        use SnapshotMode::*;
        let wm = |marks: &[(&str, Option<u64>)]| -> Vec<(String, Option<Lsn>)> {
            marks
                .iter()
                .map(|(f, l)| (f.to_string(), l.map(Lsn)))
                .collect()
        };
        let base = |slot_seen: Option<SlotSeen>,
                    mode: SnapshotMode,
                    marks: &[(&str, Option<u64>)],
                    spool_end: Option<u64>| Position {
            slot_name: "s".into(),
            slot: slot_seen,
            mode,
            watermarks: wm(marks),
            spool_end: spool_end.map(Lsn),
            spool_dir: "/spool".into(),
            server: Lsn(1000),
        };
        let ok = |drop_slot, discard_spool, first_run, backfill: &[&str]| {
            Ok(Start {
                drop_slot,
                discard_spool,
                first_run,
                backfill: backfill.iter().map(|s| s.to_string()).collect(),
            })
        };
        let pg = || slot(None, "pgoutput", false);
        let cases: Vec<(&str, Position, Result<Start, &str>)> = vec![
            (
                "a new lake: first run",
                base(None, WhenNeeded, &[("a", None)], None),
                ok(false, false, Some(false), &[]),
            ),
            (
                "slot and watermarks: stream on",
                base(pg(), Initial, &[("a", Some(10))], Some(20)),
                ok(false, false, None, &[]),
            ),
            (
                "a table added to the config: backfill it",
                base(pg(), Initial, &[("a", Some(10)), ("b", None)], None),
                ok(false, false, None, &["b"]),
            ),
            (
                "snapshot = never: no backfill",
                base(pg(), Never, &[("a", Some(10)), ("b", None)], None),
                ok(false, false, None, &[]),
            ),
            (
                "snapshot = never and no slot: no first run",
                base(None, Never, &[("a", None)], None),
                ok(false, false, None, &[]),
            ),
            (
                "a slot of another plugin",
                base(slot(None, "wal2json", false), WhenNeeded, &[], None),
                Err("not pgoutput"),
            ),
            (
                "lost WAL, initial: stop",
                base(
                    slot(None, "pgoutput", true),
                    Initial,
                    &[("a", Some(10))],
                    None,
                ),
                Err("wal_status = lost"),
            ),
            (
                "lost WAL, when_needed: drop the slot and take a superseding snapshot",
                base(
                    slot(None, "pgoutput", true),
                    WhenNeeded,
                    &[("a", Some(10))],
                    Some(20),
                ),
                ok(true, true, Some(true), &[]),
            ),
            (
                "slot gone, watermarks present, initial: stop",
                base(None, Initial, &[("a", Some(10))], None),
                Err("does not exist"),
            ),
            (
                "slot gone, when_needed: superseding snapshot, spool discarded",
                base(None, WhenNeeded, &[("a", Some(10))], Some(20)),
                ok(false, true, Some(true), &[]),
            ),
            (
                "watermarks from another cluster",
                base(pg(), Initial, &[("a", Some(5000))], None),
                Err("another cluster"),
            ),
            (
                "a spool from another cluster beside the slot",
                base(pg(), Initial, &[("a", Some(10))], Some(5000)),
                Err("the spool in /spool"),
            ),
            (
                "a spool from another cluster without the slot is discarded",
                base(None, Initial, &[("a", None)], Some(5000)),
                ok(false, true, Some(false), &[]),
            ),
        ];
        for (name, seen, want) in cases {
            let got = start(&seen).map_err(|e| e.to_string());
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{name}"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{name}: {g}"),
                (g, w) => panic!("{name}: got {g:?}, want {w:?}"),
            }
        }
    }
}
