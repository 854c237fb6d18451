mod power_captures;
mod power_fixtures;
mod power_hostcpu;
mod power_rapl;
mod power_replay;
mod power_spawn;
