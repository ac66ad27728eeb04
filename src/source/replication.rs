//! The replication stream: pgoutput frames from the slot, via pg_walstream's raw path.
//!
//! slot2lake decodes pgoutput itself (later, at flush time) and owns restart
//! semantics: the stream resumes from what is durable in the spool or the lake, and
//! the slot is acknowledged only up to that point.

use std::time::Duration;

use bytes::Bytes;
use pg_walstream::{
    CancellationToken, LogicalReplicationStream, ReplicationError, ReplicationSlotOptions,
    ReplicationStreamConfig, RetryConfig,
};

use super::SourceError;
use crate::config::SecretUrl;
use crate::lsn::Lsn;

/// Prefix of the logical-decoding messages slot2lake writes to mark positions.
pub const MARKER_PREFIX: &str = "slot2lake";

/// How the stream is opened.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Slot name.
    pub slot: String,
    /// Publication name.
    pub publication: String,
    /// Ask for binary values.
    pub binary: bool,
    /// Create the slot with an exported snapshot (first run).
    pub export_snapshot: bool,
    /// Create a temporary slot, dropped with the connection (backfill).
    pub temporary: bool,
    /// `source.query_timeout`: how long starting the stream may wait for the server;
    /// `None` when starting creates the slot, which waits for the transactions running
    /// on the source to end, however long they take.
    pub answer_within: Option<Duration>,
}

/// Runs a pg_walstream step whose round-trips block their thread (its control plane
/// is synchronous, so a timeout around the call itself could never fire) on a task of
/// its own, and stops waiting at `within`. A step given up on keeps its thread until
/// its socket closes.
async fn off_thread<T: Send + 'static>(
    within: Duration,
    step: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<Result<T, SourceError>> {
    let task = tokio::spawn(step);
    match tokio::time::timeout(within, task).await {
        Ok(Ok(done)) => Some(Ok(done)),
        Ok(Err(e)) => Some(Err(SourceError::Lost(format!(
            "the replication connection's task failed: {e}"
        )))),
        Err(_) => None,
    }
}

/// A replication connection to one slot.
pub struct ReplicationStream {
    inner: LogicalReplicationStream,
    slot: String,
    answer_within: Option<Duration>,
}

/// The URL for a replication connection: with `replication=database`, and the same
/// dead-peer bounds as a regular connection (`tls::KEEPALIVES_IDLE`, `tls::TCP_USER_TIMEOUT`)
/// unless the URL sets them;
/// pg_walstream's own defaults notice a vanished server only after minutes.
fn replication_url(url: &SecretUrl) -> String {
    let raw = url.expose();
    let set: Vec<String> = url::Url::parse(raw)
        .map(|u| u.query_pairs().map(|(k, _)| k.into_owned()).collect())
        .unwrap_or_default();
    let mut params = vec!["replication=database".to_string()];
    if !set.iter().any(|k| k == "keepalives_idle") {
        params.push(format!(
            "keepalives_idle={}",
            super::tls::KEEPALIVES_IDLE.as_secs()
        ));
    }
    if !set.iter().any(|k| k == "tcp_user_timeout") {
        // Milliseconds, as in libpq.
        params.push(format!(
            "tcp_user_timeout={}",
            super::tls::TCP_USER_TIMEOUT.as_millis()
        ));
    }
    let sep = if raw.contains('?') { '&' } else { '?' };
    format!("{raw}{sep}{}", params.join("&"))
}

