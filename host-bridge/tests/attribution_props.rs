//! Property tests of the attribution pipeline (10 000 cases each for the pure split, fewer
//! but still thousands for the whole engine): exact conservation, nothing negative (debug
//! builds trap any underflow), cumulative totals monotone, replay idempotent and independent of
//! how entries are chunked, and window length not changing the totals.

use std::time::Duration;

use host_bridge::journal::RecordEntry;
use host_bridge::journal::{HostCpu, PowerSample, Provenance, VmShare};
use host_bridge::pipeline::apportion::{Share, VmInput, WindowInput, split_exact, split_window};
use host_bridge::pipeline::{
    self, Engine, IdleModel, IdlePolicy, Ledger, PipelineConfig, VmShareBasis,
};
use proptest::prelude::*;
use protocol::{
    CgroupMode, ClockReading, ContainerCounters, CpuMicros, Hello, Message, MicroJoules, MonoNanos,
    Ping, ProcStat, Sample, UnixNanos, testing,
};

/// `n` cases, and no regression files written next to the sources (tests write only to temp
/// dirs; a failure prints its minimal input instead).
fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const POLICIES: [IdlePolicy; 3] = [
    IdlePolicy::Exclude,
    IdlePolicy::Proportional,
    IdlePolicy::Reserved,
];

proptest! {
    #![proptest_config(cases(10_000))]

    #[test]
    fn split_exact_is_exact_and_fair(total in 0u64..u64::MAX, weights in prop::collection::vec(0u64..1_000_000_000_000, 1..20)) {
        let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
        match split_exact(total, &weights) {
            None => prop_assert_eq!(sum, 0),
            Some(parts) => {
                prop_assert_eq!(parts.iter().map(|&p| u128::from(p)).sum::<u128>(), u128::from(total));
                for (p, w) in parts.iter().zip(&weights) {
                    // Each part is its exact quota rounded down or up.
                    let floor = u128::from(total) * u128::from(*w) / sum;
                    prop_assert!(u128::from(*p) == floor || u128::from(*p) == floor + 1);
                }
            }
        }
    }

    #[test]
    fn window_split_conserves_and_bounds_hold(
        energy in 0u64..10_000_000_000,
        idle_permille in 0u64..=1000,
        share in (0u64..2_000, 0u64..2_000),
        vm_cpu in prop::option::of(0u64..10_000_000_000),
        reserved in prop::option::of((0u64..100, 0u64..100)),
        vms in prop::collection::vec((0u64..5_000_000, prop::collection::vec((0u64..2_000_000, 0u64..4_000), 0..8), any::<bool>(), 1u64..16), 0..3),
        widen in 0u64..500_000,
    ) {
        let usage: Vec<Vec<u64>> = vms.iter().map(|v| v.1.iter().map(|c| c.0).collect()).collect();
        let reserve: Vec<Vec<u64>> = vms.iter().map(|v| v.1.iter().map(|c| c.1).collect()).collect();
        let inputs: Vec<VmInput<'_>> = vms.iter().enumerate().map(|(i, v)| VmInput {
            busy_us: v.0,
            scaled_busy_us: v.0 / 2 + v.3,
            usage_us: &usage[i],
            reserve: &reserve[i],
            vm_reserve: v.3,
            degraded: v.2,
        }).collect();
        let idle = energy * idle_permille / 1000;
        let mut exclude = None;
        for policy in POLICIES {
            let out = split_window(&WindowInput {
                energy: MicroJoules(energy),
                idle: MicroJoules(idle),
                vm_share: Some(Share { num: share.0, den: share.1 }),
                vm_cpu_ns: vm_cpu,
                reserved_share: reserved.map(|(n, d)| Share { num: n, den: d }),
                policy,
                widen_ppm: widen,
                vms: &inputs,
            });
            prop_assert_eq!(out.total(), MicroJoules(energy));
            for vm in &out.vms {
                for c in &vm.containers {
                    prop_assert!(c.low <= c.energy && c.energy <= c.high, "{c:?}");
                }
            }
            if policy == IdlePolicy::Exclude {
                exclude = Some(out);
            } else if let Some(ex) = &exclude {
                // Policy (a) ≤ any policy that also gives idle away, per container.
                for (a, b) in ex.vms.iter().zip(&out.vms) {
                    for (ca, cb) in a.containers.iter().zip(&b.containers) {
                        prop_assert!(ca.energy <= cb.energy);
                    }
                }
            }
        }
    }
}

