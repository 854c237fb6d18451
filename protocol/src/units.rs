//! Quantities as types.
//!
//! Every number that crosses the wire or lands in a ledger carries its unit in its type, so
//! microseconds of CPU can never be added to microjoules of energy by accident. Where a value
//! mirrors a kernel file the kernel's unit is kept (`usage_usec` → [`CpuMicros`]).

use serde::{Deserialize, Serialize};

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

            /// Saturating addition.
            #[must_use]
            pub fn saturating_add(self, other: Self) -> Self {
                Self(self.0.saturating_add(other.0))
            }
        }

        impl std::ops::Add for $name {
            type Output = Self;
            fn add(self, rhs: Self) -> Self {
                Self(self.0 + rhs.0)
            }
        }

        impl std::ops::AddAssign for $name {
            fn add_assign(&mut self, rhs: Self) {
                self.0 += rhs.0;
            }
        }

        impl std::iter::Sum for $name {
            fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
                Self(iter.map(|v| v.0).sum())
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
