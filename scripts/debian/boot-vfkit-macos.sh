#!/usr/bin/env bash
# Boot the Debian VM built by build-debian-image.sh (use --arch arm64 for Apple Silicon) with
# vfkit on macOS. The guest agent's vsock connection to CID 2, port 7777 arrives on a Unix socket
# that the host bridge listens on.
#
#   scripts/debian/boot-vfkit-macos.sh [--image-dir target/debian-vm] [--run-dir DIR] [--port 7777]
#       [--cpus 2] [--mem 2048]
#
# Start the bridge first (or after: the agent retries):
#   host-bridge serve --listen unix://<run-dir>/joulebridge-<port>.sock
#
# NOT RUN in this repository's CI (it needs a Mac). vfkit's flags are taken from its documented
# usage (crc-org/vfkit doc/usage.md): `--device virtio-vsock,port=P,socketURL=PATH,listen` makes
# the host listen on PATH and vfkit connect to it when the guest dials CID 2:P. vfkit's Linux
# bootloader needs an uncompressed kernel, so a gzip-compressed vmlinuz (arm64 Debian) is
# unpacked into the run dir first. vfkit only takes raw disks: debian.raw is used, copied with
# `cp -c` (APFS clone, instant) unless --run-dir already has one.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)

usage() { awk 'NR > 1 && /^#/ { if (!/^# shellcheck/) { sub(/^# ?/, ""); print } next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }
log() { printf 'boot-vfkit-macos: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

image_dir=$repo_root/target/debian-vm run_dir=$HOME/.joulebridge/debian-vm port=7777 cpus=2 mem=2048
while (($#)); do
    case $1 in
    --image-dir) image_dir=$2; shift 2 ;;
    --run-dir) run_dir=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    -h | --help) usage ;;
    *) die "unknown argument $1" ;;
    esac
done
[[ $(uname -s) == Darwin ]] || die "vfkit runs on macOS only; on Linux use scripts/debian/boot-qemu-linux.sh"
command -v vfkit >/dev/null || die "vfkit not found (brew install vfkit)"
for f in vmlinuz initrd.img debian.raw cmdline; do
    [[ -f $image_dir/$f ]] || die "no $image_dir/$f: run scripts/debian/build-debian-image.sh first"
done
mkdir -p "$run_dir"

kernel=$image_dir/vmlinuz
if [[ $(head -c 2 "$kernel" | od -An -tx1 | tr -d ' ') == 1f8b ]]; then
    gunzip -c "$kernel" >"$run_dir/vmlinux"
    kernel=$run_dir/vmlinux
fi
[[ -f $run_dir/disk.raw ]] || cp -c "$image_dir/debian.raw" "$run_dir/disk.raw"
socket=$run_dir/joulebridge-$port.sock
# The guest console is virtio-serial (hvc0), whatever the cmdline built for QEMU says.
cmdline="root=/dev/vda rw console=hvc0"

log "vsock port $port -> $socket; bridge: host-bridge serve --listen unix://$socket"
exec vfkit --cpus "$cpus" --memory "$mem" \
    --bootloader "linux,kernel=$kernel,initrd=$image_dir/initrd.img,cmdline=\"$cmdline\"" \
    --device "virtio-blk,path=$run_dir/disk.raw" \
    --device virtio-net,nat \
    --device virtio-rng \
    --device "virtio-vsock,port=$port,socketURL=$socket,listen" \
    --device virtio-serial,stdio
