//! Which cgroup hierarchies are mounted where, from `/proc/self/mountinfo`.
//!
//! The mode decides where containers are looked for and which files are read: pure cgroup v2
//! (`cgroup2` at `/sys/fs/cgroup`), v1 (one `cgroup` mount per controller, with `cpu` and
//! `cpuacct` either combined as `cpu,cpuacct` or mounted separately, as on the project CI host),
//! or hybrid (v1 controllers plus `cgroup2` at `/sys/fs/cgroup/unified`).
//!
//! Mount points in mountinfo are absolute paths of the reader's mount namespace; they are joined
//! below an injectable root so tests can describe a fake tree with a fake mountinfo.

use std::path::{Path, PathBuf};

use protocol::CgroupMode;

use super::CgroupError;

/// `proc(5)`: the mount table of the reading process, relative to a root.
const MOUNTINFO: &str = "proc/self/mountinfo";

/// Filesystem type of the unified hierarchy (`Documentation/admin-guide/cgroup-v2.rst`).
const FSTYPE_V2: &str = "cgroup2";

/// Filesystem type of a v1 controller hierarchy (`Documentation/admin-guide/cgroup-v1/`).
const FSTYPE_V1: &str = "cgroup";

/// Where the cgroup hierarchies that matter to joulebridge are mounted, already joined below
/// the root the table was read under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMounts {
    /// The layout, as announced in the `Hello`.
    pub mode: CgroupMode,
    /// The `cgroup2` mount, if any.
    pub v2: Option<PathBuf>,
    /// The v1 controller mounts.
    pub v1: V1Mounts,
}

/// v1 mount points per controller. `cpu` and `cpuacct` are the same path when the two are
/// co-mounted as `cpu,cpuacct`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct V1Mounts {
    /// `cpu` (CFS quota and throttling).
    pub cpu: Option<PathBuf>,
    /// `cpuacct` (CPU usage).
    pub cpuacct: Option<PathBuf>,
    /// `memory`.
    pub memory: Option<PathBuf>,
    /// `blkio`.
    pub blkio: Option<PathBuf>,
}

impl V1Mounts {
    fn any(&self) -> bool {
        self.cpu.is_some()
            || self.cpuacct.is_some()
            || self.memory.is_some()
            || self.blkio.is_some()
    }
}

impl CgroupMounts {
    /// Reads `<root>/proc/self/mountinfo` and joins the mount points below `root`.
    ///
    /// # Errors
    /// [`CgroupError::ReadMountinfo`] when the table cannot be read.
    pub fn discover(root: &Path) -> Result<Self, CgroupError> {
        Self::from_mountinfo_file(&root.join(MOUNTINFO), root)
    }

