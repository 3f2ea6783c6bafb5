//! Every refused request is visible: counted by reason (`tcb_ingress_refused_total`), logged with
//! the peer address, route and reason (at most [`LOG_BURST`] lines per [`LOG_WINDOW`], the rest
//! counted and reported in the next line), and repeated authentication failures from one address
//! are answered more and more slowly.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::dev::ServiceResponse;

use crate::ApiError;

/// Refusal log lines per window.
pub const LOG_BURST: u32 = 20;
pub const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Authentication failures from one address within [`FAILURE_WINDOW`] that are answered at once;
/// each one past them waits [`FAILURE_STEP`] longer, up to [`FAILURE_MAX_DELAY`].
pub const FREE_FAILURES: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
pub const FAILURE_STEP: Duration = Duration::from_millis(250);
pub const FAILURE_MAX_DELAY: Duration = Duration::from_secs(2);
/// Addresses remembered at most (a flood of addresses cannot grow the table without end).
const MAX_ADDRESSES: usize = 10_000;

/// A window counter for log lines.
pub(crate) struct LogLimiter {
    state: Mutex<(Instant, u32, u64)>,
}

impl LogLimiter {
    pub fn new() -> Self {
        Self {
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(suppressed since the last line)` when a line may be written at `now`.
    pub fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(s.0) >= LOG_WINDOW {
            *s = (now, 0, s.2);
        }
        if s.1 < LOG_BURST {
            s.1 += 1;
            Some(std::mem::take(&mut s.2))
        } else {
            s.2 += 1;
            None
        }
    }
}

/// Recent authentication failures per address.
pub(crate) struct AuthFailures {
    by_address: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AuthFailures {
    pub fn new() -> Self {
        Self {
            by_address: Mutex::new(HashMap::new()),
        }
    }

    /// Notes a failure from `ip` at `now`; how long its answer should wait.
    pub fn failed_at(&self, ip: IpAddr, now: Instant) -> Duration {
        let ip = source(ip);
        let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, (since, _)| now.duration_since(*since) < FAILURE_WINDOW);
            // Still full: the oldest window goes (never all of them, which would let a flood of
            // addresses wipe every counter, its own included).
            if map.len() >= MAX_ADDRESSES
                && let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, (since, _))| *since)
                    .map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        let past = entry.1.saturating_sub(FREE_FAILURES);
        (FAILURE_STEP * past).min(FAILURE_MAX_DELAY)
    }

    /// A success from `ip` forgets its failures.
    pub fn succeeded(&self, ip: IpAddr) {
        let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&source(ip));
    }
}

/// The source a failure counts against: the address, or for IPv6 its /64 (one host commonly holds
/// a whole /64, so single addresses would be free to rotate).
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::from(segments)
        }
    }
}

static LOG: std::sync::OnceLock<LogLimiter> = std::sync::OnceLock::new();

/// Counts and logs a 4xx answer.
pub(crate) fn observe<B>(response: &ServiceResponse<B>) {
    let status = response.status();
    if !status.is_client_error() {
        return;
    }
    let error = response
        .response()
        .error()
        .and_then(|e| e.as_error::<ApiError>());
    let reason = error.map_or("other", ApiError::code);
    tcb_telemetry::metrics::ingress_refused(reason);
    let Some(suppressed) = LOG.get_or_init(LogLimiter::new).allow_at(Instant::now()) else {
        return;
    };
    let request = response.request();
    let route: String = request.path().chars().take(200).collect();
    let message = match error {
        Some(e @ ApiError::Unauthorized { reason, .. }) => format!("{e}: {reason}"),
        Some(e) => e.to_string(),
        None => String::new(),
    };
    tracing::warn!(
        status = status.as_u16(),
        reason,
        peer = %request.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
        method = %request.method(),
        route = %route,
        message = %message,
        suppressed_since_last = suppressed,
        "webhook refused"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_limited_per_window_and_the_rest_counted() {
        let l = LogLimiter::new();
        let t0 = Instant::now();
        for _ in 0..LOG_BURST {
            assert_eq!(l.allow_at(t0), Some(0));
        }
        assert_eq!(l.allow_at(t0), None);
        assert_eq!(l.allow_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(
            l.allow_at(t0 + LOG_WINDOW),
            Some(2),
            "the next window reports the two"
        );
        assert_eq!(l.allow_at(t0 + LOG_WINDOW), Some(0));
    }

    #[test]
    fn repeated_failures_from_one_address_slow_down_and_a_success_forgets_them() {
        let f = AuthFailures::new();
        let ip: IpAddr = [192, 0, 2, 1].into();
        let other: IpAddr = [192, 0, 2, 2].into();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(f.failed_at(ip, t0), Duration::ZERO);
        }
        assert_eq!(f.failed_at(ip, t0), FAILURE_STEP);
        assert_eq!(f.failed_at(ip, t0), FAILURE_STEP * 2);
        for _ in 0..20 {
            f.failed_at(ip, t0);
        }
        assert_eq!(f.failed_at(ip, t0), FAILURE_MAX_DELAY);
        assert_eq!(
            f.failed_at(other, t0),
            Duration::ZERO,
            "another address is not slowed"
        );
        // IPv6 counts per /64.
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            f.failed_at(a, t0);
        }
        assert_eq!(f.failed_at(b, t0), FAILURE_STEP, "the same /64");
        assert_eq!(
            f.failed_at(ip, t0 + FAILURE_WINDOW),
            Duration::ZERO,
            "a new window"
        );
        for _ in 0..10 {
            f.failed_at(ip, t0 + FAILURE_WINDOW);
        }
        f.succeeded(ip);
        assert_eq!(f.failed_at(ip, t0 + FAILURE_WINDOW), Duration::ZERO);
    }
}
