
mod power_captures;
mod power_fixtures;
mod power_replay;
mod power_spawn;
