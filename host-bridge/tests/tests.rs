//! The host bridge's integration tests, one binary (see the house style).

#[cfg(target_os = "linux")]
mod bad_input;
#[cfg(target_os = "linux")]
mod docker_lifecycle;
#[cfg(target_os = "linux")]
mod ingest_real_cgroups;
mod power_captures;
mod power_fixtures;
mod power_hostcpu;
mod power_rapl;
mod power_replay;
mod power_spawn;
#[cfg(target_os = "linux")]
mod real_cgroup;
#[cfg(target_os = "linux")]
mod restart;
