//! The stateful pipeline: feeds [`RecordEntry`]s in, closes windows, keeps the ledger.
//!
//! State per *stream* (one agent process: `(boot_id, instance_id)` from its Hello): the last
//! sequence number (resent samples are ignored, gaps counted). State per *VM boot* (`boot_id`):
//! the clock offset estimator (the guest clock is per boot), the continuous counters (agent
//! restarts continue them; Prometheus reset semantics when a counter goes backwards), and the
//! counter values at window edges. Ledger rows are keyed by VM name, so a rebooted VM continues
//! its rows.
//!
//! Windows are `[k·T, (k+1)·T]` on the host monotonic clock. Window k closes when power covers
//! it and every live VM has a sample past its end, or, at the latest, `close_lag` after its end
//! (by the newest timestamp seen). Each VM contributes the counter delta between its cursor
//! (what was attributed so far) and the window end, so counters are never lost or counted twice
//! whatever the closing order.

use std::collections::{BTreeMap, HashMap, VecDeque};

use protocol::{CpuMicros, Hello, Message, MicroJoules, MonoNanos, ProcStat, Sample};

use super::align::{self, Observed, OffsetEstimator};
use super::apportion::{self, Share, VmInput, WindowInput};
use super::{
    Attribution, ConfigEcho, ContainerWindow, IdleModel, Ledger, PipelineConfig, PipelineError,
    Quality, VmShareBasis, VmWindow, WindowFlags, WindowReport,
};
use crate::journal::{PowerSample, PowerSourceKind, Provenance, RecordEntry};

const NS_PER_MS: u64 = 1_000_000;
const PPM: u64 = 1_000_000;
/// Most window edges one sample may cross (≈ 28 h of 10 s windows). A sample further away
/// from the previous one cannot be placed in time: the VM restarts its cursor there and the
/// interval is degraded (protects against corrupt timestamps as much as against real gaps).
const MAX_EDGES_PER_SAMPLE: u64 = 10_000;
/// Longest power reading accepted (1 h; powermetrics and RAPL readings last about a second).
/// Longer ones are rejected (`Quality::rejected_power`) rather than smeared over hours.
const MAX_POWER_WINDOW_NS: u64 = 3_600 * 1_000_000_000;
/// Runs of empty windows (no power, no guest progress) longer than this are skipped instead of
/// reported one by one (`Quality::skipped_empty_windows`).
const MAX_EMPTY_WINDOWS: u64 = 10_000;

/// Counters of one VM at one host instant (continuous, reset-corrected).
#[derive(Clone, Debug)]
struct Snap {
    t: u64,
    busy: u64,
    usage: Vec<u64>,
}

#[derive(Clone, Copy, Debug)]
struct LastPoint {
    /// Mapped host time.
    t: u64,
    /// Guest monotonic time.
    g: u64,
    /// Arrival (host).
    at: u64,
}

#[derive(Debug)]
struct VmState {
    name: String,
    cpus: u32,
    clock: OffsetEstimator,
    /// Recent Pongs (t0, t1, t2), completed into round trips by a later Ping's t3.
    pongs: VecDeque<protocol::Pong>,
    ids: Vec<String>,
    index: HashMap<String, usize>,
    /// Slots in the order of the previous sample (fast path for the lookup).
    order: Vec<usize>,
    raw_last: Vec<Option<u64>>,
    acc: Vec<u64>,
    last_seen: Vec<u64>,
    limit: Vec<Option<u32>>,
    busy_raw: Option<u64>,
    total_raw: Option<u64>,
    busy_acc: u64,
    last: Option<LastPoint>,
    cursor: Option<Snap>,
    edges: BTreeMap<u64, Snap>,
    /// Host intervals in which the VM did not run normally.
    degraded: Vec<(u64, u64)>,
}

impl VmState {
    fn new(name: String, cpus: u32, cfg: &PipelineConfig) -> Self {
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
            busy_acc: 0,
            last: None,
            cursor: None,
            edges: BTreeMap::new(),
            degraded: Vec::new(),
        }
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
        self.acc.push(0);
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
}

#[derive(Debug)]
struct Stream {
    vm: usize,
    last_seq: Option<u64>,
}

/// One power reading, possibly clipped to not overlap the previous one.
#[derive(Clone, Debug)]
struct Segment {
    start: u64,
    end: u64,
    energy: u64,
    vm_cpu: Option<(u64, u64)>,
    impact: Option<(u64, u64)>,
    host: Option<(u64, u64)>,
    estimated: bool,
}

/// `v` prorated to `[start, x]` of a segment, rounded down (so that amounts over adjacent
/// intervals add up exactly).
fn cumulative(v: u64, seg: &Segment, x: u64) -> u64 {
    let len = seg.end - seg.start;
    let x = x.clamp(seg.start, seg.end) - seg.start;
    u64::try_from(u128::from(v) * u128::from(x) / u128::from(len)).expect("≤ v")
}

fn prorate(v: u64, seg: &Segment, a: u64, b: u64) -> u64 {
    cumulative(v, seg, b) - cumulative(v, seg, a)
}

