//! Apportionment: the pure, integer two-level split of one window (DESIGN.md §7.3–§7.6).
//!
//! Nothing here knows about clocks, streams or files: [`split_window`] takes the window's host
//! energy, the shares and the per-container CPU deltas and returns every part in integer µJ.
//! Every split goes through [`split_exact`] (largest remainder), so the parts sum to the whole
//! exactly, in every window, whatever the weights.

use protocol::MicroJoules;

use super::IdlePolicy;

/// Split `total` by integer weights so that the parts sum to `total` exactly (largest-remainder
/// method; ties go to the lower index, so results are reproducible). All-zero weights → `None`.
#[must_use]
pub fn split_exact(total: u64, weights: &[u64]) -> Option<Vec<u64>> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if sum == 0 {
        return None;
    }
    let mut parts = Vec::with_capacity(weights.len());
    let mut rems = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let num = u128::from(total) * u128::from(w);
        parts.push(u64::try_from(num / sum).expect("a part never exceeds the total"));
        rems.push((num % sum, i));
    }
    let short = total - parts.iter().sum::<u64>();
    if short > 0 {
        rems.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, i) in rems
            .iter()
            .take(usize::try_from(short).expect("short < number of weights"))
        {
            parts[i] += 1;
        }
    }
    Some(parts)
}

/// Split `total` in two by `num / den` (clamped to `[0, 1]`): returns `(share, rest)`.
/// `den == 0` → `None`.
#[must_use]
pub fn split_ratio(total: u64, num: u64, den: u64) -> Option<(u64, u64)> {
    let num = num.min(den);
    let parts = split_exact(total, &[num, den - num])?;
    Some((parts[0], parts[1]))
}

/// A fraction `num / den` (both non-negative integers in the same unit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    /// Numerator.
    pub num: u64,
    /// Denominator; `0` means "no information".
    pub den: u64,
}

/// The guest side of one VM in one window.
#[derive(Clone, Copy, Debug)]
pub struct VmInput<'a> {
    /// U: Δ guest busy time (user + nice + system + irq + softirq; no steal, no guest), µs.
    /// Splits the VM's energy between containers and `vm-system`.
    pub busy_us: u64,
    /// U scaled to the power-covered part of the window (equal to `busy_us` when the VM's
    /// samples cover the same time as the power readings). Used at host level: VM overhead
    /// and the split between VMs.
    pub scaled_busy_us: u64,
    /// u_c: Δ`usage_usec` per container slot, µs.
    pub usage_us: &'a [u64],
    /// Reservation weight per container slot (CPU limit in millicores, else the VM's capacity;
    /// `0` = not running in this window). Used by [`IdlePolicy::Reserved`].
    pub reserve: &'a [u64],
    /// Reservation weight of the VM as a whole against other VMs (its vCPU count).
    pub vm_reserve: u64,
    /// The window is not trustworthy for this VM (pause, sleep, no guest data): its share goes
    /// to `unattributed`.
    pub degraded: bool,
}

/// Everything the split of one window needs.
#[derive(Clone, Copy, Debug)]
pub struct WindowInput<'a> {
    /// E_H: host energy of the window.
    pub energy: MicroJoules,
    /// E_idle: the idle part of `energy` (≤ `energy`).
    pub idle: MicroJoules,
    /// s_VM: the VMs' share of the host's dynamic energy; `None` = unknown.
    pub vm_share: Option<Share>,
    /// Host CPU time of the VM process(es) in ns (for the VM overhead), when the source sees it.
    pub vm_cpu_ns: Option<u64>,
    /// The VMs' share of host idle under [`IdlePolicy::Reserved`].
    pub reserved_share: Option<Share>,
    /// The idle policy that decides the headline value.
    pub policy: IdlePolicy,
    /// Bounds widening in parts per million (alignment error, estimated source).
    pub widen_ppm: u64,
    /// The VMs.
    pub vms: &'a [VmInput<'a>],
}

/// One container's part of one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerPart {
    /// Energy under the configured idle policy.
    pub energy: MicroJoules,
    /// Lower bound: dynamic-only share, widened.
    pub low: MicroJoules,
    /// Upper bound: dynamic + usage-proportional idle, widened.
    pub high: MicroJoules,
}

