//! The messages of wire format v1.
//!
//! bincode is not self-describing: **never reorder, retype or remove a field or a variant**.
//! New message kinds go at the end of [`Message`]; anything else needs a new major version.
//! The golden frames in `protocol/tests/fixtures/v1/` fail the build when this file changes the
//! bytes on the wire.
//!
//! Conversation (the guest dials, the bridge listens):
//!
//! ```text
//! agent                                   bridge
//!   Hello ─────────────────────────────────►  checks major version (Error + close if unknown)
//!   Containers (full table) ────────────────►
//!   Sample seq=n, n+1, … ───────────────────►  records, then
//!   ◄───────────────────────────────── Ack    highest seq durably recorded
//!   Ping t0 ────────────────────────────────►
//!   ◄───────────────────────────── Pong t0,t1,t2
//!   Goodbye ────────────────────────────────►  (either side may send Goodbye or Error)
//!   ◄──────────────────────────────── Energy   (v1.1, only to agents whose Hello says
//!                                               minor ≥ 1: attributed energy, per window)
//! ```
//!
//! Minor versions: 1.0 is the first release; 1.1 added [`Message::Energy`]. A bridge sends a
//! message kind only to agents whose Hello announces a minor version that has it, so older
//! agents never see a variant they cannot decode; an agent never sends Energy, so older
//! bridges are unaffected.

use serde::{Deserialize, Serialize};

use crate::units::{Bytes, CpuMicros, MicroJoules, MonoNanos, UnixNanos};

/// Version of the wire format. A peer rejects an unknown `major`; `minor` only adds messages
/// at the end of [`Message`], which an older peer answers with an [`ErrorCode::Unsupported`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolVersion {
    /// Incompatible changes bump this.
    pub major: u16,
    /// Compatible additions bump this.
    pub minor: u16,
}

/// Everything that travels between a guest agent and a host bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Agent → bridge, first frame of every connection.
    Hello(Hello),
    /// Agent → bridge: cumulative counters at one instant.
    Sample(Sample),
    /// Agent → bridge: what is known about containers (names, compose labels, state).
    Containers(Containers),
    /// Bridge → agent: every sample with `seq <= Ack.seq` of this stream is durably recorded.
    Ack(Ack),
    /// Agent → bridge: clock probe.
    Ping(Ping),
    /// Bridge → agent: answer to a [`Ping`].
    Pong(Pong),
    /// Either side: orderly end of the connection.
    Goodbye(Goodbye),
    /// Either side: the peer did something wrong; the sender closes the connection after this.
    Error(ErrorMessage),
    /// Bridge → agent (v1.1): the energy attributed to this VM and its containers, cumulative,
    /// at the end of one attribution window.
    Energy(EnergyReport),
}

/// The first minor version of v1 that has [`Message::Energy`].
pub const ENERGY_SINCE_MINOR: u16 = 1;

/// Energy the bridge attributed to one VM and its containers, handed back to the guest so that
/// Linux energy tools inside it can read it (`guest-agent --expose-energy`).
///
/// Every figure is cumulative since the start of the bridge's recording named by `epoch`, in
/// integer µJ: the same recording gives the same figures after a bridge restart, and a new
/// `epoch` tells the agent that the counters start again from zero. Containers the bridge has
/// seen in this VM keep their entry (and their total) after they exit, so a consumer can take
/// differences between any two reports of one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnergyReport {
    /// Names the recording the cumulative figures count from (random, chosen at its creation).
    pub epoch: u64,
    /// End of the window this report closes, on the host's wall clock.
    pub window_end: UnixNanos,
    /// How the host energy behind these figures was obtained.
    pub provenance: EnergyProvenance,
    /// The VM as a whole: its containers, its own system work and (by the idle policy) its part
    /// of idle.
    pub vm: AttributedEnergy,
    /// Each container's part of `vm`.
    pub containers: Vec<ContainerEnergy>,
}

/// Where the host energy came from, as the bridge labels it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnergyProvenance {
    /// A hardware energy counter (RAPL).
    Measured,
    /// The platform vendor's own model (Apple's `powermetrics`/IOReport figures).
    VendorModel,
    /// joulebridge's utilisation estimate: no sensor on the host.
    Estimated,
}

/// A cumulative energy figure with its bounds, all µJ.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributedEnergy {
    /// The attributed energy.
    pub energy: MicroJoules,
    /// Lower bound of the same cumulative figure.
    pub low: MicroJoules,
    /// Upper bound of the same cumulative figure.
    pub high: MicroJoules,
}

