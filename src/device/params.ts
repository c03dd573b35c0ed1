/** What the kernel is told about a device, per target: the parameters policy. */
import { DeviceParams } from '../kernel/control';
import { DeviceSpec } from '../spec/device-spec';
import { Backing } from './backing';

/** Discard and write-zeroes requests up to this size are advertised for targets that punch holes. */
const DISCARD_LIMIT = 1 << 30;
/** Discard granularity: one page, the unit a hole punch frees. */
const DISCARD_GRANULARITY = 4096;

/**
 * Geometry, cache and discard support of a device made from `spec` (SET_PARAMS).
 * Discard is advertised where the backing store can give space back: a block
 * device only when it supports discard itself (as ublksrv's loop probes it).
 */
export function deviceParams(spec: DeviceSpec, maxIoSize: number, backing?: Pick<Backing, 'discards'>): DeviceParams {
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
  if (spec.target.type === 'loop') {
    // The page cache of a buffered backing file is a volatile write cache.
    params.volatileCache = true;
    params.fua = true;
  }
  return params;
}
