//! Host CPU and the VM process's share from a fake `/proc` built by each test, the estimate
//! source on top of it, and auto-selection on a Linux host without RAPL.

use std::path::Path;
use std::time::Duration;

use host_bridge::sources::power::estimate::{CpuProbe, EstimateModel, EstimateSource};
use host_bridge::sources::power::hostcpu::ProcReader;
use host_bridge::sources::power::{
    MonoClock, PowerConfig, PowerEvent, PowerOutputs, PowerSourceKind, Provenance, SourceChoice,
    VmSelector, run_power,
};
use protocol::{MicroJoules, MonoNanos};
use tokio_util::sync::CancellationToken;

/// `/proc/stat` with 4 CPUs and `busy` ticks of user time (USER_HZ 100 in these tests).
fn write_stat(root: &Path, busy: u64, idle: u64) {
    let stat = format!(
        "cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0 0 0\n\
         cpu2 0 0 0 0 0 0 0 0 0 0\ncpu3 0 0 0 0 0 0 0 0 0 0\nctxt 1\n"
    );
    std::fs::write(root.join("stat"), stat).expect("stat");
}

/// A process with `comm`, `argv0` and utime/stime ticks.
fn write_process(root: &Path, pid: u32, comm: &str, argv0: &str, utime: u64, stime: u64) {
    let dir = root.join(pid.to_string());
    std::fs::create_dir_all(&dir).expect("pid dir");
    std::fs::write(
        dir.join("stat"),
        format!("{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 1 0 0 0 {utime} {stime} 0 0 20 0 9 0 5 0 0\n"),
    )
    .expect("pid stat");
    std::fs::write(dir.join("cmdline"), format!("{argv0}\0-machine\0q35\0")).expect("cmdline");
}

#[test]
fn hostcpu_vm_share_from_qemu_and_truncated_cloud_hypervisor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write_stat(root, 1_000, 10_000);
    write_process(
        root,
        100,
        "qemu-system-x86",
        "/usr/bin/qemu-system-x86_64",
        300,
        100,
    );
    write_process(root, 200, "bash", "/bin/bash", 5, 5);
    let mut reader = ProcReader::new(root, VmSelector::linux_default()).with_ticks_per_second(100);
    assert_eq!(reader.read(MonoNanos(0)).expect("baseline"), None);
    write_stat(root, 1_000 + 250, 10_000 + 150);
    write_process(
        root,
        100,
        "qemu-system-x86",
        "/usr/bin/qemu-system-x86_64",
        300 + 150,
        100 + 50,
    );
    let window = reader
        .read(MonoNanos(1_000_000_000))
        .expect("reads")
        .expect("window");
    assert_eq!(window.host.busy_ns, 2_500_000_000, "250 ticks at 100 Hz");
    assert_eq!(window.host.capacity_ns, 4_000_000_000, "1 s × 4 CPUs");
    assert_eq!(window.vm.vm_cpu_ns, 2_000_000_000);
    assert_eq!(window.vm.total_cpu_ns, 2_500_000_000);
    assert_eq!(window.matched, ["qemu-system-x86[100]"]);

    // A VM process whose comm is cut at 15 bytes is found through argv[0].
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write_stat(root, 0, 0);
    write_process(
        root,
        7,
        "cloud-hyperviso",
        "/usr/local/bin/cloud-hypervisor",
        10,
        0,
    );
    let mut reader = ProcReader::new(
        root,
        VmSelector::parse("cloud-hypervisor").expect("selector"),
    )
    .with_ticks_per_second(100);
    reader.read(MonoNanos(0)).expect("baseline");
    write_process(
        root,
        7,
        "cloud-hyperviso",
        "/usr/local/bin/cloud-hypervisor",
        30,
        0,
    );
    write_stat(root, 20, 0);
    let window = reader
        .read(MonoNanos(1_000_000_000))
        .expect("reads")
        .expect("window");
    assert_eq!(window.vm.vm_cpu_ns, 200_000_000);
}

