//! The `powermetrics` child process: arguments, supervision, restarts, the root diagnosis.
//!
//! The child is spawned with `tokio::process` (`kill_on_drop`), stdout is read as a stream of
//! NUL-separated plist documents ([`DocStream`]), stderr is drained concurrently by its own task
//! so a chatty child never blocks on a full pipe (its last lines become the exit reason). Each
//! document is stamped with the bridge clock when the read that completes it returns.
//!
//! When the child dies it is restarted with capped exponential back-off, and the missing time is
//! recorded as a [`PowerEvent::Gap`] from the end of the last window to the start of the first
//! window after the restart. It gives up after [`PowermetricsConfig::max_failures`] consecutive
//! runs without a sample. A permission failure is not retried: the error says what to do.
//!
//! Nothing here is macOS-only except finding the OS release (`sw_vers`): the program and the
//! child's `PATH` are configurable, so tests run a stand-in `powermetrics` on Linux.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use protocol::MonoNanos;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::DocStream;
use super::child::{drain_stderr, stop_child, wait_child};
use crate::sources::power::{MonoClock, OutputClosed, PowerEvent, PowerOutputs, VmSelector};

/// The executable looked up on `PATH` by default.
pub const DEFAULT_PROGRAM: &str = "powermetrics";
/// Where macOS installs it; the sudoers rule names this path.
pub const MACOS_PROGRAM_PATH: &str = "/usr/bin/powermetrics";
/// Default sampling interval. GMT advises no lower than ~200 ms: powermetrics itself costs
/// 200–330 ms of CPU per second at 130 ms (docs/powermetrics.md §6).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Release assumed when it cannot be detected (not on macOS, or `sw_vers` failed): the current
/// flag set.
pub const ASSUMED_MACOS_MAJOR: u32 = 15;
/// First restart delay; doubles per consecutive failure up to [`MAX_RESTART_BACKOFF`].
pub const RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// Restart delay cap.
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(60);
/// Consecutive child runs without a sample before giving up.
pub const MAX_FAILURES: u32 = 10;
/// stdout bytes kept from the start of each run, to diagnose a child that printed text.
const STDOUT_HEAD_BYTES: usize = 4096;
/// Read buffer; documents are 7–480 KB.
const READ_CHUNK: usize = 64 * 1024;

/// How the child gets root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Privilege {
    /// Run the program directly (the bridge runs as root).
    Direct,
    /// Run it through `sudo -n` (the sudoers rule from `scripts/` is installed).
    Sudo,
    /// Direct first; on a permission failure, `sudo -n` once.
    Auto,
}

/// Configuration of the live powermetrics source.
#[derive(Clone, Debug)]
pub struct PowermetricsConfig {
    /// Program name or path (default [`DEFAULT_PROGRAM`]).
    pub program: PathBuf,
    /// `PATH` for the child and for finding `program` (`None`: the bridge's own).
    pub search_path: Option<OsString>,
    /// Sampling interval.
    pub interval: Duration,
    /// macOS major release for the flag set (`None`: detect; [`ASSUMED_MACOS_MAJOR`] if that
    /// fails).
    pub macos_major: Option<u32>,
    /// How to get root.
    pub privilege: Privilege,
    /// Which task is the VM.
    pub vm: VmSelector,
    /// First restart delay.
    pub restart_backoff: Duration,
    /// Restart delay cap.
    pub max_restart_backoff: Duration,
    /// Consecutive runs without a sample before giving up.
    pub max_failures: u32,
}

impl Default for PowermetricsConfig {
    fn default() -> Self {
        Self {
            program: PathBuf::from(DEFAULT_PROGRAM),
            search_path: None,
            interval: DEFAULT_INTERVAL,
            macos_major: None,
            privilege: Privilege::Auto,
            vm: VmSelector::macos_default(),
            restart_backoff: RESTART_BACKOFF,
            max_restart_backoff: MAX_RESTART_BACKOFF,
            max_failures: MAX_FAILURES,
        }
    }
}

