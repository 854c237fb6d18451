//! The host bridge's integration tests: one binary, one module per topic.

mod attribution_props;
mod power_captures;
mod power_fixtures;
mod power_hostcpu;
mod power_rapl;
mod power_replay;
mod power_spawn;
mod sim;
