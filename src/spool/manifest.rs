//! `manifest.log` in the spool directory: which sealed segments the spool must hold, so
//! a segment that disappears (deleted, a restored backup, a damaged disk) is found
//! instead of silently skipped. The slot was acknowledged past its changes; nothing else
//! can bring them back.
//!
//! One line per event, appended and fsynced: `+<segment>` after a segment is sealed,
//! `-<segment>` before a flushed (or discarded) one is deleted. A segment on disk that
//! the log lacks (a crash between the seal's rename and the append) is simply adopted;
//! a segment the log lists and the disk lacks is missing. The writer rewrites the log
//! with the live set when it starts, so it does not grow without bound.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{io_err, sync_dir, SpoolError};

/// The manifest's file name in the spool directory.
const NAME: &str = "manifest.log";

/// The spool's record of its sealed segments.
#[derive(Debug, Clone)]
pub struct Manifest {
    path: PathBuf,
}

impl Manifest {
    /// The manifest of the spool in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(NAME),
        }
    }

    /// Records that `names` were sealed.
    pub fn sealed(&self, names: &[String]) -> Result<(), SpoolError> {
        self.append('+', names)
    }

    /// Records that `names` are about to be deleted on purpose.
    pub fn removed(&self, names: &[String]) -> Result<(), SpoolError> {
        self.append('-', names)
    }

    fn append(&self, sign: char, names: &[String]) -> Result<(), SpoolError> {
        if names.is_empty() {
            return Ok(());
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        let text: String = names.iter().map(|n| format!("{sign}{n}\n")).collect();
        f.write_all(text.as_bytes()).map_err(io_err(&self.path))?;
        f.sync_all().map_err(io_err(&self.path))
    }

    /// Segments recorded as sealed and not removed.
    pub fn live(&self) -> Result<BTreeSet<String>, SpoolError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(io_err(&self.path)(e)),
        };
        Ok(replay(&text))
    }

    /// Replaces the log with its live set (one writer at a time: the slot's owner).
    pub fn rewrite(&self) -> Result<(), SpoolError> {
        let live: Vec<String> = self.live()?.into_iter().collect();
        let tmp = self.path.with_extension("log.tmp");
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        let text: String = live.iter().map(|n| format!("+{n}\n")).collect();
        f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

/// The live set a log describes; a torn last line (a crash mid-append) is ignored.
fn replay(text: &str) -> BTreeSet<String> {
    let mut live = BTreeSet::new();
    for line in text.lines() {
        let Some((sign, name)) = line.split_at_checked(1) else {
            continue;
        };
        if super::parse_segment_name(name).is_none() {
            continue;
        }
        match sign {
            "+" => {
                live.insert(name.to_string());
            }
            "-" => {
                live.remove(name);
            }
            _ => {}
        }
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0000000000000010-0000000000000020.seg";
    const B: &str = "0000000000000020-0000000000000030.seg";

    #[test]
    fn the_log_replays_to_the_segments_sealed_and_not_removed() {
        let cases = [
            ("", vec![]),
            ("+A\n+B\n", vec![A, B]),
            ("+A\n+B\n-A\n", vec![B]),
            ("+A\n-A\n+A\n", vec![A]),
            ("+A\n+B\n-B\n-A\n", vec![]),
            // A crash mid-append leaves a torn line; the segment is adopted from disk.
            ("+A\n+00000000", vec![A]),
            ("+A\nxB\n", vec![A]),
        ];
        for (log, want) in cases {
            let log = log.replace('A', A).replace('B', B);
            let got: Vec<String> = replay(&log).into_iter().collect();
            assert_eq!(got, want, "{log:?}");
        }
    }

    #[test]
    fn rewrite_keeps_the_live_set() {
        let dir = tempfile::tempdir().expect("dir");
        let m = Manifest::new(dir.path());
        m.sealed(&[A.to_string(), B.to_string()]).expect("seal");
        m.removed(&[A.to_string()]).expect("remove");
        m.rewrite().expect("rewrite");
        let text = fs::read_to_string(dir.path().join(NAME)).expect("read");
        assert_eq!(text, format!("+{B}\n"));
        assert_eq!(m.live().expect("live").into_iter().collect::<Vec<_>>(), [B]);
    }
}
