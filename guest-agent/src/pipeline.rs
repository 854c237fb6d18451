//! The sampling loop: one tick, one blocking pass, one [`Sample`].
//!
//! ```text
//! interval (MissedTickBehavior::Skip)
//!   └─► spawn_blocking: apply pending cgroup (un)tracking, rescan when due,
//!       read /proc/stat, read every tracked cgroup  ──► Sample{seq, clock, vm, containers}
//!   └─► try_send to the stream sink (bounded; full = drop this newest sample, counted:
//!       counters are cumulative, the next sample carries its CPU time; `seq` shows the gap)
//! Docker registry events ──► container table (watch) + tracking changes;
//!   Died = an immediate extra sample that reads the dying container's cgroup first, while
//!   the engine may still be removing it; the container stays tracked until its cgroup is
//!   gone, and the sample that finds it gone sends its final counters, completed from the
//!   parent cgroup (`sources::cgroup`), once.
//! ```
//!
//! Sequence numbers count samples *taken*, so a drop anywhere shows as a gap at the bridge.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use protocol::{ContainerCounters, ContainerState, Sample};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock;
use crate::sinks::ContainerTable;
use crate::sources::cgroup::{CgroupError, CgroupMounts, CgroupSampler, Completion, Departure};
use crate::sources::docker::RegistryEvent;
use crate::sources::procfs::{self, ProcError, ProcStatReader};

/// How often container cgroups are looked for (and explicit paths retried), at least.
pub const RESCAN_PERIOD: Duration = Duration::from_secs(5);

