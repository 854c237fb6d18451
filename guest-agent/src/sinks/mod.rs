//! Sinks: where the agent's data goes. Only one today: [`stream`], the connection to the host
//! bridge (vsock, TCP or Unix socket) with its spool of unacknowledged samples.

pub mod stream;

use std::collections::BTreeMap;

use protocol::ContainerInfo;

/// What the agent knows about containers, keyed by container id. The pipeline publishes the
/// whole table on a `watch` channel (latest wins: the sink diffs it against what it last
/// sent, so no update can be lost to a full queue).
pub type ContainerTable = BTreeMap<String, ContainerInfo>;
