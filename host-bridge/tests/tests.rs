//! The host bridge's integration tests, compiled as one binary (`autotests = false` in
//! Cargo.toml) so the crate and its dependencies are linked once.

// Test helpers may unwrap: a panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

mod attribution_props;
#[cfg(target_os = "linux")]
mod bad_input;
mod compare;
#[cfg(target_os = "linux")]
mod docker_e2e;
#[cfg(target_os = "linux")]
mod docker_lifecycle;
mod gmt;
mod html_chromium;
#[cfg(target_os = "linux")]
mod ingest_real_cgroups;
mod power_captures;
mod power_fixtures;
mod power_hostcpu;
mod power_rapl;
mod power_replay;
mod power_spawn;
mod prometheus_exposition;
mod prometheus_restart;
#[cfg(target_os = "linux")]
mod real_cgroup;
mod report_e2e;
mod report_measure;
mod report_render;
mod report_support;
#[cfg(target_os = "linux")]
mod restart;
#[cfg(target_os = "linux")]
mod serve_power;
mod sim;
mod support;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod vm_e2e;
