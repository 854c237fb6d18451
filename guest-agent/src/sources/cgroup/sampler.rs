//! Reading what is tracked: one pass over every open counter file per sample, the slow-file
//! cadence, and the final sample of containers that left.

use std::path::PathBuf;

use protocol::{ContainerCounters, CpuCounters};

use super::parent::{ChildReport, Seen};
use super::read::{self, ReadFailure, Reading};
use super::{CgroupSampler, SampleReport, Throttling, Tracked};

impl Tracked {
    /// Bookkeeping after a successful read (`slow`: the slow files were read): remembers the
    /// throttling just read, or puts the last one back into a reading that skipped it.
    fn after_read(&mut self, reading: &mut read::Reading, slow: bool) {
        if !self.slow_throttling {
            return;
        }
        let cpu: &mut CpuCounters = &mut reading.cpu;
        if slow {
            self.last_throttling = Throttling {
                nr_periods: cpu.nr_periods,
                nr_throttled: cpu.nr_throttled,
                throttled: cpu.throttled,
            };
        } else {
            cpu.nr_periods = self.last_throttling.nr_periods;
            cpu.nr_throttled = self.last_throttling.nr_throttled;
            cpu.throttled = self.last_throttling.throttled;
        }
    }
}

impl CgroupSampler {
    /// Reads every tracked container into `out`, which is overwritten: its entries (and their
    /// id strings) are reused, so a caller that keeps the vector allocates little per sample.
    /// The slow files are read per the cadence ([`with_slow_every`](Self::with_slow_every)).
    ///
    /// Containers that vanished are dropped from tracking and listed in the report. Each one
    /// (and each one untracked since the last sample whose cgroup is gone) is appended to `out`
    /// once more, with its final CPU usage completed from its parent cgroup, when that can be
    /// computed ([`SampleReport::departed`] says how).
    pub fn sample(&mut self, out: &mut Vec<ContainerCounters>) -> SampleReport {
        self.sample_from(out, None)
    }

    /// As [`sample`](Self::sample), but reads `dying` first and in full (every file, whatever
    /// the cadence): the pass the pipeline runs when the engine says a container's process
    /// exited, so its cgroup is read before the engine removes it. It stays tracked: whatever
    /// it uses until its cgroup is gone is completed from the parent when that happens.
    pub fn sample_dying_first(
        &mut self,
        out: &mut Vec<ContainerCounters>,
        dying: &str,
    ) -> SampleReport {
        self.sample_from(out, Some(dying))
    }

    fn sample_from(
        &mut self,
        out: &mut Vec<ContainerCounters>,
        first: Option<&str>,
    ) -> SampleReport {
        let mut report = SampleReport::default();
        let mut filled = 0;
        self.parents.begin(&mut self.buf, self.user_hz);
        let first = first.filter(|id| self.tracked.contains_key(*id));
        if let Some(id) = first
            && let Some(tracked) = self.tracked.get_mut(id)
        {
            match read::read_all(&tracked.files, &mut self.buf, self.user_hz, true) {
                Ok(mut reading) => {
                    tracked.after_read(&mut reading, true);
                    put(out, &mut filled, id, tracked, reading);
                }
                Err(ReadFailure::Vanished) => {
                    tracked.seen = Seen::Gone;
                    report.vanished.push(id.to_owned());
                }
                Err(ReadFailure::Error(err)) => {
                    tracked.seen = Seen::Failed;
                    report.errors.push(err);
                }
            }
        }
        for (id, tracked) in &mut self.tracked {
            if first == Some(id.as_str()) {
                continue;
            }
            let slow = tracked.slow_countdown == 0;
            match read::read_all(&tracked.files, &mut self.buf, self.user_hz, slow) {
                Ok(mut reading) => {
                    tracked.after_read(&mut reading, slow);
                    // A failed read leaves the countdown alone: the next sample retries.
                    tracked.slow_countdown = match tracked.slow_countdown.checked_sub(1) {
                        Some(left) => left,
                        None => self.slow_every.get() - 1,
                    };
                    put(out, &mut filled, id, tracked, reading);
                }
                Err(ReadFailure::Vanished) => {
                    tracked.seen = Seen::Gone;
                    report.vanished.push(id.clone());
                }
                Err(ReadFailure::Error(err)) => {
                    tracked.seen = Seen::Failed;
                    report.errors.push(err);
                }
            }
        }
        let mut leaving = std::mem::take(&mut self.leaving);
        for (_, tracked) in &mut leaving {
            tracked.seen = match read::read_all(&tracked.files, &mut self.buf, self.user_hz, false)
            {
                Ok(reading) => Seen::Live(reading.cpu.usage.0),
                Err(ReadFailure::Vanished) => Seen::Gone,
                Err(ReadFailure::Error(_)) => Seen::Failed,
            };
        }

        let reports: Vec<ChildReport<'_>> = self
            .tracked
            .iter()
            .chain(leaving.iter().map(|(id, t)| (id, t)))
            .filter_map(|(id, t)| {
                Some(ChildReport {
                    id,
                    dir: &t.dir,
                    kind: t.files.first()?.kind,
                    last_read: t.last_cpu.usage,
                    seen: t.seen,
                    cpu_file: t.files.first(),
                })
            })
            .collect();
        let roots: Vec<&std::path::Path> = [&self.mounts.v2, &self.mounts.v1.cpuacct]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
            .collect();
        report.departed = self
            .parents
            .settle(&reports, &roots, &mut self.buf, self.user_hz);
        drop(reports);

        for departure in &report.departed {
            let Some((usage, _)) = departure.completed else {
                continue;
            };
            let tracked = self.tracked.get(&departure.id).or_else(|| {
                leaving
                    .iter()
                    .find(|(id, _)| *id == departure.id)
                    .map(|(_, t)| t)
            });
            if let Some(tracked) = tracked {
                let reading = Reading {
                    cpu: CpuCounters {
                        usage,
                        ..tracked.last_cpu
                    },
                    memory_current: None,
                    io: None,
                };
                put_final(out, &mut filled, &departure.id, tracked, reading);
            }
        }
        out.truncate(filled);
        for id in &report.vanished {
            self.tracked.remove(id);
        }
        report
    }
}

