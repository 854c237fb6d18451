
mod power_captures;
mod power_fixtures;
