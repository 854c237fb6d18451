//! Counters the guest side of the bridge keeps about itself (frames, connections), read by
//! the Prometheus sink at scrape time. They live with the source that counts them, so the
//! source never has to know which sink shows them.

use std::sync::atomic::AtomicU64;

/// Counters the ingest side increments; read at scrape time.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// Frames received from agents.
    pub frames_received: AtomicU64,
    /// Frames rejected.
    pub frames_rejected: AtomicU64,
    /// Connections accepted.
    pub connections_accepted: AtomicU64,
    /// Connections open now (served by a connection task, handshake included).
    pub connections_open: AtomicU64,
    /// Connections refused at the connection cap.
    pub connections_refused: AtomicU64,
}
