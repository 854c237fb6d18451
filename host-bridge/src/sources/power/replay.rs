//! A recorded powermetrics capture (`-f plist`, NUL-separated) played back as a power source.
//!
//! Two paces:
//! - [`Pace::Recorded`]: each document is released `elapsed_ns` after the previous one and
//!   stamped with the bridge clock on release, as if powermetrics were running now.
//! - [`Pace::AsFastAsPossible`]: no waiting; windows are laid end to end on a virtual timeline
//!   that starts at the bridge clock's reading when the replay starts
//!   (`end_k = start + Σ elapsed_ns`), so window lengths and order are exactly those recorded.
//!
//! The file is read in chunks, so long captures do not need to fit in memory. Text-format
//! captures are refused with a message that says to record with plist output.

use std::path::PathBuf;
use std::time::Duration;

use protocol::MonoNanos;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::powermetrics::frame::Frame;
use super::powermetrics::{DocStream, StreamOutput};
use super::{MonoClock, OutputClosed, PowerEvent, PowerOutputs, VmSelector};

/// Read size for the capture file.
const READ_CHUNK: usize = 256 * 1024;

/// How fast to replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// At the recorded pace (`elapsed_ns` between documents).
    Recorded,
    /// As fast as the pipeline takes the samples.
    AsFastAsPossible,
}

/// Replay configuration.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    /// The capture file.
    pub path: PathBuf,
    /// Pace.
    pub pace: Pace,
    /// Which task is the VM.
    pub vm: VmSelector,
}

/// Failure of a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file could not be opened or read.
    #[error("failed to read capture {path:?}")]
    Read {
        /// The capture.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The capture is powermetrics text output.
    #[error(
        "capture {path:?} is powermetrics text output, which cannot be replayed; record with \
         plist output (`powermetrics --format plist …`)"
    )]
    TextFormat {
        /// The capture.
        path: PathBuf,
    },
}

/// The replay source.
#[derive(Debug)]
pub struct ReplaySource {
    config: ReplayConfig,
    clock: MonoClock,
}

impl ReplaySource {
    /// A replay of `config.path` stamped with `clock`.
    #[must_use]
    pub fn new(config: ReplayConfig, clock: MonoClock) -> Self {
        Self { config, clock }
    }

    /// Plays the capture to its end (then sends [`PowerEvent::SourceEnded`]), or until
    /// cancelled or the outputs close.
    ///
    /// # Errors
    /// [`ReplayError`] when the file cannot be read or is text output.
    pub async fn run(
        self,
        out: PowerOutputs,
        cancel: CancellationToken,
    ) -> Result<(), ReplayError> {
        let path = self.config.path.clone();
        let read_err = |source| ReplayError::Read {
            path: path.clone(),
            source,
        };
        let mut file = tokio::fs::File::open(&path).await.map_err(read_err)?;
        let mut stream = DocStream::new(self.config.vm.clone());
        let mut player = Player {
            pace: self.config.pace,
            clock: self.clock,
            started: tokio::time::Instant::now(),
            virtual_end: self.clock.now(),
            elapsed_total: Duration::ZERO,
            samples: 0,
        };
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                read = file.read(&mut buf) => read.map_err(read_err)?,
            };
            if n == 0 {
                break;
            }
            stream.push_bytes(&buf[..n]);
            if stream.is_text_format() {
                return Err(ReplayError::TextFormat { path });
            }
            while let Some(frame) = stream.next_frame() {
                if player
                    .play(&mut stream, frame, &out, &cancel)
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                if cancel.is_cancelled() {
                    return Ok(());
                }
            }
        }
        let mut tail = StreamOutput::default();
        if let Some(frame) = take_last(&mut stream, player.virtual_end, &mut tail)
            && player
                .play(&mut stream, frame, &out, &cancel)
                .await
                .is_err()
        {
            return Ok(());
        }
        if send_all(&out, tail, &cancel).await.is_err() {
            return Ok(());
        }
        let stats = stream.stats();
        tracing::info!(
            path = %path.display(),
            samples = player.samples,
            docs = stats.docs,
            rejected = stats.rejected,
            incomplete = stats.incomplete,
            "Replay finished."
        );
        let reason = format!(
            "replay of {} finished: {} samples from {} documents",
            path.display(),
            player.samples,
            stats.docs
        );
        // The pipeline may be gone already; nothing more to do either way.
        let _closed = out
            .event_or_cancel(PowerEvent::SourceEnded { reason }, &cancel)
            .await;
        Ok(())
    }
}

/// The last document if complete; a drop is reported into `tail`.
fn take_last(stream: &mut DocStream, end: MonoNanos, tail: &mut StreamOutput) -> Option<Frame> {
    let finished = stream.finish_frame();
    match finished {
        Some(Frame::Doc(doc)) => Some(Frame::Doc(doc)),
        Some(dropped) => {
            stream.frame(dropped, end, tail);
            None
        }
        None => None,
    }
}

struct Player {
    pace: Pace,
    clock: MonoClock,
    /// Replay start, for the recorded pace (no drift: each release is `started + Σ elapsed`).
    started: tokio::time::Instant,
    /// Virtual timeline for the fast pace.
    virtual_end: MonoNanos,
    elapsed_total: Duration,
    samples: u64,
}

impl Player {
    async fn play(
        &mut self,
        stream: &mut DocStream,
        frame: Frame,
        out: &PowerOutputs,
        cancel: &CancellationToken,
    ) -> Result<(), OutputClosed> {
        let mut output = StreamOutput::default();
        match frame {
            Frame::Doc(bytes) => {
                if let Some(doc) = stream.parse(&bytes, &mut output) {
                    let elapsed = doc.elapsed_ns.unwrap_or(0);
                    let end = match self.pace {
                        Pace::Recorded => {
                            self.elapsed_total += Duration::from_nanos(elapsed);
                            tokio::select! {
                                () = cancel.cancelled() => return Ok(()),
                                () = tokio::time::sleep_until(self.started + self.elapsed_total) => {}
                            }
                            self.clock.now()
                        }
                        Pace::AsFastAsPossible => {
                            self.virtual_end =
                                MonoNanos(self.virtual_end.0.saturating_add(elapsed));
                            self.virtual_end
                        }
                    };
                    stream.sample(&doc, end, &mut output);
                }
            }
            dropped @ Frame::Dropped(_) => stream.frame(dropped, self.virtual_end, &mut output),
        }
        self.samples += u64::try_from(output.samples.len()).unwrap_or(u64::MAX);
        send_all(out, output, cancel).await
    }
}

async fn send_all(
    out: &PowerOutputs,
    output: StreamOutput,
    cancel: &CancellationToken,
) -> Result<(), OutputClosed> {
    for event in output.events {
        out.event_or_cancel(event, cancel).await?;
    }
    for sample in output.samples {
        out.sample_or_cancel(sample, cancel).await?;
    }
    Ok(())
}