/// A small random recording: one VM, a few containers, jittered samples, resets, drops,
/// power readings with and without a VM share.
#[derive(Clone, Debug)]
struct Plan {
    containers: Vec<u64>,
    samples: Vec<(u64, Vec<u64>, bool, bool)>,
    power: Vec<(u64, Option<(u64, u64)>)>,
    sample_ms: u64,
    guest_origin: u64,
    /// Power readings before this index are left out.
    power_from: usize,
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        1usize..5,
        4usize..40,
        500u64..2_500,
        0u64..1_000_000_000_000,
    )
        .prop_flat_map(|(n, len, sample_ms, guest_origin)| {
            let power_len =
                usize::try_from(u64::try_from(len).expect("small") * sample_ms / 1000 + 2)
                    .expect("small");
            (
                prop::collection::vec(0u64..2_000, n),
                prop::collection::vec(
                    (
                        0u64..20_000_000,
                        prop::collection::vec(0u64..1_500, n),
                        prop::bool::weighted(0.05),
                        prop::bool::weighted(0.1),
                    ),
                    len,
                ),
                prop::collection::vec(
                    (
                        0u64..20_000_000,
                        prop::option::of((0u64..1_000, 1u64..1_000)),
                    ),
                    power_len,
                ),
            )
                .prop_map(move |(containers, samples, power)| Plan {
                    containers,
                    samples,
                    power,
                    sample_ms,
                    guest_origin,
                    power_from: 0,
                })
        })
}

const T0: u64 = 500_000_000_000;

fn entries(p: &Plan) -> Vec<RecordEntry> {
    let mut out = vec![RecordEntry::Guest {
        conn: 1,
        at: MonoNanos(T0),
        message: Message::Hello(Hello {
            clock: ClockReading {
                mono_ns: MonoNanos(p.guest_origin),
                unix_ns: UnixNanos(0),
            },
            sample_period_ms: u32::try_from(p.sample_ms).expect("small"),
            ..testing::hello("b", 1, "vm")
        }),
    }];
    let mut timed = Vec::new();
    let mut raw = vec![0u64; p.containers.len()];
    let mut stat = ProcStat::default();
    for (i, (jitter, usage, reset, drop)) in p.samples.iter().enumerate() {
        let k = u64::try_from(i).expect("small");
        let h = T0 + (k + 1) * p.sample_ms * 1_000_000;
        let mut busy = 0;
        for (c, u) in usage.iter().enumerate() {
            let u = u * p.sample_ms / 1000 * p.containers[c] / 1000;
            if *reset && c == 0 {
                raw[c] = 0;
            }
            raw[c] += u;
            busy += u;
        }
        stat.user += CpuMicros(busy + 1_000);
        stat.idle += CpuMicros((2 * p.sample_ms * 1000).saturating_sub(busy + 1_000));
        if *drop {
            continue;
        }
        let g = h - T0 + p.guest_origin;
        timed.push((
            h + jitter,
            RecordEntry::Guest {
                conn: 1,
                at: MonoNanos(h + jitter),
                message: Message::Sample(Sample {
                    vm: stat,
                    containers: raw
                        .iter()
                        .enumerate()
                        .map(|(c, &r)| ContainerCounters {
                            cpu_limit_millicores: (c % 2 == 0).then_some(500),
                            ..testing::container(&format!("c{c}"), r)
                        })
                        .collect(),
                    ..testing::sample(k, g, &[])
                }),
            },
        ));
        if i % 3 == 0 {
            timed.push((
                h + jitter / 2 + 1,
                RecordEntry::Guest {
                    conn: 1,
                    at: MonoNanos(h + jitter / 2 + 1),
                    message: Message::Ping(Ping {
                        id: k,
                        guest_send: MonoNanos(g),
                        prev_pong: None,
                    }),
                },
            ));
        }
    }
    for (i, (e, share)) in p.power.iter().enumerate().skip(p.power_from) {
        let end = T0 + (u64::try_from(i).expect("small") + 1) * 1_000_000_000;
        timed.push((
            end,
            RecordEntry::Power(PowerSample {
                end: MonoNanos(end),
                window_ns: 1_000_000_000,
                energy: MicroJoules(*e),
                components: Vec::new(),
                vm_share: share.map(|(a, b)| VmShare {
                    vm_cpu_ns: a * 1_000_000,
                    total_cpu_ns: (a + b) * 1_000_000,
                    vm_energy_impact: Some(a as f64),
                    total_energy_impact: Some((a + b) as f64),
                }),
                host_cpu: Some(HostCpu {
                    busy_ns: 4_000_000_000,
                    capacity_ns: 8_000_000_000,
                }),
                provenance: Provenance::Measured,
            }),
        ));
    }
    timed.sort_by_key(|(t, _)| *t);
    out.extend(timed.into_iter().map(|(_, e)| e));
    out
}

