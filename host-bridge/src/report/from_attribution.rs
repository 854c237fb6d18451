//! Building a [`Report`] from the attribution pipeline's output.
//!
//! The pipeline ([`crate::pipeline`]) produces windows and a ledger in integer µJ on the host
//! monotonic clock; this module only re-shapes them for people: wall-clock anchoring (from the
//! recording's `Session` entries), names from container metadata, per-VM buckets summed into
//! the five report buckets, shares, and quality notes. No energy is computed here, so a report
//! always adds up exactly as the ledger does.

use std::collections::BTreeMap;

use crate::journal::{Provenance, RecordEntry, RecordingHeader};
use crate::pipeline::{
    Attribution, BucketKind, Ledger, PipelineConfig, VmShareBasis, WindowReport,
};

use super::model::{
    Bounded, BucketReport, ContainerReport, PowerSourceInfo, Quality, RecordingInfo, Report,
    SCHEMA_VERSION, SeriesPoint, Totals, share_of,
};

/// Characters of a container id shown when the engine gave no name (as `docker ps` does).
const SHORT_ID_LEN: usize = 12;
const PPM: u64 = 1_000_000;

/// The recording a report is made from: its header and entries, and the path to show.
#[derive(Clone, Copy, Debug)]
pub struct RecordingSource<'a> {
    /// Path as the user gave it (`None` for a live run).
    pub path: Option<&'a str>,
    /// The recording header.
    pub header: &'a RecordingHeader,
    /// Every entry, in file order.
    pub entries: &'a [RecordEntry],
}

fn recording_info(src: &RecordingSource<'_>) -> RecordingInfo {
    let sessions: Vec<_> = src
        .entries
        .iter()
        .filter_map(|e| match e {
            RecordEntry::Session(s) => Some(s),
            _ => None,
        })
        .collect();
    let first = sessions.first();
    RecordingInfo {
        path: src.path.map(str::to_string),
        created_by: src.header.created_by.clone(),
        created_unix_ns: src.header.created_unix_ns.0,
        sessions: u32::try_from(sessions.len()).unwrap_or(u32::MAX),
        hostname: first.map(|s| s.hostname.clone()).unwrap_or_default(),
        os: first.map(|s| s.os.clone()).unwrap_or_default(),
    }
}

/// Wall-clock time of host monotonic instant `mono`, from the last `Session` that started at
/// or before it (each session stamps both clocks together).
fn unix_of(entries: &[RecordEntry], mono: u64) -> u64 {
    let mut anchor = None;
    for e in entries {
        if let RecordEntry::Session(s) = e
            && (anchor.is_none() || s.mono.0 <= mono)
        {
            anchor = Some((s.mono.0, s.unix.0));
        }
    }
    anchor.map_or(0, |(m, u)| {
        if mono >= m {
            u.saturating_add(mono - m)
        } else {
            u.saturating_sub(m - mono)
        }
    })
}

fn power_source(attr: &Attribution, entries: &[RecordEntry]) -> PowerSourceInfo {
    let recorded = entries.iter().rev().find_map(|e| match e {
        RecordEntry::PowerSource {
            kind,
            reason,
            provenance,
        } => Some((*kind, reason.clone(), *provenance)),
        _ => None,
    });
    let kind = attr
        .config
        .source_kind
        .or_else(|| recorded.as_ref().map(|r| r.0))
        .map_or_else(|| "none".to_string(), |k| k.as_str().to_string());
    let provenance = attr
        .config
        .source_provenance
        .or_else(|| recorded.as_ref().map(|r| r.2))
        .unwrap_or(Provenance::Estimated);
    let reason = recorded.map_or_else(
        || "the recording names no power source".to_string(),
        |r| r.1,
    );
    PowerSourceInfo {
        kind,
        provenance,
        reason,
    }
}

fn basis_name(b: VmShareBasis) -> &'static str {
    match b {
        VmShareBasis::CpuTime => "cpu-time",
        VmShareBasis::EnergyImpact => "energy-impact",
    }
}

fn container_key(vm: &str, id: &str) -> String {
    format!("{vm}/{id}")
}

