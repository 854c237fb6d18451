//! CSV and JSONL renderings of a [`Report`].
//!
//! Three texts, all plain RFC 4180 CSV (quoted only where needed) or one JSON object per line:
//!
//! Summary (`summary.csv`), one row per container, bucket and the host total:
//! ```text
//! kind,vm,container_id,container_name,compose_project,compose_service,image,energy_uj,low_uj,high_uj,share,cpu_us,carbon_g,carbon_low_g,carbon_high_g,provenance
//! container,docker-desktop,3f…,shop-web-1,shop,web,nginx:1.27,41000000,39000000,43000000,0.62,8100000,,,,measured
//! bucket,,,idle,,,,12000000,12000000,12000000,,,,,,measured
//! total,,,host,,,,90000000,88000000,92000000,,,,,,measured
//! ```
//!
//! Time series (`series.csv`), long ("tidy") format, one row per window and series:
//! ```text
//! t_start_s,t_end_s,kind,key,name,energy_uj,power_w,cpu_us
//! 0,1,container,docker-desktop/3f…,web,41000,0.041,8100
//! ```
//!
//! JSONL (`series.jsonl`): each [`super::model::SeriesPoint`] as one JSON object per line.

use protocol::MicroJoules;

use super::model::{Bounded, CarbonGrams, Report, SeriesPoint};

/// Header of the summary CSV.
pub const SUMMARY_HEADER: &str = "kind,vm,container_id,container_name,compose_project,compose_service,image,energy_uj,low_uj,high_uj,share,cpu_us,carbon_g,carbon_low_g,carbon_high_g,provenance";

/// Header of the time-series CSV.
pub const SERIES_HEADER: &str = "t_start_s,t_end_s,kind,key,name,energy_uj,power_w,cpu_us";

/// Quote a CSV field when it contains a separator, a quote or a line break (RFC 4180).
fn field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

fn carbon_fields(c: Option<CarbonGrams>) -> [String; 3] {
    match c {
        Some(c) => [c.grams.to_string(), c.low.to_string(), c.high.to_string()],
        None => [String::new(), String::new(), String::new()],
    }
}

/// One summary row; `text` fields are quoted as needed.
struct SummaryRow<'a> {
    kind: &'a str,
    vm: &'a str,
    id: &'a str,
    name: &'a str,
    project: &'a str,
    service: &'a str,
    image: &'a str,
    energy: Bounded,
    share: Option<f64>,
    cpu_us: Option<u64>,
    carbon: Option<CarbonGrams>,
}

fn push_summary_row(out: &mut String, row: &SummaryRow<'_>, provenance: &str) {
    let [g, gl, gh] = carbon_fields(row.carbon);
    let cells = [
        field(row.kind),
        field(row.vm),
        field(row.id),
        field(row.name),
        field(row.project),
        field(row.service),
        field(row.image),
        row.energy.energy_uj.to_string(),
        row.energy.low_uj.to_string(),
        row.energy.high_uj.to_string(),
        row.share.map(|s| s.to_string()).unwrap_or_default(),
        row.cpu_us.map(|c| c.to_string()).unwrap_or_default(),
        g,
        gl,
        gh,
        field(provenance),
    ];
    out.push_str(&cells.join(","));
    out.push('\n');
}

/// The summary CSV (header included, `\n` line ends).
#[must_use]
pub fn summary_csv(report: &Report) -> String {
    let provenance = if report.is_estimated() {
        "estimated"
    } else {
        "measured"
    };
    let mut out = String::from(SUMMARY_HEADER);
    out.push('\n');
    for c in &report.containers {
        push_summary_row(
            &mut out,
            &SummaryRow {
                kind: "container",
                vm: &c.vm,
                id: &c.id,
                name: &c.name,
                project: c.compose_project.as_deref().unwrap_or(""),
                service: c.compose_service.as_deref().unwrap_or(""),
                image: &c.image,
                energy: c.energy,
                share: Some(c.share),
                cpu_us: Some(c.cpu_us),
                carbon: c.carbon_g,
            },
            provenance,
        );
    }
    for b in &report.totals.buckets {
        push_summary_row(
            &mut out,
            &SummaryRow {
                kind: "bucket",
                vm: "",
                id: "",
                name: b.bucket.as_str(),
                project: "",
                service: "",
                image: "",
                energy: b.energy,
                share: None,
                cpu_us: None,
                carbon: b.carbon_g,
            },
            provenance,
        );
    }
    for (name, energy, carbon) in [
        ("host", report.totals.host, report.totals.carbon_g),
        ("vm", report.totals.vm, None),
        ("containers", report.totals.containers, None),
    ] {
        push_summary_row(
            &mut out,
            &SummaryRow {
                kind: "total",
                vm: "",
                id: "",
                name,
                project: "",
                service: "",
                image: "",
                energy,
                share: None,
                cpu_us: None,
                carbon,
            },
            provenance,
        );
    }
    out
}

fn push_series_row(
    out: &mut String,
    point: &SeriesPoint,
    kind: &str,
    key: &str,
    name: &str,
    uj: u64,
    cpu_us: Option<u64>,
) {
    let cpu = cpu_us.map(|c| c.to_string()).unwrap_or_default();
    // Writing into a String cannot fail.
    out.push_str(&format!(
        "{},{},{},{},{},{},{},{}",
        point.t_start_s,
        point.t_end_s,
        kind,
        field(key),
        field(name),
        uj,
        MicroJoules(uj).average_watts(point.duration_s()),
        cpu
    ));
    out.push('\n');
}

/// The time-series CSV in long format (header included).
#[must_use]
pub fn series_csv(report: &Report) -> String {
    let mut out = String::from(SERIES_HEADER);
    out.push('\n');
    for point in &report.series {
        push_series_row(&mut out, point, "host", "host", "host", point.host_uj, None);
        for c in &report.containers {
            let uj = point.containers_uj.get(&c.key).copied().unwrap_or(0);
            let cpu = point.cpu_us.get(&c.key).copied().unwrap_or(0);
            push_series_row(
                &mut out,
                point,
                "container",
                &c.key,
                c.display_name(),
                uj,
                Some(cpu),
            );
        }
        for (bucket, uj) in &point.buckets_uj {
            push_series_row(
                &mut out,
                point,
                "bucket",
                bucket.as_str(),
                bucket.as_str(),
                *uj,
                None,
            );
        }
    }
    out
}

/// The series as JSON Lines: one [`SeriesPoint`] per line.
#[must_use]
pub fn series_jsonl(report: &Report) -> String {
    let mut out = String::new();
    for point in &report.series {
        out.push_str(&serde_json::to_string(point).expect("a SeriesPoint always serializes"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_quotes_only_when_needed() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
