#!/bin/sh
# shellcheck disable=SC1091,SC2013  # /rig/config exists only in the guest; module names have no spaces
# /init of the rig's guest (busybox ash, PID 1). Packed into the base initramfs by
# build-initramfs.sh; the small per-run archive adds /rig/config and /rig/agent.sh.
#
# It mounts the pseudo file systems and cgroup2, loads the virtio + vsock modules, creates two
# cgroups, `burn` (one busy loop) and `idle` (one sleeper), runs the agent until the host connects
# to vsock port RIG_STOP_PORT (see vsock-hello --wait-stop) or RIG_RUN_SECONDS pass, and powers
# the VM off (QEMU runs with -no-reboot, so it exits). Lines starting with "rig: " on the
# console are for the host: the test parses the ground-truth `rig: cpu.stat <cgroup> ...` lines.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin
/bin/busybox --install -s

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The archive is built without root, so it has no /dev/console node and the kernel started us
# without stdio: take the console now that devtmpfs provides it.
exec </dev/console >/dev/console 2>&1
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run

RIG_RUN_SECONDS=10
RIG_STOP_GRACE_SECONDS=5
RIG_STOP_PORT=9999
[ -f /rig/config ] && . /rig/config

for m in $(cat /lib/modules/rig.order); do
    insmod "/lib/modules/$m.ko" || echo "rig: insmod $m failed"
done

cg=/sys/fs/cgroup
echo "+cpu +memory +io +pids" >"$cg/cgroup.subtree_control" || echo "rig: subtree_control failed"
mkdir -p "$cg/burn" "$cg/idle"
# `( echo $$ > ... )` would move this shell, not the subshell (busybox $$ is the parent's pid):
# each workload is its own `sh -c` that moves itself, then loops or execs.
sh -c "echo \$\$ >$cg/burn/cgroup.procs; while :; do :; done" &
burn=$!
sh -c "echo \$\$ >$cg/idle/cgroup.procs; exec sleep 100000" &
idle=$!
echo "rig: workloads started burn=$burn idle=$idle"

stop_agent() {
    echo "rig: $1, stopping the agent"
    kill -TERM "$agent" 2>/dev/null
    sleep "$RIG_STOP_GRACE_SECONDS"
    kill -KILL "$agent" 2>/dev/null
}
if [ -x /rig/agent.sh ]; then
    /rig/agent.sh </dev/null &
    agent=$!
    echo "rig: agent started pid=$agent run_seconds=$RIG_RUN_SECONDS stop_port=$RIG_STOP_PORT"
    # Two ways to end the run: the host connects to the stop port (it has seen enough), or the
    # run time is over (an upper bound when nobody asks).
    (/bin/vsock-hello --wait-stop "$RIG_STOP_PORT" >/dev/null && stop_agent "stop requested by the host") &
    stopper=$!
    (sleep "$RIG_RUN_SECONDS" && stop_agent "run time over") &
    timer=$!
    wait "$agent"
    echo "rig: agent exited status=$?"
    kill "$stopper" "$timer" 2>/dev/null
else
    echo "rig: no agent, idling for $RIG_RUN_SECONDS s"
    sleep "$RIG_RUN_SECONDS"
fi

kill "$burn" "$idle" 2>/dev/null
for c in burn idle; do
    echo "rig: cpu.stat $c $(tr '\n' ' ' <"$cg/$c/cpu.stat")"
done
echo "rig: proc.stat $(head -n 1 /proc/stat)"
echo "rig: poweroff"
sync
poweroff -f
