//! Shared fixtures of the real-kernel tests: cgroups created on the test machine, child
//! processes moved into them, the bridge's recording read back, an agent run in-process.
//!
//! Cgroups go where the machine accounts CPU: a v1 `cpuacct` hierarchy (separate or
//! co-mounted with `cpu`; also created under a separate `cpu` mount so the process sits in
//! both), else the cgroup2 root. Every cgroup is removed by [`TestCgroup`]'s `Drop`, which
//! also runs when a test panics: children are killed, leftovers moved to the root, directories
//! removed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use host_bridge::journal::{RecordEntry, RecordingReader};
use protocol::{Message, Sample};

/// Where CPU accounting lives on this machine.
#[derive(Debug, Clone)]
pub struct Accounting {
    /// Hierarchy roots the test cgroup is created in (the first one is read).
    roots: Vec<PathBuf>,
    /// `cpuacct.usage` (ns) or cgroup2 `cpu.stat` (`usage_usec`).
    v2: bool,
}

impl Accounting {
    /// Find it, or fail the test naming what is missing (no cgroup CPU accounting, or not root).
    pub fn find() -> Self {
        let base = Path::new("/sys/fs/cgroup");
        let separate = base.join("cpuacct");
        let combined = base.join("cpu,cpuacct");
        let cpu = base.join("cpu");
        let found = if separate.join("cpuacct.usage").exists() {
            let mut roots = vec![separate];
            if cpu.join("cpu.shares").exists() && !is_same_dir(&cpu, &roots[0]) {
                roots.push(cpu);
            }
            Some(Self { roots, v2: false })
        } else if combined.join("cpuacct.usage").exists() {
            Some(Self {
                roots: vec![combined],
                v2: false,
            })
        } else if base.join("cgroup.controllers").exists() {
            Some(Self {
                roots: vec![base.to_path_buf()],
                v2: true,
            })
        } else {
            None
        };
        let Some(found) = found else {
            testkit::missing("cgroup CPU accounting under /sys/fs/cgroup");
        };
        testkit::require_root("creating cgroups");
        found
    }
}

fn is_same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A cgroup created for one test, with the children moved into it.
#[derive(Debug)]
pub struct TestCgroup {
    /// Path relative to the hierarchy root (what `--cgroup` takes and the sample id).
    pub rel: String,
    accounting: Accounting,
    children: Vec<Child>,
}

impl TestCgroup {
    /// Create `jb-test-<pid>-<name>` in every accounting root.
    pub fn create(accounting: &Accounting, name: &str) -> Self {
        let rel = format!("jb-test-{}-{name}", std::process::id());
        let cg = Self {
            rel,
            accounting: accounting.clone(),
            children: Vec::new(),
        };
        for root in &cg.accounting.roots {
            let dir = root.join(&cg.rel);
            if dir.exists() {
                // Left over by a crashed earlier run of the same pid: start clean.
                evacuate(root, &dir);
                let _removed = std::fs::remove_dir(&dir);
            }
            std::fs::create_dir(&dir)
                .unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", dir.display()));
        }
        cg
    }

