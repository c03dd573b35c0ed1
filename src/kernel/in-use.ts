import * as fs from 'node:fs';

/**
 * Whether a block device is in use, so the reconciler must not re-create
 * it: mounted or held (an O_EXCL open fails with EBUSY), stacked under
 * another device (holders in sysfs), or opened by any process (a scan of
 * /proc/<pid>/fd, which also catches plain opens that O_EXCL misses).
 */
export function blockDeviceInUse(blockPath: string): boolean {
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
  return openedByAnyProcess(blockPath);
}

function openedByAnyProcess(blockPath: string): boolean {
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
        if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === blockPath) return true;
      } catch {
        // closed while scanning
      }
    }
  }
  return false;
}
