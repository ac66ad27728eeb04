//! The consumer: `slot2lake run` (until a signal) and `slot2lake run --once` (until its
//! first flush is committed) drive the same loop.
//!
//! ```text
//!  slot ──frames──▶ SpoolWriter (.open.seg)
//!                     │ every ack_interval, between transactions (run):
//!                     │   seal (fsync) ──▶ ack the slot to the sealed end   (WAL released: minutes, not a day)
//!                     │ idle for ack_interval: heartbeat message, so the slot advances anyway
//!                     │
//!  flush triggers: cron (UTC) │ POST /flush (`slot2lake flush`) │ spool over max_spool_bytes │ run --once's start
//!                     ▼   a marker message fixes the cut; a flush task starts at once:
//!              sealed segments ──▶ encode (temp folder) ... until a commit past the cut
//!                     arrives: seal, make durable, close the feed
//!              intent → publish → watermarks ──▶ catalog ──▶ spool GC
//!                     (run --once: ack the slot to the cut, exit)
//! ```
//!
//! The slot is only ever acknowledged to the end of a sealed spool segment (or a
//! committed cut), so what the server may forget is always on disk here. Changes arriving
//! after the cut go to the next flush. A lost connection or a PostgreSQL restart drops
//! the half-received transaction and reconnects with exponential backoff from the last
//! received commit. SIGTERM/SIGINT (`run`): stop reading, seal, acknowledge, let a running
//! flush finish if everything before its cut is sealed (else drop it uncommitted), exit 0.

pub mod admin;
mod consumer;
pub mod health;
mod stall;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use pg_walstream::CancellationToken;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::lsn::Lsn;
use crate::pipeline::{Pipeline, RunError, RunReport};
use crate::retry::Classify;
use crate::source::introspect;
use crate::telemetry::metric;
use consumer::{Consumer, Until};
use health::Health;

/// What a flush requested through the admin API reports back.
#[derive(Debug, Clone, Serialize)]
pub struct FlushSummary {
    /// Transactions ending at or before this LSN were flushed.
    pub cut: Lsn,
    /// Rows written.
    pub rows: u64,
    /// Files closed.
    pub files: usize,
    /// Wall time of the flush.
    pub seconds: f64,
    /// The catalog update failed (the data is committed; the next flush retries it).
    pub catalog_error: Option<String>,
}

/// A request for a flush now; answered once the flush is committed (or failed).
pub struct FlushRequest {
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<FlushSummary, String>>,
}

/// Lets other tasks interrupt the wait for the next replication message.
pub struct Waker {
    current: Mutex<CancellationToken>,
    shutdown: CancellationToken,
    /// Asks the ticker for a wake shortly (see [`Waker::wake_soon`]).
    soon: tokio::sync::Notify,
}

impl Waker {
    fn new(shutdown: CancellationToken) -> Self {
        Self {
            current: Mutex::new(shutdown.child_token()),
            shutdown,
            soon: tokio::sync::Notify::new(),
        }
    }

    /// The token the next wait ends on; a wake that came while the consumer was busy is
    /// handed over once (already cancelled), not lost.
    fn token(&self) -> CancellationToken {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.is_cancelled() {
            return std::mem::replace(&mut *cur, self.shutdown.child_token());
        }
        cur.clone()
    }

    /// Makes the consumer look within `consumer::LOOK_EVERY`: a look put off after a
    /// commit must not wait for the next tick when the stream then goes quiet.
    fn wake_soon(&self) {
        self.soon.notify_one();
    }

    /// Makes the consumer look at its timers and requests now.
    pub fn wake(&self) {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cancel();
    }
}

/// Runs the consumer until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), RunError> {
    let metrics = crate::telemetry::install_metrics();
    let listener = admin::bind(config.admin.listen).await?;
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let waker = Arc::new(Waker::new(shutdown.clone()));
    let health = Arc::new(Health::default());
    let (flush_tx, flush_rx) = mpsc::channel(64);
    let admin_task = admin::serve(
        listener,
        admin::AdminState {
            config: config.clone(),
            flush_tx,
            waker: waker.clone(),
            metrics,
            health: health.clone(),
        },
        shutdown.clone(),
    );
    // Recovery and a first snapshot can take long; a signal meanwhile stops cleanly
    // (an interrupted snapshot is started again by the next run).
    let prepared = tokio::select! {
        r = async {
            let pipeline = Pipeline::open(config.clone()).await?;
            let mut report = RunReport::default();
            let (repl, start) = pipeline.prepare(&mut report).await?;
            Ok::<_, RunError>((pipeline, repl, start, report))
        } => Some(r?),
        _ = shutdown.cancelled() => None,
    };
    let Some((pipeline, repl, start, report)) = prepared else {
        admin_task.abort();
        return Ok(());
    };
    let schedule = config.flush.schedule.clone();
    let next_flush_at = schedule.next_after(&Utc::now());
    tracing::info!(
        from = %start,
        admin = %config.admin.listen,
        next_flush = ?next_flush_at.map(|t| t.to_rfc3339()),
        "consumer started"
    );
    let until = Until::Signal {
        schedule: Box::new(schedule),
        next_flush_at,
    };
    let mut consumer =
        Consumer::start(Arc::new(pipeline), repl, start, until, waker, health).await?;
    consumer.uncataloged = report.files;
    let result = consumer.run(flush_rx).await;
    // Answers already given (a flush's outcome) reach their callers before the process
    // exits: the API stops accepting and finishes the requests in flight.
    shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(5), admin_task)
        .await
        .is_err()
    {
        tracing::warn!("the admin API did not finish its requests within 5 s");
    }
    result.map(|_| ())
}

