//! Linux RAPL energy counters through powercap sysfs (`/sys/class/powercap/intel-rapl:*`).
//!
//! Zones: top-level `intel-rapl:N` (`name`: `package-N`, `psys`, sometimes `dram`) and
//! subzones `intel-rapl:N:M` (`core`, `uncore`, `dram`), each with a cumulative `energy_uj`
//! that wraps at `max_energy_range_uj` (kernel `Documentation/power/powercap/powercap.rst`).
//!
//! The split domain is `psys` when present (the whole SoC/platform), else Σ `package-N` +
//! Σ `dram`, else Σ `package-N` (Scaphandre's choice, docs/attribution.md §1.2); the choice is
//! recorded ([`RaplDomain`]). Every zone is also reported as a component.
//!
//! Counter arithmetic ([`zone_delta`], portable and property-tested):
//! - `cur ≥ prev`: the delta, unless it exceeds what the zone could draw in the window
//!   ([`DEFAULT_MAX_ZONE_WATTS`]): then it may have wrapped more than once, and the window is
//!   dropped;
//! - `cur < prev`: a wrap (`range − prev + cur`, Kepler's rule) when that is plausible, else a
//!   **reset** (driver reload, resume from hibernation), reported as such and the window
//!   dropped, never counted as a near-full-range wrap;
//! - a changed `max_energy_range_uj` is a reset.
//!
//! Since the Platypus fix (CVE-2020-8694), `energy_uj` is readable by root only; that failure
//! has its own error, [`RaplError::PermissionDenied`], whose message says what to do.
//!
//! Reads are synchronous over an injectable root; the source runs them inside one
//! `spawn_blocking` per tick together with the `/proc` reads.

use std::path::PathBuf;
use std::time::Duration;

use protocol::{MicroJoules, MonoNanos};
#[cfg(target_os = "linux")]
use tokio_util::sync::CancellationToken;

mod sysfs;

pub use sysfs::{RaplDomain, RaplReader, RaplReading, RaplZone, probe, read_error};

#[cfg(target_os = "linux")]
use super::{
    MonoClock, OutputClosed, PowerEvent, PowerOutputs, PowerSample, Provenance, hostcpu::ProcReader,
};

/// The powercap class directory.
pub const DEFAULT_POWERCAP_ROOT: &str = "/sys/class/powercap";
/// Prefix of RAPL zone directories (`intel-rapl:0`, `intel-rapl:0:1`; AMD exposes the same
/// names since Linux 5.8).
const ZONE_PREFIX: &str = "intel-rapl:";
/// Above this power (per zone) a delta is not believed: the counter may have wrapped more than
/// once, or it was reset. No single RAPL zone of one host draws 1 kW; at 1 kW a typical
/// 262 kJ range wraps every ~4 minutes, far longer than the poll interval.
pub const DEFAULT_MAX_ZONE_WATTS: u64 = 1_000;
/// Default poll interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Failure to read RAPL.
#[derive(Debug, thiserror::Error)]
pub enum RaplError {
    /// No RAPL zones under the root.
    #[error("no intel-rapl zones under {root:?}")]
    NoZones {
        /// The powercap root.
        root: PathBuf,
    },
    /// The root could not be listed.
    #[error("failed to list {path:?}")]
    List {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `energy_uj` is root-only.
    #[error(
        "permission denied reading {path:?}: energy_uj has been readable by root only since the \
         Platypus fix (CVE-2020-8694); run the bridge as root, or grant read access with a udev \
         rule or tmpfiles.d entry that runs `chmod o+r` on \
         /sys/class/powercap/intel-rapl:*/energy_uj (this re-opens that side channel to local \
         users)"
    )]
    PermissionDenied {
        /// The file.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("failed to read {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file did not hold a number.
    #[error("malformed value {text:?} in {path:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Its content.
        text: String,
    },
}

/// The outcome of one zone over one window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZoneDelta {
    /// Energy in the window.
    Energy(MicroJoules),
    /// The counter was reset (or cannot be trusted); the window is unknown for this zone.
    Reset(String),
}

/// The energy of one zone between two readings.
///
/// `max_energy` is the most the zone could plausibly use in the window.
#[must_use]
pub fn zone_delta(
    prev: MicroJoules,
    cur: MicroJoules,
    prev_range: MicroJoules,
    cur_range: MicroJoules,
    max_energy: MicroJoules,
) -> ZoneDelta {
    if prev_range != cur_range {
        return ZoneDelta::Reset(format!(
            "max_energy_range_uj changed from {} to {}",
            prev_range.0, cur_range.0
        ));
    }
    if cur >= prev {
        let delta = MicroJoules(cur.0 - prev.0);
        return if delta > max_energy {
            ZoneDelta::Reset(format!(
                "delta {} µJ exceeds the plausible {} µJ; the counter may have wrapped more than \
                 once",
                delta.0, max_energy.0
            ))
        } else {
            ZoneDelta::Energy(delta)
        };
    }
    match cur.wrapping_delta(prev, cur_range) {
        Some(delta) if delta <= max_energy => ZoneDelta::Energy(delta),
        Some(delta) => ZoneDelta::Reset(format!(
            "counter went back from {} to {} µJ; as a wrap that is {} µJ, more than the \
             plausible {} µJ",
            prev.0, cur.0, delta.0, max_energy.0
        )),
        None => ZoneDelta::Reset(format!(
            "counter went back from {} to {} µJ and {} lies above max_energy_range_uj {}",
            prev.0, cur.0, prev.0, cur_range.0
        )),
    }
}

