//! Guest agents: where the bridge's per-container data comes from.
//!
//! - [`listener`]: TCP, Unix and (Linux hosts) vsock listeners behind one accept loop with a
//!   connection cap.
//! - [`connection`]: one task per agent: handshake and version check, recording, acks,
//!   clock probes, and the rules for bad peers.

pub mod connection;
pub mod listener;
pub mod stats;
