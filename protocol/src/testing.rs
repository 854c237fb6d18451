//! Message builders for tests, written once for every crate's tests (enabled by the `testing`
//! feature, which only dev-dependencies turn on).
//!
//! Each builder fills every field with a plain value; a test states only what it is about and
//! takes the rest with struct update syntax:
//!
//! ```
//! # use protocol::testing;
//! let hello = protocol::Hello { cpu_count: 4, ..testing::hello("boot-1", 7, "vm") };
//! assert_eq!(hello.sample_period_ms, 1000);
//! ```

use crate::{
    CgroupMode, ClockReading, ContainerCounters, CpuCounters, CpuMicros, Hello, MonoNanos,
    PROTOCOL_VERSION, ProcStat, Sample, UnixNanos,
};

/// A Hello of this protocol version: cgroup v2, 2 CPUs, 1 s samples, clocks at zero, no
/// container metadata, no token; hostname `h`, kernel `k`, agent version `t`.
#[must_use]
pub fn hello(boot_id: &str, instance_id: u64, vm_name: &str) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: "t".into(),
        boot_id: boot_id.into(),
        instance_id,
        vm_name: vm_name.into(),
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
    }
}

/// A sample read at guest monotonic time `mono_ns` (wall clock 0), with an all-zero
/// `/proc/stat` and one container per `(id, usage_usec)`.
#[must_use]
pub fn sample(seq: u64, mono_ns: u64, containers: &[(&str, u64)]) -> Sample {
    Sample {
        seq,
        clock: ClockReading {
            mono_ns: MonoNanos(mono_ns),
            unix_ns: UnixNanos(0),
        },
        vm: ProcStat::default(),
        containers: containers
            .iter()
            .map(|&(id, usage_us)| container(id, usage_us))
            .collect(),
    }
}

/// Counters of container `id` with `usage_usec` = `usage_us` and nothing else.
#[must_use]
pub fn container(id: &str, usage_us: u64) -> ContainerCounters {
    ContainerCounters {
        id: id.into(),
        cpu: CpuCounters {
            usage: CpuMicros(usage_us),
            ..CpuCounters::default()
        },
        memory_current: None,
        io: None,
        cpu_limit_millicores: None,
    }
}
