//! `export-gmt RECORDING --out DIR`: Green Metrics Tool provider files of per-container energy.

use anyhow::Context as _;
use std::io::Write;

use super::report_of_recording;
use crate::cli::ExportGmtArgs;
use crate::report::gmt;

/// Run `export-gmt`.
///
/// # Errors
/// Unreadable recording, invalid settings, or unwritable output.
pub fn run(args: &ExportGmtArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.windows_per_line >= 1,
        "--windows-per-line must be at least 1"
    );
    let report = report_of_recording(&args.recording, &args.attribution)?;
    let files = gmt::export(&report, args.windows_per_line);
    let written = gmt::write(&files, &args.out).context("cannot write GMT files")?;
    for (file, path) in files.iter().zip(&written) {
        writeln!(
            out,
            "wrote {} ({} lines, unit {}, sampling rate {} ms)",
            path.display(),
            file.lines,
            file.unit,
            file.sampling_rate_ms
        )?;
        if let Err(violations) = gmt::check(&file.text, file.unit, file.sampling_rate_ms) {
            for v in violations {
                tracing::warn!(file = %path.display(), violation = %v, "GMT would reject this file; try a larger --windows-per-line.");
            }
        }
    }
    Ok(())
}