/// One container's cumulative attributed energy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerEnergy {
    /// Same key as [`ContainerCounters::id`].
    pub id: String,
    /// Its name when the bridge knows one (else empty).
    pub name: String,
    /// The figure.
    pub energy: AttributedEnergy,
}

/// Identity of the sending agent and its VM. Sent once per connection, first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Wire format the agent speaks. Must stay the first field of the first variant: the
    /// bridge reads it before anything else (see `codec::peek_version`).
    pub protocol: ProtocolVersion,
    /// `CARGO_PKG_VERSION` of the agent.
    pub agent_version: String,
    /// The guest kernel's boot id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Random per agent process. Together with `boot_id` it names a *stream*: sequence numbers
    /// restart when the agent restarts, so the bridge de-duplicates by (boot, instance, seq).
    pub instance_id: u64,
    /// A human label for the VM (`--vm-name`, default the hostname).
    pub vm_name: String,
    /// Guest hostname.
    pub hostname: String,
    /// Guest `uname -r`.
    pub kernel_release: String,
    /// How the guest's cgroups are mounted.
    pub cgroup_mode: CgroupMode,
    /// Online CPUs in the guest.
    pub cpu_count: u32,
    /// Guest clocks read together when the connection was made.
    pub clock: ClockReading,
    /// Nominal sampling period of the agent.
    pub sample_period_ms: u32,
    /// Whether the agent gets names from a container engine (false = cgroup-only).
    pub has_container_metadata: bool,
    /// Optional shared secret, compared by the bridge when it is configured with one.
    pub auth_token: Option<String>,
}

/// The cgroup layout the agent found in `/proc/self/mountinfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupMode {
    /// Only cgroup2 (`/sys/fs/cgroup`).
    V2,
    /// Only v1 controller hierarchies.
    V1,
    /// v1 controllers plus cgroup2 at `/sys/fs/cgroup/unified`.
    Hybrid,
    /// No cgroup filesystem found.
    None,
}

/// Two clocks read back to back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockReading {
    /// `CLOCK_MONOTONIC`.
    pub mono_ns: MonoNanos,
    /// `CLOCK_REALTIME`.
    pub unix_ns: UnixNanos,
}

/// Cumulative counters at one instant. Deltas are computed only at the bridge, so a lost or
/// dropped sample costs time resolution, never CPU time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Per stream, starting at 0 and increasing by one per sample taken (gaps = agent drops).
    pub seq: u64,
    /// When the counters were read, on the guest's clocks.
    pub clock: ClockReading,
    /// VM-wide CPU time from `/proc/stat`.
    pub vm: ProcStat,
    /// One entry per container cgroup seen in this sample.
    pub containers: Vec<ContainerCounters>,
}

/// The aggregate `cpu` line of `/proc/stat`, converted from USER_HZ ticks to µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ProcStat {
    pub user: CpuMicros,
    pub nice: CpuMicros,
    pub system: CpuMicros,
    pub idle: CpuMicros,
    pub iowait: CpuMicros,
    pub irq: CpuMicros,
    pub softirq: CpuMicros,
    pub steal: CpuMicros,
    /// Already included in `user` (kernel accounting); never add it again.
    pub guest: CpuMicros,
    /// Already included in `nice`.
    pub guest_nice: CpuMicros,
}

impl ProcStat {
    /// Time the guest spent doing work: user + nice + system + irq + softirq.
    /// Excludes idle, iowait, steal (the host did not run us) and guest (already in user).
    #[must_use]
    pub fn busy(&self) -> CpuMicros {
        self.user + self.nice + self.system + self.irq + self.softirq
    }

    /// Every field that accounts time: busy + idle + iowait + steal (guest and guest_nice are
    /// already inside user and nice). Over an interval it is the interval × CPUs when the CPUs
    /// ran the whole time.
    #[must_use]
    pub fn accounted(&self) -> CpuMicros {
        self.busy() + self.idle + self.iowait + self.steal
    }
}

/// Cumulative counters of one container cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerCounters {
    /// The container id (64 hex digits) where the layout names one, else the cgroup path
    /// relative to the cgroup root (for cgroups the user named explicitly).
    pub id: String,
    /// cgroup CPU accounting.
    pub cpu: CpuCounters,
    /// `memory.current` (v2) or `memory.usage_in_bytes` (v1); a gauge. `None` when the
    /// memory controller is absent, or when the agent did not read it in this sample: it reads
    /// memory and IO only every N-th sample (`--slow-counters-every`), so a consumer keeps the
    /// last `Some` value it saw rather than taking `None` as zero.
    pub memory_current: Option<Bytes>,
    /// Cumulative block IO, summed over devices. `None` when the IO controller is absent, or
    /// when the agent did not read it in this sample (see `memory_current`): the next `Some`
    /// carries everything since, so deltas are taken between `Some` values.
    pub io: Option<IoCounters>,
    /// CPU limit in millicores from `cpu.max` (v2) or `cpu.cfs_quota_us` (v1); `None` = none.
    pub cpu_limit_millicores: Option<u32>,
}

