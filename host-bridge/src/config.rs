//! Validated configuration of `serve`: the only place defaults and flags meet. Every error
//! names the flag, the value and what would have been accepted.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use protocol::endpoint::EndpointError;

use crate::cli::{AttributionArgs, PowerArgs, ReplayPace, ServeArgs};
use crate::pipeline::{IdleModel, PipelineConfig};
use crate::report::model::GridIntensity;
use crate::sources::power::estimate::{
    DEFAULT_IDLE_WATTS_PER_CPU, DEFAULT_MAX_WATTS_PER_CPU, EstimateModel,
};
use crate::sources::power::replay::Pace;
use crate::sources::power::{PowerConfig, SourceChoice, VmSelector};

/// Default connection cap.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default stall limit inside a frame.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Default silence limit between frames (agents ping every 10 s).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Shortest accepted `--power-interval-ms` (powermetrics' own floor is about 10 ms).
pub const MIN_POWER_INTERVAL_MS: u64 = 10;
/// Longest accepted `--power-interval-ms` (one hour).
pub const MAX_POWER_INTERVAL_MS: u64 = 3_600_000;
/// Where the bridge accepts agents: the endpoint grammar shared with the agent, where
/// `vsock://any:PORT` ([`VSOCK_CID_ANY`]) listens on every local CID, TCP host names are resolved
/// when binding, TCP port 0 picks a free port and a stale Unix socket file is replaced.
pub use protocol::endpoint::{Endpoint as ListenEndpoint, VSOCK_CID_ANY};

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listening endpoints.
    pub listen: Vec<ListenEndpoint>,
    /// Recording file.
    pub record: PathBuf,
    /// Connection cap.
    pub max_connections: usize,
    /// Required agent token, if any.
    pub auth_token: Option<String>,
    /// Draw the live table (when stdout is a terminal).
    pub live: bool,
    /// Stall limit inside a frame.
    pub frame_timeout: Duration,
    /// Silence limit between frames.
    pub idle_timeout: Duration,
    /// The host power source to run (`None`: record guest data only, no host energy).
    pub power: Option<PowerConfig>,
}

/// A flag value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `--listen` did not parse.
    #[error("invalid --listen")]
    Listen(#[source] EndpointError),
    /// `vsock://` on a host that has no AF_VSOCK.
    #[error("invalid --listen {input:?}: vsock listeners need a Linux host; use tcp:// or unix://")]
    VsockUnsupported {
        /// The endpoint.
        input: String,
    },
    /// A number out of range.
    #[error("invalid {flag} {value}: {expected}")]
    OutOfRange {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: u64,
        /// What is accepted.
        expected: &'static str,
    },
    /// A flag value that does not parse or is out of range.
    #[error("invalid {flag} {value:?}: {expected}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// The value as given.
        value: String,
        /// What is accepted.
        expected: String,
    },
}

fn invalid(
    flag: &'static str,
    value: impl fmt::Display,
    expected: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        flag,
        value: value.to_string(),
        expected: expected.into(),
    }
}

impl TryFrom<&PowerArgs> for PowerConfig {
    type Error = ConfigError;

