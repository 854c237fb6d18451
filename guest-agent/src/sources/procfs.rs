//! VM-wide CPU time from `/proc/stat`, and the guest identity fields of the `Hello`.
//!
//! The aggregate `cpu` line of `/proc/stat` is the denominator of attribution: the share of the
//! VM's busy time each container used. It is parsed by the `procfs` crate
//! ([`procfs::KernelStats`]) from a buffer that is re-filled with `pread` on a handle kept open
//! by [`ProcStatReader`], and converted from USER_HZ ticks to µs.
//!
//! Every function takes the proc root (normally `/proc`) so tests use fake trees.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ::procfs::{ExplicitSystemInfo, FromBufReadSI, KernelStats};
use protocol::{CpuMicros, ProcStat};

/// `proc(5)`: kernel/system statistics.
const STAT: &str = "stat";
/// `proc(5)`: a random UUID generated at boot.
const BOOT_ID: &str = "sys/kernel/random/boot_id";
/// `proc(5)`: the UTS hostname of the reader.
const HOSTNAME: &str = "sys/kernel/hostname";
/// `proc(5)`: `uname -r`.
const OSRELEASE: &str = "sys/kernel/osrelease";

/// Initial read buffer; `/proc/stat` grows with CPUs and interrupt lines and the buffer with it.
const INITIAL_BUFFER: usize = 8192;

/// Errors of reading procfs.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// A file could not be opened.
    #[error("failed to open {path:?}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file could not be read.
    #[error("failed to read {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `/proc/stat` did not parse.
    #[error("malformed {path:?}")]
    ParseStat {
        /// The file.
        path: PathBuf,
        /// What the procfs crate said.
        #[source]
        source: ::procfs::ProcError,
    },
    /// A one-line file was empty.
    #[error("{path:?} is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Reads `/proc/stat` repeatedly through one open handle and one buffer.
#[derive(Debug)]
pub struct ProcStatReader {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    user_hz: u64,
}

impl ProcStatReader {
    /// Opens `<proc_root>/stat`, with USER_HZ from the auxiliary vector.
    ///
    /// # Errors
    /// [`ProcError::Open`].
    pub fn open(proc_root: &Path) -> Result<Self, ProcError> {
        Self::with_user_hz(proc_root, user_hz())
    }

    /// Opens `<proc_root>/stat` with an explicit USER_HZ.
    ///
    /// # Errors
    /// [`ProcError::Open`].
    pub fn with_user_hz(proc_root: &Path, user_hz: u64) -> Result<Self, ProcError> {
        let path = proc_root.join(STAT);
        let file = File::open(&path).map_err(|source| ProcError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            file,
            buf: vec![0; INITIAL_BUFFER],
            user_hz: user_hz.max(1),
        })
    }

    /// Reads and parses the file once.
    ///
    /// # Errors
    /// [`ProcError::Read`], [`ProcError::ParseStat`].
    pub fn read_stats(&mut self) -> Result<KernelStats, ProcError> {
        let len = pread_whole(&self.file, &mut self.buf).map_err(|source| ProcError::Read {
            path: self.path.clone(),
            source,
        })?;
        let info = ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: self.user_hz,
            page_size: 4096,
            is_little_endian: cfg!(target_endian = "little"),
        };
        KernelStats::from_buf_read(&self.buf[..len], &info).map_err(|source| ProcError::ParseStat {
            path: self.path.clone(),
            source,
        })
    }

    /// The aggregate `cpu` line in µs.
    ///
    /// # Errors
    /// As [`read_stats`](Self::read_stats).
    pub fn read(&mut self) -> Result<ProcStat, ProcError> {
        let stats = self.read_stats()?;
        Ok(to_proc_stat(&stats.total, self.user_hz))
    }

    /// Online CPUs: `/proc/stat` has one `cpuN` line per online CPU.
    ///
    /// # Errors
    /// As [`read_stats`](Self::read_stats).
    pub fn online_cpus(&mut self) -> Result<u32, ProcError> {
        let stats = self.read_stats()?;
        Ok(u32::try_from(stats.cpu_time.len()).unwrap_or(u32::MAX))
    }
}

/// One-shot read of the aggregate `cpu` line of `<proc_root>/stat` in µs. Keep a
/// [`ProcStatReader`] instead when reading every tick.
///
/// # Errors
/// [`ProcError`] when the file cannot be opened, read or parsed.
pub fn read_proc_stat(proc_root: &Path) -> Result<ProcStat, ProcError> {
    ProcStatReader::open(proc_root)?.read()
}

/// Online CPU count from `<proc_root>/stat`.
///
/// # Errors
/// [`ProcError`] when the file cannot be opened, read or parsed.
pub fn online_cpus(proc_root: &Path) -> Result<u32, ProcError> {
    ProcStatReader::open(proc_root)?.online_cpus()
}

/// The kernel's boot id (a UUID), which names the guest boot in stream identities.
///
/// # Errors
/// [`ProcError::Read`] or [`ProcError::Empty`].
pub fn boot_id(proc_root: &Path) -> Result<String, ProcError> {
    read_line(&proc_root.join(BOOT_ID))
}

/// The hostname of the UTS namespace the agent runs in.
///
/// # Errors
/// [`ProcError::Read`] or [`ProcError::Empty`].
pub fn hostname(proc_root: &Path) -> Result<String, ProcError> {
    read_line(&proc_root.join(HOSTNAME))
}

/// The kernel release (`uname -r`).
///
/// # Errors
/// [`ProcError::Read`] or [`ProcError::Empty`].
pub fn kernel_release(proc_root: &Path) -> Result<String, ProcError> {
    read_line(&proc_root.join(OSRELEASE))
}

