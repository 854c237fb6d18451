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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary,
    ContainerSummaryStateEnum, EventMessage, SystemVersion,
};
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use futures::StreamExt;
use protocol::{ContainerInfo, ContainerState};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Where Docker listens by default (also where Docker Desktop's VM exposes it to containers).
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Environment variable the Docker CLI reads for the engine address (`unix:///…`, `tcp://…`).
pub const DOCKER_HOST_ENV: &str = "DOCKER_HOST";

/// Compose label: project name (docker/compose `pkg/api/labels.go`, same key in compose v1).
pub const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";
/// Compose label: service name.
pub const COMPOSE_SERVICE_LABEL: &str = "com.docker.compose.service";
/// Compose label: replica number of the service, starting at 1.
pub const COMPOSE_NUMBER_LABEL: &str = "com.docker.compose.container-number";

/// Per-request timeout of API calls. It bounds the time to the response headers only, so it
/// does not cut the long-lived event stream (bollard `Docker::execute_request`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// First retry delay after a failed connection or a broken event stream.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_millis(500);
/// Cap of the exponential back-off between retries.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(30);

/// Event actions that change the registry, for the engine-side filter. Docker's names, plus
/// Podman's internal names for exit and removal: its compat API filters on those (and then
/// reports `die` and `remove`). Docker ignores names it does not know.
const EVENT_ACTIONS: [&str; 6] = ["start", "die", "died", "destroy", "remove", "rename"];

/// Capacity of the internal channel from exit watchers to the registry loop.
/// Overflow policy: watchers `send().await`; at most one notice per watched container exists.
const EXIT_NOTICE_CAPACITY: usize = 64;

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

/// Follows the container engine and reports container metadata to `out` until `cancel` fires
/// or `out`'s receiver is dropped.
///
/// `proc_root` is the `/proc` that shows the engine's PIDs (with `--pid=host`, the agent's
/// own `/proc`); `<proc_root>/<pid>/cgroup` gives each container's cgroup path.
///
/// Overflow policy of `out`: `send().await`. Events are rare and each one matters (a lost
/// `Died` loses a container's last slice of CPU), so the registry waits for the pipeline.
pub async fn run_registry(
    cfg: DockerConfig,
    proc_root: PathBuf,
    out: mpsc::Sender<RegistryEvent>,
    cancel: CancellationToken,
) {
    let (exit_tx, mut exit_rx) = mpsc::channel(EXIT_NOTICE_CAPACITY);
    let mut registry = Registry {
        containers: HashMap::new(),
        proc_root,
        out,
        exit_tx,
        watch_exits: cfg.watch_exits,
        layout: Layout::default(),
        cancel: cancel.clone(),
    };
    let mut backoff = Backoff::new(cfg.retry_initial, cfg.retry_max);
    let mut unavailable_sent = false;
    loop {
        let step = tokio::select! {
            () = cancel.cancelled() => return,
            step = registry.session(&cfg, &mut exit_rx) => step,
        };
        match step {
            Step::ReceiverGone => return,
            Step::ConnectFailed(err) => {
                if unavailable_sent {
                    tracing::debug!(endpoint = %cfg.endpoint, error = %error_chain(&err), "Container engine still unavailable; retrying.");
                } else {
                    let reason = unavailable_reason(&cfg.endpoint, &err);
                    tracing::warn!(endpoint = %cfg.endpoint, reason = %reason, "Container engine unavailable; streaming cgroup-only data.");
                    if registry
                        .send(RegistryEvent::Unavailable { reason })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    unavailable_sent = true;
                }
            }
            Step::Lost { err, listed } => {
                unavailable_sent = false;
                if listed {
                    backoff.reset();
                }
                tracing::warn!(endpoint = %cfg.endpoint, error = %error_chain(&err), "Lost the container engine; reconnecting.");
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// How one connection attempt ended.
enum Step {
    /// Could not connect; no `Connected` was sent.
    ConnectFailed(DockerError),
    /// Was connected, then the list or the event stream failed. `listed` = the initial list
    /// succeeded (the session was healthy, so the back-off starts over).
    Lost { err: DockerError, listed: bool },
    /// The pipeline dropped its receiver.
    ReceiverGone,
}

/// Receiver of [`RegistryEvent`]s is gone.
struct Closed;

/// A container the registry knows: running, or exited but not yet removed.
struct Tracked {
    info: ContainerInfo,
    /// Cancels the pidfd watcher of the current run when dropped or replaced.
    exit_watch: Option<DropGuard>,
}

/// The main process of a watched container exited.
#[derive(Debug)]
struct ExitNotice {
    id: String,
    pid: u32,
}

/// The engine's cgroup conventions, for the layout-rule fallback.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// moby / Docker Engine / Docker Desktop.
    #[default]
    Docker,
    /// Podman's Docker-compatible API.
    Podman,
}

/// Cgroup manager the engine uses (`docker info`: Cgroup Driver).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CgroupDriver {
    /// The engine writes the cgroup tree itself (`docker/<id>`).
    #[default]
    Cgroupfs,
    /// systemd scopes (`system.slice/docker-<id>.scope`).
    Systemd,
}

#[derive(Clone, Copy, Debug, Default)]
struct Layout {
    engine: EngineKind,
    driver: CgroupDriver,
}

struct Registry {
    /// Everything not yet removed, keyed by container id.
    containers: HashMap<String, Tracked>,
    proc_root: PathBuf,
    /// To the pipeline. `send().await` (see [`run_registry`]).
    out: mpsc::Sender<RegistryEvent>,
    /// Cloned into each exit watcher.
    exit_tx: mpsc::Sender<ExitNotice>,
    watch_exits: bool,
    layout: Layout,
    /// Parent of every exit watcher's token.
    cancel: CancellationToken,
}

impl Registry {
    async fn send(&self, event: RegistryEvent) -> Result<(), Closed> {
        self.out.send(event).await.map_err(|_| Closed)
    }

    /// Connect, list, follow events until something breaks.
    async fn session(
        &mut self,
        cfg: &DockerConfig,
        exit_rx: &mut mpsc::Receiver<ExitNotice>,
    ) -> Step {
        let (docker, engine, api_version) = match connect(cfg).await {
            Ok(connected) => connected,
            Err(err) => return Step::ConnectFailed(err),
        };
        self.layout = Layout {
            engine: engine_kind(&engine),
            driver: cgroup_driver(&docker).await,
        };
        let engine_text = engine_description(&engine);
        tracing::info!(endpoint = %cfg.endpoint, engine = %engine_text, api_version = %api_version, "Connected to the container engine.");
        if self
            .send(RegistryEvent::Connected {
                engine: engine_text,
                api_version,
            })
            .await
            .is_err()
        {
            return Step::ReceiverGone;
        }

        // Events are replayed from this instant, so a change between the list and the
        // subscription is seen twice rather than never (handlers are idempotent).
        let since = unix_now();
        match self.relist(&docker).await {
            Ok(Ok(())) => {}
            Ok(Err(Closed)) => return Step::ReceiverGone,
            Err(err) => return Step::Lost { err, listed: false },
        }

        let filters = HashMap::from([
            ("type", vec!["container"]),
            ("event", EVENT_ACTIONS.to_vec()),
        ]);
        let options = EventsOptionsBuilder::new()
            .since(&since)
            .filters(&filters)
            .build();
        let mut events = docker.events(Some(options));
        loop {
            let handled = tokio::select! {
                // Exits first: a final sample must not wait behind a burst of events.
                biased;
                notice = exit_rx.recv() => match notice {
                    Some(notice) => self.on_exit(notice).await,
                    // Unreachable: `self.exit_tx` keeps the channel open.
                    None => Ok(()),
                },
                event = events.next() => match event {
                    None => return Step::Lost { err: DockerError::EventsEnded, listed: true },
                    Some(Err(source)) => {
                        return Step::Lost { err: DockerError::Events { source }, listed: true };
                    }
                    Some(Ok(event)) => self.on_event(&docker, event).await,
                },
            };
            if handled.is_err() {
                return Step::ReceiverGone;
            }
        }
    }

    /// Lists all containers and reconciles the registry with the list.
    async fn relist(&mut self, docker: &Docker) -> Result<Result<(), Closed>, DockerError> {
        let options = ListContainersOptionsBuilder::new().all(true).build();
        let summaries = docker
            .list_containers(Some(options))
            .await
            .map_err(|source| DockerError::List { source })?;
        let mut present = HashSet::new();
        let mut running = Vec::new();
        for summary in summaries {
            let Some(id) = summary.id.clone() else {
                tracing::debug!("Container summary without an id; skipping it.");
                continue;
            };
            present.insert(id.clone());
            if summary_is_running(&summary) {
                running.push((id, summary));
            }
        }
        // What changed while we were not watching.
        let known: Vec<String> = self.containers.keys().cloned().collect();
        for id in known {
            let still_running = running.iter().any(|(r, _)| *r == id);
            if !still_running && self.mark_exited(&id).await.is_err() {
                return Ok(Err(Closed));
            }
            if !present.contains(&id) && self.remove(&id).await.is_err() {
                return Ok(Err(Closed));
            }
        }
        for (id, summary) in running {
            let info = match self.inspect(docker, &id).await {
                Ok(Some(info)) if info.state == ContainerState::Running => info,
                // Gone or stopped since the list; the replayed events report it.
                Ok(_) => continue,
                Err(err) => {
                    tracing::warn!(container = %id, error = %error_chain(&err), "Inspect failed; using the list entry and layout rules.");
                    match info_from_summary(&summary) {
                        Ok(mut info) => {
                            info.cgroup_path = cgroup_path_from_layout(
                                &info.id,
                                self.layout.engine,
                                self.layout.driver,
                                None,
                            );
                            info
                        }
                        Err(err) => {
                            tracing::warn!(container = %id, error = %err, "Unusable container list entry; skipping it.");
                            continue;
                        }
                    }
                }
            };
            if self.upsert(info).await.is_err() {
                return Ok(Err(Closed));
            }
        }
        Ok(Ok(()))
    }

    async fn on_event(&mut self, docker: &Docker, event: EventMessage) -> Result<(), Closed> {
        let Some(change) = ContainerEvent::from_message(&event) else {
            tracing::trace!(?event, "Ignoring an engine event.");
            return Ok(());
        };
        tracing::debug!(?change, "Container event.");
        match change {
            ContainerEvent::Start { id } => match self.inspect(docker, &id).await {
                Ok(Some(info)) if info.state == ContainerState::Running => self.upsert(info).await,
                Ok(_) => Ok(()), // already stopped or removed; later events say so
                Err(err) => {
                    tracing::warn!(container = %id, error = %error_chain(&err), "Cannot describe a started container; its cgroup stays anonymous.");
                    Ok(())
                }
            },
            ContainerEvent::Die { id } => self.mark_exited(&id).await,
            ContainerEvent::Destroy { id } => {
                self.mark_exited(&id).await?;
                self.remove(&id).await
            }
            ContainerEvent::Rename { id, name } => {
                if let Some(tracked) = self.containers.get_mut(&id) {
                    tracked.info.name = name;
                    let info = tracked.info.clone();
                    return self.send(RegistryEvent::Upsert(info)).await;
                }
                match self.inspect(docker, &id).await {
                    Ok(Some(info)) if info.state == ContainerState::Running => {
                        self.upsert(info).await
                    }
                    Ok(_) => Ok(()),
                    Err(err) => {
                        tracing::warn!(container = %id, error = %error_chain(&err), "Cannot describe a renamed container.");
                        Ok(())
                    }
                }
            }
        }
    }

    async fn on_exit(&mut self, notice: ExitNotice) -> Result<(), Closed> {
        let current = self.containers.get(&notice.id).is_some_and(|t| {
            t.info.state == ContainerState::Running && t.info.pid == Some(notice.pid)
        });
        if current {
            tracing::debug!(container = %notice.id, pid = notice.pid, "Container main process exited.");
            self.mark_exited(&notice.id).await
        } else {
            Ok(()) // a stale watcher of an earlier run
        }
    }

    /// Running → exited, once per run; sends `Died`.
    async fn mark_exited(&mut self, id: &str) -> Result<(), Closed> {
        let Some(tracked) = self.containers.get_mut(id) else {
            return Ok(());
        };
        if tracked.info.state != ContainerState::Running {
            return Ok(());
        }
        tracked.info.state = ContainerState::Exited;
        tracked.exit_watch = None;
        self.send(RegistryEvent::Died { id: id.to_owned() }).await
    }

    async fn remove(&mut self, id: &str) -> Result<(), Closed> {
        if self.containers.remove(id).is_none() {
            return Ok(());
        }
        self.send(RegistryEvent::Removed { id: id.to_owned() })
            .await
    }

    async fn upsert(&mut self, info: ContainerInfo) -> Result<(), Closed> {
        let same_run = self
            .containers
            .get(&info.id)
            .is_some_and(|t| t.info.state == ContainerState::Running && t.info.pid == info.pid);
        let exit_watch = if same_run {
            self.containers
                .get_mut(&info.id)
                .and_then(|t| t.exit_watch.take())
        } else {
            self.watch_exit(&info).await
        };
        self.containers.insert(
            info.id.clone(),
            Tracked {
                info: info.clone(),
                exit_watch,
            },
        );
        self.send(RegistryEvent::Upsert(info)).await
    }

    /// Inspects a container: `Ok(None)` when it no longer exists.
    async fn inspect(
        &self,
        docker: &Docker,
        id: &str,
    ) -> Result<Option<ContainerInfo>, DockerError> {
        let response = match docker.inspect_container(id, None).await {
            Ok(response) => response,
            Err(source) => {
                let err = DockerError::Inspect {
                    id: id.to_owned(),
                    source,
                };
                return if err.is_not_found() {
                    Ok(None)
                } else {
                    Err(err)
                };
            }
        };
        let mut info = info_from_inspect(&response)?;
        let cgroup_parent = response
            .host_config
            .as_ref()
            .and_then(|h| h.cgroup_parent.as_deref());
        info.cgroup_path = self
            .resolve_cgroup_path(&info.id, info.pid, cgroup_parent)
            .await;
        Ok(Some(info))
    }

    /// `<proc_root>/<pid>/cgroup` when it names the container, else the layout rules.
    async fn resolve_cgroup_path(
        &self,
        id: &str,
        pid: Option<u32>,
        cgroup_parent: Option<&str>,
    ) -> String {
        if let Some(pid) = pid {
            let file = self.proc_root.join(pid.to_string()).join("cgroup");
            match tokio::fs::read_to_string(&file).await {
                Ok(text) => match cgroup_path_from_proc(&text) {
                    Some(path) => return path,
                    None => {
                        tracing::debug!(container = %id, file = %file.display(), "No usable cgroup line (private cgroup namespace?); using layout rules.");
                    }
                },
                Err(err) => {
                    tracing::debug!(container = %id, file = %file.display(), error = %err, "Cannot read the container's cgroup file; using layout rules.");
                }
            }
        }
        cgroup_path_from_layout(id, self.layout.engine, self.layout.driver, cgroup_parent)
    }

    /// Starts a pidfd watcher when the PID verifiably belongs to the container.
    async fn watch_exit(&self, info: &ContainerInfo) -> Option<DropGuard> {
        let pid = info.pid?;
        // Only when PIDs from the engine are PIDs in our namespace: `proc_root` is our own
        // `/proc` and the process there sits in this container's cgroup.
        if !self.watch_exits
            || self.proc_root != Path::new("/proc")
            || !info.cgroup_path.contains(&info.id)
        {
            return None;
        }
        let file = self.proc_root.join(pid.to_string()).join("cgroup");
        let fd = exit_watch::open(pid)?;
        // Re-check after opening: the pidfd now pins this exact process.
        let text = tokio::fs::read_to_string(&file).await.ok()?;
        if cgroup_path_from_proc(&text).as_deref() != Some(info.cgroup_path.as_str()) {
            return None;
        }
        let token = self.cancel.child_token();
        let notice = ExitNotice {
            id: info.id.clone(),
            pid,
        };
        exit_watch::spawn(fd, notice, self.exit_tx.clone(), token.clone())?;
        Some(token.drop_guard())
    }
}

/// The pidfd watcher (Linux ≥ 5.3): a pidfd turns readable when the process exits.
///
/// Holds the module's only `unsafe` (audited): registering the pidfd with tokio's reactor.
mod exit_watch {
    use std::os::fd::OwnedFd;

    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::ExitNotice;

    /// `pidfd_open(pid)`; `None` when the process is gone or the kernel lacks pidfds.
    pub(super) fn open(pid: u32) -> Option<OwnedFd> {
        let raw = i32::try_from(pid).ok()?;
        let pid = rustix::process::Pid::from_raw(raw)?;
        match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => Some(fd),
            Err(err) => {
                tracing::debug!(pid = raw, error = %err, "pidfd_open failed; relying on the engine's die event.");
                None
            }
        }
    }

    /// Spawns a task that sends `notice` when the process behind `fd` exits.
    pub(super) fn spawn(
        fd: OwnedFd,
        notice: ExitNotice,
        tx: mpsc::Sender<ExitNotice>,
        cancel: CancellationToken,
    ) -> Option<()> {
        // SAFETY: `register_with_interest` requires that `as_raw_fd()` stays a valid, open
        // descriptor of the same file description for the AsyncFd's lifetime. The `OwnedFd`
        // is moved into the AsyncFd, which alone owns and closes it, and an `OwnedFd` always
        // returns the same descriptor.
        #[allow(unsafe_code)]
        let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
        let fd = match registered {
            Ok(fd) => fd,
            Err(err) => {
                tracing::debug!(error = %err, "Cannot poll a pidfd; relying on the engine's die event.");
                return None;
            }
        };
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                ready = fd.readable() => {
                    if ready.is_ok() {
                        // Closed receiver: the registry is shutting down; nothing to report to.
                        let _closed = tx.send(notice).await;
                    }
                }
            }
        });
        Some(())
    }
}

