//! `slot2lake run`: the always-on consumer.
//!
//! ```text
//!  slot ──frames──▶ SpoolWriter (.open.seg)
//!                     │ every ack_interval, between transactions:
//!                     │   seal (fsync) ──▶ ack the slot to the sealed end   (WAL released: minutes, not a day)
//!                     │ idle for ack_interval: heartbeat message, so the slot advances anyway
//!                     │
//!  flush triggers: cron (UTC) │ POST /flush (`slot2lake flush`) │ spool over max_spool_bytes
//!                     ▼   seal + ack, then in a task while streaming goes on:
//!              flush_to(cut): intent → Parquet → watermarks ──▶ catalog ──▶ spool GC
//! ```
//!
//! The slot is only ever acknowledged to the end of a sealed spool segment, so what
//! the server may forget is always on disk here. Changes arriving during a flush go to
//! the next one (the cut is the end of the last sealed segment). A lost connection or a
//! PostgreSQL restart drops the half-received transaction and reconnects with
//! exponential backoff from the last received commit. SIGTERM/SIGINT: stop reading,
//! seal, acknowledge, let a running flush finish, exit 0.

pub mod admin;
pub mod health;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pg_walstream::CancellationToken;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::lsn::Lsn;
use crate::pipeline::{Pipeline, RunError, RunReport};
use crate::retry::{Action, Classify};
use crate::source::introspect;
use crate::source::replication::ReplicationStream;
use crate::spool::{Received, SpoolWriter};
use crate::telemetry::metric;
use health::{Health, Retrying};

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
}

impl Waker {
    fn new(shutdown: CancellationToken) -> Self {
        Self {
            current: Mutex::new(shutdown.child_token()),
            shutdown,
        }
    }

    fn token(&self) -> CancellationToken {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.is_cancelled() {
            *cur = self.shutdown.child_token();
        }
        cur.clone()
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
    let schedule: croner::Cron = config
        .flush
        .schedule
        .parse()
        .map_err(|e| RunError::State(format!("flush.schedule: {e}")))?;
    let metrics = crate::telemetry::install_metrics();
    let listener = admin::bind(&config.admin.listen).await?;
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
            let mut pipeline = Pipeline::open(config.clone()).await?;
            let (repl, start) = pipeline.prepare(&mut RunReport::default()).await?;
            Ok::<_, RunError>((pipeline, repl, start))
        } => Some(r?),
        _ = shutdown.cancelled() => None,
    };
    let Some((pipeline, repl, start)) = prepared else {
        admin_task.abort();
        return Ok(());
    };
    let pipeline = Arc::new(pipeline);
    spawn_ticker(waker.clone(), shutdown.clone());
    let next_flush_at = schedule.find_next_occurrence(&Utc::now(), false).ok();
    tracing::info!(
        from = %start,
        admin = %config.admin.listen,
        next_flush = ?next_flush_at.map(|t| t.to_rfc3339()),
        "consumer started"
    );
    let mut repl = repl;
    repl.start(start).await?;
    let writer = pipeline.spool_writer(start, config.spool.segment_size.0);
    let spool_bytes = spool_size(&pipeline);
    health.set_ready();
    let backoff = config.retry.backoff();
    let consumer = Consumer {
        ack_interval: config.spool.ack_interval,
        max_spool_bytes: config.spool.max_spool_bytes.0,
        pipeline,
        repl,
        writer,
        waker,
        shutdown,
        acked: start,
        last_ack: Instant::now(),
        last_commit: Instant::now(),
        last_heartbeat: Instant::now(),
        last_lag_check: Instant::now(),
        schedule,
        next_flush_at,
        want_flush: None,
        waiting: Vec::new(),
        in_flight: None,
        spool_bytes,
        health,
        flush_retry: Retrying::new("flush", backoff),
        spool_retry: Retrying::new("spool", backoff),
        backoff,
    };
    let result = consumer.run(flush_rx).await;
    admin_task.abort();
    result
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
            Ok(mut pipeline) => match pipeline.run_once().await {
                Err(e) => {
                    restored = pipeline.repair_spool(&e).await?;
                    Err(e)
                }
                ok => ok,
            },
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

