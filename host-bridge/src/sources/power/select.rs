//! Choosing the power source: auto-detection or the user's choice, with the reason recorded.
//!
//! Auto: `powermetrics` on macOS (it needs root; the failure message says how); RAPL on Linux
//! when `energy_uj` is readable; otherwise the utilisation estimate. The decision is a pure
//! function of a [`SelectionProbe`], so every branch is tested without the hardware.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::PowerSourceKind;
use super::estimate::{self, CpuProbe, EstimateModel, EstimateSource};
use super::hostcpu::{self, ProcReader};
use super::powermetrics::spawn::{PowermetricsConfig, PowermetricsSource};
use super::rapl::{self, RaplConfig, RaplError, RaplReader};
use super::replay::{Pace, ReplayConfig, ReplaySource};
use super::{MonoClock, PowerError, PowerEvent, PowerOutputs, VmSelector};

/// What the user asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceChoice {
    /// Detect.
    Auto,
    /// `powermetrics`, even where detection would not pick it.
    Powermetrics,
    /// RAPL.
    Rapl,
    /// The estimate.
    Estimate,
    /// Replay a capture file.
    Replay(PathBuf),
}

impl std::str::FromStr for SourceChoice {
    type Err = SelectError;

    /// `auto`, `powermetrics`, `rapl`, `estimate`, or `replay:<path>`.
    fn from_str(text: &str) -> Result<Self, SelectError> {
        match text {
            "auto" => Ok(Self::Auto),
            "powermetrics" => Ok(Self::Powermetrics),
            "rapl" => Ok(Self::Rapl),
            "estimate" => Ok(Self::Estimate),
            other => match other.strip_prefix("replay:") {
                Some(path) if !path.is_empty() => Ok(Self::Replay(PathBuf::from(path))),
                _ => Err(SelectError::UnknownSource {
                    value: other.to_owned(),
                }),
            },
        }
    }
}

/// The host operating system, as far as power sources care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostOs {
    /// macOS.
    MacOs,
    /// Linux.
    Linux,
    /// Anything else.
    Other,
}

impl HostOs {
    /// The OS this binary was built for.
    #[must_use]
    pub fn current() -> Self {
        if cfg!(target_os = "macos") {
            Self::MacOs
        } else if cfg!(target_os = "linux") {
            Self::Linux
        } else {
            Self::Other
        }
    }
}

/// What RAPL probing found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RaplAvailability {
    /// Zones exist and `energy_uj` is readable.
    Readable,
    /// Zones exist but reading failed (the message says why and what to do).
    Unreadable(String),
    /// No powercap RAPL zones.
    Absent,
}

/// The facts auto-selection decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectionProbe {
    /// Host OS.
    pub os: HostOs,
    /// Whether a `powermetrics` executable was found (path or PATH lookup).
    pub powermetrics_found: bool,
    /// RAPL state.
    pub rapl: RaplAvailability,
}

/// The chosen source and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The source.
    pub kind: PowerSourceKind,
    /// Why, in one sentence fragment (recorded as [`super::PowerEvent::SourceSelected`]).
    pub reason: String,
}

/// A source choice that cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// Not one of the known names.
    #[error(
        "unknown power source {value:?}; expected auto, powermetrics, rapl, estimate or \
         replay:<path>"
    )]
    UnknownSource {
        /// What the user wrote.
        value: String,
    },
    /// RAPL was named but cannot be read.
    #[error("power source rapl is unavailable: {reason}")]
    RaplUnavailable {
        /// Why.
        reason: String,
    },
}

/// Decides the source. Logs the decision at INFO.
///
/// # Errors
/// [`SelectError::RaplUnavailable`] when RAPL is named explicitly but unusable.
pub fn select_source(
    choice: &SourceChoice,
    probe: &SelectionProbe,
) -> Result<Selection, SelectError> {
    let selection = match choice {
        SourceChoice::Powermetrics => Selection {
            kind: PowerSourceKind::Powermetrics,
            reason: "named by the user".to_owned(),
        },
        SourceChoice::Estimate => Selection {
            kind: PowerSourceKind::Estimate,
            reason: "named by the user".to_owned(),
        },
        SourceChoice::Replay(path) => Selection {
            kind: PowerSourceKind::Replay,
            reason: format!("named by the user: replay of {}", path.display()),
        },
        SourceChoice::Rapl => match &probe.rapl {
            RaplAvailability::Readable => Selection {
                kind: PowerSourceKind::Rapl,
                reason: "named by the user".to_owned(),
            },
            RaplAvailability::Unreadable(reason) => {
                return Err(SelectError::RaplUnavailable {
                    reason: reason.clone(),
                });
            }
            RaplAvailability::Absent => {
                return Err(SelectError::RaplUnavailable {
                    reason: "no intel-rapl zones under the powercap root".to_owned(),
                });
            }
        },
        SourceChoice::Auto => auto(probe),
    };
    tracing::info!(
        source = %selection.kind,
        reason = %selection.reason,
        "Power source selected."
    );
    Ok(selection)
}