/// A container event the registry acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerEvent {
    /// `start`.
    Start {
        /// Container id.
        id: String,
    },
    /// `die` (Podman: `died`).
    Die {
        /// Container id.
        id: String,
    },
    /// `destroy` (Podman: `remove`).
    Destroy {
        /// Container id.
        id: String,
    },
    /// `rename`, with the new name.
    Rename {
        /// Container id.
        id: String,
        /// New name without the leading `/`.
        name: String,
    },
}

impl ContainerEvent {
    /// Interprets an engine event; `None` for events the registry ignores or that lack an id.
    #[must_use]
    pub fn from_message(event: &EventMessage) -> Option<Self> {
        if let Some(typ) = event.typ
            && typ != bollard::models::EventMessageTypeEnum::CONTAINER
        {
            return None;
        }
        let actor = event.actor.as_ref()?;
        let id = actor.id.clone().filter(|id| !id.is_empty())?;
        // Actions may carry a suffix (`exec_start: sh`); compare the verb only.
        let action = event.action.as_deref()?;
        let verb = action.split(':').next().unwrap_or(action).trim();
        match verb {
            "start" => Some(Self::Start { id }),
            "die" | "died" => Some(Self::Die { id }),
            "destroy" | "remove" => Some(Self::Destroy { id }),
            "rename" => {
                let name = actor
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get("name"))
                    .map(|n| strip_name(n).to_owned())?;
                Some(Self::Rename { id, name })
            }
            _ => None,
        }
    }
}

