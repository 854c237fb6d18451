//! One agent connection: handshake, then record everything, answer Pings, send Acks.
//!
//! Rules, each enforced here and logged once with the peer (the task's span carries it):
//! - The first frame must be a Hello whose major version this bridge speaks. The version is
//!   read with `protocol::codec::peek_version` before anything else is decoded, so an agent
//!   of another major version still gets a readable [`ErrorCode::UnsupportedVersion`].
//! - A frame that does not decode → [`ErrorCode::MalformedFrame`], then close.
//! - A length prefix above `MAX_FRAME_LEN` → [`ErrorCode::FrameTooLarge`], then close (the codec
//!   refuses it before allocating).
//! - A peer that stops inside a frame for `frame_timeout`, or sends nothing for
//!   `idle_timeout`, is closed.
//! - A bad peer ends its own task only.
//!
//! The bridge's own counters ([`BridgeStats`], rendered on `/metrics`) are kept here, where
//! the outcomes are known: every rejected frame counts once in `frames_rejected`, and a drop
//! guard keeps `connections_open` right on every exit path, early returns and panics included.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use protocol::codec::{self, CodecError};
use protocol::{
    ErrorCode, ErrorMessage, Goodbye, Hello, Message, MonoNanos, PROTOCOL_VERSION, Pong,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::stats::BridgeStats;
use crate::clock;
use crate::journal::RecordEntry;
use crate::journal::recorder::{Origin, Record, RecorderHandle, StreamKey};

/// A connected agent stream, whatever the transport.
pub trait GuestStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> GuestStream for T {}

/// A boxed [`GuestStream`].
pub type BoxedStream = Pin<Box<dyn GuestStream>>;

/// What every connection task shares.
#[derive(Debug)]
pub struct ConnectionContext {
    /// Where received messages go.
    pub recorder: RecorderHandle,
    /// Required agent token, if any.
    pub auth_token: Option<String>,
    /// Longest stall inside a frame.
    pub frame_timeout: Duration,
    /// Longest silence between frames.
    pub idle_timeout: Duration,
    /// The bridge's own counters (shared with `/metrics`).
    pub stats: Arc<BridgeStats>,
}

/// Counts one open connection in a gauge for as long as it lives.
struct OpenGuard<'a>(&'a AtomicU64);

impl<'a> OpenGuard<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Reading or writing the socket failed.
    #[error("socket I/O failed")]
    Io(#[source] std::io::Error),
    /// The length prefix announced too much.
    #[error("frame too large")]
    TooLarge(#[source] CodecError),
    /// The peer stopped inside a frame.
    #[error(
        "peer stalled for {timeout:?} in the middle of a frame ({buffered} bytes of it received)"
    )]
    Stalled {
        /// The limit.
        timeout: Duration,
        /// Bytes received of the unfinished frame.
        buffered: usize,
    },
    /// The peer sent nothing for too long.
    #[error("peer silent for {timeout:?}")]
    Idle {
        /// The limit.
        timeout: Duration,
    },
    /// The peer closed inside a frame.
    #[error("peer closed the connection inside a frame ({buffered} bytes of it received)")]
    Truncated {
        /// Bytes received of the unfinished frame.
        buffered: usize,
    },
}

/// Reads whole frames, remembering partial ones across cancelled reads.
struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    /// When the current partial frame started arriving.
    partial_since: Option<Instant>,
    /// When any byte last arrived.
    last_byte: Instant,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(8 * 1024),
            partial_since: None,
            last_byte: Instant::now(),
        }
    }

    /// The next frame's payload; `None` at a clean end of stream. Cancel-safe.
    async fn next(
        &mut self,
        frame_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<Option<BytesMut>, ConnectionError> {
        loop {
            match codec::split_frame(&mut self.buf) {
                Ok(Some(frame)) => {
                    self.partial_since = (!self.buf.is_empty()).then(Instant::now);
                    return Ok(Some(frame));
                }
                Ok(None) => {}
                Err(e) => return Err(ConnectionError::TooLarge(e)),
            }
            if !self.buf.is_empty() && self.partial_since.is_none() {
                self.partial_since = Some(Instant::now());
            }
            let deadline = match self.partial_since {
                Some(t) => t + frame_timeout,
                None => self.last_byte + idle_timeout,
            };
            let read = tokio::time::timeout_at(deadline, self.inner.read_buf(&mut self.buf)).await;
            match read {
                Err(_) if self.buf.is_empty() => {
                    return Err(ConnectionError::Idle {
                        timeout: idle_timeout,
                    });
                }
                Err(_) => {
                    return Err(ConnectionError::Stalled {
                        timeout: frame_timeout,
                        buffered: self.buf.len(),
                    });
                }
                Ok(Err(e)) => return Err(ConnectionError::Io(e)),
                Ok(Ok(0)) if self.buf.is_empty() => return Ok(None),
                Ok(Ok(0)) => {
                    return Err(ConnectionError::Truncated {
                        buffered: self.buf.len(),
                    });
                }
                Ok(Ok(_)) => self.last_byte = Instant::now(),
            }
        }
    }
}

