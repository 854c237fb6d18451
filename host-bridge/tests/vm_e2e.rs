//! A real VM, end to end (issue #7).
//!
//! joulebridge exists for containers inside VMs, so this test boots one: the Debian cloud kernel
//! under QEMU (TCG: no KVM needed), a busybox initramfs whose `/init` (`scripts/vm/guest-init.sh`)
//! mounts real cgroup v2 and starts a CPU-burning cgroup `burn` and an idle cgroup `idle`, and
//! the real static guest agent, built by `scripts/vm/build-agent.sh`. The agent dials
//! `vsock://2:7777` with a real guest `AF_VSOCK` socket; rust-vmm's `vhost-device-vsock` maps
//! that connection onto the Unix socket `<dir>/vm.vsock_7777`, where the real bridge
//! ([`host_bridge::serve::Bridge`]) listens in-process, bound *before* the guest boots. That is
//! the same Unix-socket path vfkit gives on a Mac.
//!
//! The host ends the run once it has recorded enough samples (the guest's stop switch, see
//! `scripts/vm/stop-guest.sh`), so the test does not depend on how fast TCG emulates on a busy
//! machine. Host power is recorded by the bridge itself, as `serve --power estimate --vm-name
//! <name>` does (no sensor on the CI machines): the bridge is bound before QEMU starts, so "the
//! VM" cannot be given by pid; instead QEMU gets a process name unique to this test process
//! (`boot-qemu.sh --process-name`, QEMU's `-name ...,process=`) and the estimate source selects
//! that name, so other QEMUs on the machine do not count. Live attribution runs on the bridge as
//! in `serve`, and must agree exactly with the attribution of the recording. The attribution must
//! give the burning cgroup the share of the VM's energy its CPU time earns (nearly all of it),
//! the idle cgroup next to none, and conserve energy exactly in µJ in every window and in the
//! totals. The guest's own final `cpu.stat` (printed on its console) checks the recorded counters.
//!
//! Needs the rig that `scripts/vm/setup-rig.sh` sets up (QEMU, busybox-static, the cloud kernel,
//! vhost-device-vsock; `scripts/setup-test-env.sh` runs it). The test only checks that the rig is
//! there and fails, naming it, when it is not; it installs nothing. It does build the static
//! agent from this checkout (`scripts/vm/build-agent.sh`, a plain cargo build) and packs it into
//! a per-run initramfs, so the guest always runs the code under test.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use host_bridge::cli::PowerArgs;
use host_bridge::config::{Config, ListenEndpoint};
use host_bridge::journal::{PowerSample, PowerSourceKind, Provenance};
use host_bridge::journal::{RecordEntry, RecordingReader};
use host_bridge::pipeline::{self, LedgerView, PipelineConfig};
use host_bridge::serve::Bridge;
use host_bridge::serve::live;
use host_bridge::sources::power::PowerConfig;
use protocol::Message;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

use crate::support;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Guest vsock port the agent dials (and the suffix of the bridge's Unix socket).
const AGENT_PORT: u32 = 7777;
/// Guest vsock port of the rig's stop switch (`vsock-hello --wait-stop`).
const STOP_PORT: u32 = 9999;
/// The agent's sampling period in the guest.
const SAMPLE_PERIOD_MS: u64 = 250;
/// Samples recorded from the guest before the host ends the run: 8 s of sampling.
const SAMPLES_WANTED: u64 = 32;
/// Host power reading interval (`--power-interval-ms`): several readings per window.
const POWER_INTERVAL_MS: u64 = 500;
/// Attribution window: short, so the run yields several windows.
const WINDOW: Duration = Duration::from_secs(2);
/// Upper bound of the guest's run, should the stop switch never be pressed.
const GUEST_RUN_LIMIT_S: u64 = 240;
/// Upper bound for everything from boot to power-off (QEMU is killed after it).
const QEMU_TIMEOUT_S: u64 = 300;
/// VM label the agent sends in its Hello.
const VM_NAME: &str = "rig-e2e";
/// Smallest share of the guest's energy (containers + system) the burning cgroup must get. The
/// guest has one vCPU and one busy loop; the agent, the kernel and the idle sleeper share the
/// rest.
const BURN_MIN_SHARE: f64 = 0.80;
/// Largest share of the guest's energy the idle cgroup may get.
const IDLE_MAX_SHARE: f64 = 0.02;
/// Inside one window, burn's share of the guest's energy must equal its share of the guest's
/// CPU time up to integer rounding; this allows for it on small windows.
const SHARE_TOLERANCE: f64 = 0.001;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host-bridge sits inside the workspace")
        .to_path_buf()
}

