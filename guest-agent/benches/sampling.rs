//! Cost of one sampling pass. Target (issue #2): ≤ 2 µs per container per sample.
//!
//! Every `sample/*` benchmark samples [`CONTAINERS`] containers per iteration, so
//! ns per container = criterion's time per iteration / 100 (criterion also prints the
//! throughput in containers per second).
//!
//! - `sample/fake_v2_100`: a cgroup v2-shaped tree in a temp dir (`cpu.stat` with the cpu
//!   controller's lines, `memory.current`, a two-device `io.stat`; 3 files per container).
//!   A `pread` on tmpfs/ext4 only copies page-cache bytes, which is cheaper than kernfs, where
//!   every read renders the file (and `cpu.stat` flushes the rstat tree), so this is a floor.
//! - `sample/real_unified_100`: 100 real cgroups under the cgroup2 mount. On a hybrid host
//!   (the CI machine) the unified hierarchy has no memory or io controller: 1 file
//!   (`cpu.stat`) per container. On a pure v2 host with controllers enabled it would be 3.
//! - `sample/real_hybrid_100`: the same cgroups also created in the v1 `cpu`, `cpuacct`,
//!   `memory` and `blkio` hierarchies, sampled as a hybrid host samples a systemd-driver
//!   container: unified `cpu.stat` + v1 `cpu.stat`, `memory.usage_in_bytes`,
//!   `blkio.throttle.io_service_bytes` (4 files).
//! - `sample/real_v1_100`: the v1 cgroups only, as a pure v1 host reads them: `cpuacct.usage`,
//!   `cpuacct.stat`, `cpu.stat`, `memory.usage_in_bytes`, `blkio.throttle.io_service_bytes`
//!   (5 files).
//! - `sample/real_hybrid_cpu_100`, `sample/real_v1_cpu_100`: the same with
//!   `CounterSet::CPU` (CPU time only): 1 file on hybrid, 2 on v1.
//! - `sample/real_hybrid_cadence10_100`, `sample/real_v1_cadence10_100`: all counters with the
//!   agent's default cadence (`--slow-counters-every 10`): CPU files every sample, memory, IO
//!   and v1 throttling every 10th. One iteration is one sample, and the 100 containers share
//!   one cadence, so criterion's mean over many iterations is the amortised cost (9 cheap
//!   samples, 1 full one).
//! - `pread_floor/<hierarchy>/<file>`: one bare `pread` of one real cgroup file in CPU time,
//!   the kernel's price per file, which no reader can go below.
//! - `proc_stat/read`: one `/proc/stat` read and parse (once per tick, not per container).
//!
//! Each is measured twice: `sample/…` in wall time (criterion's default) and `sample_cpu/…` in
//! this thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`). On a shared machine the wall time also
//! counts the time the bench thread waited for a CPU; the CPU time is what sampling costs.
//!
//! Real-cgroup benches need root and the mounts; they are skipped with a message otherwise.
//! The real cgroups are empty: with busy tasks inside, `cpu.stat` on v2 also pays for flushing
//! the per-CPU stats those tasks dirtied.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guest_agent::sources::cgroup::{CgroupMounts, CgroupSampler, CounterSet, V1Mounts};
use guest_agent::sources::procfs::ProcStatReader;
use protocol::{CgroupMode, ContainerCounters};

const CONTAINERS: usize = 100;

fn cid(n: usize) -> String {
    format!("{n:064x}")
}

/// A v2 tree like Docker's cgroupfs driver leaves on Docker Desktop, with realistic numbers.
fn fake_v2_tree(root: &Path) -> CgroupSampler {
    let mount = root.join("sys/fs/cgroup");
    for n in 0..CONTAINERS {
        let dir = mount.join(format!("docker/{}", cid(n)));
        fs::create_dir_all(&dir).unwrap();
        let usage = 48_213_775_u64 + 1_000 * n as u64;
        fs::write(
            dir.join("cpu.stat"),
            format!(
                "usage_usec {usage}\nuser_usec {}\nsystem_usec {}\ncore_sched.force_idle_usec 0\n\
                 nr_periods 12044\nnr_throttled 311\nthrottled_usec 9822310\nnr_bursts 0\nburst_usec 0\n",
                usage / 3 * 2,
                usage / 3
            ),
        )
        .unwrap();
        fs::write(dir.join("cpu.max"), "200000 100000\n").unwrap();
        fs::write(dir.join("memory.current"), "187457536\n").unwrap();
        fs::write(
            dir.join("io.stat"),
            "254:0 rbytes=40960000 wbytes=1228800 rios=1021 wios=300 dbytes=0 dios=0\n\
             7:0 rbytes=1048576 wbytes=0 rios=20 wios=0 dbytes=0 dios=0\n",
        )
        .unwrap();
    }
    let mounts = CgroupMounts {
        mode: CgroupMode::V2,
        v2: Some(mount),
        v1: V1Mounts::default(),
    };
    let mut sampler = CgroupSampler::new(mounts);
    let report = sampler.rescan().unwrap();
    assert_eq!(report.added.len(), CONTAINERS, "{report:?}");
    sampler
}

