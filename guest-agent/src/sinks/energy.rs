//! `--expose-energy DIR`: the energy the bridge attributed to this VM and its containers,
//! written as files inside the VM so that Linux energy tools read it unchanged.
//!
//! ```text
//! DIR/
//!   powercap/                       bind-mount over /sys/class/powercap (read-only)
//!     intel-rapl/                   the control type, as in sysfs
//!       enabled                     1
//!       subsystem -> ..             (sysfs has it; CodeCarbon lists zones through it)
//!       intel-rapl:0/               one package zone: the VM as a whole
//!         name                      package-0
//!         energy_uj                 cumulative µJ, wraps to 0 past max_energy_range_uj
//!         max_energy_range_uj       262143328850
//!         enabled                   1
//!     intel-rapl:0 -> intel-rapl/intel-rapl:0
//!   vm/                             the same figure unwrapped, with its bounds and label
//!     energy_uj  low_uj  high_uj  provenance  epoch  window_end_unix_ns
//!   containers/<id>/                per container: energy_uj low_uj high_uj name id
//!   containers/by-name/<name> -> ../<id>
//!   .state                          what the counters continue from after an agent restart
//! ```
//!
//! The numbers are joulebridge's *attribution* of host energy, not a hardware counter; they
//! move once per attribution window (see `docs/energy-in-the-vm.md`). Every file is replaced
//! atomically (written beside, then renamed), so a reader sees the old or the new value, never
//! a torn one. Counters never go backwards: the bridge's figures are cumulative per recording
//! (`epoch`), and the state file carries what was exposed across agent restarts and recording
//! changes. Only `energy_uj` under `powercap/` wraps, as the kernel's counters do.
//!
//! Everything here is a plain synchronous function over a root path. The stream sink hands
//! reports to [`spawn_writer`]'s task over a `watch` channel: latest wins, which loses nothing
//! because each report is cumulative (a writer that falls behind skips to the newest).

use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use protocol::{EnergyProvenance, EnergyReport};

/// `max_energy_range_uj` of the package zone: the value of a common Intel package, so that
/// consumers' wrap handling sees a familiar range.
pub const MAX_ENERGY_RANGE_UJ: u64 = 262_143_328_850;
/// Containers with files at most; further ones are left out (and logged).
pub const MAX_CONTAINERS: usize = 4096;
/// Longest container id or name accepted from a report, in bytes.
pub const MAX_NAME_LEN: usize = 256;

const STATE_FILE: &str = ".state";
const STATE_HEADER: &str = "joulebridge-energy-state 1";

/// What can go wrong with the tree.
#[derive(Debug, thiserror::Error)]
pub enum EnergyFilesError {
    /// A file or directory could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The state file exists but is not ours or is damaged.
    #[error("{path} is not a joulebridge energy state file ({why}); move it away to start over")]
    BadState {
        /// The path.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

/// One exposed counter: the last cumulative figure the bridge sent for it in the current
/// epoch, and what the files show (monotone, unwrapped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counter {
    last_report: u64,
    exposed: u64,
    low: u64,
    high: u64,
}

impl Counter {
    /// Moves to the bridge's new cumulative figure `value` (with bounds). `same_epoch` false:
    /// a new recording, whose figures all count from zero, so all of `value` is new.
    fn advance(&mut self, value: u64, low: u64, high: u64, same_epoch: bool) -> bool {
        let delta = if same_epoch {
            value.checked_sub(self.last_report)
        } else {
            Some(value)
        };
        self.last_report = value;
        // Bounds travel with the figure: the exposed figure minus/plus the report's margins.
        let (below, above) = (value.saturating_sub(low), high.saturating_sub(value));
        match delta {
            Some(d) => {
                self.exposed = self.exposed.saturating_add(d);
                self.low = self.exposed.saturating_sub(below);
                self.high = self.exposed.saturating_add(above);
                true
            }
            // Backwards within one epoch: not something a bridge sends. Rebase, expose nothing.
            None => false,
        }
    }
}

/// The persistent part: the epoch and every counter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    epoch: Option<u64>,
    vm: Counter,
    /// By container id.
    containers: BTreeMap<String, (String, Counter)>,
    provenance: Option<EnergyProvenance>,
    window_end: u64,
}