fn cfg(policy: IdlePolicy, window_s: u64) -> PipelineConfig {
    PipelineConfig {
        window: Duration::from_secs(window_s),
        policy,
        idle: IdleModel::Baseline { idle_mw: 300 },
        vm_share_basis: if window_s.is_multiple_of(2) {
            VmShareBasis::CpuTime
        } else {
            VmShareBasis::EnergyImpact
        },
        ..PipelineConfig::default()
    }
}

fn assert_monotone(before: &Ledger, after: &Ledger) -> Result<(), TestCaseError> {
    for (k, b) in before.containers() {
        let a = after
            .container(&k.vm, &k.id)
            .expect("rows are never removed");
        prop_assert!(a.energy >= b.energy && a.low >= b.low && a.high >= b.high && a.cpu >= b.cpu);
    }
    for (bucket, v) in before.buckets() {
        prop_assert!(after.bucket(bucket) >= v);
    }
    prop_assert!(after.total() >= before.total());
    Ok(())
}

proptest! {
    #![proptest_config(cases(2_500))]

    #[test]
    fn engine_conserves_is_monotone_and_replays_identically(p in plan(), policy_i in 0usize..3, window_s in 1u64..4, chunk in 1usize..9) {
        let entries = entries(&p);
        let cfg = cfg(POLICIES[policy_i], window_s);
        let whole = pipeline::attribute_recording(&entries, cfg).expect("valid");
        prop_assert!(whole.ledger.conserved());
        let mut sum = 0u64;
        for w in &whole.windows {
            prop_assert_eq!(w.parts_sum(), w.energy.0);
            sum += w.energy.0;
        }
        prop_assert_eq!(sum, whole.ledger.total().0);
        // Replay is idempotent.
        let again = pipeline::attribute_recording(&entries, cfg).expect("valid");
        prop_assert_eq!(&again, &whole);
        // Live (chunked pushes) = replay, and cumulative totals never decrease.
        let mut engine = Engine::new(cfg).expect("valid");
        let mut windows = Vec::new();
        for part in entries.chunks(chunk) {
            let before = engine.ledger().clone();
            for e in part {
                windows.extend(engine.push(e));
            }
            assert_monotone(&before, engine.ledger())?;
        }
        windows.extend(engine.finish());
        let live = engine.into_attribution(windows);
        prop_assert_eq!(&live, &whole);
    }

    #[test]
    fn halving_the_window_keeps_the_totals(p in plan(), window_s in 1u64..4) {
        // Steady load: constant per-container rates, no resets, no drops, no jitter, constant
        // power and share. Then every window splits in the same ratio and only rounding differs.
        let mut p = p;
        p.sample_ms = (p.sample_ms / 1000).max(1) * 1000;
        p.power_from = usize::try_from(p.sample_ms / 1000).expect("small");
        let first = p.samples[0].1.clone();
        for s in &mut p.samples {
            s.0 = 0;
            s.1.clone_from(&first);
            s.2 = false;
            s.3 = false;
        }
        // Power only where the guest is observed (outside, windows go to `unattributed`
        // depending on where their edges fall, by design).
        let observed_s = u64::try_from(p.samples.len()).expect("small") * p.sample_ms / 1000;
        p.power.truncate(usize::try_from(observed_s).expect("small").max(p.power_from + 1));
        let power = p.power[0];
        for q in &mut p.power {
            q.clone_from(&power);
        }
        let entries = entries(&p);
        let coarse = pipeline::attribute_recording(&entries, cfg(IdlePolicy::Exclude, window_s * 2)).expect("valid");
        let fine = pipeline::attribute_recording(&entries, cfg(IdlePolicy::Exclude, window_s * 2).clone_with_window(window_s)).expect("valid");
        prop_assert_eq!(coarse.ledger.total(), fine.ledger.total());
        let slack = 4 * fine.ledger.windows() + 4;
        for (k, c) in coarse.ledger.containers() {
            let f = fine.ledger.container(&k.vm, &k.id).map_or(0, |t| t.energy.0);
            prop_assert!(c.energy.0.abs_diff(f) <= slack, "{}: coarse {} fine {} slack {}", k.id, c.energy.0, f, slack);
        }
    }
}

trait WithWindow {
    fn clone_with_window(self, window_s: u64) -> Self;
}

impl WithWindow for PipelineConfig {
    fn clone_with_window(self, window_s: u64) -> Self {
        Self {
            window: Duration::from_secs(window_s),
            ..self
        }
    }
}

