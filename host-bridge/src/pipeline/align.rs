//! Time alignment: guest clock → host clock, counters → common window edges, pause detection
//! (DESIGN.md §7.1).
//!
//! The guest stamps its samples with its own `CLOCK_MONOTONIC`. The bridge maps them onto its
//! monotonic clock with an offset θ (host = guest + θ) estimated from clock probes:
//!
//! - A full NTP exchange (t0 guest send, t1 host receive, t2 host send, t3 guest receive) gives
//!   θ = ((t1 − t0) + (t2 − t3)) / 2 with error ≤ RTT / 2; the estimate with the smallest RTT
//!   wins ([`OffsetEstimator::observe_round_trip`]).
//!   Only the guest sees t3, so each Ping carries the t3 of the previous Pong
//!   (`Ping::prev_pong`); the recording holds the Pong's t0, t1, t2, which completes the exchange.
//!   Round trips older than the horizon are forgotten, so the estimate follows clock drift.
//! - Until a full exchange is known (the first Ping period of a connection), one-way
//!   observations t1 − t0 = θ + d (d ≥ 0 the transport delay) are used: their minimum over a
//!   sliding horizon is an upper bound of θ that is off by the smallest delay seen (tens of µs
//!   over vsock); the error is then reported as the configured one-way bound
//!   ([`OffsetEstimator::observe_one_way`]).
//!
//! A one-way observation far *above* the current estimate (by more than the pause tolerance)
//! means the guest clock lost time against the host (a paused VM whose clock stopped, a host
//! that slept): the estimator restarts from that observation and reports a discontinuity.

use std::collections::VecDeque;

/// Offset estimate: host = guest + `offset_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offset {
    /// θ in ns (host minus guest).
    pub offset_ns: i128,
    /// Bound of |θ̂ − θ| in ns.
    pub error_ns: u64,
}

/// What an observation did to the estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// The estimate was kept or refined.
    Refined,
    /// The clocks jumped against each other by more than the tolerance; the estimator
    /// restarted. Carries the jump in ns (positive: the guest clock lost time).
    Discontinuity(i128),
}

/// Sliding-minimum estimator of the guest→host clock offset.
#[derive(Clone, Debug)]
pub struct OffsetEstimator {
    horizon_ns: u64,
    jump_tolerance_ns: u64,
    one_way_error_ns: u64,
    /// (host time of the observation, t1 − t0), values increasing from front to back
    /// (monotone deque: the front is the minimum of the horizon).
    one_way: VecDeque<(u64, i128)>,
    /// Full round trips within the horizon: (host time t2, rtt, offset).
    round_trips: VecDeque<(u64, u64, i128)>,
    /// Host time of the last discontinuity: an exchange that started before it straddles a
    /// pause or a clock step and says nothing about the offset now.
    epoch_start_ns: u64,
}

impl OffsetEstimator {
    /// An estimator keeping one-way observations for `horizon_ns` of host time, restarting on
    /// jumps above `jump_tolerance_ns`, reporting `one_way_error_ns` as the one-way error.
    #[must_use]
    pub fn new(horizon_ns: u64, jump_tolerance_ns: u64, one_way_error_ns: u64) -> Self {
        Self {
            horizon_ns,
            jump_tolerance_ns,
            one_way_error_ns,
            one_way: VecDeque::new(),
            round_trips: VecDeque::new(),
            epoch_start_ns: 0,
        }
    }

    /// A one-way probe: sent at guest time `guest_send_ns`, received at host time
    /// `host_recv_ns`.
    pub fn observe_one_way(&mut self, guest_send_ns: u64, host_recv_ns: u64) -> Observed {
        let value = i128::from(host_recv_ns) - i128::from(guest_send_ns);
        let mut result = Observed::Refined;
        if let Some(&(_, current)) = self.one_way.front() {
            let jump = value - current;
            if jump.unsigned_abs() > u128::from(self.jump_tolerance_ns) {
                self.one_way.clear();
                self.round_trips.clear();
                self.epoch_start_ns = host_recv_ns;
                result = Observed::Discontinuity(jump);
            }
        }
        while self.one_way.back().is_some_and(|&(_, v)| v >= value) {
            self.one_way.pop_back();
        }
        self.one_way.push_back((host_recv_ns, value));
        let horizon_start = host_recv_ns.saturating_sub(self.horizon_ns);
        while self.one_way.len() > 1
            && self
                .one_way
                .front()
                .is_some_and(|&(t, _)| t < horizon_start)
        {
            self.one_way.pop_front();
        }
        result
    }

