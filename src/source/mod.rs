//! The source database: connections, catalog queries, the replication stream and the
//! snapshot (COPY) reader.

pub mod copy;
pub mod introspect;
pub mod replication;
pub mod snapshot;
pub mod tls;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::config::SecretUrl;
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

/// Opens a regular (non-replication) connection.
pub async fn connect(url: &SecretUrl) -> Result<Client, SourceError> {
    // A server (or proxy, or pooler) that accepts the connection and never answers would
    // otherwise hang the startup handshake forever; `connect_timeout` covers TCP only.
    tokio::time::timeout(CONNECT_TIMEOUT, connect_now(url))
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
        })
}

/// How long connecting, TLS and the startup handshake may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn connect_now(url: &SecretUrl) -> Result<Client, SourceError> {
    let how = tls::prepare(url)?;
    let closed = |e: tokio_postgres::Error| tracing::debug!(error = %e, "source connection closed");
    let client = match how.tls {
        Some(tls) => {
            let (client, conn) = how
                .config
                .connect(tls)
                .await
                .map_err(|e| connect_error(url, &e))?;
            tokio::spawn(async move { conn.await.map_err(closed) });
            client
        }
        None => {
            let (client, conn) = how
                .config
                .connect(NoTls)
                .await
                .map_err(|e| connect_error(url, &e))?;
            tokio::spawn(async move { conn.await.map_err(closed) });
            client
        }
    };
    Ok(client)
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

/// A regular connection that reconnects after the server restarted.
pub struct SourceClient {
    url: SecretUrl,
    client: tokio::sync::Mutex<Option<std::sync::Arc<Client>>>,
}

impl SourceClient {
    /// Wraps an open connection.
    pub fn new(url: SecretUrl, client: Client) -> Self {
        Self {
            url,
            client: tokio::sync::Mutex::new(Some(std::sync::Arc::new(client))),
        }
    }

    /// The connection URL.
    pub fn url(&self) -> &SecretUrl {
        &self.url
    }

    /// The connection, reconnecting when it was closed.
    pub async fn get(&self) -> Result<std::sync::Arc<Client>, SourceError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = std::sync::Arc::new(connect(&self.url).await?);
        *guard = Some(c.clone());
        Ok(c)
    }
}

impl Classify for SourceError {
    fn action(&self) -> Action {
        match self {
            SourceError::Lost(_) => Action::Reconnect,
            SourceError::Connect { retry, .. } if *retry => Action::Reconnect,
            SourceError::Busy { .. } => Action::Backoff,
            _ => Action::Stop,
        }
    }
}