/// `ContainerInfo` from `GET /containers/<id>/json`; `cgroup_path` is left empty for the
/// caller, which resolves it from `/proc`.
///
/// # Errors
///
/// [`DockerError::MissingField`] without an id, [`DockerError::InvalidPid`] for a PID that is
/// neither 0 (not running) nor a valid process id.
pub fn info_from_inspect(inspect: &ContainerInspectResponse) -> Result<ContainerInfo, DockerError> {
    const WHAT: &str = "container inspect response";
    let id = inspect
        .id
        .clone()
        .filter(|id| !id.is_empty())
        .ok_or(DockerError::MissingField {
            what: WHAT,
            field: "Id",
        })?;
    let name = inspect
        .name
        .as_deref()
        .map(strip_name)
        .unwrap_or_default()
        .to_owned();
    let config = inspect.config.as_ref();
    let image = config
        .and_then(|c| c.image.clone())
        .or_else(|| inspect.image.clone())
        .unwrap_or_default();
    let labels = config.and_then(|c| c.labels.as_ref());
    let state = inspect.state.as_ref();
    let running = state.and_then(|s| s.status).map_or_else(
        || state.and_then(|s| s.running).unwrap_or(false),
        |status| {
            matches!(
                status,
                ContainerStateStatusEnum::RUNNING
                    | ContainerStateStatusEnum::PAUSED
                    | ContainerStateStatusEnum::RESTARTING
            )
        },
    );
    let pid = match state.and_then(|s| s.pid) {
        None | Some(0) => None,
        Some(raw) => Some(u32::try_from(raw).map_err(|_| DockerError::InvalidPid {
            id: id.clone(),
            pid: raw,
        })?),
    };
    Ok(with_labels(
        ContainerInfo {
            id,
            name,
            image,
            pid,
            state: if running {
                ContainerState::Running
            } else {
                ContainerState::Exited
            },
            ..ContainerInfo::default()
        },
        labels,
    ))
}

