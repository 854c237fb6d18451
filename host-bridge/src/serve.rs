//! `serve`: accept agents, read host power, record everything.
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
use tracing::{info, warn};

use crate::config::Config;
use crate::recording::RecordEntry;
use crate::sinks::prometheus::BridgeStats;
use crate::sinks::recorder::{Observers, Record, Recorder, RecorderHandle, RecorderStats};
use crate::sources::guest::connection::ConnectionContext;
use crate::sources::guest::listener::{self, GuestListener};
use crate::sources::power::{
    MonoClock, PowerConfig, PowerEvent, PowerOutputs, PowerSourceKind, Provenance,
    RaplAvailability, SelectError, SourceChoice, rapl, run_power,
};

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

/// Bounded queue between the power source and its forwarder. Overflow policy: the source
/// `send().await`s (see [`PowerOutputs`]); samples come at most a few per second.
const POWER_QUEUE: usize = 64;

/// Refuse at start what cannot run: RAPL named explicitly but unreadable (the error says why
/// and what to do). Auto-selection falls back instead, in [`run_power`].
fn check_power(power: &PowerConfig) -> anyhow::Result<()> {
    if power.choice == SourceChoice::Rapl {
        let reason = match rapl::probe(&power.powercap_root) {
            RaplAvailability::Readable => return Ok(()),
            RaplAvailability::Unreadable(reason) => reason,
            RaplAvailability::Absent => format!(
                "no intel-rapl zones under {}",
                power.powercap_root.display()
            ),
        };
        return Err(anyhow::Error::new(SelectError::RaplUnavailable { reason })
            .context("--power rapl cannot be used; try --power auto or --power estimate"));
    }
    Ok(())
}

/// Run the power source and record what it produces: samples as [`RecordEntry::Power`], the
/// selection as [`RecordEntry::PowerSource`], gaps as [`RecordEntry::PowerGap`] (other events
/// are logged where they are emitted).
///
/// # Errors
/// The power source failed (its error chain says why).
async fn power_loop(
    power: PowerConfig,
    recorder: RecorderHandle,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let (out, mut samples, mut events) = PowerOutputs::channel(POWER_QUEUE);
    let source = tokio::spawn(run_power(power, MonoClock::new(), out, cancel));
    loop {
        // Events first: the selection is sent before any sample and must be recorded first.
        let entry = tokio::select! {
            biased;
            Some(event) = events.recv() => match event {
                PowerEvent::SourceSelected { kind, reason } => {
                    info!(source = %kind, %reason, "Host power source running.");
                    RecordEntry::PowerSource {
                        kind: kind.as_str().to_string(),
                        reason,
                        provenance: if kind == PowerSourceKind::Estimate {
                            Provenance::Estimated
                        } else {
                            Provenance::Measured
                        },
                    }
                }
                PowerEvent::Gap { from, to, reason } => RecordEntry::PowerGap { from, to, reason },
                _ => continue,
            },
            Some(sample) = samples.recv() => RecordEntry::Power(sample),
            else => break,
        };
        let record = Record {
            entry,
            origin: None,
        };
        if recorder.record(record).await.is_err() {
            warn!("Recorder stopped; host power is no longer recorded.");
            break;
        }
    }
    // Closing the receivers stops a source still sending (the recorder is gone).
    drop((samples, events));
    source
        .await
        .context("power source panicked")?
        .context("host power source failed")
}
