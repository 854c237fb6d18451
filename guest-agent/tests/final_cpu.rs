//! The final CPU time of a container whose cgroup is removed between two samples (issue 13,
//! item 4), on real cgroups: no engine, no race, the sampler never sees the cgroup's last
//! value and must complete it from the parent.
//!
//! Each run: a test parent cgroup holds a "container" that burns 3 s of CPU and a live sibling
//! that keeps burning (the load). The sampler runs at the default 1 s period. When the
//! container's usage passes 3 s (at whatever point of the period that falls), its process is
//! killed and reaped, the cgroup's own total is read and the cgroup removed, all before the
//! next sample. That sample must send the container once more with a final usage within 1 %
//! of the cgroup's total, 20 runs in a row.
//!
//! ```sh
//! sudo cargo test -p guest-agent --test integration final_cpu -- --include-ignored --nocapture
//! ```

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use guest_agent::sources::cgroup::{CgroupMounts, CgroupSampler, Completion};
use protocol::CpuMicros;

/// The agent's default sampling period.
const PERIOD: Duration = Duration::from_secs(1);
/// CPU time the departing container burns.
const BURN: CpuMicros = CpuMicros(3_000_000);
/// Runs in a row that must all pass: the issue's 20 in the release tier of `scripts/test.sh`,
/// 3 in the debug tier (the same code path; 20 runs take about 5 min per test, and the full
/// tier runs both profiles).
const RUNS: usize = if cfg!(debug_assertions) { 3 } else { 20 };
/// Largest accepted relative error of the final usage.
const TOLERANCE: f64 = 0.01;
/// A run that has not burnt its CPU by then is stuck.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// A real cgroup made by this test; its processes are killed and it is removed on drop.
struct TestCgroup {
    dir: PathBuf,
    child: Option<Child>,
}

