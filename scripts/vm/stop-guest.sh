#!/usr/bin/env bash
# Ask a rig guest to end its run: connect to the guest's vsock stop port through
# vhost-device-vsock's host-side socket (<dir>/vm.vsock, Firecracker-style `CONNECT <port>`).
# The guest then stops its agent (SIGTERM, grace period), prints the ground truth and powers off.
#
#   scripts/vm/stop-guest.sh <run dir> [port]      # port defaults to 9999
set -euo pipefail
dir=${1:?usage: stop-guest.sh <run dir> [port]}
port=${2:-9999}
python3 - "$dir/vm.vsock" "$port" <<'PY'
import socket, sys, time
# The guest may not listen yet (early in boot): retry for a while.
reply = b""
for attempt in range(20):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(sys.argv[1])
        s.sendall(b"CONNECT %d\n" % int(sys.argv[2]))
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(1)
            if not chunk:
                break
            reply += chunk
    except OSError as err:
        reply = str(err).encode()
    finally:
        s.close()
    if reply.startswith(b"OK "):
        sys.exit(0)
    time.sleep(0.5)
sys.exit("stop-guest: no OK from vhost-device-vsock, last answer %r" % reply)
PY
