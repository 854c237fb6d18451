//! Framing and encoding. **Every bincode call of the project lives in this file**, so the
//! encoding can be swapped (RUSTSEC-2025-0141 marks bincode unmaintained) by touching one module.
//!
//! A frame is a 4-byte big-endian payload length followed by the payload. The payload is the
//! bincode 2.0.1 `standard()` encoding (varint integers, little-endian) of one value, through
//! serde. The length is checked against [`MAX_FRAME_LEN`] *before* any buffer is reserved, and
//! bincode decodes with the same byte limit, so a hostile peer cannot make us allocate more than
//! one frame's worth.

use bytes::{Buf, BufMut, BytesMut};
use serde::{Serialize, de::DeserializeOwned};
use tokio_util::codec::{Decoder, Encoder};

use crate::message::{Message, ProtocolVersion};

/// Largest payload accepted or produced, in bytes. A sample of 1 000 containers is ≈ 100 KiB.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Size of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Errors of framing and encoding.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The length prefix announced more than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not a valid encoding of the expected type.
    #[error("malformed frame payload ({len} bytes)")]
    Decode {
        /// Payload length.
        len: usize,
        /// What bincode said.
        #[source]
        source: bincode::error::DecodeError,
    },
    /// A value could not be encoded (it would exceed the frame limit, for one).
    #[error("failed to encode a frame")]
    Encode(#[source] bincode::error::EncodeError),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes of it received)")]
    Truncated {
        /// Bytes of the unfinished frame received.
        buffered: usize,
    },
    /// Reading or writing the underlying stream failed.
    #[error("transport I/O failed")]
    Io(#[from] std::io::Error),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Encode `value` as one payload (no length prefix).
///
/// # Errors
/// [`CodecError::Encode`] when serde fails or the payload would exceed [`MAX_FRAME_LEN`].
pub fn encode_payload<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(CodecError::Encode)
}

/// Decode one payload (no length prefix). Trailing bytes are an error: a frame holds exactly
/// one value.
///
/// # Errors
/// [`CodecError::Decode`] when the bytes are not a valid `T`.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(payload, config()).map_err(|source| {
        CodecError::Decode {
            len: payload.len(),
            source,
        }
    })?;
    if used != payload.len() {
        return Err(CodecError::Decode {
            len: payload.len(),
            source: bincode::error::DecodeError::OtherString(format!(
                "{} trailing bytes after the value",
                payload.len() - used
            )),
        });
    }
    Ok(value)
}

/// Decode a `T` from the start of `payload`, ignoring what follows; returns the value and the
/// bytes it used. For reading a version field before deciding how to decode the rest.
#[must_use]
pub fn decode_prefix<T: DeserializeOwned>(payload: &[u8]) -> Option<(T, usize)> {
    bincode::serde::decode_from_slice(payload, config()).ok()
}

/// Append `value` as a whole frame (prefix + payload) to `dst`.
///
/// # Errors
/// As [`encode_payload`].
pub fn encode_frame<T: Serialize>(value: &T, dst: &mut BytesMut) -> Result<(), CodecError> {
    let payload = encode_payload(value)?;
    let len = u32::try_from(payload.len()).expect("payload length is bounded by MAX_FRAME_LEN");
    dst.reserve(LEN_PREFIX + payload.len());
    dst.put_u32(len);
    dst.extend_from_slice(&payload);
    Ok(())
}

/// Split one complete frame's payload off the front of `src`, if one is there.
///
/// `Ok(None)` means "need more bytes" (never an error by itself).
///
/// # Errors
/// [`CodecError::FrameTooLarge`] as soon as the prefix announces too much; nothing is reserved.
pub fn split_frame(src: &mut BytesMut) -> Result<Option<BytesMut>, CodecError> {
    if src.len() < LEN_PREFIX {
        return Ok(None);
    }
    let mut prefix = [0u8; LEN_PREFIX];
    prefix.copy_from_slice(&src[..LEN_PREFIX]);
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len > MAX_FRAME_LEN {
        return Err(CodecError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if src.len() < LEN_PREFIX + len {
        src.reserve(LEN_PREFIX + len - src.len());
        return Ok(None);
    }
    src.advance(LEN_PREFIX);
    Ok(Some(src.split_to(len)))
}

/// Read the protocol version from the payload of a first frame, without decoding the rest.
///
/// This works for any past or future major version because [`Message::Hello`] is variant 0
/// and [`crate::Hello::protocol`] is its first field: a peer speaking v7 can still be told
/// "v7 is not supported" in words. Returns `None` when the payload is not a Hello at all.
#[must_use]
pub fn peek_version(payload: &[u8]) -> Option<ProtocolVersion> {
    let (tag, used): (u32, usize) = bincode::serde::decode_from_slice(payload, config()).ok()?;
    if tag != 0 {
        return None;
    }
    let rest = payload.get(used..)?;
    bincode::serde::decode_from_slice::<ProtocolVersion, _>(rest, config())
        .ok()
        .map(|(v, _)| v)
}

/// [`Decoder`]/[`Encoder`] of [`Message`] frames for `tokio_util::codec::Framed`, used by both
/// sides over every transport (vsock, Unix, TCP, in-memory duplex in tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct MessageCodec;

impl Decoder for MessageCodec {
    type Item = Message;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        match split_frame(src)? {
            Some(payload) => decode_payload(&payload).map(Some),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None if src.is_empty() => Ok(None),
            None => Err(CodecError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl Encoder<Message> for MessageCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(&item, dst)
    }
}

impl Encoder<&Message> for MessageCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode_frame(item, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Ack, Goodbye};

    #[test]
    fn oversized_prefix_is_rejected_before_allocation() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3][..]);
        let cap_before = buf.capacity();
        let err = MessageCodec.decode(&mut buf).unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::FrameTooLarge {
                    len: 0xffff_ffff,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(buf.capacity(), cap_before);
    }

    #[test]
    fn partial_frame_waits_then_truncated_at_eof() {
        let mut full = BytesMut::new();
        encode_frame(&Message::Ack(Ack { seq: 300 }), &mut full).unwrap();
        let mut part = BytesMut::from(&full[..full.len() - 1]);
        assert!(MessageCodec.decode(&mut part).unwrap().is_none());
        let err = MessageCodec.decode_eof(&mut part).unwrap_err();
        assert!(matches!(err, CodecError::Truncated { .. }), "{err}");
    }

    #[test]
    fn trailing_bytes_in_payload_are_malformed() {
        let mut payload = encode_payload(&Message::Ack(Ack { seq: 1 })).unwrap();
        payload.push(0);
        let err = decode_payload::<Message>(&payload).unwrap_err();
        assert!(matches!(err, CodecError::Decode { .. }), "{err}");
    }

    #[test]
    fn peek_version_rejects_non_hello() {
        let payload = encode_payload(&Message::Goodbye(Goodbye { reason: "x".into() })).unwrap();
        assert_eq!(peek_version(&payload), None);
    }
}
