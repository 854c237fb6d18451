#!/usr/bin/env bash
# Remove the guest agent that scripts/inject-docker-desktop.sh started in Docker Desktop's VM.
#
# Usage: scripts/remove-docker-desktop.sh [--name NAME] [--image TAG] [--remove-image]
#   --name NAME      container name (default joulebridge-agent)
#   --image TAG      image to remove with --remove-image (default joulebridge/guest-agent:dev)
#   --remove-image   also delete the agent image
# Only a container carrying the label the inject script sets is removed.
set -euo pipefail

name="joulebridge-agent"
image="joulebridge/guest-agent:dev"
remove_image=0

die() { echo "remove-docker-desktop.sh: $*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --name) name="${2:?--name needs a value}"; shift 2 ;;
        --image) image="${2:?--image needs a value}"; shift 2 ;;
        --remove-image) remove_image=1; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "remove-docker-desktop.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

command -v docker >/dev/null || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is Docker Desktop running?)"

if docker container inspect "$name" >/dev/null 2>&1; then
    role="$(docker container inspect --format '{{index .Config.Labels "org.joulebridge.role"}}' "$name")"
    [[ $role == "guest-agent" ]] \
        || die "container '$name' was not created by inject-docker-desktop.sh; not removing it"
    docker rm -f "$name" >/dev/null
    echo "remove-docker-desktop.sh: removed container '$name'."
else
    echo "remove-docker-desktop.sh: no container named '$name'; nothing to remove."
fi

if [[ $remove_image -eq 1 ]]; then
    if docker image inspect "$image" >/dev/null 2>&1; then
        docker image rm "$image" >/dev/null
        echo "remove-docker-desktop.sh: removed image $image."
    else
        echo "remove-docker-desktop.sh: image $image not present."
    fi
fi
