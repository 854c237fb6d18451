//! Engine tests over whole entry sequences (public API only).

use protocol::{Goodbye, Message, MicroJoules, MonoNanos, ProcStat, Sample, UnixNanos, testing};

use crate::journal::{HostCpu, PowerSample, Provenance, RecordEntry, VmShare};
use crate::pipeline::{IdleModel, PipelineConfig, VmShareBasis};

const S: u64 = 1_000_000_000;
const T0: u64 = 100 * S;

fn hello(boot: &str, instance: u64, vm: &str) -> Message {
    Message::Hello(testing::hello(boot, instance, vm))
}

/// A sample of a 2-CPU VM at guest time `g` that was busy `busy_us` in total.
fn sample(seq: u64, g: u64, busy_us: u64, usage: &[(&str, u64)]) -> Message {
    Message::Sample(Sample {
        vm: ProcStat {
            user: protocol::CpuMicros(busy_us),
            idle: protocol::CpuMicros(2 * g / 1000 - busy_us),
            ..ProcStat::default()
        },
        ..testing::sample(seq, g, usage)
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
    let fallback =
        super::super::attribute_recording(&recording(None, None), cfg(VmShareBasis::EnergyImpact))
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
