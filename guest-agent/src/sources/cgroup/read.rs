//! Reading and parsing the counter files of one cgroup.
//!
//! Files are opened once when a container is tracked and re-read with `pread(2)` at offset 0
//! into a buffer owned by the sampler: one syscall per file per sample in steady state, no
//! `open`/`close`, no allocation. A read shorter than the space offered is taken as the whole
//! file: kernfs (cgroupfs) renders a cgroup file in one go and copies as much of it as fits, and
//! regular files only come up short at end of file. A read that fills the buffer doubles it and
//! continues, so the buffer stops growing after the first large `io.stat`.
//!
//! When a cgroup is removed, kernfs answers reads on its open files with `ENODEV`: that (and
//! `ENOENT`) is how a container that vanished between two samples is recognised.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use protocol::{Bytes, CpuCounters, CpuMicros, IoCounters};

use super::CgroupError;

/// v2 CPU accounting (`usage_usec`, `user_usec`, `system_usec`; throttling with the cpu
/// controller). `Documentation/admin-guide/cgroup-v2.rst`, "CPU Interface Files".
pub const V2_CPU_STAT: &str = "cpu.stat";
/// v2 CPU bandwidth limit: `$MAX $PERIOD` or `max $PERIOD`.
pub const V2_CPU_MAX: &str = "cpu.max";
/// v2 memory in use, bytes.
pub const V2_MEMORY_CURRENT: &str = "memory.current";
/// v2 per-device IO: `MAJ:MIN rbytes= wbytes= rios= wios= dbytes= dios=`.
pub const V2_IO_STAT: &str = "io.stat";
/// v1 total CPU time in ns. `Documentation/admin-guide/cgroup-v1/cpuacct.rst`.
pub const V1_CPUACCT_USAGE: &str = "cpuacct.usage";
/// v1 user/system CPU time in USER_HZ ticks.
pub const V1_CPUACCT_STAT: &str = "cpuacct.stat";
/// v1 throttling (`nr_periods`, `nr_throttled`, `throttled_time` in ns).
/// `Documentation/scheduler/sched-bwc.rst`.
pub const V1_CPU_STAT: &str = "cpu.stat";
/// v1 CFS quota in µs, `-1` for none.
pub const V1_CFS_QUOTA: &str = "cpu.cfs_quota_us";
/// v1 CFS period in µs.
pub const V1_CFS_PERIOD: &str = "cpu.cfs_period_us";
/// v1 memory in use, bytes. `Documentation/admin-guide/cgroup-v1/memory.rst`.
pub const V1_MEMORY_USAGE: &str = "memory.usage_in_bytes";
/// v1 bytes transferred per device and direction, as seen by the throttling layer (the
/// counters that work with blk-mq; `blkio.io_service_bytes` is CFQ-only).
/// `Documentation/admin-guide/cgroup-v1/blkio-controller.rst`.
pub const V1_BLKIO_SERVICE_BYTES: &str = "blkio.throttle.io_service_bytes";

/// Initial size of the shared read buffer; enough for every file above on small machines.
pub const INITIAL_BUFFER: usize = 4096;

/// Which file a handle reads and how its contents land in the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    /// v2 `cpu.stat`: usage, user, system and, with the cpu controller, throttling.
    V2CpuStat,
    /// v1 `cpuacct.usage`.
    V1CpuacctUsage,
    /// v1 `cpuacct.stat`.
    V1CpuacctStat,
    /// v1 `cpu.stat` (throttling only).
    V1CpuStat,
    /// v2 `memory.current`.
    V2MemoryCurrent,
    /// v1 `memory.usage_in_bytes`.
    V1MemoryUsage,
    /// v2 `io.stat`.
    V2IoStat,
    /// v1 `blkio.throttle.io_service_bytes`.
    V1BlkioServiceBytes,
}

impl CounterKind {
    /// Whether the file is "slow": read only every N-th sample (memory, IO, v1 throttling),
    /// as opposed to the CPU time files attribution needs every sample.
    #[must_use]
    pub fn is_slow(self) -> bool {
        match self {
            Self::V2CpuStat | Self::V1CpuacctUsage | Self::V1CpuacctStat => false,
            Self::V1CpuStat
            | Self::V2MemoryCurrent
            | Self::V1MemoryUsage
            | Self::V2IoStat
            | Self::V1BlkioServiceBytes => true,
        }
    }
}

