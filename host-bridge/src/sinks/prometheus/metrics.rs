//! Every metric `/metrics` can emit, declared once: name, base unit, type and help text.
//!
//! Names follow `joulebridge_<what>_<base unit>[_total]`; the encoder appends the unit and the
//! `_total` suffix from the definition, so a name and its unit cannot disagree.

use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Kind of a declared metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter (`_total`).
    Counter,
    /// Gauge.
    Gauge,
    /// Info (labels only, value 1).
    Info,
}

/// A metric this module emits.
#[derive(Clone, Copy, Debug)]
pub struct MetricDef {
    /// Name without unit and suffix (the encoder appends `_<unit>` and `_total`).
    pub base: &'static str,
    /// Base unit, if any.
    pub unit: Option<&'static str>,
    /// Counter, gauge or info.
    pub kind: Kind,
    /// HELP text.
    pub help: &'static str,
}

impl MetricDef {
    /// The family name as it appears in `# TYPE` lines (`base_unit`, or `base` for info
    /// metrics, whose samples get `_info`).
    #[must_use]
    pub fn family(&self) -> String {
        match self.unit {
            Some(u) => format!("{}_{u}", self.base),
            None => self.base.to_string(),
        }
    }

    pub(super) fn unit(&self) -> Option<Unit> {
        self.unit.map(|u| match u {
            "joules" => Unit::Joules,
            "seconds" => Unit::Seconds,
            "bytes" => Unit::Bytes,
            other => Unit::Other(other.to_string()),
        })
    }

    pub(super) fn metric_type(&self) -> MetricType {
        match self.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Info => MetricType::Info,
        }
    }
}

/// Host energy attributed to a container.
pub const CONTAINER_ENERGY: MetricDef = MetricDef {
    base: "joulebridge_container_energy",
    unit: Some("joules"),
    kind: Kind::Counter,
    help: "Host energy attributed to a container.",
};
/// Container CPU time.
pub const CONTAINER_CPU: MetricDef = MetricDef {
    base: "joulebridge_container_cpu",
    unit: Some("seconds"),
    kind: Kind::Counter,
    help: "CPU time of a container (cgroup usage).",
};
/// Container power over the last window.
pub const CONTAINER_POWER: MetricDef = MetricDef {
    base: "joulebridge_container_power",
    unit: Some("watts"),
    kind: Kind::Gauge,
    help: "Average power attributed to a container over the last attribution window.",
};
/// Bucket energy.
pub const BUCKET_ENERGY: MetricDef = MetricDef {
    base: "joulebridge_bucket_energy",
    unit: Some("joules"),
    kind: Kind::Counter,
    help: "Host energy outside containers, by bucket (vm-system, vm-overhead, host-other, idle, unattributed).",
};
/// Host energy.
pub const HOST_ENERGY: MetricDef = MetricDef {
    base: "joulebridge_host_energy",
    unit: Some("joules"),
    kind: Kind::Counter,
    help: "Host energy reported by the power source (the attributed domain).",
};
/// Host power over the last window.
pub const HOST_POWER: MetricDef = MetricDef {
    base: "joulebridge_host_power",
    unit: Some("watts"),
    kind: Kind::Gauge,
    help: "Average host power over the last attribution window.",
};
/// Attribution windows.
pub const WINDOWS: MetricDef = MetricDef {
    base: "joulebridge_windows",
    unit: None,
    kind: Kind::Counter,
    help: "Attribution windows completed.",
};
/// Degraded attribution windows.
pub const DEGRADED_WINDOWS: MetricDef = MetricDef {
    base: "joulebridge_degraded_windows",
    unit: None,
    kind: Kind::Counter,
    help: "Attribution windows computed with a degraded method (gap, reset, missing share).",
};
/// Power source and policy.
pub const SOURCE_INFO: MetricDef = MetricDef {
    base: "joulebridge_power_source",
    unit: None,
    kind: Kind::Info,
    help: "Power source in use, whether it is measured or estimated, and the idle policy.",
};
/// Frames received from agents.
pub const FRAMES_RECEIVED: MetricDef = MetricDef {
    base: "joulebridge_frames_received",
    unit: None,
    kind: Kind::Counter,
    help: "Frames received from guest agents.",
};
/// Frames rejected.
pub const FRAMES_REJECTED: MetricDef = MetricDef {
    base: "joulebridge_frames_rejected",
    unit: None,
    kind: Kind::Counter,
    help: "Frames from guest agents that were rejected (malformed, oversize, stalled, \
           unsupported version, unexpected, unauthorized); each closes its connection.",
};
/// Connections refused at the connection cap.
pub const CONNECTIONS_REFUSED: MetricDef = MetricDef {
    base: "joulebridge_agent_connections_refused",
    unit: None,
    kind: Kind::Counter,
    help: "Guest agent connections refused because the bridge was at --max-connections.",
};
/// Agent connections accepted.
pub const CONNECTIONS: MetricDef = MetricDef {
    base: "joulebridge_agent_connections",
    unit: None,
    kind: Kind::Counter,
    help: "Guest agent connections accepted.",
};
/// Agent connections open.
pub const CONNECTIONS_OPEN: MetricDef = MetricDef {
    base: "joulebridge_agent_connections_open",
    unit: None,
    kind: Kind::Gauge,
    help: "Guest agent connections currently open.",
};
/// The bridge's own CPU time.
pub const PROCESS_CPU: MetricDef = MetricDef {
    base: "joulebridge_process_cpu",
    unit: Some("seconds"),
    kind: Kind::Counter,
    help: "User and system CPU time of the bridge process.",
};
/// The bridge's peak resident memory.
pub const PROCESS_MAX_RSS: MetricDef = MetricDef {
    base: "joulebridge_process_max_resident_memory",
    unit: Some("bytes"),
    kind: Kind::Gauge,
    help: "Peak resident memory of the bridge process (getrusage ru_maxrss).",
};
/// The bridge's current resident memory (Linux only).
pub const PROCESS_RSS: MetricDef = MetricDef {
    base: "joulebridge_process_resident_memory",
    unit: Some("bytes"),
    kind: Kind::Gauge,
    help: "Resident memory of the bridge process (/proc/self/statm; Linux only).",
};

/// Every metric this module can emit (a test checks each one appears).
pub const METRICS: [MetricDef; 17] = [
    CONTAINER_ENERGY,
    CONTAINER_CPU,
    CONTAINER_POWER,
    BUCKET_ENERGY,
    HOST_ENERGY,
    HOST_POWER,
    WINDOWS,
    DEGRADED_WINDOWS,
    SOURCE_INFO,
    FRAMES_RECEIVED,
    FRAMES_REJECTED,
    CONNECTIONS,
    CONNECTIONS_OPEN,
    CONNECTIONS_REFUSED,
    PROCESS_CPU,
    PROCESS_MAX_RSS,
    PROCESS_RSS,
];

/// Label keys of container series, in order.
pub const CONTAINER_LABELS: [&str; 6] = [
    "vm",
    "container_id",
    "container_name",
    "compose_project",
    "compose_service",
    "image",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_names_carry_base_units() {
        assert_eq!(
            CONTAINER_ENERGY.family(),
            "joulebridge_container_energy_joules"
        );
        assert_eq!(PROCESS_CPU.family(), "joulebridge_process_cpu_seconds");
    }
}
