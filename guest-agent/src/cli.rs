//! Command-line flags, as typed by the user. Only clap validation happens here; defaults that
//! need reasoning and cross-flag checks live in [`crate::config`].

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// joulebridge guest agent: streams per-container CPU counters from this Linux VM to the
/// joulebridge host bridge.
#[derive(Debug, Clone, Parser)]
#[command(name = "guest-agent", version, about)]
pub struct Cli {
    /// Where the host bridge listens: `vsock://CID:PORT` (CID 2 = the host),
    /// `tcp://HOST:PORT` (e.g. `tcp://host.docker.internal:7777`) or `unix:///path`.
    #[arg(long, env = "JOULEBRIDGE_CONNECT", default_value = "vsock://2:7777")]
    pub connect: String,

    /// Sampling period in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub sample_period_ms: u64,

    /// Read the slow cgroup counters (memory, IO, v1 throttling) every N-th sample only; CPU
    /// time is read every sample. In the samples between, memory and IO are sent as "not read"
    /// and throttling repeats its last value. 1 = read everything every sample.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub slow_counters_every: u64,

    /// Unacknowledged samples kept for resending after a reconnect (3600 = one hour at 1 Hz).
    /// When full, the oldest is dropped: counters are cumulative, so this loses time resolution,
    /// never CPU time.
    #[arg(long, default_value_t = 3600)]
    pub spool_capacity: usize,

    /// Sample this cgroup too (path relative to the cgroup root, e.g. `system.slice/foo`).
    /// Repeatable.
    #[arg(long = "cgroup", value_name = "REL_PATH")]
    pub cgroups: Vec<String>,

    /// Do not discover container cgroups by their names; sample only those named with
    /// `--cgroup` and those the Docker engine reports.
    #[arg(long)]
    pub no_discover: bool,

    /// Root of the file system the agent reads: `<root>/proc/self/mountinfo`, the cgroup
    /// mounts it names, `<root>/proc/stat`. Set it when the host's file system is mounted
    /// elsewhere (e.g. `/host` in a container).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,

    /// Human label for this VM in the bridge's views (default: the hostname).
    #[arg(long)]
    pub vm_name: Option<String>,

    /// Write the energy the bridge attributes to this VM and its containers under DIR, as a
    /// powercap tree (`DIR/powercap`, bind-mount it over /sys/class/powercap so RAPL readers
    /// such as CodeCarbon or pyRAPL work) plus per-container files. Figures are attributed,
    /// not a hardware counter, and move once per attribution window.
    #[arg(long, value_name = "DIR")]
    pub expose_energy: Option<PathBuf>,

    /// Shared secret sent in Hello; the bridge checks it when configured with one.
    #[arg(long, env = "JOULEBRIDGE_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,

    /// Get container names and labels from the Docker engine (default).
    #[arg(long, overrides_with = "no_docker")]
    pub docker: bool,

    /// Do not talk to Docker; report cgroups only.
    #[arg(long, overrides_with = "docker")]
    pub no_docker: bool,

    /// Docker engine address: `unix:///path`, an absolute socket path or `tcp://host:port`.
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker_host: String,

    /// Seconds between clock probes (Ping) to the bridge.
    #[arg(long, default_value_t = 10)]
    pub ping_interval_s: u64,

    /// Give up a connection attempt after this many milliseconds (a vsock connect to a port
    /// with no listener can hang for about 2 s instead of being refused).
    #[arg(long, default_value_t = 3000)]
    pub connect_timeout_ms: u64,

    /// Log format on stderr. The level comes from `RUST_LOG` (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
