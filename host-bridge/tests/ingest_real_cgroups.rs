//! End to end on the real kernel: real cgroups, a CPU-burning child and an idle one, the real
//! agent and the real bridge in this process, over a Unix socket and over TCP loopback. (The
//! bridge's `vsock://` listener is not covered here: the CI kernel has neither `vhost_vsock` nor
//! `vsock_loopback`; the agent's vsock side runs in the QEMU test, `vm_e2e.rs`.)
//!
//! The check: between two instants at which the burner is frozen (SIGSTOP, so its counter
//! cannot move while the agent samples and the test reads), the CPU time the bridge recorded
//! for each cgroup equals what the cgroup's own file says, within 2 %; the idle cgroup stays
//! near zero.

use std::time::Duration;

use host_bridge::config::{Config, ListenEndpoint};
use host_bridge::serve::Bridge;
use nix::sys::signal::Signal;
use tokio::sync::oneshot;

use crate::real_cgroup::{
    Accounting, Recorded, TestCgroup, agent_config, mono_ns, signal, wait_recorded, wait_stopped,
};

/// Longest wait for anything to show up in the recording.
const DEADLINE: Duration = Duration::from_secs(30);

fn bridge_config(listen: ListenEndpoint, record: std::path::PathBuf) -> Config {
    Config {
        listen: vec![listen],
        record,
        max_connections: 8,
        auth_token: None,
        live: false,
        frame_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        power: None,
    }
}

/// Reading of both cgroups while the burner is frozen: (file busy, file idle, recorded busy,
/// recorded idle), all cumulative µs.
async fn frozen_reading(
    busy: &TestCgroup,
    idle: &TestCgroup,
    burner: u32,
    record: &std::path::Path,
) -> (u64, u64, u64, u64) {
    signal(burner, Signal::SIGSTOP);
    wait_stopped(burner).await;
    let file_busy = busy.usage_us();
    let file_idle = idle.usage_us();
    let after = mono_ns();
    let rec = wait_recorded(record, DEADLINE, "a sample taken after the freeze", |r| {
        let b = r.usage_of(&busy.rel);
        let i = r.usage_of(&idle.rel);
        b.last().is_some_and(|u| u.1 > after) && i.last().is_some_and(|u| u.1 > after)
    })
    .await;
    let rec_busy = rec
        .usage_of(&busy.rel)
        .last()
        .map(|u| u.2)
        .expect("busy sample");
    let rec_idle = rec
        .usage_of(&idle.rel)
        .last()
        .map(|u| u.2)
        .expect("idle sample");
    signal(burner, Signal::SIGCONT);
    (file_busy, file_idle, rec_busy, rec_idle)
}

async fn recorded_cpu_matches_cgroup_files(transport: &str) {
    let accounting = Accounting::find();
    let mut busy = TestCgroup::create(&accounting, &format!("ingest-{transport}-busy"));
    let mut idle = TestCgroup::create(&accounting, &format!("ingest-{transport}-idle"));
    let burner = busy.spawn_burner().await;
    idle.spawn_idle().await;

    let dir = tempfile::tempdir().expect("temp dir");
    let record = dir.path().join("rec.jbr");
    let listen = match transport {
        "unix" => ListenEndpoint::Unix(dir.path().join("bridge.sock")),
        _ => ListenEndpoint::Tcp {
            host: "127.0.0.1".into(),
            port: 0,
        },
    };
    let bridge = Bridge::bind(bridge_config(listen, record.clone()))
        .await
        .expect("bridge binds");
    let endpoint = bridge.local_endpoints().remove(0);
    let (stop_bridge, bridge_stopped) = oneshot::channel::<()>();
    let bridge_task = tokio::spawn(bridge.run(async {
        let _stopped = bridge_stopped.await;
    }));

    let agent = agent_config(&endpoint, &[&busy.rel, &idle.rel], 100);
    let (stop_agent, agent_stopped) = oneshot::channel::<()>();
    let agent_task = tokio::spawn(guest_agent::run(agent, async {
        let _stopped = agent_stopped.await;
    }));

    wait_recorded(&record, DEADLINE, "three samples of both cgroups", |r| {
        r.usage_of(&busy.rel).len() >= 3 && r.usage_of(&idle.rel).len() >= 3
    })
    .await;
    let (f1_busy, f1_idle, r1_busy, r1_idle) = frozen_reading(&busy, &idle, burner, &record).await;
    // Let the burner run until the recording shows 1.5 s more of its CPU time, then freeze it
    // again.
    wait_recorded(
        &record,
        DEADLINE,
        "1.5 s more CPU time of the burner",
        |r| {
            r.usage_of(&busy.rel)
                .last()
                .is_some_and(|u| u.2 >= r1_busy + 1_500_000)
        },
    )
    .await;
    let (f2_busy, f2_idle, r2_busy, r2_idle) = frozen_reading(&busy, &idle, burner, &record).await;

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

    let file_busy = f2_busy - f1_busy;
    let rec_busy = r2_busy - r1_busy;
    let file_idle = f2_idle - f1_idle;
    let rec_idle = r2_idle - r1_idle;
    eprintln!(
        "{transport}: busy file {file_busy} µs, recorded {rec_busy} µs; idle file {file_idle} µs, recorded {rec_idle} µs"
    );
    assert!(
        file_busy > 100_000,
        "the burner got only {file_busy} µs of CPU in 2 s; the machine is too loaded to judge"
    );
    let tolerance = file_busy / 50;
    assert!(
        rec_busy.abs_diff(file_busy) <= tolerance,
        "{transport}: recorded {rec_busy} µs vs cgroup file {file_busy} µs (> 2 % apart)"
    );
    assert!(
        rec_idle <= 20_000,
        "{transport}: idle cgroup recorded {rec_idle} µs of CPU in 2 s"
    );
    assert!(
        rec_idle.abs_diff(file_idle) <= file_idle / 50 + 1,
        "{transport}: idle recorded {rec_idle} µs vs file {file_idle} µs"
    );

    // Every sample recorded once, in order.
    let rec = Recorded::read(&record);
    let seqs: Vec<u64> = rec.samples.iter().map(|(_, s)| s.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] > w[0]),
        "sequence numbers not strictly increasing: {seqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and cgroup CPU accounting"]
async fn real_cgroups_over_unix_socket_match_cgroup_files() {
    recorded_cpu_matches_cgroup_files("unix").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and cgroup CPU accounting"]
async fn real_cgroups_over_tcp_loopback_match_cgroup_files() {
    recorded_cpu_matches_cgroup_files("tcp").await;
}