/// Wakes the consumer every second, so timers run while the server is silent.
fn spawn_ticker(waker: Arc<Waker>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => waker.wake(),
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

fn spool_size(pipeline: &Pipeline) -> u64 {
    pipeline
        .spool()
        .segments()
        .map(|s| s.iter().map(|seg| seg.bytes).sum())
        .unwrap_or(0)
}

type InFlight = (
    JoinHandle<Result<FlushSummary, RunError>>,
    Vec<oneshot::Sender<Result<FlushSummary, String>>>,
);

struct Consumer {
    pipeline: Arc<Pipeline>,
    repl: ReplicationStream,
    writer: SpoolWriter,
    waker: Arc<Waker>,
    shutdown: CancellationToken,
    ack_interval: Duration,
    max_spool_bytes: u64,
    acked: Lsn,
    last_ack: Instant,
    last_commit: Instant,
    last_heartbeat: Instant,
    last_lag_check: Instant,
    schedule: croner::Cron,
    next_flush_at: Option<DateTime<Utc>>,
    /// A flush is due once a commit past this position was received (ZERO: at once).
    want_flush: Option<Lsn>,
    waiting: Vec<oneshot::Sender<Result<FlushSummary, String>>>,
    in_flight: Option<InFlight>,
    spool_bytes: u64,
    health: Arc<Health>,
    /// A failed flush is retried after a growing delay, not at the next trigger.
    flush_retry: Retrying,
    /// Sealing (with the mirror upload to the lake's store) and acknowledging.
    spool_retry: Retrying,
    backoff: crate::retry::Backoff,
}

fn message_kind(tag: u8) -> &'static str {
    match tag {
        b'I' => "insert",
        b'U' => "update",
        b'D' => "delete",
        b'T' => "truncate",
        b'B' => "begin",
        b'C' => "commit",
        b'R' => "relation",
        b'M' => "message",
        _ => "other",
    }
}

impl Consumer {
    async fn run(mut self, mut requests: mpsc::Receiver<FlushRequest>) -> Result<(), RunError> {
        loop {
            let token = self.waker.token();
            match self.repl.next_message(&token).await {
                Ok(Some(msg)) => {
                    let kind = message_kind(msg.first().copied().unwrap_or(0));
                    metrics::counter!(metric::EVENTS_RECEIVED, "type" => kind).increment(1);
                    metrics::counter!(metric::RECEIVED_BYTES).increment(msg.len() as u64);
                    match self.writer.receive(msg) {
                        Ok(Received::Committed { .. }) => self.last_commit = Instant::now(),
                        Ok(_) => {}
                        Err(e) => {
                            metrics::counter!(metric::ERRORS, "stage" => "spool").increment(1);
                            self.stop_after_error().await;
                            return Err(e.into());
                        }
                    }
                }
                Ok(None) if self.shutdown.is_cancelled() => break,
                Ok(None) => {}
                Err(e) if e.action() == Action::Reconnect => {
                    metrics::counter!(metric::ERRORS, "stage" => "source").increment(1);
                    if !self.reconnect(&e.to_string()).await? {
                        break;
                    }
                }
                Err(e) => {
                    metrics::counter!(metric::ERRORS, "stage" => "source").increment(1);
                    self.stop_after_error().await;
                    return Err(e.into());
                }
            }
            let mut asked = false;
            while let Ok(req) = requests.try_recv() {
                self.waiting.push(req.reply);
                asked = true;
            }
            if asked {
                self.request_flush_of_everything_committed().await;
            }
            match self.housekeeping().await {
                Ok(()) => {}
                Err(e) => match e.action() {
                    Action::Reconnect => {
                        if !self.reconnect(&e.to_string()).await? {
                            break;
                        }
                    }
                    Action::Backoff => {
                        metrics::counter!(metric::ERRORS, "stage" => "spool").increment(1);
                        let delay = self.spool_retry.failed(&self.health, &e);
                        // A requested flush waits for the spool; say so rather than hang.
                        for w in self.waiting.drain(..) {
                            let _ = w.send(Err(format!(
                                "{e} (retrying in {:.1} s; the flush follows once it succeeds)",
                                delay.as_secs_f64()
                            )));
                        }
                    }
                    Action::Stop => {
                        self.stop_after_error().await;
                        return Err(e);
                    }
                },
            }
        }
        self.stop().await
    }

