//! `serve` with a host power source, end to end.
//!
//! - The real bridge with `--power estimate` and the real guest agent on real cgroups (a
//!   CPU-burning child in one, a sleeping one in the other) over a Unix socket: the recording
//!   holds the power readings and the source selection; a report of the recording gives the
//!   burner most of the energy, the idle cgroup about none, conserves energy exactly in µJ, and
//!   agrees with the live view for the same windows.
//! - The built binary replaying a real M1 Pro powermetrics capture at fast pace: every document
//!   is recorded with its energy and the Docker VM's share.
//! - The built binary refusing a bad `--power` value and an unreadable `--power rapl`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use host_bridge::cli::AttributionArgs;
use host_bridge::cli::PowerArgs;
use host_bridge::commands::report_of_recording;
use host_bridge::config::{Config, ListenEndpoint};
use host_bridge::journal::{PowerSample, PowerSourceKind, Provenance};
use host_bridge::journal::{RecordEntry, RecordingReader};
use host_bridge::pipeline::{IdlePolicy, LedgerView};
use host_bridge::serve::Bridge;
use host_bridge::serve::live;
use host_bridge::sources::power::replay::{Pace, ReplayConfig, ReplaySource};
use host_bridge::sources::power::{
    MonoClock, PowerConfig, PowerOutputs, RaplAvailability, VmSelector, rapl,
};
use tokio::sync::oneshot;

use crate::real_cgroup::{Accounting, TestCgroup, agent_config};
use crate::support;

/// The real capture with Docker Desktop's VM in its coalitions (29 documents × ~130 ms).
const M1PRO_CAPTURE: &str = "fixtures/powermetrics/m1pro-macos14-default+process-coalition-energy-io-gpu-netstats-29x130ms.plist";

/// How long the estimate test samples.
const SAMPLING: Duration = Duration::from_secs(16);

