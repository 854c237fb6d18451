//! The list-then-watch loop: one session per engine connection, reconnecting with capped
//! exponential back-off, and the per-container state that turns engine events and pidfd exits
//! into [`RegistryEvent`]s.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::{EventMessage, SystemVersion};
use bollard::query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder};
use futures::StreamExt;
use protocol::{ContainerInfo, ContainerState};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::convert::{ContainerEvent, info_from_inspect, info_from_summary, summary_is_running};
use super::engine::{
    CgroupDriver, EngineKind, cgroup_driver, cgroup_path_from_layout, cgroup_path_from_proc,
    engine_description, engine_kind,
};
use super::exit_watch::{self, ExitNotice};
use super::{
    DockerConfig, DockerEndpoint, DockerError, RegistryEvent, error_chain, unavailable_reason,
};
use crate::backoff::Backoff;

/// Event actions that change the registry, for the engine-side filter. Docker's names, plus
/// Podman's internal names for exit and removal: its compat API filters on those (and then
/// reports `die` and `remove`). Docker ignores names it does not know.
const EVENT_ACTIONS: [&str; 6] = ["start", "die", "died", "destroy", "remove", "rename"];

/// Capacity of the internal channel from exit watchers to the registry loop.
/// Overflow policy: watchers `send().await`; at most one notice per watched container exists.
const EXIT_NOTICE_CAPACITY: usize = 64;

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
