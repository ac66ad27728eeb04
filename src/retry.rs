//! What a failure calls for: reconnect, retry with backoff, or stop.
//!
//! Every module's error maps to one [`Action`] from its kind (SQLSTATE, object-store
//! error variant, I/O error kind), never from its message. The consumer (`run`) and
//! `run --once` both follow the same mapping and the same [`Backoff`] settings:
//! - **Reconnect**: the replication connection or a query connection was lost; the
//!   stream resumes from the last received commit.
//! - **Backoff**: the lake's store, the catalog or the server is unavailable for now;
//!   the flush (or the whole `run --once`) is tried again after a growing delay.
//! - **Stop**: retrying cannot help (a corrupt segment, a lake from another cluster, a
//!   table that no longer exists, a permission the role lacks): the error says what to do.
//!
//! This module sits at the bottom: each module implements [`Classify`] for its own
//! error type beside it, from the primitives here ([`postgres_action`], [`io_action`],
//! object-store errors).

use std::io;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_postgres::error::SqlState;

/// What to do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Open the connection again and resume.
    Reconnect,
    /// Wait, then try the same step again.
    Backoff,
    /// Give up: retrying cannot help.
    Stop,
}

impl Action {
    /// Whether waiting and trying again may help.
    pub fn retries(self) -> bool {
        self != Action::Stop
    }
}

/// Maps an error to what it calls for.
pub trait Classify {
    /// What this failure calls for.
    fn action(&self) -> Action;
}

/// Delays between attempts: exponential with jitter between `min` and `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub min: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Backoff {
    /// An endless sequence of delays.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send {
        ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// SQLSTATEs after which the same statement may succeed later: the server is starting,
/// shutting down, out of connections, or the transaction lost a conflict.
fn sqlstate_is_transient(code: &SqlState) -> bool {
    code.code().starts_with("08") // connection exception
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::QUERY_CANCELED,
            SqlState::IDLE_SESSION_TIMEOUT,
        ]
        .contains(code)
}

/// How a tokio-postgres failure should be treated.
pub fn postgres_action(e: &tokio_postgres::Error) -> Action {
    if e.is_closed() {
        return Action::Reconnect;
    }
    match e.code() {
        Some(code) if sqlstate_is_transient(code) => Action::Reconnect,
        Some(_) => Action::Stop,
        // No SQLSTATE: the socket failed (I/O) or the connection ended.
        None if std::error::Error::source(e).is_some_and(|s| s.is::<io::Error>()) => {
            Action::Reconnect
        }
        None => Action::Stop,
    }
}

/// Local I/O: a full disk or a network filesystem hiccup may pass; a missing file or a
/// refused permission will not.
pub fn io_action(e: &io::Error) -> Action {
    use io::ErrorKind::*;
    match e.kind() {
        NotFound | PermissionDenied | AlreadyExists | InvalidInput | InvalidData | Unsupported
        | ReadOnlyFilesystem => Action::Stop,
        _ => Action::Backoff,
    }
}

impl Classify for object_store::Error {
    fn action(&self) -> Action {
        use object_store::Error as E;
        match self {
            // Network failures and HTTP errors that outlasted the client's own retries.
            E::Generic { .. } | E::JoinError { .. } => Action::Backoff,
            // Expired temporary credentials are refreshed by the credential chain.
            E::Unauthenticated { .. } => Action::Backoff,
            _ => Action::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogError;
    use crate::checkpoint::CheckpointError;
    use crate::flush::FlushError;
    use crate::lake::LakeError;
    use crate::pipeline::RunError;
    use crate::sink::SinkError;
    use crate::source::SourceError;
    use crate::spool::SpoolError;

    fn store(e: object_store::Error) -> RunError {
        RunError::Lake(LakeError::Store {
            op: "put",
            key: "k".into(),
            source: e,
        })
    }

    fn generic() -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: "connection reset".into(),
        }
    }

