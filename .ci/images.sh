#!/usr/bin/env bash
# Builds, locally, the small images the Docker executor tests need (runner/tests/docker.rs).
# Nothing is pulled: CI machines may have a Docker engine but no registry. Idempotent: an image
# that already exists is left alone (FORCE=1 rebuilds it).
#
#   deploylite-test/busybox:latest  a rootfs with a static busybox and its applets (sh, sleep,
#                                   cat, echo, env, id, ls, ...), imported with `docker import`.
set -euo pipefail

IMAGE=deploylite-test/busybox:latest

if ! command -v docker >/dev/null 2>&1; then
  echo "error: the docker CLI is not installed; the Docker executor tests need a Docker engine" >&2
  exit 1
fi
if ! docker info >/dev/null 2>&1; then
  echo "error: cannot reach the Docker engine (DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock});" \
    "the Docker executor tests need a running engine" >&2
  exit 1
fi

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "images.sh: $IMAGE already present ($(docker image inspect -f '{{.Id}}' "$IMAGE"))"
  exit 0
fi

busybox=""
for candidate in /bin/busybox /usr/bin/busybox; do
  # Only a static busybox works in an otherwise empty rootfs.
  if [ -x "$candidate" ] && ! ldd "$candidate" >/dev/null 2>&1; then
    busybox=$candidate
    break
  fi
done
if [ -z "$busybox" ]; then
  echo "images.sh: installing busybox-static"
  if [ "$(id -u)" != 0 ]; then
    echo "error: busybox-static is missing and we are not root; install it (apt-get install busybox-static)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq busybox-static >/dev/null
  busybox=/bin/busybox
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/workspace" "$root/root" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"

echo "images.sh: building $IMAGE from $busybox ($("$root/bin/busybox" --list | wc -l) applets)"
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/sh"]' \
  - "$IMAGE" >/dev/null
echo "images.sh: built $IMAGE ($(docker image inspect -f '{{.Id}}' "$IMAGE"))"
