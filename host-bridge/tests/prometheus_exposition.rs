//! The `/metrics` page read back by a real exposition-format parser (Python
//! `prometheus_client`'s OpenMetrics parser, installed by scripts/setup-test-env.sh), served
//! over a real TCP socket, and counter continuity across a bridge restart. Every view is built
//! the way `serve` builds it: recorded entries pushed through [`LiveLedger`].

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use host_bridge::journal::RecordEntry;
use host_bridge::pipeline::{BucketKind, LedgerView, LiveLedger, PipelineConfig};
use host_bridge::sinks::prometheus::metrics::PROCESS_RSS;
use host_bridge::sinks::prometheus::{self, CONTENT_TYPE, METRICS, MetricsEndpoint};
use host_bridge::sources::guest::stats::BridgeStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::report_e2e::entries_with_db;
use crate::support;

/// The recording the views are made of: one VM, two compose containers, RAPL power.
fn recorded() -> Vec<RecordEntry> {
    entries_with_db(100)
}

/// The live ledger after the first `n` recorded entries (what a bridge that recorded them
/// publishes, whether it ran all along or was restarted on the recording).
fn ledger_after(entries: &[RecordEntry], n: usize) -> LiveLedger {
    let mut ledger = LiveLedger::new(PipelineConfig::default()).unwrap();
    for e in &entries[..n] {
        ledger.push(e);
    }
    ledger
}

/// The view a bridge publishes after the first `n` recorded entries.
fn view_after(entries: &[RecordEntry], n: usize) -> LedgerView {
    support::view_of(&entries[..n], PipelineConfig::default())
}

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
    view: LedgerView,
) -> (
    MetricsEndpoint,
    watch::Sender<Arc<LedgerView>>,
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
    let entries = recorded();
    let ledger = ledger_after(&entries, entries.len());
    let (endpoint, _tx, stats) = endpoint(ledger.view());
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
    let totals = ledger.engine().ledger();
    assert!(totals.containers().count() >= 2);
    for (key, c) in totals.containers() {
        let meta = c
            .meta
            .as_ref()
            .expect("the recording names every container");
        let labels = [
            ("vm", key.vm.as_str()),
            ("container_id", key.id.as_str()),
            ("container_name", meta.name.as_str()),
            ("compose_project", meta.compose_project.as_deref().unwrap()),
            ("compose_service", meta.compose_service.as_deref().unwrap()),
            ("image", meta.image.as_str()),
        ];
        let joules = value(
            &families,
            "joulebridge_container_energy_joules_total",
            &labels,
        )
        .unwrap();
        let expected = c.energy.as_joules_f64();
        assert!(
            (joules - expected).abs() < 1e-9,
            "{}: {joules} vs {expected}",
            meta.name
        );
        let cpu = value(
            &families,
            "joulebridge_container_cpu_seconds_total",
            &labels,
        )
        .unwrap();
        assert!((cpu - c.cpu.as_secs_f64()).abs() < 1e-9);
        assert!(value(&families, "joulebridge_container_power_watts", &labels).is_some());
    }
    for bucket in BucketKind::ALL {
        let recorded: u64 = totals
            .buckets()
            .filter(|(b, _)| b.kind() == bucket)
            .map(|(_, uj)| uj.0)
            .sum();
        let exposed = value(
            &families,
            "joulebridge_bucket_energy_joules_total",
            &[("bucket", bucket.as_str())],
        )
        .unwrap_or_else(|| panic!("{} missing", bucket.as_str()));
        assert!(
            (exposed - protocol::MicroJoules(recorded).as_joules_f64()).abs() < 1e-9,
            "{}: {exposed}",
            bucket.as_str()
        );
    }
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
                ("kind", "rapl"),
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
    let entries = recorded();
    // Before the restart: the recording up to its third closed window (of four), its views
    // published live window by window.
    let cut = (1..=entries.len())
        .find(|&n| view_after(&entries, n).windows == 3)
        .expect("the recording closes three windows");
    let mut ledger = ledger_after(&entries, 0);
    let (live, tx, _) = endpoint(ledger.view());
    let mut last = counters(&parse(&live.render()));
    for entry in &entries[..cut] {
        if !ledger.push(entry) {
            continue;
        }
        tx.send(Arc::new(ledger.view())).unwrap();
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
    assert_eq!(ledger.view().windows, 3);
    let (restarted, _tx2, _) = endpoint(view_after(&entries, cut));
    let after = counters(&parse(&restarted.render()));
    assert_eq!(
        after, last,
        "a restart on the same recording must continue every counter"
    );
    let (finished, _tx3, _) = endpoint(view_after(&entries, entries.len()));
    for (series, v) in counters(&parse(&finished.render())) {
        assert!(v >= after[&series], "{series:?}");
    }
    // A new recording starts lower: Prometheus reads a decrease as a counter reset.
    let first_window = (1..entries.len())
        .find(|&n| view_after(&entries, n).windows == 1)
        .unwrap();
    let (fresh, _tx4, _) = endpoint(view_after(&entries, first_window));
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
    let entries = recorded();
    let (endpoint, tx, stats) = endpoint(view_after(&entries, entries.len() / 2));
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
    let view = view_after(&entries, entries.len());
    let windows = view.windows;
    tx.send(Arc::new(view)).unwrap();
    let again = http(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
    let families = parse(again.split_once("\r\n\r\n").unwrap().1);
    assert_eq!(
        value(&families, "joulebridge_frames_received_total", &[]),
        Some(7.0)
    );
    assert_eq!(
        value(&families, "joulebridge_windows_total", &[]),
        Some(windows as f64)
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
    let entries = recorded();
    let (endpoint, _tx, _) = endpoint(view_after(&entries, entries.len()));
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
