//! Per-container CPU, memory and IO counters from cgroupfs (v1, v2 and hybrid).
//!
//! Three steps, each over an injectable root so tests run on trees built in a temp dir:
//!
//! 1. [`CgroupMounts`] (from `/proc/self/mountinfo`) says which hierarchies exist and where.
//! 2. [`CgroupSampler::rescan`] finds container cgroups by the names runtimes give them (the
//!    `layout` module has the table), plus cgroups the user named explicitly;
//!    [`CgroupSampler::track`] adds one whose path is already known (the Docker registry reads
//!    it from `/proc/<pid>/cgroup`).
//!    Tracking opens the counter files once and reads the CPU limit.
//! 3. [`CgroupSampler::sample`] re-reads every open file with `pread` into one reusable buffer
//!    and yields [`ContainerCounters`], cumulative as the kernel keeps them: deltas (and counter
//!    resets) are the bridge's business.
//!
//! Which file feeds which counter is decided per container when it is tracked, by what exists:
//! v2 files where the cgroup has them, v1 controller files otherwise. That one rule covers pure
//! v2, pure v1 (combined `cpu,cpuacct` or separate mounts) and hybrid hosts, where the unified
//! hierarchy has `cpu.stat` but memory, IO and throttling live in v1 controllers.
//!
//! Cadence: CPU time is what attribution needs every tick; memory (a gauge) and IO and v1
//! throttling (cumulative) lose nothing when read less often, and every file costs a kernfs
//! render. So the "slow" files ([`read::CounterKind::is_slow`]) are read on a container's first
//! sample and then every [`CgroupSampler::with_slow_every`]-th: in between, `memory_current` and
//! `io` are `None` ("not read this sample", not "absent"), and v1 throttling repeats the last
//! value read so the cumulative counters never go backwards. [`CgroupSampler::sample_one`]
//! (the final sample of a stopping container) reads everything.
//!
//! Expected conditions are not errors: a missing optional file gives `None`; a container whose
//! cgroup disappears (it stopped) is dropped from tracking and listed in the report.

mod layout;
mod mountinfo;
mod read;

use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use protocol::{CgroupMode, ContainerCounters, CpuCounters, CpuMicros};

pub use layout::{Found, MAX_DEPTH, container_id, normalize};
pub use mountinfo::{CgroupMounts, V1Mounts};
use read::{CounterFile, CounterKind, ReadFailure, Reading, open_optional};

/// USER_HZ when the auxiliary vector does not say (`sysconf(_SC_CLK_TCK)`; 100 on every Linux
/// architecture joulebridge targets).
pub const DEFAULT_USER_HZ: u64 = 100;

/// Errors of cgroup discovery and sampling. Variants carry the path that failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The mount table could not be read.
    #[error("failed to read mount table {path:?}")]
    ReadMountinfo {
        /// The mountinfo file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A hierarchy root could not be listed.
    #[error("failed to list cgroup directory {path:?}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A counter file exists but could not be opened.
    #[error("failed to open cgroup file {path:?}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A counter file could not be read.
    #[error("failed to read cgroup file {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A counter file did not have the expected shape.
    #[error("malformed cgroup file {path:?}: {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was missing or malformed.
        what: &'static str,
    },
    /// A cgroup path was the root itself or climbed out of the hierarchy.
    #[error("cgroup path {path:?} does not name a cgroup below the hierarchy root")]
    InvalidPath {
        /// The path as given.
        path: String,
    },
    /// No mounted hierarchy has a cgroup at this path.
    #[error("cgroup {rel_path:?} does not exist in any mounted hierarchy")]
    NotFound {
        /// The normalised relative path.
        rel_path: String,
    },
    /// The cgroup exists but has neither v2 `cpu.stat` nor v1 `cpuacct.usage`.
    #[error("cgroup {path:?} has no cpu accounting file")]
    NoCpuAccounting {
        /// The cgroup directory.
        path: PathBuf,
    },
}

