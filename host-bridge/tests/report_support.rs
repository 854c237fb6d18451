//! Constructed reports shared by the report, compare, GMT, HTML and Prometheus tests.
//!
//! The figures are chosen so that every identity a reader checks holds exactly: per window the
//! containers and buckets add up to the host energy, and the totals are the sums of the series.

use std::collections::BTreeMap;

use host_bridge::journal::Provenance;
use host_bridge::pipeline::{BucketKind, IdlePolicy};
use host_bridge::report::model::{
    Bounded, BucketReport, ContainerReport, PowerSourceInfo, Quality, RecordingInfo, Report,
    SCHEMA_VERSION, SeriesPoint, Totals, share_of,
};

/// One container of a constructed run.
pub struct Spec {
    pub id: &'static str,
    pub name: &'static str,
    pub service: Option<&'static str>,
    pub image: &'static str,
    /// Energy per window, µJ.
    pub uj: Vec<u64>,
    /// CPU per window, µs.
    pub cpu: Vec<u64>,
}

pub const WEB_ID: &str = "3f6c2a9e1b7d4c5a8e0f9b1d2c3a4e5f60718293a4b5c6d7e8f9012345678abc";
pub const DB_ID: &str = "5a7c0e1f2d3b4a5968778695a4b3c2d1e0f1a2b3c4d5e6f708192a3b4c5d01f2";
pub const WORKER_ID: &str = "9b8a7c6d5e4f30211203948576a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7";

/// The containers of the Mac (VM) run: web, db, worker (worker idle in its first windows).
pub fn mac_specs() -> Vec<Spec> {
    vec![
        Spec {
            id: WEB_ID,
            name: "shop-web-1",
            service: Some("web"),
            image: "nginx:1.27",
            uj: vec![
                410_000, 420_500, 398_000, 405_250, 430_000, 415_000, 401_000, 399_999, 410_001,
                412_250,
            ],
            cpu: vec![
                81_000, 83_000, 79_000, 80_500, 85_000, 82_000, 79_500, 79_000, 81_000, 81_500,
            ],
        },
        Spec {
            id: DB_ID,
            name: "shop-db-1",
            service: Some("db"),
            image: "postgres:17",
            uj: vec![
                150_000, 162_000, 171_500, 149_000, 155_555, 160_000, 158_000, 151_000, 149_500,
                152_000,
            ],
            cpu: vec![
                30_000, 32_000, 34_000, 29_500, 31_000, 32_000, 31_500, 30_000, 29_800, 30_200,
            ],
        },
        Spec {
            id: WORKER_ID,
            name: "shop-worker-1",
            service: Some("worker"),
            image: "shop/worker:2.3",
            uj: vec![
                0, 1, 0, 90_000, 95_000, 99_000, 101_000, 97_500, 85_000, 88_000,
            ],
            cpu: vec![
                0, 0, 0, 18_000, 19_000, 19_800, 20_200, 19_500, 17_000, 17_600,
            ],
        },
    ]
}

/// Bucket energy per window (vm-system, host-other, idle).
const VM_SYSTEM: u64 = 40_000;
const HOST_OTHER: u64 = 120_000;
const IDLE: u64 = 300_000;

/// Wall clock of the start of the constructed runs (2025-10-04 15:37:34.760874 UTC).
pub const START_UNIX_NS: u64 = 1_759_592_254_760_874_000;

