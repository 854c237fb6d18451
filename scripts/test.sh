#!/usr/bin/env bash
# Runs every test of joulebridge, after installing what the tests need on a fresh Debian machine
# (root): Debian packages (chromium, qemu, busybox-static, …), the QEMU/vsock rig, the FROM-scratch
# Docker test images and Python's Prometheus text parser. Idempotent; a warm run skips installs.
#
# Usage: scripts/test.sh            (this is the command README.md names and .ci/run calls)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh
scripts/vm/setup-rig.sh
scripts/build-test-images.sh
scripts/build-agent-image.sh

# CI must run the real-VM test, never skip it: a rig that cannot be set up is a failure.
export JOULEBRIDGE_REQUIRE_VM_RIG=1

# Debug and release: overflow checks differ, and the VM end-to-end test uses the release agent.
cargo test --workspace --locked
cargo test --workspace --locked --release
