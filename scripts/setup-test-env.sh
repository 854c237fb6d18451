#!/usr/bin/env bash
# Sets up everything the full test tier needs on a Debian (bookworm) machine, as root:
#
#   Debian packages   chromium + a font (HTML report in a real browser), busybox-static and
#                     podman (FROM-scratch test images, the Podman test), file, util-linux
#                     (setpriv, for permission tests as root)
#   the QEMU rig      scripts/vm/setup-rig.sh: QEMU, the guest kernel, vhost-device-vsock
#   Rust target       x86_64-unknown-linux-musl (the static agent in the FROM-scratch image)
#   PyPI              prometheus-client (its parser reads our /metrics text back)
#   Docker images     joulebridge-test/busybox (Docker and Podman), joulebridge/guest-agent:dev
#
# Idempotent: a second run checks and returns in seconds. Tests never install or build any of
# this themselves; they fail with "missing: …" naming what this script provides.
#
# Usage: scripts/setup-test-env.sh
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup-test-env: %s\n' "$*" >&2; }
[[ $(id -u) -eq 0 ]] || { log "error: run as root (apt-get, cgroups)"; exit 1; }

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# 1. Debian packages (the rig's own come with step 2).
want=(chromium fonts-dejavu-core busybox-static podman file util-linux)
missing=()
for pkg in "${want[@]}"; do installed "$pkg" || missing+=("$pkg"); done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt-get "${apt_opts[@]}" update -qq
    apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The QEMU rig (packages, kernel, vhost-device-vsock).
scripts/vm/setup-rig.sh >/dev/null

# 3. Python's Prometheus parser, into the python3 the tests run.
if ! python3 -c 'import prometheus_client.openmetrics.parser' >/dev/null 2>&1; then
    log "pip install prometheus-client"
    python3 -m pip install --quiet --disable-pip-version-check prometheus-client ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages prometheus-client
fi

# 4. Images (build-agent-image.sh adds the musl target when missing).
scripts/build-test-images.sh
scripts/build-agent-image.sh

log "ready: $(chromium --version 2>/dev/null | head -1); $(qemu-system-x86_64 --version | head -1); $(podman --version)"