/// Failures of setting the pipeline up. Per-tick problems are logged, not returned.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The cgroup mount table could not be read.
    #[error("failed to discover cgroup mounts")]
    Mounts(#[source] CgroupError),
    /// A `--cgroup` path is not usable.
    #[error("invalid --cgroup {path:?}")]
    Explicit {
        /// The path given.
        path: String,
        /// Why.
        #[source]
        source: CgroupError,
    },
    /// `/proc/stat` or an identity file could not be read.
    #[error("failed to read procfs")]
    Proc(#[source] ProcError),
    /// The blocking sampling task panicked.
    #[error("the sampling task panicked")]
    Join(#[source] tokio::task::JoinError),
}

/// Counters of the pipeline, shared for logs and tests.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Samples taken.
    pub taken: AtomicU64,
    /// Samples dropped because the sink's queue was full.
    pub queue_dropped: AtomicU64,
}

/// Everything the blocking pass touches. Moved into `spawn_blocking` and back every tick, so
/// no lock is ever held.
#[derive(Debug)]
pub struct Sampling {
    cgroups: CgroupSampler,
    proc_stat: ProcStatReader,
    /// Walk the hierarchies for containers (false: only `explicit` and Docker's).
    discover: bool,
    /// `--cgroup` paths; with `discover` off they are tracked by path directly.
    explicit: Vec<String>,
    ticks_per_rescan: u64,
    ticks: u64,
    /// Reused for every sample's container list.
    buf: Vec<ContainerCounters>,
}

#[derive(Debug)]
enum TrackOp {
    Track { id: String, rel_path: String },
    Untrack { id: String },
}

impl Sampling {
    /// Opens the mount table under `root`, `/proc/stat` under `proc_root`, and registers the
    /// explicit cgroups; the slow cgroup counters are read every `slow_every` samples.
    /// Blocking: call from `spawn_blocking`.
    ///
    /// # Errors
    /// [`PipelineError`] when the mounts or `/proc/stat` cannot be read, or a `--cgroup` path is
    /// invalid.
    pub fn open(
        root: &Path,
        proc_root: &Path,
        discover: bool,
        explicit: &[String],
        period: Duration,
        slow_every: NonZeroU32,
    ) -> Result<Self, PipelineError> {
        let mounts = CgroupMounts::discover(root).map_err(PipelineError::Mounts)?;
        let mut cgroups = CgroupSampler::new(mounts).with_slow_every(slow_every);
        if discover {
            for path in explicit {
                cgroups
                    .add_explicit(path.clone())
                    .map_err(|source| PipelineError::Explicit {
                        path: path.clone(),
                        source,
                    })?;
            }
        }
        let proc_stat = ProcStatReader::open(proc_root).map_err(PipelineError::Proc)?;
        let period_ms = period.as_millis().max(1);
        let ticks_per_rescan =
            u64::try_from(RESCAN_PERIOD.as_millis().div_ceil(period_ms)).unwrap_or(1);
        Ok(Self {
            cgroups,
            proc_stat,
            discover,
            explicit: explicit.to_vec(),
            ticks_per_rescan: ticks_per_rescan.max(1),
            ticks: 0,
            buf: Vec::new(),
        })
    }

    /// The cgroup layout, for the Hello.
    #[must_use]
    pub fn mode(&self) -> protocol::CgroupMode {
        self.cgroups.mode()
    }

    /// One blocking pass: apply tracking changes (from registry events), rescan when due, read everything.
    /// `dying` (a container just died): skip the hierarchy walk and read its cgroup first, as
    /// soon as possible, before the engine removes it.
    fn pass(&mut self, ops: Vec<TrackOp>, seq: u64, dying: Option<&str>) -> Option<Sample> {
        for op in ops {
            match op {
                TrackOp::Track { id, rel_path } => {
                    if let Err(err) = self.cgroups.track(id.clone(), &rel_path) {
                        warn!(container = %id, cgroup = %rel_path, error = %err, "Cannot sample container cgroup.");
                    }
                }
                TrackOp::Untrack { id } => self.cgroups.untrack(&id),
            }
        }
        if dying.is_none() {
            if self.ticks.is_multiple_of(self.ticks_per_rescan) {
                self.rescan();
            }
            self.ticks += 1;
        }
        let clock = clock::reading();
        let vm = match self.proc_stat.read() {
            Ok(vm) => vm,
            Err(err) => {
                warn!(error = %err, "Cannot read /proc/stat; skipping this sample.");
                return None;
            }
        };
        let report = match dying {
            Some(id) => self.cgroups.sample_dying_first(&mut self.buf, id),
            None => self.cgroups.sample(&mut self.buf),
        };
        for id in &report.vanished {
            debug!(container = %id, "Cgroup gone; no longer sampled.");
        }
        for departure in &report.departed {
            log_departure(departure);
        }
        for err in &report.errors {
            debug!(error = %err, "Cgroup unreadable in this sample.");
        }
        Some(Sample {
            seq,
            clock,
            vm,
            containers: self.buf.clone(),
        })
    }

    fn rescan(&mut self) {
        if self.discover {
            match self.cgroups.rescan() {
                Ok(report) => {
                    for id in &report.added {
                        debug!(container = %id, "Sampling new cgroup.");
                    }
                    for err in &report.errors {
                        debug!(error = %err, "Cgroup found but not sampled.");
                    }
                }
                Err(err) => warn!(error = %err, "Cannot walk the cgroup hierarchies."),
            }
            return;
        }
        let tracked: Vec<String> = self
            .cgroups
            .tracked()
            .map(|(id, _)| id.to_owned())
            .collect();
        for path in &self.explicit {
            if tracked.iter().any(|id| id == path) {
                continue;
            }
            match self.cgroups.track(path.clone(), path) {
                Ok(()) => debug!(cgroup = %path, "Sampling explicit cgroup."),
                Err(err) => debug!(cgroup = %path, error = %err, "Explicit cgroup not there yet."),
            }
        }
    }
}

/// The running pipeline's inputs and outputs.
#[derive(Debug)]
pub struct Pipeline {
    /// Sampling state (moved into each blocking pass).
    pub sampling: Sampling,
    /// Period between samples.
    pub period: Duration,
    /// To the stream sink. Overflow policy: `try_send`, drop the newest when full (counted).
    pub samples: mpsc::Sender<Sample>,
    /// Container table for the sink (latest wins).
    pub table: watch::Sender<ContainerTable>,
    /// Docker registry events (`None` without Docker).
    pub registry: Option<mpsc::Receiver<RegistryEvent>>,
    /// Shared counters.
    pub stats: Arc<PipelineStats>,
}

impl Pipeline {
    /// Sample every period until `cancel` fires or the sink is gone; then drop the sample
    /// channel, which tells the sink to flush and say Goodbye.
    ///
    /// # Errors
    /// [`PipelineError::Join`] when a blocking pass panicked.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), PipelineError> {
        let Self {
            mut sampling,
            period,
            samples,
            table,
            mut registry,
            stats,
        } = self;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut seq = 0u64;
        let mut registry_open = registry.is_some();
        let mut pending = Vec::new();
        loop {
            let mut died = None;
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {}
                event = recv_event(registry.as_mut()), if registry_open => match event {
                    Some(event) => match on_event(event, &mut pending, &table) {
                        Some(id) => died = Some(id),
                        None => continue,
                    },
                    None => {
                        registry_open = false;
                        continue;
                    }
                },
            }
            let ops = std::mem::take(&mut pending);
            // The dying container stays tracked: the sample that finds its cgroup gone sends
            // its completed final counters (or a later `Removed` untracks it).
            let (returned, sample) = tokio::task::spawn_blocking(move || {
                let sample = sampling.pass(ops, seq, died.as_deref());
                (sampling, sample)
            })
            .await
            .map_err(PipelineError::Join)?;
            sampling = returned;
            let Some(sample) = sample else { continue };
            seq += 1;
            stats.taken.fetch_add(1, Ordering::Relaxed);
            match samples.try_send(sample) {
                Ok(()) => {}
                Err(TrySendError::Full(sample)) => {
                    stats.queue_dropped.fetch_add(1, Ordering::Relaxed);
                    debug!(
                        seq = sample.seq,
                        "Sink queue full; dropped the newest sample."
                    );
                }
                Err(TrySendError::Closed(_)) => break,
            }
        }
        info!(taken = seq, "Sampling stopped.");
        Ok(())
    }
}