fn duration_ns(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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

/// Every `/proc/stat` field that accounts time (guest and guest_nice are inside user/nice).
fn accounted(p: &ProcStat) -> u64 {
    [
        p.user, p.nice, p.system, p.idle, p.iowait, p.irq, p.softirq, p.steal,
    ]
    .iter()
    .fold(0u64, |acc, v| acc.saturating_add(v.0))
}

/// Guest busy time: user + nice + system + irq + softirq (no idle, iowait, steal; guest and
/// guest_nice are already inside user and nice). Same as `ProcStat::busy`, saturating, since
/// counters from a recording are untrusted input.
fn busy(p: &ProcStat) -> u64 {
    [p.user, p.nice, p.system, p.irq, p.softirq]
        .iter()
        .fold(0u64, |acc, v| acc.saturating_add(v.0))
}

/// The attribution engine. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    cfg: PipelineConfig,
    window_ns: u64,
    conns: HashMap<u64, usize>,
    streams: Vec<Stream>,
    stream_index: HashMap<(String, u64), usize>,
    vms: Vec<VmState>,
    vm_index: HashMap<String, usize>,
    segments: VecDeque<Segment>,
    power_end: u64,
    next_window: Option<u64>,
    now: u64,
    ledger: Ledger,
    quality: Quality,
    covered_ns: u128,
    window_total_ns: u128,
    source_kind: Option<PowerSourceKind>,
    source_provenance: Option<Provenance>,
    scratch: Vec<(usize, u64)>,
}

