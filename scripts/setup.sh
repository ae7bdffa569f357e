#!/usr/bin/env bash
# Installs everything the demo and the tests need on a Debian 12 machine, as root.
# Idempotent and quick on a second run: each step is skipped when its result exists.
#
#   system packages   Podman + runc (the container runtime), debootstrap (builds the
#                     workspace image: no registry is reachable here), PostgreSQL,
#                     Chromium (browser tests), busybox-static (a second root fs for the
#                     in-workspace tool), git.
#   .venv/            the bot and its test dependencies (pip install -e '.[test]').
#   node_modules/     xterm.js for the browser terminal, from npm.
#   build/rootfs.tar  a minimal Debian root filesystem, imported into Podman as the
#                     default workspace image by the test fixtures and the demo.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(podman runc catatonit debootstrap postgresql chromium busybox-static git tini)
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

if [ ! -s build/rootfs.tar ]; then
  echo "setup: workspace root filesystem (debootstrap, about 30 s)"
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  rm -rf build/rootfs
  mkdir -p build
  debootstrap --variant=minbase --include=git,tini,ca-certificates,less,procps \
    bookworm build/rootfs "$mirror" >build/debootstrap.log
  tar -C build/rootfs --exclude='./var/cache/apt/archives/*.deb' \
    --exclude='./var/lib/apt/lists/*' -cf build/rootfs.tar.tmp .
  mv build/rootfs.tar.tmp build/rootfs.tar
  rm -rf build/rootfs
fi
