import * as fs from 'node:fs';

/**
 * Whether a block device is in use, so the reconciler must not re-create
 * it: mounted or held (an O_EXCL open fails with EBUSY), stacked under
 * another device (holders in sysfs), or opened by any process (a scan of
 * /proc/<pid>/fd, which also catches plain opens that O_EXCL misses).
 */
export function blockDeviceInUse(blockPath: string): boolean {
  return heldOrMounted(blockPath) ?? openedBlockDevices().has(blockPath);
}

/**
 * The in-use check for many devices at once, as a reconcile pass needs it:
 * the same answers as blockDeviceInUse, but /proc is scanned once, on the
 * first device that needs it, for all of them. A scan reads every fd of
 * every process, so one per device costs (devices × processes × fds) on a
 * host where each device has its own server process. The snapshot is only
 * as fresh as its first use: take a new checker for each decision.
 */
export function blockDeviceUsage(): (blockPath: string) => boolean {
  let opened: Set<string> | undefined;
  return (blockPath) => heldOrMounted(blockPath) ?? (opened ??= openedBlockDevices()).has(blockPath);
}

/** true: held or mounted; false: no such disk; undefined: neither, so it is up to the /proc scan. */
function heldOrMounted(blockPath: string): boolean | undefined {
  const name = blockPath.replace(/^\/dev\//, '');
  try {
    if (fs.readdirSync(`/sys/block/${name}/holders`).length > 0) return true;
  } catch {
    return false; // no such disk: nothing can be using it
  }
  try {
    const fd = fs.openSync(blockPath, fs.constants.O_RDONLY | fs.constants.O_EXCL);
    fs.closeSync(fd);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EBUSY') return true;
  }
  return undefined;
}

/** Every /dev path some process other than this one has open, from one pass over /proc/<pid>/fd. */
function openedBlockDevices(): Set<string> {
  const opened = new Set<string>();
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    let fds: string[];
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
        if (target.startsWith('/dev/')) opened.add(target);
      } catch {
        // closed while scanning
      }
    }
  }
  return opened;
}
