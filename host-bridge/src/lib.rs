//! joulebridge host bridge.
//!
//! Data flows sources → pipeline → sinks:
//! - [`sources`]: guest agent connections and host power readings.
//! - `pipeline`: alignment and attribution (pure functions).
//! - `sinks`: live view, Prometheus, reports.
//! - [`recording`]: the file every live run writes and every offline command reads.
//! - [`clock`]: the host monotonic clock everything is stamped with.

pub mod clock;
pub mod recording;
pub mod sources;
