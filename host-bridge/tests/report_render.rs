//! Renderers on a constructed report: golden JSON and CSV, JSONL and HTML structure.

use host_bridge::pipeline::BucketKind;
use host_bridge::report::model::GridIntensity;
use host_bridge::report::{Format, csv, html, json, write_outputs};

use crate::report_support::{WORKER_ID, assert_golden, mac_report};

#[test]
fn report_json_matches_golden_and_round_trips() {
    let mut report = mac_report();
    report.apply_grid_intensity(GridIntensity::new(400.0));
    let text = json::to_json(&report);
    assert_golden("report_constructed.json", &text);
    let back = json::from_json(&text).unwrap();
    assert_eq!(back, report);
    // Energy is integer µJ in the JSON, with bounds.
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let first = &value["containers"][0];
    assert!(first["energy_uj"].is_u64(), "{first}");
    assert!(first["low_uj"].as_u64().unwrap() <= first["energy_uj"].as_u64().unwrap());
    assert!(first["high_uj"].as_u64().unwrap() >= first["energy_uj"].as_u64().unwrap());
    assert_eq!(value["power_source"]["provenance"], "measured");
    assert_eq!(value["policy"], "exclude");
}

#[test]
fn report_json_of_newer_schema_is_refused() {
    let text =
        json::to_json(&mac_report()).replace("\"schema_version\": 1", "\"schema_version\": 99");
    let err = json::from_json(&text).unwrap_err();
    assert!(err.to_string().contains("99"), "{err}");
}

#[test]
fn report_carbon_is_energy_times_intensity() {
    let mut report = mac_report();
    report.apply_grid_intensity(GridIntensity::new(360.0));
    for c in &report.containers {
        let g = c.carbon_g.unwrap();
        // 1 kWh = 3.6e12 µJ, so at 360 g/kWh one µJ is 1e-10 g.
        #[allow(clippy::cast_precision_loss)]
        let expected = c.energy.energy_uj as f64 * 1e-10;
        assert!(
            (g.grams - expected).abs() < 1e-15,
            "{} vs {expected}",
            g.grams
        );
        assert!(g.low <= g.grams && g.grams <= g.high);
    }
    report.apply_grid_intensity(None);
    assert!(report.containers.iter().all(|c| c.carbon_g.is_none()));
    assert!(!json::to_json(&report).contains("carbon_g"));
}

#[test]
fn report_csv_summary_and_series_match_golden_and_add_up() {
    let report = mac_report();
    let summary = csv::summary_csv(&report);
    let series = csv::series_csv(&report);
    assert_golden("summary_constructed.csv", &summary);
    assert_golden("series_constructed.csv", &series);
    // Every row has as many cells as the header.
    let cols = csv::SUMMARY_HEADER.split(',').count();
    for line in summary.lines() {
        assert_eq!(line.split(',').count(), cols, "{line}");
    }
    // Summing the series' container rows gives each container's energy.
    for c in &report.containers {
        let sum: u64 = series
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|cells| cells[2] == "container" && cells[3] == c.key)
            .map(|cells| cells[5].parse::<u64>().unwrap())
            .sum();
        assert_eq!(sum, c.energy.energy_uj, "{}", c.key);
    }
}

#[test]
fn report_jsonl_has_one_parsable_line_per_window() {
    let report = mac_report();
    let text = csv::series_jsonl(&report);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), report.series.len());
    let mut host = 0;
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        host += v["host_uj"].as_u64().unwrap();
        assert!(v["buckets_uj"]["idle"].is_u64());
    }
    assert_eq!(host, report.totals.host.energy_uj);
}