fn widen(v: u64, ppm: u64) -> Bounded {
    let d = u64::try_from(u128::from(v) * u128::from(ppm) / u128::from(PPM)).unwrap_or(u64::MAX);
    Bounded {
        energy_uj: v,
        low_uj: v.saturating_sub(d),
        high_uj: v.saturating_add(d),
    }
}

fn containers(ledger: &Ledger) -> Vec<ContainerReport> {
    let total: u64 = ledger.containers().map(|(_, t)| t.energy.0).sum();
    let mut out: Vec<ContainerReport> = ledger
        .containers()
        .filter(|(_, t)| t.energy.0 > 0 || t.cpu.0 > 0)
        .map(|(k, t)| {
            let meta = t.meta.as_ref();
            let short: String = k.id.chars().take(SHORT_ID_LEN).collect();
            ContainerReport {
                key: container_key(&k.vm, &k.id),
                vm: k.vm.clone(),
                id: k.id.clone(),
                name: meta
                    .map(|m| m.name.clone())
                    .filter(|n| !n.is_empty())
                    .unwrap_or(short),
                image: meta.map(|m| m.image.clone()).unwrap_or_default(),
                compose_project: meta.and_then(|m| m.compose_project.clone()),
                compose_service: meta.and_then(|m| m.compose_service.clone()),
                energy: Bounded {
                    energy_uj: t.energy.0,
                    low_uj: t.low.0,
                    high_uj: t.high.0,
                },
                share: share_of(t.energy.0, total),
                cpu_us: t.cpu.0,
                carbon_g: None,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.energy
            .energy_uj
            .cmp(&a.energy.energy_uj)
            .then_with(|| a.key.cmp(&b.key))
    });
    out
}

#[allow(clippy::cast_precision_loss)] // seconds for plotting
fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn series_point(w: &WindowReport, t0: u64) -> SeriesPoint {
    let mut containers_uj = BTreeMap::new();
    let mut cpu_us = BTreeMap::new();
    let (mut system, mut overhead) = (0, 0);
    for vm in &w.vms {
        system += vm.system.0;
        overhead += vm.overhead.0;
        for c in &vm.containers {
            let key = container_key(&vm.vm, &c.id);
            *containers_uj.entry(key.clone()).or_insert(0) += c.energy.0;
            *cpu_us.entry(key).or_insert(0) += c.cpu.0;
        }
    }
    let buckets_uj = [
        (BucketKind::VmSystem, system),
        (BucketKind::VmOverhead, overhead),
        (BucketKind::HostOther, w.host_other.0),
        (BucketKind::Idle, w.idle.0),
        (BucketKind::Unattributed, w.unattributed.0),
    ]
    .into_iter()
    .collect();
    SeriesPoint {
        t_start_s: secs(w.start.0.saturating_sub(t0)),
        t_end_s: secs(w.end.0.saturating_sub(t0)),
        host_uj: w.energy.0,
        containers_uj,
        cpu_us,
        buckets_uj,
        degraded: w.flags.degraded
            || w.flags.vm_share_unknown
            || w.flags.power_coverage_ppm < u32::try_from(PPM).expect("10^6 fits u32"),
    }
}

fn notes(attr: &Attribution) -> Vec<String> {
    let q = &attr.quality;
    let mut notes = Vec::new();
    let mut note = |n: u64, what: &str| {
        if n > 0 {
            notes.push(format!("{n} {what}."));
        }
    };
    note(
        q.power_gap_windows,
        "window(s) had partial or no power readings",
    );
    note(
        q.vm_share_unknown_windows,
        "window(s) had no host→VM share; their dynamic energy is unattributed",
    );
    note(
        q.basis_fallback_windows,
        "window(s) fell back from energy impact to CPU time for the VM share",
    );
    note(q.clamped_windows, "window(s) had clamped shares");
    note(q.clock_jumps, "guest clock discontinuity(ies) seen");
    note(
        q.counter_resets,
        "container counter reset(s) (restarts) seen",
    );
    note(q.duplicate_samples, "resent sample(s) ignored");
    note(
        q.orphan_messages,
        "guest message(s) without a Hello ignored",
    );
    note(q.overlapping_power, "overlapping power reading(s) clipped");
    if q.window_shorter_than_sample_period {
        notes.push("An agent samples more slowly than the window is long.".to_string());
    }
    if attr.windows.iter().any(|w| w.flags.idle_estimated) {
        notes.push(
            "Idle power was estimated (no measured baseline); the idle split is a model."
                .to_string(),
        );
    }
    notes
}

/// Build the report of `attr`, computed with `cfg` from `src`.
#[must_use]
pub fn report(attr: &Attribution, cfg: &PipelineConfig, src: &RecordingSource<'_>) -> Report {
    let t0 = attr.windows.first().map_or(0, |w| w.start.0);
    let t1 = attr.windows.last().map_or(t0, |w| w.end.0);
    let power_source = power_source(attr, src.entries);
    let estimated =
        power_source.provenance == Provenance::Estimated || attr.quality.estimated_source;
    let containers = containers(&attr.ledger);
    let sum = |f: fn(&ContainerReport) -> u64| containers.iter().map(f).sum::<u64>();
    let containers_total = Bounded {
        energy_uj: sum(|c| c.energy.energy_uj),
        low_uj: sum(|c| c.energy.low_uj),
        high_uj: sum(|c| c.energy.high_uj),
    };
    let mut buckets: BTreeMap<BucketKind, u64> = BTreeMap::new();
    for (b, v) in attr.ledger.buckets() {
        *buckets.entry(b.kind()).or_insert(0) += v.0;
    }
    let vm_buckets = buckets.get(&BucketKind::VmSystem).copied().unwrap_or(0)
        + buckets.get(&BucketKind::VmOverhead).copied().unwrap_or(0);
    let host_ppm = if estimated {
        cfg.estimated_widen_ppm
    } else {
        0
    };
    Report {
        schema_version: SCHEMA_VERSION,
        generated_by: format!("host-bridge {}", env!("CARGO_PKG_VERSION")),
        recording: recording_info(src),
        power_source,
        policy: attr.config.policy,
        vm_share_basis: basis_name(attr.config.basis).to_string(),
        window_s: secs(attr.config.window_ns),
        duration_s: secs(t1 - t0),
        start_unix_ns: unix_of(src.entries, t0),
        grid_intensity_g_per_kwh: None,
        totals: Totals {
            host: widen(attr.ledger.total().0, host_ppm),
            vm: Bounded {
                energy_uj: containers_total.energy_uj + vm_buckets,
                low_uj: containers_total.low_uj + vm_buckets,
                high_uj: containers_total.high_uj + vm_buckets,
            },
            containers: containers_total,
            buckets: buckets
                .into_iter()
                .map(|(bucket, v)| BucketReport {
                    bucket,
                    energy: widen(v, host_ppm),
                    carbon_g: None,
                })
                .collect(),
            carbon_g: None,
        },
        containers,
        quality: Quality {
            coverage: f64::from(attr.quality.power_coverage_ppm) / 1e6,
            offset_error_ns: attr.quality.max_offset_error_ns,
            degraded_windows: attr.quality.degraded_windows,
            windows: attr.quality.windows,
            estimated,
            sequence_gaps: attr.quality.seq_gaps,
            notes: notes(attr),
        },
        series: attr.windows.iter().map(|w| series_point(w, t0)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{MonoNanos, UnixNanos};

    fn session(mono: u64, unix: u64) -> RecordEntry {
        RecordEntry::Session(crate::journal::SessionStart {
            bridge_version: "t".into(),
            mono: MonoNanos(mono),
            unix: UnixNanos(unix),
            hostname: "h".into(),
            os: "linux".into(),
        })
    }

    #[test]
    fn unix_time_comes_from_the_session_before_the_instant() {
        let entries = [session(100, 1_000), session(500, 9_000)];
        assert_eq!(unix_of(&entries, 150), 1_050);
        assert_eq!(unix_of(&entries, 600), 9_100);
        // Before every session: extrapolate back from the first.
        assert_eq!(unix_of(&entries, 40), 940);
    }

    #[test]
    fn widen_by_ppm_saturates() {
        assert_eq!(
            widen(1_000, 250_000),
            Bounded {
                energy_uj: 1_000,
                low_uj: 750,
                high_uj: 1_250
            }
        );
        assert_eq!(widen(u64::MAX, 250_000).high_uj, u64::MAX);
    }
}
