#!/usr/bin/env bash
# `npm start`: the main job for now — add a 1 GiB null device with ublkctl
# and list the host's ublk devices. Without ublk in the kernel, say so and
# show how to see the same thing in the bundled VM.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -e /dev/ublk-control ]; then
  echo "This kernel has no ublk driver (/dev/ublk-control is missing; needs CONFIG_BLK_DEV_UBLK, modprobe ublk_drv)." >&2
  echo "To see ublk-ts work anyway, run the same job in the bundled qemu VM (Linux 6.12):" >&2
  echo "    npm run vm -- npm start" >&2
  exit 2
fi

node dist/src/cli/ublkctl.js add -t null --size 1GiB
node dist/src/cli/ublkctl.js list
echo "Remove it with: node dist/src/cli/ublkctl.js del <ID>   (or npx ublkctl del <ID>)"