#[test]
fn chunked_pushes_equal_attribute_recording_on_a_simulated_quarter_hour() {
    let mut s = crate::sim::Scenario::new("chunks");
    s.duration_s = 900;
    s.containers[0].restarts_at = vec![100];
    s.pauses = vec![(300_000, 330_000)];
    let cfg = PipelineConfig {
        policy: IdlePolicy::Reserved,
        ..PipelineConfig::default()
    };
    let run = s.run(cfg.window);
    let whole = pipeline::attribute_recording(&run.entries, cfg).expect("valid");
    for chunk in [1usize, 7, 1000] {
        let mut engine = Engine::new(cfg).expect("valid");
        let mut windows = Vec::new();
        for part in run.entries.chunks(chunk) {
            for e in part {
                windows.extend(engine.push(e));
            }
        }
        windows.extend(engine.finish());
        assert_eq!(engine.ledger(), &whole.ledger);
        assert_eq!(engine.into_attribution(windows), whole);
    }
    // Re-attributing the same recording with another policy moves only idle energy.
    let other = pipeline::attribute_recording(
        &run.entries,
        PipelineConfig {
            policy: IdlePolicy::Exclude,
            ..cfg
        },
    )
    .expect("valid");
    assert_eq!(other.ledger.total(), whole.ledger.total());
    for (k, c) in other.ledger.containers() {
        let r = whole.ledger.container(&k.vm, &k.id).expect("same rows");
        assert_eq!(
            c.low, r.low,
            "the dynamic-only bound does not depend on the policy"
        );
        assert!(c.energy <= r.energy);
    }
}

/// Arbitrary (hostile) entries: random connections, sequence numbers, clocks and counters over
/// the whole u64 range.
fn hostile_entry() -> impl Strategy<Value = RecordEntry> {
    let big = prop_oneof![0u64..10_000_000_000, any::<u64>()];
    prop_oneof![
        (0u64..3, big.clone(), 0u64..3, 0u32..4).prop_map(|(conn, at, boot, cpus)| {
            RecordEntry::Guest {
                conn,
                at: MonoNanos(at),
                message: Message::Hello(Hello {
                    cgroup_mode: CgroupMode::None,
                    cpu_count: cpus,
                    ..testing::hello(&format!("b{boot}"), boot, &format!("vm{boot}"))
                }),
            }
        }),
        (
            0u64..3,
            big.clone(),
            big.clone(),
            big.clone(),
            big.clone(),
            prop::collection::vec((0u8..4, big.clone()), 0..4)
        )
            .prop_map(|(conn, at, seq, g, user, cs)| RecordEntry::Guest {
                conn,
                at: MonoNanos(at),
                message: Message::Sample(Sample {
                    vm: ProcStat {
                        user: CpuMicros(user),
                        system: CpuMicros(user / 3),
                        idle: CpuMicros(g / 1000),
                        ..ProcStat::default()
                    },
                    containers: cs
                        .into_iter()
                        .map(|(id, u)| ContainerCounters {
                            cpu_limit_millicores: Some(u32::from(id) * 100),
                            ..testing::container(&format!("c{id}"), u)
                        })
                        .collect(),
                    ..testing::sample(seq, g, &[])
                }),
            }),
        (0u64..3, big.clone(), big.clone()).prop_map(|(conn, at, g)| RecordEntry::Guest {
            conn,
            at: MonoNanos(at),
            message: Message::Ping(Ping {
                id: 0,
                guest_send: MonoNanos(g),
                prev_pong: None,
            })
        }),
        (
            big.clone(),
            big.clone(),
            big.clone(),
            prop::option::of((big.clone(), big.clone()))
        )
            .prop_map(
                |(end, window_ns, energy, share)| RecordEntry::Power(PowerSample {
                    end: MonoNanos(end),
                    window_ns,
                    energy: MicroJoules(energy),
                    components: Vec::new(),
                    vm_share: share.map(|(a, b)| VmShare {
                        vm_cpu_ns: a,
                        total_cpu_ns: b,
                        vm_energy_impact: Some(f64::NAN),
                        total_energy_impact: Some(1.0)
                    }),
                    host_cpu: share.map(|(a, b)| HostCpu {
                        busy_ns: a,
                        capacity_ns: b
                    }),
                    provenance: Provenance::Estimated,
                })
            ),
        (big.clone(), big).prop_map(|(from, to)| RecordEntry::PowerGap {
            from: MonoNanos(from),
            to: MonoNanos(to),
            reason: String::new()
        }),
    ]
}

proptest! {
    #![proptest_config(cases(3_000))]

    #[test]
    fn hostile_input_never_panics_and_windows_conserve(entries in prop::collection::vec(hostile_entry(), 0..40), policy_i in 0usize..3) {
        let att = pipeline::attribute_recording(&entries, cfg(POLICIES[policy_i], 10)).expect("valid");
        for w in &att.windows {
            prop_assert_eq!(w.parts_sum(), w.energy.0);
        }
    }
}
