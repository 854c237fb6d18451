//! The recorder: one task owns the [`RecordingWriter`]; everything the bridge receives goes
//! through it, in arrival order.
//!
//! ```text
//! connection tasks ──Record──► bounded mpsc (send().await: a slow disk slows the socket
//!                              readers, and TCP/vsock flow control pushes back on agents)
//!   recorder: batch (≤ 64 entries or 200 ms) ─► spawn_blocking { dedupe, append, fdatasync }
//!     ─► Ack per stream (highest seq durably recorded) on each connection's watch channel
//!     ─► observers: lossless mpsc senders (send().await)
//! ```
//!
//! **Dedupe.** A stream is (boot id, instance id) from the agent's Hello. The recorder keeps the
//! highest sequence number written per stream and drops any sample at or below it: after a
//! reconnect an agent resends everything not yet acknowledged. The table is rebuilt from the
//! file on startup ([`RecordingWriter::open_append`] returns what is there), so a bridge
//! restarted on the same file acknowledges what it already has and records nothing twice.
//!
//! **Acks only after `fdatasync`.** A sample is acknowledged once the batch holding it is on
//! disk, so a bridge killed at any instant has either recorded a sample durably or not
//! acknowledged it (and the agent still holds it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use protocol::Message;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::file::{RecordingError, RecordingWriter};
use super::record::{RecordEntry, SessionStart};

/// Entries waiting for the recorder. Overflow policy: senders `send().await` (back-pressure
/// to the socket readers, then to the agents through flow control).
pub const RECORDER_QUEUE: usize = 1024;
/// Most entries written between two syncs.
pub const BATCH_MAX_ENTRIES: usize = 64;
/// Longest wait between the first entry of a batch and its sync.
pub const BATCH_MAX_DELAY: Duration = Duration::from_millis(200);

/// Identity of one agent's sequence of samples: sequence numbers restart with a new agent
/// process (new instance id) or a guest reboot (new boot id).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    /// Guest boot id.
    pub boot_id: String,
    /// Agent instance id.
    pub instance_id: u64,
}

/// Which connection an entry came from, for dedupe and acks.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The agent's stream.
    pub stream: Arc<StreamKey>,
    /// The connection's ack channel: the highest sequence number durably recorded for the
    /// stream (latest wins; an Ack covers every lower seq).
    pub ack: watch::Sender<Option<u64>>,
}

/// One thing to record.
#[derive(Debug)]
pub struct Record {
    /// The entry.
    pub entry: RecordEntry,
    /// Where it came from (`None` for entries the bridge makes itself).
    pub origin: Option<Origin>,
}

/// Sends entries to the recorder. Cheap to clone; the recorder stops once every handle is
/// dropped.
#[derive(Clone, Debug)]
pub struct RecorderHandle {
    tx: mpsc::Sender<Record>,
}

impl RecorderHandle {
    /// Queue an entry, waiting while the queue is full.
    ///
    /// # Errors
    /// [`RecorderError::Stopped`] when the recorder task has ended.
    pub async fn record(&self, record: Record) -> Result<(), RecorderError> {
        self.tx
            .send(record)
            .await
            .map_err(|_| RecorderError::Stopped)
    }
}

/// Where recorded entries are passed on.
#[derive(Debug, Clone, Default)]
pub struct Observers {
    /// Consumers that must see every entry (the attribution engine). Overflow policy:
    /// `send().await`, so a slow consumer slows recording and, through it, the agents.
    pub lossless: Vec<mpsc::Sender<Arc<RecordEntry>>>,
}

/// Counters of the recorder, shared for logs and tests.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Entries appended (this process).
    pub written: AtomicU64,
    /// Samples dropped as duplicates.
    pub duplicates: AtomicU64,
    /// Syncs done.
    pub syncs: AtomicU64,
}

