//! Green Metrics Tool (GMT) metric-provider files for per-container energy.
//!
//! GMT on macOS only sees "the Docker VM" (docs/powermetrics.md §7.3); with these files it can
//! import joulebridge's per-container attribution. Format and ingest rules follow GMT's
//! `metric_providers/base.py` as summarised in docs/powermetrics.md §7.1–7.2 and §7.4:
//!
//! - one file per metric, named `<metric>.log`; one line per sample and container:
//!   `<timestamp_us> <value> <container_id>`, space-separated, newline-terminated;
//! - timestamps are Unix-epoch microseconds, strictly increasing per container (GMT's primary
//!   key is `(metric, detail, time)`), stamped at the end of each attribution window;
//! - energy is integer µJ *per interval* (a delta, not a counter);
//! - for unit `uJ` GMT rejects any value ≤ 1 ("resolution underflow"): a container's energy is
//!   carried forward until it exceeds 1 µJ, so no energy is invented and at most 1 µJ per
//!   container is left unemitted at the end ([`GmtFile::unemitted_uj`]);
//! - GMT checks that the 95th percentile of sample intervals lies within 0.8–1.2× the
//!   provider's sampling rate; the rate of these files is the attribution window
//!   ([`GmtFile::sampling_rate_ms`]). A container that is idle for many windows (energy carried)
//!   produces longer intervals; [`check`] reports it.
//! - GMT drops the text after the last newline (a possibly partial line): every line here ends
//!   with `\n`, so nothing is lost.
//!
//! The metric is [`CONTAINER_ENERGY_METRIC`] (`host_energy_joulebridge_container`): host energy
//! attributed to the container, scope `_container`, detail = the 64-hex container id (GMT maps
//! ids to names itself, `metric_providers/container.py`). It is not a `_machine` metric, so
//! GMT's own container split (PR #795) does not run on it; it *is* the split.
//!
//! Example (`host_energy_joulebridge_container.log`):
//! ```text
//! 1759592254760874 41250 38d1e484…b2ec8
//! 1759592254760874 9800 5a7c…01f2
//! 1759592255760874 40010 38d1e484…b2ec8
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::model::Report;

/// Metric name of the per-container energy file.
pub const CONTAINER_ENERGY_METRIC: &str = "host_energy_joulebridge_container";

/// Unit of [`CONTAINER_ENERGY_METRIC`], as GMT spells it.
pub const ENERGY_UNIT: &str = "uJ";

/// Units for which GMT rejects values ≤ 1 (docs/powermetrics.md §7.2, "resolution underflow").
pub const UNDERFLOW_UNITS: [&str; 4] = ["mJ", "uJ", "Hz", "us"];

/// GMT's sampling-rate tolerance: the 95th percentile interval within this factor range.
pub const RATE_TOLERANCE: (f64, f64) = (0.8, 1.2);

/// Errors of writing GMT files.
#[derive(Debug, thiserror::Error)]
pub enum GmtError {
    /// Creating the output directory or writing a file failed.
    #[error("failed to write GMT file {path:?}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// One provider file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GmtFile {
    /// Metric name; the file is `<metric>.log`.
    pub metric: String,
    /// GMT unit of the values.
    pub unit: &'static str,
    /// Sampling rate to configure in GMT (the attribution window), ms.
    pub sampling_rate_ms: u64,
    /// The file's text.
    pub text: String,
    /// Lines written.
    pub lines: usize,
    /// Energy carried past the last window because it never exceeded 1 µJ, summed over
    /// containers (each container leaves at most 1 µJ).
    pub unemitted_uj: u64,
}

impl GmtFile {
    /// `<metric>.log`.
    #[must_use]
    pub fn file_name(&self) -> String {
        format!("{}.log", self.metric)
    }
}

/// Seconds-from-start to Unix µs, rounded to the nearest µs.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // t ≥ 0 and < 2^53 µs by construction of the series
fn unix_us(start_unix_ns: u64, t_s: f64) -> u64 {
    start_unix_ns / 1_000 + (t_s.max(0.0) * 1e6).round() as u64
}

/// The per-container energy file of `report`, one line per container every
/// `windows_per_line` attribution windows (1 = every window). A coarser cadence keeps
/// intermittently idle containers within GMT's sampling-rate tolerance.
#[must_use]
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // window_s is small, ≥ 0
pub fn container_energy(report: &Report, windows_per_line: usize) -> GmtFile {
    let per_line = windows_per_line.max(1);
    let mut carried: BTreeMap<&str, u64> = BTreeMap::new();
    let mut text = String::new();
    let mut lines = 0;
    for chunk in report.series.chunks(per_line) {
        let end = chunk.last().expect("chunks are never empty");
        let ts = unix_us(report.start_unix_ns, end.t_end_s);
        for c in &report.containers {
            let uj: u64 = chunk
                .iter()
                .map(|p| p.containers_uj.get(&c.key).copied().unwrap_or(0))
                .sum();
            let acc = carried.entry(c.id.as_str()).or_insert(0);
            *acc = acc.saturating_add(uj);
            if *acc > 1 {
                text.push_str(&format!("{ts} {} {}\n", *acc, c.id));
                lines += 1;
                *acc = 0;
            }
        }
    }
    #[allow(clippy::cast_precision_loss)] // a handful of windows
    let rate_s = report.window_s * per_line as f64;
    GmtFile {
        metric: CONTAINER_ENERGY_METRIC.to_string(),
        unit: ENERGY_UNIT,
        sampling_rate_ms: (rate_s * 1_000.0).round().max(1.0) as u64,
        text,
        lines,
        unemitted_uj: carried.values().sum(),
    }
}

