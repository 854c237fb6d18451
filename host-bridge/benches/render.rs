//! What a user waits for: rendering `/metrics` (every scrape) and the HTML report.
//!
//! Run: `cargo bench -p host-bridge --bench render`. Goals: a scrape of 500 containers renders
//! in well under 10 ms (a 1 s scrape interval leaves the bridge idle); the HTML of an hour of
//! 1 s windows with 20 containers renders in well under a second.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use host_bridge::journal::{PowerSourceKind, Provenance};
use host_bridge::pipeline::{BucketKind, ContainerLabels, ContainerView, IdlePolicy, LedgerView};
use host_bridge::report::html;
use host_bridge::report::model::{
    Bounded, BucketReport, ContainerReport, PowerSourceInfo, Quality, RecordingInfo, Report,
    SCHEMA_VERSION, SeriesPoint, Totals,
};
use host_bridge::sinks::prometheus::MetricsEndpoint;
use host_bridge::sources::guest::stats::BridgeStats;
use tokio::sync::watch;

fn view(containers: u64) -> LedgerView {
    let mut v = LedgerView::empty(
        Some(PowerSourceKind::Powermetrics),
        Provenance::Measured,
        IdlePolicy::Exclude,
    );
    for i in 0..containers {
        v.containers.push(ContainerView {
            labels: ContainerLabels {
                vm: "docker-desktop".into(),
                container_id: format!("{i:064x}"),
                container_name: format!("project-service{i}-1"),
                compose_project: "project".into(),
                compose_service: format!("service{i}"),
                image: format!("registry.example/image{i}:1.0"),
            },
            energy_uj: 1_000_000 * (i + 1),
            cpu_us: 500_000 * (i + 1),
            power_w: Some(0.5),
        });
    }
    v.buckets = BucketKind::ALL.iter().map(|b| (*b, 1_000_000)).collect();
    v.host_energy_uj = 9_000_000_000;
    v.host_power_w = Some(12.0);
    v
}

fn report(containers: u64, windows: u64) -> Report {
    let keys: Vec<String> = (0..containers).map(|i| format!("vm/{i:064x}")).collect();
    let series = (0..windows)
        .map(|w| {
            let t = f64::from(u32::try_from(w).expect("small"));
            SeriesPoint {
                t_start_s: t,
                t_end_s: t + 1.0,
                host_uj: 10_000_000,
                containers_uj: keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (k.clone(), 100_000 * (u64::try_from(i).expect("small") + 1)))
                    .collect(),
                cpu_us: BTreeMap::new(),
                buckets_uj: [(BucketKind::Idle, 2_000_000)].into_iter().collect(),
                degraded: false,
            }
        })
        .collect();
    Report {
        schema_version: SCHEMA_VERSION,
        generated_by: "bench".into(),
        recording: RecordingInfo::default(),
        power_source: PowerSourceInfo {
            kind: "powermetrics".into(),
            provenance: Provenance::Measured,
            reason: "bench".into(),
        },
        policy: IdlePolicy::Exclude,
        vm_share_basis: "cpu-time".into(),
        window_s: 1.0,
        duration_s: 3_600.0,
        start_unix_ns: 0,
        grid_intensity_g_per_kwh: None,
        totals: Totals {
            host: Bounded::exact(10_000_000 * windows),
            vm: Bounded::exact(1),
            containers: Bounded::exact(1),
            buckets: vec![BucketReport {
                bucket: BucketKind::Idle,
                energy: Bounded::exact(2_000_000 * windows),
                carbon_g: None,
            }],
            carbon_g: None,
        },
        containers: keys
            .iter()
            .map(|k| ContainerReport {
                key: k.clone(),
                vm: "vm".into(),
                id: k[3..].to_string(),
                name: k[3..15].to_string(),
                image: "image".into(),
                compose_project: None,
                compose_service: None,
                energy: Bounded::exact(1),
                share: 0.05,
                cpu_us: 1,
                carbon_g: None,
            })
            .collect(),
        quality: Quality::default(),
        series,
    }
}

fn bench(c: &mut Criterion) {
    let (_tx, rx) = watch::channel(Arc::new(view(500)));
    let endpoint = MetricsEndpoint::new(rx, Arc::new(BridgeStats::default()));
    c.bench_function("metrics_render_500_containers", |b| {
        b.iter(|| black_box(endpoint.render()));
    });
    let r = report(20, 3_600);
    c.bench_function("html_report_20_containers_3600_windows", |b| {
        b.iter(|| black_box(html::to_html(&r)));
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
