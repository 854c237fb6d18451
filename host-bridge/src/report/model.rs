//! The report model: everything a user keeps from a run, in one serde type.
//!
//! A [`Report`] is built once (from a recording, through the attribution pipeline) and every
//! output is rendered from it: JSON ([`super::json`]), CSV and JSONL ([`super::csv`]), HTML
//! ([`super::html`]), GMT provider files ([`super::gmt`]) and the comparison of two runs
//! ([`super::compare`]). Keeping the renderers pure over one value means the file a user opens
//! and the JSON a CI job diffs can never disagree.
//!
//! Conventions:
//! - Energy is an integer number of microjoules (`*_uj`), as in the ledger; never a float.
//!   Every energy figure carries `low_uj`/`high_uj` bounds (docs/attribution.md §5).
//! - CPU time is integer microseconds (`cpu_us`).
//! - Times inside the run are seconds from its start (`t_start_s`), floats for plotting only;
//!   `start_unix_ns` anchors them to the wall clock.
//! - A `share` is a fraction of the energy attributed to *all containers* (0.0–1.0), which is
//!   what stays comparable between a Mac (VM) run and a Linux-native run of the same workload.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::journal::Provenance;
use crate::pipeline::{BucketKind, IdlePolicy};

/// Version of the report JSON layout. Bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// One run, attributed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// [`SCHEMA_VERSION`] of the writer.
    pub schema_version: u32,
    /// Program and version that produced the report (`host-bridge 0.1.0`).
    pub generated_by: String,
    /// Where the data came from.
    pub recording: RecordingInfo,
    /// The host power source and whether its figures are measured.
    pub power_source: PowerSourceInfo,
    /// Idle policy used to attribute idle power (docs/attribution.md §4).
    pub policy: IdlePolicy,
    /// How the VM's share of host energy was determined (`cpu-time`, `energy-impact`,
    /// `whole-host`).
    pub vm_share_basis: String,
    /// Attribution window length, seconds.
    pub window_s: f64,
    /// Length of the attributed run, seconds.
    pub duration_s: f64,
    /// Wall-clock time of the start of the run (ns since the Unix epoch).
    pub start_unix_ns: u64,
    /// Grid carbon intensity used for the `carbon_g` figures, when one was given.
    pub grid_intensity_g_per_kwh: Option<f64>,
    /// Totals and the buckets that are not containers.
    pub totals: Totals,
    /// One entry per container, largest energy first.
    pub containers: Vec<ContainerReport>,
    /// How much to trust the figures.
    pub quality: Quality,
    /// Per-window energy, for charts and time series.
    pub series: Vec<SeriesPoint>,
}

/// The recording a report was made from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingInfo {
    /// File name as given on the command line (`None` for a live run).
    pub path: Option<String>,
    /// Bridge version(s) that wrote it.
    pub created_by: String,
    /// When the recording was created (ns since the Unix epoch).
    pub created_unix_ns: u64,
    /// Number of bridge sessions (restarts + 1) in the recording.
    pub sessions: u32,
    /// Host name of the bridge machine.
    pub hostname: String,
    /// OS of the bridge machine (`macos`, `linux`).
    pub os: String,
}

/// The host power source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerSourceInfo {
    /// `powermetrics`, `rapl`, `estimate`, `replay`, or `native` for a Linux-native run.
    pub kind: String,
    /// Measured by a sensor or estimated by a model.
    pub provenance: Provenance,
    /// Why this source was chosen.
    pub reason: String,
}

/// An energy figure with its bounds, integer µJ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bounded {
    /// Best estimate.
    pub energy_uj: u64,
    /// Lower bound.
    pub low_uj: u64,
    /// Upper bound.
    pub high_uj: u64,
}

impl Bounded {
    /// A figure whose bounds are the figure itself (an exact measurement or a sum of parts
    /// that is exact by construction).
    #[must_use]
    pub fn exact(energy_uj: u64) -> Self {
        Self {
            energy_uj,
            low_uj: energy_uj,
            high_uj: energy_uj,
        }
    }

