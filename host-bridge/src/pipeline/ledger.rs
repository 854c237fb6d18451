//! The ledger: cumulative energy per (VM, container) and per bucket, in integer µJ.
//!
//! Entries are never removed: an exited or restarted container keeps its total (the key is the
//! container id within its VM name, so a VM reboot continues the same rows). Every joule of
//! every closed window lands in exactly one row or bucket, so
//! `Σ containers + Σ buckets == total` holds at all times ([`Ledger::conserved`]).

use std::collections::BTreeMap;

use protocol::{ContainerInfo, ContainerState, CpuMicros, MicroJoules};
use serde::{Deserialize, Serialize};

use super::WindowReport;

/// Key of a container row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContainerKey {
    /// VM name (from the agent's Hello).
    pub vm: String,
    /// Container id.
    pub id: String,
}

/// Energy that belongs to no container.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Bucket {
    /// Guest work outside containers (kernel, dockerd, containerd), per VM.
    VmSystem(String),
    /// VM process host CPU the guest never saw as busy (virtio, exits), per VM.
    VmOverhead(String),
    /// Host energy outside the VMs.
    HostOther,
    /// Idle energy kept apart (policy `exclude`, or nothing to spread it over).
    Idle,
    /// Energy that could not be split (degraded windows, unknown shares, no guest data).
    Unattributed,
}

impl Bucket {
    /// Which kind of bucket this is (the per-VM ones without their VM).
    #[must_use]
    pub fn kind(&self) -> BucketKind {
        match self {
            Self::VmSystem(_) => BucketKind::VmSystem,
            Self::VmOverhead(_) => BucketKind::VmOverhead,
            Self::HostOther => BucketKind::HostOther,
            Self::Idle => BucketKind::Idle,
            Self::Unattributed => BucketKind::Unattributed,
        }
    }

    /// The bucket's name as shown to users (`vm-system`, `vm-overhead`, `host-other`, `idle`,
    /// `unattributed`).
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }
}

/// The kinds of [`Bucket`]: what reports, `/metrics` and the live view group energy by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BucketKind {
    /// VM CPU time outside any container (guest kernel, dockerd, containerd).
    VmSystem,
    /// The VM's hypervisor overhead on the host.
    VmOverhead,
    /// Host processes other than the VM.
    HostOther,
    /// Idle power kept apart (policy `exclude`, or nothing to spread it over).
    Idle,
    /// Energy that could not be attributed (missing samples, gaps).
    Unattributed,
}

impl BucketKind {
    /// Every kind, in display order.
    pub const ALL: [Self; 5] = [
        Self::VmSystem,
        Self::VmOverhead,
        Self::HostOther,
        Self::Idle,
        Self::Unattributed,
    ];

    /// The label value (`vm-system`, …).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VmSystem => "vm-system",
            Self::VmOverhead => "vm-overhead",
            Self::HostOther => "host-other",
            Self::Idle => "idle",
            Self::Unattributed => "unattributed",
        }
    }
}

/// What the container engine said about a container (latest).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMeta {
    /// Name without the leading `/`.
    pub name: String,
    /// Image.
    pub image: String,
    /// `com.docker.compose.project`.
    pub compose_project: Option<String>,
    /// `com.docker.compose.service`.
    pub compose_service: Option<String>,
    /// Lifecycle state.
    pub state: ContainerState,
}

/// Cumulative totals of one container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerTotals {
    /// Energy under the configured policy.
    pub energy: MicroJoules,
    /// Σ of window lower bounds.
    pub low: MicroJoules,
    /// Σ of window upper bounds.
    pub high: MicroJoules,
    /// CPU time attributed in closed windows.
    pub cpu: CpuMicros,
    /// Counter resets seen (container restarts).
    pub restarts: u32,
    /// Metadata, when the agent sent some.
    pub meta: Option<ContainerMeta>,
}

/// Cumulative energy per container and per bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    containers: BTreeMap<ContainerKey, ContainerTotals>,
    buckets: BTreeMap<Bucket, MicroJoules>,
    total: MicroJoules,
    windows: u64,
}

impl Ledger {
    /// Add one closed window.
    pub fn apply(&mut self, w: &WindowReport) {
        // Saturating: a corrupt recording must not panic the bridge (conservation then fails
        // visibly through `conserved`).
        self.total = self.total.saturating_add(w.energy);
        self.windows += 1;
        for vm in &w.vms {
            for c in &vm.containers {
                let row = self.row(&vm.vm, &c.id);
                row.energy = row.energy.saturating_add(c.energy);
                row.low = row.low.saturating_add(c.low);
                row.high = row.high.saturating_add(c.high);
                row.cpu = row.cpu.saturating_add(c.cpu);
            }
            self.add(Bucket::VmSystem(vm.vm.clone()), vm.system);
            self.add(Bucket::VmOverhead(vm.vm.clone()), vm.overhead);
        }
        self.add(Bucket::HostOther, w.host_other);
        self.add(Bucket::Idle, w.idle);
        self.add(Bucket::Unattributed, w.unattributed);
    }

