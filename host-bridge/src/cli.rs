//! Command-line flags, as typed by the user: every clap type of the bridge, and nothing else.
//! One subcommand per way of running the bridge; each has its own `…Args` struct, validated
//! into configuration in [`crate::config`]. Values that have a domain type (the idle policy)
//! are parsed straight into it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

use crate::pipeline::IdlePolicy;

/// joulebridge host bridge: receives guest agent streams, records them and (with a power
/// source) attributes host energy to containers.
#[derive(Debug, Clone, Parser)]
#[command(name = "host-bridge", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,

    /// Log format on stderr. The level comes from `RUST_LOG` (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Accept guest agents, record everything they send, show a live per-container table.
    Serve(ServeArgs),
    /// Record a baseline and one command's run, then write its report. Exits with the
    /// command's exit code.
    Measure(MeasureArgs),
    /// Attribute a recording (any idle policy, offline) and write JSON, CSV, JSONL and HTML.
    Report(ReportArgs),
    /// Compare two runs of one workload (e.g. Mac vs Linux-native); for CI with
    /// `--max-share-diff` (exit code 3 when exceeded).
    Compare(CompareArgs),
    /// Write Green Metrics Tool metric-provider files of per-container energy.
    ExportGmt(ExportGmtArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
}

/// Flags of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Where to accept agents: `tcp://HOST:PORT`, `unix:///path` or (Linux hosts)
    /// `vsock://CID:PORT` (`vsock://any:PORT` for every CID). Repeatable.
    #[arg(
        long = "listen",
        value_name = "ENDPOINT",
        default_value = "tcp://127.0.0.1:7777"
    )]
    pub listen: Vec<String>,

    /// Recording file; appended to when it exists (a restarted bridge continues it).
    /// Default: `./joulebridge-<UTC date-time>.jbr`.
    #[arg(long, value_name = "PATH")]
    pub record: Option<PathBuf>,

    /// Most agents connected at once; more are told "busy" and retry later.
    #[arg(long, default_value_t = 64)]
    pub max_connections: usize,

    /// Shared secret agents must present in their Hello.
    #[arg(long, env = "JOULEBRIDGE_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,

    /// Do not draw the live table (it is also off when stdout is not a terminal).
    #[arg(long)]
    pub no_live: bool,

    /// Close a connection whose peer stops in the middle of a frame for this long.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub frame_timeout_ms: u64,

    /// Close a connection that sends nothing at all for this long (agents ping every 10 s).
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub idle_timeout_s: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics. Default `127.0.0.1:9464` (loopback:
    /// the page names containers and images); when the default port is taken the bridge runs
    /// on without metrics, when an address given here cannot be bound it stops.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Do not serve Prometheus metrics.
    #[arg(long)]
    pub no_metrics: bool,

    /// Live attribution settings.
    #[command(flatten)]
    pub attribution: AttributionArgs,

    /// Host power source settings.
    #[command(flatten)]
    pub power: PowerArgs,
}

/// Host power source flags, shared by `serve` and `measure` (validated into
/// [`crate::sources::power::PowerConfig`] by [`crate::config`]).
#[derive(Debug, Clone, Args)]
pub struct PowerArgs {
    /// Host power source: `auto` (powermetrics on macOS; RAPL on Linux when readable; else the
    /// utilisation estimate), `powermetrics`, `rapl`, `estimate` or `replay:<capture.plist>`.
    #[arg(long = "power", value_name = "SOURCE", default_value = "auto")]
    pub source: String,

    /// Power sampling interval.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub power_interval_ms: u64,

    /// PID of the VM process whose share of host power goes to the containers.
    #[arg(long, value_name = "PID", conflicts_with = "vm_name")]
    pub vm_pid: Option<i64>,

    /// VM process names, comma-separated: `name`, `prefix*` or (macOS) `coalition/name`; `*`
    /// counts every host process (agent running on the host itself). Default: Docker Desktop's
    /// VM on macOS; `qemu-system-*`, `qemu-kvm`, `firecracker`, `cloud-hyperviso*`, `crosvm` on
    /// Linux.
    #[arg(long, value_name = "NAMES")]
    pub vm_name: Option<String>,

    /// Estimate: whole-host idle power in watts (default 0.74 W per CPU).
    #[arg(long, value_name = "WATTS")]
    pub estimate_idle_watts: Option<f64>,

    /// Estimate: whole-host full-load power in watts (default 3.5 W per CPU).
    #[arg(long, value_name = "WATTS")]
    pub estimate_max_watts: Option<f64>,

    /// The powermetrics executable (default: `powermetrics` on PATH).
    #[arg(long, value_name = "PATH")]
    pub powermetrics_path: Option<PathBuf>,

