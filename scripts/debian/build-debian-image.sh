#!/usr/bin/env bash
# shellcheck disable=SC2016  # $TERM is for the unit file, not for this shell
# Build a small Debian VM image with Docker and the joulebridge guest agent preinstalled (enabled
# as the systemd unit joulebridge-agent.service). Run by hand: it downloads ~300 MB and takes
# minutes, so CI does not run it.
#
#   scripts/debian/build-debian-image.sh --agent <static guest-agent> [--out <dir>]
#       [--suite bookworm] [--arch amd64|arm64] [--size 4G] [--mirror URL] [--no-docker]
#       [--preload-image <docker image>]... [--boot-script <script>] [--update]
#
# --update reuses <dir>/rootfs from an earlier run with the same suite, arch and packages (no
# debootstrap, no download): it reinstalls the agent, the unit and the options below, then
# rewrites the images. Useful after rebuilding the agent.
#
# --preload-image saves a local Docker image (`docker save`) into the VM, where a oneshot unit
# loads it once dockerd runs: the VM needs no registry. --boot-script installs a script that a
# oneshot unit runs after that on every boot (e.g. to start the containers of a measurement).
#
# Output in <dir> (default target/debian-vm): rootfs/ (kept for inspection), vmlinuz, initrd.img,
# debian.raw (ext4 file system, no partition table: boot it with an external kernel and
# root=/dev/vda), debian.qcow2, cmdline. Boot with scripts/debian/boot-qemu-linux.sh (Linux) or
# scripts/debian/boot-vfkit-macos.sh (macOS).
#
# Needs root (debootstrap, chroot). Nothing outside <dir> is written except packages installed on
# the build host (debootstrap, e2fsprogs, qemu-utils). --arch arm64 on an x86_64 host needs
# qemu-user-static with binfmt_misc (untested here).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)

usage() { awk 'NR > 1 && /^#/ { if (!/^# shellcheck/) { sub(/^# ?/, ""); print } next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }
log() { printf 'build-debian-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# True when the ELF file asks for a program interpreter (ld.so), i.e. needs a libc at run time.
# (`ldd` is no test: it exits 0 on static-pie binaries.)
is_dynamic() { LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'program interpreter'; }

agent='' out=$repo_root/target/debian-vm suite=bookworm arch=amd64 size=4G
mirror=http://deb.debian.org/debian docker=1 preload=() boot_script='' update=0
while (($#)); do
    case $1 in
    --agent) agent=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --suite) suite=$2; shift 2 ;;
    --arch) arch=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    --no-docker) docker=0; shift ;;
    --update) update=1; shift ;;
    --preload-image) preload+=("$2"); shift 2 ;;
    --boot-script) boot_script=$2; shift 2 ;;
    -h | --help) usage ;;
    *) die "unknown argument $1" ;;
    esac
done
[[ -n $agent ]] || usage
[[ -x $agent ]] || die "agent $agent is not an executable file"
[[ -z $boot_script || -f $boot_script ]] || die "no boot script $boot_script"
is_dynamic "$agent" && die "agent $agent is dynamically linked; build it for *-unknown-linux-musl"
[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap and chroot need it)"
case $arch in
amd64) kernel_pkg=linux-image-cloud-amd64 qemu_static='' ;;
arm64) kernel_pkg=linux-image-cloud-arm64 qemu_static=/usr/bin/qemu-aarch64-static ;;
*) die "--arch must be amd64 or arm64" ;;
esac
host_arch=$(dpkg --print-architecture)
foreign=0
if [[ $arch != "$host_arch" ]]; then
    foreign=1
    [[ -x $qemu_static ]] || die "building $arch on $host_arch needs $qemu_static (qemu-user-static)"
fi

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v qemu-img >/dev/null || need+=(qemu-utils)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y \
        --no-install-recommends "${need[@]}"
fi

