//! Host power sources.
//!
//! Every source produces [`PowerSample`]s: the host energy of one window, measured on the
//! bridge's monotonic clock, plus (when the source can see it) the VM process's share of host
//! CPU time in the same window. The pipeline never knows which source it is fed by, except
//! through [`Provenance`], which every figure shown to a user carries.
//!
//! Modules (issue #3):
//! - [`powermetrics`]: Apple's `powermetrics` (macOS): a NUL framer, a pull parser that extracts
//!   only the keys the bridge needs, and the child-process supervisor (restart, gaps, root).
//! - [`replay`]: a recorded powermetrics capture played back as a source.
//! - [`rapl`]: Linux powercap RAPL counters (wrap and reset aware; Linux only).
//! - [`hostcpu`]: `/proc` host CPU time and the VM process's share of it (Linux hosts).
//! - [`estimate`]: a utilisation model for hosts with no sensor, labelled "estimated".
//!
//! This module also holds what every source shares: the clock ([`MonoClock`]), the outputs
//! ([`PowerOutputs`]), the events a pipeline records ([`PowerEvent`]) and source selection
//! ([`select_source`]).
//!
//! Every source runs as one task: it sends [`PowerSample`]s with `send().await` on a bounded
//! channel it is given, reports state changes as [`PowerEvent`]s (also logged through
//! `tracing`) and stops when its [`CancellationToken`] is cancelled.

pub mod estimate;
pub mod hostcpu;
pub mod powermetrics;
pub mod rapl;
pub mod replay;
mod select;

use protocol::{MicroJoules, MonoNanos};
use serde::{Deserialize, Serialize};

pub use crate::journal::power::{HostCpu, PowerSample, PowerSourceKind, Provenance, VmShare};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use select::{
    HostOs, PowerConfig, RaplAvailability, SelectError, Selection, SelectionProbe, SourceChoice,
    probe_host, program_exists, run_power, select_source,
};

/// The bridge's monotonic clock, as [`MonoNanos`], for the power sources.
///
/// It reads the same time line as [`crate::clock::mono_now`] (the host monotonic clock, shared
/// with guest arrival stamps and across bridge restarts), but advances with
/// `tokio::time::Instant`, so sources honour paused time in tests.
#[derive(Clone, Copy, Debug)]
pub struct MonoClock {
    origin: tokio::time::Instant,
    origin_mono: MonoNanos,
}

impl MonoClock {
    /// A clock anchored to the host monotonic clock now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
            origin_mono: crate::clock::mono_now(),
        }
    }

    /// The host monotonic clock now.
    #[must_use]
    pub fn now(&self) -> MonoNanos {
        let since = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        MonoNanos(self.origin_mono.0.saturating_add(since))
    }
}

impl Default for MonoClock {
    fn default() -> Self {
        Self::new()
    }
}

/// A state change of a power source, for the recording and the live view.
///
/// Events are rare (a handful per run); each one is also logged through `tracing` where it is
/// emitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PowerEvent {
    /// The source that runs, and why it was chosen.
    SourceSelected {
        /// The chosen source.
        kind: PowerSourceKind,
        /// Why (auto-detection result or "named by the user").
        reason: String,
    },
    /// No energy is known for `[from, to]` on the bridge clock (child restart, counter reset).
    Gap {
        /// End of the last good window.
        from: MonoNanos,
        /// Start of the next good window.
        to: MonoNanos,
        /// What caused it.
        reason: String,
    },
    /// The source's child process ended and is being restarted.
    SourceRestarted {
        /// 1 for the first restart.
        attempt: u32,
        /// Exit status and the last stderr lines.
        reason: String,
    },
    /// Documents arrive but carry no energy keys (a macOS VM, unsupported hardware, a sampler
    /// list without `cpu_power`). No samples are produced while this lasts.
    NoEnergyData {
        /// What is missing.
        reason: String,
    },
    /// Energy data arrives again after [`PowerEvent::NoEnergyData`].
    EnergyDataResumed,
    /// The VM process is not visible (its CPU counts as 0 until it is).
    VmNotFound {
        /// The selector that matched nothing.
        selector: String,
    },
    /// The VM process was found.
    VmFound {
        /// What matched (pattern and names).
        matched: String,
    },
    /// One document could not be parsed and was skipped.
    DocumentRejected {
        /// The parse error.
        reason: String,
    },
    /// A document was cut off (the stream ended or the child died mid-document) and dropped.
    IncompleteDocumentDropped {
        /// Bytes discarded.
        bytes: u64,
    },
    /// A diagnostic line from the source (powermetrics stderr, stray non-XML lines).
    SourceWarning {
        /// The line.
        message: String,
    },
    /// A counter restarted (RAPL reset); the window containing it is dropped.
    CounterReset {
        /// The zone or domain.
        domain: String,
        /// Why it was classed as a reset rather than a wrap.
        reason: String,
    },
    /// The source ended by itself (replay finished, child gave up).
    SourceEnded {
        /// Why.
        reason: String,
    },
}

