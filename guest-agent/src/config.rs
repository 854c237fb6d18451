//! The validated configuration of one agent process: the only place where defaults and flags
//! meet. Every error names the flag, the value and what would have been accepted.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

/// Where the bridge listens, as the agent dials it (the grammar shared with the bridge).
pub use protocol::endpoint::Endpoint;
use protocol::endpoint::{EndpointError, VSOCK_CID_ANY};

use crate::cli::Cli;
use crate::sources::docker::{DockerConfig, DockerEndpoint, DockerError};

/// Shortest sampling period accepted. Below this the cgroup walk itself dominates.
pub const MIN_SAMPLE_PERIOD: Duration = Duration::from_millis(10);
/// Default spool capacity: one hour at the default 1 Hz.
pub const DEFAULT_SPOOL_CAPACITY: usize = 3600;
/// Default of `--slow-counters-every`: memory, IO and v1 throttling every 10th sample.
pub const DEFAULT_SLOW_COUNTERS_EVERY: u32 = 10;
/// Largest `--slow-counters-every` accepted.
pub const MAX_SLOW_COUNTERS_EVERY: u32 = 3600;
/// First reconnect delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a shutting-down agent waits for the bridge to acknowledge its last sample.
pub const SHUTDOWN_ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// How the connection loop behaves.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The bridge.
    pub endpoint: Endpoint,
    /// Time between clock probes.
    pub ping_interval: Duration,
    /// Deadline of one connection attempt.
    pub connect_timeout: Duration,
    /// First reconnect delay (doubles per failure, with jitter).
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Unacknowledged samples kept.
    pub spool_capacity: usize,
    /// How long shutdown waits for the final Ack.
    pub shutdown_ack_timeout: Duration,
    /// Sent in Hello.
    pub auth_token: Option<String>,
}

/// Everything one agent process needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The connection to the bridge.
    pub stream: StreamConfig,
    /// Sampling period.
    pub sample_period: Duration,
    /// Memory, IO and v1 throttling are read every this many samples (CPU time every sample).
    pub slow_counters_every: NonZeroU32,
    /// Cgroups named by the user (relative paths).
    pub cgroups: Vec<String>,
    /// Whether container cgroups are discovered.
    pub discover: bool,
    /// Root of the file system read (`/` normally).
    pub root: PathBuf,
    /// VM label; `None` = the hostname.
    pub vm_name: Option<String>,
    /// `--expose-energy DIR`: where attributed energy is written inside the VM.
    pub expose_energy: Option<PathBuf>,
    /// `None` = no container engine.
    pub docker: Option<DockerConfig>,
}

/// A flag value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--connect` did not parse.
    #[error("invalid --connect")]
    Connect(#[source] EndpointError),
    /// `--connect vsock://any:PORT`: CID `any` listens, it cannot be dialled.
    #[error(
        "invalid --connect {input:?}: CID `any` is for listening; dial the host as vsock://2:PORT"
    )]
    DialAnyCid {
        /// The endpoint given.
        input: String,
    },
    /// A number out of range.
    #[error("invalid {flag} {value}: {expected}")]
    OutOfRange {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: u64,
        /// What is accepted.
        expected: &'static str,
    },
    /// `--docker-host` did not parse.
    #[error("invalid --docker-host")]
    DockerHost(#[source] DockerError),
    /// `--no-discover --no-docker` without any `--cgroup`: nothing to sample.
    #[error(
        "--no-discover with --no-docker needs at least one --cgroup REL_PATH, otherwise nothing is sampled"
    )]
    NothingToSample,
}

