//! Apple `powermetrics` as a power source (macOS), and the pieces that make it testable on
//! Linux.
//!
//! - [`frame`]: the NUL framer (holds an incomplete trailing document; drops and counts it at
//!   EOF).
//! - [`plist`]: a pull cursor over one plist document (generic: dicts, scalars, skipping).
//! - [`parse`]: the powermetrics schema: the keys the bridge needs, read with that cursor.
//! - [`spawn`]: the child-process supervisor (arguments per macOS release, stderr drained,
//!   restarts with gaps recorded, the "run as root" diagnosis).
//! - This module: turning a parsed document into a [`PowerSample`] ([`to_sample`]) and the
//!   per-stream state shared by the live source and [`super::replay`] ([`DocStream`]).
//!
//! Energy per window is `power × elapsed_ns` (mW × ns / 1e6 = µJ): the reported integer mJ are
//! too coarse at short intervals (docs/powermetrics.md §4.1) but are kept in
//! [`ComponentEnergy::reported_mj`]. Domain dispatch is on keys present, never on OS version:
//! Intel `package_joules`/`package_watts` → the `package` domain; Apple Silicon `cpu_*` → the
//! `cpu` domain; neither → "no energy data".
//!
//! The VM's share comes from the same document: the CPU time of the VM task (see
//! [`VmSelector`]) against `all_tasks.cputime_ns`, never the coalition sum, which differs from
//! `all_tasks` by up to ±10 % (docs/attribution.md §2).

mod child;
pub mod frame;
pub mod parse;
pub mod plist;
pub mod spawn;

use protocol::{MicroJoules, MonoNanos};

use self::frame::{DocFramer, Dropped, Frame};
use self::parse::{EnergyReading, PlistError, PowermetricsDoc, parse_document};
use super::{HostCpu, PowerEvent, PowerSample, Provenance, VmSelector, VmShare, energy_from_power};

/// Energy of one component over one window.
#[derive(Clone, Debug, PartialEq)]
pub struct ComponentEnergy {
    /// `cpu`, `gpu`, `ane`, `combined`, `package`, `cluster:E-Cluster`, …
    pub name: String,
    /// `power × elapsed` when a power key exists, else the reported energy.
    pub energy: MicroJoules,
    /// The reported average power (mW).
    pub power_mw: Option<f64>,
    /// The reported energy (mJ), kept for cross-checks.
    pub reported_mj: Option<f64>,
}

/// Why a document yields no sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoSample {
    /// No energy keys for a CPU domain (VM guest, unsupported hardware, sampler list).
    NoEnergyData(String),
    /// `is_delta` is false: a cumulative document (usage summary, initial usage).
    NotDelta,
    /// No `elapsed_ns`.
    NoWindow,
}

impl std::fmt::Display for NoSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoEnergyData(reason) => write!(f, "no energy data: {reason}"),
            Self::NotDelta => f.write_str("cumulative document (is_delta = false)"),
            Self::NoWindow => f.write_str("document without elapsed_ns"),
        }
    }
}

/// The VM processes found in one document.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VmMatch {
    /// The share, when the document lists tasks.
    pub share: Option<VmShare>,
    /// `coalition/name[pid]` of every matched task.
    pub matched: Vec<String>,
}

fn reading_energy(reading: &EnergyReading, elapsed_ns: u64) -> Option<MicroJoules> {
    match (reading.power_mw, reading.reported_mj) {
        (Some(power_mw), _) => energy_from_power(power_mw, elapsed_ns),
        (None, Some(mj)) => super::round_to_u64(mj * 1e3).map(MicroJoules),
        (None, None) => None,
    }
}

/// The domain split by CPU time: Intel `package` (reported in J/W), else `cpu`.
#[must_use]
pub fn split_domain(doc: &PowermetricsDoc) -> Option<&EnergyReading> {
    doc.readings
        .iter()
        .find(|r| r.name == "package" && r.base_units)
        .or_else(|| doc.reading("cpu"))
        .filter(|r| r.power_mw.is_some() || r.reported_mj.is_some())
}

