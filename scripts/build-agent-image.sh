#!/usr/bin/env bash
# Build the joulebridge guest-agent container image: a static musl binary in a FROM scratch image.
#
# Default (CI, no registry): build the binary on this host with cargo, then wrap it using
# guest-agent/Dockerfile.prebuilt in a context holding only that binary.
#   scripts/build-agent-image.sh                       # host architecture
#   scripts/build-agent-image.sh --arch arm64          # cross: rustup target + rust-lld
# With registry access (a Mac with Docker Desktop), the full multi-stage build instead:
#   scripts/build-agent-image.sh --multi-stage         # guest-agent/Dockerfile (rust:alpine)
#
# Options:
#   --tag TAG        image tag (default joulebridge/guest-agent:dev)
#   --arch ARCH      amd64 or arm64 (default: this machine's)
#   --multi-stage    build inside Docker with guest-agent/Dockerfile (needs a registry)
#   --print-binary   only build the binary and print its path
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tag="joulebridge/guest-agent:dev"
arch=""
multi_stage=0
print_binary=0

die() { echo "build-agent-image.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
        --arch) arch="${2:?--arch needs a value}"; shift 2 ;;
        --multi-stage) multi_stage=1; shift ;;
        --print-binary) print_binary=1; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "build-agent-image.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

host_arch() {
    case "$(uname -m)" in
        x86_64|amd64) echo amd64 ;;
        aarch64|arm64) echo arm64 ;;
        *) uname -m ;;
    esac
}
arch="${arch:-$(host_arch)}"
case "$arch" in
    amd64) target=x86_64-unknown-linux-musl ;;
    arm64) target=aarch64-unknown-linux-musl ;;
    *) die "unsupported --arch $arch (amd64 or arm64)" ;;
esac

if [[ $multi_stage -eq 1 ]]; then
    command -v docker >/dev/null || die "docker CLI not found"
    if docker buildx version >/dev/null 2>&1; then
        docker buildx build --load --platform "linux/$arch" -f "$root/guest-agent/Dockerfile" -t "$tag" "$root"
    else
        [[ $arch == "$(host_arch)" ]] || die "cross-architecture multi-stage builds need docker buildx"
        docker build -f "$root/guest-agent/Dockerfile" --build-arg "TARGETARCH=$arch" -t "$tag" "$root"
    fi
    echo "build-agent-image.sh: built $tag (multi-stage, linux/$arch)"
    exit 0
fi

command -v cargo >/dev/null || die "cargo not found"
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    rustup target add "$target" || die "cannot install the $target target (rustup target add $target)"
fi
if [[ $arch != "$(host_arch)" ]]; then
    # No cross C toolchain needed: the agent is pure Rust, rust-lld links the musl target.
    env_name="CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_LINKER"
    export "$env_name"="${!env_name:-rust-lld}"
fi
(cd "$root" && cargo build --locked --release -p guest-agent --target "$target")
binary="$root/target/$target/release/guest-agent"
[[ -x $binary ]] || die "cargo did not produce $binary"
if command -v readelf >/dev/null && readelf -l "$binary" | grep -q INTERP; then
    die "$binary is dynamically linked; a FROM scratch image needs a static binary"
fi
if [[ $print_binary -eq 1 ]]; then
    echo "$binary"
    exit 0
fi

command -v docker >/dev/null || die "docker CLI not found"
ctx="$(mktemp -d)"
log="$(mktemp)"
trap 'rm -rf "$ctx" "$log"' EXIT
# Drop debug info (the release profile keeps it for profiling): ~44 MB → a few MB.
objcopy_bin="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/rust-objcopy"
if [[ $arch == "$(host_arch)" ]] && command -v strip >/dev/null \
        && strip --strip-debug -o "$ctx/guest-agent" "$binary" 2>/dev/null; then
    :
elif [[ -x $objcopy_bin ]] && "$objcopy_bin" --strip-debug "$binary" "$ctx/guest-agent" 2>/dev/null; then
    :
else
    cp "$binary" "$ctx/guest-agent"
fi
cp "$root/guest-agent/Dockerfile.prebuilt" "$ctx/Dockerfile"
platform=()
if [[ $arch != "$(host_arch)" ]]; then
    platform=(--platform "linux/$arch")
fi
if ! docker build "${platform[@]}" -t "$tag" "$ctx" >"$log" 2>&1; then
    cat "$log" >&2
    die "docker build failed"
fi
echo "build-agent-image.sh: built $tag (linux/$arch, $(du -h "$ctx/guest-agent" | cut -f1) binary)"