rootfs=$out/rootfs
mkdir -p "$out"
include=systemd-sysv,udev,dbus,$kernel_pkg,initramfs-tools,iproute2,ca-certificates,less,procps
# apparmor: Debian kernels enable AppArmor, and dockerd refuses to start containers without
# apparmor_parser to load its docker-default profile.
((docker)) && include+=,docker.io,apparmor
# --update reuses a rootfs debootstrapped with the same suite, arch and package list.
reuse_ok=0
[[ $(cat "$rootfs/.joulebridge-debootstrap" 2>/dev/null) == "$suite $arch $include" ]] && reuse_ok=1
if ((update)) && ! ((reuse_ok)); then log "--update: no matching rootfs to reuse, building from scratch"; fi
for m in proc sys dev/pts dev; do
    if mountpoint -q "$rootfs/$m" 2>/dev/null; then umount "$rootfs/$m"; fi
done
if [[ -d $rootfs ]] && ! ((update && reuse_ok)); then
    log "removing the previous $rootfs"
    rm -rf "$rootfs"
fi

start=$(date +%s)
stamp="$suite $arch $include"
if [[ -d $rootfs ]]; then
    log "--update: reusing $rootfs (debootstrap skipped)"
else
    log "debootstrap $suite/$arch into $rootfs"
    if ((foreign)); then
        debootstrap --arch="$arch" --variant=minbase --include="$include" --foreign "$suite" "$rootfs" "$mirror"
        install -m 0755 "$qemu_static" "$rootfs$qemu_static"
        chroot "$rootfs" /debootstrap/debootstrap --second-stage
    else
        debootstrap --arch="$arch" --variant=minbase --include="$include" "$suite" "$rootfs" "$mirror"
    fi
    echo "$stamp" >"$rootfs/.joulebridge-debootstrap"
fi

# --- configuration ------------------------------------------------------------------------------
echo joulebridge-vm >"$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 joulebridge-vm\n' >"$rootfs/etc/hosts"
printf '/dev/vda / ext4 defaults,errors=remount-ro 0 1\n' >"$rootfs/etc/fstab"
mkdir -p "$rootfs/etc/systemd/network"
printf '[Match]\nName=en*\n\n[Network]\nDHCP=yes\n' >"$rootfs/etc/systemd/network/80-dhcp.network"
systemctl --root="$rootfs" enable systemd-networkd.service
# vsock: the virtio transport is autoloaded from the device's modalias; list it anyway so the
# agent never races module loading.
printf 'vsock\nvmw_vsock_virtio_transport\n' >"$rootfs/etc/modules-load.d/joulebridge.conf"
# A throwaway test VM: root without password on the serial console.
chroot "$rootfs" passwd -d root >/dev/null
mkdir -p "$rootfs/etc/systemd/system/serial-getty@.service.d"
printf '[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %%I $TERM\n' \
    >"$rootfs/etc/systemd/system/serial-getty@.service.d/autologin.conf"

install -D -m 0755 "$agent" "$rootfs/usr/local/bin/guest-agent"
install -D -m 0644 "$here/joulebridge-agent.service" "$rootfs/etc/systemd/system/joulebridge-agent.service"
printf '# Where the agent sends its stream; see joulebridge-agent.service.\nJOULEBRIDGE_CONNECT=vsock://2:7777\nJOULEBRIDGE_ARGS=\n' \
    >"$rootfs/etc/default/joulebridge-agent"
[[ -f $repo_root/linuxkit/README.md ]] &&
    install -D -m 0644 "$repo_root/linuxkit/README.md" "$rootfs/usr/local/share/doc/joulebridge/README.md"
systemctl --root="$rootfs" enable joulebridge-agent.service
((docker)) && systemctl --root="$rootfs" enable docker.service
# Start from a clean slate for the optional units (an --update may drop them).
for unit in joulebridge-preload-images.service joulebridge-boot-script.service; do
    if [[ -f $rootfs/etc/systemd/system/$unit ]]; then
        systemctl --root="$rootfs" disable "$unit" >/dev/null 2>&1 || true
        rm -f "$rootfs/etc/systemd/system/$unit"
    fi