    async fn housekeeping(&mut self) -> Result<(), RunError> {
        self.collect_flush().await?;
        if self.next_flush_at.is_some_and(|t| Utc::now() >= t) {
            tracing::info!("scheduled flush");
            self.next_flush_at = self.schedule.find_next_occurrence(&Utc::now(), false).ok();
            self.request_flush_of_everything_committed().await;
        }
        let spooled = self.spool_bytes + self.writer.open_bytes();
        if self.want_flush.is_none() && spooled >= self.max_spool_bytes {
            tracing::info!(
                bytes = spooled,
                "spool reached max_spool_bytes: flushing early"
            );
            self.want_flush = Some(Lsn::ZERO);
        }
        if !self.writer.in_transaction() && self.spool_retry.due() {
            let ack_due = self.last_ack.elapsed() >= self.ack_interval
                && (self.writer.last_end() > self.acked || self.repl.received_lsn() > self.acked);
            let flush_due = self.in_flight.is_none()
                && self.flush_retry.due()
                && self
                    .want_flush
                    .is_some_and(|after| self.writer.last_end() > after);
            if ack_due || flush_due {
                self.seal_and_ack().await?;
                self.spool_retry.succeeded(&self.health);
            }
            if flush_due {
                self.start_flush(self.acked);
            }
        }
        if self.last_commit.elapsed() >= self.ack_interval
            && self.last_heartbeat.elapsed() >= self.ack_interval
        {
            // Nothing published has committed for a while: a message makes a commit the
            // slot can be acknowledged to, so WAL written by other tables is released.
            self.last_heartbeat = Instant::now();
            let pipeline = self.pipeline.clone();
            tokio::spawn(async move {
                let result = async {
                    let client = pipeline.source().get().await?;
                    introspect::emit_marker(&client, "heartbeat").await
                }
                .await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            });
        }
        if self.last_lag_check.elapsed() >= Duration::from_secs(10) {
            self.last_lag_check = Instant::now();
            if let Ok(client) = self.pipeline.source().get().await {
                if let Ok(current) = introspect::current_wal_lsn(&client).await {
                    metrics::gauge!(metric::SLOT_LAG_BYTES)
                        .set(current.0.saturating_sub(self.acked.0) as f64);
                }
            }
        }
        Ok(())
    }

    async fn seal_and_ack(&mut self) -> Result<(), RunError> {
        let durable = self.writer.seal()?;
        self.pipeline.spool().make_durable().await?;
        crate::failpoint::hit(crate::failpoint::AFTER_SPOOL_SEAL);
        self.spool_bytes = spool_size(&self.pipeline);
        metrics::gauge!(metric::SPOOL_BYTES).set(self.spool_bytes as f64);
        // Between transactions with everything received sealed, nothing before the last
        // position the server reported is owed: acknowledging it releases WAL written by
        // unpublished tables, and lets a shutting-down server see us caught up.
        let durable = if self.writer.in_transaction() {
            durable
        } else {
            durable.max(self.repl.received_lsn())
        };
        if durable > self.acked {
            self.repl.ack(durable).await?;
            self.acked = durable;
            metrics::gauge!(metric::ACKED_LSN).set(durable.0 as f64);
            tracing::debug!(lsn = %durable, "acknowledged the slot");
        }
        self.last_ack = Instant::now();
        Ok(())
    }

