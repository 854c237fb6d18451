//! The `/metrics` page read back by a real exposition-format parser (Python
//! `prometheus_client`'s OpenMetrics parser, installed by scripts/setup-test-env.sh), served
//! over a real TCP socket, and counter continuity across a bridge restart.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use host_bridge::report::model::Report;
use host_bridge::sinks::prometheus::{
    self, BridgeStats, CONTENT_TYPE, METRICS, MetricsEndpoint, MetricsView, PROCESS_RSS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::report_support::mac_report;

/// One parsed sample.
#[derive(Debug, Clone, serde::Deserialize)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One parsed family.
#[derive(Debug, Clone, serde::Deserialize)]
struct Family {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    unit: String,
    samples: Vec<Sample>,
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
text = sys.stdin.read()
out = []
for f in text_string_to_metric_families(text):
    out.append({"name": f.name, "type": f.type, "unit": f.unit,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
"#;

/// Parse OpenMetrics text with the reference Python parser. Panics with the parser's error when
/// the text is not valid OpenMetrics.
fn parse(text: &str) -> Vec<Family> {
    testkit::require_python_module("prometheus_client.openmetrics.parser", "prometheus-client");
    let mut child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejected the exposition:\n{}\n---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn endpoint(
    view: MetricsView,
) -> (
    MetricsEndpoint,
    watch::Sender<Arc<MetricsView>>,
    Arc<BridgeStats>,
) {
    let (tx, rx) = watch::channel(Arc::new(view));
    let stats = Arc::new(BridgeStats::default());
    (MetricsEndpoint::new(rx, Arc::clone(&stats)), tx, stats)
}

fn value(families: &[Family], sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families
        .iter()
        .flat_map(|f| &f.samples)
        .find(|s| {
            s.name == sample
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[test]
#[ignore = "needs Python's prometheus-client parser (scripts/setup-test-env.sh)"]
fn prometheus_exposition_parses_and_carries_the_ledger() {
    let report = mac_report();
    let (endpoint, _tx, stats) = endpoint(MetricsView::from_report(&report));
    stats.frames_received.store(42, Ordering::Relaxed);
    stats.frames_rejected.store(3, Ordering::Relaxed);
    stats.connections_accepted.store(2, Ordering::Relaxed);
    stats.connections_open.store(1, Ordering::Relaxed);
    let text = endpoint.render();
    assert!(
        !text.contains("{}"),
        "unlabelled samples carry no empty braces:\n{text}"
    );
    let families = parse(&text);

    // Every declared metric is emitted (the RSS gauge exists on Linux only).
    for def in METRICS {
        if def.base == PROCESS_RSS.base && !cfg!(target_os = "linux") {
            continue;
        }
        let family = def.family();
        assert!(
            families.iter().any(|f| f.name == family),
            "{family} missing from the exposition"
        );
    }
    let energy = families
        .iter()
        .find(|f| f.name == "joulebridge_container_energy_joules")
        .unwrap();
    assert_eq!(energy.kind, "counter");
    assert_eq!(energy.unit, "joules");
    for c in &report.containers {
        let labels = [
            ("vm", c.vm.as_str()),
            ("container_id", c.id.as_str()),
            ("container_name", c.name.as_str()),
            ("compose_project", c.compose_project.as_deref().unwrap()),
            ("compose_service", c.compose_service.as_deref().unwrap()),
            ("image", c.image.as_str()),
        ];
        let joules = value(
            &families,
            "joulebridge_container_energy_joules_total",
            &labels,
        )
        .unwrap();
        #[allow(clippy::cast_precision_loss)]
        let expected = c.energy.energy_uj as f64 / 1e6;
        assert!(
            (joules - expected).abs() < 1e-9,
            "{}: {joules} vs {expected}",
            c.name
        );
        let cpu = value(
            &families,
            "joulebridge_container_cpu_seconds_total",
            &labels,
        )
        .unwrap();
        #[allow(clippy::cast_precision_loss)]
        let expected_cpu = c.cpu_us as f64 / 1e6;
        assert!((cpu - expected_cpu).abs() < 1e-9);
        assert!(value(&families, "joulebridge_container_power_watts", &labels).is_some());
    }
    for bucket in [
        "vm-system",
        "vm-overhead",
        "host-other",
        "idle",
        "unattributed",
    ] {
        assert!(
            value(
                &families,
                "joulebridge_bucket_energy_joules_total",
                &[("bucket", bucket)]
            )
            .is_some(),
            "{bucket}"
        );
    }
    let idle = value(
        &families,
        "joulebridge_bucket_energy_joules_total",
        &[("bucket", "idle")],
    )
    .unwrap();
    assert!((idle - 3.0).abs() < 1e-9, "10 windows × 0.3 J: {idle}");
    assert_eq!(
        value(&families, "joulebridge_frames_received_total", &[]),
        Some(42.0)
    );
    assert_eq!(
        value(&families, "joulebridge_frames_rejected_total", &[]),
        Some(3.0)
    );
    assert_eq!(
        value(&families, "joulebridge_agent_connections_open", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &families,
            "joulebridge_power_source_info",
            &[
                ("kind", "powermetrics"),
                ("provenance", "measured"),
                ("policy", "exclude")
            ]
        ),
        Some(1.0)
    );
    assert!(value(&families, "joulebridge_process_cpu_seconds_total", &[]).unwrap() > 0.0);
    assert!(
        value(
            &families,
            "joulebridge_process_max_resident_memory_bytes",
            &[]
        )
        .unwrap()
            > 0.0
    );
}

/// Cut a report after `windows` windows, as if the bridge had been stopped then: the ledger
/// rebuilt from a recording is the sum of the windows it holds.
fn prefix(report: &Report, windows: usize) -> Report {
    let mut cut = report.clone();
    cut.series.truncate(windows);
    for c in &mut cut.containers {
        let e: u64 = cut.series.iter().map(|p| p.containers_uj[&c.key]).sum();
        c.energy = host_bridge::report::model::Bounded::exact(e);
        c.cpu_us = cut.series.iter().map(|p| p.cpu_us[&c.key]).sum();
    }
    for b in &mut cut.totals.buckets {
        let e: u64 = cut.series.iter().map(|p| p.buckets_uj[&b.bucket]).sum();
        b.energy = host_bridge::report::model::Bounded::exact(e);
    }
    cut.totals.host =
        host_bridge::report::model::Bounded::exact(cut.series.iter().map(|p| p.host_uj).sum());
    cut.quality.windows = u64::try_from(windows).unwrap();
    cut
}

fn counters(families: &[Family]) -> BTreeMap<(String, Vec<(String, String)>), f64> {
    families
        .iter()
        .filter(|f| f.kind == "counter" && f.name.contains("energy"))
        .flat_map(|f| &f.samples)
        .filter(|s| s.name.ends_with("_total"))
        .map(|s| {
            (
                (
                    s.name.clone(),
                    s.labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                s.value,
            )
        })
        .collect()
}

#[test]
#[ignore = "needs Python's prometheus-client parser (scripts/setup-test-env.sh)"]
fn prometheus_counters_continue_across_a_restart_on_the_same_recording() {
    let report = mac_report();
    // Before the restart: 6 windows recorded, published live window by window.
    let (live, tx, _) = endpoint(MetricsView::from_report(&prefix(&report, 1)));
    let mut last = counters(&parse(&live.render()));
    for w in 2..=6 {
        tx.send(Arc::new(MetricsView::from_report(&prefix(&report, w))))
            .unwrap();
        let now = counters(&parse(&live.render()));
        for (series, v) in &now {
            assert!(
                *v >= last.get(series).copied().unwrap_or(0.0),
                "{series:?} went down"
            );
        }
        last = now;
    }
    // A new process reopens the recording: its ledger starts from everything recorded, so no
    // counter goes down (no spurious reset), and the remaining windows add on top.
    let (restarted, _tx2, _) = endpoint(MetricsView::from_report(&prefix(&report, 6)));
    let after = counters(&parse(&restarted.render()));
    assert_eq!(
        after, last,
        "a restart on the same recording must continue every counter"
    );
    let (finished, _tx3, _) = endpoint(MetricsView::from_report(&report));
    for (series, v) in counters(&parse(&finished.render())) {
        assert!(v >= after[&series], "{series:?}");
    }
    // A new recording starts lower: Prometheus reads a decrease as a counter reset.
    let (fresh, _tx4, _) = endpoint(MetricsView::from_report(&prefix(&report, 1)));
    let reset = counters(&parse(&fresh.render()));
    assert!(reset.iter().any(|(s, v)| *v < after[s]));
}

async fn http(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
#[ignore = "needs Python's prometheus-client parser (scripts/setup-test-env.sh)"]
async fn prometheus_server_answers_scrapes_over_tcp() {
    let (endpoint, tx, stats) = endpoint(MetricsView::from_report(&mac_report()));
    let listener = prometheus::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(prometheus::serve(
        listener,
        Arc::new(endpoint),
        shutdown.clone(),
    ));

    let ok = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (head, body) = ok.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains(CONTENT_TYPE), "{head}");
    assert!(body.ends_with("# EOF\n"));
    let families = parse(body);
    assert!(
        families
            .iter()
            .any(|f| f.name == "joulebridge_host_energy_joules")
    );

    // A new view published by the pipeline shows up in the next scrape; the scrape itself
    // changes nothing.
    stats.frames_received.store(7, Ordering::Relaxed);
    tx.send(Arc::new(MetricsView::from_report(&prefix(
        &mac_report(),
        2,
    ))))
    .unwrap();
    let again = http(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
    let families = parse(again.split_once("\r\n\r\n").unwrap().1);
    assert_eq!(
        value(&families, "joulebridge_frames_received_total", &[]),
        Some(7.0)
    );
    assert_eq!(
        value(&families, "joulebridge_windows_total", &[]),
        Some(2.0)
    );

    let missing = http(addr, "GET / HTTP/1.1\r\n\r\n").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let post = http(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");

    shutdown.cancel();
    server.await.unwrap();
}

#[test]
#[ignore = "needs Python's prometheus-client parser (scripts/setup-test-env.sh)"]
fn grafana_dashboard_queries_only_metrics_the_bridge_emits() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana/joulebridge-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let (endpoint, _tx, _) = endpoint(MetricsView::from_report(&mac_report()));
    let emitted: std::collections::BTreeSet<String> = parse(&endpoint.render())
        .into_iter()
        .flat_map(|f| f.samples)
        .map(|s| s.name)
        .collect();
    let mut queried = 0;
    let exprs = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap().to_string());
    for expr in exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("joulebridge_") {
                queried += 1;
                assert!(
                    emitted.contains(word),
                    "dashboard queries {word}, never emitted"
                );
            }
        }
    }
    assert!(queried >= 12, "only {queried} metric references found");
}