done
rm -rf "$rootfs/var/lib/joulebridge/images" "$rootfs/usr/local/sbin/joulebridge-boot-script"
if ((${#preload[@]})); then
    ((docker)) || die "--preload-image needs Docker in the image"
    mkdir -p "$rootfs/var/lib/joulebridge/images"
    for image in "${preload[@]}"; do
        docker save "$image" -o "$rootfs/var/lib/joulebridge/images/$(echo "$image" | tr '/:' '__').tar"
    done
    cat >"$rootfs/etc/systemd/system/joulebridge-preload-images.service" <<'UNIT'
[Unit]
Description=Load the Docker images baked into this VM (no registry needed)
After=docker.service
Requires=docker.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for t in /var/lib/joulebridge/images/*.tar; do docker load -i "$t"; done'

[Install]
WantedBy=multi-user.target
UNIT
    systemctl --root="$rootfs" enable joulebridge-preload-images.service
fi
if [[ -n $boot_script ]]; then
    install -D -m 0755 "$boot_script" "$rootfs/usr/local/sbin/joulebridge-boot-script"
    cat >"$rootfs/etc/systemd/system/joulebridge-boot-script.service" <<'UNIT'
[Unit]
Description=Run the image's boot script (scripts/debian/build-debian-image.sh --boot-script)
After=docker.service joulebridge-preload-images.service joulebridge-agent.service
Wants=joulebridge-preload-images.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/joulebridge-boot-script
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
UNIT
    systemctl --root="$rootfs" enable joulebridge-boot-script.service
fi

# The initramfs must find the root disk on virtio.
for m in virtio_pci virtio_blk ext4; do
    grep -qx "$m" "$rootfs/etc/initramfs-tools/modules" || echo "$m" >>"$rootfs/etc/initramfs-tools/modules"
done
mount --bind /proc "$rootfs/proc"
mount --bind /sys "$rootfs/sys"
mount --bind /dev "$rootfs/dev"
trap 'for m in dev sys proc; do mountpoint -q "$rootfs/$m" && umount "$rootfs/$m"; done' EXIT
chroot "$rootfs" update-initramfs -u -k all
chroot "$rootfs" apt-get clean
for m in dev sys proc; do umount "$rootfs/$m"; done
trap - EXIT
((foreign)) && rm -f "$rootfs$qemu_static"

# --- boot files and images ----------------------------------------------------------------------
vmlinuz=$(find "$rootfs/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n 1)
initrd=$(find "$rootfs/boot" -maxdepth 1 -name 'initrd.img-*' | sort -V | tail -n 1)
[[ -n $vmlinuz && -n $initrd ]] || die "no kernel or initrd in $rootfs/boot"
cp "$vmlinuz" "$out/vmlinuz"
cp "$initrd" "$out/initrd.img"
case $arch in
amd64) console=ttyS0 ;;
arm64) console=hvc0 ;;
esac
echo "root=/dev/vda rw console=$console" >"$out/cmdline"

log "creating $out/debian.raw ($size ext4, populated from the rootfs without mounting)"
rm -f "$out/debian.raw" "$out/debian.qcow2"
mke2fs -q -t ext4 -L joulebridge-root -d "$rootfs" "$out/debian.raw" "$size"
qemu-img convert -O qcow2 "$out/debian.raw" "$out/debian.qcow2"
end=$(date +%s)
log "done in $((end - start)) s: $(du -sh --apparent-size "$out/debian.raw" | cut -f1) raw" \
    "($(du -sh "$out/debian.raw" | cut -f1) on disk), $(du -sh "$out/debian.qcow2" | cut -f1) qcow2"
log "boot: scripts/debian/boot-qemu-linux.sh --image-dir $out"
