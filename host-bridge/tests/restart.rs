//! A bridge killed mid-stream (SIGKILL, no chance to flush) and started again on the same
//! recording loses no CPU time and counts none twice.
//!
//! The bridge runs as its real binary so the kill is a real process death; the agent runs
//! in this process. While the bridge is down the agent keeps sampling into its spool, then
//! resends after reconnecting; the restarted bridge rebuilds its dedupe table from the file.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::real_cgroup::{
    Accounting, Recorded, TestCgroup, agent_config, mono_ns, signal, total_from_deltas,
    wait_recorded,
};

const DEADLINE: Duration = Duration::from_secs(30);

/// Start `host-bridge serve` on `socket`, recording to `record`, logging to `log`.
async fn start_bridge(socket: &Path, record: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("create log file");
    let child = Command::new(env!("CARGO_BIN_EXE_host-bridge"))
        .args(["serve", "--no-live", "--listen"])
        .arg(format!("unix://{}", socket.display()))
        .arg("--record")
        .arg(record)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn host-bridge");
    // Ready when the socket accepts.
    crate::support::poll_until(DEADLINE, "the bridge to listen", || async {
        tokio::net::UnixStream::connect(socket).await.is_ok()
    })
    .await;
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and cgroup CPU accounting"]
async fn bridge_killed_and_restarted_loses_and_duplicates_nothing() {
    let accounting = Accounting::find();
    let mut cg = TestCgroup::create(&accounting, "restart-busy");
    cg.spawn_burner().await;

    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("bridge.sock");
    let record = dir.path().join("rec.jbr");
    let mut bridge = start_bridge(&socket, &record, &dir.path().join("bridge1.log")).await;

    let agent = agent_config(&format!("unix://{}", socket.display()), &[&cg.rel], 100);
    let (stop_agent, agent_stopped) = oneshot::channel::<()>();
    let agent_task = tokio::spawn(guest_agent::run(agent, async {
        let _stopped = agent_stopped.await;
    }));

    wait_recorded(&record, DEADLINE, "five samples", |r| {
        r.usage_of(&cg.rel).len() >= 5
    })
    .await;

    // Kill the bridge mid-stream; the agent keeps sampling into its spool meanwhile.
    bridge.kill().await.expect("SIGKILL the bridge");
    let killed_at = mono_ns();
    let before_restart = Recorded::read(&record).samples.len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarted_at = mono_ns();
    let mut bridge = start_bridge(&socket, &record, &dir.path().join("bridge2.log")).await;

    // Samples taken while the bridge was dead must arrive (spool resend).
    wait_recorded(
        &record,
        DEADLINE,
        "samples taken while the bridge was down",
        |r| {
            r.sessions == 2
                && r.samples
                    .iter()
                    .any(|(_, s)| s.clock.mono_ns.0 > killed_at && s.clock.mono_ns.0 < restarted_at)
        },
    )
    .await;

    // Stop burning: the cgroup's total is final. Wait for a sample taken after that.
    cg.kill_children();
    let file_total = cg.usage_us();
    let after = mono_ns();
    wait_recorded(&record, DEADLINE, "a sample after the burner died", |r| {
        r.usage_of(&cg.rel).last().is_some_and(|u| u.1 > after)
    })
    .await;

    let _sent = stop_agent.send(());
    agent_task
        .await
        .expect("agent task")
        .expect("agent ends cleanly");
    signal(bridge.id().expect("bridge pid"), Signal::SIGTERM);
    let status = bridge.wait().await.expect("wait bridge");
    assert!(status.success(), "restarted bridge exited with {status}");

    let rec = Recorded::read(&record);
    let usages = rec.usage_of(&cg.rel);
    let seqs: Vec<u64> = rec.samples.iter().map(|(_, s)| s.seq).collect();
    let first = seqs.first().copied().unwrap_or(0);
    let expected: Vec<u64> = (first..first + seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "recorded sequence numbers must be contiguous and unique (nothing lost, nothing twice)"
    );
    assert!(
        seqs.len() > before_restart,
        "nothing was recorded after the restart"
    );
    let recorded_total = total_from_deltas(&usages);
    let last = usages.last().map_or(0, |u| u.2);
    eprintln!(
        "restart: cgroup file {file_total} µs, recorded total {recorded_total} µs, last cumulative {last} µs, {} samples",
        usages.len()
    );
    assert_eq!(
        recorded_total, file_total,
        "CPU time recorded across the restart differs from the cgroup's own total"
    );
    assert!(
        file_total > 100_000,
        "burner got only {file_total} µs of CPU"
    );
    let log2 = std::fs::read_to_string(dir.path().join("bridge2.log")).unwrap_or_default();
    assert!(
        log2.contains("Continuing an existing recording."),
        "restarted bridge did not continue the recording:\n{log2}"
    );
}
