//! The host side of the engine: power readings laid end to end on the host time line, and the
//! energy and CPU shares of one window integrated from them (DESIGN.md §7.1, "Power gaps").
//!
//! Each reading covers `[end − window_ns, end]`; its energy and counters are spread uniformly
//! over that span and rounded down cumulatively, so the amounts of adjacent windows add up to
//! the reading exactly. Energy is never invented for time no reading covers.

use std::collections::VecDeque;

use protocol::MicroJoules;

use crate::journal::{PowerSample, Provenance};
use crate::pipeline::Quality;
use crate::pipeline::apportion::Share;

/// Longest power reading accepted (1 h; powermetrics and RAPL readings last about a second).
/// Longer ones are rejected (`Quality::rejected_power`) rather than smeared over hours.
const MAX_POWER_WINDOW_NS: u64 = 3_600 * 1_000_000_000;

/// One power reading, possibly clipped so that it does not overlap the previous one.
#[derive(Clone, Debug)]
struct Segment {
    /// Host monotonic ns.
    start: u64,
    /// Host monotonic ns.
    end: u64,
    energy: MicroJoules,
    /// CPU ns of the VM process over CPU ns of all host tasks.
    vm_cpu: Option<Share>,
    /// Energy impact of the VM task over that of all tasks, in integer millionths.
    impact: Option<Share>,
    /// Host busy CPU ns over host CPU capacity ns.
    host: Option<Share>,
    estimated: bool,
}

impl Segment {
    fn of(p: &PowerSample, start: u64) -> Self {
        Self {
            start,
            end: p.end.0,
            energy: p.energy,
            vm_cpu: p.vm_share.as_ref().map(|v| Share {
                num: v.vm_cpu_ns,
                den: v.total_cpu_ns,
            }),
            impact: p.vm_share.as_ref().and_then(|v| {
                match (v.vm_energy_impact, v.total_energy_impact) {
                    (Some(a), Some(b)) => Some(Share {
                        num: impact_units(a),
                        den: impact_units(b),
                    }),
                    _ => None,
                }
            }),
            host: p.host_cpu.map(|h| Share {
                num: h.busy_ns,
                den: h.capacity_ns,
            }),
            estimated: p.provenance == Provenance::Estimated,
        }
    }

    /// `v` (an amount over the whole segment) prorated to `[start, x]`, rounded down, so that
    /// amounts over adjacent intervals add up exactly.
    fn upto(&self, v: u64, x: u64) -> u64 {
        let x = x.clamp(self.start, self.end) - self.start;
        protocol::units::scale(v, x, self.end - self.start)
    }

    /// `v` prorated to `[a, b]`.
    fn part(&self, v: u64, a: u64, b: u64) -> u64 {
        self.upto(v, b) - self.upto(v, a)
    }

    /// The segment's energy prorated to `[a, b]`.
    fn energy_part(&self, a: u64, b: u64) -> MicroJoules {
        let upto = |x: u64| {
            let x = x.clamp(self.start, self.end) - self.start;
            self.energy.prorate(x, self.end - self.start)
        };
        upto(b).saturating_sub(upto(a))
    }

    /// Both sides of a share prorated to `[a, b]`.
    fn share_part(&self, s: Share, a: u64, b: u64) -> Share {
        Share {
            num: self.part(s.num, a, b),
            den: self.part(s.den, a, b),
        }
    }

    /// Keep only `[from, end]` (the part after what earlier readings already cover).
    fn clip_from(&mut self, from: u64) {
        let shape = self.clone();
        let rest = |v: u64| v - shape.upto(v, from);
        let rest_share = |s: Share| Share {
            num: rest(s.num),
            den: rest(s.den),
        };
        self.energy = self
            .energy
            .saturating_sub(self.energy_part(self.start, from));
        self.vm_cpu = self.vm_cpu.map(rest_share);
        self.impact = self.impact.map(rest_share);
        self.host = self.host.map(rest_share);
        self.start = from;
    }
}

