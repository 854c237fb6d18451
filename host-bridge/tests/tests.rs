
mod power_captures;
