//! The live table: per-container CPU on the terminal, refreshed every second, like
//! `docker stats`. Fed by the recorder's best-effort broadcast; a lagging table skips entries
//! (it only ever shows the latest rates).
//!
//! ```text
//! VM            CONTAINER                 CPU %   CPU TOTAL s        MEM
//! devbox        web                       12.5         45.67    120.3MiB
//! devbox        3f2a9c1b7d4e              0.0           0.01      2.1MiB
//! devbox        (whole VM)                13.1         61.02           -
//! ```
//!
//! CPU % is the delta of cumulative `usage` between the last two samples over the delta of
//! the guest's monotonic clock (100 % = one CPU), with Prometheus reset semantics (a counter
//! that goes backwards restarted from zero). Rows appear with a container's second sample.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, IsTerminal as _, Write};
use std::sync::Arc;
use std::time::Duration;

use protocol::{Bytes, CpuMicros, Message, MonoNanos};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::recording::RecordEntry;

/// Redraw period.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Whether a live table can be drawn: stdout is a terminal.
#[must_use]
pub fn stdout_is_terminal() -> bool {
    io::stdout().is_terminal()
}

#[derive(Debug, Clone, Copy)]
struct Point {
    at: MonoNanos,
    usage: CpuMicros,
}

#[derive(Debug, Default)]
struct Row {
    prev: Option<Point>,
    last: Option<Point>,
    memory: Option<Bytes>,
}

impl Row {
    fn push(&mut self, at: MonoNanos, usage: CpuMicros, memory: Option<Bytes>) {
        self.prev = self.last;
        self.last = Some(Point { at, usage });
        self.memory = memory;
    }

    /// CPU % over the last interval (100 = one CPU busy).
    fn cpu_percent(&self) -> Option<f64> {
        let (prev, last) = (self.prev?, self.last?);
        let dt_ns = last.at.since(prev.at);
        if dt_ns == 0 {
            return None;
        }
        let used_us = last.usage.reset_aware_delta(prev.usage).0;
        #[allow(clippy::cast_precision_loss)]
        Some(used_us as f64 * 1_000.0 / dt_ns as f64 * 100.0)
    }
}

/// The table's state, built from recorded entries.
#[derive(Debug, Default)]
pub struct LiveTable {
    /// Connection → VM label (from its Hello).
    vms: HashMap<u64, String>,
    /// (VM, container id) → container name.
    names: HashMap<(String, String), String>,
    /// (VM, container id or "" for the VM row) → counters.
    rows: BTreeMap<(String, String), Row>,
}

