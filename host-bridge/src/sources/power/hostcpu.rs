//! Host CPU time (`/proc/stat`) and the VM process's share of it (`/proc/<pid>/stat`), for
//! Linux hosts (RAPL and the estimate).
//!
//! Host busy time is `user + nice + system + irq + softirq` of the aggregate `cpu` line: idle
//! and iowait are not work, `guest`/`guest_nice` are already inside `user`/`nice`, and `steal`
//! is time this host did not get (docs/attribution.md §3). The VM is found by [`VmSelector`]
//! (Kepler's hypervisor list by default: QEMU, Firecracker, cloud-hypervisor, crosvm) and its
//! CPU time is `utime + stime` of the process, which covers all its threads (vCPUs included) and
//! threads that already exited.
//!
//! Reads are synchronous over an injectable root (`/proc` in production, a temp dir in tests)
//! and meant to run inside one `spawn_blocking` per tick.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use protocol::{CpuMicros, MonoNanos, ProcStat};

use super::{HostCpu, VmSelector, VmShare};

/// The procfs mount.
pub const DEFAULT_PROC_ROOT: &str = "/proc";
/// `USER_HZ` when it cannot be queried; every mainstream Linux architecture uses 100
/// (`sysconf(_SC_CLK_TCK)`, proc(5)).
pub const FALLBACK_TICKS_PER_SECOND: u64 = 100;

/// Failure to read host CPU counters.
#[derive(Debug, thiserror::Error)]
pub enum HostCpuError {
    /// A file could not be read.
    #[error("failed to read {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file did not have the expected shape.
    #[error("malformed {what} in {path:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: &'static str,
    },
}

/// The host's aggregate `cpu` line of `/proc/stat`, converted from USER_HZ ticks to µs (the
/// same type and the same busy rule as the guest's, [`ProcStat::busy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostStat {
    /// The aggregate counters over all CPUs.
    pub times: ProcStat,
    /// Online CPUs (`cpuN` lines).
    pub cpus: u32,
}

/// Parses `/proc/stat`, with `ticks_per_second` = USER_HZ.
///
/// # Errors
/// [`HostCpuError::Parse`] when the aggregate `cpu` line is missing or short.
pub fn parse_proc_stat(
    text: &str,
    path: &Path,
    ticks_per_second: u64,
) -> Result<HostStat, HostCpuError> {
    let parse_err = |what| HostCpuError::Parse {
        path: path.to_owned(),
        what,
    };
    let us = |ticks: u64| CpuMicros(protocol::units::scale(ticks, 1_000_000, ticks_per_second));
    let mut aggregate = None;
    let mut cpus = 0u32;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        match fields.next() {
            Some("cpu") => {
                let v: Vec<u64> = fields.map_while(|f| f.parse().ok()).collect();
                if v.len() < 7 {
                    return Err(parse_err("aggregate cpu line"));
                }
                // user nice system idle iowait irq softirq [steal guest guest_nice]
                let field = |i: usize| us(v.get(i).copied().unwrap_or(0));
                aggregate = Some(ProcStat {
                    user: field(0),
                    nice: field(1),
                    system: field(2),
                    idle: field(3),
                    iowait: field(4),
                    irq: field(5),
                    softirq: field(6),
                    steal: field(7),
                    guest: field(8),
                    guest_nice: field(9),
                });
            }
            Some(name) if name.starts_with("cpu") => cpus += 1,
            _ => {}
        }
    }
    let times = aggregate.ok_or_else(|| parse_err("aggregate cpu line"))?;
    Ok(HostStat {
        times,
        cpus: cpus.max(1),
    })
}

