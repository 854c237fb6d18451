//! Every real powermetrics capture in `../shared/fixtures/powermetrics/` through the parser.
//!
//! The captures stay outside the repository (licences, size): these tests are ignored by a
//! plain `cargo test` and fail, naming the folder, when it is absent under `--include-ignored`.

use std::path::{Path, PathBuf};

use host_bridge::sources::power::powermetrics::frame::{Frame, split_capture};
use host_bridge::sources::power::powermetrics::parse::{PlistError, parse_document};
use host_bridge::sources::power::powermetrics::{
    DocStream, NoSample, components, parse_capture, to_sample,
};
use host_bridge::sources::power::{PowerEvent, VmSelector};
use protocol::MonoNanos;

fn captures_dir() -> PathBuf {
    testkit::shared("fixtures/powermetrics")
}

fn capture(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

fn plist_captures(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list captures")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".plist"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no .plist captures in {}", dir.display());
    names
        .into_iter()
        .map(|n| {
            let bytes = capture(dir, &n);
            (n, bytes)
        })
        .collect()
}

#[test]
#[ignore = "needs ../shared/fixtures/powermetrics"]
fn captures_every_plist_parses_without_error() {
    let dir = captures_dir();
    for (name, bytes) in plist_captures(&dir) {
        let docs = parse_capture(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!docs.is_empty(), "{name}: no documents");
        for (i, doc) in docs.iter().enumerate() {
            let doc = doc
                .as_ref()
                .unwrap_or_else(|e| panic!("{name} doc {i}: {e}"));
            assert!(doc.elapsed_ns.is_some(), "{name} doc {i}: no elapsed_ns");
        }
    }
}

