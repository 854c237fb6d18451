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
//!
//! # Cost
//!
//! Per parent and sample: one `pread` of the parent's counter, one `stat` of its directory
//! (kernfs keeps `nlink` = 2 + subdirectories, so a new or vanished child shows without a
//! directory walk) and one `pread` per child that is not a tracked container (none under
//! `docker/`; the services under `system.slice`). The directory is listed only when `nlink`
//! changed or a child left.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use protocol::CpuMicros;

use super::read::{self, CounterFile, CounterKind, ReadFailure, open_optional};

/// Unexplained CPU time, in a period in which no child left, above which a parent is taken to
/// run tasks of its own. 1 ms: read skew between the parent and its children is microseconds.
pub const LEAK_TOLERANCE: CpuMicros = CpuMicros(1_000);

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
}

/// The accounts of every parent of a tracked container, keyed by parent directory.
#[derive(Debug, Default)]
pub struct ParentAccounts {
    accounts: BTreeMap<PathBuf, ParentAccount>,
}

impl ParentAccounts {
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

        let Ok(parent) = read_usage(&self.file, buf, user_hz) else {
            tracing::debug!(parent = %self.dir.display(), "Parent cgroup unreadable; exits under it are not completed.");
            self.ledger = Ledger::default();
            self.own.clear();
            return unknown_all(&gone);
        };