/// Which optional counters a sample reads. CPU usage, user and system time are always read.
///
/// Every file costs one `pread` per container per sample, and on kernfs a `pread` costs
/// 0.6–1.2 µs of CPU whatever the reader does (`benches/sampling.rs`). The full set is 3 files
/// per container on v2, 4 on hybrid, 5 on v1; [`CounterSet::CPU`] (all attribution needs) is
/// 1 file on v2 and hybrid, 2 on v1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterSet {
    /// CFS throttling. Free on v2 with the cpu controller (same `cpu.stat`, reported even when
    /// off); on v1 and hybrid one more file (the v1 `cpu.stat`), and zero when off.
    pub throttling: bool,
    /// `memory.current` / `memory.usage_in_bytes`. Off: `memory_current` is `None`.
    pub memory: bool,
    /// `io.stat` / `blkio.throttle.io_service_bytes`. Off: `io` is `None`.
    pub io: bool,
}

impl CounterSet {
    /// Everything the protocol carries (the default).
    pub const ALL: Self = Self {
        throttling: true,
        memory: true,
        io: true,
    };
    /// CPU time only: the cheapest sample that still feeds attribution.
    pub const CPU: Self = Self {
        throttling: false,
        memory: false,
        io: false,
    };
}

impl Default for CounterSet {
    fn default() -> Self {
        Self::ALL
    }
}

/// What a [`CgroupSampler::rescan`] changed.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Ids tracked by this scan.
    pub added: Vec<String>,
    /// Ids dropped because their cgroup is gone.
    pub removed: Vec<String>,
    /// Explicit cgroup paths that do not exist (yet); retried on every scan.
    pub missing_explicit: Vec<String>,
    /// Cgroups found but not trackable, and hierarchies that could not be walked.
    pub errors: Vec<CgroupError>,
}

/// What a [`CgroupSampler::sample`] could not read.
#[derive(Debug, Default)]
pub struct SampleReport {
    /// Containers whose cgroup disappeared; they are no longer tracked.
    pub vanished: Vec<String>,
    /// Containers left out of this sample because a file failed; they stay tracked.
    pub errors: Vec<CgroupError>,
}

/// How a container came to be tracked, which decides how a rescan notices it is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Found by [`layout`]: gone when the next walk no longer finds it.
    Discovered,
    /// Given by [`CgroupSampler::track`]: gone when its directory is.
    Manual,
    /// Named by [`CgroupSampler::add_explicit`]: gone when its directory is; re-added later.
    Explicit,
}

/// One tracked cgroup and its open counter files.
#[derive(Debug)]
struct Tracked {
    rel_path: String,
    origin: Origin,
    /// The directory of the CPU accounting file, whose existence rescans check.
    dir: PathBuf,
    /// At least one CPU file first, then throttling, memory, IO.
    files: Vec<CounterFile>,
    /// Read once when tracked.
    cpu_limit_millicores: Option<u32>,
    /// Samples left before the next one that reads the slow files; 0 = this one does.
    slow_countdown: u32,
    /// Whether throttling comes from a slow file (v1 `cpu.stat`) and must be repeated.
    slow_throttling: bool,
    /// The throttling counters of the last read of that file.
    last_throttling: Throttling,
}

/// The cumulative CFS throttling counters, kept between reads of a slow v1 `cpu.stat`.
#[derive(Clone, Copy, Debug, Default)]
struct Throttling {
    nr_periods: u64,
    nr_throttled: u64,
    throttled: CpuMicros,
}

impl Tracked {
    /// Bookkeeping after a successful read (`slow`: the slow files were read): remembers the
    /// throttling just read, or puts the last one back into a reading that skipped it.
    fn after_read(&mut self, reading: &mut read::Reading, slow: bool) {
        if !self.slow_throttling {
            return;
        }
        let cpu: &mut CpuCounters = &mut reading.cpu;
        if slow {
            self.last_throttling = Throttling {
                nr_periods: cpu.nr_periods,
                nr_throttled: cpu.nr_throttled,
                throttled: cpu.throttled,
            };
        } else {
            cpu.nr_periods = self.last_throttling.nr_periods;
            cpu.nr_throttled = self.last_throttling.nr_throttled;
            cpu.throttled = self.last_throttling.throttled;
        }
    }
}

/// Reads the counters of every tracked container cgroup. Synchronous: call it from one
/// `spawn_blocking` per tick.
#[derive(Debug)]
pub struct CgroupSampler {
    mounts: CgroupMounts,
    user_hz: u64,
    /// Optional counters to open at track time.
    counters: CounterSet,
    /// Slow files are read every this many samples of a container.
    slow_every: NonZeroU32,
    /// Keyed by container id; iteration order is the order of a sample's entries.
    tracked: BTreeMap<String, Tracked>,
    /// Normalised explicit paths, tracked under their own path as id.
    explicit: Vec<String>,
    /// Shared read buffer: grows to the largest file once, then is reused for every read.
    buf: Vec<u8>,
}

