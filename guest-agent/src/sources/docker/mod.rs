//! Container metadata from a Docker-compatible engine (Docker, or Podman's compat socket).
//!
//! Users think in container names and compose services, not cgroup ids. This source keeps a
//! registry `id → name, image, compose labels, PID, cgroup path` and reports every change to the
//! pipeline as a [`RegistryEvent`]. It never samples counters: the pipeline does, and this
//! module only tells it which cgroups exist and when a container's process ends.
//!
//! # How
//!
//! *List, then watch* (the shape of Vector's `docker_logs` source): connect, negotiate the API
//! version (bollard 0.21 speaks 1.53 by default, which older engines refuse), list the
//! containers, inspect the running ones, then follow the engine's event stream (`start`, `die`,
//! `destroy`, `rename`) from the instant the list was taken, so nothing falls between the two.
//! When the stream ends (engine restart, socket gone) the source reconnects with capped
//! exponential back-off and re-lists, reconciling what it missed.
//!
//! # Why a pidfd as well as `die`
//!
//! The engine logs `die` only after it has deleted the task, and deleting the task removes the
//! container's cgroup (moby `daemon/monitor.go`: `DeleteTask`, then the `die` event). A final
//! sample taken on `die` would find nothing. So, where the registry can verify the PID belongs
//! to the container (it is in our PID namespace and its `/proc/<pid>/cgroup` names the
//! container), it also watches the container's main process with a pidfd and reports
//! [`RegistryEvent::Died`] as soon as that process exits, which is while the engine is still
//! tearing the task down and the cgroup's counters can still be read. `die` then only confirms.
//!
//! # Without an engine
//!
//! A missing socket, a file that is not a socket, or a permission error is not fatal: the
//! source sends [`RegistryEvent::Unavailable`] once with an actionable reason, the agent keeps
//! streaming cgroup-only data, and the source keeps retrying quietly in the background.
//!
//! # Modules
//!
//! - `endpoint`: where the engine listens ([`DockerEndpoint`]) and the source's settings
//!   ([`DockerConfig`]).
//! - `registry`: the list-then-watch loop ([`run_registry`]) and its per-container state.
//! - `convert`: pure conversions of the engine's JSON (inspect, list, events) into our types,
//!   never `unwrap()`ing the engine's `Option`s.
//! - `engine`: the engines' conventions: Docker or Podman, cgroup driver, where a container's
//!   cgroup is (`/proc/<pid>/cgroup`, layout rules).
//! - `exit_watch`: the pidfd watcher of a container's main process.

mod convert;
mod endpoint;
mod engine;
mod exit_watch;
mod registry;

use std::io;
use std::path::PathBuf;

use protocol::ContainerInfo;

pub use convert::{
    COMPOSE_NUMBER_LABEL, COMPOSE_PROJECT_LABEL, COMPOSE_SERVICE_LABEL, ContainerEvent,
    info_from_inspect, info_from_summary,
};
pub use endpoint::{
    DEFAULT_DOCKER_SOCKET, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRY_INITIAL, DEFAULT_RETRY_MAX,
    DOCKER_HOST_ENV, DockerConfig, DockerEndpoint,
};
pub use engine::{
    CgroupDriver, EngineKind, cgroup_path_from_layout, cgroup_path_from_proc, engine_description,
    engine_kind,
};
pub use registry::run_registry;

/// What the registry tells the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryEvent {
    /// Connected (again) to an engine; `Upsert`s for every running container follow.
    Connected {
        /// E.g. `Docker Engine 20.10.24 (linux/amd64)`.
        engine: String,
        /// Negotiated API version, e.g. `1.41`.
        api_version: String,
    },
    /// No engine metadata; the agent streams cgroup-only data. Sent once per outage (never
    /// twice in a row); retries continue quietly.
    Unavailable {
        /// What is wrong and what to do, for a human.
        reason: String,
    },
    /// A container appeared, (re)started or was renamed: the complete, current description.
    Upsert(ContainerInfo),
    /// The container's main process exited: take its final sample now, its cgroup is about
    /// to disappear. Sent once per run of the container.
    Died {
        /// Container id.
        id: String,
    },
    /// The container was removed (`destroy`); forget it after recording its totals.
    Removed {
        /// Container id.
        id: String,
    },
}

