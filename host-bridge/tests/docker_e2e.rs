//! Agent and bridge end to end on the machine's real Docker engine, while containers are
//! started, renamed, paused, restarted and killed and a compose project comes up and down:
//! the bridge's recording names every container and compose service, follows their states,
//! matches the cgroup files' CPU time within 2 %, and keeps an exited container's total.
//! Uses `joulebridge-test/busybox` and the compose fixture of the guest-agent tests.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use host_bridge::config::{Config, ListenEndpoint};
use host_bridge::journal::{RecordEntry, RecordingReader};
use host_bridge::serve::Bridge;
use protocol::{ContainerInfo, ContainerState, Message};
use tokio::sync::oneshot;

use crate::real_cgroup::{agent_config_with, wait_recorded};

const DEADLINE: Duration = Duration::from_secs(90);
const IMAGE: &str = "joulebridge-test/busybox:latest";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives inside the workspace")
        .to_path_buf()
}

async fn run(program: &str, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} {args:?} did not finish"))
    .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes containers and the compose project even when the test fails.
struct Cleanup {
    containers: Vec<String>,
    compose: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _removed = std::process::Command::new("docker")
            .args(["rm", "-f"])
            .args(&self.containers)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(project) = &self.compose {
            let _down = std::process::Command::new("docker-compose")
                .args(["-p", project, "-f"])
                .arg(compose_file())
                .args(["down", "-t", "0"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Removes a test's parent cgroup from every hierarchy (the engine leaves parents behind).
struct ParentCgroup(String);

impl Drop for ParentCgroup {
    fn drop(&mut self) {
        let roots = std::fs::read_dir("/sys/fs/cgroup")
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default();
        for root in roots {
            let dir = root.join(&self.0);
            if dir.is_dir() {
                let _gone = std::fs::remove_dir(&dir);
            }
        }
    }
}

fn compose_file() -> PathBuf {
    workspace_root().join("guest-agent/tests/fixtures/compose/docker-compose.yml")
}

/// `docker compose` when the plugin exists, else `docker-compose`.
async fn compose(args: &[&str]) -> String {
    let plugin = tokio::process::Command::new("docker")
        .args(["compose", "version"])
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if plugin {
        let mut all = vec!["compose"];
        all.extend_from_slice(args);
        run("docker", &all).await
    } else {
        run("docker-compose", args).await
    }
}

/// Everything the recording says about containers: metadata updates in order, and samples'
/// usages per id (µs).
#[derive(Default)]
struct Seen {
    infos: Vec<ContainerInfo>,
    usages: Vec<(String, u64)>,
}

impl Seen {
    fn read(path: &Path) -> Self {
        let mut seen = Self::default();
        let Ok(read) = RecordingReader::read_all(path) else {
            return seen;
        };
        for entry in read.entries {
            if let RecordEntry::Guest { message, .. } = entry {
                match message {
                    Message::Containers(c) => seen.infos.extend(c.entries),
                    Message::Sample(s) => seen
                        .usages
                        .extend(s.containers.iter().map(|c| (c.id.clone(), c.cpu.usage.0))),
                    _ => {}
                }
            }
        }
        seen
    }

    fn states(&self, id: &str) -> Vec<ContainerState> {
        self.infos
            .iter()
            .filter(|i| i.id == id)
            .map(|i| i.state)
            .collect()
    }

    fn last_info(&self, id: &str) -> Option<&ContainerInfo> {
        self.infos.iter().rev().find(|i| i.id == id)
    }

    fn usages(&self, id: &str) -> Vec<u64> {
        self.usages
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, u)| *u)
            .collect()
    }
}

/// Waits until the recording satisfies `ready`.
async fn wait_seen(record: &Path, what: &str, ready: impl Fn(&Seen) -> bool) -> Seen {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let seen = Seen::read(record);
        if ready(&seen) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the recording never showed {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A container's CPU time in µs from the file the agent's sampler prefers: cgroup v2
/// `cpu.stat` when the container has a cgroup2 directory, else v1 `cpuacct.usage`.
fn cgroup_usage_us(rel: &str) -> u64 {
    let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(|root| Path::new(root).join(rel).join("cpu.stat"))
        .find(|p| p.exists());
    if let Some(stat) = unified {
        return std::fs::read_to_string(stat)
            .expect("read cpu.stat")
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .expect("usage_usec");
    }
    let ns: u64 = ["/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/cpu,cpuacct"]
        .iter()
        .map(|root| Path::new(root).join(rel).join("cpuacct.usage"))
        .find_map(|p| std::fs::read_to_string(p).ok())
        .expect("cpuacct.usage readable")
        .trim()
        .parse()
        .expect("cpuacct.usage is a number");
    ns / 1_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Docker engine, Compose and the test image (scripts/setup-test-env.sh)"]
async fn containers_and_compose_services_reach_the_recording_with_their_cpu_time() {
    testkit::require_docker_image(IMAGE);

    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("bridge.sock");
    let record = dir.path().join("rec.jbr");
    let bridge = Bridge::bind(Config {
        listen: vec![ListenEndpoint::Unix(socket.clone())],
        record: record.clone(),
        max_connections: 8,
        auth_token: None,
        live: false,
        frame_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        power: None,
    })
    .await
    .expect("bridge binds");
    let (stop_bridge, bridge_stopped) = oneshot::channel::<()>();
    let bridge_task = tokio::spawn(bridge.run(async {
        let _stopped = bridge_stopped.await;
    }));
    // Docker on, no layout discovery: only containers the engine reports are sampled.
    // Sampling every 20 ms bounds what a missed final sample can lose (the pidfd exit watch
    // wins the race against cgroup removal by only ~8 ms, and can lose it on a loaded machine)
    // to one period: ≤ 1 % of the burner's ~2 s, inside the 2 % this test allows. The final
    // sample itself is tested in guest-agent's docker_registry tests.
    let agent = agent_config_with(&format!("unix://{}", socket.display()), &[], 20, &[]);
    let (stop_agent, agent_stopped) = oneshot::channel::<()>();
    let agent_task = tokio::spawn(guest_agent::run(agent, async {
        let _stopped = agent_stopped.await;
    }));
    wait_recorded(&record, DEADLINE, "the agent streaming", |r| {
        r.samples.len() >= 2
    })
    .await;

    let tag = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let burner = format!("jbe-burn-{tag}");
    let renamed = format!("jbe-renamed-{tag}");
    let idle = format!("jbe-idle-{tag}");
    let project = format!("jbe{}", tag.replace('-', ""));
    let mut cleanup = Cleanup {
        containers: vec![burner.clone(), renamed.clone(), idle.clone()],
        compose: None,
    };

    // A fresh parent cgroup keeps the burner's total after the engine removes its cgroup:
    // the ground truth for "an exited container keeps its final total" (cgroupfs driver).
    let parent = format!("jbe{}", tag.replace('-', ""));
    let _parent_guard = ParentCgroup(parent.clone());
    let parent_arg = format!("/{parent}");
    let burner_id = run(
        "docker",
        &[
            "run",
            "-d",
            "--name",
            &burner,
            "--network",
            "none",
            "--cpus",
            "0.5",
            "--cgroup-parent",
            &parent_arg,
            IMAGE,
            "sh",
            "-c",
            "while :; do :; done",
        ],
    )
    .await;
    let idle_id = run(
        "docker",
        &[
            "run",
            "-d",
            "--name",
            &idle,
            "--network",
            "none",
            IMAGE,
            "sleep",
            "3600",
        ],
    )
    .await;
    run("docker", &["rename", &burner, &renamed]).await;
    run("docker", &["restart", "-t", "0", &idle]).await;
    cleanup.compose = Some(project.clone());
    let file = compose_file();
    let file = file.to_str().expect("utf-8 path");
    compose(&["-p", &project, "-f", file, "up", "-d"]).await;

    // Names, restarts and compose services, as the bridge recorded them.
    let seen = wait_seen(&record, "renamed, restarted and compose containers", |s| {
        let renamed_ok = s.last_info(&burner_id).is_some_and(|i| i.name == renamed);
        let restarted = s
            .states(&idle_id)
            .windows(2)
            .any(|w| w[0] == ContainerState::Exited && w[1] == ContainerState::Running);
        let services = s
            .infos
            .iter()
            .filter(|i| i.compose_project.as_deref() == Some(project.as_str()))
            .filter_map(|i| Some((i.compose_service.clone()?, i.compose_number?)))
            .collect::<std::collections::BTreeSet<_>>();
        renamed_ok && restarted && services.len() == 3
    })
    .await;
    let services: std::collections::BTreeSet<(String, u32)> = seen
        .infos
        .iter()
        .filter(|i| i.compose_project.as_deref() == Some(project.as_str()))
        .filter_map(|i| Some((i.compose_service.clone()?, i.compose_number?)))
        .collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        vec![
            ("burner".to_owned(), 1),
            ("idle".to_owned(), 1),
            ("idle".to_owned(), 2)
        ]
    );
    let burner_info = seen
        .last_info(&burner_id)
        .expect("the burner is in the recording")
        .clone();
    assert_eq!(burner_info.image, IMAGE);

    // CPU time within 2 %: let the recording show a second more of the burner's CPU time,
    // then freeze it, read its cgroup, and wait for samples after that.
    let so_far = Seen::read(&record)
        .usages(&burner_id)
        .last()
        .copied()
        .unwrap_or(0);
    wait_seen(&record, "a second more CPU time of the burner", |s| {
        s.usages(&burner_id)
            .last()
            .is_some_and(|&u| u >= so_far + 1_000_000)
    })
    .await;
    run("docker", &["pause", &renamed]).await;
    let file_us = cgroup_usage_us(&burner_info.cgroup_path);
    let before = Seen::read(&record).usages(&burner_id).len();
    let seen = wait_seen(&record, "two burner samples after the pause", |s| {
        s.usages(&burner_id).len() >= before + 2
    })
    .await;
    let recorded_us = *seen
        .usages(&burner_id)
        .last()
        .expect("samples of the burner");
    #[allow(clippy::cast_precision_loss)]
    let error = (recorded_us as f64 - file_us as f64).abs() / file_us as f64;
    eprintln!(
        "docker e2e: burner recorded {recorded_us} µs, cgroup file {file_us} µs ({:.3} % apart)",
        error * 100.0
    );
    assert!(file_us > 200_000, "the burner burned ({file_us} µs)");
    assert!(
        error <= 0.02,
        "recorded {recorded_us} µs vs cgroup {file_us} µs"
    );
    run("docker", &["unpause", &renamed]).await;

    // Exit: the container stays in the recording as Exited, with its total.
    run("docker", &["kill", &renamed]).await;
    let seen = wait_seen(&record, "the burner Exited", |s| {
        s.states(&burner_id).contains(&ContainerState::Exited)
    })
    .await;
    let final_us = seen.usages(&burner_id).into_iter().max().unwrap_or(0);
    assert!(
        final_us >= recorded_us,
        "the exited burner keeps at least its paused total ({final_us} < {recorded_us})"
    );
    let truth_us = cgroup_usage_us(&parent);
    #[allow(clippy::cast_precision_loss)]
    let final_error = (truth_us as f64 - final_us as f64).abs() / truth_us as f64;
    eprintln!(
        "docker e2e: exited burner recorded {final_us} µs, parent cgroup {truth_us} µs ({:.3} % apart)",
        final_error * 100.0
    );
    assert!(
        final_error <= 0.02,
        "exited burner: recorded {final_us} µs vs its parent cgroup's {truth_us} µs"
    );

    compose(&["-p", &project, "-f", file, "down", "-t", "0"]).await;
    cleanup.compose = None;
    let compose_ids: Vec<String> = seen
        .infos
        .iter()
        .filter(|i| i.compose_project.as_deref() == Some(project.as_str()))
        .map(|i| i.id.clone())
        .collect();
    wait_seen(&record, "the compose containers Removed", |s| {
        compose_ids
            .iter()
            .all(|id| s.states(id).contains(&ContainerState::Removed))
    })
    .await;

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
}
