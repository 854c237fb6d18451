//! Comparison of two reports of the same workload: typically an attributed run on a Mac (the
//! containers inside Docker Desktop's VM) against a Linux-native run, where cgroups and RAPL see
//! the containers directly.
//!
//! Absolute energies of two machines differ for many reasons; what should agree is how the
//! energy is *shared* between containers. So each container row carries absolute and relative
//! differences of energy and CPU seconds, and the difference of energy *share* (a fraction of
//! the energy attributed to all containers), which is what `--max-share-diff` bounds for CI.
//!
//! Containers are matched, in this order: by compose service (when the service is unique on
//! both sides, since compose project names usually differ between machines), then by container
//! name, then by container id. A container found on one side only is compared against zero, so
//! a missing service fails a share threshold rather than disappearing.
//!
//! Text output:
//! ```text
//! container   matched by       energy A (J)  energy B (J)  Δ energy (J)  Δ energy %  share A  share B  Δ share (pp)  CPU A (s)  CPU B (s)  Δ CPU (s)
//! web         compose-service        41.000        38.500         2.500        6.5 %   62.0 %   60.1 %          1.9       8.10       7.90       0.20
//! ```

use serde::{Deserialize, Serialize};

use super::model::{ContainerReport, Report, share_of};
use crate::journal::Provenance;
use crate::pipeline::IdlePolicy;

/// How a row's two containers were paired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchedBy {
    /// Same `com.docker.compose.service`, unique on both sides.
    ComposeService,
    /// Same container name.
    Name,
    /// Same container id.
    Id,
    /// Present in A only.
    OnlyA,
    /// Present in B only.
    OnlyB,
}

impl MatchedBy {
    fn as_str(self) -> &'static str {
        match self {
            Self::ComposeService => "compose-service",
            Self::Name => "name",
            Self::Id => "id",
            Self::OnlyA => "only in A",
            Self::OnlyB => "only in B",
        }
    }
}

/// One side of a row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SideFigures {
    /// Container name on this side (`None` when absent).
    pub name: Option<String>,
    /// Energy, µJ (0 when absent).
    pub energy_uj: u64,
    /// Share of container energy (0 when absent).
    pub share: f64,
    /// CPU time, µs (0 when absent).
    pub cpu_us: u64,
}

impl SideFigures {
    fn of(c: Option<&ContainerReport>, containers_total_uj: u64) -> Self {
        c.map_or(
            Self {
                name: None,
                energy_uj: 0,
                share: 0.0,
                cpu_us: 0,
            },
            |c| Self {
                name: Some(c.name.clone()),
                energy_uj: c.energy.energy_uj,
                share: share_of(c.energy.energy_uj, containers_total_uj),
                cpu_us: c.cpu_us,
            },
        )
    }
}

/// One matched (or unmatched) container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Display label (compose service, else name).
    pub label: String,
    /// How the pair was made.
    pub matched_by: MatchedBy,
    /// Figures in A.
    pub a: SideFigures,
    /// Figures in B.
    pub b: SideFigures,
    /// `a − b`, µJ.
    pub energy_diff_uj: i128,
    /// `(a − b) / b`; `None` when `b` is 0.
    pub energy_rel_diff: Option<f64>,
    /// `a.share − b.share` (fraction; 0.01 = one percentage point).
    pub share_diff: f64,
    /// `a − b`, CPU seconds.
    pub cpu_diff_s: f64,
    /// `(a − b) / b` of CPU time; `None` when `b` is 0.
    pub cpu_rel_diff: Option<f64>,
}

/// What is known about each input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SideInfo {
    /// File or label of the input.
    pub label: String,
    /// Power source kind.
    pub power_source: String,
    /// Measured or estimated.
    pub provenance: Provenance,
    /// Idle policy.
    pub policy: IdlePolicy,
    /// Energy attributed to all containers, µJ.
    pub containers_uj: u64,
    /// Run duration, s.
    pub duration_s: f64,
}

