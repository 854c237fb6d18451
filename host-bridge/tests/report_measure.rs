//! `measure -- CMD`: the command's exit code is ours; Ctrl-C stops cleanly with a report.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use host_bridge::report::json;

fn measure(dir: &std::path::Path, cmd: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_host-bridge"));
    c.current_dir(dir)
        .args([
            "measure",
            "--listen",
            "tcp://127.0.0.1:0",
            "--out",
            "m",
            "--",
        ])
        .args(cmd)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[test]
fn measure_exits_with_the_commands_code_and_writes_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = measure(dir.path(), &["sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report =
        json::from_json(&std::fs::read_to_string(dir.path().join("m/report.json")).unwrap())
            .unwrap();
    assert_eq!(report.recording.sessions, 1);
    assert!(dir.path().join("m/recording.jbr").exists());
    assert!(dir.path().join("m/report.html").exists());

    let ok = measure(dir.path(), &["true"]).output().unwrap();
    assert_eq!(ok.status.code(), Some(0));
}

#[test]
#[allow(clippy::disallowed_methods)] // polls for a file between short sleeps; no async here
fn measure_stops_cleanly_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    // The command would run for a minute; SIGINT to the bridge alone must end it.
    let child = measure(dir.path(), &["sleep", "60"]).spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    // Wait until the bridge is up (its recording exists; the signal handler is installed
    // before), then interrupt it.
    let started = Instant::now();
    while !dir.path().join("m/recording.jbr").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "bridge never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(pid, nix::sys::signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    // sleep died of the forwarded SIGINT: 128 + 2, as a shell reports it.
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report =
        json::from_json(&std::fs::read_to_string(dir.path().join("m/report.json")).unwrap())
            .unwrap();
    assert!(
        report
            .quality
            .notes
            .iter()
            .any(|n| n.contains("interrupted"))
    );
}
