/**
 * Recovery modes — what the kernel does with IO when a device's server
 * dies — and the UBLK_F_* flags that ask the kernel for each, side by side
 * (see the README's recovery section).
 */
import { SpecError } from '../errors';
import {
  featureNames,
  UBLK_F_QUIESCE,
  UBLK_F_USER_RECOVERY,
  UBLK_F_USER_RECOVERY_FAIL_IO,
  UBLK_F_USER_RECOVERY_REISSUE,
} from '../kernel/uapi';
import { RECOVERY_MODES, RecoveryMode } from './limits';

export { RECOVERY_MODES };
export type { RecoveryMode };

/** UBLK_F_* flags that ask the kernel for a recovery mode (ADD_DEV flags). */
export function recoveryFlags(mode: RecoveryMode): bigint {
  switch (mode) {
    case 'reissue':
      return UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;
    case 'fail-inflight':
      return UBLK_F_USER_RECOVERY;
    case 'fail-io':
      return UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_FAIL_IO;
    case 'none':
      return 0n;
  }
}

/** The recovery modes this kernel offers, from its GET_FEATURES answer. */
export function supportedRecoveryModes(features: bigint): RecoveryMode[] {
  const modes: RecoveryMode[] = [];
  if (features & UBLK_F_USER_RECOVERY) {
    if (features & UBLK_F_USER_RECOVERY_REISSUE) modes.push('reissue');
    modes.push('fail-inflight');
    if (features & UBLK_F_USER_RECOVERY_FAIL_IO) modes.push('fail-io');
  }
  modes.push('none');
  return modes;
}

/** Refuses a recovery mode the kernel lacks, naming the feature and what it does offer. */
export function checkRecoverySupported(mode: RecoveryMode, features: bigint): void {
  if (supportedRecoveryModes(features).includes(mode)) return;
  const missing = featureNames(recoveryFlags(mode) & ~features).map((n) => `UBLK_F_${n}`);
  throw new SpecError(
    'recovery',
    `${mode} needs the kernel feature ${missing.join(', ')}${mode === 'fail-io' ? ' (Linux 6.13 or newer)' : ''}; ` +
      `this kernel supports: ${supportedRecoveryModes(features).join(', ')}`,
  );
}

/** Whether a device was created with user recovery: its IO waits in the kernel for a new server. */
export function isRecoverable(deviceFlags: bigint): boolean {
  return (deviceFlags & UBLK_F_USER_RECOVERY) !== 0n;
}

/**
 * UBLK_F_QUIESCE, asked for at ADD_DEV where the kernel offers it (Linux
 * 6.16+) and the device has user recovery, which the kernel requires with
 * it: a server of such a device can later be made to let go gracefully
 * (QUIESCE_DEV), for a handover to a new server.
 */
export function quiesceFlag(mode: RecoveryMode, features: bigint): bigint {
  return mode !== 'none' && (features & UBLK_F_QUIESCE) !== 0n ? UBLK_F_QUIESCE : 0n;
}