/// `ContainerInfo` from a `GET /containers/json` entry (no PID there; `cgroup_path` empty).
///
/// # Errors
///
/// [`DockerError::MissingField`] without an id.
pub fn info_from_summary(summary: &ContainerSummary) -> Result<ContainerInfo, DockerError> {
    let id = summary
        .id
        .clone()
        .filter(|id| !id.is_empty())
        .ok_or(DockerError::MissingField {
            what: "container summary",
            field: "Id",
        })?;
    // `Names` also lists legacy link aliases (`/other/alias`); the real name has no inner `/`.
    let names: Vec<&str> = summary
        .names
        .iter()
        .flatten()
        .map(|n| strip_name(n))
        .collect();
    let name = names
        .iter()
        .find(|n| !n.contains('/'))
        .or(names.first())
        .map(|n| (*n).to_owned())
        .unwrap_or_default();
    Ok(with_labels(
        ContainerInfo {
            id,
            name,
            image: summary.image.clone().unwrap_or_default(),
            pid: None,
            state: if summary_is_running(summary) {
                ContainerState::Running
            } else {
                ContainerState::Exited
            },
            ..ContainerInfo::default()
        },
        summary.labels.as_ref(),
    ))
}

fn summary_is_running(summary: &ContainerSummary) -> bool {
    matches!(
        summary.state,
        Some(
            ContainerSummaryStateEnum::RUNNING
                | ContainerSummaryStateEnum::PAUSED
                | ContainerSummaryStateEnum::RESTARTING
        )
    )
}

