#!/usr/bin/env bash
# shellcheck disable=SC2054,SC2317  # commas are QEMU option syntax; cleanup runs from a trap
# Boot the rig's guest under QEMU (TCG) with a vhost-user vsock device served by
# vhost-device-vsock. A guest connect(AF_VSOCK, CID 2, port P) reaches the host as a connection
# to the Unix socket <dir>/vm.vsock_P, so bind your listener there BEFORE calling this script (a
# guest connect to a port nobody listens on times out after about 2 s).
#
#   scripts/vm/boot-qemu.sh --initrd <file> --dir <run dir> [--timeout S] [--mem MB]
#                           [--append "kernel args"] [--console] [--process-name NAME]
#
# --process-name sets QEMU's process name (`-name ...,process=NAME`, at most 15 bytes: what
# /proc/<pid>/comm shows), so a power source can pick this QEMU by name among others
# (`serve --vm-name NAME`) before its pid is known.
#
# Files in <dir>: vhost.socket (QEMU <-> vhost-device-vsock), vm.vsock (host -> guest, unused),
# vm.vsock_<P> (yours), console.log (guest serial console), vhost-device-vsock.log, qemu.pid.
# One dir per run: each run has its own vhost-device-vsock, so every guest can use CID 3 and runs
# can go in parallel. Exit status: QEMU's (0 after a guest poweroff), 124 on timeout. QEMU's status
# says nothing about what the guest did: judge a run by what the host received.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
cache=${JB_VM_RIG_CACHE:-$repo_root/target/vm-rig-cache}

usage() { awk 'NR > 1 && /^#/ { if (!/^# shellcheck/) { sub(/^# ?/, ""); print } next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }
die() { printf 'boot-qemu: error: %s\n' "$*" >&2; exit 1; }

initrd='' dir='' timeout_s=120 mem=256 append='' console=0 process_name=''
while (($#)); do
    case $1 in
    --initrd) initrd=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --append) append=$2; shift 2 ;;
    --console) console=1; shift ;;
    --process-name) process_name=$2; shift 2 ;;
    -h | --help) usage ;;
    *) die "unknown argument $1" ;;
    esac
done
[[ -n $initrd && -n $dir ]] || usage
[[ -f $initrd ]] || die "no initrd $initrd"
[[ -d $dir ]] || die "no run dir $dir"
if [[ -n $process_name ]]; then
    ((${#process_name} <= 15)) || die "--process-name $process_name is longer than 15 bytes"
    [[ $process_name != *,* ]] || die "--process-name $process_name contains a comma"
fi
[[ -f $cache/rig.env ]] || die "no $cache/rig.env: run scripts/vm/setup-rig.sh first"
# shellcheck source=/dev/null
source "$cache/rig.env"
dir=$(cd "$dir" && pwd)

vhost_pid='' qemu_pid=''
cleanup() {
    # Only the processes this script started, by pid: vhost-device-vsock does not exit when the VM
    # stops.
    # qemu_pid is the `timeout` wrapper, which passes TERM on to QEMU.
    if [[ -n $qemu_pid ]]; then kill -TERM "$qemu_pid" 2>/dev/null || true; fi
    # (`if`, not `&&`: under `set -e` a failing last command of an && list ends the shell, and
    # `wait` on a process killed by TERM returns 143.)
    if [[ -n $vhost_pid ]] && kill -TERM "$vhost_pid" 2>/dev/null; then
        wait "$vhost_pid" 2>/dev/null || true
    fi
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -f "$dir/vhost.socket" "$dir/vm.vsock" "$dir/qemu.pid"
"$JB_RIG_VHOST_DEVICE_VSOCK" --vm "guest-cid=3,socket=$dir/vhost.socket,uds-path=$dir/vm.vsock" \
    </dev/null >"$dir/vhost-device-vsock.log" 2>&1 &
vhost_pid=$!
for _ in $(seq 1 100); do
    [[ -S $dir/vhost.socket ]] && break
    kill -0 "$vhost_pid" 2>/dev/null || die "vhost-device-vsock exited: $(cat "$dir/vhost-device-vsock.log")"
    sleep 0.05
done
[[ -S $dir/vhost.socket ]] || die "vhost-device-vsock did not create $dir/vhost.socket"

start=$(date +%s.%N)
qemu_args=(
    -accel tcg -smp 1 -m "${mem}M"
    # vhost-user needs guest memory the backend can map: memfd, shared, same size as -m.
    -object "memory-backend-memfd,id=mem0,size=${mem}M,share=on"
    -M pc,memory-backend=mem0
    -kernel "$JB_RIG_KERNEL" -initrd "$initrd"
    -append "console=ttyS0 quiet panic=-1 $append"
    -chardev "socket,id=char0,path=$dir/vhost.socket"
    -device vhost-user-vsock-pci,chardev=char0
    -nographic -nic none -no-reboot
    # QEMU's own pid, for whoever needs "the VM process" (the bridge's power source).
    -pidfile "$dir/qemu.pid"
)
if [[ -n $process_name ]]; then qemu_args+=(-name "rig,process=$process_name"); fi
timeout --kill-after=5 "$timeout_s" "$JB_RIG_QEMU" "${qemu_args[@]}" </dev/null \
    >"$dir/console.log" 2>&1 &
qemu_pid=$!
if ((console)); then
    tail -n +1 -f --pid="$qemu_pid" "$dir/console.log" >&2 &
fi
status=0
wait "$qemu_pid" || status=$?
qemu_pid=''
end=$(date +%s.%N)
printf 'boot-qemu: qemu exited status=%s after %.2f s (console: %s)\n' \
    "$status" "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" "$dir/console.log" >&2
exit "$status"