/// Turns a pg_walstream error into a message a user can act on.
pub fn map_error(slot: &str, url: &SecretUrl, e: ReplicationError) -> SourceError {
    let text = e.to_string();
    if let Some(pid) = text
        .split("is active for PID ")
        .nth(1)
        .and_then(|s| s.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
    {
        return SourceError::SlotInUse {
            slot: slot.to_string(),
            pid,
        };
    }
    match e {
        ReplicationError::Authentication(m) => SourceError::Connect {
            target: super::target(url),
            message: format!("{m}; check the user and password in source.url"),
            retry: false,
        },
        ReplicationError::PermanentConnection(m) if m.contains("refused") => SourceError::Connect {
            target: super::target(url),
            message: "connection refused; is PostgreSQL running, and are host and port in source.url right?".into(),
            retry: true,
        },
        ReplicationError::TransientConnection(m)
        | ReplicationError::ReplicationConnection(m)
        | ReplicationError::Backend(m)
        | ReplicationError::Timeout(m) => SourceError::Lost(m),
        ReplicationError::Io(io) => SourceError::Lost(io.to_string()),
        // A frame that does not parse (often a connection cut mid-frame): the stream
        // resumes from the last received commit, so reading again skips nothing.
        ReplicationError::Protocol(m)
        | ReplicationError::Buffer(m)
        | ReplicationError::Deserialize(m) => SourceError::Lost(m),
        other => SourceError::Replication(other.to_string()),
    }
}

impl ReplicationStream {
    /// Opens a replication connection (the slot is not touched yet).
    pub async fn connect(url: &SecretUrl, opts: &StreamOptions) -> Result<Self, SourceError> {
        let config = ReplicationStreamConfig::builder(opts.slot.clone(), opts.publication.clone())
            .with_protocol_version(1)
            .with_binary(opts.binary)
            .with_messages(true)
            .with_feedback_interval(Duration::from_secs(10))
            // Ours (`CONNECT_TIMEOUT`, below) decides: with both at 30 s, whichever fired
            // first chose the error a silent proxy gets.
            .with_connection_timeout(super::CONNECT_TIMEOUT + Duration::from_secs(15))
            .with_retry_config(RetryConfig {
                max_attempts: 1,
                ..RetryConfig::default()
            })
            .with_slot_options(ReplicationSlotOptions {
                snapshot: Some(
                    if opts.export_snapshot {
                        "export"
                    } else {
                        "nothing"
                    }
                    .into(),
                ),
                // Backfill and verify slots vanish with their connection, also when the
                // process is killed: a forgotten slot would pin WAL on the source forever.
                temporary: opts.temporary,
                ..Default::default()
            });
        let conninfo = replication_url(url);
        let connecting = async move { LogicalReplicationStream::new(&conninfo, config).await };
        let inner = match off_thread(super::CONNECT_TIMEOUT, connecting).await {
            Some(connected) => connected?.map_err(|e| map_error(&opts.slot, url, e))?,
            None => {
                return Err(SourceError::Connect {
                    target: super::target(url),
                    message: format!(
                        "no answer within {} s after connecting for replication (a stuck proxy?); check host and port in source.url",
                        super::CONNECT_TIMEOUT.as_secs()
                    ),
                    retry: true,
                })
            }
        };
        Ok(Self {
            inner,
            slot: opts.slot.clone(),
            answer_within: opts.answer_within,
        })
    }

    fn err(&self, e: ReplicationError) -> SourceError {
        // The URL is only needed for connect-time errors, which happen in `connect`.
        map_error(&self.slot, &SecretUrl::new(String::new()), e)
    }

    /// Creates the slot with an exported snapshot; returns the snapshot's name.
    ///
    /// The snapshot stays importable (`SET TRANSACTION SNAPSHOT`) until [`start`](Self::start).
    pub async fn create_slot_exporting(&mut self) -> Result<String, SourceError> {
        // Creating it may wait for long transactions; once it exists, starting is bounded.
        self.inner
            .ensure_replication_slot()
            .await
            .map_err(|e| self.err(e))?;
        self.inner
            .exported_snapshot_name()
            .map(str::to_string)
            .ok_or_else(|| SourceError::Replication(format!(
                "slot {:?} already existed, so no snapshot could be exported; drop it (SELECT pg_drop_replication_slot('{}')) or set [source] snapshot = \"never\"",
                self.slot, self.slot
            )))
    }

    /// Starts streaming after `from` (the server never goes below the slot's confirmed position).
    pub async fn start(self, from: Lsn) -> Result<Self, SourceError> {
        let Self {
            mut inner,
            slot,
            answer_within,
        } = self;
        let starting = async move {
            let started = inner.start(Some(from.0)).await;
            (inner, started)
        };
        let within = answer_within.unwrap_or(Duration::MAX);
        match off_thread(within, starting).await {
            Some(done) => {
                let (inner, started) = done?;
                let this = Self {
                    inner,
                    slot,
                    answer_within,
                };
                started.map_err(|e| this.err(e))?;
                Ok(this)
            }
            None => Err(SourceError::NoAnswer {
                what: "starting replication (IDENTIFY_SYSTEM, START_REPLICATION)".into(),
                within,
            }),
        }
    }

    /// The next pgoutput message, or `None` once `wake` is cancelled.
    ///
    /// Waking is how the consumer regains control while the server is silent: the
    /// library checks the token between frames, so no frame is lost or cut.
    pub async fn next_message(
        &mut self,
        wake: &CancellationToken,
    ) -> Result<Option<Bytes>, SourceError> {
        match self.inner.next_raw_event(wake).await {
            Ok(raw) => Ok(Some(raw.data)),
            Err(ReplicationError::Cancelled(_)) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// The newest WAL position received (data or keepalive).
    pub fn received_lsn(&self) -> Lsn {
        Lsn(self.inner.current_lsn())
    }

    /// Tells the server everything before `lsn` is durable, so it may drop that WAL.
    pub async fn ack(&mut self, lsn: Lsn) -> Result<(), SourceError> {
        let feedback = &self.inner.shared_lsn_feedback;
        feedback.update_flushed_lsn(lsn.0);
        feedback.update_applied_lsn(lsn.0);
        self.inner.send_feedback().await.map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_urls_get_dead_peer_bounds_unless_set() {
        let cases = [
            (
                "postgres://u@h:5432/db",
                "postgres://u@h:5432/db?replication=database&keepalives_idle=30&tcp_user_timeout=60000",
            ),
            (
                "postgres://u@h/db?sslmode=require",
                "postgres://u@h/db?sslmode=require&replication=database&keepalives_idle=30&tcp_user_timeout=60000",
            ),
            (
                "postgres://u@h/db?keepalives_idle=5&tcp_user_timeout=1000",
                "postgres://u@h/db?keepalives_idle=5&tcp_user_timeout=1000&replication=database",
            ),
        ];
        for (url, want) in cases {
            assert_eq!(replication_url(&SecretUrl::new(url.to_string())), want);
        }
    }
}
