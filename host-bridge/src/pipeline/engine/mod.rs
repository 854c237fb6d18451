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

//!
//! - `vm`: one VM boot: clock offset, continuous counters, edge values, its part of a window.
//! - `power`: the power readings on the host time line and their integral over a window.
//! - `window`: closing one window: the host → VM share and the exact split.
//! - this module: streams and de-duplication, the window grid and the closing rules.

mod power;
mod vm;
mod window;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use protocol::{CpuMicros, Hello, Message, Sample};

use super::align::Observed;
use super::{
    Attribution, ConfigEcho, IdleModel, Ledger, PipelineConfig, PipelineError, Quality,
    WindowReport,
};
use crate::journal::{PowerSample, PowerSourceKind, Provenance, RecordEntry};
use power::PowerTimeline;
use vm::{Grid, VmState};

const NS_PER_MS: u64 = 1_000_000;
const PPM: u64 = 1_000_000;
/// Most window edges one sample may cross (≈ 28 h of 10 s windows). A sample further away
/// from the previous one cannot be placed in time: the VM restarts its cursor there and the
/// interval is degraded (protects against corrupt timestamps as much as against real gaps).
const MAX_EDGES_PER_SAMPLE: u64 = 10_000;
/// Runs of empty windows (no power, no guest progress) longer than this are skipped instead of
/// reported one by one (`Quality::skipped_empty_windows`).
const MAX_EMPTY_WINDOWS: u64 = 10_000;

fn duration_ns(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug)]
struct Stream {
    vm: usize,
    last_seq: Option<u64>,
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
    power: PowerTimeline,
    next_window: Option<u64>,
    now: u64,
    ledger: Ledger,
    quality: Quality,
    covered_ns: u128,
    window_total_ns: u128,
    source_kind: Option<PowerSourceKind>,
    source_provenance: Option<Provenance>,
    /// Per-container deltas of the sample being ingested (reused allocation).
    scratch: Vec<(usize, CpuMicros)>,
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
            power: PowerTimeline::default(),
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
                self.power.gap_until(to.0);
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
            vm.restarted(&self.cfg);
        }
        self.power.clear();
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

    fn sample(&mut self, vm: usize, at: u64, s: &Sample) {
        let grid = Grid {
            first_open: self.next_window.unwrap_or(0),
            window_ns: self.window_ns,
            tolerance_ns: duration_ns(self.cfg.pause_tolerance),
        };
        let state = &mut self.vms[vm];
        let done = state.ingest(at, s, grid, &mut self.scratch);
        self.quality.max_offset_error_ns =
            self.quality.max_offset_error_ns.max(done.offset_error_ns);
        for id in &done.restarted {
            self.ledger.note_restart(&state.name, id);
            self.quality.counter_resets += 1;
        }
        self.start_windows_at(done.t);
    }

    fn power(&mut self, p: &PowerSample) {
        self.now = self.now.max(p.end.0);
        let started = self.next_window.is_some();
        if let Some(start) = self.power.push(p, started, &mut self.quality) {
            self.start_windows_at(start);
        }
    }

    fn ready(&self, b: u64, finishing: bool) -> bool {
        let lag = duration_ns(self.cfg.close_lag);
        if finishing {
            // Energy exists only up to the last power reading; a guest-only tail (the agent's
            // last sample usually arrives after the last reading) would only add an empty
            // window. Without any power, the guest data decides (CPU totals still count).
            let data_end = if self.power.end() > 0 {
                self.power.end()
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
        self.power.end() >= b
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
        let mut next = self.power.next_data_from(a);
        for vm in &self.vms {
            if let Some(cursor) = vm.progress_since_cursor() {
                next = next.min(cursor.max(a));
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
}

fn ratio_ppm(num: u128, den: u128) -> u32 {
    if den == 0 {
        return 0;
    }
    u32::try_from((num * u128::from(PPM) / den).min(u128::from(PPM))).expect("≤ 1e6")
}