/// The comparison of two reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Input A (usually the attributed Mac/VM run).
    pub a: SideInfo,
    /// Input B (usually the Linux-native run).
    pub b: SideInfo,
    /// One row per container pair, largest |Δ share| first.
    pub rows: Vec<Row>,
    /// Largest |Δ share| over all rows (fraction).
    pub max_abs_share_diff: f64,
    /// Threshold given with `--max-share-diff`, if any.
    pub max_share_diff: Option<f64>,
    /// Whether the threshold holds (always true without one).
    pub passed: bool,
    /// Warnings a reader should see (different policies, estimated figures, …).
    pub warnings: Vec<String>,
}

#[allow(clippy::cast_precision_loss)] // display ratios
fn rel(a: u64, b: u64) -> Option<f64> {
    (b != 0).then(|| (a as f64 - b as f64) / b as f64)
}

fn side_info(label: &str, r: &Report) -> SideInfo {
    SideInfo {
        label: label.to_string(),
        power_source: r.power_source.kind.clone(),
        provenance: if r.is_estimated() {
            Provenance::Estimated
        } else {
            Provenance::Measured
        },
        policy: r.policy,
        containers_uj: r.totals.containers.energy_uj,
        duration_s: r.duration_s,
    }
}

fn unique_service<'a>(r: &'a Report, service: &str) -> Option<&'a ContainerReport> {
    let mut it = r
        .containers
        .iter()
        .filter(|c| c.compose_service.as_deref() == Some(service));
    let first = it.next()?;
    it.next().is_none().then_some(first)
}

/// Pair containers of `a` and `b` (indices), in the documented order.
fn pair(a: &Report, b: &Report) -> Vec<(Option<usize>, Option<usize>, MatchedBy)> {
    let mut used_a = vec![false; a.containers.len()];
    let mut used_b = vec![false; b.containers.len()];
    let mut pairs = Vec::new();
    type Key = fn(&ContainerReport) -> Option<&str>;
    let passes: [(MatchedBy, Key); 3] = [
        (MatchedBy::ComposeService, |c| c.compose_service.as_deref()),
        (MatchedBy::Name, |c| Some(c.name.as_str())),
        (MatchedBy::Id, |c| Some(c.id.as_str())),
    ];
    for (how, key) in passes {
        for (ia, ca) in a.containers.iter().enumerate() {
            if used_a[ia] {
                continue;
            }
            let Some(ka) = key(ca) else { continue };
            if how == MatchedBy::ComposeService && unique_service(a, ka).is_none() {
                continue;
            }
            let found = b.containers.iter().enumerate().find(|(ib, cb)| {
                !used_b[*ib]
                    && key(cb) == Some(ka)
                    && (how != MatchedBy::ComposeService || unique_service(b, ka).is_some())
            });
            if let Some((ib, _)) = found {
                used_a[ia] = true;
                used_b[ib] = true;
                pairs.push((Some(ia), Some(ib), how));
            }
        }
    }
    for (ia, used) in used_a.iter().enumerate() {
        if !used {
            pairs.push((Some(ia), None, MatchedBy::OnlyA));
        }
    }
    for (ib, used) in used_b.iter().enumerate() {
        if !used {
            pairs.push((None, Some(ib), MatchedBy::OnlyB));
        }
    }
    pairs
}