    /// Whether `low ≤ energy ≤ high`.
    #[must_use]
    pub fn is_ordered(&self) -> bool {
        self.low_uj <= self.energy_uj && self.energy_uj <= self.high_uj
    }
}

/// Grams of CO2-equivalent with bounds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarbonGrams {
    /// Best estimate.
    pub grams: f64,
    /// Lower bound (from the energy lower bound).
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

/// One bucket's energy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BucketReport {
    /// Which bucket.
    pub bucket: BucketKind,
    /// Its energy.
    #[serde(flatten)]
    pub energy: Bounded,
    /// Its carbon, when a grid intensity was given.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub carbon_g: Option<CarbonGrams>,
}

/// Run totals. `host = containers + Σ buckets` exactly (the ledger's conservation), and
/// `vm = containers + vm-system + vm-overhead`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    /// Host energy over the run (the power source's domain).
    pub host: Bounded,
    /// The VM's share of it (equal to `host` for a Linux-native run).
    pub vm: Bounded,
    /// Sum over containers.
    pub containers: Bounded,
    /// Energy outside containers.
    pub buckets: Vec<BucketReport>,
    /// Carbon of the host energy, when a grid intensity was given.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub carbon_g: Option<CarbonGrams>,
}

/// One container over the whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerReport {
    /// Stable key used in [`SeriesPoint`] maps: `<vm>/<id>`.
    pub key: String,
    /// VM (agent `vm_name`), or the host name for a native run.
    pub vm: String,
    /// Container id (64 hex digits) or cgroup path.
    pub id: String,
    /// Container name (without `/`); the short id when unknown.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// `com.docker.compose.project`.
    pub compose_project: Option<String>,
    /// `com.docker.compose.service`.
    pub compose_service: Option<String>,
    /// Attributed energy.
    #[serde(flatten)]
    pub energy: Bounded,
    /// Fraction of the energy attributed to all containers (0–1).
    pub share: f64,
    /// CPU time over the run.
    pub cpu_us: u64,
    /// Carbon, when a grid intensity was given.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub carbon_g: Option<CarbonGrams>,
}

impl ContainerReport {
    /// The name shown to people: compose service when known, else the container name.
    #[must_use]
    pub fn display_name(&self) -> &str {
        self.compose_service.as_deref().unwrap_or(&self.name)
    }
}

/// How much to trust the figures (docs/attribution.md §5).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quality {
    /// Fraction of the run covered by both power readings and guest samples (0–1).
    pub coverage: f64,
    /// Worst host↔guest clock offset uncertainty seen (ns).
    pub offset_error_ns: u64,
    /// Windows attributed with a degraded method (gap, reset, missing share).
    pub degraded_windows: u64,
    /// Number of windows attributed.
    pub windows: u64,
    /// Whether the power figures are estimated (no sensor).
    pub estimated: bool,
    /// Guest samples missing by sequence number.
    pub sequence_gaps: u64,
    /// Anything else a reader must know, one sentence each.
    pub notes: Vec<String>,
}

/// Energy of one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesPoint {
    /// Window start, seconds from the start of the run.
    pub t_start_s: f64,
    /// Window end, seconds from the start of the run.
    pub t_end_s: f64,
    /// Host energy in the window.
    pub host_uj: u64,
    /// Energy per container, keyed by [`ContainerReport::key`]; absent = zero.
    pub containers_uj: BTreeMap<String, u64>,
    /// CPU time per container in the window, same keys.
    pub cpu_us: BTreeMap<String, u64>,
    /// Energy per bucket.
    pub buckets_uj: BTreeMap<BucketKind, u64>,
    /// Whether this window was attributed with a degraded method.
    pub degraded: bool,
}

