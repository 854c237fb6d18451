//! Record a bridge run *with* host power in the same recording, until Ctrl-C or SIGTERM.
//!
//! `serve` does not run a power source yet, so its recordings carry guest data only. This
//! example runs the real [`Bridge`] and the real estimate source (`run_power` with
//! [`SourceChoice::Estimate`]) side by side, and on shutdown writes `--record` with both streams
//! interleaved in time order, the file `serve` will write once it records power itself. It is
//! what `scripts/compare-native-vm.sh` uses for both of its runs:
//!
//! - `--vm-pid-file PATH`: "the VM" is the process whose pid QEMU writes there (`-pidfile`); the
//!   power source starts once the file exists.
//! - `--native`: the agent runs on this host, so there is no VM process: readings carry no VM
//!   share and the attribution falls back to guest busy time against host busy time
//!   (DESIGN.md §7.3, step 2).
//!
//! ```text
//! cargo run -p host-bridge --example record_with_power -- \
//!     --listen unix:///tmp/jb/bridge.sock --record /tmp/jb/run.jbr --native
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use host_bridge::config::{Config, ListenEndpoint};
use host_bridge::recording::{RecordEntry, RecordingReader, RecordingWriter};
use host_bridge::serve::Bridge;
use host_bridge::sources::power::{
    MonoClock, PowerConfig, PowerEvent, PowerOutputs, Provenance, SourceChoice, VmSelector,
    run_power,
};
use tokio_util::sync::CancellationToken;

/// Flags.
#[derive(Debug, Parser)]
struct Args {
    /// Where agents connect (`unix:///path`, `tcp://HOST:PORT`).
    #[arg(long)]
    listen: String,
    /// The recording to write (guest entries and power readings, time-ordered).
    #[arg(long)]
    record: PathBuf,
    /// File holding the VM process's pid (QEMU `-pidfile`).
    #[arg(long, conflicts_with = "native")]
    vm_pid_file: Option<PathBuf>,
    /// The agent runs on this host: no VM process.
    #[arg(long)]
    native: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    anyhow::ensure!(
        args.native || args.vm_pid_file.is_some(),
        "give --native or --vm-pid-file"
    );
    let listen: ListenEndpoint = args
        .listen
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid --listen: {e:?}"))?;
    let guest_only = args.record.with_extension("guest.jbr");
    let config = Config {
        listen: vec![listen],
        record: guest_only.clone(),
        max_connections: 8,
        auth_token: None,
        live: false,
        frame_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(120),
    };
    let bridge = Bridge::bind(config).await.context("bridge")?;
    let shutdown = CancellationToken::new();
    let bridge_task = tokio::spawn(bridge.run(shutdown.clone().cancelled_owned()));

    let power_cancel = CancellationToken::new();
    let power_task = tokio::spawn(record_power(
        args.vm_pid_file.clone(),
        args.native,
        power_cancel.clone(),
    ));

    wait_for_signal().await;
    tracing::info!("Stopping: power source, then the bridge.");
    power_cancel.cancel();
    let power = power_task.await.context("power task")??;
    shutdown.cancel();
    bridge_task.await.context("bridge task")??;

    let rec = RecordingReader::read_all(&guest_only).context("read the guest recording")?;
    let guest_entries = rec.entries.len();
    let power_entries = power.len();
    let mut all: Vec<RecordEntry> = rec.entries.into_iter().chain(power).collect();
    all.sort_by_key(|e| match e {
        RecordEntry::Session(_) => (0, 0),
        RecordEntry::PowerSource { .. } => (1, 0),
        RecordEntry::Guest { at, .. } => (2, at.0),
        RecordEntry::Power(p) => (2, p.end.0),
        RecordEntry::PowerGap { to, .. } => (2, to.0),
    });
    if args.record.exists() {
        std::fs::remove_file(&args.record).context("replace the old recording")?;
    }
    let (mut writer, _) = RecordingWriter::open_append(&args.record).context("open --record")?;
    for entry in &all {
        writer.append(entry).context("append")?;
    }
    writer.sync().context("sync")?;
    tracing::info!(
        path = %args.record.display(),
        guest_entries,
        power_entries,
        "Recording with power written."
    );
    Ok(())
}

/// Runs the estimate source until `cancel`; its readings and its selection as recording entries.
async fn record_power(
    vm_pid_file: Option<PathBuf>,
    native: bool,
    cancel: CancellationToken,
) -> anyhow::Result<Vec<RecordEntry>> {
    let selector = match &vm_pid_file {
        Some(path) => loop {
            if let Ok(text) = tokio::fs::read_to_string(path).await
                && let Ok(pid) = text.trim().parse::<i64>()
            {
                tracing::info!(pid, "VM process found; starting the power source.");
                break VmSelector::Pid(pid);
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(Vec::new()),
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        },
        None => VmSelector::linux_default(),
    };
    let config = PowerConfig {
        choice: SourceChoice::Estimate,
        linux_vm: selector,
        ..PowerConfig::default()
    };
    let (out, mut samples, mut events) = PowerOutputs::channel(64);
    let task = tokio::spawn(run_power(config, MonoClock::new(), out, cancel));
    let mut entries = Vec::new();
    loop {
        tokio::select! {
            Some(mut sample) = samples.recv() => {
                if native {
                    sample.vm_share = None;
                }
                entries.push(RecordEntry::Power(sample));
            }
            Some(event) = events.recv() => {
                if let PowerEvent::SourceSelected { kind, reason } = event {
                    entries.push(RecordEntry::PowerSource {
                        kind: kind.as_str().to_string(),
                        reason,
                        provenance: Provenance::Estimated,
                    });
                }
            }
            else => break,
        }
    }
    task.await.context("power source task")??;
    Ok(entries)
}

async fn wait_for_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for SIGTERM.");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
