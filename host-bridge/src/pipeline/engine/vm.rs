//! The guest side of the engine: one VM boot's clock estimate and continuous counters, the
//! counter values at window edges, and what the VM contributes to a closing window
//! (DESIGN.md §7.1 "Interpolation", "Cursor", "Pauses and sleep"; §7.2).

use std::collections::{BTreeMap, HashMap, VecDeque};

use protocol::{CpuMicros, Sample};

use super::{MAX_EDGES_PER_SAMPLE, duration_ns, ratio_ppm};
use crate::pipeline::PipelineConfig;
use crate::pipeline::align::{self, OffsetEstimator};

/// Counters of one VM at one host instant (continuous, reset-corrected).
#[derive(Clone, Debug)]
struct Snap {
    /// Host monotonic ns.
    t: u64,
    busy: CpuMicros,
    usage: Vec<CpuMicros>,
}

/// The VM's last sample.
#[derive(Clone, Copy, Debug)]
pub(super) struct LastPoint {
    /// Mapped host time.
    pub t: u64,
    /// Guest monotonic time.
    pub g: u64,
    /// Arrival (host).
    pub at: u64,
}

/// Where the engine is when a sample arrives.
#[derive(Clone, Copy, Debug)]
pub(super) struct Grid {
    /// Start of the first window not closed yet (0 before windows start).
    pub first_open: u64,
    /// Window length, ns.
    pub window_ns: u64,
    /// Pause tolerance, ns.
    pub tolerance_ns: u64,
}

/// What a sample did, for the engine's ledger and quality.
#[derive(Debug, Default)]
pub(super) struct Ingested {
    /// Mapped host time of the sample.
    pub t: u64,
    /// Error bound of the clock offset used.
    pub offset_error_ns: u64,
    /// Containers whose counter went backwards (restarted).
    pub restarted: Vec<String>,
}

/// One VM's part of a closing window.
#[derive(Debug)]
pub(super) struct VmPart {
    /// Δ guest busy time in the window.
    pub busy: CpuMicros,
    /// Δ `usage_usec` per container slot, µs (the apportion kernel's input).
    pub usage_us: Vec<u64>,
    /// Reservation weight per slot (CPU limit in millicores, else the VM's capacity; 0 when
    /// the container was not seen in the window).
    pub reserve: Vec<u64>,
    /// Share of the window the VM's samples cover, ppm.
    pub coverage_ppm: u32,
    /// Nanoseconds of the window the VM's samples cover.
    pub span_ns: u64,
    /// The VM did not run normally in the window: its share cannot be split.
    pub degraded: bool,
    /// Error bound of the clock offset, ns.
    pub offset_error_ns: u64,
}

/// State of one VM boot.
#[derive(Debug)]
pub(super) struct VmState {
    pub name: String,
    pub cpus: u32,
    pub clock: OffsetEstimator,
    /// Recent Pongs (t0, t1, t2), completed into round trips by a later Ping's t3.
    pub pongs: VecDeque<protocol::Pong>,
    /// Container id per slot (slots are never reused).
    pub ids: Vec<String>,
    index: HashMap<String, usize>,
    /// Slots in the order of the previous sample (fast path for the lookup).
    order: Vec<usize>,
    /// Last raw `usage_usec` per slot.
    raw_last: Vec<Option<CpuMicros>>,
    /// Continuous (reset-corrected) usage per slot.
    acc: Vec<CpuMicros>,
    /// Host time each slot was last seen.
    last_seen: Vec<u64>,
    /// CPU limit per slot, millicores.
    limit: Vec<Option<u32>>,
    busy_raw: Option<CpuMicros>,
    total_raw: Option<CpuMicros>,
    busy_acc: CpuMicros,
    pub last: Option<LastPoint>,
    /// Counters already attributed.
    cursor: Option<Snap>,
    /// Counter values at window edges crossed by samples, by edge.
    edges: BTreeMap<u64, Snap>,
    /// Host intervals in which the VM did not run normally.
    degraded: Vec<(u64, u64)>,
}