/// Writes a successful read into the next slot of `out` and remembers it in `tracked`.
fn put(
    out: &mut Vec<ContainerCounters>,
    filled: &mut usize,
    id: &str,
    tracked: &mut Tracked,
    reading: Reading,
) {
    tracked.last_cpu = reading.cpu;
    tracked.seen = Seen::Live(reading.cpu.usage.0);
    put_final(out, filled, id, tracked, reading);
}

/// Writes counters into the next slot of `out`, reusing its allocation.
fn put_final(
    out: &mut Vec<ContainerCounters>,
    filled: &mut usize,
    id: &str,
    tracked: &Tracked,
    reading: Reading,
) {
    if let Some(slot) = out.get_mut(*filled) {
        fill(slot, id, tracked, reading);
    } else {
        out.push(counters(id.to_owned(), tracked, reading));
    }
    *filled += 1;
}

fn counters(id: String, tracked: &Tracked, reading: Reading) -> ContainerCounters {
    ContainerCounters {
        id,
        cpu: reading.cpu,
        memory_current: reading.memory_current,
        io: reading.io,
        cpu_limit_millicores: tracked.cpu_limit_millicores,
    }
}

fn fill(slot: &mut ContainerCounters, id: &str, tracked: &Tracked, reading: Reading) {
    id.clone_into(&mut slot.id);
    slot.cpu = reading.cpu;
    slot.memory_current = reading.memory_current;
    slot.io = reading.io;
    slot.cpu_limit_millicores = tracked.cpu_limit_millicores;
}

#[cfg(test)]
mod tests {
    use std::fs;

    use std::num::NonZeroU32;
    use std::path::PathBuf;

    use protocol::{Bytes, CgroupMode, CpuMicros, IoCounters};

    use super::super::{CgroupMounts, V1Mounts};
    use super::*;

    const REL: &str = "docker/c1";

    /// A pure-v1 tree (separate controller mounts) with one container, as files in a temp dir.
    struct V1Tree {
        dir: tempfile::TempDir,
    }

    impl V1Tree {
        fn new() -> Self {
            let tree = Self {
                dir: tempfile::tempdir().unwrap(),
            };
            for controller in ["cpu", "cpuacct", "memory", "blkio"] {
                fs::create_dir_all(tree.cgroup(controller)).unwrap();
            }
            tree.write("cpuacct", "cpuacct.usage", "5000000\n");
            tree.write("cpuacct", "cpuacct.stat", "user 3\nsystem 1\n");
            tree.write("cpu", "cpu.cfs_quota_us", "-1\n");
            tree.write("cpu", "cpu.cfs_period_us", "100000\n");
            tree.set_tick(0);
            tree
        }

        fn cgroup(&self, controller: &str) -> PathBuf {
            self.dir.path().join(controller).join(REL)
        }

        fn write(&self, controller: &str, name: &str, text: &str) {
            fs::write(self.cgroup(controller).join(name), text).unwrap();
        }

        /// Makes every counter file a function of `tick`, so a sample shows which it read.
        fn set_tick(&self, tick: u64) {
            self.write(
                "cpuacct",
                "cpuacct.usage",
                &format!("{}\n", (tick + 1) * 1_000),
            );
            self.write(
                "cpu",
                "cpu.stat",
                &format!(
                    "nr_periods {}\nnr_throttled {tick}\nthrottled_time {}\n",
                    tick * 2,
                    tick * 1_000
                ),
            );
            self.write(
                "memory",
                "memory.usage_in_bytes",
                &format!("{}\n", tick + 100),
            );
            self.write(
                "blkio",
                "blkio.throttle.io_service_bytes",
                &format!(
                    "8:0 Read {tick}\n8:0 Write {}\nTotal {}\n",
                    tick * 2,
                    tick * 3
                ),
            );
        }