/// `comm` and `utime + stime` (ticks) of `/proc/<pid>/stat`.
///
/// # Errors
/// [`HostCpuError::Parse`] when the line is malformed.
pub fn parse_pid_stat(text: &str, path: &Path) -> Result<(String, u64), HostCpuError> {
    let parse_err = || HostCpuError::Parse {
        path: path.to_owned(),
        what: "process stat line",
    };
    // `comm` is in parentheses and may itself contain spaces and parentheses.
    let open = text.find('(').ok_or_else(parse_err)?;
    let close = text.rfind(')').ok_or_else(parse_err)?;
    let comm = text.get(open + 1..close).ok_or_else(parse_err)?.to_owned();
    // After `) `: state(3) ppid(4) … utime(14) stime(15); index 0 here is field 3.
    let rest: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| -> Result<u64, HostCpuError> {
        rest.get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(parse_err)
    };
    Ok((comm, field(14)? + field(15)?))
}

/// `sysconf(_SC_CLK_TCK)`.
#[must_use]
pub fn ticks_per_second() -> u64 {
    #[cfg(target_os = "linux")]
    {
        procfs::ticks_per_second()
    }
    #[cfg(not(target_os = "linux"))]
    {
        FALLBACK_TICKS_PER_SECOND
    }
}

/// One window of host CPU and VM CPU.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuWindow {
    /// Window length on the bridge clock.
    pub window_ns: u64,
    /// Host busy time and capacity.
    pub host: HostCpu,
    /// VM process time against host busy time.
    pub vm: VmShare,
    /// `comm[pid]` of the processes counted as the VM.
    pub matched: Vec<String>,
}

#[derive(Clone, Debug)]
struct Snapshot {
    at: MonoNanos,
    stat: HostStat,
    vm_ticks: HashMap<i64, u64>,
}

/// Reads host and VM CPU counters and turns consecutive reads into windows.
#[derive(Debug)]
pub struct ProcReader {
    root: PathBuf,
    ticks_per_second: u64,
    selector: VmSelector,
    prev: Option<Snapshot>,
}

impl ProcReader {
    /// A reader over `root` (normally [`DEFAULT_PROC_ROOT`]).
    #[must_use]
    pub fn new(root: impl Into<PathBuf>, selector: VmSelector) -> Self {
        Self {
            root: root.into(),
            ticks_per_second: ticks_per_second(),
            selector,
            prev: None,
        }
    }

    /// Overrides `USER_HZ` (tests).
    #[must_use]
    pub fn with_ticks_per_second(mut self, ticks: u64) -> Self {
        self.ticks_per_second = ticks.max(1);
        self
    }

    /// Reads the counters at `now`; returns the window since the previous read (`None` on the
    /// first read, which only sets the baseline).
    ///
    /// # Errors
    /// [`HostCpuError`] when `/proc/stat` cannot be read. Processes that vanish mid-scan are
    /// skipped.
    pub fn read(&mut self, now: MonoNanos) -> Result<Option<CpuWindow>, HostCpuError> {
        let stat_path = self.root.join("stat");
        let text = std::fs::read_to_string(&stat_path).map_err(|source| HostCpuError::Read {
            path: stat_path.clone(),
            source,
        })?;
        let stat = parse_proc_stat(&text, &stat_path, self.ticks_per_second)?;
        let vm = self.scan_vm();
        let vm_ticks: HashMap<i64, u64> = vm.iter().map(|(pid, _, t)| (*pid, *t)).collect();
        let snapshot = Snapshot {
            at: now,
            stat,
            vm_ticks,
        };
        let Some(prev) = self.prev.replace(snapshot) else {
            return Ok(None);
        };
        let window_ns = now.since(prev.at);
        let busy = stat.times.busy().saturating_sub(prev.stat.times.busy());
        let vm_ticks: u64 = vm
            .iter()
            .map(|(pid, _, ticks)| match prev.vm_ticks.get(pid) {
                // Reset-aware: a smaller value is a reused pid.
                Some(before) => ticks.checked_sub(*before).unwrap_or(*ticks),
                // Not seen at the last scan: started within the window.
                None => *ticks,
            })
            .sum();
        let busy_ns = busy.0.saturating_mul(1_000);
        Ok(Some(CpuWindow {
            window_ns,
            host: HostCpu {
                busy_ns,
                capacity_ns: window_ns.saturating_mul(u64::from(stat.cpus)),
            },
            vm: VmShare {
                vm_cpu_ns: self.ticks_to_ns(vm_ticks),
                total_cpu_ns: busy_ns,
                vm_energy_impact: None,
                total_energy_impact: None,
            },
            matched: vm
                .iter()
                .map(|(pid, comm, _)| format!("{comm}[{pid}]"))
                .collect(),
        }))
    }

