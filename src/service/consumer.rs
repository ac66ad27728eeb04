//! The streaming loop both modes share: receive into the spool, seal and acknowledge,
//! start flushes and feed them sealed segments, reconnect, stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::health::{Health, Retrying};
use super::stall::StallWatch;
use super::{FlushRequest, FlushSummary, Waker};
use crate::catalog::CatalogError;
use crate::config::Schedule;
use crate::flush::commit::Committed;
use crate::lsn::Lsn;
use crate::pipeline::{Pipeline, RunError, RunReport};
use crate::retry::{Action, Classify};
use crate::sink::WrittenFile;
use crate::source::replication::ReplicationStream;
use crate::source::{introspect, SourceError};
use crate::spool::{Received, Segment, SpoolWriter};
use crate::telemetry::metric;
use pg_walstream::CancellationToken;

/// `run --once` seals spool segments at least this often, so encoding follows streaming.
const ONCE_SEGMENT: u64 = 8 * 1024 * 1024;

/// Wakes the consumer every second, so timers run while the server is silent, and
/// `LOOK_EVERY` after a look was put off.
fn spawn_ticker(waker: Arc<Waker>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => waker.wake(),
                _ = waker.soon.notified() => {
                    tokio::select! {
                        _ = tokio::time::sleep(LOOK_EVERY) => waker.wake(),
                        _ = shutdown.cancelled() => return,
                    }
                }
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

/// Where a flush's outcome goes: callers of `POST /flush` waiting for it.
type Waiters = Vec<oneshot::Sender<Result<FlushSummary, String>>>;

/// The callers waiting for a running flush, shared with its task: it answers them once
/// the flush is committed, so the maintenance after it does not hold them.
#[derive(Clone)]
struct FlushWaiters(Arc<std::sync::Mutex<Waiters>>);

impl FlushWaiters {
    fn new(waiters: Waiters) -> Self {
        Self(Arc::new(std::sync::Mutex::new(waiters)))
    }

    /// Sends `answer` to everyone still waiting.
    fn answer(&self, answer: &Result<FlushSummary, String>) {
        // A panic elsewhere cannot leave a half-updated list: sending is all it does.
        let waiters = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for w in waiters {
            let _ = w.send(answer.clone());
        }
    }
}

/// What ends the consumer, and what it does besides streaming.
pub(super) enum Until {
    /// SIGTERM or SIGINT (`run`): flushes on the schedule, on request and when the spool
    /// is full; the slot is acknowledged to the sealed spool every `ack_interval`.
    Signal {
        schedule: Box<Schedule>,
        next_flush_at: Option<DateTime<Utc>>,
    },
    /// The first flush committed (`run --once`): the slot is acknowledged to its cut only,
    /// and reconnecting stops at the run's retry budget.
    CaughtUp { give_up_at: Instant },
}

/// A flush whose files are being encoded while streaming goes on; its commit and the
/// steps after it run in the same task.
struct FlushJob {
    cut: Lsn,
    /// Open while segments before the cut are still to come.
    feed: Option<std::sync::mpsc::Sender<Segment>>,
    task: JoinHandle<Result<FlushOutcome, RunError>>,
    /// Set as the task ends (its result is then awaited, not polled).
    ended: Arc<AtomicBool>,
    waiters: FlushWaiters,
}

/// A flush task's result.
struct FlushOutcome {
    cut: Lsn,
    /// `None`: every table was already past the cut.
    committed: Option<Committed>,
    /// The data is committed; the catalog update failed (the next flush retries it).
    catalog_error: Option<CatalogError>,
    /// `[maintenance] interval`'s compaction after the flush failed (retried after the
    /// next one); the flush stands.
    maintenance_error: Option<String>,
    seconds: f64,
}

impl FlushOutcome {
    fn summary(&self) -> FlushSummary {
        let (rows, files) = self.committed.as_ref().map_or((0, 0), |c| {
            (c.flushed.rows.values().sum(), c.flushed.files.len())
        });
        FlushSummary {
            cut: self.cut,
            rows,
            files,
            seconds: self.seconds,
            catalog_error: self.catalog_error.as_ref().map(|e| e.to_string()),
        }
    }
}

/// Timers of the streaming loop.
struct Clocks {
    last_ack: Instant,
    last_commit: Instant,
    last_heartbeat: Instant,
    last_lag_check: Instant,
}

pub(super) struct Consumer {
    pipeline: Arc<Pipeline>,
    repl: ReplicationStream,
    writer: SpoolWriter,
    waker: Arc<Waker>,
    until: Until,
    ack_interval: Duration,
    max_spool_bytes: u64,
    acked: Lsn,
    clocks: Clocks,
    /// A flush is due once a commit past this position was received (ZERO: at once).
    pub(super) want_flush: Option<Lsn>,
    waiting: Waiters,
    flushing: Option<FlushJob>,
    spool_bytes: u64,
    health: Arc<Health>,
    /// A failed flush is retried after a growing delay, not at the next trigger.
    flush_retry: Retrying,
    /// Sealing (with the mirror upload to the lake's store) and acknowledging.
    spool_retry: Retrying,
    backoff: crate::retry::Backoff,
    /// Files written before streaming (snapshots, a finished intent), for the catalog
    /// step of the first flush that succeeds.
    pub(super) uncataloged: Vec<WrittenFile>,
    /// `run --once`: what it did; set once its flush is committed and acknowledged.
    pub(super) report: RunReport,
    done: bool,
    /// Whether the server still serves the stream.
    stall: StallWatch,
}

/// Wakes the loop when a flush task ends, however it ends. The flag is set first: the
/// loop may run before the task counts as finished, and must not wait for its next tick.
struct WakeOnDrop(Arc<Waker>, Arc<AtomicBool>);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        self.1.store(true, Ordering::Release);
        self.0.wake();
    }
}

