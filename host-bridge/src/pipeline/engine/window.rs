//! Closing one window: the host side from the power timeline, each VM's part from its
//! counters, the host → VM share, and the exact split (DESIGN.md §7.3, §7.5).

use protocol::{CpuMicros, MicroJoules, MonoNanos};

use super::power::HostWindow;
use super::vm::VmPart;
use super::{Engine, NS_PER_MS, PPM, ratio_ppm};
use crate::pipeline::apportion::{self, Share, VmInput, WindowInput, WindowSplit};
use crate::pipeline::{
    ContainerWindow, IdleModel, VmShareBasis, VmWindow, WindowFlags, WindowReport,
};

/// Idle energy of a window under `model` (never more than the window's energy).
fn idle_energy(model: IdleModel, host: &HostWindow) -> MicroJoules {
    match model {
        IdleModel::Baseline { idle_mw } => {
            // mW × ns / 1e6 = µJ.
            MicroJoules(idle_mw)
                .prorate(host.covered_ns, NS_PER_MS)
                .min(host.energy)
        }
        IdleModel::EstimatedFraction { permille } => host.energy.prorate(u64::from(permille), 1000),
    }
}

/// A VM's busy time scaled to the power-covered part of the window.
///
/// When a VM's samples and the power readings cover different parts of the window (the VM's
/// first or last window, a power gap), its busy time is scaled to the power-covered part for
/// the host-level uses (overhead, fallback share, split between VMs), so that it is neither
/// under- nor overstated. The split inside the VM uses the measured deltas.
fn scaled_busy(part: &VmPart, covered_ns: u64) -> CpuMicros {
    if part.span_ns == 0 || covered_ns == 0 || part.span_ns == covered_ns {
        return part.busy;
    }
    part.busy.prorate(covered_ns, part.span_ns)
}

impl Engine {
    /// Close `[a, b]`: integrate power, take every VM's part, split, count quality.
    pub(super) fn close_window(&mut self, a: u64, b: u64) -> WindowReport {
        let window_ns = self.window_ns;
        let host = self.power.close_window(a, b);
        self.covered_ns += u128::from(host.covered_ns);
        self.window_total_ns += u128::from(window_ns);
        let idle = idle_energy(self.cfg.idle, &host);

        let parts: Vec<(usize, VmPart)> = self
            .vms
            .iter_mut()
            .enumerate()
            .filter_map(|(i, vm)| vm.close_window(a, b, window_ns).map(|p| (i, p)))
            .collect();
        let scaled: Vec<CpuMicros> = parts
            .iter()
            .map(|(_, p)| scaled_busy(p, host.covered_ns))
            .collect();

        let mut flags = WindowFlags {
            power_coverage_ppm: ratio_ppm(u128::from(host.covered_ns), u128::from(window_ns)),
            estimated_source: host.estimated,
            idle_estimated: matches!(self.cfg.idle, IdleModel::EstimatedFraction { .. }),
            ..WindowFlags::default()
        };
        let guest_busy_ns = scaled
            .iter()
            .copied()
            .sum::<CpuMicros>()
            .0
            .saturating_mul(1_000);
        let (share, basis) = self.vm_share(&host, guest_busy_ns, &mut flags);
        let reserved_share = host.host.filter(|h| h.den > 0).map(|h| {
            let vcpus: u64 = parts
                .iter()
                .map(|(i, _)| u64::from(self.vms[*i].cpus))
                .sum();
            Share {
                num: u64::try_from(u128::from(vcpus) * u128::from(host.covered_ns))
                    .unwrap_or(u64::MAX),
                den: h.den,
            }
        });
        flags.offset_error_ns = parts
            .iter()
            .map(|(_, p)| p.offset_error_ns)
            .max()
            .unwrap_or(0);
        let mut widen = u64::try_from(
            u128::from(flags.offset_error_ns) * 2 * u128::from(PPM) / u128::from(window_ns),
        )
        .unwrap_or(PPM);
        if host.estimated {
            widen = widen.saturating_add(self.cfg.estimated_widen_ppm);
        }
        flags.degraded = parts.iter().any(|(_, p)| p.degraded);

        let inputs: Vec<VmInput<'_>> = parts
            .iter()
            .zip(&scaled)
            .map(|((i, p), scaled_busy)| VmInput {
                busy_us: p.busy.0,
                scaled_busy_us: scaled_busy.0,
                usage_us: &p.usage_us,
                reserve: &p.reserve,
                vm_reserve: u64::from(self.vms[*i].cpus.max(1)),
                degraded: p.degraded,
            })
            .collect();
        let split = apportion::split_window(&WindowInput {
            energy: host.energy,
            idle,
            vm_share: share,
            vm_cpu_ns: host.vm_cpu.map(|s| s.num),
            reserved_share,
            policy: self.cfg.policy,
            widen_ppm: widen,
            vms: &inputs,
        });
        flags.clamped = split.clamped;
        debug_assert_eq!(split.total(), host.energy, "conservation");

        let vms = self.vm_windows(&parts, &split);
        self.count_window(&flags, host.covered_ns);
        WindowReport {
            start: MonoNanos(a),
            end: MonoNanos(b),
            energy: host.energy,
            idle_estimate: idle,
            vms,
            host_other: split.host_other,
            idle: split.idle,
            unattributed: split.unattributed,
            basis,
            flags,
        }
    }