/// What to tell a user whose powermetrics is not running as root.
pub const ROOT_HINT: &str = "powermetrics must run as root: start the bridge with sudo, or \
     install the sudoers rule with `sudo scripts/install-powermetrics-sudoers.sh --interval-ms \
     <the bridge's interval>` so the unprivileged bridge can run `sudo -n /usr/bin/powermetrics`";

/// Failure of the powermetrics source.
#[derive(Debug, thiserror::Error)]
pub enum PowermetricsError {
    /// The program could not be started.
    #[error("failed to start {program:?}")]
    Spawn {
        /// What was run.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not root, and `sudo -n` (if tried) was refused.
    #[error("{ROOT_HINT} (powermetrics said: {detail})")]
    NotRoot {
        /// What the child printed.
        detail: String,
    },
    /// Reading the child's output failed.
    #[error("failed to read powermetrics output")]
    Read(#[source] std::io::Error),
    /// The child printed text-format output.
    #[error("powermetrics printed text output; it must be run with `--format plist`")]
    TextFormat,
    /// Too many consecutive runs without a sample.
    #[error("powermetrics failed {failures} times in a row without a sample; last: {last}")]
    GaveUp {
        /// Consecutive failures.
        failures: u32,
        /// The last exit reason.
        last: String,
    },
}

/// The argument list for one macOS release, long option names only.
///
/// Flags per release (docs/powermetrics.md §1): the interval is `--sample-interval` up to
/// macOS 11 and `--sample-rate` from 12; the `ane_power` sampler exists from macOS 13 (before
/// that the ANE is reported by `cpu_power`). `--show-process-energy` adds `energy_impact` and
/// `--show-process-coalition` groups tasks by coalition (Docker Desktop's VM is found by its
/// coalition). `--buffer-size 0` unbuffers stdout so each document arrives when sampled.
#[must_use]
pub fn powermetrics_args(macos_major: u32, interval: Duration, ane_sampler: bool) -> Vec<String> {
    let mut samplers = vec!["cpu_power", "gpu_power"];
    if ane_sampler && macos_major >= 13 {
        samplers.push("ane_power");
    }
    samplers.push("tasks");
    let interval_flag = if macos_major >= 12 {
        "--sample-rate"
    } else {
        "--sample-interval"
    };
    let interval_ms = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    vec![
        "--samplers".to_owned(),
        samplers.join(","),
        "--show-process-energy".to_owned(),
        "--show-process-coalition".to_owned(),
        "--format".to_owned(),
        "plist".to_owned(),
        "--buffer-size".to_owned(),
        "0".to_owned(),
        interval_flag.to_owned(),
        interval_ms.to_string(),
    ]
}

/// The macOS major release (`sw_vers -productVersion`), `None` elsewhere or on failure.
pub async fn detect_macos_major() -> Option<u32> {
    if !cfg!(target_os = "macos") {
        return None;
    }
    let output = Command::new("sw_vers")
        .arg("-productVersion")
        .output()
        .await
        .ok()?;
    parse_macos_major(&String::from_utf8_lossy(&output.stdout))
}

/// `14.6.1` → 14.
#[must_use]
pub fn parse_macos_major(version: &str) -> Option<u32> {
    version.trim().split('.').next()?.parse().ok()
}

/// How one child run ended.
#[derive(Debug)]
enum RunEnd {
    /// Cancelled by the bridge.
    Cancelled,
    /// The pipeline dropped its receivers.
    OutputClosed,
    /// The child exited (or closed stdout).
    Exited(ExitReport),
}

#[derive(Debug)]
struct ExitReport {
    status: Option<ExitStatus>,
    stderr_tail: Vec<String>,
    stdout_head: Vec<u8>,
    samples: u64,
    docs: u64,
}

impl ExitReport {
    fn describe(&self) -> String {
        let status = self
            .status
            .map_or_else(|| "unknown status".to_owned(), |s| s.to_string());
        let mut lines: Vec<String> = self.stderr_tail.clone();
        if self.docs == 0 {
            let head = String::from_utf8_lossy(&self.stdout_head);
            lines.extend(
                head.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('<'))
                    .take(3)
                    .map(str::to_owned),
            );
        }
        if lines.is_empty() {
            status
        } else {
            format!("{status}: {}", lines.join(" | "))
        }
    }

    fn permission_problem(&self) -> bool {
        let head = String::from_utf8_lossy(&self.stdout_head);
        std::iter::once(head.as_ref())
            .chain(self.stderr_tail.iter().map(String::as_str))
            .any(|l| {
                l.contains("superuser")
                    || l.contains("a password is required")
                    || l.contains("a terminal is required")
                    || l.contains("Operation not permitted")
            })
    }

    fn usage_problem(&self) -> bool {
        self.docs == 0
            && self.stderr_tail.iter().any(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("unrecognized") || l.contains("invalid") || l.contains("unknown")
            })
    }
}