    /// Reads the mount table at `path` and joins the mount points below `root`.
    ///
    /// # Errors
    /// [`CgroupError::ReadMountinfo`] when the file cannot be read.
    pub fn from_mountinfo_file(path: &Path, root: &Path) -> Result<Self, CgroupError> {
        let text = std::fs::read_to_string(path).map_err(|source| CgroupError::ReadMountinfo {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::parse(&text, root))
    }

    /// Parses mountinfo text. Lines that are not cgroup mounts, or are malformed, are ignored:
    /// a mount table always parses, at worst to [`CgroupMode::None`].
    ///
    /// When a hierarchy is mounted more than once, the first mount of its root (`/`) wins, else
    /// the first mount.
    #[must_use]
    pub fn parse(mountinfo: &str, root: &Path) -> Self {
        let mut v2: Option<Candidate> = None;
        let mut v1 = V1Candidates::default();
        for line in mountinfo.lines() {
            let Some(entry) = MountEntry::parse(line) else {
                continue;
            };
            let candidate = Candidate {
                path: join_under(root, &unescape(entry.mount_point)),
                is_root: entry.root == "/",
            };
            match entry.fstype {
                FSTYPE_V2 => offer(&mut v2, candidate),
                FSTYPE_V1 => {
                    for option in entry.super_options.split(',') {
                        let slot = match option {
                            "cpu" => &mut v1.cpu,
                            "cpuacct" => &mut v1.cpuacct,
                            "memory" => &mut v1.memory,
                            "blkio" => &mut v1.blkio,
                            _ => continue,
                        };
                        offer(slot, candidate.clone());
                    }
                }
                _ => {}
            }
        }
        let v1 = V1Mounts {
            cpu: v1.cpu.map(|c| c.path),
            cpuacct: v1.cpuacct.map(|c| c.path),
            memory: v1.memory.map(|c| c.path),
            blkio: v1.blkio.map(|c| c.path),
        };
        let v2 = v2.map(|c| c.path);
        let mode = match (v1.any(), v2.is_some()) {
            (true, true) => CgroupMode::Hybrid,
            (true, false) => CgroupMode::V1,
            (false, true) => CgroupMode::V2,
            (false, false) => CgroupMode::None,
        };
        Self { mode, v2, v1 }
    }

    /// A table with nothing mounted.
    #[must_use]
    pub fn none() -> Self {
        Self {
            mode: CgroupMode::None,
            v2: None,
            v1: V1Mounts::default(),
        }
    }
}

#[derive(Clone, Debug)]
struct Candidate {
    path: PathBuf,
    is_root: bool,
}

#[derive(Default)]
struct V1Candidates {
    cpu: Option<Candidate>,
    cpuacct: Option<Candidate>,
    memory: Option<Candidate>,
    blkio: Option<Candidate>,
}

/// Keeps the first mount, unless it shows a sub-tree and the new one shows the whole hierarchy.
fn offer(slot: &mut Option<Candidate>, candidate: Candidate) {
    match slot {
        Some(current) if current.is_root || !candidate.is_root => {}
        _ => *slot = Some(candidate),
    }
}

/// The fields of one mountinfo line that matter here (`proc(5)`, "/proc/pid/mountinfo"):
/// `id parent major:minor root mount_point options [optional…] - fstype source super_options`.
struct MountEntry<'a> {
    root: &'a str,
    mount_point: &'a str,
    fstype: &'a str,
    super_options: &'a str,
}

impl<'a> MountEntry<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.split(' ');
        let _id = fields.next()?;
        let _parent = fields.next()?;
        let _dev = fields.next()?;
        let root = fields.next()?;
        let mount_point = fields.next()?;
        let _options = fields.next()?;
        // Zero or more optional fields end at a lone "-".
        fields.by_ref().find(|field| *field == "-")?;
        let fstype = fields.next()?;
        let _source = fields.next()?;
        let super_options = fields.next()?;
        Some(Self {
            root,
            mount_point,
            fstype,
            super_options,
        })
    }
}

/// Undoes the octal escapes the kernel applies to mountinfo paths (`\040` space, `\011` tab,
/// `\012` newline, `\134` backslash; `fs/proc_namespace.c` `mangle`). Anything that is not a
/// three-digit octal escape is kept as written.
fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_owned();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(digits) = bytes.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `root` + an absolute path of the mount namespace.
fn join_under(root: &Path, absolute: &str) -> PathBuf {
    root.join(absolute.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_decodes_octal_space_and_backslash() {
        assert_eq!(unescape(r"/mnt/my\040dir\134x"), r"/mnt/my dir\x");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/bad\04"), r"/bad\04");
    }

    #[test]
    fn parse_skips_optional_fields() {
        let line = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 master:1 - cgroup2 cgroup2 rw,nsdelegate";
        let mounts = CgroupMounts::parse(line, Path::new("/"));
        assert_eq!(mounts.mode, CgroupMode::V2);
        assert_eq!(mounts.v2.as_deref(), Some(Path::new("/sys/fs/cgroup")));
    }

    #[test]
    fn parse_prefers_a_mount_of_the_hierarchy_root() {
        let text = "\
50 40 0:30 /docker/abc /mnt/sub rw - cgroup2 cgroup2 rw
51 40 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
52 40 0:30 / /elsewhere rw - cgroup2 cgroup2 rw";
        let mounts = CgroupMounts::parse(text, Path::new("/r"));
        assert_eq!(mounts.v2.as_deref(), Some(Path::new("/r/sys/fs/cgroup")));
    }

    #[test]
    fn parse_of_garbage_is_none() {
        let mounts = CgroupMounts::parse("not a mountinfo line\n\n1 2 3", Path::new("/"));
        assert_eq!(mounts, CgroupMounts::none());
    }
}
