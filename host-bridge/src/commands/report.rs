//! `report RECORDING`: attribute a recording (with any idle policy, offline) and write the
//! report in the chosen formats.

use anyhow::Context as _;
use std::io::Write;

use super::report_of_recording;
use crate::cli::{FormatArg, ReportArgs};
use crate::report::{Format, Report, write_outputs};

/// The formats named by `args`, in a fixed order, without duplicates.
#[must_use]
pub fn formats(args: &[FormatArg]) -> Vec<Format> {
    if args.contains(&FormatArg::All) {
        return Format::ALL.to_vec();
    }
    Format::ALL
        .into_iter()
        .filter(|f| {
            args.iter().any(|a| {
                matches!(
                    (a, f),
                    (FormatArg::Json, Format::Json)
                        | (FormatArg::Csv, Format::Csv)
                        | (FormatArg::Jsonl, Format::Jsonl)
                        | (FormatArg::Html, Format::Html)
                )
            })
        })
        .collect()
}

/// A few lines for the terminal: totals and the top containers.
pub fn print_summary(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let est = if report.is_estimated() {
        " (estimated)"
    } else {
        ""
    };
    writeln!(
        out,
        "host {:.3} J{est} over {:.1} s · power source {} · policy {}",
        protocol::MicroJoules(report.totals.host.energy_uj).as_joules_f64(),
        report.duration_s,
        report.power_source.kind,
        report.policy
    )?;
    for c in &report.containers {
        writeln!(
            out,
            "  {:<24} {:>10.3} J  [{:.3}, {:.3}]  {:>5.1} %",
            c.display_name(),
            protocol::MicroJoules(c.energy.energy_uj).as_joules_f64(),
            protocol::MicroJoules(c.energy.low_uj).as_joules_f64(),
            protocol::MicroJoules(c.energy.high_uj).as_joules_f64(),
            c.share * 100.0
        )?;
    }
    for b in &report.totals.buckets {
        writeln!(
            out,
            "  {:<24} {:>10.3} J",
            b.bucket.as_str(),
            protocol::MicroJoules(b.energy.energy_uj).as_joules_f64()
        )?;
    }
    Ok(())
}

/// Run `report`.
///
/// # Errors
/// Unreadable recording, invalid settings, or unwritable output.
pub fn run(args: &ReportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let report = report_of_recording(&args.recording, &args.attribution)?;
    let written = write_outputs(&report, &formats(&args.format), &args.out)
        .context("cannot write the report")?;
    print_summary(&report, out)?;
    for path in written {
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(())
}