/// The live powermetrics source.
#[derive(Debug)]
pub struct PowermetricsSource {
    config: PowermetricsConfig,
    clock: MonoClock,
}

impl PowermetricsSource {
    /// A source with `config`, stamping with `clock`.
    #[must_use]
    pub fn new(config: PowermetricsConfig, clock: MonoClock) -> Self {
        Self { config, clock }
    }

    /// Runs until cancelled, the outputs close, or the child cannot be kept running.
    ///
    /// # Errors
    /// [`PowermetricsError`] for a failure that restarting cannot fix (not root, missing
    /// program, text output, repeated failures).
    pub async fn run(
        self,
        out: PowerOutputs,
        cancel: CancellationToken,
    ) -> Result<(), PowermetricsError> {
        let major = match self.config.macos_major {
            Some(major) => major,
            None => detect_macos_major().await.unwrap_or(ASSUMED_MACOS_MAJOR),
        };
        let mut supervisor = Supervisor {
            config: &self.config,
            clock: self.clock,
            major,
            ane_sampler: true,
            use_sudo: self.config.privilege == Privilege::Sudo,
            last_end: None,
            pending_gap: None,
        };
        let result = supervisor.supervise(&out, &cancel).await;
        if let Err(err) = &result {
            tracing::error!(error = %err, "Powermetrics source stopped.");
            // Best effort: the pipeline may already be gone.
            let _closed = out
                .event_or_cancel(
                    PowerEvent::SourceEnded {
                        reason: err.to_string(),
                    },
                    &cancel,
                )
                .await;
        }
        result
    }
}

struct Supervisor<'c> {
    config: &'c PowermetricsConfig,
    clock: MonoClock,
    major: u32,
    ane_sampler: bool,
    use_sudo: bool,
    /// End of the last window sent, for gap events.
    last_end: Option<MonoNanos>,
    /// Why the next window follows a gap.
    pending_gap: Option<String>,
}