impl TestCgroup {
    fn create(dir: PathBuf) -> Self {
        if fs::remove_dir(&dir).is_ok() {
            eprintln!("removed a leftover test cgroup {}", dir.display());
        }
        if let Err(err) = fs::create_dir(&dir) {
            testkit::missing(format_args!(
                "a writable cgroup hierarchy (cannot create {}: {err})",
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

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _already_gone = child.kill();
            child.wait().unwrap();
        }
    }

    fn remove(&mut self) {
        self.stop();
        fs::remove_dir(&self.dir).unwrap();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.stop();
        if self.dir.is_dir()
            && let Err(err) = fs::remove_dir(&self.dir)
        {
            eprintln!("could not remove test cgroup {}: {err}", self.dir.display());
        }
    }
}

/// Cumulative usage of a cgroup straight from the kernel, µs.
fn usage(dir: &Path) -> CpuMicros {
    if let Ok(ns) = fs::read_to_string(dir.join("cpuacct.usage")) {
        return CpuMicros(ns.trim().parse::<u64>().unwrap() / 1_000);
    }
    let stat = fs::read_to_string(dir.join("cpu.stat")).unwrap();
    let usec = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .unwrap();
    CpuMicros(usec.trim().parse().unwrap())
}

#[derive(Debug)]
struct Run {
    truth: CpuMicros,
    last_regular: CpuMicros,
    sent: CpuMicros,
    completion: Completion,
}

/// One run under `parent` (relative to `mount`): see the module docs. The sleeps pace a
/// synchronous sampler the way the pipeline's 1 s interval does; nothing waits on them.
#[allow(clippy::disallowed_methods)]
fn one_run(sampler: &mut CgroupSampler, mount: &Path, parent: &str, run: usize) -> Run {
    let id = format!("departing-{run}");
    let rel = format!("{parent}/{id}");
    let mut cgroup = TestCgroup::create(mount.join(&rel));
    sampler.track(id.clone(), &rel).unwrap();
    let mut out = Vec::new();
    sampler.sample(&mut out);
    cgroup.spawn_busy();

    let start = Instant::now();
    let mut next_tick = Instant::now() + PERIOD;
    let mut last_regular = CpuMicros(0);
    let truth = loop {
        assert!(
            start.elapsed() < RUN_DEADLINE,
            "run {run}: {BURN} µs not burnt in {RUN_DEADLINE:?}"
        );
        if Instant::now() >= next_tick {
            let report = sampler.sample(&mut out);
            assert!(report.departed.is_empty(), "run {run}: {report:?}");
            last_regular = out.iter().find(|c| c.id == id).unwrap().cpu.usage;
            next_tick += PERIOD;
        }
        if usage(&cgroup.dir) >= BURN {
            cgroup.stop();
            let truth = usage(&cgroup.dir);
            cgroup.remove();
            break truth;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    std::thread::sleep(next_tick.saturating_duration_since(Instant::now()));

    let report = sampler.sample(&mut out);
    assert_eq!(report.vanished, vec![id.clone()], "run {run}");
    let departure = report
        .departed
        .iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("run {run}: no departure in {report:?}"));
    let (completed, completion) = departure
        .completed
        .unwrap_or_else(|| panic!("run {run}: final CPU not completed: {departure:?}"));
    let sent = out
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("run {run}: final counters not sent"))
        .cpu
        .usage;
    assert_eq!(sent, completed, "run {run}");
    assert!(sampler.tracked().all(|(t, _)| t != id), "run {run}");
    sampler.sample(&mut out);
    assert!(
        out.iter().all(|c| c.id != id),
        "run {run}: the final counters are sent once"
    );
    Run {
        truth,
        last_regular,
        sent,
        completion,
    }
}

fn final_cpu_within_one_percent(mount: &Path) {
    let parent = format!("joulebridge-final-{}", std::process::id());
    let parent_dir = TestCgroup::create(mount.join(&parent));
    let mut load = TestCgroup::create(parent_dir.dir.join("live-sibling"));
    let mounts = CgroupMounts::discover(Path::new("/")).unwrap();
    let mut sampler = CgroupSampler::new(mounts);
    sampler
        .track("live".to_owned(), &format!("{parent}/live-sibling"))
        .unwrap();
    load.spawn_busy();

    let mut worst = 0.0_f64;
    for run in 0..RUNS {
        let r = one_run(&mut sampler, mount, &parent, run);
        #[allow(clippy::cast_precision_loss)]
        let error = (r.sent.0 as f64 - r.truth.0 as f64).abs() / r.truth.0 as f64;
        #[allow(clippy::cast_precision_loss)]
        let without = (r.truth.0 - r.last_regular.0) as f64 / r.truth.0 as f64;
        eprintln!(
            "run {run:2}: cgroup total {} µs, sent {} µs ({:+.4} %), last regular sample {} µs \
             (would have lost {:.2} %), {:?}",
            r.truth.0,
            r.sent.0,
            (r.sent.0 as f64 - r.truth.0 as f64) / r.truth.0 as f64 * 100.0,
            r.last_regular.0,
            without * 100.0,
            r.completion
        );
        assert_eq!(r.completion, Completion::Exact, "run {run}");
        assert!(
            error <= TOLERANCE,
            "run {run}: sent {} µs vs cgroup total {} µs: {:.3} % apart",
            r.sent.0,
            r.truth.0,
            error * 100.0
        );
        worst = worst.max(error);
    }
    eprintln!(
        "{RUNS} runs in a row within {:.4} % (tolerance {} %)",
        worst * 100.0,
        TOLERANCE * 100.0
    );
    drop(load);
}

fn real_mounts() -> CgroupMounts {
    testkit::require_root("creating cgroups");
    CgroupMounts::discover(Path::new("/"))
        .unwrap_or_else(|err| testkit::missing(format_args!("a readable mount table ({err})")))
}

#[test]
#[ignore = "needs root and a writable cgroup v1 cpuacct hierarchy"]
fn final_cpu_of_a_removed_v1_cgroup_is_completed_from_its_parent() {
    let mounts = real_mounts();
    let cpuacct = mounts
        .v1
        .cpuacct
        .unwrap_or_else(|| testkit::missing("a cgroup v1 cpuacct hierarchy"));
    final_cpu_within_one_percent(&cpuacct);
}

#[test]
#[ignore = "needs root and a writable cgroup2 hierarchy"]
fn final_cpu_of_a_removed_v2_cgroup_is_completed_from_its_parent() {
    let mounts = real_mounts();
    let v2 = mounts
        .v2
        .unwrap_or_else(|| testkit::missing("a cgroup2 hierarchy"));
    final_cpu_within_one_percent(&v2);
}

/// Two containers of one parent leave in the same period: their combined final CPU is exact,
/// and split by their last-period rates (flagged `Split`), so each is close when they ran
/// alike, and nothing is invented or lost.
#[test]
#[ignore = "needs root and a writable cgroup v1 cpuacct hierarchy"]
#[allow(clippy::disallowed_methods)] // paces the synchronous sampler like the 1 s interval
fn two_departures_in_one_period_share_the_remainder_exactly() {
    let mounts = real_mounts();
    let mount = mounts
        .v1
        .cpuacct
        .clone()
        .or_else(|| mounts.v2.clone())
        .unwrap_or_else(|| testkit::missing("a cgroup hierarchy with CPU accounting"));
    let parent = format!("joulebridge-split-{}", std::process::id());
    let parent_dir = TestCgroup::create(mount.join(&parent));
    let mut sampler = CgroupSampler::new(mounts);
    let mut cgroups: Vec<TestCgroup> = ["a", "b"]
        .iter()
        .map(|id| {
            let cgroup = TestCgroup::create(parent_dir.dir.join(id));
            sampler
                .track((*id).to_owned(), &format!("{parent}/{id}"))
                .unwrap();
            cgroup
        })
        .collect();
    let mut out = Vec::new();
    sampler.sample(&mut out);
    for cgroup in &mut cgroups {
        cgroup.spawn_busy();
    }
    for _ in 0..2 {
        std::thread::sleep(PERIOD);
        assert!(sampler.sample(&mut out).departed.is_empty());
    }
    std::thread::sleep(PERIOD / 2);
    let mut truth = Vec::new();
    for cgroup in &mut cgroups {
        cgroup.stop();
        truth.push(usage(&cgroup.dir).0);
        cgroup.remove();
    }
    std::thread::sleep(PERIOD / 2);
    let report = sampler.sample(&mut out);
    let sent: Vec<u64> = ["a", "b"]
        .iter()
        .map(|id| out.iter().find(|c| c.id == *id).unwrap().cpu.usage.0)
        .collect();
    eprintln!(
        "truth {truth:?} µs, sent {sent:?} µs, {:?}",
        report.departed
    );
    assert_eq!(report.departed.len(), 2, "{report:?}");
    assert!(
        report
            .departed
            .iter()
            .all(|d| matches!(d.completed, Some((_, Completion::Split { among: 2 }))))
    );
    let total_truth: u64 = truth.iter().sum();
    let total_sent: u64 = sent.iter().sum();
    #[allow(clippy::cast_precision_loss)]
    let total_error = (total_sent as f64 - total_truth as f64).abs() / total_truth as f64;
    assert!(
        total_error <= 0.001,
        "together: sent {total_sent} µs vs {total_truth} µs"
    );
    for (s, t) in sent.iter().zip(&truth) {
        #[allow(clippy::cast_precision_loss)]
        let error = (*s as f64 - *t as f64).abs() / *t as f64;
        assert!(
            error <= 0.10,
            "each within 10 % when they ran alike: {s} vs {t}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The same through Docker and the agent's own pipeline: registry events, the Died pass, the
// 1 s interval and the sample that finds the cgroup gone.

mod docker {
    use std::num::NonZeroU32;
    use std::path::{Path, PathBuf};
    use std::process::Stdio;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use guest_agent::pipeline::{Pipeline, PipelineStats, Sampling};
    use guest_agent::sinks::ContainerTable;
    use guest_agent::sources::cgroup::CgroupMounts;
    use guest_agent::sources::docker::{DockerConfig, run_registry};
    use protocol::Sample;
    use tokio::sync::{mpsc, watch};
    use tokio_util::sync::CancellationToken;

    use super::{BURN, PERIOD, RUNS, TOLERANCE};

    const IMAGE: &str = "joulebridge-test/busybox:latest";
    /// Longest one run may take (3 s of CPU on a loaded 2-core machine, plus the engine).
    const RUN_DEADLINE: Duration = Duration::from_secs(120);

    async fn docker(args: &[&str]) -> Result<String, String> {
        let out = tokio::process::Command::new("docker")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot run docker: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// Removes the test's containers and parent cgroups, even after a panic.
    #[derive(Default)]
    struct Cleanup {
        containers: Vec<String>,
        parents: Vec<String>,
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
            for rel in &self.parents {
                for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                    if let Ok(entries) = std::fs::read_dir(root) {
                        for entry in entries.flatten() {
                            let _gone = std::fs::remove_dir(entry.path().join(rel));
                        }
                    }
                    let _gone = std::fs::remove_dir(Path::new(root).join(rel));
                }
            }
        }
    }

    /// The hierarchy the sampler reads a cgroup's CPU time from: v2 where the cgroup has
    /// `cpu.stat` there, else v1 `cpuacct`.
    fn cpu_dir(mounts: &CgroupMounts, rel: &str) -> Option<PathBuf> {
        if let Some(v2) = &mounts.v2 {
            let dir = v2.join(rel);
            if dir.join("cpu.stat").exists() {
                return Some(dir);
            }
        }
        let dir = mounts.v1.cpuacct.as_ref()?.join(rel);
        dir.join("cpuacct.usage").exists().then_some(dir)
    }

    /// The container's usage in the last sample that had it, and whether it has been absent
    /// from the samples since.
    #[derive(Debug, Default)]
    struct Seen {
        last: Option<u64>,
        absent_since: usize,
    }

    fn observe(seen: &mut Seen, sample: &Sample, id: &str) {
        match sample.containers.iter().find(|c| c.id == id) {
            Some(c) => {
                assert_eq!(seen.absent_since, 0, "sent again after leaving: {sample:?}");
                seen.last = Some(c.cpu.usage.0);
            }
            None if seen.last.is_some() => seen.absent_since += 1,
            None => {}
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs root, the Docker engine and the test image (scripts/setup-test-env.sh)"]
    async fn docker_container_final_cpu_is_recorded_within_one_percent() {
        testkit::require_root("reading the containers' parent cgroups");
        testkit::require_docker_image(IMAGE);
        let systemd = docker(&["info", "--format", "{{.CgroupDriver}}"])
            .await
            .is_ok_and(|d| d == "systemd");
        let mounts = CgroupMounts::discover(Path::new("/")).expect("cgroup mounts");
        let tag = format!("{}{}", std::process::id(), rand::random::<u16>());
        let mut cleanup = Cleanup::default();

        // Load: a container burning one CPU for the whole test.
        let load = format!("jbt-final-load-{tag}");
        cleanup.containers.push(load.clone());
        docker(&[
            "run",
            "-d",
            "--name",
            &load,
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            "while :; do :; done",
        ])
        .await
        .expect("load container starts");

        let cancel = CancellationToken::new();
        let (registry_tx, registry_rx) = mpsc::channel(256);
        let registry = tokio::spawn(run_registry(
            DockerConfig::default(),
            PathBuf::from("/proc"),
            registry_tx,
            cancel.clone(),
        ));
        let slow_every = NonZeroU32::new(10).expect("non-zero");
        let sampling = tokio::task::spawn_blocking(move || {
            Sampling::open(
                Path::new("/"),
                Path::new("/proc"),
                false,
                &[],
                PERIOD,
                slow_every,
            )
        })
        .await
        .expect("setup task")
        .expect("sampling opens");
        let (samples_tx, mut samples) = mpsc::channel(64);
        let (table_tx, _table_rx) = watch::channel(ContainerTable::new());
        let pipeline = tokio::spawn(
            Pipeline {
                sampling,
                period: PERIOD,
                samples: samples_tx,
                table: table_tx,
                registry: Some(registry_rx),
                stats: Arc::new(PipelineStats::default()),
            }
            .run(cancel.clone()),
        );

        let mut worst = 0.0_f64;
        for run in 0..RUNS {
            let parent = format!("jbfinal{tag}x{run}");
            let (parent_arg, parent_rel) = if systemd {
                (format!("{parent}.slice"), format!("{parent}.slice"))
            } else {
                (format!("/{parent}"), parent.clone())
            };
            cleanup.parents.push(parent_rel.clone());
            let name = format!("jbt-final-{tag}-{run}");
            cleanup.containers.push(name.clone());
            let id = docker(&[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                "none",
                "--cgroup-parent",
                &parent_arg,
                IMAGE,
                "sh",
                "-c",
                "while :; do :; done",
            ])
            .await
            .expect("container starts");

            // Burn: wait for the container to show up, then until its cgroup has used BURN.
            let start = Instant::now();
            let mut seen = Seen::default();
            let mut parent_dir = None;
            loop {
                assert!(start.elapsed() < RUN_DEADLINE, "run {run}: no burn in time");
                if let Ok(Some(sample)) =
                    tokio::time::timeout(Duration::from_millis(20), samples.recv()).await
                {
                    observe(&mut seen, &sample, &id);
                }
                let Some(last) = seen.last else { continue };
                let dir = parent_dir.get_or_insert_with(|| {
                    let rel = format!("{parent_rel}/{id}");
                    let rel = if systemd {
                        format!("{parent_rel}/docker-{id}.scope")
                    } else {
                        rel
                    };
                    cpu_dir(&mounts, &rel)
                        .and_then(|d| d.parent().map(Path::to_path_buf))
                        .expect("container cgroup found")
                });
                let usage = super::usage(dir).0;
                if usage >= BURN.0 && last > 0 {
                    break;
                }
            }
            docker(&["kill", &name]).await.expect("kill");
            // The pipeline sends the final counters once, then never again.
            while seen.absent_since < 2 {
                assert!(start.elapsed() < RUN_DEADLINE, "run {run}: no final sample");
                let sample = samples.recv().await.expect("pipeline running");
                observe(&mut seen, &sample, &id);
            }
            docker(&["rm", "-f", &name]).await.expect("rm");
            let parent_dir = parent_dir.expect("parent known");
            let truth = super::usage(&parent_dir).0;
            let sent = seen.last.expect("seen");
            #[allow(clippy::cast_precision_loss)]
            let error = (sent as f64 - truth as f64).abs() / truth as f64;
            eprintln!(
                "run {run:2}: parent total {truth} µs, last sent {sent} µs ({:+.4} %)",
                (sent as f64 - truth as f64) / truth as f64 * 100.0
            );
            assert!(
                error <= TOLERANCE,
                "run {run}: sent {sent} µs vs cgroup total {truth} µs: {:.3} % apart",
                error * 100.0
            );
            worst = worst.max(error);
        }
        eprintln!(
            "{RUNS} Docker runs in a row within {:.4} % (tolerance {} %)",
            worst * 100.0,
            TOLERANCE * 100.0
        );
        cancel.cancel();
        pipeline.await.expect("pipeline task").expect("pipeline ok");
        registry.await.expect("registry task");
    }
}