    #[test]
    fn each_failure_maps_to_one_action() {
        let cases: Vec<(&str, RunError, Action)> = vec![
            (
                "connection lost",
                SourceError::Lost("eof".into()).into(),
                Action::Reconnect,
            ),
            (
                "server restarting",
                SourceError::Connect {
                    target: "h".into(),
                    message: "refused".into(),
                    retry: true,
                }
                .into(),
                Action::Reconnect,
            ),
            (
                "wrong password",
                SourceError::Connect {
                    target: "h".into(),
                    message: "password".into(),
                    retry: false,
                }
                .into(),
                Action::Stop,
            ),
            (
                "too many connections",
                SourceError::Busy {
                    what: "q".into(),
                    message: "m".into(),
                }
                .into(),
                Action::Backoff,
            ),
            // A second process must fail fast, not wait for the first to end.
            (
                "slot in use",
                SourceError::SlotInUse {
                    slot: "s".into(),
                    pid: 1,
                }
                .into(),
                Action::Stop,
            ),
            (
                "missing privilege",
                SourceError::Setup("grant".into()).into(),
                Action::Stop,
            ),
            ("S3 unreachable", store(generic()), Action::Backoff),
            (
                "S3 credentials expired",
                store(object_store::Error::Unauthenticated {
                    path: "k".into(),
                    source: "expired".into(),
                }),
                Action::Backoff,
            ),
            (
                "S3 object missing",
                store(object_store::Error::NotFound {
                    path: "k".into(),
                    source: "gone".into(),
                }),
                Action::Stop,
            ),
            (
                "S3 access denied",
                store(object_store::Error::PermissionDenied {
                    path: "k".into(),
                    source: "denied".into(),
                }),
                Action::Stop,
            ),
            (
                "local disk full",
                RunError::Lake(LakeError::Io {
                    op: "write",
                    path: "/x".into(),
                    source: io::Error::from(io::ErrorKind::StorageFull),
                }),
                Action::Backoff,
            ),
            (
                "local permission",
                RunError::Lake(LakeError::Io {
                    op: "write",
                    path: "/x".into(),
                    source: io::Error::from(io::ErrorKind::PermissionDenied),
                }),
                Action::Stop,
            ),
            (
                "flush upload failed",
                RunError::Flush(FlushError::Sink(SinkError::Lake(LakeError::Store {
                    op: "put",
                    key: "k".into(),
                    source: generic(),
                }))),
                Action::Backoff,
            ),
            (
                "spool mirror upload failed",
                RunError::Spool(SpoolError::Mirror(LakeError::Store {
                    op: "put",
                    key: "k".into(),
                    source: generic(),
                })),
                Action::Backoff,
            ),
            (
                "corrupt segment",
                RunError::Spool(SpoolError::Corrupt {
                    path: "/s".into(),
                    detail: "crc".into(),
                }),
                Action::Stop,
            ),
            (
                "glue down",
                RunError::Catalog(CatalogError::Glue("timeout".into())),
                Action::Backoff,
            ),
            (
                "rest catalog down during an iceberg commit",
                RunError::IcebergCatalog(CatalogError::Rest(
                    crate::catalog::rest::RestError::Transport {
                        what: "loading".into(),
                        message: "refused".into(),
                    },
                )),
                Action::Backoff,
            ),
            (
                "rest catalog refuses the credentials",
                RunError::IcebergCatalog(CatalogError::Rest(
                    crate::catalog::rest::RestError::Status {
                        what: "signing in".into(),
                        status: 401,
                        message: "bad client credentials".into(),
                    },
                )),
                Action::Stop,
            ),
            (
                "watermark backward",
                RunError::Checkpoint(CheckpointError::Backward {
                    table: "t".into(),
                    current: crate::lsn::Lsn(2),
                    new: crate::lsn::Lsn(1),
                }),
                Action::Stop,
            ),
            (
                "lake from another cluster",
                RunError::State("other cluster".into()),
                Action::Stop,
            ),
            (
                "a partitioned table published under its partitions' names",
                RunError::Setup("set publish_via_partition_root".into()),
                Action::Stop,
            ),
            (
                "a flush worker panicked",
                RunError::Task("flush worker failed".into()),
                Action::Stop,
            ),
        ];
        for (what, error, want) in cases {
            assert_eq!(error.action(), want, "{what}: {error}");
        }
    }

    #[test]
    fn sqlstates_that_pass_are_transient() {
        for (code, want) in [
            (SqlState::ADMIN_SHUTDOWN, true),
            (SqlState::CANNOT_CONNECT_NOW, true),
            (SqlState::TOO_MANY_CONNECTIONS, true),
            (SqlState::CONNECTION_FAILURE, true),
            (SqlState::T_R_SERIALIZATION_FAILURE, true),
            (SqlState::INSUFFICIENT_PRIVILEGE, false),
            (SqlState::UNDEFINED_TABLE, false),
            (SqlState::INVALID_PASSWORD, false),
            (SqlState::SYNTAX_ERROR, false),
        ] {
            assert_eq!(sqlstate_is_transient(&code), want, "{}", code.code());
        }
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let b = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let delays: Vec<Duration> = b.delays().take(12).collect();
        assert_eq!(delays.len(), 12, "the sequence must not end");
        assert!(delays[0] >= b.min && delays[0] < b.min * 3, "{delays:?}");
        // Jitter adds up to one more delay on top of the capped one.
        assert!(delays.iter().all(|d| *d <= b.max * 2), "{delays:?}");
        assert!(delays[11] >= b.max, "{delays:?}");
    }
}
