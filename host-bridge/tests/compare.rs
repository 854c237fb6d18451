//! `compare` on two reports with known differences.

use host_bridge::report::compare::{MatchedBy, compare};
use host_bridge::report::model::Report;

use crate::report_support::{Spec, build, mac_report, mac_specs};

/// The same workload on Linux: other ids and names (another compose project), web uses 20 %
/// more energy, db the same, worker 10 % less; CPU seconds identical except web (+5 %).
fn linux_specs() -> Vec<Spec> {
    mac_specs()
        .into_iter()
        .map(|s| {
            let (num, den, cpu_num) = match s.service {
                Some("web") => (12, 10, 105),
                Some("worker") => (9, 10, 100),
                _ => (1, 1, 100),
            };
            Spec {
                id: match s.service {
                    Some("web") => {
                        "aaaa000000000000000000000000000000000000000000000000000000000001"
                    }
                    Some("db") => {
                        "aaaa000000000000000000000000000000000000000000000000000000000002"
                    }
                    _ => "aaaa000000000000000000000000000000000000000000000000000000000003",
                },
                name: match s.service {
                    Some("web") => "ci-web-1",
                    Some("db") => "ci-db-1",
                    _ => "ci-worker-1",
                },
                service: s.service,
                image: s.image,
                uj: s.uj.iter().map(|u| u * num / den).collect(),
                cpu: s.cpu.iter().map(|c| c * cpu_num / 100).collect(),
            }
        })
        .collect()
}

fn linux_report() -> Report {
    build(&linux_specs(), "ci-host", "rapl", false)
}

fn total(specs: &[Spec], service: &str) -> u64 {
    specs
        .iter()
        .find(|s| s.service == Some(service))
        .map(|s| s.uj.iter().sum())
        .unwrap()
}

#[test]
fn compare_matches_by_service_and_reports_known_differences() {
    let (a, b) = (mac_report(), linux_report());
    let cmp = compare("mac.json", &a, "linux.json", &b, None);
    assert_eq!(cmp.rows.len(), 3);
    assert!(
        cmp.rows
            .iter()
            .all(|r| r.matched_by == MatchedBy::ComposeService)
    );
    assert!(cmp.passed);

    let (ma, lb) = (mac_specs(), linux_specs());
    let a_all: u64 = ["web", "db", "worker"].iter().map(|s| total(&ma, s)).sum();
    let b_all: u64 = ["web", "db", "worker"].iter().map(|s| total(&lb, s)).sum();
    for service in ["web", "db", "worker"] {
        let row = cmp.rows.iter().find(|r| r.label == service).unwrap();
        let (ea, eb) = (total(&ma, service), total(&lb, service));
        assert_eq!(row.a.energy_uj, ea);
        assert_eq!(row.b.energy_uj, eb);
        assert_eq!(row.energy_diff_uj, i128::from(ea) - i128::from(eb));
        #[allow(clippy::cast_precision_loss)]
        let share_diff = ea as f64 / a_all as f64 - eb as f64 / b_all as f64;
        assert!((row.share_diff - share_diff).abs() < 1e-12, "{service}");
    }
    // db used the same energy, yet its share moved because web grew: shares are relative.
    let db = cmp.rows.iter().find(|r| r.label == "db").unwrap();
    assert_eq!(db.energy_diff_uj, 0);
    assert!(db.share_diff > 0.0);
    // web: B is 20 % higher, so (A − B) / B = 1/1.2 − 1.
    let web = cmp.rows.iter().find(|r| r.label == "web").unwrap();
    assert!((web.energy_rel_diff.unwrap() - (1.0 / 1.2 - 1.0)).abs() < 1e-3);
    assert!(web.cpu_diff_s < 0.0);
    let text = cmp.to_text();
    assert!(text.contains("compose-service"), "{text}");
}

#[test]
fn compare_threshold_passes_above_and_fails_below_the_largest_share_diff() {
    let (a, b) = (mac_report(), linux_report());
    let max = compare("a", &a, "b", &b, None).max_abs_share_diff;
    assert!(max > 0.01, "the fixture has a real difference: {max}");
    assert!(compare("a", &a, "b", &b, Some(max + 1e-9)).passed);
    let failing = compare("a", &a, "b", &b, Some(max - 1e-6));
    assert!(!failing.passed);
    assert!(failing.to_text().contains("FAIL"));
}

#[test]
fn compare_counts_a_missing_container_against_zero() {
    let a = mac_report();
    let mut specs = mac_specs();
    specs.retain(|s| s.service != Some("worker"));
    let b = build(&specs, "ci-host", "rapl", false);
    let cmp = compare("a", &a, "b", &b, Some(0.5));
    let worker = cmp.rows.iter().find(|r| r.label == "worker").unwrap();
    assert_eq!(worker.matched_by, MatchedBy::OnlyA);
    assert_eq!(worker.b.energy_uj, 0);
    assert!(worker.energy_rel_diff.is_none());
    assert!((worker.share_diff - worker.a.share).abs() < 1e-12);
}

#[test]
fn compare_falls_back_to_names_when_a_service_is_scaled() {
    // Two replicas of web on both sides: the service is ambiguous, names decide.
    let mut specs = mac_specs();
    let mut second = mac_specs().remove(0);
    second.id = "cccc000000000000000000000000000000000000000000000000000000000001";
    second.name = "shop-web-2";
    second.uj = second.uj.iter().map(|u| u / 2).collect();
    specs.push(second);
    let a = build(&specs, "vm", "powermetrics", false);
    let b = build(&specs, "host", "rapl", false);
    let cmp = compare("a", &a, "b", &b, Some(1e-12));
    let web_rows: Vec<_> = cmp.rows.iter().filter(|r| r.label == "web").collect();
    assert_eq!(web_rows.len(), 2);
    assert!(web_rows.iter().all(|r| r.matched_by == MatchedBy::Name));
    assert!(cmp.passed, "identical runs differ: {}", cmp.to_text());
}
