#!/usr/bin/env bash
# Build the guest agent as a static x86_64 binary for the rig's guest (which has no libc) and print
# its path on stdout.
#
#   scripts/vm/build-agent.sh [--source <workspace dir>]
#
# x86_64-unknown-linux-musl when that target is installed, else the gnu target with
# `-C target-feature=+crt-static`. Its own target dir (target/vm-agent-target): a cargo build run
# from inside `cargo test` must not wait on the outer cargo's lock on target/debug. Dev profile
# without debug info: fast to build, small enough to pack into an initramfs in well under a second.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source_dir=$(cd "$here/../.." && pwd)
target_dir=''
while (($#)); do
    case $1 in
    --source) source_dir=$(cd "$2" && pwd); shift 2 ;;
    --target-dir) target_dir=$2; shift 2 ;;
    *) printf 'build-agent: unknown argument %s\n' "$1" >&2; exit 2 ;;
    esac
done
target_dir=${target_dir:-$source_dir/target/vm-agent-target}
cargo=${CARGO:-cargo}

export CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_DEV_STRIP=symbols
if rustc --print target-list >/dev/null 2>&1 &&
    rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    triple=x86_64-unknown-linux-musl
    (cd "$source_dir" && "$cargo" build -p guest-agent --target "$triple" --target-dir "$target_dir" >&2)
else
    triple=x86_64-unknown-linux-gnu
    (cd "$source_dir" && RUSTFLAGS="-C target-feature=+crt-static" \
        "$cargo" build -p guest-agent --target "$triple" --target-dir "$target_dir" >&2)
fi
bin=$target_dir/$triple/debug/guest-agent
[[ -x $bin ]] || { printf 'build-agent: no %s after the build\n' "$bin" >&2; exit 1; }
# True when the ELF file asks for a program interpreter (ld.so), i.e. needs a libc at run time.
# (`ldd` is no test: it exits 0 on static-pie binaries.)
is_dynamic() { LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'program interpreter'; }
if is_dynamic "$bin"; then
    printf 'build-agent: %s is dynamically linked\n' "$bin" >&2
    exit 1
fi
echo "$bin"
