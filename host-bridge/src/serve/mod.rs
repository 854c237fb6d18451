//! `serve`: accept agents, read host power, record everything, attribute live.
//!
//! - this module: [`Bridge`], the listeners, the recorder and the power task wired together;
//! - `power`: the power task (source selection and its entries in the journal);
//! - [`live`]: the engine fed with every recorded entry, its view published to `/metrics` and
//!   the live table; [`live::serve`] is the whole `serve` command.
//!
//! ```text
//! listeners (tcp/unix/vsock) ─► connection tasks ─┐
//! power source (run_power) ─► power forwarder ────┴─► recorder ─► recording file
//!                                       ▲               ├─► Acks back to connections
//!                                       └── Acks ───────┘─► observers (attribution, …)
//! ```
//!
//! Power samples and source events become recording entries like guest messages do, so the
//! live attribution (an observer of the recorder) and a report of the recording see the same
//! entries in the same order: their numbers agree by construction.
//!
//! Shutdown order (sources → pipeline → sinks): stop the power source and the listeners, close
//! connections (Goodbye) and wait for their tasks and the power forwarder, then let the
//! recorder drain its queue, sync and close the file.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Context as _;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub mod live;
mod power;

use crate::config::Config;
use crate::journal::RecordEntry;
use crate::journal::recorder::{Observers, Recorder, RecorderStats};
use crate::sources::guest::connection::ConnectionContext;
use crate::sources::guest::listener::{self, GuestListener};
use crate::sources::guest::stats::BridgeStats;
use power::{check_power, power_loop};

/// A bridge with its listeners bound and its recording open, not yet serving.
#[derive(Debug)]
pub struct Bridge {
    config: Config,
    listeners: Vec<GuestListener>,
    recorder: Recorder,
    observers: Observers,
    stats: Arc<BridgeStats>,
}

impl Bridge {
    /// Open the recording and bind every listener.
    ///
    /// # Errors
    /// When the recording cannot be opened or a listener cannot be bound.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        if let Some(power) = &config.power {
            check_power(power)?;
        }
        let path = config.record.clone();
        let recorder = tokio::task::spawn_blocking(move || Recorder::open(&path))
            .await
            .context("recording setup panicked")?
            .with_context(|| format!("cannot record to {}", config.record.display()))?;
        let mut listeners = Vec::with_capacity(config.listen.len());
        for endpoint in &config.listen {
            listeners.push(GuestListener::bind(endpoint).await?);
        }
        Ok(Self {
            config,
            listeners,
            recorder,
            observers: Observers::default(),
            stats: Arc::new(BridgeStats::default()),
        })
    }

    /// Where agents can connect (real ports when 0 was asked).
    #[must_use]
    pub fn local_endpoints(&self) -> Vec<String> {
        self.listeners
            .iter()
            .map(GuestListener::local_endpoint)
            .collect()
    }

    /// The recording file.
    #[must_use]
    pub fn recording_path(&self) -> PathBuf {
        self.recorder.path()
    }

    /// The bridge's own counters, kept by the connection tasks (what `/metrics` exposes as
    /// `joulebridge_frames_rejected_total`, `joulebridge_agent_connections_open`, …).
    #[must_use]
    pub fn stats(&self) -> Arc<BridgeStats> {
        Arc::clone(&self.stats)
    }

    /// Counters of the recorder.
    #[must_use]
    pub fn recorder_stats(&self) -> Arc<RecorderStats> {
        self.recorder.stats()
    }

    /// Add a consumer that must see every recorded entry (overflow policy: it back-pressures
    /// the recorder).
    pub fn add_lossless_observer(&mut self, tx: tokio::sync::mpsc::Sender<Arc<RecordEntry>>) {
        self.observers.lossless.push(tx);
    }

    /// Serve until `shutdown` completes (or the recorder fails).
    ///
    /// # Errors
    /// A recording failure.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            config,
            listeners,
            recorder,
            observers,
            stats,
        } = self;
        info!(
            recording = %recorder.path().display(),
            max_connections = config.max_connections,
            "Bridge serving."
        );
        let cancel = CancellationToken::new();
        let power_cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (handle, rx) = Recorder::channel();
        let mut recorder_task = tokio::spawn(recorder.run(rx, observers));
        let mut power_task: Option<JoinHandle<anyhow::Result<()>>> = config
            .power
            .clone()
            .map(|power| tokio::spawn(power_loop(power, handle.clone(), power_cancel.clone())));

        let ctx = Arc::new(ConnectionContext {
            recorder: handle,
            auth_token: config.auth_token.clone(),
            frame_timeout: config.frame_timeout,
            idle_timeout: config.idle_timeout,
            stats,
        });
        let limit = Arc::new(Semaphore::new(config.max_connections));
        let next_conn = Arc::new(AtomicU64::new(1));
        for listener in listeners {
            tracker.spawn(listener::accept_loop(
                listener,
                Arc::clone(&ctx),
                Arc::clone(&limit),
                Arc::clone(&next_conn),
                tracker.clone(),
                cancel.clone(),
            ));
        }
        drop(ctx);

        tokio::pin!(shutdown);
        let mut power_failed = None;
        let early = loop {
            tokio::select! {
                () = &mut shutdown => break None,
                done = &mut recorder_task => break Some(done),
                done = async { power_task.as_mut().expect("guarded by the condition").await },
                    if power_task.is_some() =>
                {
                    power_task = None;
                    match done {
                        // Ended by itself (a replay reached its end): keep recording guests.
                        Ok(Ok(())) => info!("Power source ended; serving on without host power."),
                        Ok(Err(error)) => {
                            power_failed = Some(error);
                            break None;
                        }
                        Err(join) => {
                            power_failed = Some(anyhow::Error::new(join).context("power task panicked"));
                            break None;
                        }
                    }
                }
            }
        };
        info!("Bridge stopping.");
        // Sources first: the power source and the listeners, then every connection.
        power_cancel.cancel();
        cancel.cancel();
        if let Some(task) = power_task {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => power_failed = Some(error),
                Err(join) => {
                    power_failed = Some(anyhow::Error::new(join).context("power task panicked"));
                }
            }
        }
        tracker.close();
        tracker.wait().await;
        // Every recorder handle is gone now: the recorder drains, syncs and ends.
        let recorded = match early {
            Some(done) => done,
            None => recorder_task.await,
        };
        recorded
            .context("recorder task panicked")?
            .context("recording stopped")?;
        if let Some(error) = power_failed {
            return Err(error);
        }
        info!("Bridge stopped.");
        Ok(())
    }
}