/// The windows computed from consecutive readings.
#[derive(Debug)]
pub struct RaplWindows {
    reader: RaplReader,
    max_zone_watts: u64,
    prev: Option<(RaplReading, MonoNanos)>,
}

/// One window of RAPL energy.
#[derive(Clone, Debug, PartialEq)]
pub enum RaplWindow {
    /// Energy of the domain and of every zone that did not reset.
    Energy {
        /// Split-domain energy.
        energy: MicroJoules,
        /// `(label, energy)` per zone.
        components: Vec<(String, MicroJoules)>,
        /// Resets of zones outside the domain (their component is missing).
        resets: Vec<(String, String)>,
    },
    /// A domain zone reset: the window is unknown.
    Reset {
        /// `(label, reason)` per reset zone.
        resets: Vec<(String, String)>,
    },
}

impl RaplWindows {
    /// Windows over `reader`, believing at most `max_zone_watts` per zone.
    #[must_use]
    pub fn new(reader: RaplReader, max_zone_watts: u64) -> Self {
        Self {
            reader,
            max_zone_watts,
            prev: None,
        }
    }

    /// The reader.
    #[must_use]
    pub fn reader(&self) -> &RaplReader {
        &self.reader
    }

    /// Reads at `now`; `None` on the first read (baseline).
    ///
    /// # Errors
    /// [`RaplError`] from the read.
    pub fn read(&mut self, now: MonoNanos) -> Result<Option<(u64, RaplWindow)>, RaplError> {
        let reading = self.reader.read()?;
        Ok(self.window(reading, now))
    }

    /// The window between the previous reading and `reading` taken at `now`.
    pub fn window(&mut self, reading: RaplReading, now: MonoNanos) -> Option<(u64, RaplWindow)> {
        let (prev, at) = self.prev.replace((reading.clone(), now))?;
        let window_ns = now.since(at);
        // max_zone_watts W × window_ns ns = W·ns / 1e3 µJ.
        let max_energy = MicroJoules(
            u64::try_from(u128::from(self.max_zone_watts) * u128::from(window_ns) / 1_000)
                .unwrap_or(u64::MAX),
        );
        let mut energy = MicroJoules::ZERO;
        let mut components = Vec::new();
        let mut resets = Vec::new();
        let mut domain_reset = false;
        for (i, zone) in self.reader.zones().iter().enumerate() {
            match zone_delta(
                prev.energy[i],
                reading.energy[i],
                prev.range[i],
                reading.range[i],
                max_energy,
            ) {
                ZoneDelta::Energy(delta) => {
                    if self.reader.in_domain(zone) {
                        energy = energy.saturating_add(delta);
                    }
                    components.push((zone.label.clone(), delta));
                }
                ZoneDelta::Reset(reason) => {
                    domain_reset |= self.reader.in_domain(zone);
                    resets.push((zone.label.clone(), reason));
                }
            }
        }
        Some((
            window_ns,
            if domain_reset {
                RaplWindow::Reset { resets }
            } else {
                RaplWindow::Energy {
                    energy,
                    components,
                    resets,
                }
            },
        ))
    }
}

/// Configuration of the RAPL source.
#[derive(Clone, Debug)]
pub struct RaplConfig {
    /// Poll interval.
    pub interval: Duration,
    /// Plausibility limit per zone.
    pub max_zone_watts: u64,
}

impl Default for RaplConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            max_zone_watts: DEFAULT_MAX_ZONE_WATTS,
        }
    }
}

/// The RAPL power source: polls RAPL and `/proc` once per tick (Linux only; the reader and the
/// counter arithmetic above stay portable so they are tested everywhere).
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct RaplSource {
    windows: RaplWindows,
    proc: Option<ProcReader>,
    config: RaplConfig,
    clock: MonoClock,
}

#[cfg(target_os = "linux")]
impl RaplSource {
    /// A source over `reader`; `proc` adds host CPU and the VM share when given.
    #[must_use]
    pub fn new(
        reader: RaplReader,
        proc: Option<ProcReader>,
        config: RaplConfig,
        clock: MonoClock,
    ) -> Self {
        Self {
            windows: RaplWindows::new(reader, config.max_zone_watts),
            proc,
            config,
            clock,
        }
    }