/// Longest a write to an agent may block. An agent that stops reading (while its socket
/// buffer is full) is closed rather than holding its task, and the bridge's shutdown, forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

async fn send<W: AsyncWrite + Unpin>(w: &mut W, msg: &Message) -> Result<(), ConnectionError> {
    let mut frame = BytesMut::new();
    codec::encode_frame(msg, &mut frame).map_err(|e| match e {
        CodecError::Io(io) => ConnectionError::Io(io),
        other => ConnectionError::Io(std::io::Error::other(other)),
    })?;
    match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(&frame)).await {
        Ok(written) => written.map_err(ConnectionError::Io),
        Err(_) => Err(ConnectionError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the peer read nothing for {WRITE_TIMEOUT:?}"),
        ))),
    }
}

/// Tell the peer what it did wrong, then close. Failures to tell are only logged at debug:
/// the peer may be gone already.
async fn reject<W: AsyncWrite + Unpin>(w: &mut W, code: ErrorCode, message: String) {
    let msg = Message::Error(ErrorMessage { code, message });
    let write = async {
        send(w, &msg).await?;
        w.shutdown().await.map_err(ConnectionError::Io)
    };
    if let Err(err) = tokio::time::timeout(Duration::from_secs(1), write)
        .await
        .unwrap_or(Ok(()))
    {
        debug!(error = %err, "Could not deliver the error to the peer.");
    }
}

/// `err` and its causes, `outer: inner: …` (what the peer is told and what is logged).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The payload of a frame read, or `None` when the connection is over: the peer closed
/// (`closed` logs it), or the read failed (the peer is told why where that helps, and a rejected
/// frame is counted).
async fn frame_or_end<W: AsyncWrite + Unpin>(
    read: Result<Option<BytesMut>, ConnectionError>,
    write: &mut W,
    ctx: &ConnectionContext,
    closed: impl FnOnce(),
) -> Option<BytesMut> {
    match read {
        Ok(Some(payload)) => Some(payload),
        Ok(None) => {
            closed();
            None
        }
        Err(err) => {
            if reject_read_error(write, &err).await {
                ctx.stats.frames_rejected.fetch_add(1, Ordering::Relaxed);
            }
            None
        }
    }
}