/// `run --once` on an open pipeline: the consumer with a stop condition. It recovers,
/// streams from the slot, flushes everything committed before it started (encoding
/// while it streams), acknowledges the slot to that cut, and returns.
pub async fn once(pipeline: Arc<Pipeline>) -> Result<RunReport, RunError> {
    let mut report = RunReport {
        lake: pipeline.lake().url().to_string(),
        ..Default::default()
    };
    let (repl, start) = pipeline.prepare(&mut report).await?;
    let marker = {
        let client = pipeline.source().get().await?;
        introspect::emit_marker(
            &client,
            &format!("run --once at {}", Utc::now().to_rfc3339()),
        )
        .await?
    };
    tracing::info!(from = %start, to = %marker, "catching up with the slot");
    let shutdown = CancellationToken::new();
    // Ends the ticker with the run.
    let _stop_ticker = shutdown.clone().drop_guard();
    let give_up_at = Instant::now() + pipeline.config().retry.run_once_budget;
    let until = Until::CaughtUp { give_up_at };
    let waker = Arc::new(Waker::new(shutdown));
    let health = Arc::new(Health::default());
    let mut consumer = Consumer::start(pipeline.clone(), repl, start, until, waker, health).await?;
    consumer.want_flush = Some(marker);
    consumer.uncataloged = report.files.clone();
    consumer.report = report;
    // No one asks a `run --once` for a flush: a closed channel.
    let (_, requests) = mpsc::channel(1);
    let report = consumer.run(requests).await?;
    // The replication connection is closed; once the server has let go of the slot, a
    // script may drop it or start the consumer without meeting "in use".
    if let Err(e) = pipeline.slot_when_free().await {
        tracing::warn!(error = %e, "could not see the slot released");
    }
    Ok(report)
}

/// `run --once`, tried again with backoff while failures may pass (S3, Glue or
/// PostgreSQL unavailable), for at most `retry.run_once_budget`. Every attempt starts with
/// recovery, so an attempt that died mid-flush is finished by the next one. A server that
/// cannot be reached on the first attempt is reported at once: a wrong host or port should
/// not take the whole budget to surface.
pub async fn run_once(config: Config) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let budget = config.retry.run_once_budget;
    let mut delays = config.retry.backoff().delays();
    let mut attempt = 1;
    loop {
        let mut restored = false;
        let result = match Pipeline::open(config.clone()).await {
            Ok(pipeline) => {
                let pipeline = Arc::new(pipeline);
                match once(pipeline.clone()).await {
                    Err(e) => {
                        restored = pipeline.repair_spool(&e).await?;
                        Err(e)
                    }
                    ok => ok,
                }
            }
            Err(e) => Err(e),
        };
        let e = match result {
            Ok(report) => return Ok(report),
            Err(e) => e,
        };
        if restored {
            attempt += 1;
            continue;
        }
        let unreachable = attempt == 1
            && matches!(
                e,
                RunError::Source(crate::source::SourceError::Connect { .. })
            );
        let delay = delays.next().unwrap_or(config.retry.max_delay);
        // The data is committed; the next run retries the catalog update first.
        let committed = matches!(e, RunError::Catalog(_));
        if unreachable || committed || !e.action().retries() || started.elapsed() + delay > budget {
            if attempt > 1 {
                return Err(RunError::GaveUp {
                    attempts: attempt,
                    seconds: started.elapsed().as_secs(),
                    source: Box::new(e),
                });
            }
            return Err(e);
        }
        metrics::counter!(metric::RETRIES, "step" => "run_once").increment(1);
        tracing::warn!(error = %e, attempt, retry_in = ?delay, "run --once failed; retrying");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        }
        shutdown.cancel();
    });
}