/// Real cgroups `joulebridge-bench-<pid>/docker/<id>` under several mounts, removed on drop.
struct RealTree {
    tops: Vec<PathBuf>,
}

impl RealTree {
    fn create(mounts: &[&Path]) -> Result<Self, String> {
        let name = format!("joulebridge-bench-{}", std::process::id());
        let mut tree = Self { tops: Vec::new() };
        for mount in mounts {
            let top = mount.join(&name);
            fs::create_dir(&top).map_err(|e| format!("cannot create {}: {e}", top.display()))?;
            tree.tops.push(top.clone());
            fs::create_dir(top.join("docker")).map_err(|e| e.to_string())?;
            for n in 0..CONTAINERS {
                fs::create_dir(top.join("docker").join(cid(n))).map_err(|e| e.to_string())?;
            }
        }
        Ok(tree)
    }

    fn rel(&self, n: usize) -> String {
        let top = self.tops[0].file_name().unwrap().to_str().unwrap();
        format!("{top}/docker/{}", cid(n))
    }
}

impl Drop for RealTree {
    fn drop(&mut self) {
        for top in &self.tops {
            for n in 0..CONTAINERS {
                let _removed = fs::remove_dir(top.join("docker").join(cid(n)));
            }
            let _removed = fs::remove_dir(top.join("docker"));
            if let Err(err) = fs::remove_dir(top) {
                eprintln!("warning: could not remove {}: {err}", top.display());
            }
        }
    }
}

fn tracked(
    mounts: CgroupMounts,
    counters: CounterSet,
    slow_every: u32,
    tree: &RealTree,
    files_per_container: &str,
) -> CgroupSampler {
    let mut sampler = CgroupSampler::new(mounts)
        .with_counters(counters)
        .with_slow_every(NonZeroU32::new(slow_every).unwrap());
    for n in 0..CONTAINERS {
        sampler.track(cid(n), &tree.rel(n)).unwrap();
    }
    eprintln!("sampling {CONTAINERS} real cgroups, {files_per_container}");
    sampler
}

/// This thread's CPU time, in ns.
struct ThreadCpuTime;

impl ThreadCpuTime {
    fn now_ns() -> u64 {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        u64::try_from(ts.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap()
    }
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        Self::now_ns()
    }
    fn end(&self, start: u64) -> u64 {
        Self::now_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    #[allow(clippy::cast_precision_loss)]
    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuNanosFormatter
    }
}

/// Formats CPU ns like criterion's wall-time formatter, marked "cpu"; the throughput line
/// shows CPU ns per element (per container), the unit the target is stated in.
struct CpuNanosFormatter;