    /// Start `sh -c <script>` inside this cgroup; the shell moves itself in, then execs.
    pub async fn spawn(&mut self, script: &str) -> u32 {
        let procs: Vec<String> = self
            .accounting
            .roots
            .iter()
            .map(|r| r.join(&self.rel).join("cgroup.procs").display().to_string())
            .collect();
        let mut moves = String::new();
        for p in &procs {
            moves.push_str(&format!("echo $$ > {p} || exit 97; "));
        }
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("{moves}exec {script}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("cannot spawn sh");
        let pid = child.id();
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pids().contains(&pid) {
            assert!(
                Instant::now() < deadline,
                "child {pid} never appeared in {}",
                procs[0]
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pid
    }

    /// A child spinning on one CPU.
    pub async fn spawn_burner(&mut self) -> u32 {
        self.spawn("sh -c 'while :; do :; done'").await
    }

    /// A child sleeping.
    pub async fn spawn_idle(&mut self) -> u32 {
        self.spawn("sleep 3600").await
    }

    /// Kill every child and wait for it (its CPU time is final afterwards).
    pub fn kill_children(&mut self) {
        for child in &mut self.children {
            let _killed = child.kill();
            let _reaped = child.wait();
        }
        self.children.clear();
    }

    fn pids(&self) -> Vec<u32> {
        let procs = self.accounting.roots[0]
            .join(&self.rel)
            .join("cgroup.procs");
        std::fs::read_to_string(procs)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Cumulative CPU time of the cgroup in µs, read from the kernel's file directly.
    pub fn usage_us(&self) -> u64 {
        let dir = self.accounting.roots[0].join(&self.rel);
        if self.accounting.v2 {
            let text = std::fs::read_to_string(dir.join("cpu.stat")).expect("read cpu.stat");
            text.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
                .expect("usage_usec in cpu.stat")
        } else {
            let text =
                std::fs::read_to_string(dir.join("cpuacct.usage")).expect("read cpuacct.usage");
            text.trim()
                .parse::<u64>()
                .expect("cpuacct.usage is a number")
                / 1_000
        }
    }
}

impl Drop for TestCgroup {
    // Drop cannot await; the retry sleeps are short and only happen at the end of a test.
    #[allow(clippy::disallowed_methods)]
    fn drop(&mut self) {
        self.kill_children();
        for root in &self.accounting.roots {
            let dir = root.join(&self.rel);
            evacuate(root, &dir);
            for _ in 0..50 {
                if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Move every process left in `dir` to the hierarchy root.
fn evacuate(root: &Path, dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in text.lines() {
        let _moved = std::fs::write(root.join("cgroup.procs"), pid);
    }
}

/// Send a signal to a child process.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits in i32"));
    nix::sys::signal::kill(pid, sig).expect("kill(2)");
}

/// Wait until `/proc/<pid>/stat` says the process is stopped (SIGSTOP delivered).
pub async fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if state == Some("T") {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} did not stop");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The samples in a recording, in file order, with the Session index they belong to.
#[derive(Debug, Default)]
pub struct Recorded {
    /// (session number starting at 1, sample).
    pub samples: Vec<(usize, Sample)>,
    /// Sessions seen.
    pub sessions: usize,
    /// Hellos seen.
    pub hellos: usize,
}

impl Recorded {
    /// Read the recording at `path` (a torn tail of a live writer is ignored).
    pub fn read(path: &Path) -> Self {
        let Ok(read) = RecordingReader::read_all(path) else {
            return Self::default();
        };
        let mut out = Self::default();
        for entry in read.entries {
            match entry {
                RecordEntry::Session(_) => out.sessions += 1,
                RecordEntry::Guest { message, .. } => match message {
                    Message::Sample(s) => out.samples.push((out.sessions, s)),
                    Message::Hello(_) => out.hellos += 1,
                    _ => {}
                },
                _ => {}
            }
        }
        out
    }

    /// Cumulative usage (µs) of cgroup `id` per sample that has it: (seq, mono ns, usage).
    pub fn usage_of(&self, id: &str) -> Vec<(u64, u64, u64)> {
        self.samples
            .iter()
            .filter_map(|(_, s)| {
                s.containers
                    .iter()
                    .find(|c| c.id == id)
                    .map(|c| (s.seq, s.clock.mono_ns.0, c.cpu.usage.0))
            })
            .collect()
    }
}

/// Poll the recording until `ready` holds (or panic after `timeout`).
pub async fn wait_recorded(
    path: &Path,
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut(&Recorded) -> bool,
) -> Recorded {
    let deadline = Instant::now() + timeout;
    loop {
        let rec = Recorded::read(path);
        if ready(&rec) {
            return rec;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the recording to show {what}; it has {} samples in {} sessions",
            rec.samples.len(),
            rec.sessions
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Monotonic clock now, in ns, read the way the agent stamps its samples.
pub fn mono_ns() -> u64 {
    guest_agent::clock::mono_now().0
}

/// Guest agent configuration sampling exactly `cgroups` every `period_ms` and dialing `connect`.
pub fn agent_config(
    connect: &str,
    cgroups: &[&str],
    period_ms: u64,
) -> guest_agent::config::Config {
    agent_config_with(connect, cgroups, period_ms, &["--no-docker"])
}

/// As [`agent_config`], with extra flags (and Docker on unless they say `--no-docker`).
pub fn agent_config_with(
    connect: &str,
    cgroups: &[&str],
    period_ms: u64,
    extra: &[&str],
) -> guest_agent::config::Config {
    use clap::Parser as _;
    let mut args = vec![
        "guest-agent".to_string(),
        "--connect".into(),
        connect.into(),
        "--no-discover".into(),
        "--sample-period-ms".into(),
        period_ms.to_string(),
        "--vm-name".into(),
        "test-vm".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_string()));
    for cg in cgroups {
        args.push("--cgroup".into());
        args.push((*cg).to_string());
    }
    let cli = guest_agent::cli::Cli::try_parse_from(args).expect("agent flags parse");
    let mut config = guest_agent::config::Config::try_from(cli).expect("agent config is valid");
    // Reconnect quickly in tests.
    config.stream.backoff_min = Duration::from_millis(50);
    config.stream.backoff_max = Duration::from_millis(400);
    config
}

/// Sum of reset-aware deltas of consecutive readings (what a consumer of the recording adds
/// up), plus the first reading (CPU time before the first sample).
pub fn total_from_deltas(usages: &[(u64, u64, u64)]) -> u64 {
    let mut total = usages.first().map_or(0, |u| u.2);
    for pair in usages.windows(2) {
        let (prev, now) = (pair[0].2, pair[1].2);
        total += now.checked_sub(prev).unwrap_or(now);
    }
    total
}
