//! joulebridge guest agent: runs inside the Linux VM, reads per-container cgroup counters and
//! VM-wide `/proc/stat`, and streams them, cumulative, to the host bridge.
//!
//! Data flows sources → pipeline → sinks:
//! - [`sources`]: synchronous samplers over an injectable root ([`sources::cgroup`],
//!   [`sources::procfs`]) and the Docker metadata registry ([`sources::docker`]).
//! - [`pipeline`]: the tick loop; one `spawn_blocking` pass per tick builds one `Sample`.
//! - [`sinks`]: [`sinks::stream`], the connection to the bridge, with the [`spool`] of
//!   unacknowledged samples that makes a bridge restart lossless.
//! - [`config`] / [`cli`]: flags, then the validated configuration ([`config::Endpoint`]).
//! - [`clock`]: the guest clocks samples are stamped with.
//! - [`backoff`]: the capped exponential back-off of both retry loops (bridge, engine).
//!
//! [`run`] wires them together; `main.rs` only parses flags, sets up logging and calls it.

pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod pipeline;
pub mod sinks;
pub mod sources;
pub mod spool;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::pipeline::{Pipeline, PipelineStats, Sampling};
use crate::sinks::ContainerTable;
use crate::sinks::stream::{AgentIdentity, StreamSink};

/// Samples queued between the pipeline and the stream sink. The sink only moves them into
/// its spool, so this fills only when the socket blocks for this many periods; then the
/// pipeline drops the newest (cumulative counters: resolution lost, not CPU time).
pub const SAMPLE_QUEUE: usize = 64;

/// Registry events queued between the Docker source and the pipeline. Overflow policy: the
/// registry waits (`send().await`): events are rare and each one matters.
pub const REGISTRY_QUEUE: usize = 256;

/// Time allowed, beyond the final-Ack wait, for the stream sink to finish at shutdown.
pub const SHUTDOWN_EXTRA_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Run the agent until `shutdown` completes, then flush and say Goodbye.
///
/// # Errors
/// Setup failures (cgroup mounts, procfs unreadable, bad `--cgroup`) and a panicked sampling
/// task. Connection failures are retried, never returned.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let root = config.root.clone();
    let proc_root = pipeline::proc_root_under(&root);
    let discover = config.discover;
    let explicit = config.cgroups.clone();
    let period = config.sample_period;
    let slow_every = config.slow_counters_every;
    let setup_proc_root = proc_root.clone();
    let (sampling, ident) = tokio::task::spawn_blocking(move || {
        let sampling = Sampling::open(
            &root,
            &setup_proc_root,
            discover,
            &explicit,
            period,
            slow_every,
        )?;
        let ident = pipeline::read_identity(&setup_proc_root)?;
        Ok::<_, pipeline::PipelineError>((sampling, ident))
    })
    .await
    .context("setup task panicked")?
    .context("failed to set up sampling")?;
    let (boot_id, hostname, kernel_release, cpu_count) = ident;

    let identity = AgentIdentity {
        boot_id,
        instance_id: rand::random(),
        vm_name: config.vm_name.clone().unwrap_or_else(|| hostname.clone()),
        hostname,
        kernel_release,
        cgroup_mode: sampling.mode(),
        cpu_count,
        sample_period_ms: u32::try_from(period.as_millis()).unwrap_or(u32::MAX),
        has_container_metadata: config.docker.is_some(),
    };
    info!(
        endpoint = %config.stream.endpoint,
        vm = %identity.vm_name,
        boot_id = %identity.boot_id,
        instance_id = identity.instance_id,
        cgroup_mode = ?identity.cgroup_mode,
        "Guest agent starting."
    );

    let cancel = CancellationToken::new();
    let (sample_tx, sample_rx) = mpsc::channel(SAMPLE_QUEUE);
    let (table_tx, table_rx) = watch::channel(ContainerTable::new());
    let mut sink = StreamSink::new(config.stream.clone(), identity, sample_rx, table_rx);
    let energy_task = match &config.expose_energy {
        Some(dir) => {
            let (tx, task) = sinks::energy::spawn_writer(dir.clone())
                .await
                .with_context(|| format!("--expose-energy {}", dir.display()))?;
            sink = sink.with_energy(tx);
            Some(task)
        }
        None => None,
    };
    let sink_task = tokio::spawn(sink.run());

    let registry = config.docker.clone().map(|docker| {
        let (tx, rx) = mpsc::channel(REGISTRY_QUEUE);
        let task = tokio::spawn(sources::docker::run_registry(
            docker,
            proc_root.clone(),
            tx,
            cancel.clone(),
        ));
        (rx, task)
    });
    let (registry_rx, registry_task) = match registry {
        Some((rx, task)) => (Some(rx), Some(task)),
        None => (None, None),
    };

    let pipeline = Pipeline {
        sampling,
        period,
        samples: sample_tx,
        table: table_tx,
        registry: registry_rx,
        stats: Arc::new(PipelineStats::default()),
    };
    let mut pipeline_task = tokio::spawn(pipeline.run(cancel.clone()));

    let result = tokio::select! {
        () = shutdown => {
            info!("Shutting down.");
            cancel.cancel();
            (&mut pipeline_task).await
        }
        done = &mut pipeline_task => {
            cancel.cancel();
            done
        }
    };
    // The pipeline has dropped its sender: the sink flushes, says Goodbye and returns. A bridge
    // that stopped reading could block a write forever; do not let it block the exit too.
    let grace = config.stream.shutdown_ack_timeout + SHUTDOWN_EXTRA_GRACE;
    let mut sink_task = sink_task;
    match tokio::time::timeout(grace, &mut sink_task).await {
        Ok(done) => done.context("stream task panicked")?,
        Err(_) => {
            warn!(
                ?grace,
                "The stream to the bridge did not finish in time; abandoning it."
            );
            sink_task.abort();
        }
    }
    if let Some(task) = registry_task {
        task.await.context("docker registry task panicked")?;
    }
    // The sink has dropped its sender: the writer writes the last report and returns.
    if let Some(task) = energy_task {
        task.await.context("energy file writer panicked")?;
    }
    result.context("sampling task panicked")??;
    info!("Guest agent stopped.");
    Ok(())
}