    /// The host → VM share of the window and the basis it was computed on (DESIGN.md §7.3
    /// step 2): the source's VM CPU share, else guest busy time against host busy time (or
    /// capacity when the host reports no busy time); energy impact when asked for and known.
    fn vm_share(
        &self,
        host: &HostWindow,
        guest_busy_ns: u64,
        flags: &mut WindowFlags,
    ) -> (Option<Share>, VmShareBasis) {
        let cpu_share = host.vm_cpu.filter(|s| s.den > 0).or_else(|| {
            host.host
                .map(|h| Share {
                    num: guest_busy_ns,
                    den: if h.num > 0 {
                        h.num.max(guest_busy_ns)
                    } else {
                        h.den
                    },
                })
                .filter(|s| s.den > 0)
        });
        let chosen = match self.cfg.vm_share_basis {
            VmShareBasis::EnergyImpact => match host.impact.filter(|s| s.den > 0) {
                Some(s) => (Some(s), VmShareBasis::EnergyImpact),
                // Nothing to split: nothing fell back.
                None if host.energy == MicroJoules::ZERO => (cpu_share, VmShareBasis::EnergyImpact),
                None => {
                    flags.basis_fallback = true;
                    (cpu_share, VmShareBasis::CpuTime)
                }
            },
            VmShareBasis::CpuTime => (cpu_share, VmShareBasis::CpuTime),
        };
        flags.vm_share_unknown = chosen.0.is_none() && host.energy > MicroJoules::ZERO;
        chosen
    }

    /// The per-VM rows of the report: containers with CPU time or a non-zero bound.
    fn vm_windows(&self, parts: &[(usize, VmPart)], split: &WindowSplit) -> Vec<VmWindow> {
        parts
            .iter()
            .zip(split.vms.iter())
            .map(|((i, p), shares)| {
                let vm = &self.vms[*i];
                let containers = shares
                    .containers
                    .iter()
                    .enumerate()
                    .filter(|&(s, c)| p.usage_us[s] > 0 || c.high > MicroJoules::ZERO)
                    .map(|(s, c)| ContainerWindow {
                        id: vm.ids[s].clone(),
                        energy: c.energy,
                        low: c.low,
                        high: c.high,
                        cpu: CpuMicros(p.usage_us[s]),
                    })
                    .collect();
                VmWindow {
                    vm: vm.name.clone(),
                    busy: p.busy,
                    system: shares.system,
                    overhead: shares.overhead,
                    containers,
                    guest_coverage_ppm: p.coverage_ppm,
                    degraded: p.degraded,
                }
            })
            .collect()
    }

    fn count_window(&mut self, flags: &WindowFlags, covered_ns: u64) {
        let q = &mut self.quality;
        q.windows += 1;
        q.degraded_windows += u64::from(flags.degraded);
        q.power_gap_windows += u64::from(covered_ns < self.window_ns);
        q.vm_share_unknown_windows += u64::from(flags.vm_share_unknown);
        q.basis_fallback_windows += u64::from(flags.basis_fallback);
        q.clamped_windows += u64::from(flags.clamped);
    }
}