/// Every component of a document, with energy over `elapsed_ns`.
///
/// GPU: `processor.gpu_power` when present (mW precision), else `gpu.gpu_energy` (a
/// `gpu_power`-only sampler list has no `processor` dict). The two differ slightly on some
/// machines (docs/powermetrics.md §4.2); the processor figure is preferred for consistency with
/// `cpu` and `combined`.
#[must_use]
pub fn components(doc: &PowermetricsDoc, elapsed_ns: u64) -> Vec<ComponentEnergy> {
    let mut out: Vec<ComponentEnergy> = doc
        .readings
        .iter()
        .filter_map(|r| {
            reading_energy(r, elapsed_ns).map(|energy| ComponentEnergy {
                name: r.name.clone(),
                energy,
                power_mw: r.power_mw,
                reported_mj: r.reported_mj,
            })
        })
        .collect();
    if doc.reading("gpu").is_none()
        && let Some(mj) = doc.gpu_dict_energy_mj
        && let Some(uj) = super::round_to_u64(mj * 1e3)
    {
        out.push(ComponentEnergy {
            name: "gpu".to_owned(),
            energy: MicroJoules(uj),
            power_mw: None,
            reported_mj: Some(mj),
        });
    }
    for cluster in &doc.clusters {
        let reading = EnergyReading {
            name: String::new(),
            power_mw: cluster.power_mw,
            reported_mj: cluster.reported_mj,
            base_units: false,
        };
        if let Some(energy) = reading_energy(&reading, elapsed_ns) {
            out.push(ComponentEnergy {
                name: format!("cluster:{}", cluster.name),
                energy,
                power_mw: cluster.power_mw,
                reported_mj: cluster.reported_mj,
            });
        }
    }
    out
}

/// Finds the VM task(s) and the totals of the same document.
#[must_use]
pub fn vm_share(doc: &PowermetricsDoc, selector: &VmSelector) -> VmMatch {
    if doc.tasks.is_empty() && doc.all_tasks.is_none() {
        return VmMatch::default();
    }
    let coalition_name = |task: &parse::TaskStats| {
        task.coalition
            .and_then(|i| doc.coalitions.get(i))
            .map(|c| c.name.as_str())
    };
    let matched: Vec<&parse::TaskStats> = match selector {
        VmSelector::Pid(pid) => doc.tasks.iter().filter(|t| t.pid == Some(*pid)).collect(),
        VmSelector::Patterns(patterns) => patterns
            .iter()
            .map(|pattern| {
                doc.tasks
                    .iter()
                    .filter(|t| {
                        pattern.process.matches(&t.name)
                            && pattern.coalition.as_ref().is_none_or(|c| {
                                coalition_name(t).is_some_and(|name| c.matches(name))
                            })
                    })
                    .collect::<Vec<_>>()
            })
            .find(|found| !found.is_empty())
            .unwrap_or_default(),
    };
    let vm_cpu_ns = matched.iter().filter_map(|t| t.cputime_ns).sum();
    let total_cpu_ns = doc
        .all_tasks
        .as_ref()
        .and_then(|t| t.cputime_ns)
        .unwrap_or_else(|| doc.tasks.iter().filter_map(|t| t.cputime_ns).sum());
    let vm_energy_impact = matched
        .iter()
        .filter_map(|t| t.energy_impact)
        .reduce(|a, b| a + b);
    let total_energy_impact = doc.all_tasks.as_ref().and_then(|t| t.energy_impact);
    VmMatch {
        share: Some(VmShare {
            vm_cpu_ns,
            total_cpu_ns,
            vm_energy_impact: vm_energy_impact
                .or_else(|| total_energy_impact.map(|_| 0.0))
                .filter(|_| total_energy_impact.is_some() || !matched.is_empty()),
            total_energy_impact,
        }),
        matched: matched
            .iter()
            .map(|t| match coalition_name(t) {
                Some(c) => format!("{c}/{}[{}]", t.name, t.pid.unwrap_or_default()),
                None => format!("{}[{}]", t.name, t.pid.unwrap_or_default()),
            })
            .collect(),
    }
}

