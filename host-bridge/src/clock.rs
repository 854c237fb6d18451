//! The bridge's clocks.
//!
//! Everything is stamped on one host monotonic time line: `CLOCK_MONOTONIC` read once through the
//! OS when the process starts, advanced with `std::time::Instant`. Reading the OS clock (rather
//! than using `Instant` alone, whose origin is private to the process) puts stamps from before
//! and after a bridge restart on the same host boot on one line; advancing with `Instant` keeps
//! every reader in the process (guest arrivals, power sources) on exactly the same clock.
//! Wall-clock time is only a label.

use std::sync::OnceLock;
use std::time::Instant;

use protocol::{MonoNanos, UnixNanos};

static ANCHOR: OnceLock<(MonoNanos, Instant)> = OnceLock::new();

/// The host monotonic clock now.
#[must_use]
pub fn mono_now() -> MonoNanos {
    let (mono, at) = *ANCHOR.get_or_init(|| (os_monotonic(), Instant::now()));
    let since = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
    MonoNanos(mono.0.saturating_add(since))
}

fn os_monotonic() -> MonoNanos {
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

/// A wall-clock instant as UTC text in `strftime` format `fmt` (e.g. `%Y-%m-%d %H:%M:%S`).
/// The only place the bridge turns Unix time into a calendar date.
#[must_use]
pub fn utc(unix: UnixNanos, fmt: &str) -> String {
    let secs = i64::try_from(unix.0 / 1_000_000_000).unwrap_or(i64::MAX);
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::MAX)
        .strftime(fmt)
        .to_string()
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
    fn utc_formats_calendar_dates() {
        // 2026-11-28 11:42:35 UTC
        let t = UnixNanos(1_795_866_155_000_000_000);
        assert_eq!(utc(t, "%Y-%m-%d %H:%M:%S"), "2026-11-28 11:42:35");
        assert_eq!(utc(UnixNanos(0), "%Y%m%d-%H%M%S"), "19700101-000000");
        // 2000-02-29 (a leap day of a century divisible by 400) and 2100-03-01.
        assert_eq!(
            utc(UnixNanos(951_782_400_000_000_000), "%Y-%m-%d"),
            "2000-02-29"
        );
        assert_eq!(
            utc(UnixNanos(4_107_542_400_000_000_000), "%Y-%m-%d"),
            "2100-03-01"
        );
    }

    #[test]
    fn mono_now_is_monotonic_and_near_the_os_clock() {
        let a = mono_now();
        let os = os_monotonic();
        let b = mono_now();
        assert!(b >= a);
        assert!(
            os.0.abs_diff(b.0) < 1_000_000_000,
            "anchored clock drifted from the OS clock"
        );
    }
}