#[test]
fn report_html_is_self_contained_and_shows_every_container() {
    let mut report = mac_report();
    report.apply_grid_intensity(GridIntensity::new(400.0));
    let page = html::to_html(&report);
    assert_golden("report_constructed.html", &page);
    for c in &report.containers {
        let marker = format!(
            "<path class=\"series\" data-container=\"{}\"",
            c.display_name()
        );
        assert!(page.contains(&marker), "missing {marker}");
        assert!(page.contains(&format!("<tr data-container=\"{}\"", c.display_name())));
    }
    assert!(page.contains("data-bucket=\"idle\""));
    // No scripts and nothing fetched from elsewhere.
    for forbidden in ["<script", "src=", "href=", "url(", "@import", "<link"] {
        assert!(!page.contains(forbidden), "page contains {forbidden}");
    }
    // Totals and carbon shown; the measured source is not marked estimated.
    assert!(page.contains("id=\"total-host\""));
    assert!(page.contains("id=\"total-carbon\""));
    assert!(!page.contains(">estimated<"));
    // Escaped user text (the note has an ampersand).
    assert!(page.contains("power gap &amp; was"));
}

#[test]
fn report_html_marks_every_energy_figure_estimated_without_a_sensor() {
    let report = crate::report_support::build(
        &crate::report_support::mac_specs(),
        "docker-desktop",
        "estimate",
        true,
    );
    let page = html::to_html(&report);
    let marks = page.matches("<span class=\"est\">estimated</span>").count();
    // Three cards + one per container row + one per bucket + the host total + meta + quality.
    let expected = 3 + report.containers.len() + report.totals.buckets.len() + 1 + 2;
    assert_eq!(marks, expected);
}

#[test]
fn report_write_outputs_writes_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_outputs(&mac_report(), &Format::ALL, dir.path()).unwrap();
    let names: Vec<String> = written
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "report.json",
            "summary.csv",
            "series.csv",
            "series.jsonl",
            "report.html"
        ]
    );
    for p in &written {
        assert!(std::fs::metadata(p).unwrap().len() > 0, "{}", p.display());
    }
}

#[test]
fn report_series_keeps_an_idle_container_at_zero() {
    let report = mac_report();
    let key = format!("docker-desktop/{WORKER_ID}");
    assert_eq!(report.series[0].containers_uj[&key], 0);
    assert!(report.series[0].buckets_uj.contains_key(&BucketKind::Idle));
}

#[test]
fn report_html_merges_long_series_into_a_bounded_chart() {
    // 1 300 one-second windows (the constructed 10, repeated): the chart merges neighbours so
    // the page stays small, and each series still carries its whole energy.
    let mut report = mac_report();
    let base = report.series.clone();
    report.series = (0..130)
        .flat_map(|k| {
            base.iter().map(move |p| {
                let mut p = p.clone();
                p.t_start_s += f64::from(k) * 10.0;
                p.t_end_s += f64::from(k) * 10.0;
                p
            })
        })
        .collect();
    for c in &mut report.containers {
        c.energy.energy_uj *= 130;
    }
    let page = html::to_html(&report);
    assert!(page.len() < 400_000, "page is {} bytes", page.len());
    for c in &report.containers {
        let title = format!(
            "<title>{}: {}.{:03} J</title>",
            c.display_name(),
            c.energy.energy_uj / 1_000_000,
            (c.energy.energy_uj % 1_000_000) / 1_000
        );
        assert!(page.contains(&title), "missing {title}");
    }
}

#[test]
fn report_html_of_a_run_without_windows_says_so() {
    let mut report = mac_report();
    report.series.clear();
    let page = html::to_html(&report);
    assert!(page.contains("No attributed windows"));
    assert!(!page.contains("<svg"));
}

#[test]
fn report_html_marks_degraded_windows_in_the_chart() {
    let report = mac_report();
    let degraded = report.series.iter().filter(|p| p.degraded).count();
    assert_eq!(degraded, 1, "the fixture has one degraded window");
    let page = html::to_html(&report);
    assert_eq!(page.matches("<rect class=\"degraded\"").count(), degraded);
    assert!(page.contains("<title>degraded window 8–9 s</title>"));
}
