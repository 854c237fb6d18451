#!/usr/bin/env bash
# Build the container images the Docker tests use, without any image registry.
#
#   joulebridge-test/busybox:latest   FROM scratch + Debian's statically linked busybox,
#                                     in the Docker engine and (for the Podman test) in Podman.
#
# Used as a CPU burner:   docker run joulebridge-test/busybox sh -c 'while :; do :; done'
# and as an idle process: docker run joulebridge-test/busybox sleep 3600
#
# Needs busybox-static and, for the Podman image, podman (scripts/setup-test-env.sh installs both).
# Usage: scripts/build-test-images.sh [--force]
set -euo pipefail

IMAGE="joulebridge-test/busybox:latest"
BUSYBOX="/bin/busybox"
force=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "build-test-images.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

if ! command -v docker >/dev/null 2>&1; then
    echo "build-test-images.sh: docker CLI not found" >&2
    exit 1
fi

is_static() { file -L "$1" 2>/dev/null | grep -q 'statically linked'; }

if [[ ! -x $BUSYBOX ]] || ! is_static "$BUSYBOX"; then
    echo "build-test-images.sh: need a statically linked $BUSYBOX (Debian package busybox-static; scripts/setup-test-env.sh installs it)" >&2
    exit 1
fi

ctx="$(mktemp -d)"
log="$(mktemp)"
trap 'rm -rf "$ctx" "$log"' EXIT
cp "$BUSYBOX" "$ctx/busybox"
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
# Applets are resolved by argv[0]; `busybox sh` also runs applets by name inside scripts.
ENTRYPOINT ["/bin/busybox"]
CMD ["sleep", "3600"]
DOCKERFILE

# Builds the image with one engine's CLI ($1: docker or podman) unless it is there already.
build_with() {
    local cli="$1"
    if [[ $force -eq 0 ]] && "$cli" image inspect "$IMAGE" >/dev/null 2>&1; then
        echo "build-test-images.sh: $IMAGE already present in $cli (use --force to rebuild)"
        return 0
    fi
    if ! "$cli" build --tag "$IMAGE" "$ctx" >"$log" 2>&1; then
        cat "$log" >&2
        echo "build-test-images.sh: $cli build failed" >&2
        exit 1
    fi
    echo "build-test-images.sh: built $IMAGE with $cli"
}

build_with docker
if command -v podman >/dev/null 2>&1; then
    build_with podman
else
    echo "build-test-images.sh: podman not installed; the Podman test will fail (scripts/setup-test-env.sh installs it)" >&2
fi