    /// Polls until cancelled or the outputs close.
    ///
    /// # Errors
    /// [`RaplError`] when the counters become unreadable.
    pub async fn run(self, out: PowerOutputs, cancel: CancellationToken) -> Result<(), RaplError> {
        let Self {
            mut windows,
            mut proc,
            config,
            clock,
        } = self;
        tracing::info!(
            root = %windows.reader().root().display(),
            domain = windows.reader().domain().describe(),
            zones = windows.reader().zones().len(),
            "RAPL source started."
        );
        let mut tick = tokio::time::interval(config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_end: Option<MonoNanos> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let (w, p, result) = tokio::task::spawn_blocking(move || {
                let now = clock.now();
                let rapl = windows.read(now);
                let cpu = proc.as_mut().map(|p| p.read(now));
                (windows, proc, (now, rapl, cpu))
            })
            .await
            .map_err(|join| RaplError::Read {
                path: PathBuf::from("<rapl poll task>"),
                source: std::io::Error::other(join),
            })?;
            windows = w;
            proc = p;
            let (now, rapl, cpu) = result;
            let cpu = match cpu {
                Some(Ok(window)) => window,
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "Host CPU counters unreadable; VM share unknown this window.");
                    None
                }
                None => None,
            };
            let Some((window_ns, window)) = rapl? else {
                continue;
            };
            let sent = match window {
                RaplWindow::Energy {
                    energy,
                    components,
                    resets,
                } => {
                    if report_resets(&out, &cancel, &resets).await.is_err() {
                        return Ok(());
                    }
                    last_end = Some(now);
                    out.sample_or_cancel(
                        PowerSample {
                            end: now,
                            window_ns,
                            energy,
                            components,
                            vm_share: cpu.as_ref().map(|c| c.vm.clone()),
                            host_cpu: cpu.as_ref().map(|c| c.host),
                            provenance: Provenance::Measured,
                        },
                        &cancel,
                    )
                    .await
                }
                RaplWindow::Reset { resets } => {
                    let reason = resets
                        .iter()
                        .map(|(zone, why)| format!("{zone}: {why}"))
                        .collect::<Vec<_>>()
                        .join("; ");
                    let from = last_end.unwrap_or(MonoNanos(now.0.saturating_sub(window_ns)));
                    last_end = Some(now);
                    match report_resets(&out, &cancel, &resets).await {
                        Ok(()) => {
                            out.event_or_cancel(
                                PowerEvent::Gap {
                                    from,
                                    to: now,
                                    reason: format!("RAPL counter reset ({reason})"),
                                },
                                &cancel,
                            )
                            .await
                        }
                        Err(closed) => Err(closed),
                    }
                }
            };
            if sent.is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(target_os = "linux")]
async fn report_resets(
    out: &PowerOutputs,
    cancel: &CancellationToken,
    resets: &[(String, String)],
) -> Result<(), OutputClosed> {
    for (zone, reason) in resets {
        tracing::warn!(zone = %zone, reason = %reason, "RAPL counter reset; window dropped for this zone.");
        out.event_or_cancel(
            PowerEvent::CounterReset {
                domain: zone.clone(),
                reason: reason.clone(),
            },
            cancel,
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use proptest::prelude::*;

    const RANGE: MicroJoules = MicroJoules(262_143_328_850);
    const MAX: MicroJoules = MicroJoules(1_000_000_000);

    #[test]
    fn zone_delta_wraps_at_range() {
        assert_eq!(
            zone_delta(
                MicroJoules(262_143_328_000),
                MicroJoules(150),
                RANGE,
                RANGE,
                MAX
            ),
            ZoneDelta::Energy(MicroJoules(1_000))
        );
    }

    #[test]
    fn zone_delta_backwards_far_is_reset_not_wrap() {
        let delta = zone_delta(MicroJoules(5_000_000), MicroJoules(10), RANGE, RANGE, MAX);
        assert!(matches!(delta, ZoneDelta::Reset(reason) if reason.contains("wrap")));
    }

    #[test]
    fn zone_delta_range_change_is_reset() {
        let delta = zone_delta(
            MicroJoules(10),
            MicroJoules(20),
            RANGE,
            MicroJoules(1_000),
            MAX,
        );
        assert!(matches!(delta, ZoneDelta::Reset(reason) if reason.contains("changed")));
    }

    #[test]
    fn zone_delta_implausible_forward_jump_is_dropped() {
        let delta = zone_delta(MicroJoules(0), MicroJoules(MAX.0 + 1), RANGE, RANGE, MAX);
        assert!(matches!(delta, ZoneDelta::Reset(_)));
    }

    #[test]
    fn permission_error_cites_platypus() {
        let err = read_error(
            Path::new("/sys/class/powercap/intel-rapl:0/energy_uj"),
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(matches!(err, RaplError::PermissionDenied { .. }));
        let message = err.to_string();
        assert!(
            message.contains("CVE-2020-8694") && message.contains("root"),
            "{message}"
        );
    }

    proptest! {
        /// A counter advanced by a plausible amount, wrapped or not, yields exactly that
        /// amount.
        #[test]
        fn zone_delta_recovers_any_plausible_advance(
            start in 0u64..RANGE.0,
            advance in 0u64..=MAX.0,
        ) {
            let cur = (start + advance) % RANGE.0;
            prop_assert_eq!(
                zone_delta(MicroJoules(start), MicroJoules(cur), RANGE, RANGE, MAX),
                ZoneDelta::Energy(MicroJoules(advance))
            );
        }
    }
}
