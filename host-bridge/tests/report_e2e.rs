//! End to end: a recording written with the real `RecordingWriter`, attributed by the real
//! pipeline through the real `host-bridge report` binary, checked against golden JSON; then the
//! same recording re-attributed offline with another idle policy, compared, and exported to GMT.
//!
//! The recording is constructed, deterministic, and shaped like what `serve` writes: a
//! `Session`, the power source, one agent (Hello, container table, 1 s samples, pings) and 1 s
//! RAPL-like power readings with the VM's CPU share.

use std::path::Path;
use std::process::{Command, Output};

use host_bridge::journal::{HostCpu, PowerSample, Provenance, VmShare};
use host_bridge::journal::{RecordEntry, RecordingWriter, SessionStart};
use host_bridge::pipeline::IdlePolicy;
use host_bridge::report::gmt;
use host_bridge::report::json;
use host_bridge::report::model::Report;
use protocol::{
    CgroupMode, ClockReading, ContainerCounters, ContainerInfo, ContainerState, Containers,
    CpuCounters, CpuMicros, Hello, Message, MicroJoules, MonoNanos, Ping, Pong, ProcStat, Sample,
    UnixNanos,
};

use crate::report_support::assert_golden;

/// Host monotonic time at the start (20 min after boot) and the wall clock then.
const H0: u64 = 1_200_000_000_000;
const U0: u64 = 1_764_331_200_000_000_000; // 2025-11-28 12:00:00 UTC
/// Guest monotonic clock at H0 (the guest booted later than the host).
const G0: u64 = 345_000_000_000;
const SEC: u64 = 1_000_000_000;
const RUN_S: u64 = 40;
const VM_CPUS: u64 = 4;
const WEB_ID: &str = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";
const DB_ID: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0";

/// CPU per second of each container (µs): web 600 ms busy, db 200 ms (300 ms after 20 s),
/// times `db_percent` / 100 for db.
fn usage_per_s(id: &str, s: u64, db_percent: u64) -> u64 {
    match (id, s >= 20) {
        (WEB_ID, _) => 600_000,
        (_, false) => 200_000 * db_percent / 100,
        (_, true) => 300_000 * db_percent / 100,
    }
}

fn guest(at: u64, message: Message) -> RecordEntry {
    RecordEntry::Guest {
        conn: 1,
        at: MonoNanos(at),
        message,
    }
}

