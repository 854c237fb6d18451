//! cgroup discovery and sampling over fake trees (one per layout met in the wild) and over real
//! cgroups of this machine.
//!
//! Fake trees are built in a temp dir: a `proc/self/mountinfo` naming the hierarchies, and
//! cgroup directories holding counter files with kernel-shaped contents. Real-cgroup tests
//! create their own cgroups under the real mounts and remove them in a drop guard.

// Fixture helpers live outside `#[test]` functions, where clippy's `allow-unwrap-in-tests` does
// not reach; a fixture that cannot be built must fail the test loudly.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use guest_agent::sources::cgroup::{CgroupError, CgroupMounts, CgroupSampler, CounterSet};
use protocol::{Bytes, CgroupMode, ContainerCounters, CpuMicros, IoCounters};

/// USER_HZ used for fake v1 trees, so expected values do not depend on the host.
const HZ: u64 = 100;

/// A 64-hex container id made of one repeated byte.
fn cid(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// A fake host root: mountinfo plus cgroup directories.
struct FakeHost {
    dir: tempfile::TempDir,
}

impl FakeHost {
    /// `mounts`: (absolute mount point, fstype, super options).
    fn new(mounts: &[(&str, &str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut table = String::from(
            "22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n\
             25 22 0:23 / /sys/fs/cgroup rw,nosuid shared:8 - tmpfs tmpfs ro,mode=755\n",
        );
        for (i, (mount_point, fstype, options)) in mounts.iter().enumerate() {
            table.push_str(&format!(
                "{id} 25 0:{id} / {mount_point} rw,nosuid,nodev,noexec,relatime shared:{id} - {fstype} {fstype} {options}\n",
                id = 30 + i
            ));
            fs::create_dir_all(
                dir.path()
                    .join(unescape_space(mount_point).trim_start_matches('/')),
            )
            .unwrap();
        }
        fs::create_dir_all(dir.path().join("proc/self")).unwrap();
        fs::write(dir.path().join("proc/self/mountinfo"), table).unwrap();
        Self { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Absolute path of the fake machine → path in the temp dir.
    fn at(&self, abs: &str) -> PathBuf {
        self.root().join(abs.trim_start_matches('/'))
    }

    /// Writes `files` into the cgroup directory `abs_dir`, creating it.
    fn cgroup(&self, abs_dir: &str, files: &[(&str, String)]) {
        let dir = self.at(abs_dir);
        fs::create_dir_all(&dir).unwrap();
        for (name, contents) in files {
            fs::write(dir.join(name), contents).unwrap();
        }
    }

    fn mounts(&self) -> CgroupMounts {
        CgroupMounts::discover(self.root()).unwrap()
    }

    fn sampler(&self) -> CgroupSampler {
        CgroupSampler::with_user_hz(self.mounts(), HZ)
    }
}

fn unescape_space(s: &str) -> String {
    s.replace("\\040", " ")
}

/// Pure v2 (Docker Desktop, LinuxKit, Debian 11+, Fedora 31+).
fn v2_host() -> FakeHost {
    FakeHost::new(&[(
        "/sys/fs/cgroup",
        "cgroup2",
        "rw,nsdelegate,memory_recursiveprot",
    )])
}

/// v1 with separate `cpu` and `cpuacct` mounts (the project CI host; containers/crun PR #612).
fn v1_separate_host() -> FakeHost {
    FakeHost::new(&[
        ("/sys/fs/cgroup/cpu", "cgroup", "rw,cpu"),
        ("/sys/fs/cgroup/cpuacct", "cgroup", "rw,cpuacct"),
        ("/sys/fs/cgroup/memory", "cgroup", "rw,memory"),
        ("/sys/fs/cgroup/blkio", "cgroup", "rw,blkio"),
        ("/sys/fs/cgroup/systemd", "cgroup", "rw,xattr,name=systemd"),
    ])
}

/// v1 with `cpu,cpuacct` co-mounted (systemd's default on v1: Debian 10, CentOS 7, Ubuntu 20.04).
fn v1_combined_host() -> FakeHost {
    FakeHost::new(&[
        ("/sys/fs/cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"),
        ("/sys/fs/cgroup/memory", "cgroup", "rw,memory"),
        ("/sys/fs/cgroup/blkio", "cgroup", "rw,blkio"),
    ])
}

/// Hybrid: v1 controllers plus cgroup2 at `unified` (systemd's hybrid mode: Ubuntu 18.04–20.04,
/// Debian 10 with systemd 241, the project CI host).
fn hybrid_host() -> FakeHost {
    FakeHost::new(&[
        ("/sys/fs/cgroup/cpu", "cgroup", "rw,cpu"),
        ("/sys/fs/cgroup/cpuacct", "cgroup", "rw,cpuacct"),
        ("/sys/fs/cgroup/memory", "cgroup", "rw,memory"),
        ("/sys/fs/cgroup/blkio", "cgroup", "rw,blkio"),
        ("/sys/fs/cgroup/unified", "cgroup2", "rw,nsdelegate"),
    ])
}

/// Files of a v2 cgroup: `cpu.stat` (with throttling lines when `limit` is set, as the cpu
/// controller is then enabled), `cpu.max`, `memory.current`, `io.stat` over two devices.
fn v2_files(
    usage: u64,
    mem: u64,
    io: (u64, u64),
    limit: Option<(u64, u64)>,
) -> Vec<(&'static str, String)> {
    let (user, system) = (usage * 2 / 3, usage - usage * 2 / 3);
    let mut cpu_stat =
        format!("usage_usec {usage}\nuser_usec {user}\nsystem_usec {system}\nnice_usec 0\n");
    let mut files = Vec::new();
    if let Some((quota, period)) = limit {
        cpu_stat.push_str(
            "nr_periods 40\nnr_throttled 4\nthrottled_usec 1234\nnr_bursts 0\nburst_usec 0\n",
        );
        files.push(("cpu.max", format!("{quota} {period}\n")));
    }
    files.push(("cpu.stat", cpu_stat));
    files.push(("memory.current", format!("{mem}\n")));
    files.push((
        "io.stat",
        format!(
            "8:0 rbytes={} wbytes={} rios=3 wios=4 dbytes=0 dios=0\n253:0 rbytes={} wbytes={} rios=1 wios=1 dbytes=0 dios=0\n",
            io.0 - io.0 / 2,
            io.1 - io.1 / 2,
            io.0 / 2,
            io.1 / 2
        ),
    ));
    files
}

/// `cpuacct` files: usage in ns, user/system in ticks.
fn cpuacct_files(usage_ns: u64, user_ticks: u64, system_ticks: u64) -> Vec<(&'static str, String)> {
    vec![
        ("cpuacct.usage", format!("{usage_ns}\n")),
        (
            "cpuacct.stat",
            format!("user {user_ticks}\nsystem {system_ticks}\n"),
        ),
    ]
}

/// v1 `cpu` controller files: throttling in ns, CFS quota.
fn cpu_files(throttled_ns: u64, quota: i64) -> Vec<(&'static str, String)> {
    vec![
        (
            "cpu.stat",
            format!(
                "nr_periods 100\nnr_throttled 7\nthrottled_time {throttled_ns}\nnr_bursts 0\nburst_time 0\n"
            ),
        ),
        ("cpu.cfs_quota_us", format!("{quota}\n")),
        ("cpu.cfs_period_us", "100000\n".to_owned()),
        ("cpu.shares", "1024\n".to_owned()),
    ]
}

fn blkio_files(read: u64, write: u64) -> Vec<(&'static str, String)> {
    vec![(
        "blkio.throttle.io_service_bytes",
        format!(
            "8:0 Read {read}\n8:0 Write {write}\n8:0 Sync {write}\n8:0 Async {read}\n8:0 Discard 0\n8:0 Total {}\nTotal {}\n",
            read + write,
            read + write
        ),
    )]
}

fn sample(sampler: &mut CgroupSampler) -> Vec<ContainerCounters> {
    let mut out = Vec::new();
    let report = sampler.sample(&mut out);
    assert!(
        report.vanished.is_empty() && report.errors.is_empty(),
        "{report:?}"
    );
    out
}

fn added_sorted(sampler: &mut CgroupSampler) -> Vec<String> {
    let report = sampler.rescan().unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let mut added = report.added;
    added.sort();
    added
}

// Docker with the cgroupfs driver on cgroup v2: Docker Desktop's VM, LinuxKit, VMs without
// systemd. Containers at `/sys/fs/cgroup/docker/<id>`; dockerd's own `docker` parent and
// unrelated cgroups must not be reported.
#[test]
fn v2_cgroupfs_docker_reads_every_counter() {
    let host = v2_host();
    let (a, b) = (cid(0xa1), cid(0xb2));
    host.cgroup("/sys/fs/cgroup/docker", &v2_files(999_999, 1, (1, 2), None));
    host.cgroup(
        &format!("/sys/fs/cgroup/docker/{a}"),
        &v2_files(1_500_000, 64 << 20, (4096, 8192), Some((200_000, 100_000))),
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/docker/{b}"),
        &v2_files(30, 4096, (10, 20), None),
    );
    host.cgroup("/sys/fs/cgroup/init.scope", &v2_files(5, 5, (5, 5), None));

    let mut sampler = host.sampler();
    assert_eq!(sampler.mode(), CgroupMode::V2);
    assert_eq!(added_sorted(&mut sampler), vec![a.clone(), b.clone()]);
    let out = sample(&mut sampler);
    assert_eq!(out.len(), 2);
    let first = &out[0];
    assert_eq!(first.id, a);
    assert_eq!(first.cpu.usage, CpuMicros(1_500_000));
    assert_eq!(first.cpu.user, CpuMicros(1_000_000));
    assert_eq!(first.cpu.system, CpuMicros(500_000));
    assert_eq!((first.cpu.nr_periods, first.cpu.nr_throttled), (40, 4));
    assert_eq!(first.cpu.throttled, CpuMicros(1234));
    assert_eq!(first.memory_current, Some(Bytes(64 << 20)));
    assert_eq!(
        first.io,
        Some(IoCounters {
            read: Bytes(4096),
            write: Bytes(8192)
        })
    );
    assert_eq!(first.cpu_limit_millicores, Some(2000));
    assert_eq!(out[1].id, b);
    assert_eq!(out[1].cpu.usage, CpuMicros(30));
    assert_eq!(out[1].cpu_limit_millicores, None);
    assert_eq!(
        sampler.tracked().collect::<Vec<_>>(),
        vec![
            (a.as_str(), format!("docker/{a}").as_str()),
            (b.as_str(), format!("docker/{b}").as_str())
        ]
    );
}

// Docker with the systemd driver on cgroup v2 (the default on Debian 11+, Ubuntu 21.10+, Colima,
// Lima): `system.slice/docker-<id>.scope`, next to `docker.service` and the overlay `.mount`
// units that must not match.
#[test]
fn v2_systemd_docker_scope_is_found_and_siblings_ignored() {
    let host = v2_host();
    let id = cid(0x3c);
    host.cgroup(
        &format!("/sys/fs/cgroup/system.slice/docker-{id}.scope"),
        &v2_files(777, 100, (1, 2), Some((100_000, 100_000))),
    );
    fs::write(
        host.at(&format!(
            "/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.max"
        )),
        "max 100000\n",
    )
    .unwrap();
    host.cgroup(
        "/sys/fs/cgroup/system.slice/docker.service",
        &v2_files(1, 1, (1, 1), None),
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/system.slice/var-lib-docker-overlay2-{id}-merged.mount"),
        &v2_files(1, 1, (1, 1), None),
    );
    host.cgroup(
        "/sys/fs/cgroup/system.slice/docker-compose.scope",
        &v2_files(1, 1, (1, 1), None),
    );

    let mut sampler = host.sampler();
    assert_eq!(added_sorted(&mut sampler), vec![id.clone()]);
    let out = sample(&mut sampler);
    assert_eq!(out[0].cpu.usage, CpuMicros(777));
    assert_eq!(
        out[0].cpu_limit_millicores, None,
        "cpu.max `max` means no limit"
    );
    assert_eq!(
        sampler.tracked().next().unwrap().1,
        format!("system.slice/docker-{id}.scope")
    );
}

// cgroup v1 with separate `cpu` and `cpuacct` hierarchies, Docker cgroupfs driver: the project
// CI host, and hosts booted with `cgroup_no_v1`-less custom mounts (containers/crun PR #612).
#[test]
fn v1_separate_cpu_and_cpuacct_mounts_convert_units() {
    let host = v1_separate_host();
    let id = cid(0x11);
    let rel = format!("docker/{id}");
    host.cgroup(
        &format!("/sys/fs/cgroup/cpuacct/{rel}"),
        &cpuacct_files(2_500_000_123, 180, 70),
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/cpu/{rel}"),
        &cpu_files(9_000_500, 150_000),
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/memory/{rel}"),
        &[("memory.usage_in_bytes", "1048576\n".to_owned())],
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/blkio/{rel}"),
        &blkio_files(512, 1024),
    );
    host.cgroup(&format!("/sys/fs/cgroup/systemd/{rel}"), &[]);

    let mounts = host.mounts();
    assert_eq!(mounts.mode, CgroupMode::V1);
    assert_ne!(mounts.v1.cpu, mounts.v1.cpuacct);
    let mut sampler = CgroupSampler::with_user_hz(mounts, HZ);
    assert_eq!(added_sorted(&mut sampler), vec![id.clone()]);
    let c = &sample(&mut sampler)[0];
    assert_eq!(c.cpu.usage, CpuMicros(2_500_000_123 / 1000));
    assert_eq!(c.cpu.user, CpuMicros(180 * 1_000_000 / HZ));
    assert_eq!(c.cpu.system, CpuMicros(70 * 1_000_000 / HZ));
    assert_eq!((c.cpu.nr_periods, c.cpu.nr_throttled), (100, 7));
    assert_eq!(c.cpu.throttled, CpuMicros(9_000_500 / 1000));
    assert_eq!(c.memory_current, Some(Bytes(1_048_576)));
    assert_eq!(
        c.io,
        Some(IoCounters {
            read: Bytes(512),
            write: Bytes(1024)
        })
    );
    assert_eq!(c.cpu_limit_millicores, Some(1500));
}

// cgroup v1 with `cpu,cpuacct` co-mounted (systemd's default layout on v1 hosts: Debian 10,
// CentOS 7, Ubuntu 18.04 without unified), Docker cgroupfs driver. No memory file here: memory
// is optional.
#[test]
fn v1_combined_cpu_cpuacct_reads_one_directory() {
    let host = v1_combined_host();
    let id = cid(0x22);
    let dir = format!("/sys/fs/cgroup/cpu,cpuacct/docker/{id}");
    host.cgroup(&dir, &cpuacct_files(4_000_000, 30, 10));
    host.cgroup(&dir, &cpu_files(0, -1));
    host.cgroup(
        &format!("/sys/fs/cgroup/blkio/docker/{id}"),
        &blkio_files(0, 0),
    );

    let mounts = host.mounts();
    assert_eq!(mounts.mode, CgroupMode::V1);
    assert_eq!(mounts.v1.cpu, mounts.v1.cpuacct);
    assert_eq!(
        mounts.v1.cpu.as_deref(),
        Some(host.at("/sys/fs/cgroup/cpu,cpuacct").as_path())
    );
    let mut sampler = CgroupSampler::with_user_hz(mounts, HZ);
    assert_eq!(added_sorted(&mut sampler), vec![id]);
    let c = &sample(&mut sampler)[0];
    assert_eq!(c.cpu.usage, CpuMicros(4_000));
    assert_eq!(c.cpu.user, CpuMicros(30 * 1_000_000 / HZ));
    assert_eq!(c.cpu.nr_periods, 100);
    assert_eq!(c.memory_current, None);
    assert_eq!(c.io, Some(IoCounters::default()));
    assert_eq!(
        c.cpu_limit_millicores, None,
        "cfs_quota_us -1 means no limit"
    );
}

// Hybrid (systemd hybrid mode; the project CI host). Docker's systemd driver creates the scope
// in every hierarchy, unified included; its cgroupfs driver only in the v1 ones. The unified
// `cpu.stat` is preferred for usage, throttling and memory come from v1.
#[test]
fn hybrid_prefers_unified_cpu_stat_and_falls_back_to_v1() {
    let host = hybrid_host();
    let (systemd_id, cgroupfs_id) = (cid(0x5a), cid(0x6b));
    let scope = format!("system.slice/docker-{systemd_id}.scope");
    host.cgroup(
        &format!("/sys/fs/cgroup/unified/{scope}"),
        &[(
            "cpu.stat",
            "usage_usec 3000\nuser_usec 2000\nsystem_usec 1000\n".to_owned(),
        )],
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/cpuacct/{scope}"),
        &cpuacct_files(1_000, 1, 1),
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/cpu/{scope}"),
        &cpu_files(5_000, 50_000),
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/memory/{scope}"),
        &[("memory.usage_in_bytes", "2048\n".to_owned())],
    );
    let docker = format!("docker/{cgroupfs_id}");
    host.cgroup(
        &format!("/sys/fs/cgroup/cpuacct/{docker}"),
        &cpuacct_files(8_000_000, 50, 25),
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/blkio/{docker}"),
        &blkio_files(7, 9),
    );

    let mounts = host.mounts();
    assert_eq!(mounts.mode, CgroupMode::Hybrid);
    assert_eq!(
        mounts.v2.as_deref(),
        Some(host.at("/sys/fs/cgroup/unified").as_path())
    );
    let mut sampler = CgroupSampler::with_user_hz(mounts, HZ);
    let mut expected = vec![systemd_id.clone(), cgroupfs_id.clone()];
    expected.sort();
    assert_eq!(added_sorted(&mut sampler), expected);
    let out = sample(&mut sampler);
    let by_id = |id: &str| out.iter().find(|c| c.id == id).unwrap().clone();
    let systemd = by_id(&systemd_id);
    assert_eq!(
        systemd.cpu.usage,
        CpuMicros(3000),
        "unified cpu.stat wins over cpuacct.usage"
    );
    assert_eq!(systemd.cpu.user, CpuMicros(2000));
    assert_eq!(
        (systemd.cpu.nr_throttled, systemd.cpu.throttled),
        (7, CpuMicros(5))
    );
    assert_eq!(systemd.memory_current, Some(Bytes(2048)));
    assert_eq!(systemd.io, None);
    assert_eq!(systemd.cpu_limit_millicores, Some(500));
    let cgroupfs = by_id(&cgroupfs_id);
    assert_eq!(cgroupfs.cpu.usage, CpuMicros(8_000));
    assert_eq!(cgroupfs.cpu.system, CpuMicros(25 * 1_000_000 / HZ));
    assert_eq!(
        cgroupfs.io,
        Some(IoCounters {
            read: Bytes(7),
            write: Bytes(9)
        })
    );
}

// The cheap counter set (CPU only) on the v1 layout of the CI host: memory, IO and v1
// throttling files exist but are not read.
#[test]
fn cpu_counter_set_skips_optional_files() {
    let host = v1_separate_host();
    let id = cid(0x12);
    let rel = format!("docker/{id}");
    host.cgroup(
        &format!("/sys/fs/cgroup/cpuacct/{rel}"),
        &cpuacct_files(7_000_000, 4, 3),
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/cpu/{rel}"),
        &cpu_files(9_000, 20_000),
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/memory/{rel}"),
        &[("memory.usage_in_bytes", "4096\n".to_owned())],
    );
    host.cgroup(&format!("/sys/fs/cgroup/blkio/{rel}"), &blkio_files(1, 2));

    let mut sampler = host.sampler().with_counters(CounterSet::CPU);
    assert_eq!(added_sorted(&mut sampler), vec![id]);
    let c = &sample(&mut sampler)[0];
    assert_eq!(c.cpu.usage, CpuMicros(7_000));
    assert_eq!(c.cpu.user, CpuMicros(4 * 1_000_000 / HZ));
    assert_eq!((c.cpu.nr_periods, c.cpu.throttled), (0, CpuMicros(0)));
    assert_eq!((c.memory_current, c.io), (None, None));
    assert_eq!(
        c.cpu_limit_millicores,
        Some(200),
        "the limit is read at track time either way"
    );
}

// Podman: rootful with systemd (`machine.slice/libpod-<id>.scope`, each next to a
// `libpod-conmon-<id>.scope` for its monitor process) and with the cgroupfs manager
// (`libpod_parent/libpod-<id>`). Podman test suite: `test/e2e/run_cgroup_parent_test.go`.
#[test]
fn podman_scopes_found_and_conmon_ignored() {
    let host = v2_host();
    let (systemd, cgroupfs) = (cid(0x70), cid(0x71));
    host.cgroup(
        &format!("/sys/fs/cgroup/machine.slice/libpod-{systemd}.scope"),
        &v2_files(10, 1, (1, 2), None),
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/machine.slice/libpod-conmon-{systemd}.scope"),
        &v2_files(1, 1, (1, 2), None),
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/libpod_parent/libpod-{cgroupfs}"),
        &v2_files(20, 1, (1, 2), None),
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/libpod_parent/libpod-conmon-{cgroupfs}"),
        &v2_files(2, 1, (1, 2), None),
    );

    let mut sampler = host.sampler();
    assert_eq!(
        added_sorted(&mut sampler),
        vec![systemd.clone(), cgroupfs.clone()]
    );
    let usage: Vec<_> = sample(&mut sampler)
        .iter()
        .map(|c| (c.id.clone(), c.cpu.usage))
        .collect();
    assert_eq!(
        usage,
        vec![(systemd, CpuMicros(10)), (cgroupfs, CpuMicros(20))]
    );
}

// Kubernetes with the cgroupfs driver (kubeadm before 1.22 defaults, k3s without systemd):
// `kubepods/<qos>/pod<uid>/<id>`, Guaranteed pods directly under `kubepods/pod<uid>`. Pod
// cgroups are parents, never reported.
#[test]
fn kubepods_cgroupfs_reports_containers_not_pods() {
    let host = v1_combined_host();
    let (burstable, besteffort, guaranteed) = (cid(0x81), cid(0x82), cid(0x83));
    let base = "/sys/fs/cgroup/cpu,cpuacct/kubepods";
    host.cgroup(base, &cpuacct_files(1, 1, 1));
    for (dir, id) in [
        (
            "burstable/pod6f0e2c1a-1111-2222-3333-444455556666",
            &burstable,
        ),
        (
            "besteffort/pod0a0b0c0d-1111-2222-3333-444455556666",
            &besteffort,
        ),
        ("pod99999999-1111-2222-3333-444455556666", &guaranteed),
    ] {
        host.cgroup(&format!("{base}/{dir}"), &cpuacct_files(5, 1, 1));
        host.cgroup(
            &format!("{base}/{dir}/{id}"),
            &cpuacct_files(1_000_000, 1, 1),
        );
    }
    let mut sampler = host.sampler();
    assert_eq!(
        added_sorted(&mut sampler),
        vec![burstable.clone(), besteffort, guaranteed]
    );
    let (_, rel) = sampler.tracked().find(|(id, _)| *id == burstable).unwrap();
    assert_eq!(
        rel,
        format!("kubepods/burstable/pod6f0e2c1a-1111-2222-3333-444455556666/{burstable}")
    );
}

// Kubernetes with the systemd driver (the kubeadm default since 1.22): containerd's
// `cri-containerd-<id>.scope` and CRI-O's `crio-<id>.scope` (plus `crio-conmon-<id>.scope`)
// under `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/`.
#[test]
fn kubepods_systemd_containerd_and_crio() {
    let host = v2_host();
    let (containerd, crio) = (cid(0x91), cid(0x92));
    let pod = "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6f0e2c1a_1111_2222_3333_444455556666.slice";
    host.cgroup(
        &format!("{pod}/cri-containerd-{containerd}.scope"),
        &v2_files(111, 1, (1, 2), None),
    );
    let guaranteed =
        "/sys/fs/cgroup/kubepods.slice/kubepods-pod0a0b0c0d_1111_2222_3333_444455556666.slice";
    host.cgroup(
        &format!("{guaranteed}/crio-{crio}.scope"),
        &v2_files(222, 1, (1, 2), None),
    );
    host.cgroup(
        &format!("{guaranteed}/crio-conmon-{crio}.scope"),
        &v2_files(3, 1, (1, 2), None),
    );

    let mut sampler = host.sampler();
    assert_eq!(
        added_sorted(&mut sampler),
        vec![containerd.clone(), crio.clone()]
    );
    let out = sample(&mut sampler);
    assert_eq!(
        out.iter().map(|c| c.cpu.usage).collect::<Vec<_>>(),
        vec![CpuMicros(111), CpuMicros(222)]
    );
}

// Docker-in-Docker and nested runtimes: the outer container's cgroup includes the inner ones,
// so only the innermost are reported (summing them must not count CPU twice).
#[test]
fn nested_containers_report_leaves_only() {
    let host = v2_host();
    let (outer, inner) = (cid(0xaa), cid(0xbb));
    host.cgroup(
        &format!("/sys/fs/cgroup/docker/{outer}"),
        &v2_files(100, 1, (1, 2), None),
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/docker/{outer}/init"),
        &v2_files(40, 1, (1, 2), None),
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/docker/{outer}/docker/{inner}"),
        &v2_files(60, 1, (1, 2), None),
    );
    let mut sampler = host.sampler();
    assert_eq!(added_sorted(&mut sampler), vec![inner]);
}

// A cgroup the user names explicitly (`--cgroup system.slice/my.service`): tracked under its
// path, reported missing while it does not exist, tracked once it appears.
#[test]
fn explicit_path_is_tracked_under_its_path() {
    let host = v2_host();
    let mut sampler = host.sampler();
    sampler
        .add_explicit("/system.slice/my-app.service/".to_owned())
        .unwrap();
    let report = sampler.rescan().unwrap();
    assert!(report.added.is_empty());
    assert_eq!(
        report.missing_explicit,
        vec!["system.slice/my-app.service".to_owned()]
    );

    host.cgroup(
        "/sys/fs/cgroup/system.slice/my-app.service",
        &v2_files(4242, 8, (1, 2), None),
    );
    let report = sampler.rescan().unwrap();
    assert_eq!(report.added, vec!["system.slice/my-app.service".to_owned()]);
    assert!(report.missing_explicit.is_empty());
    let out = sample(&mut sampler);
    assert_eq!(out[0].id, "system.slice/my-app.service");
    assert_eq!(out[0].cpu.usage, CpuMicros(4242));
    assert!(matches!(
        sampler.add_explicit("../etc".to_owned()),
        Err(CgroupError::InvalidPath { .. })
    ));
}

// Controllers not enabled for a cgroup (v2 without `+memory +io` in the parent's
// `cgroup.subtree_control`, e.g. a rootless runtime): only `cpu.stat` exists. Optional counters
// are `None`, throttling zero. A cgroup without any CPU accounting is reported, not tracked.
#[test]
fn missing_controller_files_are_none() {
    let host = v2_host();
    let (bare, broken) = (cid(0x0c), cid(0x0d));
    host.cgroup(
        &format!("/sys/fs/cgroup/docker/{bare}"),
        &[(
            "cpu.stat",
            "usage_usec 9\nuser_usec 5\nsystem_usec 4\n".to_owned(),
        )],
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/docker/{broken}"),
        &[("cgroup.procs", String::new())],
    );

    let mut sampler = host.sampler();
    let report = sampler.rescan().unwrap();
    assert_eq!(report.added, vec![bare.clone()]);
    assert!(
        matches!(&report.errors[..], [CgroupError::NoCpuAccounting { path }] if path.ends_with(&broken)),
        "{:?}",
        report.errors
    );
    let c = &sample(&mut sampler)[0];
    assert_eq!(c.cpu.usage, CpuMicros(9));
    assert_eq!((c.cpu.nr_periods, c.cpu.throttled), (0, CpuMicros(0)));
    assert_eq!(
        (c.memory_current, c.io, c.cpu_limit_millicores),
        (None, None, None)
    );
}

// A container stopping between a rescan and the next one: Docker removes its cgroup. The next
// rescan drops it; `track` of a path that no longer exists is `NotFound`. (Reads on an open
// file of a removed *kernfs* cgroup fail with ENODEV; that path is covered by
// `real_v2_cgroup_vanishes_and_reappears_with_reset_counters`.)
#[test]
fn vanished_container_is_dropped_on_rescan() {
    let host = v2_host();
    let (stays, goes) = (cid(0x01), cid(0x02));
    host.cgroup(
        &format!("/sys/fs/cgroup/docker/{stays}"),
        &v2_files(1, 1, (1, 2), None),
    );
    host.cgroup(
        &format!("/sys/fs/cgroup/docker/{goes}"),
        &v2_files(2, 1, (1, 2), None),
    );
    let mut sampler = host.sampler();
    assert_eq!(added_sorted(&mut sampler).len(), 2);
    sampler
        .track("manual".to_owned(), &format!("/docker/{goes}"))
        .unwrap();

    fs::remove_dir_all(host.at(&format!("/sys/fs/cgroup/docker/{goes}"))).unwrap();
    let report = sampler.rescan().unwrap();
    let mut removed = report.removed;
    removed.sort();
    assert_eq!(removed, vec![goes.clone(), "manual".to_owned()]);
    let out = sample(&mut sampler);
    assert_eq!(
        out.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        vec![stays.as_str()]
    );
    assert!(matches!(
        sampler.track(goes.clone(), &format!("docker/{goes}")),
        Err(CgroupError::NotFound { .. })
    ));
}

// Counters going backwards (a container restarted under the same id gets a fresh cgroup): the
// agent reports what the kernel says, the bridge treats the drop as a reset. Also checks that a
// reused output vector is overwritten, not appended to.
#[test]
fn counters_reset_are_reported_as_read() {
    let host = v2_host();
    let id = cid(0x44);
    let dir = format!("/sys/fs/cgroup/docker/{id}");
    host.cgroup(&dir, &v2_files(5_000_000, 1 << 30, (1000, 2000), None));
    let mut sampler = host.sampler();
    sampler.rescan().unwrap();
    let mut out = Vec::new();
    assert!(sampler.sample(&mut out).vanished.is_empty());
    let before = out[0].cpu.usage;

    host.cgroup(&dir, &v2_files(1_000, 4096, (10, 20), None));
    assert!(sampler.sample(&mut out).vanished.is_empty());
    assert_eq!(out.len(), 1);
    let after = &out[0];
    assert_eq!(after.cpu.usage, CpuMicros(1_000));
    assert_eq!(
        after.io,
        Some(IoCounters {
            read: Bytes(10),
            write: Bytes(20)
        })
    );
    assert_eq!(
        after.cpu.usage.checked_delta(before),
        None,
        "a reset, seen as such downstream"
    );
}

// The Docker registry path: `track` with the path from `/proc/<pid>/cgroup`, a sample that
// reads the container first on `die`, `untrack` on `destroy`. Malformed files are errors that keep the
// container tracked.
#[test]
fn track_read_first_untrack_and_malformed_files() {
    let host = v2_host();
    let id = cid(0x55);
    let dir = format!("/sys/fs/cgroup/docker/{id}");
    host.cgroup(&dir, &v2_files(31_337, 1, (1, 2), None));
    let mut sampler = host.sampler();
    sampler.track(id.clone(), &format!("/docker/{id}")).unwrap();
    assert_eq!(
        read_one(&mut sampler, &id).unwrap().cpu.usage,
        CpuMicros(31_337)
    );

    host.cgroup(&dir, &[("cpu.stat", "user_usec 1\n".to_owned())]);
    let mut out = Vec::new();
    let report = sampler.sample(&mut out);
    assert!(out.is_empty());
    assert!(
        matches!(&report.errors[..], [CgroupError::Parse { path, .. }] if path.ends_with("cpu.stat")),
        "{report:?}"
    );
    assert_eq!(sampler.len(), 1, "a malformed file does not untrack");
    assert!(read_one(&mut sampler, &id).is_none());

    sampler.untrack(&id);
    assert!(sampler.is_empty());
    assert!(read_one(&mut sampler, &id).is_none());
}

// mountinfo escapes spaces in mount points as `\040` (fs/proc_namespace.c); a hierarchy mounted
// at a path with a space must still be found.
#[test]
fn mountinfo_escaped_mount_point_is_unescaped() {
    let host = FakeHost::new(&[("/run/my\\040cgroups", "cgroup2", "rw")]);
    let id = cid(0x66);
    host.cgroup(
        &format!("/run/my cgroups/docker/{id}"),
        &v2_files(12, 1, (1, 2), None),
    );
    let mounts = host.mounts();
    assert_eq!(
        mounts.v2.as_deref(),
        Some(host.at("/run/my cgroups").as_path())
    );
    let mut sampler = CgroupSampler::with_user_hz(mounts, HZ);
    assert_eq!(added_sorted(&mut sampler), vec![id]);
}

// No cgroup filesystem at all (a chroot, a misconfigured container): mode None, nothing found,
// tracking fails with NotFound.
#[test]
fn no_cgroup_mounts_is_mode_none() {
    let host = FakeHost::new(&[]);
    let mut sampler = host.sampler();
    assert_eq!(sampler.mode(), CgroupMode::None);
    let report = sampler.rescan().unwrap();
    assert!(report.added.is_empty() && report.errors.is_empty());
    assert!(matches!(
        sampler.track("x".to_owned(), "docker/x"),
        Err(CgroupError::NotFound { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Real cgroups of this machine.

/// Real mount table of the machine running the tests.
fn real_mounts() -> CgroupMounts {
    CgroupMounts::discover(Path::new("/")).unwrap()
}

// The project CI host is hybrid with separate `cpu` and `cpuacct` mounts and cgroup2 at
// /sys/fs/cgroup/unified. Whenever that cgroup2 mount exists, discovery must say so.
#[test]
#[ignore = "needs the CI host's hybrid cgroup layout (cgroup2 at /sys/fs/cgroup/unified)"]
fn real_mountinfo_of_this_machine() {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let unified_is_cgroup2 = mountinfo.lines().any(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        fields.get(4) == Some(&"/sys/fs/cgroup/unified") && l.contains(" - cgroup2 ")
    });
    testkit::require(
        unified_is_cgroup2,
        "a cgroup2 mount at /sys/fs/cgroup/unified (the hybrid layout this test checks)",
    );
    let mounts = real_mounts();
    assert_eq!(mounts.mode, CgroupMode::Hybrid);
    assert_eq!(
        mounts.v2.as_deref(),
        Some(Path::new("/sys/fs/cgroup/unified"))
    );
    let separate = mountinfo.contains(" /sys/fs/cgroup/cpuacct ");
    if separate {
        assert_eq!(
            mounts.v1.cpu.as_deref(),
            Some(Path::new("/sys/fs/cgroup/cpu"))
        );
        assert_eq!(
            mounts.v1.cpuacct.as_deref(),
            Some(Path::new("/sys/fs/cgroup/cpuacct"))
        );
    } else {
        assert_eq!(mounts.v1.cpu, mounts.v1.cpuacct);
    }
    assert!(mounts.v1.memory.is_some());
}

/// A real cgroup created by a test, removed on drop even when the test panics: the child is
/// killed and reaped, anything left is moved to the parent, then the directory is removed.
struct RealCgroup {
    dir: PathBuf,
    child: Option<Child>,
}

impl RealCgroup {
    /// Creates `<mount>/<name>`; fails the test, naming what is missing, when it cannot.
    fn create(mount: &Path, name: &str) -> Self {
        testkit::require_root("creating cgroups");
        let dir = mount.join(name);
        if fs::remove_dir(&dir).is_ok() {
            eprintln!("removed a leftover test cgroup {}", dir.display());
        }
        if let Err(err) = fs::create_dir(&dir) {
            testkit::missing(format_args!(
                "a writable cgroup mount (creating {} failed: {err})",
                dir.display()
            ));
        }
        Self { dir, child: None }
    }

    /// Starts a busy loop and moves it into this cgroup.
    fn spawn_busy(&mut self) {
        let child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let pid = child.id();
        self.child = Some(child);
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    fn stop_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Killing a child that already exited fails harmlessly; reaping it matters.
            if let Err(err) = child.kill() {
                eprintln!("kill of busy child failed: {err}");
            }
            if let Err(err) = child.wait() {
                eprintln!("wait for busy child failed: {err}");
            }
        }
    }
}

impl Drop for RealCgroup {
    fn drop(&mut self) {
        self.stop_child();
        if let (Ok(procs), Some(parent)) = (
            fs::read_to_string(self.dir.join("cgroup.procs")),
            self.dir.parent(),
        ) {
            for pid in procs.lines() {
                if let Err(err) = fs::write(parent.join("cgroup.procs"), pid) {
                    eprintln!("could not move pid {pid} out of the test cgroup: {err}");
                }
            }
        }
        if let Err(err) = fs::remove_dir(&self.dir)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!(
                "warning: could not remove test cgroup {}: {err}",
                self.dir.display()
            );
        }
    }
}

/// One container's counters from a sample that reads it first and in full (the pipeline's pass
/// on a `Died` event); `None` when it is not tracked, vanished or failed.
fn read_one(sampler: &mut CgroupSampler, id: &str) -> Option<ContainerCounters> {
    let mut out = Vec::new();
    sampler.sample_dying_first(&mut out, id);
    out.into_iter().find(|c| c.id == id)
}

/// Polls until `done` or the deadline; the sleep only paces the polling.
#[allow(clippy::disallowed_methods)]
fn wait_until(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

fn read_u64(path: &Path) -> u64 {
    fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

// A real v1 `cpuacct` cgroup (the CI host's layout): a busy child moved into it makes usage
// grow, and once the child is gone the sampler's numbers equal the kernel files read directly.
#[test]
#[ignore = "needs root and a cgroup v1 cpuacct hierarchy"]
fn real_v1_cpuacct_cgroup_tracks_a_busy_child() {
    let mounts = real_mounts();
    let Some(cpuacct) = mounts.v1.cpuacct.clone() else {
        testkit::missing("a cgroup v1 cpuacct hierarchy");
    };
    let name = format!("joulebridge-test-{}-busy", std::process::id());
    let mut cgroup = RealCgroup::create(&cpuacct, &name);
    let mut sampler = CgroupSampler::new(mounts);
    sampler.add_explicit(name.clone()).unwrap();
    let report = sampler.rescan().unwrap();
    assert!(report.added.contains(&name), "{report:?}");
    let idle = read_one(&mut sampler, &name).unwrap();
    assert_eq!(idle.cpu.usage, CpuMicros(0));

    cgroup.spawn_busy();
    let target = CpuMicros(50_000);
    assert!(
        wait_until(Duration::from_secs(20), || read_one(&mut sampler, &name)
            .unwrap()
            .cpu
            .usage
            >= target),
        "usage did not reach {target} within 20 s"
    );
    cgroup.stop_child();

    // The rescan also tracked whatever containers this machine runs; only ours is asserted on.
    let mut out = Vec::new();
    let report = sampler.sample(&mut out);
    assert!(!report.vanished.contains(&name), "{report:?}");
    let ours = out.iter().find(|c| c.id == name).unwrap();
    let usage_ns = read_u64(&cgroup.dir.join("cpuacct.usage"));
    assert_eq!(ours.cpu.usage, CpuMicros(usage_ns / 1000));
    assert!(ours.cpu.usage >= target);
    let stat = fs::read_to_string(cgroup.dir.join("cpuacct.stat")).unwrap();
    let ticks = |key: &str| -> u64 {
        stat.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let hz = ::procfs::ticks_per_second();
    assert_eq!(ours.cpu.user, CpuMicros(ticks("user ") * 1_000_000 / hz));
    assert_eq!(
        ours.cpu.system,
        CpuMicros(ticks("system ") * 1_000_000 / hz)
    );
}

// A real cgroup v2 (the unified hierarchy): removing the cgroup makes reads on the open files
// fail with ENODEV, so the container is dropped as vanished; recreated at the same path (a
// container restarted under the same id) it is re-tracked with counters back near zero.
#[test]
#[ignore = "needs root and a cgroup2 hierarchy"]
fn real_v2_cgroup_vanishes_and_reappears_with_reset_counters() {
    let mounts = real_mounts();
    let Some(v2) = mounts.v2.clone() else {
        testkit::missing("a cgroup2 hierarchy");
    };
    let name = format!("joulebridge-test-{}-vanish", std::process::id());
    let mut cgroup = RealCgroup::create(&v2, &name);
    let mut sampler = CgroupSampler::new(mounts);
    sampler.add_explicit(name.clone()).unwrap();
    sampler.rescan().unwrap();
    cgroup.spawn_busy();
    let target = CpuMicros(30_000);
    assert!(wait_until(Duration::from_secs(20), || read_one(
        &mut sampler,
        &name
    )
    .unwrap()
    .cpu
    .usage
        >= target));
    cgroup.stop_child();
    let before = read_one(&mut sampler, &name).unwrap().cpu.usage;
    assert!(before >= target);

    fs::remove_dir(&cgroup.dir).unwrap();
    let mut out = Vec::new();
    let report = sampler.sample(&mut out);
    assert!(report.vanished.contains(&name), "{report:?}");
    assert!(
        report
            .errors
            .iter()
            .all(|e| !format!("{e:?}").contains(&name))
    );
    assert!(out.iter().all(|c| c.id != name));
    assert!(sampler.tracked().all(|(id, _)| id != name));

    fs::create_dir(&cgroup.dir).unwrap();
    let report = sampler.rescan().unwrap();
    assert!(report.added.contains(&name), "{report:?}");
    let after = read_one(&mut sampler, &name).unwrap().cpu.usage;
    assert!(
        after < before,
        "a recreated cgroup starts from zero: {after} < {before}"
    );
}