    /// Marks a flush due once every transaction committed before now is received: a
    /// marker message is written, and the flush cuts after its commit.
    async fn request_flush_of_everything_committed(&mut self) {
        let marker = async {
            let client = self.pipeline.source().get().await?;
            introspect::emit_marker(&client, "flush").await
        }
        .await;
        let after = match marker {
            Ok(lsn) => lsn,
            Err(e) => {
                // The server is unreachable: flush what has arrived; the stream reconnects.
                tracing::warn!(error = %e, "could not mark the flush position; flushing what was received");
                Lsn::ZERO
            }
        };
        self.want_flush = Some(self.want_flush.map_or(after, |w| w.max(after)));
    }

    fn start_flush(&mut self, cut: Lsn) {
        self.want_flush = None;
        let waiters = std::mem::take(&mut self.waiting);
        let pipeline = self.pipeline.clone();
        tracing::info!(cut = %cut, "flush started");
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let flushed = pipeline.flush_to(cut).await?;
            let (rows, files) = match &flushed {
                Some(f) => (f.rows.values().sum(), f.files.clone()),
                None => (0, Vec::new()),
            };
            if let Some(f) = &flushed {
                for (table, n) in &f.rows {
                    metrics::counter!(metric::ROWS_WRITTEN, "table" => table.clone()).increment(*n);
                }
            }
            let catalog_error = match pipeline.after_commit(cut, &files).await {
                Ok(()) => None,
                Err(RunError::Catalog(e)) => Some(e.to_string()),
                Err(e) => return Err(e),
            };
            Ok(FlushSummary {
                cut,
                rows,
                files: files.len(),
                seconds: started.elapsed().as_secs_f64(),
                catalog_error,
            })
        });
        self.in_flight = Some((task, waiters));
    }

    /// Reports a finished flush to whoever asked for it; a failure that retrying cannot
    /// fix is returned.
    async fn collect_flush(&mut self) -> Result<(), RunError> {
        if !self
            .in_flight
            .as_ref()
            .is_some_and(|(t, _)| t.is_finished())
        {
            return Ok(());
        }
        match self.in_flight.take() {
            Some((task, waiters)) => self.report_flush(task, waiters).await,
            None => Ok(()),
        }
    }

    async fn report_flush(
        &mut self,
        task: JoinHandle<Result<FlushSummary, RunError>>,
        waiters: Vec<oneshot::Sender<Result<FlushSummary, String>>>,
    ) -> Result<(), RunError> {
        let result = match task.await {
            Ok(r) => r,
            Err(e) => Err(RunError::State(format!("flush task failed: {e}"))),
        };
        let mut fatal = None;
        let answer = match result {
            Ok(s) => {
                metrics::counter!(metric::FLUSHES, "result" => "ok").increment(1);
                metrics::gauge!(metric::LAST_FLUSH_TIMESTAMP).set(Utc::now().timestamp() as f64);
                metrics::gauge!(metric::LAST_FLUSH_DURATION).set(s.seconds);
                tracing::info!(cut = %s.cut, rows = s.rows, files = s.files, seconds = s.seconds, "flush done");
                self.flush_retry.succeeded(&self.health);
                match &s.catalog_error {
                    Some(e) => self
                        .health
                        .degrade("catalog", format!("{e} (retried by the next flush)")),
                    None => self.health.recover("catalog"),
                }
                Ok(s)
            }
            Err(e) => {
                metrics::counter!(metric::FLUSHES, "result" => "error").increment(1);
                metrics::counter!(metric::ERRORS, "stage" => "flush").increment(1);
                let message = e.to_string();
                let restored = match self.pipeline.repair_spool(&e).await {
                    Ok(r) => r,
                    Err(re) => {
                        tracing::error!(error = %re, "could not repair or record the damaged spool");
                        false
                    }
                };
                if restored || e.action().retries() {
                    // Nothing moved: the intent (if written) is finished by the retry.
                    let delay = self.flush_retry.failed(&self.health, &e);
                    self.want_flush.get_or_insert(Lsn::ZERO);
                    Err(format!(
                        "{message} (retrying in {:.1} s)",
                        delay.as_secs_f64()
                    ))
                } else {
                    tracing::error!(error = %e, "flush failed; stopping (no watermark moved)");
                    fatal = Some(e);
                    Err(message)
                }
            }
        };
        self.spool_bytes = spool_size(&self.pipeline);
        metrics::gauge!(metric::SPOOL_BYTES).set(self.spool_bytes as f64);
        for w in waiters {
            let _ = w.send(answer.clone());
        }
        fatal.map_or(Ok(()), Err)
    }

    /// Reconnects with exponential backoff; `false` when shutdown came first.
    async fn reconnect(&mut self, why: &str) -> Result<bool, RunError> {
        tracing::warn!(error = why, "replication connection lost; reconnecting");
        self.writer.discard_partial()?;
        self.health
            .degrade("source", format!("replication connection lost: {why}"));
        let mut delays = crate::retry::Backoff {
            min: self.backoff.min.min(Duration::from_millis(500)),
            max: self.backoff.max.min(Duration::from_secs(30)),
        }
        .delays();
        loop {
            let attempt = async {
                let mut repl = self.pipeline.connect_stream().await?;
                repl.start(self.writer.last_end()).await?;
                Ok::<_, RunError>(repl)
            };
            match attempt.await {
                Ok(repl) => {
                    self.repl = repl;
                    metrics::counter!(metric::RECONNECTS).increment(1);
                    self.health.recover("source");
                    tracing::info!(from = %self.writer.last_end(), "reconnected");
                    return Ok(true);
                }
                Err(e) if e.action() == Action::Stop && !matches!(e, RunError::Source(_)) => {
                    return Err(e);
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(30));
                    metrics::counter!(metric::RETRIES, "step" => "source").increment(1);
                    self.health.degrade("source", format!("reconnecting: {e}"));
                    tracing::warn!(error = %e, retry_in = ?delay, "reconnect failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => return Ok(false),
                    }
                }
            }
        }
    }

    /// Graceful stop: drop a half-received transaction, seal, acknowledge, finish a running flush.
    async fn stop(mut self) -> Result<(), RunError> {
        self.writer.discard_partial()?;
        let durable = self.writer.seal()?;
        self.pipeline.spool().make_durable().await?;
        if durable > self.acked {
            match self.repl.ack(durable).await {
                Ok(()) => self.acked = durable,
                Err(e) => {
                    tracing::warn!(error = %e, "could not acknowledge on shutdown; the next run resumes from the spool")
                }
            }
        }
        if let Some((task, waiters)) = self.in_flight.take() {
            tracing::info!("waiting for the running flush to finish");
            if let Err(e) = self.report_flush(task, waiters).await {
                tracing::error!(error = %e, "the last flush failed; the next run finishes it");
            }
        }
        for w in self.waiting.drain(..) {
            let _ = w.send(Err(
                "slot2lake is shutting down; the flush was not started".into()
            ));
        }
        tracing::info!(acked = %self.acked, "stopped");
        Ok(())
    }

    /// After a fatal error: answer waiting requests; a running flush keeps its intent.
    async fn stop_after_error(&mut self) {
        if let Some((task, waiters)) = self.in_flight.take() {
            if let Err(e) = self.report_flush(task, waiters).await {
                tracing::error!(error = %e, "the running flush failed too");
            }
        }
        for w in self.waiting.drain(..) {
            let _ = w.send(Err("slot2lake stopped after an error; see its log".into()));
        }
    }
}
