//! The connection to the host bridge.
//!
//! One loop owns the connection and the [`Spool`]:
//!
//! ```text
//! dial (connect timeout) ──► Hello ──► Containers{full} ──► resend spool ──► live:
//!     samples from the pipeline → spool → socket
//!     container table changes   → Containers{full:false}
//!     Ack                       → spool releases up to seq
//!     Ping every N s / Pong     → clock offset (debug log)
//! on failure: capped exponential back-off with jitter (0.5 s → 30 s), reset after the bridge
//! acknowledged something; samples keep flowing into the spool meanwhile.
//! on shutdown (the pipeline closed its channel): send what is left, wait briefly for the
//! final Ack, send Goodbye.
//! ```
//!
//! The loop never blocks the pipeline: samples arrive over a bounded channel that the
//! pipeline fills with `try_send` (drop newest when full, counted there).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{
    ContainerState, Containers, Goodbye, Hello, Message, MessageCodec, MonoNanos, PROTOCOL_VERSION,
    Ping, PongReceipt, Sample,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, info, warn};

use super::ContainerTable;
use crate::backoff::Backoff;
use crate::clock;
use crate::config::{Endpoint, StreamConfig};
use crate::spool::Spool;

/// A byte stream to the bridge, whatever the transport.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

/// A connected transport.
pub type BoxedTransport = Pin<Box<dyn Transport>>;

/// What goes wrong with one connection. Each ends that connection only; the loop reconnects.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Dialing failed.
    #[error("failed to connect to {endpoint}")]
    Connect {
        /// The bridge.
        endpoint: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Dialing took longer than the connect timeout.
    #[error("connecting to {endpoint} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The bridge.
        endpoint: String,
        /// The limit.
        timeout: Duration,
    },
    /// The endpoint's scheme cannot be used on this OS.
    #[error("{endpoint} is not supported on this platform")]
    Unsupported {
        /// The endpoint.
        endpoint: String,
    },
    /// Reading or writing frames failed.
    #[error("connection to the bridge failed")]
    Io(#[source] protocol::CodecError),
    /// The bridge closed the connection.
    #[error("the bridge closed the connection")]
    Closed,
    /// The bridge sent an Error and closed.
    #[error("the bridge rejected the agent ({code:?}): {message}")]
    Rejected {
        /// Kind.
        code: protocol::ErrorCode,
        /// The bridge's explanation.
        message: String,
    },
}

/// What the agent says about itself in every Hello (the clock and protocol are filled in per
/// connection).
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    /// Guest boot id.
    pub boot_id: String,
    /// Random per process: with `boot_id`, names this agent's stream of sequence numbers.
    pub instance_id: u64,
    /// VM label.
    pub vm_name: String,
    /// Guest hostname.
    pub hostname: String,
    /// Guest kernel release.
    pub kernel_release: String,
    /// cgroup layout.
    pub cgroup_mode: protocol::CgroupMode,
    /// Online CPUs.
    pub cpu_count: u32,
    /// Sampling period.
    pub sample_period_ms: u32,
    /// Whether container names come from an engine.
    pub has_container_metadata: bool,
}

impl AgentIdentity {
    fn hello(&self, auth_token: Option<String>) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            boot_id: self.boot_id.clone(),
            instance_id: self.instance_id,
            vm_name: self.vm_name.clone(),
            hostname: self.hostname.clone(),
            kernel_release: self.kernel_release.clone(),
            cgroup_mode: self.cgroup_mode,
            cpu_count: self.cpu_count,
            clock: clock::reading(),
            sample_period_ms: self.sample_period_ms,
            has_container_metadata: self.has_container_metadata,
            auth_token,
        }
    }
}

/// Counters of the stream sink, shared for logs and tests.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Connections that completed Hello.
    pub connections: AtomicU64,
    /// Samples written to a socket (including resends).
    pub samples_sent: AtomicU64,
    /// Samples evicted from a full spool.
    pub spool_dropped: AtomicU64,
    /// Highest sequence number the bridge acknowledged, plus one (0 = none yet).
    pub acked_next: AtomicU64,
}

