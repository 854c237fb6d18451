#!/usr/bin/env bash
# Set up the QEMU + vhost-device-vsock test rig (see scripts/vm/README.md). Idempotent: a second run
# only checks what is already there and takes well under a second.
#
#   scripts/vm/setup-rig.sh            # install/cached setup, prints the rig env file path
#
# What it does:
#   1. Debian packages qemu-system-x86 (from the suite of the machine's qemu-utils, see
#      install_qemu), busybox-static, cpio, gcc, libc6-dev (apt-get update only when an install
#      fails because the package lists are missing or stale).
#   2. The guest kernel: the package linux-image-cloud-amd64 depends on (resolved each run with
#      apt-cache depends, because its ABI name changes with every Debian kernel update), fetched
#      with apt-get download and unpacked with dpkg -x under the cache dir. /boot is never touched.
#   3. vhost-device-vsock 0.3.0 from crates.io with cargo install --locked, into the cache dir.
#   4. Writes <cache>/rig.env with the paths the other rig scripts source.
#
# Cache dir: $JB_VM_RIG_CACHE, default <repo>/target/vm-rig-cache.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${JB_VM_RIG_CACHE:-$repo_root/target/vm-rig-cache}
vhost_version=0.3.0
apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)

log() { printf 'setup-rig: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# True when the ELF file asks for a program interpreter (ld.so), i.e. needs a libc at run time.
# (`ldd` is no test: it exits 0 on static-pie binaries.)
is_dynamic() { LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'program interpreter'; }

[[ $(uname -s) == Linux ]] || die "the rig needs a Linux host"
[[ $(uname -m) == x86_64 ]] || die "the rig is written for x86_64 hosts (got $(uname -m))"

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo -n "$@"; fi
}

# --- 1. Debian packages -------------------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
apt_install() {
    if ! as_root apt-get "${apt_opts[@]}" install -y --no-install-recommends "$@"; then
        log "install failed; refreshing package lists once and retrying"
        as_root apt-get "${apt_opts[@]}" update
        as_root apt-get "${apt_opts[@]}" install -y --no-install-recommends "$@"
    fi
}

# QEMU must come from the same Debian suite as the qemu-utils already on the machine. Machines of
# the CI's kind ship qemu-utils from <codename>-backports (10.x), which declares
# `Breaks: qemu-system-common (<< 1:8.0)`: bookworm's own qemu-system-x86 (7.2) cannot be
# installed beside it, and apt would rather remove qemu-utils. We leave the machine's qemu-utils
# alone and take qemu-system-x86 from that backports suite too (apt's default pin keeps every
# other package on the main suite). Without a backports qemu-utils, the main suite's QEMU is used.
install_qemu() {
    local utils_version codename mirror
    utils_version=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [[ $utils_version != *bpo* ]]; then
        apt_install qemu-system-x86
        return
    fi
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "qemu-utils $utils_version is from backports, but /etc/os-release names no codename"
    if ! apt-cache policy 2>/dev/null | grep -q " $codename-backports/main "; then
        # The mirror the machine already uses for its main suite.
        mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null |
            awk -v r="$codename" '$2 == r { print $1; exit }')
        [[ -n $mirror ]] || die "cannot find the Debian mirror for $codename to add $codename-backports"
        log "qemu-utils $utils_version is from $codename-backports: adding that suite for QEMU"
        printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$mirror" "$codename" | as_root tee /etc/apt/sources.list.d/joulebridge-backports.sources >/dev/null
        as_root apt-get "${apt_opts[@]}" update
    fi
    log "installing qemu-system-x86 and qemu-utils from $codename-backports (matched versions)"
    as_root apt-get "${apt_opts[@]}" install -y --no-install-recommends -t "$codename-backports" \
        qemu-system-x86 qemu-utils
}

command -v qemu-system-x86_64 >/dev/null || install_qemu
missing=()
[[ -x /bin/busybox ]] && /bin/busybox --list 2>/dev/null | grep -qx insmod || missing+=(busybox-static)
command -v cpio >/dev/null || missing+=(cpio)
# gcc + libc6-dev (libc.a): the guest's static vsock helper is built from scripts/vm/probe.
command -v gcc >/dev/null || missing+=(gcc)
[[ -f /usr/lib/x86_64-linux-gnu/libc.a ]] || missing+=(libc6-dev)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
fi
# busybox-static ships a static /bin/busybox; the dynamic `busybox` package would not run in the
# guest, which has no libc.
file_out=$(LC_ALL=C od -An -c -N4 /bin/busybox | tr -d ' ')
[[ $file_out == 177ELF ]] || die "/bin/busybox is not an ELF binary"
if is_dynamic /bin/busybox; then
    die "/bin/busybox is dynamically linked; install busybox-static"
