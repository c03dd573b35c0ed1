import * as os from 'node:os';

/**
 * Errno values by name, from the platform (os.constants.errno): JS-side
 * conditions reported as a UblkError use the errno that means the same
 * thing (ENOENT, EINVAL, ETIMEDOUT...), named, never a bare number.
 */
export const ERRNO: Readonly<Record<keyof typeof os.constants.errno, number>> = os.constants.errno;

const errnoNames = new Map<number, string>(
  Object.entries(os.constants.errno).map(([name, value]) => [value as number, name]),
);

const errnoText: Record<string, string> = {
  EPERM: 'operation not permitted',
  ENOENT: 'no such file or directory',
  EINTR: 'interrupted',
  EIO: 'input/output error',
  EBADF: 'bad file descriptor',
  EAGAIN: 'try again',
  ENOMEM: 'out of memory',
  EACCES: 'permission denied',
  EFAULT: 'bad address',
  EBUSY: 'device or resource busy',
  EEXIST: 'already exists',
  ENODEV: 'no such device',
  EINVAL: 'invalid argument',
  ENOSPC: 'no space left on device',
  ENOTTY: 'inappropriate ioctl for device',
  EOPNOTSUPP: 'operation not supported',
  ENOTSUP: 'operation not supported',
  ETIMEDOUT: 'timed out',
  EMFILE: 'too many open files',
};

/** What an errno means for a specific ublk command, where the kernel's meaning is narrower than strerror's. */
const commandHints: Record<string, Record<string, string>> = {
  ADD_DEV: {
    EEXIST: 'device id in use',
    ENFILE: 'too many ublk devices (module parameter ublks_max)',
    EINVAL: 'the kernel rejected the device geometry',
  },
  START_DEV: { EEXIST: 'device already started', EINVAL: 'device parameters missing or invalid' },
  SET_PARAMS: { EACCES: 'device already started', EINVAL: 'the kernel rejected the parameters' },
  GET_FEATURES: { EOPNOTSUPP: 'kernel older than 6.5' },
  IO_URING_SETUP: {
    EPERM: `io_uring is disabled for this process (see /proc/sys/kernel/io_uring_disabled)`,
    ENOSYS: 'this kernel has no io_uring',
    ENOMEM: 'out of memory for the ring, or the locked-memory limit is too low',
  },
  START_USER_RECOVERY: { EBUSY: 'device not quiesced yet', EINVAL: 'device not recoverable' },
  QUIESCE_DEV: {
    EBUSY: 'some queue had no idle tag within the timeout',
    EOPNOTSUPP: 'the device was added without UBLK_F_QUIESCE',
  },
};

/** Name of a positive errno value, e.g. 17 → 'EEXIST'; 'UNKNOWN_<n>' when the platform has no name for it. */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `UNKNOWN_${errno}`;
}

/**
 * The one error type of ublk-ts for failures of the kernel or a syscall:
 * which command (`op`), on which device, and the errno as number and name.
 * The native addon constructs it directly, so C++ never formats prose.
 */
export class UblkError extends Error {
  /** The failing command or syscall, e.g. 'ADD_DEV', 'OPEN /dev/ublk-control'. */
  readonly op: string;
  /** What went wrong in words, when more is known than the errno says (it ends the message). */
  readonly detail: string | undefined;
  /** The device the command was for, or undefined. */
  readonly devId: number | undefined;
  /** Positive errno value. */
  readonly errno: number;
  /** Errno name, e.g. 'EEXIST'. */
  readonly code: string;

  constructor(op: string, devId: number | undefined, errno: number, detail?: string) {
    const code = errnoName(errno);
    const id = devId !== undefined && devId >= 0 ? devId : undefined;
    const hint = detail ?? commandHints[op]?.[code] ?? errnoText[code] ?? `errno ${errno}`;
    super(`${op}${id !== undefined ? ` dev ${id}` : ''}: ${code} (${hint})`);
    this.name = 'UblkError';
    this.op = op;
    this.detail = detail;
    this.devId = id;
    this.errno = errno;
    this.code = code;
  }
}

/**
 * A request that can never succeed as written: a bad argument or manifest
 * field. Raised before anything is created, and names the field.
 */
export class SpecError extends Error {
  /** The offending field, e.g. 'depth' or 'spec.queues'. */
  readonly field: string;
  /** What is wrong with it, e.g. 'must be between 1 and 4096, got 0'. */
  readonly detail: string;

  constructor(field: string, detail: string) {
    super(`${field}: ${detail}`);
    this.name = 'SpecError';
    this.field = field;
    this.detail = detail;
  }
}

/** The host cannot run ublk at all: no driver, no permission. */
export class EnvironmentError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'EnvironmentError';
  }
}