fn auto(probe: &SelectionProbe) -> Selection {
    match (probe.os, &probe.rapl) {
        (HostOs::MacOs, _) if probe.powermetrics_found => Selection {
            kind: PowerSourceKind::Powermetrics,
            reason: "auto: macOS with powermetrics available".to_owned(),
        },
        (HostOs::MacOs, _) => Selection {
            kind: PowerSourceKind::Estimate,
            reason: "auto: macOS but no powermetrics executable found; using the utilisation \
                     estimate"
                .to_owned(),
        },
        (HostOs::Linux, RaplAvailability::Readable) => Selection {
            kind: PowerSourceKind::Rapl,
            reason: "auto: Linux with readable RAPL energy counters".to_owned(),
        },
        (HostOs::Linux, RaplAvailability::Unreadable(why)) => Selection {
            kind: PowerSourceKind::Estimate,
            reason: format!("auto: RAPL present but unreadable ({why}); using the estimate"),
        },
        (HostOs::Linux, RaplAvailability::Absent) => Selection {
            kind: PowerSourceKind::Estimate,
            reason: "auto: Linux without RAPL (no intel-rapl powercap zones); using the \
                     estimate"
                .to_owned(),
        },
        (HostOs::Other, _) => Selection {
            kind: PowerSourceKind::Estimate,
            reason: "auto: no supported power sensor on this OS; using the estimate".to_owned(),
        },
    }
}

/// Everything needed to pick and run a power source.
#[derive(Clone, Debug)]
pub struct PowerConfig {
    /// What the user asked for.
    pub choice: SourceChoice,
    /// powermetrics settings (program, PATH, interval, privilege, VM selector).
    pub powermetrics: PowermetricsConfig,
    /// Powercap root (`/sys/class/powercap`).
    pub powercap_root: PathBuf,
    /// procfs root (`/proc`).
    pub proc_root: PathBuf,
    /// RAPL settings.
    pub rapl: RaplConfig,
    /// VM selector on Linux hosts (`/proc`).
    pub linux_vm: VmSelector,
    /// Estimate coefficients (`None`: the documented defaults for the host's CPU count).
    pub estimate: Option<EstimateModel>,
    /// Estimate interval.
    pub estimate_interval: std::time::Duration,
    /// Replay pace.
    pub replay_pace: Pace,
}

impl Default for PowerConfig {
    fn default() -> Self {
        Self {
            choice: SourceChoice::Auto,
            powermetrics: PowermetricsConfig::default(),
            powercap_root: PathBuf::from(rapl::DEFAULT_POWERCAP_ROOT),
            proc_root: PathBuf::from(hostcpu::DEFAULT_PROC_ROOT),
            rapl: RaplConfig::default(),
            linux_vm: VmSelector::linux_default(),
            estimate: None,
            estimate_interval: estimate::DEFAULT_INTERVAL,
            replay_pace: Pace::Recorded,
        }
    }
}

/// Whether `program` can be run: a path that is a file, or a name found on `path_var`.
#[must_use]
pub fn program_exists(program: &Path, path_var: Option<&std::ffi::OsStr>) -> bool {
    if program.components().count() > 1 {
        return program.is_file();
    }
    let path_var = path_var
        .map(std::ffi::OsStr::to_owned)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default();
    std::env::split_paths(&path_var).any(|dir| dir.join(program).is_file())
}

/// Gathers the facts auto-selection needs (synchronous: a few stat/read calls).
#[must_use]
pub fn probe_host(config: &PowerConfig) -> SelectionProbe {
    let os = HostOs::current();
    SelectionProbe {
        os,
        powermetrics_found: program_exists(
            &config.powermetrics.program,
            config.powermetrics.search_path.as_deref(),
        ),
        rapl: if os == HostOs::Linux {
            rapl::probe(&config.powercap_root)
        } else {
            RaplAvailability::Absent
        },
    }
}