impl Engine {
    /// A new engine.
    ///
    /// # Errors
    /// [`PipelineError::InvalidConfig`] when the window is shorter than 1 ms or a tolerance is
    /// zero.
    pub fn new(cfg: PipelineConfig) -> Result<Self, PipelineError> {
        let window_ns = duration_ns(cfg.window);
        if window_ns < NS_PER_MS {
            return Err(PipelineError::InvalidConfig {
                key: "window",
                reason: "must be at least 1 ms (10 s or more recommended)",
            });
        }
        if cfg.pause_tolerance.is_zero() {
            return Err(PipelineError::InvalidConfig {
                key: "pause_tolerance",
                reason: "must be positive",
            });
        }
        if let IdleModel::EstimatedFraction { permille } = cfg.idle
            && permille > 1000
        {
            return Err(PipelineError::InvalidConfig {
                key: "idle",
                reason: "the idle fraction is at most 1000 ‰",
            });
        }
        Ok(Self {
            cfg,
            window_ns,
            conns: HashMap::new(),
            streams: Vec::new(),
            stream_index: HashMap::new(),
            vms: Vec::new(),
            vm_index: HashMap::new(),
            segments: VecDeque::new(),
            power_end: 0,
            next_window: None,
            now: 0,
            ledger: Ledger::default(),
            quality: Quality::default(),
            covered_ns: 0,
            window_total_ns: 0,
            source_kind: None,
            source_provenance: None,
            scratch: Vec::new(),
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// Cumulative totals of every closed window.
    #[must_use]
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Quality so far.
    #[must_use]
    pub fn quality(&self) -> &Quality {
        &self.quality
    }

    /// Feed one entry; returns the windows it allowed to close (in order).
    pub fn push(&mut self, entry: &RecordEntry) -> Vec<WindowReport> {
        match entry {
            RecordEntry::Session(s) => {
                self.conns.clear();
                if s.mono.0 < self.now {
                    // The host clock restarted (host reboot): close everything on the old time
                    // line and start a new one. Ledger and stream de-duplication survive.
                    let out = self.finish();
                    self.reset_timeline();
                    self.now = s.mono.0;
                    return out;
                }
                self.now = self.now.max(s.mono.0);
            }
            RecordEntry::Guest { conn, at, message } => {
                self.now = self.now.max(at.0);
                self.guest(*conn, at.0, message);
            }
            RecordEntry::Power(p) => self.power(p),
            RecordEntry::PowerSource {
                kind, provenance, ..
            } => {
                self.source_kind = Some(*kind);
                self.source_provenance = Some(*provenance);
                if *provenance == Provenance::Estimated {
                    self.quality.estimated_source = true;
                }
            }
            RecordEntry::PowerGap { to, .. } => {
                self.power_end = self.power_end.max(to.0);
                self.now = self.now.max(to.0);
            }
        }
        self.close(false)
    }

    /// Close every window up to the last power reading (the last one may be partial), or up to
    /// the last guest sample when there was no power at all. Call at the end of a recording or
    /// on shutdown.
    pub fn finish(&mut self) -> Vec<WindowReport> {
        self.close(true)
    }

    /// The results so far, with the given closed windows.
    #[must_use]
    pub fn into_attribution(mut self, windows: Vec<WindowReport>) -> Attribution {
        self.quality.power_coverage_ppm = ratio_ppm(self.covered_ns, self.window_total_ns);
        Attribution {
            windows,
            config: ConfigEcho {
                policy: self.cfg.policy,
                basis: self.cfg.vm_share_basis,
                idle: self.cfg.idle,
                window_ns: self.window_ns,
                source_kind: self.source_kind,
                source_provenance: self.source_provenance,
            },
            ledger: self.ledger,
            quality: self.quality,
        }
    }

    fn reset_timeline(&mut self) {
        for vm in &mut self.vms {
            let fresh = VmState::new(vm.name.clone(), vm.cpus, &self.cfg);
            // Keep the slot table so ids map to the same rows; counters restart.
            let ids = std::mem::take(&mut vm.ids);
            let index = std::mem::take(&mut vm.index);
            *vm = fresh;
            vm.raw_last = vec![None; ids.len()];
            vm.acc = vec![0; ids.len()];
            vm.last_seen = vec![0; ids.len()];
            vm.limit = vec![None; ids.len()];
            vm.ids = ids;
            vm.index = index;
        }
        self.segments.clear();
        self.power_end = 0;
        self.next_window = None;
    }

    fn start_windows_at(&mut self, t: u64) {
        if self.next_window.is_none() {
            self.next_window = Some(t / self.window_ns * self.window_ns);
        }
    }

    fn guest(&mut self, conn: u64, at: u64, message: &Message) {
        if let Message::Hello(h) = message {
            self.hello(conn, h);
            return;
        }
        let Some(&stream) = self.conns.get(&conn) else {
            self.quality.orphan_messages += 1;
            return;
        };
        let vm = self.streams[stream].vm;
        match message {
            Message::Sample(s) => {
                let last = self.streams[stream].last_seq;
                if last.is_some_and(|l| s.seq <= l) {
                    self.quality.duplicate_samples += 1;
                    return;
                }
                if let Some(l) = last {
                    self.quality.seq_gaps = self.quality.seq_gaps.saturating_add(s.seq - l - 1);
                }
                self.streams[stream].last_seq = Some(s.seq);
                self.sample(vm, at, s);
            }
            Message::Containers(c) => {
                let name = self.vms[vm].name.clone();
                for info in &c.entries {
                    self.ledger.set_meta(&name, info);
                }
            }
            Message::Ping(p) => {
                self.probe(vm, p.guest_send.0, at);
                let state = &mut self.vms[vm];
                if let Some(receipt) = p.prev_pong
                    && let Some(pong) = state.pongs.iter().find(|q| q.id == receipt.id)
                {
                    state.clock.observe_round_trip(
                        pong.guest_send.0,
                        pong.host_recv.0,
                        pong.host_send.0,
                        receipt.guest_recv.0,
                    );
                }
            }
            Message::Pong(p) => {
                self.probe(vm, p.guest_send.0, p.host_recv.0);
                /// A Ping per few seconds; a handful of outstanding Pongs is plenty.
                const MAX_PONGS: usize = 8;
                let pongs = &mut self.vms[vm].pongs;
                if pongs.len() == MAX_PONGS {
                    pongs.pop_front();
                }
                pongs.push_back(*p);
            }
            _ => {}
        }
    }

    fn probe(&mut self, vm: usize, guest_send: u64, host_recv: u64) {
        if let Observed::Discontinuity(_) =
            self.vms[vm].clock.observe_one_way(guest_send, host_recv)
        {
            self.quality.clock_jumps += 1;
        }
    }

    fn hello(&mut self, conn: u64, h: &Hello) {
        let key = (h.boot_id.clone(), h.instance_id);
        let vm = match self.vm_index.get(&h.boot_id) {
            Some(&vm) => vm,
            None => {
                let vm = self.vms.len();
                self.vms
                    .push(VmState::new(h.vm_name.clone(), h.cpu_count, &self.cfg));
                self.vm_index.insert(h.boot_id.clone(), vm);
                vm
            }
        };
        self.vms[vm].name.clone_from(&h.vm_name);
        self.vms[vm].cpus = h.cpu_count;
        if u64::from(h.sample_period_ms) * NS_PER_MS > self.window_ns {
            self.quality.window_shorter_than_sample_period = true;
        }
        let stream = match self.stream_index.get(&key) {
            Some(&s) => s,
            None => {
                let s = self.streams.len();
                self.streams.push(Stream { vm, last_seq: None });
                self.stream_index.insert(key, s);
                s
            }
        };
        self.conns.insert(conn, stream);
    }

    fn sample(&mut self, vm_idx: usize, at: u64, s: &Sample) {
        let g = s.clock.mono_ns.0;
        let tolerance = duration_ns(self.cfg.pause_tolerance);
        let first_open = self.next_window.unwrap_or(0);
        let window_ns = self.window_ns;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let vm = &mut self.vms[vm_idx];

        // Clock: samples give one-way bounds too; they only refine (a late, buffered sample
        // must not be taken for a pause).
        let value = i128::from(at) - i128::from(g);
        match vm.clock.estimate() {
            None => {
                vm.clock.observe_one_way(g, at);
            }
            Some(o) if value < o.offset_ns + i128::from(tolerance) => {
                vm.clock.observe_one_way(g, at);
            }
            Some(_) => {}
        }
        let offset = vm.clock.estimate().expect("observed above or earlier");
        self.quality.max_offset_error_ns = self.quality.max_offset_error_ns.max(offset.error_ns);
        let not_before = vm.last.map_or(0, |l| l.t);
        let t = align::to_host(g, offset, not_before, at.max(not_before));

        // Counters, reset-aware (Prometheus semantics).
        let first = vm.last.is_none();
        let busy_raw = busy(&s.vm);
        let total_raw = accounted(&s.vm);
        let d_busy = match vm.busy_raw {
            Some(p) => CpuMicros(busy_raw).reset_aware_delta(CpuMicros(p)).0,
            None => 0,
        };
        let d_total = match vm.total_raw {
            Some(p) => CpuMicros(total_raw).reset_aware_delta(CpuMicros(p)).0,
            None => 0,
        };
        vm.busy_raw = Some(busy_raw);
        vm.total_raw = Some(total_raw);
        let mut resets = Vec::new();
        vm.order.clear();
        for (pos, c) in s.containers.iter().enumerate() {
            let slot = vm.slot(pos, &c.id);
            vm.order.push(slot);
            let raw = c.cpu.usage.0;
            let d = match vm.raw_last[slot] {
                Some(p) if raw >= p => raw - p,
                Some(_) => {
                    resets.push(slot);
                    raw
                }
                None if first => 0,
                None => raw,
            };
            vm.raw_last[slot] = Some(raw);
            vm.last_seen[slot] = t;
            vm.limit[slot] = c.cpu_limit_millicores;
            scratch.push((slot, d));
        }

        let mut jumped = false;
        if let Some(last) = vm.last {
            let g_el = g.saturating_sub(last.g);
            let h_el = t - last.t;
            if align::is_discontinuous(g_el, h_el, d_total, vm.cpus, tolerance) {
                vm.degraded.push((last.t, t));
            }
            jumped = t.saturating_sub(last.t.max(first_open)) / window_ns > MAX_EDGES_PER_SAMPLE;
        }
        if jumped {
            // Too far to interpolate: drop the counters of the gap, restart the cursor here.
            for &(slot, d) in &scratch {
                vm.acc[slot] = vm.acc[slot].saturating_add(d);
            }
            vm.busy_acc = vm.busy_acc.saturating_add(d_busy);
            vm.edges.clear();
            vm.cursor = Some(vm.snap_now(t));
        } else if let Some(last) = vm.last {
            // Counter values at every open window edge crossed by (last.t, t].
            let lo = last.t.max(first_open);
            let mut next_edge = (lo / window_ns + 1).checked_mul(window_ns);
            while let Some(e) = next_edge.filter(|&e| e <= t) {
                let mut usage = vm.acc.clone();
                for &(slot, d) in &scratch {
                    let from = vm.acc[slot];
                    usage[slot] = align::interpolate(last.t, from, t, from.saturating_add(d), e);
                }
                let from = vm.busy_acc;
                let busy = align::interpolate(last.t, from, t, from.saturating_add(d_busy), e);
                vm.edges.insert(e, Snap { t: e, busy, usage });
                next_edge = e.checked_add(window_ns);
            }
        }
        if !jumped {
            vm.busy_acc = vm.busy_acc.saturating_add(d_busy);
            for &(slot, d) in &scratch {
                vm.acc[slot] = vm.acc[slot].saturating_add(d);
            }
        }
        vm.last = Some(LastPoint { t, g, at });
        if vm.cursor.is_none() {
            vm.cursor = Some(vm.snap_now(t));
        }
        if !resets.is_empty() {
            let name = vm.name.clone();
            let ids: Vec<String> = resets.iter().map(|&s| vm.ids[s].clone()).collect();
            for id in ids {
                self.ledger.note_restart(&name, &id);
                self.quality.counter_resets += 1;
            }
        }
        self.scratch = scratch;
        self.start_windows_at(t);
    }

    fn power(&mut self, p: &PowerSample) {
        let end = p.end.0;
        self.now = self.now.max(end);
        if p.window_ns > MAX_POWER_WINDOW_NS {
            self.quality.rejected_power += 1;
            return;
        }
        let start = end.saturating_sub(p.window_ns);
        if start >= end {
            return;
        }
        let mut seg = Segment {
            start,
            end,
            energy: p.energy.0,
            vm_cpu: p.vm_share.as_ref().map(|v| (v.vm_cpu_ns, v.total_cpu_ns)),
            impact: p.vm_share.as_ref().and_then(|v| {
                match (v.vm_energy_impact, v.total_energy_impact) {
                    (Some(a), Some(b)) => Some((impact_units(a), impact_units(b))),
                    _ => None,
                }
            }),
            host: p.host_cpu.map(|h| (h.busy_ns, h.capacity_ns)),
            estimated: p.provenance == Provenance::Estimated,
        };
        if seg.estimated {
            self.quality.estimated_source = true;
        }
        if let Some(prev_end) = self.segments.back().map(|s| s.end).or(Some(self.power_end))
            && prev_end > start
            && self.next_window.is_some()
        {
            // Overlaps what is already covered: keep only the new part (prorated).
            self.quality.overlapping_power += 1;
            if end <= prev_end {
                return;
            }
            let shape = seg.clone();
            let cut = |v: u64| v - cumulative(v, &shape, prev_end);
            seg.energy = cut(seg.energy);
            seg.vm_cpu = seg.vm_cpu.map(|(a, b)| (cut(a), cut(b)));
            seg.impact = seg.impact.map(|(a, b)| (cut(a), cut(b)));
            seg.host = seg.host.map(|(a, b)| (cut(a), cut(b)));
            seg.start = prev_end;
        }
        self.power_end = self.power_end.max(end);
        self.start_windows_at(seg.start);
        self.segments.push_back(seg);
    }

    fn ready(&self, b: u64, finishing: bool) -> bool {
        let lag = duration_ns(self.cfg.close_lag);
        if finishing {
            // Energy exists only up to the last power reading; a guest-only tail (the agent's
            // last sample usually arrives after the last reading) would only add an empty
            // window. Without any power, the guest data decides (CPU totals still count).
            let data_end = if self.power_end > 0 {
                self.power_end
            } else {
                self.vms
                    .iter()
                    .filter_map(|v| v.last.map(|l| l.t))
                    .max()
                    .unwrap_or(0)
            };
            return b - self.window_ns < data_end;
        }
        if self.now >= b.saturating_add(lag) {
            return true;
        }
        self.power_end >= b
            && self.vms.iter().all(|v| match v.last {
                None => true,
                Some(l) => l.t >= b || l.at.saturating_add(lag) < self.now,
            })
    }

    fn close(&mut self, finishing: bool) -> Vec<WindowReport> {
        let mut out = Vec::new();
        while let Some(a) = self.next_window {
            let Some(b) = a.checked_add(self.window_ns) else {
                break;
            };
            if !self.ready(b, finishing) {
                break;
            }
            if let Some(skip_to) = self.empty_run_end(a) {
                let skipped = (skip_to - a) / self.window_ns;
                self.quality.skipped_empty_windows += skipped;
                self.quality.power_gap_windows += skipped;
                self.window_total_ns += u128::from(skip_to - a);
                self.next_window = Some(skip_to);
                continue;
            }
            let report = self.close_window(a, b);
            self.ledger.apply(&report);
            out.push(report);
            self.next_window = Some(b);
        }
        out
    }

    /// When windows from `a` on are empty (no power, no guest progress) for more than
    /// [`MAX_EMPTY_WINDOWS`], the start of the first window with data again.
    fn empty_run_end(&self, a: u64) -> Option<u64> {
        let mut next = self
            .segments
            .iter()
            .find(|s| s.end > a)
            .map_or(u64::MAX, |s| s.start.max(a));
        for vm in &self.vms {
            let (Some(cursor), Some(last)) = (&vm.cursor, vm.last) else {
                continue;
            };
            if last.t > cursor.t {
                next = next.min(cursor.t.max(a));
            }
        }
        // Nothing ahead at all: the run ends where windows stop being ready by lag.
        let lag = duration_ns(self.cfg.close_lag);
        let next = next.min(self.now.saturating_sub(lag)).max(a);
        let run = (next - a) / self.window_ns;
        if run <= MAX_EMPTY_WINDOWS {
            return None;
        }
        Some(a + run * self.window_ns)
    }

    #[allow(clippy::too_many_lines)]
    fn close_window(&mut self, a: u64, b: u64) -> WindowReport {
        let window_ns = self.window_ns;
        // Host side.
        let mut energy = 0u64;
        let mut covered = 0u64;
        let mut vm_cpu: Option<(u64, u64)> = None;
        let mut impact: Option<(u64, u64)> = None;
        let mut host: Option<(u64, u64)> = None;
        let mut estimated = false;
        for seg in self.segments.iter().filter(|s| s.start < b && s.end > a) {
            energy = energy.saturating_add(prorate(seg.energy, seg, a, b));
            covered += seg.end.min(b) - seg.start.max(a);
            let add = |acc: &mut Option<(u64, u64)>, v: Option<(u64, u64)>| {
                if let Some((x, y)) = v {
                    let (ax, ay) = acc.get_or_insert((0, 0));
                    *ax = ax.saturating_add(prorate(x, seg, a, b));
                    *ay = ay.saturating_add(prorate(y, seg, a, b));
                }
            };
            add(&mut vm_cpu, seg.vm_cpu);
            add(&mut impact, seg.impact);
            add(&mut host, seg.host);
            estimated |= seg.estimated;
        }
        while self.segments.front().is_some_and(|s| s.end <= b) {
            self.segments.pop_front();
        }
        self.covered_ns += u128::from(covered);
        self.window_total_ns += u128::from(window_ns);
        let idle = match self.cfg.idle {
            IdleModel::Baseline { idle_mw } => {
                let e = u128::from(idle_mw) * u128::from(covered) / u128::from(NS_PER_MS);
                u64::try_from(e).unwrap_or(u64::MAX).min(energy)
            }
            IdleModel::EstimatedFraction { permille } => {
                let e = u128::from(energy) * u128::from(permille) / 1000;
                u64::try_from(e).expect("≤ energy")
            }
        };

        // Guest side, per VM.
        struct VmData {
            vm: usize,
            busy: u64,
            usage: Vec<u64>,
            reserve: Vec<u64>,
            coverage_ppm: u32,
            span_ns: u64,
            degraded: bool,
            offset_error_ns: u64,
        }
        let mut data = Vec::new();
        for (i, vm) in self.vms.iter_mut().enumerate() {
            let Some(start) = vm.cursor.take() else {
                continue;
            };
            if start.t >= b {
                vm.cursor = Some(start);
                continue;
            }
            let end = match vm.edges.remove(&b) {
                Some(e) => e,
                None => match vm.last {
                    Some(l) if l.t > start.t => vm.snap_now(l.t),
                    _ => start.clone(),
                },
            };
            vm.edges = vm.edges.split_off(&(b + 1));
            let busy = end.busy - start.busy;
            let usage: Vec<u64> = end
                .usage
                .iter()
                .enumerate()
                .map(|(s, &v)| v - start.usage.get(s).copied().unwrap_or(0))
                .collect();
            let capacity = u64::from(vm.cpus.max(1)) * 1000;
            let reserve = (0..usage.len())
                .map(|s| {
                    if vm.last_seen[s] > a {
                        vm.limit[s].map_or(capacity, u64::from)
                    } else {
                        0
                    }
                })
                .collect();
            let span = end.t.min(b).saturating_sub(start.t.max(a));
            // A live VM without a sample in or after the window (paused, sleeping, or gone)
            // cannot be split either.
            let degraded = span == 0 || vm.degraded.iter().any(|&(x, y)| x < b && y > a);
            vm.degraded.retain(|&(_, y)| y > b);
            data.push(VmData {
                vm: i,
                busy,
                usage,
                reserve,
                coverage_ppm: ratio_ppm(u128::from(span), u128::from(window_ns)),
                span_ns: span,
                degraded,
                offset_error_ns: vm.clock.estimate().map_or(0, |o| o.error_ns),
            });
            vm.cursor = Some(end);
        }

        // Host → VM share.
        let mut flags = WindowFlags {
            power_coverage_ppm: ratio_ppm(u128::from(covered), u128::from(window_ns)),
            estimated_source: estimated,
            idle_estimated: matches!(self.cfg.idle, IdleModel::EstimatedFraction { .. }),
            ..WindowFlags::default()
        };
        // When a VM's samples and the power readings cover different parts of the window (the
        // VM's first or last window, a power gap), the VM's busy time is scaled to the
        // power-covered part for the host-level uses (overhead, fallback share, split between
        // VMs), so that it is neither under- nor overstated. The split inside the VM uses the
        // measured deltas.
        let scaled: Vec<u64> = data
            .iter()
            .map(|d| {
                if d.span_ns == 0 || covered == 0 || d.span_ns == covered {
                    return d.busy;
                }
                u64::try_from(u128::from(d.busy) * u128::from(covered) / u128::from(d.span_ns))
                    .unwrap_or(u64::MAX)
            })
            .collect();
        let guest_busy_ns: u64 = scaled
            .iter()
            .fold(0u64, |acc, &b| acc.saturating_add(b))
            .saturating_mul(1_000);
        let cpu_share = vm_cpu
            .map(|(n, d)| Share { num: n, den: d })
            .filter(|s| s.den > 0)
            .or_else(|| {
                host.map(|(busy, cap)| Share {
                    num: guest_busy_ns,
                    den: if busy > 0 {
                        busy.max(guest_busy_ns)
                    } else {
                        cap
                    },
                })
                .filter(|s| s.den > 0)
            });
        let (share, basis) = match self.cfg.vm_share_basis {
            VmShareBasis::EnergyImpact => match impact.filter(|&(_, d)| d > 0) {
                Some((n, d)) => (Some(Share { num: n, den: d }), VmShareBasis::EnergyImpact),
                // Nothing to split: nothing fell back.
                None if energy == 0 => (cpu_share, VmShareBasis::EnergyImpact),
                None => {
                    flags.basis_fallback = true;
                    (cpu_share, VmShareBasis::CpuTime)
                }
            },
            VmShareBasis::CpuTime => (cpu_share, VmShareBasis::CpuTime),
        };
        flags.vm_share_unknown = share.is_none() && energy > 0;
        let reserved_share = host.filter(|&(_, cap)| cap > 0).map(|(_, cap)| {
            let vcpus: u64 = data.iter().map(|d| u64::from(self.vms[d.vm].cpus)).sum();
            Share {
                num: u64::try_from(u128::from(vcpus) * u128::from(covered)).unwrap_or(u64::MAX),
                den: cap,
            }
        });
        flags.offset_error_ns = data.iter().map(|d| d.offset_error_ns).max().unwrap_or(0);
        let mut widen = u64::try_from(
            u128::from(flags.offset_error_ns) * 2 * u128::from(PPM) / u128::from(window_ns),
        )
        .unwrap_or(PPM);
        if estimated {
            widen = widen.saturating_add(self.cfg.estimated_widen_ppm);
        }
        flags.degraded = data.iter().any(|d| d.degraded);

        let inputs: Vec<VmInput<'_>> = data
            .iter()
            .zip(&scaled)
            .map(|(d, &scaled_busy)| VmInput {
                busy_us: d.busy,
                scaled_busy_us: scaled_busy,
                usage_us: &d.usage,
                reserve: &d.reserve,
                vm_reserve: u64::from(self.vms[d.vm].cpus.max(1)),
                degraded: d.degraded,
            })
            .collect();
        let split = apportion::split_window(&WindowInput {
            energy: MicroJoules(energy),
            idle: MicroJoules(idle),
            vm_share: share,
            vm_cpu_ns: vm_cpu.map(|(n, _)| n),
            reserved_share,
            policy: self.cfg.policy,
            widen_ppm: widen,
            vms: &inputs,
        });
        flags.clamped = split.clamped;
        debug_assert_eq!(split.total(), energy, "conservation");

        let vms = data
            .iter()
            .zip(split.vms.iter())
            .map(|(d, parts)| {
                let vm = &self.vms[d.vm];
                let containers = parts
                    .containers
                    .iter()
                    .enumerate()
                    .filter(|&(s, p)| d.usage[s] > 0 || p.high > 0)
                    .map(|(s, p)| ContainerWindow {
                        id: vm.ids[s].clone(),
                        energy: MicroJoules(p.energy),
                        low: MicroJoules(p.low),
                        high: MicroJoules(p.high),
                        cpu: CpuMicros(d.usage[s]),
                    })
                    .collect();
                VmWindow {
                    vm: vm.name.clone(),
                    busy: CpuMicros(d.busy),
                    system: MicroJoules(parts.system),
                    overhead: MicroJoules(parts.overhead),
                    containers,
                    guest_coverage_ppm: d.coverage_ppm,
                    degraded: d.degraded,
                }
            })
            .collect();

        let q = &mut self.quality;
        q.windows += 1;
        q.degraded_windows += u64::from(flags.degraded);
        q.power_gap_windows += u64::from(covered < window_ns);
        q.vm_share_unknown_windows += u64::from(flags.vm_share_unknown);
        q.basis_fallback_windows += u64::from(flags.basis_fallback);
        q.clamped_windows += u64::from(flags.clamped);

        WindowReport {
            start: MonoNanos(a),
            end: MonoNanos(b),
            energy: MicroJoules(energy),
            idle_estimate: MicroJoules(idle),
            vms,
            host_other: MicroJoules(split.host_other),
            idle: MicroJoules(split.idle),
            unattributed: MicroJoules(split.unattributed),
            basis,
            flags,
        }
    }
}

fn ratio_ppm(num: u128, den: u128) -> u32 {
    if den == 0 {
        return 0;
    }
    u32::try_from((num * u128::from(PPM) / den).min(u128::from(PPM))).expect("≤ 1e6")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{HostCpu, VmShare};
    use protocol::{
        CgroupMode, ClockReading, ContainerCounters, CpuCounters, Goodbye, ProtocolVersion,
        UnixNanos,
    };

    const S: u64 = 1_000_000_000;
    const T0: u64 = 100 * S;

    fn hello(boot: &str, instance: u64, vm: &str) -> Message {
        Message::Hello(Hello {
            protocol: ProtocolVersion { major: 1, minor: 0 },
            agent_version: "t".into(),
            boot_id: boot.into(),
            instance_id: instance,
            vm_name: vm.into(),
            hostname: "h".into(),
            kernel_release: "k".into(),
            cgroup_mode: CgroupMode::V2,
            cpu_count: 2,
            clock: ClockReading {
                mono_ns: MonoNanos(0),
                unix_ns: UnixNanos(0),
            },
            sample_period_ms: 1000,
            has_container_metadata: false,
            auth_token: None,
        })
    }

    fn sample(seq: u64, g: u64, busy_us: u64, usage: &[(&str, u64)]) -> Message {
        Message::Sample(Sample {
            seq,
            clock: ClockReading {
                mono_ns: MonoNanos(g),
                unix_ns: UnixNanos(0),
            },
            vm: ProcStat {
                user: CpuCounters::default().usage + protocol::CpuMicros(busy_us),
                idle: protocol::CpuMicros(2 * g / 1000 - busy_us),
                ..ProcStat::default()
            },
            containers: usage
                .iter()
                .map(|&(id, u)| ContainerCounters {
                    id: id.into(),
                    cpu: CpuCounters {
                        usage: protocol::CpuMicros(u),
                        ..CpuCounters::default()
                    },
                    memory_current: None,
                    io: None,
                    cpu_limit_millicores: None,
                })
                .collect(),
        })
    }

    fn power(end: u64, energy: u64, impact: Option<(f64, f64)>) -> RecordEntry {
        RecordEntry::Power(PowerSample {
            end: MonoNanos(end),
            window_ns: S,
            energy: MicroJoules(energy),
            components: Vec::new(),
            vm_share: Some(VmShare {
                vm_cpu_ns: S,
                total_cpu_ns: 2 * S,
                vm_energy_impact: impact.map(|i| i.0),
                total_energy_impact: impact.map(|i| i.1),
            }),
            host_cpu: Some(HostCpu {
                busy_ns: 2 * S,
                capacity_ns: 8 * S,
            }),
            provenance: Provenance::Measured,
        })
    }

    fn guest(conn: u64, at: u64, message: Message) -> RecordEntry {
        RecordEntry::Guest {
            conn,
            at: MonoNanos(at),
            message,
        }
    }

    /// 20 s of one VM (guest clock = host − T0 + 1 s) with a container "a" at 0.5 core and
    /// power readings of 1 J/s, except where `gap` says.
    fn recording(gap: Option<(u64, u64)>, impact: Option<(f64, f64)>) -> Vec<RecordEntry> {
        let mut e = vec![guest(1, T0, hello("b", 1, "vm"))];
        for k in 1..=20 {
            let h = T0 + k * S;
            e.push(guest(
                1,
                h + 1_000,
                sample(k, h - T0 + S, k * 600_000, &[("a", k * 500_000)]),
            ));
            if gap.is_none_or(|(a, b)| k <= a || k > b) {
                e.push(power(h, 1_000_000, impact));
            }
        }
        e
    }

    fn cfg(basis: VmShareBasis) -> PipelineConfig {
        PipelineConfig {
            vm_share_basis: basis,
            idle: IdleModel::Baseline { idle_mw: 0 },
            ..PipelineConfig::default()
        }
    }

    #[test]
    fn power_gap_is_flagged_and_not_invented() {
        let att = super::super::attribute_recording(
            &recording(Some((12, 15)), None),
            cfg(VmShareBasis::CpuTime),
        )
        .unwrap();
        let gap_window = att
            .windows
            .iter()
            .find(|w| w.start.0 == T0 + 10 * S)
            .unwrap();
        // Readings ending at 13, 14 and 15 s are missing: 3 s of the window.
        assert_eq!(gap_window.flags.power_coverage_ppm, 700_000);
        assert_eq!(gap_window.energy, MicroJoules(7_000_000));
        assert_eq!(att.ledger.total(), MicroJoules(17_000_000));
        assert_eq!(att.quality.power_gap_windows, 1);
        assert!(att.ledger.conserved());
    }

    #[test]
    fn energy_impact_basis_is_used_and_stated() {
        let ei = super::super::attribute_recording(
            &recording(None, Some((1.0, 4.0))),
            cfg(VmShareBasis::EnergyImpact),
        )
        .unwrap();
        assert!(
            ei.windows
                .iter()
                .all(|w| w.basis == VmShareBasis::EnergyImpact)
        );
        assert_eq!(ei.config.basis, VmShareBasis::EnergyImpact);
        // VM share 1/4 by energy impact instead of 1/2 by CPU time.
        let cpu = super::super::attribute_recording(
            &recording(None, Some((1.0, 4.0))),
            cfg(VmShareBasis::CpuTime),
        )
        .unwrap();
        let a_ei = ei.ledger.container("vm", "a").unwrap().energy.0;
        let a_cpu = cpu.ledger.container("vm", "a").unwrap().energy.0;
        assert!(a_ei.abs_diff(a_cpu / 2) <= 2, "{a_ei} vs {a_cpu}");

        // Not reported: CPU time is used, and each window says so.
        let fallback = super::super::attribute_recording(
            &recording(None, None),
            cfg(VmShareBasis::EnergyImpact),
        )
        .unwrap();
        let with_energy = || fallback.windows.iter().filter(|w| w.energy.0 > 0);
        assert!(with_energy().count() >= 2);
        assert!(with_energy().all(|w| w.basis == VmShareBasis::CpuTime));
        assert!(with_energy().all(|w| w.flags.basis_fallback));
        assert_eq!(fallback.ledger, cpu.ledger);
    }

    #[test]
    fn resent_samples_orphans_and_new_instances_are_handled() {
        let mut e = recording(None, None);
        // A reconnect of the same agent resends seq 20 (ignored); an orphan message is
        // ignored; a restarted agent (new instance, same boot) continues "a".
        e.push(guest(2, T0 + 20 * S + 5_000, hello("b", 1, "vm")));
        e.push(guest(
            2,
            T0 + 20 * S + 6_000,
            sample(20, 21 * S, 20 * 600_000, &[("a", 20 * 500_000)]),
        ));
        e.push(guest(
            9,
            T0 + 20 * S + 7_000,
            Message::Goodbye(Goodbye { reason: "x".into() }),
        ));
        e.push(guest(3, T0 + 20 * S + 8_000, hello("b", 2, "vm")));
        for k in 21..=30 {
            let h = T0 + k * S;
            e.push(guest(
                3,
                h + 1_000,
                sample(k - 21, h - T0 + S, k * 600_000, &[("a", k * 500_000)]),
            ));
            e.push(power(h, 1_000_000, None));
        }
        let att = super::super::attribute_recording(&e, cfg(VmShareBasis::CpuTime)).unwrap();
        assert_eq!(att.quality.duplicate_samples, 1);
        assert_eq!(att.quality.orphan_messages, 1);
        assert_eq!(att.quality.counter_resets, 0);
        let a = att.ledger.container("vm", "a").unwrap();
        // "a" ran 0.5 s per second from the first sample (t = 1 s) to the last (t = 30 s);
        // the last µs, after the last power reading, stays in the open window.
        assert!(a.cpu.0.abs_diff(29 * 500_000) <= 1, "{:?}", a.cpu);
        assert!(att.ledger.conserved());
    }

    #[test]
    fn two_vms_split_by_guest_busy_time() {
        let mut e = vec![
            guest(1, T0, hello("b1", 1, "one")),
            guest(2, T0, hello("b2", 1, "two")),
        ];
        for k in 1..=20 {
            let h = T0 + k * S;
            e.push(guest(
                1,
                h + 1_000,
                sample(k, h - T0, k * 300_000, &[("x", k * 300_000)]),
            ));
            e.push(guest(
                2,
                h + 2_000,
                sample(k, h - T0 + 7 * S, k * 100_000, &[("y", k * 100_000)]),
            ));
            e.push(power(h, 1_000_000, None));
        }
        let att = super::super::attribute_recording(&e, cfg(VmShareBasis::CpuTime)).unwrap();
        let x = att.ledger.container("one", "x").unwrap().energy.0;
        let y = att.ledger.container("two", "y").unwrap().energy.0;
        assert!(x.abs_diff(3 * y) <= 10, "x {x} y {y}");
        assert!(att.ledger.conserved());
    }

    #[test]
    fn host_reboot_starts_a_new_time_line_and_keeps_the_ledger() {
        let session = |mono: u64| {
            RecordEntry::Session(crate::journal::SessionStart {
                bridge_version: "t".into(),
                mono: MonoNanos(mono),
                unix: UnixNanos(0),
                hostname: "h".into(),
                os: "linux".into(),
            })
        };
        let mut e = vec![session(T0 - S)];
        e.extend(recording(None, None));
        // The host rebooted: its monotonic clock restarts near zero; the VM rebooted too.
        e.push(session(2 * S));
        e.push(guest(1, 3 * S, hello("b-after", 1, "vm")));
        for k in 1..=20 {
            let h = 3 * S + k * S;
            e.push(guest(
                1,
                h + 1_000,
                sample(k, h, k * 600_000, &[("a", k * 500_000)]),
            ));
            e.push(power(h, 1_000_000, None));
        }
        let att = super::super::attribute_recording(&e, cfg(VmShareBasis::CpuTime)).unwrap();
        assert_eq!(att.ledger.total(), MicroJoules(40_000_000));
        assert!(att.ledger.conserved());
        let a = att.ledger.container("vm", "a").unwrap();
        assert!(a.cpu.0.abs_diff(38 * 500_000) <= 2, "{:?}", a.cpu);
        assert!(att.windows.iter().any(|w| w.start.0 < T0));
    }
}