/// Converts one parsed document that arrived at `end` into a sample.
///
/// # Errors
/// [`NoSample`] when the document carries no usable energy for a window.
pub fn to_sample(
    doc: &PowermetricsDoc,
    end: MonoNanos,
    selector: &VmSelector,
) -> Result<(PowerSample, VmMatch), NoSample> {
    if doc.is_delta == Some(false) {
        return Err(NoSample::NotDelta);
    }
    let Some(window_ns) = doc.elapsed_ns else {
        return Err(NoSample::NoWindow);
    };
    let Some(domain) = split_domain(doc) else {
        return Err(NoSample::NoEnergyData(describe_missing_energy(doc)));
    };
    let energy = reading_energy(domain, window_ns).ok_or_else(|| {
        NoSample::NoEnergyData(format!("{} energy is not a finite number", domain.name))
    })?;
    let components = components(doc, window_ns)
        .into_iter()
        .map(|c| (c.name, c.energy))
        .collect();
    let vm = vm_share(doc, selector);
    let host_cpu = match (
        doc.all_tasks.as_ref().and_then(|t| t.cputime_ns),
        doc.online_cpus(),
    ) {
        (Some(busy_ns), Some(cpus)) => Some(HostCpu {
            busy_ns,
            capacity_ns: window_ns.saturating_mul(u64::from(cpus)),
        }),
        _ => None,
    };
    Ok((
        PowerSample {
            end,
            window_ns,
            energy,
            components,
            vm_share: vm.share.clone(),
            host_cpu,
            provenance: Provenance::Measured,
        },
        vm,
    ))
}

fn describe_missing_energy(doc: &PowermetricsDoc) -> String {
    let model = doc.hw_model.as_deref().unwrap_or("unknown model");
    if !doc.has_processor {
        if doc.gpu_dict_energy_mj.is_some() {
            return format!(
                "{model}: only GPU energy is present; add the cpu_power sampler \
                 (`--samplers cpu_power,…`)"
            );
        }
        return format!(
            "{model}: the document has no processor section (cpu_power sampler off, or \
             hardware without power estimates)"
        );
    }
    format!(
        "{model}: the processor section has no energy keys (powermetrics inside a virtual \
         machine, or hardware without power estimates)"
    )
}

/// Counters of one document stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Documents framed.
    pub docs: u64,
    /// Samples produced.
    pub samples: u64,
    /// Documents that failed to parse.
    pub rejected: u64,
    /// Incomplete documents dropped at end of stream.
    pub incomplete: u64,
    /// Oversized chunks dropped.
    pub oversized: u64,
    /// Documents with no energy data.
    pub no_energy: u64,
    /// Cumulative (`is_delta = false`) documents skipped.
    pub not_delta: u64,
    /// Stray non-XML lines dropped.
    pub stray_lines: u64,
}

/// The state of one powermetrics byte stream: framing, parsing, and state-change events
/// (no energy data, VM found / lost), shared by the live source and replay.
#[derive(Debug)]
pub struct DocStream {
    framer: DocFramer,
    selector: VmSelector,
    /// `Some(true)` while documents carry energy; events fire on changes only.
    energy_state: Option<bool>,
    /// `Some(true)` while the VM is visible; events fire on changes only.
    vm_state: Option<bool>,
    stats: StreamStats,
    /// Whether the start of the stream was checked for text-format output.
    start_checked: bool,
    /// The stream is `powermetrics -f text` output.
    text_format: bool,
}

/// What one step of a [`DocStream`] produced.
#[derive(Debug, Default)]
pub struct StreamOutput {
    /// Samples, in order.
    pub samples: Vec<PowerSample>,
    /// Events, in order.
    pub events: Vec<PowerEvent>,
    /// Documents that were parsed (with or without a sample).
    pub docs: u64,
}

