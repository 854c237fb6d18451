//! Prometheus/OpenMetrics exposition of the attribution ledger, and a tiny `/metrics` server.
//!
//! The pipeline publishes a [`MetricsView`] (cumulative per-container energy, buckets, last
//! window power) on a `tokio::sync::watch` channel; a scrape renders the latest view. A scrape
//! never triggers sampling or attribution (house-style §3.1; the Scaphandre anti-pattern of
//! §9). Only the bridge's own CPU and memory are read at scrape time, as every Prometheus
//! client library does for `process_*` metrics.
//!
//! Every metric name lives in [`METRICS`]; base units (joules, seconds, watts, bytes);
//! counters end in `_total`. Example output (OpenMetrics text, as `prometheus-client` encodes):
//!
//! ```text
//! # HELP joulebridge_container_energy_joules Host energy attributed to a container.
//! # TYPE joulebridge_container_energy_joules counter
//! # UNIT joulebridge_container_energy_joules joules
//! joulebridge_container_energy_joules_total{vm="docker-desktop",container_id="3f…",container_name="shop-web-1",compose_project="shop",compose_service="web",image="nginx:1.27"} 41.25
//! # HELP joulebridge_bucket_energy_joules Host energy outside containers, by bucket.
//! # TYPE joulebridge_bucket_energy_joules counter
//! # UNIT joulebridge_bucket_energy_joules joules
//! joulebridge_bucket_energy_joules_total{bucket="idle"} 12.0
//! # EOF
//! ```
//!
//! **Restarts.** Counters are the ledger's cumulative totals. A restarted bridge reopens its
//! recording and rebuilds the ledger from it, so counters continue where they were; with a new
//! recording they start lower, which Prometheus treats as a counter reset (`rate()` and
//! `increase()` handle it).
//!
//! **Server.** A minimal HTTP/1.1 responder on a `TcpListener` (GET `/metrics`, one request per
//! connection, `Connection: close`), rather than hyper/axum: the bridge serves one read-only
//! page to a scraper, and this keeps the dependency graph (and the macOS binary) small. It is
//! bound to loopback unless the user asks otherwise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::report::model::{Bucket, Policy, Provenance, Report};

/// Default scrape address: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";

/// Content type of the OpenMetrics text format (what `prometheus-client` encodes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Concurrent scrape connections served; more wait for a permit (a scraper needs one).
const MAX_CONNECTIONS: usize = 16;
/// Largest request head read; a scrape request is a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A client that sends no complete request head in this time is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

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

    fn unit(&self) -> Option<Unit> {
        self.unit.map(|u| match u {
            "joules" => Unit::Joules,
            "seconds" => Unit::Seconds,
            "bytes" => Unit::Bytes,
            other => Unit::Other(other.to_string()),
        })
    }

    fn metric_type(&self) -> MetricType {
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

/// Identity of a container series.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerLabels {
    /// VM name.
    pub vm: String,
    /// Container id.
    pub container_id: String,
    /// Container name.
    pub container_name: String,
    /// Compose project ("" when none).
    pub compose_project: String,
    /// Compose service ("" when none).
    pub compose_service: String,
    /// Image.
    pub image: String,
}

impl ContainerLabels {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let values = [
            &self.vm,
            &self.container_id,
            &self.container_name,
            &self.compose_project,
            &self.compose_service,
            &self.image,
        ];
        CONTAINER_LABELS
            .iter()
            .zip(values)
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }
}

/// One container in the view.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerMetrics {
    /// Labels.
    pub labels: ContainerLabels,
    /// Cumulative attributed energy, µJ.
    pub energy_uj: u64,
    /// Cumulative CPU time, µs.
    pub cpu_us: u64,
    /// Average power over the last window, W (`None` before the first window).
    pub power_w: Option<f64>,
}