    fn ticks_to_ns(&self, ticks: u64) -> u64 {
        let ns = u128::from(ticks) * 1_000_000_000 / u128::from(self.ticks_per_second);
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// `(pid, comm, ticks)` of the VM processes.
    fn scan_vm(&self) -> Vec<(i64, String, u64)> {
        match &self.selector {
            VmSelector::Pid(pid) => self.process(*pid).into_iter().collect(),
            VmSelector::Patterns(patterns) => {
                let processes = self.all_processes();
                patterns
                    .iter()
                    .map(|pattern| {
                        processes
                            .iter()
                            .filter(|(pid, comm, _)| {
                                pattern.process.matches(comm)
                                    || (comm.len() >= 15
                                        && self
                                            .argv0(*pid)
                                            .is_some_and(|name| pattern.process.matches(&name)))
                            })
                            .cloned()
                            .collect::<Vec<_>>()
                    })
                    .find(|found| !found.is_empty())
                    .unwrap_or_default()
            }
        }
    }

    fn process(&self, pid: i64) -> Option<(i64, String, u64)> {
        let path = self.root.join(pid.to_string()).join("stat");
        let text = std::fs::read_to_string(&path).ok()?;
        match parse_pid_stat(&text, &path) {
            Ok((comm, ticks)) => Some((pid, comm, ticks)),
            Err(err) => {
                tracing::debug!(error = %err, "Process stat unreadable; skipping it.");
                None
            }
        }
    }

    fn all_processes(&self) -> Vec<(i64, String, u64)> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i64>().ok()))
            .filter_map(|pid| self.process(pid))
            .collect()
    }

    /// Basename of `argv[0]`, for names that `comm` cuts at 15 bytes.
    fn argv0(&self, pid: i64) -> Option<String> {
        let cmdline = std::fs::read(self.root.join(pid.to_string()).join("cmdline")).ok()?;
        let argv0 = cmdline.split(|&b| b == 0).next()?;
        let name = String::from_utf8_lossy(argv0);
        Some(name.rsplit('/').next().unwrap_or_default().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 10 50 1000 20 5 5 7 3 0\ncpu0 50 5 25 500 10 3 2 4 0 0\n\
                        cpu1 50 5 25 500 10 2 3 3 3 0\nintr 1 2\nctxt 5\n";

    #[test]
    fn proc_stat_busy_excludes_idle_iowait_steal() {
        let stat = parse_proc_stat(STAT, Path::new("stat"), 100).expect("parses");
        // 10 ms per tick at USER_HZ = 100.
        assert_eq!(
            stat.times.busy(),
            CpuMicros((100 + 10 + 50 + 5 + 5) * 10_000)
        );
        assert_eq!(
            stat.times.accounted(),
            CpuMicros((100 + 10 + 50 + 1000 + 20 + 5 + 5 + 7) * 10_000)
        );
        assert_eq!(stat.cpus, 2);
    }

    #[test]
    fn pid_stat_handles_parentheses_in_comm() {
        let line = "42 (qemu (x) 1) S 1 42 42 0 -1 4194560 1 0 0 0 700 300 0 0 20 0 9 0 5 0 0";
        let (comm, ticks) = parse_pid_stat(line, Path::new("42/stat")).expect("parses");
        assert_eq!(comm, "qemu (x) 1");
        assert_eq!(ticks, 1000);
    }

    #[test]
    fn pid_stat_short_line_is_an_error() {
        assert!(parse_pid_stat("1 (init) S 0", Path::new("1/stat")).is_err());
    }
}
