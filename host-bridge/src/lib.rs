//! joulebridge host bridge.
//!
//! Data flows sources → pipeline → sinks:
//! - [`sources`]: guest agent connections and host power readings.
//! - `pipeline`: alignment and attribution (pure functions).
//! - `sinks`: recordings, live view, Prometheus, reports.

pub mod sources;
