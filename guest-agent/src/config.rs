//! The validated configuration of one agent process: the only place where defaults and flags
//! meet. Every error names the flag, the value and what would have been accepted.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::cli::Cli;
use crate::sources::docker::{DockerConfig, DockerEndpoint, DockerError};

/// Shortest sampling period accepted. Below this the cgroup walk itself dominates.
pub const MIN_SAMPLE_PERIOD: Duration = Duration::from_millis(10);
/// Default spool capacity: one hour at the default 1 Hz.
pub const DEFAULT_SPOOL_CAPACITY: usize = 3600;
/// First reconnect delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a shutting-down agent waits for the bridge to acknowledge its last sample.
pub const SHUTDOWN_ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the bridge listens, as the agent dials it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// AF_VSOCK: context id and port. CID 2 is the host.
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// TCP. The host name is resolved at each connect (so `host.docker.internal` follows
    /// Docker Desktop's DNS).
    Tcp {
        /// Host name or address literal.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix domain socket.
    Unix(PathBuf),
}

impl FromStr for Endpoint {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ConfigError::Endpoint {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| err("missing scheme"))?;
        match scheme {
            "vsock" => {
                let (cid, port) = rest.split_once(':').ok_or_else(|| err("missing :PORT"))?;
                let cid = cid
                    .parse()
                    .map_err(|_| err("the CID is not a 32-bit unsigned number"))?;
                let port = port
                    .parse()
                    .map_err(|_| err("the port is not a 32-bit unsigned number"))?;
                Ok(Self::Vsock { cid, port })
            }
            "tcp" => {
                let (host, port) = rest.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() {
                    return Err(err("missing host"));
                }
                let port = port
                    .parse()
                    .map_err(|_| err("the port is not a number in 0..=65535"))?;
                Ok(Self::Tcp {
                    host: host.to_string(),
                    port,
                })
            }
            "unix" => {
                if !rest.starts_with('/') {
                    return Err(err("the socket path must be absolute (unix:///path)"));
                }
                Ok(Self::Unix(PathBuf::from(rest)))
            }
            _ => Err(err("unknown scheme")),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

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
    /// Cgroups named by the user (relative paths).
    pub cgroups: Vec<String>,
    /// Whether container cgroups are discovered.
    pub discover: bool,
    /// Root of the file system read (`/` normally).
    pub root: PathBuf,
    /// VM label; `None` = the hostname.
    pub vm_name: Option<String>,
    /// `None` = no container engine.
    pub docker: Option<DockerConfig>,
}

/// A flag value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An endpoint (`--connect`) did not parse.
    #[error(
        "invalid endpoint {input:?}: {reason}; expected vsock://CID:PORT, tcp://HOST:PORT or unix:///PATH"
    )]
    Endpoint {
        /// The string given.
        input: String,
        /// What is wrong with it.
        reason: String,
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
        let endpoint = cli.connect.parse()?;
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
            cgroups: cli.cgroups,
            discover: !cli.no_discover,
            root: cli.root,
            vm_name: cli.vm_name,
            docker,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn endpoint_vsock_parses_cid_and_port() {
        let e: Endpoint = "vsock://2:7777".parse().unwrap();
        assert_eq!(e, Endpoint::Vsock { cid: 2, port: 7777 });
        assert_eq!(e.to_string(), "vsock://2:7777");
    }

    #[test]
    fn endpoint_tcp_keeps_host_name_for_connect_time_resolution() {
        let e: Endpoint = "tcp://host.docker.internal:7777".parse().unwrap();
        assert_eq!(
            e,
            Endpoint::Tcp {
                host: "host.docker.internal".into(),
                port: 7777
            }
        );
        let v6: Endpoint = "tcp://[::1]:9".parse().unwrap();
        assert_eq!(
            v6,
            Endpoint::Tcp {
                host: "::1".into(),
                port: 9
            }
        );
        assert_eq!(v6.to_string(), "tcp://[::1]:9");
    }

    #[test]
    fn endpoint_unix_takes_absolute_path() {
        let e: Endpoint = "unix:///run/jb.sock".parse().unwrap();
        assert_eq!(e, Endpoint::Unix(PathBuf::from("/run/jb.sock")));
        assert!("unix://relative.sock".parse::<Endpoint>().is_err());
    }

    #[test]
    fn endpoint_errors_name_input_and_accepted_forms() {
        let err = "http://x:1".parse::<Endpoint>().unwrap_err().to_string();
        assert!(
            err.contains("http://x:1") && err.contains("vsock://CID:PORT"),
            "{err}"
        );
        assert!("vsock://2".parse::<Endpoint>().is_err());
        assert!("tcp://host:99999".parse::<Endpoint>().is_err());
        assert!("tcp://:80".parse::<Endpoint>().is_err());
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
        assert!(cfg.docker.is_some());
    }

    #[test]
    fn config_docker_flag_last_one_wins() {
        let off = Cli::try_parse_from(["guest-agent", "--docker", "--no-docker"]).unwrap();
        assert!(Config::try_from(off).unwrap().docker.is_none());
        let on = Cli::try_parse_from(["guest-agent", "--no-docker", "--docker"]).unwrap();
        assert!(Config::try_from(on).unwrap().docker.is_some());
    }
}