/// Splits compose labels out of `labels`; the rest is kept sorted by key.
fn with_labels(mut info: ContainerInfo, labels: Option<&HashMap<String, String>>) -> ContainerInfo {
    let Some(labels) = labels else {
        return info;
    };
    let mut rest = Vec::with_capacity(labels.len());
    for (key, value) in labels {
        match key.as_str() {
            COMPOSE_PROJECT_LABEL => info.compose_project = Some(value.clone()),
            COMPOSE_SERVICE_LABEL => info.compose_service = Some(value.clone()),
            COMPOSE_NUMBER_LABEL => match value.trim().parse::<u32>() {
                Ok(n) => info.compose_number = Some(n),
                Err(err) => {
                    tracing::debug!(container = %info.id, value = %value, error = %err, "Malformed compose container number; ignoring it.");
                    rest.push((key.clone(), value.clone()));
                }
            },
            _ => rest.push((key.clone(), value.clone())),
        }
    }
    rest.sort();
    info.labels = rest;
    info
}

fn strip_name(name: &str) -> &str {
    name.strip_prefix('/').unwrap_or(name)
}

/// The container's cgroup path relative to the cgroup root, from the text of
/// `/proc/<pid>/cgroup` as seen in the host cgroup namespace.
///
/// Prefers the v1 hierarchy carrying `cpuacct` (`N:cpu,cpuacct:<path>` or `N:cpuacct:<path>`:
/// CPU accounting lives there on v1 and hybrid hosts), else the v2 line `0::<path>`. Returns
/// `None` for the root or a path outside our cgroup namespace (`/../…`): the reader is in a
/// private cgroup namespace and the caller must fall back to layout rules.
#[must_use]
pub fn cgroup_path_from_proc(text: &str) -> Option<String> {
    let mut v1 = None;
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if hierarchy == "0" && controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(',').any(|c| c == "cpuacct") {
            v1 = Some(path);
        }
    }
    let path = v1.or(v2)?.trim();
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let relative = path.strip_prefix('/')?.trim_end_matches('/');
    if relative.is_empty() || relative.split('/').any(|c| c == ".." || c == ".") {
        return None;
    }
    Some(relative.to_owned())
}

/// Where the engine puts a container's cgroup (relative to the cgroup root) when
/// `/proc/<pid>/cgroup` cannot say (docs/platforms.md §2 table):
///
/// | engine, driver | default | with `--cgroup-parent P` |
/// |---|---|---|
/// | Docker, cgroupfs | `docker/<id>` | `P/<id>` |
/// | Docker, systemd | `system.slice/docker-<id>.scope` | slice `P` expanded, then `docker-<id>.scope` |
/// | Podman, cgroupfs | `libpod_parent/libpod-<id>` | `P/libpod-<id>` |
/// | Podman, systemd | `machine.slice/libpod-<id>.scope` | slice `P` expanded, then `libpod-<id>.scope` |
#[must_use]
pub fn cgroup_path_from_layout(
    id: &str,
    engine: EngineKind,
    driver: CgroupDriver,
    cgroup_parent: Option<&str>,
) -> String {
    let parent = cgroup_parent
        .map(|p| p.trim().trim_matches('/'))
        .filter(|p| !p.is_empty());
    match (engine, driver) {
        (EngineKind::Docker, CgroupDriver::Cgroupfs) => {
            format!("{}/{id}", parent.unwrap_or("docker"))
        }
        (EngineKind::Podman, CgroupDriver::Cgroupfs) => {
            format!("{}/libpod-{id}", parent.unwrap_or("libpod_parent"))
        }
        (engine, CgroupDriver::Systemd) => {
            let prefix = match engine {
                EngineKind::Docker => "docker",
                EngineKind::Podman => "libpod",
            };
            let default = match engine {
                EngineKind::Docker => "system.slice",
                EngineKind::Podman => "machine.slice",
            };
            let slice = parent.map_or_else(|| default.to_owned(), expand_slice);
            format!("{slice}/{prefix}-{id}.scope")
        }
    }
}