impl SeriesPoint {
    /// Window length in seconds (never negative).
    #[must_use]
    pub fn duration_s(&self) -> f64 {
        (self.t_end_s - self.t_start_s).max(0.0)
    }
}

/// Turns energy into carbon at a fixed grid intensity.
///
/// `g = µJ × (gCO2e/kWh) / 3.6e12`, since 1 kWh = 3.6 MJ = 3.6e12 µJ. (GMT's
/// `calculate_co2_intensity.py` computes µg as `µJ × g/kWh / 3.6e6`, the same relation.)
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GridIntensity {
    g_per_kwh: f64,
}

/// Microjoules in one kilowatt-hour.
pub const UJ_PER_KWH: f64 = 3.6e12;

impl GridIntensity {
    /// An intensity in gCO2e/kWh; `None` unless finite and non-negative.
    #[must_use]
    pub fn new(g_per_kwh: f64) -> Option<Self> {
        (g_per_kwh.is_finite() && g_per_kwh >= 0.0).then_some(Self { g_per_kwh })
    }

    /// gCO2e/kWh.
    #[must_use]
    pub fn g_per_kwh(self) -> f64 {
        self.g_per_kwh
    }

    /// Grams of CO2e for `uj` microjoules.
    #[must_use]
    #[allow(clippy::cast_precision_loss)] // display figure; exact up to 2^53 µJ (≈ 285 kWh)
    pub fn grams(self, uj: u64) -> f64 {
        uj as f64 * self.g_per_kwh / UJ_PER_KWH
    }

    /// Carbon with bounds for an energy figure with bounds.
    #[must_use]
    pub fn carbon(self, energy: Bounded) -> CarbonGrams {
        CarbonGrams {
            grams: self.grams(energy.energy_uj),
            low: self.grams(energy.low_uj),
            high: self.grams(energy.high_uj),
        }
    }
}

impl Report {
    /// Fill every `carbon_g` field from `intensity` (or clear them all with `None`).
    pub fn apply_grid_intensity(&mut self, intensity: Option<GridIntensity>) {
        self.grid_intensity_g_per_kwh = intensity.map(GridIntensity::g_per_kwh);
        let carbon = |b: Bounded| intensity.map(|i| i.carbon(b));
        self.totals.carbon_g = carbon(self.totals.host);
        for bucket in &mut self.totals.buckets {
            bucket.carbon_g = carbon(bucket.energy);
        }
        for c in &mut self.containers {
            c.carbon_g = carbon(c.energy);
        }
    }

    /// Whether the figures are estimates (no energy sensor behind them).
    #[must_use]
    pub fn is_estimated(&self) -> bool {
        self.power_source.provenance == Provenance::Estimated || self.quality.estimated
    }
}

/// Share of `part` in `whole` as a fraction; 0 when `whole` is 0.
#[must_use]
#[allow(clippy::cast_precision_loss)] // ratio of two energies; a display figure
pub fn share_of(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_kwh_at_400_g_is_400_g() {
        let i = GridIntensity::new(400.0).expect("valid intensity");
        let one_kwh_uj = 3_600_000_000_000;
        assert!((i.grams(one_kwh_uj) - 400.0).abs() < 1e-9);
        // 1 J at 360 g/kWh is 0.1 mg.
        let j = GridIntensity::new(360.0).expect("valid intensity");
        assert!((j.grams(1_000_000) - 1e-4).abs() < 1e-15);
    }

    #[test]
    fn negative_or_nan_intensity_is_rejected() {
        assert!(GridIntensity::new(-1.0).is_none());
        assert!(GridIntensity::new(f64::NAN).is_none());
        assert!(GridIntensity::new(0.0).is_some());
    }

    #[test]
    fn bucket_serde_spelling_matches_label() {
        for b in BucketKind::ALL {
            let json = serde_json::to_string(&b).expect("serialize");
            assert_eq!(json, format!("\"{}\"", b.as_str()));
        }
    }
}
