
mod power_captures;
mod power_fixtures;
mod power_spawn;
