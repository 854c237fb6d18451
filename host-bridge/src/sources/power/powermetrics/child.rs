//! The powermetrics child process: its stderr drained concurrently (a full pipe would block
//! it), and stopping it: SIGTERM to our own child only, never `killall` (other tools may run
//! their own powermetrics), then SIGKILL.

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// stderr lines kept for the exit reason.
const STDERR_TAIL_LINES: usize = 20;
/// Time a stopping child gets after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Known stderr noise (GMT filters these): logged at DEBUG, not WARN.
const STDERR_NOISE: [&str; 2] = ["proc_pid", "Second underflow occured"];

/// Reads stderr to the end, logging each line, and returns the last lines.
pub(super) async fn drain_stderr(stderr: impl AsyncRead + Unpin) -> Vec<String> {
    let mut lines = BufReader::new(stderr).lines();
    let mut tail = VecDeque::with_capacity(STDERR_TAIL_LINES);
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                let line = line.trim().to_owned();
                if line.is_empty() {
                    continue;
                }
                if STDERR_NOISE.iter().any(|noise| line.contains(noise)) {
                    tracing::debug!(line = %line, "Powermetrics stderr noise.");
                } else {
                    tracing::warn!(line = %line, "Powermetrics wrote to stderr.");
                }
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            Ok(None) => break,
            Err(err) => {
                tracing::debug!(error = %err, "Powermetrics stderr unreadable; stop draining.");
                break;
            }
        }
    }
    tail.into()
}

/// Waits for a child whose stdout closed; kills it if it lingers.
pub(super) async fn wait_child(child: &mut Child) -> Option<ExitStatus> {
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            stop_child(child).await;
            None
        }
    }
}

/// SIGTERM to our child only (so `sudo` relays it to powermetrics), then SIGKILL after
/// [`STOP_GRACE`]. `kill(1)` is used because signalling needs no `unsafe` that way.
pub(super) async fn stop_child(child: &mut Child) {
    if let Some(pid) = child.id() {
        let term = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if term.is_ok_and(|s| s.success())
            && tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok()
        {
            return;
        }
    }
    if let Err(err) = child.kill().await {
        tracing::debug!(error = %err, "Powermetrics child already gone.");
    }
}