/// cgroup CPU accounting, all cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuCounters {
    /// `usage_usec` (v2) or `cpuacct.usage` / 1000 (v1).
    pub usage: CpuMicros,
    /// `user_usec` (v2) or `cpuacct.stat user` ticks in µs (v1).
    pub user: CpuMicros,
    /// `system_usec` (v2) or `cpuacct.stat system` ticks in µs (v1).
    pub system: CpuMicros,
    /// `nr_periods` (zero without the cpu controller). The throttling fields are cumulative in
    /// every sample: where the agent reads them less often (v1 `cpu.stat`, every N-th sample),
    /// the samples between repeat the last value read, so they never go backwards.
    pub nr_periods: u64,
    /// `nr_throttled`.
    pub nr_throttled: u64,
    /// `throttled_usec` (v2) or `throttled_time` / 1000 (v1).
    pub throttled: CpuMicros,
}

/// Block IO of one cgroup, summed over devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoCounters {
    /// Bytes read.
    pub read: Bytes,
    /// Bytes written.
    pub write: Bytes,
}

/// Container metadata. `full = true` replaces the bridge's table for this stream (sent after
/// every Hello); otherwise the entries are updates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Containers {
    /// Whether this is the whole table.
    pub full: bool,
    /// Entries keyed by [`ContainerInfo::id`] (the same id as in [`ContainerCounters`]).
    pub entries: Vec<ContainerInfo>,
}

/// What the container engine says about one container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Same key as [`ContainerCounters::id`].
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Image reference as the engine reports it.
    pub image: String,
    /// `com.docker.compose.project`.
    pub compose_project: Option<String>,
    /// `com.docker.compose.service`.
    pub compose_service: Option<String>,
    /// `com.docker.compose.container-number`.
    pub compose_number: Option<u32>,
    /// Remaining labels (sorted by key).
    pub labels: Vec<(String, String)>,
    /// Main PID in the guest's root PID namespace.
    pub pid: Option<u32>,
    /// cgroup path relative to the cgroup root.
    pub cgroup_path: String,
    /// Lifecycle state.
    pub state: ContainerState,
}

/// Lifecycle of a container as the engine reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Running.
    #[default]
    Running,
    /// Exited (`die`); its counters are final.
    Exited,
    /// Removed (`destroy`).
    Removed,
}

/// Acknowledgement of durable recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Highest sequence number recorded; the agent may forget every sample up to it.
    pub seq: u64,
}

/// Clock probe (NTP-style).
///
/// Only the guest sees t3 (when a Pong arrives), so each Ping carries the t3 of the previous
/// Pong: with the recorded Pong (t0, t1, t2) the bridge then has the full round trip and can keep
/// the minimum-RTT offset estimate, whose error is at most RTT/2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Probe number, echoed in the Pong.
    pub id: u64,
    /// t0: guest monotonic clock when sent.
    pub guest_send: MonoNanos,
    /// When the Pong of an earlier Ping arrived at the guest (t3), if one did.
    pub prev_pong: Option<PongReceipt>,
}

/// When the guest received a [`Pong`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PongReceipt {
    /// The Pong's id.
    pub id: u64,
    /// t3: guest monotonic clock when the Pong arrived.
    pub guest_recv: MonoNanos,
}

/// Answer to a [`Ping`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The Ping's id.
    pub id: u64,
    /// t0, echoed.
    pub guest_send: MonoNanos,
    /// t1: host monotonic clock when the Ping arrived.
    pub host_recv: MonoNanos,
    /// t2: host monotonic clock when the Pong was sent.
    pub host_send: MonoNanos,
}

/// Orderly close.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye {
    /// Why, for logs.
    pub reason: String,
}

/// A protocol error reported to the peer before closing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// Machine-readable kind.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

/// Kinds of protocol errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The peer's major protocol version is not supported.
    UnsupportedVersion,
    /// A frame could not be decoded.
    MalformedFrame,
    /// A frame was longer than `MAX_FRAME_LEN`.
    FrameTooLarge,
    /// The first frame was not a Hello, or a message came out of order.
    UnexpectedMessage,
    /// The bridge is at its connection limit.
    Busy,
    /// The auth token was missing or wrong.
    Unauthorized,
    /// A message the receiver does not know (newer minor version).
    Unsupported,
}