impl CgroupSampler {
    /// A sampler over `mounts`, with USER_HZ from the auxiliary vector.
    #[must_use]
    pub fn new(mounts: CgroupMounts) -> Self {
        Self::with_user_hz(mounts, user_hz())
    }

    /// A sampler with an explicit USER_HZ (the unit of v1 `cpuacct.stat`).
    #[must_use]
    pub fn with_user_hz(mounts: CgroupMounts, user_hz: u64) -> Self {
        Self {
            mounts,
            user_hz: user_hz.max(1),
            counters: CounterSet::ALL,
            slow_every: NonZeroU32::MIN,
            tracked: BTreeMap::new(),
            explicit: Vec::new(),
            buf: vec![0; read::INITIAL_BUFFER],
        }
    }

    /// Reads only the optional counters in `counters` (default [`CounterSet::ALL`]). Applies
    /// to containers tracked from now on: set it before the first rescan.
    #[must_use]
    pub fn with_counters(mut self, counters: CounterSet) -> Self {
        self.counters = counters;
        self
    }

    /// Reads the slow files (memory, IO, v1 throttling) of each container only on its first
    /// sample and then every `every`-th (default 1: every sample). In the samples between,
    /// `memory_current` and `io` are `None` and v1 throttling repeats its last value.
    #[must_use]
    pub fn with_slow_every(mut self, every: NonZeroU32) -> Self {
        self.slow_every = every;
        self
    }

    /// The cgroup layout, for the `Hello`.
    #[must_use]
    pub fn mode(&self) -> CgroupMode {
        self.mounts.mode
    }

    /// The mounts this sampler reads.
    #[must_use]
    pub fn mounts(&self) -> &CgroupMounts {
        &self.mounts
    }

    /// Tracked containers as `(id, relative cgroup path)`, sorted by id.
    pub fn tracked(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tracked
            .iter()
            .map(|(id, t)| (id.as_str(), t.rel_path.as_str()))
    }

