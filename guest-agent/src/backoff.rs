//! Capped exponential back-off for the agent's two retry loops: dialing the bridge
//! ([`crate::sinks::stream`], with jitter, so agents of many VMs do not reconnect in step) and
//! reconnecting to the container engine ([`crate::sources::docker`], without).
//!
//! The shape is mini-redis's `accept` back-off: the delay doubles per failure up to a cap and
//! starts over after a session that worked.

use std::time::Duration;

/// Capped exponential back-off, optionally with jitter, reset after a healthy session.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    jitter: bool,
}

impl Backoff {
    /// Starts at `initial`, doubles per call of [`Backoff::next_delay`], never exceeds `max`
    /// (an `initial` above `max` is lowered to it). No jitter.
    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.min(max);
        Self {
            initial,
            max,
            next: initial,
            jitter: false,
        }
    }

    /// Full jitter in the upper half: each delay is drawn uniformly from `[d/2, d]`, where `d`
    /// is the delay [`Backoff::new`] alone would give.
    #[must_use]
    pub fn with_jitter(self) -> Self {
        Self {
            jitter: true,
            ..self
        }
    }

    /// The delay to wait now; the base of the following one doubles (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        if !self.jitter {
            return base;
        }
        let half = base / 2;
        let jitter_ns = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::random_range(0..=jitter_ns))
    }

    /// Back to the initial delay (after a session that worked).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let delays: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn backoff_initial_above_cap_is_capped() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn backoff_doubles_to_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30)).with_jitter();
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(250) && delays[0] <= Duration::from_millis(500));
        assert!(
            delays[1] >= Duration::from_millis(500) && delays[1] <= Duration::from_millis(1000)
        );
        for d in &delays[7..] {
            assert!(
                *d >= Duration::from_secs(15) && *d <= Duration::from_secs(30),
                "{d:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
    }
}