impl ValueFormatter for CpuNanosFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical < 1e3 {
            (1.0, "ns cpu")
        } else if typical < 1e6 {
            (1e-3, "µs cpu")
        } else {
            (1e-6, "ms cpu")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    #[allow(clippy::cast_precision_loss)]
    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let per_iteration = match *throughput {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => {
                n as f64
            }
        };
        values.iter_mut().for_each(|v| *v /= per_iteration);
        "ns cpu/elem"
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn bench_sampler(
    c: &mut Criterion,
    c_cpu: &mut Criterion<ThreadCpuTime>,
    name: &str,
    sampler: &mut CgroupSampler,
) {
    let mut out: Vec<ContainerCounters> = Vec::with_capacity(CONTAINERS);
    let report = sampler.sample(&mut out);
    assert!(
        report.vanished.is_empty() && report.errors.is_empty(),
        "{report:?}"
    );
    assert_eq!(out.len(), CONTAINERS);
    let mut group = c.benchmark_group("sample");
    group.throughput(Throughput::Elements(CONTAINERS as u64));
    group.bench_function(name, |b| {
        b.iter(|| black_box(sampler.sample(black_box(&mut out))));
    });
    group.finish();
    let mut group = c_cpu.benchmark_group("sample_cpu");
    group.throughput(Throughput::Elements(CONTAINERS as u64));
    group.bench_function(name, |b| {
        b.iter(|| black_box(sampler.sample(black_box(&mut out))));
    });
    group.finish();
}

fn config() -> Criterion {
    // Short runs: the bench machine is shared by several engineers.
    Criterion::default()
        .sample_size(50)
        .measurement_time(Duration::from_secs(4))
        .configure_from_args()
}

fn sampling(c: &mut Criterion) {
    let c_cpu = &mut config().with_measurement(ThreadCpuTime);
    let tmp = tempfile::tempdir().unwrap();
    let mut fake = fake_v2_tree(tmp.path());
    bench_sampler(c, c_cpu, "fake_v2_100", &mut fake);

    let real = CgroupMounts::discover(Path::new("/")).unwrap();
    let Some(v2) = real.v2.clone() else {
        eprintln!("skipped real-cgroup benches: no cgroup2 mount");
        return;
    };
    match RealTree::create(&[&v2]) {
        Ok(tree) => {
            let mounts = CgroupMounts {
                mode: CgroupMode::V2,
                v2: Some(v2.clone()),
                v1: V1Mounts::default(),
            };
            let mut sampler = tracked(mounts, CounterSet::ALL, 1, &tree, "1 file: cpu.stat");
            bench_sampler(c, c_cpu, "real_unified_100", &mut sampler);
        }
        Err(err) => eprintln!("skipped sample/real_unified_100: {err}"),
    }

    let v1 = real.v1.clone();
    let (Some(cpu), Some(cpuacct), Some(memory), Some(blkio)) = (
        v1.cpu.clone(),
        v1.cpuacct.clone(),
        v1.memory.clone(),
        v1.blkio.clone(),
    ) else {
        eprintln!("skipped hybrid and v1 benches: not every v1 controller is mounted");
        return;
    };
    let mut dirs: Vec<&Path> = vec![&v2, &cpu, &cpuacct, &memory, &blkio];
    dirs.dedup();
    match RealTree::create(&dirs) {
        Ok(tree) => {
            let hybrid = CgroupMounts {
                mode: CgroupMode::Hybrid,
                ..real.clone()
            };
            let v1_only = CgroupMounts {
                mode: CgroupMode::V1,
                v2: None,
                v1: real.v1.clone(),
            };
            for (name, mounts, counters, slow_every, files) in [
                (
                    "real_hybrid_100",
                    &hybrid,
                    CounterSet::ALL,
                    1,
                    "4 files: unified cpu.stat, v1 cpu.stat, memory.usage_in_bytes, blkio",
                ),
                (
                    "real_hybrid_cpu_100",
                    &hybrid,
                    CounterSet::CPU,
                    1,
                    "1 file: unified cpu.stat",
                ),
                (
                    "real_hybrid_cadence10_100",
                    &hybrid,
                    CounterSet::ALL,
                    10,
                    "1 file every sample (unified cpu.stat), 3 more every 10th",
                ),
                (
                    "real_v1_100",
                    &v1_only,
                    CounterSet::ALL,
                    1,
                    "5 files: cpuacct.usage, cpuacct.stat, cpu.stat, memory, blkio",
                ),
                (
                    "real_v1_cpu_100",
                    &v1_only,
                    CounterSet::CPU,
                    1,
                    "2 files: cpuacct.usage, cpuacct.stat",
                ),
                (
                    "real_v1_cadence10_100",
                    &v1_only,
                    CounterSet::ALL,
                    10,
                    "2 files every sample (cpuacct.usage, cpuacct.stat), 3 more every 10th",
                ),
            ] {
                let mut sampler = tracked(mounts.clone(), counters, slow_every, &tree, files);
                bench_sampler(c, c_cpu, name, &mut sampler);
            }
            pread_floor(c_cpu, &tree);
        }
        Err(err) => eprintln!("skipped real hybrid/v1 benches: {err}"),
    }
}

/// The kernel's price of one file: a bare `pread` of one real cgroup file, no parsing, in CPU
/// time. The per-container cost of a sample cannot go below the sum over its files.
fn pread_floor(c_cpu: &mut Criterion<ThreadCpuTime>, tree: &RealTree) {
    use std::os::unix::fs::FileExt;
    let rel = tree.rel(0);
    let mut group = c_cpu.benchmark_group("pread_floor");
    for top in &tree.tops {
        let mount = top.parent().unwrap();
        let dir = mount.join(&rel);
        for name in [
            "cpu.stat",
            "cpuacct.usage",
            "cpuacct.stat",
            "memory.usage_in_bytes",
            "blkio.throttle.io_service_bytes",
        ] {
            let Ok(file) = fs::File::open(dir.join(name)) else {
                continue;
            };
            let label = format!("{}/{name}", mount.file_name().unwrap().to_string_lossy());
            let mut buf = vec![0u8; 4096];
            group.bench_function(label, |b| {
                b.iter(|| black_box(file.read_at(&mut buf, 0).unwrap()));
            });
        }
    }
    group.finish();
}

fn proc_stat(c: &mut Criterion) {
    let mut reader = ProcStatReader::open(Path::new("/proc")).unwrap();
    c.bench_function("proc_stat/read", |b| {
        b.iter(|| black_box(reader.read().unwrap()))
    });
}

criterion_group! {
    name = benches;
    config = config();
    targets = sampling, proc_stat
}
criterion_main!(benches);
