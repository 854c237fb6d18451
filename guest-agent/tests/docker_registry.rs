//! The Docker metadata registry against the real engine of the test machine.
//!
//! Containers run `joulebridge-test/busybox` (FROM scratch + Debian's busybox-static), built
//! by `scripts/setup-test-env.sh`: no image registry is needed. Every test
//! uses unique container names and removes its containers in a guard, even on failure.
//! Other engineers' containers may come and go on the same engine; assertions only look at
//! events for this test's own container ids.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use guest_agent::sources::cgroup::{CgroupMounts, CgroupSampler};
use guest_agent::sources::docker::{DockerConfig, DockerEndpoint, RegistryEvent, run_registry};
use protocol::{ContainerInfo, ContainerState};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "joulebridge-test/busybox:latest";
/// How long any single expected event may take to arrive.
const EVENT_DEADLINE: Duration = Duration::from_secs(60);

fn compose_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compose/docker-compose.yml")
}

/// A name no other test run uses.
fn unique(topic: &str) -> String {
    format!(
        "jbt-{topic}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Longest a single `docker` command may take (a busy shared engine can be slow).
const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// Runs a command, returns trimmed stdout, panics with stderr on failure or after
/// [`COMMAND_DEADLINE`].
async fn run(program: &str, args: &[&str]) -> String {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(COMMAND_DEADLINE, child)
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} still running after {COMMAND_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn docker(args: &[&str]) -> String {
    run("docker", args).await
}

/// The Docker engine with the test image (built by `scripts/setup-test-env.sh`), or a failure
/// naming what is missing.
fn require_engine() {
    testkit::require_docker_image(IMAGE);
}

/// `docker compose …` or `docker-compose …`, whichever this machine has.
async fn compose_command() -> Vec<String> {
    let plugin = tokio::process::Command::new("docker")
        .args(["compose", "version"])
        .output()
        .await;
    if plugin.is_ok_and(|o| o.status.success()) {
        return vec!["docker".to_owned(), "compose".to_owned()];
    }
    let standalone = tokio::process::Command::new("docker-compose")
        .arg("version")
        .output()
        .await;
    assert!(
        standalone.is_ok_and(|o| o.status.success()),
        "neither `docker compose` nor `docker-compose` works on this machine"
    );
    vec!["docker-compose".to_owned()]
}

/// Removes the named containers (and a compose project) when dropped, even after a panic.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    compose: Option<(Vec<String>, String)>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.containers.is_empty() {
            let _status = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&self.containers)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some((cmd, project)) = &self.compose {
            let file = compose_file();
            let _status = std::process::Command::new(&cmd[0])
                .args(&cmd[1..])
                .args(["-p", project, "-f"])
                .arg(&file)
                .args(["down", "-t", "0"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Starts a detached busybox container; returns its id.
async fn start_container(cleanup: &mut Cleanup, name: &str, cmd: &[&str]) -> String {
    cleanup.containers.push(name.to_owned());
    let mut args = vec![
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "none",
        "--cpus",
        "0.25",
        "--label",
        "jb.test=registry",
        IMAGE,
    ];
    args.extend_from_slice(cmd);
    docker(&args).await
}

/// The v1 `cpuacct` mount point, or the cgroup2 mount on a pure v2 host.
fn cpu_accounting_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo readable");
    let mut v2 = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split_whitespace().nth(4);
        let mut right = right.split_whitespace();
        let fstype = right.next();
        let super_opts = right.nth(1).unwrap_or_default();
        match (fstype, mount_point) {
            (Some("cgroup"), Some(mp)) if super_opts.split(',').any(|o| o == "cpuacct") => {
                return PathBuf::from(mp);
            }
            (Some("cgroup2"), Some(mp)) => v2 = Some(PathBuf::from(mp)),
            _ => {}
        }
    }
    v2.expect("a cgroup filesystem is mounted")
}

/// What the stand-in pipeline saw: an event, and for `Died` whether the container's cgroup
/// directory still existed when the event arrived (the final-sample window).
struct Observed {
    event: RegistryEvent,
    cgroup_present: Option<bool>,
}

/// A running registry and everything it sent so far.
///
/// A collector task receives the registry's events as soon as they are sent, like the
/// pipeline does, so the cgroup check on `Died` is not delayed by the test awaiting a `docker`
/// command.
struct Harness {
    rx: mpsc::Receiver<Observed>,
    log: Vec<RegistryEvent>,
    /// For each `Died`, whether the container's cgroup directory still existed on arrival.
    died_with_cgroup: Vec<(String, bool)>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Harness {
    fn start(cfg: DockerConfig) -> Self {
        // Logs of the source under test, shown for failing tests (`RUST_LOG=guest_agent=debug`).
        let _already = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        // Registry → collector: as in the agent, the registry waits when the channel is full.
        let (tx, mut registry_rx) = mpsc::channel(256);
        // Collector → test: large enough for any test here; the collector waits when full.
        let (observed_tx, rx) = mpsc::channel(4096);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_registry(
            cfg,
            PathBuf::from("/proc"),
            tx,
            cancel.clone(),
        ));
        tokio::spawn(async move {
            let root = cpu_accounting_root();
            let mut paths: Vec<(String, PathBuf)> = Vec::new();
            while let Some(event) = registry_rx.recv().await {
                let cgroup_present = match &event {
                    RegistryEvent::Upsert(info) => {
                        paths.push((info.id.clone(), root.join(&info.cgroup_path)));
                        None
                    }
                    RegistryEvent::Died { id } => Some(
                        paths
                            .iter()
                            .rev()
                            .find(|(known, _)| known == id)
                            .is_some_and(|(_, path)| path.exists()),
                    ),
                    _ => None,
                };
                if observed_tx
                    .send(Observed {
                        event,
                        cgroup_present,
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Self {
            rx,
            log: Vec::new(),
            died_with_cgroup: Vec::new(),
            cancel,
            task,
        }
    }

    fn fast_retry(endpoint: DockerEndpoint) -> DockerConfig {
        DockerConfig {
            endpoint,
            retry_initial: Duration::from_millis(20),
            retry_max: Duration::from_millis(100),
            ..DockerConfig::default()
        }
    }

    /// Receives until `pred` matches an event not examined yet; returns a clone of it.
    async fn wait_for(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&RegistryEvent) -> bool,
    ) -> RegistryEvent {
        let deadline = Instant::now() + EVENT_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let observed = match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(observed)) => observed,
                Ok(None) => panic!(
                    "registry stopped while waiting for {what}; got {:#?}",
                    self.log
                ),
                Err(_) => panic!("no {what} within {EVENT_DEADLINE:?}; got {:#?}", self.log),
            };
            let event = observed.event;
            if let (RegistryEvent::Died { id }, Some(present)) = (&event, observed.cgroup_present) {
                self.died_with_cgroup.push((id.clone(), present));
            }
            self.log.push(event.clone());
            if pred(&event) {
                return event;
            }
        }
    }

    /// The reason of the next `Unavailable`.
    async fn unavailable_reason(&mut self) -> String {
        match self
            .wait_for("Unavailable", |e| {
                matches!(e, RegistryEvent::Unavailable { .. })
            })
            .await
        {
            RegistryEvent::Unavailable { reason } => reason,
            other => unreachable!("predicate admits only Unavailable, got {other:?}"),
        }
    }

    async fn upsert_of(&mut self, id: &str, what: &str) -> ContainerInfo {
        match self
            .wait_for(
                what,
                |e| matches!(e, RegistryEvent::Upsert(i) if i.id == id),
            )
            .await
        {
            RegistryEvent::Upsert(info) => info,
            other => unreachable!("predicate admits only Upsert, got {other:?}"),
        }
    }

    async fn died(&mut self, id: &str, what: &str) {
        self.wait_for(
            what,
            |e| matches!(e, RegistryEvent::Died { id: d } if d == id),
        )
        .await;
    }

    /// Waits for `Removed { id }`, which may already have arrived while waiting for another.
    async fn removed(&mut self, id: &str, what: &str) {
        if self
            .log
            .iter()
            .any(|e| matches!(e, RegistryEvent::Removed { id: d } if d == id))
        {
            return;
        }
        self.wait_for(
            what,
            |e| matches!(e, RegistryEvent::Removed { id: d } if d == id),
        )
        .await;
    }

    fn count(&self, pred: impl Fn(&RegistryEvent) -> bool) -> usize {
        self.log.iter().filter(|e| pred(e)).count()
    }

    async fn stop(self) -> Vec<RegistryEvent> {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("registry stops promptly after cancel")
            .expect("registry task does not panic");
        self.log
    }
}

/// Checks what every Upsert of a running container must carry.
fn assert_running_container(info: &ContainerInfo, name: &str) {
    assert_eq!(info.name, name);
    assert_eq!(info.image, IMAGE);
    assert_eq!(info.state, ContainerState::Running);
    assert!(
        info.labels
            .contains(&("jb.test".to_owned(), "registry".to_owned())),
        "labels: {:?}",
        info.labels
    );
    let pid = info.pid.expect("a running container has a pid");
    let dir = cpu_accounting_root().join(&info.cgroup_path);
    assert!(
        info.cgroup_path.contains(&info.id),
        "cgroup path {:?} names the container",
        info.cgroup_path
    );
    assert!(dir.is_dir(), "cgroup directory {} exists", dir.display());
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).expect("cgroup.procs readable");
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "pid {pid} is in {}",
        dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Docker engine and the test image (scripts/setup-test-env.sh)"]
async fn registry_follows_list_start_rename_kill_restart_and_remove() {
    require_engine();
    let mut cleanup = Cleanup::default();
    let tag = unique("life");

    // Exists before the registry starts: must come from the initial list.
    let early_name = format!("{tag}-early");
    let early = start_container(&mut cleanup, &early_name, &["sleep", "3600"]).await;

    let mut h = Harness::start(DockerConfig::default());
    let connected = h
        .wait_for("Connected", |e| {
            matches!(e, RegistryEvent::Connected { .. })
        })
        .await;
    if let RegistryEvent::Connected {
        engine,
        api_version,
    } = &connected
    {
        assert!(!engine.is_empty());
        let server_api = docker(&["version", "--format", "{{.Server.APIVersion}}"]).await;
        assert_eq!(
            *api_version, server_api,
            "negotiated down to the engine's API"
        );
    }
    let info = h.upsert_of(&early, "Upsert of the listed container").await;
    assert_running_container(&info, &early_name);

    // Started while the registry watches.
    let name = format!("{tag}-burner");
    let burner = start_container(&mut cleanup, &name, &["sh", "-c", "while :; do :; done"]).await;
    let first_run = h.upsert_of(&burner, "Upsert on start").await;
    assert_running_container(&first_run, &name);

    // Rename: same id, new name, nothing else changes.
    let renamed = format!("{tag}-renamed");
    docker(&["rename", &name, &renamed]).await;
    cleanup.containers.push(renamed.clone());
    let after_rename = h.upsert_of(&burner, "Upsert on rename").await;
    assert_eq!(after_rename.name, renamed);
    assert_eq!(after_rename.pid, first_run.pid);
    assert_eq!(after_rename.cgroup_path, first_run.cgroup_path);

    // Exit: exactly one Died per run, even though both the pidfd and `die` report it.
    docker(&["kill", &renamed]).await;
    h.died(&burner, "Died on kill").await;

    // Restart: a new run with a new pid under the same id.
    docker(&["start", &renamed]).await;
    let second_run = h.upsert_of(&burner, "Upsert on restart").await;
    assert_running_container(&second_run, &renamed);
    assert_ne!(second_run.pid, first_run.pid);

    // `docker restart`: die and start in one command; again one Died, then a new run.
    docker(&["restart", "-t", "0", &renamed]).await;
    h.died(&burner, "Died on restart").await;
    let third_run = h.upsert_of(&burner, "Upsert after restart").await;
    assert_running_container(&third_run, &renamed);
    assert_ne!(third_run.pid, second_run.pid);

    // Removal of a running container: Died, then Removed.
    docker(&["rm", "-f", &renamed]).await;
    h.removed(&burner, "Removed on rm -f").await;
    docker(&["rm", "-f", &early]).await;
    h.removed(&early, "Removed of the listed container").await;

    let died_burner = h.count(|e| matches!(e, RegistryEvent::Died { id } if *id == burner));
    assert_eq!(died_burner, 3, "one Died per run: {:#?}", h.log);
    for id in [&burner, &early] {
        let order: Vec<&RegistryEvent> = h
            .log
            .iter()
            .filter(|e| matches!(e, RegistryEvent::Died { id: d } | RegistryEvent::Removed { id: d } if d == id))
            .collect();
        assert!(
            matches!(order.last(), Some(RegistryEvent::Removed { .. }))
                && matches!(
                    order.get(order.len().saturating_sub(2)),
                    Some(RegistryEvent::Died { .. })
                ),
            "Died precedes Removed for {id}: {order:?}"
        );
    }
    // The point of the pidfd watch: the pipeline hears of the exit while the cgroup (and its
    // final counters) still exists. The engine's `die` comes only after the cgroup is gone, so
    // without the watch this count is always zero. The window is short (about 8 ms from exit
    // to cgroup removal on the CI host), so a loaded machine may lose some races: require one.
    let ours: Vec<&(String, bool)> = h
        .died_with_cgroup
        .iter()
        .filter(|(id, _)| *id == burner || *id == early)
        .collect();
    let readable = ours.iter().filter(|(_, exists)| *exists).count();
    eprintln!(
        "Died with the cgroup still present: {readable} of {}",
        ours.len()
    );
    assert!(
        readable >= 1,
        "every Died came after the cgroup was removed: {ours:?}"
    );
    let log = h.stop().await;
    assert!(
        !log.iter()
            .any(|e| matches!(e, RegistryEvent::Unavailable { .. })),
        "a reachable engine is never reported unavailable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Docker engine, Compose and the test image (scripts/setup-test-env.sh)"]
async fn registry_reports_compose_project_service_and_number() {
    require_engine();
    let cmd = compose_command().await;
    // Compose v1 lower-cases and strips dashes from project names; keep it simple.
    let project = unique("compose").replace('-', "");
    let mut cleanup = Cleanup::default();
    cleanup.compose = Some((cmd.clone(), project.clone()));
    let mut h = Harness::start(DockerConfig::default());
    h.wait_for("Connected", |e| {
        matches!(e, RegistryEvent::Connected { .. })
    })
    .await;

    let file = compose_file();
    let file = file.to_str().expect("utf-8 path");
    let mut up: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
    up.extend(["-p", &project, "-f", file, "up", "-d"]);
    run(&cmd[0], &up).await;

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = h
            .wait_for("Upserts of the compose project", |e| {
                matches!(e, RegistryEvent::Upsert(i) if i.compose_project.as_deref() == Some(project.as_str()))
            })
            .await;
        if let RegistryEvent::Upsert(info) = event
            && !seen.iter().any(|s: &ContainerInfo| s.id == info.id)
        {
            seen.push(info);
        }
    }
    let mut services: Vec<(String, u32)> = seen
        .iter()
        .map(|i| {
            (
                i.compose_service.clone().expect("compose service label"),
                i.compose_number.expect("compose container number"),
            )
        })
        .collect();
    services.sort();
    assert_eq!(
        services,
        vec![
            ("burner".to_owned(), 1),
            ("idle".to_owned(), 1),
            ("idle".to_owned(), 2)
        ]
    );
    for info in &seen {
        assert!(info.name.contains(&project), "name {:?}", info.name);
        assert!(info.pid.is_some());
        assert!(cpu_accounting_root().join(&info.cgroup_path).is_dir());
        assert!(
            !info
                .labels
                .iter()
                .any(|(k, _)| k == "com.docker.compose.project"),
            "compose labels are split out of the remaining labels"
        );
    }

    let mut down: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
    down.extend(["-p", &project, "-f", file, "down", "-t", "0"]);
    run(&cmd[0], &down).await;
    let ids: HashSet<String> = seen.iter().map(|i| i.id.clone()).collect();
    for id in &ids {
        h.removed(id, "Removed after compose down").await;
    }
    for id in &ids {
        let died = h.count(|e| matches!(e, RegistryEvent::Died { id: d } if d == id));
        assert_eq!(died, 1, "one Died for {id} on compose down");
    }
    cleanup.compose = None;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Docker engine and the test image (scripts/setup-test-env.sh)"]
async fn registry_missing_socket_reports_once_then_connects_when_it_appears() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("docker.sock");
    let mut h = Harness::start(Harness::fast_retry(DockerEndpoint::Unix(socket.clone())));
    require_engine();
    let reason = h.unavailable_reason().await;
    assert!(
        reason.contains(&format!("no Docker socket at {}", socket.display())),
        "{reason}"
    );
    assert!(reason.contains("cgroup-only"), "{reason}");

    // Let the source retry many times (20–100 ms back-off), then make the engine appear.
    tokio::time::sleep(Duration::from_millis(600)).await;
    std::os::unix::fs::symlink("/var/run/docker.sock", &socket).expect("symlink in temp dir");
    h.wait_for("Connected once the socket exists", |e| {
        matches!(e, RegistryEvent::Connected { .. })
    })
    .await;
    let unavailable = h.count(|e| matches!(e, RegistryEvent::Unavailable { .. }));
    assert_eq!(
        unavailable, 1,
        "said once, then retried quietly: {:#?}",
        h.log
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_path_that_is_not_a_socket_is_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("docker.sock");
    std::fs::write(&path, b"not a socket").expect("write in temp dir");
    let mut h = Harness::start(Harness::fast_retry(DockerEndpoint::Unix(path.clone())));
    let reason = h.unavailable_reason().await;
    assert!(
        reason.contains(&format!("{} is not a Unix socket", path.display())),
        "{reason}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = h.stop().await;
    assert_eq!(
        log.iter()
            .filter(|e| matches!(e, RegistryEvent::Unavailable { .. }))
            .count(),
        1
    );
}

/// Reports a permission error the way a user without access to the socket meets it.
///
/// As root (CI), file permissions do not apply, so the check runs in a child copy of this
/// test binary whose `CAP_DAC_OVERRIDE` and `CAP_DAC_READ_SEARCH` are dropped (see
/// `testkit::ran_without_file_permission_override`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_permission_denied_is_reported_clearly() {
    use std::os::unix::fs::PermissionsExt;
    if testkit::ran_without_file_permission_override(
        "docker_registry::registry_permission_denied_is_reported_clearly",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("docker.sock");
    // A real listening socket that nobody may connect to.
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind in temp dir");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o000))
        .expect("chmod in temp dir");
    let reason = denied_reason(&socket).await;
    assert!(reason.starts_with("permission denied"), "{reason}");
    assert!(reason.contains("cgroup-only"), "{reason}");
}

async fn denied_reason(socket: &Path) -> String {
    let mut h = Harness::start(Harness::fast_retry(DockerEndpoint::Unix(
        socket.to_path_buf(),
    )));
    let reason = h.unavailable_reason().await;
    h.stop().await;
    reason
}

/// Total CPU of a cgroup in µs, the way the agent's sampler prefers it: cgroup v2 `cpu.stat`
/// `usage_usec` when the cgroup exists in a cgroup2 hierarchy, else v1 `cpuacct.usage` (ns).
fn cgroup_usage_usec(mounts: &CgroupMounts, rel: &str) -> Option<u64> {
    if let Some(v2) = &mounts.v2 {
        let stat = std::fs::read_to_string(v2.join(rel).join("cpu.stat")).ok();
        if let Some(stat) = stat {
            return stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok());
        }
    }
    let cpuacct = mounts.v1.cpuacct.as_ref()?;
    let ns: u64 = std::fs::read_to_string(cpuacct.join(rel).join("cpuacct.usage"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(ns / 1_000)
}

/// Removes a test's parent cgroup from every hierarchy (the engine leaves parents behind).
struct ParentCgroup {
    rel: String,
}

impl Drop for ParentCgroup {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path().join(&self.rel);
            if dir.is_dir() {
                let _gone = std::fs::remove_dir(&dir);
            }
        }
        let dir = Path::new("/sys/fs/cgroup").join(&self.rel);
        if dir.is_dir() {
            let _gone = std::fs::remove_dir(&dir);
        }
    }
}

/// The point of `Died` coming from the pidfd: a stand-in for the pipeline (the agent's own
/// `CgroupSampler`, tracking on `Upsert`, a sample reading the container first on `Died`) can
/// read a container's final CPU total although the engine removes the cgroup before it logs
/// `die`. The agent no longer depends on winning that race (`tests/final_cpu.rs` covers the
/// structural path, completion from the parent cgroup); this checks the race is still won. The ground truth is a
/// fresh parent cgroup (`--cgroup-parent`), whose hierarchical counter keeps the child's
/// total after the child is gone. Within 2 %.
///
/// The exit-to-removal window is short (about 8 ms here), so one attempt may lose the race on
/// a loaded machine; up to five containers are tried and one final sample must match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Docker engine and the test image (scripts/setup-test-env.sh)"]
async fn final_sample_on_died_keeps_the_exited_containers_cpu_total() {
    const ATTEMPTS: usize = 5;
    require_engine();
    let systemd = docker(&["info", "--format", "{{.CgroupDriver}}"]).await == "systemd";
    let mounts = CgroupMounts::discover(Path::new("/")).expect("cgroup mounts");

    let (tx, mut rx) = mpsc::channel(256);
    let cancel = CancellationToken::new();
    let registry = tokio::spawn(run_registry(
        DockerConfig::default(),
        PathBuf::from("/proc"),
        tx,
        cancel.clone(),
    ));
    // The stand-in pipeline: reports tracked ids and final samples back to the test.
    let (tracked_tx, mut tracked_rx) = mpsc::channel::<String>(256);
    let (final_tx, mut final_rx) = mpsc::channel::<(String, Option<u64>)>(256);
    let sampler_mounts = mounts.clone();
    tokio::spawn(async move {
        let mut sampler = CgroupSampler::new(sampler_mounts);
        while let Some(event) = rx.recv().await {
            match event {
                RegistryEvent::Upsert(info) => {
                    let tracked = sampler.track(info.id.clone(), &info.cgroup_path).is_ok();
                    if tracked && tracked_tx.send(info.id).await.is_err() {
                        break;
                    }
                }
                RegistryEvent::Died { id } => {
                    let mut out = Vec::new();
                    sampler.sample_dying_first(&mut out, &id);
                    let usage = out.iter().find(|c| c.id == id).map(|c| c.cpu.usage.0);
                    if final_tx.send((id, usage)).await.is_err() {
                        break;
                    }
                }
                RegistryEvent::Removed { id } => sampler.untrack(&id),
                _ => {}
            }
        }
    });

    let mut results = Vec::new();
    for attempt in 0..ATTEMPTS {
        let name = unique("final");
        let parent_name = name.replace('-', "");
        let (parent_arg, parent_rel) = if systemd {
            (
                format!("{parent_name}.slice"),
                format!("{parent_name}.slice"),
            )
        } else {
            (format!("/{parent_name}"), parent_name.clone())
        };
        let mut cleanup = Cleanup::default();
        cleanup.containers.push(name.clone());
        let _parent = ParentCgroup {
            rel: parent_rel.clone(),
        };
        let id = docker(&[
            "run",
            "-d",
            "--name",
            &name,
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
        ])
        .await;
        let deadline = Instant::now() + EVENT_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, tracked_rx.recv()).await {
                Ok(Some(tracked)) if tracked == id => break,
                Ok(Some(_)) => {}
                _ => panic!("container {id} never tracked"),
            }
        }
        // Burn some CPU (the limit keeps the machine usable), then stop it abruptly.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        docker(&["kill", &name]).await;
        let final_usage = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, final_rx.recv()).await {
                Ok(Some((died, usage))) if died == id => break usage,
                Ok(Some(_)) => {}
                _ => panic!("no Died for {id}"),
            }
        };
        docker(&["rm", "-f", &name]).await;
        let truth = cgroup_usage_usec(&mounts, &parent_rel).expect("parent cgroup readable");
        eprintln!("attempt {attempt}: final sample {final_usage:?} µs, parent total {truth} µs");
        results.push((final_usage, truth));
        if let Some(usage) = final_usage {
            #[allow(clippy::cast_precision_loss)]
            let error = (usage as f64 - truth as f64).abs() / truth as f64;
            assert!(truth > 100_000, "the burner ran ({truth} µs)");
            assert!(
                error <= 0.02,
                "final sample {usage} µs vs parent total {truth} µs: {:.2} % apart",
                error * 100.0
            );
            break;
        }
    }
    cancel.cancel();
    let _stopped = registry.await;
    assert!(
        results.iter().any(|(usage, _)| usage.is_some()),
        "no final sample in {ATTEMPTS} attempts: {results:?}"
    );
}

/// Removes Podman containers when dropped, even after a panic.
struct PodmanCleanup(Vec<String>);

impl Drop for PodmanCleanup {
    fn drop(&mut self) {
        let _status = std::process::Command::new("podman")
            .args(["rm", "-f"])
            .args(&self.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Podman's Docker-compatible API, served on a temp socket by `podman system service`: the
/// same registry works unchanged (Podman filters on its own event names and reports `remove`
/// for `destroy`; the source asks for both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Podman and the test image in Podman (scripts/setup-test-env.sh)"]
async fn registry_follows_podman_compat_socket() {
    testkit::require_program("podman", &["--version"], "Debian package podman");
    testkit::require(
        testkit::runs("podman", &["image", "inspect", IMAGE]),
        format_args!("Podman image {IMAGE}"),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("podman.sock");
    let _service = tokio::process::Command::new("podman")
        .args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", socket.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("podman runs");

    // The source retries until the service has created its socket.
    let mut h = Harness::start(Harness::fast_retry(DockerEndpoint::Unix(socket)));
    let connected = h
        .wait_for("Connected to Podman", |e| {
            matches!(e, RegistryEvent::Connected { .. })
        })
        .await;
    let RegistryEvent::Connected { engine, .. } = connected else {
        unreachable!("predicate admits only Connected");
    };
    assert!(engine.contains("Podman"), "engine {engine:?}");

    let name = unique("podman");
    let renamed = format!("{name}-renamed");
    let _cleanup = PodmanCleanup(vec![name.clone(), renamed.clone()]);
    // Explicit ulimits: Podman otherwise asks for more open files than this sandboxed CI
    // machine's engine may grant (it lacks CAP_SYS_RESOURCE). Harmless elsewhere.
    let id = run(
        "podman",
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            IMAGE,
            "sleep",
            "3600",
        ],
    )
    .await;
    let info = h.upsert_of(&id, "Upsert of a Podman container").await;
    assert_eq!(info.name, name);
    assert!(
        info.image.contains("joulebridge-test/busybox"),
        "{}",
        info.image
    );
    assert_eq!(info.state, ContainerState::Running);
    assert!(info.pid.is_some());
    assert!(info.cgroup_path.contains(&id), "{}", info.cgroup_path);
    assert!(cpu_accounting_root().join(&info.cgroup_path).is_dir());

    run("podman", &["rename", &name, &renamed]).await;
    let after = h.upsert_of(&id, "Upsert on a Podman rename").await;
    assert_eq!(after.name, renamed);

    run("podman", &["kill", &renamed]).await;
    h.died(&id, "Died on a Podman kill").await;
    run("podman", &["rm", &renamed]).await;
    h.removed(&id, "Removed on a Podman rm").await;
    h.stop().await;
}