/// The connection loop. Build with [`StreamSink::new`], drive with [`StreamSink::run`].
#[derive(Debug)]
pub struct StreamSink {
    config: StreamConfig,
    identity: AgentIdentity,
    /// From the pipeline. Closed by the pipeline at shutdown, which ends this loop.
    samples: mpsc::Receiver<Sample>,
    /// The container table, latest wins.
    containers: watch::Receiver<ContainerTable>,
    spool: Spool,
    stats: Arc<StreamStats>,
    ping_id: u64,
    /// t3 of the last Pong, sent back in the next Ping so the bridge sees full round trips.
    last_pong: Option<PongReceipt>,
    /// Where the bridge's Energy reports go (`--expose-energy`); latest wins, as each report
    /// is cumulative.
    energy: Option<watch::Sender<Option<protocol::EnergyReport>>>,
}

/// How one connection ended without an error.
enum SessionEnd {
    /// The pipeline closed its channel: the agent is shutting down.
    Shutdown,
    /// The bridge said Goodbye.
    BridgeLeft(String),
}

impl StreamSink {
    /// A sink that will dial `config.endpoint`.
    #[must_use]
    pub fn new(
        config: StreamConfig,
        identity: AgentIdentity,
        samples: mpsc::Receiver<Sample>,
        containers: watch::Receiver<ContainerTable>,
    ) -> Self {
        let spool = Spool::new(config.spool_capacity);
        Self {
            config,
            identity,
            samples,
            containers,
            spool,
            stats: Arc::new(StreamStats::default()),
            ping_id: 0,
            last_pong: None,
            energy: None,
        }
    }

    /// Hands the bridge's Energy reports to `tx` (the `--expose-energy` writer).
    #[must_use]
    pub fn with_energy(mut self, tx: watch::Sender<Option<protocol::EnergyReport>>) -> Self {
        self.energy = Some(tx);
        self
    }

    /// Shared counters of this sink.
    #[must_use]
    pub fn stats(&self) -> Arc<StreamStats> {
        Arc::clone(&self.stats)
    }