/// A power source that stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// The choice cannot be honoured.
    #[error("failed to select a power source")]
    Select(#[from] SelectError),
    /// powermetrics failed.
    #[error("powermetrics source failed")]
    Powermetrics(#[from] powermetrics::spawn::PowermetricsError),
    /// RAPL failed.
    #[error("rapl source failed")]
    Rapl(#[from] rapl::RaplError),
    /// Replay failed.
    #[error("replay source failed")]
    Replay(#[from] replay::ReplayError),
    /// Host CPU counters failed (estimate).
    #[error("estimate source failed")]
    HostCpu(#[from] hostcpu::HostCpuError),
}

/// Where a source sends its output.
///
/// Overflow policy: both channels are bounded and written with `send().await`. Power samples
/// and events are few (at most a few per second), so a full channel only means the pipeline is
/// briefly busy; waiting loses nothing (a powermetrics child just blocks on its stdout pipe, and
/// its `elapsed_ns` still covers the whole window). A closed channel means the pipeline is gone:
/// the source stops quietly.
#[derive(Clone, Debug)]
pub struct PowerOutputs {
    /// Samples, in window order.
    pub samples: mpsc::Sender<PowerSample>,
    /// State changes.
    pub events: mpsc::Sender<PowerEvent>,
}

/// The receiver went away; the source should stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputClosed;

impl PowerOutputs {
    /// A pair of bounded channels and the receivers, with `capacity` slots each.
    #[must_use]
    pub fn channel(
        capacity: usize,
    ) -> (
        Self,
        mpsc::Receiver<PowerSample>,
        mpsc::Receiver<PowerEvent>,
    ) {
        let (samples, sample_rx) = mpsc::channel(capacity);
        let (events, event_rx) = mpsc::channel(capacity);
        (Self { samples, events }, sample_rx, event_rx)
    }

    /// Sends one sample, waiting for room.
    ///
    /// # Errors
    /// [`OutputClosed`] when the pipeline dropped its receiver.
    pub async fn sample(&self, sample: PowerSample) -> Result<(), OutputClosed> {
        self.samples.send(sample).await.map_err(|_| OutputClosed)
    }

    /// Sends one event, waiting for room.
    ///
    /// # Errors
    /// [`OutputClosed`] when the pipeline dropped its receiver.
    pub async fn event(&self, event: PowerEvent) -> Result<(), OutputClosed> {
        self.events.send(event).await.map_err(|_| OutputClosed)
    }

    /// Sends an event unless `cancel` fires first (used during shutdown paths).
    async fn event_or_cancel(
        &self,
        event: PowerEvent,
        cancel: &CancellationToken,
    ) -> Result<(), OutputClosed> {
        tokio::select! {
            () = cancel.cancelled() => Ok(()),
            sent = self.event(event) => sent,
        }
    }

    /// Sends a sample unless `cancel` fires first.
    async fn sample_or_cancel(
        &self,
        sample: PowerSample,
        cancel: &CancellationToken,
    ) -> Result<(), OutputClosed> {
        tokio::select! {
            () = cancel.cancelled() => Ok(()),
            sent = self.sample(sample) => sent,
        }
    }
}

/// Which process is "the VM", by PID or by name.
///
/// Names match a process (`qemu-system-*` is a prefix pattern) and, on macOS, optionally its
/// coalition (`com.docker.docker/com.apple.Virtualization.VirtualMachine`). Patterns are tried
/// in order and the first that matches anything wins; every process it matches counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmSelector {
    /// One process id.
    Pid(i64),
    /// Name patterns, in priority order.
    Patterns(Vec<VmPattern>),
}

/// One name pattern of a [`VmSelector`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmPattern {
    /// Coalition name the process must belong to (macOS), if any.
    pub coalition: Option<NamePattern>,
    /// Process name.
    pub process: NamePattern,
}

/// An exact name, or a prefix written with a trailing `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamePattern {
    /// The whole name.
    Exact(String),
    /// The start of the name.
    Prefix(String),
}

impl NamePattern {
    /// Parses `name` or `prefix*`.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None => Self::Exact(text.to_owned()),
        }
    }

    /// Whether `name` matches.
    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(exact) => name == exact,
            Self::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }
}

impl std::fmt::Display for NamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

impl std::fmt::Display for VmPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.coalition {
            Some(coalition) => write!(f, "{coalition}/{}", self.process),
            None => write!(f, "{}", self.process),
        }
    }
}

