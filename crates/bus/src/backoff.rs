//! The workspace's one back-off: exponential, capped, with jitter.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential back-off between retries: the base delay starts at `initial` and doubles after each
/// wait up to `max`; each actual delay is drawn uniformly from the upper half of the base
/// ("equal jitter"), so that many clients retrying at once spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    base: Duration,
}

impl Backoff {
    /// `initial` is raised to 1 ms and `max` to `initial` when smaller: a zero or inverted range
    /// would retry in a hot loop. (Configs are validated before this, so that is a last guard.)
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        let max = max.max(initial);
        Self {
            initial,
            max,
            base: initial,
        }
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.base = self.initial;
    }

    /// The base of the next delay (for logs: "retrying in about N ms").
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The next delay to wait; doubles the base for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base;
        self.base = (self.base * 2).min(self.max);
        let half = base / 2;
        let jitter_nanos = fastrand::u64(0..=half.as_nanos().min(u128::from(u64::MAX)) as u64);
        half + Duration::from_nanos(jitter_nanos)
    }

    /// Sleeps the next delay; `false` when `cancel` fired first.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        for base in [100, 200, 350, 350] {
            assert_eq!(b.base(), Duration::from_millis(base));
            let d = b.next_delay();
            let base = Duration::from_millis(base);
            assert!(
                d >= base / 2 && d <= base,
                "{d:?} outside [{:?}, {base:?}]",
                base / 2
            );
        }
        b.reset();
        assert_eq!(b.base(), Duration::from_millis(100));
    }

    #[test]
    fn a_zero_or_inverted_range_never_spins() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.base(), Duration::from_millis(1));
        b.next_delay();
        assert_eq!(b.base(), Duration::from_millis(1));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            seen.insert(Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay());
        }
        assert!(
            seen.len() > 10,
            "50 draws gave only {} distinct delays",
            seen.len()
        );
    }

    #[tokio::test]
    async fn wait_stops_on_cancel() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!b.wait(&cancel).await);
    }
}