    fn try_from(args: &PowerArgs) -> Result<Self, Self::Error> {
        let choice: SourceChoice = args.source.parse().map_err(|_| {
            invalid(
                "--power",
                &args.source,
                "expected auto, powermetrics, rapl, estimate or replay:<path of a powermetrics plist capture>",
            )
        })?;
        if let SourceChoice::Replay(path) = &choice
            && !path.is_file()
        {
            return Err(invalid(
                "--power",
                &args.source,
                format!(
                    "{} is not a readable file; expected replay:<path of a powermetrics plist capture>",
                    path.display()
                ),
            ));
        }
        if !(MIN_POWER_INTERVAL_MS..=MAX_POWER_INTERVAL_MS).contains(&args.power_interval_ms) {
            return Err(invalid(
                "--power-interval-ms",
                args.power_interval_ms,
                format!("expected {MIN_POWER_INTERVAL_MS}..={MAX_POWER_INTERVAL_MS} ms"),
            ));
        }
        let interval = Duration::from_millis(args.power_interval_ms);
        let vm = match (args.vm_pid, &args.vm_name) {
            (Some(pid), _) if pid <= 0 => {
                return Err(invalid("--vm-pid", pid, "expected a positive process id"));
            }
            (Some(pid), _) => Some(VmSelector::Pid(pid)),
            (None, Some(names)) => Some(VmSelector::parse(names).map_err(|reason| {
                invalid(
                    "--vm-name",
                    names,
                    format!(
                        "{reason}; expected comma-separated `name`, `prefix*` or `coalition/name`"
                    ),
                )
            })?),
            (None, None) => None,
        };
        let estimate = estimate_model(args)?;
        let mut config = Self {
            choice,
            estimate,
            estimate_interval: interval,
            replay_pace: match args.replay_pace {
                ReplayPace::Recorded => Pace::Recorded,
                ReplayPace::Fast => Pace::AsFastAsPossible,
            },
            ..Self::default()
        };
        config.powermetrics.interval = interval;
        config.rapl.interval = interval;
        if let Some(program) = &args.powermetrics_path {
            config.powermetrics.program.clone_from(program);
        }
        if let Some(vm) = vm {
            config.powermetrics.vm = vm.clone();
            config.linux_vm = vm;
        }
        Ok(config)
    }
}

/// The estimate's coefficients: the defaults for this host's CPUs, with either end overridden.
fn estimate_model(args: &PowerArgs) -> Result<Option<EstimateModel>, ConfigError> {
    let watts = |flag: &'static str, w: Option<f64>| match w {
        Some(w) if !(w.is_finite() && w >= 0.0) => {
            Err(invalid(flag, w, "expected a non-negative number of watts"))
        }
        other => Ok(other),
    };
    let idle = watts("--estimate-idle-watts", args.estimate_idle_watts)?;
    let max = watts("--estimate-max-watts", args.estimate_max_watts)?;
    if idle.is_none() && max.is_none() {
        return Ok(None);
    }
    let cpus = std::thread::available_parallelism()
        .ok()
        .and_then(|n| u32::try_from(n.get()).ok())
        .unwrap_or(1);
    let model = EstimateModel {
        idle_watts: idle.unwrap_or(DEFAULT_IDLE_WATTS_PER_CPU * f64::from(cpus)),
        max_watts: max.unwrap_or(DEFAULT_MAX_WATTS_PER_CPU * f64::from(cpus)),
    };
    if model.max_watts < model.idle_watts {
        return Err(invalid(
            "--estimate-max-watts",
            model.max_watts,
            format!("expected at least the idle power ({} W)", model.idle_watts),
        ));
    }
    Ok(Some(model))
}

/// `--listen` values, parsed and checked against what this host can listen on.
fn listen_endpoints(listen: &[String]) -> Result<Vec<ListenEndpoint>, ConfigError> {
    let listen = listen
        .iter()
        .map(|s| s.parse::<ListenEndpoint>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(ConfigError::Listen)?;
    if !cfg!(target_os = "linux")
        && let Some(v) = listen
            .iter()
            .find(|e| matches!(e, ListenEndpoint::Vsock { .. }))
    {
        return Err(ConfigError::VsockUnsupported {
            input: v.to_string(),
        });
    }
    Ok(listen)
}

impl Config {
    /// A bridge listening on `listen`, recording to `record` and reading host power as `power`
    /// says, with the defaults for everything else and no live table (what `measure` runs).
    ///
    /// # Errors
    /// An endpoint or power flag that cannot be used.
    pub fn with_defaults(
        listen: &[String],
        record: PathBuf,
        power: &PowerArgs,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            listen: listen_endpoints(listen)?,
            record,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            auth_token: None,
            live: false,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            power: Some(PowerConfig::try_from(power)?),
        })
    }
}

impl TryFrom<ServeArgs> for Config {
    type Error = ConfigError;

