//! What is tracked: container cgroups found by layout, explicit paths, paths the Docker
//! registry names, and opening each one's counter files once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use protocol::{CgroupMode, CpuCounters};

use super::layout::{self, Found, normalize};
use super::read::{self, CounterFile, CounterKind, open_optional};
use super::{CgroupError, CgroupSampler, Origin, ScanReport, Seen, Throttling, Tracked};

impl CgroupSampler {
    /// Names a cgroup to sample whatever its name, with its path (relative to the hierarchy
    /// root, e.g. `system.slice/my.service`) as id. It is tracked from the next
    /// [`rescan`](Self::rescan) on, and re-tracked whenever it reappears.
    ///
    /// # Errors
    /// [`CgroupError::InvalidPath`] for the root or a path with `..`.
    pub fn add_explicit(&mut self, rel_path: String) -> Result<(), CgroupError> {
        let rel_path = normalize(&rel_path)?;
        if !self.explicit.contains(&rel_path) {
            self.explicit.push(rel_path);
        }
        Ok(())
    }

    /// Tracks the cgroup at `rel_path` (as in `/proc/<pid>/cgroup`, leading `/` allowed) under
    /// `id`, replacing a tracked entry of that id with another path. Rescans drop it only when
    /// its directory is gone.
    ///
    /// # Errors
    /// [`CgroupError::InvalidPath`], [`CgroupError::NotFound`] when no hierarchy has the cgroup,
    /// [`CgroupError::NoCpuAccounting`], or an open error.
    pub fn track(&mut self, id: String, rel_path: &str) -> Result<(), CgroupError> {
        let rel_path = normalize(rel_path)?;
        if let Some(existing) = self.tracked.get_mut(&id)
            && existing.rel_path == rel_path
        {
            existing.origin = Origin::Manual;
            return Ok(());
        }
        let tracked = self.open(rel_path, Origin::Manual)?;
        self.tracked.insert(id, tracked);
        Ok(())
    }

    /// Stops tracking `id` (no-op when unknown). The next sample reads it once more: if its
    /// cgroup is gone by then, its final CPU time is completed and sent like a vanished one's.
    pub fn untrack(&mut self, id: &str) {
        if let Some(tracked) = self.tracked.remove(id) {
            self.leaving.push((id.to_owned(), tracked));
        }
    }

