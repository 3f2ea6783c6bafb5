//! What the admin endpoints report on besides the broker: a part of the process that can be not
//! ready (it should get no work now: `/readyz` 503) or wedged (it makes no progress and should be
//! restarted: `/healthz` 503).

/// A part of the process that reports its own health.
pub trait Probe: Send + Sync + 'static {
    /// Why this part should get no work now, if so (e.g. a circuit breaker is open).
    fn unready(&self) -> Option<String> {
        None
    }
    /// Why this part is stuck, if so (work is waiting and nothing has moved for too long).
    fn wedged(&self) -> Option<String> {
        None
    }
}
