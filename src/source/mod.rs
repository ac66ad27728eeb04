//! The source database: connections, catalog queries, the replication stream and the
//! snapshot (COPY) reader.

pub mod copy;
pub mod introspect;
pub mod replication;
pub mod snapshot;
pub mod tls;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::config::{SecretUrl, SourceConfig};
use crate::retry::{Action, Classify};

/// A source-database failure; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The server could not be reached or refused the login.
    #[error("cannot connect to PostgreSQL at {target}: {message}")]
    Connect {
        /// `host:port/db` (never the password).
        target: String,
        /// What happened and what to do.
        message: String,
        /// Whether trying again later may succeed (refused, timed out; not a wrong password).
        retry: bool,
    },
    /// The server refused a statement for now (too many connections, a conflict).
    #[error("{what}: {message}")]
    Busy {
        /// What was being done.
        what: String,
        /// The server's message.
        message: String,
    },
    /// A query failed.
    #[error("{what}: {message}")]
    Query {
        /// What was being done.
        what: String,
        /// The server's message.
        message: String,
    },
    /// The server or role is not set up for logical replication.
    #[error("{0}")]
    Setup(String),
    /// The replication slot is being used by another process.
    #[error("replication slot {slot:?} is in use by another process (pid {pid}); stop the other consumer (one slot2lake per slot) or set [source] slot to another name")]
    SlotInUse {
        /// Slot name.
        slot: String,
        /// The active walsender's pid.
        pid: i32,
    },
    /// The replication protocol failed.
    #[error("replication: {0}")]
    Replication(String),
    /// The connection was lost; retry.
    #[error("connection to PostgreSQL lost: {0}")]
    Lost(String),
    /// A statement got no answer in time; the connection was dropped, and a new one is opened.
    #[error("{what}: no answer within {} s (a stuck proxy or pooler, or a statement waiting on a lock?), so slot2lake gave up on the connection; raise source.query_timeout if such statements are slow here", .within.as_secs())]
    NoAnswer {
        /// What was being done.
        what: String,
        /// `source.query_timeout`
        within: Duration,
    },
}