/// Logs how a departed container's final CPU time was obtained.
fn log_departure(departure: &Departure) {
    let id = &departure.id;
    let last_read_us = departure.last_read.0;
    match departure.completed {
        Some((usage, Completion::Exact)) => debug!(
            container = %id,
            last_read_us,
            final_us = usage.0,
            "Container cgroup gone; final CPU time completed from its parent."
        ),
        Some((usage, how)) => info!(
            container = %id,
            last_read_us,
            final_us = usage.0,
            ?how,
            "Container cgroup gone; final CPU time estimated from its parent."
        ),
        None => info!(
            container = %id,
            last_read_us,
            "Container cgroup gone; its CPU time since the last sample is not known."
        ),
    }
}

/// Apply a registry event. Returns the id of a container that died (sample it now).
fn on_event(
    event: RegistryEvent,
    pending: &mut Vec<TrackOp>,
    table: &watch::Sender<ContainerTable>,
) -> Option<String> {
    match event {
        RegistryEvent::Connected {
            engine,
            api_version,
        } => {
            info!(%engine, %api_version, "Container engine connected.");
            None
        }
        RegistryEvent::Unavailable { reason } => {
            info!(%reason, "No container metadata; sampling cgroups only.");
            None
        }
        RegistryEvent::Upsert(info) => {
            if !info.cgroup_path.is_empty() && info.state == ContainerState::Running {
                pending.push(TrackOp::Track {
                    id: info.id.clone(),
                    rel_path: info.cgroup_path.clone(),
                });
            }
            table.send_modify(|t| {
                t.insert(info.id.clone(), info);
            });
            None
        }
        RegistryEvent::Died { id } => {
            table.send_modify(|t| {
                if let Some(info) = t.get_mut(&id) {
                    info.state = ContainerState::Exited;
                }
            });
            Some(id)
        }
        RegistryEvent::Removed { id } => {
            pending.push(TrackOp::Untrack { id: id.clone() });
            // Gone from the table: the sink sends it once more, as Removed.
            table.send_modify(|t| {
                t.remove(&id);
            });
            None
        }
    }
}

async fn recv_event(rx: Option<&mut mpsc::Receiver<RegistryEvent>>) -> Option<RegistryEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Identity fields read from procfs for the Hello. Blocking.
///
/// # Errors
/// [`PipelineError::Proc`] when a file is unreadable.
pub fn read_identity(proc_root: &Path) -> Result<(String, String, String, u32), PipelineError> {
    let boot_id = procfs::boot_id(proc_root).map_err(PipelineError::Proc)?;
    let hostname = procfs::hostname(proc_root).map_err(PipelineError::Proc)?;
    let kernel = procfs::kernel_release(proc_root).map_err(PipelineError::Proc)?;
    let cpus = procfs::online_cpus(proc_root).map_err(PipelineError::Proc)?;
    Ok((boot_id, hostname, kernel, cpus))
}

/// `<root>/proc`.
#[must_use]
pub fn proc_root_under(root: &Path) -> PathBuf {
    root.join("proc")
}

#[cfg(test)]
mod tests {
    use protocol::ContainerInfo;

    use super::*;

    fn info(id: &str) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            name: format!("name-{id}"),
            cgroup_path: format!("docker/{id}"),
            ..ContainerInfo::default()
        }
    }

    #[test]
    fn registry_events_drive_tracking_and_the_table() {
        let (table, rx) = watch::channel(ContainerTable::new());
        let mut pending = Vec::new();

        assert!(on_event(RegistryEvent::Upsert(info("a")), &mut pending, &table).is_none());
        assert!(
            matches!(&pending[..], [TrackOp::Track { id, rel_path }] if id == "a" && rel_path == "docker/a")
        );
        assert_eq!(rx.borrow()["a"].name, "name-a");

        // Died: the caller samples now; the table shows the container exited.
        let died = on_event(RegistryEvent::Died { id: "a".into() }, &mut pending, &table);
        assert_eq!(died.as_deref(), Some("a"));
        assert_eq!(rx.borrow()["a"].state, ContainerState::Exited);

        pending.clear();
        assert!(
            on_event(
                RegistryEvent::Removed { id: "a".into() },
                &mut pending,
                &table
            )
            .is_none()
        );
        assert!(matches!(&pending[..], [TrackOp::Untrack { id }] if id == "a"));
        assert!(rx.borrow().is_empty());
    }
}