/// The file tree under one directory.
#[derive(Debug)]
pub struct EnergyFiles {
    root: PathBuf,
    state: State,
}

/// Opens the tree under `dir` and starts the task that writes every report sent on the
/// returned channel. The task ends, after writing the last report, when the sender is dropped.
///
/// # Errors
/// The tree cannot be created or its state file is damaged (checked before anything runs).
pub async fn spawn_writer(
    dir: PathBuf,
) -> Result<
    (
        tokio::sync::watch::Sender<Option<EnergyReport>>,
        tokio::task::JoinHandle<()>,
    ),
    EnergyFilesError,
> {
    let mut files = tokio::task::spawn_blocking(move || EnergyFiles::open(&dir))
        .await
        .map_err(|e| EnergyFilesError::Write {
            path: PathBuf::from("--expose-energy"),
            source: io::Error::other(e),
        })??;
    tracing::info!(
        dir = %files.root.display(),
        vm_energy_uj = files.vm_exposed_uj(),
        "Exposing attributed energy in the VM."
    );
    let (tx, mut rx) = tokio::sync::watch::channel(None::<EnergyReport>);
    let task = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(report) = rx.borrow_and_update().clone() else {
                continue;
            };
            let done = tokio::task::spawn_blocking(move || {
                let result = files.apply(&report);
                (files, result)
            })
            .await;
            match done {
                Ok((back, result)) => {
                    files = back;
                    if let Err(err) = result {
                        tracing::warn!(
                            error = %anyhow_chain(&err),
                            "Cannot write the energy files; the next report retries."
                        );
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "Energy file writer panicked; stopping it.");
                    return;
                }
            }
        }
    });
    Ok((tx, task))
}

/// An error with its sources, on one line.
fn anyhow_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        s.push_str(": ");
        s.push_str(&e.to_string());
        source = e.source();
    }
    s
}