/// Every GMT file for `report` (see [`container_energy`] for `windows_per_line`).
#[must_use]
pub fn export(report: &Report, windows_per_line: usize) -> Vec<GmtFile> {
    vec![container_energy(report, windows_per_line)]
}

/// Write `files` into `dir` (created if missing). Returns the paths written.
///
/// # Errors
/// [`GmtError::Write`] when the directory or a file cannot be written.
pub fn write(files: &[GmtFile], dir: &Path) -> Result<Vec<PathBuf>, GmtError> {
    std::fs::create_dir_all(dir).map_err(|source| GmtError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    files
        .iter()
        .map(|f| {
            let path = dir.join(f.file_name());
            std::fs::write(&path, &f.text).map_err(|source| GmtError::Write {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        })
        .collect()
}

/// What [`check`] found in a file that follows the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSummary {
    /// Lines GMT would import.
    pub lines: usize,
    /// Distinct details (containers).
    pub details: usize,
}

/// Check a provider file against GMT's ingest rules (docs/powermetrics.md §7.2), reading it the way
/// GMT does: the text after the last newline is dropped, then each line must be
/// `<int time> <int value> <detail>`.
///
/// `unit` selects the resolution-underflow rule; `sampling_rate_ms` the cadence check.
///
/// # Errors
/// Every rule violation found, one sentence each.
pub fn check(text: &str, unit: &str, sampling_rate_ms: u64) -> Result<CheckSummary, Vec<String>> {
    let mut violations = Vec::new();
    let kept = text.rfind('\n').map_or("", |i| &text[..i]);
    let mut by_detail: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut last_time = 0_u64;
    let mut lines = 0;
    for (n, line) in kept.split('\n').enumerate().filter(|(_, l)| !l.is_empty()) {
        let line_no = n + 1;
        let cols: Vec<&str> = line.split(' ').collect();
        let [time, value, detail] = cols.as_slice() else {
            violations.push(format!(
                "line {line_no}: expected 3 space-separated columns, found {}",
                cols.len()
            ));
            continue;
        };
        let (Ok(time), Ok(value)) = (time.parse::<u64>(), value.parse::<i64>()) else {
            violations.push(format!("line {line_no}: time and value must be integers"));
            continue;
        };
        if detail.is_empty() {
            violations.push(format!("line {line_no}: empty detail"));
        }
        if time < last_time {
            violations.push(format!(
                "line {line_no}: time {time} steps back from {last_time}"
            ));
        }
        last_time = last_time.max(time);
        if UNDERFLOW_UNITS.contains(&unit) && value <= 1 {
            violations.push(format!(
                "line {line_no}: value {value} ≤ 1 {unit} (resolution underflow)"
            ));
        }
        by_detail.entry(detail).or_default().push(time);
        lines += 1;
    }
    let rate_us = sampling_rate_ms.saturating_mul(1_000);
    #[allow(clippy::cast_precision_loss)] // µs intervals ≪ 2^53
    let (lo, hi) = (
        rate_us as f64 * RATE_TOLERANCE.0,
        rate_us as f64 * RATE_TOLERANCE.1,
    );
    for (detail, times) in &by_detail {
        let mut intervals = Vec::with_capacity(times.len());
        for pair in times.windows(2) {
            if pair[1] == pair[0] {
                violations.push(format!("detail {detail}: duplicate timestamp {}", pair[0]));
            }
            intervals.push(pair[1].saturating_sub(pair[0]));
        }
        if intervals.is_empty() {
            continue;
        }
        intervals.sort_unstable();
        let p95 = percentile(&intervals, 0.95);
        if p95 < lo || p95 > hi {
            violations.push(format!(
                "detail {detail}: 95th percentile interval {p95} µs is outside {lo}–{hi} µs"
            ));
        }
    }
    if violations.is_empty() {
        Ok(CheckSummary {
            lines,
            details: by_detail.len(),
        })
    } else {
        Err(violations)
    }
}

/// Linear-interpolated percentile of sorted values (pandas' default `quantile`).
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)] // indices and µs intervals are small
fn percentile(sorted: &[u64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] as f64 + (sorted[hi] as f64 - sorted[lo] as f64) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_rejects_underflow_duplicates_and_bad_cadence() {
        let text = "1000000 5 a\n1000000 7 a\n2000000 1 a\n9000000 9 a\n";
        let errs = check(text, "uJ", 1_000).expect_err("three rules are broken");
        assert!(
            errs.iter().any(|e| e.contains("duplicate timestamp")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.contains("underflow")), "{errs:?}");
        assert!(
            errs.iter().any(|e| e.contains("95th percentile")),
            "{errs:?}"
        );
    }

    #[test]
    fn check_drops_text_after_last_newline_like_gmt() {
        // The unterminated last line would be a violation if it were read.
        let summary = check("1000000 5 a\n2000000 6 a\n3000000 x", "uJ", 1_000)
            .expect("partial tail is ignored");
        assert_eq!(summary.lines, 2);
    }

    #[test]
    fn percentile_interpolates_like_pandas() {
        assert!((percentile(&[1, 2, 3, 4, 5], 0.95) - 4.8).abs() < 1e-9);
    }
}
