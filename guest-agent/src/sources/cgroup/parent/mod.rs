//! The final CPU time of a container whose cgroup vanished between two samples, completed
//! from its parent cgroup.
//!
//! # Why
//!
//! A container's last slice of CPU (from the sample before its exit to the exit) is in its
//! cgroup's counter only while the cgroup exists, and engines remove the cgroup before they
//! announce the exit (moby deletes the task, then logs `die`). Racing the removal (a pidfd on
//! the main process) wins by a few milliseconds when the machine is idle and loses under load:
//! up to one sampling period of CPU went to `vm-system`.
//!
//! # How
//!
//! The parent's cumulative CPU time counts every descendant, dead ones included: v1
//! `cpuacct.usage` is charged to all ancestors at the time the CPU is used
//! (`kernel/sched/cpuacct.c`, `cpuacct_charge`), and v2 `cpu.stat` `usage_usec` flushes a
//! removed child's pending time into its parent (`kernel/cgroup/rstat.c`). So between two
//! samples, for one parent `P` with children `c`:
//!
//! ```text
//! ΔP = Σ live children Δc  +  Σ children born since  c  +  Σ children gone  (final − last read)
//!      + P's own tasks
//! ```
//!
//! Everything but the last two terms is read, so the *unexplained* time
//! `U = ΔP − Σ live Δc − Σ born c` is exactly what the departed children used after their
//! last read (plus the parent's own tasks, normally none: container parents such as `docker/`,
//! `system.slice` or a kubepods pod hold no processes). A departed container's final
//! cumulative usage is its last read plus its part of `U`; it is sent once, in the sample in
//! which its cgroup is found gone, so the bridge sees the whole of it in the right window.
//!
//! # Exactness
//!
//! - **One child gone in the period:** it gets all of `U` ([`Completion::Exact`]).
//! - **Several gone:** `U` is their combined remainder, exactly, but nothing says who used it.
//!   It is split in proportion to each one's CPU time over its last sampled period (equally
//!   when all were idle), as integers summing to `U` ([`Completion::Split`]). Children that are
//!   not containers (a service leaving `system.slice`) take part in the split and their part is
//!   dropped, i.e. left to `vm-system` at the bridge.
//! - **Never double counted:** `U` is shared only among children gone in this period, each µs
//!   once; a negative `U` (read skew) gives nothing. Live children are never touched.
//! - **Not computable** (the final stays the last read, as before): the parent is the
//!   hierarchy root (it counts the whole machine), the parent was first seen this sample, the
//!   parent or a live sibling could not be read.
//! - **A parent with tasks of its own:** a period in which no child left should leave
//!   `U ≈ 0`. If it leaves more than [`LEAK_TOLERANCE`], the parent is marked leaky and
//!   completions there are flagged [`Completion::Leaky`] (they may include some of that time).
//! - A sibling born *and* gone within one period is invisible to any reader; its time is
//!   inside `U` (a rare, bounded error in a [`Completion::Split`] or [`Completion::Exact`]).
//! - **Read skew.** Parent and children cannot be read at one instant; a busy sibling keeps
//!   running between the reads, and a sampler preempted between them (a loaded machine) lets
//!   it run for milliseconds. The parent is read before the sampler reads the containers and
//!   again after: its growth in between bounds the inconsistency. Above
//!   [`SNAPSHOT_TOLERANCE`] the parent and its live children (CPU files only) are read again,
//!   up to [`SNAPSHOT_ATTEMPTS`] times; a snapshot that never gets tight is still used,
//!   flagged [`Completion::Approximate`]. A completion is off by at most the skew of the two
//!   snapshots it spans (≤ 2 × 250 µs when tight).
//!
//! # Cost
//!
//! Per parent and sample: two `pread`s of the parent's counter, one `stat` of its directory
//! (kernfs keeps `nlink` = 2 + subdirectories, so a new or vanished child shows without a
//! directory walk) and one `pread` per child that is not a tracked container (none under
//! `docker/`; the services under `system.slice`). The directory is listed only when `nlink`
//! changed or a child left.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use protocol::CpuMicros;

mod ledger;

pub use ledger::{Ledger, Step, split_exact};

use super::read::{self, CounterFile, CounterKind, ReadFailure, open_optional};

/// Unexplained CPU time, in a period in which no child left, above which a parent is taken to
/// run tasks of its own. Above twice [`SNAPSHOT_TOLERANCE`], the most read skew can explain.
pub const LEAK_TOLERANCE: CpuMicros = CpuMicros(1_000);