    /// A full NTP exchange (t0, t1, t2, t3). Keeps the estimate with the smallest round trip.
    pub fn observe_round_trip(&mut self, t0: u64, t1: u64, t2: u64, t3: u64) {
        if t1 < self.epoch_start_ns {
            return;
        }
        let rtt = t3.saturating_sub(t0).saturating_sub(t2.saturating_sub(t1));
        let offset = ((i128::from(t1) - i128::from(t0)) + (i128::from(t2) - i128::from(t3))) / 2;
        let horizon_start = t2.saturating_sub(self.horizon_ns);
        self.round_trips.retain(|&(t, _, _)| t >= horizon_start);
        /// Enough exchanges to ride out a few slow ones; older ones fall out of the horizon.
        const MAX_ROUND_TRIPS: usize = 64;
        if self.round_trips.len() == MAX_ROUND_TRIPS {
            self.round_trips.pop_front();
        }
        self.round_trips.push_back((t2, rtt, offset));
    }

    /// The current estimate, if any probe was seen.
    #[must_use]
    pub fn estimate(&self) -> Option<Offset> {
        if let Some(&(_, rtt, offset_ns)) = self.round_trips.iter().min_by_key(|&&(_, rtt, _)| rtt)
        {
            return Some(Offset {
                offset_ns,
                error_ns: rtt.div_ceil(2),
            });
        }
        self.one_way.front().map(|&(_, offset_ns)| Offset {
            offset_ns,
            error_ns: self.one_way_error_ns,
        })
    }

    /// Whether any probe was seen.
    #[must_use]
    pub fn has_estimate(&self) -> bool {
        !self.round_trips.is_empty() || !self.one_way.is_empty()
    }
}

/// Map a guest monotonic time to the host clock with `offset`, clamped to `[not_before,
/// not_after]` (the previous mapped sample of the stream, and the arrival time: a sample cannot
/// be taken after it arrived).
#[must_use]
pub fn to_host(guest_ns: u64, offset: Offset, not_before: u64, not_after: u64) -> u64 {
    let mapped = i128::from(guest_ns) + offset.offset_ns;
    let mapped = u64::try_from(mapped.max(0)).unwrap_or(u64::MAX);
    mapped.min(not_after).max(not_before)
}

/// Linear interpolation of a cumulative counter between `(t0, c0)` and `(t1, c1)` at `t`
/// (`t0 ≤ t ≤ t1`, `c0 ≤ c1`), rounded down. Monotone in `t`, so deltas between successive
/// edges are never negative and sum to `c1 − c0` exactly.
#[must_use]
pub fn interpolate(t0: u64, c0: u64, t1: u64, c1: u64, t: u64) -> u64 {
    if t >= t1 || t1 <= t0 {
        return c1;
    }
    if t <= t0 {
        return c0;
    }
    let dc = u128::from(c1.saturating_sub(c0));
    let part = dc * u128::from(t - t0) / u128::from(t1 - t0);
    c0 + u64::try_from(part).expect("part <= c1 - c0")
}

