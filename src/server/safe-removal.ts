/**
 * The two kernel steps of removing a device, each as safe as this kernel
 * allows: the stop refuses a device that is open (the kernel's own
 * race-free check where it has one), and the delete never parks a thread
 * of libuv's pool on a server that does not let go.
 */
import { ERRNO, UblkError } from '../errors';
import { blockDeviceInUse } from '../kernel/in-use';
import { ControlCommands, DeviceInfo, isUnknownCommand } from '../kernel/control';
import { UBLK_F_SAFE_STOP_DEV } from '../kernel/uapi';
import { withTimeout } from './processes';

/** How the stop before a delete treats a device that is open. */
export interface StopOptions {
  /** Stop it all the same (STOP_DEV): its users see IO errors and a file system on it is cut off. */
  force?: boolean;
  /** Whether a block device is open, on kernels without safe stop (tests pass their own). */
  inUse?: (blockPath: string) => boolean;
}

/**
 * A udev probe holds a fresh device open for a moment; TRY_STOP_DEV's
 * EBUSY is taken as an answer only after it has lasted this long.
 */
const BUSY_RETRIES = 10;
const BUSY_RETRY_MS = 100;

/** What the message of a refused stop says the user can do. */
const CLOSE_FIRST = 'unmount it or close it first, or delete it with force';

/**
 * Stops a device before it is deleted, unless it is open.
 *
 * With UBLK_F_SAFE_STOP_DEV (Linux 7.0+) the kernel decides: TRY_STOP_DEV
 * refuses with EBUSY while /dev/ublkbN has an opener, and shuts out new
 * openers in the same step, so no process can open the device after the
 * check and have it pulled away. Without it ublk-ts checks (mounts,
 * holders, O_EXCL, open file descriptors) and then sends STOP_DEV: a
 * process can still open the device in between. A DEAD device has no
 * block device: there is nothing to stop and nothing can have it open.
 */
export async function stopForRemoval(
  control: ControlCommands,
  info: DeviceInfo,
  opts: StopOptions = {},
): Promise<void> {
  if (opts.force) return control.stopDevice(info.id);
  if (info.state === 'DEAD') return;
  if ((control.features & UBLK_F_SAFE_STOP_DEV) === 0n) {
    if ((opts.inUse ?? blockDeviceInUse)(info.blockPath)) {
      throw new UblkError(
        'STOP_DEV',
        info.id,
        ERRNO.EBUSY,
        `${info.blockPath} is open (mounted, or held by a process): not stopped; ${CLOSE_FIRST} ` +
          '(checked by ublk-ts: this kernel lacks UBLK_F_SAFE_STOP_DEV, Linux 7.0+, so the check cannot shut out a process that opens it right after)',
      );
    }
    return control.stopDevice(info.id);
  }
  for (let attempt = 1; ; attempt++) {
    try {
      return await control.tryStopDevice(info.id);
    } catch (err) {
      if (err instanceof UblkError && err.code === 'ENODEV') {
        // No disk to stop (it went DEAD meanwhile), or no device: GET_DEV_INFO tells which, and throws ENODEV for the latter.
        await control.getDeviceInfo(info.id);
        return;
      }
      if (!(err instanceof UblkError && err.code === 'EBUSY')) throw err;
      if (attempt >= BUSY_RETRIES) {
        throw new UblkError(
          'TRY_STOP_DEV',
          info.id,
          ERRNO.EBUSY,
          `${info.blockPath} is open (mounted, or held by a process): the kernel refused to stop it; ${CLOSE_FIRST}`,
        );
      }
      await new Promise((r) => setTimeout(r, BUSY_RETRY_MS));
    }
  }
}

/** How often the wait after DEL_DEV_ASYNC asks whether the device is gone. */
const GONE_POLL_MS = 25;
const GONE_POLL_MAX_MS = 250;

/**
 * Deletes a stopped device and resolves once the kernel has freed it (its
 * id can be reused), failing with ETIMEDOUT after `timeoutMs`.
 *
 * DEL_DEV waits in the kernel until the server closes /dev/ublkcN; a
 * server that never does (stopped, stuck in D state) would hold a thread
 * of libuv's pool for good, and four of them stall every later control
 * command and fs call of the process. DEL_DEV_ASYNC (6.9+) returns at once
 * and this waits on timers, asking GET_DEV_INFO; before 6.9 the
 * synchronous DEL_DEV is the only way, bounded on the JS side only.
 */
export async function deleteAndWait(control: ControlCommands, info: DeviceInfo, timeoutMs: number): Promise<void> {
  const stuck = (op: string): UblkError =>
    new UblkError(
      op,
      info.id,
      ERRNO.ETIMEDOUT,
      `server pid ${info.serverPid} still holds ${info.charPath} after ${timeoutMs} ms`,
    );
  try {
    await control.deleteDevice(info.id, { async: true });
  } catch (err) {
    if (!isUnknownCommand(err)) throw err;
    await withTimeout(control.deleteDevice(info.id), timeoutMs, () => stuck('DEL_DEV'));
    return;
  }
  const deadline = Date.now() + timeoutMs;
  for (let delay = GONE_POLL_MS; ; delay = Math.min(delay * 2, GONE_POLL_MAX_MS)) {
    try {
      await control.getDeviceInfo(info.id);
    } catch (err) {
      if (err instanceof UblkError && err.code === 'ENODEV') return;
      throw err;
    }
    if (Date.now() >= deadline) throw stuck('DEL_DEV_ASYNC');
    await new Promise((r) => setTimeout(r, delay));
  }
}
