//! The pidfd watcher (Linux ≥ 5.3): a pidfd turns readable when the process exits.
//!
//! Holds the Docker source's only `unsafe` (audited): registering the pidfd with tokio's reactor.

use std::os::fd::OwnedFd;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The main process of a watched container exited.
#[derive(Debug)]
pub(super) struct ExitNotice {
    pub(super) id: String,
    pub(super) pid: u32,
}

/// `pidfd_open(pid)`; `None` when the process is gone or the kernel lacks pidfds.
pub(super) fn open(pid: u32) -> Option<OwnedFd> {
    let raw = i32::try_from(pid).ok()?;
    let pid = rustix::process::Pid::from_raw(raw)?;
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => Some(fd),
        Err(err) => {
            tracing::debug!(pid = raw, error = %err, "pidfd_open failed; relying on the engine's die event.");
            None
        }
    }
}

/// Spawns a task that sends `notice` when the process behind `fd` exits.
pub(super) fn spawn(
    fd: OwnedFd,
    notice: ExitNotice,
    tx: mpsc::Sender<ExitNotice>,
    cancel: CancellationToken,
) -> Option<()> {
    // SAFETY: `register_with_interest` requires that `as_raw_fd()` stays a valid, open
    // descriptor of the same file description for the AsyncFd's lifetime. The `OwnedFd`
    // is moved into the AsyncFd, which alone owns and closes it, and an `OwnedFd` always
    // returns the same descriptor.
    #[allow(unsafe_code)]
    let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
    let fd = match registered {
        Ok(fd) => fd,
        Err(err) => {
            tracing::debug!(error = %err, "Cannot poll a pidfd; relying on the engine's die event.");
            return None;
        }
    };
    tokio::spawn(async move {
        tokio::select! {
            () = cancel.cancelled() => {}
            ready = fd.readable() => {
                if ready.is_ok() {
                    // Closed receiver: the registry is shutting down; nothing to report to.
                    let _closed = tx.send(notice).await;
                }
            }
        }
    });
    Some(())
}
