/** ublk UAPI names the TypeScript side needs: feature flags and device states. */

/** UBLK_F_* feature flags by bit, as GET_FEATURES and dev_info.flags report them. */
export const FEATURE_FLAGS: ReadonlyArray<[string, bigint]> = [
  ['SUPPORT_ZERO_COPY', 1n << 0n],
  ['URING_CMD_COMP_IN_TASK', 1n << 1n],
  ['NEED_GET_DATA', 1n << 2n],
  ['USER_RECOVERY', 1n << 3n],
  ['USER_RECOVERY_REISSUE', 1n << 4n],
  ['UNPRIVILEGED_DEV', 1n << 5n],
  ['CMD_IOCTL_ENCODE', 1n << 6n],
  ['USER_COPY', 1n << 7n],
  ['ZONED', 1n << 8n],
  ['USER_RECOVERY_FAIL_IO', 1n << 9n],
  ['UPDATE_SIZE', 1n << 10n],
  ['AUTO_BUF_REG', 1n << 11n],
  ['QUIESCE', 1n << 12n],
  ['PER_IO_DAEMON', 1n << 13n],
  ['BUF_REG_OFF_DAEMON', 1n << 14n],
  ['BATCH_IO', 1n << 15n],
  ['INTEGRITY', 1n << 16n],
  ['SAFE_STOP_DEV', 1n << 17n],
  ['NO_AUTO_PART_SCAN', 1n << 18n],
  ['SHMEM_ZC', 1n << 19n],
];

export const UBLK_F_USER_RECOVERY = 1n << 3n;
export const UBLK_F_USER_RECOVERY_REISSUE = 1n << 4n;
export const UBLK_F_CMD_IOCTL_ENCODE = 1n << 6n;
export const UBLK_F_USER_RECOVERY_FAIL_IO = 1n << 9n;
/** The device's size can change while it is LIVE (UPDATE_SIZE, Linux 6.16+). */
export const UBLK_F_UPDATE_SIZE = 1n << 10n;

/**
 * Why a device cannot be resized while LIVE, from the kernel's features
 * (GET_FEATURES) and the flags ADD_DEV handed back for the device (a kernel
 * drops flags it does not know); undefined when it can.
 */
export function updateSizeMissing(kernelFeatures: bigint, deviceFlags: bigint): string | undefined {
  if ((kernelFeatures & UBLK_F_UPDATE_SIZE) === 0n) return 'the kernel lacks UPDATE_SIZE (Linux 6.16+)';
  if ((deviceFlags & UBLK_F_UPDATE_SIZE) === 0n) {
    return 'the device was created without UPDATE_SIZE (by an older kernel or ublk-ts); re-create it to resize it live';
  }
  return undefined;
}
/**
 * Zero copy (Linux 6.16+): the kernel registers each request's pages as a
 * buffer in the queue ring's table, and the server moves the bytes with
 * READ_FIXED/WRITE_FIXED on that buffer instead of copying them.
 */
export const UBLK_F_AUTO_BUF_REG = 1n << 11n;

/** How a device's requests reach the server's target: through its buffers, or zero copy. */
export type DataPath = 'copy' | 'zero-copy';

/** A device's data path, from its flags (GET_DEV_INFO): what its server must serve it with. */
export function dataPathOf(deviceFlags: bigint): DataPath {
  return (deviceFlags & UBLK_F_AUTO_BUF_REG) !== 0n ? 'zero-copy' : 'copy';
}
/** QUIESCE_DEV (Linux 6.16+): a server can be made to let go of a live device; needs UBLK_F_USER_RECOVERY. */
export const UBLK_F_QUIESCE = 1n << 12n;
/**
 * ADD_DEV flag (6.16+): each tag of a queue may be served by its own task —
 * the one that fetched it issues every later command for it — so one queue
 * can be served by several threads.
 */
export const UBLK_F_PER_IO_DAEMON = 1n << 13n;
/**
 * ADD_DEV flag (7.0+): the queues speak batched commands (PREP_IO_CMDS,
 * multishot FETCH_IO_CMDS, COMMIT_IO_CMDS); the per-tag ones are refused.
 */
