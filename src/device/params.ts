/** What the kernel is told about a device, per target: the parameters policy. */
import { DeviceParams } from '../kernel/control';
import { DeviceSpec } from '../spec/device-spec';
import type { Backing } from './backing';
import type { TargetTraits } from './js-target';

/** Discard and write-zeroes requests up to this size are advertised for targets that punch holes. */
const DISCARD_LIMIT = 1 << 30;
/** Discard granularity: one page, the unit a hole punch frees. */
const DISCARD_GRANULARITY = 4096;

/**
 * Geometry, cache and discard support of a device made from `spec`
 * (SET_PARAMS); `js` is what a JS target's module declares about itself,
 * `backing` what the loop or memory target stores in. Discard is advertised
 * where that store can give space back: a block device only when it
 * supports discard itself (as ublksrv's loop probes it).
 *
 * A volatile write cache (with FUA) is advertised where a completed write
 * may not yet be durable, so the block layer passes flushes and FUA
 * writes down instead of completing them itself: loop (a buffered file's
 * page cache; fdatasync and RWF_DSYNC make it durable) and JS targets
 * unless their module declares `volatileCache: false`. The memory target
 * has none: a completed write is in its tmpfs file, as durable as that
 * file will ever be (it survives the server, not a reboot), so there is
 * nothing a flush could add. null stores nothing.
 */
export function deviceParams(
  spec: DeviceSpec,
  maxIoSize: number,
  js?: TargetTraits,
  backing?: Pick<Backing, 'discards'>,
): DeviceParams {
  const params: DeviceParams = {
    sizeBytes: spec.sizeBytes,
    logicalBlockSize: spec.logicalBlockSize,
    maxIoSize,
    readOnly: spec.readOnly,
  };
  if ((spec.target.type === 'loop' || spec.target.type === 'memory') && backing?.discards !== false) {
    // Discards become hole punches; advertise them so blkdiscard and mkfs use them.
    params.discard = {
      granularity: DISCARD_GRANULARITY,
      maxDiscardBytes: DISCARD_LIMIT,
      maxWriteZeroesBytes: DISCARD_LIMIT,
    };
  }
  const volatileCache = spec.target.type === 'loop' || (spec.target.type === 'js' && (js?.volatileCache ?? true));
  if (volatileCache) {
    params.volatileCache = true;
    params.fua = true;
  }
  return params;
}
