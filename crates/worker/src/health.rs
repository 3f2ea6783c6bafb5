//! The worker's health: circuit breakers for systemic failures, and progress for liveness.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tcb_telemetry::health::Probe;
use tokio_util::sync::CancellationToken;

/// First pause after a systemic failure; it doubles while the failure persists.
const COOLDOWN_INITIAL: Duration = Duration::from_secs(5);
const COOLDOWN_MAX: Duration = Duration::from_secs(30);

/// Pauses work that cannot succeed for anyone right now (Tradecloud refuses the credentials, the
/// bus is down) instead of burning triggers on it. Open: callers wait; after the cooldown one
/// caller probes; its success closes the breaker, a failure opens it again for twice as long.
pub struct Breaker {
    name: &'static str,
    state: Mutex<BreakerState>,
    changed: tokio::sync::Notify,
}

/// Transient failures in a row, of this many different orders, that count as the whole service
/// failing (one order failing alone never opens the breaker).
pub const FAILURES_IN_A_ROW: u32 = 5;

#[derive(Default)]
struct BreakerState {
    /// The orders whose requests failed transiently since the last success.
    failing: std::collections::BTreeSet<String>,
    /// Successful requests so far (to tell a trigger's own systemic-looking failure from everyone's).
    successes: u64,
    /// Since when it is open.
    opened_at: Option<Instant>,
    /// Why it is open, and until when nobody probes.
    open: Option<(String, Instant)>,
    cooldown: Duration,
    probing: bool,
}

/// What a caller of [`Breaker::pass`] may do.
pub enum Pass<'a> {
    /// Closed: go on.
    Closed,
    /// Open, cooldown over: this caller probes. Report with [`Breaker::close`] or
    /// [`Breaker::trip`]; dropping the probe without a report lets another caller probe.
    Probe(ProbeGuard<'a>),
}

pub struct ProbeGuard<'a>(&'a Breaker);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.state.lock() {
            s.probing = false;
        }
        self.0.changed.notify_waiters();
    }
}

impl Breaker {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            state: Mutex::new(BreakerState {
                cooldown: COOLDOWN_INITIAL,
                ..BreakerState::default()
            }),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Opens the breaker with `reason`; while it is open already (other requests failing
    /// alike), only the reason changes.
    pub fn trip(&self, reason: &str) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        match &mut s.open {
            Some((current, _)) => *current = reason.to_owned(),
            None => {
                s.cooldown = COOLDOWN_INITIAL;
                s.opened_at = Some(Instant::now());
                s.open = Some((reason.to_owned(), Instant::now() + COOLDOWN_INITIAL));
                tracing::error!(
                    breaker = self.name,
                    reason,
                    "pausing: a failure that no retry of one trigger can fix"
                );
                tcb_telemetry::metrics::breaker_open(self.name, true);
            }
        }
    }

    /// The probe failed alike: stay open, twice as long as before.
    pub fn probe_failed(&self, reason: &str) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        s.cooldown = (s.cooldown * 2).min(COOLDOWN_MAX);
        let until = Instant::now() + s.cooldown;
        s.open = Some((reason.to_owned(), until));
        tracing::warn!(
            breaker = self.name,
            reason,
            retry_in_s = s.cooldown.as_secs(),
            "still failing"
        );
    }

    /// A transient failure of one request: after [`FAILURES_IN_A_ROW`] of them with no success
    /// between (different orders failing alike), the service as a whole is failing: the breaker
    /// opens. Returns whether it is open.
    pub fn failure(&self, order: &str, error: &str) -> bool {
        let failures = match self.state.lock() {
            Ok(mut s) => {
                s.failing.insert(order.to_owned());
                s.failing.len() as u32
            }
            Err(_) => return false,
        };
        if failures >= FAILURES_IN_A_ROW {
            self.trip(&format!(
                "requests for {failures} orders in a row failed; the last: {error}"
            ));
            true
        } else {
            false
        }
    }

    /// Closes the breaker (a request went through).
    pub fn close(&self) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        s.failing.clear();
        s.successes += 1;
        s.opened_at = None;
        if s.open.take().is_some() {
            tracing::info!(
                breaker = self.name,
                "resuming: the systemic failure is gone"
            );
            tcb_telemetry::metrics::breaker_open(self.name, false);
        }
        s.cooldown = COOLDOWN_INITIAL;
        drop(s);
        self.changed.notify_waiters();
    }

    /// Successful requests so far.
    pub fn successes(&self) -> u64 {
        self.state.lock().map(|s| s.successes).unwrap_or_default()
    }

    /// How long it has been open, if it is.
    pub fn open_for(&self) -> Option<Duration> {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.opened_at.map(|at| at.elapsed()))
    }

    /// Waits while the breaker is open, without probing (for work that another path probes:
    /// fetching while the bus is down); `false` when cancelled.
    pub async fn wait_closed(&self, cancel: &CancellationToken) -> bool {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.reason().is_none() {
                return true;
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = &mut changed => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Why it is open, if it is.
    pub fn reason(&self) -> Option<String> {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.open.as_ref().map(|(r, _)| format!("{}: {r}", self.name)))
    }

    /// Waits while the breaker is open and another caller probes; `None` when cancelled.
    pub async fn pass(&self, cancel: &CancellationToken) -> Option<Pass<'_>> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let mut s = self.state.lock().ok()?;
                match &s.open {
                    None => return Some(Pass::Closed),
                    Some((_, until)) if !s.probing && Instant::now() >= *until => {
                        s.probing = true;
                        return Some(Pass::Probe(ProbeGuard(self)));
                    }
                    // Another caller probes: wait for its report, not for a deadline.
                    Some(_) if s.probing => Duration::from_secs(5),
                    Some((_, until)) => until.saturating_duration_since(Instant::now()),
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = &mut changed => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
            }
        }
    }
}

