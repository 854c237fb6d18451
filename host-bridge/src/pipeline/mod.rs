//! The attribution pipeline: guest sample streams + host power → energy per container.
//!
//! One pipeline serves the live bridge, `replay` and `report`: every [`RecordEntry`] the bridge
//! records is fed to [`Engine::push`] as it is written, and offline commands feed the same
//! entries from the file (via [`attribute_recording`]). The engine is deterministic in the
//! entry sequence, so a re-attribution of a recording with another policy gives exactly the
//! numbers a live run with that policy would have given.
//!
//! - [`align`]: guest↔host clock offset, interpolation to window edges, pause detection.
//! - [`apportion`]: the pure integer two-level split of one window ([`apportion::split_exact`]).
//! - [`ledger`]: cumulative µJ per (VM, container) and per bucket; survives exit and restart.
//! - [`engine`]: the stateful part: streams, de-duplication, windows, closing rules.
//!
//! The formula, the time model and the policies are written down in `DESIGN.md` §7.
//! No I/O happens here; all energy arithmetic is integer µJ (u64, u128 products).

pub mod align;
pub mod apportion;
pub mod engine;
pub mod ledger;
pub mod view;

use std::time::Duration;

use protocol::{CpuMicros, MicroJoules, MonoNanos};
use serde::{Deserialize, Serialize};

use crate::journal::{PowerSourceKind, Provenance, RecordEntry};

pub use engine::Engine;
pub use ledger::{Bucket, BucketKind, ContainerKey, ContainerTotals, Ledger};
pub use view::{ContainerLabels, ContainerView, LedgerView, LiveLedger};

/// Default report window (≥ 10 × the 1 s powermetrics period, DESIGN.md §7.1).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// Default tolerance between guest and host elapsed time before a window is degraded.
pub const DEFAULT_PAUSE_TOLERANCE: Duration = Duration::from_secs(2);
/// Default wait for late data before a window is closed anyway.
pub const DEFAULT_CLOSE_LAG: Duration = Duration::from_secs(30);
/// Default horizon of the sliding-minimum clock offset estimator (follows drift).
pub const DEFAULT_OFFSET_HORIZON: Duration = Duration::from_secs(120);
/// Default bound of the one-way transport delay, used as the offset error when no full round
/// trip is known (vsock and a local socket are well below it).
pub const DEFAULT_ONE_WAY_ERROR: Duration = Duration::from_millis(1);
/// Default widening of bounds when the power source is an estimate (±25 %).
pub const DEFAULT_ESTIMATED_WIDEN_PPM: u64 = 250_000;
/// Default idle estimate when no baseline was measured: 20 % of the window energy (the low end
/// of the 20–60 % "active idle" range of SPECpower servers; DESIGN.md §7.3).
pub const DEFAULT_IDLE_PERMILLE: u16 = 200;

/// Where idle energy goes (DESIGN.md §7.4). The same enum is the `--policy` flag and the
/// report's `policy` field (lowercase in both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdlePolicy {
    /// Idle is its own bucket; containers get dynamic energy only (the headline view).
    #[default]
    Exclude,
    /// Idle is spread like dynamic energy, by usage.
    Proportional,
    /// Idle is spread by reservation: CPU limits read from cgroups, else equally among the
    /// containers running in the window.
    Reserved,
}

impl IdlePolicy {
    /// Every policy, in the order the CLI lists them.
    pub const ALL: [Self; 3] = [Self::Exclude, Self::Proportional, Self::Reserved];

    /// The CLI and JSON spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exclude => "exclude",
            Self::Proportional => "proportional",
            Self::Reserved => "reserved",
        }
    }
}

impl std::fmt::Display for IdlePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the idle part of host energy is estimated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdleModel {
    /// A measured baseline (e.g. a calibration run with the VM idle): constant idle power.
    Baseline {
        /// Idle power in mW.
        idle_mw: u64,
    },
    /// No baseline: a documented fixed fraction of each window's energy. Never a minimum that
    /// can latch, never the residual (1 − u)·P.
    EstimatedFraction {
        /// Idle share of the window energy in ‰.
        permille: u16,
    },
}