export const UBLK_F_BATCH_IO = 1n << 15n;
/** The kernel has TRY_STOP_DEV (7.0+): a stop that refuses, race-free, while /dev/ublkbN is open. */
export const UBLK_F_SAFE_STOP_DEV = 1n << 17n;
/** ADD_DEV flag (7.0+): START_DEV does not scan /dev/ublkbN for a partition table. */
export const UBLK_F_NO_AUTO_PART_SCAN = 1n << 18n;

/** Names of the flags set in `flags`; unknown bits appear as 'BIT<n>'. */
export function featureNames(flags: bigint): string[] {
  const names: string[] = [];
  for (let bit = 0n; bit < 64n; bit++) {
    const mask = 1n << bit;
    if ((flags & mask) === 0n) continue;
    names.push(FEATURE_FLAGS.find(([, value]) => value === mask)?.[0] ?? `BIT${bit}`);
  }
  return names;
}

/**
 * The kernel's device states, all four in one place:
 * DEAD (not started, or stopped), LIVE (serving), QUIESCED (server gone,
 * IO held for a recovering server), FAIL_IO (server gone, IO fails until recovery).
 */
export type DeviceState = 'DEAD' | 'LIVE' | 'QUIESCED' | 'FAIL_IO';

const states: DeviceState[] = ['DEAD', 'LIVE', 'QUIESCED', 'FAIL_IO'];

/** Maps UBLK_S_DEV_* to its name. */
export function deviceStateName(state: number): DeviceState | `UNKNOWN_${number}` {
  return states[state] ?? `UNKNOWN_${state}`;
}

/** UBLK_ATTR_* bits of ublk_param_basic.attrs. */
export const ATTR_READ_ONLY = 1 << 0;
export const ATTR_ROTATIONAL = 1 << 1;
export const ATTR_VOLATILE_CACHE = 1 << 2;
export const ATTR_FUA = 1 << 3;

export const PARAM_TYPE_BASIC = 1 << 0;
export const PARAM_TYPE_DISCARD = 1 << 1;
export const PARAM_TYPE_DEVT = 1 << 2;

/** UBLK_IO_OP_* by value, as the handler of a JS target sees them. */
const IO_OPS = ['read', 'write', 'flush', 'discard', 'other', 'write-zeroes'] as const;
/** The request kinds a JS target's handler sees (UBLK_IO_OP_WRITE_SAME and unknown ops are 'other'). */
export type IoOp = (typeof IO_OPS)[number];

/** UBLK_IO_F_FUA: bit 13 of op_flags. */
const UBLK_IO_F_FUA = 1 << 13;

/**
 * struct ublksrv_io_desc, one per tag in the array the queue mmaps from
 * /dev/ublkcN (read-only):
 *   __u32 op_flags;     op in bits 0-7, UBLK_IO_F_* above
 *   __u32 nr_sectors;   (nr_zones for zone reports)
 *   __u64 start_sector;
 *   __u64 addr;         the server's buffer (unused: buffers are per tag here)
 */
export const IO_DESC_SIZE = 24;

/** One request as the kernel describes it, decoded. */
export interface IoDescriptor {
  op: IoOp;
  /** UBLK_IO_F_* flags: op_flags without the op. */
  flags: number;
  /** REQ_FUA: the write must be durable before it completes. */
  fua: boolean;
  /** Byte offset on the device. */
  offset: number;
  /** Bytes to transfer: 0 for flush. */
  length: number;
}

/** Decodes tag `tag`'s struct ublksrv_io_desc from the queue's descriptor array. */
export function decodeIoDescriptor(descriptors: DataView, tag: number): IoDescriptor {
  const at = tag * IO_DESC_SIZE;
  const opFlags = descriptors.getUint32(at, true);
  const nrSectors = descriptors.getUint32(at + 4, true);
  const startSector = descriptors.getUint32(at + 8, true) + descriptors.getUint32(at + 12, true) * 2 ** 32;
  const op = IO_OPS[opFlags & 0xff] ?? 'other';
  return {
    op,
    flags: opFlags >>> 8,
    fua: (opFlags & UBLK_IO_F_FUA) !== 0,
    offset: startSector * 512,
    length: op === 'flush' ? 0 : nrSectors * 512,
  };
}
