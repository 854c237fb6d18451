//! Sources: where data comes from. Guest agents (over vsock, Unix or TCP) and host power.

pub mod guest;
pub mod power;