/// Compare `a` against `b`; `max_share_diff` (a fraction) decides [`Comparison::passed`].
#[must_use]
pub fn compare(
    a_label: &str,
    a: &Report,
    b_label: &str,
    b: &Report,
    max_share_diff: Option<f64>,
) -> Comparison {
    let a_total = a.totals.containers.energy_uj;
    let b_total = b.totals.containers.energy_uj;
    let mut rows: Vec<Row> = pair(a, b)
        .into_iter()
        .map(|(ia, ib, how)| {
            let ca = ia.map(|i| &a.containers[i]);
            let cb = ib.map(|i| &b.containers[i]);
            let fa = SideFigures::of(ca, a_total);
            let fb = SideFigures::of(cb, b_total);
            let label = ca
                .or(cb)
                .map(|c| c.display_name().to_string())
                .expect("every pair has at least one side");
            Row {
                label,
                matched_by: how,
                energy_diff_uj: i128::from(fa.energy_uj) - i128::from(fb.energy_uj),
                energy_rel_diff: rel(fa.energy_uj, fb.energy_uj),
                share_diff: fa.share - fb.share,
                cpu_diff_s: protocol::CpuMicros(fa.cpu_us).as_secs_f64()
                    - protocol::CpuMicros(fb.cpu_us).as_secs_f64(),
                cpu_rel_diff: rel(fa.cpu_us, fb.cpu_us),
                a: fa,
                b: fb,
            }
        })
        .collect();
    rows.sort_by(|x, y| {
        y.share_diff
            .abs()
            .total_cmp(&x.share_diff.abs())
            .then_with(|| x.label.cmp(&y.label))
    });
    let max_abs_share_diff = rows
        .iter()
        .map(|r| r.share_diff.abs())
        .fold(0.0_f64, f64::max);
    let mut warnings = Vec::new();
    if a.policy != b.policy {
        warnings.push(format!(
            "idle policies differ (A {}, B {}); shares are not like for like",
            a.policy, b.policy
        ));
    }
    for (label, r) in [("A", a), ("B", b)] {
        if r.is_estimated() {
            warnings.push(format!("{label} has estimated power figures (no sensor)"));
        }
    }
    Comparison {
        a: side_info(a_label, a),
        b: side_info(b_label, b),
        rows,
        max_abs_share_diff,
        max_share_diff,
        passed: max_share_diff.is_none_or(|t| max_abs_share_diff <= t),
        warnings,
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{:+.1} %", v * 100.0))
}

#[allow(clippy::cast_precision_loss)] // display only
fn j(uj: u64) -> String {
    format!("{:.3}", uj as f64 / 1e6)
}

#[allow(clippy::cast_precision_loss)] // display only
fn j_signed(uj: i128) -> String {
    format!("{:+.3}", uj as f64 / 1e6)
}

impl Comparison {
    /// A fixed-width text table for terminals and CI logs.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "A: {} ({}, {}, policy {})\nB: {} ({}, {}, policy {})",
            self.a.label,
            self.a.power_source,
            self.a.provenance.as_str(),
            self.a.policy,
            self.b.label,
            self.b.power_source,
            self.b.provenance.as_str(),
            self.b.policy
        ));
        out.push('\n');
        let width = self
            .rows
            .iter()
            .map(|r| r.label.chars().count())
            .max()
            .unwrap_or(0)
            .max("container".len());
        out.push_str(&format!("{:<width$}  {:<15}  {:>12}  {:>12}  {:>12}  {:>10}  {:>8}  {:>8}  {:>12}  {:>9}  {:>9}  {:>9}",
            "container",
            "matched by",
            "energy A (J)",
            "energy B (J)",
            "Δ energy (J)",
            "Δ energy",
            "share A",
            "share B",
            "Δ share (pp)",
            "CPU A (s)",
            "CPU B (s)",
            "Δ CPU (s)"));
        out.push('\n');
        for r in &self.rows {
            out.push_str(&format!("{:<width$}  {:<15}  {:>12}  {:>12}  {:>12}  {:>10}  {:>7.1}%  {:>7.1}%  {:>+12.2}  {:>9.3}  {:>9.3}  {:>+9.3}",
                r.label,
                r.matched_by.as_str(),
                j(r.a.energy_uj),
                j(r.b.energy_uj),
                j_signed(r.energy_diff_uj),
                pct(r.energy_rel_diff),
                r.a.share * 100.0,
                r.b.share * 100.0,
                r.share_diff * 100.0,
                protocol::CpuMicros(r.a.cpu_us).as_secs_f64(),
                protocol::CpuMicros(r.b.cpu_us).as_secs_f64(),
                r.cpu_diff_s));
            out.push('\n');
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}"));
            out.push('\n');
        }
        match self.max_share_diff {
            Some(t) => {
                out.push_str(&format!(
                    "max |Δ share| = {:.2} pp, threshold {:.2} pp: {}",
                    self.max_abs_share_diff * 100.0,
                    t * 100.0,
                    if self.passed { "PASS" } else { "FAIL" }
                ));
                out.push('\n');
            }
            None => {
                out.push_str(&format!(
                    "max |Δ share| = {:.2} pp",
                    self.max_abs_share_diff * 100.0
                ));
                out.push('\n');
            }
        }
        out
    }
}