impl VmState {
    pub fn new(name: String, cpus: u32, cfg: &PipelineConfig) -> Self {
        Self {
            name,
            cpus,
            clock: OffsetEstimator::new(
                duration_ns(cfg.offset_horizon),
                duration_ns(cfg.pause_tolerance),
                duration_ns(cfg.one_way_error),
            ),
            pongs: VecDeque::new(),
            ids: Vec::new(),
            index: HashMap::new(),
            order: Vec::new(),
            raw_last: Vec::new(),
            acc: Vec::new(),
            last_seen: Vec::new(),
            limit: Vec::new(),
            busy_raw: None,
            total_raw: None,
            busy_acc: CpuMicros::ZERO,
            last: None,
            cursor: None,
            edges: BTreeMap::new(),
            degraded: Vec::new(),
        }
    }

    /// The same VM on a new host time line: counters restart, container slots are kept so ids
    /// map to the same rows.
    pub fn restarted(&mut self, cfg: &PipelineConfig) {
        let mut fresh = Self::new(std::mem::take(&mut self.name), self.cpus, cfg);
        let slots = self.ids.len();
        fresh.ids = std::mem::take(&mut self.ids);
        fresh.index = std::mem::take(&mut self.index);
        fresh.raw_last = vec![None; slots];
        fresh.acc = vec![CpuMicros::ZERO; slots];
        fresh.last_seen = vec![0; slots];
        fresh.limit = vec![None; slots];
        *self = fresh;
    }

    fn slot(&mut self, pos: usize, id: &str) -> usize {
        if let Some(&s) = self.order.get(pos)
            && self.ids[s] == id
        {
            return s;
        }
        if let Some(&s) = self.index.get(id) {
            return s;
        }
        let s = self.ids.len();
        self.ids.push(id.to_owned());
        self.index.insert(id.to_owned(), s);
        self.raw_last.push(None);
        self.acc.push(CpuMicros::ZERO);
        self.last_seen.push(0);
        self.limit.push(None);
        s
    }

    fn snap_now(&self, t: u64) -> Snap {
        Snap {
            t,
            busy: self.busy_acc,
            usage: self.acc.clone(),
        }
    }

    /// Whether counters arrived after what was attributed so far (for skipping empty runs).
    pub fn progress_since_cursor(&self) -> Option<u64> {
        match (&self.cursor, self.last) {
            (Some(cursor), Some(last)) if last.t > cursor.t => Some(cursor.t),
            _ => None,
        }
    }

    /// Map the sample's time to the host, fold its counters into the continuous ones, and
    /// store the counter values at every open window edge it crosses. `deltas` is scratch
    /// space, reused across calls.
    pub fn ingest(
        &mut self,
        at: u64,
        s: &Sample,
        grid: Grid,
        deltas: &mut Vec<(usize, CpuMicros)>,
    ) -> Ingested {
        let g = s.clock.mono_ns.0;
        deltas.clear();

        // Clock: samples give one-way bounds too; they only refine (a late, buffered sample
        // must not be taken for a pause).
        let value = i128::from(at) - i128::from(g);
        match self.clock.estimate() {
            None => {
                self.clock.observe_one_way(g, at);
            }
            Some(o) if value < o.offset_ns + i128::from(grid.tolerance_ns) => {
                self.clock.observe_one_way(g, at);
            }
            Some(_) => {}
        }
        let offset = self.clock.estimate().expect("observed above or earlier");
        let not_before = self.last.map_or(0, |l| l.t);
        let t = align::to_host(g, offset, not_before, at.max(not_before));

        // Counters, reset-aware (Prometheus semantics).
        let first = self.last.is_none();
        let busy_raw = s.vm.busy();
        let total_raw = s.vm.accounted();
        let d_busy = self
            .busy_raw
            .map_or(CpuMicros::ZERO, |p| busy_raw.reset_aware_delta(p));
        let d_total = self
            .total_raw
            .map_or(CpuMicros::ZERO, |p| total_raw.reset_aware_delta(p));
        self.busy_raw = Some(busy_raw);
        self.total_raw = Some(total_raw);
        let mut restarted = Vec::new();
        self.order.clear();
        for (pos, c) in s.containers.iter().enumerate() {
            let slot = self.slot(pos, &c.id);
            self.order.push(slot);
            let raw = c.cpu.usage;
            let d = match self.raw_last[slot] {
                Some(p) => match raw.checked_delta(p) {
                    Some(d) => d,
                    None => {
                        restarted.push(self.ids[slot].clone());
                        raw
                    }
                },
                None if first => CpuMicros::ZERO,
                None => raw,
            };
            self.raw_last[slot] = Some(raw);
            self.last_seen[slot] = t;
            self.limit[slot] = c.cpu_limit_millicores;
            deltas.push((slot, d));
        }

        let mut jumped = false;
        if let Some(last) = self.last {
            let g_el = g.saturating_sub(last.g);
            let h_el = t - last.t;
            if align::is_discontinuous(g_el, h_el, d_total.0, self.cpus, grid.tolerance_ns) {
                self.degraded.push((last.t, t));
            }
            jumped = t.saturating_sub(last.t.max(grid.first_open)) / grid.window_ns
                > MAX_EDGES_PER_SAMPLE;
        }
        if jumped {
            // Too far to interpolate: drop the counters of the gap, restart the cursor here.
            self.add(deltas, d_busy);
            self.edges.clear();
            self.cursor = Some(self.snap_now(t));
        } else {
            if let Some(last) = self.last {
                self.store_edges(last.t, t, grid, deltas, d_busy);
            }
            self.add(deltas, d_busy);
        }
        self.last = Some(LastPoint { t, g, at });
        if self.cursor.is_none() {
            self.cursor = Some(self.snap_now(t));
        }
        Ingested {
            t,
            offset_error_ns: offset.error_ns,
            restarted,
        }
    }