/// systemd slice name → path: `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice`
/// (systemd.slice(5)). A value that already is a path is kept.
fn expand_slice(slice: &str) -> String {
    let Some(stem) = slice.strip_suffix(".slice") else {
        return slice.to_owned();
    };
    if slice.contains('/') || stem.is_empty() || stem == "-" {
        return slice.to_owned();
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    path
}

/// Human description of the engine, e.g. `Docker Engine - Community 27.3.1 (linux/amd64)`.
#[must_use]
pub fn engine_description(version: &SystemVersion) -> String {
    let name = version
        .components
        .iter()
        .flatten()
        .find(|c| c.name.contains("Podman"))
        .map(|c| c.name.clone())
        .or_else(|| {
            version
                .platform
                .as_ref()
                .map(|p| p.name.clone())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| "Docker Engine".to_owned());
    let mut text = name;
    if let Some(v) = version.version.as_deref().filter(|v| !v.is_empty()) {
        text.push(' ');
        text.push_str(v);
    }
    if let (Some(os), Some(arch)) = (version.os.as_deref(), version.arch.as_deref()) {
        text.push_str(&format!(" ({os}/{arch})"));
    }
    text
}

/// Podman announces itself in the version components; everything else follows moby.
#[must_use]
pub fn engine_kind(version: &SystemVersion) -> EngineKind {
    let podman = version
        .components
        .iter()
        .flatten()
        .any(|c| c.name.contains("Podman"));
    if podman {
        EngineKind::Podman
    } else {
        EngineKind::Docker
    }
}

async fn cgroup_driver(docker: &Docker) -> CgroupDriver {
    match docker.info().await {
        Ok(info) => match info.cgroup_driver {
            Some(bollard::models::SystemInfoCgroupDriverEnum::SYSTEMD) => CgroupDriver::Systemd,
            _ => CgroupDriver::Cgroupfs,
        },
        Err(err) => {
            tracing::debug!(error = %err, "Engine info unavailable; assuming the cgroupfs driver for layout rules.");
            CgroupDriver::Cgroupfs
        }
    }
}

/// Opens a client, negotiates the API version and reads the engine's version.
async fn connect(cfg: &DockerConfig) -> Result<(Docker, SystemVersion, String), DockerError> {
    let timeout = cfg.request_timeout.as_secs().max(1);
    let docker = match &cfg.endpoint {
        DockerEndpoint::Unix(path) => {
            check_socket(path).await?;
            let path_text = path.to_string_lossy();
            Docker::connect_with_unix(&path_text, timeout, bollard::API_DEFAULT_VERSION)
        }
        DockerEndpoint::Tcp(addr) => Docker::connect_with_http(
            &format!("tcp://{addr}"),
            timeout,
            bollard::API_DEFAULT_VERSION,
        ),
    }
    .map_err(|source| DockerError::Client {
        endpoint: cfg.endpoint.clone(),
        source,
    })?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|source| DockerError::Negotiate {
            endpoint: cfg.endpoint.clone(),
            source,
        })?;
    let version = docker
        .version()
        .await
        .map_err(|source| DockerError::Version { source })?;
    let api = docker.client_version();
    let api_version = format!("{}.{}", api.major_version, api.minor_version);
    Ok((docker, version, api_version))
}

/// Distinguishes "no socket" and "not a socket" before bollard turns them into vaguer errors.
async fn check_socket(path: &Path) -> Result<(), DockerError> {
    use std::os::unix::fs::FileTypeExt;
    match tokio::fs::metadata(path).await {
        Ok(meta) if meta.file_type().is_socket() => Ok(()),
        Ok(_) => Err(DockerError::NotASocket {
            path: path.to_owned(),
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Err(DockerError::SocketMissing {
            path: path.to_owned(),
        }),
        Err(source) => Err(DockerError::StatSocket {
            path: path.to_owned(),
            source,
        }),
    }
}

/// `seconds.nanoseconds` since the epoch, the form the events API takes for `since`.
fn unix_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

/// Capped exponential back-off, reset after a healthy session.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubles per call of [`Backoff::next_delay`], never exceeds `max`.
    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.min(max);
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay to wait now; the following one doubles.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Back to the initial delay.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ContainerConfig, ContainerState as InspectState, EventActor, EventMessageTypeEnum,
        HostConfig, SystemVersionComponents, SystemVersionPlatform,
    };

    const ID: &str = "9ebb4af3843edfc631bfeb246c4716bd7f7defd6f41a4ac4f7d44a337c1f8199";

    fn compose_labels() -> HashMap<String, String> {
        HashMap::from([
            (COMPOSE_PROJECT_LABEL.to_owned(), "shop".to_owned()),
            (COMPOSE_SERVICE_LABEL.to_owned(), "web".to_owned()),
            (COMPOSE_NUMBER_LABEL.to_owned(), "2".to_owned()),
            ("z.last".to_owned(), "1".to_owned()),
            ("a.first".to_owned(), "x".to_owned()),
        ])
    }

    fn inspect(status: ContainerStateStatusEnum, pid: i64) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some(ID.to_owned()),
            name: Some("/shop-web-2".to_owned()),
            image: Some("sha256:abc".to_owned()),
            state: Some(InspectState {
                status: Some(status),
                pid: Some(pid),
                ..InspectState::default()
            }),
            config: Some(ContainerConfig {
                image: Some("joulebridge-test/busybox".to_owned()),
                labels: Some(compose_labels()),
                ..ContainerConfig::default()
            }),
            host_config: Some(HostConfig::default()),
            ..ContainerInspectResponse::default()
        }
    }

    #[test]
    fn inspect_running_compose_container_maps_every_field() {
        let info = info_from_inspect(&inspect(ContainerStateStatusEnum::RUNNING, 4242))
            .expect("complete inspect response");
        assert_eq!(info.id, ID);
        assert_eq!(info.name, "shop-web-2");
        assert_eq!(info.image, "joulebridge-test/busybox");
        assert_eq!(info.compose_project.as_deref(), Some("shop"));
        assert_eq!(info.compose_service.as_deref(), Some("web"));
        assert_eq!(info.compose_number, Some(2));
        assert_eq!(
            info.labels,
            vec![
                ("a.first".to_owned(), "x".to_owned()),
                ("z.last".to_owned(), "1".to_owned())
            ]
        );
        assert_eq!(info.pid, Some(4242));
        assert_eq!(info.state, ContainerState::Running);
        assert!(info.cgroup_path.is_empty(), "resolved by the caller");
    }

    #[test]
    fn inspect_exited_container_has_no_pid() {
        let info = info_from_inspect(&inspect(ContainerStateStatusEnum::EXITED, 0))
            .expect("complete inspect response");
        assert_eq!(info.pid, None);
        assert_eq!(info.state, ContainerState::Exited);
    }

    #[test]
    fn inspect_paused_container_counts_as_running() {
        let info = info_from_inspect(&inspect(ContainerStateStatusEnum::PAUSED, 7))
            .expect("complete inspect response");
        assert_eq!(info.state, ContainerState::Running);
    }

    #[test]
    fn inspect_without_id_is_an_error() {
        let mut response = inspect(ContainerStateStatusEnum::RUNNING, 1);
        response.id = None;
        let err = info_from_inspect(&response).expect_err("no id");
        assert!(matches!(err, DockerError::MissingField { field: "Id", .. }));
    }

    #[test]
    fn inspect_negative_pid_is_an_error() {
        let err = info_from_inspect(&inspect(ContainerStateStatusEnum::RUNNING, -5))
            .expect_err("negative pid");
        assert!(matches!(err, DockerError::InvalidPid { pid: -5, .. }));
    }

    #[test]
    fn inspect_without_config_falls_back_to_image_id_and_no_labels() {
        let mut response = inspect(ContainerStateStatusEnum::RUNNING, 1);
        response.config = None;
        let info = info_from_inspect(&response).expect("id present");
        assert_eq!(info.image, "sha256:abc");
        assert_eq!(info.compose_project, None);
        assert!(info.labels.is_empty());
    }

    #[test]
    fn malformed_compose_number_is_kept_as_a_label() {
        let mut response = inspect(ContainerStateStatusEnum::RUNNING, 1);
        if let Some(labels) = response.config.as_mut().and_then(|c| c.labels.as_mut()) {
            labels.insert(COMPOSE_NUMBER_LABEL.to_owned(), "two".to_owned());
        }
        let info = info_from_inspect(&response).expect("id present");
        assert_eq!(info.compose_number, None);
        assert!(
            info.labels
                .contains(&(COMPOSE_NUMBER_LABEL.to_owned(), "two".to_owned()))
        );
    }

    #[test]
    fn summary_picks_the_real_name_over_link_aliases() {
        let summary = ContainerSummary {
            id: Some(ID.to_owned()),
            names: Some(vec!["/web/db_alias".to_owned(), "/db".to_owned()]),
            image: Some("postgres:16".to_owned()),
            labels: Some(compose_labels()),
            state: Some(ContainerSummaryStateEnum::RUNNING),
            ..ContainerSummary::default()
        };
        let info = info_from_summary(&summary).expect("id present");
        assert_eq!(info.name, "db");
        assert_eq!(info.image, "postgres:16");
        assert_eq!(info.compose_service.as_deref(), Some("web"));
        assert_eq!(info.state, ContainerState::Running);
        assert_eq!(info.pid, None);
    }

    #[test]
    fn summary_without_id_is_an_error() {
        let err = info_from_summary(&ContainerSummary::default()).expect_err("no id");
        assert!(matches!(err, DockerError::MissingField { .. }));
    }

    #[test]
    fn proc_cgroup_v2_line_is_used() {
        // Docker Desktop, Debian 12 + systemd: pure cgroup v2.
        let text = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            cgroup_path_from_proc(&text),
            Some(format!("system.slice/docker-{ID}.scope"))
        );
    }

    #[test]
    fn proc_cgroup_v1_separate_cpuacct_wins_over_unified() {
        // This project's CI host: hybrid, cpu and cpuacct mounted separately.
        let text = format!(
            "9:name=systemd:/docker/{ID}\n2:cpuacct:/docker/{ID}\n1:cpu:/docker/{ID}\n0::/\n"
        );
        assert_eq!(cgroup_path_from_proc(&text), Some(format!("docker/{ID}")));
    }

    #[test]
    fn proc_cgroup_v1_combined_cpu_cpuacct() {
        // Debian 10, cgroupfs driver: `cpu,cpuacct` co-mounted.
        let text = format!("4:memory:/docker/{ID}\n3:cpu,cpuacct:/custom/{ID}\n");
        assert_eq!(cgroup_path_from_proc(&text), Some(format!("custom/{ID}")));
    }

    #[test]
    fn proc_cgroup_root_or_outside_namespace_is_unusable() {
        // Reader in a private cgroup namespace.
        assert_eq!(cgroup_path_from_proc("0::/\n"), None);
        assert_eq!(cgroup_path_from_proc("0::/../../docker/abc\n"), None);
        assert_eq!(cgroup_path_from_proc("garbage\n"), None);
        assert_eq!(cgroup_path_from_proc(""), None);
    }

    #[test]
    fn layout_rules_cover_docker_and_podman() {
        use CgroupDriver::{Cgroupfs, Systemd};
        use EngineKind::{Docker, Podman};
        assert_eq!(
            cgroup_path_from_layout(ID, Docker, Cgroupfs, None),
            format!("docker/{ID}")
        );
        assert_eq!(
            cgroup_path_from_layout(ID, Docker, Cgroupfs, Some("/ci/jobs")),
            format!("ci/jobs/{ID}")
        );
        assert_eq!(
            cgroup_path_from_layout(ID, Docker, Systemd, None),
            format!("system.slice/docker-{ID}.scope")
        );
        assert_eq!(
            cgroup_path_from_layout(ID, Docker, Systemd, Some("jb-test.slice")),
            format!("jb.slice/jb-test.slice/docker-{ID}.scope")
        );
        assert_eq!(
            cgroup_path_from_layout(ID, Podman, Systemd, None),
            format!("machine.slice/libpod-{ID}.scope")
        );
        assert_eq!(
            cgroup_path_from_layout(ID, Podman, Cgroupfs, None),
            format!("libpod_parent/libpod-{ID}")
        );
    }

    fn event(action: &str, attributes: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some(action.to_owned()),
            actor: Some(EventActor {
                id: Some(ID.to_owned()),
                attributes: Some(
                    attributes
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
            }),
            ..EventMessage::default()
        }
    }

    #[test]
    fn events_map_to_registry_changes() {
        let id = ID.to_owned();
        assert_eq!(
            ContainerEvent::from_message(&event("start", &[])),
            Some(ContainerEvent::Start { id: id.clone() })
        );
        assert_eq!(
            ContainerEvent::from_message(&event("die", &[("exitCode", "137")])),
            Some(ContainerEvent::Die { id: id.clone() })
        );
        assert_eq!(
            ContainerEvent::from_message(&event("died", &[])),
            Some(ContainerEvent::Die { id: id.clone() })
        );
        assert_eq!(
            ContainerEvent::from_message(&event("destroy", &[])),
            Some(ContainerEvent::Destroy { id: id.clone() })
        );
        assert_eq!(
            ContainerEvent::from_message(&event("rename", &[("name", "new"), ("oldName", "/old")])),
            Some(ContainerEvent::Rename {
                id,
                name: "new".to_owned()
            })
        );
        assert_eq!(
            ContainerEvent::from_message(&event("exec_start: sh -c true", &[])),
            None
        );
    }

    #[test]
    fn events_without_actor_id_or_of_other_types_are_ignored() {
        let mut no_id = event("start", &[]);
        if let Some(actor) = no_id.actor.as_mut() {
            actor.id = None;
        }
        assert_eq!(ContainerEvent::from_message(&no_id), None);
        let mut network = event("start", &[]);
        network.typ = Some(EventMessageTypeEnum::NETWORK);
        assert_eq!(ContainerEvent::from_message(&network), None);
        assert_eq!(
            ContainerEvent::from_message(&event("rename", &[])),
            None,
            "a rename without the new name is useless"
        );
    }

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

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let delays: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![500, 1000, 2000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

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

    #[test]
    fn engine_description_names_docker_and_podman() {
        let docker = SystemVersion {
            platform: Some(SystemVersionPlatform {
                name: "Docker Engine - Community".to_owned(),
            }),
            version: Some("27.3.1".to_owned()),
            os: Some("linux".to_owned()),
            arch: Some("arm64".to_owned()),
            ..SystemVersion::default()
        };
        assert_eq!(
            engine_description(&docker),
            "Docker Engine - Community 27.3.1 (linux/arm64)"
        );
        assert_eq!(engine_kind(&docker), EngineKind::Docker);
        let podman = SystemVersion {
            components: Some(vec![SystemVersionComponents {
                name: "Podman Engine".to_owned(),
                version: "5.2.0".to_owned(),
                details: None,
            }]),
            version: Some("5.2.0".to_owned()),
            ..SystemVersion::default()
        };
        assert_eq!(engine_description(&podman), "Podman Engine 5.2.0");
        assert_eq!(engine_kind(&podman), EngineKind::Podman);
    }

    #[test]
    fn expand_slice_follows_systemd_naming() {
        assert_eq!(expand_slice("a-b-c.slice"), "a.slice/a-b.slice/a-b-c.slice");
        assert_eq!(expand_slice("user.slice"), "user.slice");
        assert_eq!(expand_slice("custom/path"), "custom/path");
    }
}
