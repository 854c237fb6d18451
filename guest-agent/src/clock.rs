//! The agent's clocks.
//!
//! Samples are stamped with `CLOCK_MONOTONIC` (deltas, alignment with the host through
//! Ping/Pong) and `CLOCK_REALTIME` (a label only), read back to back through the OS, the same
//! way the bridge reads its own (`host-bridge/src/clock.rs`).

use protocol::{ClockReading, MonoNanos, UnixNanos};

/// The guest monotonic clock now.
#[must_use]
pub fn mono_now() -> MonoNanos {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    MonoNanos(timespec_ns(ts.tv_sec, ts.tv_nsec))
}

/// The guest wall clock now.
#[must_use]
pub fn unix_now() -> UnixNanos {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    UnixNanos(timespec_ns(ts.tv_sec, ts.tv_nsec))
}

/// Both clocks, monotonic first.
#[must_use]
pub fn reading() -> ClockReading {
    ClockReading {
        mono_ns: mono_now(),
        unix_ns: unix_now(),
    }
}

fn timespec_ns(sec: i64, nsec: i64) -> u64 {
    let sec = u64::try_from(sec).unwrap_or(0);
    let nsec = u64::try_from(nsec).unwrap_or(0);
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mono_clock_never_goes_backwards() {
        let a = mono_now();
        let b = mono_now();
        assert!(b >= a, "{b} < {a}");
        assert!(a.0 > 0);
    }
}
