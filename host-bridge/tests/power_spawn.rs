//! The real subprocess path: a stand-in `powermetrics` shell script written by each test, put
//! first on the child's `PATH`, streams a fixture with delays, dies mid-document, or prints the
//! permission error; the source must cope as documented.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use host_bridge::sources::power::powermetrics::spawn::{
    PowermetricsConfig, PowermetricsError, PowermetricsSource, Privilege,
};
use host_bridge::sources::power::{MonoClock, PowerEvent, PowerOutputs, PowerSample, VmSelector};
use tokio::sync::mpsc::Receiver;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::power_fixtures::fixture;

/// Upper bound for any wait; the stand-in's delays are tens of ms.
const WAIT: Duration = Duration::from_secs(30);

/// Splits a fixture into one file per document (`doc0`, `doc1`, …) in `dir`, with every
/// window shortened to 50 ms so that a restart of a few hundred ms leaves a real gap between
/// the last window before it and the first after it.
fn write_docs(dir: &Path, name: &str) -> usize {
    let text = std::fs::read_to_string(fixture(name)).expect("fixture");
    let docs: Vec<&str> = text.split('\0').filter(|d| !d.is_empty()).collect();
    for (i, doc) in docs.iter().enumerate() {
        let key = "<key>elapsed_ns</key><integer>";
        let start = doc.find(key).expect("elapsed_ns key") + key.len();
        let end = start + doc[start..].find('<').expect("end of integer");
        let short = format!("{}50000000{}", &doc[..start], &doc[end..]);
        std::fs::write(dir.join(format!("doc{i}")), short).expect("write doc");
    }
    docs.len()
}

/// Writes `powermetrics` into `dir` and returns a PATH with `dir` first.
fn stand_in(dir: &Path, body: &str) -> OsString {
    let script = dir.join("powermetrics");
    let text = format!(
        "#!/bin/sh\ncd '{}'\nprintf '%s\\n' \"$@\" > args.txt\n{body}\n",
        dir.display()
    );
    std::fs::write(&script, text).expect("write stand-in");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut path = OsString::from(dir);
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    path
}

fn config(path: OsString) -> PowermetricsConfig {
    PowermetricsConfig {
        search_path: Some(path),
        interval: Duration::from_millis(100),
        macos_major: Some(14),
        privilege: Privilege::Direct,
        vm: VmSelector::macos_default(),
        restart_backoff: Duration::from_millis(20),
        max_restart_backoff: Duration::from_millis(100),
        max_failures: 3,
        ..PowermetricsConfig::default()
    }
}

async fn next_sample(rx: &mut Receiver<PowerSample>) -> PowerSample {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("sample in time")
        .expect("channel open")
}

async fn wait_event(
    rx: &mut Receiver<PowerEvent>,
    mut want: impl FnMut(&PowerEvent) -> bool,
) -> (PowerEvent, Vec<PowerEvent>) {
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("event in time; seen {seen:?}"))
            .expect("channel open");
        if want(&event) {
            return (event, seen);
        }
        seen.push(event);
    }
}

/// Cancels the running source and checks that it stops cleanly, in time.
async fn cancel_and_join(
    cancel: &CancellationToken,
    task: JoinHandle<Result<(), PowermetricsError>>,
) {
    cancel.cancel();
    let result = tokio::time::timeout(WAIT, task)
        .await
        .expect("stops")
        .expect("joins");
    assert!(result.is_ok(), "{result:?}");
}

/// Runs the source on the stand-in at `path`, never cancelled, until it returns by itself.
async fn run_uncancelled(path: OsString, out: PowerOutputs) -> Result<(), PowermetricsError> {
    tokio::time::timeout(
        WAIT,
        PowermetricsSource::new(config(path), MonoClock::new()).run(out, CancellationToken::new()),
    )
    .await
    .expect("returns")
}

#[tokio::test]
async fn spawn_streams_documents_with_delays_and_stops_on_cancel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = write_docs(dir.path(), "apple-silicon-docker-3x1s.plist");
    // NUL before each document but the first, none after the last (as recent powermetrics
    // writes it): every document must arrive while the child is still running.
    let path = stand_in(
        dir.path(),
        "sep=''\nfor f in doc*; do printf \"$sep\"; cat \"$f\"; sep='\\000'; sleep 0.05; done\n\
         exec sleep 60",
    );
    let (out, mut samples, mut events) = PowerOutputs::channel(8);
    let cancel = CancellationToken::new();
    let clock = MonoClock::new();
    let task = tokio::spawn(PowermetricsSource::new(config(path), clock).run(out, cancel.clone()));
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(next_sample(&mut samples).await);
    }
    assert_eq!(got[0].window_ns, 50_000_000);
    assert!(
        got.windows(2).all(|w| w[0].end <= w[1].end),
        "arrival stamps are monotonic"
    );
    assert!(got[0].end.0 > 0 && got[2].end <= clock.now());
    let (found, _) = wait_event(&mut events, |e| matches!(e, PowerEvent::VmFound { .. })).await;
    assert!(
        matches!(found, PowerEvent::VmFound { matched } if matched.contains("com.docker.docker"))
    );
    cancel_and_join(&cancel, task).await;
    let args = std::fs::read_to_string(dir.path().join("args.txt")).expect("args recorded");
    let args: Vec<&str> = args.lines().collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--samplers", "cpu_power,gpu_power,ane_power,tasks"]),
        "{args:?}"
    );
    assert!(args.windows(2).any(|w| w == ["--format", "plist"]));
    assert!(args.windows(2).any(|w| w == ["--sample-rate", "100"]));
    assert!(args.contains(&"--show-process-coalition") && args.contains(&"--show-process-energy"));
}

