#!/usr/bin/env bash
# Make the Dockerfile's base image `debian:bookworm-slim` without any registry: debootstrap a minbase
# bookworm from the Debian mirror and `docker import` it. The tarball is cached, so only the first run
# pays for debootstrap (~50 s); later runs import it in seconds, or do nothing when the image exists.
#   deploy/docker/base-image.sh [--force]
set -euo pipefail
image=${COUNCIL_BASE_IMAGE:-debian:bookworm-slim}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${COUNCIL_DOCKER_CACHE:-$HOME/.cache/council/docker}
tarball=$cache/bookworm-minbase.tar.gz
docker=${DOCKER:-docker}

if [ "${1:-}" != --force ] && $docker image inspect "$image" >/dev/null 2>&1; then
  exit 0  # pulled from a registry, or imported before
fi
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || { echo "error: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  echo "==> debootstrap --variant=minbase bookworm ($mirror)"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  # What debian:bookworm-slim trims: apt caches and lists, docs are kept (small).
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" --numeric-owner -czf "$tarball.partial" .
  mv "$tarball.partial" "$tarball"
fi
echo "==> docker import $tarball as $image"
$docker import --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  "$tarball" "$image" >/dev/null
