//! joulebridge guest agent.

pub mod sources;