/// Run one of the rig's scripts; its stdout on success, a description of the failure otherwise.
async fn run_script(script: &str, args: &[OsString]) -> Result<String, String> {
    let path = repo_root().join(script);
    let out = Command::new(&path)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        Err(format!(
            "{script} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }
}

/// Sends SIGTERM to `boot-qemu.sh` when dropped (a failed assertion, a timeout): its trap then
/// stops QEMU and vhost-device-vsock, which would otherwise outlive the test.
struct BootGuard(Option<u32>);

impl Drop for BootGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take().and_then(|pid| i32::try_from(pid).ok()) {
            let pid = nix::unistd::Pid::from_raw(pid);
            if let Err(e) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
                eprintln!("vm_e2e: cannot stop boot-qemu.sh ({pid}): {e}");
            }
        }
    }
}

/// Press the guest's stop switch: `CONNECT <port>` on vhost-device-vsock's host socket, answered
/// with `OK <host port>` once the guest accepted.
async fn stop_guest(dir: &Path) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..20 {
        match UnixStream::connect(dir.join("vm.vsock")).await {
            Ok(stream) => {
                let (rd, mut wr) = stream.into_split();
                if let Err(e) = wr
                    .write_all(format!("CONNECT {STOP_PORT}\n").as_bytes())
                    .await
                {
                    last = format!("write: {e}");
                } else {
                    let mut line = String::new();
                    match tokio::time::timeout(
                        Duration::from_secs(10),
                        BufReader::new(rd).read_line(&mut line),
                    )
                    .await
                    {
                        Ok(Ok(_)) if line.starts_with("OK ") => return Ok(()),
                        Ok(Ok(_)) => last = format!("answer {line:?}"),
                        Ok(Err(e)) => last = format!("read: {e}"),
                        Err(_) => last = "no answer within 10 s".to_string(),
                    }
                }
            }
            Err(e) => last = format!("connect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("the guest's stop switch did not answer: {last}"))
}

/// QEMU's pid from its `-pidfile`, once written (QEMU writes it before it boots the guest).
async fn wait_for_pid(path: &Path) -> Result<i64, String> {
    for _ in 0..200 {
        if let Ok(text) = tokio::fs::read_to_string(path).await
            && let Ok(pid) = text.trim().parse()
        {
            return Ok(pid);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("QEMU wrote no pid to {}", path.display()))
}

/// The view the live attribution publishes after feeding `entries` one by one (what `serve`
/// shows), recomputed from the recording.
/// Processes whose name (`/proc/<pid>/comm`) is `name`.
fn processes_named(name: &str) -> Vec<i64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i64>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

/// The guest's final `usage_usec` of a cgroup, from its console line
/// `rig: cpu.stat <cgroup> usage_usec <n> ...`.
fn console_usage_usec(console: &str, cgroup: &str) -> Option<u64> {
    console.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("rig: cpu.stat ")?;
        let mut words = rest.split_whitespace();
        (words.next()? == cgroup).then_some(())?;
        (words.next()? == "usage_usec").then_some(())?;
        words.next()?.parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the QEMU rig (scripts/vm/setup-rig.sh)"]
async fn vm_guest_burn_cgroup_gets_its_share_and_energy_conserves() {
    // 1. The rig, set up beforehand.
    let cache = std::env::var_os("JB_VM_RIG_CACHE")
        .map_or_else(|| repo_root().join("target/vm-rig-cache"), PathBuf::from);
    testkit::require(
        cache.join("rig.env").is_file(),
        format_args!(
            "the QEMU rig ({}, which scripts/setup-test-env.sh sets up through scripts/vm/setup-rig.sh)",
            cache.join("rig.env").display()
        ),
    );

    // 2. The static agent and the initramfs that runs it.
    let agent = run_script("scripts/vm/build-agent.sh", &[])
        .await
        .expect("the static guest agent builds");
    let dir = tempfile::tempdir().expect("temp dir");
    let initrd = dir.path().join("initrd.gz");
    let mut args: Vec<OsString> = vec![
        "--out".into(),
        initrd.clone().into(),
        "--run-seconds".into(),
        GUEST_RUN_LIMIT_S.to_string().into(),
        "--stop-port".into(),
        STOP_PORT.to_string().into(),
        "--agent".into(),
        agent.into(),
        "--".into(),
    ];
    for a in [
        format!("--connect=vsock://2:{AGENT_PORT}"),
        "--no-docker".to_string(),
        "--no-discover".to_string(),
        "--cgroup=burn".to_string(),
        "--cgroup=idle".to_string(),
        format!("--vm-name={VM_NAME}"),
        format!("--sample-period-ms={SAMPLE_PERIOD_MS}"),
    ] {
        args.push(a.into());
    }
    run_script("scripts/vm/build-initramfs.sh", &args)
        .await
        .expect("the initramfs builds");

    // 3. The real bridge, listening where vhost-device-vsock delivers guest port 7777, with the
    //    estimate power source and "the VM" being the process named `qemu_name` (≤ 15 bytes, the
    //    length of a comm; unique to this test process), and live attribution attached.
    let qemu_name = format!("jb-e2e-{}", std::process::id());
    let power = PowerConfig::try_from(&PowerArgs {
        source: "estimate".into(),
        power_interval_ms: POWER_INTERVAL_MS,
        vm_name: Some(qemu_name.clone()),
        ..PowerArgs::default()
    })
    .expect("the power flags are valid");
    let recording = dir.path().join("run.jbr");
    let config = Config {
        listen: vec![ListenEndpoint::Unix(
            dir.path().join(format!("vm.vsock_{AGENT_PORT}")),
        )],
        record: recording.clone(),
        max_connections: 4,
        auth_token: None,
        live: false,
        frame_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(120),
        power: Some(power),
    };
    let cfg = PipelineConfig {
        window: WINDOW,
        ..PipelineConfig::default()
    };
    let mut bridge = Bridge::bind(config).await.expect("the bridge binds");
    let live = live::attach(&mut bridge, &recording, cfg, None)
        .await
        .expect("live attribution attaches");
    let (entries_tx, mut entries_rx) = mpsc::channel::<Arc<RecordEntry>>(1024);
    bridge.add_lossless_observer(entries_tx);
    let (samples_tx, mut samples_rx) = watch::channel(0_u64);
    // Lossless observers back-pressure the recorder: drain continuously.
    let counter = tokio::spawn(async move {
        let mut samples = 0;
        while let Some(entry) = entries_rx.recv().await {
            if let RecordEntry::Guest {
                message: Message::Sample(_),
                ..
            } = entry.as_ref()
            {
                samples += 1;
                samples_tx.send_replace(samples);
            }
        }
    });
    let shutdown = CancellationToken::new();
    let bridge_task = tokio::spawn(bridge.run(shutdown.clone().cancelled_owned()));

    // 4. Boot.
    let mut boot = Command::new(repo_root().join("scripts/vm/boot-qemu.sh"))
        .arg("--initrd")
        .arg(&initrd)
        .arg("--dir")
        .arg(dir.path())
        .arg("--timeout")
        .arg(QEMU_TIMEOUT_S.to_string())
        .arg("--process-name")
        .arg(&qemu_name)
        .spawn()
        .expect("boot-qemu.sh starts");
    let mut guard = BootGuard(boot.id());
    let console_path = dir.path().join("console.log");
    let console_now = || std::fs::read_to_string(&console_path).unwrap_or_default();

    // 5. The name picks this QEMU and nothing else (QEMU names itself before the guest runs).
    let qemu_pid = wait_for_pid(&dir.path().join("qemu.pid"))
        .await
        .unwrap_or_else(|e| panic!("{e}; console:\n{}", console_now()));
    let mut named = Vec::new();
    for _ in 0..100 {
        named = processes_named(&qemu_name);
        if !named.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        named,
        vec![qemu_pid],
        "exactly this QEMU is named {qemu_name}"
    );

    // 6. Let the guest run until the bridge has recorded enough samples, then stop it.
    let enough = tokio::time::timeout(
        Duration::from_secs(QEMU_TIMEOUT_S),
        samples_rx.wait_for(|n| *n >= SAMPLES_WANTED),
    )
    .await
    .is_ok_and(|waited| waited.is_ok());
    assert!(
        enough,
        "the bridge recorded {} samples from the guest, wanted {SAMPLES_WANTED}; console:\n{}",
        *samples_rx.borrow(),
        console_now()
    );
    stop_guest(dir.path()).await.unwrap_or_else(|e| {
        panic!("{e}; console:\n{}", console_now());
    });
    let status = tokio::time::timeout(Duration::from_secs(60), boot.wait())
        .await
        .unwrap_or_else(|_| panic!("QEMU did not power off; console:\n{}", console_now()))
        .expect("wait for boot-qemu.sh");
    guard.0 = None;
    let console = console_now();
    assert!(
        status.success(),
        "boot-qemu.sh failed ({status}); console:\n{console}"
    );

    // 7. Stop the bridge (it stops its power source, closes connections, drains the recorder
    //    and syncs the file), then let the live attribution drain.
    shutdown.cancel();
    bridge_task
        .await
        .expect("bridge task")
        .expect("the bridge stops cleanly");
    counter.await.expect("sample counter");
    let live_view_rx = live.view.clone();
    live.stop().await.expect("live attribution stops");
    let live_view: Arc<LedgerView> = Arc::clone(&live_view_rx.borrow());

    // 8. What the guest says it did (ground truth from its cgroups, read after the agent).
    let burn_truth = console_usage_usec(&console, "burn")
        .unwrap_or_else(|| panic!("no burn cpu.stat on the console:\n{console}"));
    let idle_truth = console_usage_usec(&console, "idle")
        .unwrap_or_else(|| panic!("no idle cpu.stat on the console:\n{console}"));

    // 9. The recording: the guest's Hello and its samples, with real counters.
    let rec = RecordingReader::read_all(&recording).expect("the recording reads back");
    assert!(!rec.torn_tail, "the bridge stopped cleanly, no torn tail");
    let hello = rec
        .entries
        .iter()
        .find_map(|e| match e {
            RecordEntry::Guest {
                message: Message::Hello(h),
                ..
            } => Some(h),
            _ => None,
        })
        .expect("a Hello from the guest");
    assert_eq!(hello.vm_name, VM_NAME);
    assert_eq!(hello.cgroup_mode, protocol::CgroupMode::V2);
    assert_eq!(hello.cpu_count, 1, "the rig boots one vCPU");
    let last_sample = rec
        .entries
        .iter()
        .rev()
        .find_map(|e| match e {
            RecordEntry::Guest {
                message: Message::Sample(s),
                ..
            } => Some(s),
            _ => None,
        })
        .expect("samples from the guest");
    let recorded = |id: &str| {
        last_sample
            .containers
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.cpu.usage.0)
            .unwrap_or_else(|| panic!("cgroup {id} missing from the last sample"))
    };
    let (burn_recorded, idle_recorded) = (recorded("burn"), recorded("idle"));
    assert!(
        burn_recorded <= burn_truth && idle_recorded <= idle_truth,
        "recorded counters ({burn_recorded}, {idle_recorded}) cannot exceed the guest's final \
         ones ({burn_truth}, {idle_truth})"
    );
    assert!(
        idle_truth * 20 < burn_truth,
        "the workload misbehaved: idle used {idle_truth} µs, burn {burn_truth} µs"
    );

    // 10. Host power, recorded by the bridge: one source selection (the estimate, labelled
    //     estimated), before its readings.
    let sources: Vec<(usize, &str, Provenance)> = rec
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            RecordEntry::PowerSource {
                kind, provenance, ..
            } => Some((i, kind.as_str(), *provenance)),
            _ => None,
        })
        .collect();
    let readings: Vec<(usize, &PowerSample)> = rec
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            RecordEntry::Power(p) => Some((i, p)),
            _ => None,
        })
        .collect();
    assert_eq!(
        sources.iter().map(|s| (s.1, s.2)).collect::<Vec<_>>(),
        vec![("estimate", Provenance::Estimated)],
        "exactly one power source selection, the estimate"
    );
    assert!(
        readings.len() >= 3,
        "the bridge recorded {} power readings",
        readings.len()
    );
    assert!(
        readings.iter().all(|(i, p)| *i > sources[0].0
            && p.provenance == Provenance::Estimated
            && p.energy.0 > 0),
        "every reading follows the selection, is estimated and has energy: {readings:?}"
    );
    let power_readings = readings.len();
    drop((sources, readings));
    let entries = rec.entries;

    // 11. Attribution of the recording.
    let attribution = pipeline::attribute_recording(&entries, cfg).expect("attribution");
    assert!(
        attribution.windows.len() >= 2,
        "want at least two {WINDOW:?} windows, got {}",
        attribution.windows.len()
    );
    // Per window: exact conservation, and inside the VM the guest's energy (everything but the
    // hypervisor's overhead) split by CPU time, so burn's part follows its CPU share.
    let mut totals = VmTotals::default();
    for w in &attribution.windows {
        assert_eq!(
            w.parts_sum(),
            w.energy.0,
            "window {:?}..{:?} does not conserve energy: {w:#?}",
            w.start,
            w.end
        );
        for vm in w.vms.iter().filter(|v| v.vm == VM_NAME) {
            let window = VmTotals::of(vm);
            if window.guest_uj > 0 && window.busy_us > 0 {
                let (energy_share, cpu_share) = window.burn_shares();
                // Integer µJ: a split is exact to the µJ, which on a tiny window (the first, the
                // last) can be more than the share tolerance.
                let expected_uj = u128::from(window.guest_uj) * u128::from(window.burn_cpu_us)
                    / u128::from(window.busy_us);
                let off_by_uj = u128::from(window.burn_uj).abs_diff(expected_uj);
                assert!(
                    (energy_share - cpu_share).abs() <= SHARE_TOLERANCE || off_by_uj <= 2,
                    "window {:?}..{:?}: burn got {energy_share:.4} of the guest's energy for \
                     {cpu_share:.4} of its CPU time: {vm:#?}",
                    w.start,
                    w.end
                );
            }
            totals.add(&window);
        }
    }
    assert!(
        attribution.ledger.conserved(),
        "the ledger conserves energy"
    );
    let window_total: u64 = attribution.windows.iter().map(|w| w.energy.0).sum();
    assert_eq!(
        attribution.ledger.total().0,
        window_total,
        "the ledger's total is the sum of the windows' energies"
    );
    assert!(
        totals.guest_uj > 0 && totals.busy_us > 0,
        "the VM got energy and CPU time: {attribution:#?}"
    );
    // The live attribution (what `serve` showed and served on /metrics) agrees with the
    // recording: the same view recomputed from it, and the energy of the same windows.
    let offline = support::view_of(&entries, cfg);
    let live_windows = usize::try_from(live_view.windows).expect("a window count fits usize");
    let live_burn_uj = live_view
        .containers
        .iter()
        .find(|c| c.labels.container_id == "burn")
        .map_or(0, |c| c.energy_uj);
    eprintln!(
        "vm_e2e: live view {} windows, host {} µJ, burn {live_burn_uj} µJ, source {} ({}); \
         recomputed {} windows, host {} µJ; {power_readings} power readings recorded",
        live_view.windows,
        live_view.host_energy_uj,
        live_view.source_kind.map_or("none", |k| k.as_str()),
        live_view.provenance.as_str(),
        offline.windows,
        offline.host_energy_uj,
    );
    assert!(
        live_windows >= 2 && live_burn_uj > 0,
        "the live attribution closed windows and gave burn energy: {live_view:#?}"
    );
    assert_eq!(*live_view, offline, "live view vs the recording's");
    assert_eq!(live_view.source_kind, Some(PowerSourceKind::Estimate));
    assert!(live_windows <= attribution.windows.len());
    assert_eq!(
        live_view.host_energy_uj,
        attribution.windows[..live_windows]
            .iter()
            .map(|w| w.energy.0)
            .sum::<u64>(),
        "the live host energy is that of the recording's first {live_windows} windows"
    );

    let (burn_share, cpu_share) = totals.burn_shares();
    #[allow(clippy::cast_precision_loss)] // a share of µJ totals, for a tolerance check
    let idle_share = totals.idle_uj as f64 / totals.guest_uj as f64;
    eprintln!(
        "vm_e2e: {} windows of {WINDOW:?}, host {window_total} µJ ({}), VM guest {} µJ + \
         overhead {} µJ; burn {} µJ = {:.1} % of the guest's energy (CPU share {:.1} %), idle \
         {} µJ = {:.3} %; guest cpu.stat truth: burn {burn_truth} µs, idle {idle_truth} µs",
        attribution.windows.len(),
        attribution
            .config
            .source_kind
            .map_or("no source", |k| k.as_str()),
        totals.guest_uj,
        totals.overhead_uj,
        totals.burn_uj,
        burn_share * 100.0,
        cpu_share * 100.0,
        totals.idle_uj,
        idle_share * 100.0,
    );
    assert!(
        burn_share >= BURN_MIN_SHARE,
        "burn got {:.1} % of the guest's energy, expected at least {:.0} %",
        burn_share * 100.0,
        BURN_MIN_SHARE * 100.0
    );
    assert!(
        idle_share <= IDLE_MAX_SHARE,
        "idle got {:.3} % of the guest's energy, expected at most {:.0} %",
        idle_share * 100.0,
        IDLE_MAX_SHARE * 100.0
    );
}