impl LiveTable {
    /// Take one recorded entry into account.
    pub fn observe(&mut self, entry: &RecordEntry) {
        match entry {
            RecordEntry::Session(_) => self.vms.clear(),
            RecordEntry::Guest { conn, message, .. } => match message {
                Message::Hello(h) => {
                    self.vms.insert(*conn, h.vm_name.clone());
                }
                Message::Containers(c) => {
                    let Some(vm) = self.vms.get(conn) else { return };
                    for info in &c.entries {
                        let key = (vm.clone(), info.id.clone());
                        if info.state == protocol::ContainerState::Removed {
                            self.names.remove(&key);
                            self.rows.remove(&key);
                        } else if !info.name.is_empty() {
                            self.names.insert(key, info.name.clone());
                        }
                    }
                }
                Message::Sample(s) => {
                    let Some(vm) = self.vms.get(conn).cloned() else {
                        return;
                    };
                    let at = s.clock.mono_ns;
                    for c in &s.containers {
                        self.rows
                            .entry((vm.clone(), c.id.clone()))
                            .or_default()
                            .push(at, c.cpu.usage, c.memory_current);
                    }
                    self.rows
                        .entry((vm, String::new()))
                        .or_default()
                        .push(at, s.vm.busy(), None);
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// Write the table (without clearing the screen).
    ///
    /// # Errors
    /// Write errors of `out`.
    pub fn render(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "{:<14} {:<28} {:>7} {:>13} {:>11}",
            "VM", "CONTAINER", "CPU %", "CPU TOTAL s", "MEM"
        )?;
        for ((vm, id), row) in &self.rows {
            let (Some(cpu), Some(last)) = (row.cpu_percent(), row.last) else {
                continue;
            };
            let label = if id.is_empty() {
                "(whole VM)".to_string()
            } else {
                self.names
                    .get(&(vm.clone(), id.clone()))
                    .cloned()
                    .unwrap_or_else(|| short_id(id))
            };
            let mem = row.memory.map_or_else(|| "-".to_string(), format_bytes);
            writeln!(
                out,
                "{:<14} {:<28} {:>7.1} {:>13.2} {:>11}",
                truncate(vm, 14),
                truncate(&label, 28),
                cpu,
                last.usage.as_secs_f64(),
                mem
            )?;
        }
        Ok(())
    }
}

/// A Docker-style 12-character id, or the path as given for explicit cgroups.
fn short_id(id: &str) -> String {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        id[..12].to_string()
    } else {
        id.to_string()
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let keep: String = s.chars().take(max.saturating_sub(1)).collect();
        format!("{keep}…")
    }
}

#[allow(clippy::cast_precision_loss)]
fn format_bytes(b: Bytes) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = b.0 as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// Draw the table on `out` every [`REFRESH`] until `cancel` fires or the recorder stops.
pub async fn run(
    mut entries: broadcast::Receiver<Arc<RecordEntry>>,
    mut out: Box<dyn Write + Send>,
    cancel: CancellationToken,
) {
    let mut table = LiveTable::default();
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            entry = entries.recv() => match entry {
                Ok(entry) => table.observe(&entry),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    debug!(skipped = n, "Live table lagged behind the recorder.");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = tick.tick() => {
                let mut frame = Vec::new();
                // Clear the screen and home the cursor (ANSI), then draw.
                frame.extend_from_slice(b"\x1b[2J\x1b[H");
                if table.render(&mut frame).is_ok()
                    && (out.write_all(&frame).is_err() || out.flush().is_err())
                {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::{
        CgroupMode, ClockReading, ContainerCounters, ContainerInfo, Containers, CpuCounters, Hello,
        PROTOCOL_VERSION, ProcStat, Sample, UnixNanos,
    };

    use super::*;

    fn guest(message: Message) -> RecordEntry {
        RecordEntry::Guest {
            conn: 1,
            at: MonoNanos(0),
            message,
        }
    }

    fn sample(seq: u64, at_ms: u64, usage_us: u64) -> Message {
        Message::Sample(Sample {
            seq,
            clock: ClockReading {
                mono_ns: MonoNanos(at_ms * 1_000_000),
                unix_ns: UnixNanos(0),
            },
            vm: ProcStat {
                user: CpuMicros(usage_us * 2),
                ..ProcStat::default()
            },
            containers: vec![ContainerCounters {
                id: "a".repeat(64),
                cpu: CpuCounters {
                    usage: CpuMicros(usage_us),
                    ..CpuCounters::default()
                },
                memory_current: Some(Bytes(3 * 1024 * 1024)),
                io: None,
                cpu_limit_millicores: None,
            }],
        })
    }

    #[test]
    fn live_table_shows_rate_name_and_memory() {
        let mut t = LiveTable::default();
        t.observe(&guest(Message::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: "t".into(),
            boot_id: "b".into(),
            instance_id: 1,
            vm_name: "devbox".into(),
            hostname: "h".into(),
            kernel_release: "k".into(),
            cgroup_mode: CgroupMode::V2,
            cpu_count: 2,
            clock: ClockReading {
                mono_ns: MonoNanos(0),
                unix_ns: UnixNanos(0),
            },
            sample_period_ms: 1000,
            has_container_metadata: true,
            auth_token: None,
        })));
        t.observe(&guest(sample(0, 1_000, 1_000_000)));
        t.observe(&guest(sample(1, 2_000, 1_500_000)));
        let mut out = Vec::new();
        t.render(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("aaaaaaaaaaaa "), "{text}");
        assert!(text.contains(" 50.0 "), "{text}");
        assert!(text.contains("3.0MiB"), "{text}");
        assert!(
            text.contains("(whole VM)") && text.contains(" 100.0 "),
            "{text}"
        );

        t.observe(&guest(Message::Containers(Containers {
            full: false,
            entries: vec![ContainerInfo {
                id: "a".repeat(64),
                name: "web".into(),
                ..ContainerInfo::default()
            }],
        })));
        // A counter reset (container restarted) counts from zero, never negative.
        t.observe(&guest(sample(2, 3_000, 250_000)));
        let mut out = Vec::new();
        t.render(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("web ") && text.contains(" 25.0 "), "{text}");
    }
}
