#!/usr/bin/env bash
# Build the rig's guest initramfs: a cached base archive (busybox, vsock modules, /init) plus a
# small per-run archive holding the agent binary, its command line and the run length. The kernel
# unpacks concatenated cpio archives in order, so the output is simply base + run.
#
#   scripts/vm/build-initramfs.sh --out <file> [--run-seconds N] [--agent <static binary> [-- args...]]
#
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

out='' agent='' run_seconds=10 agent_args=()
while (($#)); do
    case $1 in
    --out) out=$2; shift 2 ;;
    --agent) agent=$2; shift 2 ;;
    --run-seconds) run_seconds=$2; shift 2 ;;
    --) shift; agent_args=("$@"); break ;;
    -h | --help) usage ;;
    *) die "unknown argument $1" ;;
    esac
done
[[ -n $out ]] || usage
[[ $run_seconds =~ ^[0-9]+$ ]] || die "--run-seconds must be a whole number"
[[ -f $cache/rig.env ]] || die "no $cache/rig.env: run scripts/vm/setup-rig.sh first"
# shellcheck source=/dev/null
source "$cache/rig.env"

if [[ -n $agent ]]; then
    [[ -x $agent ]] || die "agent $agent is not an executable file"
    if ldd "$agent" >/dev/null 2>&1; then
        die "agent $agent is dynamically linked; build it for x86_64-unknown-linux-musl"
    fi
fi

# --- base archive, cached by content ----------------------------------------------------------------
key=$( {
    cat "$here/guest-init.sh"
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
run_stage=$(mktemp -d)
trap 'rm -rf "$run_stage"' EXIT
mkdir -p "$run_stage/rig"
printf 'RIG_RUN_SECONDS=%s\n' "$run_seconds" >"$run_stage/rig/config"
if [[ -n $agent ]]; then
    cp "$agent" "$run_stage/rig/agent"
    chmod 0755 "$run_stage/rig/agent"
    {
        printf '#!/bin/sh\nexec /rig/agent'
        for a in "${agent_args[@]}"; do
            # POSIX single quoting: ' becomes '\''
            printf " '%s'" "${a//\'/\'\\\'\'}"
        done
        printf '\n'
    } >"$run_stage/rig/agent.sh"
    chmod 0755 "$run_stage/rig/agent.sh"
fi
(cd "$run_stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet) |
    gzip -1 -n >"$run_stage/run.cpio.gz"
cat "$base" "$run_stage/run.cpio.gz" >"$out.tmp"
mv -f "$out.tmp" "$out"
