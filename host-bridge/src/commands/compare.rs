//! `compare A B`: an attributed run (Mac or VM) against a Linux-native run of the same
//! workload. A and B are report JSON files or recordings (attributed with the given settings).

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;

use super::{is_recording, report_of_recording};
use crate::cli::{AttributionArgs, CompareArgs};
use crate::report::Report;
use crate::report::compare::compare;
use crate::report::json;

fn load(path: &Path, args: &AttributionArgs) -> anyhow::Result<Report> {
    if is_recording(path)? {
        return report_of_recording(path, args);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    json::from_json(&text).with_context(|| format!("cannot use {}", path.display()))
}

/// Run `compare`; returns whether the threshold held.
///
/// # Errors
/// Unreadable inputs, an invalid threshold, or an unwritable `--json` file.
pub fn run(args: &CompareArgs, out: &mut dyn Write) -> anyhow::Result<bool> {
    if let Some(t) = args.max_share_diff {
        anyhow::ensure!(
            t.is_finite() && (0.0..=1.0).contains(&t),
            "--max-share-diff is a fraction between 0 and 1, got {t}"
        );
    }
    let a = load(&args.a, &args.attribution)?;
    let b = load(&args.b, &args.attribution)?;
    let cmp = compare(
        &args.a.display().to_string(),
        &a,
        &args.b.display().to_string(),
        &b,
        args.max_share_diff,
    );
    out.write_all(cmp.to_text().as_bytes())?;
    if let Some(path) = &args.json {
        let mut text = serde_json::to_string_pretty(&cmp).expect("a Comparison serializes");
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(cmp.passed)
}
