//! The admin HTTP API on loopback: `GET /health`, `GET /metrics` (Prometheus text),
//! `GET /status` (as `slot2lake status --json`), `POST /flush` (returns when the flush
//! is committed). Also the client `slot2lake flush` uses.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, Full};
use metrics_exporter_prometheus::PrometheusHandle;
use pg_walstream::CancellationToken;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::health::{Health, HealthReport};
use super::{FlushRequest, Waker};
use crate::config::Config;
use crate::pipeline::RunError;

/// What the handlers need.
#[derive(Clone)]
pub struct AdminState {
    /// For `/status`.
    pub config: Config,
    /// Flush requests to the consumer.
    pub flush_tx: mpsc::Sender<FlushRequest>,
    /// Wakes the consumer so it sees a request at once.
    pub waker: Arc<Waker>,
    /// Renders `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// Starting, ok, or degraded (recovery and a first snapshot come before streaming).
    pub health: Arc<Health>,
}

/// Binds the admin address; a clear error when it is taken.
pub async fn bind(listen: std::net::SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(listen).await.map_err(|e| {
        RunError::Setup(format!(
            "admin.listen {listen}: {e}; is another slot2lake running? set [admin] listen to a free address"
        ))
    })
}

/// Serves the API until shutdown.
pub fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/flush", post(flush))
        .with_state(state);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin API stopped");
        }
    })
}

async fn health(State(state): State<AdminState>) -> Response {
    match state.health.report() {
        HealthReport::Ok => "ok\n".into_response(),
        // Still 200: the consumer is alive and retrying; restarting it would not help.
        HealthReport::Degraded(reasons) => {
            format!("degraded\n{}\n", reasons.join("\n")).into_response()
        }
        HealthReport::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    match &state.metrics {
        Some(h) => ([("content-type", "text/plain; version=0.0.4")], h.render()).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n",
        )
            .into_response(),
    }
}

async fn status(State(state): State<AdminState>) -> Response {
    match crate::status::gather(&state.config).await {
        Ok(s) => Json(s).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn flush(State(state): State<AdminState>) -> Response {
    let (reply, rx) = oneshot::channel();
    if state.flush_tx.send(FlushRequest { reply }).await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": "the consumer is stopping" })),
        )
            .into_response();
    }
    state.waker.wake();
    match rx.await {
        Ok(Ok(summary)) => Json(summary).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": e })),
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": "the consumer stopped before the flush finished" })),
        )
            .into_response(),
    }
}

/// A failed `slot2lake flush`.
#[derive(Debug, thiserror::Error)]
pub enum FlushClientError {
    /// Nobody listens at the admin address.
    #[error(
        "no slot2lake consumer is running at {0} (start `slot2lake run`, or check [admin] listen)"
    )]
    NotRunning(String),
    /// The consumer answered with an error.
    #[error("the flush failed: {0}")]
    Failed(String),
    /// Talking to the consumer failed.
    #[error("admin API at {0}: {1}")]
    Http(String, String),
}

/// Asks the consumer at `listen` to flush; returns its JSON answer once committed.
pub async fn request_flush(
    listen: std::net::SocketAddr,
) -> Result<serde_json::Value, FlushClientError> {
    if tokio::net::TcpStream::connect(listen).await.is_err() {
        return Err(FlushClientError::NotRunning(listen.to_string()));
    }
    let http =
        |e: &dyn std::fmt::Display| FlushClientError::Http(listen.to_string(), e.to_string());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(1))
        .build_http::<Full<bytes::Bytes>>();
    let req = hyper::Request::post(format!("http://{listen}/flush"))
        .body(Full::new(bytes::Bytes::new()))
        .map_err(|e| http(&e))?;
    let resp = client.request(req).await.map_err(|e| http(&e))?;
    let ok = resp.status().is_success();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| http(&e))?
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| http(&e))?;
    if ok {
        Ok(value)
    } else {
        Err(FlushClientError::Failed(
            value["error"]
                .as_str()
                .unwrap_or("unknown error")
                .to_string(),
        ))
    }
}