/// Largest growth of the parent's counter between the reads that bracket its children's: the
/// bound on how inconsistent one snapshot of parent and children can be. Reads take
/// microseconds; a sampler preempted between them (a loaded machine) takes milliseconds, and
/// the snapshot is then read again.
pub const SNAPSHOT_TOLERANCE: CpuMicros = CpuMicros(250);

/// Re-reads of a snapshot that was not tight before it is used anyway, flagged
/// [`Completion::Approximate`].
pub const SNAPSHOT_ATTEMPTS: usize = 3;

/// How well a departed container's final CPU time is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// It was the only child of its parent to leave in the period: exact.
    Exact,
    /// `among` children left in the same period; the remainder was split by their last rates.
    Split {
        /// How many children shared the remainder.
        among: usize,
    },
    /// The parent shows CPU time of its own; the completion may include some of it.
    Leaky,
    /// No snapshot of parent and children was consistent within [`SNAPSHOT_TOLERANCE`] (the
    /// sampler kept being preempted); off by at most twice the skew reported.
    Approximate {
        /// The parent's CPU time during the widest snapshot window used.
        skew: CpuMicros,
    },
}

/// The end of a tracked container whose cgroup vanished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Departure {
    /// Container id.
    pub id: String,
    /// Cumulative usage last read from its own cgroup.
    pub last_read: CpuMicros,
    /// The completed final usage and how it was obtained; `None` when it could not be
    /// computed (see the module docs): the last read then stands.
    pub completed: Option<(CpuMicros, Completion)>,
}

/// What a tracked container's read gave in this sample, for its parent's account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Read: its cumulative usage now (µs).
    Live(u64),
    /// Its cgroup is gone.
    Gone,
    /// The read failed: its usage now is unknown.
    Failed,
}

/// One tracked (or just untracked) container, as reported to [`ParentAccounts::settle`].
#[derive(Debug)]
pub struct ChildReport<'a> {
    /// Container id.
    pub id: &'a str,
    /// The directory of its CPU accounting file.
    pub dir: &'a Path,
    /// Which file that is (v2 `cpu.stat` or v1 `cpuacct.usage`); the parent has the same.
    pub kind: CounterKind,
    /// Its usage last read (for [`Departure::last_read`]).
    pub last_read: CpuMicros,
    /// This sample's read.
    pub seen: Seen,
    /// Its CPU accounting file, re-read when a snapshot must be taken again.
    pub cpu_file: Option<&'a CounterFile>,
}

/// The accounts of every parent of a tracked container, keyed by parent directory.
#[derive(Debug, Default)]
pub struct ParentAccounts {
    accounts: BTreeMap<PathBuf, ParentAccount>,
}

impl ParentAccounts {
    /// Reads every known parent's counter before the sampler reads the containers: the first
    /// half of the bracket that bounds the snapshot's skew.
    pub fn begin(&mut self, buf: &mut Vec<u8>, user_hz: u64) {
        for account in self.accounts.values_mut() {
            account.before = read_usage(&account.file, buf, user_hz).ok();
        }
    }

    /// Reads every parent of a reported container (skipping `roots`, the hierarchy roots),
    /// completes the containers reported [`Seen::Gone`], and forgets parents no container is
    /// reported under any more.
    pub fn settle(
        &mut self,
        reports: &[ChildReport<'_>],
        roots: &[&Path],
        buf: &mut Vec<u8>,
        user_hz: u64,
    ) -> Vec<Departure> {
        let mut by_parent: BTreeMap<&Path, Vec<&ChildReport<'_>>> = BTreeMap::new();
        let mut departures = Vec::new();
        for report in reports {
            match (report.dir.parent(), report.dir.file_name()) {
                (Some(parent), Some(_)) if !roots.contains(&parent) => {
                    by_parent.entry(parent).or_default().push(report);
                }
                _ => {
                    if report.seen == Seen::Gone {
                        departures.push(unknown(report));
                    }
                }
            }
        }
        self.accounts
            .retain(|dir, _| by_parent.contains_key(dir.as_path()));
        for (parent, children) in by_parent {
            let account = match self.accounts.get_mut(parent) {
                Some(account) => account,
                None => match ParentAccount::open(parent, children[0].kind) {
                    Some(account) => self.accounts.entry(parent.to_owned()).or_insert(account),
                    None => {
                        departures.extend(
                            children
                                .iter()
                                .filter(|c| c.seen == Seen::Gone)
                                .map(|c| unknown(c)),
                        );
                        continue;
                    }
                },
            };
            departures.extend(account.settle(&children, buf, user_hz));
        }
        departures
    }
}

fn unknown(report: &ChildReport<'_>) -> Departure {
    Departure {
        id: report.id.to_owned(),
        last_read: report.last_read,
        completed: None,
    }
}

/// One parent: its counter, handles on children that are not tracked containers, and the
/// [`Ledger`] of the last sample.
#[derive(Debug)]
struct ParentAccount {
    dir: PathBuf,
    kind: CounterKind,
    file: CounterFile,
    /// Children read here because no tracked container reports them, by directory name.
    own: HashMap<String, CounterFile>,
    ledger: Ledger,
    /// The parent's usage read by [`ParentAccounts::begin`] in this sample.
    before: Option<u64>,
}

impl ParentAccount {
    fn open(dir: &Path, kind: CounterKind) -> Option<Self> {
        let file = open_optional(dir, file_name(kind)?, kind).ok()??;
        Some(Self {
            dir: dir.to_owned(),
            kind,
            file,
            own: HashMap::new(),
            ledger: Ledger::default(),
            before: None,
        })
    }

