#!/usr/bin/env bash
# Run the joulebridge guest agent inside Docker Desktop's Linux VM, as a container.
#
# Docker Desktop's VM root is a read-only image, so the agent is injected as a container that
# restarts with the engine, with the fewest privileges that work:
#   --pid=host          to read /proc/<pid>/cgroup of every container's main process (that file
#                       is world-readable) and to watch its exit with pidfd_open (no capability)
#   --cgroupns=host and /sys/fs/cgroup read-only
#                       every container's counters (the counter files are world-readable)
#   the Docker socket   names, images and compose labels, through the read-only part of the API
#                       (GET /version, /containers/json, /containers/{id}/json, /events); the
#                       socket cannot be limited to that by a mount, so the image is the
#                       guarantee: it holds only the agent binary
#   --cap-drop ALL, --security-opt no-new-privileges, --read-only, no --privileged
#                       the agent needs no capability: it reads, it never writes to the VM
# It streams over TCP to the bridge on the Mac via host.docker.internal (Docker Desktop forwards
# that to the Mac's localhost, where `host-bridge serve` listens on 127.0.0.1:7777 by default).
#
# Usage: scripts/inject-docker-desktop.sh [options] [-- extra agent arguments]
#   --bridge-host HOST   where the bridge listens, as seen from containers
#                        (default host.docker.internal)
#   --bridge-port PORT   bridge TCP port (default 7777)
#   --vm-name NAME       label of this VM at the bridge (default docker-desktop)
#   --image TAG          agent image (default joulebridge/guest-agent:dev)
#   --name NAME          container name (default joulebridge-agent)
#   --build              (re)build the image first with scripts/build-agent-image.sh
#   --no-build           never build; fail if the image is missing
#                        (default: build only when the image is missing)
#   --add-host-gateway   add --add-host host.docker.internal:host-gateway (automatic on
#                        engines other than Docker Desktop, where the name is not built in)
#   --unprivileged       accepted for compatibility; the agent never runs privileged now
# Remove it again with scripts/remove-docker-desktop.sh.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bridge_host="host.docker.internal"
bridge_port="7777"
vm_name="docker-desktop"
image="joulebridge/guest-agent:dev"
name="joulebridge-agent"
build="auto"
add_host_gateway="auto"
extra=()
# Marks containers this script created, so it never replaces someone else's container.
role_label="org.joulebridge.role=guest-agent"

die() { echo "inject-docker-desktop.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --bridge-host) bridge_host="${2:?--bridge-host needs a value}"; shift 2 ;;
        --bridge-port) bridge_port="${2:?--bridge-port needs a value}"; shift 2 ;;
        --vm-name) vm_name="${2:?--vm-name needs a value}"; shift 2 ;;
        --image) image="${2:?--image needs a value}"; shift 2 ;;
        --name) name="${2:?--name needs a value}"; shift 2 ;;
        --build) build="always"; shift ;;
        --no-build) build="never"; shift ;;
        --add-host-gateway) add_host_gateway="yes"; shift ;;
        --unprivileged) shift ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
        *) echo "inject-docker-desktop.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $bridge_port =~ ^[0-9]+$ ]] && ((bridge_port > 0 && bridge_port < 65536)) \
    || die "--bridge-port must be a TCP port number, got '$bridge_port'"

command -v docker >/dev/null || die "docker CLI not found"
os="$(docker info --format '{{.OperatingSystem}}' 2>/dev/null)" \
    || die "cannot reach the Docker engine (is Docker Desktop running?)"

explain_eci() {
    cat >&2 <<EOF

Docker Desktop's Enhanced Container Isolation (ECI) is on, and it refuses what the agent needs.
ECI runs every container in a Linux user namespace (Sysbox), even with --privileged, and does
not let containers use the VM's PID namespace, the VM-wide cgroup tree, or (by default) the
Docker socket. So the agent cannot see other containers' CPU counters while ECI is on.

What to do:
  * Turn ECI off: Docker Desktop > Settings > General > clear "Use Enhanced Container
    Isolation" > Apply and restart. If your organisation locks the setting, ask your admin.
  * Or have your admin add the agent image to ECI's Docker-socket allow-list in
    admin-settings.json ("enhancedContainerIsolation": {"dockerSocketMount": {"imageList":
    {"images": ["$image"]}}}). That restores container names only: under ECI the VM's cgroup
    counters stay out of reach, so energy per container still needs ECI off.
  * Or run the agent in a VM you control (see linuxkit/ and DESIGN.md).
EOF
}