impl Supervisor<'_> {
    async fn supervise(
        &mut self,
        out: &PowerOutputs,
        cancel: &CancellationToken,
    ) -> Result<(), PowermetricsError> {
        let mut failures = 0u32;
        let mut restarts = 0u32;
        let mut backoff = self.config.restart_backoff;
        let mut sudo_tried = false;
        loop {
            let report = match self.run_once(out, cancel).await? {
                RunEnd::Cancelled | RunEnd::OutputClosed => return Ok(()),
                RunEnd::Exited(report) => report,
            };
            let reason = report.describe();
            if report.permission_problem() {
                if self.config.privilege == Privilege::Auto && !sudo_tried {
                    sudo_tried = true;
                    self.use_sudo = true;
                    tracing::warn!(reason = %reason, "Powermetrics is not running as root; retrying through `sudo -n`.");
                    continue;
                }
                return Err(PowermetricsError::NotRoot { detail: reason });
            }
            if report.usage_problem() && self.ane_sampler {
                self.ane_sampler = false;
                tracing::warn!(reason = %reason, "Powermetrics refused its arguments; retrying without the ane_power sampler.");
                continue;
            }
            if report.samples > 0 {
                failures = 0;
                backoff = self.config.restart_backoff;
            } else {
                failures += 1;
            }
            if failures >= self.config.max_failures {
                return Err(PowermetricsError::GaveUp {
                    failures,
                    last: reason,
                });
            }
            restarts += 1;
            tracing::warn!(attempt = restarts, reason = %reason, delay_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX), "Powermetrics exited; restarting.");
            if out
                .event_or_cancel(
                    PowerEvent::SourceRestarted {
                        attempt: restarts,
                        reason: reason.clone(),
                    },
                    cancel,
                )
                .await
                .is_err()
            {
                return Ok(());
            }
            self.pending_gap = Some(format!("powermetrics restarted after: {reason}"));
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.config.max_restart_backoff);
        }
    }

    fn command(&self) -> (Command, String) {
        let args = powermetrics_args(self.major, self.config.interval, self.ane_sampler);
        let program = self.config.program.clone();
        let mut command = if self.use_sudo {
            let target = if program.as_os_str() == DEFAULT_PROGRAM {
                PathBuf::from(MACOS_PROGRAM_PATH)
            } else {
                program
            };
            let mut c = Command::new("sudo");
            c.arg("-n").arg(target);
            c
        } else {
            Command::new(program)
        };
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(path) = &self.config.search_path {
            command.env("PATH", path);
        }
        let shown = format!("{:?}", command.as_std());
        (command, shown)
    }

    async fn run_once(
        &mut self,
        out: &PowerOutputs,
        cancel: &CancellationToken,
    ) -> Result<RunEnd, PowermetricsError> {
        let (mut command, shown) = self.command();
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(source) if self.use_sudo && source.kind() == std::io::ErrorKind::NotFound => {
                return Err(PowermetricsError::NotRoot {
                    detail: format!("sudo is not available ({source})"),
                });
            }
            Err(source) => {
                return Err(PowermetricsError::Spawn {
                    program: shown,
                    source,
                });
            }
        };
        tracing::info!(command = %shown, pid = child.id(), "Powermetrics started.");
        let stderr_task = child
            .stderr
            .take()
            .map(|stderr| tokio::spawn(drain_stderr(stderr)));
        let Some(mut stdout) = child.stdout.take() else {
            return Err(PowermetricsError::Read(std::io::Error::other(
                "child stdout was not piped",
            )));
        };
        let mut stream = DocStream::new(self.config.vm.clone());
        let mut head = Vec::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut samples = 0u64;
        loop {
            let read = tokio::select! {
                () = cancel.cancelled() => {
                    stop_child(&mut child).await;
                    return Ok(RunEnd::Cancelled);
                }
                read = stdout.read(&mut buf) => read,
            };
            let n = match read {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    stop_child(&mut child).await;
                    return Err(PowermetricsError::Read(err));
                }
            };
            if head.len() < STDOUT_HEAD_BYTES {
                let take = n.min(STDOUT_HEAD_BYTES - head.len());
                head.extend_from_slice(&buf[..take]);
            }
            let output = stream.push(&buf[..n], self.clock.now());
            if stream.is_text_format() {
                stop_child(&mut child).await;
                return Err(PowermetricsError::TextFormat);
            }
            samples += u64::try_from(output.samples.len()).unwrap_or(u64::MAX);
            if self.forward(output, out, cancel).await.is_err() {
                stop_child(&mut child).await;
                return Ok(RunEnd::OutputClosed);
            }
        }
        let output = stream.finish(self.clock.now());
        samples += u64::try_from(output.samples.len()).unwrap_or(u64::MAX);
        if self.forward(output, out, cancel).await.is_err() {
            stop_child(&mut child).await;
            return Ok(RunEnd::OutputClosed);
        }
        let status = wait_child(&mut child).await;
        let stderr_tail = match stderr_task {
            Some(task) => task.await.unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(RunEnd::Exited(ExitReport {
            status,
            stderr_tail,
            stdout_head: head,
            samples,
            docs: stream.stats().docs,
        }))
    }

    /// Sends samples and events, inserting a gap event before the first window after a
    /// restart.
    async fn forward(
        &mut self,
        output: super::StreamOutput,
        out: &PowerOutputs,
        cancel: &CancellationToken,
    ) -> Result<(), OutputClosed> {
        for event in output.events {
            out.event_or_cancel(event, cancel).await?;
        }
        for sample in output.samples {
            let start = MonoNanos(sample.end.0.saturating_sub(sample.window_ns));
            // A restart whose first window overlaps the last one (powermetrics' first sample
            // can reach back before the restart) leaves no gap to record.
            if let (Some(reason), Some(from)) = (self.pending_gap.take(), self.last_end)
                && start > from
            {
                tracing::warn!(from = from.0, to = start.0, "Power data gap recorded.");
                out.event_or_cancel(
                    PowerEvent::Gap {
                        from,
                        to: start,
                        reason,
                    },
                    cancel,
                )
                .await?;
            }
            self.last_end = Some(sample.end);
            out.sample_or_cancel(sample, cancel).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_use_long_names_and_release_flags() {
        let modern = powermetrics_args(14, Duration::from_millis(500), true);
        assert!(
            modern
                .iter()
                .all(|a| !a.starts_with('-') || a.starts_with("--"))
        );
        assert_eq!(modern[1], "cpu_power,gpu_power,ane_power,tasks");
        assert!(modern.windows(2).any(|w| w == ["--sample-rate", "500"]));
        assert!(modern.windows(2).any(|w| w == ["--format", "plist"]));
        let big_sur = powermetrics_args(11, Duration::from_secs(1), true);
        assert_eq!(big_sur[1], "cpu_power,gpu_power,tasks");
        assert!(
            big_sur
                .windows(2)
                .any(|w| w == ["--sample-interval", "1000"])
        );
        let no_ane = powermetrics_args(15, Duration::from_secs(1), false);
        assert_eq!(no_ane[1], "cpu_power,gpu_power,tasks");
    }

    #[test]
    fn sudoers_script_allows_exactly_these_arguments() {
        let script = include_str!("../../../../../scripts/install-powermetrics-sudoers.sh");
        let args = powermetrics_args(14, DEFAULT_INTERVAL, true);
        assert!(script.contains(&format!("SAMPLERS_WITH_ANE=\"{}\"", args[1])));
        let without = powermetrics_args(14, DEFAULT_INTERVAL, false);
        assert!(script.contains(&format!("SAMPLERS_WITHOUT_ANE=\"{}\"", without[1])));
        assert!(script.contains(&format!("FIXED_ARGS=\"{}\"", args[2..8].join(" "))));
        assert_eq!(args[8..], ["--sample-rate", "1000"]);
        assert!(script.contains("INTERVAL_MS=1000") && script.contains("--sample-rate"));
    }

    #[test]
    fn macos_major_parses_product_version() {
        assert_eq!(parse_macos_major("14.6.1\n"), Some(14));
        assert_eq!(parse_macos_major("26.0"), Some(26));
        assert_eq!(parse_macos_major("garbage"), None);
    }

    #[test]
    fn exit_report_detects_superuser_message_on_stdout() {
        let report = ExitReport {
            status: None,
            stderr_tail: Vec::new(),
            stdout_head: b"powermetrics must be invoked as the superuser\n".to_vec(),
            samples: 0,
            docs: 0,
        };
        assert!(report.permission_problem());
        assert!(report.describe().contains("superuser"));
    }
}
