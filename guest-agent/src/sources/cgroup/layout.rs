//! Finding container cgroups by the names runtimes give them (docs/platforms.md §2).
//!
//! | Runtime / driver | cgroup, relative to the hierarchy root |
//! |---|---|
//! | Docker, cgroupfs (Docker Desktop, LinuxKit, Debian 10) | `docker/<id>` |
//! | Docker, systemd (Debian 11+, Ubuntu, Colima, Lima) | `system.slice/docker-<id>.scope` |
//! | Podman, systemd | `machine.slice/libpod-<id>.scope` (conmon: `libpod-conmon-<id>.scope`, skipped) |
//! | Podman, cgroupfs | `libpod_parent/libpod-<id>` |
//! | Kubernetes, cgroupfs | `kubepods/<qos>/pod<uid>/<id>` |
//! | Kubernetes, systemd | `kubepods.slice/…/cri-containerd-<id>.scope`, `crio-<id>.scope` |
//! | nerdctl, systemd (inferred) | `…/nerdctl-<id>.scope` |
//!
//! Every runtime above names containers with 64 lowercase hex digits, so a name only matches
//! with a full id; `docker-compose.scope`-like or `*.mount` units never do. cgroup accounting is
//! hierarchical (a parent includes its children), so when a matching cgroup contains matching
//! descendants (Docker-in-Docker, a pod of pods) only the innermost ones are reported, and
//! summing the result never counts a CPU-second twice.

use std::collections::HashSet;
use std::path::Path;

use super::CgroupError;

/// How deep below a hierarchy root the walk looks. The deepest layout above (Podman rootless:
/// `user.slice/user-<uid>.slice/user@<uid>.service/user.slice/libpod-<id>.scope`) is at depth 5;
/// nested runtimes add a few levels.
pub const MAX_DEPTH: usize = 8;

/// Length of a container id in every supported runtime (a SHA-256 in hex).
const ID_LEN: usize = 64;

/// `(prefix, suffix)` pairs around an id in a cgroup directory name.
const NAME_PATTERNS: &[(&str, &str)] = &[
    ("", ""),
    ("docker-", ".scope"),
    ("libpod-", ".scope"),
    ("libpod-", ""),
    ("cri-containerd-", ".scope"),
    ("crio-", ".scope"),
    ("nerdctl-", ".scope"),
];

/// A container cgroup found by walking a hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The container id.
    pub id: String,
    /// Path relative to the hierarchy root, `/`-separated, no leading slash.
    pub rel_path: String,
}

/// The container id a cgroup directory name carries, if it follows one of the layouts.
#[must_use]
pub fn container_id(name: &str) -> Option<&str> {
    NAME_PATTERNS.iter().find_map(|(prefix, suffix)| {
        let id = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
        is_container_id(id).then_some(id)
    })
}

fn is_container_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Walks `hierarchy` down to [`MAX_DEPTH`] and returns the innermost container cgroups, sorted by
/// relative path. Sub-directories that vanish during the walk are skipped.
///
/// # Errors
/// [`CgroupError::ReadDir`] when `hierarchy` itself cannot be listed.
pub fn discover(hierarchy: &Path) -> Result<Vec<Found>, CgroupError> {
    let entries = std::fs::read_dir(hierarchy).map_err(|source| CgroupError::ReadDir {
        path: hierarchy.to_owned(),
        source,
    })?;
    let mut found = Vec::new();
    let mut rel = String::new();
    walk_entries(entries, &mut rel, 1, &mut found);
    found.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    Ok(found)
}

/// Recursion over one directory's entries. Returns whether any container was found below.
fn walk_entries(
    entries: std::fs::ReadDir,
    rel: &mut String,
    depth: usize,
    out: &mut Vec<Found>,
) -> bool {
    let mut any = false;
    for entry in entries.flatten() {
        // `file_type` does not follow symlinks: cgroupfs has none, and a fake tree's symlink
        // loop must not hang the walk.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let restore = rel.len();
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(name);
        let mut below = false;
        if depth < MAX_DEPTH
            && let Ok(children) = std::fs::read_dir(entry.path())
        {
            below = walk_entries(children, rel, depth + 1, out);
        }
        if !below && let Some(id) = container_id(name) {
            out.push(Found {
                id: id.to_owned(),
                rel_path: rel.clone(),
            });
            below = true;
        }
        any |= below;
        rel.truncate(restore);
    }
    any
}