impl std::fmt::Display for VmSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pid(pid) => write!(f, "pid:{pid}"),
            Self::Patterns(patterns) => {
                let names: Vec<String> = patterns.iter().map(ToString::to_string).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

/// The Virtualization.framework VM process (one per VM, vCPUs run in it).
pub const VZ_VM_PROCESS: &str = "com.apple.Virtualization.VirtualMachine";
/// Docker Desktop's coalition on macOS (docs/powermetrics.md §5.1, observed).
pub const DOCKER_DESKTOP_COALITION: &str = "com.docker.docker";

impl VmSelector {
    /// Parses a comma-separated list of `pid:N`, `N`, `name`, `prefix*` or `coalition/name`.
    ///
    /// # Errors
    /// A message naming the bad entry (empty list, `pid:` without a number).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(pid) = text.strip_prefix("pid:") {
            return pid
                .trim()
                .parse()
                .map(Self::Pid)
                .map_err(|_| format!("invalid vm pid {pid:?}: expected pid:<number>"));
        }
        if let Ok(pid) = text.parse::<i64>() {
            return Ok(Self::Pid(pid));
        }
        let patterns: Vec<VmPattern> = text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|entry| match entry.split_once('/') {
                Some((coalition, process)) => VmPattern {
                    coalition: Some(NamePattern::parse(coalition)),
                    process: NamePattern::parse(process),
                },
                None => VmPattern {
                    coalition: None,
                    process: NamePattern::parse(entry),
                },
            })
            .collect();
        if patterns.is_empty() {
            return Err(format!(
                "invalid vm selector {text:?}: expected a pid or names"
            ));
        }
        Ok(Self::Patterns(patterns))
    }

    /// VM processes on a Mac, most specific first.
    ///
    /// Docker Desktop (Virtualization.framework) is observed in real captures; the others are
    /// process names from the projects' docs and are unverified on a real Mac: QEMU
    /// (`qemu-system-*`, Docker's legacy backend, Lima, Colima, Podman), `vfkit`, `krunkit`
    /// (Podman machine, Docker VMM), HyperKit (legacy Docker on Intel), and finally any
    /// Virtualization.framework VM process (OrbStack, Lima `vz`, vfkit guests).
    #[must_use]
    pub fn macos_default() -> Self {
        let mut patterns = vec![VmPattern {
            coalition: Some(NamePattern::Exact(DOCKER_DESKTOP_COALITION.to_owned())),
            process: NamePattern::Exact(VZ_VM_PROCESS.to_owned()),
        }];
        for name in [
            "com.docker.hyperkit",
            "qemu-system-*",
            "vfkit",
            "krunkit",
            VZ_VM_PROCESS,
        ] {
            patterns.push(VmPattern {
                coalition: None,
                process: NamePattern::parse(name),
            });
        }
        Self::Patterns(patterns)
    }

    /// VM monitor processes on a Linux host (Kepler's hypervisor list, docs/attribution.md §2).
    /// `comm` is cut to 15 bytes, so `cloud-hypervisor` is matched as a prefix.
    #[must_use]
    pub fn linux_default() -> Self {
        Self::Patterns(
            [
                "qemu-system-*",
                "qemu-kvm",
                "firecracker",
                "cloud-hyperviso*",
                "crosvm",
            ]
            .iter()
            .map(|name| VmPattern {
                coalition: None,
                process: NamePattern::parse(name),
            })
            .collect(),
        )
    }
}

/// Converts a non-negative finite float to the nearest `u64`, `None` otherwise.
pub(crate) fn round_to_u64(value: f64) -> Option<u64> {
    // 2^64 as f64; anything at or above it does not fit.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    let rounded = value.round();
    if (0.0..LIMIT).contains(&rounded) {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(rounded as u64)
    } else {
        None
    }
}

/// Energy in µJ of `power_mw` sustained for `elapsed_ns`: mW × ns / 1e6 = µJ, rounded.
#[must_use]
#[allow(clippy::cast_precision_loss)]
pub fn energy_from_power(power_mw: f64, elapsed_ns: u64) -> Option<MicroJoules> {
    if power_mw < 0.0 {
        return None;
    }
    round_to_u64(power_mw * elapsed_ns as f64 / 1e6).map(MicroJoules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn energy_from_power_converts_mw_ns_to_uj() {
        // 2092.08 mW for 132 882 041 ns = 278.0 mJ (GMT capture, first document).
        assert_eq!(
            energy_from_power(2092.08, 132_882_041),
            Some(MicroJoules(278_000))
        );
        assert_eq!(energy_from_power(-1.0, 10), None);
        assert_eq!(energy_from_power(f64::NAN, 10), None);
    }

    #[test]
    fn host_cpu_utilisation_clamps_to_one() {
        let cpu = HostCpu {
            busy_ns: 30,
            capacity_ns: 20,
        };
        assert_eq!(cpu.utilisation(), Some(1.0));
        let none = HostCpu {
            busy_ns: 1,
            capacity_ns: 0,
        };
        assert_eq!(none.utilisation(), None);
    }
}
