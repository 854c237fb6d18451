//! RAPL over powercap trees built by each test in a temp dir: zone discovery, domain choice,
//! counter wrap, reset, and the async source's events.
//!
//! Layouts mirror real machines: a laptop (package-0 with core/uncore/dram subzones plus a
//! top-level psys zone, as on Intel client CPUs since Skylake) and a server (two packages, each
//! with a dram subzone, no psys). Ranges are the common 262 143 328 850 µJ.

use std::path::Path;

use host_bridge::sources::power::rapl::{
    RaplDomain, RaplError, RaplReader, RaplWindow, RaplWindows,
};
use protocol::{MicroJoules, MonoNanos};

const RANGE: u64 = 262_143_328_850;
const MAX_WATTS: u64 = 1_000;

fn zone(root: &Path, id: &str, name: &str, energy_uj: u64) {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).expect("zone dir");
    std::fs::write(dir.join("name"), format!("{name}\n")).expect("name");
    std::fs::write(dir.join("energy_uj"), format!("{energy_uj}\n")).expect("energy");
    std::fs::write(dir.join("max_energy_range_uj"), format!("{RANGE}\n")).expect("range");
}

fn set(root: &Path, id: &str, file: &str, value: u64) {
    std::fs::write(root.join(id).join(file), format!("{value}\n")).expect("update");
}

/// Laptop: psys + package-0 {core, uncore, dram}; also entries that are not zones.
fn laptop(root: &Path) {
    zone(root, "intel-rapl:0", "package-0", 1_000_000);
    zone(root, "intel-rapl:0:0", "core", 500_000);
    zone(root, "intel-rapl:0:1", "uncore", 100_000);
    zone(root, "intel-rapl:0:2", "dram", 200_000);
    zone(root, "intel-rapl:1", "psys", 3_000_000);
    std::fs::create_dir_all(root.join("intel-rapl")).expect("control type dir");
    zone(root, "intel-rapl-mmio:0", "package-0", 7);
}

/// Server: two packages with dram subzones, no psys.
fn server(root: &Path) {
    zone(root, "intel-rapl:0", "package-0", 10_000_000);
    zone(root, "intel-rapl:0:0", "dram", 1_000_000);
    zone(root, "intel-rapl:1", "package-1", 20_000_000);
    zone(root, "intel-rapl:1:0", "dram", 2_000_000);
}

#[test]
fn rapl_discovers_zones_and_prefers_psys() {
    let dir = tempfile::tempdir().expect("tempdir");
    laptop(dir.path());
    let reader = RaplReader::new(dir.path()).expect("reads");
    let labels: Vec<&str> = reader.zones().iter().map(|z| z.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "package-0",
            "package-0/core",
            "package-0/uncore",
            "package-0/dram",
            "psys"
        ]
    );
    assert_eq!(reader.domain(), RaplDomain::Psys);
}

#[test]
fn rapl_without_psys_sums_packages_and_dram() {
    let dir = tempfile::tempdir().expect("tempdir");
    server(dir.path());
    let mut windows = RaplWindows::new(RaplReader::new(dir.path()).expect("reads"), MAX_WATTS);
    assert_eq!(windows.reader().domain(), RaplDomain::PackagesAndDram);
    assert_eq!(
        windows.read(MonoNanos(0)).expect("read"),
        None,
        "first read is the baseline"
    );
    set(
        dir.path(),
        "intel-rapl:0",
        "energy_uj",
        10_000_000 + 40_000_000,
    );
    set(
        dir.path(),
        "intel-rapl:0:0",
        "energy_uj",
        1_000_000 + 5_000_000,
    );
    set(
        dir.path(),
        "intel-rapl:1",
        "energy_uj",
        20_000_000 + 30_000_000,
    );
    set(
        dir.path(),
        "intel-rapl:1:0",
        "energy_uj",
        2_000_000 + 4_000_000,
    );
    let (window_ns, window) = windows
        .read(MonoNanos(1_000_000_000))
        .expect("read")
        .expect("window");
    assert_eq!(window_ns, 1_000_000_000);
    let RaplWindow::Energy {
        energy,
        components,
        resets,
    } = window
    else {
        panic!("energy expected, got {window:?}");
    };
    assert_eq!(
        energy,
        MicroJoules(40_000_000 + 5_000_000 + 30_000_000 + 4_000_000)
    );
    assert!(resets.is_empty());
    assert!(components.contains(&("package-1/dram".to_owned(), MicroJoules(4_000_000))));
}

#[test]
fn rapl_counter_wrap_keeps_energy() {
    let dir = tempfile::tempdir().expect("tempdir");
    laptop(dir.path());
    set(dir.path(), "intel-rapl:1", "energy_uj", RANGE - 1_000);
    let mut windows = RaplWindows::new(RaplReader::new(dir.path()).expect("reads"), MAX_WATTS);
    windows.read(MonoNanos(0)).expect("baseline");
    set(dir.path(), "intel-rapl:1", "energy_uj", 24_000);
    let (_, window) = windows
        .read(MonoNanos(1_000_000_000))
        .expect("read")
        .expect("window");
    let RaplWindow::Energy { energy, .. } = window else {
        panic!("a wrap is not a reset: {window:?}");
    };
    assert_eq!(
        energy,
        MicroJoules(25_000),
        "psys wrapped: 1 000 before the range, 24 000 after"
    );
}

