#!/usr/bin/env bash
# One command to see joulebridge work on this Linux machine:
#   1. builds host-bridge and guest-agent (release);
#   2. starts `host-bridge serve` on a Unix socket in a temp dir, power source `auto` (RAPL when
#      readable, else the labelled utilisation estimate), with the live view on this terminal;
#   3. starts the guest agent on this host's own cgroups (discovery on; Docker names when the
#      Docker socket exists), connected to the bridge. The agent runs on the host itself, so the
#      "VM" whose share of host power goes to containers is every host process (`--vm-name '*'`);
#   4. on Ctrl-C stops the agent, then the bridge (which syncs the recording), and writes an
#      HTML + JSON report of the recording, printing where.
#
# Usage: scripts/quickstart.sh [extra `host-bridge serve` flags, e.g. --power estimate]
# Env: JOULEBRIDGE_WINDOW (attribution window, seconds; default 2),
#      JOULEBRIDGE_QUICKSTART_DIR (work dir; default a new temp dir, kept after exit).
# Needs root for RAPL (energy_uj is root-only) and for reading every cgroup.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "$(uname -s)" != Linux ]]; then
    echo "quickstart.sh runs the guest agent on this host, which needs Linux cgroups;" \
        "on a Mac, run host-bridge serve here and the agent inside the Docker VM (README.md)." >&2
    exit 2
fi

window="${JOULEBRIDGE_WINDOW:-2}"
work="${JOULEBRIDGE_QUICKSTART_DIR:-$(mktemp -d -t joulebridge-quickstart.XXXXXX)}"
mkdir -p "$work"
socket="$work/bridge.sock"
recording="$work/recording.jbr"
bridge_pid=""
agent_pid=""

# Stop a child by pid (TERM, then KILL after 15 s) and wait for it.
stop_pid() {
    local pid="$1" i
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 150; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    # Agent first (it says Goodbye), then the bridge (it drains and syncs the recording).
    stop_pid "$agent_pid"
    agent_pid=""
    stop_pid "$bridge_pid"
    bridge_pid=""
}
trap cleanup EXIT
interrupted=0
trap 'interrupted=1' INT TERM

echo "building host-bridge and guest-agent (release)…" >&2
cargo build --release --locked -p host-bridge -p guest-agent >&2
bin="target/release"

docker_flag=--no-docker
if [[ -S /var/run/docker.sock ]]; then
    docker_flag=--docker
fi

echo "work dir: $work (logs: bridge.log, agent.log)" >&2
"$bin/host-bridge" serve \
    --listen "unix://$socket" \
    --record "$recording" \
    --window "$window" \
    --vm-name '*' \
    "$@" 2>"$work/bridge.log" &
bridge_pid=$!

for ((i = 0; i < 100; i++)); do
    [[ -S "$socket" ]] && break
    if ! kill -0 "$bridge_pid" 2>/dev/null; then
        wait "$bridge_pid" || true
        bridge_pid=""
        echo "host-bridge serve failed to start:" >&2
        cat "$work/bridge.log" >&2
        exit 1
    fi
    sleep 0.1
done
grep -m1 "Host power source running" "$work/bridge.log" >&2 || true

"$bin/guest-agent" \
    --connect "unix://$socket" \
    --vm-name "$(hostname)" \
    "$docker_flag" 2>"$work/agent.log" &
agent_pid=$!

echo "live view starts within a few seconds; press Ctrl-C to stop and write the report" >&2
while [[ "$interrupted" == 0 ]] && kill -0 "$bridge_pid" 2>/dev/null; do
    wait "$bridge_pid" 2>/dev/null || true
done
cleanup
if [[ "$interrupted" == 0 ]]; then
    echo "host-bridge stopped by itself; its log:" >&2
    tail -n 20 "$work/bridge.log" >&2
fi

echo >&2
"$bin/host-bridge" report "$recording" --window "$window" --format html,json --out "$work/report"
echo "report: $work/report/report.html"
echo "        $work/report/report.json"
