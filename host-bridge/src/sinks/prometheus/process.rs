//! The bridge's own CPU time and memory, read at scrape time (as every Prometheus client
//! library does for its `process_*` metrics).

/// CPU and memory of this process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Peak RSS, bytes.
    pub max_rss_bytes: u64,
    /// Current RSS, bytes (Linux only).
    pub rss_bytes: Option<u64>,
}

impl ProcessStats {
    /// Read this process's CPU time and memory. Failures read as zero/absent: self-telemetry
    /// must never fail a scrape.
    #[must_use]
    pub fn read() -> Self {
        use nix::sys::resource::{UsageWho, getrusage};
        let usage = getrusage(UsageWho::RUSAGE_SELF).ok();
        let secs = |tv: nix::sys::time::TimeVal| {
            #[allow(clippy::cast_precision_loss)] // CPU seconds ≪ 2^53
            let s = tv.tv_sec() as f64 + f64::from(i32::try_from(tv.tv_usec()).unwrap_or(0)) / 1e6;
            s
        };
        let cpu_seconds = usage
            .as_ref()
            .map_or(0.0, |u| secs(u.user_time()) + secs(u.system_time()));
        let max_rss = usage
            .as_ref()
            .map_or(0, |u| u64::try_from(u.max_rss()).unwrap_or(0));
        // ru_maxrss is KiB on Linux and bytes on macOS (getrusage(2) on each).
        let max_rss_bytes = if cfg!(target_os = "macos") {
            max_rss
        } else {
            max_rss.saturating_mul(1024)
        };
        Self {
            cpu_seconds,
            max_rss_bytes,
            rss_bytes: current_rss(),
        }
    }
}

#[cfg(target_os = "linux")]
fn current_rss() -> Option<u64> {
    let statm = procfs::process::Process::myself().ok()?.statm().ok()?;
    Some(statm.resident.saturating_mul(procfs::page_size()))
}

#[cfg(not(target_os = "linux"))]
fn current_rss() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_see_this_process() {
        let s = ProcessStats::read();
        assert!(s.max_rss_bytes > 0);
        if cfg!(target_os = "linux") {
            assert!(s.rss_bytes.is_some_and(|b| b > 0));
        }
    }
}