impl DocStream {
    /// A stream that finds the VM with `selector`.
    #[must_use]
    pub fn new(selector: VmSelector) -> Self {
        Self {
            framer: DocFramer::new(),
            selector,
            energy_state: None,
            vm_state: None,
            stats: StreamStats::default(),
            start_checked: false,
            text_format: false,
        }
    }

    /// Counters so far.
    #[must_use]
    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Whether the stream turned out to be text-format output (refused: use plist).
    #[must_use]
    pub fn is_text_format(&self) -> bool {
        self.text_format
    }

    /// Feeds bytes; every complete document is stamped `end` (its arrival).
    pub fn push(&mut self, bytes: &[u8], end: MonoNanos) -> StreamOutput {
        self.push_bytes(bytes);
        let mut out = StreamOutput::default();
        if self.text_format {
            return out;
        }
        while let Some(frame) = self.framer.next_frame() {
            self.frame(frame, end, &mut out);
        }
        out
    }

    /// The next complete document without parsing it (replay paces on `elapsed_ns`).
    pub fn next_frame(&mut self) -> Option<Frame> {
        self.framer.next_frame()
    }

    /// Feeds bytes without taking frames (see [`DocStream::next_frame`]).
    ///
    /// The first line of the stream is checked for text-format output
    /// ([`DocStream::is_text_format`]); such a stream is refused, not parsed.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        if self.text_format {
            return;
        }
        self.framer.push(bytes);
        if !self.start_checked {
            let head = self.framer.head();
            let trimmed = head.trim_ascii_start();
            if trimmed.first() == Some(&b'<') {
                self.start_checked = true;
            } else if trimmed.contains(&b'\n') {
                self.start_checked = true;
                if trimmed.starts_with(b"Machine model:") || trimmed.starts_with(b"*** Sampled") {
                    self.text_format = true;
                    tracing::error!("Powermetrics output is text, not plist; refusing it.");
                }
            }
        }
    }

    /// End of stream: a complete last document is processed, an incomplete one dropped.
    pub fn finish(&mut self, end: MonoNanos) -> StreamOutput {
        let mut out = StreamOutput::default();
        if self.text_format {
            return out;
        }
        // Leftover text that is not the start of a document (the child printed a message such
        // as "powermetrics must be invoked as the superuser") is a warning, not a truncation.
        let head = self.framer.head().trim_ascii();
        if !head.is_empty() && head.first() != Some(&b'<') && !head.contains(&b'<') {
            for line in String::from_utf8_lossy(head).lines().take(5) {
                let line = line.trim();
                if !line.is_empty() {
                    self.stats.stray_lines += 1;
                    tracing::warn!(line = %line, "Powermetrics printed text instead of a document.");
                    out.events.push(PowerEvent::SourceWarning {
                        message: line.to_owned(),
                    });
                }
            }
            let _dropped = self.framer.finish();
            return out;
        }
        if let Some(frame) = self.framer.finish() {
            self.frame(frame, end, &mut out);
        }
        out
    }

    /// End of stream for callers that take frames themselves: the last document if complete,
    /// else the drop report.
    pub fn finish_frame(&mut self) -> Option<Frame> {
        if self.text_format {
            return None;
        }
        self.framer.finish()
    }

    /// Processes one frame.
    pub fn frame(&mut self, frame: Frame, end: MonoNanos, out: &mut StreamOutput) {
        match frame {
            Frame::Doc(doc) => self.document(&doc, end, out),
            Frame::Dropped(Dropped::Incomplete { bytes }) => {
                self.stats.incomplete += 1;
                tracing::warn!(
                    bytes,
                    "Incomplete powermetrics document dropped at end of stream."
                );
                out.events.push(PowerEvent::IncompleteDocumentDropped {
                    bytes: u64::try_from(bytes).unwrap_or(u64::MAX),
                });
            }
            Frame::Dropped(Dropped::Oversized { bytes }) => {
                self.stats.oversized += 1;
                tracing::warn!(
                    bytes,
                    "Oversized powermetrics output without a NUL dropped."
                );
                out.events.push(PowerEvent::DocumentRejected {
                    reason: format!("{bytes} bytes without a document separator"),
                });
            }
        }
    }

    fn document(&mut self, bytes: &[u8], end: MonoNanos, out: &mut StreamOutput) {
        if let Some(doc) = self.parse(bytes, out) {
            self.sample(&doc, end, out);
        }
    }

    /// Parses one document, counting and reporting rejections and stray lines.
    pub fn parse(&mut self, bytes: &[u8], out: &mut StreamOutput) -> Option<PowermetricsDoc> {
        self.stats.docs += 1;
        out.docs += 1;
        let doc = match parse_document(bytes) {
            Ok(doc) => doc,
            Err(err) => {
                self.stats.rejected += 1;
                tracing::warn!(error = %err, bytes = bytes.len(), "Powermetrics document rejected.");
                out.events.push(PowerEvent::DocumentRejected {
                    reason: err.to_string(),
                });
                return None;
            }
        };
        for line in &doc.stray_lines {
            self.stats.stray_lines += 1;
            tracing::warn!(line = %line, "Non-XML line in powermetrics output dropped.");
            out.events.push(PowerEvent::SourceWarning {
                message: line.clone(),
            });
        }
        Some(doc)
    }

    /// Turns a parsed document stamped `end` into a sample, or a state-change event.
    pub fn sample(&mut self, doc: &PowermetricsDoc, end: MonoNanos, out: &mut StreamOutput) {
        match to_sample(doc, end, &self.selector) {
            Ok((sample, vm)) => {
                if self.energy_state == Some(false) {
                    tracing::info!("Powermetrics energy data resumed.");
                    out.events.push(PowerEvent::EnergyDataResumed);
                }
                self.energy_state = Some(true);
                self.note_vm(&vm, out);
                self.stats.samples += 1;
                out.samples.push(sample);
            }
            Err(NoSample::NotDelta) => {
                self.stats.not_delta += 1;
                tracing::debug!("Cumulative powermetrics document skipped.");
            }
            Err(NoSample::NoWindow) => {
                self.stats.rejected += 1;
                out.events.push(PowerEvent::DocumentRejected {
                    reason: NoSample::NoWindow.to_string(),
                });
            }
            Err(NoSample::NoEnergyData(reason)) => {
                self.stats.no_energy += 1;
                if self.energy_state != Some(false) {
                    tracing::error!(reason = %reason, "Powermetrics reports no energy data.");
                    out.events.push(PowerEvent::NoEnergyData { reason });
                }
                self.energy_state = Some(false);
            }
        }
    }

    fn note_vm(&mut self, vm: &VmMatch, out: &mut StreamOutput) {
        if vm.share.is_none() {
            return;
        }
        let found = !vm.matched.is_empty();
        if self.vm_state == Some(found) {
            return;
        }
        self.vm_state = Some(found);
        if found {
            let matched = vm.matched.join(", ");
            tracing::info!(matched = %matched, "VM process found in powermetrics tasks.");
            out.events.push(PowerEvent::VmFound { matched });
        } else {
            let selector = self.selector.to_string();
            tracing::warn!(selector = %selector, "VM process not found in powermetrics tasks; its CPU counts as zero.");
            out.events.push(PowerEvent::VmNotFound { selector });
        }
    }
}

/// Parses a whole capture in memory: every document's outcome, for tests and tools.
///
/// # Errors
/// [`PlistError::TextFormat`] when the capture is text output.
pub fn parse_capture(bytes: &[u8]) -> Result<Vec<Result<PowermetricsDoc, PlistError>>, PlistError> {
    if parse::looks_like_text_format(bytes) {
        return Err(PlistError::TextFormat);
    }
    Ok(frame::split_capture(bytes)
        .into_iter()
        .map(|frame| match frame {
            Frame::Doc(doc) => parse_document(&doc),
            Frame::Dropped(_) => Err(PlistError::Truncated),
        })
        .collect())
}
