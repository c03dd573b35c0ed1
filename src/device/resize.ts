/**
 * Online resize of a device served by another process (UPDATE_SIZE, Linux
 * 6.16+): the order that keeps every sector the kernel exposes servable.
 * Growing: the store first (a memory file, a loop file ublk-ts created),
 * then the kernel. Shrinking: the kernel first, then the memory file.
 *
 * The server is not messaged: its memory target re-reads its file's size
 * when a request lands beyond the size it knew (which only happens once
 * the file has grown), the loop target reads and writes its file at any
 * offset, and null stores nothing. So the store is the single place the
 * size lives, and a resize that fails half-way leaves the old size working
 * and can simply be tried again.
 */
import { ERRNO, SpecError, UblkError } from '../errors';
import { ControlCommands } from '../kernel/control';
import { updateSizeMissing } from '../kernel/uapi';
import { DeviceSpec } from '../spec/device-spec';
import { resizeBacking, ResizeBackingOptions } from './backing';

/** What resizeDevice is asked to do. */
export interface ResizeRequest extends ResizeBackingOptions {
  devId: number;
  /** The spec the device was made from (its record's). */
  spec: DeviceSpec;
  sizeBytes: number;
}

/**
 * Resizes a LIVE device in place and resolves with the size it had. Refused
 * (nothing changed) for a device that is not LIVE, one the kernel cannot
 * resize (no UPDATE_SIZE), a js target, or a size the device cannot take.
 * Whether shrinking is safe (the device unused) is the caller's decision.
 */
export async function resizeDevice(
  control: Pick<ControlCommands, 'features' | 'getDeviceInfo' | 'getParams' | 'updateSize'>,
  req: ResizeRequest,
): Promise<{ fromBytes: number }> {
  const { devId, spec, sizeBytes } = req;
  if (spec.target.type === 'js') {
    throw new SpecError('target', `a js target's module serves a size of its own choosing: it is not resized live`);
  }
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % spec.logicalBlockSize !== 0) {
    throw new SpecError(
      'size',
      `must be a positive multiple of the logical block size (${spec.logicalBlockSize}), got ${String(sizeBytes).slice(0, 40)}`,
    );
  }
  const info = await control.getDeviceInfo(devId);
  const missing = updateSizeMissing(control.features, info.flags);
  if (missing) throw new UblkError('UPDATE_SIZE', devId, ERRNO.EOPNOTSUPP, missing);
  // The kernel has no disk to resize before START_DEV, and a device without its server has no one to serve the new sectors.
  if (info.state !== 'LIVE') {
    throw new UblkError('UPDATE_SIZE', devId, ERRNO.EINVAL, `device is ${info.state}: only a LIVE device is resized`);
  }
  const fromBytes = (await control.getParams(devId)).sizeBytes;
  if (sizeBytes >= fromBytes) {
    resizeBacking(devId, spec, sizeBytes, req);
    await control.updateSize(devId, sizeBytes);
  } else {
    await control.updateSize(devId, sizeBytes);
    resizeBacking(devId, spec, sizeBytes, req);
  }
  return { fromBytes };
}