mentions_eci() { grep -qiE 'enhanced container isolation|sysbox|\bECI\b'; }

# ECI is visible in the engine's runtime list on Docker Desktop (Sysbox), when it is on.
if docker info --format '{{json .Runtimes}} {{json .SecurityOptions}} {{.DefaultRuntime}}' 2>/dev/null \
        | mentions_eci; then
    explain_eci
    exit 3
fi

if [[ $add_host_gateway == "auto" ]]; then
    if [[ $os == "Docker Desktop" ]]; then add_host_gateway="no"; else add_host_gateway="yes"; fi
fi

have_image() { docker image inspect "$image" >/dev/null 2>&1; }
case "$build" in
    always) "$root/scripts/build-agent-image.sh" --tag "$image" ;;
    auto) have_image || "$root/scripts/build-agent-image.sh" --tag "$image" ;;
    never) have_image || die "image $image not found (build it with scripts/build-agent-image.sh)" ;;
esac

# Replace an earlier injection, but never a container this script did not create.
if docker container inspect "$name" >/dev/null 2>&1; then
    role="$(docker container inspect --format '{{index .Config.Labels "org.joulebridge.role"}}' "$name")"
    [[ $role == "guest-agent" ]] \
        || die "a container named '$name' exists and was not created by this script; pick another --name"
    docker rm -f "$name" >/dev/null
fi

run_args=(
    run --detach --name "$name"
    --label "$role_label"
    --restart unless-stopped
    --pid=host --cgroupns=host
    --cap-drop ALL --security-opt no-new-privileges --read-only
    --volume /sys/fs/cgroup:/sys/fs/cgroup:ro
    --volume /var/run/docker.sock:/var/run/docker.sock
    --log-opt max-size=1m --log-opt max-file=2
)
if [[ $add_host_gateway == "yes" ]]; then
    run_args+=(--add-host "host.docker.internal:host-gateway")
fi
run_args+=("$image" --connect "tcp://$bridge_host:$bridge_port" --vm-name "$vm_name")
run_args+=("${extra[@]}")

err="$(mktemp)"
trap 'rm -f "$err"' EXIT
if ! docker "${run_args[@]}" >/dev/null 2>"$err"; then
    cat "$err" >&2
    if mentions_eci <"$err"; then
        explain_eci
        exit 3
    fi
    die "docker run failed"
fi

# The container must still be up a moment later (a refused mount or a crash loop shows here).
state=""
for _ in 1 2 3 4 5 6; do
    sleep 0.5
    state="$(docker container inspect --format '{{.State.Status}} {{.RestartCount}} {{.HostConfig.Runtime}}' "$name" 2>/dev/null || true)"
done
if mentions_eci <<<"$state"; then
    docker logs --tail 20 "$name" >&2 || true
    explain_eci
    exit 3
fi
read -r status restarts _runtime <<<"$state"
if [[ $status != "running" || ${restarts:-0} -gt 0 ]]; then
    echo "inject-docker-desktop.sh: the agent is not staying up (status ${status:-unknown}, ${restarts:-?} restarts); its log:" >&2
    logs="$(docker logs --tail 30 "$name" 2>&1 || true)"
    echo "$logs" >&2
    if mentions_eci <<<"$logs"; then
        explain_eci
        exit 3
    fi
    exit 1
fi
echo "inject-docker-desktop.sh: agent '$name' ($image) is running on $os and streams to tcp://$bridge_host:$bridge_port as '$vm_name'."
echo "inject-docker-desktop.sh: remove it with scripts/remove-docker-desktop.sh${name:+ --name $name}"