/// How often, at most, the loop looks at its timers between transactions.
const LOOK_EVERY: Duration = Duration::from_millis(10);

/// Message kinds, as `slot2lake_events_received_total{type}` labels them.
const KINDS: [&str; 9] = [
    "insert", "update", "delete", "truncate", "begin", "commit", "relation", "message", "other",
];

fn message_kind(tag: u8) -> usize {
    match tag {
        b'I' => 0,
        b'U' => 1,
        b'D' => 2,
        b'T' => 3,
        b'B' => 4,
        b'C' => 5,
        b'R' => 6,
        b'M' => 7,
        _ => 8,
    }
}

/// Messages received since they were last added to the metrics (a labelled counter
/// per message costs a registry lookup each).
#[derive(Default)]
struct MessageCounts {
    by_kind: [u64; KINDS.len()],
    bytes: u64,
}

impl MessageCounts {
    fn add(&mut self, msg: &[u8]) {
        self.by_kind[message_kind(msg.first().copied().unwrap_or(0))] += 1;
        self.bytes += msg.len() as u64;
    }

    fn record(&mut self) {
        for (kind, n) in KINDS.iter().zip(self.by_kind) {
            if n > 0 {
                metrics::counter!(metric::EVENTS_RECEIVED, "type" => *kind).increment(n);
            }
        }
        metrics::counter!(metric::RECEIVED_BYTES).increment(self.bytes);
        *self = Self::default();
    }
}

/// What the loop sees between messages, for [`decide`].
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    in_transaction: bool,
    spool_retry_due: bool,
    flush_retry_due: bool,
    /// `run --once`: the slot is acknowledged to the committed cut only.
    once: bool,
    ack_interval_passed: bool,
    /// End of the last commit received.
    last_end: Lsn,
    /// The last position the server reported.
    received: Lsn,
    acked: Lsn,
    /// The running flush: its cut, and whether segments before it are still to come.
    flushing: Option<(Lsn, bool)>,
    /// A flush is wanted once a commit past this position is received (ZERO: at once).
    want_flush: Option<Lsn>,
}

