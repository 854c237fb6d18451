//! Prometheus/OpenMetrics exposition of the attribution ledger, and a tiny `/metrics` server.
//!
//! The pipeline publishes a [`LedgerView`] (cumulative per-container energy, buckets, last
//! window power) on a `tokio::sync::watch` channel; a scrape renders the latest view. A scrape
//! never triggers sampling or attribution (DESIGN.md §1; the Scaphandre failure of
//! docs/attribution.md §7). Only the bridge's own CPU and memory are read at scrape time
//! ([`process`]), as every Prometheus client library does for `process_*` metrics.
//!
//! Every metric name lives in [`metrics::METRICS`]; base units (joules, seconds, watts, bytes);
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
//! Modules: [`metrics`] declares every metric; [`process`] reads the bridge's own stats;
//! [`http`] is the minimal `/metrics` responder (bound to loopback unless the user asks
//! otherwise); this module encodes a view into OpenMetrics text ([`MetricsEndpoint`]).

pub mod http;
pub mod metrics;
pub mod process;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

pub use http::{PrometheusError, bind, serve};
use metrics::{
    BUCKET_ENERGY, CONNECTIONS, CONNECTIONS_OPEN, CONNECTIONS_REFUSED, CONTAINER_CPU,
    CONTAINER_ENERGY, CONTAINER_POWER, DEGRADED_WINDOWS, FRAMES_RECEIVED, FRAMES_REJECTED,
    HOST_ENERGY, HOST_POWER, Kind, PROCESS_CPU, PROCESS_MAX_RSS, PROCESS_RSS, SOURCE_INFO, WINDOWS,
};
pub use metrics::{CONTAINER_LABELS, METRICS, MetricDef};
use process::ProcessStats;

use crate::pipeline::{BucketKind, ContainerLabels, LedgerView};
use crate::sources::guest::stats::BridgeStats;

/// Default scrape address: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";

/// Content type of the OpenMetrics text format (what `prometheus-client` encodes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The label pairs of a container series, keys in [`CONTAINER_LABELS`] order.
fn label_pairs(l: &ContainerLabels) -> Vec<(&'static str, String)> {
    let values = [
        &l.vm,
        &l.container_id,
        &l.container_name,
        &l.compose_project,
        &l.compose_service,
        &l.image,
    ];
    CONTAINER_LABELS
        .iter()
        .zip(values)
        .map(|(k, v)| (*k, v.clone()))
        .collect()
}

/// Renders the latest [`LedgerView`] and the bridge's own stats on each scrape.
#[derive(Debug)]
struct LedgerCollector {
    view: watch::Receiver<Arc<LedgerView>>,
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
            .map(|c| (label_pairs(&c.labels), uj_to_joules(c.energy_uj)))
            .collect();
        family(&mut encoder, &CONTAINER_ENERGY, &energy)?;
        let cpu: Vec<_> = view
            .containers
            .iter()
            .map(|c| {
                (
                    label_pairs(&c.labels),
                    protocol::CpuMicros(c.cpu_us).as_secs_f64(),
                )
            })
            .collect();
        family(&mut encoder, &CONTAINER_CPU, &cpu)?;
        let power: Vec<_> = view
            .containers
            .iter()
            .filter_map(|c| c.power_w.map(|w| (label_pairs(&c.labels), w)))
            .collect();
        family(&mut encoder, &CONTAINER_POWER, &power)?;
        let buckets: Vec<_> = BucketKind::ALL
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
                (
                    "kind",
                    view.source_kind.map_or("none", |k| k.as_str()).to_string(),
                ),
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
    pub fn new(view: watch::Receiver<Arc<LedgerView>>, stats: Arc<BridgeStats>) -> Self {
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