    /// Walks the hierarchies for containers and retries explicit paths: tracks the new ones,
    /// drops the ones whose cgroup is gone.
    ///
    /// # Errors
    /// The walk error when every hierarchy to walk failed to list; per-container problems are
    /// in [`ScanReport::errors`].
    pub fn rescan(&mut self) -> Result<ScanReport, CgroupError> {
        let mut report = ScanReport::default();
        let roots = self.discovery_roots();
        let mut lists = Vec::with_capacity(roots.len());
        let mut walk_errors = Vec::new();
        for root in &roots {
            match layout::discover(root) {
                Ok(list) => lists.push(list),
                Err(err) => walk_errors.push(err),
            }
        }
        if lists.is_empty()
            && let Some(first) = walk_errors.pop()
        {
            return Err(first);
        }
        // With a hierarchy unwalked, "not found" proves nothing: fall back to the directory.
        let walk_complete = walk_errors.is_empty();
        report.errors.extend(walk_errors);
        let found = layout::merge(lists);

        let found_ids: HashSet<&str> = found.iter().map(|f| f.id.as_str()).collect();
        let gone: Vec<String> = self
            .tracked
            .iter()
            .filter(|(id, t)| match t.origin {
                Origin::Discovered if walk_complete => !found_ids.contains(id.as_str()),
                Origin::Discovered | Origin::Manual | Origin::Explicit => !t.dir.is_dir(),
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(tracked) = self.tracked.remove(&id) {
                // Read once more by the next sample, which completes it if it vanished.
                self.leaving.push((id.clone(), tracked));
            }
            report.removed.push(id);
        }

        let mut tracked_paths: HashSet<String> =
            self.tracked.values().map(|t| t.rel_path.clone()).collect();
        for Found { id, rel_path } in found {
            if self.tracked.contains_key(&id) || tracked_paths.contains(&rel_path) {
                continue;
            }
            match self.open(rel_path.clone(), Origin::Discovered) {
                Ok(tracked) => {
                    tracked_paths.insert(rel_path);
                    self.tracked.insert(id.clone(), tracked);
                    report.added.push(id);
                }
                // Removed between the walk and the open: the container just stopped.
                Err(CgroupError::NotFound { .. }) => {}
                Err(err) => report.errors.push(err),
            }
        }

        for rel_path in self.explicit.clone() {
            if tracked_paths.contains(&rel_path) {
                continue;
            }
            match self.open(rel_path.clone(), Origin::Explicit) {
                Ok(tracked) => {
                    tracked_paths.insert(rel_path.clone());
                    self.tracked.insert(rel_path.clone(), tracked);
                    report.added.push(rel_path);
                }
                Err(CgroupError::NotFound { .. }) => report.missing_explicit.push(rel_path),
                Err(err) => report.errors.push(err),
            }
        }
        tracing::debug!(
            tracked = self.tracked.len(),
            added = report.added.len(),
            removed = report.removed.len(),
            missing_explicit = report.missing_explicit.len(),
            errors = report.errors.len(),
            "Cgroup rescan done."
        );
        Ok(report)
    }

    /// Hierarchies walked for containers: the unified one on v2 and hybrid hosts, plus the v1
    /// cpu accounting one on v1 and hybrid hosts (Docker's cgroupfs driver creates containers
    /// only in v1 hierarchies on a hybrid host; its systemd driver creates them in both).
    fn discovery_roots(&self) -> Vec<PathBuf> {
        let v1 = &self.mounts.v1;
        let v1_root = v1
            .cpuacct
            .as_ref()
            .or(v1.cpu.as_ref())
            .or(v1.memory.as_ref())
            .or(v1.blkio.as_ref());
        let mut roots = Vec::new();
        if matches!(self.mounts.mode, CgroupMode::V2 | CgroupMode::Hybrid)
            && let Some(v2) = &self.mounts.v2
        {
            roots.push(v2.clone());
        }
        if matches!(self.mounts.mode, CgroupMode::V1 | CgroupMode::Hybrid)
            && let Some(v1_root) = v1_root
        {
            roots.push(v1_root.clone());
        }
        roots
    }

    /// Opens the counter files of the cgroup at `rel_path` (normalised) and reads its limit.
    fn open(&self, rel_path: String, origin: Origin) -> Result<Tracked, CgroupError> {
        let at = |mount: &Option<PathBuf>| mount.as_ref().map(|m| m.join(&rel_path));
        let v2 = at(&self.mounts.v2);
        let v1 = &self.mounts.v1;
        let (cpuacct, cpu, memory, blkio) =
            (at(&v1.cpuacct), at(&v1.cpu), at(&v1.memory), at(&v1.blkio));

        let mut files = Vec::with_capacity(5);
        let mut dir = None;
        let mut v2_cpu = false;
        if let Some(v2) = &v2
            && let Some(file) = open_optional(v2, read::V2_CPU_STAT, CounterKind::V2CpuStat)?
        {
            files.push(file);
            dir = Some(v2.clone());
            v2_cpu = true;
        } else if let Some(cpuacct) = &cpuacct
            && let Some(file) =
                open_optional(cpuacct, read::V1_CPUACCT_USAGE, CounterKind::V1CpuacctUsage)?
        {
            files.push(file);
            files.extend(open_optional(
                cpuacct,
                read::V1_CPUACCT_STAT,
                CounterKind::V1CpuacctStat,
            )?);
            dir = Some(cpuacct.clone());
        }
        let Some(dir) = dir else {
            let existing = [&v2, &cpuacct, &cpu, &memory, &blkio]
                .into_iter()
                .flatten()
                .find(|d| d.is_dir());
            return Err(match existing {
                Some(path) => CgroupError::NoCpuAccounting { path: path.clone() },
                None => CgroupError::NotFound { rel_path },
            });
        };

        // Throttling: in v2 `cpu.stat` itself when the cpu controller is enabled there (then
        // `cpu.max` exists), else the v1 cpu controller's `cpu.stat`.
        let v2_cpu_controller = v2_cpu
            && v2
                .as_ref()
                .is_some_and(|d| d.join(read::V2_CPU_MAX).exists());
        let wanted = self.counters;
        if wanted.throttling
            && !v2_cpu_controller
            && let Some(cpu) = &cpu
        {
            files.extend(open_optional(
                cpu,
                read::V1_CPU_STAT,
                CounterKind::V1CpuStat,
            )?);
        }
        if wanted.memory {
            files.extend(first_present(&[
                (&v2, read::V2_MEMORY_CURRENT, CounterKind::V2MemoryCurrent),
                (&memory, read::V1_MEMORY_USAGE, CounterKind::V1MemoryUsage),
            ])?);
        }
        if wanted.io {
            files.extend(first_present(&[
                (&v2, read::V2_IO_STAT, CounterKind::V2IoStat),
                (
                    &blkio,
                    read::V1_BLKIO_SERVICE_BYTES,
                    CounterKind::V1BlkioServiceBytes,
                ),
            ])?);
        }

        let cpu_limit_millicores = if v2_cpu_controller {
            v2.as_deref()
                .and_then(|d| read_small(&d.join(read::V2_CPU_MAX)))
                .and_then(|text| read::parse_cpu_max(&text))
        } else {
            cpu.as_deref().and_then(|d| {
                let quota = read_small(&d.join(read::V1_CFS_QUOTA))?;
                let period = read_small(&d.join(read::V1_CFS_PERIOD))?;
                read::parse_cfs(&quota, &period)
            })
        };
        let slow_throttling = files.iter().any(|f| f.kind == CounterKind::V1CpuStat);
        Ok(Tracked {
            rel_path,
            origin,
            dir,
            files,
            cpu_limit_millicores,
            slow_countdown: 0,
            slow_throttling,
            last_throttling: Throttling::default(),
            last_cpu: CpuCounters::default(),
            seen: Seen::Failed,
        })
    }
}

/// Opens the first of several alternative files that exists.
fn first_present(
    candidates: &[(&Option<PathBuf>, &str, CounterKind)],
) -> Result<Option<CounterFile>, CgroupError> {
    for (dir, name, kind) in candidates {
        if let Some(dir) = dir
            && let Some(file) = open_optional(dir, name, *kind)?
        {
            return Ok(Some(file));
        }
    }
    Ok(None)
}

/// A small control file read once at track time; unreadable means unknown.
fn read_small(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}
