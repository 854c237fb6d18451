//! What Docker metadata costs the agent, with 100 running containers on the real engine.
//!
//! Target (issue #5): with the Docker registry running, the agent's cost per sample stays
//! within 10 % of cgroup-only sampling, because names come from the event stream, not from
//! polling. For scale, the same run asks the engine for stats of the same containers, as
//! `docker stats --no-stream` does, and reports the cost ratio.
//!
//! Measured:
//! - `per_sample_100/cgroup_only` and `per_sample_100/with_docker_metadata`: CPU time of this
//!   whole process (`CLOCK_PROCESS_CPUTIME_ID`, all threads, so the registry's own work in the
//!   background counts) per agent sample: `/proc/stat` plus the agent's `CgroupSampler` over
//!   the 100 containers, tracked at the cgroup paths the registry reported. The registry is
//!   stopped for the first and running (connected, following events) for the second.
//! - `engine_stats_100/stream_false`: wall time of one round of `GET /containers/<id>/stats?
//!   stream=false` for the 100 containers, concurrently (what the CLI does).
//! - A summary on stderr: CPU per sample with and without metadata and their ratio, and one
//!   engine stats round's CPU in dockerd + containerd + shims + this process, and its ratio
//!   to one cgroup-only sample. The process exits non-zero when the 10 % target is missed.
//!
//! Run: `cargo bench -p guest-agent --bench docker_overhead` (root, Docker engine, the test
//! image from `scripts/build-test-images.sh`). `JB_BENCH_CONTAINERS` changes the count.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::query_parameters::StatsOptionsBuilder;
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput};
use futures::StreamExt;
use guest_agent::sources::cgroup::{CgroupMounts, CgroupSampler};
use guest_agent::sources::docker::{DockerConfig, RegistryEvent, run_registry};
use guest_agent::sources::procfs::ProcStatReader;
use protocol::ContainerCounters;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "joulebridge-test/busybox:latest";
const DEFAULT_CONTAINERS: usize = 100;
/// Allowed cost of metadata relative to cgroup-only sampling (issue #5).
const MAX_METADATA_RATIO: f64 = 1.10;
/// Samples per leg of the summary.
const SUMMARY_SAMPLES: u32 = 2_000;
/// Engine stats rounds in the summary.
const STATS_ROUNDS: u32 = 3;
/// Processes that serve `docker stats`: the daemon, containerd and the per-container shims
/// (`comm` is cut at 15 characters, which `containerd-shim` fills exactly).
const ENGINE_PROCESSES: [&str; 3] = ["dockerd", "containerd", "containerd-shim"];

/// CPU time of this process, all threads, in nanoseconds.
fn process_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs * 1_000_000_000 + nanos
}

/// Criterion measurement: process CPU time instead of wall time.
struct ProcessCpu;

impl Measurement for ProcessCpu {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        process_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        process_cpu_ns().saturating_sub(start)
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
        &CpuFormatter
    }
}

/// Formats CPU nanoseconds like criterion formats durations, with a "cpu" suffix.
struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical < 1e3 {
            (1.0, "ns cpu")
        } else if typical < 1e6 {
            (1e-3, "µs cpu")
        } else if typical < 1e9 {
            (1e-6, "ms cpu")
        } else {
            (1e-9, "s cpu")
        };
        for v in values.iter_mut() {
            *v *= factor;
        }
        unit
    }
    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let Throughput::Elements(n) = throughput else {
            return "per iteration";
        };
        #[allow(clippy::cast_precision_loss)]
        let n = *n as f64;
        for v in values.iter_mut() {
            *v = n * 1e9 / *v;
        }
        "containers/cpu-s"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

/// The agent's per-tick work: `/proc/stat` and every tracked container's counters.
struct AgentSampler {
    cgroups: CgroupSampler,
    proc_stat: ProcStatReader,
    out: Vec<ContainerCounters>,
}

impl AgentSampler {
    /// Tracks exactly the given containers, at the cgroup paths the registry reported.
    fn new(paths: &HashMap<String, String>) -> Self {
        let mounts = CgroupMounts::discover(Path::new("/")).expect("cgroup mounts");
        let mut cgroups = CgroupSampler::new(mounts);
        for (id, path) in paths {
            cgroups
                .track(id.clone(), path)
                .expect("the registry's cgroup path is trackable");
        }
        Self {
            cgroups,
            proc_stat: ProcStatReader::open(Path::new("/proc")).expect("/proc/stat"),
            out: Vec::new(),
        }
    }

