//! Pure conversions from what the engine and procfs say into joulebridge's types: inspect and
//! list responses into [`ContainerInfo`], engine events into [`ContainerEvent`]s,
//! `/proc/<pid>/cgroup` and the engines' layout rules into cgroup paths. bollard models most
//! fields as `Option`; a missing one becomes a [`DockerError`] or a documented default, never a
//! panic.

use std::collections::HashMap;

use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary,
    ContainerSummaryStateEnum, EventMessage, SystemVersion,
};
use protocol::{ContainerInfo, ContainerState};

use super::DockerError;

/// Compose label: project name (docker/compose `pkg/api/labels.go`, same key in compose v1).
pub const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";
/// Compose label: service name.
pub const COMPOSE_SERVICE_LABEL: &str = "com.docker.compose.service";
/// Compose label: replica number of the service, starting at 1.
pub const COMPOSE_NUMBER_LABEL: &str = "com.docker.compose.container-number";

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

pub(super) fn summary_is_running(summary: &ContainerSummary) -> bool {
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
/// `/proc/<pid>/cgroup` cannot say (platforms.md §4 table):
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
