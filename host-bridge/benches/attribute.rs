//! Decode + attribute throughput: recording frames (the wire/recording codec) decoded into
//! `RecordEntry`s and pushed through the pipeline, in container-samples per second.
//!
//! Run: `cargo bench -p host-bridge --bench attribute`. Goal: ≥ 5 million container-samples per
//! second per core (the bench is single-threaded).
//!
//! Two clocks: `attribute` measures wall time (criterion's default); `attribute-cpu` measures
//! the bench thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), which is the per-core figure even
//! on a loaded, shared machine where wall time also counts time spent waiting for a core.

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use host_bridge::journal::RecordEntry;
use host_bridge::pipeline::{Engine, IdlePolicy, PipelineConfig};
use host_bridge::sources::power::{HostCpu, PowerSample, Provenance, VmShare};
use protocol::codec;
use protocol::{
    ClockReading, ContainerCounters, CpuCounters, CpuMicros, Hello, Message, MicroJoules,
    MonoNanos, ProcStat, Sample, UnixNanos,
};

const CONTAINERS: u64 = 100;
const SECONDS: u64 = 600;
const T0: u64 = 1_000_000_000_000;

/// A recording's frames: a Hello, then one Sample of `CONTAINERS` containers and one power
/// reading per second.
fn frames() -> BytesMut {
    let mut buf = BytesMut::new();
    let mut put = |e: &RecordEntry| codec::encode_frame(e, &mut buf).expect("encodable");
    put(&RecordEntry::Guest {
        conn: 1,
        at: MonoNanos(T0),
        message: Message::Hello(Hello {
            cpu_count: 8,
            clock: ClockReading {
                mono_ns: MonoNanos(5),
                unix_ns: UnixNanos(0),
            },
            has_container_metadata: true,
            ..protocol::testing::hello("boot", 1, "vm")
        }),
    });
    let ids: Vec<String> = (0..CONTAINERS)
        .map(|i| format!("{:064x}", i * 0x9E37_79B9 + 1))
        .collect();
    let mut stat = ProcStat::default();
    for s in 1..=SECONDS {
        let h = T0 + s * 1_000_000_000;
        stat.user += CpuMicros(4_000_000);
        stat.idle += CpuMicros(4_000_000);
        put(&RecordEntry::Guest {
            conn: 1,
            at: MonoNanos(h + 300_000),
            message: Message::Sample(Sample {
                seq: s,
                clock: ClockReading {
                    mono_ns: MonoNanos(h - T0 + 5),
                    unix_ns: UnixNanos(1_700_000_000_000_000_000 + h),
                },
                vm: stat,
                containers: ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        let used = s * 10_000 * (u64::try_from(i).expect("small") % 7 + 1);
                        ContainerCounters {
                            id: id.clone(),
                            cpu: CpuCounters {
                                usage: CpuMicros(used),
                                user: CpuMicros(used / 2),
                                system: CpuMicros(used / 2),
                                nr_periods: s * 10,
                                nr_throttled: 0,
                                throttled: CpuMicros(0),
                            },
                            memory_current: Some(protocol::Bytes(50_000_000 + s)),
                            io: None,
                            cpu_limit_millicores: Some(2000),
                        }
                    })
                    .collect(),
            }),
        });
        put(&RecordEntry::Power(PowerSample {
            end: MonoNanos(h),
            window_ns: 1_000_000_000,
            energy: MicroJoules(5_000_000),
            components: vec![("cpu".into(), MicroJoules(5_000_000))],
            vm_share: Some(VmShare {
                vm_cpu_ns: 4_200_000_000,
                total_cpu_ns: 5_000_000_000,
                vm_energy_impact: None,
                total_energy_impact: None,
            }),
            host_cpu: Some(HostCpu {
                busy_ns: 5_000_000_000,
                capacity_ns: 10_000_000_000,
            }),
            provenance: Provenance::Measured,
        }));
    }
    buf
}

fn decode_only(mut buf: BytesMut) -> usize {
    let mut n = 0usize;
    while let Some(payload) = codec::split_frame(&mut buf).expect("valid frame") {
        let entry: RecordEntry = codec::decode_payload(&payload).expect("valid entry");
        n += usize::from(matches!(entry, RecordEntry::Guest { .. }));
        black_box(entry);
    }
    n
}

fn decode_and_attribute(mut buf: BytesMut) -> u64 {
    let cfg = PipelineConfig {
        policy: IdlePolicy::Proportional,
        ..PipelineConfig::default()
    };
    let mut engine = Engine::new(cfg).expect("valid config");
    let mut windows = 0u64;
    while let Some(payload) = codec::split_frame(&mut buf).expect("valid frame") {
        let entry: RecordEntry = codec::decode_payload(&payload).expect("valid entry");
        windows += u64::try_from(engine.push(&entry).len()).expect("small");
    }
    windows += u64::try_from(engine.finish().len()).expect("small");
    windows
}

/// CPU time of the calling thread.
struct ThreadCpuTime;

static WALL: WallTime = WallTime;

fn thread_cpu_now() -> Duration {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("CLOCK_THREAD_CPUTIME_ID is available on Linux and macOS");
    Duration::new(
        u64::try_from(ts.tv_sec()).unwrap_or(0),
        u32::try_from(ts.tv_nsec()).unwrap_or(0),
    )
}

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_now()
    }

    fn end(&self, start: Duration) -> Duration {
        thread_cpu_now().saturating_sub(start)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_secs_f64() * 1e9
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

/// The two benchmarks, measured by `M` (wall time or this thread's CPU time).
fn bench_with<M: Measurement>(c: &mut Criterion<M>, group_name: &str) {
    let buf = frames();
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Elements(CONTAINERS * SECONDS));
    group.measurement_time(Duration::from_secs(10));
    group.sample_size(20);
    group.bench_function("decode_and_attribute_100_containers", |b| {
        b.iter_batched(
            || buf.clone(),
            |buf| black_box(decode_and_attribute(buf)),
            BatchSize::LargeInput,
        );
    });
    group.bench_function("decode_only_100_containers", |b| {
        b.iter_batched(|| buf.clone(), decode_only, BatchSize::LargeInput);
    });
    group.finish();
}

fn bench_cpu(c: &mut Criterion<ThreadCpuTime>) {
    bench_with(c, "attribute-cpu");
}

fn bench(c: &mut Criterion) {
    bench_with(c, "attribute");
}

criterion_group!(benches, bench);
criterion_group! {
    name = benches_cpu;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = bench_cpu
}
criterion_main!(benches, benches_cpu);
