//! joulebridge host bridge.
//!
//! Data flows sources → pipeline → sinks:
//! - [`sources`]: guest agent connections ([`sources::guest`]) and host power readings.
//! - [`pipeline`]: alignment and attribution (pure functions, integer µJ).
//! - [`sinks`]: the recorder (recording file, acks, dedupe), the live view, Prometheus.
//! - [`report`]: reports (JSON, CSV, HTML), `compare` and GMT export.
//! - [`recording`]: the file every live run writes and every offline command reads.
//! - [`clock`]: the host monotonic clock everything is stamped with.
//! - [`cli`] / [`config`]: flags, then validated configuration.
//! - [`serve`]: the `serve` command wiring it all together.

pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod pipeline;
pub mod recording;
pub mod report;
pub mod serve;
pub mod sinks;
pub mod sources;

/// Run `serve` until `shutdown` completes.
///
/// # Errors
/// The recording cannot be opened or written, or a listener cannot be bound.
pub async fn run(config: config::Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    serve::Bridge::bind(config).await?.run(shutdown).await
}