    /// Number of tracked containers.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tracked.len()
    }

    /// Whether nothing is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tracked.is_empty()
    }

    /// Names a cgroup to sample whatever its name, with its path (relative to the hierarchy
    /// root, e.g. `system.slice/my.service`) as id. It is tracked from the next
    /// [`rescan`](Self::rescan) on, and re-tracked whenever it reappears.
    ///
    /// # Errors
    /// [`CgroupError::InvalidPath`] for the root or a path with `..`.
    pub fn add_explicit(&mut self, rel_path: String) -> Result<(), CgroupError> {
        let rel_path = normalize(&rel_path)?;
        if !self.explicit.contains(&rel_path) {
            self.explicit.push(rel_path);
        }
        Ok(())
    }

    /// Tracks the cgroup at `rel_path` (as in `/proc/<pid>/cgroup`, leading `/` allowed) under
    /// `id`, replacing a tracked entry of that id with another path. Rescans drop it only when
    /// its directory is gone.
    ///
    /// # Errors
    /// [`CgroupError::InvalidPath`], [`CgroupError::NotFound`] when no hierarchy has the cgroup,
    /// [`CgroupError::NoCpuAccounting`], or an open error.
    pub fn track(&mut self, id: String, rel_path: &str) -> Result<(), CgroupError> {
        let rel_path = normalize(rel_path)?;
        if let Some(existing) = self.tracked.get_mut(&id)
            && existing.rel_path == rel_path
        {
            existing.origin = Origin::Manual;
            return Ok(());
        }
        let tracked = self.open(rel_path, Origin::Manual)?;
        self.tracked.insert(id, tracked);
        Ok(())
    }

    /// Stops tracking `id` (no-op when unknown).
    pub fn untrack(&mut self, id: &str) {
        self.tracked.remove(id);
    }

    /// Walks the hierarchies for containers and retries explicit paths: tracks the new ones,
    /// drops the ones whose cgroup is gone.
    ///
    /// # Errors
    /// The walk error when every hierarchy to walk failed to list; per-container problems are
    /// in [`ScanReport::errors`].
    pub fn rescan(&mut self) -> Result<ScanReport, CgroupError> {
        let mut report = ScanReport::default();
        let roots = self.discovery_roots();
        let mut lists = Vec::with_capacity(roots.len());
        let mut walk_errors = Vec::new();
        for root in &roots {
            match layout::discover(root) {
                Ok(list) => lists.push(list),
                Err(err) => walk_errors.push(err),
            }
        }
        if lists.is_empty()
            && let Some(first) = walk_errors.pop()
        {
            return Err(first);
        }
        // With a hierarchy unwalked, "not found" proves nothing: fall back to the directory.
        let walk_complete = walk_errors.is_empty();
        report.errors.extend(walk_errors);
        let found = layout::merge(lists);

        let found_ids: HashSet<&str> = found.iter().map(|f| f.id.as_str()).collect();
        let gone: Vec<String> = self
            .tracked
            .iter()
            .filter(|(id, t)| match t.origin {
                Origin::Discovered if walk_complete => !found_ids.contains(id.as_str()),
                Origin::Discovered | Origin::Manual | Origin::Explicit => !t.dir.is_dir(),
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.tracked.remove(&id);
            report.removed.push(id);
        }

        let mut tracked_paths: HashSet<String> =
            self.tracked.values().map(|t| t.rel_path.clone()).collect();
        for Found { id, rel_path } in found {
            if self.tracked.contains_key(&id) || tracked_paths.contains(&rel_path) {
                continue;
            }
            match self.open(rel_path.clone(), Origin::Discovered) {
                Ok(tracked) => {
                    tracked_paths.insert(rel_path);
                    self.tracked.insert(id.clone(), tracked);
                    report.added.push(id);
                }
                // Removed between the walk and the open: the container just stopped.
                Err(CgroupError::NotFound { .. }) => {}
                Err(err) => report.errors.push(err),
            }
        }

        for rel_path in self.explicit.clone() {
            if tracked_paths.contains(&rel_path) {
                continue;
            }
            match self.open(rel_path.clone(), Origin::Explicit) {
                Ok(tracked) => {
                    tracked_paths.insert(rel_path.clone());
                    self.tracked.insert(rel_path.clone(), tracked);
                    report.added.push(rel_path);
                }
                Err(CgroupError::NotFound { .. }) => report.missing_explicit.push(rel_path),
                Err(err) => report.errors.push(err),
            }
        }
        tracing::debug!(
            tracked = self.tracked.len(),
            added = report.added.len(),
            removed = report.removed.len(),
            missing_explicit = report.missing_explicit.len(),
            errors = report.errors.len(),
            "Cgroup rescan done."
        );
        Ok(report)
    }

    /// Reads every tracked container into `out`, which is overwritten: its entries (and their
    /// id strings) are reused, so a caller that keeps the vector allocates nothing per sample.
    /// The slow files are read per the cadence ([`with_slow_every`](Self::with_slow_every)).
    /// Containers that vanished are dropped from tracking and listed in the report.
    pub fn sample(&mut self, out: &mut Vec<ContainerCounters>) -> SampleReport {
        let mut report = SampleReport::default();
        let mut filled = 0;
        for (id, tracked) in &mut self.tracked {
            let slow = tracked.slow_countdown == 0;
            match read::read_all(&tracked.files, &mut self.buf, self.user_hz, slow) {
                Ok(mut reading) => {
                    tracked.after_read(&mut reading, slow);
                    // A failed read leaves the countdown alone: the next sample retries.
                    tracked.slow_countdown = match tracked.slow_countdown.checked_sub(1) {
                        Some(left) => left,
                        None => self.slow_every.get() - 1,
                    };
                    if let Some(slot) = out.get_mut(filled) {
                        fill(slot, id, tracked, reading);
                    } else {
                        out.push(counters(id.clone(), tracked, reading));
                    }
                    filled += 1;
                }
                Err(ReadFailure::Vanished) => report.vanished.push(id.clone()),
                Err(ReadFailure::Error(err)) => report.errors.push(err),
            }
        }
        out.truncate(filled);
        for id in &report.vanished {
            self.tracked.remove(id);
        }
        report
    }

    /// Reads one container now, every file whatever the cadence (the final sample on a Docker
    /// `die` event). `None` when it is not tracked, has vanished (it is then untracked), or a
    /// file failed (logged).
    pub fn sample_one(&mut self, id: &str) -> Option<ContainerCounters> {
        let tracked = self.tracked.get_mut(id)?;
        match read::read_all(&tracked.files, &mut self.buf, self.user_hz, true) {
            Ok(mut reading) => {
                tracked.after_read(&mut reading, true);
                Some(counters(id.to_owned(), tracked, reading))
            }
            Err(ReadFailure::Vanished) => {
                self.tracked.remove(id);
                None
            }
            Err(ReadFailure::Error(err)) => {
                tracing::warn!(container = id, error = ?err, "Cgroup unreadable; no final sample.");
                None
            }
        }
    }

    /// Hierarchies walked for containers: the unified one on v2 and hybrid hosts, plus the v1
    /// cpu accounting one on v1 and hybrid hosts (Docker's cgroupfs driver creates containers
    /// only in v1 hierarchies on a hybrid host; its systemd driver creates them in both).
    fn discovery_roots(&self) -> Vec<PathBuf> {
        let v1 = &self.mounts.v1;
        let v1_root = v1
            .cpuacct
            .as_ref()
            .or(v1.cpu.as_ref())
            .or(v1.memory.as_ref())
            .or(v1.blkio.as_ref());
        let mut roots = Vec::new();
        if matches!(self.mounts.mode, CgroupMode::V2 | CgroupMode::Hybrid)
            && let Some(v2) = &self.mounts.v2
        {
            roots.push(v2.clone());
        }
        if matches!(self.mounts.mode, CgroupMode::V1 | CgroupMode::Hybrid)
            && let Some(v1_root) = v1_root
        {
            roots.push(v1_root.clone());
        }
        roots
    }

    /// Opens the counter files of the cgroup at `rel_path` (normalised) and reads its limit.
    fn open(&self, rel_path: String, origin: Origin) -> Result<Tracked, CgroupError> {
        let at = |mount: &Option<PathBuf>| mount.as_ref().map(|m| m.join(&rel_path));
        let v2 = at(&self.mounts.v2);
        let v1 = &self.mounts.v1;
        let (cpuacct, cpu, memory, blkio) =
            (at(&v1.cpuacct), at(&v1.cpu), at(&v1.memory), at(&v1.blkio));

        let mut files = Vec::with_capacity(5);
        let mut dir = None;
        let mut v2_cpu = false;
        if let Some(v2) = &v2
            && let Some(file) = open_optional(v2, read::V2_CPU_STAT, CounterKind::V2CpuStat)?
        {
            files.push(file);
            dir = Some(v2.clone());
            v2_cpu = true;
        } else if let Some(cpuacct) = &cpuacct
            && let Some(file) =
                open_optional(cpuacct, read::V1_CPUACCT_USAGE, CounterKind::V1CpuacctUsage)?
        {
            files.push(file);
            files.extend(open_optional(
                cpuacct,
                read::V1_CPUACCT_STAT,
                CounterKind::V1CpuacctStat,
            )?);
            dir = Some(cpuacct.clone());
        }
        let Some(dir) = dir else {
            let existing = [&v2, &cpuacct, &cpu, &memory, &blkio]
                .into_iter()
                .flatten()
                .find(|d| d.is_dir());
            return Err(match existing {
                Some(path) => CgroupError::NoCpuAccounting { path: path.clone() },
                None => CgroupError::NotFound { rel_path },
            });
        };

        // Throttling: in v2 `cpu.stat` itself when the cpu controller is enabled there (then
        // `cpu.max` exists), else the v1 cpu controller's `cpu.stat`.
        let v2_cpu_controller = v2_cpu
            && v2
                .as_ref()
                .is_some_and(|d| d.join(read::V2_CPU_MAX).exists());
        let wanted = self.counters;
        if wanted.throttling
            && !v2_cpu_controller
            && let Some(cpu) = &cpu
        {
            files.extend(open_optional(
                cpu,
                read::V1_CPU_STAT,
                CounterKind::V1CpuStat,
            )?);
        }
        if wanted.memory {
            files.extend(first_present(&[
                (&v2, read::V2_MEMORY_CURRENT, CounterKind::V2MemoryCurrent),
                (&memory, read::V1_MEMORY_USAGE, CounterKind::V1MemoryUsage),
            ])?);
        }
        if wanted.io {
            files.extend(first_present(&[
                (&v2, read::V2_IO_STAT, CounterKind::V2IoStat),
                (
                    &blkio,
                    read::V1_BLKIO_SERVICE_BYTES,
                    CounterKind::V1BlkioServiceBytes,
                ),
            ])?);
        }

        let cpu_limit_millicores = if v2_cpu_controller {
            v2.as_deref()
                .and_then(|d| read_small(&d.join(read::V2_CPU_MAX)))
                .and_then(|text| read::parse_cpu_max(&text))
        } else {
            cpu.as_deref().and_then(|d| {
                let quota = read_small(&d.join(read::V1_CFS_QUOTA))?;
                let period = read_small(&d.join(read::V1_CFS_PERIOD))?;
                read::parse_cfs(&quota, &period)
            })
        };
        let slow_throttling = files.iter().any(|f| f.kind == CounterKind::V1CpuStat);
        Ok(Tracked {
            rel_path,
            origin,
            dir,
            files,
            cpu_limit_millicores,
            slow_countdown: 0,
            slow_throttling,
            last_throttling: Throttling::default(),
        })
    }
}