/// Serve one connection to the end. Never returns an error: every outcome is logged here.
pub async fn serve(
    stream: BoxedStream,
    conn: u64,
    ctx: &ConnectionContext,
    cancel: CancellationToken,
) {
    let _open = OpenGuard::new(&ctx.stats.connections_open);
    let rejected = || {
        ctx.stats.frames_rejected.fetch_add(1, Ordering::Relaxed);
    };
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = FrameReader::new(read);

    // Handshake.
    let first = tokio::select! {
        () = cancel.cancelled() => return,
        first = reader.next(ctx.frame_timeout, ctx.idle_timeout) => first,
    };
    let Some(payload) = frame_or_end(first, &mut write, ctx, || {
        debug!("Peer closed before saying Hello.")
    })
    .await
    else {
        return;
    };
    let at = clock::mono_now();
    let hello = match handshake(&payload, ctx) {
        Ok(hello) => hello,
        Err((code, message)) => {
            warn!(?code, reason = %message, "Rejected a peer at the handshake; closing.");
            rejected();
            reject(&mut write, code, message).await;
            return;
        }
    };
    let stream_key = Arc::new(StreamKey {
        boot_id: hello.boot_id.clone(),
        instance_id: hello.instance_id,
    });
    info!(
        vm = %hello.vm_name,
        agent_version = %hello.agent_version,
        boot_id = %hello.boot_id,
        instance_id = hello.instance_id,
        cgroup_mode = ?hello.cgroup_mode,
        "Agent connected."
    );
    let (ack_tx, mut ack_rx) = watch::channel(None);
    let origin = Origin {
        stream: stream_key,
        ack: ack_tx,
    };
    let mut recorded_hello = hello;
    // Never write the secret into the recording.
    recorded_hello.auth_token = None;
    let record = |message: Message, at: MonoNanos| Record {
        entry: RecordEntry::Guest { conn, at, message },
        origin: Some(origin.clone()),
    };
    if ctx
        .recorder
        .record(record(Message::Hello(recorded_hello), at))
        .await
        .is_err()
    {
        reject(
            &mut write,
            ErrorCode::Busy,
            "the bridge is shutting down".into(),
        )
        .await;
        return;
    }

    let mut last_ack = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                let bye = Message::Goodbye(Goodbye { reason: "bridge shutting down".into() });
                let _sent = tokio::time::timeout(Duration::from_secs(1), send(&mut write, &bye)).await;
                info!("Closed the connection for shutdown.");
                return;
            }
            changed = ack_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let seq = *ack_rx.borrow_and_update();
                if let Some(seq) = seq && last_ack != Some(seq) {
                    last_ack = Some(seq);
                    if let Err(err) = send(&mut write, &Message::Ack(protocol::Ack { seq })).await {
                        warn!(error = %err, "Cannot send Ack; closing.");
                        return;
                    }
                }
            }
            frame = reader.next(ctx.frame_timeout, ctx.idle_timeout) => {
                let Some(payload) =
                    frame_or_end(frame, &mut write, ctx, || info!("Agent disconnected without Goodbye.")).await
                else {
                    return;
                };
                let at = clock::mono_now();
                let message = match codec::decode_payload::<Message>(&payload) {
                    Ok(message) => message,
                    Err(err) => {
                        let why = error_chain(&err);
                        warn!(error = %why, "Malformed frame from agent; closing.");
                        rejected();
                        reject(&mut write, ErrorCode::MalformedFrame, format!("could not decode frame: {why}")).await;
                        return;
                    }
                };
                match message {
                    Message::Sample(_) | Message::Containers(_) => {}
                    Message::Ping(ping) => {
                        let pong = Pong {
                            id: ping.id,
                            guest_send: ping.guest_send,
                            host_recv: at,
                            host_send: clock::mono_now(),
                        };
                        if let Err(err) = send(&mut write, &Message::Pong(pong)).await {
                            warn!(error = %err, "Cannot send Pong; closing.");
                            return;
                        }
                        if ctx.recorder.record(record(Message::Ping(ping), at)).await.is_err() {
                            return;
                        }
                        if ctx.recorder.record(record(Message::Pong(pong), pong.host_send)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Message::Goodbye(ref bye) => {
                        info!(reason = %bye.reason, "Agent said Goodbye.");
                        let _recorded = ctx.recorder.record(record(message, at)).await;
                        return;
                    }
                    Message::Error(ref e) => {
                        warn!(code = ?e.code, reason = %e.message, "Agent reported an error; closing.");
                        let _recorded = ctx.recorder.record(record(message, at)).await;
                        return;
                    }
                    Message::Hello(_) | Message::Ack(_) | Message::Pong(_) | Message::Energy(_) => {
                        let why = format!("unexpected {} from an agent after Hello", kind(&message));
                        warn!(reason = %why, "Protocol violation; closing.");
                        rejected();
                        reject(&mut write, ErrorCode::UnexpectedMessage, why).await;
                        return;
                    }
                }
                if ctx.recorder.record(record(message, at)).await.is_err() {
                    warn!("Recorder stopped; closing.");
                    return;
                }
            }
        }
    }
}

