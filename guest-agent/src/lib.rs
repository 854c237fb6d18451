//! joulebridge guest agent.
