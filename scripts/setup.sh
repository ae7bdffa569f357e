#!/usr/bin/env bash
# Installs everything the demo and the tests need on a Debian 12 machine, as root.
# Idempotent and quick on a second run: each step is skipped when its result exists.
#
#   system packages   Podman + runc (the container runtime), debootstrap (builds the
#                     workspace image: no registry is reachable here), PostgreSQL,
#                     Chromium (browser tests), busybox-static (a second root fs for the
#                     in-workspace tool), git, wrk (the intake benchmark's load,
#                     so that `make bench` works on a fresh machine too).
#   .venv/            the bot and its test dependencies (pip install -e '.[test]').
#   node_modules/     xterm.js for the browser terminal, from npm.
#   build/rootfs.tar  a minimal Debian root filesystem, imported into Podman as the
#                     default workspace image by the test fixtures and the demo.
#   build/python-rootfs.tar, build/wheels/
#                     Debian with python3 and git, and the bot's runtime dependencies
#                     as wheels: the base image and the packages of the offline build
#                     of the bot's own image (tests/test_image.py).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(podman runc catatonit debootstrap postgresql chromium busybox-static git tini
  wrk)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ] || [ pyproject.toml -nt .venv/.installed ]; then
  echo "setup: python environment"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch .venv/.installed
fi

if [ ! -d node_modules/@xterm/xterm ] || [ package.json -nt node_modules/.installed ]; then
  echo "setup: npm packages"
  npm ci --no-audit --no-fund --loglevel=error
  touch node_modules/.installed
fi

# Wheels of what the image installs (pip download: pip wheel would also build the
# bot itself into build/).
if [ ! -f build/wheels/.complete ] || [ pyproject.toml -nt build/wheels/.complete ]; then
  echo "setup: wheels of the bot's dependencies (about 4 s)"
  rm -rf build/wheels
  .venv/bin/pip download -q --only-binary=:all: -d build/wheels . 'setuptools>=68'
  touch build/wheels/.complete
fi

# A minimal Debian root filesystem with extra packages, as a tarball for podman import.
rootfs_tar() {
  local tar=$1 packages=$2 dir=${1%.tar}
  local mirror
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  rm -rf "$dir"
  mkdir -p build
  debootstrap --variant=minbase --include="$packages" bookworm "$dir" "$mirror" \
    >"$dir.log"
  tar -C "$dir" --exclude='./var/cache/apt/archives/*.deb' \
    --exclude='./var/lib/apt/lists/*' -cf "$tar.tmp" .
  mv "$tar.tmp" "$tar"
  rm -rf "$dir"
}

if [ ! -s build/rootfs.tar ]; then
  echo "setup: workspace root filesystem (debootstrap, about 30 s)"
  rootfs_tar build/rootfs.tar git,tini,ca-certificates,less,procps
fi

# What this adds to a fresh run, measured on a shared 2-core machine: 56-66 s here
# and 4 s for the wheels. Side by side with the workspace debootstrap it was no
# faster (121 s for both, under load): dpkg keeps each close to one core busy.
if [ ! -s build/python-rootfs.tar ]; then
  echo "setup: python root filesystem for the bot's image (debootstrap, about 60 s)"
  rootfs_tar build/python-rootfs.tar python3,python3-venv,git,ca-certificates
fi
