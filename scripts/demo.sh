#!/usr/bin/env bash
# `npm run demo`: the main job on the shipped manifests — reconcile, list,
# put a file system on one device and read it back, then clean up. On a
# host without ublk it boots the bundled VM (Linux 6.12) and runs there.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -e /dev/ublk-control ]; then
  echo "demo: no ublk in this kernel; running the demo in the bundled qemu VM (Linux 6.12)"
  exec node dist/test/vm/cli.js --timeout 300 -- bash scripts/demo.sh
fi

work=$(mktemp -d /tmp/ublk-ts-demo.XXXXXX)
manifests="$work/ublk.d"
state="$work/state"
mkdir -p "$manifests" && chmod 755 "$manifests"
# The shipped manifests, with the loop device's backing file moved into the scratch folder.
for f in manifests/*.yaml; do
  sed "s#/var/lib/ublk/#$work/#" "$f" > "$manifests/$(basename "$f")"
  chmod 644 "$manifests/$(basename "$f")"
done

reconcile() { node dist/src/cli/ublk-reconcile.js --dir "$manifests" --state-dir "$state" "$@"; }
ublkctl() { node dist/src/cli/ublkctl.js "$@"; }

echo "== ublk-reconcile --plan"
reconcile --plan
echo "== ublk-reconcile --once"
reconcile --once
echo "== ublkctl list"
ublkctl list --state-dir "$state"

dev=$(ublkctl list --json --state-dir "$state" | node -e 'const d=JSON.parse(require("fs").readFileSync(0,"utf8")).find(x=>x.manifest==="memory-cache"); console.log(d.blockPath)')
echo "== ext4 on $dev (memory-cache)"
mkfs.ext4 -q -F "$dev"
mkdir -p "$work/mnt" && mount "$dev" "$work/mnt"
echo "hello from a ublk-ts device" > "$work/mnt/hello.txt"
umount "$work/mnt" && mount "$dev" "$work/mnt"
cat "$work/mnt/hello.txt"
umount "$work/mnt"
fsck.ext4 -fn "$dev" > /dev/null && echo "fsck: clean"

echo "== second pass: nothing to do"
reconcile --once
echo "== manifests removed: devices deleted"
rm "$manifests"/*.yaml
reconcile --once
rm -rf "$work"
