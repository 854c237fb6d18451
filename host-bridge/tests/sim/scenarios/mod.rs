//! One file per scenario; see `sim/mod.rs` for how to add one.

mod many_containers;
mod paused_vm;
mod restart;
mod skew_jitter;
mod steady;