fn power_entries(entries: &[RecordEntry]) -> Vec<&PowerSample> {
    entries
        .iter()
        .filter_map(|e| match e {
            RecordEntry::Power(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn read(path: &Path) -> Vec<RecordEntry> {
    RecordingReader::read_all(path)
        .map(|r| r.entries)
        .unwrap_or_default()
}

fn attribution_args() -> AttributionArgs {
    AttributionArgs {
        policy: IdlePolicy::Exclude,
        window: 2.0,
        idle_watts: None,
        grid_intensity: None,
    }
}

/// The view the live engine publishes after the windows closed while feeding `entries` one by
/// one (what `serve` shows), recomputed offline.
fn view_of(entries: &[RecordEntry], args: &AttributionArgs) -> LedgerView {
    support::view_of(entries, args.pipeline_config().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and cgroup CPU accounting"]
async fn serve_estimate_real_cgroups_attributes_the_burner_and_conserves_energy() {
    let accounting = Accounting::find();
    let mut busy = TestCgroup::create(&accounting, "power-busy");
    let mut idle = TestCgroup::create(&accounting, "power-idle");
    busy.spawn_burner().await;
    idle.spawn_idle().await;

    let dir = tempfile::tempdir().expect("temp dir");
    let record = dir.path().join("rec.jbr");
    // The agent runs on this host, so the "VM" is every process of the host (`*`).
    let power = PowerConfig::try_from(&PowerArgs {
        source: "estimate".into(),
        power_interval_ms: 500,
        vm_name: Some("*".into()),
        ..PowerArgs::default()
    })
    .expect("power flags are valid");
    let config = Config {
        listen: vec![ListenEndpoint::Unix(dir.path().join("bridge.sock"))],
        record: record.clone(),
        max_connections: 8,
        auth_token: None,
        live: false,
        frame_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        power: Some(power),
    };
    let args = attribution_args();
    let mut bridge = Bridge::bind(config).await.expect("bridge binds");
    let endpoint = bridge.local_endpoints().remove(0);
    let live = live::attach(&mut bridge, &record, args.pipeline_config().unwrap(), None)
        .await
        .expect("live attribution attaches");
    let (stop_bridge, bridge_stopped) = oneshot::channel::<()>();
    let bridge_task = tokio::spawn(bridge.run(async {
        let _stopped = bridge_stopped.await;
    }));
    let agent = agent_config(&endpoint, &[&busy.rel, &idle.rel], 250);
    let (stop_agent, agent_stopped) = oneshot::channel::<()>();
    let agent_task = tokio::spawn(guest_agent::run(agent, async {
        let _stopped = agent_stopped.await;
    }));

    tokio::time::sleep(SAMPLING).await;
    let _sent = stop_agent.send(());
    agent_task
        .await
        .expect("agent task")
        .expect("agent ends cleanly");
    let _sent = stop_bridge.send(());
    bridge_task
        .await
        .expect("bridge task")
        .expect("bridge ends cleanly");
    let live_view: Arc<LedgerView> = Arc::clone(&live.view.borrow());
    live.stop().await.expect("live attribution stops");
    busy.kill_children();
    idle.kill_children();

    let entries = read(&record);
    let powers = power_entries(&entries);
    let sources: Vec<_> = entries
        .iter()
        .filter_map(|e| match e {
            RecordEntry::PowerSource {
                kind, provenance, ..
            } => Some((*kind, *provenance)),
            _ => None,
        })
        .collect();
    eprintln!(
        "recorded {} entries, {} power readings, sources {sources:?}",
        entries.len(),
        powers.len()
    );
    assert_eq!(
        sources,
        vec![(PowerSourceKind::Estimate, Provenance::Estimated)]
    );
    assert!(
        powers.len() >= 20,
        "{} power readings in {SAMPLING:?} at 500 ms",
        powers.len()
    );
    assert!(
        powers
            .iter()
            .all(|p| p.provenance == Provenance::Estimated && p.energy.0 > 0)
    );

    // The report of the recording.
    let report = report_of_recording(&record, &args).expect("report of the recording");
    let energy_of = |rel: &str| {
        report
            .containers
            .iter()
            .find(|c| c.id == rel)
            .map_or(0, |c| c.energy.energy_uj)
    };
    let (busy_uj, idle_uj) = (energy_of(&busy.rel), energy_of(&idle.rel));
    let containers_uj: u64 = report.containers.iter().map(|c| c.energy.energy_uj).sum();
    let buckets_uj: u64 = report
        .totals
        .buckets
        .iter()
        .map(|b| b.energy.energy_uj)
        .sum();
    let buckets: Vec<String> = report
        .totals
        .buckets
        .iter()
        .map(|b| format!("{}={}", b.bucket.as_str(), b.energy.energy_uj))
        .collect();
    eprintln!(
        "report: host {} µJ, burner {busy_uj} µJ, idle {idle_uj} µJ, containers {containers_uj} µJ, buckets {buckets:?}; source {} ({})",
        report.totals.host.energy_uj,
        report.power_source.kind,
        report.power_source.provenance.as_str()
    );
    assert_eq!(report.power_source.kind, "estimate");
    assert_eq!(
        containers_uj + buckets_uj,
        report.totals.host.energy_uj,
        "conservation: containers + buckets must equal host energy exactly"
    );
    assert!(busy_uj > 0, "the burner got no energy");
    assert!(
        busy_uj >= containers_uj * 9 / 10,
        "the burner got {busy_uj} of {containers_uj} µJ attributed to containers"
    );
    assert!(
        idle_uj <= containers_uj / 100,
        "the idle cgroup got {idle_uj} of {containers_uj} µJ"
    );

    // The live view equals the same windows recomputed from the recording.
    let offline = view_of(&entries, &args);
    eprintln!(
        "live view: {} windows, host {} µJ; recomputed: {} windows, host {} µJ",
        live_view.windows, live_view.host_energy_uj, offline.windows, offline.host_energy_uj
    );
    assert!(live_view.windows >= 5, "{} windows", live_view.windows);
    assert_eq!(live_view.windows, offline.windows);
    assert_eq!(live_view.host_energy_uj, offline.host_energy_uj);
    assert_eq!(live_view.buckets, offline.buckets);
    assert_eq!(live_view.source_kind, Some(PowerSourceKind::Estimate));
    let energies = |v: &LedgerView| {
        let mut e: Vec<(String, u64)> = v
            .containers
            .iter()
            .map(|c| (c.labels.container_id.clone(), c.energy_uj))
            .collect();
        e.sort();
        e
    };
    assert_eq!(energies(&live_view), energies(&offline));
    let live_busy = live_view
        .containers
        .iter()
        .find(|c| c.labels.container_id == busy.rel)
        .map_or(0, |c| c.energy_uj);
    assert!(live_busy > 0 && live_busy <= busy_uj);
}

fn real_capture() -> PathBuf {
    testkit::shared(M1PRO_CAPTURE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ../shared/fixtures/powermetrics"]
async fn serve_binary_replay_records_the_capture_energies_and_vm_share() {
    let capture = real_capture();
    let dir = tempfile::tempdir().expect("temp dir");
    let record = dir.path().join("rec.jbr");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_host-bridge"))
        .arg("serve")
        .arg("--listen")
        .arg(format!("unix://{}", dir.path().join("s.sock").display()))
        .arg("--record")
        .arg(&record)
        .args(["--no-live", "--no-metrics", "--replay-pace", "fast"])
        .arg("--power")
        .arg(format!("replay:{}", capture.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("host-bridge runs");

    // What the capture holds, replayed directly.
    let (out, mut samples, _events) = PowerOutputs::channel(64);
    let replay = ReplaySource::new(
        ReplayConfig {
            path: capture.clone(),
            pace: Pace::AsFastAsPossible,
            vm: VmSelector::macos_default(),
        },
        MonoClock::new(),
    );
    let direct = tokio::spawn(replay.run(out, tokio_util::sync::CancellationToken::new()));
    let mut expected = Vec::new();
    while let Some(s) = samples.recv().await {
        expected.push(s);
    }
    direct.await.unwrap().expect("direct replay");
    assert!(expected.len() >= 20, "{} documents", expected.len());

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if power_entries(&read(&record)).len() >= expected.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bridge recorded {} of {} readings",
            power_entries(&read(&record)).len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("bridge stops on SIGTERM")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Host power source running."), "{stderr}");

    let entries = read(&record);
    let recorded = power_entries(&entries);
    assert_eq!(recorded.len(), expected.len());
    for (r, e) in recorded.iter().zip(&expected) {
        assert_eq!(r.energy, e.energy);
        assert_eq!(r.window_ns, e.window_ns);
        assert_eq!(r.vm_share, e.vm_share);
        assert_eq!(r.provenance, Provenance::Measured);
    }
    let vm_cpu: u64 = recorded
        .iter()
        .filter_map(|p| p.vm_share.as_ref().map(|v| v.vm_cpu_ns))
        .sum();
    let total_cpu: u64 = recorded
        .iter()
        .filter_map(|p| p.vm_share.as_ref().map(|v| v.total_cpu_ns))
        .sum();
    let host_uj: u64 = recorded.iter().map(|p| p.energy.0).sum();
    eprintln!(
        "replay: {} readings, host {host_uj} µJ, Docker VM CPU {vm_cpu} of {total_cpu} ns",
        recorded.len()
    );
    assert!(vm_cpu > 0 && vm_cpu < total_cpu);
    let source = entries.iter().find_map(|e| match e {
        RecordEntry::PowerSource {
            kind, provenance, ..
        } => Some((kind.as_str(), *provenance)),
        _ => None,
    });
    assert_eq!(source, Some(("replay", Provenance::Measured)));
}

async fn serve_fails(extra: &[&str]) -> (std::process::Output, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_host-bridge"))
        .arg("serve")
        .arg("--listen")
        .arg(format!("unix://{}", dir.path().join("s.sock").display()))
        .arg("--record")
        .arg(dir.path().join("rec.jbr"))
        .args(["--no-live", "--no-metrics"])
        .args(extra)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("serve exits by itself")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "serve {extra:?} exited with {:?}: {stderr}",
        out.status.code()
    );
    (out, stderr)
}

#[tokio::test]
async fn serve_binary_rejects_an_unknown_power_source() {
    let (out, stderr) = serve_fails(&["--power", "solar"]).await;
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--power")
            && stderr.contains("\"solar\"")
            && stderr.contains("auto, powermetrics, rapl, estimate or replay:"),
        "{stderr}"
    );
}

#[tokio::test]
#[ignore = "needs a machine without readable RAPL"]
async fn serve_binary_refuses_unreadable_rapl() {
    testkit::require(
        rapl::probe(Path::new(rapl::DEFAULT_POWERCAP_ROOT)) != RaplAvailability::Readable,
        "a machine without readable RAPL (here --power rapl would run)",
    );
    let (out, stderr) = serve_fails(&["--power", "rapl"]).await;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--power rapl cannot be used") && stderr.contains("rapl is unavailable"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measure_baseline_uses_the_real_source_as_measured_idle() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_host-bridge"))
        .current_dir(dir.path())
        .args([
            "measure",
            "--listen",
            "tcp://127.0.0.1:0",
            "--out",
            "m",
            "--baseline",
            "2",
            "--window",
            "1",
            "--power",
            "estimate",
            "--power-interval-ms",
            "250",
            "--estimate-idle-watts",
            "10",
            "--estimate-max-watts",
            "20",
            "--",
            "sleep",
            "2",
        ])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("measure ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let watts: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("baseline: ")?.strip_suffix(" W idle"))
        .expect("a measured baseline line")
        .parse()
        .unwrap();
    // The estimate lies between its idle and full-load power whatever the host does.
    assert!((10.0..=20.0).contains(&watts), "baseline {watts} W");
    let report = host_bridge::report::json::from_json(
        &std::fs::read_to_string(dir.path().join("m/report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report.power_source.kind, "estimate");
    assert!(report.totals.host.energy_uj > 0);
    assert!(
        !report
            .quality
            .notes
            .iter()
            .any(|n| n.contains("no measured baseline")),
        "{:?}",
        report.quality.notes
    );
}