/// An open counter file.
#[derive(Debug)]
pub struct CounterFile {
    /// What it holds.
    pub kind: CounterKind,
    /// The handle, re-read with `pread`.
    pub file: File,
    /// For error messages.
    pub path: PathBuf,
}

/// Counters being assembled from the files of one cgroup.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reading {
    /// CPU accounting.
    pub cpu: CpuCounters,
    /// Memory gauge.
    pub memory_current: Option<Bytes>,
    /// Block IO.
    pub io: Option<IoCounters>,
}

/// Why a cgroup could not be read.
#[derive(Debug)]
pub enum ReadFailure {
    /// The cgroup is gone (`ENODEV`/`ENOENT`): the container stopped.
    Vanished,
    /// Anything else.
    Error(CgroupError),
}

/// Opens `dir/name`. `Ok(None)` when it does not exist (controller not enabled, older kernel).
///
/// # Errors
/// [`CgroupError::Open`] for any other failure.
pub fn open_optional(
    dir: &Path,
    name: &str,
    kind: CounterKind,
) -> Result<Option<CounterFile>, CgroupError> {
    let path = dir.join(name);
    match File::open(&path) {
        Ok(file) => Ok(Some(CounterFile { kind, file, path })),
        Err(err) if is_gone(&err) || err.kind() == io::ErrorKind::NotADirectory => Ok(None),
        Err(source) => Err(CgroupError::Open { path, source }),
    }
}

/// Whether an I/O error means the cgroup (or file) no longer exists.
#[must_use]
pub fn is_gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound
        || err.raw_os_error() == Some(rustix::io::Errno::NODEV.raw_os_error())
}

/// Reads the files of one cgroup into a [`Reading`]: every file when `slow` is set, else only
/// those whose kind is not [`CounterKind::is_slow`] (the others then stay at their defaults:
/// `None`, zero throttling).
///
/// # Errors
/// [`ReadFailure::Vanished`] as soon as one file reports the cgroup gone; otherwise the first
/// read or parse error.
pub fn read_all(
    files: &[CounterFile],
    buf: &mut Vec<u8>,
    user_hz: u64,
    slow: bool,
) -> Result<Reading, ReadFailure> {
    let mut reading = Reading::default();
    for counter in files.iter().filter(|f| slow || !f.kind.is_slow()) {
        let len = match pread_whole(&counter.file, buf) {
            Ok(len) => len,
            Err(err) if is_gone(&err) => return Err(ReadFailure::Vanished),
            Err(source) => {
                return Err(ReadFailure::Error(CgroupError::Read {
                    path: counter.path.clone(),
                    source,
                }));
            }
        };
        apply(counter.kind, &buf[..len], user_hz, &mut reading).map_err(|what| {
            ReadFailure::Error(CgroupError::Parse {
                path: counter.path.clone(),
                what,
            })
        })?;
    }
    Ok(reading)
}

