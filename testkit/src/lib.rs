//! What joulebridge's environment-bound tests share.
//!
//! A test that needs something outside the crate (root, real cgroups, the Docker engine, a
//! browser, the QEMU rig, the captures in `../shared`) is marked
//! `#[ignore = "needs …"]`, so a plain `cargo test` reports it as *ignored* instead of hiding
//! it. `scripts/test.sh` (what CI runs) passes `--include-ignored`: there every such test runs,
//! and when its environment is missing it fails with one line that starts with `missing:` and
//! names the piece and how to get it. No test returns early and counts as passed.
//!
//! The set-up itself (packages, images, the VM rig) is `scripts/setup-test-env.sh`; nothing here
//! installs or builds anything.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Fails the running test: `what` is missing from this machine.
///
/// # Panics
/// Always; that is its purpose.
#[track_caller]
pub fn missing(what: impl Display) -> ! {
    panic!("missing: {what}")
}

/// Where the set-up script provides a missing piece, the failure says so.
const SETUP_HINT: &str = "scripts/setup-test-env.sh provides it";

/// Fails the running test unless `present`.
#[track_caller]
pub fn require(present: bool, what: impl Display) {
    if !present {
        missing(what);
    }
}

/// Fails unless the test runs as root (creating cgroups, reading any file).
#[track_caller]
pub fn require_root(why: &str) {
    require(is_root(), format_args!("root ({why})"));
}

/// The workspace root (the directory holding `Cargo.lock`).
#[must_use]
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// A path under `../shared` (beside the checkout, never inside it), which must exist.
#[track_caller]
#[must_use]
pub fn shared(rel: &str) -> PathBuf {
    let path = workspace_root().join("../shared").join(rel);
    require(
        path.exists(),
        format_args!(
            "../shared/{rel} beside the checkout (looked at {}; it is not part of the repository)",
            path.display()
        ),
    );
    path
}

/// True when `program` runs with `args` and exits 0 (stdout and stderr discarded).
#[must_use]
pub fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fails unless `program` is on `PATH` and answers `args` (e.g. `--version`) with success.
#[track_caller]
pub fn require_program(program: &str, args: &[&str], package: &str) {
    require(
        runs(program, args),
        format_args!("`{program}` on PATH ({package}; {SETUP_HINT})"),
    );
}

/// Fails unless the Docker engine answers and holds `image` (built by the set-up script; there
/// is no registry to pull from).
#[track_caller]
pub fn require_docker_image(image: &str) {
    require(
        runs("docker", &["version"]),
        "a running Docker engine (`docker version` failed)",
    );
    require(
        runs("docker", &["image", "inspect", image]),
        format_args!("Docker image {image} ({SETUP_HINT})"),
    );
}

/// Fails unless Python can import `module`.
#[track_caller]
pub fn require_python_module(module: &str, package: &str) {
    require(
        runs("python3", &["-c", &format!("import {module}")]),
        format_args!("the Python module {module} (PyPI package {package}; {SETUP_HINT})"),
    );
}

/// Marks the child process started by [`ran_without_file_permission_override`].
const NO_DAC_ENV: &str = "JOULEBRIDGE_TEST_NO_DAC_OVERRIDE";

/// For tests of permission errors, which root never meets (it reads and connects to anything).
///
/// As root, re-runs the calling test (`test` is its path in the test binary, e.g.
/// `power_rapl::unreadable_is_denied`) in a child process whose `CAP_DAC_OVERRIDE` and
/// `CAP_DAC_READ_SEARCH` are dropped with util-linux's `setpriv`, asserts that the child ran
/// exactly that test and passed, and returns `true`: the caller then returns, its check having
/// run in the child. Not root, or in that child, returns `false` and the caller checks directly.
#[track_caller]
#[must_use]
pub fn ran_without_file_permission_override(test: &str) -> bool {
    if std::env::var_os(NO_DAC_ENV).is_some() || !is_root() {
        return false;
    }
    require_program("setpriv", &["--version"], "Debian package util-linux");
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("test binary path: {e}"));
    let out = Command::new("setpriv")
        .args([
            "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
        ])
        .arg(&exe)
        .args([test, "--exact", "--include-ignored", "--nocapture"])
        .env(NO_DAC_ENV, "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run setpriv: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} without CAP_DAC_OVERRIDE failed:\n{stdout}\n{stderr}"
    );
    true
}

/// `id -u` is 0 (asked of `id`, which keeps this crate free of libc bindings for one number).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .is_some_and(|s| s.trim() == "0")
}
