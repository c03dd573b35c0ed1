/** Printed by /init once the guest root is ready; a boot that never prints it is retried once. */
export const BOOTED_MARKER = 'UBLK-TS-VM-BOOTED';

/** Printed by /init, followed by the command's exit status, just before it powers off. */
export const EXIT_MARKER = 'UBLK-TS-VM-EXIT';

/** Files the host and /init exchange through the results share. */
export const GUEST_FILES = {
  /** Shell assignments /init sources: RESULTS_DIR, WORK_DIR, MODULES_DIR. */
  config: 'vm.conf',
  /** `export NAME='value'` lines that make the command's whole environment. */
  env: 'env.sh',
  /** The command, run with /bin/bash from WORK_DIR. */
  command: 'command.sh',
  /** The command's exit status, written by /init after it returns. */
  exitCode: 'exit-code',
} as const;

/**
 * The initramfs `/init` (busybox sh). It turns the host's root, shared read-only over 9p,
 * into a writable guest root (overlayfs on tmpfs), mounts the results share at the host's
 * own path, loads the test modules, runs the command in a chroot and reports its exit
 * status through the results share before powering off. `bootModules` and `guestModules` are
 * the kernel's modules in load order (see kernel-modules.ts); a module built into the kernel
 * is not among them, and one whose file is absent is skipped.
 */
export function initScript(bootModules: readonly string[], guestModules: readonly string[]): string {
  return `#!/bin/sh
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
R=/newroot
TMPFS_DIRS="/tmp /run"

say() { echo "ublk-ts-vm: $*"; }
power_off() { sync; poweroff -f; echo o > /proc/sysrq-trigger; }
give_up() { say "$*"; echo "${EXIT_MARKER} 125"; power_off; }
load() {
  for m in "$@"; do
    [ -e "/lib/modules/$m.ko" ] || continue
    insmod "/lib/modules/$m.ko" || say "cannot load module $m"
  done
}
mount9p() { mount -t 9p -o "trans=virtio,version=9p2000.L,msize=512000,$3" "$1" "$2"; }
under() { case "$1" in "$2"|"$2"/*) return 0 ;; esac; return 1; }
# Holds a view of $R$2 that a tmpfs about to be mounted above it would hide.
keep() {
  for d in $TMPFS_DIRS; do
    if under "$2" "$d" && [ -d "$R$2" ]; then
      mkdir -p "/keep/$1" && mount --bind "$R$2" "/keep/$1"
      return
    fi
  done
}
restore() {
  [ -d "/keep/$1" ] || return 0
  mkdir -p "$R$2" && mount --move "/keep/$1" "$R$2"
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
load ${bootModules.join(' ')}

mkdir -p /host /results /rw "$R"
mount9p hostroot /host cache=loose,ro || give_up "cannot mount the host root share"
mount9p results /results cache=none || give_up "cannot mount the results share"
. /results/${GUEST_FILES.config}

mount -t tmpfs -o mode=0755 rw /rw
mkdir -p /rw/upper /rw/work
if ! mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay "$R"; then
  say "overlayfs over the host root failed: using the read-only host root with tmpfs on /tmp /run /var/tmp /root"
  mount --bind /host "$R"
  TMPFS_DIRS="/tmp /run /var/tmp /root"
fi

keep work "$WORK_DIR"
keep modules "$MODULES_DIR"
for d in $TMPFS_DIRS; do
  case "$d" in /tmp|/var/tmp) mode=1777 ;; /root) mode=0700 ;; *) mode=0755 ;; esac
  mount -t tmpfs -o "mode=$mode" tmpfs "$R$d"
done
restore work "$WORK_DIR"
restore modules "$MODULES_DIR"
mkdir -p "$R$RESULTS_DIR" && mount --move /results "$R$RESULTS_DIR" || give_up "cannot mount the results share in the guest root"

mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount -t devtmpfs devtmpfs "$R/dev"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts "$R/dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
ln -sfn /proc/self/fd "$R/dev/fd"
ln -sfn /proc/self/fd/0 "$R/dev/stdin"
ln -sfn /proc/self/fd/1 "$R/dev/stdout"
ln -sfn /proc/self/fd/2 "$R/dev/stderr"

load ${guestModules.join(' ')}
hostname ublk-ts-vm
ip link set lo up

echo "${BOOTED_MARKER}"
chroot "$R" /usr/bin/env -i /bin/bash -c '. "$1" && cd "$2" && exec /bin/bash "$3"' ublk-ts-vm \\
  "$RESULTS_DIR/${GUEST_FILES.env}" "$WORK_DIR" "$RESULTS_DIR/${GUEST_FILES.command}" </dev/null >/dev/console 2>&1
rc=$?
echo "$rc" > "$R$RESULTS_DIR/${GUEST_FILES.exitCode}"
echo "${EXIT_MARKER} $rc"
power_off
`;
}