    fn add(&mut self, bucket: Bucket, v: MicroJoules) {
        if v.0 > 0 {
            let slot = self.buckets.entry(bucket).or_default();
            *slot = slot.saturating_add(v);
        }
    }

    fn row(&mut self, vm: &str, id: &str) -> &mut ContainerTotals {
        // Once per container per window (not per sample): the key allocation does not matter.
        let key = ContainerKey {
            vm: vm.to_owned(),
            id: id.to_owned(),
        };
        self.containers.entry(key).or_default()
    }

    /// Record container metadata from a `Containers` message.
    pub fn set_meta(&mut self, vm: &str, info: &ContainerInfo) {
        self.row(vm, &info.id).meta = Some(ContainerMeta {
            name: info.name.clone(),
            image: info.image.clone(),
            compose_project: info.compose_project.clone(),
            compose_service: info.compose_service.clone(),
            state: info.state,
        });
    }

    /// Count a counter reset (restart) of a container.
    pub fn note_restart(&mut self, vm: &str, id: &str) {
        self.row(vm, id).restarts += 1;
    }

    /// Every container row, ordered by (VM, id).
    pub fn containers(&self) -> impl Iterator<Item = (&ContainerKey, &ContainerTotals)> {
        self.containers.iter()
    }

    /// One container row.
    #[must_use]
    pub fn container(&self, vm: &str, id: &str) -> Option<&ContainerTotals> {
        self.containers.get(&ContainerKey {
            vm: vm.to_owned(),
            id: id.to_owned(),
        })
    }

    /// Every non-zero bucket.
    pub fn buckets(&self) -> impl Iterator<Item = (&Bucket, MicroJoules)> {
        self.buckets.iter().map(|(b, v)| (b, *v))
    }

    /// One bucket (zero when never used).
    #[must_use]
    pub fn bucket(&self, bucket: &Bucket) -> MicroJoules {
        self.buckets.get(bucket).copied().unwrap_or_default()
    }

    /// Host energy of all closed windows.
    #[must_use]
    pub fn total(&self) -> MicroJoules {
        self.total
    }

    /// Closed windows.
    #[must_use]
    pub fn windows(&self) -> u64 {
        self.windows
    }

    /// Whether Σ containers + Σ buckets equals the total exactly.
    #[must_use]
    pub fn conserved(&self) -> bool {
        let c: u128 = self
            .containers
            .values()
            .map(|t| u128::from(t.energy.0))
            .sum();
        let b: u128 = self.buckets.values().map(|v| u128::from(v.0)).sum();
        c + b == u128::from(self.total.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{ContainerWindow, VmShareBasis, VmWindow, WindowFlags};
    use protocol::MonoNanos;

    #[test]
    fn totals_survive_exit_and_accumulate() {
        let w = WindowReport {
            start: MonoNanos(0),
            end: MonoNanos(10),
            energy: MicroJoules(100),
            idle_estimate: MicroJoules(0),
            vms: vec![VmWindow {
                vm: "vm".into(),
                busy: CpuMicros(10),
                system: MicroJoules(10),
                overhead: MicroJoules(0),
                containers: vec![ContainerWindow {
                    id: "a".into(),
                    energy: MicroJoules(60),
                    low: MicroJoules(50),
                    high: MicroJoules(70),
                    cpu: CpuMicros(6),
                }],
                guest_coverage_ppm: 1_000_000,
                degraded: false,
            }],
            host_other: MicroJoules(30),
            idle: MicroJoules(0),
            unattributed: MicroJoules(0),
            basis: VmShareBasis::CpuTime,
            flags: WindowFlags::default(),
        };
        let mut l = Ledger::default();
        l.apply(&w);
        l.set_meta(
            "vm",
            &ContainerInfo {
                id: "a".into(),
                name: "web".into(),
                state: ContainerState::Exited,
                ..ContainerInfo::default()
            },
        );
        l.apply(&w);
        let a = l.container("vm", "a").unwrap();
        assert_eq!(a.energy, MicroJoules(120));
        assert_eq!(a.meta.as_ref().unwrap().state, ContainerState::Exited);
        assert_eq!(l.bucket(&Bucket::HostOther), MicroJoules(60));
        assert_eq!(l.total(), MicroJoules(200));
        assert!(l.conserved());
    }
}