        let mut seen: Vec<(String, Seen)> = reports.iter().map(|r| (name_of(r), r.seen)).collect();
        let reported: Vec<String> = seen.iter().map(|(n, _)| n.clone()).collect();
        // Children of the last sample that no container reports now: read them here.
        self.own.retain(|name, _| !reported.contains(name));
        let others: Vec<String> = self
            .ledger
            .children
            .keys()
            .filter(|name| !reported.contains(name))
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
                    for name in names {
                        let known_live = seen.iter().any(|(n, s)| *n == name && *s != Seen::Gone);
                        if known_live {
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

        let step = self.ledger.step(parent, &seen, complete);
        if let Some(unexplained) = step.quiet_unexplained {
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

/// The arithmetic of one parent, free of I/O: the parent's and each child's usage at the last
/// sample, and what a new sample's readings say about the children that left.
#[derive(Debug, Default)]
pub struct Ledger {
    /// The parent's usage at the last sample; `None` = no usable baseline.
    parent: Option<u64>,
    /// By child directory name: usage at the last sample and CPU time over the period before.
    children: HashMap<String, ChildState>,
    /// The last period in which no child left showed more than [`LEAK_TOLERANCE`] unexplained.
    leaky: bool,
}

#[derive(Clone, Copy, Debug)]
struct ChildState {
    last: u64,
    rate: u64,
}

/// What one [`Ledger::step`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// How the shares were obtained; `None` when nothing could be completed.
    pub completion: Option<Completion>,
    /// Per departed child (by name): its part of the unexplained time, µs.
    pub shares: Vec<(String, u64)>,
    /// Per departed child: its usage at the last sample.
    pub bases: Vec<(String, u64)>,
    /// In a period in which no child left, the unexplained time (signed, µs).
    pub quiet_unexplained: Option<i128>,
}

impl Ledger {
    /// Takes one sample: the parent's usage now and every child's state (`complete`: every
    /// child that exists is in `children`). Children absent from the last sample are new (the
    /// last sample was complete, so they were born since); [`Seen::Gone`] ones are departed.
    pub fn step(&mut self, parent: u64, children: &[(String, Seen)], complete: bool) -> Step {
        let mut step = Step::default();
        let failed = children.iter().any(|(_, s)| *s == Seen::Failed);
        let departed: Vec<(&String, ChildState)> = children
            .iter()
            .filter(|(_, s)| *s == Seen::Gone)
            .filter_map(|(n, _)| Some((n, *self.children.get(n)?)))
            .collect();
        // A live child is new (usage 0 at the last sample) when the name was unknown, or when
        // the cgroup under that name left and a new one took its place within the period.
        let last_of = |name: &String| {
            if departed.iter().any(|(n, _)| *n == name) {
                0
            } else {
                self.children.get(name).map_or(0, |c| c.last)
            }
        };
        let usable = self.parent.is_some() && !failed;
        if let (Some(before), true) = (self.parent, usable) {
            let mut unexplained = i128::from(parent) - i128::from(before);
            for (name, seen) in children {
                if let Seen::Live(now) = seen {
                    unexplained -= i128::from(*now) - i128::from(last_of(name));
                }
            }
            if departed.is_empty() {
                step.quiet_unexplained = Some(unexplained);
            } else {
                let total = u64::try_from(unexplained.max(0)).unwrap_or(u64::MAX);
                let weights: Vec<u64> = departed.iter().map(|(_, c)| c.rate).collect();
                let parts = split_exact(total, &weights);
                step.completion = Some(if self.leaky {
                    Completion::Leaky
                } else if departed.len() == 1 {
                    Completion::Exact
                } else {
                    Completion::Split {
                        among: departed.len(),
                    }
                });
                for ((name, state), part) in departed.iter().zip(parts) {
                    step.shares.push(((*name).clone(), part));
                    step.bases.push(((*name).clone(), state.last));
                }
            }
        }
        // The new baseline. A failed child's usage now is unknown: start over next sample.
        let mut next = HashMap::with_capacity(children.len());
        for (name, seen) in children {
            if let Seen::Live(now) = seen {
                let last = last_of(name);
                next.insert(
                    name.clone(),
                    ChildState {
                        last: *now,
                        rate: now.saturating_sub(last),
                    },
                );
            }
        }
        self.children = next;
        self.parent = (complete && !failed).then_some(parent);
        step
    }
}

/// Splits `total` in proportion to `weights` (equally when they are all zero), as integers
/// that sum to `total` exactly: largest remainder, ties to the lower index.
#[must_use]
pub fn split_exact(total: u64, weights: &[u64]) -> Vec<u64> {
    if weights.is_empty() {
        return Vec::new();
    }
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let (weights, sum): (Vec<u128>, u128) = if sum == 0 {
        (vec![1; weights.len()], weights.len() as u128)
    } else {
        (weights.iter().map(|&w| u128::from(w)).collect(), sum)
    };
    let total = u128::from(total);
    let mut parts: Vec<u128> = weights.iter().map(|w| total * w / sum).collect();
    let mut left = total - parts.iter().sum::<u128>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse((total * weights[i]) % sum));
    for i in order {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    parts
        .into_iter()
        .map(|p| u64::try_from(p).expect("a part never exceeds the u64 total"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(name: &str, usage: u64) -> (String, Seen) {
        (name.to_owned(), Seen::Live(usage))
    }

    fn gone(name: &str) -> (String, Seen) {
        (name.to_owned(), Seen::Gone)
    }

    #[test]
    fn one_departed_child_gets_exactly_the_unexplained_time() {
        let mut ledger = Ledger::default();
        assert_eq!(
            ledger.step(1_000, &[live("a", 400), live("b", 600)], true),
            Step::default(),
            "the first sample only sets the baseline"
        );
        // a: +100 live; b used 250 more, then left; a new child c used 30.
        let step = ledger.step(1_380, &[live("a", 500), gone("b"), live("c", 30)], true);
        assert_eq!(step.completion, Some(Completion::Exact));
        assert_eq!(step.shares, vec![("b".to_owned(), 250)]);
        assert_eq!(step.bases, vec![("b".to_owned(), 600)]);
    }

    #[test]
    fn several_departed_children_split_by_last_rate_and_sum_exactly() {
        let mut ledger = Ledger::default();
        ledger.step(0, &[live("a", 0), live("b", 0)], true);
        ledger.step(400, &[live("a", 300), live("b", 100)], true);
        let step = ledger.step(401, &[gone("a"), gone("b")], true);
        assert_eq!(step.completion, Some(Completion::Split { among: 2 }));
        let total: u64 = step.shares.iter().map(|(_, s)| s).sum();
        assert_eq!(total, 1, "nothing invented, nothing lost");
        assert_eq!(
            step.shares,
            vec![("a".to_owned(), 1), ("b".to_owned(), 0)],
            "3:1 by last rate, remainder to the larger"
        );
    }

    #[test]
    fn skew_never_gives_negative_time_and_quiet_periods_measure_leaks() {
        let mut ledger = Ledger::default();
        ledger.step(1_000, &[live("a", 1_000)], true);
        let quiet = ledger.step(1_100, &[live("a", 1_105)], true);
        assert_eq!(quiet.quiet_unexplained, Some(-5));
        let step = ledger.step(1_100, &[gone("a")], true);
        assert_eq!(step.shares, vec![("a".to_owned(), 0)]);
    }

    #[test]
    fn a_failed_sibling_or_incomplete_listing_completes_nothing_and_rebaselines() {
        let mut ledger = Ledger::default();
        ledger.step(0, &[live("a", 0), live("b", 0)], true);
        let failed = ledger.step(100, &[gone("a"), (String::from("b"), Seen::Failed)], true);
        assert_eq!(failed.completion, None);
        ledger.step(200, &[live("b", 150)], false);
        assert_eq!(
            ledger.step(300, &[gone("b")], true).completion,
            None,
            "no baseline after an incomplete sample"
        );
    }

    #[test]
    fn split_exact_sums_and_handles_zero_weights() {
        assert_eq!(split_exact(10, &[0, 0, 0]), vec![4, 3, 3]);
        assert_eq!(split_exact(7, &[1, 1]), vec![4, 3]);
        assert_eq!(
            split_exact(u64::MAX, &[u64::MAX, 1])
                .iter()
                .map(|&p| u128::from(p))
                .sum::<u128>(),
            u128::from(u64::MAX)
        );
        assert!(split_exact(5, &[]).is_empty());
    }
}