    fn try_from(args: ServeArgs) -> Result<Self, Self::Error> {
        let listen = listen_endpoints(&args.listen)?;
        if args.max_connections == 0 {
            return Err(ConfigError::OutOfRange {
                flag: "--max-connections",
                value: 0,
                expected: "at least 1",
            });
        }
        if args.frame_timeout_ms == 0 {
            return Err(ConfigError::OutOfRange {
                flag: "--frame-timeout-ms",
                value: 0,
                expected: "at least 1 ms",
            });
        }
        if args.idle_timeout_s == 0 {
            return Err(ConfigError::OutOfRange {
                flag: "--idle-timeout-s",
                value: 0,
                expected: "at least 1 s",
            });
        }
        let power = PowerConfig::try_from(&args.power)?;
        let record = args
            .record
            .unwrap_or_else(|| default_recording_path(crate::clock::unix_now().0 / 1_000_000_000));
        Ok(Self {
            listen,
            record,
            max_connections: args.max_connections,
            auth_token: args.auth_token,
            live: !args.no_live,
            frame_timeout: Duration::from_millis(args.frame_timeout_ms),
            idle_timeout: Duration::from_secs(args.idle_timeout_s),
            power: Some(power),
        })
    }
}

impl AttributionArgs {
    /// The pipeline configuration these flags describe.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a window shorter than 1 ms or an idle power that is not a
    /// non-negative number.
    pub fn pipeline_config(&self) -> Result<PipelineConfig, ConfigError> {
        if !(self.window.is_finite() && self.window >= 0.001) {
            return Err(invalid(
                "--window",
                self.window,
                "expected at least 0.001 (seconds; 10 or more recommended)",
            ));
        }
        let idle = match self.idle_watts {
            None => IdleModel::default(),
            Some(w) if !(w.is_finite() && w >= 0.0) => {
                return Err(invalid(
                    "--idle-watts",
                    w,
                    "expected a non-negative number of watts",
                ));
            }
            Some(w) => {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked ≥ 0
                let idle_mw = (w * 1_000.0).round() as u64;
                IdleModel::Baseline { idle_mw }
            }
        };
        Ok(PipelineConfig {
            window: Duration::from_secs_f64(self.window),
            policy: self.policy,
            idle,
            ..PipelineConfig::default()
        })
    }

    /// The grid intensity, validated.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a negative or non-finite intensity.
    pub fn grid(&self) -> Result<Option<GridIntensity>, ConfigError> {
        self.grid_intensity
            .map(|g| {
                GridIntensity::new(g).ok_or_else(|| {
                    invalid(
                        "--grid-intensity",
                        g,
                        "expected a non-negative number of gCO2e/kWh",
                    )
                })
            })
            .transpose()
    }
}