/// Describes a query failure, keeping the server's message and hint.
pub fn query_error(what: impl Into<String>, e: &tokio_postgres::Error) -> SourceError {
    let message = match e.as_db_error() {
        Some(db) => match db.hint() {
            Some(h) => format!("{} (hint: {h})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    };
    match crate::retry::postgres_action(e) {
        Action::Reconnect if e.as_db_error().is_none() => SourceError::Lost(message),
        Action::Reconnect | Action::Backoff => SourceError::Busy {
            what: what.into(),
            message,
        },
        Action::Stop => SourceError::Query {
            what: what.into(),
            message,
        },
    }
}

/// `host:port/db` of a connection URL, for messages.
pub fn target(url: &SecretUrl) -> String {
    match url::Url::parse(url.expose()) {
        Ok(u) => format!(
            "{}:{}{}",
            u.host_str().unwrap_or("localhost"),
            u.port().unwrap_or(5432),
            u.path()
        ),
        Err(_) => url.redacted(),
    }
}

/// Opens a regular (non-replication) connection whose statements must be answered
/// within `answer_within` (or the connection is given up).
pub async fn connect(url: &SecretUrl, answer_within: Duration) -> Result<Conn, SourceError> {
    // A server (or proxy, or pooler) that accepts the connection and never answers would
    // otherwise hang the startup handshake forever; `connect_timeout` covers TCP only.
    let (client, task) = tokio::time::timeout(CONNECT_TIMEOUT, connect_now(url))
        .await
        .unwrap_or_else(|_| {
            Err(SourceError::Connect {
                target: target(url),
                message: format!(
                    "no answer within {} s after connecting (a stuck proxy or pooler?); check host and port in source.url",
                    CONNECT_TIMEOUT.as_secs()
                ),
                retry: true,
            })
        })?;
    Ok(Conn {
        client,
        deadline: Deadline {
            within: answer_within,
            task,
            broken: Arc::new(AtomicBool::new(false)),
        },
    })
}

/// Opens a regular connection to `[source]`, bounded by its `query_timeout`.
pub async fn open(source: &SourceConfig) -> Result<Conn, SourceError> {
    connect(&source.url, source.query_timeout).await
}

/// How long connecting, TLS and the startup handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect_now(url: &SecretUrl) -> Result<(Client, tokio::task::AbortHandle), SourceError> {
    let how = tls::prepare(url)?;
    let closed = |e: tokio_postgres::Error| tracing::debug!(error = %e, "source connection closed");
    // The two arms differ in the connection's type: each spawns its own.
    let (client, task) = match how.tls {
        Some(tls) => {
            let (client, conn) = how
                .config
                .connect(tls)
                .await
                .map_err(|e| connect_error(url, &e))?;
            (
                client,
                tokio::spawn(async move { conn.await.map_err(closed) }),
            )
        }
        None => {
            let (client, conn) = how
                .config
                .connect(NoTls)
                .await
                .map_err(|e| connect_error(url, &e))?;
            (
                client,
                tokio::spawn(async move { conn.await.map_err(closed) }),
            )
        }
    };
    Ok((client, task.abort_handle()))
}

/// A regular connection. Every statement's wait for the server's answer is bounded by
/// `source.query_timeout`: keepalives catch a dead peer, but a peer that keeps TCP alive
/// and never answers (a stuck pooler) would otherwise hang the caller forever.
pub struct Conn {
    client: Client,
    deadline: Deadline,
}

impl Conn {
    /// Awaits a statement within `source.query_timeout`.
    async fn answer<T>(
        &self,
        what: impl Into<String>,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, SourceError> {
        self.deadline.answer(what, statement).await
    }

    /// The rows of a statement, within `source.query_timeout`.
    pub async fn query(
        &self,
        what: impl Into<String>,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, SourceError> {
        self.answer(what, self.client.query(sql, params)).await
    }

    /// The row of a statement that returns one.
    pub async fn query_one(
        &self,
        what: impl Into<String>,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, SourceError> {
        self.answer(what, self.client.query_one(sql, params)).await
    }

    /// The row of a statement that returns at most one.
    pub async fn query_opt(
        &self,
        what: impl Into<String>,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, SourceError> {
        self.answer(what, self.client.query_opt(sql, params)).await
    }

    /// Runs statements without parameters (a script).
    pub async fn batch_execute(
        &self,
        what: impl Into<String>,
        sql: &str,
    ) -> Result<(), SourceError> {
        self.answer(what, self.client.batch_execute(sql)).await
    }

    /// The one value of a one-row statement, within `source.query_timeout`.
    pub async fn value<T: tokio_postgres::types::FromSqlOwned>(
        &self,
        what: impl Into<String>,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<T, SourceError> {
        let what = what.into();
        let row = self.query_one(what.clone(), sql, params).await?;
        row.try_get(0).map_err(|e| query_error(what, &e))
    }

    /// The client for a transaction, and the deadline that bounds its statements.
    pub fn transaction_parts(&mut self) -> (&mut Client, Deadline) {
        (&mut self.client, self.deadline.clone())
    }

    /// Whether the connection can no longer be used.
    pub fn is_closed(&self) -> bool {
        self.deadline.broken.load(Ordering::Relaxed) || self.client.is_closed()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // A connection stuck on a statement would otherwise outlive its client.
        self.deadline.task.abort();
    }
}

/// The wait a connection allows for each statement's answer.
#[derive(Clone)]
pub struct Deadline {
    within: Duration,
    task: tokio::task::AbortHandle,
    broken: Arc<AtomicBool>,
}

impl Deadline {
    /// Awaits a statement; past the deadline the connection is closed (a late answer
    /// must not be read as the next statement's) and the error says to reconnect.
    pub async fn answer<T>(
        &self,
        what: impl Into<String>,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, SourceError> {
        match tokio::time::timeout(self.within, statement).await {
            Ok(result) => result.map_err(|e| query_error(what, &e)),
            Err(_) => {
                self.broken.store(true, Ordering::Relaxed);
                self.task.abort();
                Err(SourceError::NoAnswer {
                    what: what.into(),
                    within: self.within,
                })
            }
        }
    }
}

fn connect_error(url: &SecretUrl, e: &tokio_postgres::Error) -> SourceError {
    let user = url::Url::parse(url.expose())
        .map(|u| u.username().to_string())
        .unwrap_or_default();
    let message = match e.code() {
        Some(c) if *c == SqlState::INVALID_PASSWORD => {
            format!("password authentication failed for user {user:?}; check the password in source.url")
        }
        Some(c) if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            let why = e
                .as_db_error()
                .map(|d| d.message())
                .unwrap_or("not authorized");
            if why.contains("no encryption") {
                format!("the server requires TLS ({why}); add sslmode=verify-full&sslrootcert=<CA bundle PEM> (or sslmode=require) to source.url")
            } else {
                format!("the server rejected user {user:?} ({why}); check pg_hba.conf and the user in source.url")
            }
        }
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => {
            "the database does not exist; check the database name in source.url".to_string()
        }
        _ => {
            let text = e.to_string();
            let cause = std::error::Error::source(e)
                .map(|s| s.to_string())
                .unwrap_or_default();
            if cause.contains("refused") || text.contains("refused") {
                "connection refused; is PostgreSQL running, and are host and port in source.url right?".to_string()
            } else if cause.contains("lookup address") || text.contains("lookup address") {
                "the host name does not resolve; check the host in source.url".to_string()
            } else if cause.contains("timed out") || text.contains("timed out") {
                "the connection timed out; check the host, port and firewall".to_string()
            } else if cause.contains("peer certificate") || text.contains("peer certificate") {
                format!("{text}; the server's certificate must be signed by a CA in sslrootcert and, with verify-full, name the host in source.url")
            } else if let Some(db) = e.as_db_error() {
                db.message().to_string()
            } else if cause.is_empty() {
                text
            } else {
                format!("{text}: {cause}")
            }
        }
    };
    SourceError::Connect {
        target: target(url),
        message,
        retry: crate::retry::postgres_action(e) != Action::Stop,
    }
}

/// Quotes an identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal for SQL.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A regular connection that reconnects after the server restarted or stopped answering.
pub struct SourceClient {
    url: SecretUrl,
    answer_within: Duration,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

impl SourceClient {
    /// Wraps an open connection; reconnections answer within the same time.
    pub fn new(url: SecretUrl, conn: Conn) -> Self {
        Self {
            url,
            answer_within: conn.deadline.within,
            conn: tokio::sync::Mutex::new(Some(Arc::new(conn))),
        }
    }

    /// The connection URL.
    pub fn url(&self) -> &SecretUrl {
        &self.url
    }

    /// The connection, reconnecting when it was closed.
    pub async fn get(&self) -> Result<Arc<Conn>, SourceError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = Arc::new(connect(&self.url, self.answer_within).await?);
        *guard = Some(c.clone());
        Ok(c)
    }
}

impl Classify for SourceError {
    fn action(&self) -> Action {
        match self {
            SourceError::Lost(_) | SourceError::NoAnswer { .. } => Action::Reconnect,
            SourceError::Connect { retry, .. } if *retry => Action::Reconnect,
            SourceError::Busy { .. } => Action::Backoff,
            _ => Action::Stop,
        }
    }
}