/// Opens the first of several alternative files that exists.
fn first_present(
    candidates: &[(&Option<PathBuf>, &str, CounterKind)],
) -> Result<Option<CounterFile>, CgroupError> {
    for (dir, name, kind) in candidates {
        if let Some(dir) = dir
            && let Some(file) = open_optional(dir, name, *kind)?
        {
            return Ok(Some(file));
        }
    }
    Ok(None)
}

/// A small control file read once at track time; unreadable means unknown.
fn read_small(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn counters(id: String, tracked: &Tracked, reading: Reading) -> ContainerCounters {
    ContainerCounters {
        id,
        cpu: reading.cpu,
        memory_current: reading.memory_current,
        io: reading.io,
        cpu_limit_millicores: tracked.cpu_limit_millicores,
    }
}

fn fill(slot: &mut ContainerCounters, id: &str, tracked: &Tracked, reading: Reading) {
    id.clone_into(&mut slot.id);
    slot.cpu = reading.cpu;
    slot.memory_current = reading.memory_current;
    slot.io = reading.io;
    slot.cpu_limit_millicores = tracked.cpu_limit_millicores;
}

/// USER_HZ from the auxiliary vector (`AT_CLKTCK`, what `sysconf(_SC_CLK_TCK)` returns), read
/// through `procfs`/`rustix` so no `unsafe` is needed; [`DEFAULT_USER_HZ`] if it is zero.
fn user_hz() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let hz = ::procfs::ticks_per_second();
        if hz > 0 {
            return hz;
        }
    }
    DEFAULT_USER_HZ
}

