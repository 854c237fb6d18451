//! The HTML report opened in a real headless Chromium (Debian's `chromium`, installed by
//! scripts/setup-test-env.sh): what rendered is asserted, console errors are caught, and a
//! screenshot is kept under `target/test-artifacts/` for people to look at.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use host_bridge::report::html;
use host_bridge::report::model::GridIntensity;

use crate::report_support::mac_report;

/// Bounded run time of one browser invocation (a healthy one takes ~3 s).
const BROWSER_TIMEOUT_S: &str = "120";

fn chromium(profile: &Path, args: &[&str]) -> Output {
    testkit::require_program("chromium", &["--version"], "Debian package chromium");
    let out = Command::new("timeout")
        .arg(BROWSER_TIMEOUT_S)
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Console messages Chromium logged while loading a page (`INFO:CONSOLE` lines), excluding
/// none: the report has no scripts, so any message at all is a problem.
fn console_messages(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .map(str::to_string)
        .collect()
}

/// `target/test-artifacts/` (created): where tests keep what people should look at.
pub fn artifact_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A page that loads the report in an iframe and writes, into `#result`, the rendered bounding
/// box of every chart series and the text of the totals, so the test reads what the browser
/// laid out rather than the HTML we wrote.
const HARNESS: &str = r#"<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="f" src="report.html" width="1280" height="900"></iframe>
<script>
document.getElementById('f').addEventListener('load', function () {
  var out = {series: {}, totals: {}, rows: []};
  try {
    var doc = this.contentDocument;
    doc.querySelectorAll('path.series').forEach(function (p) {
      var b = p.getBBox();
      var key = p.getAttribute('data-container') || ('bucket:' + p.getAttribute('data-bucket'));
      out.series[key] = [b.width, b.height];
    });
    ['total-host', 'total-vm', 'total-containers', 'total-carbon'].forEach(function (id) {
      var el = doc.getElementById(id);
      out.totals[id] = el ? el.innerText : null;
    });
    doc.querySelectorAll('#summary tbody tr').forEach(function (tr) {
      out.rows.push(tr.innerText);
    });
  } catch (e) { out.error = String(e); }
  document.getElementById('result').textContent = JSON.stringify(out);
});
</script></body></html>"#;

#[test]
#[ignore = "needs Debian's chromium (scripts/setup-test-env.sh)"]
fn html_report_renders_in_chromium_with_every_container_and_the_totals() {
    let mut report = mac_report();
    report.apply_grid_intensity(GridIntensity::new(400.0));
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, html::to_html(&report)).unwrap();
    std::fs::write(dir.path().join("harness.html"), HARNESS).unwrap();
    let profile = dir.path().join("profile");
    let url = |name: &str| format!("file://{}", dir.path().join(name).display());

    // 1. The report alone: no console message of any kind.
    let direct = chromium(&profile, &["--dump-dom", &url("report.html")]);
    let messages = console_messages(&direct.stderr);
    assert!(messages.is_empty(), "console output: {messages:#?}");
    let dom = String::from_utf8_lossy(&direct.stdout);
    for c in &report.containers {
        assert!(
            dom.contains(&format!("data-container=\"{}\"", c.display_name())),
            "{} missing from the DOM",
            c.display_name()
        );
    }

    // 2. What was laid out: every series has area, the totals show the figures.
    let measured = chromium(
        &profile,
        &[
            "--allow-file-access-from-files",
            "--virtual-time-budget=5000",
            "--dump-dom",
            &url("harness.html"),
        ],
    );
    let dom = String::from_utf8_lossy(&measured.stdout);
    let json = dom
        .split("<pre id=\"result\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .expect("harness result present")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    let result: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("harness said {json}: {e}"));
    assert!(result.get("error").is_none(), "{result}");
    for c in &report.containers {
        let bbox = &result["series"][c.display_name()];
        let (w, h) = (bbox[0].as_f64().unwrap(), bbox[1].as_f64().unwrap());
        assert!(
            w > 500.0 && h > 1.0,
            "{} drew a {w}×{h} area",
            c.display_name()
        );
    }
    assert!(result["series"]["bucket:idle"][1].as_f64().unwrap() > 1.0);
    let host_j = format!(
        "{}.{:03} J",
        report.totals.host.energy_uj / 1_000_000,
        (report.totals.host.energy_uj % 1_000_000) / 1_000
    );
    let host_text = result["totals"]["total-host"].as_str().unwrap();
    assert!(host_text.contains(&host_j), "{host_text} lacks {host_j}");
    assert!(
        result["totals"]["total-carbon"]
            .as_str()
            .unwrap()
            .contains("400 g/kWh")
    );
    let rows = result["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        report.containers.len() + report.totals.buckets.len() + 1
    );

    // 3. A screenshot for people, kept as an artefact.
    let shot = artifact_dir().join("report.png");
    if shot.exists() {
        std::fs::remove_file(&shot).unwrap();
    }
    chromium(
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1400",
            &url("report.html"),
        ],
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert!(
        png.len() > 20_000,
        "suspiciously small screenshot: {} B",
        png.len()
    );
    println!("screenshot: {}", shot.display());
}

#[test]
#[ignore = "needs Debian's chromium (scripts/setup-test-env.sh)"]
fn html_console_detector_catches_a_script_error() {
    // Proves the console check above can fail: a page with an error is caught.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.html"),
        "<!DOCTYPE html><html><body><script>notDefined();</script></body></html>",
    )
    .unwrap();
    let out = chromium(
        &dir.path().join("profile"),
        &[
            "--dump-dom",
            &format!("file://{}", dir.path().join("bad.html").display()),
        ],
    );
    let messages = console_messages(&out.stderr);
    assert!(
        messages.iter().any(|m| m.contains("notDefined")),
        "{messages:#?}"
    );
}