/// One VM's figures, in one window or summed over windows.
#[derive(Debug, Default)]
struct VmTotals {
    /// Energy of the guest: its containers and its system bucket (not the VM overhead).
    guest_uj: u64,
    /// Hypervisor overhead: the VM process's host CPU beyond the guest's busy time.
    overhead_uj: u64,
    burn_uj: u64,
    idle_uj: u64,
    /// Guest busy CPU time as the attribution divides it: `/proc/stat` busy time, or the
    /// containers' cgroup time when that is larger (tick-based `/proc/stat` can fall behind
    /// precise cgroup `usage_usec` within a window; the pipeline then scales, flagged).
    busy_us: u64,
    burn_cpu_us: u64,
}

impl VmTotals {
    fn of(vm: &pipeline::VmWindow) -> Self {
        let container = |id: &str| vm.containers.iter().find(|c| c.id == id);
        Self {
            guest_uj: vm.system.0 + vm.containers.iter().map(|c| c.energy.0).sum::<u64>(),
            overhead_uj: vm.overhead.0,
            burn_uj: container("burn").map_or(0, |c| c.energy.0),
            idle_uj: container("idle").map_or(0, |c| c.energy.0),
            busy_us: vm.busy.0.max(vm.containers.iter().map(|c| c.cpu.0).sum()),
            burn_cpu_us: container("burn").map_or(0, |c| c.cpu.0),
        }
    }

    fn add(&mut self, other: &Self) {
        self.guest_uj += other.guest_uj;
        self.overhead_uj += other.overhead_uj;
        self.burn_uj += other.burn_uj;
        self.idle_uj += other.idle_uj;
        self.busy_us += other.busy_us;
        self.burn_cpu_us += other.burn_cpu_us;
    }

    /// Burn's share of the guest's energy and of its busy CPU time.
    #[allow(clippy::cast_precision_loss)] // shares, for tolerance checks
    fn burn_shares(&self) -> (f64, f64) {
        (
            self.burn_uj as f64 / self.guest_uj as f64,
            self.burn_cpu_us as f64 / self.busy_us as f64,
        )
    }
}