    /// Replay pace: `recorded` (the capture's own timing) or `fast` (no waiting).
    #[arg(long, value_enum, default_value_t = ReplayPace::Recorded)]
    pub replay_pace: ReplayPace,
}

impl Default for PowerArgs {
    /// The flags' defaults (as if none were given).
    fn default() -> Self {
        Self {
            source: "auto".to_string(),
            power_interval_ms: 1000,
            vm_pid: None,
            vm_name: None,
            estimate_idle_watts: None,
            estimate_max_watts: None,
            powermetrics_path: None,
            replay_pace: ReplayPace::Recorded,
        }
    }
}

/// Pace of `--power replay:<path>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplayPace {
    /// The capture's own timing.
    Recorded,
    /// As fast as the pipeline takes samples.
    Fast,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Attribution flags shared by every command that reads a recording.
#[derive(Debug, Clone, Args)]
pub struct AttributionArgs {
    /// Idle policy: where idle power goes.
    #[arg(long, value_enum, default_value_t = IdlePolicy::Exclude)]
    pub policy: IdlePolicy,

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

/// `--policy` takes the pipeline's own [`IdlePolicy`], spelled as in reports.
impl ValueEnum for IdlePolicy {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self {
            Self::Exclude => "Containers get dynamic energy only; idle is its own bucket",
            Self::Proportional => "Idle is spread like dynamic energy, by CPU time",
            Self::Reserved => "Idle is spread by reservation (CPU limits, else equally)",
        };
        Some(PossibleValue::new(self.as_str()).help(help))
    }
}

/// Flags of `measure`.
#[derive(Debug, Clone, Args)]
pub struct MeasureArgs {
    /// Seconds of baseline (idle) recording before the command starts; its mean power is
    /// used as the measured idle power. 0 = no baseline (idle is then estimated).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    pub baseline: f64,

    /// Directory for the recording and the report (created if missing).
    #[arg(long, value_name = "DIR", default_value = "joulebridge-measure")]
    pub out: PathBuf,

    /// Where to accept agents (as `serve --listen`). Repeatable.
    #[arg(
        long = "listen",
        value_name = "ENDPOINT",
        default_value = "tcp://127.0.0.1:7777"
    )]
    pub listen: Vec<String>,

    /// Attribution settings (`--idle-watts` overrides the baseline).
    #[command(flatten)]
    pub attribution: AttributionArgs,

    /// Host power source settings (as `serve`).
    #[command(flatten)]
    pub power: PowerArgs,

    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Output format as typed on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// `report.json`: every figure with bounds, policy, source, quality.
    Json,
    /// `summary.csv` and `series.csv`.
    Csv,
    /// `series.jsonl`: one window per line.
    Jsonl,
    /// `report.html`: a self-contained page with a stacked power chart.
    Html,
    /// All of the above.
    All,
}

/// Flags of `report`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// The recording (`.jbr`) written by `serve` or `measure`.
    pub recording: PathBuf,

    /// Formats to write (comma-separated or repeated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub format: Vec<FormatArg>,

    /// Directory for the report files (created if missing).
    #[arg(long, value_name = "DIR", default_value = "joulebridge-report")]
    pub out: PathBuf,

    /// Attribution settings.
    #[command(flatten)]
    pub attribution: AttributionArgs,
}

/// Flags of `compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Run A: report JSON or recording (usually the Mac/VM run).
    pub a: PathBuf,

    /// Run B: report JSON or recording (usually the Linux-native run).
    pub b: PathBuf,

    /// Fail (exit code 3) when any container's energy share differs by more than this
    /// fraction (0.05 = 5 percentage points). For CI.
    #[arg(long, value_name = "FRACTION")]
    pub max_share_diff: Option<f64>,

    /// Also write the comparison as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Attribution settings for inputs that are recordings.
    #[command(flatten)]
    pub attribution: AttributionArgs,
}

/// Flags of `export-gmt`.
#[derive(Debug, Clone, Args)]
pub struct ExportGmtArgs {
    /// The recording (`.jbr`).
    pub recording: PathBuf,

    /// Directory for the `<metric>.log` files (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Attribution windows per GMT sample line. Raise it when containers are idle for
    /// stretches, so that GMT's ±20 % sampling-rate check holds.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub windows_per_line: usize,

    /// Attribution settings.
    #[command(flatten)]
    pub attribution: AttributionArgs,
}

/// Flags of `completions`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell, e.g. `bash` (`host-bridge completions bash > /etc/bash_completion.d/host-bridge`).
    #[arg(value_enum)]
    pub shell: Shell,
}