    fn add(&mut self, deltas: &[(usize, CpuMicros)], d_busy: CpuMicros) {
        self.busy_acc += d_busy;
        for &(slot, d) in deltas {
            self.acc[slot] += d;
        }
    }

    /// Counter values at every open window edge crossed by `(from, to]`, interpolated
    /// linearly between the two samples and rounded down.
    fn store_edges(
        &mut self,
        from: u64,
        to: u64,
        grid: Grid,
        deltas: &[(usize, CpuMicros)],
        d_busy: CpuMicros,
    ) {
        let window_ns = grid.window_ns;
        let lo = from.max(grid.first_open);
        let at_edge = |before: CpuMicros, d: CpuMicros, e: u64| {
            CpuMicros(align::interpolate(from, before.0, to, (before + d).0, e))
        };
        let mut next_edge = (lo / window_ns + 1).checked_mul(window_ns);
        while let Some(e) = next_edge.filter(|&e| e <= to) {
            let mut usage = self.acc.clone();
            for &(slot, d) in deltas {
                usage[slot] = at_edge(self.acc[slot], d, e);
            }
            let busy = at_edge(self.busy_acc, d_busy, e);
            self.edges.insert(e, Snap { t: e, busy, usage });
            next_edge = e.checked_add(window_ns);
        }
    }

    /// The VM's counters over the window `[a, b]`, advancing its cursor to `b` (or to its last
    /// sample when none has crossed `b` yet). `None` when the VM has nothing in or before the
    /// window.
    pub fn close_window(&mut self, a: u64, b: u64, window_ns: u64) -> Option<VmPart> {
        let start = self.cursor.take()?;
        if start.t >= b {
            self.cursor = Some(start);
            return None;
        }
        let end = match self.edges.remove(&b) {
            Some(e) => e,
            None => match self.last {
                Some(l) if l.t > start.t => self.snap_now(l.t),
                _ => start.clone(),
            },
        };
        self.edges = self.edges.split_off(&(b + 1));
        let busy = end.busy.saturating_sub(start.busy);
        let usage_us: Vec<u64> = end
            .usage
            .iter()
            .enumerate()
            .map(|(s, &v)| {
                v.saturating_sub(start.usage.get(s).copied().unwrap_or(CpuMicros::ZERO))
                    .0
            })
            .collect();
        let capacity = u64::from(self.cpus.max(1)) * 1000;
        let reserve = (0..usage_us.len())
            .map(|s| {
                if self.last_seen[s] > a {
                    self.limit[s].map_or(capacity, u64::from)
                } else {
                    0
                }
            })
            .collect();
        let span_ns = end.t.min(b).saturating_sub(start.t.max(a));
        // A live VM without a sample in or after the window (paused, sleeping, or gone)
        // cannot be split either.
        let degraded = span_ns == 0 || self.degraded.iter().any(|&(x, y)| x < b && y > a);
        self.degraded.retain(|&(_, y)| y > b);
        self.cursor = Some(end);
        Some(VmPart {
            busy,
            usage_us,
            reserve,
            coverage_ppm: ratio_ppm(u128::from(span_ns), u128::from(window_ns)),
            span_ns,
            degraded,
            offset_error_ns: self.clock.estimate().map_or(0, |o| o.error_ns),
        })
    }
}