/// Check the first frame. `Err((code, human message))` rejects the peer.
fn handshake(payload: &[u8], ctx: &ConnectionContext) -> Result<Hello, (ErrorCode, String)> {
    let Some(version) = codec::peek_version(payload) else {
        let what = match codec::decode_payload::<Message>(payload) {
            Ok(other) => format!("the first message must be Hello, got {}", kind(&other)),
            Err(_) => "the first frame is not a joulebridge Hello (is this a joulebridge agent?)"
                .to_string(),
        };
        let code = if what.starts_with("the first message") {
            ErrorCode::UnexpectedMessage
        } else {
            ErrorCode::MalformedFrame
        };
        return Err((code, what));
    };
    if version.major != PROTOCOL_VERSION.major {
        return Err((
            ErrorCode::UnsupportedVersion,
            format!(
                "the agent speaks joulebridge protocol v{}.{} but this bridge ({}) speaks v{}.{}; \
                 install the guest-agent and host-bridge of the same release",
                version.major,
                version.minor,
                env!("CARGO_PKG_VERSION"),
                PROTOCOL_VERSION.major,
                PROTOCOL_VERSION.minor
            ),
        ));
    }
    let hello = match codec::decode_payload::<Message>(payload) {
        Ok(Message::Hello(hello)) => hello,
        Ok(other) => {
            return Err((
                ErrorCode::UnexpectedMessage,
                format!("the first message must be Hello, got {}", kind(&other)),
            ));
        }
        Err(err) => {
            return Err((
                ErrorCode::MalformedFrame,
                format!("could not decode Hello: {}", error_chain(&err)),
            ));
        }
    };
    if let Some(expected) = &ctx.auth_token
        && !token_matches(hello.auth_token.as_deref(), expected)
    {
        return Err((
            ErrorCode::Unauthorized,
            "missing or wrong auth token; start the agent with the bridge's --auth-token"
                .to_string(),
        ));
    }
    Ok(hello)
}

/// Compare without an early exit on the first differing byte.
fn token_matches(given: Option<&str>, expected: &str) -> bool {
    let Some(given) = given else { return false };
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    diff == 0
}

/// Log a read failure and tell the peer; `true` when a frame was rejected (an oversize
/// length prefix, or a frame stalled half-sent). Silence between frames, a peer closing
/// mid-frame and socket errors end the connection without a rejected frame.
async fn reject_read_error<W: AsyncWrite + Unpin>(write: &mut W, err: &ConnectionError) -> bool {
    match err {
        ConnectionError::TooLarge(cause) => {
            warn!(error = %cause, "Frame too large; closing.");
            reject(write, ErrorCode::FrameTooLarge, cause.to_string()).await;
            true
        }
        ConnectionError::Stalled { .. } | ConnectionError::Idle { .. } => {
            warn!(error = %err, "Peer stalled; closing.");
            reject(write, ErrorCode::MalformedFrame, err.to_string()).await;
            matches!(err, ConnectionError::Stalled { .. })
        }
        ConnectionError::Truncated { .. } => {
            warn!(error = %err, "Peer closed mid-frame.");
            false
        }
        ConnectionError::Io(cause) => {
            warn!(error = %cause, "Connection failed.");
            false
        }
    }
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Hello(_) => "Hello",
        Message::Sample(_) => "Sample",
        Message::Containers(_) => "Containers",
        Message::Ack(_) => "Ack",
        Message::Ping(_) => "Ping",
        Message::Pong(_) => "Pong",
        Message::Goodbye(_) => "Goodbye",
        Message::Error(_) => "Error",
        Message::Energy(_) => "Energy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare_needs_exact_match() {
        assert!(token_matches(Some("s3cret"), "s3cret"));
        assert!(!token_matches(Some("s3cre"), "s3cret"));
        assert!(!token_matches(Some("s3cres"), "s3cret"));
        assert!(!token_matches(None, "s3cret"));
    }

    #[tokio::test(start_paused = true)]
    async fn reader_times_out_inside_a_frame() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(server);
        client.write_all(&[0, 0, 0, 10, 1, 2]).await.unwrap();
        let err = reader
            .next(Duration::from_secs(30), Duration::from_secs(120))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConnectionError::Stalled { buffered: 6, .. }),
            "{err}"
        );
    }
}