impl EnergyFiles {
    /// Creates the tree under `root` (or continues the one there, from its state file) and
    /// writes the current figures.
    ///
    /// # Errors
    /// The tree cannot be written, or a state file is there but damaged.
    pub fn open(root: &Path) -> Result<Self, EnergyFilesError> {
        let zone = root.join("powercap/intel-rapl/intel-rapl:0");
        for dir in [&zone, &root.join("vm"), &root.join("containers/by-name")] {
            std::fs::create_dir_all(dir).map_err(|source| EnergyFilesError::Write {
                path: dir.clone(),
                source,
            })?;
        }
        let state_path = root.join(STATE_FILE);
        let state = match std::fs::read_to_string(&state_path) {
            Ok(text) => State::parse(&text).map_err(|why| EnergyFilesError::BadState {
                path: state_path.clone(),
                why,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(source) => {
                return Err(EnergyFilesError::Write {
                    path: state_path,
                    source,
                });
            }
        };
        let files = Self {
            root: root.to_path_buf(),
            state,
        };
        files.write_static()?;
        files.write_counters()?;
        Ok(files)
    }

    /// The unwrapped figure the VM's files show, µJ.
    #[must_use]
    pub fn vm_exposed_uj(&self) -> u64 {
        self.state.vm.exposed
    }

    /// Takes one report: advances every counter, saves the state, rewrites the files.
    ///
    /// # Errors
    /// A file cannot be written (the state in memory has advanced; the next report rewrites).
    pub fn apply(&mut self, report: &EnergyReport) -> Result<(), EnergyFilesError> {
        let same_epoch = self.state.epoch == Some(report.epoch);
        if !same_epoch {
            tracing::info!(
                epoch = report.epoch,
                "Energy figures of a new bridge recording; counters continue from their values."
            );
        }
        let vm = report.vm;
        if !self
            .state
            .vm
            .advance(vm.energy.0, vm.low.0, vm.high.0, same_epoch)
        {
            tracing::warn!(
                reported = vm.energy.0,
                "The bridge's VM energy went backwards within one recording; rebased."
            );
        }
        for c in &report.containers {
            if c.id.is_empty() || c.id.len() > MAX_NAME_LEN || c.name.len() > MAX_NAME_LEN {
                tracing::warn!(
                    id_bytes = c.id.len(),
                    "Container entry with an empty or oversized id or name ignored."
                );
                continue;
            }
            let known = self.state.containers.contains_key(&c.id);
            if !known && self.state.containers.len() >= MAX_CONTAINERS {
                tracing::warn!(
                    limit = MAX_CONTAINERS,
                    "Too many containers for --expose-energy; new ones are left out."
                );
                continue;
            }
            let (name, counter) = self
                .state
                .containers
                .entry(c.id.clone())
                .or_insert_with(|| (c.name.clone(), Counter::default()));
            if !c.name.is_empty() {
                name.clone_from(&c.name);
            }
            // A container first seen in this epoch counts from zero like a new epoch does.
            let same = same_epoch && known;
            counter.advance(c.energy.energy.0, c.energy.low.0, c.energy.high.0, same);
        }
        self.state.epoch = Some(report.epoch);
        self.state.provenance = Some(report.provenance);
        self.state.window_end = report.window_end.0;
        self.save_state()?;
        self.write_counters()
    }

    fn write_static(&self) -> Result<(), EnergyFilesError> {
        let pc = self.root.join("powercap");
        let zone = pc.join("intel-rapl/intel-rapl:0");
        replace(&pc.join("intel-rapl/enabled"), "1\n")?;
        replace(&zone.join("name"), "package-0\n")?;
        replace(&zone.join("enabled"), "1\n")?;
        replace(
            &zone.join("max_energy_range_uj"),
            &format!("{MAX_ENERGY_RANGE_UJ}\n"),
        )?;
        symlink(Path::new(".."), &pc.join("intel-rapl/subsystem"))?;
        symlink(
            Path::new("intel-rapl/intel-rapl:0"),
            &pc.join("intel-rapl:0"),
        )
    }

    fn write_counters(&self) -> Result<(), EnergyFilesError> {
        let s = &self.state;
        let wrapped = s.vm.exposed % (MAX_ENERGY_RANGE_UJ + 1);
        replace(
            &self.root.join("powercap/intel-rapl/intel-rapl:0/energy_uj"),
            &format!("{wrapped}\n"),
        )?;
        let vm = self.root.join("vm");
        write_counter(&vm, &s.vm)?;
        replace(&vm.join("provenance"), provenance_text(s.provenance))?;
        let epoch = s.epoch.map_or_else(String::new, |e| format!("{e}\n"));
        replace(&vm.join("epoch"), &epoch)?;
        replace(
            &vm.join("window_end_unix_ns"),
            &format!("{}\n", s.window_end),
        )?;
        let containers = self.root.join("containers");
        for (id, (name, counter)) in &s.containers {
            let file_id = file_name(id);
            let dir = containers.join(&file_id);
            std::fs::create_dir_all(&dir).map_err(|source| EnergyFilesError::Write {
                path: dir.clone(),
                source,
            })?;
            write_counter(&dir, counter)?;
            replace(&dir.join("id"), &format!("{id}\n"))?;
            replace(&dir.join("name"), &format!("{name}\n"))?;
            if !name.is_empty() {
                let link = containers.join("by-name").join(file_name(name));
                symlink(&Path::new("..").join(&file_id), &link)?;
            }
        }
        Ok(())
    }

    fn save_state(&self) -> Result<(), EnergyFilesError> {
        replace(&self.root.join(STATE_FILE), &self.state.render())
    }
}

fn write_counter(dir: &Path, c: &Counter) -> Result<(), EnergyFilesError> {
    replace(&dir.join("energy_uj"), &format!("{}\n", c.exposed))?;
    replace(&dir.join("low_uj"), &format!("{}\n", c.low))?;
    replace(&dir.join("high_uj"), &format!("{}\n", c.high))
}

fn provenance_text(p: Option<EnergyProvenance>) -> &'static str {
    match p {
        None => "none yet\n",
        Some(EnergyProvenance::Measured) => "measured (hardware energy counter)\n",
        Some(EnergyProvenance::VendorModel) => "vendor model (Apple's energy figures)\n",
        Some(EnergyProvenance::Estimated) => "estimated (utilisation model, no sensor)\n",
    }
}

/// A file name for an id or name from the wire: `[A-Za-z0-9._-]` as is, every other byte as
/// `%XX`, and never `.`, `..` or empty. Injective, so two containers never share a file.
#[must_use]
pub fn file_name(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    match out.as_str() {
        "" => "%".to_owned(),
        "." => "%2E".to_owned(),
        ".." => "%2E%2E".to_owned(),
        _ => out,
    }
}

/// Writes `path` atomically: a temporary file beside it, flushed, then renamed over it.
fn replace(path: &Path, contents: &str) -> Result<(), EnergyFilesError> {
    let err = |source| EnergyFilesError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_data().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Points `link` at `target` (relative), replacing an older link atomically.
fn symlink(target: &Path, link: &Path) -> Result<(), EnergyFilesError> {
    let err = |source| EnergyFilesError::Write {
        path: link.to_path_buf(),
        source,
    };
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let name = link
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    let tmp = link.with_file_name(format!(".{name}.tmp"));
    // A leftover from an interrupted run; absent is the normal case.
    let _ignored = std::fs::remove_file(&tmp).is_ok();
    std::os::unix::fs::symlink(target, &tmp).map_err(err)?;
    std::fs::rename(&tmp, link).map_err(err)
}

impl State {
    /// Line format: a header, then `epoch N|-`, `vm LAST EXPOSED LOW HIGH`,
    /// `c LAST EXPOSED LOW HIGH ID NAME` (id and name as [`file_name`] escapes them).
    fn render(&self) -> String {
        let epoch = self.epoch.map_or_else(|| "-".to_owned(), |e| e.to_string());
        let c = &self.vm;
        let mut s = format!(
            "{STATE_HEADER}\nepoch {epoch}\nvm {} {} {} {}\n",
            c.last_report, c.exposed, c.low, c.high
        );
        for (id, (name, c)) in &self.containers {
            s.push_str(&format!(
                "c {} {} {} {} {} {}\n",
                c.last_report,
                c.exposed,
                c.low,
                c.high,
                file_name(id),
                file_name(name)
            ));
        }
        s
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(STATE_HEADER) {
            return Err("unknown header".into());
        }
        let mut state = Self::default();
        for (n, line) in lines.enumerate() {
            let bad = || format!("line {}: {line:?}", n + 2);
            let mut w = line.split(' ');
            let num = |w: &mut std::str::Split<'_, char>| -> Result<u64, String> {
                w.next().and_then(|v| v.parse().ok()).ok_or_else(bad)
            };
            match w.next() {
                Some("epoch") => {
                    state.epoch = match w.next() {
                        Some("-") => None,
                        Some(v) => Some(v.parse().map_err(|_| bad())?),
                        None => return Err(bad()),
                    };
                }
                Some(kind @ ("vm" | "c")) => {
                    let counter = Counter {
                        last_report: num(&mut w)?,
                        exposed: num(&mut w)?,
                        low: num(&mut w)?,
                        high: num(&mut w)?,
                    };
                    if kind == "vm" {
                        state.vm = counter;
                    } else {
                        let id = w.next().map(unescape).ok_or_else(bad)?;
                        let name = w.next().map(unescape).ok_or_else(bad)?;
                        state.containers.insert(id, (name, counter));
                    }
                }
                _ => return Err(bad()),
            }
        }
        Ok(state)
    }
}

/// Inverse of [`file_name`] (the `.`/`..`/empty forms decode to what they stood for).
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
            // A lone `%` is the escaped empty string.
            i += 1;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{AttributedEnergy, ContainerEnergy, MicroJoules, UnixNanos};