impl TryFrom<Cli> for Config {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, Self::Error> {
        let endpoint: Endpoint = cli.connect.parse().map_err(ConfigError::Connect)?;
        if let Endpoint::Vsock {
            cid: VSOCK_CID_ANY, ..
        } = endpoint
        {
            return Err(ConfigError::DialAnyCid { input: cli.connect });
        }
        let sample_period = Duration::from_millis(cli.sample_period_ms);
        if sample_period < MIN_SAMPLE_PERIOD || sample_period > Duration::from_secs(3600) {
            return Err(ConfigError::OutOfRange {
                flag: "--sample-period-ms",
                value: cli.sample_period_ms,
                expected: "accepted values are 10..=3600000",
            });
        }
        if cli.spool_capacity == 0 {
            return Err(ConfigError::OutOfRange {
                flag: "--spool-capacity",
                value: 0,
                expected: "at least 1 sample",
            });
        }
        let slow_counters_every = u32::try_from(cli.slow_counters_every)
            .ok()
            .filter(|n| *n <= MAX_SLOW_COUNTERS_EVERY)
            .and_then(NonZeroU32::new)
            .ok_or(ConfigError::OutOfRange {
                flag: "--slow-counters-every",
                value: cli.slow_counters_every,
                expected: "accepted values are 1..=3600 samples (1 = read memory and IO every sample)",
            })?;
        if cli.ping_interval_s == 0 {
            return Err(ConfigError::OutOfRange {
                flag: "--ping-interval-s",
                value: 0,
                expected: "at least 1 second",
            });
        }
        if cli.connect_timeout_ms == 0 {
            return Err(ConfigError::OutOfRange {
                flag: "--connect-timeout-ms",
                value: 0,
                expected: "at least 1 millisecond",
            });
        }
        if cli.no_discover && cli.cgroups.is_empty() && cli.no_docker {
            return Err(ConfigError::NothingToSample);
        }
        let docker = if cli.no_docker {
            None
        } else {
            let endpoint: DockerEndpoint =
                cli.docker_host.parse().map_err(ConfigError::DockerHost)?;
            Some(DockerConfig {
                endpoint,
                ..DockerConfig::default()
            })
        };
        Ok(Self {
            stream: StreamConfig {
                endpoint,
                ping_interval: Duration::from_secs(cli.ping_interval_s),
                connect_timeout: Duration::from_millis(cli.connect_timeout_ms),
                backoff_min: BACKOFF_MIN,
                backoff_max: BACKOFF_MAX,
                spool_capacity: cli.spool_capacity,
                shutdown_ack_timeout: SHUTDOWN_ACK_TIMEOUT,
                auth_token: cli.auth_token,
            },
            sample_period,
            slow_counters_every,
            cgroups: cli.cgroups,
            discover: !cli.no_discover,
            root: cli.root,
            vm_name: cli.vm_name,
            expose_energy: cli.expose_energy,
            docker,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn config_connect_errors_name_the_flag_and_refuse_cid_any() {
        let err = |connect: &str| {
            let cli = Cli::try_parse_from(["guest-agent", "--connect", connect]).unwrap();
            format!(
                "{:#}",
                anyhow::Error::new(Config::try_from(cli).unwrap_err())
            )
        };
        let e = err("http://x:1");
        assert!(
            e.contains("--connect") && e.contains("http://x:1") && e.contains("vsock://CID:PORT"),
            "{e}"
        );
        let e = err("vsock://any:7777");
        assert!(
            e.contains("--connect") && e.contains("vsock://any:7777") && e.contains("vsock://2:"),
            "{e}"
        );
    }

    #[test]
    fn config_no_discover_without_cgroup_is_rejected() {
        let cli = Cli::try_parse_from(["guest-agent", "--no-discover", "--no-docker"]).unwrap();
        let err = Config::try_from(cli).unwrap_err();
        assert!(matches!(err, ConfigError::NothingToSample), "{err}");
        // Docker still names containers to sample.
        let cli = Cli::try_parse_from(["guest-agent", "--no-discover"]).unwrap();
        assert!(Config::try_from(cli).is_ok());
    }

    #[test]
    fn config_defaults_are_vsock_host_and_one_hour_spool() {
        let cli = Cli::try_parse_from(["guest-agent"]).unwrap();
        let cfg = Config::try_from(cli).unwrap();
        assert_eq!(cfg.stream.endpoint, Endpoint::Vsock { cid: 2, port: 7777 });
        assert_eq!(cfg.stream.spool_capacity, DEFAULT_SPOOL_CAPACITY);
        assert_eq!(cfg.sample_period, Duration::from_secs(1));
        assert_eq!(cfg.slow_counters_every.get(), DEFAULT_SLOW_COUNTERS_EVERY);
        assert!(cfg.docker.is_some());
    }

    #[test]
    fn config_slow_counters_every_accepts_1_to_max_and_names_the_flag() {
        let parse = |n: &str| {
            let cli = Cli::try_parse_from(["guest-agent", "--slow-counters-every", n]).unwrap();
            Config::try_from(cli)
        };
        assert_eq!(parse("1").unwrap().slow_counters_every.get(), 1);
        assert_eq!(
            parse("3600").unwrap().slow_counters_every.get(),
            MAX_SLOW_COUNTERS_EVERY
        );
        for bad in ["0", "3601", "99999999999"] {
            let err = parse(bad).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, ConfigError::OutOfRange { .. })
                    && text.contains("--slow-counters-every")
                    && text.contains(bad)
                    && text.contains("1..=3600"),
                "{text}"
            );
        }
    }

    #[test]
    fn config_docker_flag_last_one_wins() {
        let off = Cli::try_parse_from(["guest-agent", "--docker", "--no-docker"]).unwrap();
        assert!(Config::try_from(off).unwrap().docker.is_none());
        let on = Cli::try_parse_from(["guest-agent", "--no-docker", "--docker"]).unwrap();
        assert!(Config::try_from(on).unwrap().docker.is_some());
    }
}
