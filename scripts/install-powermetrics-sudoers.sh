#!/usr/bin/env bash
# Installs a sudoers rule so an unprivileged joulebridge host bridge can run Apple's
# `powermetrics` (which requires root) through `sudo -n`, without a password.
#
# macOS only. Run it once, with sudo, as the user who will run the bridge:
#
#   sudo scripts/install-powermetrics-sudoers.sh [--interval-ms N] [--user NAME]
#   sudo scripts/install-powermetrics-sudoers.sh --uninstall
#
# The rule allows exactly the command lines the bridge uses (see
# host-bridge/src/sources/power/powermetrics/spawn.rs, `powermetrics_args`) at one sampling
# interval, not `powermetrics` with any arguments: `powermetrics --output-file` would let the
# user overwrite any file as root. If you change the bridge's interval, re-run with the same
# `--interval-ms`. The rule file is validated with `visudo -c` before it is installed.
#
# Never run in CI.
set -euo pipefail

RULE_FILE=/etc/sudoers.d/joulebridge-powermetrics
PROGRAM=/usr/bin/powermetrics
INTERVAL_MS=1000
TARGET_USER="${SUDO_USER:-}"
UNINSTALL=0

# Keep in sync with `powermetrics_args` (a test in spawn.rs checks these literals).
SAMPLERS_WITH_ANE="cpu_power,gpu_power,ane_power,tasks"
SAMPLERS_WITHOUT_ANE="cpu_power,gpu_power,tasks"
FIXED_ARGS="--show-process-energy --show-process-coalition --format plist --buffer-size 0"

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --interval-ms) INTERVAL_MS="${2:?--interval-ms needs a value}"; shift 2 ;;
        --user) TARGET_USER="${2:?--user needs a value}"; shift 2 ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h|--help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done

if [[ "$(uname -s)" != "Darwin" ]]; then
    echo "error: this script is for macOS (powermetrics exists only there)" >&2
    exit 1
fi
if [[ "$(id -u)" -ne 0 ]]; then
    echo "error: run it with sudo: sudo $0 $*" >&2
    exit 1
fi
if [[ "$UNINSTALL" -eq 1 ]]; then
    rm -f "$RULE_FILE"
    echo "removed $RULE_FILE"
    exit 0
fi
if [[ -z "$TARGET_USER" || "$TARGET_USER" == "root" ]]; then
    echo "error: run it with sudo from the account that runs the bridge, or pass --user NAME" >&2
    exit 1
fi
if ! [[ "$INTERVAL_MS" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: --interval-ms must be a positive integer, got '$INTERVAL_MS'" >&2
    exit 1
fi
if ! id "$TARGET_USER" >/dev/null 2>&1; then
    echo "error: no such user '$TARGET_USER'" >&2
    exit 1
fi
if [[ ! -x "$PROGRAM" ]]; then
    echo "error: $PROGRAM not found" >&2
    exit 1
fi

major="$(sw_vers -productVersion | cut -d. -f1)"
if [[ "$major" -ge 12 ]]; then
    interval_flag="--sample-rate"
else
    interval_flag="--sample-interval"
fi

# In sudoers, commas in command arguments must be escaped.
escape() { printf '%s' "$1" | sed 's/,/\\,/g'; }

tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
{
    echo "# Installed by joulebridge scripts/install-powermetrics-sudoers.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)."
    echo "# Lets $TARGET_USER run powermetrics with exactly the bridge's arguments, without a password."
    for samplers in "$SAMPLERS_WITH_ANE" "$SAMPLERS_WITHOUT_ANE"; do
        echo "$TARGET_USER ALL=(root) NOPASSWD: $PROGRAM --samplers $(escape "$samplers") $FIXED_ARGS $interval_flag $INTERVAL_MS"
    done
} >"$tmp"

if ! visudo -c -q -f "$tmp"; then
    echo "error: generated rule failed visudo validation; nothing installed" >&2
    cat "$tmp" >&2
    exit 1
fi
install -m 0440 -o root -g wheel "$tmp" "$RULE_FILE"
echo "installed $RULE_FILE for $TARGET_USER (interval ${INTERVAL_MS} ms):"
cat "$RULE_FILE"
echo "start the bridge with powermetrics privilege 'sudo' (or 'auto') and --interval matching ${INTERVAL_MS} ms"