/// Failures of the recorder. Any of them stops recording (and the bridge): without a durable
/// file nothing could be acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// Opening, writing or syncing the file failed.
    #[error("recording failed")]
    Recording(#[from] RecordingError),
    /// The blocking write task panicked.
    #[error("the recording task panicked")]
    Join(#[source] tokio::task::JoinError),
    /// The recorder task has ended (it failed; its own error says why).
    #[error("the recorder has stopped")]
    Stopped,
}

/// The recorder's state. Open with [`Recorder::open`] (blocking), run with [`Recorder::run`].
#[derive(Debug)]
pub struct Recorder {
    writer: RecordingWriter,
    /// Highest seq appended per stream (dedupe).
    written: HashMap<Arc<StreamKey>, u64>,
    /// Highest seq synced per stream (acks).
    durable: HashMap<Arc<StreamKey>, u64>,
    stats: Arc<RecorderStats>,
}

impl Recorder {
    /// Open (or continue) the recording at `path`, rebuild the dedupe table from what it holds,
    /// and append a [`RecordEntry::Session`] for this process. Blocking.
    ///
    /// # Errors
    /// [`RecorderError::Recording`] when the file cannot be opened, is not a recording, or is
    /// corrupt before its last frame.
    pub fn open(path: &Path) -> Result<Self, RecorderError> {
        let (mut writer, existing) = RecordingWriter::open_append(path)?;
        let written = highest_seq_per_stream(&existing);
        if !existing.is_empty() {
            info!(
                path = %path.display(),
                entries = existing.len(),
                streams = written.len(),
                "Continuing an existing recording."
            );
        }
        writer.append(&RecordEntry::Session(SessionStart {
            bridge_version: env!("CARGO_PKG_VERSION").to_string(),
            mono: crate::clock::mono_now(),
            unix: crate::clock::unix_now(),
            hostname: hostname(),
            os: std::env::consts::OS.to_string(),
        }))?;
        writer.sync()?;
        Ok(Self {
            writer,
            durable: written.clone(),
            written,
            stats: Arc::new(RecorderStats::default()),
        })
    }

    /// The recording file.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        self.writer.path().to_path_buf()
    }

    /// Shared counters.
    #[must_use]
    pub fn stats(&self) -> Arc<RecorderStats> {
        Arc::clone(&self.stats)
    }

    /// A recorder channel: give the handle to producers, the receiver to [`Recorder::run`].
    #[must_use]
    pub fn channel() -> (RecorderHandle, mpsc::Receiver<Record>) {
        let (tx, rx) = mpsc::channel(RECORDER_QUEUE);
        (RecorderHandle { tx }, rx)
    }

    /// Record until every [`RecorderHandle`] is dropped, then sync and return.
    ///
    /// # Errors
    /// [`RecorderError`] on the first write or sync failure.
    pub async fn run(
        self,
        mut rx: mpsc::Receiver<Record>,
        observers: Observers,
    ) -> Result<(), RecorderError> {
        let mut state = self;
        let mut batch: Vec<Record> = Vec::with_capacity(BATCH_MAX_ENTRIES);
        loop {
            let Some(first) = rx.recv().await else { break };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + BATCH_MAX_DELAY;
            let mut closed = false;
            while batch.len() < BATCH_MAX_ENTRIES {
                tokio::select! {
                    next = rx.recv() => match next {
                        Some(record) => batch.push(record),
                        None => { closed = true; break; }
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            let records = std::mem::take(&mut batch);
            let (returned, outcome) = tokio::task::spawn_blocking(move || {
                let mut state = state;
                let outcome = state.write_batch(records);
                (state, outcome)
            })
            .await
            .map_err(RecorderError::Join)?;
            state = returned;
            let (acks, recorded) = outcome?;
            for (ack, seq) in acks {
                ack.send_replace(Some(seq));
            }
            for entry in recorded {
                let entry = Arc::new(entry);
                for observer in &observers.lossless {
                    // A gone observer is not the recorder's problem.
                    if observer.send(Arc::clone(&entry)).await.is_err() {
                        debug!("An observer went away.");
                    }
                }
            }
            if closed {
                break;
            }
        }
        info!(
            path = %state.writer.path().display(),
            written = state.stats.written.load(Ordering::Relaxed),
            duplicates = state.stats.duplicates.load(Ordering::Relaxed),
            "Recording closed."
        );
        Ok(())
    }

    /// Dedupe, append and sync one batch. Returns the acks to send and the entries recorded.
    #[allow(clippy::type_complexity)]
    fn write_batch(
        &mut self,
        records: Vec<Record>,
    ) -> Result<(Vec<(watch::Sender<Option<u64>>, u64)>, Vec<RecordEntry>), RecorderError> {
        let mut recorded = Vec::with_capacity(records.len());
        let mut touched: Vec<Origin> = Vec::new();
        for Record { entry, origin } in records {
            if let (
                Some(origin),
                RecordEntry::Guest {
                    message: Message::Sample(s),
                    ..
                },
            ) = (&origin, &entry)
            {
                let seen = self.written.get(&origin.stream).copied();
                if seen.is_some_and(|high| s.seq <= high) {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    debug!(seq = s.seq, "Duplicate sample dropped.");
                    push_unique(&mut touched, origin);
                    continue;
                }
                if let Some(high) = seen
                    && s.seq > high + 1
                {
                    warn!(
                        boot_id = %origin.stream.boot_id,
                        instance_id = origin.stream.instance_id,
                        missing = s.seq - high - 1,
                        before_seq = s.seq,
                        "Samples missing (dropped by the agent); counters are cumulative, so only resolution is lost."
                    );
                }
                self.written.insert(Arc::clone(&origin.stream), s.seq);
            }
            self.writer.append(&entry)?;
            self.stats.written.fetch_add(1, Ordering::Relaxed);
            if let Some(origin) = &origin {
                push_unique(&mut touched, origin);
            }
            recorded.push(entry);
        }
        self.writer.sync()?;
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        let mut acks = Vec::new();
        for origin in touched {
            if let Some(&seq) = self.written.get(&origin.stream) {
                self.durable.insert(Arc::clone(&origin.stream), seq);
                acks.push((origin.ack, seq));
            }
        }
        Ok((acks, recorded))
    }

    /// Highest durably recorded seq of a stream, if any.
    #[must_use]
    pub fn durable_seq(&self, stream: &StreamKey) -> Option<u64> {
        self.durable.get(stream).copied()
    }
}

fn push_unique(touched: &mut Vec<Origin>, origin: &Origin) {
    if !touched.iter().any(|o| o.ack.same_channel(&origin.ack)) {
        touched.push(origin.clone());
    }
}

/// Rebuild the per-stream highest seq from a recording's entries: connection numbers map to
/// streams through each connection's Hello, and restart with every `Session`.
#[must_use]
pub fn highest_seq_per_stream(entries: &[RecordEntry]) -> HashMap<Arc<StreamKey>, u64> {
    let mut conns: HashMap<u64, Arc<StreamKey>> = HashMap::new();
    let mut high: HashMap<Arc<StreamKey>, u64> = HashMap::new();
    for entry in entries {
        match entry {
            RecordEntry::Session(_) => conns.clear(),
            RecordEntry::Guest {
                conn,
                message: Message::Hello(h),
                ..
            } => {
                conns.insert(
                    *conn,
                    Arc::new(StreamKey {
                        boot_id: h.boot_id.clone(),
                        instance_id: h.instance_id,
                    }),
                );
            }
            RecordEntry::Guest {
                conn,
                message: Message::Sample(s),
                ..
            } => {
                if let Some(key) = conns.get(conn) {
                    let slot = high.entry(Arc::clone(key)).or_insert(s.seq);
                    *slot = (*slot).max(s.seq);
                }
            }
            _ => {}
        }
    }
    high
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use protocol::{ClockReading, Hello, MonoNanos, Sample, UnixNanos, testing};

    use super::*;

    fn hello(instance_id: u64) -> Message {
        Message::Hello(Hello {
            cpu_count: 1,
            ..testing::hello("boot", instance_id, "vm")
        })
    }

    fn sample(seq: u64) -> Message {
        Message::Sample(Sample {
            clock: ClockReading {
                mono_ns: MonoNanos(seq),
                unix_ns: UnixNanos(seq),
            },
            ..testing::sample(seq, seq, &[])
        })
    }

    fn guest(conn: u64, message: Message) -> RecordEntry {
        RecordEntry::Guest {
            conn,
            at: MonoNanos(0),
            message,
        }
    }

    /// Runs `recorder` over `msgs` of one agent stream until its input closes; its stats after.
    async fn record_to_end(
        recorder: Recorder,
        origin: &Origin,
        msgs: impl IntoIterator<Item = Message>,
    ) -> Arc<RecorderStats> {
        let stats = recorder.stats();
        let (handle, rx) = Recorder::channel();
        let task = tokio::spawn(recorder.run(rx, Observers::default()));
        for msg in msgs {
            handle
                .record(Record {
                    entry: guest(1, msg),
                    origin: Some(origin.clone()),
                })
                .await
                .unwrap();
        }
        drop(handle);
        task.await.unwrap().unwrap();
        stats
    }

    #[tokio::test]
    async fn recorder_dedupes_acks_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jbr");
        let key = Arc::new(StreamKey {
            boot_id: "boot".into(),
            instance_id: 7,
        });
        let (ack_tx, ack_rx) = watch::channel(None);
        let origin = Origin {
            stream: Arc::clone(&key),
            ack: ack_tx,
        };

        let msgs = [
            hello(7),
            sample(0),
            sample(1),
            sample(1),
            sample(0),
            sample(2),
        ];
        let stats = record_to_end(Recorder::open(&path).unwrap(), &origin, msgs).await;
        assert_eq!(*ack_rx.borrow(), Some(2));
        assert_eq!(stats.duplicates.load(Ordering::Relaxed), 2);

        // A restarted bridge knows what the file holds.
        let recorder = Recorder::open(&path).unwrap();
        assert_eq!(recorder.durable_seq(&key), Some(2));
        let (ack_tx, ack_rx) = watch::channel(None);
        let origin = Origin {
            stream: Arc::clone(&key),
            ack: ack_tx,
        };
        let msgs = [hello(7), sample(1), sample(2), sample(3)];
        let stats = record_to_end(recorder, &origin, msgs).await;
        assert_eq!(*ack_rx.borrow(), Some(3));
        assert_eq!(stats.duplicates.load(Ordering::Relaxed), 2);

        let read = crate::journal::RecordingReader::read_all(&path).unwrap();
        let seqs: Vec<u64> = read
            .entries
            .iter()
            .filter_map(|e| match e {
                RecordEntry::Guest {
                    message: Message::Sample(s),
                    ..
                } => Some(s.seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3]);
        let sessions = read
            .entries
            .iter()
            .filter(|e| matches!(e, RecordEntry::Session(_)))
            .count();
        assert_eq!(sessions, 2);
    }
}
