#!/usr/bin/env bash
# Build the FedFace base image (Debian bookworm + python3) without any
# container registry: debootstrap a minimal rootfs from the Debian mirror and
# `podman import` it as localhost/fedface-base:bookworm.
#
# The rootfs tarball is cached OUTSIDE the clone (FEDFACE_BASE_CACHE, default
# /var/cache/fedface/base) and reused, so only the first run hits the mirror.
#
# Env:
#   FEDFACE_BASE_CACHE   cache dir (default /var/cache/fedface/base)
#   FEDFACE_BASE_IMAGE   image name (default localhost/fedface-base:bookworm)
#   DEBIAN_MIRROR        mirror URL (default: first URI in the host's apt sources, else deb.debian.org)
#   DEBIAN_SECURITY_MIRROR  security archive (default: <mirror host>/debian-security)
#   PODMAN               podman command incl. global flags (default: "podman")
#   FORCE_REBUILD=1      re-debootstrap even when the cached tarball exists
set -euo pipefail

CACHE="${FEDFACE_BASE_CACHE:-/var/cache/fedface/base}"
IMAGE="${FEDFACE_BASE_IMAGE:-localhost/fedface-base:bookworm}"
PODMAN="${PODMAN:-podman}"
SUITE=bookworm
# Bump when the recipe below changes: a cached rootfs or an imported image of
# another recipe is then rebuilt instead of silently reused.
RECIPE=3
TARBALL="$CACHE/rootfs-$SUITE-r$RECIPE.tar"

log() { printf '[build-base] %s\n' "$*" >&2; }

default_mirror() {
    # Use the same mirror apt already uses on this host (it may be the only one reachable).
    local uri
    uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null \
        | grep -v security | head -n1 | awk '{ print $2 }')
    echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR="${DEBIAN_MIRROR:-$(default_mirror)}"

need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2 (needs apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

# The image already exists, made by this recipe: nothing to do.
if [[ "${FORCE_REBUILD:-0}" != 1 ]] && $PODMAN image exists "$IMAGE" 2>/dev/null \
    && [[ "$($PODMAN image inspect --format '{{index .Config.Labels "org.fedface.base-recipe"}}' "$IMAGE")" == "$RECIPE" ]]; then
    log "$IMAGE already present (recipe $RECIPE)"
    exit 0
fi

if [[ "${FORCE_REBUILD:-0}" == 1 || ! -s "$TARBALL" ]]; then
    need debootstrap debootstrap
    mkdir -p "$CACHE"
    work=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    # mktemp makes it 0700, and this directory becomes the image's "/": a
    # non-root user could then not reach any file in the container.
    chmod 0755 "$work"
    trap 'rm -rf "$work"' EXIT
    log "debootstrapping $SUITE from $MIRROR into $work (a few minutes, once)"
    # minbase keeps the image small; python3-venv gives ensurepip/venv for the
    # multi-stage build; ca-certificates so the agent can talk TLS.
    nice debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$work" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { log "debootstrap failed, see $CACHE/debootstrap.log"; tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
    # debootstrap installs the release as it was; bring in bookworm-updates and
    # the security archive too, so the base starts without known-fixed CVEs.
    security_mirror="${DEBIAN_SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}"
    cat >"$work/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $security_mirror $SUITE-security main
SOURCES
    log "applying $SUITE-updates and $SUITE-security"
    { chroot "$work" apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive chroot "$work" apt-get -y -qq upgrade \
        && chroot "$work" apt-get clean; } >>"$CACHE/debootstrap.log" 2>&1 \
        || { log "apt upgrade in the new rootfs failed, see $CACHE/debootstrap.log"; exit 1; }
    # Drop what a container never needs: apt lists and caches, docs, man pages.
    rm -rf "$work"/var/lib/apt/lists/* "$work"/var/cache/apt/*.bin "$work"/var/cache/apt/archives/*.deb \
        "$work"/usr/share/doc/* "$work"/usr/share/man/* "$work"/usr/share/info/*
    tar --numeric-owner -C "$work" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$work"
    trap - EXIT
    log "cached rootfs at $TARBALL ($(du -h "$TARBALL" | cut -f1))"
else
    log "reusing cached rootfs $TARBALL"
fi

$PODMAN import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL org.fedface.base-recipe=$RECIPE" \
    "$TARBALL" "$IMAGE" >/dev/null
log "imported $IMAGE"