/// One VM's parts of one window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmParts {
    /// Per container slot (same order as [`VmInput::usage_us`]).
    pub containers: Vec<ContainerPart>,
    /// Guest work outside containers (kernel, dockerd, containerd).
    pub system: MicroJoules,
    /// VM process CPU the guest never saw as busy (virtio, exits).
    pub overhead: MicroJoules,
}

/// The result of splitting one window. The parts sum to `WindowInput::energy` exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowSplit {
    /// Per VM (same order as [`WindowInput::vms`]).
    pub vms: Vec<VmParts>,
    /// Host energy outside the VMs.
    pub host_other: MicroJoules,
    /// Idle energy kept as its own bucket.
    pub idle: MicroJoules,
    /// Energy that could not be split (degraded window, unknown share, no guest data).
    pub unattributed: MicroJoules,
    /// Σ u_c exceeded U in some VM, or U exceeded the VM's host CPU time: shares were clamped.
    pub clamped: bool,
}

impl WindowSplit {
    /// Sum of every part (equals the window energy by construction).
    #[must_use]
    pub fn total(&self) -> MicroJoules {
        let vms: MicroJoules = self
            .vms
            .iter()
            .map(|v| v.system + v.overhead + v.containers.iter().map(|c| c.energy).sum())
            .sum();
        vms + self.host_other + self.idle + self.unattributed
    }
}

/// How the VMs' energy of one kind is spread inside the VMs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spread {
    /// By CPU usage (dynamic energy, proportional idle).
    Usage,
    /// By reservation (reserved idle).
    Reservation,
}

/// Per-VM result of spreading one amount: container parts, system, overhead, unattributed.
struct Spreaded {
    containers: Vec<Vec<u64>>,
    system: Vec<u64>,
    overhead: Vec<u64>,
    unattributed: u64,
    clamped: bool,
}

/// Spread `amount` (the VMs' energy of one kind) over the VMs, their overhead, their containers
/// and their system bucket.
fn spread(amount: u64, input: &WindowInput<'_>, how: Spread) -> Spreaded {
    let n = input.vms.len();
    let mut out = Spreaded {
        containers: input
            .vms
            .iter()
            .map(|v| vec![0; v.usage_us.len()])
            .collect(),
        system: vec![0; n],
        overhead: vec![0; n],
        unattributed: 0,
        clamped: false,
    };
    if amount == 0 {
        return out;
    }
    let vm_weights: Vec<u64> = input
        .vms
        .iter()
        .map(|v| match how {
            Spread::Usage => v.scaled_busy_us,
            Spread::Reservation => v.vm_reserve,
        })
        .collect();
    // VM overhead first (usage spread only): the VM process's host CPU time beyond what the
    // guests saw as busy.
    let mut guest_amount = amount;
    let mut overhead_total = 0;
    if how == Spread::Usage
        && let Some(vm_cpu_ns) = input.vm_cpu_ns
    {
        let busy_ns: u64 = vm_weights
            .iter()
            .fold(0u64, |acc, &w| acc.saturating_add(w))
            .saturating_mul(1_000);
        if vm_cpu_ns > 0 {
            if busy_ns > vm_cpu_ns {
                out.clamped = true;
            }
            let over = vm_cpu_ns.saturating_sub(busy_ns);
            let (o, g) = split_ratio(amount, over, vm_cpu_ns).expect("den > 0");
            overhead_total = o;
            guest_amount = g;
        }
    }
    let Some(per_vm) = split_exact(guest_amount, &vm_weights) else {
        // No guest activity (or no reservation) anywhere: nothing to split by.
        out.unattributed = amount;
        return out;
    };
    if overhead_total > 0 {
        let ovh = split_exact(overhead_total, &vm_weights).expect("weights are not all zero");
        out.overhead = ovh;
    }
    for (i, (vm, &share)) in input.vms.iter().zip(per_vm.iter()).enumerate() {
        if vm.degraded {
            out.unattributed += share + out.overhead[i];
            out.overhead[i] = 0;
            continue;
        }
        match how {
            Spread::Usage => {
                let used: u64 = vm
                    .usage_us
                    .iter()
                    .fold(0u64, |acc, &u| acc.saturating_add(u));
                if used > vm.busy_us {
                    out.clamped = true;
                }
                let mut weights = Vec::with_capacity(vm.usage_us.len() + 1);
                weights.extend_from_slice(vm.usage_us);
                weights.push(vm.busy_us.saturating_sub(used));
                match split_exact(share, &weights) {
                    Some(mut parts) => {
                        out.system[i] = parts.pop().expect("one weight per container + system");
                        out.containers[i] = parts;
                    }
                    None => out.system[i] = share,
                }
            }
            Spread::Reservation => match split_exact(share, vm.reserve) {
                Some(parts) => out.containers[i] = parts,
                None => out.system[i] = share,
            },
        }
    }
    out
}