#[tokio::test]
async fn spawn_child_dying_mid_document_restarts_and_records_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_docs(dir.path(), "apple-silicon-docker-3x1s.plist");
    // First run: one document, half of the next, a stderr line, then death. Later runs: all
    // documents, then stay alive.
    let path = stand_in(
        dir.path(),
        "if [ ! -e died ]; then\n  touch died\n  cat doc0; printf '\\000'\n  head -c 700 doc1\n  \
         echo 'powermetrics: simulated crash' >&2\n  exit 3\nfi\n\
         sleep 0.2\nfor f in doc*; do cat \"$f\"; printf '\\000'; done\nexec sleep 60",
    );
    let (out, mut samples, mut events) = PowerOutputs::channel(8);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(
        PowermetricsSource::new(config(path), MonoClock::new()).run(out, cancel.clone()),
    );
    let first = next_sample(&mut samples).await;
    let (restart, before) = wait_event(&mut events, |e| {
        matches!(e, PowerEvent::SourceRestarted { .. })
    })
    .await;
    assert!(
        before
            .iter()
            .any(|e| matches!(e, PowerEvent::IncompleteDocumentDropped { bytes: 700 })),
        "{before:?}"
    );
    let PowerEvent::SourceRestarted { attempt, reason } = restart else {
        unreachable!()
    };
    assert_eq!(attempt, 1);
    assert!(
        reason.contains("simulated crash") && reason.contains('3'),
        "{reason}"
    );
    let second = next_sample(&mut samples).await;
    let (gap, _) = wait_event(&mut events, |e| matches!(e, PowerEvent::Gap { .. })).await;
    let PowerEvent::Gap { from, to, .. } = gap else {
        unreachable!()
    };
    assert_eq!(from, first.end);
    assert_eq!(to.0, second.end.0.saturating_sub(second.window_ns));
    assert!(to > from, "the restart took time: {from:?} → {to:?}");
    cancel_and_join(&cancel, task).await;
}

#[tokio::test]
async fn spawn_permission_error_says_how_to_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = stand_in(
        dir.path(),
        "echo 'powermetrics must be invoked as the superuser'\nexit 1",
    );
    let (out, _samples, mut events) = PowerOutputs::channel(8);
    let result = run_uncancelled(path, out).await;
    let err = result.expect_err("not root");
    assert!(matches!(err, PowermetricsError::NotRoot { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("sudo") && message.contains("install-powermetrics-sudoers.sh"),
        "{message}"
    );
    assert!(message.contains("superuser"), "{message}");
    let (ended, before) =
        wait_event(&mut events, |e| matches!(e, PowerEvent::SourceEnded { .. })).await;
    assert!(
        before.iter().any(
            |e| matches!(e, PowerEvent::SourceWarning { message } if message.contains("superuser"))
        ),
        "{before:?}"
    );
    assert!(
        !before
            .iter()
            .any(|e| matches!(e, PowerEvent::IncompleteDocumentDropped { .. }))
    );
    assert!(matches!(ended, PowerEvent::SourceEnded { reason } if reason.contains("root")));
}

#[tokio::test]
async fn spawn_gives_up_after_repeated_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = stand_in(dir.path(), "echo 'boom' >&2\nexit 1");
    let (out, _samples, _events) = PowerOutputs::channel(64);
    let result = run_uncancelled(path, out).await;
    let err = result.expect_err("gives up");
    assert!(
        matches!(&err, PowermetricsError::GaveUp { failures: 3, last } if last.contains("boom")),
        "{err:?}"
    );
}

#[tokio::test]
#[ignore = "needs ../shared/fixtures/powermetrics"]
async fn spawn_streams_real_capture() {
    let capture = testkit::shared(
        "fixtures/powermetrics/m1pro-macos14-default+process-coalition-energy-io-gpu-netstats-29x130ms.plist",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let body = format!(
        "head -c 1000000 '{0}'; sleep 0.05; tail -c +1000001 '{0}'\nexec sleep 60",
        capture.display()
    );
    let path = stand_in(dir.path(), &body);
    let (out, mut samples, _events) = PowerOutputs::channel(64);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(
        PowermetricsSource::new(config(path), MonoClock::new()).run(out, cancel.clone()),
    );
    let mut vm_cpu = 0;
    for _ in 0..29 {
        let sample = next_sample(&mut samples).await;
        vm_cpu += sample.vm_share.map_or(0, |s| s.vm_cpu_ns);
    }
    assert!(vm_cpu > 0, "the Docker VM task is found");
    cancel_and_join(&cancel, task).await;
}