/// Work held and the last time any of it moved, for liveness.
#[derive(Default)]
pub struct Progress {
    held: AtomicUsize,
    last_step: Mutex<Option<Instant>>,
}

impl Progress {
    pub fn hold(&self) {
        self.held.fetch_add(1, Ordering::SeqCst);
        self.step();
    }

    pub fn release(&self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
        self.step();
    }

    /// Something moved: a trigger settled, an attempt ended.
    pub fn step(&self) {
        if let Ok(mut last) = self.last_step.lock() {
            *last = Some(Instant::now());
        }
        tcb_telemetry::metrics::worker_progress();
    }

    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    fn idle_for(&self) -> Duration {
        self.last_step
            .lock()
            .ok()
            .and_then(|l| l.map(|t| t.elapsed()))
            .unwrap_or_default()
    }
}

/// The worker as the admin endpoints see it.
pub struct WorkerHealth {
    pub tradecloud: Breaker,
    pub bus: Breaker,
    pub progress: Progress,
    /// Work held without any progress for this long is a wedged worker.
    pub stall_timeout: Duration,
}

impl Probe for WorkerHealth {
    fn unready(&self) -> Option<String> {
        self.tradecloud.reason().or_else(|| self.bus.reason())
    }

    fn wedged(&self) -> Option<String> {
        // The bus paused for this long will not heal by waiting (a dead embedded writer, a
        // dead-letter topic that refuses): a restart may.
        if let Some(open) = self.bus.open_for()
            && open > self.stall_timeout
        {
            return Some(format!(
                "the bus has refused work for {} s: {}",
                open.as_secs(),
                self.bus.reason().unwrap_or_default()
            ));
        }
        let held = self.progress.held();
        let idle = self.progress.idle_for();
        (held > 0 && idle > self.stall_timeout && self.unready().is_none()).then(|| {
            format!(
                "the worker holds {held} trigger(s) and nothing moved for {} s",
                idle.as_secs()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tripped_breaker_lets_one_probe_through_after_the_cooldown() {
        let b = std::sync::Arc::new(Breaker::new("tradecloud"));
        let cancel = CancellationToken::new();
        assert!(matches!(b.pass(&cancel).await, Some(Pass::Closed)));
        b.trip("credentials refused");
        assert_eq!(
            b.reason().as_deref(),
            Some("tradecloud: credentials refused")
        );
        let started = Instant::now();
        let probe = b.pass(&cancel).await.unwrap();
        assert!(matches!(probe, Pass::Probe(_)));
        assert!(started.elapsed() >= COOLDOWN_INITIAL);
        let other = {
            let (b, c) = (b.clone(), cancel.clone());
            tokio::spawn(async move { matches!(b.pass(&c).await, Some(Pass::Closed)) })
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!other.is_finished(), "waits while the probe is out");
        b.close();
        drop(probe);
        assert!(other.await.unwrap(), "the probe's success lets it through");
    }

    #[test]
    fn failures_in_a_row_open_it_and_a_success_resets_the_count() {
        let b = Breaker::new("tradecloud");
        for _ in 0..20 {
            assert!(
                !b.failure("one-order", "500"),
                "one order alone never opens it"
            );
        }
        b.close();
        for i in 1..FAILURES_IN_A_ROW {
            assert!(!b.failure(&format!("o-{i}"), "503"));
        }
        b.close();
        for i in 1..FAILURES_IN_A_ROW {
            assert!(!b.failure(&format!("o-{i}"), "503"));
        }
        assert!(b.failure("o-last", "503"));
        assert!(
            b.reason()
                .unwrap()
                .contains("requests for 5 orders in a row failed")
        );
    }

    #[test]
    fn failed_probes_double_the_cooldown_and_close_resets_it() {
        let b = Breaker::new("bus");
        b.trip("down");
        b.trip("down for another request");
        assert_eq!(
            b.state.lock().unwrap().cooldown,
            COOLDOWN_INITIAL,
            "requests failing alike while open do not extend the pause"
        );
        b.probe_failed("still down");
        assert_eq!(b.state.lock().unwrap().cooldown, COOLDOWN_INITIAL * 2);
        b.close();
        assert!(b.reason().is_none());
        assert_eq!(b.state.lock().unwrap().cooldown, COOLDOWN_INITIAL);
    }

    #[test]
    fn wedged_only_when_work_is_held_and_nothing_moves() {
        let h = WorkerHealth {
            tradecloud: Breaker::new("tradecloud"),
            bus: Breaker::new("bus"),
            progress: Progress::default(),
            stall_timeout: Duration::ZERO,
        };
        assert!(h.wedged().is_none(), "nothing held");
        h.progress.hold();
        std::thread::sleep(Duration::from_millis(5));
        assert!(h.wedged().is_some());
        h.tradecloud.trip("paused on purpose");
        assert!(h.wedged().is_none(), "a paused worker is not wedged");
        assert!(h.unready().is_some());
    }
}