    /// Run until the pipeline closes the sample channel. Connection failures are logged and
    /// retried, never returned.
    pub async fn run(mut self) {
        let endpoint = self.config.endpoint.to_string();
        let mut backoff =
            Backoff::new(self.config.backoff_min, self.config.backoff_max).with_jitter();
        loop {
            let target = self.config.endpoint.clone();
            let dial = dial(&target, self.config.connect_timeout);
            let Some(dialed) = self.absorb_until(dial).await else {
                break;
            };
            let result = match dialed {
                Ok(transport) => self.session(transport, &mut backoff).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::BridgeLeft(reason)) => {
                    info!(%endpoint, %reason, "Bridge closed the connection; reconnecting.");
                }
                Err(err) => {
                    warn!(
                        %endpoint,
                        error = %format_args!("{:#}", anyhow::Error::new(err)),
                        unacked = self.spool.len(),
                        "Connection to the bridge failed; retrying."
                    );
                }
            }
            let delay = backoff.next_delay();
            debug!(?delay, "Waiting before reconnecting.");
            if self.absorb_until(tokio::time::sleep(delay)).await.is_none() {
                break;
            }
        }
        if !self.spool.is_empty() {
            warn!(
                unacked = self.spool.len(),
                "Agent stopping with samples the bridge never acknowledged."
            );
        }
        info!(
            spool_dropped = self.spool.dropped(),
            "Stream to the bridge stopped."
        );
    }

    /// Await `fut` while moving incoming samples into the spool. `None` when the pipeline
    /// closed the channel first (shutdown).
    async fn absorb_until<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                sample = self.samples.recv() => match sample {
                    Some(sample) => self.spool_push(sample),
                    None => return None,
                },
            }
        }
    }

    fn spool_push(&mut self, sample: Sample) {
        if let Some(evicted) = self.spool.push(sample) {
            self.stats.spool_dropped.fetch_add(1, Ordering::Relaxed);
            // Cumulative counters: the next sample still holds this one's CPU time.
            debug!(
                seq = evicted.seq,
                capacity = self.spool.capacity(),
                "Spool full; dropped the oldest unacknowledged sample."
            );
        }
    }

    async fn session(
        &mut self,
        transport: BoxedTransport,
        backoff: &mut Backoff,
    ) -> Result<SessionEnd, StreamError> {
        let (read, write) = tokio::io::split(transport);
        let mut rx = FramedRead::new(read, MessageCodec);
        let mut tx = FramedWrite::new(write, MessageCodec);

        let hello = self.identity.hello(self.config.auth_token.clone());
        tx.feed(Message::Hello(hello))
            .await
            .map_err(StreamError::Io)?;
        let mut sent_table = self.containers.borrow_and_update().clone();
        tx.feed(Message::Containers(Containers {
            full: true,
            entries: sent_table.values().cloned().collect(),
        }))
        .await
        .map_err(StreamError::Io)?;
        for sample in self.spool.iter() {
            tx.feed(Message::Sample(sample.clone()))
                .await
                .map_err(StreamError::Io)?;
        }
        SinkExt::<Message>::flush(&mut tx)
            .await
            .map_err(StreamError::Io)?;
        self.stats
            .samples_sent
            .fetch_add(self.spool.len() as u64, Ordering::Relaxed);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        info!(
            endpoint = %self.config.endpoint,
            resent = self.spool.len(),
            "Connected to the bridge."
        );

        let mut ping = tokio::time::interval(self.config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut table_open = true;
        loop {
            tokio::select! {
                sample = self.samples.recv() => match sample {
                    Some(sample) => {
                        self.spool_push(sample.clone());
                        tx.send(Message::Sample(sample)).await.map_err(StreamError::Io)?;
                        self.stats.samples_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    None => return self.finish(&mut rx, &mut tx).await,
                },
                changed = self.containers.changed(), if table_open => {
                    if changed.is_err() {
                        table_open = false;
                        continue;
                    }
                    let table = self.containers.borrow_and_update().clone();
                    let entries = table_diff(&sent_table, &table);
                    sent_table = table;
                    if !entries.is_empty() {
                        tx.send(Message::Containers(Containers { full: false, entries }))
                            .await
                            .map_err(StreamError::Io)?;
                    }
                }
                frame = rx.next() => {
                    if let Some(end) = self.on_frame(frame, backoff)? {
                        return Ok(end);
                    }
                }
                _ = ping.tick() => {
                    self.ping_id += 1;
                    let ping = Ping {
                        id: self.ping_id,
                        guest_send: clock::mono_now(),
                        prev_pong: self.last_pong.take(),
                    };
                    tx.send(Message::Ping(ping)).await.map_err(StreamError::Io)?;
                }
            }
        }
    }

    /// Handle one incoming frame. `Ok(Some)` ends the session.
    fn on_frame(
        &mut self,
        frame: Option<Result<Message, protocol::CodecError>>,
        backoff: &mut Backoff,
    ) -> Result<Option<SessionEnd>, StreamError> {
        match frame {
            None => Err(StreamError::Closed),
            Some(Err(e)) => Err(StreamError::Io(e)),
            Some(Ok(Message::Ack(ack))) => {
                let released = self.spool.ack(ack.seq);
                self.stats
                    .acked_next
                    .fetch_max(ack.seq.saturating_add(1), Ordering::Relaxed);
                backoff.reset();
                debug!(
                    seq = ack.seq,
                    released,
                    unacked = self.spool.len(),
                    "Ack received."
                );
                Ok(None)
            }
            Some(Ok(Message::Pong(pong))) => {
                let t3 = clock::mono_now();
                log_clock_offset(pong, t3);
                self.last_pong = Some(PongReceipt {
                    id: pong.id,
                    guest_recv: t3,
                });
                Ok(None)
            }
            Some(Ok(Message::Error(e))) => Err(StreamError::Rejected {
                code: e.code,
                message: e.message,
            }),
            Some(Ok(Message::Goodbye(g))) => Ok(Some(SessionEnd::BridgeLeft(g.reason))),
            Some(Ok(Message::Energy(report))) => {
                if let Some(tx) = &self.energy {
                    // No receiver left means the writer failed; it logged why.
                    let _ignored = tx.send(Some(report));
                }
                Ok(None)
            }
            Some(Ok(other)) => {
                warn!(message = ?other, "Unexpected message from the bridge; ignoring it.");
                Ok(None)
            }
        }
    }

    /// Shutdown with a live connection: everything is sent; wait (bounded) for the Ack of the
    /// last sample, then say Goodbye.
    async fn finish(
        &mut self,
        rx: &mut FramedRead<ReadHalf<BoxedTransport>, MessageCodec>,
        tx: &mut FramedWrite<WriteHalf<BoxedTransport>, MessageCodec>,
    ) -> Result<SessionEnd, StreamError> {
        let deadline = tokio::time::sleep(self.config.shutdown_ack_timeout);
        tokio::pin!(deadline);
        let mut unused =
            Backoff::new(self.config.backoff_min, self.config.backoff_max).with_jitter();
        while !self.spool.is_empty() {
            tokio::select! {
                frame = rx.next() => {
                    if self.on_frame(frame, &mut unused)?.is_some() {
                        return Ok(SessionEnd::Shutdown);
                    }
                }
                () = &mut deadline => {
                    warn!(
                        unacked = self.spool.len(),
                        "Bridge did not acknowledge the last samples before the shutdown deadline."
                    );
                    break;
                }
            }
        }
        tx.send(Message::Goodbye(Goodbye {
            reason: "agent shutting down".to_string(),
        }))
        .await
        .map_err(StreamError::Io)?;
        SinkExt::<Message>::close(tx)
            .await
            .map_err(StreamError::Io)?;
        Ok(SessionEnd::Shutdown)
    }
}

/// Entries of `new` that differ from `old`, plus entries that disappeared (sent as Removed).
fn table_diff(old: &ContainerTable, new: &ContainerTable) -> Vec<protocol::ContainerInfo> {
    let mut out: Vec<_> = new
        .iter()
        .filter(|(id, info)| old.get(*id) != Some(*info))
        .map(|(_, info)| info.clone())
        .collect();
    out.extend(
        old.iter()
            .filter(|(id, _)| !new.contains_key(*id))
            .map(|(_, info)| {
                let mut gone = info.clone();
                gone.state = ContainerState::Removed;
                gone
            }),
    );
    out
}

/// NTP-style offset of the host clock relative to the guest clock, for the logs.
fn log_clock_offset(pong: protocol::Pong, t3: MonoNanos) {
    let [t0, t1, t2, t3] =
        [pong.guest_send, pong.host_recv, pong.host_send, t3].map(|t| i128::from(t.0));
    let offset_ns = ((t1 - t0) + (t2 - t3)) / 2;
    let rtt_ns = (t3 - t0) - (t2 - t1);
    debug!(id = pong.id, offset_ns, rtt_ns, "Clock probe answered.");
}

/// Dial the bridge within `timeout`. Host names are resolved here, at each attempt.
///
/// # Errors
/// [`StreamError::Connect`], [`StreamError::ConnectTimeout`] or [`StreamError::Unsupported`].
pub async fn dial(endpoint: &Endpoint, timeout: Duration) -> Result<BoxedTransport, StreamError> {
    let name = endpoint.to_string();
    let connect = async {
        let transport: BoxedTransport = match endpoint {
            Endpoint::Tcp { host, port } => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Box::pin(stream)
            }
            Endpoint::Unix(path) => Box::pin(tokio::net::UnixStream::connect(path).await?),
            Endpoint::Vsock { cid, port } => dial_vsock(*cid, *port).await?,
        };
        Ok::<_, io::Error>(transport)
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(source)) if source.kind() == io::ErrorKind::Unsupported => {
            Err(StreamError::Unsupported { endpoint: name })
        }
        Ok(Err(source)) => Err(StreamError::Connect {
            endpoint: name,
            source,
        }),
        Err(_) => Err(StreamError::ConnectTimeout {
            endpoint: name,
            timeout,
        }),
    }
}

#[cfg(target_os = "linux")]
async fn dial_vsock(cid: u32, port: u32) -> io::Result<BoxedTransport> {
    let addr = tokio_vsock::VsockAddr::new(cid, port);
    Ok(Box::pin(tokio_vsock::VsockStream::connect(addr).await?))
}

#[cfg(not(target_os = "linux"))]
async fn dial_vsock(_cid: u32, _port: u32) -> io::Result<BoxedTransport> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "vsock needs Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_diff_reports_changes_and_removals() {
        let info = |id: &str, name: &str| protocol::ContainerInfo {
            id: id.into(),
            name: name.into(),
            ..Default::default()
        };
        let mut old = ContainerTable::new();
        old.insert("a".into(), info("a", "web"));
        old.insert("b".into(), info("b", "db"));
        let mut new = ContainerTable::new();
        new.insert("a".into(), info("a", "web"));
        new.insert("c".into(), info("c", "cache"));
        let diff = table_diff(&old, &new);
        assert_eq!(diff.len(), 2);
        assert_eq!(diff[0].id, "c");
        assert_eq!(diff[1].id, "b");
        assert_eq!(diff[1].state, ContainerState::Removed);
    }
}
