//! A replication stream the server no longer serves, seen from the server's side.
//!
//! A proxy or load balancer between slot2lake and PostgreSQL can stop forwarding while
//! keeping both TCP connections open: TCP keepalives and `tcp_user_timeout` are answered
//! by the proxy, so the client waits forever. The server notices (no replies within its
//! `wal_sender_timeout`) and ends the walsender, which leaves the slot inactive. So every
//! check (about every 10 s) reads the slot over a regular connection, and a slot found
//! inactive for `source.query_timeout` in a row while this process streams from it means
//! the stream is dead: it is dropped and reconnected. A slot in use is never taken as
//! dead, so a long decoding pause (a huge transaction, nothing sent for minutes) is not
//! mistaken for one.

use std::time::{Duration, Instant};

/// What the server showed since the stream started.
#[derive(Debug, Default)]
pub struct StallWatch {
    /// When the slot was first seen inactive, in the current run of such checks.
    inactive_since: Option<Instant>,
}

impl StallWatch {
    /// Records one look at the slot (`active`: a process streams from it); `Some(why)`
    /// once it has been inactive for `timeout`.
    pub fn observe(&mut self, active: bool, now: Instant, timeout: Duration) -> Option<String> {
        if active {
            self.inactive_since = None;
            return None;
        }
        let since = *self.inactive_since.get_or_insert(now);
        let idle = now.saturating_duration_since(since);
        (idle >= timeout).then(|| {
            format!(
                "the server has not served the replication stream for {} s (its slot is inactive: the walsender ended, yet nothing reached this side; a proxy that went silent?)",
                idle.as_secs()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_dead_once_its_slot_stays_inactive_for_the_timeout() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let timeout = Duration::from_secs(60);
        /// (name, looks: (seconds, slot active), dead at the last look)
        type Case = (&'static str, &'static [(u64, bool)], bool);
        let cases: [Case; 6] = [
            (
                "active throughout",
                &[(0, true), (10, true), (100, true)],
                false,
            ),
            ("inactive once", &[(0, true), (10, false)], false),
            (
                "inactive for less than the timeout",
                &[(0, false), (50, false)],
                false,
            ),
            (
                "inactive for the timeout",
                &[(0, false), (30, false), (60, false)],
                true,
            ),
            (
                "active again in between: counted anew",
                &[(0, false), (50, true), (60, false), (100, false)],
                false,
            ),
            (
                "counted anew, then past the timeout",
                &[(0, false), (50, true), (60, false), (120, false)],
                true,
            ),
        ];
        for (name, looks, dead) in cases {
            let mut w = StallWatch::default();
            let mut last = None;
            for (at, active) in looks {
                last = w.observe(*active, s(*at), timeout);
            }
            assert_eq!(last.is_some(), dead, "{name}");
        }
    }
}
