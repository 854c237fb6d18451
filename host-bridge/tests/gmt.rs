//! GMT provider files checked against GMT's ingest rules.

use std::collections::BTreeMap;

use host_bridge::report::gmt::{self, CONTAINER_ENERGY_METRIC, ENERGY_UNIT};

use crate::report_support::{START_UNIX_NS, WORKER_ID, mac_report};

#[test]
fn gmt_container_energy_follows_ingest_rules() {
    let report = mac_report();
    let file = gmt::container_energy(&report, 1);
    assert_eq!(file.file_name(), format!("{CONTAINER_ENERGY_METRIC}.log"));
    assert_eq!(file.sampling_rate_ms, 1_000);
    let summary = gmt::check(&file.text, ENERGY_UNIT, file.sampling_rate_ms)
        .unwrap_or_else(|v| panic!("GMT would reject the file: {v:#?}\n{}", file.text));
    assert_eq!(summary.details, report.containers.len());
    assert_eq!(summary.lines, file.lines);

    // Parse the way GMT's pandas reader does and check each rule independently.
    let mut per_detail: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for line in file.text.lines() {
        let cols: Vec<&str> = line.split(' ').collect();
        assert_eq!(cols.len(), 3, "{line}");
        let (t, v) = (
            cols[0].parse::<u64>().unwrap(),
            cols[1].parse::<u64>().unwrap(),
        );
        assert!(v > 1, "energy must exceed 1 µJ: {line}");
        assert_eq!(cols[2].len(), 64, "detail is the container id: {line}");
        per_detail.entry(cols[2]).or_default().push((t, v));
    }
    assert!(
        file.text.ends_with('\n'),
        "GMT drops an unterminated last line"
    );
    for (id, samples) in &per_detail {
        assert!(
            samples.windows(2).all(|w| w[0].0 < w[1].0),
            "timestamps of {id} must strictly increase"
        );
        // Stamped at window ends: start + k s, in Unix µs.
        for (t, _) in samples {
            assert_eq!((t - START_UNIX_NS / 1_000) % 1_000_000, 0);
        }
    }
    // Energy is conserved: each container's lines sum to its energy, minus what was carried
    // past the end (≤ 1 µJ per container).
    for c in &report.containers {
        let sum: u64 = per_detail[c.id.as_str()].iter().map(|(_, v)| v).sum();
        assert!(
            sum <= c.energy.energy_uj && c.energy.energy_uj - sum <= 1,
            "{}",
            c.id
        );
    }
    assert_eq!(
        report
            .containers
            .iter()
            .map(|c| c.energy.energy_uj)
            .sum::<u64>()
            - per_detail.values().flatten().map(|(_, v)| v).sum::<u64>(),
        file.unemitted_uj
    );
}

#[test]
fn gmt_carries_sub_microjoule_windows_instead_of_emitting_them() {
    let report = mac_report();
    let file = gmt::container_energy(&report, 1);
    // The worker used 0, 1, 0 µJ in its first windows: no line may carry ≤ 1 µJ, and its first
    // line (window 3, which ends at t = 4 s) carries the 1 µJ of window 1 as well.
    let first = file
        .text
        .lines()
        .find(|l| l.ends_with(WORKER_ID))
        .expect("worker has lines");
    let cols: Vec<&str> = first.split(' ').collect();
    assert_eq!(cols[0], (START_UNIX_NS / 1_000 + 4_000_000).to_string());
    assert_eq!(cols[1], "90001");
}

#[test]
fn gmt_check_flags_a_container_idle_for_long_stretches() {
    // A container that only works every third window yields 3 s intervals against a 1 s rate.
    let mut report = mac_report();
    let key = format!("docker-desktop/{WORKER_ID}");
    for (i, p) in report.series.iter_mut().enumerate() {
        p.containers_uj
            .insert(key.clone(), if i % 3 == 0 { 5_000 } else { 0 });
    }
    let file = gmt::container_energy(&report, 1);
    let violations = gmt::check(&file.text, ENERGY_UNIT, file.sampling_rate_ms).unwrap_err();
    assert!(
        violations.iter().any(|v| v.contains(WORKER_ID)),
        "{violations:?}"
    );
    // One line every three windows (a 3 s rate) brings it back within tolerance, losing
    // no energy.
    let coarse = gmt::container_energy(&report, 3);
    assert_eq!(coarse.sampling_rate_ms, 3_000);
    gmt::check(&coarse.text, ENERGY_UNIT, coarse.sampling_rate_ms)
        .unwrap_or_else(|v| panic!("{v:#?}\n{}", coarse.text));
    let worker_sum: u64 = coarse
        .text
        .lines()
        .filter(|l| l.ends_with(WORKER_ID))
        .map(|l| l.split(' ').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(worker_sum, 4 * 5_000);
}

#[test]
fn gmt_write_creates_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let files = gmt::export(&mac_report(), 1);
    let written = gmt::write(&files, &dir.path().join("gmt")).unwrap();
    assert_eq!(written.len(), 1);
    let text = std::fs::read_to_string(&written[0]).unwrap();
    assert_eq!(text, files[0].text);
}