/// What to do about it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Steps {
    /// Seal the open segment and make the spool durable (`run` also acknowledges).
    seal: bool,
    /// Close the running flush's feed: every segment before its cut is sealed.
    close_feed: bool,
    /// Start a flush to this cut; `true`: segments before it are still to come.
    start: Option<(Lsn, bool)>,
}

/// Between whole transactions only (a segment holds whole transactions), and not while
/// the spool's last failure waits out its backoff: seal when the slot is due an
/// acknowledgement, when the running flush's cut was passed, or before a flush whose
/// target is already received (it cuts at the end of what is received); start a wanted
/// flush at once, fed as segments seal, when its target is still ahead.
fn decide(s: &Seen) -> Steps {
    if s.in_transaction || !s.spool_retry_due {
        return Steps::default();
    }
    let ack_due =
        !s.once && s.ack_interval_passed && (s.last_end > s.acked || s.received > s.acked);
    let fed = matches!(s.flushing, Some((cut, true)) if s.last_end > cut);
    let target = s
        .want_flush
        .filter(|_| s.flushing.is_none() && s.flush_retry_due);
    let received = target.is_some_and(|t| t == Lsn::ZERO || s.last_end > t);
    Steps {
        seal: ack_due || fed || received,
        close_feed: fed,
        start: target.map(|t| {
            if received {
                (s.last_end, false)
            } else {
                (t, true)
            }
        }),
    }
}

impl Consumer {
    /// Starts streaming from `start` (everything before it is in the spool or the lake).
    pub(super) async fn start(
        pipeline: Arc<Pipeline>,
        repl: ReplicationStream,
        start: Lsn,
        until: Until,
        waker: Arc<Waker>,
        health: Arc<Health>,
    ) -> Result<Self, RunError> {
        let config = pipeline.config();
        let repl = repl.start(start).await?;
        let segment_size = match until {
            Until::Signal { .. } => config.spool.segment_size.0,
            // Small segments, so encoding follows the stream closely.
            Until::CaughtUp { .. } => config.spool.segment_size.0.min(ONCE_SEGMENT),
        };
        let mut writer = pipeline.spool_writer(start, segment_size);
        writer.keep_sealed();
        spawn_ticker(waker.clone(), waker.shutdown.clone());
        let backoff = config.retry.backoff();
        health.set_ready();
        let now = Instant::now();
        Ok(Self {
            ack_interval: config.spool.ack_interval,
            max_spool_bytes: config.spool.max_spool_bytes.0,
            spool_bytes: spool_size(&pipeline),
            pipeline,
            repl,
            writer,
            waker,
            until,
            acked: start,
            clocks: Clocks {
                last_ack: now,
                last_commit: now,
                last_heartbeat: now,
                last_lag_check: now,
            },
            want_flush: None,
            waiting: Vec::new(),
            flushing: None,
            health,
            flush_retry: Retrying::new("flush", backoff),
            spool_retry: Retrying::new("spool", backoff),
            backoff,
            uncataloged: Vec::new(),
            report: RunReport::default(),
            done: false,
            stall: StallWatch::default(),
        })
    }

    fn once(&self) -> bool {
        matches!(self.until, Until::CaughtUp { .. })
    }