#[cfg(test)]
mod tests {
    use std::fs;

    use protocol::{Bytes, IoCounters};

    use super::*;

    const REL: &str = "docker/c1";

    /// A pure-v1 tree (separate controller mounts) with one container, as files in a temp dir.
    struct V1Tree {
        dir: tempfile::TempDir,
    }

    impl V1Tree {
        fn new() -> Self {
            let tree = Self {
                dir: tempfile::tempdir().unwrap(),
            };
            for controller in ["cpu", "cpuacct", "memory", "blkio"] {
                fs::create_dir_all(tree.cgroup(controller)).unwrap();
            }
            tree.write("cpuacct", "cpuacct.usage", "5000000\n");
            tree.write("cpuacct", "cpuacct.stat", "user 3\nsystem 1\n");
            tree.write("cpu", "cpu.cfs_quota_us", "-1\n");
            tree.write("cpu", "cpu.cfs_period_us", "100000\n");
            tree.set_tick(0);
            tree
        }

        fn cgroup(&self, controller: &str) -> PathBuf {
            self.dir.path().join(controller).join(REL)
        }

        fn write(&self, controller: &str, name: &str, text: &str) {
            fs::write(self.cgroup(controller).join(name), text).unwrap();
        }

        /// Makes every counter file a function of `tick`, so a sample shows which it read.
        fn set_tick(&self, tick: u64) {
            self.write(
                "cpuacct",
                "cpuacct.usage",
                &format!("{}\n", (tick + 1) * 1_000),
            );
            self.write(
                "cpu",
                "cpu.stat",
                &format!(
                    "nr_periods {}\nnr_throttled {tick}\nthrottled_time {}\n",
                    tick * 2,
                    tick * 1_000
                ),
            );
            self.write(
                "memory",
                "memory.usage_in_bytes",
                &format!("{}\n", tick + 100),
            );
            self.write(
                "blkio",
                "blkio.throttle.io_service_bytes",
                &format!(
                    "8:0 Read {tick}\n8:0 Write {}\nTotal {}\n",
                    tick * 2,
                    tick * 3
                ),
            );
        }