        fn sampler(&self, every: u32) -> CgroupSampler {
            let at = |c: &str| Some(self.dir.path().join(c));
            let mounts = CgroupMounts {
                mode: CgroupMode::V1,
                v2: None,
                v1: V1Mounts {
                    cpu: at("cpu"),
                    cpuacct: at("cpuacct"),
                    memory: at("memory"),
                    blkio: at("blkio"),
                },
            };
            let mut sampler = CgroupSampler::with_user_hz(mounts, 100)
                .with_slow_every(NonZeroU32::new(every).unwrap());
            sampler.track("c1".to_owned(), REL).unwrap();
            sampler
        }
    }

    fn sample(sampler: &mut CgroupSampler, out: &mut Vec<ContainerCounters>) -> ContainerCounters {
        let report = sampler.sample(out);
        assert!(
            report.vanished.is_empty() && report.errors.is_empty(),
            "{report:?}"
        );
        assert_eq!(out.len(), 1);
        out[0].clone()
    }

    #[test]
    fn slow_files_are_read_on_the_first_sample_and_every_nth_only() {
        let tree = V1Tree::new();
        let mut sampler = tree.sampler(3);
        let mut out = Vec::new();
        for tick in 0..10 {
            tree.set_tick(tick);
            let c = sample(&mut sampler, &mut out);
            // CPU time: every sample.
            assert_eq!(c.cpu.usage, CpuMicros(tick + 1), "tick {tick}");
            if tick % 3 == 0 {
                assert_eq!(c.memory_current, Some(Bytes(tick + 100)), "tick {tick}");
                assert_eq!(
                    c.io,
                    Some(IoCounters {
                        read: Bytes(tick),
                        write: Bytes(tick * 2)
                    }),
                    "tick {tick}"
                );
            } else {
                assert_eq!((c.memory_current, c.io), (None, None), "tick {tick}");
            }
        }
    }

    #[test]
    fn throttling_repeats_the_last_value_read_and_never_decreases() {
        let tree = V1Tree::new();
        let mut sampler = tree.sampler(4);
        let mut out = Vec::new();
        let mut previous = CpuCounters::default();
        for tick in 0..13 {
            tree.set_tick(tick);
            let cpu = sample(&mut sampler, &mut out).cpu;
            let read_at = tick - tick % 4;
            assert_eq!(
                (cpu.nr_periods, cpu.nr_throttled, cpu.throttled),
                (read_at * 2, read_at, CpuMicros(read_at)),
                "tick {tick}"
            );
            assert!(
                cpu.nr_periods >= previous.nr_periods
                    && cpu.nr_throttled >= previous.nr_throttled
                    && cpu.throttled >= previous.throttled,
                "tick {tick}: {cpu:?} after {previous:?}"
            );
            previous = cpu;
        }
        assert!(previous.nr_throttled > 0, "the counters moved at all");
    }

    #[test]
    fn every_sample_reads_everything_when_n_is_1() {
        let tree = V1Tree::new();
        let mut sampler = tree.sampler(1);
        let mut out = Vec::new();
        for tick in 0..5 {
            tree.set_tick(tick);
            let c = sample(&mut sampler, &mut out);
            assert_eq!(c.memory_current, Some(Bytes(tick + 100)), "tick {tick}");
            assert_eq!(c.io.map(|io| io.read), Some(Bytes(tick)), "tick {tick}");
            assert_eq!(c.cpu.nr_throttled, tick, "tick {tick}");
        }
    }

    #[test]
    fn dying_container_is_read_first_and_in_full_between_slow_samples() {
        let tree = V1Tree::new();
        let mut sampler = tree.sampler(10);
        let mut out = Vec::new();
        sample(&mut sampler, &mut out);
        tree.set_tick(5);
        assert_eq!(sample(&mut sampler, &mut out).memory_current, None);
        // The pipeline's pass on a `Died` event.
        let report = sampler.sample_dying_first(&mut out, "c1");
        assert!(
            report.vanished.is_empty() && report.errors.is_empty(),
            "{report:?}"
        );
        let last = &out[0];
        assert_eq!(last.memory_current, Some(Bytes(105)));
        assert_eq!(last.io.map(|io| io.write), Some(Bytes(10)));
        assert_eq!(last.cpu.nr_throttled, 5);
        assert_eq!(sampler.len(), 1, "still tracked until its cgroup is gone");
        // What the final read saw is kept: a later fast sample does not go back to tick 0.
        assert_eq!(sample(&mut sampler, &mut out).cpu.nr_throttled, 5);
    }
}
