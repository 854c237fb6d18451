//! Sinks: where received data goes.
//!
//! - [`recorder`]: the single writer of the recording file; acknowledges samples to agents
//!   once durable, drops duplicates, and passes every recorded entry on to observers.
//! - [`live`]: the live per-container watts and joules on the terminal.
//! - [`prometheus`]: the `/metrics` page rendering the latest ledger view.

pub mod live;
pub mod prometheus;
pub mod recorder;
