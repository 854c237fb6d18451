//! The offline subcommands and `measure`: thin wiring from flags to the library.
//!
//! - [`report`]: recording → report files (JSON, CSV, JSONL, HTML), any idle policy.
//! - [`compare`]: two runs of one workload, with a CI threshold on energy shares.
//! - [`export_gmt`]: Green Metrics Tool provider files.
//! - [`measure`]: record a baseline and a command's run, then report.
//! - [`completions`]: shell completion scripts.
//! - [`live_attribution`]: the engine fed live by `serve` and `measure`, behind `/metrics`.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage, [`EXIT_THRESHOLD`] when `compare` finds a
//! share difference above `--max-share-diff`; `measure` exits with its command's code.

pub mod compare;
pub mod completions;
pub mod export_gmt;
pub mod live_attribution;
pub mod measure;
pub mod report;

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use crate::pipeline::{self, IdleModel, PipelineConfig};
use crate::recording::{ReadRecording, RecordingReader};
use crate::report::Report;
use crate::report::from_attribution::{self, RecordingSource};
use crate::report::model::{GridIntensity, Policy};

/// Exit code of `compare` when the share threshold is exceeded (distinct from failures).
pub const EXIT_THRESHOLD: u8 = 3;

/// Idle policy as typed on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// Containers get dynamic energy only; idle is its own bucket.
    Exclude,
    /// Idle is spread like dynamic energy, by CPU time.
    Proportional,
    /// Idle is spread by reservation (CPU limits, else equally).
    Reserved,
}

impl From<PolicyArg> for Policy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Exclude => Self::Exclude,
            PolicyArg::Proportional => Self::Proportional,
            PolicyArg::Reserved => Self::Reserved,
        }
    }
}

/// Attribution flags shared by every command that reads a recording.
#[derive(Debug, Clone, Args)]
pub struct AttributionArgs {
    /// Idle policy: where idle power goes.
    #[arg(long, value_enum, default_value_t = PolicyArg::Exclude)]
    pub policy: PolicyArg,

    /// Attribution window in seconds (at least 10× the slowest sampling period is best).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub window: f64,

    /// Measured idle power of the host in watts (e.g. from `measure --baseline`); without it
    /// idle is estimated as a fixed fraction of each window and flagged as estimated.
    #[arg(long, value_name = "WATTS")]
    pub idle_watts: Option<f64>,

    /// Grid carbon intensity in gCO2e/kWh; adds grams of CO2e to every energy figure.
    #[arg(long, value_name = "G_PER_KWH")]
    pub grid_intensity: Option<f64>,
}

impl AttributionArgs {
    /// The pipeline configuration these flags describe.
    ///
    /// # Errors
    /// A window or idle power that is not a positive finite number.
    pub fn pipeline_config(&self) -> anyhow::Result<PipelineConfig> {
        anyhow::ensure!(
            self.window.is_finite() && self.window >= 0.001,
            "--window must be at least 0.001 s, got {}",
            self.window
        );
        let idle = match self.idle_watts {
            None => IdleModel::default(),
            Some(w) => {
                anyhow::ensure!(
                    w.is_finite() && w >= 0.0,
                    "--idle-watts must be a non-negative number, got {w}"
                );
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked ≥ 0
                let idle_mw = (w * 1_000.0).round() as u64;
                IdleModel::Baseline { idle_mw }
            }
        };
        Ok(PipelineConfig {
            window: Duration::from_secs_f64(self.window),
            policy: Policy::from(self.policy).into(),
            idle,
            ..PipelineConfig::default()
        })
    }

    /// The grid intensity, validated.
    ///
    /// # Errors
    /// A negative or non-finite intensity.
    pub fn grid(&self) -> anyhow::Result<Option<GridIntensity>> {
        self.grid_intensity
            .map(|g| {
                GridIntensity::new(g).with_context(|| {
                    format!("--grid-intensity must be a non-negative number, got {g}")
                })
            })
            .transpose()
    }
}

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
    let mut head = [0_u8; crate::recording::MAGIC.len()];
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let n = file
        .read(&mut head)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(n == head.len() && &head == crate::recording::MAGIC)
}
