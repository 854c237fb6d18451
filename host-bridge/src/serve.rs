//! `serve`: accept agents, record everything, show the live table.
//!
//! ```text
//! listeners (tcp/unix/vsock) ─► connection tasks ─► recorder ─► recording file
//!                                       ▲               ├─► Acks back to connections
//!                                       └── Acks ───────┘─► observers (live table, …)
//! ```
//!
//! Shutdown order: stop accepting and close connections (Goodbye), wait for their tasks, then
//! let the recorder drain its queue, sync and close the file.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::Context as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config::Config;
use crate::sinks::live;
use crate::sinks::recorder::{Observers, Recorder, RecorderStats};
use crate::sources::guest::connection::ConnectionContext;
use crate::sources::guest::listener::{self, GuestListener};

/// A bridge with its listeners bound and its recording open, not yet serving.
#[derive(Debug)]
pub struct Bridge {
    config: Config,
    listeners: Vec<GuestListener>,
    recorder: Recorder,
    observers: Observers,
}

impl Bridge {
    /// Open the recording and bind every listener.
    ///
    /// # Errors
    /// When the recording cannot be opened or a listener cannot be bound.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
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

    /// Counters of the recorder.
    #[must_use]
    pub fn recorder_stats(&self) -> Arc<RecorderStats> {
        self.recorder.stats()
    }

    /// Add a consumer that must see every recorded entry (overflow policy: it back-pressures
    /// the recorder).
    pub fn add_lossless_observer(
        &mut self,
        tx: tokio::sync::mpsc::Sender<Arc<crate::recording::RecordEntry>>,
    ) {
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
        } = self;
        info!(
            recording = %recorder.path().display(),
            max_connections = config.max_connections,
            "Bridge serving."
        );
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (handle, rx) = Recorder::channel();
        let live_rx = observers.best_effort.subscribe();
        let mut recorder_task = tokio::spawn(recorder.run(rx, observers));

        let live_task = (config.live && live::stdout_is_terminal()).then(|| {
            let out: Box<dyn Write + Send> = Box::new(std::io::stdout());
            tokio::spawn(live::run(live_rx, out, cancel.clone()))
        });

        let ctx = Arc::new(ConnectionContext {
            recorder: handle,
            auth_token: config.auth_token.clone(),
            frame_timeout: config.frame_timeout,
            idle_timeout: config.idle_timeout,
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

        let early = tokio::select! {
            () = shutdown => None,
            done = &mut recorder_task => Some(done),
        };
        info!("Bridge stopping.");
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        if let Some(task) = live_task {
            task.await.context("live table task panicked")?;
        }
        let recorded = match early {
            Some(done) => done,
            None => recorder_task.await,
        };
        recorded
            .context("recorder task panicked")?
            .context("recording stopped")?;
        info!("Bridge stopped.");
        Ok(())
    }
}