#[test]
#[ignore = "needs ../shared/fixtures/powermetrics"]
fn captures_energy_matches_power_times_elapsed() {
    let dir = captures_dir();
    let mut checked = 0;
    for (name, bytes) in plist_captures(&dir) {
        for doc in parse_capture(&bytes).expect("plist").into_iter().flatten() {
            let elapsed = doc.elapsed_ns.expect("elapsed_ns");
            for c in components(&doc, elapsed) {
                let (Some(power_mw), Some(reported_mj)) = (c.power_mw, c.reported_mj) else {
                    continue;
                };
                let reported_uj = reported_mj * 1e3;
                #[allow(clippy::cast_precision_loss)]
                let computed = c.energy.0 as f64;
                // Apple Silicon rounds energy to whole mJ (±500 µJ); both figures are printed
                // with 6 significant digits (relative 1e-5).
                let tolerance = 500.0 + 2e-5 * reported_uj.abs();
                assert!(
                    (computed - reported_uj).abs() <= tolerance,
                    "{name} {}: {computed} µJ from {power_mw} mW × {elapsed} ns vs reported \
                     {reported_mj} mJ",
                    c.name
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} components had both power and energy"
    );
}

#[test]
#[ignore = "needs ../shared/fixtures/powermetrics"]
fn captures_docker_vm_task_is_found() {
    let dir = captures_dir();
    let bytes = capture(
        &dir,
        "m1pro-macos14-default+process-coalition-energy-io-gpu-netstats-29x130ms.plist",
    );
    let mut stream = DocStream::new(VmSelector::macos_default());
    let mut out = stream.push(&bytes, MonoNanos(1));
    let tail = stream.finish(MonoNanos(2));
    out.samples.extend(tail.samples);
    out.events.extend(tail.events);
    assert_eq!(out.samples.len(), 29);
    let found = out
        .events
        .iter()
        .find_map(|e| match e {
            PowerEvent::VmFound { matched } => Some(matched.clone()),
            _ => None,
        })
        .expect("VmFound event");
    assert!(
        found.contains("com.docker.docker/com.apple.Virtualization.VirtualMachine"),
        "{found}"
    );
    for s in &out.samples {
        let share = s.vm_share.as_ref().expect("tasks present");
        assert!(share.vm_cpu_ns > 0 && share.vm_cpu_ns <= share.total_cpu_ns);
        assert!(share.vm_energy_impact.is_some() && share.total_energy_impact.is_some());
        assert!(s.component("gpu").is_some() && s.component("ane").is_some());
        assert!(
            s.component("cluster:E-Cluster").is_none(),
            "no cluster power on macOS 14"
        );
        let host = s.host_cpu.expect("all_tasks and cpus present");
        assert_eq!(
            host.capacity_ns,
            s.window_ns * 8,
            "M1 Pro capture lists 8 CPUs"
        );
    }
}

#[test]
#[ignore = "needs ../shared/fixtures/powermetrics"]
fn captures_without_energy_keys_report_no_energy_data() {
    let dir = captures_dir();
    for name in [
        "intel-mbp5_4-osx10.9-unsupported_hw-no_energy_keys.plist",
        "intel-vmware7_1-osx10.9-vm-no_energy_keys.plist",
        "m4-mac16_8-macos15-battery-3x1s.plist",
        "m4-mac16_8-macos15-gpu_power-5x5s.plist",
    ] {
        let bytes = capture(&dir, name);
        for doc in parse_capture(&bytes).expect("plist") {
            let doc = doc.unwrap_or_else(|e| panic!("{name}: {e}"));
            match to_sample(&doc, MonoNanos(0), &VmSelector::macos_default()) {
                Err(NoSample::NoEnergyData(reason)) => assert!(!reason.is_empty()),
                Err(NoSample::NotDelta) => assert_eq!(doc.is_delta, Some(false)),
                other => panic!("{name}: expected no energy data, got {other:?}"),
            }
        }
        let mut stream = DocStream::new(VmSelector::macos_default());
        let out = stream.push(&bytes, MonoNanos(1));
        let tail = stream.finish(MonoNanos(2));
        assert!(out.samples.is_empty() && tail.samples.is_empty(), "{name}");
    }
}

#[test]
#[ignore = "needs ../shared/fixtures/powermetrics"]
fn captures_vmware_stray_warning_line_is_dropped_and_reported() {
    let dir = captures_dir();
    let bytes = capture(&dir, "intel-vmware7_1-osx10.9-vm-no_energy_keys.plist");
    let frames = split_capture(&bytes);
    let Some(Frame::Doc(doc)) = frames.first() else {
        panic!("one document expected, got {frames:?}");
    };
    let parsed = parse_document(doc).expect("parses despite the stray line");
    assert!(
        parsed
            .stray_lines
            .iter()
            .any(|l| l.starts_with("warning: time went backwards")),
        "{:?}",
        parsed.stray_lines
    );
    assert_eq!(parsed.all_tasks.and_then(|t| t.pid), Some(-2));
}

#[test]
#[ignore = "needs ../shared/fixtures/powermetrics"]
fn captures_intel_package_energy_is_the_split_domain() {
    let dir = captures_dir();
    let bytes = capture(&dir, "intel-mbp10_1-osx10.9-default_samplers-9x5s.plist");
    let docs = parse_capture(&bytes).expect("plist");
    assert_eq!(docs.len(), 9, "9 documents, each with a trailing NUL");
    for doc in docs {
        let doc = doc.expect("parses");
        let (sample, vm) =
            to_sample(&doc, MonoNanos(10), &VmSelector::macos_default()).expect("intel energy");
        assert_eq!(sample.component("package"), Some(sample.energy));
        let joules = doc
            .reading("package")
            .and_then(|r| r.reported_mj)
            .expect("J")
            / 1e3;
        assert!((sample.energy.as_joules_f64() - joules).abs() < 1e-3 * joules);
        assert!(vm.matched.is_empty(), "no VM on this machine");
        assert_eq!(sample.vm_share.map(|s| s.vm_cpu_ns), Some(0));
    }
}

#[test]
#[ignore = "needs ../shared/fixtures/powermetrics"]
fn captures_text_format_is_refused_with_plist_advice() {
    let dir = captures_dir();
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("list") {
        let path = entry.expect("entry").path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(name) = name.filter(|n| n.ends_with(".txt") && !n.starts_with("help")) else {
            continue;
        };
        let bytes = std::fs::read(&path).expect("read");
        let err = parse_capture(&bytes).expect_err("text refused");
        assert!(matches!(err, PlistError::TextFormat), "{name}: {err}");
        assert!(err.to_string().contains("--format plist"));
        let mut stream = DocStream::new(VmSelector::macos_default());
        let out = stream.push(&bytes, MonoNanos(1));
        assert!(stream.is_text_format() && out.samples.is_empty(), "{name}");
        seen += 1;
    }
    assert_eq!(seen, 3, "three text captures");
}
