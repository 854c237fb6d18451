//! Host power sources.
//!
//! Every source produces [`PowerSample`]s: the host energy of one window, measured on the
//! bridge's monotonic clock, plus (when the source can see it) the VM process's share of host
//! CPU time in the same window. The pipeline never knows which source it is fed by, except
//! through [`Provenance`], which every figure shown to a user carries.
//!
//! Modules (implemented per issue #3): `powermetrics` (macOS), `rapl` (Linux powercap),
//! `estimate` (utilisation model, labelled "estimated"), `replay` (a recorded capture).

use protocol::{MicroJoules, MonoNanos};
use serde::{Deserialize, Serialize};

/// Host energy over one window `[end - window_ns, end]` on the bridge's monotonic clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PowerSample {
    /// Bridge monotonic time at the end of the window (arrival of the reading).
    pub end: MonoNanos,
    /// Length of the window in ns (powermetrics `elapsed_ns`, or the RAPL poll interval).
    pub window_ns: u64,
    /// Energy of the domain that is split by CPU time (Apple Silicon: CPU cores; Intel Mac:
    /// package; RAPL: psys, else package + dram; estimate: the modelled CPU power).
    pub energy: MicroJoules,
    /// Every component the source reported, by name (`cpu`, `gpu`, `ane`, `package-0`, …),
    /// for display and for the host buckets.
    pub components: Vec<(String, MicroJoules)>,
    /// The VM process's share of host CPU in this window, when the source sees processes.
    pub vm_share: Option<VmShare>,
    /// Host-wide CPU busy time in the window, when known.
    pub host_cpu: Option<HostCpu>,
    /// Measured by a sensor or estimated by a model.
    pub provenance: Provenance,
}

/// The VM process against the whole host, over the same window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmShare {
    /// CPU time of the VM process (ns).
    pub vm_cpu_ns: u64,
    /// CPU time of all host tasks (ns), the denominator.
    pub total_cpu_ns: u64,
    /// Apple "energy impact" of the VM task, when reported.
    pub vm_energy_impact: Option<f64>,
    /// Energy impact of all tasks.
    pub total_energy_impact: Option<f64>,
}

/// Host CPU utilisation over the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCpu {
    /// Busy CPU time summed over CPUs (ns).
    pub busy_ns: u64,
    /// CPU capacity: window length × online CPUs (ns).
    pub capacity_ns: u64,
}

/// Where a figure comes from. Shown next to every number derived from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Provenance {
    /// A hardware or OS energy sensor (RAPL; powermetrics, itself Apple's model).
    Measured,
    /// A utilisation model with no sensor behind it.
    Estimated,
}
