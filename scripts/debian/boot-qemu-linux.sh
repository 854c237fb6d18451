#!/usr/bin/env bash
# shellcheck disable=SC2054,SC2317  # commas are QEMU option syntax; cleanup runs from a trap
# Boot the Debian VM built by build-debian-image.sh with QEMU on a Linux host, with a vsock device
# the guest agent dials (CID 2, port 7777 by default).
#
#   scripts/debian/boot-qemu-linux.sh [--image-dir target/debian-vm] [--run-dir DIR] [--port 7777]
#       [--accel kvm|tcg] [--cpus 2] [--mem 2048] [--snapshot] [--vsock auto|vhost|vhost-user]
#       [--process-name NAME]
#
# --process-name names the QEMU process (`-name ...,process=NAME`, at most 15 bytes: its
# /proc/<pid>/comm), so the bridge can pick this VM with `serve --vm-name NAME` before it runs.
#
# vsock backends:
#   vhost       /dev/vhost-vsock exists (module vhost_vsock): -device vhost-vsock-pci,guest-cid=3.
#               The guest's CID 2 is this host: run `host-bridge serve --listen vsock://any:<port>`.
#   vhost-user  no /dev/vhost-vsock (containers, CI machines): vhost-device-vsock maps guest port
#               P onto the Unix socket <run-dir>/vm.vsock_P, so run
#               `host-bridge serve --listen unix://<run-dir>/vm.vsock_<port>` (the same Unix-socket
#               path vfkit uses on a Mac). vhost-device-vsock comes from scripts/vm/setup-rig.sh's
#               cache or $PATH.
#   auto        vhost when /dev/vhost-vsock exists, else vhost-user (default).
# The agent retries until the bridge listens, so start order does not matter.
# --accel defaults to kvm when /dev/kvm is usable; some nested hosts hang there: use --accel tcg.
# Console: the serial console is this terminal (Ctrl-a x quits QEMU).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
cache=${JB_VM_RIG_CACHE:-$repo_root/target/vm-rig-cache}

usage() { awk 'NR > 1 && /^#/ { if (!/^# shellcheck/) { sub(/^# ?/, ""); print } next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }
log() { printf 'boot-qemu-linux: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

image_dir=$repo_root/target/debian-vm run_dir='' port=7777 accel='' cpus=2 mem=2048 snapshot=0 process_name=''
vsock=auto
while (($#)); do
    case $1 in
    --image-dir) image_dir=$2; shift 2 ;;
    --run-dir) run_dir=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --accel) accel=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --snapshot) snapshot=1; shift ;;
    --vsock) vsock=$2; shift 2 ;;
    --process-name) process_name=$2; shift 2 ;;
    -h | --help) usage ;;
    *) die "unknown argument $1" ;;
    esac
done
for f in vmlinuz initrd.img debian.qcow2 cmdline; do
    [[ -f $image_dir/$f ]] || die "no $image_dir/$f: run scripts/debian/build-debian-image.sh first"
done
if [[ -z $accel ]]; then
    if [[ -r /dev/kvm && -w /dev/kvm ]]; then accel=kvm; else accel=tcg; fi
fi
if [[ $vsock == auto ]]; then
    if [[ -e /dev/vhost-vsock ]]; then vsock=vhost; else vsock=vhost-user; fi
fi
run_dir=${run_dir:-$(mktemp -d "${TMPDIR:-/tmp}/joulebridge-vm.XXXXXX")}
mkdir -p "$run_dir"
run_dir=$(cd "$run_dir" && pwd)

qemu=(qemu-system-x86_64 -accel "$accel" -smp "$cpus" -nographic
    -kernel "$image_dir/vmlinuz" -initrd "$image_dir/initrd.img" -append "$(cat "$image_dir/cmdline")"
    -drive "file=$image_dir/debian.qcow2,format=qcow2,if=virtio$( ((snapshot)) && echo ,snapshot=on)"
    -nic user,model=virtio-net-pci -pidfile "$run_dir/qemu.pid")
[[ $accel == kvm ]] && qemu+=(-cpu host)
if [[ -n $process_name ]]; then
    ((${#process_name} <= 15)) || die "--process-name $process_name is longer than 15 bytes"
    [[ $process_name != *,* ]] || die "--process-name $process_name contains a comma"
    qemu+=(-name "debian,process=$process_name")
fi

vhost_pid=''
cleanup() {
    # (`if`, not `&&`: under `set -e` a failing last command of an && list ends the shell, and
    # `wait` on a process killed by TERM returns 143.)
    if [[ -n $vhost_pid ]] && kill -TERM "$vhost_pid" 2>/dev/null; then
        wait "$vhost_pid" 2>/dev/null || true
    fi
    return 0
}
trap cleanup EXIT

case $vsock in
vhost)
    [[ -w /dev/vhost-vsock ]] || die "/dev/vhost-vsock is not writable"
    qemu+=(-m "${mem}M" -device vhost-vsock-pci,guest-cid=3)
    log "vsock: vhost-vsock, guest CID 3; bridge: host-bridge serve --listen vsock://any:$port"
    ;;
vhost-user)
    vhost_bin=$cache/vhost/bin/vhost-device-vsock
    [[ -x $vhost_bin ]] || vhost_bin=$(command -v vhost-device-vsock || true)
    [[ -n $vhost_bin ]] || die "no vhost-device-vsock: run scripts/vm/setup-rig.sh or cargo install --locked vhost-device-vsock@0.3.0"
    rm -f "$run_dir/vhost.socket" "$run_dir/vm.vsock"
    "$vhost_bin" --vm "guest-cid=3,socket=$run_dir/vhost.socket,uds-path=$run_dir/vm.vsock" \
        </dev/null >"$run_dir/vhost-device-vsock.log" 2>&1 &
    vhost_pid=$!
    for _ in $(seq 1 100); do [[ -S $run_dir/vhost.socket ]] && break; sleep 0.05; done
    [[ -S $run_dir/vhost.socket ]] || die "vhost-device-vsock did not start: $(cat "$run_dir/vhost-device-vsock.log")"
    # vhost-user needs guest memory the backend can map: memfd, shared, same size as -m.
    qemu+=(-m "${mem}M" -object "memory-backend-memfd,id=mem0,size=${mem}M,share=on"
        -M pc,memory-backend=mem0
        -chardev "socket,id=char0,path=$run_dir/vhost.socket" -device vhost-user-vsock-pci,chardev=char0)
    log "vsock: vhost-user, guest CID 3; bridge: host-bridge serve --listen unix://$run_dir/vm.vsock_$port"
    ;;
*) die "--vsock must be auto, vhost or vhost-user" ;;
esac

log "accel $accel, $cpus CPUs, $mem MB; run dir $run_dir"
"${qemu[@]}"
