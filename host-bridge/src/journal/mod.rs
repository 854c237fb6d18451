//! The journal: what the bridge has received, kept durably and in order.
//!
//! Everything that reaches the bridge becomes a [`RecordEntry`] — guest messages from the
//! connections, power readings and source changes from the power task — and passes through
//! here before anyone else sees it:
//!
//! - [`power`] and [`record`]: the entry types, frozen at [`RECORDING_VERSION`] (the recording
//!   layout; a recording written by any earlier build of version 1 still decodes).
//! - [`file`](mod@file): the recording file, its writer (append, sync, torn-tail repair) and its reader.
//! - [`recorder`]: the ingest hub: drops resent samples, writes, syncs, then acknowledges to
//!   agents and hands each entry to the observers (the live pipeline).
//!
//! The journal knows nothing of sources, the pipeline or sinks: they import it, never the
//! other way round.

pub mod file;
pub mod power;
pub mod record;
pub mod recorder;

pub use file::{ReadRecording, RecordingError, RecordingReader, RecordingWriter};
pub use power::{HostCpu, PowerSample, PowerSourceKind, Provenance, VmShare};
pub use record::{MAGIC, RECORDING_VERSION, RecordEntry, RecordingHeader, SessionStart};