#[test]
fn hostcpu_vm_by_pid_and_restarted_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write_stat(root, 0, 0);
    write_process(root, 42, "firecracker", "firecracker", 100, 0);
    let mut reader = ProcReader::new(root, VmSelector::parse("firecracker").expect("sel"))
        .with_ticks_per_second(100);
    reader.read(MonoNanos(0)).expect("baseline");
    // The VM restarted under a new pid within the window: all its time is new.
    std::fs::remove_dir_all(root.join("42")).expect("rm");
    write_process(root, 43, "firecracker", "firecracker", 7, 3);
    write_stat(root, 10, 0);
    let window = reader
        .read(MonoNanos(1_000_000_000))
        .expect("reads")
        .expect("window");
    assert_eq!(window.vm.vm_cpu_ns, 100_000_000);

    let mut by_pid = ProcReader::new(root, VmSelector::Pid(43)).with_ticks_per_second(100);
    by_pid.read(MonoNanos(0)).expect("baseline");
    write_process(root, 43, "firecracker", "firecracker", 17, 3);
    let window = by_pid
        .read(MonoNanos(500_000_000))
        .expect("reads")
        .expect("window");
    assert_eq!(window.vm.vm_cpu_ns, 100_000_000);
}

#[tokio::test(start_paused = true)]
async fn estimate_source_marks_samples_estimated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    write_stat(&root, 0, 0);
    let reader = ProcReader::new(&root, VmSelector::linux_default()).with_ticks_per_second(100);
    let model = EstimateModel {
        idle_watts: 10.0,
        max_watts: 50.0,
    };
    let (out, mut samples, _events) = PowerOutputs::channel(4);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(
        EstimateSource::new(
            model,
            CpuProbe::Proc(reader),
            Duration::from_secs(1),
            MonoClock::new(),
        )
        .run(out, cancel.clone()),
    );
    let idle = samples.recv().await.expect("sample");
    assert_eq!(idle.provenance, Provenance::Estimated);
    assert_eq!(idle.provenance.to_string(), "estimated");
    assert_eq!(idle.energy, MicroJoules(10_000_000), "idle: 10 W for 1 s");
    // Half the capacity busy over the next second: 200 ticks of 400.
    write_stat(&root, 200, 200);
    let half = samples.recv().await.expect("sample");
    assert_eq!(
        half.energy,
        MicroJoules(30_000_000),
        "10 + 0.5 × 40 W for 1 s"
    );
    assert_eq!(half.host_cpu.and_then(|h| h.utilisation()), Some(0.5));
    cancel.cancel();
    task.await.expect("joins").expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn select_auto_without_rapl_runs_estimate_and_records_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let proc_root = dir.path().join("proc");
    std::fs::create_dir_all(&proc_root).expect("proc");
    write_stat(&proc_root, 0, 0);
    let config = PowerConfig {
        choice: SourceChoice::Auto,
        powercap_root: dir.path().join("powercap-absent"),
        proc_root,
        ..PowerConfig::default()
    };
    let (out, mut samples, mut events) = PowerOutputs::channel(4);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_power(config, MonoClock::new(), out, cancel.clone()));
    let selected = events.recv().await.expect("event");
    let PowerEvent::SourceSelected { kind, reason } = selected else {
        panic!("selection first, got {selected:?}");
    };
    assert_eq!(kind, PowerSourceKind::Estimate);
    assert!(reason.contains("without RAPL"), "{reason}");
    let sample = samples.recv().await.expect("sample");
    assert_eq!(sample.provenance, Provenance::Estimated);
    cancel.cancel();
    task.await.expect("joins").expect("clean stop");
}

#[tokio::test]
async fn select_named_replay_runs_replay() {
    let path = crate::power_fixtures::fixture("intel-package-1x5s.plist");
    let config = PowerConfig {
        choice: format!("replay:{}", path.display())
            .parse()
            .expect("choice"),
        replay_pace: host_bridge::sources::power::replay::Pace::AsFastAsPossible,
        ..PowerConfig::default()
    };
    let (out, mut samples, mut events) = PowerOutputs::channel(4);
    run_power(config, MonoClock::new(), out, CancellationToken::new())
        .await
        .expect("replays");
    let selected = events.recv().await.expect("event");
    assert!(matches!(
        selected,
        PowerEvent::SourceSelected {
            kind: PowerSourceKind::Replay,
            ..
        }
    ));
    assert_eq!(
        samples.recv().await.map(|s| s.energy),
        Some(MicroJoules(27_500_000))
    );
}
