#!/usr/bin/env bash
# Native against VM, for real: the same containerised workload, one CPU-burning container
# (`jb-burn`: busy loop) and one idle container (`jb-idle`: sleep), image
# joulebridge-test/busybox, measured
#   native  the guest agent on this host against the host's real Docker engine, streaming over a
#           Unix socket to the real bridge;
#   vm      inside a QEMU guest: the Debian VM of scripts/debian (Docker + the static agent as its
#           systemd unit, the image preloaded, the containers started at boot), the agent's
#           AF_VSOCK stream to CID 2 arriving through vhost-device-vsock on the bridge's Unix
#           socket;
# then each recording is reported (`host-bridge report`) and the two are compared
# (`host-bridge compare vm native`). Both runs are recorded by the real
# `host-bridge serve --power estimate` (no sensor here: the estimate source, labelled estimated,
# records its readings in the same recording). For the VM run "the VM" is this run's QEMU, picked
# by a process name unique to this script (`--vm-name`, QEMU's `-name ...,process=`), since the
# bridge listens before QEMU exists; for the native run the agent runs on this host, so "the VM"
# is every process of the host (`--vm-name '*'`).
#
#   scripts/compare-native-vm.sh [--seconds 60] [--out target/compare-native-vm] [--cpus 2]
#       [--accel tcg|kvm] [--image-dir target/debian-vm]
#
# Needs root, the Docker engine, and network the first time (the Debian image build, minutes;
# later runs reuse its rootfs with --update). Under TCG the VM boots in about two minutes.
# Prints the comparison; everything stays in --out (recordings, reports, console log).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

seconds=60 out=$repo_root/target/compare-native-vm cpus=2 accel=tcg image_dir=$repo_root/target/debian-vm
while (($#)); do
    case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --accel) accel=$2; shift 2 ;;
    --image-dir) image_dir=$2; shift 2 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "compare-native-vm: unknown argument $1" >&2; exit 2 ;;
    esac
done
log() { printf '\ncompare-native-vm: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

image=joulebridge-test/busybox:latest
pids=()
cleanup() {
    # Only what this script started, by pid, newest first.
    local i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null || true
    done
    docker rm -f jb-burn jb-idle >/dev/null 2>&1 || true
    return 0
}
trap cleanup EXIT

# Wait for pid $1 to exit, at most $2 seconds; TERM it after that.
wait_pid() {
    local pid=$1 limit=$2 i
    for ((i = 0; i < limit * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

rm -rf "$out"
mkdir -p "$out/native" "$out/vm"
# Absolute: the bridge's unix:// endpoints take absolute paths only.
out=$(cd "$out" && pwd)

log "building host-bridge, the native agent and the static agent for the VM"
cargo build -p host-bridge -p guest-agent >&2
bridge=$repo_root/target/debug/host-bridge
native_agent=$repo_root/target/debug/guest-agent
static_agent=$(scripts/vm/build-agent.sh)
scripts/vm/setup-rig.sh >/dev/null
scripts/build-test-images.sh >&2

# The workload, identical in both runs.
workload=$out/workload.sh
cat >"$workload" <<WORKLOAD
#!/bin/sh
set -e
docker rm -f jb-burn jb-idle >/dev/null 2>&1 || true
docker run -d --name jb-burn --network none $image sh -c 'while :; do :; done'
docker run -d --name jb-idle --network none $image sleep 100000
echo "joulebridge workload started"
WORKLOAD
chmod +x "$workload"

# --- native --------------------------------------------------------------------------------------
log "native: bridge + agent on this host, ${seconds} s of workload"
"$bridge" serve --listen "unix://$out/native/bridge.sock" --record "$out/native.jbr" \
    --no-live --no-metrics --power estimate --vm-name '*' >"$out/native/bridge.log" 2>&1 &
bridge_pid=$!
pids+=("$bridge_pid")
for _ in $(seq 1 100); do [[ -S $out/native/bridge.sock ]] && break; sleep 0.1; done
[[ -S $out/native/bridge.sock ]] || die "native bridge did not listen: $(cat "$out/native/bridge.log")"
"$native_agent" --connect "unix://$out/native/bridge.sock" --vm-name native \
    >"$out/native/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")
"$workload" >&2
sleep "$seconds"
docker rm -f jb-burn jb-idle >/dev/null
sleep 3
kill -TERM "$agent_pid"
wait_pid "$agent_pid" 15
kill -TERM "$bridge_pid"
wait_pid "$bridge_pid" 60
pids=()

# --- VM ------------------------------------------------------------------------------------------
log "vm: building/refreshing the Debian image (first time: debootstrap, minutes)"
scripts/debian/build-debian-image.sh --update --out "$image_dir" --agent "$static_agent" \
    --preload-image "$image" --boot-script "$workload" >"$out/vm/image-build.log" 2>&1 ||
    die "image build failed: $(tail -n 20 "$out/vm/image-build.log")"

log "vm: booting (accel $accel, $cpus vCPUs), ${seconds} s of workload once it runs"
run=$out/vm/run
mkdir -p "$run"
# QEMU's process name (at most 15 bytes): unique to this script while it runs.
qemu_name=jb-cmp-$$
"$bridge" serve --listen "unix://$run/vm.vsock_7777" --record "$out/vm.jbr" \
    --no-live --no-metrics --power estimate --vm-name "$qemu_name" >"$out/vm/bridge.log" 2>&1 &
bridge_pid=$!
pids+=("$bridge_pid")
for _ in $(seq 1 100); do [[ -S $run/vm.vsock_7777 ]] && break; sleep 0.1; done
[[ -S $run/vm.vsock_7777 ]] || die "vm bridge did not listen: $(cat "$out/vm/bridge.log")"
# The serial console is a FIFO, so the script can log in (autologin) and type `poweroff`: the
# agent then gets SIGTERM from systemd and says Goodbye, as on a real shutdown.
mkfifo "$run/console.in"
sleep 100000 >"$run/console.in" &
pids+=("$!")
scripts/debian/boot-qemu-linux.sh --image-dir "$image_dir" --run-dir "$run" --snapshot \
    --accel "$accel" --cpus "$cpus" --mem 2048 --process-name "$qemu_name" <"$run/console.in" >"$out/vm/console.log" 2>&1 &
boot_pid=$!
pids+=("$boot_pid")
started=0
for _ in $(seq 1 900); do
    grep -qa 'joulebridge workload started' "$out/vm/console.log" && { started=1; break; }
    kill -0 "$boot_pid" 2>/dev/null || break
    sleep 1
done
((started)) || die "the VM's workload did not start; console: $out/vm/console.log"
sleep "$seconds"
printf 'poweroff\r' >"$run/console.in"
wait_pid "$boot_pid" 180
kill -TERM "$bridge_pid"
wait_pid "$bridge_pid" 60

# --- reports -------------------------------------------------------------------------------------
log "reports"
"$bridge" report "$out/native.jbr" --out "$out/native-report" | tee "$out/native-summary.txt"
"$bridge" report "$out/vm.jbr" --out "$out/vm-report" | tee "$out/vm-summary.txt"
log "compare (A = VM, B = native)"
"$bridge" compare "$out/vm.jbr" "$out/native.jbr" --json "$out/compare.json" | tee "$out/compare.txt"