    pub(super) async fn run(
        mut self,
        mut requests: mpsc::Receiver<FlushRequest>,
    ) -> Result<RunReport, RunError> {
        let mut counts = MessageCounts::default();
        let mut last_look = Instant::now();
        while !self.done {
            let token = self.waker.token();
            // Timers, requests and flush steps are looked at when woken (every second,
            // or by a request) and between transactions at most every LOOK_EVERY: not
            // after each of millions of messages.
            let mut look = true;
            match self.repl.next_message(&token).await {
                Ok(Some(msg)) => {
                    counts.add(&msg);
                    match self.writer.receive(msg) {
                        Ok(Received::Committed { .. }) => {
                            let now = Instant::now();
                            self.clocks.last_commit = now;
                            look = now.duration_since(last_look) >= LOOK_EVERY;
                            if !look {
                                self.waker.wake_soon();
                            }
                        }
                        Ok(_) => look = false,
                        Err(e) => {
                            metrics::counter!(metric::ERRORS, "stage" => "spool").increment(1);
                            self.stop_after_error().await;
                            return Err(e.into());
                        }
                    }
                }
                Ok(None) if self.waker.shutdown.is_cancelled() => break,
                Ok(None) => {}
                Err(e) if e.action() == Action::Reconnect => {
                    metrics::counter!(metric::ERRORS, "stage" => "source").increment(1);
                    if !self.reconnect(e.into()).await? {
                        break;
                    }
                }
                Err(e) => {
                    metrics::counter!(metric::ERRORS, "stage" => "source").increment(1);
                    self.stop_after_error().await;
                    return Err(e.into());
                }
            }
            if !look && !token.is_cancelled() {
                continue;
            }
            last_look = Instant::now();
            counts.record();
            let mut asked = false;
            while let Ok(req) = requests.try_recv() {
                self.waiting.push(req.reply);
                asked = true;
            }
            if asked {
                self.request_flush_of_everything_committed().await;
            }
            if let Err(e) = self.collect_flush().await {
                self.stop_after_error().await;
                return Err(e);
            }
            match self.housekeeping().await {
                Ok(()) => {}
                Err(e) => match e.action() {
                    Action::Reconnect => {
                        if !self.reconnect(e).await? {
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
        counts.record();
        self.stop().await
    }

    async fn housekeeping(&mut self) -> Result<(), RunError> {
        if let Until::Signal {
            schedule,
            next_flush_at,
        } = &mut self.until
        {
            if next_flush_at.is_some_and(|t| Utc::now() >= t) {
                tracing::info!("scheduled flush");
                *next_flush_at = schedule.next_after(&Utc::now());
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
        }
        self.feed_flush();
        let steps = decide(&Seen {
            in_transaction: self.writer.in_transaction(),
            spool_retry_due: self.spool_retry.due(),
            flush_retry_due: self.flush_retry.due(),
            once: self.once(),
            ack_interval_passed: self.clocks.last_ack.elapsed() >= self.ack_interval,
            last_end: self.writer.last_end(),
            received: self.repl.received_lsn(),
            acked: self.acked,
            flushing: self.flushing.as_ref().map(|j| (j.cut, j.feed.is_some())),
            want_flush: self.want_flush,
        });
        if steps.seal {
            self.seal_and_ack().await?;
            self.spool_retry.succeeded(&self.health);
        }
        self.feed_flush();
        if steps.close_feed {
            if let Some(job) = self.flushing.as_mut() {
                job.feed = None;
            }
        }
        if let Some((cut, open)) = steps.start {
            self.start_flush(cut, open)?;
        }
        if self.clocks.last_commit.elapsed() >= self.ack_interval
            && self.clocks.last_heartbeat.elapsed() >= self.ack_interval
        {
            // Nothing published has committed for a while: a message makes a commit the
            // slot can be acknowledged to, so WAL written by other tables is released.
            self.clocks.last_heartbeat = Instant::now();
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
        if self.clocks.last_lag_check.elapsed() >= Duration::from_secs(10) {
            self.clocks.last_lag_check = Instant::now();
            self.look_at_server().await?;
        }
        Ok(())
    }

    /// The slot's lag for `/metrics`, and whether the server still serves the stream (a
    /// failed look is skipped: the next one comes in 10 s).
    async fn look_at_server(&mut self) -> Result<(), SourceError> {
        let source = &self.pipeline.config().source;
        let Ok(client) = self.pipeline.source().get().await else {
            return Ok(());
        };
        let looked = introspect::position_and_slot_activity(&client, &source.slot).await;
        let Ok((current, active)) = looked else {
            return Ok(());
        };
        metrics::gauge!(metric::SLOT_LAG_BYTES).set(current.0.saturating_sub(self.acked.0) as f64);
        let stalled =
            active.and_then(|a| self.stall.observe(a, Instant::now(), source.query_timeout));
        stalled.map_or(Ok(()), |why| Err(SourceError::Lost(why)))
    }

    /// Hands segments sealed since the last call to the flush being encoded.
    fn feed_flush(&mut self) {
        let sealed = self.writer.take_sealed();
        if let Some(feed) = self.flushing.as_ref().and_then(|j| j.feed.as_ref()) {
            for seg in sealed {
                // A worker that stopped early reports why through its task.
                let _ = feed.send(seg);
            }
        }
    }

    /// Seals the open segment and makes the spool durable; `run` then acknowledges the
    /// slot to what is sealed (`run --once` only to its committed cut).
    async fn seal_and_ack(&mut self) -> Result<(), RunError> {
        let durable = self.writer.seal()?;
        self.pipeline.spool().make_durable().await?;
        crate::failpoint::hit(crate::failpoint::AFTER_SPOOL_SEAL);
        self.spool_bytes = spool_size(&self.pipeline);
        metrics::gauge!(metric::SPOOL_BYTES).set(self.spool_bytes as f64);
        self.clocks.last_ack = Instant::now();
        if self.once() {
            return Ok(());
        }
        // Between transactions with everything received sealed, nothing before the last
        // position the server reported is owed: acknowledging it releases WAL written by
        // unpublished tables, and lets a shutting-down server see us caught up.
        let durable = if self.writer.in_transaction() {
            durable
        } else {
            durable.max(self.repl.received_lsn())
        };
        self.ack(durable).await
    }

    async fn ack(&mut self, lsn: Lsn) -> Result<(), RunError> {
        if lsn > self.acked {
            self.repl.ack(lsn).await?;
            self.acked = lsn;
            metrics::gauge!(metric::ACKED_LSN).set(lsn.0 as f64);
            tracing::debug!(lsn = %lsn, "acknowledged the slot");
        }
        Ok(())
    }

    /// Marks a flush due once every transaction committed before now is received: a
    /// marker message is written, and the flush cuts at it.
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

    /// Starts a flush to `cut` from the sealed segments; `open`: more segments before the
    /// cut are still to come (fed as they seal).
    fn start_flush(&mut self, cut: Lsn, open: bool) -> Result<(), RunError> {
        // Segments sealed so far are all listed by the spool.
        let _ = self.writer.take_sealed();
        let segments = self.pipeline.spool().segments()?;
        self.want_flush = None;
        let (feed, segments_rx) = std::sync::mpsc::channel();
        for seg in segments {
            let _ = feed.send(seg);
        }
        let pipeline = self.pipeline.clone();
        let mut files = self.uncataloged.clone();
        let waker = self.waker.clone();
        let ended = Arc::new(AtomicBool::new(false));
        let ended_by_task = ended.clone();
        let waiters = FlushWaiters::new(std::mem::take(&mut self.waiting));
        let answered_by_task = waiters.clone();
        tracing::info!(cut = %cut, "flush started");
        let task = tokio::spawn(async move {
            // The loop collects the outcome at once instead of at its next tick.
            let _wake = WakeOnDrop(waker, ended_by_task);
            let started = Instant::now();
            let committed = pipeline.flush(cut, segments_rx).await?;
            files.extend(match &committed {
                Some(c) => {
                    for (table, n) in &c.flushed.rows {
                        metrics::counter!(metric::ROWS_WRITTEN, "table" => table.clone())
                            .increment(*n);
                    }
                    c.flushed.files.clone()
                }
                None => Vec::new(),
            });
            let catalog_error = match pipeline.after_commit(cut, &files).await {
                Ok(()) => None,
                Err(RunError::Catalog(e)) => Some(e),
                Err(e) => return Err(e),
            };
            let mut outcome = FlushOutcome {
                cut,
                committed,
                catalog_error,
                maintenance_error: None,
                seconds: started.elapsed().as_secs_f64(),
            };
            metrics::counter!(metric::FLUSHES, "result" => "ok").increment(1);
            metrics::gauge!(metric::LAST_FLUSH_TIMESTAMP).set(Utc::now().timestamp() as f64);
            metrics::gauge!(metric::LAST_FLUSH_DURATION).set(outcome.seconds);
            let s = outcome.summary();
            tracing::info!(cut = %s.cut, rows = s.rows, files = s.files, seconds = s.seconds, "flush done");
            answered_by_task.answer(&Ok(s));
            crate::failpoint::pause(crate::failpoint::BEFORE_MAINTENANCE).await;
            let maintenance =
                crate::compact::compact_if_due(pipeline.config(), pipeline.lake()).await;
            outcome.maintenance_error = match maintenance {
                Ok(None) => None,
                Ok(Some(report)) => {
                    tracing::info!(report = ?report, "maintenance ([maintenance] interval): compaction done");
                    None
                }
                Err(e) => Some(e.to_string()),
            };
            Ok(outcome)
        });
        self.flushing = Some(FlushJob {
            cut,
            feed: open.then_some(feed),
            task,
            ended,
            waiters,
        });
        Ok(())
    }

    /// Reports a finished flush to whoever asked for it; a failure that retrying cannot
    /// fix is returned (`run --once`: any failure; the run is retried from recovery).
    async fn collect_flush(&mut self) -> Result<(), RunError> {
        let ended = |j: &FlushJob| j.task.is_finished() || j.ended.load(Ordering::Acquire);
        if !self.flushing.as_ref().is_some_and(ended) {
            return Ok(());
        }
        match self.flushing.take() {
            Some(job) => self.report_flush(job).await,
            None => Ok(()),
        }
    }

    async fn report_flush(&mut self, job: FlushJob) -> Result<(), RunError> {
        let result = match job.task.await {
            Ok(r) => r,
            Err(e) => Err(RunError::Task(format!("flush task failed: {e}"))),
        };
        let mut fatal = None;
        // The callers of a flush that committed were answered by its task.
        let failure = match result {
            Ok(outcome) => {
                self.flush_retry.succeeded(&self.health);
                self.uncataloged.clear();
                match &outcome.catalog_error {
                    Some(e) => self
                        .health
                        .degrade("catalog", format!("{e} (retried by the next flush)")),
                    None => self.health.recover("catalog"),
                }
                match &outcome.maintenance_error {
                    Some(e) => {
                        metrics::counter!(metric::ERRORS, "stage" => "maintenance").increment(1);
                        tracing::warn!(error = %e, "maintenance after the flush failed; retried after the next flush");
                        self.health
                            .degrade("maintenance", format!("{e} (retried after the next flush)"));
                    }
                    None => self.health.recover("maintenance"),
                }
                if self.once() {
                    fatal = self.finish_once(outcome).await.err();
                }
                None
            }
            Err(e) => {
                metrics::counter!(metric::FLUSHES, "result" => "error").increment(1);
                metrics::counter!(metric::ERRORS, "stage" => "flush").increment(1);
                let message = e.to_string();
                // `run --once` returns the error to its retrying driver, which repairs.
                let restored = !self.once()
                    && match self.pipeline.repair_spool(&e).await {
                        Ok(r) => r,
                        Err(re) => {
                            tracing::error!(error = %re, "could not repair or record the damaged spool");
                            false
                        }
                    };
                if !self.once() && (restored || e.action().retries()) {
                    // Nothing moved: the intent (if written) is finished by the retry.
                    let delay = self.flush_retry.failed(&self.health, &e);
                    self.want_flush.get_or_insert(Lsn::ZERO);
                    Some(format!(
                        "{message} (retrying in {:.1} s)",
                        delay.as_secs_f64()
                    ))
                } else {
                    if !self.once() {
                        tracing::error!(error = %e, "flush failed; stopping (no watermark moved)");
                    }
                    fatal = Some(e);
                    Some(message)
                }
            }
        };
        self.spool_bytes = spool_size(&self.pipeline);
        metrics::gauge!(metric::SPOOL_BYTES).set(self.spool_bytes as f64);
        if let Some(message) = failure {
            job.waiters.answer(&Err(message));
        }
        fatal.map_or(Ok(()), Err)
    }

    /// `run --once` after its flush: the slot acknowledged to the cut (the spool keeps
    /// what came after it), the report filled in; the loop ends.
    async fn finish_once(&mut self, outcome: FlushOutcome) -> Result<(), RunError> {
        self.ack(outcome.cut).await?;
        self.pipeline.wait_for_ack(outcome.cut).await;
        crate::failpoint::hit(crate::failpoint::AFTER_ACK);
        self.report.acked = Some(outcome.cut);
        self.report.changes_received = self.writer.changes_written();
        if let Some(c) = outcome.committed {
            self.report.flushed_rows = c.flushed.rows;
            self.report.files.extend(c.flushed.files);
        }
        self.done = true;
        match outcome.catalog_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Reconnects with exponential backoff; `false` when shutdown came first.
    async fn reconnect(&mut self, why: RunError) -> Result<bool, RunError> {
        tracing::warn!(error = %why, "replication connection lost; reconnecting");
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
                let repl = self.pipeline.connect_stream().await?;
                Ok::<_, RunError>(repl.start(self.writer.last_end()).await?)
            };
            match attempt.await {
                Ok(repl) => {
                    self.repl = repl;
                    self.stall = StallWatch::default();
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
                    if let Until::CaughtUp { give_up_at } = self.until {
                        if Instant::now() + delay > give_up_at {
                            return Err(e);
                        }
                    }
                    metrics::counter!(metric::RETRIES, "step" => "source").increment(1);
                    self.health.degrade("source", format!("reconnecting: {e}"));
                    tracing::warn!(error = %e, retry_in = ?delay, "reconnect failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.waker.shutdown.cancelled() => return Ok(false),
                    }
                }
            }
        }
    }

    /// Graceful stop: drop a half-received transaction, seal, acknowledge, finish a running flush.
    async fn stop(mut self) -> Result<RunReport, RunError> {
        self.writer.discard_partial()?;
        let durable = self.writer.seal()?;
        self.pipeline.spool().make_durable().await?;
        if !self.once() {
            if let Err(e) = self.ack(durable).await {
                tracing::warn!(error = %e, "could not acknowledge on shutdown; the next run resumes from the spool")
            }
        }
        self.end_flush("slot2lake is shutting down", true).await;
        for w in self.waiting.drain(..) {
            let _ = w.send(Err(
                "slot2lake is shutting down; the flush was not started".into()
            ));
        }
        tracing::info!(acked = %self.acked, "stopped");
        Ok(self.report)
    }

    /// Ends the running flush as the loop stops. It completes when every segment before
    /// its cut is sealed (`sealed`: everything received is); otherwise it is abandoned
    /// before it commits, since committing would move the watermarks past changes not
    /// yet spooled, and the next run takes those changes again.
    async fn end_flush(&mut self, why: &str, sealed: bool) {
        let Some(mut job) = self.flushing.take() else {
            return;
        };
        if let Some(feed) = job.feed.take() {
            if !sealed || self.writer.last_end() <= job.cut {
                job.task.abort();
                tracing::warn!(cut = %job.cut, "{why}: the running flush had not received everything before its cut; the next run takes it again");
                job.waiters.answer(&Err(format!(
                    "{why}; the flush had not received everything before its cut and is taken again by the next run"
                )));
                return;
            }
            for seg in self.writer.take_sealed() {
                let _ = feed.send(seg);
            }
        }
        tracing::info!("waiting for the running flush to finish");
        if let Err(e) = self.report_flush(job).await {
            tracing::error!(error = %e, "the running flush failed; the next run finishes it");
        }
    }

    /// After a fatal error: answer waiting requests; a running flush keeps its intent.
    async fn stop_after_error(&mut self) {
        self.end_flush("slot2lake stopped after an error", false)
            .await;
        for w in self.waiting.drain(..) {
            let _ = w.send(Err("slot2lake stopped after an error; see its log".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_seals_acknowledges_and_starts_flushes_only_when_it_should() {
        let base = Seen {
            spool_retry_due: true,
            flush_retry_due: true,
            last_end: Lsn(100),
            received: Lsn(100),
            acked: Lsn(100),
            ..Default::default()
        };
        let nothing = Steps::default();
        let seal = Steps {
            seal: true,
            ..Default::default()
        };
        let cases: Vec<(&str, Seen, Steps)> = vec![
            ("idle", base, nothing),
            (
                "run: new data and the ack interval passed",
                Seen {
                    ack_interval_passed: true,
                    last_end: Lsn(150),
                    ..base
                },
                seal,
            ),
            (
                "run: the server moved on (other tables' WAL) and the interval passed",
                Seen {
                    ack_interval_passed: true,
                    received: Lsn(180),
                    ..base
                },
                seal,
            ),
            (
                "run --once acknowledges only its cut",
                Seen {
                    once: true,
                    ack_interval_passed: true,
                    last_end: Lsn(150),
                    ..base
                },
                nothing,
            ),
            (
                "mid-transaction nothing is sealed or started",
                Seen {
                    in_transaction: true,
                    ack_interval_passed: true,
                    last_end: Lsn(150),
                    want_flush: Some(Lsn::ZERO),
                    ..base
                },
                nothing,
            ),
            (
                "the spool's last failure is still backing off",
                Seen {
                    spool_retry_due: false,
                    want_flush: Some(Lsn::ZERO),
                    ..base
                },
                nothing,
            ),
            (
                "a flush whose marker is ahead starts at once, fed as segments seal",
                Seen {
                    want_flush: Some(Lsn(300)),
                    ..base
                },
                Steps {
                    start: Some((Lsn(300), true)),
                    ..nothing
                },
            ),
            (
                "a flush whose marker was received cuts at what is received, sealed first",
                Seen {
                    want_flush: Some(Lsn(90)),
                    ..base
                },
                Steps {
                    seal: true,
                    start: Some((Lsn(100), false)),
                    ..nothing
                },
            ),
            (
                "a flush without a marker (server unreachable) takes what is received",
                Seen {
                    want_flush: Some(Lsn::ZERO),
                    ..base
                },
                Steps {
                    seal: true,
                    start: Some((Lsn(100), false)),
                    ..nothing
                },
            ),
            (
                "a commit past the running flush's cut closes its feed",
                Seen {
                    flushing: Some((Lsn(90), true)),
                    ..base
                },
                Steps {
                    seal: true,
                    close_feed: true,
                    ..nothing
                },
            ),
            (
                "the running flush's cut is not reached yet",
                Seen {
                    flushing: Some((Lsn(120), true)),
                    ..base
                },
                nothing,
            ),
            (
                "one flush at a time",
                Seen {
                    flushing: Some((Lsn(90), false)),
                    want_flush: Some(Lsn::ZERO),
                    ..base
                },
                nothing,
            ),
            (
                "a failed flush waits out its backoff",
                Seen {
                    flush_retry_due: false,
                    want_flush: Some(Lsn::ZERO),
                    ..base
                },
                nothing,
            ),
        ];
        for (name, seen, want) in cases {
            assert_eq!(decide(&seen), want, "{name}");
        }
    }
}