/// Whether two consecutive samples disagree on elapsed time: guest clock against mapped host
/// time, or CPU accounting (all `/proc/stat` fields, summed over `cpus`) against the guest
/// clock. Either means the VM did not run for part of the interval (paused VM, sleeping host).
#[must_use]
pub fn is_discontinuous(
    guest_elapsed_ns: u64,
    host_elapsed_ns: u64,
    accounted_us: u64,
    cpus: u32,
    tolerance_ns: u64,
) -> bool {
    if guest_elapsed_ns.abs_diff(host_elapsed_ns) > tolerance_ns {
        return true;
    }
    if cpus == 0 {
        return false;
    }
    let expected_us = u128::from(guest_elapsed_ns / 1_000) * u128::from(cpus);
    let accounted = u128::from(accounted_us);
    let tol_us = u128::from(tolerance_ns / 1_000) * u128::from(cpus);
    accounted + tol_us < expected_us
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_way_minimum_tracks_smallest_delay() {
        let mut e = OffsetEstimator::new(60_000_000_000, 1_000_000_000, 1_000_000);
        // θ = 5 s; delays 3 ms, 1 ms, 2 ms.
        for (g, d) in [
            (0u64, 3_000_000u64),
            (1_000_000_000, 1_000_000),
            (2_000_000_000, 2_000_000),
        ] {
            assert_eq!(
                e.observe_one_way(g, g + 5_000_000_000 + d),
                Observed::Refined
            );
        }
        let est = e.estimate().unwrap();
        assert_eq!(est.offset_ns, 5_001_000_000);
        assert_eq!(est.error_ns, 1_000_000);
    }

    #[test]
    fn jump_restarts_the_estimate() {
        let mut e = OffsetEstimator::new(60_000_000_000, 500_000_000, 1_000_000);
        e.observe_one_way(0, 100);
        // The guest clock stopped for 30 s.
        let r = e.observe_one_way(1_000_000_000, 31_000_000_100);
        assert_eq!(r, Observed::Discontinuity(30_000_000_000));
        assert_eq!(e.estimate().unwrap().offset_ns, 30_000_000_100);
    }

    #[test]
    fn round_trip_keeps_minimum_rtt() {
        let mut e = OffsetEstimator::new(1_000_000, 1, 1);
        // θ = 1000; up 10, down 10, processing 5.
        e.observe_round_trip(0, 1_010, 1_015, 25);
        // Asymmetric and slower: up 100, down 10.
        e.observe_round_trip(100, 1_200, 1_205, 215);
        let est = e.estimate().unwrap();
        assert_eq!(est.offset_ns, 1_000);
        assert_eq!(est.error_ns, 10);
    }

    #[test]
    fn round_trip_forgets_exchanges_older_than_the_horizon() {
        let mut e = OffsetEstimator::new(100, 1_000_000, 1);
        e.observe_round_trip(0, 1_010, 1_015, 25); // θ = 1000, rtt 20
        e.observe_round_trip(500, 1_600, 1_605, 615); // θ = 1045, rtt 110, 590 ns later
        assert_eq!(e.estimate().unwrap().offset_ns, 1_045);
    }

    #[test]
    fn round_trip_straddling_a_discontinuity_is_ignored() {
        let mut e = OffsetEstimator::new(1_000_000_000, 1_000, 1);
        e.observe_one_way(0, 1_010); // θ ≈ 1000
        // The guest clock stopped for 1 ms (a pause): the next probe jumps.
        e.observe_one_way(10_000, 1_012_010);
        // An exchange whose Pong left before the jump was seen must not count.
        e.observe_round_trip(0, 1_010, 1_015, 10_025);
        assert_eq!(e.estimate().unwrap().offset_ns, 1_002_010);
    }

    #[test]
    fn interpolation_is_monotone_and_exact_at_ends() {
        assert_eq!(interpolate(10, 100, 20, 200, 15), 150);
        assert_eq!(interpolate(10, 100, 20, 200, 20), 200);
        assert_eq!(interpolate(10, 100, 20, 200, 10), 100);
        assert_eq!(interpolate(0, 0, 3, 1, 1), 0);
    }

    #[test]
    fn pause_is_detected_by_missing_cpu_accounting() {
        // 10 s of guest time, 4 CPUs, but only 1 s of CPU accounted.
        assert!(is_discontinuous(
            10_000_000_000,
            10_000_000_000,
            4_000_000,
            4,
            1_000_000_000
        ));
        assert!(!is_discontinuous(
            10_000_000_000,
            10_000_000_000,
            40_000_000,
            4,
            1_000_000_000
        ));
        // Guest clock stopped.
        assert!(is_discontinuous(
            1_000_000_000,
            20_000_000_000,
            4_000_000,
            4,
            1_000_000_000
        ));
    }
}