    fn settle(
        &mut self,
        reports: &[&ChildReport<'_>],
        buf: &mut Vec<u8>,
        user_hz: u64,
    ) -> Vec<Departure> {
        let name_of = |r: &ChildReport<'_>| {
            r.dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let gone: Vec<&ChildReport<'_>> = reports
            .iter()
            .copied()
            .filter(|r| r.seen == Seen::Gone)
            .collect();
        let unknown_all = |gone: &[&ChildReport<'_>]| gone.iter().map(|r| unknown(r)).collect();

        let mut seen: Vec<(String, Seen)> = reports.iter().map(|r| (name_of(r), r.seen)).collect();
        let reported: HashSet<String> = seen.iter().map(|(n, _)| n.clone()).collect();
        // Children of the last sample that no container reports now: read them here.
        self.own.retain(|name, _| !reported.contains(name));
        let others: Vec<String> = self
            .ledger
            .children
            .keys()
            .filter(|name| !reported.contains(name.as_str()))
            .cloned()
            .collect();
        for name in others {
            let state = self.read_own(&name, buf, user_hz);
            seen.push((name, state));
        }

        // New children since the last sample: list the directory when the count moved or a
        // child left (a name can come back as a new cgroup in the same period).
        let live = seen.iter().filter(|(_, s)| *s != Seen::Gone).count();
        let subdirs = std::fs::metadata(&self.dir)
            .ok()
            .and_then(|m| usize::try_from(m.nlink()).ok())
            .map(|n| n.saturating_sub(2));
        let any_gone = seen.iter().any(|(_, s)| *s == Seen::Gone);
        let unlisted = seen
            .iter()
            .any(|(name, _)| !self.ledger.children.contains_key(name));
        let mut complete = true;
        if any_gone || unlisted || subdirs != Some(live) || self.ledger.parent.is_none() {
            match self.list_children() {
                Ok(names) => {
                    let live_names: HashSet<String> = seen
                        .iter()
                        .filter(|(_, s)| *s != Seen::Gone)
                        .map(|(n, _)| n.clone())
                        .collect();
                    for name in names {
                        if live_names.contains(&name) {
                            continue;
                        }
                        // A new cgroup (possibly a new one under a departed child's name).
                        self.own.remove(&name);
                        let state = self.read_own(&name, buf, user_hz);
                        if state != Seen::Gone {
                            seen.push((name, state));
                        }
                    }
                }
                Err(err) => {
                    tracing::debug!(parent = %self.dir.display(), error = %err, "Cannot list a parent cgroup; exits under it are not completed this time.");
                    complete = false;
                }
            }
        }

        let Some((parent, skew)) = self.snapshot(reports, &mut seen, buf, user_hz) else {
            tracing::debug!(parent = %self.dir.display(), "Parent cgroup unreadable; exits under it are not completed.");
            self.ledger = Ledger::default();
            self.own.clear();
            return unknown_all(&gone);
        };
        let tight = skew <= SNAPSHOT_TOLERANCE.0;
        let mut step = self.ledger.step(parent, &seen, complete);
        if !tight && step.completion.is_some() {
            step.completion = Some(Completion::Approximate {
                skew: CpuMicros(skew),
            });
        }
        if let (Some(unexplained), true) = (step.quiet_unexplained, tight) {
            let leaky = unexplained > i128::from(LEAK_TOLERANCE.0);
            if leaky != self.ledger.leaky {
                tracing::debug!(parent = %self.dir.display(), unexplained_us = %unexplained, leaky, "Parent cgroup CPU time not explained by its children changed state.");
            }
            self.ledger.leaky = leaky;
        }
        let children = &self.ledger.children;
        self.own.retain(|name, _| children.contains_key(name));
        gone.iter()
            .map(|r| {
                let name = name_of(r);
                let completed = step.completion.and_then(|how| {
                    let share = step.shares.iter().find(|(n, _)| *n == name)?.1;
                    let base = step.bases.iter().find(|(n, _)| *n == name)?.1;
                    Some((CpuMicros(base.saturating_add(share)), how))
                });
                Departure {
                    id: r.id.to_owned(),
                    last_read: r.last_read,
                    completed,
                }
            })
            .collect()
    }

    /// The parent's usage now, consistent with the children's in `seen` within the returned
    /// skew (the parent's growth over the window bracketing their reads): the sampler's own
    /// reads when [`ParentAccounts::begin`] and this read are close enough, else the parent
    /// and every live child read again (CPU files only), up to [`SNAPSHOT_ATTEMPTS`] times.
    /// `None` when the parent cannot be read.
    fn snapshot(
        &mut self,
        reports: &[&ChildReport<'_>],
        seen: &mut [(String, Seen)],
        buf: &mut Vec<u8>,
        user_hz: u64,
    ) -> Option<(u64, u64)> {
        let mut after = read_usage(&self.file, buf, user_hz).ok()?;
        let mut skew = self
            .before
            .take()
            .map_or(u64::MAX, |before| after.saturating_sub(before));
        let mut attempts = 0;
        let files: HashMap<String, Option<&CounterFile>> = if skew > SNAPSHOT_TOLERANCE.0 {
            reports
                .iter()
                .filter_map(|r| {
                    let name = r.dir.file_name()?.to_string_lossy().into_owned();
                    Some((name, r.cpu_file))
                })
                .collect()
        } else {
            HashMap::new()
        };
        while skew > SNAPSHOT_TOLERANCE.0 && attempts < SNAPSHOT_ATTEMPTS {
            attempts += 1;
            let kept: Vec<Seen> = seen.iter().map(|(_, state)| *state).collect();
            let before = read_usage(&self.file, buf, user_hz).ok()?;
            for (name, state) in seen.iter_mut() {
                if !matches!(state, Seen::Live(_)) {
                    continue;
                }
                let file = match files.get(name.as_str()) {
                    Some(file) => *file,
                    None => self.own.get(name.as_str()),
                };
                *state = match file.map(|f| read_usage(f, buf, user_hz)) {
                    Some(Ok(usage)) => Seen::Live(usage),
                    Some(Err(ReadFailure::Vanished)) => Seen::Gone,
                    Some(Err(ReadFailure::Error(_))) | None => Seen::Failed,
                };
            }
            let now = read_usage(&self.file, buf, user_hz).ok()?;
            if seen
                .iter()
                .zip(&kept)
                .any(|((_, s), k)| *s == Seen::Gone && *k != Seen::Gone)
            {
                // A child left during the re-read: its usage now is lost with it, so the
                // earlier, wider snapshot is the better one.
                for ((_, state), k) in seen.iter_mut().zip(kept) {
                    *state = k;
                }
                break;
            }
            after = now;
            skew = after.saturating_sub(before);
        }
        if attempts > 0 {
            tracing::trace!(parent = %self.dir.display(), attempts, skew_us = skew, "Parent cgroup snapshot read again.");
        }
        Some((after, skew))
    }

    /// Reads a child that is not a tracked container through a handle kept here.
    fn read_own(&mut self, name: &str, buf: &mut Vec<u8>, user_hz: u64) -> Seen {
        if !self.own.contains_key(name) {
            let Some(file_name) = file_name(self.kind) else {
                return Seen::Failed;
            };
            match open_optional(&self.dir.join(name), file_name, self.kind) {
                Ok(Some(file)) => {
                    self.own.insert(name.to_owned(), file);
                }
                Ok(None) => return Seen::Gone,
                Err(_) => return Seen::Failed,
            }
        }
        let Some(file) = self.own.get(name) else {
            return Seen::Failed;
        };
        match read_usage(file, buf, user_hz) {
            Ok(usage) => Seen::Live(usage),
            Err(ReadFailure::Vanished) => Seen::Gone,
            Err(ReadFailure::Error(_)) => Seen::Failed,
        }
    }

    fn list_children(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }
}

/// The usage file of a cgroup for a CPU accounting kind.
fn file_name(kind: CounterKind) -> Option<&'static str> {
    match kind {
        CounterKind::V2CpuStat => Some(read::V2_CPU_STAT),
        CounterKind::V1CpuacctUsage => Some(read::V1_CPUACCT_USAGE),
        _ => None,
    }
}

fn read_usage(file: &CounterFile, buf: &mut Vec<u8>, user_hz: u64) -> Result<u64, ReadFailure> {
    read::read_all(std::slice::from_ref(file), buf, user_hz, true).map(|r| r.cpu.usage.0)
}