impl Default for IdleModel {
    fn default() -> Self {
        Self::EstimatedFraction {
            permille: DEFAULT_IDLE_PERMILLE,
        }
    }
}

/// What the host→VM share is computed from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VmShareBasis {
    /// CPU time of the VM process against all host tasks (P and E cores count the same).
    #[default]
    CpuTime,
    /// Apple "energy impact" of the VM task against all tasks (weights P/E cores and
    /// frequency by Apple's model). Falls back to CPU time, flagged, when not reported.
    EnergyImpact,
}

/// Pipeline settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineConfig {
    /// Report window; must be ≥ the slowest sample period (10× is recommended).
    pub window: Duration,
    /// Idle policy of the headline values.
    pub policy: IdlePolicy,
    /// Idle estimate.
    pub idle: IdleModel,
    /// Host→VM share basis.
    pub vm_share_basis: VmShareBasis,
    /// Guest vs host elapsed time disagreement that marks a window degraded.
    pub pause_tolerance: Duration,
    /// How long to wait for late data before closing a window anyway.
    pub close_lag: Duration,
    /// Horizon of the clock offset estimator.
    pub offset_horizon: Duration,
    /// Offset error reported when only one-way probes are known.
    pub one_way_error: Duration,
    /// Bounds widening when the power source is estimated, in ppm.
    pub estimated_widen_ppm: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
            policy: IdlePolicy::default(),
            idle: IdleModel::default(),
            vm_share_basis: VmShareBasis::default(),
            pause_tolerance: DEFAULT_PAUSE_TOLERANCE,
            close_lag: DEFAULT_CLOSE_LAG,
            offset_horizon: DEFAULT_OFFSET_HORIZON,
            one_way_error: DEFAULT_ONE_WAY_ERROR,
            estimated_widen_ppm: DEFAULT_ESTIMATED_WIDEN_PPM,
        }
    }
}

/// Errors of the pipeline (configuration only: the pipeline does no I/O and tolerates any
/// input).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A setting is out of range.
    #[error("invalid pipeline setting {key}: {reason}")]
    InvalidConfig {
        /// The setting.
        key: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// Per-window quality flags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowFlags {
    /// Share of the window covered by power readings, in ppm (energy outside is not invented).
    pub power_coverage_ppm: u32,
    /// Some VM was paused, or the host slept: that VM's share went to `unattributed`.
    pub degraded: bool,
    /// The host→VM share could not be determined: dynamic energy went to `unattributed`.
    pub vm_share_unknown: bool,
    /// Energy impact was requested but not reported: CPU time was used.
    pub basis_fallback: bool,
    /// Shares were clamped (Σ containers > guest busy, or guest busy > VM host CPU time).
    pub clamped: bool,
    /// The power source is a model, not a sensor.
    pub estimated_source: bool,
    /// Idle was estimated (no measured baseline).
    pub idle_estimated: bool,
    /// Largest clock offset error of the VMs in the window, ns.
    pub offset_error_ns: u64,
}

/// One container in one window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerWindow {
    /// Container id (as in the samples).
    pub id: String,
    /// Energy under the configured policy.
    pub energy: MicroJoules,
    /// Lower bound (dynamic-only share, widened).
    pub low: MicroJoules,
    /// Upper bound (with usage-proportional idle, widened).
    pub high: MicroJoules,
    /// CPU time used in the window.
    pub cpu: CpuMicros,
}

/// One VM in one window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmWindow {
    /// VM name from the Hello.
    pub vm: String,
    /// Guest busy time (U) in the window.
    pub busy: CpuMicros,
    /// `vm-system` energy.
    pub system: MicroJoules,
    /// `vm-overhead` energy.
    pub overhead: MicroJoules,
    /// Containers with CPU or energy in the window.
    pub containers: Vec<ContainerWindow>,
    /// Share of the window covered by this VM's samples, ppm.
    pub guest_coverage_ppm: u32,
    /// Paused or sleeping in this window.
    pub degraded: bool,
}