/// Failures of the Docker source. Only [`run_registry`]'s retry loop sees most of them; their
/// text ends up in [`RegistryEvent::Unavailable`] or in logs.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The endpoint string is not `unix:///…`, an absolute path or `tcp://host:port`.
    #[error("unsupported docker endpoint {value:?} (expected unix:///path or tcp://host:port)")]
    ParseEndpoint {
        /// The rejected value.
        value: String,
    },
    /// Nothing exists at the socket path.
    #[error("docker socket {path:?} does not exist")]
    SocketMissing {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists but is a regular file, a directory, …
    #[error("{path:?} is not a unix socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// `stat` of the socket path failed for another reason than absence.
    #[error("failed to stat docker socket {path:?}")]
    StatSocket {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// bollard refused to build a client for the endpoint.
    #[error("failed to create a docker client for {endpoint}")]
    Client {
        /// The endpoint.
        endpoint: DockerEndpoint,
        /// Cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// `GET /version` for the negotiation failed; connection errors show up here first.
    #[error("failed to negotiate the api version with {endpoint}")]
    Negotiate {
        /// The endpoint.
        endpoint: DockerEndpoint,
        /// Cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// `GET /version` failed after the negotiation.
    #[error("failed to read the engine version")]
    Version {
        /// Cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// `GET /containers/json` failed.
    #[error("failed to list containers")]
    List {
        /// Cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// `GET /containers/<id>/json` failed.
    #[error("failed to inspect container {id}")]
    Inspect {
        /// Container id.
        id: String,
        /// Cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// The event stream returned an error.
    #[error("container event stream failed")]
    Events {
        /// Cause.
        #[source]
        source: bollard::errors::Error,
    },
    /// The engine closed the event stream.
    #[error("container event stream ended")]
    EventsEnded,
    /// A field the engine must send was absent.
    #[error("{what} without {field}")]
    MissingField {
        /// The object, e.g. `container summary`.
        what: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// The engine reported a PID that is not a valid process id.
    #[error("container {id} has invalid pid {pid}")]
    InvalidPid {
        /// Container id.
        id: String,
        /// The reported value.
        pid: i64,
    },
}

impl DockerError {
    /// The `io::ErrorKind` at the root of a connection failure, if there is one.
    fn io_kind(&self) -> Option<io::ErrorKind> {
        let source = match self {
            Self::Client { source, .. }
            | Self::Negotiate { source, .. }
            | Self::Version { source }
            | Self::List { source }
            | Self::Inspect { source, .. }
            | Self::Events { source } => source,
            Self::StatSocket { source, .. } => return Some(source.kind()),
            _ => return None,
        };
        if let bollard::errors::Error::IOError { err } = source {
            return Some(err.kind());
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> =
            std::error::Error::source(source);
        while let Some(err) = cause {
            if let Some(io) = err.downcast_ref::<io::Error>() {
                return Some(io.kind());
            }
            cause = err.source();
        }
        None
    }

    /// Whether the engine answered "no such container" (the container is already gone).
    fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::Inspect {
                source: bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    ..
                },
                ..
            }
        )
    }
}

/// A one-line, actionable explanation of why there is no container metadata.
#[must_use]
pub fn unavailable_reason(endpoint: &DockerEndpoint, err: &DockerError) -> String {
    const CONSEQUENCE: &str =
        "container names and compose services are unavailable; streaming cgroup-only data";
    let hint = "mount the engine socket into the agent \
                (-v /var/run/docker.sock:/var/run/docker.sock) or point --docker-host / \
                DOCKER_HOST at it";
    match err {
        DockerError::SocketMissing { path } => format!(
            "no Docker socket at {}: {CONSEQUENCE} ({hint})",
            path.display()
        ),
        DockerError::NotASocket { path } => format!(
            "{} is not a Unix socket: {CONSEQUENCE} ({hint})",
            path.display()
        ),
        _ => match err.io_kind() {
            Some(io::ErrorKind::PermissionDenied) => format!(
                "permission denied on the Docker socket {endpoint}: {CONSEQUENCE} (run the \
                 agent as root or in the socket's group, usually `docker`; with rootless \
                 Docker or Podman use that user's socket)"
            ),
            Some(io::ErrorKind::ConnectionRefused) => format!(
                "no container engine is listening on {endpoint}: {CONSEQUENCE} (is the Docker \
                 or Podman service running?)"
            ),
            _ => format!(
                "the container engine at {endpoint} is unusable ({}): {CONSEQUENCE}",
                error_chain(err)
            ),
        },
    }
}

/// `err: cause: cause…`, for messages that must stand alone.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_reasons_name_the_problem_and_the_fix() {
        let endpoint = DockerEndpoint::default();
        let missing = unavailable_reason(
            &endpoint,
            &DockerError::SocketMissing {
                path: PathBuf::from(DEFAULT_DOCKER_SOCKET),
            },
        );
        assert!(missing.contains("no Docker socket at /var/run/docker.sock"));
        assert!(missing.contains("cgroup-only"));
        assert!(missing.contains("-v /var/run/docker.sock"));
        let denied = unavailable_reason(
            &endpoint,
            &DockerError::StatSocket {
                path: PathBuf::from(DEFAULT_DOCKER_SOCKET),
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            },
        );
        assert!(denied.starts_with("permission denied"), "{denied}");
        assert!(denied.contains("`docker`"));
        let refused = unavailable_reason(
            &endpoint,
            &DockerError::Negotiate {
                endpoint: endpoint.clone(),
                source: bollard::errors::Error::IOError {
                    err: io::Error::from(io::ErrorKind::ConnectionRefused),
                },
            },
        );
        assert!(
            refused.starts_with("no container engine is listening on unix:///var/run/docker.sock"),
            "{refused}"
        );
    }
}
