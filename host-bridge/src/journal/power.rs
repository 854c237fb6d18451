//! Power readings and the power source's identity as the journal records them.
//!
//! Sources produce these values, the journal stores them, and the pipeline reads them back;
//! they live here, below all three, so none of them imports another's code to name them.
//! They are part of the recording layout ([`super::record::RECORDING_VERSION`]): never
//! reorder, retype or remove a field or variant.

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
///
/// Recordings store the variant index (bincode), reports the lowercase name (JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provenance {
    /// A hardware or OS energy sensor (RAPL; powermetrics, itself Apple's model).
    Measured,
    /// A utilisation model with no sensor behind it.
    Estimated,
}

impl PowerSample {
    /// The energy of one named component (`cpu`, `gpu`, `package-0`, …), if reported.
    ///
    /// Components overlap (clusters are parts of `cpu`; `combined` is `cpu + gpu + ane`; RAPL
    /// `core` is part of its package): look them up by name, never sum them all.
    #[must_use]
    pub fn component(&self, name: &str) -> Option<MicroJoules> {
        self.components
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, energy)| *energy)
    }

    /// Average power of the split domain over the window, in milliwatts (display only).
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn average_power_mw(&self) -> Option<f64> {
        (self.window_ns > 0).then(|| self.energy.0 as f64 * 1e6 / self.window_ns as f64)
    }
}

impl VmShare {
    /// The VM's fraction of host CPU time in the window, in `[0, 1]` when the counters agree.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn cpu_fraction(&self) -> Option<f64> {
        (self.total_cpu_ns > 0).then(|| self.vm_cpu_ns as f64 / self.total_cpu_ns as f64)
    }
}

impl HostCpu {
    /// Host utilisation in `[0, 1]` (busy time over capacity), clamped.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn utilisation(&self) -> Option<f64> {
        (self.capacity_ns > 0)
            .then(|| (self.busy_ns as f64 / self.capacity_ns as f64).clamp(0.0, 1.0))
    }
}

impl Provenance {
    /// The label shown next to every figure derived from this source (`measured` or
    /// `estimated`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Measured => "measured",
            Self::Estimated => "estimated",
        }
    }
}

impl std::fmt::Display for Provenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of power source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerSourceKind {
    /// Apple `powermetrics` (macOS).
    Powermetrics,
    /// Linux powercap RAPL.
    Rapl,
    /// Utilisation model, no sensor.
    Estimate,
    /// A recorded powermetrics capture.
    Replay,
}

impl PowerSourceKind {
    /// The name used on the command line and in recordings.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Powermetrics => "powermetrics",
            Self::Rapl => "rapl",
            Self::Estimate => "estimate",
            Self::Replay => "replay",
        }
    }
}

impl PowerSourceKind {
    /// Whether this kind's figures come from a sensor or from a model.
    #[must_use]
    pub fn provenance(self) -> Provenance {
        if self == Self::Estimate {
            Provenance::Estimated
        } else {
            Provenance::Measured
        }
    }
}

impl std::fmt::Display for PowerSourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PowerSourceKind {
    type Err = UnknownSourceKind;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        [Self::Powermetrics, Self::Rapl, Self::Estimate, Self::Replay]
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| UnknownSourceKind(name.to_owned()))
    }
}

/// A power source name no build of the bridge has written.
#[derive(Debug, thiserror::Error)]
#[error("unknown power source kind {0:?}; expected powermetrics, rapl, estimate or replay")]
pub struct UnknownSourceKind(pub String);

/// `RecordEntry::PowerSource.kind` on disk: the kind's name as a string, so the bytes are the
/// ones version-1 recordings have always held (the field used to be a `String`).
pub(super) mod kind_by_name {
    use serde::{Deserialize as _, Deserializer, Serializer};

    use super::PowerSourceKind;

    pub(crate) fn serialize<S: Serializer>(
        kind: &PowerSourceKind,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(kind.as_str())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<PowerSourceKind, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}
