//! Replay of recorded powermetrics captures, at recorded pace (paused clock) and as fast as
//! possible.

use std::path::PathBuf;

use host_bridge::sources::power::replay::{Pace, ReplayConfig, ReplayError, ReplaySource};
use host_bridge::sources::power::{MonoClock, PowerEvent, PowerOutputs, PowerSample, VmSelector};
use tokio_util::sync::CancellationToken;

use crate::power_fixtures::fixture;

async fn replay(
    path: PathBuf,
    pace: Pace,
) -> (Result<(), ReplayError>, Vec<PowerSample>, Vec<PowerEvent>) {
    let (out, mut samples, mut events) = PowerOutputs::channel(4);
    let source = ReplaySource::new(
        ReplayConfig {
            path,
            pace,
            vm: VmSelector::macos_default(),
        },
        MonoClock::new(),
    );
    let task = tokio::spawn(source.run(out, CancellationToken::new()));
    let mut got = Vec::new();
    while let Some(sample) = samples.recv().await {
        got.push(sample);
    }
    let result = task.await.expect("replay task joins");
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    (result, got, seen)
}

#[tokio::test]
async fn replay_fast_lays_windows_end_to_end() {
    let (result, samples, events) = replay(
        fixture("apple-silicon-docker-3x1s.plist"),
        Pace::AsFastAsPossible,
    )
    .await;
    result.expect("replays");
    assert_eq!(samples.len(), 3);
    for pair in samples.windows(2) {
        assert_eq!(pair[1].end.0 - pair[0].end.0, pair[1].window_ns);
    }
    assert!(
        events.iter().any(
            |e| matches!(e, PowerEvent::SourceEnded { reason } if reason.contains("3 samples"))
        )
    );
}

#[tokio::test(start_paused = true)]
async fn replay_recorded_pace_waits_elapsed_between_documents() {
    let started = tokio::time::Instant::now();
    let (result, samples, _) =
        replay(fixture("apple-silicon-docker-3x1s.plist"), Pace::Recorded).await;
    result.expect("replays");
    assert_eq!(samples.len(), 3);
    let total: u64 = samples.iter().map(|s| s.window_ns).sum();
    let waited = u64::try_from(started.elapsed().as_nanos()).expect("fits");
    assert!(
        waited >= total,
        "waited {waited} ns for {total} ns of windows"
    );
    for pair in samples.windows(2) {
        assert!(pair[1].end.0 - pair[0].end.0 >= pair[1].window_ns);
    }
}

#[tokio::test]
async fn replay_truncated_capture_drops_last_document() {
    let (result, samples, events) = replay(
        fixture("apple-silicon-truncated-last.plist"),
        Pace::AsFastAsPossible,
    )
    .await;
    result.expect("replays");
    assert_eq!(samples.len(), 2);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PowerEvent::IncompleteDocumentDropped { .. }))
    );
}

#[tokio::test]
async fn replay_text_capture_is_refused() {
    let (result, samples, _) =
        replay(fixture("text-format-1x1s.txt"), Pace::AsFastAsPossible).await;
    let err = result.expect_err("text refused");
    assert!(matches!(err, ReplayError::TextFormat { .. }));
    assert!(err.to_string().contains("--format plist"));
    assert!(samples.is_empty());
}

#[tokio::test]
async fn replay_missing_file_is_a_read_error() {
    let (result, _, _) = replay(fixture("does-not-exist.plist"), Pace::AsFastAsPossible).await;
    assert!(matches!(result, Err(ReplayError::Read { .. })));
}

#[tokio::test]
#[ignore = "needs ../shared/fixtures/powermetrics"]
async fn replay_real_gmt_capture_yields_every_sample() {
    let path = testkit::shared(
        "fixtures/powermetrics/m1pro-macos14-default+process-coalition-energy-io-gpu-netstats-29x130ms.plist",
    );
    let (result, samples, events) = replay(path, Pace::AsFastAsPossible).await;
    result.expect("replays");
    assert_eq!(samples.len(), 29);
    assert!(
        samples
            .iter()
            .all(|s| s.vm_share.as_ref().is_some_and(|v| v.vm_cpu_ns > 0))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PowerEvent::VmFound { .. }))
    );
}