/// Energy impact is a float; keep it as integer millionths so shares stay integer.
fn impact_units(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        // Saturating float → int conversion is the intent (display-grade input).
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let u = (v * 1e6).round() as u64;
        u
    } else {
        0
    }
}

/// What the power readings say about one window.
#[derive(Clone, Copy, Debug)]
pub(super) struct HostWindow {
    /// Host energy of the split domain in the window.
    pub energy: MicroJoules,
    /// Nanoseconds of the window covered by readings.
    pub covered_ns: u64,
    /// VM process CPU against all host tasks, when the source sees processes.
    pub vm_cpu: Option<Share>,
    /// VM energy impact against all tasks (macOS).
    pub impact: Option<Share>,
    /// Host busy CPU against capacity.
    pub host: Option<Share>,
    /// Some reading in the window came from a model, not a sensor.
    pub estimated: bool,
}

/// The readings not yet integrated into a closed window, in time order.
#[derive(Debug, Default)]
pub(super) struct PowerTimeline {
    segments: VecDeque<Segment>,
    /// End of the last reading or gap seen (host monotonic ns); 0 before any.
    end: u64,
}

impl PowerTimeline {
    /// Host time up to which power is known (readings and recorded gaps).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// A recorded gap: nothing is known up to `to`, and nothing will be.
    pub fn gap_until(&mut self, to: u64) {
        self.end = self.end.max(to);
    }

    /// Forget everything (a new host time line).
    pub fn clear(&mut self) {
        self.segments.clear();
        self.end = 0;
    }

    /// Lay a reading on the time line. Overlaps with what is covered already are clipped to
    /// the new part (only once windows have started: before that there is nothing to protect).
    /// Returns the start of the added segment, `None` when nothing was added.
    pub fn push(
        &mut self,
        p: &PowerSample,
        windows_started: bool,
        quality: &mut Quality,
    ) -> Option<u64> {
        let end = p.end.0;
        if p.window_ns > MAX_POWER_WINDOW_NS {
            quality.rejected_power += 1;
            return None;
        }
        let start = end.saturating_sub(p.window_ns);
        if start >= end {
            return None;
        }
        let mut seg = Segment::of(p, start);
        if seg.estimated {
            quality.estimated_source = true;
        }
        let prev_end = self.segments.back().map_or(self.end, |s| s.end);
        if prev_end > start && windows_started {
            quality.overlapping_power += 1;
            if end <= prev_end {
                return None;
            }
            seg.clip_from(prev_end);
        }
        self.end = self.end.max(end);
        let added = seg.start;
        self.segments.push_back(seg);
        Some(added)
    }

    /// Where data starts again at or after `a` (`u64::MAX` when no reading lies ahead).
    pub fn next_data_from(&self, a: u64) -> u64 {
        self.segments
            .iter()
            .find(|s| s.end > a)
            .map_or(u64::MAX, |s| s.start.max(a))
    }

    /// Integrate the readings over `[a, b]` and drop those that end by `b`.
    pub fn close_window(&mut self, a: u64, b: u64) -> HostWindow {
        let mut w = HostWindow {
            energy: MicroJoules::ZERO,
            covered_ns: 0,
            vm_cpu: None,
            impact: None,
            host: None,
            estimated: false,
        };
        for seg in self.segments.iter().filter(|s| s.start < b && s.end > a) {
            w.energy += seg.energy_part(a, b);
            w.covered_ns += seg.end.min(b) - seg.start.max(a);
            let add = |acc: &mut Option<Share>, v: Option<Share>| {
                if let Some(v) = v {
                    let part = seg.share_part(v, a, b);
                    let sum = acc.get_or_insert(Share { num: 0, den: 0 });
                    sum.num = sum.num.saturating_add(part.num);
                    sum.den = sum.den.saturating_add(part.den);
                }
            };
            add(&mut w.vm_cpu, seg.vm_cpu);
            add(&mut w.impact, seg.impact);
            add(&mut w.host, seg.host);
            w.estimated |= seg.estimated;
        }
        while self.segments.front().is_some_and(|s| s.end <= b) {
            self.segments.pop_front();
        }
        w
    }
}
