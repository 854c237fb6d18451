//! Host power estimated from CPU utilisation, for hosts with no readable sensor.
//!
//! Model (Cloud Carbon Footprint's compute formula, docs/attribution.md §1.3):
//! `P = P_idle + u × (P_max − P_idle)`, with `u` the host's busy fraction over the window and
//! `P_idle`, `P_max` scaled by the number of online CPUs.
//!
//! Defaults ([`DEFAULT_IDLE_WATTS_PER_CPU`], [`DEFAULT_MAX_WATTS_PER_CPU`]) are Cloud Carbon
//! Footprint's average coefficients per vCPU for AWS: 0.74 W minimum and 3.5 W maximum
//! (`cloud-carbon-footprint/cloud-carbon-footprint`,
//! `packages/aws/src/domain/AwsFootprintEstimationConstants.ts`, `MIN_WATTS_AVG`/
//! `MAX_WATTS_AVG`), which that project derives from SPECpower_ssj2008 results. Their ratio
//! (idle ≈ 21 % of max) sits at the low end of the 20–60 % active-idle range SPECpower reports
//! for servers. Laptops and desktops differ; set both figures for the machine when they are
//! known. Every sample is [`Provenance::Estimated`] and must be shown as "estimated".

use std::time::Duration;

use protocol::{MicroJoules, MonoNanos};
use tokio_util::sync::CancellationToken;

use super::hostcpu::{HostCpuError, ProcReader};
use super::{MonoClock, PowerOutputs, PowerSample, Provenance, energy_from_power};

/// Idle power per logical CPU (W): Cloud Carbon Footprint AWS `MIN_WATTS_AVG`.
pub const DEFAULT_IDLE_WATTS_PER_CPU: f64 = 0.74;
/// Full-load power per logical CPU (W): Cloud Carbon Footprint AWS `MAX_WATTS_AVG`.
pub const DEFAULT_MAX_WATTS_PER_CPU: f64 = 3.5;
/// Default interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Component name of the modelled power.
pub const COMPONENT: &str = "cpu-estimated";

/// The linear utilisation model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EstimateModel {
    /// Whole-host idle power (W).
    pub idle_watts: f64,
    /// Whole-host full-load power (W).
    pub max_watts: f64,
}

impl EstimateModel {
    /// The default coefficients for `cpus` logical CPUs.
    #[must_use]
    pub fn per_cpu_default(cpus: u32) -> Self {
        Self {
            idle_watts: DEFAULT_IDLE_WATTS_PER_CPU * f64::from(cpus),
            max_watts: DEFAULT_MAX_WATTS_PER_CPU * f64::from(cpus),
        }
    }

    /// Power at utilisation `u` (clamped to `[0, 1]`), in mW.
    #[must_use]
    pub fn power_mw(&self, utilisation: f64) -> f64 {
        let u = if utilisation.is_finite() {
            utilisation.clamp(0.0, 1.0)
        } else {
            0.0
        };
        (self.idle_watts + u * (self.max_watts - self.idle_watts)) * 1e3
    }

    /// Energy over `window_ns` at utilisation `u`.
    #[must_use]
    pub fn energy(&self, utilisation: f64, window_ns: u64) -> MicroJoules {
        energy_from_power(self.power_mw(utilisation), window_ns).unwrap_or(MicroJoules::ZERO)
    }
}

/// Where utilisation comes from.
#[derive(Debug)]
pub enum CpuProbe {
    /// `/proc/stat` (Linux): exact busy time, plus the VM process share.
    Proc(ProcReader),
    /// `sysctl -n vm.loadavg` (macOS without root): 1-minute load over CPUs, a coarse proxy
    /// used only when nothing better exists.
    LoadAverage {
        /// Logical CPUs.
        cpus: u32,
    },
}

/// The estimate source.
#[derive(Debug)]
pub struct EstimateSource {
    model: EstimateModel,
    probe: CpuProbe,
    interval: Duration,
    clock: MonoClock,
}

impl EstimateSource {
    /// A source with `model`, reading utilisation from `probe` every `interval`.
    #[must_use]
    pub fn new(
        model: EstimateModel,
        probe: CpuProbe,
        interval: Duration,
        clock: MonoClock,
    ) -> Self {
        Self {
            model,
            probe,
            interval,
            clock,
        }
    }

