//! Self-contained HTML rendering of a [`Report`].
//!
//! One file, no scripts, no external assets (fonts, styles, images): inline CSS and an inline
//! SVG chart drawn here in Rust, so the page opens from a CI artefact, an e-mail or an air-gapped
//! machine exactly as it was generated. The page shows:
//! - the power source, its provenance, the idle policy and the window;
//! - a stacked power-over-time chart, one `<path data-container="…">` per container (then the
//!   non-container buckets in greys), drawn as steps because a window's power is its average;
//! - a summary table with every energy figure's `[low, high]` bounds, shares, CPU time and, when
//!   a grid intensity was given, grams of CO2e;
//! - the quality flags. When the power source is a model, every energy figure is marked
//!   "estimated".

use protocol::MicroJoules;

use super::model::{Bounded, CarbonGrams, Report, SeriesPoint};
use crate::pipeline::BucketKind;

/// Chart size in SVG user units.
const CHART_W: f64 = 960.0;
const CHART_H: f64 = 360.0;
/// Margins around the plot area (left holds the y labels).
const M_LEFT: f64 = 64.0;
const M_RIGHT: f64 = 16.0;
const M_TOP: f64 = 16.0;
const M_BOTTOM: f64 = 40.0;
/// Above this many windows, adjacent windows are merged so the SVG stays small.
const MAX_CHART_COLUMNS: usize = 600;

/// Container colours (colour-blind-safe Okabe–Ito order, then Tableau extras).
const PALETTE: [&str; 12] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#4E79A7",
    "#B07AA1", "#76B7B2", "#EDC948", "#9C755F",
];
/// Marker of degraded windows.
const DEGRADED: &str = "#D55E00";
/// BucketKind colours (greys), in [`BucketKind::ALL`] order.
const BUCKET_GREYS: [&str; 5] = ["#8c8c8c", "#a6a6a6", "#bfbfbf", "#d9d9d9", "#ececec"];