/// `./joulebridge-YYYYMMDD-HHMMSS.jbr` (UTC) for a Unix time in seconds.
#[must_use]
pub fn default_recording_path(unix_secs: u64) -> PathBuf {
    let at = protocol::UnixNanos(unix_secs.saturating_mul(1_000_000_000));
    PathBuf::from(format!(
        "joulebridge-{}.jbr",
        crate::clock::utc(at, "%Y%m%d-%H%M%S")
    ))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn listen_error_names_the_flag_input_and_forms() {
        let cli = crate::cli::Cli::try_parse_from([
            "host-bridge",
            "serve",
            "--listen",
            "tcp://127.0.0.1:0",
            "--listen",
            "udp://x:1",
        ])
        .unwrap();
        let crate::cli::Command::Serve(args) = cli.command else {
            panic!("parsed as another command");
        };
        let err = format!(
            "{:#}",
            anyhow::Error::new(Config::try_from(args).unwrap_err())
        );
        assert!(
            err.contains("--listen") && err.contains("udp://x:1") && err.contains("unix:///PATH"),
            "{err}"
        );
    }

    #[test]
    fn power_flags_map_to_the_source_config() {
        let args = PowerArgs {
            source: "estimate".into(),
            power_interval_ms: 250,
            vm_name: Some("qemu-system-*,firecracker".into()),
            estimate_idle_watts: Some(5.0),
            estimate_max_watts: Some(40.0),
            replay_pace: ReplayPace::Fast,
            ..PowerArgs::default()
        };
        let c = PowerConfig::try_from(&args).unwrap();
        assert_eq!(c.choice, SourceChoice::Estimate);
        assert_eq!(c.estimate_interval, Duration::from_millis(250));
        assert_eq!(c.rapl.interval, Duration::from_millis(250));
        assert_eq!(c.powermetrics.interval, Duration::from_millis(250));
        assert_eq!(c.replay_pace, Pace::AsFastAsPossible);
        assert_eq!(
            c.estimate,
            Some(EstimateModel {
                idle_watts: 5.0,
                max_watts: 40.0
            })
        );
        assert_eq!(c.linux_vm.to_string(), "qemu-system-*,firecracker");
        assert_eq!(c.powermetrics.vm, c.linux_vm);
        let pid = PowerConfig::try_from(&PowerArgs {
            vm_pid: Some(4242),
            ..PowerArgs::default()
        })
        .unwrap();
        assert_eq!(pid.linux_vm, VmSelector::Pid(4242));
        assert_eq!(pid.choice, SourceChoice::Auto);
        assert_eq!(pid.estimate, None);
    }

    #[test]
    fn power_flag_errors_name_flag_value_and_accepted_values() {
        let err = |args: PowerArgs| PowerConfig::try_from(&args).unwrap_err().to_string();
        let e = err(PowerArgs {
            source: "solar".into(),
            ..PowerArgs::default()
        });
        assert!(
            e.contains("--power") && e.contains("\"solar\"") && e.contains("replay:<path"),
            "{e}"
        );
        let e = err(PowerArgs {
            source: "replay:/nonexistent/x.plist".into(),
            ..PowerArgs::default()
        });
        assert!(
            e.contains("--power") && e.contains("not a readable file"),
            "{e}"
        );
        let e = err(PowerArgs {
            power_interval_ms: 0,
            ..PowerArgs::default()
        });
        assert!(
            e.contains("--power-interval-ms") && e.contains("10..="),
            "{e}"
        );
        let e = err(PowerArgs {
            estimate_idle_watts: Some(50.0),
            estimate_max_watts: Some(10.0),
            ..PowerArgs::default()
        });
        assert!(
            e.contains("--estimate-max-watts") && e.contains("50"),
            "{e}"
        );
        let e = err(PowerArgs {
            estimate_idle_watts: Some(f64::NAN),
            ..PowerArgs::default()
        });
        assert!(e.contains("--estimate-idle-watts"), "{e}");
        let e = err(PowerArgs {
            vm_pid: Some(-3),
            ..PowerArgs::default()
        });
        assert!(e.contains("--vm-pid") && e.contains("-3"), "{e}");
    }

    #[test]
    fn attribution_flag_errors_name_flag_and_value() {
        let args = AttributionArgs {
            policy: crate::pipeline::IdlePolicy::Exclude,
            window: 10.0,
            idle_watts: None,
            grid_intensity: None,
        };
        let cfg = args.pipeline_config().unwrap();
        assert_eq!(cfg.window, Duration::from_secs(10));
        let e = AttributionArgs {
            window: 0.0,
            ..args.clone()
        }
        .pipeline_config()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--window") && e.contains("0.001"), "{e}");
        let e = AttributionArgs {
            idle_watts: Some(-1.0),
            ..args.clone()
        }
        .pipeline_config()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--idle-watts") && e.contains("-1"), "{e}");
        let e = AttributionArgs {
            grid_intensity: Some(f64::NAN),
            ..args
        }
        .grid()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--grid-intensity"), "{e}");
    }

    #[test]
    fn default_recording_path_is_utc_stamped() {
        // 2026-11-28 11:42:35 UTC
        let p = default_recording_path(1_795_866_155);
        assert_eq!(p, PathBuf::from("joulebridge-20261128-114235.jbr"));
        assert_eq!(
            default_recording_path(0),
            PathBuf::from("joulebridge-19700101-000000.jbr")
        );
    }
}
