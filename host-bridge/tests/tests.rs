//! The host-bridge integration tests: one binary, one module per topic.

// Integration tests are top-level `#[test]` functions by design, and their helpers may unwrap:
// a panic is how a test reports failure.
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

mod compare;
mod gmt;
mod html_chromium;
mod prometheus_exposition;
mod prometheus_restart;
mod report_e2e;
mod report_measure;
mod report_render;
mod report_support;
mod sim;
