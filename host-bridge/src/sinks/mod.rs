//! Sinks: where the published view goes. Sinks only read [`crate::pipeline::LedgerView`]s;
//! they never trigger sampling or attribution.
//!
//! - [`live`]: the live per-container watts and joules on the terminal.
//! - [`prometheus`]: the `/metrics` page rendering the latest ledger view.

pub mod live;
pub mod prometheus;
