//! `/metrics` of a real bridge (listeners, recorder, live attribution) across a restart on the
//! same recording: counters continue from what was recorded, as Prometheus expects.

use std::collections::BTreeMap;
use std::path::Path;

use host_bridge::cli::AttributionArgs;
use host_bridge::cli::{PowerArgs, ServeArgs};
use host_bridge::config::Config;
use host_bridge::pipeline::IdlePolicy;
use host_bridge::serve::Bridge;
use host_bridge::serve::live;
use tokio_util::sync::CancellationToken;

use crate::report_e2e::write_recording;
use crate::support::scrape;

fn serve_args(record: &Path) -> (Config, AttributionArgs) {
    let attribution = AttributionArgs {
        policy: IdlePolicy::Exclude,
        window: 5.0,
        idle_watts: None,
        grid_intensity: None,
    };
    let args = ServeArgs {
        listen: vec!["tcp://127.0.0.1:0".into()],
        record: Some(record.to_path_buf()),
        max_connections: 4,
        auth_token: None,
        no_live: true,
        frame_timeout_ms: 30_000,
        idle_timeout_s: 120,
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        no_metrics: false,
        attribution: attribution.clone(),
        power: PowerArgs::default(),
    };
    let mut config = Config::try_from(args).unwrap();
    // The recording under test is written by the test: no live host power on top of it.
    config.power = None;
    (config, attribution)
}

/// `name{labels} value` of every energy counter sample.
fn energy_counters(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| l.contains("_energy_joules_total"))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// Run one bridge "process" on `record`; returns the energy counters it exposes.
async fn one_run(record: &Path) -> BTreeMap<String, f64> {
    let (config, attribution) = serve_args(record);
    let mut bridge = Bridge::bind(config).await.unwrap();
    let live = live::attach(
        &mut bridge,
        record,
        attribution.pipeline_config().unwrap(),
        Some(live::MetricsBind {
            addr: "127.0.0.1:0".parse().unwrap(),
            required: true,
        }),
    )
    .await
    .unwrap();
    let addr = live.metrics_addr.expect("metrics are served");
    let stop = CancellationToken::new();
    let task = tokio::spawn(bridge.run(stop.clone().cancelled_owned()));
    let body = scrape(addr).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    live.stop().await.unwrap();
    energy_counters(&body)
}

#[tokio::test]
async fn prometheus_counters_continue_after_a_real_bridge_restart() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("run.jbr");
    write_recording(&record);

    let first = one_run(&record).await;
    let host = first
        .iter()
        .find(|(k, _)| k.starts_with("joulebridge_host_energy_joules_total"))
        .map(|(_, v)| *v)
        .unwrap();
    // The engine replayed the recording: the closed windows' host energy is exposed (the run
    // recorded 40 J/s … 508 J in all; windows still open are not yet attributed).
    assert!(host > 100.0, "host energy {host} J");
    let web = first
        .iter()
        .find(|(k, _)| k.contains("compose_service=\"web\""))
        .map(|(_, v)| *v)
        .unwrap();
    assert!(web > 0.0);

    // A restarted bridge reopens the same recording (appending a new Session): every counter
    // continues, none goes down, so Prometheus sees no reset.
    let second = one_run(&record).await;
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>()
    );
    for (series, v) in &first {
        assert!(second[series] >= *v, "{series}: {} < {v}", second[series]);
    }

    // A bridge on a new recording starts from zero: a reset, which rate()/increase() handle.
    let fresh = one_run(&dir.path().join("new.jbr")).await;
    assert!(
        fresh
            .iter()
            .all(|(k, v)| *v <= first.get(k).copied().unwrap_or(f64::MAX)),
        "{fresh:?}"
    );
}

#[tokio::test]
async fn prometheus_busy_default_address_leaves_the_bridge_running() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("run.jbr");
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let cfg = serve_args(&record).1.pipeline_config().unwrap();

    // The default address taken: the bridge records on without /metrics.
    let (config, _) = serve_args(&record);
    let mut bridge = Bridge::bind(config).await.unwrap();
    let live = live::attach(
        &mut bridge,
        &record,
        cfg,
        Some(live::MetricsBind {
            addr,
            required: false,
        }),
    )
    .await
    .unwrap();
    assert_eq!(live.metrics_addr, None);
    drop(bridge);
    live.stop().await.unwrap();

    // An address the user named: failing to bind it is an error.
    let (config, _) = serve_args(&dir.path().join("other.jbr"));
    let mut bridge = Bridge::bind(config).await.unwrap();
    let err = live::attach(
        &mut bridge,
        &dir.path().join("other.jbr"),
        cfg,
        Some(live::MetricsBind {
            addr,
            required: true,
        }),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains(&addr.to_string()), "{err:#}");
}
