//! Reports: what a user keeps from a run, and how two runs are compared.
//!
//! - [`model`]: the [`Report`] type every output is rendered from (integer µJ with bounds).
//! - [`json`], [`csv`], [`html`]: renderers (JSON, summary/series CSV and JSONL, a
//!   self-contained HTML page with an SVG chart).
//! - [`compare`]: an attributed run against a Linux-native run of the same workload.
//! - [`gmt`]: Green Metrics Tool provider files.
//!
//! Renderers are pure functions from a `&Report` to text; only [`write_outputs`] and
//! [`gmt::write`] touch the file system.

pub mod compare;
pub mod csv;
pub mod from_attribution;
pub mod gmt;
pub mod html;
pub mod json;
pub mod model;

use std::path::{Path, PathBuf};

pub use model::Report;

/// Output formats of `report`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// `report.json`.
    Json,
    /// `summary.csv` and `series.csv`.
    Csv,
    /// `series.jsonl`.
    Jsonl,
    /// `report.html`.
    Html,
}

impl Format {
    /// Every format.
    pub const ALL: [Self; 4] = [Self::Json, Self::Csv, Self::Jsonl, Self::Html];

    /// Files and their contents for this format.
    #[must_use]
    pub fn render(self, report: &Report) -> Vec<(&'static str, String)> {
        match self {
            Self::Json => vec![("report.json", json::to_json(report))],
            Self::Csv => vec![
                ("summary.csv", csv::summary_csv(report)),
                ("series.csv", csv::series_csv(report)),
            ],
            Self::Jsonl => vec![("series.jsonl", csv::series_jsonl(report))],
            Self::Html => vec![("report.html", html::to_html(report))],
        }
    }
}

/// Errors of writing report files.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Creating the directory or writing a file failed.
    #[error("failed to write {path:?}")]
    Write {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Render `formats` of `report` into `dir` (created if missing); returns the files written.
///
/// # Errors
/// [`ReportError::Write`] on any file-system failure.
pub fn write_outputs(
    report: &Report,
    formats: &[Format],
    dir: &Path,
) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for format in formats {
        for (name, text) in format.render(report) {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| ReportError::Write {
                path: path.clone(),
                source,
            })?;
            written.push(path);
        }
    }
    Ok(written)
}