/// What the pipeline publishes after each window: cumulative ledger totals and the last
/// window's power.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsView {
    /// Containers.
    pub containers: Vec<ContainerMetrics>,
    /// Cumulative bucket energy, µJ.
    pub buckets: Vec<(Bucket, u64)>,
    /// Cumulative host energy, µJ.
    pub host_energy_uj: u64,
    /// Host power over the last window, W.
    pub host_power_w: Option<f64>,
    /// Power source kind.
    pub source_kind: String,
    /// Measured or estimated.
    pub provenance: Provenance,
    /// Idle policy.
    pub policy: Policy,
    /// Windows attributed.
    pub windows: u64,
    /// Windows attributed with a degraded method.
    pub degraded_windows: u64,
}

impl MetricsView {
    /// An empty view (before the first window).
    #[must_use]
    pub fn empty(source_kind: &str, provenance: Provenance, policy: Policy) -> Self {
        Self {
            containers: Vec::new(),
            buckets: Vec::new(),
            host_energy_uj: 0,
            host_power_w: None,
            source_kind: source_kind.to_string(),
            provenance,
            policy,
            windows: 0,
            degraded_windows: 0,
        }
    }

    /// The view a report ends with: cumulative totals and the power of its last window. A
    /// restarted bridge publishes this for the recording it reopened.
    #[must_use]
    pub fn from_report(report: &Report) -> Self {
        let last = report.series.last();
        let power = |uj: Option<u64>| {
            last.zip(uj)
                .map(|(p, uj)| crate::report::csv::watts(uj, p.duration_s()))
        };
        Self {
            containers: report
                .containers
                .iter()
                .map(|c| ContainerMetrics {
                    labels: ContainerLabels {
                        vm: c.vm.clone(),
                        container_id: c.id.clone(),
                        container_name: c.name.clone(),
                        compose_project: c.compose_project.clone().unwrap_or_default(),
                        compose_service: c.compose_service.clone().unwrap_or_default(),
                        image: c.image.clone(),
                    },
                    energy_uj: c.energy.energy_uj,
                    cpu_us: c.cpu_us,
                    power_w: power(Some(
                        last.and_then(|p| p.containers_uj.get(&c.key).copied())
                            .unwrap_or(0),
                    )),
                })
                .collect(),
            buckets: report
                .totals
                .buckets
                .iter()
                .map(|b| (b.bucket, b.energy.energy_uj))
                .collect(),
            host_energy_uj: report.totals.host.energy_uj,
            host_power_w: power(last.map(|p| p.host_uj)),
            source_kind: report.power_source.kind.clone(),
            provenance: report.power_source.provenance,
            policy: report.policy,
            windows: report.quality.windows,
            degraded_windows: report.quality.degraded_windows,
        }
    }
}

