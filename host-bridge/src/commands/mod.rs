//! The offline subcommands and `measure`: thin wiring from flags to the library.
//!
//! - [`report`]: recording → report files (JSON, CSV, JSONL, HTML), any idle policy.
//! - [`compare`]: two runs of one workload, with a CI threshold on energy shares.
//! - [`export_gmt`]: Green Metrics Tool provider files.
//! - [`measure`]: record a baseline and a command's run, then report.
//! - [`completions`]: shell completion scripts.
//!
//! `serve` itself is wired in [`crate::serve`], which `measure` reuses.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage, [`EXIT_THRESHOLD`] when `compare` finds a
//! share difference above `--max-share-diff`; `measure` exits with its command's code.

pub mod compare;
pub mod completions;
pub mod export_gmt;
pub mod measure;
pub mod report;

use std::path::Path;

use anyhow::Context as _;

use crate::cli::AttributionArgs;
use crate::journal::{MAGIC, ReadRecording, RecordingReader};
use crate::pipeline;
use crate::report::Report;
use crate::report::from_attribution::{self, RecordingSource};

/// Exit code of `compare` when the share threshold is exceeded (distinct from failures).
pub const EXIT_THRESHOLD: u8 = 3;

/// Read a recording, logging a torn tail (a crash while writing; the last frame is ignored).
///
/// # Errors
/// The file cannot be read or is not a recording.
pub fn read_recording(path: &Path) -> anyhow::Result<ReadRecording> {
    let rec = RecordingReader::read_all(path)
        .with_context(|| format!("cannot read recording {}", path.display()))?;
    if rec.torn_tail {
        tracing::warn!(path = %path.display(), "Recording ends inside a frame (the writer crashed); the partial frame is ignored.");
    }
    Ok(rec)
}

/// Attribute a recording and build its report.
///
/// # Errors
/// Unreadable recording or an invalid configuration.
pub fn report_of_recording(path: &Path, args: &AttributionArgs) -> anyhow::Result<Report> {
    let rec = read_recording(path)?;
    let cfg = args.pipeline_config()?;
    let attribution =
        pipeline::attribute_recording(&rec.entries, cfg).context("invalid attribution settings")?;
    let label = path.display().to_string();
    let mut report = from_attribution::report(
        &attribution,
        &cfg,
        &RecordingSource {
            path: Some(&label),
            header: &rec.header,
            entries: &rec.entries,
        },
    );
    report.apply_grid_intensity(args.grid()?);
    Ok(report)
}

/// Whether `path` starts with the recording magic bytes (else it is taken for report JSON).
///
/// # Errors
/// The file cannot be opened or read.
pub fn is_recording(path: &Path) -> anyhow::Result<bool> {
    use std::io::Read as _;
    let mut head = [0_u8; MAGIC.len()];
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let n = file
        .read(&mut head)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(n == head.len() && &head == MAGIC)
}
