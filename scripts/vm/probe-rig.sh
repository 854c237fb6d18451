#!/usr/bin/env bash
# Prove the rig end to end without any joulebridge code: a static C probe in the guest connects
# AF_VSOCK to CID 2, a Python listener on the host's <dir>/vm.vsock_<port> answers, and the
# script checks both directions and prints the timings.
#
#   scripts/vm/probe-rig.sh [--keep]      # --keep leaves the run dir for inspection
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
cache=${JB_VM_RIG_CACHE:-$repo_root/target/vm-rig-cache}
port=5555
keep=0
[[ ${1:-} == --keep ]] && keep=1

t0=$(date +%s.%N)
"$here/setup-rig.sh" >/dev/null
t_setup=$(date +%s.%N)

dir=$(mktemp -d "${TMPDIR:-/tmp}/jb-probe.XXXXXX")
listener_pid=''
cleanup() {
    [[ -n $listener_pid ]] && kill "$listener_pid" 2>/dev/null
    ((keep)) || rm -rf "$dir"
    return 0
}
trap cleanup EXIT

mkdir -p "$cache/probe"
probe=$cache/probe/vsock-hello
if [[ ! -x $probe || $here/probe/vsock-hello.c -nt $probe ]]; then
    gcc -static -O2 -Wall -Wextra -o "$probe" "$here/probe/vsock-hello.c"
fi
"$here/build-initramfs.sh" --out "$dir/initrd.gz" --run-seconds 20 --agent "$probe" -- "$port" 10
t_initrd=$(date +%s.%N)

python3 - "$dir/vm.vsock_$port" "$dir/received" <<'PY' &
import socket, sys, time
path, out = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(1)
open(out + ".ready", "w").close()
conn, _ = srv.accept()
line = b""
while not line.endswith(b"\n"):
    chunk = conn.recv(1)
    if not chunk:
        break
    line += chunk
conn.sendall(b"hello from host\n")
with open(out, "w") as f:
    f.write("%.3f %s" % (time.time(), line.decode()))
PY
listener_pid=$!
for _ in $(seq 1 100); do [[ -e $dir/received.ready ]] && break; sleep 0.05; done
[[ -e $dir/received.ready ]] || { echo "probe-rig: listener did not start" >&2; exit 1; }

t_boot=$(date +%s.%N)
"$here/boot-qemu.sh" --initrd "$dir/initrd.gz" --dir "$dir" --timeout 60 || true
t_done=$(date +%s.%N)
wait "$listener_pid" || true
listener_pid=''

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
if [[ ! -s $dir/received ]]; then
    echo "probe-rig: FAIL: nothing received on $dir/vm.vsock_$port; console:" >&2
    cat "$dir/console.log" >&2
    keep=1
    exit 1
fi
read -r t_msg msg <"$dir/received"
echo "probe-rig: host received: $msg"
grep -E '^(vsock-hello|rig):' "$dir/console.log" | tr -d '\r' || true
grep -q 'host replied: hello from host' "$dir/console.log" ||
    { echo "probe-rig: FAIL: the guest did not get the host's reply" >&2; keep=1; exit 1; }
echo "probe-rig: OK setup=$(elapsed "$t0" "$t_setup")s initramfs=$(elapsed "$t_setup" "$t_initrd")s" \
    "boot->first message=$(elapsed "$t_boot" "$t_msg")s boot->qemu exit=$(elapsed "$t_boot" "$t_done")s" \
    "total=$(elapsed "$t0" "$t_done")s"
