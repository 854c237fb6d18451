//! The joulebridge wire format, shared by `guest-agent` and `host-bridge`.
//!
//! - [`units`]: quantities as newtypes (`MicroJoules`, `CpuMicros`, `Bytes`, `MonoNanos`, …).
//! - [`message`]: the messages of wire format v1 and the rules for changing them.
//! - [`codec`]: length-prefixed frames with a bincode payload; the only module that calls
//!   bincode.
//! - [`endpoint`]: the `vsock://` / `tcp://` / `unix://` address grammar of both binaries.
//! - `testing` (feature `testing`, for dev-dependencies): message builders for tests.
//!
//! This crate has no runtime and does no I/O; it builds on Linux and macOS.
#![deny(missing_docs)]

pub mod codec;
pub mod endpoint;
pub mod message;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod units;

pub use codec::{CodecError, MAX_FRAME_LEN, MessageCodec};
pub use endpoint::{Endpoint, EndpointError, VSOCK_CID_ANY};
pub use message::*;
pub use units::*;

/// The wire format this build speaks.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 1, minor: 1 };