fn widen_down(v: u64, ppm: u64) -> u64 {
    let cut = u128::from(v) * u128::from(ppm) / 1_000_000;
    v.saturating_sub(u64::try_from(cut).unwrap_or(u64::MAX))
}

fn widen_up(v: u64, ppm: u64) -> u64 {
    let add = (u128::from(v) * u128::from(ppm)).div_ceil(1_000_000);
    v.saturating_add(u64::try_from(add).unwrap_or(u64::MAX))
}

/// The two-level split of one window: host energy → idle and dynamic → the VMs' share →
/// VM overhead → per VM → containers by CPU-usage delta, the rest to the VM's system bucket.
///
/// The headline value of each container follows `input.policy`; `low` is always the
/// dynamic-only share and `high` the share with usage-proportional idle (both widened by
/// `input.widen_ppm`, and stretched to include the headline value).
#[must_use]
pub fn split_window(input: &WindowInput<'_>) -> WindowSplit {
    let energy = input.energy.0;
    let idle = input.idle.0.min(energy);
    let dynamic = energy - idle;
    let mut out = WindowSplit {
        vms: input
            .vms
            .iter()
            .map(|v| VmParts {
                containers: vec![ContainerPart::default(); v.usage_us.len()],
                system: MicroJoules::ZERO,
                overhead: MicroJoules::ZERO,
            })
            .collect(),
        ..WindowSplit::default()
    };

    // Level 1: host → VMs, for dynamic energy and for idle under each policy.
    let share = input.vm_share.filter(|s| s.den > 0);
    let Some(share) = share else {
        // Unknown host→VM share: dynamic energy cannot be placed; idle stays idle.
        out.unattributed = MicroJoules(dynamic);
        out.idle = MicroJoules(idle);
        return out;
    };
    if share.num > share.den {
        out.clamped = true;
    }
    let (vm_dyn, host_dyn) = split_ratio(dynamic, share.num, share.den).expect("den > 0");
    let (vm_idle_prop, host_idle_prop) = split_ratio(idle, share.num, share.den).expect("den > 0");
    out.host_other += MicroJoules(host_dyn);

    let dyn_parts = spread(vm_dyn, input, Spread::Usage);
    let prop_parts = spread(vm_idle_prop, input, Spread::Usage);
    out.clamped |= dyn_parts.clamped || prop_parts.clamped;
    out.unattributed += MicroJoules(dyn_parts.unattributed);

    // Headline idle by policy.
    let idle_parts = match input.policy {
        IdlePolicy::Exclude => {
            out.idle += MicroJoules(idle);
            None
        }
        IdlePolicy::Proportional => {
            out.host_other += MicroJoules(host_idle_prop);
            out.unattributed += MicroJoules(prop_parts.unattributed);
            Some(&prop_parts)
        }
        IdlePolicy::Reserved => None,
    };
    let reserved_parts = if input.policy == IdlePolicy::Reserved {
        match input.reserved_share.or(Some(share)).filter(|s| s.den > 0) {
            Some(r) => {
                let (vm_idle, host_idle) = split_ratio(idle, r.num, r.den).expect("den > 0");
                out.host_other += MicroJoules(host_idle);
                let parts = spread(vm_idle, input, Spread::Reservation);
                out.unattributed += MicroJoules(parts.unattributed);
                Some(parts)
            }
            None => {
                out.idle += MicroJoules(idle);
                None
            }
        }
    } else {
        None
    };
    let headline_idle = idle_parts.or(reserved_parts.as_ref());

    for (i, vm) in out.vms.iter_mut().enumerate() {
        vm.system = MicroJoules(dyn_parts.system[i]);
        vm.overhead = MicroJoules(dyn_parts.overhead[i]);
        if let Some(p) = headline_idle {
            vm.system += MicroJoules(p.system[i]);
            vm.overhead += MicroJoules(p.overhead[i]);
        }
        for (c, part) in vm.containers.iter_mut().enumerate() {
            let dyn_c = dyn_parts.containers[i][c];
            let prop_c = dyn_c + prop_parts.containers[i][c];
            let value = dyn_c + headline_idle.map_or(0, |p| p.containers[i][c]);
            *part = ContainerPart {
                energy: MicroJoules(value),
                low: MicroJoules(widen_down(dyn_c.min(value), input.widen_ppm)),
                high: MicroJoules(widen_up(prop_c.max(value), input.widen_ppm)),
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_exact_sums_and_breaks_ties_by_index() {
        assert_eq!(split_exact(10, &[1, 1, 1]), Some(vec![4, 3, 3]));
        assert_eq!(split_exact(0, &[5, 7]), Some(vec![0, 0]));
        assert_eq!(split_exact(7, &[0, 0]), None);
        assert_eq!(
            split_exact(u64::MAX, &[u64::MAX, 1]).map(|p| p.iter().sum::<u64>()),
            Some(u64::MAX)
        );
    }

    fn vm<'a>(busy: u64, usage: &'a [u64], reserve: &'a [u64]) -> VmInput<'a> {
        VmInput {
            busy_us: busy,
            scaled_busy_us: busy,
            usage_us: usage,
            reserve,
            vm_reserve: 4,
            degraded: false,
        }
    }

    #[test]
    fn two_level_split_follows_the_formula() {
        let usage = [300, 100];
        let reserve = [1000, 1000];
        let vms = [vm(500, &usage, &reserve)];
        let input = WindowInput {
            energy: MicroJoules(10_000),
            idle: MicroJoules(2_000),
            vm_share: Some(Share { num: 1, den: 2 }),
            vm_cpu_ns: Some(1_000_000),
            reserved_share: None,
            policy: IdlePolicy::Exclude,
            widen_ppm: 0,
            vms: &vms,
        };
        let out = split_window(&input);
        assert_eq!(out.total(), MicroJoules(10_000));
        assert_eq!(out.idle, MicroJoules(2_000));
        assert_eq!(out.host_other, MicroJoules(4_000));
        // VM 4000; overhead = (1 ms − 0.5 ms) / 1 ms = half.
        assert_eq!(out.vms[0].overhead, MicroJoules(2_000));
        assert_eq!(out.vms[0].containers[0].energy, MicroJoules(1_200));
        assert_eq!(out.vms[0].containers[1].energy, MicroJoules(400));
        assert_eq!(out.vms[0].system, MicroJoules(400));
        // high adds the proportional idle share: VM gets 1000 of idle, container 0: 300/1000.
        assert_eq!(out.vms[0].containers[0].high, MicroJoules(1_500));
        assert_eq!(out.vms[0].containers[0].low, MicroJoules(1_200));
    }

    #[test]
    fn degraded_vm_goes_to_unattributed() {
        let usage = [300];
        let reserve = [1000];
        let mut v = vm(300, &usage, &reserve);
        v.degraded = true;
        let vms = [v];
        let input = WindowInput {
            energy: MicroJoules(999),
            idle: MicroJoules(0),
            vm_share: Some(Share { num: 1, den: 1 }),
            vm_cpu_ns: None,
            reserved_share: None,
            policy: IdlePolicy::Proportional,
            widen_ppm: 0,
            vms: &vms,
        };
        let out = split_window(&input);
        assert_eq!(out.unattributed, MicroJoules(999));
        assert_eq!(out.total(), MicroJoules(999));
    }

    #[test]
    fn reserved_idle_goes_by_reservation() {
        let usage = [100, 0];
        let reserve = [1000, 3000];
        let vms = [vm(100, &usage, &reserve)];
        let input = WindowInput {
            energy: MicroJoules(4_000),
            idle: MicroJoules(4_000),
            vm_share: Some(Share { num: 1, den: 1 }),
            vm_cpu_ns: None,
            reserved_share: Some(Share { num: 1, den: 1 }),
            policy: IdlePolicy::Reserved,
            widen_ppm: 0,
            vms: &vms,
        };
        let out = split_window(&input);
        assert_eq!(out.vms[0].containers[0].energy, MicroJoules(1_000));
        assert_eq!(out.vms[0].containers[1].energy, MicroJoules(3_000));
        // The headline lies inside the bounds even when it exceeds the proportional share.
        assert!(out.vms[0].containers[1].high >= MicroJoules(3_000));
        assert_eq!(out.total(), MicroJoules(4_000));
    }
}
