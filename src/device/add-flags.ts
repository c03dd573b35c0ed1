/**
 * The UBLK_F_* flags a device is created with (ADD_DEV), and the check
 * that the kernel kept them: a kernel that does not know a flag drops it
 * silently (6.12 masks the request with the flags it knows), and a device
 * made without a flag it was asked for would behave otherwise than its
 * spec says.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ERRNO, SpecError, UblkError } from '../errors';
import { DeviceInfo } from '../kernel/control';
import {
  featureNames,
  UBLK_F_AUTO_BUF_REG,
  UBLK_F_BATCH_IO,
  UBLK_F_NO_AUTO_PART_SCAN,
  UBLK_F_PER_IO_DAEMON,
} from '../kernel/uapi';
import { DeviceSpec } from '../spec/device-spec';
import { servesZeroCopy } from './queues';
import { quiesceFlag, RecoveryMode, recoveryFlags } from '../spec/recovery-mode';

/**
 * The ADD_DEV flags for `spec` with recovery mode `recovery` (which
 * checkRecoverySupported has checked), after checking that the kernel (its
 * GET_FEATURES answer) has the rest: a missing one is a SpecError naming
 * the field, raised before the device exists.
 */
export function addDeviceFlags(
  spec: DeviceSpec,
  recovery: RecoveryMode,
  features: bigint,
  backing: BackingFacts = { onTmpfs: false },
): bigint {
  // QUIESCE where the kernel has it: a device with recovery can then be handed to a new server live.
  let flags = recoveryFlags(recovery) | quiesceFlag(recovery, features);
  if (spec.partitionScan === false) {
    if ((features & UBLK_F_NO_AUTO_PART_SCAN) === 0n) {
      throw new SpecError(
        'partitionScan',
        'false needs the kernel feature UBLK_F_NO_AUTO_PART_SCAN (Linux 7.0 or newer); ' +
          'this kernel would scan the partition table at start: remove the field to let it',
      );
    }
    flags |= UBLK_F_NO_AUTO_PART_SCAN;
  }
  if (wantsZeroCopy(spec, features, backing)) flags |= UBLK_F_AUTO_BUF_REG;
  if (spec.threadsPerQueue !== undefined && spec.threadsPerQueue > 1) {
    if ((features & UBLK_F_PER_IO_DAEMON) === 0n) {
      throw new SpecError(
        'threadsPerQueue',
        `${spec.threadsPerQueue} needs the kernel feature UBLK_F_PER_IO_DAEMON (Linux 6.16 or newer); ` +
          'this kernel serves each queue from one thread: remove the field (or set 1)',
      );
    }
    flags |= UBLK_F_PER_IO_DAEMON;
  }
  if (spec.batchIo === true) {
    if ((features & UBLK_F_BATCH_IO) === 0n) {
      throw new SpecError(
        'batchIo',
        'true needs the kernel feature UBLK_F_BATCH_IO (Linux 7.0 or newer); ' +
          'this kernel takes a command per request: remove the field',
      );
    }
    flags |= UBLK_F_BATCH_IO;
  }
  return flags;
}

/** What the data path depends on in a loop target's backing store. */
export interface BackingFacts {
  /** The loop file is a regular file on tmpfs (see loopFileOnTmpfs). */
  onTmpfs: boolean;
}

const TMPFS_MAGIC = 0x01021994;

/**
 * Whether a loop target's file is a regular file on tmpfs (or, not made
 * yet, would be: its directory is). A block device is not, although its
 * node lives on devtmpfs. Only a choice of speed hangs on the answer, so
 * what cannot be looked at counts as not tmpfs.
 */
export function loopFileOnTmpfs(file: string): boolean {
  try {
    if (!fs.statSync(file).isFile()) return false;
  } catch {
    // not there yet (create): its directory decides
  }
  for (const where of [file, path.dirname(file)]) {
    try {
      return fs.statfsSync(where).type === TMPFS_MAGIC;
    } catch {
      // try the directory
    }
  }
  return false;
}

/**
 * Whether a device made from `spec` gets zero copy (UBLK_F_AUTO_BUF_REG):
 * where the kernel has it and the target's IO is a file operation on the
 * queue's ring, and only where it pays unless the spec says true. It pays
 * where the ring can issue the fixed-buffer read or write without
 * blocking — a block device, a file system with nowait IO — and costs
 * where it cannot: a file on tmpfs (the memory target's always is), whose
 * reads io_uring hands to an io-wq worker thread, slower than the copy
 * (README, Zero copy). false: never. The kernel refuses the flag only on
 * unprivileged devices, which ublk-ts does not make. A batchIo device
 * copies: its runner hands the kernel buffer addresses.
 */
export function wantsZeroCopy(spec: DeviceSpec, features: bigint, backing: BackingFacts = { onTmpfs: false }): boolean {
  if (spec.zeroCopy === false || spec.batchIo === true || (features & UBLK_F_AUTO_BUF_REG) === 0n) return false;
  if (spec.zeroCopy === true) return servesZeroCopy(spec.target.type);
  return spec.target.type === 'loop' && !backing.onTmpfs;
}

/** Fails when ADD_DEV handed back a device without a flag that was asked for. */
export function checkGrantedFlags(requested: bigint, info: DeviceInfo): void {
  const dropped = requested & ~info.flags;
  if (dropped === 0n) return;
  throw new UblkError(
    'ADD_DEV',
    info.id,
    ERRNO.EOPNOTSUPP,
    `the kernel made the device without ${featureNames(dropped)
      .map((n) => `UBLK_F_${n}`)
      .join(', ')}, which it was asked for (it does not know the flag)`,
  );
}
