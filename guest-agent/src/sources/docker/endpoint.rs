//! Where the container engine listens and how the source connects to it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::DockerError;

/// Where Docker listens by default (also where Docker Desktop's VM exposes it to containers).
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Environment variable the Docker CLI reads for the engine address (`unix:///…`, `tcp://…`).
pub const DOCKER_HOST_ENV: &str = "DOCKER_HOST";

/// Per-request timeout of API calls. It bounds the time to the response headers only, so it
/// does not cut the long-lived event stream (bollard `Docker::execute_request`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// First retry delay after a failed connection or a broken event stream.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_millis(500);
/// Cap of the exponential back-off between retries.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(30);

/// How the agent reaches the container engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DockerEndpoint {
    /// A Unix socket (Docker, Docker Desktop, Podman's `podman.sock`).
    Unix(PathBuf),
    /// Plain HTTP to `host:port` (`tcp://…`); no TLS.
    Tcp(String),
}

impl Default for DockerEndpoint {
    fn default() -> Self {
        Self::Unix(PathBuf::from(DEFAULT_DOCKER_SOCKET))
    }
}

impl fmt::Display for DockerEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

impl FromStr for DockerEndpoint {
    type Err = DockerError;

    /// Accepts `unix:///path`, an absolute socket path, or `tcp://host:port`.
    fn from_str(s: &str) -> Result<Self, DockerError> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix://") {
            if path.starts_with('/') {
                return Ok(Self::Unix(PathBuf::from(path)));
            }
        } else if let Some(addr) = s.strip_prefix("tcp://") {
            let addr = addr.trim_end_matches('/');
            if !addr.is_empty() && !addr.contains('/') {
                return Ok(Self::Tcp(addr.to_owned()));
            }
        } else if s.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        Err(DockerError::ParseEndpoint {
            value: s.to_owned(),
        })
    }
}

impl DockerEndpoint {
    /// The endpoint named by a `DOCKER_HOST` value, or the default socket when it is unset or
    /// empty.
    ///
    /// # Errors
    ///
    /// [`DockerError::ParseEndpoint`] for a scheme the agent does not speak (`ssh://`, `npipe://`).
    pub fn from_docker_host(value: Option<&str>) -> Result<Self, DockerError> {
        match value.map(str::trim) {
            None | Some("") => Ok(Self::default()),
            Some(v) => v.parse(),
        }
    }
}

/// Settings of the Docker metadata source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerConfig {
    /// Engine address.
    pub endpoint: DockerEndpoint,
    /// Timeout of one API request (to the response headers).
    pub request_timeout: Duration,
    /// First retry delay; doubles per failure up to `retry_max`, reset after a good session.
    pub retry_initial: Duration,
    /// Cap of the retry delay.
    pub retry_max: Duration,
    /// Watch each container's main process with a pidfd so [`RegistryEvent::Died`] comes
    /// before the engine removes the cgroup (see the module docs). Off only for diagnosis.
    pub watch_exits: bool,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self {
            endpoint: DockerEndpoint::default(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry_initial: DEFAULT_RETRY_INITIAL,
            retry_max: DEFAULT_RETRY_MAX,
            watch_exits: true,
        }
    }
}

impl DockerConfig {
    /// Defaults, with the endpoint taken from `DOCKER_HOST` when it is set.
    ///
    /// # Errors
    ///
    /// [`DockerError::ParseEndpoint`] when `DOCKER_HOST` holds an unsupported address.
    pub fn from_env() -> Result<Self, DockerError> {
        let host = std::env::var(DOCKER_HOST_ENV).ok();
        Ok(Self {
            endpoint: DockerEndpoint::from_docker_host(host.as_deref())?,
            ..Self::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_from_every_form() {
        assert_eq!(
            "unix:///run/podman/podman.sock"
                .parse::<DockerEndpoint>()
                .ok(),
            Some(DockerEndpoint::Unix(PathBuf::from(
                "/run/podman/podman.sock"
            )))
        );
        assert_eq!(
            "/var/run/docker.sock".parse::<DockerEndpoint>().ok(),
            Some(DockerEndpoint::default())
        );
        assert_eq!(
            "tcp://10.0.2.2:2375".parse::<DockerEndpoint>().ok(),
            Some(DockerEndpoint::Tcp("10.0.2.2:2375".to_owned()))
        );
        assert!("ssh://user@host".parse::<DockerEndpoint>().is_err());
        assert!("unix://relative.sock".parse::<DockerEndpoint>().is_err());
        assert_eq!(
            DockerEndpoint::from_docker_host(None).ok(),
            Some(DockerEndpoint::default())
        );
        assert_eq!(
            DockerEndpoint::from_docker_host(Some("  ")).ok(),
            Some(DockerEndpoint::default())
        );
        assert_eq!(
            DockerEndpoint::from_docker_host(Some("unix:///tmp/d.sock")).ok(),
            Some(DockerEndpoint::Unix(PathBuf::from("/tmp/d.sock")))
        );
    }
}