    fn report(epoch: u64, vm: u64, containers: &[(&str, &str, u64)]) -> EnergyReport {
        let fig = |v: u64| AttributedEnergy {
            energy: MicroJoules(v),
            low: MicroJoules(v - v / 10),
            high: MicroJoules(v + v / 10),
        };
        EnergyReport {
            epoch,
            window_end: UnixNanos(1),
            provenance: EnergyProvenance::Estimated,
            vm: fig(vm),
            containers: containers
                .iter()
                .map(|(id, name, v)| ContainerEnergy {
                    id: (*id).into(),
                    name: (*name).into(),
                    energy: fig(*v),
                })
                .collect(),
        }
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap().trim().to_owned()
    }

    #[test]
    fn tree_follows_the_powercap_layout_and_counts_across_restarts_and_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut files = EnergyFiles::open(root).unwrap();
        let zone = root.join("powercap/intel-rapl:0");
        assert_eq!(read(&zone.join("name")), "package-0");
        assert_eq!(read(&zone.join("energy_uj")), "0");
        assert_eq!(
            read(&root.join("powercap/intel-rapl/subsystem/intel-rapl:0/max_energy_range_uj")),
            MAX_ENERGY_RANGE_UJ.to_string()
        );

        files
            .apply(&report(7, 1_000, &[("abc", "web", 600)]))
            .unwrap();
        files
            .apply(&report(7, 2_500, &[("abc", "web", 1_500)]))
            .unwrap();
        assert_eq!(read(&zone.join("energy_uj")), "2500");
        assert_eq!(read(&root.join("containers/abc/energy_uj")), "1500");
        assert_eq!(read(&root.join("containers/by-name/web/energy_uj")), "1500");
        assert_eq!(read(&root.join("vm/low_uj")), "2250");

