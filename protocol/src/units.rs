//! Quantities as types.
//!
//! Every number that crosses the wire or lands in a ledger carries its unit in its type, so
//! microseconds of CPU can never be added to microjoules of energy by accident. Where a value
//! mirrors a kernel file the kernel's unit is kept (`usage_usec` → [`CpuMicros`]).
//!
//! Arithmetic on these types is defined here once, and it never wraps or panics: `+`, `+=` and
//! `Sum` saturate at `u64::MAX` (counters from a peer or a recording are untrusted input, and a
//! saturated figure is visibly wrong where a wrapped one would look plausible); `checked_*`
//! says when a subtraction would go below zero; [`MicroJoules::prorate`] scales by a ratio in
//! 128-bit arithmetic.

use serde::{Deserialize, Serialize};

/// `v × num / den` in 128-bit arithmetic, rounded down, saturating at `u64::MAX`; zero when
/// `den` is zero. What every unit's `prorate` does, for the plain counts that have no unit type
/// (a CPU-time share's numerator and denominator, say).
#[must_use]
pub fn scale(v: u64, num: u64, den: u64) -> u64 {
    if den == 0 {
        return 0;
    }
    u64::try_from(u128::from(v) * u128::from(num) / u128::from(den)).unwrap_or(u64::MAX)
}

macro_rules! unit {
    ($(#[$doc:meta])* $name:ident, $suffix:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        pub struct $name(pub u64);

        impl $name {
            /// Zero of this unit.
            pub const ZERO: Self = Self(0);

            /// `self - earlier`, or `None` when the counter went backwards (a reset).
            #[must_use]
            pub fn checked_delta(self, earlier: Self) -> Option<Self> {
                self.0.checked_sub(earlier.0).map(Self)
            }

            /// Delta of a cumulative counter with Prometheus reset semantics: when the counter
            /// went backwards it restarted from zero, so the delta is the new value.
            #[must_use]
            pub fn reset_aware_delta(self, earlier: Self) -> Self {
                self.checked_delta(earlier).unwrap_or(self)
            }

            /// Saturating addition (what `+` does).
            #[must_use]
            pub fn saturating_add(self, other: Self) -> Self {
                Self(self.0.saturating_add(other.0))
            }

            /// `self - other`, saturating at zero.
            #[must_use]
            pub fn saturating_sub(self, other: Self) -> Self {
                Self(self.0.saturating_sub(other.0))
            }

            /// `self × num / den` in 128-bit arithmetic, rounded down, saturating at
            /// `u64::MAX`; zero when `den` is zero. The one place quantities are scaled by a
            /// ratio (a share, a covered fraction of a window).
            #[must_use]
            pub fn prorate(self, num: u64, den: u64) -> Self {
                Self(scale(self.0, num, den))
            }
        }

        impl std::ops::Add for $name {
            type Output = Self;
            /// Saturating: see the module documentation.
            fn add(self, rhs: Self) -> Self {
                self.saturating_add(rhs)
            }
        }

        impl std::ops::AddAssign for $name {
            fn add_assign(&mut self, rhs: Self) {
                *self = self.saturating_add(rhs);
            }
        }

        impl std::iter::Sum for $name {
            fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
                iter.fold(Self::ZERO, Self::saturating_add)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{} {}", self.0, $suffix)
            }
        }
    };
}

unit!(
    /// Energy in microjoules (µJ). Energy is always an integer number of µJ in joulebridge.
    MicroJoules,
    "µJ"
);
unit!(
    /// CPU time in microseconds, as cgroup v2 `cpu.stat` `usage_usec` reports it.
    CpuMicros,
    "µs"
);
unit!(
    /// A size or a count of bytes.
    Bytes,
    "B"
);
unit!(
    /// A reading of a monotonic clock (`CLOCK_MONOTONIC`), in nanoseconds since an arbitrary,
    /// per-machine origin. Only differences on the same clock mean anything.
    MonoNanos,
    "ns (monotonic)"
);
unit!(
    /// Wall-clock time in nanoseconds since the Unix epoch. A label, never used for deltas.
    UnixNanos,
    "ns (unix)"
);

impl MicroJoules {
    /// Delta of a counter that wraps at `range` (RAPL `max_energy_range_uj`).
    ///
    /// Returns `None` when `earlier` lies above `range`: that is not a wrap but a reset (or a
    /// changed range), which the caller reports as such.
    #[must_use]
    pub fn wrapping_delta(self, earlier: Self, range: Self) -> Option<Self> {
        if self.0 >= earlier.0 {
            Some(Self(self.0 - earlier.0))
        } else {
            range
                .0
                .checked_sub(earlier.0)
                .and_then(|rest| rest.checked_add(self.0))
                .map(Self)
        }
    }

    /// Average power in watts of this energy spread over `seconds` (0 for an empty span);
    /// display only.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn average_watts(self, seconds: f64) -> f64 {
        if seconds > 0.0 {
            self.0 as f64 / 1e6 / seconds
        } else {
            0.0
        }
    }

    /// This energy in joules, for display only (never for arithmetic on the ledger).
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn as_joules_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

impl CpuMicros {
    /// This CPU time in seconds, for display only.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

impl MonoNanos {
    /// Nanoseconds from `earlier` to `self`, saturating at zero.
    #[must_use]
    pub fn since(self, earlier: Self) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_delta_wraps_at_range() {
        let range = MicroJoules(262_143_328_850);
        let before = MicroJoules(262_143_328_000);
        let after = MicroJoules(150);
        assert_eq!(
            after.wrapping_delta(before, range),
            Some(MicroJoules(1_000))
        );
    }

    #[test]
    fn wrapping_delta_outside_range_is_reset() {
        assert_eq!(
            MicroJoules(5).wrapping_delta(MicroJoules(100), MicroJoules(50)),
            None
        );
    }

    #[test]
    fn addition_saturates_instead_of_wrapping() {
        let max = CpuMicros(u64::MAX);
        assert_eq!(max + CpuMicros(1), max);
        let mut acc = MicroJoules(u64::MAX - 1);
        acc += MicroJoules(5);
        assert_eq!(acc, MicroJoules(u64::MAX));
        assert_eq!([max, max].into_iter().sum::<CpuMicros>(), max);
        assert_eq!(CpuMicros(3).saturating_sub(CpuMicros(5)), CpuMicros::ZERO);
    }

    #[test]
    fn prorate_rounds_down_and_survives_large_products() {
        assert_eq!(MicroJoules(10).prorate(1, 3), MicroJoules(3));
        assert_eq!(
            MicroJoules(u64::MAX).prorate(u64::MAX, u64::MAX),
            MicroJoules(u64::MAX)
        );
        assert_eq!(MicroJoules(7).prorate(1, 0), MicroJoules::ZERO);
        assert!((MicroJoules(2_000_000).average_watts(2.0) - 1.0).abs() < 1e-12);
        assert!(MicroJoules(5).average_watts(0.0).abs() < f64::EPSILON);
    }

    #[test]
    fn reset_aware_delta_restarts_from_zero() {
        assert_eq!(
            CpuMicros(30).reset_aware_delta(CpuMicros(1_000)),
            CpuMicros(30)
        );
        assert_eq!(
            CpuMicros(1_030).reset_aware_delta(CpuMicros(1_000)),
            CpuMicros(30)
        );
    }
}