impl MetricsView {
    /// The view of a live engine: its ledger (cumulative, rebuilt from the recording after a
    /// restart) and the power of its last closed window.
    #[must_use]
    pub fn from_ledger(
        ledger: &crate::pipeline::Ledger,
        quality: &crate::pipeline::Quality,
        last: Option<&crate::pipeline::WindowReport>,
        source_kind: &str,
        provenance: Provenance,
        policy: Policy,
    ) -> Self {
        let last_secs = last.map(|w| w.end.0.saturating_sub(w.start.0) as f64 / 1e9);
        let power = |uj: u64| last_secs.map(|s| crate::report::csv::watts(uj, s));
        let mut buckets: Vec<(Bucket, u64)> = Vec::new();
        for (b, v) in ledger.buckets() {
            let bucket = match b {
                crate::pipeline::Bucket::VmSystem(_) => Bucket::VmSystem,
                crate::pipeline::Bucket::VmOverhead(_) => Bucket::VmOverhead,
                crate::pipeline::Bucket::HostOther => Bucket::HostOther,
                crate::pipeline::Bucket::Idle => Bucket::Idle,
                crate::pipeline::Bucket::Unattributed => Bucket::Unattributed,
            };
            match buckets.iter_mut().find(|(x, _)| *x == bucket) {
                Some((_, total)) => *total += v.0,
                None => buckets.push((bucket, v.0)),
            }
        }
        Self {
            containers: ledger
                .containers()
                .map(|(k, t)| {
                    let meta = t.meta.as_ref();
                    let last_uj = last.map_or(0, |w| {
                        w.vms
                            .iter()
                            .filter(|v| v.vm == k.vm)
                            .flat_map(|v| &v.containers)
                            .filter(|c| c.id == k.id)
                            .map(|c| c.energy.0)
                            .sum()
                    });
                    ContainerMetrics {
                        labels: ContainerLabels {
                            vm: k.vm.clone(),
                            container_id: k.id.clone(),
                            container_name: meta.map(|m| m.name.clone()).unwrap_or_default(),
                            compose_project: meta
                                .and_then(|m| m.compose_project.clone())
                                .unwrap_or_default(),
                            compose_service: meta
                                .and_then(|m| m.compose_service.clone())
                                .unwrap_or_default(),
                            image: meta.map(|m| m.image.clone()).unwrap_or_default(),
                        },
                        energy_uj: t.energy.0,
                        cpu_us: t.cpu.0,
                        power_w: power(last_uj),
                    }
                })
                .collect(),
            buckets,
            host_energy_uj: ledger.total().0,
            host_power_w: last.and_then(|w| power(w.energy.0)),
            source_kind: source_kind.to_string(),
            provenance,
            policy,
            windows: ledger.windows(),
            degraded_windows: quality.degraded_windows,
        }
    }
}

/// Counters the ingest side increments; read at scrape time.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// Frames received from agents.
    pub frames_received: AtomicU64,
    /// Frames rejected.
    pub frames_rejected: AtomicU64,
    /// Connections accepted.
    pub connections_accepted: AtomicU64,
    /// Connections open now (served by a connection task, handshake included).
    pub connections_open: AtomicU64,
    /// Connections refused at the connection cap.
    pub connections_refused: AtomicU64,
}

/// CPU and memory of this process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Peak RSS, bytes.
    pub max_rss_bytes: u64,
    /// Current RSS, bytes (Linux only).
    pub rss_bytes: Option<u64>,
}

impl ProcessStats {
    /// Read this process's CPU time and memory. Failures read as zero/absent: self-telemetry
    /// must never fail a scrape.
    #[must_use]
    pub fn read() -> Self {
        use nix::sys::resource::{UsageWho, getrusage};
        let usage = getrusage(UsageWho::RUSAGE_SELF).ok();
        let secs = |tv: nix::sys::time::TimeVal| {
            #[allow(clippy::cast_precision_loss)] // CPU seconds ≪ 2^53
            let s = tv.tv_sec() as f64 + f64::from(i32::try_from(tv.tv_usec()).unwrap_or(0)) / 1e6;
            s
        };
        let cpu_seconds = usage
            .as_ref()
            .map_or(0.0, |u| secs(u.user_time()) + secs(u.system_time()));
        let max_rss = usage
            .as_ref()
            .map_or(0, |u| u64::try_from(u.max_rss()).unwrap_or(0));
        // ru_maxrss is KiB on Linux and bytes on macOS (getrusage(2) on each).
        let max_rss_bytes = if cfg!(target_os = "macos") {
            max_rss
        } else {
            max_rss.saturating_mul(1024)
        };
        Self {
            cpu_seconds,
            max_rss_bytes,
            rss_bytes: current_rss(),
        }
    }
}

#[cfg(target_os = "linux")]
fn current_rss() -> Option<u64> {
    let statm = procfs::process::Process::myself().ok()?.statm().ok()?;
    Some(statm.resident.saturating_mul(procfs::page_size()))
}

#[cfg(not(target_os = "linux"))]
fn current_rss() -> Option<u64> {
    None
}

