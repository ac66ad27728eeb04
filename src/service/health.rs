//! What `GET /health` reports, and the steps being retried that make it degraded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::retry::Backoff;
use crate::telemetry::metric;

/// The consumer's health: starting, ok, or degraded with one reason per failing step.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    degraded: Mutex<BTreeMap<&'static str, String>>,
}

/// What `/health` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthReport {
    /// Recovery or the first snapshot is still running.
    Starting,
    /// Streaming, and every step succeeds.
    Ok,
    /// Streaming, while some steps fail and are retried: `step: reason` lines.
    Degraded(Vec<String>),
}

impl Health {
    /// The consumer streams.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// `step` fails for `reason` and is being retried.
    pub fn degrade(&self, step: &'static str, reason: String) {
        metrics::gauge!(metric::DEGRADED, "step" => step).set(1.0);
        if let Ok(mut d) = self.degraded.lock() {
            d.insert(step, reason);
        }
    }

    /// `step` succeeded again.
    pub fn recover(&self, step: &'static str) {
        if let Ok(mut d) = self.degraded.lock() {
            if d.remove(step).is_some() {
                metrics::gauge!(metric::DEGRADED, "step" => step).set(0.0);
                tracing::info!(step, "recovered");
            }
        }
    }

    /// The current state.
    pub fn report(&self) -> HealthReport {
        if !self.ready.load(Ordering::Relaxed) {
            return HealthReport::Starting;
        }
        let degraded = self
            .degraded
            .lock()
            .map(|d| d.iter().map(|(k, v)| format!("{k}: {v}")).collect())
            .unwrap_or_default();
        match degraded {
            d if Vec::is_empty(&d) => HealthReport::Ok,
            d => HealthReport::Degraded(d),
        }
    }
}

/// A step that failed and is tried again after a growing delay.
pub struct Retrying {
    step: &'static str,
    backoff: Backoff,
    delays: Option<Box<dyn Iterator<Item = Duration> + Send>>,
    next: Option<Instant>,
}

impl Retrying {
    /// No failure yet.
    pub fn new(step: &'static str, backoff: Backoff) -> Self {
        Self {
            step,
            backoff,
            delays: None,
            next: None,
        }
    }

    /// Whether the step may run now (no failure, or its delay has passed).
    pub fn due(&self) -> bool {
        self.next.is_none_or(|t| Instant::now() >= t)
    }

    /// Records a failure: degraded until it succeeds; returns the delay before the next try.
    pub fn failed(&mut self, health: &Health, error: &dyn std::fmt::Display) -> Duration {
        let backoff = self.backoff;
        let delay = self
            .delays
            .get_or_insert_with(|| Box::new(backoff.delays()))
            .next()
            .unwrap_or(backoff.max);
        self.next = Some(Instant::now() + delay);
        metrics::counter!(metric::RETRIES, "step" => self.step).increment(1);
        health.degrade(self.step, error.to_string());
        tracing::warn!(step = self.step, error = %error, retry_in = ?delay, "failed; retrying");
        delay
    }

    /// Records a success: the delays start over.
    pub fn succeeded(&mut self, health: &Health) {
        self.delays = None;
        self.next = None;
        health.recover(self.step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degraded_until_every_failing_step_recovers() {
        let health = Health::default();
        assert_eq!(health.report(), HealthReport::Starting);
        health.set_ready();
        assert_eq!(health.report(), HealthReport::Ok);
        let backoff = Backoff {
            min: Duration::from_secs(60),
            max: Duration::from_secs(600),
        };
        let mut flush = Retrying::new("flush", backoff);
        let mut catalog = Retrying::new("catalog", backoff);
        assert!(flush.due());
        let first = flush.failed(&health, &"S3 unreachable");
        assert!(!flush.due(), "a failed step waits for its delay");
        let second = flush.failed(&health, &"S3 unreachable");
        assert!(second > first, "{first:?} then {second:?}");
        catalog.failed(&health, &"glue timeout");
        assert_eq!(
            health.report(),
            HealthReport::Degraded(vec![
                "catalog: glue timeout".into(),
                "flush: S3 unreachable".into()
            ])
        );
        flush.succeeded(&health);
        assert!(flush.due());
        assert_eq!(
            health.report(),
            HealthReport::Degraded(vec!["catalog: glue timeout".into()])
        );
        catalog.succeeded(&health);
        assert_eq!(health.report(), HealthReport::Ok);
        // After a success the delays start from the minimum again.
        let again = flush.failed(&health, &"S3 unreachable");
        assert!(again < second, "{again:?} vs {second:?}");
    }
}
