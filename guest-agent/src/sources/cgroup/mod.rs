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
//! 4. A container whose cgroup vanished since the last sample is sent once more, with its final
//!    CPU time completed from its parent cgroup's counter (the `parent` module explains why
//!    that is exact and when it is not), then forgotten.
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
//! value read so the cumulative counters never go backwards. A container named as dying
//! ([`CgroupSampler::sample_dying_first`]) is read first and in full.
//!
//! Expected conditions are not errors: a missing optional file gives `None`; a container whose
//! cgroup disappears (it stopped) is dropped from tracking and listed in the report.
//!
//! Files: `probe` decides what is tracked (discovery, explicit paths, the Docker registry's
//! paths, opening the counter files); `sampler` reads it; `parent` completes departures;
//! `read` parses the files; `layout` and `mountinfo` know the hierarchies.

mod layout;
mod mountinfo;
mod parent;
mod probe;
mod read;
mod sampler;

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::PathBuf;

use protocol::{CgroupMode, CpuCounters, CpuMicros};

pub use layout::{Found, MAX_DEPTH, container_id, normalize};
pub use mountinfo::{CgroupMounts, V1Mounts};
use parent::ParentAccounts;
pub use parent::{Completion, Departure, LEAK_TOLERANCE, Ledger, Seen, Step, split_exact};
use read::CounterFile;

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

/// What a [`CgroupSampler::sample`] could not read, and who left.
#[derive(Debug, Default)]
pub struct SampleReport {
    /// Containers whose cgroup disappeared; they are no longer tracked.
    pub vanished: Vec<String>,
    /// Every container whose cgroup was found gone in this sample (tracked, or untracked since
    /// the last sample), with its completed final CPU time when it could be computed; those
    /// with one are also in the sample's output, once, with that final usage.
    pub departed: Vec<Departure>,
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
    /// The CPU counters of the last successful read: the base of a completed final sample.
    last_cpu: CpuCounters,
    /// What the last sample saw, for the parent's account.
    seen: Seen,
}

/// The cumulative CFS throttling counters, kept between reads of a slow v1 `cpu.stat`.
#[derive(Clone, Copy, Debug, Default)]
struct Throttling {
    nr_periods: u64,
    nr_throttled: u64,
    throttled: CpuMicros,
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
    /// Untracked (by [`untrack`](Self::untrack) or a rescan) since the last sample: read once
    /// more by the next sample, so one that vanished meanwhile is completed and sent.
    leaving: Vec<(String, Tracked)>,
    /// The parents of tracked containers, which complete the final CPU time of departures.
    parents: ParentAccounts,
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
            leaving: Vec::new(),
            parents: ParentAccounts::default(),
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