    fn sample(&mut self) -> usize {
        let vm = self.proc_stat.read().expect("/proc/stat readable");
        let report = self.cgroups.sample(&mut self.out);
        black_box(vm);
        black_box(&report);
        self.out.len()
    }
}

/// utime + stime of the engine's processes, in nanoseconds.
fn engine_cpu_ns() -> u64 {
    let ticks = procfs::ticks_per_second().max(1);
    let mut total = 0u64;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        if !ENGINE_PROCESSES.contains(&comm) {
            continue;
        }
        // Fields after `comm`: state is field 3; utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
        let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
        total += (utime + stime) * 1_000_000_000 / ticks;
    }
    total
}

/// Removes the bench's containers on drop, even after a panic.
struct Containers {
    label: String,
}

impl Drop for Containers {
    fn drop(&mut self) {
        let ids = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label={}", self.label)])
            .output();
        if let Ok(out) = ids {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            for chunk in ids.chunks(50) {
                let _status = std::process::Command::new("docker")
                    .args(["rm", "-f"])
                    .args(chunk)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

async fn start_containers(label: &str, count: usize) -> Vec<String> {
    let tasks = (0..count).map(|n| {
        let label = label.to_owned();
        async move {
            let out = tokio::process::Command::new("docker")
                .args([
                    "run",
                    "-d",
                    "--network",
                    "none",
                    "--label",
                    &label,
                    "--name",
                    &format!("jbb-{}-{n}", std::process::id()),
                    IMAGE,
                    "sleep",
                    "36000",
                ])
                .output()
                .await
                .expect("docker CLI runs");
            assert!(
                out.status.success(),
                "docker run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
    });
    futures::stream::iter(tasks)
        .buffer_unordered(8)
        .collect()
        .await
}

/// A running registry that has reported every container of `ids`.
struct RunningRegistry {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    paths: HashMap<String, String>,
}

async fn start_registry(ids: &[String]) -> RunningRegistry {
    let (tx, mut rx) = mpsc::channel(1024);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(run_registry(
        DockerConfig::default(),
        PathBuf::from("/proc"),
        tx,
        cancel.clone(),
    ));
    let mut paths = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while paths.len() < ids.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(RegistryEvent::Upsert(info))) if ids.contains(&info.id) => {
                paths.insert(info.id.clone(), info.cgroup_path.clone());
            }
            Ok(Some(RegistryEvent::Unavailable { reason })) => {
                panic!("engine unavailable: {reason}")
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!(
                "registry reported {} of {} containers",
                paths.len(),
                ids.len()
            ),
        }
    }
    // Keep draining so the registry never blocks on a full channel during the bench.
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    RunningRegistry {
        cancel,
        task,
        paths,
    }
}

impl RunningRegistry {
    async fn stop(self) {
        self.cancel.cancel();
        let _joined = self.task.await;
    }
}

/// Process CPU per call of `f`, over `n` calls.
fn cpu_per_call(n: u32, mut f: impl FnMut() -> usize) -> f64 {
    let start = process_cpu_ns();
    let mut sink = 0usize;
    for _ in 0..n {
        sink = sink.wrapping_add(black_box(f()));
    }
    black_box(sink);
    #[allow(clippy::cast_precision_loss)]
    let per = (process_cpu_ns().saturating_sub(start)) as f64 / f64::from(n);
    per
}

/// One `docker stats --no-stream`-like round: stream=false for every container, concurrently.
async fn stats_round(docker: &Docker, ids: &[String]) -> usize {
    let calls = ids.iter().map(|id| {
        let options = StatsOptionsBuilder::new().stream(false).build();
        let mut stream = docker.stats(id, Some(options));
        async move { usize::from(matches!(stream.next().await, Some(Ok(_)))) }
    });
    futures::stream::iter(calls)
        .buffer_unordered(ids.len().max(1))
        .fold(0, |acc, ok| async move { acc + ok })
        .await
}

fn main() -> ExitCode {
    let count: usize = std::env::var("JB_BENCH_CONTAINERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CONTAINERS);
    let rt = Runtime::new().expect("tokio runtime");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-images.sh");
    let built = std::process::Command::new(script)
        .status()
        .expect("build-test-images.sh runs");
    assert!(built.success(), "scripts/build-test-images.sh failed");

    let label = format!("jb.bench={}-{}", std::process::id(), rand::random::<u32>());
    let _cleanup = Containers {
        label: label.clone(),
    };
    eprintln!("docker_overhead: starting {count} idle containers…");
    let ids = rt.block_on(start_containers(&label, count));

    // Cgroup paths come from the registry, as in the agent.
    let registry = rt.block_on(start_registry(&ids));
    let mut sampler = AgentSampler::new(&registry.paths);
    rt.block_on(registry.stop());
    assert_eq!(sampler.sample(), ids.len(), "every container is sampled");

    let mut cpu = Criterion::default()
        .with_measurement(ProcessCpu)
        .configure_from_args();
    {
        let mut group = cpu.benchmark_group(format!("per_sample_{count}"));
        group.throughput(Throughput::Elements(u64::try_from(count).unwrap_or(0)));
        group.bench_function("cgroup_only", |b| b.iter(|| sampler.sample()));
        let registry = rt.block_on(start_registry(&ids));
        group.bench_function("with_docker_metadata", |b| {
            b.iter(|| sampler.sample());
        });
        rt.block_on(registry.stop());
        group.finish();
    }

    let docker = rt.block_on(async {
        Docker::connect_with_socket_defaults()
            .expect("docker socket")
            .negotiate_version()
            .await
            .expect("api version")
    });
    let mut wall = Criterion::default().configure_from_args().sample_size(10);
    {
        let mut group = wall.benchmark_group(format!("engine_stats_{count}"));
        group.throughput(Throughput::Elements(u64::try_from(count).unwrap_or(0)));
        group.bench_function("stream_false", |b| {
            b.iter(|| rt.block_on(stats_round(&docker, &ids)));
        });
        group.finish();
    }

    // Summary in one run: off, on, off again (drift check), then the engine.
    let off_a = cpu_per_call(SUMMARY_SAMPLES, || sampler.sample());
    let registry = rt.block_on(start_registry(&ids));
    let on = cpu_per_call(SUMMARY_SAMPLES, || sampler.sample());
    rt.block_on(registry.stop());
    let off_b = cpu_per_call(SUMMARY_SAMPLES, || sampler.sample());
    let off = f64::midpoint(off_a, off_b);
    let ratio = on / off;

    let engine_before = engine_cpu_ns();
    let own_before = process_cpu_ns();
    let wall_start = Instant::now();
    let mut answered = 0;
    for _ in 0..STATS_ROUNDS {
        answered += rt.block_on(stats_round(&docker, &ids));
    }
    let wall_per_round = wall_start.elapsed() / STATS_ROUNDS;
    #[allow(clippy::cast_precision_loss)]
    let engine_per_round =
        (engine_cpu_ns().saturating_sub(engine_before)) as f64 / f64::from(STATS_ROUNDS);
    #[allow(clippy::cast_precision_loss)]
    let own_per_round =
        (process_cpu_ns().saturating_sub(own_before)) as f64 / f64::from(STATS_ROUNDS);
    let stats_cost = engine_per_round + own_per_round;

    eprintln!(
        "docker_overhead summary ({count} containers, cgroup mode {:?}, the agent's CgroupSampler):",
        sampler.cgroups.mode()
    );
    eprintln!(
        "  agent CPU per sample, cgroup-only:     {:>10.1} µs  (runs: {:.1} / {:.1})",
        off / 1e3,
        off_a / 1e3,
        off_b / 1e3
    );
    eprintln!(
        "  agent CPU per sample, with metadata:   {:>10.1} µs",
        on / 1e3
    );
    eprintln!(
        "  ratio with/without metadata:           {ratio:>10.3}  (target <= {MAX_METADATA_RATIO})"
    );
    eprintln!(
        "  engine stats round (stream=false):     {:>10.1} ms wall, {:.1} ms CPU in dockerd+containerd+shims, {:.1} ms CPU in the client; {answered} of {} answers",
        wall_per_round.as_secs_f64() * 1e3,
        engine_per_round / 1e6,
        own_per_round / 1e6,
        ids.len() * usize::try_from(STATS_ROUNDS).unwrap_or(0)
    );
    eprintln!(
        "  engine stats CPU / cgroup-only sample: {:>10.0}x",
        stats_cost / off
    );
    cpu.final_summary();
    wall.final_summary();
    if ratio <= MAX_METADATA_RATIO {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "docker_overhead: metadata costs more than {MAX_METADATA_RATIO}x cgroup-only sampling"
        );
        ExitCode::FAILURE
    }
}