/// Renders the latest [`MetricsView`] and the bridge's own stats on each scrape.
#[derive(Debug)]
struct LedgerCollector {
    view: watch::Receiver<Arc<MetricsView>>,
    stats: Arc<BridgeStats>,
}

fn uj_to_joules(uj: u64) -> f64 {
    protocol::MicroJoules(uj).as_joules_f64()
}

/// Encode one metric family: its descriptor (name, help, unit, type from `def`) and its samples.
/// Counters and gauges differ only in the sample type, chosen from `def`.
fn family(
    encoder: &mut DescriptorEncoder<'_>,
    def: &MetricDef,
    samples: &[(Vec<(&'static str, String)>, f64)],
) -> Result<(), std::fmt::Error> {
    let unit = def.unit();
    let mut metric =
        encoder.encode_descriptor(def.base, def.help, unit.as_ref(), def.metric_type())?;
    let encode = |value: f64, m: MetricEncoder<'_>| match def.kind {
        Kind::Gauge => ConstGauge::new(value).encode(m),
        Kind::Counter | Kind::Info => ConstCounter::new(value).encode(m),
    };
    if let [(labels, value)] = samples
        && labels.is_empty()
    {
        // A single unlabelled sample: `name_total 1.0`, not `name_total{} 1.0`.
        return encode(*value, metric);
    }
    for (labels, value) in samples {
        encode(*value, metric.encode_family(labels)?)?;
    }
    Ok(())
}

#[allow(clippy::cast_precision_loss)] // counts ≪ 2^53, shown as floats by Prometheus anyway
fn count(v: u64) -> f64 {
    v as f64
}

impl Collector for LedgerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = Arc::clone(&self.view.borrow());
        let none = Vec::new;

        let energy: Vec<_> = view
            .containers
            .iter()
            .map(|c| (c.labels.pairs(), uj_to_joules(c.energy_uj)))
            .collect();
        family(&mut encoder, &CONTAINER_ENERGY, &energy)?;
        let cpu: Vec<_> = view
            .containers
            .iter()
            .map(|c| {
                (
                    c.labels.pairs(),
                    protocol::CpuMicros(c.cpu_us).as_secs_f64(),
                )
            })
            .collect();
        family(&mut encoder, &CONTAINER_CPU, &cpu)?;
        let power: Vec<_> = view
            .containers
            .iter()
            .filter_map(|c| c.power_w.map(|w| (c.labels.pairs(), w)))
            .collect();
        family(&mut encoder, &CONTAINER_POWER, &power)?;
        let buckets: Vec<_> = Bucket::ALL
            .iter()
            .map(|b| {
                let uj = view
                    .buckets
                    .iter()
                    .find(|(vb, _)| vb == b)
                    .map_or(0, |(_, uj)| *uj);
                (vec![("bucket", b.as_str().to_string())], uj_to_joules(uj))
            })
            .collect();
        family(&mut encoder, &BUCKET_ENERGY, &buckets)?;
        family(
            &mut encoder,
            &HOST_ENERGY,
            &[(none(), uj_to_joules(view.host_energy_uj))],
        )?;
        if let Some(w) = view.host_power_w {
            family(&mut encoder, &HOST_POWER, &[(none(), w)])?;
        }
        family(&mut encoder, &WINDOWS, &[(none(), count(view.windows))])?;
        family(
            &mut encoder,
            &DEGRADED_WINDOWS,
            &[(none(), count(view.degraded_windows))],
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                SOURCE_INFO.base,
                SOURCE_INFO.help,
                None,
                SOURCE_INFO.metric_type(),
            )?;
            let labels = vec![
                ("kind", view.source_kind.clone()),
                ("provenance", view.provenance.as_str().to_string()),
                ("policy", view.policy.as_str().to_string()),
            ];
            metric.encode_info(&labels)?;
        }
        let load = |a: &AtomicU64| count(a.load(Ordering::Relaxed));
        family(
            &mut encoder,
            &FRAMES_RECEIVED,
            &[(none(), load(&self.stats.frames_received))],
        )?;
        family(
            &mut encoder,
            &FRAMES_REJECTED,
            &[(none(), load(&self.stats.frames_rejected))],
        )?;
        family(
            &mut encoder,
            &CONNECTIONS,
            &[(none(), load(&self.stats.connections_accepted))],
        )?;
        family(
            &mut encoder,
            &CONNECTIONS_REFUSED,
            &[(none(), load(&self.stats.connections_refused))],
        )?;
        family(
            &mut encoder,
            &CONNECTIONS_OPEN,
            &[(none(), load(&self.stats.connections_open))],
        )?;
        let process = ProcessStats::read();
        family(&mut encoder, &PROCESS_CPU, &[(none(), process.cpu_seconds)])?;
        family(
            &mut encoder,
            &PROCESS_MAX_RSS,
            &[(none(), count(process.max_rss_bytes))],
        )?;
        if let Some(rss) = process.rss_bytes {
            family(&mut encoder, &PROCESS_RSS, &[(none(), count(rss))])?;
        }
        Ok(())
    }
}