/// The result of one closed window. Its parts sum to `energy` exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowReport {
    /// Window start, host monotonic clock.
    pub start: MonoNanos,
    /// Window end, host monotonic clock.
    pub end: MonoNanos,
    /// Host energy E_H in the window.
    pub energy: MicroJoules,
    /// Idle part of E_H (whatever the policy did with it).
    pub idle_estimate: MicroJoules,
    /// Per VM.
    pub vms: Vec<VmWindow>,
    /// `host-other` energy.
    pub host_other: MicroJoules,
    /// `idle` bucket energy.
    pub idle: MicroJoules,
    /// `unattributed` energy.
    pub unattributed: MicroJoules,
    /// The host→VM basis actually used.
    pub basis: VmShareBasis,
    /// Quality flags.
    pub flags: WindowFlags,
}

impl WindowReport {
    /// Σ of every part: containers, VM buckets, host-other, idle, unattributed.
    #[must_use]
    pub fn parts_sum(&self) -> u64 {
        let vms: u64 = self
            .vms
            .iter()
            .map(|v| {
                v.system.0 + v.overhead.0 + v.containers.iter().map(|c| c.energy.0).sum::<u64>()
            })
            .sum();
        vms + self.host_other.0 + self.idle.0 + self.unattributed.0
    }
}

/// Quality of a whole attribution.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quality {
    /// Windows closed.
    pub windows: u64,
    /// Windows with some VM degraded (paused VM, sleeping host).
    pub degraded_windows: u64,
    /// Windows with partial or no power coverage.
    pub power_gap_windows: u64,
    /// Covered ns / window ns over all windows, ppm.
    pub power_coverage_ppm: u32,
    /// Windows whose host→VM share was unknown.
    pub vm_share_unknown_windows: u64,
    /// Windows where energy impact was requested but CPU time was used.
    pub basis_fallback_windows: u64,
    /// Windows with clamped shares.
    pub clamped_windows: u64,
    /// Largest clock offset error, ns.
    pub max_offset_error_ns: u64,
    /// Clock discontinuities seen in probes.
    pub clock_jumps: u64,
    /// Missing sequence numbers (agent drops).
    pub seq_gaps: u64,
    /// Resent samples ignored (seq ≤ last seen of their stream).
    pub duplicate_samples: u64,
    /// Guest messages on a connection without a Hello (ignored).
    pub orphan_messages: u64,
    /// Counter resets (container restarts) seen.
    pub counter_resets: u64,
    /// Some power reading was estimated.
    pub estimated_source: bool,
    /// An agent samples more slowly than the window is long.
    pub window_shorter_than_sample_period: bool,
    /// Power readings overlapping earlier ones (clipped).
    pub overlapping_power: u64,
    /// Empty windows skipped in long runs without any data (also counted as power gaps).
    pub skipped_empty_windows: u64,
    /// Power readings rejected (longer than an hour).
    pub rejected_power: u64,
}

/// What produced an [`Attribution`], echoed with the results.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEcho {
    /// Idle policy of the headline values.
    pub policy: IdlePolicy,
    /// Requested host→VM basis (each window states the one used).
    pub basis: VmShareBasis,
    /// Idle model.
    pub idle: IdleModel,
    /// Window length, ns.
    pub window_ns: u64,
    /// Power source kind from the recording, when named.
    pub source_kind: Option<PowerSourceKind>,
    /// Power source provenance from the recording, when named.
    pub source_provenance: Option<Provenance>,
}

/// The attribution of a whole recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribution {
    /// Every closed window, in order.
    pub windows: Vec<WindowReport>,
    /// Cumulative totals.
    pub ledger: Ledger,
    /// Quality summary.
    pub quality: Quality,
    /// Settings and source.
    pub config: ConfigEcho,
}

/// Run the pipeline over a whole recording: [`Engine::push`] for every entry, then
/// [`Engine::finish`]. The live bridge feeds the same entries one by one, so the numbers are
/// the same by construction.
///
/// # Errors
/// [`PipelineError::InvalidConfig`] for an invalid configuration.
pub fn attribute_recording(
    entries: &[RecordEntry],
    cfg: PipelineConfig,
) -> Result<Attribution, PipelineError> {
    let mut engine = Engine::new(cfg)?;
    let mut windows = Vec::new();
    for entry in entries {
        windows.extend(engine.push(entry));
    }
    windows.extend(engine.finish());
    Ok(engine.into_attribution(windows))
}
