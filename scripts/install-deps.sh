#!/usr/bin/env bash
# Installs the Debian packages ublk-ts needs to build, run and test:
# liburing for the native addon, and qemu + busybox + fio for the
# end-to-end tests, which run in a VM on hosts whose kernel lacks ublk.
set -euo pipefail

packages=(
  # build: node-gyp toolchain and liburing (found with pkg-config)
  g++ make python3 pkg-config liburing-dev
  # end-to-end tests and benchmarks: the VM and the real tools used in it
  qemu-system-x86 busybox-static xz-utils fio e2fsprogs util-linux
  # lint: the C++ formatter (npm run lint)
  clang-format
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
