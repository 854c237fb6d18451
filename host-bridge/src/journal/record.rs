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

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use protocol::codec;

    use super::*;

    /// `RecordEntry` as version-1 recordings were written when `PowerSource.kind` was a
    /// `String`. Only the position of `PowerSource` matters to the encoding, so the variants
    /// before it carry nothing here.
    #[derive(Debug, Serialize, Deserialize)]
    enum V1Entry {
        Session(()),
        Guest(()),
        Power(()),
        PowerSource {
            kind: String,
            reason: String,
            provenance: Provenance,
        },
    }

    fn frame<T: Serialize>(value: &T) -> BytesMut {
        let mut buf = BytesMut::new();
        codec::encode_frame(value, &mut buf).expect("encodes");
        buf
    }

    #[test]
    fn power_source_kind_keeps_the_v1_bytes_both_ways() {
        for kind in [
            PowerSourceKind::Powermetrics,
            PowerSourceKind::Rapl,
            PowerSourceKind::Estimate,
            PowerSourceKind::Replay,
        ] {
            let old = V1Entry::PowerSource {
                kind: kind.as_str().to_owned(),
                reason: "auto".into(),
                provenance: kind.provenance(),
            };
            let new = RecordEntry::PowerSource {
                kind,
                reason: "auto".into(),
                provenance: kind.provenance(),
            };
            let mut old_bytes = frame(&old);
            assert_eq!(old_bytes, frame(&new), "{kind}");
            let payload = codec::split_frame(&mut old_bytes)
                .expect("a whole frame")
                .expect("one frame");
            let decoded: RecordEntry = codec::decode_payload(&payload).expect("decodes");
            assert_eq!(decoded, new);
        }
    }

    #[test]
    fn an_unknown_power_source_name_is_a_decode_error() {
        let mut bytes = frame(&V1Entry::PowerSource {
            kind: "solar".into(),
            reason: String::new(),
            provenance: Provenance::Measured,
        });
        let payload = codec::split_frame(&mut bytes)
            .expect("a whole frame")
            .expect("one frame");
        assert!(codec::decode_payload::<RecordEntry>(&payload).is_err());
    }
}
