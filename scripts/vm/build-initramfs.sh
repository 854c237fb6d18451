#!/usr/bin/env bash
# Build the rig's guest initramfs: a cached base archive (busybox, vsock modules, /init) plus a
# small per-run archive holding the agent binary, its command line and the run length. The kernel
# unpacks concatenated cpio archives in order, so the output is simply base + run.
#
#   scripts/vm/build-initramfs.sh --out <file> [--run-seconds N] [--stop-grace S] [--stop-port P]
#                                 [--env KEY=VALUE]... [--agent <static binary> [-- args...]]
#
# The guest runs the agent until the host connects to guest vsock port P (default 9999; from the
# host: `scripts/vm/stop-guest.sh <run dir>`) or N seconds pass (default 10), then sends it
# SIGTERM, waits up to S seconds (default 5) for it to flush and exit, kills it, prints the ground
# truth (`rig: cpu.stat <cgroup> ...` lines on the console) and powers off.
# The agent must be statically linked (there is no libc in the guest). Its arguments are quoted
# into /rig/agent.sh, which execs it so the init sees the agent's own pid.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
cache=${JB_VM_RIG_CACHE:-$repo_root/target/vm-rig-cache}
modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
    vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport)

usage() { awk 'NR > 1 && /^#/ { if (!/^# shellcheck/) { sub(/^# ?/, ""); print } next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }
die() { printf 'build-initramfs: error: %s\n' "$*" >&2; exit 1; }
# True when the ELF file asks for a program interpreter (ld.so), i.e. needs a libc at run time.
# (`ldd` is no test: it exits 0 on static-pie binaries.)
# POSIX single quoting for the guest's busybox sh: ' becomes '\''.
sh_quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
is_dynamic() { LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'program interpreter'; }

out='' agent='' run_seconds=10 stop_grace=5 stop_port=9999 agent_args=() agent_env=(NO_COLOR=1)
while (($#)); do
    case $1 in
    --out) out=$2; shift 2 ;;
    --agent) agent=$2; shift 2 ;;
    --run-seconds) run_seconds=$2; shift 2 ;;
    --stop-grace) stop_grace=$2; shift 2 ;;
    --stop-port) stop_port=$2; shift 2 ;;
    --env) agent_env+=("$2"); shift 2 ;;
    --) shift; agent_args=("$@"); break ;;
    -h | --help) usage ;;
    *) die "unknown argument $1" ;;
    esac
done
[[ -n $out ]] || usage
[[ $run_seconds =~ ^[0-9]+$ ]] || die "--run-seconds must be a whole number"
[[ $stop_grace =~ ^[0-9]+$ ]] || die "--stop-grace must be a whole number"
[[ $stop_port =~ ^[0-9]+$ ]] || die "--stop-port must be a port number"
[[ -f $cache/rig.env ]] || die "no $cache/rig.env: run scripts/vm/setup-rig.sh first"
# shellcheck source=/dev/null
source "$cache/rig.env"

if [[ -n $agent ]]; then
    [[ -x $agent ]] || die "agent $agent is not an executable file"
    if is_dynamic "$agent"; then
        die "agent $agent is dynamically linked; build it for x86_64-unknown-linux-musl"
    fi
fi

# --- base archive, cached by content ----------------------------------------------------------------
key=$( {
    cat "$here/guest-init.sh" "$here/probe/vsock-hello.c"
    printf '%s\n' "$JB_RIG_KERNEL_VERSION" "${modules[@]}"
    sha256sum "$JB_RIG_BUSYBOX"
} | sha256sum | cut -c1-16)
base=$cache/initramfs/base-$key.cpio.gz
if [[ ! -f $base ]]; then
    mkdir -p "$cache/initramfs"
    stage=$(mktemp -d "$cache/initramfs/stage.XXXXXX")
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage"/{bin,dev,proc,sys,tmp,run,rig,lib/modules}
    cp "$JB_RIG_BUSYBOX" "$stage/bin/busybox"
    # The stop switch (and a standalone vsock probe), static: there is no libc in the guest.
    gcc -static -O2 -Wall -Wextra -o "$stage/bin/vsock-hello" "$here/probe/vsock-hello.c"
    ln -s busybox "$stage/bin/sh"
    install -m 0755 "$here/guest-init.sh" "$stage/init"
    for m in "${modules[@]}"; do
        ko=$(find "$JB_RIG_MODULES/kernel" -name "$m.ko" -print -quit)
        [[ -n $ko ]] || die "module $m.ko not found under $JB_RIG_MODULES"
        cp "$ko" "$stage/lib/modules/$m.ko"
    done
    printf '%s\n' "${modules[@]}" >"$stage/lib/modules/rig.order"
    (cd "$stage" && { find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet; } |
        gzip -1 -n >"$base.tmp")
    mv -f "$base.tmp" "$base"
    rm -rf "$stage"
    trap - EXIT
fi

# --- per-run archive ------------------------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run_stage=$work/root
mkdir -p "$run_stage/rig"
printf 'RIG_RUN_SECONDS=%s\nRIG_STOP_GRACE_SECONDS=%s\nRIG_STOP_PORT=%s\n' \
    "$run_seconds" "$stop_grace" "$stop_port" >"$run_stage/rig/config"
if [[ -n $agent ]]; then
    cp "$agent" "$run_stage/rig/agent"
    chmod 0755 "$run_stage/rig/agent"
    {
        printf '#!/bin/sh\n'
        for e in "${agent_env[@]}"; do
            [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants KEY=VALUE, got $e"
            printf 'export %s=%s\n' "${e%%=*}" "$(sh_quote "${e#*=}")"
        done
        printf 'exec /rig/agent'
        for a in "${agent_args[@]}"; do
            printf ' %s' "$(sh_quote "$a")"
        done
        printf '\n'
    } >"$run_stage/rig/agent.sh"
    chmod 0755 "$run_stage/rig/agent.sh"
fi
(cd "$run_stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) |
    gzip -1 -n >"$work/run.cpio.gz"
cat "$base" "$work/run.cpio.gz" >"$out.tmp"
mv -f "$out.tmp" "$out"