/// The recorded entries, with db working `db_percent` % as hard as in the base run.
pub fn entries_with_db(db_percent: u64) -> Vec<RecordEntry> {
    let mut out = vec![
        RecordEntry::Session(SessionStart {
            bridge_version: "0.1.0".into(),
            mono: MonoNanos(H0 - SEC),
            unix: UnixNanos(U0 - SEC),
            hostname: "ci-host".into(),
            os: "linux".into(),
        }),
        RecordEntry::PowerSource {
            kind: host_bridge::journal::PowerSourceKind::Rapl,
            reason: "auto: /sys/class/powercap/intel-rapl:0 readable".into(),
            provenance: Provenance::Measured,
        },
        guest(
            H0 + 1_000_000,
            Message::Hello(Hello {
                protocol: protocol::PROTOCOL_VERSION,
                agent_version: "0.1.0".into(),
                boot_id: "boot-e2e".into(),
                instance_id: 7,
                vm_name: "docker-desktop".into(),
                hostname: "docker-desktop".into(),
                kernel_release: "6.10.14-linuxkit".into(),
                cgroup_mode: CgroupMode::V2,
                cpu_count: 4,
                clock: ClockReading {
                    mono_ns: MonoNanos(G0),
                    unix_ns: UnixNanos(U0),
                },
                sample_period_ms: 1000,
                has_container_metadata: true,
                auth_token: None,
            }),
        ),
        guest(
            H0 + 1_500_000,
            Message::Containers(Containers {
                full: true,
                entries: [
                    (WEB_ID, "shop-web-1", "web", "nginx:1.27"),
                    (DB_ID, "shop-db-1", "db", "postgres:17"),
                ]
                .iter()
                .map(|(id, name, service, image)| ContainerInfo {
                    id: (*id).into(),
                    name: (*name).into(),
                    image: (*image).into(),
                    compose_project: Some("shop".into()),
                    compose_service: Some((*service).into()),
                    cgroup_path: format!("docker/{id}"),
                    state: ContainerState::Running,
                    ..ContainerInfo::default()
                })
                .collect(),
            }),
        ),
    ];
    let (mut web, mut db) = (0_u64, 0_u64);
    let mut stat = ProcStat::default();
    for s in 0..=RUN_S {
        if s > 0 {
            web += usage_per_s(WEB_ID, s - 1, db_percent);
            db += usage_per_s(DB_ID, s - 1, db_percent);
            let busy = usage_per_s(WEB_ID, s - 1, db_percent)
                + usage_per_s(DB_ID, s - 1, db_percent)
                + 50_000;
            stat.user += CpuMicros(busy - 50_000);
            stat.system += CpuMicros(50_000);
            stat.idle += CpuMicros(VM_CPUS * 1_000_000 - busy);
            // Host power over the last second: 4 W idle + 9 W per busy core of the VM + 0.6 W
            // of other host work; the VM process used its busy time plus 8 % overhead.
            let vm_busy_ns = busy * 1_000 * 108 / 100;
            let host_busy_ns = vm_busy_ns + 150_000_000;
            let energy = 4_000_000 + busy * 9 + 600_000;
            out.push(RecordEntry::Power(PowerSample {
                end: MonoNanos(H0 + s * SEC),
                window_ns: SEC,
                energy: MicroJoules(energy),
                components: vec![("package-0".into(), MicroJoules(energy))],
                vm_share: Some(VmShare {
                    vm_cpu_ns: vm_busy_ns,
                    total_cpu_ns: host_busy_ns,
                    vm_energy_impact: None,
                    total_energy_impact: None,
                }),
                host_cpu: Some(HostCpu {
                    busy_ns: host_busy_ns,
                    capacity_ns: 8 * SEC,
                }),
                provenance: Provenance::Measured,
            }));
        }
        let counters = |id: &str, usage: u64| ContainerCounters {
            id: id.into(),
            cpu: CpuCounters {
                usage: CpuMicros(usage),
                user: CpuMicros(usage * 9 / 10),
                system: CpuMicros(usage / 10),
                ..CpuCounters::default()
            },
            memory_current: None,
            io: None,
            cpu_limit_millicores: None,
        };
        // Samples are taken on the guest clock and arrive 2 ms later on the host.
        out.push(guest(
            H0 + s * SEC + 2_000_000,
            Message::Sample(Sample {
                seq: s,
                clock: ClockReading {
                    mono_ns: MonoNanos(G0 + s * SEC),
                    unix_ns: UnixNanos(U0 + s * SEC),
                },
                vm: stat,
                containers: vec![counters(WEB_ID, web), counters(DB_ID, db)],
            }),
        ));
        if s % 5 == 0 {
            let t = H0 + s * SEC + 500_000_000;
            let ping = Ping {
                id: s,
                guest_send: MonoNanos(G0 + s * SEC + 499_800_000),
                prev_pong: None,
            };
            out.push(guest(t, Message::Ping(ping)));
            out.push(guest(
                t + 10_000,
                Message::Pong(Pong {
                    id: s,
                    guest_send: ping.guest_send,
                    host_recv: MonoNanos(t),
                    host_send: MonoNanos(t + 10_000),
                }),
            ));
        }
    }
    out
}

/// Write the base run as a new recording at `path` (also used by the metrics restart test).
pub fn write_recording(path: &Path) {
    write_recording_with_db(path, 100);
}

fn write_recording_with_db(path: &Path, db_percent: u64) {
    let (mut writer, existing) = RecordingWriter::open_append(path).unwrap();
    assert!(existing.is_empty());
    for e in entries_with_db(db_percent) {
        writer.append(&e).unwrap();
    }
    writer.sync().unwrap();
}