/// Build a report from container specs; `estimated` switches the power source to a model.
pub fn build(specs: &[Spec], vm: &str, kind: &str, estimated: bool) -> Report {
    let windows = specs.first().map_or(0, |s| s.uj.len());
    let key = |s: &Spec| format!("{vm}/{}", s.id);
    let mut series = Vec::new();
    for w in 0..windows {
        let containers_uj: BTreeMap<String, u64> =
            specs.iter().map(|s| (key(s), s.uj[w])).collect();
        let cpu_us: BTreeMap<String, u64> = specs.iter().map(|s| (key(s), s.cpu[w])).collect();
        let buckets_uj: BTreeMap<BucketKind, u64> = [
            (BucketKind::VmSystem, VM_SYSTEM),
            (BucketKind::HostOther, HOST_OTHER),
            (BucketKind::Idle, IDLE),
        ]
        .into_iter()
        .collect();
        let host_uj = containers_uj.values().sum::<u64>() + buckets_uj.values().sum::<u64>();
        let t = f64::from(u32::try_from(w).unwrap());
        series.push(SeriesPoint {
            t_start_s: t,
            t_end_s: t + 1.0,
            host_uj,
            containers_uj,
            cpu_us,
            buckets_uj,
            degraded: w == 8,
        });
    }
    let containers_total: u64 = specs.iter().map(|s| s.uj.iter().sum::<u64>()).sum();
    // Bounds: ±5 % per container (rounded down/up to whole µJ), exact host.
    let bounded = |e: u64| Bounded {
        energy_uj: e,
        low_uj: e - e / 20,
        high_uj: e + e / 20,
    };
    let mut containers: Vec<ContainerReport> = specs
        .iter()
        .map(|s| {
            let e: u64 = s.uj.iter().sum();
            ContainerReport {
                key: key(s),
                vm: vm.to_string(),
                id: s.id.to_string(),
                name: s.name.to_string(),
                image: s.image.to_string(),
                compose_project: s.service.map(|_| "shop".to_string()),
                compose_service: s.service.map(str::to_string),
                energy: bounded(e),
                share: share_of(e, containers_total),
                cpu_us: s.cpu.iter().sum(),
                carbon_g: None,
            }
        })
        .collect();
    containers.sort_by_key(|c| std::cmp::Reverse(c.energy.energy_uj));
    let n = u64::try_from(windows).unwrap();
    let bucket = |b: BucketKind, per: u64| BucketReport {
        bucket: b,
        energy: Bounded::exact(per * n),
        carbon_g: None,
    };
    let host: u64 = series.iter().map(|p| p.host_uj).sum();
    let vm_total = containers_total + VM_SYSTEM * n;
    Report {
        schema_version: SCHEMA_VERSION,
        generated_by: "host-bridge test".to_string(),
        recording: RecordingInfo {
            path: Some("run.jbr".to_string()),
            created_by: "0.1.0".to_string(),
            created_unix_ns: START_UNIX_NS,
            sessions: 1,
            hostname: "mbp".to_string(),
            os: "macos".to_string(),
        },
        power_source: PowerSourceInfo {
            kind: kind.to_string(),
            provenance: if estimated {
                Provenance::Estimated
            } else {
                Provenance::Measured
            },
            reason: "auto: first available".to_string(),
        },
        policy: IdlePolicy::Exclude,
        vm_share_basis: "cpu-time".to_string(),
        window_s: 1.0,
        duration_s: f64::from(u32::try_from(windows).unwrap()),
        start_unix_ns: START_UNIX_NS,
        grid_intensity_g_per_kwh: None,
        totals: Totals {
            host: Bounded::exact(host),
            vm: Bounded {
                energy_uj: vm_total,
                low_uj: vm_total - vm_total / 20,
                high_uj: vm_total + vm_total / 20,
            },
            containers: bounded(containers_total),
            buckets: vec![
                bucket(BucketKind::VmSystem, VM_SYSTEM),
                bucket(BucketKind::HostOther, HOST_OTHER),
                bucket(BucketKind::Idle, IDLE),
            ],
            carbon_g: None,
        },
        containers,
        quality: Quality {
            coverage: 0.98,
            offset_error_ns: 250_000,
            degraded_windows: 1,
            windows: n,
            estimated,
            sequence_gaps: 2,
            notes: vec!["Window 8 had a power gap & was interpolated.".to_string()],
        },
        series,
    }
}

/// The Mac (VM) run, measured by powermetrics.
pub fn mac_report() -> Report {
    build(&mac_specs(), "docker-desktop", "powermetrics", false)
}

/// Compare `actual` with the golden file `tests/fixtures/expected/<name>`; with
/// `UPDATE_GOLDEN=1` rewrite the file instead. Fails with the first differing line.
pub fn assert_golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/expected")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        eprintln!("updated golden file {}", path.display());
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} unreadable ({e}); run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .find(|(_, (e, a))| e != a);
        match first {
            Some((n, (e, a))) => panic!(
                "{} differs at line {}:\n  expected: {e}\n  actual:   {a}\n(UPDATE_GOLDEN=1 rewrites it)",
                path.display(),
                n + 1
            ),
            None => panic!(
                "{} differs in length: expected {} lines, got {} (UPDATE_GOLDEN=1 rewrites it)",
                path.display(),
                expected.lines().count(),
                actual.lines().count()
            ),
        }
    }
}