#[test]
fn rapl_counter_reset_is_detected_and_window_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    laptop(dir.path());
    set(dir.path(), "intel-rapl:1", "energy_uj", 90_000_000_000);
    let mut windows = RaplWindows::new(RaplReader::new(dir.path()).expect("reads"), MAX_WATTS);
    windows.read(MonoNanos(0)).expect("baseline");
    // Driver reload: the counter restarts near zero. As a wrap this would be ~172 kJ in 1 s.
    set(dir.path(), "intel-rapl:1", "energy_uj", 12_345);
    let (_, window) = windows
        .read(MonoNanos(1_000_000_000))
        .expect("read")
        .expect("window");
    let RaplWindow::Reset { resets } = window else {
        panic!("reset expected, got {window:?}");
    };
    assert_eq!(resets.len(), 1);
    assert_eq!(resets[0].0, "psys");
    // The next window counts from the new value again.
    set(dir.path(), "intel-rapl:1", "energy_uj", 12_345 + 2_000_000);
    let (_, next) = windows
        .read(MonoNanos(2_000_000_000))
        .expect("read")
        .expect("window");
    assert!(
        matches!(
            next,
            RaplWindow::Energy {
                energy: MicroJoules(2_000_000),
                ..
            }
        ),
        "{next:?}"
    );
}

#[test]
fn rapl_range_change_is_a_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    server(dir.path());
    let mut windows = RaplWindows::new(RaplReader::new(dir.path()).expect("reads"), MAX_WATTS);
    windows.read(MonoNanos(0)).expect("baseline");
    set(
        dir.path(),
        "intel-rapl:0",
        "max_energy_range_uj",
        65_532_610_987,
    );
    let (_, window) = windows
        .read(MonoNanos(1_000_000_000))
        .expect("read")
        .expect("window");
    assert!(matches!(window, RaplWindow::Reset { .. }), "{window:?}");
}

#[test]
fn rapl_without_zones_is_absent() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("intel-rapl")).expect("dir");
    assert!(matches!(
        RaplReader::new(dir.path()),
        Err(RaplError::NoZones { .. })
    ));
    assert!(matches!(
        RaplReader::new(dir.path().join("missing")),
        Err(RaplError::NoZones { .. })
    ));
}

#[test]
fn rapl_unreadable_energy_uj_is_permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    laptop(dir.path());
    let file = dir.path().join("intel-rapl:0").join("energy_uj");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    if testkit::ran_without_file_permission_override(
        "power_rapl::rapl_unreadable_energy_uj_is_permission_denied",
    ) {
        return;
    }
    let err = RaplReader::new(dir.path()).expect_err("unreadable");
    assert!(matches!(err, RaplError::PermissionDenied { .. }), "{err:?}");
    assert!(err.to_string().contains("CVE-2020-8694"));
}

#[cfg(target_os = "linux")]
#[tokio::test(start_paused = true)]
async fn rapl_source_emits_samples_then_reset_gap() {
    use host_bridge::sources::power::rapl::{RaplConfig, RaplSource};
    use host_bridge::sources::power::{MonoClock, PowerEvent, PowerOutputs, Provenance};
    use tokio_util::sync::CancellationToken;

    let dir = tempfile::tempdir().expect("tempdir");
    laptop(dir.path());
    let reader = RaplReader::new(dir.path()).expect("reads");
    let (out, mut samples, mut events) = PowerOutputs::channel(8);
    let cancel = CancellationToken::new();
    let source = RaplSource::new(
        reader,
        None,
        RaplConfig {
            interval: std::time::Duration::from_secs(1),
            max_zone_watts: MAX_WATTS,
        },
        MonoClock::new(),
    );
    let task = tokio::spawn(source.run(out, cancel.clone()));
    // The first tick is the baseline, the second an idle window. The source reads only on a
    // tick, and paused time advances only once this task waits, so each update below lands
    // before the next read.
    let idle = samples.recv().await.expect("sample");
    assert_eq!(idle.energy, MicroJoules(0));
    assert_eq!(idle.window_ns, 1_000_000_000);
    set(
        dir.path(),
        "intel-rapl:1",
        "energy_uj",
        3_000_000 + 5_000_000,
    );
    let first = samples.recv().await.expect("sample");
    assert_eq!(first.energy, MicroJoules(5_000_000));
    assert_eq!(first.provenance, Provenance::Measured);
    assert_eq!(first.component("package-0/core"), Some(MicroJoules(0)));
    // Reset psys before the next tick.
    set(dir.path(), "intel-rapl:1", "energy_uj", 10);
    assert!(events.try_recv().is_err(), "no event before the reset");
    let reset = events.recv().await.expect("event");
    assert!(
        matches!(&reset, PowerEvent::CounterReset { domain, .. } if domain == "psys"),
        "{reset:?}"
    );
    let gap = events.recv().await.expect("event");
    let PowerEvent::Gap { from, to, reason } = gap else {
        panic!("gap expected, got {gap:?}");
    };
    assert_eq!(from, first.end);
    assert!(to > from && reason.contains("reset"), "{reason}");
    set(dir.path(), "intel-rapl:1", "energy_uj", 10 + 1_000_000);
    let after = samples.recv().await.expect("sample");
    assert_eq!(after.energy, MicroJoules(1_000_000));
    cancel.cancel();
    task.await.expect("joins").expect("clean stop");
}