/// Merges discoveries from several hierarchies (hybrid mode walks v2 and v1): the first
/// occurrence of an id wins.
#[must_use]
pub fn merge(lists: impl IntoIterator<Item = Vec<Found>>) -> Vec<Found> {
    let mut seen = HashSet::new();
    let mut merged = Vec::new();
    for list in lists {
        for found in list {
            if seen.insert(found.id.clone()) {
                merged.push(found);
            }
        }
    }
    merged
}

/// Normalises a cgroup path named by a user or read from `/proc/<pid>/cgroup` into the
/// relative form used as a key: no leading or trailing `/`, no empty, `.` or `..` components.
///
/// # Errors
/// [`CgroupError::InvalidPath`] for the root itself or a path escaping the hierarchy.
pub fn normalize(path: &str) -> Result<String, CgroupError> {
    let mut out = String::with_capacity(path.len());
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                return Err(CgroupError::InvalidPath {
                    path: path.to_owned(),
                });
            }
            name => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(name);
            }
        }
    }
    if out.is_empty() {
        return Err(CgroupError::InvalidPath {
            path: path.to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn container_id_matches_every_layout() {
        for name in [
            ID.to_owned(),
            format!("docker-{ID}.scope"),
            format!("libpod-{ID}.scope"),
            format!("libpod-{ID}"),
            format!("cri-containerd-{ID}.scope"),
            format!("crio-{ID}.scope"),
            format!("nerdctl-{ID}.scope"),
        ] {
            assert_eq!(container_id(&name), Some(ID), "{name}");
        }
    }

    #[test]
    fn container_id_rejects_near_misses() {
        for name in [
            format!("libpod-conmon-{ID}.scope"),
            format!("crio-conmon-{ID}.scope"),
            format!("docker-{ID}.mount"),
            "docker.service".to_owned(),
            "docker-compose.scope".to_owned(),
            ID[..63].to_owned(),
            ID.to_uppercase(),
            format!("{ID}0"),
        ] {
            assert_eq!(container_id(&name), None, "{name}");
        }
    }

    #[test]
    fn discover_stops_at_max_depth() {
        let dir = tempfile::tempdir().unwrap();
        let shallow = format!("{}/docker-{ID}.scope", "n/".repeat(MAX_DEPTH - 1));
        let other = ID.replace('0', "1");
        let deep = format!("{}/{other}", "m/".repeat(MAX_DEPTH));
        std::fs::create_dir_all(dir.path().join(&shallow)).unwrap();
        std::fs::create_dir_all(dir.path().join(&deep)).unwrap();
        let found = discover(dir.path()).unwrap();
        assert_eq!(
            found,
            vec![Found {
                id: ID.to_owned(),
                rel_path: shallow.replace("//", "/"),
            }]
        );
    }

    #[test]
    fn merge_keeps_first_occurrence_of_an_id() {
        let a = Found {
            id: "x".into(),
            rel_path: "v2/x".into(),
        };
        let b = Found {
            id: "x".into(),
            rel_path: "v1/x".into(),
        };
        let c = Found {
            id: "y".into(),
            rel_path: "v1/y".into(),
        };
        assert_eq!(merge([vec![a.clone()], vec![b, c.clone()]]), vec![a, c]);
    }

    #[test]
    fn normalize_strips_slashes_and_rejects_escapes() {
        assert_eq!(normalize("/docker/abc/").unwrap(), "docker/abc");
        assert_eq!(normalize("a//./b").unwrap(), "a/b");
        assert!(matches!(
            normalize("/"),
            Err(CgroupError::InvalidPath { .. })
        ));
        assert!(matches!(
            normalize("a/../../etc"),
            Err(CgroupError::InvalidPath { .. })
        ));
    }
}