/// `pread`s the whole file from offset 0 into `buf` (growing it when full); returns the length.
fn pread_whole(file: &File, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.is_empty() {
        buf.resize(INITIAL_BUFFER, 0);
    }
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let offset = u64::try_from(filled).expect("a buffer length fits in u64");
        match file.read_at(&mut buf[filled..], offset) {
            Ok(0) => return Ok(filled),
            Ok(n) => {
                filled += n;
                if filled < buf.len() {
                    return Ok(filled);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// Folds one file's contents into `reading`. The error names what was missing or malformed.
fn apply(
    kind: CounterKind,
    text: &[u8],
    user_hz: u64,
    reading: &mut Reading,
) -> Result<(), &'static str> {
    match kind {
        CounterKind::V2CpuStat => {
            let mut usage = None;
            let mut user = None;
            let mut system = None;
            for (key, value) in key_values(text) {
                match key {
                    b"usage_usec" => usage = Some(value?),
                    b"user_usec" => user = Some(value?),
                    b"system_usec" => system = Some(value?),
                    b"nr_periods" => reading.cpu.nr_periods = value?,
                    b"nr_throttled" => reading.cpu.nr_throttled = value?,
                    b"throttled_usec" => reading.cpu.throttled = CpuMicros(value?),
                    _ => {}
                }
            }
            reading.cpu.usage = CpuMicros(usage.ok_or("no usage_usec")?);
            reading.cpu.user = CpuMicros(user.ok_or("no user_usec")?);
            reading.cpu.system = CpuMicros(system.ok_or("no system_usec")?);
        }
        CounterKind::V1CpuacctUsage => {
            reading.cpu.usage = CpuMicros(single_value(text).ok_or("not a number")? / 1_000);
        }
        CounterKind::V1CpuacctStat => {
            let mut user = None;
            let mut system = None;
            for (key, value) in key_values(text) {
                match key {
                    b"user" => user = Some(value?),
                    b"system" => system = Some(value?),
                    _ => {}
                }
            }
            reading.cpu.user = ticks_to_micros(user.ok_or("no user")?, user_hz);
            reading.cpu.system = ticks_to_micros(system.ok_or("no system")?, user_hz);
        }
        CounterKind::V1CpuStat => {
            for (key, value) in key_values(text) {
                match key {
                    b"nr_periods" => reading.cpu.nr_periods = value?,
                    b"nr_throttled" => reading.cpu.nr_throttled = value?,
                    b"throttled_time" => reading.cpu.throttled = CpuMicros(value? / 1_000),
                    _ => {}
                }
            }
        }
        CounterKind::V2MemoryCurrent | CounterKind::V1MemoryUsage => {
            reading.memory_current = Some(Bytes(single_value(text).ok_or("not a number")?));
        }
        CounterKind::V2IoStat => reading.io = Some(parse_io_stat(text)?),
        CounterKind::V1BlkioServiceBytes => reading.io = Some(parse_blkio(text)?),
    }
    Ok(())
}

/// USER_HZ ticks to µs, saturating (only reachable with a corrupt counter).
#[must_use]
pub fn ticks_to_micros(ticks: u64, user_hz: u64) -> CpuMicros {
    let micros = u128::from(ticks) * 1_000_000 / u128::from(user_hz.max(1));
    CpuMicros(u64::try_from(micros).unwrap_or(u64::MAX))
}

/// `key value` lines (flat keyed files such as `cpu.stat`); the value is parsed lazily so
/// unknown keys with odd values are never an error.
fn key_values(text: &[u8]) -> impl Iterator<Item = (&[u8], Result<u64, &'static str>)> {
    text.split(|&b| b == b'\n').filter_map(|line| {
        let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
        let key = parts.next()?;
        let value = parts.next().and_then(parse_u64).ok_or("malformed value");
        Some((key, value))
    })
}

/// A file holding one number (`memory.current`, `cpuacct.usage`).
fn single_value(text: &[u8]) -> Option<u64> {
    parse_u64(text.trim_ascii())
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        if d.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// Sums `rbytes=`/`wbytes=` over the devices of a v2 `io.stat`. An empty file is zero IO.
fn parse_io_stat(text: &[u8]) -> Result<IoCounters, &'static str> {
    let mut io = IoCounters::default();
    for line in text.split(|&b| b == b'\n') {
        for field in line.split(|&b| b == b' ') {
            if let Some(v) = field.strip_prefix(b"rbytes=") {
                io.read = io
                    .read
                    .saturating_add(Bytes(parse_u64(v).ok_or("malformed rbytes")?));
            } else if let Some(v) = field.strip_prefix(b"wbytes=") {
                io.write = io
                    .write
                    .saturating_add(Bytes(parse_u64(v).ok_or("malformed wbytes")?));
            }
        }
    }
    Ok(io)
}

/// Sums the per-device `Read` and `Write` lines of v1 `blkio.throttle.io_service_bytes`
/// (`MAJ:MIN Read N`); the trailing `Total N` line has no device and is skipped.
fn parse_blkio(text: &[u8]) -> Result<IoCounters, &'static str> {
    let mut io = IoCounters::default();
    for line in text.split(|&b| b == b'\n') {
        let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
        let (Some(_device), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let slot = match op {
            b"Read" => &mut io.read,
            b"Write" => &mut io.write,
            _ => continue,
        };
        *slot = slot.saturating_add(Bytes(parse_u64(value).ok_or("malformed byte count")?));
    }
    Ok(io)
}

/// CPU limit in millicores from v2 `cpu.max` (`max 100000` = none).
#[must_use]
pub fn parse_cpu_max(text: &str) -> Option<u32> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?.parse::<u64>().ok()?;
    let period = parts.next()?.parse::<u64>().ok()?;
    millicores(quota, period)
}

/// CPU limit in millicores from v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` (`-1` = none).
#[must_use]
pub fn parse_cfs(quota: &str, period: &str) -> Option<u32> {
    let quota = quota.trim().parse::<i64>().ok()?;
    let period = period.trim().parse::<u64>().ok()?;
    millicores(u64::try_from(quota).ok()?, period)
}

fn millicores(quota: u64, period: u64) -> Option<u32> {
    if quota == 0 || period == 0 {
        return None;
    }
    u32::try_from(u128::from(quota) * 1_000 / u128::from(period)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(kind: CounterKind, text: &str) -> Result<Reading, &'static str> {
        let mut r = Reading::default();
        apply(kind, text.as_bytes(), 100, &mut r).map(|()| r)
    }

    #[test]
    fn v2_cpu_stat_with_cpu_controller_reads_throttling() {
        let r = reading(
            CounterKind::V2CpuStat,
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnice_usec 0\nnr_periods 7\n\
             nr_throttled 3\nthrottled_usec 250\nnr_bursts 0\nburst_usec 0\n",
        )
        .unwrap();
        assert_eq!(r.cpu.usage, CpuMicros(1500));
        assert_eq!(r.cpu.user, CpuMicros(1000));
        assert_eq!(r.cpu.system, CpuMicros(500));
        assert_eq!((r.cpu.nr_periods, r.cpu.nr_throttled), (7, 3));
        assert_eq!(r.cpu.throttled, CpuMicros(250));
    }

    #[test]
    fn v2_cpu_stat_without_usage_is_malformed() {
        assert_eq!(
            reading(CounterKind::V2CpuStat, "user_usec 1\nsystem_usec 2\n").unwrap_err(),
            "no usage_usec"
        );
        assert!(
            reading(
                CounterKind::V2CpuStat,
                "usage_usec x\nuser_usec 1\nsystem_usec 2"
            )
            .is_err()
        );
    }

    #[test]
    fn v1_files_convert_units() {
        let r = reading(CounterKind::V1CpuacctUsage, "123456789\n").unwrap();
        assert_eq!(r.cpu.usage, CpuMicros(123_456));
        let r = reading(CounterKind::V1CpuacctStat, "user 250\nsystem 50\n").unwrap();
        assert_eq!(
            (r.cpu.user, r.cpu.system),
            (CpuMicros(2_500_000), CpuMicros(500_000))
        );
        let r = reading(
            CounterKind::V1CpuStat,
            "nr_periods 10\nnr_throttled 2\nthrottled_time 9000\n",
        )
        .unwrap();
        assert_eq!(
            (r.cpu.nr_periods, r.cpu.nr_throttled, r.cpu.throttled),
            (10, 2, CpuMicros(9))
        );
    }

    #[test]
    fn io_stat_sums_devices_and_empty_is_zero() {
        let r = reading(
            CounterKind::V2IoStat,
            "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n\
             253:0 rbytes=5 wbytes=7 rios=1 wios=1 dbytes=0 dios=0\n",
        )
        .unwrap();
        assert_eq!(
            r.io,
            Some(IoCounters {
                read: Bytes(105),
                write: Bytes(207)
            })
        );
        assert_eq!(
            reading(CounterKind::V2IoStat, "").unwrap().io,
            Some(IoCounters::default())
        );
    }

    #[test]
    fn blkio_sums_read_write_and_skips_total() {
        let r = reading(
            CounterKind::V1BlkioServiceBytes,
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 8192\n8:0 Async 4096\n8:0 Discard 0\n\
             8:0 Total 12288\n8:16 Read 1\n8:16 Write 2\nTotal 12291\n",
        )
        .unwrap();
        assert_eq!(
            r.io,
            Some(IoCounters {
                read: Bytes(4097),
                write: Bytes(8194)
            })
        );
    }

    #[test]
    fn cpu_limits_parse_or_mean_none() {
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1500));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("50000\n", "100000\n"), Some(500));
    }

    #[test]
    fn ticks_to_micros_uses_the_tick_rate() {
        assert_eq!(ticks_to_micros(3, 100), CpuMicros(30_000));
        assert_eq!(ticks_to_micros(3, 250), CpuMicros(12_000));
        assert_eq!(ticks_to_micros(u64::MAX, 1), CpuMicros(u64::MAX));
    }

    #[test]
    fn pread_whole_grows_the_buffer_for_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("io.stat");
        let line = "8:0 rbytes=1 wbytes=1 rios=1 wios=1 dbytes=0 dios=0\n";
        let text = line.repeat(200);
        std::fs::write(&path, &text).unwrap();
        let file = File::open(&path).unwrap();
        let mut buf = Vec::new();
        let len = pread_whole(&file, &mut buf).unwrap();
        assert_eq!(&buf[..len], text.as_bytes());
        assert!(buf.len() > INITIAL_BUFFER);
    }
}
