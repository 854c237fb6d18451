//! Sources: synchronous samplers over an injectable root path, run once per tick inside one
//! `spawn_blocking` by the pipeline, plus the container engine's metadata.
//!
//! - [`cgroup`]: per-container counters from cgroupfs (v1, v2, hybrid), container discovery by
//!   cgroup layout.
//! - [`procfs`]: VM-wide CPU time from `/proc/stat` and the identity fields of the `Hello`.
//! - [`docker`]: container names, images and compose labels from a Docker-compatible engine
//!   (list, then events), as an async task feeding the pipeline.

pub mod cgroup;
pub mod docker;
#[cfg(target_os = "linux")]
pub mod procfs;
