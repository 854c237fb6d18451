//! Sources: synchronous samplers over an injectable root path, run once per tick inside one
//! `spawn_blocking` by the pipeline.
//!
//! - [`cgroup`]: per-container counters from cgroupfs (v1, v2, hybrid), container discovery by
//!   cgroup layout.
//! - [`procfs`]: VM-wide CPU time from `/proc/stat` and the identity fields of the `Hello`.
//! - [`docker`]: container names and labels from the Docker engine.

pub mod cgroup;
pub mod docker;
#[cfg(target_os = "linux")]
pub mod procfs;