fi

# --- 2. guest kernel ----------------------------------------------------------------------------
resolve_kernel_pkg() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
kernel_pkg=$(resolve_kernel_pkg || true)
if [[ -z $kernel_pkg ]]; then
    log "apt-cache does not know linux-image-cloud-amd64; refreshing package lists"
    as_root apt-get "${apt_opts[@]}" update
    kernel_pkg=$(resolve_kernel_pkg || true)
fi
[[ -n $kernel_pkg ]] || die "cannot resolve the package linux-image-cloud-amd64 depends on"
kernel_dir=$cache/kernel/$kernel_pkg
if [[ ! -f $kernel_dir/.complete ]]; then
    log "fetching $kernel_pkg"
    rm -rf "$kernel_dir"
    mkdir -p "$kernel_dir/deb"
    # apt-get download drops privileges to _apt, which cannot write into a root-owned dir: make
    # the download dir world-writable for the duration (it is ours alone).
    chmod 0777 "$kernel_dir/deb"
    if ! (cd "$kernel_dir/deb" && apt-get "${apt_opts[@]}" download "$kernel_pkg"); then
        log "download failed (stale package lists?); refreshing and retrying"
        as_root apt-get "${apt_opts[@]}" update
        kernel_pkg=$(resolve_kernel_pkg)
        kernel_dir=$cache/kernel/$kernel_pkg
        rm -rf "$kernel_dir"
        mkdir -p "$kernel_dir/deb"
        chmod 0777 "$kernel_dir/deb"
        (cd "$kernel_dir/deb" && apt-get "${apt_opts[@]}" download "$kernel_pkg")
    fi
    chmod 0755 "$kernel_dir/deb"
    deb=$(find "$kernel_dir/deb" -maxdepth 1 -name '*.deb' -print -quit)
    [[ -n $deb ]] || die "apt-get download produced no .deb for $kernel_pkg"
    dpkg -x "$deb" "$kernel_dir/root"
    rm -f "$deb"
    touch "$kernel_dir/.complete"
fi
vmlinuz=$(find "$kernel_dir/root/boot" -maxdepth 1 -name 'vmlinuz-*' -print -quit)
[[ -n $vmlinuz ]] || die "no vmlinuz in $kernel_pkg"
kver=${vmlinuz##*/vmlinuz-}
moddir=$kernel_dir/root/lib/modules/$kver
[[ -d $moddir ]] || die "no modules dir $moddir"

# --- 3. vhost-device-vsock ----------------------------------------------------------------------
vhost_root=$cache/vhost
vhost_bin=$vhost_root/bin/vhost-device-vsock
if [[ ! -x $vhost_bin ]] || [[ $(cat "$vhost_root/.version" 2>/dev/null) != "$vhost_version" ]]; then
    command -v cargo >/dev/null || die "cargo is needed to build vhost-device-vsock"
    log "building vhost-device-vsock $vhost_version (once; about a minute on 2 cores)"
    cargo install --locked "vhost-device-vsock@$vhost_version" --root "$vhost_root" --force
    echo "$vhost_version" >"$vhost_root/.version"
fi

# --- 4. env file --------------------------------------------------------------------------------
env_file=$cache/rig.env
tmp_env=$(mktemp "$cache/rig.env.XXXXXX")
{
    printf 'JB_RIG_CACHE=%q\n' "$cache"
    printf 'JB_RIG_KERNEL_PKG=%q\n' "$kernel_pkg"
    printf 'JB_RIG_KERNEL=%q\n' "$vmlinuz"
    printf 'JB_RIG_KERNEL_VERSION=%q\n' "$kver"
    printf 'JB_RIG_MODULES=%q\n' "$moddir"
    printf 'JB_RIG_BUSYBOX=%q\n' /bin/busybox
    printf 'JB_RIG_QEMU=%q\n' "$(command -v qemu-system-x86_64)"
    printf 'JB_RIG_VHOST_DEVICE_VSOCK=%q\n' "$vhost_bin"
} >"$tmp_env"
mv -f "$tmp_env" "$env_file"
log "ready: kernel $kver, $("$vhost_bin" --version 2>/dev/null || echo vhost-device-vsock)"
echo "$env_file"
