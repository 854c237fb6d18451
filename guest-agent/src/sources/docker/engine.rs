//! The engines' conventions: which engine answers (Docker or Podman), where it puts a
//! container's cgroup, and how `/proc/<pid>/cgroup` names it. Pure functions.

use bollard::Docker;
use bollard::models::SystemVersion;

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

/// The engine's cgroup driver from `GET /info`; cgroupfs when the engine does not say.
pub(super) async fn cgroup_driver(docker: &Docker) -> CgroupDriver {
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

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{SystemVersionComponents, SystemVersionPlatform};

    const ID: &str = "9ebb4af3843edfc631bfeb246c4716bd7f7defd6f41a4ac4f7d44a337c1f8199";

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
