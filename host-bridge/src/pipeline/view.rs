//! The published view: what the pipeline hands to sinks after every closed window.
//!
//! A [`LedgerView`] is a snapshot of the ledger's cumulative totals plus the power of the last
//! window, with the labels a person needs to read it. The serve wiring publishes one on a
//! `tokio::sync::watch` channel (latest wins); the Prometheus sink and the live view render it
//! and never reach back into the engine.

use protocol::MicroJoules;

use super::{
    BucketKind, Engine, IdlePolicy, Ledger, PipelineConfig, PipelineError, Quality, WindowReport,
};
use crate::journal::{PowerSourceKind, Provenance, RecordEntry};

/// The engine as a live bridge runs it: every entry pushed in order, with the last closed
/// window and the recorded power source remembered, so that a [`LedgerView`] can be
/// published at any moment. `serve` replays its recording into one on start and then feeds
/// it every new entry; tests build their views the same way.
#[derive(Debug)]
pub struct LiveLedger {
    engine: Engine,
    last: Option<WindowReport>,
    source_kind: Option<PowerSourceKind>,
    provenance: Provenance,
}

impl LiveLedger {
    /// A fresh engine with `cfg`.
    ///
    /// # Errors
    /// As [`Engine::new`].
    pub fn new(cfg: PipelineConfig) -> Result<Self, PipelineError> {
        Ok(Self {
            engine: Engine::new(cfg)?,
            last: None,
            source_kind: None,
            provenance: Provenance::Estimated,
        })
    }

    /// Feed one entry; `true` when it closed at least one window (a new view is due).
    pub fn push(&mut self, entry: &RecordEntry) -> bool {
        if let RecordEntry::PowerSource {
            kind, provenance, ..
        } = entry
        {
            self.source_kind = Some(*kind);
            self.provenance = *provenance;
        }
        match self.engine.push(entry).pop() {
            Some(w) => {
                self.last = Some(w);
                true
            }
            None => false,
        }
    }

    /// The engine (its ledger and quality so far).
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The view of everything pushed so far.
    #[must_use]
    pub fn view(&self) -> LedgerView {
        LedgerView::from_ledger(
            self.engine.ledger(),
            self.engine.quality(),
            self.last.as_ref(),
            self.source_kind,
            self.provenance,
            self.engine.config().policy,
        )
    }
}

/// Identity of a container series.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerLabels {
    /// VM name.
    pub vm: String,
    /// Container id.
    pub container_id: String,
    /// Container name.
    pub container_name: String,
    /// Compose project ("" when none).
    pub compose_project: String,
    /// Compose service ("" when none).
    pub compose_service: String,
    /// Image.
    pub image: String,
}

/// One container in the view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerView {
    /// Labels.
    pub labels: ContainerLabels,
    /// Cumulative attributed energy, µJ.
    pub energy_uj: u64,
    /// Cumulative CPU time, µs.
    pub cpu_us: u64,
    /// Average power over the last window, W (`None` before the first window).
    pub power_w: Option<f64>,
}

/// What the pipeline publishes after each window: cumulative ledger totals and the last
/// window's power.
#[derive(Clone, Debug, PartialEq)]
pub struct LedgerView {
    /// Containers.
    pub containers: Vec<ContainerView>,
    /// Cumulative bucket energy, µJ.
    pub buckets: Vec<(BucketKind, u64)>,
    /// Cumulative host energy, µJ.
    pub host_energy_uj: u64,
    /// Host power over the last window, W.
    pub host_power_w: Option<f64>,
    /// Power source kind (`None` before a source was recorded).
    pub source_kind: Option<PowerSourceKind>,
    /// Measured or estimated.
    pub provenance: Provenance,
    /// Idle policy.
    pub policy: IdlePolicy,
    /// Windows attributed.
    pub windows: u64,
    /// Windows attributed with a degraded method.
    pub degraded_windows: u64,
}

impl LedgerView {
    /// An empty view (before the first window).
    #[must_use]
    pub fn empty(
        source_kind: Option<PowerSourceKind>,
        provenance: Provenance,
        policy: IdlePolicy,
    ) -> Self {
        Self {
            containers: Vec::new(),
            buckets: Vec::new(),
            host_energy_uj: 0,
            host_power_w: None,
            source_kind,
            provenance,
            policy,
            windows: 0,
            degraded_windows: 0,
        }
    }
}

impl LedgerView {
    /// The view of a live engine: its ledger (cumulative, rebuilt from the recording after a
    /// restart) and the power of its last closed window.
    #[must_use]
    pub fn from_ledger(
        ledger: &Ledger,
        quality: &Quality,
        last: Option<&WindowReport>,
        source_kind: Option<PowerSourceKind>,
        provenance: Provenance,
        policy: IdlePolicy,
    ) -> Self {
        let last_secs = last.map(|w| w.end.since(w.start) as f64 / 1e9);
        let power = |uj: u64| last_secs.map(|s| MicroJoules(uj).average_watts(s));
        let mut buckets: Vec<(BucketKind, u64)> = Vec::new();
        for (b, v) in ledger.buckets() {
            let bucket = b.kind();
            match buckets.iter_mut().find(|(x, _)| *x == bucket) {
                Some((_, total)) => *total += v.0,
                None => buckets.push((bucket, v.0)),
            }
        }
        Self {
            containers: ledger
                .containers()
                .map(|(k, t)| {
                    let meta = t.meta.as_ref();
                    let last_uj = last.map_or(0, |w| {
                        w.vms
                            .iter()
                            .filter(|v| v.vm == k.vm)
                            .flat_map(|v| &v.containers)
                            .filter(|c| c.id == k.id)
                            .map(|c| c.energy.0)
                            .sum()
                    });
                    ContainerView {
                        labels: ContainerLabels {
                            vm: k.vm.clone(),
                            container_id: k.id.clone(),
                            container_name: meta.map(|m| m.name.clone()).unwrap_or_default(),
                            compose_project: meta
                                .and_then(|m| m.compose_project.clone())
                                .unwrap_or_default(),
                            compose_service: meta
                                .and_then(|m| m.compose_service.clone())
                                .unwrap_or_default(),
                            image: meta.map(|m| m.image.clone()).unwrap_or_default(),
                        },
                        energy_uj: t.energy.0,
                        cpu_us: t.cpu.0,
                        power_w: power(last_uj),
                    }
                })
                .collect(),
            buckets,
            host_energy_uj: ledger.total().0,
            host_power_w: last.and_then(|w| power(w.energy.0)),
            source_kind,
            provenance,
            policy,
            windows: ledger.windows(),
            degraded_windows: quality.degraded_windows,
        }
    }
}
