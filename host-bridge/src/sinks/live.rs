//! The live view: watts and joules per container on the terminal, refreshed every second, like
//! `docker stats`. It draws the latest attribution view ([`LedgerView`], the same view
//! `/metrics` renders), so what it shows is what the report of the recording will say.
//!
//! ```text
//! power source: estimate (estimated) · host 8.212 W · 412.907 J · 41 windows
//! CONTAINER                       POWER W    ENERGY J
//! web                               4.832     217.469
//! db                                2.008      90.381
//! (vm-system)                           -       3.457
//! (host-other)                          -       0.000
//! (idle)                                -     101.600
//! ```
//!
//! Power is the container's mean over the last attribution window; energy is cumulative since
//! the recording started. Bucket rows carry energy only.

use std::io::{self, IsTerminal as _, Write};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::pipeline::LedgerView;

/// Redraw period.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Whether a live view can be drawn: stdout is a terminal.
#[must_use]
pub fn stdout_is_terminal() -> bool {
    io::stdout().is_terminal()
}

/// One line on the power source and the host totals; says "estimated" when no sensor is
/// behind the figures.
#[must_use]
pub fn header(view: &LedgerView) -> String {
    let marker = view.provenance.as_str();
    let watts = view
        .host_power_w
        .map_or_else(|| "-".to_string(), |w| format!("{w:.3}"));
    format!(
        "power source: {} ({marker}) · host {watts} W · {:.3} J · {} windows{}\n",
        view.source_kind.map_or("none", |k| k.as_str()),
        protocol::MicroJoules(view.host_energy_uj).as_joules_f64(),
        view.windows,
        if view.degraded_windows > 0 {
            format!(" ({} degraded)", view.degraded_windows)
        } else {
            String::new()
        }
    )
}

/// A `docker stats`-like table of the latest view: power over the last window and energy
/// since the recording started, per container (most energy first), then the buckets.
#[must_use]
pub fn energy_table(view: &LedgerView) -> String {
    let mut rows: Vec<(String, Option<f64>, u64)> = view
        .containers
        .iter()
        .map(|c| {
            let l = &c.labels;
            let name = if !l.compose_service.is_empty() {
                l.compose_service.clone()
            } else if !l.container_name.is_empty() {
                l.container_name.clone()
            } else {
                l.container_id.chars().take(12).collect()
            };
            (name, c.power_w, c.energy_uj)
        })
        .collect();
    rows.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    for (bucket, uj) in &view.buckets {
        rows.push((format!("({})", bucket.as_str()), None, *uj));
    }
    let mut out = format!("{:<28} {:>10} {:>11}\n", "CONTAINER", "POWER W", "ENERGY J");
    for (name, watts, uj) in rows {
        let watts = watts.map_or_else(|| "-".to_string(), |w| format!("{w:.3}"));
        out.push_str(&format!(
            "{:<28} {:>10} {:>11.3}\n",
            name.chars().take(28).collect::<String>(),
            watts,
            protocol::MicroJoules(uj).as_joules_f64()
        ));
    }
    out
}

/// The whole frame: [`header`] then [`energy_table`].
#[must_use]
pub fn frame(view: &LedgerView) -> String {
    let mut out = header(view);
    out.push_str(&energy_table(view));
    out
}

/// Draw the latest view on `out` every [`REFRESH`] until `cancel` fires or the view's sender
/// is gone (the attribution stopped). A write error (closed terminal) stops the view only.
pub async fn run(
    view: watch::Receiver<Arc<LedgerView>>,
    mut out: Box<dyn Write + Send>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {
                let latest = Arc::clone(&view.borrow());
                // Clear the screen and home the cursor (ANSI), then draw.
                let text = format!("\x1b[2J\x1b[H{}", frame(&latest));
                if out.write_all(text.as_bytes()).is_err() || out.flush().is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{PowerSourceKind, Provenance};
    use crate::pipeline::{BucketKind, ContainerLabels, ContainerView, IdlePolicy};

    fn view(provenance: Provenance) -> LedgerView {
        let mut view = LedgerView::empty(
            Some(PowerSourceKind::Estimate),
            provenance,
            IdlePolicy::Exclude,
        );
        for (service, uj, w) in [("db", 90_381_000, 2.008), ("web", 217_469_206, 4.832)] {
            view.containers.push(ContainerView {
                labels: ContainerLabels {
                    compose_service: service.into(),
                    ..ContainerLabels::default()
                },
                energy_uj: uj,
                cpu_us: 0,
                power_w: Some(w),
            });
        }
        view.buckets.push((BucketKind::Idle, 101_600_000));
        view.host_energy_uj = 409_450_206;
        view.host_power_w = Some(8.5);
        view.windows = 41;
        view
    }

    #[test]
    fn energy_table_lists_containers_by_energy_then_buckets() {
        let table = energy_table(&view(Provenance::Measured));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[1].starts_with("web") && lines[1].contains("4.832"),
            "{table}"
        );
        assert!(lines[1].ends_with("217.469"), "{table}");
        assert!(lines[2].starts_with("db"), "{table}");
        assert!(
            lines[3].starts_with("(idle)") && lines[3].contains(" - "),
            "{table}"
        );
    }

    #[test]
    fn header_names_the_source_and_marks_estimates() {
        let estimated = header(&view(Provenance::Estimated));
        assert_eq!(
            estimated,
            "power source: estimate (estimated) · host 8.500 W · 409.450 J · 41 windows\n"
        );
        let mut measured = view(Provenance::Measured);
        measured.degraded_windows = 2;
        assert!(header(&measured).contains("(measured)"));
        assert!(header(&measured).ends_with("41 windows (2 degraded)\n"));
        assert_eq!(frame(&measured).lines().count(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn run_draws_the_latest_view_until_cancelled() {
        #[derive(Clone, Default)]
        struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (tx, rx) = watch::channel(Arc::new(view(Provenance::Estimated)));
        let out = Shared::default();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(rx, Box::new(out.clone()), cancel.clone()));
        tokio::time::sleep(REFRESH / 2).await;
        let mut next = view(Provenance::Estimated);
        next.windows = 42;
        tx.send(Arc::new(next)).unwrap();
        tokio::time::sleep(REFRESH).await;
        cancel.cancel();
        task.await.unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let frames: Vec<&str> = text
            .split("\x1b[2J\x1b[H")
            .filter(|f| !f.is_empty())
            .collect();
        assert_eq!(frames.len(), 2, "{text}");
        assert!(frames[0].contains("41 windows") && frames[1].contains("42 windows"));
    }
}