    /// Runs until cancelled or the outputs close.
    ///
    /// # Errors
    /// [`HostCpuError`] when `/proc/stat` becomes unreadable.
    pub async fn run(
        self,
        out: PowerOutputs,
        cancel: CancellationToken,
    ) -> Result<(), HostCpuError> {
        let Self {
            model,
            probe,
            interval,
            clock,
        } = self;
        let (mut proc, cpus) = match probe {
            CpuProbe::Proc(reader) => (Some(reader), 1),
            CpuProbe::LoadAverage { cpus } => (None, cpus),
        };
        tracing::info!(
            idle_watts = model.idle_watts,
            max_watts = model.max_watts,
            "Estimated power source started; every figure is an estimate."
        );
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last: Option<MonoNanos> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let sample = if let Some(reader) = proc.take() {
                let (reader, result) = tokio::task::spawn_blocking(move || {
                    let mut reader = reader;
                    let now = clock.now();
                    let window = reader.read(now);
                    (reader, window.map(|w| (now, w)))
                })
                .await
                .map_err(|join| HostCpuError::Read {
                    path: "<proc poll task>".into(),
                    source: std::io::Error::other(join),
                })?;
                proc = Some(reader);
                let (now, window) = result?;
                window.map(|w| {
                    let u = w.host.utilisation().unwrap_or(0.0);
                    sample(&model, now, w.window_ns, u, Some(w.host), Some(w.vm))
                })
            } else {
                let now = clock.now();
                let window_ns = last.map(|l| now.since(l));
                last = Some(now);
                match (window_ns, load_average().await) {
                    (Some(window_ns), Some(load)) => Some(sample(
                        &model,
                        now,
                        window_ns,
                        load / f64::from(cpus.max(1)),
                        None,
                        None,
                    )),
                    _ => None,
                }
            };
            if let Some(sample) = sample
                && out.sample_or_cancel(sample, &cancel).await.is_err()
            {
                return Ok(());
            }
        }
    }
}

fn sample(
    model: &EstimateModel,
    end: MonoNanos,
    window_ns: u64,
    utilisation: f64,
    host_cpu: Option<super::HostCpu>,
    vm_share: Option<super::VmShare>,
) -> PowerSample {
    let energy = model.energy(utilisation, window_ns);
    PowerSample {
        end,
        window_ns,
        energy,
        components: vec![(COMPONENT.to_owned(), energy)],
        vm_share,
        host_cpu,
        provenance: Provenance::Estimated,
    }
}

/// 1-minute load average from `sysctl -n vm.loadavg` (`{ 1.23 1.10 0.98 }`).
async fn load_average() -> Option<f64> {
    let output = tokio::process::Command::new("sysctl")
        .args(["-n", "vm.loadavg"])
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    parse_loadavg(&String::from_utf8_lossy(&output.stdout))
}

/// Parses `{ 1.23 1.10 0.98 }` (macOS) or `1.23 1.10 0.98 …` (Linux `/proc/loadavg`).
#[must_use]
pub fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_ascii_whitespace()
        .find(|t| *t != "{")
        .and_then(|t| t.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_is_linear_between_idle_and_max() {
        let model = EstimateModel {
            idle_watts: 10.0,
            max_watts: 30.0,
        };
        assert_eq!(model.power_mw(0.0), 10_000.0);
        assert_eq!(model.power_mw(0.5), 20_000.0);
        assert_eq!(model.power_mw(2.0), 30_000.0, "clamped at full load");
        // 20 W for 1.5 s = 30 J.
        assert_eq!(model.energy(0.5, 1_500_000_000), MicroJoules(30_000_000));
    }

    #[test]
    fn default_model_scales_with_cpus() {
        let model = EstimateModel::per_cpu_default(8);
        assert!((model.idle_watts - 5.92).abs() < 1e-9);
        assert!((model.max_watts - 28.0).abs() < 1e-9);
    }

    #[test]
    fn loadavg_parses_both_forms() {
        assert_eq!(parse_loadavg("{ 1.25 1.10 0.98 }\n"), Some(1.25));
        assert_eq!(parse_loadavg("0.50 0.40 0.30 1/200 999\n"), Some(0.5));
        assert_eq!(parse_loadavg(""), None);
    }
}