        fn sampler(&self, every: u32) -> CgroupSampler {
            let at = |c: &str| Some(self.dir.path().join(c));
            let mounts = CgroupMounts {
                mode: CgroupMode::V1,
                v2: None,
                v1: V1Mounts {
                    cpu: at("cpu"),
                    cpuacct: at("cpuacct"),
                    memory: at("memory"),
                    blkio: at("blkio"),
                },
            };
            let mut sampler = CgroupSampler::with_user_hz(mounts, 100)
                .with_slow_every(NonZeroU32::new(every).unwrap());
            sampler.track("c1".to_owned(), REL).unwrap();
            sampler
        }
    }

    fn sample(sampler: &mut CgroupSampler, out: &mut Vec<ContainerCounters>) -> ContainerCounters {
        let report = sampler.sample(out);
        assert!(
            report.vanished.is_empty() && report.errors.is_empty(),
            "{report:?}"
        );
        assert_eq!(out.len(), 1);
        out[0].clone()
    }

    #[test]
    fn slow_files_are_read_on_the_first_sample_and_every_nth_only() {
        let tree = V1Tree::new();
        let mut sampler = tree.sampler(3);
        let mut out = Vec::new();
        for tick in 0..10 {
            tree.set_tick(tick);
            let c = sample(&mut sampler, &mut out);
            // CPU time: every sample.
            assert_eq!(c.cpu.usage, CpuMicros(tick + 1), "tick {tick}");
            if tick % 3 == 0 {
                assert_eq!(c.memory_current, Some(Bytes(tick + 100)), "tick {tick}");
                assert_eq!(
                    c.io,
                    Some(IoCounters {
                        read: Bytes(tick),
                        write: Bytes(tick * 2)
                    }),
                    "tick {tick}"
                );
            } else {
                assert_eq!((c.memory_current, c.io), (None, None), "tick {tick}");
            }
        }
    }

    #[test]
    fn throttling_repeats_the_last_value_read_and_never_decreases() {
        let tree = V1Tree::new();
        let mut sampler = tree.sampler(4);
        let mut out = Vec::new();
        let mut previous = CpuCounters::default();
        for tick in 0..13 {
            tree.set_tick(tick);
            let cpu = sample(&mut sampler, &mut out).cpu;
            let read_at = tick - tick % 4;
            assert_eq!(
                (cpu.nr_periods, cpu.nr_throttled, cpu.throttled),
                (read_at * 2, read_at, CpuMicros(read_at)),
                "tick {tick}"
            );
            assert!(
                cpu.nr_periods >= previous.nr_periods
                    && cpu.nr_throttled >= previous.nr_throttled
                    && cpu.throttled >= previous.throttled,
                "tick {tick}: {cpu:?} after {previous:?}"
            );
            previous = cpu;
        }
        assert!(previous.nr_throttled > 0, "the counters moved at all");
    }

    #[test]
    fn every_sample_reads_everything_when_n_is_1() {
        let tree = V1Tree::new();
        let mut sampler = tree.sampler(1);
        let mut out = Vec::new();
        for tick in 0..5 {
            tree.set_tick(tick);
            let c = sample(&mut sampler, &mut out);
            assert_eq!(c.memory_current, Some(Bytes(tick + 100)), "tick {tick}");
            assert_eq!(c.io.map(|io| io.read), Some(Bytes(tick)), "tick {tick}");
            assert_eq!(c.cpu.nr_throttled, tick, "tick {tick}");
        }
    }

    #[test]
    fn sample_one_reads_everything_between_slow_samples() {
        let tree = V1Tree::new();
        let mut sampler = tree.sampler(10);
        let mut out = Vec::new();
        sample(&mut sampler, &mut out);
        tree.set_tick(5);
        assert_eq!(sample(&mut sampler, &mut out).memory_current, None);
        let last = sampler.sample_one("c1").unwrap();
        assert_eq!(last.memory_current, Some(Bytes(105)));
        assert_eq!(last.io.map(|io| io.write), Some(Bytes(10)));
        assert_eq!(last.cpu.nr_throttled, 5);
        // What the final read saw is kept: a later fast sample does not go back to tick 0.
        assert_eq!(sample(&mut sampler, &mut out).cpu.nr_throttled, 5);
    }
}