const STYLE: &str = r#"
:root { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; color: #1d1d1f; }
body { margin: 24px auto; max-width: 1040px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; }
.sub { color: #555; font-size: 13px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin-top: 16px; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: 10px 14px; min-width: 150px; }
.card .label { font-size: 12px; color: #666; }
.card .value { font-size: 20px; font-weight: 600; }
.card .bounds { font-size: 11px; color: #666; }
.est { display: inline-block; font-size: 10px; font-weight: 600; color: #8a4b00;
       background: #fff1d6; border: 1px solid #f0c36d; border-radius: 4px; padding: 0 4px;
       margin-left: 4px; vertical-align: middle; }
.meas { display: inline-block; font-size: 10px; font-weight: 600; color: #0b5d1e;
        background: #e3f6e8; border: 1px solid #8fd19e; border-radius: 4px; padding: 0 4px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 5px 8px; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.total td { font-weight: 600; border-top: 2px solid #999; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
          margin-right: 6px; vertical-align: middle; }
svg text { font-size: 11px; fill: #444; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 12px; margin: 6px 0; }
dl.quality { display: grid; grid-template-columns: max-content auto; gap: 4px 16px; font-size: 13px; }
dl.quality dt { color: #555; }
dl.quality dd { margin: 0; }
footer { margin-top: 32px; font-size: 11px; color: #888; }
"#;

/// Escape text for HTML element content and attribute values.
#[must_use]
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

/// Joules with three decimals, for display.
fn joules(uj: u64) -> String {
    let whole = uj / 1_000_000;
    let milli = (uj % 1_000_000) / 1_000;
    format!("{whole}.{milli:03}")
}

fn grams(c: CarbonGrams) -> String {
    format!("{:.4}", c.grams)
}

/// The CO2e cell of a table row: empty when the report has no carbon column, blank when this
/// row has no figure.
fn carbon_cell(carbon: bool, g: Option<CarbonGrams>) -> String {
    if carbon {
        format!(
            r#"<td class="num">{}</td>"#,
            g.map(grams).unwrap_or_default()
        )
    } else {
        String::new()
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` from ns since the Unix epoch.
fn utc(unix_ns: u64) -> String {
    crate::clock::utc(protocol::UnixNanos(unix_ns), "%Y-%m-%d %H:%M:%S UTC")
}

/// A "nice" axis step (1, 2 or 5 × 10^k) giving about `target` ticks over `max`.
fn nice_step(max: f64, target: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / target;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// One chart column: a time span and the energy of each layer in it.
struct Column {
    t0: f64,
    t1: f64,
    layers_uj: Vec<u64>,
    degraded: bool,
}

/// A stacked layer: containers first (largest energy at the bottom), then buckets.
struct Layer {
    label: String,
    key: String,
    colour: &'static str,
    is_bucket: bool,
}

fn layers(report: &Report) -> Vec<Layer> {
    let mut out: Vec<Layer> = report
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| Layer {
            label: c.display_name().to_string(),
            key: c.key.clone(),
            colour: PALETTE[i % PALETTE.len()],
            is_bucket: false,
        })
        .collect();
    for (i, bucket) in BucketKind::ALL.iter().enumerate() {
        let present = report
            .series
            .iter()
            .any(|p| p.buckets_uj.get(bucket).copied().unwrap_or(0) > 0);
        if present {
            out.push(Layer {
                label: bucket.as_str().to_string(),
                key: bucket.as_str().to_string(),
                colour: BUCKET_GREYS[i],
                is_bucket: true,
            });
        }
    }
    out
}

fn layer_uj(point: &SeriesPoint, layer: &Layer) -> u64 {
    if layer.is_bucket {
        BucketKind::ALL
            .iter()
            .find(|b| b.as_str() == layer.key)
            .and_then(|b| point.buckets_uj.get(b))
            .copied()
            .unwrap_or(0)
    } else {
        point.containers_uj.get(&layer.key).copied().unwrap_or(0)
    }
}

fn columns(report: &Report, layers: &[Layer]) -> Vec<Column> {
    let group = report.series.len().div_ceil(MAX_CHART_COLUMNS).max(1);
    report
        .series
        .chunks(group)
        .map(|chunk| {
            let first = chunk.first().expect("chunks are never empty");
            let last = chunk.last().expect("chunks are never empty");
            Column {
                t0: first.t_start_s,
                t1: last.t_end_s,
                layers_uj: layers
                    .iter()
                    .map(|l| chunk.iter().map(|p| layer_uj(p, l)).sum())
                    .collect(),
                degraded: chunk.iter().any(|p| p.degraded),
            }
        })
        .collect()
}

fn chart(report: &Report, out: &mut String) {
    if report.series.is_empty() {
        out.push_str(
            r#"<p id="power-chart" class="sub">No attributed windows: the recording holds no host power readings (or no guest samples) yet.</p>"#,
        );
        return;
    }
    let layers = layers(report);
    let cols = columns(report, &layers);
    let t_min = cols.first().map_or(0.0, |c| c.t0);
    let t_max = cols.last().map_or(1.0, |c| c.t1).max(t_min + 1e-9);
    // Power of each layer in each column, then stacked.
    let power: Vec<Vec<f64>> = cols
        .iter()
        .map(|c| {
            c.layers_uj
                .iter()
                .map(|uj| MicroJoules(*uj).average_watts(c.t1 - c.t0))
                .collect()
        })
        .collect();
    let stacked_max = power
        .iter()
        .map(|p| p.iter().sum::<f64>())
        .fold(0.0_f64, f64::max);
    let step = nice_step(stacked_max, 5.0);
    let y_max = if stacked_max > 0.0 {
        (stacked_max / step).ceil() * step
    } else {
        1.0
    };
    let plot_w = CHART_W - M_LEFT - M_RIGHT;
    let plot_h = CHART_H - M_TOP - M_BOTTOM;
    let x = |t: f64| M_LEFT + (t - t_min) / (t_max - t_min) * plot_w;
    let y = |w: f64| M_TOP + plot_h - w / y_max * plot_h;

    out.push_str(&format!(r#"<svg id="power-chart" xmlns="http://www.w3.org/2000/svg" width="{CHART_W}" height="{CHART_H}" viewBox="0 0 {CHART_W} {CHART_H}" role="img" aria-label="Stacked power over time per container">"#));
    // Y grid and labels.
    let mut tick = 0.0;
    while tick <= y_max + step * 1e-6 {
        let yy = y(tick);
        out.push_str(&format!(r##"<line x1="{M_LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{} W</text>"##,
            M_LEFT + plot_w,
            M_LEFT - 6.0,
            yy + 4.0,
            trim_float(tick)));
        tick += step;
    }
    // X labels.
    let x_step = nice_step(t_max - t_min, 8.0);
    let mut t = (t_min / x_step).ceil() * x_step;
    while t <= t_max + x_step * 1e-6 {
        let xx = x(t);
        out.push_str(&format!(r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{:.1}" y2="{:.1}" stroke="#999"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{} s</text>"##,
            M_TOP + plot_h,
            M_TOP + plot_h + 4.0,
            M_TOP + plot_h + 18.0,
            trim_float(t)));
        t += x_step;
    }
    // Stacked step areas, bottom layer first.
    let mut base = vec![0.0_f64; cols.len()];
    for (li, layer) in layers.iter().enumerate() {
        let top: Vec<f64> = base.iter().zip(&power).map(|(b, p)| b + p[li]).collect();
        let mut d = String::new();
        // One horizontal step: `cmd` to (xa, v), then a line to (xb, v).
        let mut step = |cmd: char, xa: f64, xb: f64, v: f64| {
            d.push_str(&format!("{cmd}{:.2},{:.2}L{:.2},{:.2}", xa, y(v), xb, y(v)));
        };
        // Along the top of the layer, left to right, then back along its base.
        for (ci, c) in cols.iter().enumerate() {
            step(if ci == 0 { 'M' } else { 'L' }, x(c.t0), x(c.t1), top[ci]);
        }
        for (ci, c) in cols.iter().enumerate().rev() {
            step('L', x(c.t1), x(c.t0), base[ci]);
        }
        if !cols.is_empty() {
            d.push('Z');
        }
        let attr = if layer.is_bucket {
            "data-bucket"
        } else {
            "data-container"
        };
        let total_uj: u64 = cols.iter().map(|c| c.layers_uj[li]).sum();
        out.push_str(&format!(r#"<path class="series" {attr}="{}" data-key="{}" fill="{}" fill-opacity="0.85" stroke="{}" stroke-width="0.5" d="{d}"><title>{}: {} J</title></path>"#,
            escape(&layer.label),
            escape(&layer.key),
            layer.colour,
            layer.colour,
            escape(&layer.label),
            joules(total_uj)));
        base = top;
    }
    // Degraded windows: a band along the top, so nobody reads them as clean measurements.
    for c in cols.iter().filter(|c| c.degraded) {
        out.push_str(&format!(
            r#"<rect class="degraded" x="{:.2}" y="{M_TOP}" width="{:.2}" height="5" fill="{DEGRADED}"><title>degraded window {}–{} s</title></rect>"#,
            x(c.t0),
            (x(c.t1) - x(c.t0)).max(1.0),
            trim_float(c.t0),
            trim_float(c.t1)
        ));
    }
    // Axes.
    out.push_str(&format!(r##"<line x1="{M_LEFT}" x2="{M_LEFT}" y1="{M_TOP}" y2="{:.1}" stroke="#333"/><line x1="{M_LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#333"/></svg>"##,
        M_TOP + plot_h,
        M_LEFT + plot_w,
        M_TOP + plot_h,
        M_TOP + plot_h));
    out.push_str(r#"<div class="legend">"#);
    if cols.iter().any(|c| c.degraded) {
        out.push_str(&format!(
            r#"<span><span class="swatch" style="background:{DEGRADED}"></span>degraded window (top band)</span>"#
        ));
    }
    for layer in &layers {
        out.push_str(&format!(
            r#"<span><span class="swatch" style="background:{}"></span>{}</span>"#,
            layer.colour,
            escape(&layer.label)
        ));
    }
    out.push_str("</div>");
}

/// `2`, `2.5`, `0.25` (no trailing zeros) for axis labels.
fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

fn est_mark(estimated: bool) -> &'static str {
    if estimated {
        r#"<span class="est">estimated</span>"#
    } else {
        ""
    }
}

fn energy_cells(e: Bounded, estimated: bool) -> String {
    format!(
        r#"<td class="num">{}{}</td><td class="num">[{}, {}]</td>"#,
        joules(e.energy_uj),
        est_mark(estimated),
        joules(e.low_uj),
        joules(e.high_uj)
    )
}

fn card(out: &mut String, id: &str, label: &str, e: Bounded, estimated: bool) {
    out.push_str(&format!(r#"<div class="card" id="{id}"><div class="label">{}</div><div class="value">{} J{}</div><div class="bounds">[{}, {}] J</div></div>"#,
        escape(label),
        joules(e.energy_uj),
        est_mark(estimated),
        joules(e.low_uj),
        joules(e.high_uj)));
}

fn opt(s: Option<&str>) -> String {
    escape(s.unwrap_or("–"))
}

fn summary_table(report: &Report, out: &mut String) {
    let est = report.is_estimated();
    let carbon = report.grid_intensity_g_per_kwh.is_some();
    out.push_str(
        r#"<table id="summary"><thead><tr><th>Container</th><th>Compose project</th><th>Image</th><th>VM</th><th class="num">Energy (J)</th><th class="num">Bounds (J)</th><th class="num">Share</th><th class="num">CPU (s)</th><th class="num">Avg power (W)</th>"#,
    );
    if carbon {
        out.push_str(r#"<th class="num">CO2e (g)</th>"#);
    }
    out.push_str("</tr></thead><tbody>");
    for (i, c) in report.containers.iter().enumerate() {
        out.push_str(&format!(r#"<tr data-container="{}"><td><span class="swatch" style="background:{}"></span>{}<div class="sub">{}</div></td><td>{}</td><td>{}</td><td>{}</td>{}<td class="num">{:.1} %</td><td class="num">{:.3}</td><td class="num">{:.3}</td>"#,
            escape(c.display_name()),
            PALETTE[i % PALETTE.len()],
            escape(c.display_name()),
            escape(&c.name),
            opt(c.compose_project.as_deref()),
            escape(&c.image),
            escape(&c.vm),
            energy_cells(c.energy, est),
            c.share * 100.0,
            protocol::CpuMicros(c.cpu_us).as_secs_f64(),
            MicroJoules(c.energy.energy_uj).average_watts(report.duration_s)));
        out.push_str(&carbon_cell(carbon, c.carbon_g));
        out.push_str("</tr>");
    }
    for b in &report.totals.buckets {
        out.push_str(&format!(r#"<tr data-bucket="{0}"><td><em>{0}</em></td><td></td><td></td><td></td>{1}<td></td><td></td><td class="num">{2:.3}</td>"#,
            b.bucket.as_str(),
            energy_cells(b.energy, est),
            MicroJoules(b.energy.energy_uj).average_watts(report.duration_s)));
        out.push_str(&carbon_cell(carbon, b.carbon_g));
        out.push_str("</tr>");
    }
    out.push_str(&format!(r#"<tr class="total" data-total="host"><td>Host total</td><td></td><td></td><td></td>{}<td></td><td></td><td class="num">{:.3}</td>"#,
        energy_cells(report.totals.host, est),
        MicroJoules(report.totals.host.energy_uj).average_watts(report.duration_s)));
    out.push_str(&carbon_cell(carbon, report.totals.carbon_g));
    out.push_str("</tr></tbody></table>");
}

#[allow(clippy::cast_precision_loss)] // display figure
fn ns_to_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn quality(report: &Report, out: &mut String) {
    let q = &report.quality;
    out.push_str(&format!(r#"<dl class="quality" id="quality"><dt>Coverage</dt><dd>{:.1} %</dd><dt>Windows</dt><dd>{} ({} degraded)</dd><dt>Guest sequence gaps</dt><dd>{}</dd><dt>Clock offset error</dt><dd>{:.3} ms</dd><dt>Figures</dt><dd>{}</dd></dl>"#,
        q.coverage * 100.0,
        q.windows,
        q.degraded_windows,
        q.sequence_gaps,
        ns_to_ms(q.offset_error_ns),
        if report.is_estimated() {
            r#"<span class="est">estimated</span> no energy sensor: a utilisation model"#
        } else {
            r#"<span class="meas">measured</span>"#
        }));
    if !q.notes.is_empty() {
        out.push_str("<ul>");
        for note in &q.notes {
            out.push_str(&format!("<li>{}</li>", escape(note)));
        }
        out.push_str("</ul>");
    }
}

/// The whole page.
#[must_use]
pub fn to_html(report: &Report) -> String {
    let est = report.is_estimated();
    let mut out = String::with_capacity(64 * 1024);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str(r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#);
    let title = report
        .recording
        .path
        .as_deref()
        .map_or_else(|| "live run".to_string(), str::to_string);
    out.push_str(&format!(
        "<title>joulebridge report – {}</title><style>{STYLE}</style></head><body>",
        escape(&title)
    ));
    out.push_str(&format!(r#"<h1>Energy per container</h1><div class="sub" id="meta">{} · started {} · {:.1} s · power source <strong>{}</strong> {} ({}) · idle policy <strong>{}</strong> · window {} s · VM share by {}</div>"#,
        escape(&title),
        utc(report.start_unix_ns),
        report.duration_s,
        escape(&report.power_source.kind),
        if est {
            r#"<span class="est">estimated</span>"#
        } else {
            r#"<span class="meas">measured</span>"#
        },
        escape(&report.power_source.reason),
        report.policy,
        trim_float(report.window_s),
        escape(&report.vm_share_basis)));
    out.push_str(r#"<div class="cards">"#);
    card(
        &mut out,
        "total-host",
        "Host energy",
        report.totals.host,
        est,
    );
    card(&mut out, "total-vm", "VM energy", report.totals.vm, est);
    card(
        &mut out,
        "total-containers",
        "Containers",
        report.totals.containers,
        est,
    );
    if let (Some(g), Some(c)) = (report.grid_intensity_g_per_kwh, report.totals.carbon_g) {
        out.push_str(&format!(r#"<div class="card" id="total-carbon"><div class="label">Host CO2e at {} g/kWh</div><div class="value">{} g</div><div class="bounds">[{:.4}, {:.4}] g</div></div>"#,
            trim_float(g),
            grams(c),
            c.low,
            c.high));
    }
    out.push_str("</div><h2>Power over time</h2>");
    chart(report, &mut out);
    out.push_str("<h2>Summary</h2>");
    summary_table(report, &mut out);
    out.push_str("<h2>Quality</h2>");
    quality(report, &mut out);
    out.push_str(&format!(
        "<footer>{} · report schema {} · energy in joules with [low, high] bounds; \
         shares are of the energy attributed to containers</footer></body></html>\n",
        escape(&report.generated_by),
        report.schema_version
    ));
    // One block per line, so the page diffs line by line (golden files, reviews). User text is
    // escaped, so these closing tags can only be ours.
    for tag in [
        "</style>", "</h2>", "</div>", "</path>", "</svg>", "</tr>", "</table>", "</dl>", "</li>",
    ] {
        out = out.replace(tag, &format!("{tag}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_characters() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // 2024-02-29 12:34:56 UTC = 1709210096 s.
        assert_eq!(utc(1_709_210_096_000_000_000), "2024-02-29 12:34:56 UTC");
    }

    #[test]
    fn joules_keep_three_decimals() {
        assert_eq!(joules(1_234_567), "1.234");
        assert_eq!(joules(5_000), "0.005");
    }

    #[test]
    fn nice_step_is_one_two_or_five() {
        assert!((nice_step(9.0, 5.0) - 2.0).abs() < 1e-12);
        assert!((nice_step(45.0, 5.0) - 10.0).abs() < 1e-12);
        assert!((nice_step(0.3, 5.0) - 0.1).abs() < 1e-12);
    }
}
