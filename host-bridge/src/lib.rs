//! joulebridge host bridge.
//!
//! Data flows sources → journal → pipeline → sinks, and the module tree says so:
//! - [`sources`]: guest agent connections ([`sources::guest`]) and host power readings
//!   ([`sources::power`]).
//! - [`journal`]: the record types (frozen, versioned), the recording file, and the recorder
//!   that dedupes, writes, syncs and acknowledges.
//! - [`pipeline`]: alignment, apportionment and the ledger (pure, integer µJ), and the
//!   published [`pipeline::LedgerView`].
//! - [`sinks`]: the Prometheus page and the live table, rendering the latest view.
//! - [`report`]: reports (JSON, CSV, HTML), `compare` and GMT export of a recording.
//! - [`clock`]: the host monotonic clock everything is stamped with.
//! - [`serve`]: the `serve` command wiring the layers together; [`commands`]: the other
//!   subcommands.
//! - [`cli`] / [`config`]: every flag, then validated configuration.
//!
//! A module imports only from modules listed after it in the flow (and from `clock`); see
//! DESIGN.md §1.

pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod journal;
pub mod pipeline;
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
