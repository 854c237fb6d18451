//! Accepting agents on TCP, Unix sockets and (Linux hosts) vsock, behind one type.
//!
//! The accept loop follows mini-redis: a [`Semaphore`] caps live connections and the permit
//! moves into the connection's task, so it is released exactly when the task ends; an agent
//! over the cap is told [`ErrorCode::Busy`] and closed (it retries with back-off). Accept
//! errors (EMFILE, ECONNABORTED, …) are logged and retried with capped back-off, never fatal.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use protocol::{ErrorCode, ErrorMessage, Message};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, info, info_span, warn};

use super::connection::{self, BoxedStream, ConnectionContext};
use protocol::endpoint::Endpoint as ListenEndpoint;

/// First delay after a failed accept.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest delay between accept retries.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a "busy" rejection may take before the socket is just dropped.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Failures of binding a listener.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// `bind` failed.
    #[error("failed to listen on {endpoint}")]
    Bind {
        /// The endpoint.
        endpoint: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A live process already listens on this Unix socket path.
    #[error("{path:?} is in use by another process (a bridge already running?)")]
    SocketInUse {
        /// The path.
        path: PathBuf,
    },
    /// vsock on a non-Linux host.
    #[error("vsock listeners need a Linux host")]
    VsockUnsupported,
}

/// A bound listener.
#[derive(Debug)]
pub enum GuestListener {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// Unix socket; the file is removed when the listener is dropped.
    Unix {
        /// The listener.
        listener: tokio::net::UnixListener,
        /// Its path.
        path: PathBuf,
    },
    /// AF_VSOCK.
    #[cfg(target_os = "linux")]
    Vsock(tokio_vsock::VsockListener),
}

impl GuestListener {
    /// Bind `endpoint`. A stale Unix socket file (nobody accepting on it) is replaced.
    ///
    /// # Errors
    /// [`ListenerError`].
    pub async fn bind(endpoint: &ListenEndpoint) -> Result<Self, ListenerError> {
        let bind_err = |source| ListenerError::Bind {
            endpoint: endpoint.to_string(),
            source,
        };
        match endpoint {
            ListenEndpoint::Tcp { host, port } => {
                let listener = tokio::net::TcpListener::bind((host.as_str(), *port))
                    .await
                    .map_err(bind_err)?;
                Ok(Self::Tcp(listener))
            }
            ListenEndpoint::Unix(path) => {
                if tokio::fs::symlink_metadata(path).await.is_ok() {
                    if tokio::net::UnixStream::connect(path).await.is_ok() {
                        return Err(ListenerError::SocketInUse { path: path.clone() });
                    }
                    tokio::fs::remove_file(path).await.map_err(bind_err)?;
                }
                let listener = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
                Ok(Self::Unix {
                    listener,
                    path: path.clone(),
                })
            }
            ListenEndpoint::Vsock { cid, port } => bind_vsock(*cid, *port).map_err(|e| match e {
                VsockBind::Unsupported => ListenerError::VsockUnsupported,
                VsockBind::Io(source) => bind_err(source),
            }),
        }
    }

    /// The endpoint actually bound (with the real port when 0 was asked).
    #[must_use]
    pub fn local_endpoint(&self) -> String {
        match self {
            Self::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp://?".to_string(), |a| format!("tcp://{a}")),
            Self::Unix { path, .. } => format!("unix://{}", path.display()),
            #[cfg(target_os = "linux")]
            Self::Vsock(l) => l.local_addr().map_or_else(
                |_| "vsock://?".to_string(),
                |a| format!("vsock://{}:{}", a.cid(), a.port()),
            ),
        }
    }

    /// Accept one connection; returns the stream and a printable peer address.
    ///
    /// # Errors
    /// The accept error.
    pub async fn accept(&self) -> io::Result<(BoxedStream, String)> {
        match self {
            Self::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                stream.set_nodelay(true)?;
                Ok((Box::pin(stream), format!("tcp://{peer}")))
            }
            Self::Unix { listener, path } => {
                let (stream, _) = listener.accept().await?;
                let peer = stream.peer_cred().ok().and_then(|c| c.pid()).map_or_else(
                    || format!("unix://{}", path.display()),
                    |pid| format!("unix://{} (pid {pid})", path.display()),
                );
                Ok((Box::pin(stream), peer))
            }
            #[cfg(target_os = "linux")]
            Self::Vsock(l) => {
                let (stream, peer) = l.accept().await?;
                Ok((
                    Box::pin(stream),
                    format!("vsock://{}:{}", peer.cid(), peer.port()),
                ))
            }
        }
    }
}

impl Drop for GuestListener {
    fn drop(&mut self) {
        if let Self::Unix { path, .. } = self {
            // Best effort: a leftover socket file is replaced at the next bind anyway.
            let _removed = std::fs::remove_file(path);
        }
    }
}

enum VsockBind {
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    Unsupported,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Io(io::Error),
}

#[cfg(target_os = "linux")]
fn bind_vsock(cid: u32, port: u32) -> Result<GuestListener, VsockBind> {
    tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(cid, port))
        .map(GuestListener::Vsock)
        .map_err(VsockBind::Io)
}

#[cfg(not(target_os = "linux"))]
fn bind_vsock(_cid: u32, _port: u32) -> Result<GuestListener, VsockBind> {
    Err(VsockBind::Unsupported)
}

/// Accept agents on `listener` until `cancel` fires. Each connection runs in its own task
/// (tracked by `tracker`) inside a `conn` span carrying its number and peer.
pub async fn accept_loop(
    listener: GuestListener,
    ctx: Arc<ConnectionContext>,
    limit: Arc<Semaphore>,
    next_conn: Arc<AtomicU64>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let local = listener.local_endpoint();
    info!(endpoint = %local, "Listening for guest agents.");
    let mut delay = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(ok) => {
                delay = ACCEPT_BACKOFF_MIN;
                ok
            }
            Err(err) => {
                warn!(endpoint = %local, error = %err, retry_in = ?delay, "Accept failed; retrying.");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("conn", conn, %peer);
        match Arc::clone(&limit).try_acquire_owned() {
            Ok(permit) => {
                let ctx = Arc::clone(&ctx);
                let cancel = cancel.clone();
                tracker.spawn(
                    async move {
                        connection::serve(stream, conn, &ctx, cancel).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Err(_) => {
                ctx.stats
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracker.spawn(reject_busy(stream).instrument(span));
            }
        }
    }
    info!(endpoint = %local, "Stopped listening.");
}

async fn reject_busy(mut stream: BoxedStream) {
    warn!("Connection limit reached; telling the agent to retry later.");
    let mut frame = bytes::BytesMut::new();
    let msg = Message::Error(ErrorMessage {
        code: ErrorCode::Busy,
        message: "the bridge is at its connection limit (--max-connections); retry later"
            .to_string(),
    });
    if protocol::codec::encode_frame(&msg, &mut frame).is_ok() {
        let write = async {
            stream.write_all(&frame).await?;
            stream.shutdown().await
        };
        let _sent = tokio::time::timeout(BUSY_WRITE_TIMEOUT, write).await;
    }
}
