/**
 * One taker-over at a time per device: a handover and a recovery of the
 * same device (ublkctl restart, ublkctl recover, the reconciler) would
 * otherwise race for its QUIESCED state. An flock on a file beside the
 * device's record, released by the kernel if its holder dies.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from '../kernel/native';

/** A held device lock; release() lets the next taker-over in. */
export interface DeviceLock {
  release(): void;
}

/** Raised when another process is handing over or recovering the device: not a failure of the device. */
export class DeviceLockedError extends Error {
  constructor(
    readonly devId: number,
    holder: string,
  ) {
    super(
      `another ublk-ts process${holder ? ` (pid ${holder})` : ''} is handing over or recovering device ${devId}; ` +
        'it is left to that one',
    );
    this.name = 'DeviceLockedError';
  }
}

/** Path of device `devId`'s lock file. */
export function deviceLockPath(stateDir: string, devId: number): string {
  return path.join(stateDir, 'devices', `ublkb${devId}.lock`);
}

/** Takes the device's lock or throws DeviceLockedError at once; the file records the holder's pid for that message. */
export function lockDevice(stateDir: string, devId: number): DeviceLock {
  const file = deviceLockPath(stateDir, devId);
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o750 });
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o640);
  if (!native().flock(fd, true, true)) {
    const holder = fs.readFileSync(file, 'utf8').trim();
    fs.closeSync(fd);
    throw new DeviceLockedError(devId, holder);
  }
  fs.ftruncateSync(fd, 0);
  fs.writeSync(fd, `${process.pid}\n`, 0);
  let held = true;
  return {
    release: () => {
      if (!held) return;
      held = false;
      fs.closeSync(fd);
    },
  };
}