/// The `/metrics` page: a registry holding the ledger collector.
#[derive(Debug)]
pub struct MetricsEndpoint {
    registry: Registry,
}

impl MetricsEndpoint {
    /// An endpoint rendering the latest view from `view` and the counters in `stats`.
    #[must_use]
    pub fn new(view: watch::Receiver<Arc<MetricsView>>, stats: Arc<BridgeStats>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(LedgerCollector { view, stats }));
        Self { registry }
    }

    /// The OpenMetrics text of the latest view.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding into a String cannot fail");
        out
    }
}

/// Errors of the metrics server.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// Binding the listen address failed.
    #[error("failed to listen for scrapes on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Bind the scrape address. A non-loopback address is allowed but logged: the page shows
/// container names and images.
///
/// # Errors
/// [`PrometheusError::Bind`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, PrometheusError> {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "Metrics endpoint listens beyond loopback; container names and images are visible to the network.");
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| PrometheusError::Bind { addr, source })
}

/// Serve `GET /metrics` on `listener` until `shutdown` is cancelled. Other paths get 404,
/// other methods 405. Per-connection failures end that connection only.
pub async fn serve(
    listener: TcpListener,
    endpoint: Arc<MetricsEndpoint>,
    shutdown: CancellationToken,
) {
    // Permits travel with the connection task; a burst of scrapers waits, nothing is dropped.
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let endpoint = Arc::clone(&endpoint);
                tokio::spawn(async move {
                    if let Err(error) = respond(stream, &endpoint).await {
                        tracing::debug!(%peer, %error, "Scrape connection failed.");
                    }
                    drop(permit);
                });
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "Accepting a scrape connection failed; retrying.");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn respond(mut stream: TcpStream, endpoint: &MetricsEndpoint) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0_u8; 1024];
        loop {
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if buf.len() >= MAX_REQUEST_BYTES {
                return Ok(false);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(false);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let complete = match head {
        Ok(Ok(complete)) => complete,
        Ok(Err(e)) => return Err(e),
        Err(_elapsed) => false,
    };
    let text = String::from_utf8_lossy(&buf);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if !complete {
        ("400 Bad Request", "text/plain", "bad request\n".to_string())
    } else if path != "/metrics" {
        (
            "404 Not Found",
            "text/plain",
            "not found; try /metrics\n".to_string(),
        )
    } else if method == "GET" || method == "HEAD" {
        ("200 OK", CONTENT_TYPE, endpoint.render())
    } else {
        (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_string(),
        )
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

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

    #[test]
    fn process_stats_see_this_process() {
        let s = ProcessStats::read();
        assert!(s.max_rss_bytes > 0);
        if cfg!(target_os = "linux") {
            assert!(s.rss_bytes.is_some_and(|b| b > 0));
        }
    }
}
