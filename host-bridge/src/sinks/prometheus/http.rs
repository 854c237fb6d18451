//! The `/metrics` responder: a minimal HTTP/1.1 server on a `TcpListener` (GET or HEAD
//! `/metrics`, one request per connection, `Connection: close`). The bridge serves one
//! read-only page to a scraper; hyper or axum would add more to the dependency graph (and the
//! macOS binary) than this page needs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{CONTENT_TYPE, MetricsEndpoint};

/// Concurrent scrape connections served; more wait for a permit (a scraper needs one).
const MAX_CONNECTIONS: usize = 16;
/// Largest request head read; a scrape request is a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A client that sends no complete request head in this time is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the metrics server.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// Binding the listen address failed.
    #[error("failed to listen for scrapes on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Bind the scrape address. A non-loopback address is allowed but logged: the page shows
/// container names and images.
///
/// # Errors
/// [`PrometheusError::Bind`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, PrometheusError> {
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "Metrics endpoint listens beyond loopback; container names and images are visible to the network.");
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| PrometheusError::Bind { addr, source })
}

/// Serve `GET /metrics` on `listener` until `shutdown` is cancelled. Other paths get 404,
/// other methods 405. Per-connection failures end that connection only.
pub async fn serve(
    listener: TcpListener,
    endpoint: Arc<MetricsEndpoint>,
    shutdown: CancellationToken,
) {
    // Permits travel with the connection task; a burst of scrapers waits, nothing is dropped.
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let endpoint = Arc::clone(&endpoint);
                tokio::spawn(async move {
                    if let Err(error) = respond(stream, &endpoint).await {
                        tracing::debug!(%peer, %error, "Scrape connection failed.");
                    }
                    drop(permit);
                });
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "Accepting a scrape connection failed; retrying.");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn respond(mut stream: TcpStream, endpoint: &MetricsEndpoint) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0_u8; 1024];
        loop {
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if buf.len() >= MAX_REQUEST_BYTES {
                return Ok(false);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(false);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let complete = match head {
        Ok(Ok(complete)) => complete,
        Ok(Err(e)) => return Err(e),
        Err(_elapsed) => false,
    };
    let text = String::from_utf8_lossy(&buf);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if !complete {
        ("400 Bad Request", "text/plain", "bad request\n".to_string())
    } else if path != "/metrics" {
        (
            "404 Not Found",
            "text/plain",
            "not found; try /metrics\n".to_string(),
        )
    } else if method == "GET" || method == "HEAD" {
        ("200 OK", CONTENT_TYPE, endpoint.render())
    } else {
        (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_string(),
        )
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}
