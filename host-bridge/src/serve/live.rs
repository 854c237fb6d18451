//! Live attribution for `serve` and `measure`: the engine fed with every recorded entry, its
//! ledger published to the Prometheus sink, and a small progress snapshot for `measure`.
//!
//! ```text
//! recorder ─(lossless mpsc)─► engine task ─► watch<LedgerView> ─► /metrics (on scrape)
//! ```
//!
//! On start the engine first replays the recording the bridge just (re)opened, so after a
//! restart its ledger, and every Prometheus counter, continues from what was recorded.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Bridge;
use crate::config::Config;
use crate::journal::{RecordEntry, RecordingReader};
use crate::pipeline::{LedgerView, LiveLedger, PipelineConfig};
use crate::sinks::live;
use crate::sinks::prometheus::{self, MetricsEndpoint};

/// Entries queued between the recorder and the engine. Lossless: when full the recorder
/// waits (and with it the agents' acks), so the ledger never misses an entry.
const ENGINE_QUEUE: usize = 1024;

/// What `measure` shows while a command runs.
#[derive(Debug, Default)]
pub struct Progress {
    /// Host energy of power readings that ended after `since_mono_ns`, µJ.
    pub host_uj: AtomicU64,
    /// Only readings ending after this host monotonic instant count (0 = all).
    pub since_mono_ns: AtomicU64,
}

/// Handles of the running live attribution.
#[derive(Debug)]
pub struct LiveAttribution {
    /// Latest view (also what `/metrics` renders).
    pub view: watch::Receiver<Arc<LedgerView>>,
    /// Progress counters.
    pub progress: Arc<Progress>,
    /// Where `/metrics` is served, if it is.
    pub metrics_addr: Option<SocketAddr>,
    engine: JoinHandle<()>,
    server: Option<JoinHandle<()>>,
    cancel: CancellationToken,
}

/// Where to serve `/metrics`, and whether failing to bind there is fatal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsBind {
    /// The address.
    pub addr: SocketAddr,
    /// `true` when the user named the address: a bind failure stops the bridge. `false` for
    /// the default address: the bridge records on without metrics and says so.
    pub required: bool,
}

impl MetricsBind {
    /// From `serve`'s flags: none with `--no-metrics`, else the given or the default address.
    #[must_use]
    pub fn from_flags(addr: Option<SocketAddr>, disabled: bool) -> Option<Self> {
        (!disabled).then(|| Self {
            addr: addr.unwrap_or_else(|| {
                prometheus::DEFAULT_ADDR
                    .parse()
                    .expect("the default metrics address parses")
            }),
            required: addr.is_some(),
        })
    }
}

/// Attach live attribution to `bridge` (after [`Bridge::bind`], before [`Bridge::run`]):
/// replay its recording into a fresh engine, subscribe to new entries, and serve `/metrics`
/// when `metrics` says so.
///
/// # Errors
/// The recording cannot be re-read, the pipeline settings are invalid, or the metrics address
/// cannot be bound.
pub async fn attach(
    bridge: &mut Bridge,
    recording: &Path,
    cfg: PipelineConfig,
    metrics: Option<MetricsBind>,
) -> anyhow::Result<LiveAttribution> {
    let mut ledger = LiveLedger::new(cfg).context("invalid attribution settings")?;
    let path = recording.to_path_buf();
    let existing = tokio::task::spawn_blocking(move || RecordingReader::read_all(&path))
        .await
        .context("reading the recording panicked")?
        .with_context(|| format!("cannot re-read {}", recording.display()))?;
    for entry in &existing.entries {
        ledger.push(entry);
    }
    let stats = bridge.stats();
    let (tx, rx) = watch::channel(Arc::new(ledger.view()));
    let (entry_tx, mut entry_rx) = mpsc::channel::<Arc<RecordEntry>>(ENGINE_QUEUE);
    bridge.add_lossless_observer(entry_tx);

    let cancel = CancellationToken::new();
    let mut server = None;
    let mut bound = None;
    let listener = match metrics {
        None => None,
        Some(m) => match prometheus::bind(m.addr).await {
            Ok(listener) => Some(listener),
            Err(error) if !m.required => {
                tracing::warn!(addr = %m.addr, error = %anyhow::Error::new(error), "Default metrics address unavailable; running without /metrics (use --metrics-addr).");
                None
            }
            Err(error) => return Err(error.into()),
        },
    };
    if let Some(listener) = listener {
        let addr = listener.local_addr().context("metrics listener address")?;
        bound = Some(addr);
        let endpoint = Arc::new(MetricsEndpoint::new(rx.clone(), Arc::clone(&stats)));
        server = Some(tokio::spawn(prometheus::serve(
            listener,
            endpoint,
            cancel.clone(),
        )));
        tracing::info!(%addr, "Serving Prometheus metrics at /metrics.");
    }
    let progress = Arc::new(Progress::default());
    let task_progress = Arc::clone(&progress);
    let engine_task = tokio::spawn(async move {
        // Ends when the recorder drops its senders (bridge shutdown).
        while let Some(entry) = entry_rx.recv().await {
            match entry.as_ref() {
                RecordEntry::Guest { message, .. } => {
                    stats.frames_received.fetch_add(1, Ordering::Relaxed);
                    if matches!(message, protocol::Message::Hello(_)) {
                        stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                RecordEntry::Power(p)
                    if p.end.0 > task_progress.since_mono_ns.load(Ordering::Relaxed) =>
                {
                    task_progress
                        .host_uj
                        .fetch_add(p.energy.0, Ordering::Relaxed);
                }
                _ => {}
            }
            if ledger.push(&entry) {
                // Receivers may all be gone (no metrics server): nothing to do then.
                if tx.send(Arc::new(ledger.view())).is_err() {
                    tracing::debug!("No metrics reader; view not published.");
                }
            }
        }
    });
    Ok(LiveAttribution {
        view: rx,
        progress,
        metrics_addr: bound,
        engine: engine_task,
        server,
        cancel,
    })
}

impl LiveAttribution {
    /// Stop serving `/metrics` and wait for the engine to drain (call after the bridge ran).
    ///
    /// # Errors
    /// A task panicked.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        if let Some(server) = self.server {
            server.await.context("metrics server panicked")?;
        }
        self.engine.await.context("attribution task panicked")?;
        Ok(())
    }
}

/// `serve` with live attribution: bind the bridge, attach the engine (and `/metrics` as
/// `metrics` says), draw the live view when asked and stdout is a terminal, run until
/// `shutdown`, then drain.
///
/// # Errors
/// As [`Bridge::bind`], [`attach`] and [`Bridge::run`].
pub async fn serve(
    config: Config,
    metrics: Option<MetricsBind>,
    cfg: PipelineConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let draw = config.live && live::stdout_is_terminal();
    let mut bridge = Bridge::bind(config).await?;
    let recording = bridge.recording_path();
    let attribution = attach(&mut bridge, &recording, cfg, metrics).await?;
    let view_cancel = CancellationToken::new();
    let view_task = draw.then(|| {
        let out: Box<dyn std::io::Write + Send> = Box::new(std::io::stdout());
        tokio::spawn(live::run(
            attribution.view.clone(),
            out,
            view_cancel.clone(),
        ))
    });
    let ran = bridge.run(shutdown).await;
    view_cancel.cancel();
    if let Some(task) = view_task {
        task.await.context("live view task panicked")?;
    }
    attribution.stop().await?;
    ran
}
