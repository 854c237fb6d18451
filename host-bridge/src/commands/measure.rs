//! `measure [options] -- CMD ARGS`: run a bridge around one command.
//!
//! 1. Bind the agent listeners and open the recording (as `serve` does).
//! 2. Optional baseline: record for `--baseline` seconds before the command; the host's mean
//!    power over that phase becomes the measured idle power of the attribution.
//! 3. Run the command, showing elapsed time and host joules so far on stderr (when it is a
//!    terminal), until it exits or Ctrl-C/SIGTERM. On a signal the command gets SIGINT (it
//!    usually already has it from the terminal), then SIGKILL after [`KILL_GRACE`].
//! 4. Stop the bridge cleanly (the recording is synced), attribute the windows that overlap the
//!    command's run, and write the report (all formats) into `--out`.
//!
//! The exit code is the command's (128 + signal number when a signal ended it, as shells do).

use std::io::{IsTerminal as _, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use protocol::ContainerInfo;
use tokio_util::sync::CancellationToken;

use super::read_recording;
use super::report::print_summary;
use crate::cli::MeasureArgs;
use crate::config::Config;
use crate::journal::RecordEntry;
use crate::pipeline::{self, Attribution, IdleModel, Ledger};
use crate::report::from_attribution::{self, RecordingSource};
use crate::report::{Format, write_outputs};
use crate::serve::{Bridge, live};

/// Time a command gets to exit after SIGINT before it is killed.
pub const KILL_GRACE: Duration = Duration::from_secs(10);
/// Progress refresh period.
const PROGRESS_PERIOD: Duration = Duration::from_secs(1);

/// Mean power over `[from, to]` of the recorded power readings ending in it, mW.
fn baseline_mw(entries: &[RecordEntry], from: u64, to: u64) -> Option<u64> {
    let (mut uj, mut ns) = (0_u128, 0_u128);
    for e in entries {
        if let RecordEntry::Power(p) = e
            && p.end.0 > from
            && p.end.0 <= to
        {
            uj += u128::from(p.energy.0);
            ns += u128::from(p.window_ns);
        }
    }
    // µJ / ns × 1e6 = mW.
    (ns > 0).then(|| u64::try_from(uj * 1_000_000 / ns).unwrap_or(u64::MAX))
}

/// The attribution restricted to the windows that overlap `[from, ∞)`: a fresh ledger of
/// those windows, with the container metadata of the whole run.
fn restrict(attr: Attribution, from: u64) -> Attribution {
    let windows: Vec<_> = attr
        .windows
        .into_iter()
        .filter(|w| w.end.0 > from)
        .collect();
    let mut ledger = Ledger::default();
    for w in &windows {
        ledger.apply(w);
    }
    for (k, t) in attr.ledger.containers() {
        if let Some(m) = &t.meta {
            ledger.set_meta(
                &k.vm,
                &ContainerInfo {
                    id: k.id.clone(),
                    name: m.name.clone(),
                    image: m.image.clone(),
                    compose_project: m.compose_project.clone(),
                    compose_service: m.compose_service.clone(),
                    state: m.state,
                    ..ContainerInfo::default()
                },
            );
        }
    }
    let mut quality = attr.quality;
    quality.windows = u64::try_from(windows.len()).unwrap_or(u64::MAX);
    quality.degraded_windows = u64::try_from(
        windows
            .iter()
            .filter(|w| w.vms.iter().any(|v| v.degraded))
            .count(),
    )
    .unwrap_or(u64::MAX);
    Attribution {
        windows,
        ledger,
        quality,
        config: attr.config,
    }
}

fn interrupt(child: &tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // The child may already be gone; then there is nothing to interrupt.
        if let Err(error) =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGINT)
        {
            tracing::debug!(%error, "Could not interrupt the command.");
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .map(|c| u8::try_from(c & 0xff).unwrap_or(1))
        .or_else(|| {
            status
                .signal()
                .map(|s| u8::try_from(128 + s).unwrap_or(255))
        })
        .unwrap_or(1)
}

/// Run `measure`; returns the command's exit code.
///
/// # Errors
/// The bridge cannot start, the command cannot be spawned, or the report cannot be written.
#[allow(clippy::too_many_lines)] // one linear story: bind, baseline, run, stop, report
pub async fn run(
    args: &MeasureArgs,
    shutdown: impl Future<Output = ()>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<u8> {
    anyhow::ensure!(
        args.baseline.is_finite() && args.baseline >= 0.0,
        "--baseline must be a non-negative number of seconds"
    );
    // Poll the shutdown future once now so its signal handlers are installed before the
    // bridge exists: a Ctrl-C from then on stops the run cleanly instead of killing us.
    tokio::pin!(shutdown);
    let mut interrupted = futures::FutureExt::now_or_never(&mut shutdown).is_some();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let record = args.out.join("recording.jbr");
    let config = Config::with_defaults(&args.listen, record.clone(), &args.power)
        .context("invalid flags")?;
    let mut bridge = Bridge::bind(config).await?;
    for endpoint in bridge.local_endpoints() {
        writeln!(out, "listening for agents on {endpoint}")?;
    }
    let cfg = args.attribution.pipeline_config()?;
    let live = live::attach(&mut bridge, &record, cfg, None).await?;
    let stop_bridge = CancellationToken::new();
    let bridge_stop = stop_bridge.clone();
    let bridge_task = tokio::spawn(async move { bridge.run(bridge_stop.cancelled_owned()).await });

    let baseline_from = crate::clock::mono_now().0;
    if args.baseline > 0.0 && !interrupted {
        writeln!(
            out,
            "baseline: recording idle power for {} s",
            args.baseline
        )?;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs_f64(args.baseline)) => {}
            () = &mut shutdown => interrupted = true,
        }
    }
    let cmd_from = crate::clock::mono_now().0;
    live.progress
        .since_mono_ns
        .store(cmd_from, Ordering::Relaxed);
    live.progress.host_uj.store(0, Ordering::Relaxed);

    let code = if interrupted {
        130
    } else {
        let mut child = tokio::process::Command::new(&args.command[0])
            .args(&args.command[1..])
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {:?}", args.command[0]))?;
        let started = Instant::now();
        let show = std::io::stderr().is_terminal();
        let mut tick = tokio::time::interval(PROGRESS_PERIOD);
        let mut drawn = 0_usize;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.context("waiting for the command failed")?,
                () = &mut shutdown, if !interrupted => {
                    interrupted = true;
                    interrupt(&child);
                    let grace = tokio::time::timeout(KILL_GRACE, child.wait()).await;
                    match grace {
                        Ok(status) => break status.context("waiting for the command failed")?,
                        Err(_elapsed) => {
                            tracing::warn!("Command ignored SIGINT; killing it.");
                            child.kill().await.context("cannot kill the command")?;
                            break child.wait().await.context("waiting for the command failed")?;
                        }
                    }
                }
                _ = tick.tick() => {
                    if show {
                        let uj = live.progress.host_uj.load(Ordering::Relaxed);
                        let view = Arc::clone(&live.view.borrow());
                        let table = format!(
                            "{:.1} s elapsed · {:.3} J host energy so far\n{}",
                            started.elapsed().as_secs_f64(),
                            protocol::MicroJoules(uj).as_joules_f64(),
                            crate::sinks::live::frame(&view)
                        );
                        // Redraw in place: back to the first line of the previous frame.
                        if drawn > 0 {
                            eprint!("\x1b[{drawn}F\x1b[J");
                        }
                        eprint!("{table}");
                        drawn = table.lines().count();
                    }
                }
            }
        };

        exit_code(status)
    };

    stop_bridge.cancel();
    bridge_task.await.context("bridge task panicked")??;
    live.stop().await?;

    // Attribute the run from the synced recording.
    let rec = read_recording(&record)?;
    let mut cfg = cfg;
    if args.attribution.idle_watts.is_none()
        && args.baseline > 0.0
        && let Some(idle_mw) = baseline_mw(&rec.entries, baseline_from, cmd_from)
    {
        writeln!(
            out,
            "baseline: {:.3} W idle",
            protocol::MicroJoules(idle_mw).as_joules_f64() * 1_000.0
        )?;
        cfg.idle = IdleModel::Baseline { idle_mw };
    }
    let attr =
        pipeline::attribute_recording(&rec.entries, cfg).context("invalid attribution settings")?;
    let attr = restrict(attr, cmd_from);
    let label = record.display().to_string();
    let mut report = from_attribution::report(
        &attr,
        &cfg,
        &RecordingSource {
            path: Some(&label),
            header: &rec.header,
            entries: &rec.entries,
        },
    );
    report.apply_grid_intensity(args.attribution.grid()?);
    if interrupted {
        report
            .quality
            .notes
            .push("The run was interrupted (Ctrl-C or SIGTERM).".to_string());
    }
    let written = write_outputs(&report, &Format::ALL, &args.out)?;
    print_summary(&report, out)?;
    for path in written {
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::power::{PowerSample, Provenance};
    use protocol::{MicroJoules, MonoNanos};

    fn power(end_s: u64, uj: u64) -> RecordEntry {
        RecordEntry::Power(PowerSample {
            end: MonoNanos(end_s * 1_000_000_000),
            window_ns: 1_000_000_000,
            energy: MicroJoules(uj),
            components: Vec::new(),
            vm_share: None,
            host_cpu: None,
            provenance: Provenance::Measured,
        })
    }

    #[test]
    fn baseline_is_mean_power_of_readings_inside_the_phase() {
        let entries = [
            power(1, 9_000_000),
            power(2, 2_000_000),
            power(3, 4_000_000),
            power(4, 9_000_000),
        ];
        // Readings ending at 2 s and 3 s: 6 J over 2 s = 3 W.
        assert_eq!(
            baseline_mw(&entries, 1_000_000_000, 3_000_000_000),
            Some(3_000)
        );
        assert_eq!(baseline_mw(&entries, 10, 20), None);
    }
}