        // Agent restart: the counters continue from the state file.
        drop(files);
        let mut files = EnergyFiles::open(root).unwrap();
        assert_eq!(read(&zone.join("energy_uj")), "2500");
        files
            .apply(&report(7, 3_000, &[("abc", "web", 1_800)]))
            .unwrap();
        assert_eq!(read(&zone.join("energy_uj")), "3000");

        // A new recording counts from zero: its figures add on, nothing goes backwards.
        files
            .apply(&report(8, 400, &[("abc", "web", 100), ("def", "db", 300)]))
            .unwrap();
        assert_eq!(read(&zone.join("energy_uj")), "3400");
        assert_eq!(read(&root.join("containers/abc/energy_uj")), "1900");
        assert_eq!(read(&root.join("containers/def/energy_uj")), "300");
        assert_eq!(files.vm_exposed_uj(), 3_400);
    }

    #[test]
    fn package_counter_wraps_like_the_kernels() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = EnergyFiles::open(dir.path()).unwrap();
        files
            .apply(&report(1, MAX_ENERGY_RANGE_UJ + 11, &[]))
            .unwrap();
        let zone = dir.path().join("powercap/intel-rapl/intel-rapl:0");
        assert_eq!(read(&zone.join("energy_uj")), "10");
        assert_eq!(
            read(&dir.path().join("vm/energy_uj")),
            (MAX_ENERGY_RANGE_UJ + 11).to_string()
        );
    }

    #[test]
    fn hostile_ids_and_names_stay_inside_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = EnergyFiles::open(dir.path()).unwrap();
        let long = "x".repeat(MAX_NAME_LEN + 1);
        files
            .apply(&report(
                1,
                10,
                &[("../../etc", "..", 1), ("", "empty", 1), (&long, "long", 1)],
            ))
            .unwrap();
        let containers = dir.path().join("containers");
        assert!(containers.join("..%2F..%2Fetc/energy_uj").is_file());
        assert_eq!(
            read(&containers.join("by-name/%2E%2E/id")),
            "../../etc",
            "the name `..` gets an escaped link of its own"
        );
        let entries = std::fs::read_dir(&containers).unwrap().count();
        assert_eq!(entries, 2, "by-name and the one valid container");
        assert_eq!(file_name(""), "%");
        assert_ne!(file_name("."), file_name(".."));
        for raw in ["", ".", "..", "a b", "%", "ok-1.2_x"] {
            assert_eq!(unescape(&file_name(raw)), raw);
        }
    }

    #[test]
    fn state_round_trips_and_a_foreign_file_is_refused() {
        let mut state = State {
            epoch: Some(3),
            ..State::default()
        };
        state.vm.exposed = 5;
        state.containers.insert(
            "a b/c".into(),
            (
                "n%m".into(),
                Counter {
                    last_report: 1,
                    exposed: 2,
                    low: 1,
                    high: 3,
                },
            ),
        );
        assert_eq!(State::parse(&state.render()).unwrap(), state);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "hello\n").unwrap();
        let err = EnergyFiles::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a joulebridge energy state"));
    }
}
