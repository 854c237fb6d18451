//! Pure conversions from what the engine says into joulebridge's types: inspect and list
//! responses into [`ContainerInfo`], engine events into [`ContainerEvent`]s. bollard models most
//! fields as `Option`; a missing one becomes a [`DockerError`] or a documented default, never a
//! panic.

use std::collections::HashMap;

use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary,
    ContainerSummaryStateEnum, EventMessage,
};
use protocol::{ContainerInfo, ContainerState};

use super::DockerError;

/// Compose label: project name (docker/compose `pkg/api/labels.go`, same key in compose v1).
pub const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";
/// Compose label: service name.
pub const COMPOSE_SERVICE_LABEL: &str = "com.docker.compose.service";
/// Compose label: replica number of the service, starting at 1.
pub const COMPOSE_NUMBER_LABEL: &str = "com.docker.compose.container-number";

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

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ContainerConfig, ContainerState as InspectState, EventActor, EventMessageTypeEnum,
        HostConfig,
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
}
