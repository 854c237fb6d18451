//! Sinks: where the agent's data goes: [`stream`], the connection to the host bridge (vsock,
//! TCP or Unix socket) with its spool of unacknowledged samples, and [`energy`], the files that
//! hand the bridge's attributed energy back to tools inside the VM (`--expose-energy`).

pub mod energy;
pub mod stream;

use std::collections::BTreeMap;

use protocol::ContainerInfo;

/// What the agent knows about containers, keyed by container id. The pipeline publishes the
/// whole table on a `watch` channel (latest wins: the sink diffs it against what it last
/// sent, so no update can be lost to a full queue).
pub type ContainerTable = BTreeMap<String, ContainerInfo>;