/// Selects a source (recording [`PowerEvent::SourceSelected`]) and runs it until it ends, the
/// outputs close or `cancel` fires.
///
/// # Errors
/// [`PowerError`] when selection fails or the source stops on an error.
pub async fn run_power(
    config: PowerConfig,
    clock: MonoClock,
    out: PowerOutputs,
    cancel: CancellationToken,
) -> Result<(), PowerError> {
    let probe = probe_host(&config);
    let selection = select_source(&config.choice, &probe)?;
    let mut reason = selection.reason.clone();
    let rapl_reader = if selection.kind == PowerSourceKind::Rapl {
        let root = config.powercap_root.clone();
        let reader = tokio::task::spawn_blocking(move || RaplReader::new(root))
            .await
            .map_err(|join| RaplError::Read {
                path: config.powercap_root.clone(),
                source: std::io::Error::other(join),
            })??;
        reason.push_str(&format!("; split domain: {}", reader.domain().describe()));
        Some(reader)
    } else {
        None
    };
    let event = PowerEvent::SourceSelected {
        kind: selection.kind,
        reason,
    };
    if out.event_or_cancel(event, &cancel).await.is_err() {
        return Ok(());
    }
    match (selection.kind, &config.choice) {
        (PowerSourceKind::Powermetrics, _) => {
            PowermetricsSource::new(config.powermetrics, clock)
                .run(out, cancel)
                .await?;
        }
        (PowerSourceKind::Replay, SourceChoice::Replay(path)) => {
            let replay = ReplayConfig {
                path: path.clone(),
                pace: config.replay_pace,
                vm: config.powermetrics.vm.clone(),
            };
            ReplaySource::new(replay, clock).run(out, cancel).await?;
        }
        (PowerSourceKind::Rapl, _) => run_rapl(config, rapl_reader, clock, out, cancel).await?,
        (PowerSourceKind::Estimate | PowerSourceKind::Replay, _) => {
            let cpus = std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok())
                .unwrap_or(1);
            let model = config
                .estimate
                .unwrap_or_else(|| EstimateModel::per_cpu_default(cpus));
            let probe = if HostOs::current() == HostOs::Linux {
                CpuProbe::Proc(ProcReader::new(&config.proc_root, config.linux_vm.clone()))
            } else {
                CpuProbe::LoadAverage { cpus }
            };
            EstimateSource::new(model, probe, config.estimate_interval, clock)
                .run(out, cancel)
                .await?;
        }
    }
    Ok(())
}

#[cfg(target_os = "linux")]
async fn run_rapl(
    config: PowerConfig,
    reader: Option<RaplReader>,
    clock: MonoClock,
    out: PowerOutputs,
    cancel: CancellationToken,
) -> Result<(), PowerError> {
    let reader = match reader {
        Some(reader) => reader,
        None => RaplReader::new(&config.powercap_root)?,
    };
    let proc = ProcReader::new(&config.proc_root, config.linux_vm.clone());
    rapl::RaplSource::new(reader, Some(proc), config.rapl, clock)
        .run(out, cancel)
        .await?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
async fn run_rapl(
    config: PowerConfig,
    _reader: Option<RaplReader>,
    _clock: MonoClock,
    _out: PowerOutputs,
    _cancel: CancellationToken,
) -> Result<(), PowerError> {
    Err(PowerError::Select(SelectError::RaplUnavailable {
        reason: format!(
            "RAPL is read on Linux only (root {})",
            config.powercap_root.display()
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(os: HostOs, powermetrics_found: bool, rapl: RaplAvailability) -> SelectionProbe {
        SelectionProbe {
            os,
            powermetrics_found,
            rapl,
        }
    }

    #[test]
    fn auto_picks_powermetrics_on_macos() {
        let s = select_source(
            &SourceChoice::Auto,
            &probe(HostOs::MacOs, true, RaplAvailability::Absent),
        )
        .expect("selects");
        assert_eq!(s.kind, PowerSourceKind::Powermetrics);
    }

    #[test]
    fn auto_picks_rapl_on_linux_when_readable() {
        let s = select_source(
            &SourceChoice::Auto,
            &probe(HostOs::Linux, false, RaplAvailability::Readable),
        )
        .expect("selects");
        assert_eq!(s.kind, PowerSourceKind::Rapl);
    }

    #[test]
    fn auto_falls_back_to_estimate_with_reason() {
        let s = select_source(
            &SourceChoice::Auto,
            &probe(
                HostOs::Linux,
                false,
                RaplAvailability::Unreadable("root only".to_owned()),
            ),
        )
        .expect("selects");
        assert_eq!(s.kind, PowerSourceKind::Estimate);
        assert!(s.reason.contains("root only"));
        let mac = select_source(
            &SourceChoice::Auto,
            &probe(HostOs::MacOs, false, RaplAvailability::Absent),
        )
        .expect("selects");
        assert_eq!(mac.kind, PowerSourceKind::Estimate);
    }

    #[test]
    fn named_rapl_unavailable_is_an_error() {
        let err = select_source(
            &SourceChoice::Rapl,
            &probe(HostOs::Linux, false, RaplAvailability::Absent),
        )
        .expect_err("absent");
        assert!(err.to_string().contains("rapl"));
    }

    #[test]
    fn source_choice_parses_names() {
        assert_eq!(
            "auto".parse::<SourceChoice>().ok(),
            Some(SourceChoice::Auto)
        );
        assert_eq!(
            "replay:/tmp/x.plist".parse::<SourceChoice>().ok(),
            Some(SourceChoice::Replay(PathBuf::from("/tmp/x.plist")))
        );
        assert!("bogus".parse::<SourceChoice>().is_err());
    }
}
