//! The record types: everything a recording holds, frozen at [`RECORDING_VERSION`].
//!
//! The file layout and its I/O are in [`super::file`]; these types are shared by the writer,
//! the reader, the recorder and every consumer of entries (the pipeline, reports).

use protocol::{Message, MonoNanos, UnixNanos};
use serde::{Deserialize, Serialize};

use super::power::{PowerSample, PowerSourceKind, Provenance};

/// First bytes of every recording.
pub const MAGIC: &[u8; 16] = b"JOULEBRIDGE-REC\n";

/// Version of the recording layout (independent of the wire protocol version).
pub const RECORDING_VERSION: u16 = 1;

/// Written once, right after [`MAGIC`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingHeader {
    /// [`RECORDING_VERSION`] of the writer.
    pub version: u16,
    /// `CARGO_PKG_VERSION` of the bridge that created the file.
    pub created_by: String,
    /// When the file was created.
    pub created_unix_ns: UnixNanos,
}

/// One thing that happened, stamped on the bridge's monotonic clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RecordEntry {
    /// A bridge process started (or restarted) writing to this file.
    Session(SessionStart),
    /// A message received from (or, for Pong, sent to) a guest agent.
    Guest {
        /// Connection number, unique within the session that follows the last `Session`.
        conn: u64,
        /// Bridge monotonic time at arrival.
        at: MonoNanos,
        /// The message as decoded.
        message: Message,
    },
    /// A host power reading.
    Power(PowerSample),
    /// The power source in use, and why it was chosen.
    PowerSource {
        /// The source. Stored as its name (`powermetrics`, `rapl`, `estimate`, `replay`), as
        /// version-1 recordings always have (the field was a `String`): see
        /// `power::kind_by_name`.
        #[serde(with = "super::power::kind_by_name")]
        kind: PowerSourceKind,
        /// Why it was chosen (auto-selection reasoning or "named by the user").
        reason: String,
        /// Whether its figures are measured or estimated.
        provenance: Provenance,
    },
    /// Host power is missing for `[from, to]` (source died and was restarted, …).
    PowerGap {
        /// Start of the gap.
        from: MonoNanos,
        /// End of the gap.
        to: MonoNanos,
        /// What happened.
        reason: String,
    },
}

/// A bridge process starting to write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStart {
    /// `CARGO_PKG_VERSION`.
    pub bridge_version: String,
    /// Bridge monotonic clock at start.
    pub mono: MonoNanos,
    /// Wall clock at start.
    pub unix: UnixNanos,
    /// Host name of the bridge machine.
    pub hostname: String,
    /// `std::env::consts::OS`.
    pub os: String,
}
