//! The power task of `serve`: run the selected host power source and turn what it produces into
//! journal entries, recorded like guest messages so live attribution and reports see the same
//! sequence.

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::journal::RecordEntry;
use crate::journal::recorder::{Record, RecorderHandle};
use crate::sources::power::{
    MonoClock, PowerConfig, PowerEvent, PowerOutputs, RaplAvailability, SelectError, SourceChoice,
    rapl, run_power,
};

/// Bounded queue between the power source and its forwarder. Overflow policy: the source
/// `send().await`s (see [`PowerOutputs`]); samples come at most a few per second.
const POWER_QUEUE: usize = 64;

/// Refuse at start what cannot run: RAPL named explicitly but unreadable (the error says why
/// and what to do). Auto-selection falls back instead, in [`run_power`].
pub(super) fn check_power(power: &PowerConfig) -> anyhow::Result<()> {
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
pub(super) async fn power_loop(
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
                        kind,
                        reason,
                        provenance: kind.provenance(),
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