fn read_line(path: &Path) -> Result<String, ProcError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.to_owned(),
        source,
    })?;
    let line = text.trim();
    if line.is_empty() {
        return Err(ProcError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(line.to_owned())
}

fn to_proc_stat(cpu: &::procfs::CpuTime, user_hz: u64) -> ProcStat {
    let us = |ticks: u64| ticks_to_micros(ticks, user_hz);
    let opt = |ticks: Option<u64>| us(ticks.unwrap_or(0));
    ProcStat {
        user: us(cpu.user),
        nice: us(cpu.nice),
        system: us(cpu.system),
        idle: us(cpu.idle),
        iowait: opt(cpu.iowait),
        irq: opt(cpu.irq),
        softirq: opt(cpu.softirq),
        steal: opt(cpu.steal),
        guest: opt(cpu.guest),
        guest_nice: opt(cpu.guest_nice),
    }
}

fn ticks_to_micros(ticks: u64, user_hz: u64) -> CpuMicros {
    let micros = u128::from(ticks) * 1_000_000 / u128::from(user_hz.max(1));
    CpuMicros(u64::try_from(micros).unwrap_or(u64::MAX))
}

/// `pread`s the whole file from offset 0, growing `buf` when a read fills it.
fn pread_whole(file: &File, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len().max(INITIAL_BUFFER) * 2, 0);
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

fn user_hz() -> u64 {
    match ::procfs::ticks_per_second() {
        0 => super::cgroup::DEFAULT_USER_HZ,
        hz => hz,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_TEXT: &str = "\
cpu  1000 20 300 40000 50 6 7 8 9 10
cpu0 500 10 150 20000 25 3 3 4 4 5
cpu1 500 10 150 20000 25 3 4 4 5 5
intr 12345 0 0
ctxt 999
btime 1700000000
processes 42
procs_running 1
procs_blocked 0
softirq 0 0 0
";

    fn fake_proc() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STAT), STAT_TEXT).unwrap();
        std::fs::create_dir_all(dir.path().join("sys/kernel/random")).unwrap();
        std::fs::write(
            dir.path().join(BOOT_ID),
            "3f1c7c3e-1111-2222-3333-444455556666\n",
        )
        .unwrap();
        std::fs::write(dir.path().join(HOSTNAME), "guest-vm\n").unwrap();
        std::fs::write(dir.path().join(OSRELEASE), "6.12.59-linuxkit\n").unwrap();
        dir
    }

    #[test]
    fn proc_stat_converts_ticks_to_micros() {
        let proc = fake_proc();
        let stat = ProcStatReader::with_user_hz(proc.path(), 100)
            .unwrap()
            .read()
            .unwrap();
        assert_eq!(stat.user, CpuMicros(10_000_000));
        assert_eq!(stat.nice, CpuMicros(200_000));
        assert_eq!(stat.system, CpuMicros(3_000_000));
        assert_eq!(stat.idle, CpuMicros(400_000_000));
        assert_eq!(stat.iowait, CpuMicros(500_000));
        assert_eq!(stat.steal, CpuMicros(80_000));
        assert_eq!(stat.guest_nice, CpuMicros(100_000));
        let stat = ProcStatReader::with_user_hz(proc.path(), 250)
            .unwrap()
            .read()
            .unwrap();
        assert_eq!(stat.user, CpuMicros(4_000_000));
    }

    #[test]
    fn reader_sees_rewritten_file() {
        let proc = fake_proc();
        let mut reader = ProcStatReader::with_user_hz(proc.path(), 100).unwrap();
        assert_eq!(reader.read().unwrap().user, CpuMicros(10_000_000));
        std::fs::write(
            proc.path().join(STAT),
            STAT_TEXT.replacen("1000", "2000", 1),
        )
        .unwrap();
        assert_eq!(reader.read().unwrap().user, CpuMicros(20_000_000));
    }

    #[test]
    fn hello_fields_read_and_trim() {
        let proc = fake_proc();
        assert_eq!(
            boot_id(proc.path()).unwrap(),
            "3f1c7c3e-1111-2222-3333-444455556666"
        );
        assert_eq!(hostname(proc.path()).unwrap(), "guest-vm");
        assert_eq!(kernel_release(proc.path()).unwrap(), "6.12.59-linuxkit");
        assert_eq!(online_cpus(proc.path()).unwrap(), 2);
    }

    #[test]
    fn malformed_stat_is_a_parse_error() {
        let proc = fake_proc();
        std::fs::write(proc.path().join(STAT), "cpu0 1 2 3\n").unwrap();
        assert!(matches!(
            read_proc_stat(proc.path()),
            Err(ProcError::ParseStat { .. })
        ));
        std::fs::write(proc.path().join(HOSTNAME), "\n").unwrap();
        assert!(matches!(
            hostname(proc.path()),
            Err(ProcError::Empty { .. })
        ));
    }

    #[test]
    fn real_proc_stat_is_consistent_with_the_machine() {
        let root = Path::new("/proc");
        let mut reader = ProcStatReader::open(root).unwrap();
        let first = reader.read().unwrap();
        let second = reader.read().unwrap();
        assert!(first.idle.0 > 0 || first.busy().0 > 0);
        assert!(second.busy() >= first.busy());
        let cpus = online_cpus(root).unwrap();
        let available = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert!(
            usize::try_from(cpus).unwrap() >= available,
            "{cpus} online < {available} usable"
        );
        assert_eq!(boot_id(root).unwrap().len(), 36);
    }
}
