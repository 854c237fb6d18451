//! The bridge's clocks.
//!
//! Everything is stamped with `CLOCK_MONOTONIC` read through the OS (not `std::time::Instant`,
//! whose origin is private to the process), so stamps from before and after a bridge restart
//! on the same host boot are on one time line. Wall-clock time is only a label.

use protocol::{MonoNanos, UnixNanos};

/// The host monotonic clock now.
#[must_use]
pub fn mono_now() -> MonoNanos {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    MonoNanos(timespec_ns(ts.tv_sec(), ts.tv_nsec()))
}

/// The wall clock now.
#[must_use]
pub fn unix_now() -> UnixNanos {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME)
        .expect("CLOCK_REALTIME is always available");
    UnixNanos(timespec_ns(ts.tv_sec(), ts.tv_nsec()))
}

fn timespec_ns(sec: i64, nsec: i64) -> u64 {
    let sec = u64::try_from(sec).unwrap_or(0);
    let nsec = u64::try_from(nsec).unwrap_or(0);
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}