fn bridge(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_host-bridge"))
        .current_dir(dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn read_report(path: &Path) -> Report {
    json::from_json(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The parts of a report that depend on when and by which build the test ran.
fn normalized(mut report: Report) -> Report {
    report.recording.created_unix_ns = 0;
    report.generated_by = "host-bridge".into();
    report
}

fn assert_adds_up(r: &Report) {
    let containers: u64 = r.containers.iter().map(|c| c.energy.energy_uj).sum();
    let buckets: u64 = r.totals.buckets.iter().map(|b| b.energy.energy_uj).sum();
    assert_eq!(containers, r.totals.containers.energy_uj);
    assert_eq!(
        containers + buckets,
        r.totals.host.energy_uj,
        "conservation"
    );
    for c in &r.containers {
        assert!(c.energy.is_ordered(), "{}: {:?}", c.name, c.energy);
    }
    let series: u64 = r.series.iter().map(|p| p.host_uj).sum();
    assert_eq!(series, r.totals.host.energy_uj);
}

#[test]
fn report_e2e_recording_to_golden_json() {
    let dir = tempfile::tempdir().unwrap();
    write_recording(&dir.path().join("e2e.jbr"));
    let out = bridge(
        dir.path(),
        &[
            "report",
            "e2e.jbr",
            "--out",
            "exclude",
            "--window",
            "5",
            "--grid-intensity",
            "300",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("wrote exclude/report.html"), "{stdout}");
    let report = normalized(read_report(&dir.path().join("exclude/report.json")));
    assert_golden("report.json", &json::to_json(&report));

    assert_eq!(report.policy, IdlePolicy::Exclude);
    assert_eq!(report.power_source.kind, "rapl");
    assert_eq!(report.containers.len(), 2);
    assert_eq!(report.containers[0].display_name(), "web");
    assert!(report.series.len() >= 7, "{} windows", report.series.len());
    assert_adds_up(&report);
    // web used 3× db's CPU for 20 s and 2× after: its share lies in between.
    let web = &report.containers[0];
    assert!(
        web.share > 0.66 && web.share < 0.75,
        "web share {}",
        web.share
    );
    // CPU time is the counters' delta over the attributed windows, interpolated at their
    // edges (the last sample lands a fraction of a ms after the last window).
    let near = |got: u64, want: u64| got.abs_diff(want) <= want / 10_000;
    assert!(near(web.cpu_us, RUN_S * 600_000), "{}", web.cpu_us);
    let db_cpu = report.containers[1].cpu_us;
    assert!(near(db_cpu, 20 * 200_000 + 20 * 300_000), "{db_cpu}");
    assert!(web.carbon_g.is_some());
    for f in ["summary.csv", "series.csv", "series.jsonl", "report.html"] {
        assert!(dir.path().join("exclude").join(f).exists(), "{f}");
    }
    // Keep the page for people to open (CI artefact).
    let keep = crate::html_chromium::artifact_dir().join("e2e-report.html");
    std::fs::copy(dir.path().join("exclude/report.html"), &keep).unwrap();
    eprintln!("e2e report page: {}", keep.display());
}

#[test]
fn report_e2e_reattributes_offline_with_another_policy() {
    let dir = tempfile::tempdir().unwrap();
    write_recording(&dir.path().join("e2e.jbr"));
    for policy in ["exclude", "proportional"] {
        let out = bridge(
            dir.path(),
            &[
                "report", "e2e.jbr", "--out", policy, "--policy", policy, "--window", "5",
                "--format", "json",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let exclude = read_report(&dir.path().join("exclude/report.json"));
    let proportional = read_report(&dir.path().join("proportional/report.json"));
    assert!(
        !dir.path().join("exclude/report.html").exists(),
        "--format json only"
    );
    assert_eq!(proportional.policy, IdlePolicy::Proportional);
    assert_adds_up(&exclude);
    assert_adds_up(&proportional);
    // Same host energy, but idle now goes to the containers.
    assert_eq!(exclude.totals.host, proportional.totals.host);
    assert!(proportional.totals.containers.energy_uj > exclude.totals.containers.energy_uj);
    let idle = |r: &Report| {
        r.totals
            .buckets
            .iter()
            .find(|b| b.bucket == host_bridge::pipeline::BucketKind::Idle)
            .map_or(0, |b| b.energy.energy_uj)
    };
    assert!(idle(&exclude) > idle(&proportional));
}

#[test]
fn report_e2e_compare_exit_code_follows_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    write_recording(&dir.path().join("e2e.jbr"));
    let out = bridge(
        dir.path(),
        &[
            "report", "e2e.jbr", "--out", "a", "--format", "json", "--window", "5",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // B: the same run with db's energy doubled, as JSON.
    let mut b = read_report(&dir.path().join("a/report.json"));
    for c in &mut b.containers {
        if c.display_name() == "db" {
            c.energy.energy_uj *= 2;
        }
    }
    let total: u64 = b.containers.iter().map(|c| c.energy.energy_uj).sum();
    b.totals.containers.energy_uj = total;
    std::fs::write(dir.path().join("b.json"), json::to_json(&b)).unwrap();

    // A recording against a report JSON: both kinds of input are accepted.
    let loose = bridge(
        dir.path(),
        &[
            "compare",
            "e2e.jbr",
            "b.json",
            "--window",
            "5",
            "--max-share-diff",
            "0.5",
        ],
    );
    assert_eq!(
        loose.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&loose.stderr)
    );
    let text = String::from_utf8_lossy(&loose.stdout);
    assert!(
        text.contains("PASS") && text.contains("compose-service"),
        "{text}"
    );

    let strict = bridge(
        dir.path(),
        &[
            "compare",
            "a/report.json",
            "b.json",
            "--max-share-diff",
            "0.01",
            "--json",
            "cmp.json",
        ],
    );
    assert_eq!(
        strict.status.code(),
        Some(i32::from(host_bridge::commands::EXIT_THRESHOLD)),
        "{}",
        String::from_utf8_lossy(&strict.stdout)
    );
    let cmp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("cmp.json")).unwrap())
            .unwrap();
    assert_eq!(cmp["passed"], false);
    assert!(cmp["max_abs_share_diff"].as_f64().unwrap() > 0.01);

    let bad = bridge(dir.path(), &["compare", "a/report.json", "missing.json"]);
    assert_eq!(bad.status.code(), Some(1));
}

#[test]
fn report_e2e_export_gmt_follows_ingest_rules() {
    let dir = tempfile::tempdir().unwrap();
    write_recording(&dir.path().join("e2e.jbr"));
    let out = bridge(
        dir.path(),
        &["export-gmt", "e2e.jbr", "--out", "gmt", "--window", "5"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir
        .path()
        .join("gmt")
        .join(format!("{}.log", gmt::CONTAINER_ENERGY_METRIC));
    let text = std::fs::read_to_string(&path).unwrap();
    let summary =
        gmt::check(&text, gmt::ENERGY_UNIT, 5_000).unwrap_or_else(|v| panic!("{v:#?}\n{text}"));
    assert_eq!(summary.details, 2);
    assert!(
        text.lines()
            .all(|l| l.ends_with(WEB_ID) || l.ends_with(DB_ID))
    );
    // Timestamps are Unix µs inside the run.
    let first: u64 = text.split(' ').next().unwrap().parse().unwrap();
    assert!(
        first > U0 / 1_000 && first <= (U0 + (RUN_S + 1) * SEC) / 1_000,
        "{first}"
    );
}

#[test]
fn report_e2e_compare_two_recordings_with_a_known_difference() {
    // B's db works 50 % harder: its CPU seconds grow by half, its energy share grows, web's
    // shrinks by the same amount.
    let dir = tempfile::tempdir().unwrap();
    write_recording_with_db(&dir.path().join("a.jbr"), 100);
    write_recording_with_db(&dir.path().join("b.jbr"), 150);
    let out = bridge(
        dir.path(),
        &[
            "compare", "a.jbr", "b.jbr", "--window", "5", "--json", "cmp.json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cmp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("cmp.json")).unwrap())
            .unwrap();
    let row = |label: &str| {
        cmp["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["label"] == label)
            .unwrap()
            .clone()
    };
    let (web, db) = (row("web"), row("db"));
    assert_eq!(db["matched_by"], "compose-service");
    // CPU: A − B = −(0.5 × 10 s) for db, 0 for web (within the edge interpolation).
    assert!(
        (db["cpu_diff_s"].as_f64().unwrap() + 5.0).abs() < 0.01,
        "{db}"
    );
    assert!(web["cpu_diff_s"].as_f64().unwrap().abs() < 0.01, "{web}");
    let (db_diff, web_diff) = (
        db["share_diff"].as_f64().unwrap(),
        web["share_diff"].as_f64().unwrap(),
    );
    assert!(db_diff < -0.05, "db share must grow in B: {db_diff}");
    assert!(
        (db_diff + web_diff).abs() < 1e-9,
        "shares of two containers move together"
    );
    // CPU-time split: web 24/(24+10) in A vs 24/(24+15) in B.
    let expected = 24.0 / 34.0 - 24.0 / 39.0;
    assert!(
        (web_diff - expected).abs() < 0.01,
        "{web_diff} vs {expected}"
    );
    // The same difference fails a CI threshold below it and passes one above it.
    let limit = |t: f64| {
        bridge(
            dir.path(),
            &[
                "compare",
                "a.jbr",
                "b.jbr",
                "--window",
                "5",
                "--max-share-diff",
                &t.to_string(),
            ],
        )
        .status
        .code()
    };
    assert_eq!(limit(web_diff.abs() - 0.01), Some(3));
    assert_eq!(limit(web_diff.abs() + 0.01), Some(0));
}
