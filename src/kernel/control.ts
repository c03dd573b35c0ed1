import * as fs from 'node:fs';
import { EnvironmentError, ERRNO, UblkError } from '../errors';
import { MAX_DEVICE_ID } from '../spec/limits';
import { native, NativeControlDevice, NativeDevInfo, NativeParams } from './native';
import {
  ATTR_FUA,
  ATTR_READ_ONLY,
  ATTR_ROTATIONAL,
  ATTR_VOLATILE_CACHE,
  DeviceState,
  deviceStateName,
  featureNames,
  PARAM_TYPE_BASIC,
  PARAM_TYPE_DISCARD,
  UBLK_F_CMD_IOCTL_ENCODE,
  UBLK_F_UPDATE_SIZE,
} from './uapi';

/** Where the kernel exposes the ublk control device. */
export const CONTROL_PATH = '/dev/ublk-control';
/** sysfs class listing every ublk character device (one per device, whoever made it). */
export const CHAR_CLASS_DIR = '/sys/class/ublk-char';

/** A ublk device as the kernel describes it (GET_DEV_INFO). */
export interface DeviceInfo {
  id: number;
  state: DeviceState | `UNKNOWN_${number}`;
  queues: number;
  depth: number;
  maxIoSize: number;
  /** pid of the process serving it (the one that sent START_DEV or END_USER_RECOVERY). */
  serverPid: number;
  flags: bigint;
  flagNames: string[];
  ownerUid: number;
  ownerGid: number;
  charPath: string;
  blockPath: string;
}

/** Device parameters in user terms; converted to struct ublk_params. */
export interface DeviceParams {
  sizeBytes: number;
  logicalBlockSize: number;
  physicalBlockSize?: number;
  /** Largest single request, in bytes (defaults to the device's maxIoSize). */
  maxIoSize: number;
  readOnly?: boolean;
  rotational?: boolean;
  volatileCache?: boolean;
  fua?: boolean;
  discard?: { granularity: number; maxDiscardBytes: number; maxWriteZeroesBytes: number };
}

/** Parameters read back from the kernel, with the device numbers it assigned. */
export interface DeviceParamsReadback extends DeviceParams {
  disk?: { major: number; minor: number };
  char?: { major: number; minor: number };
}

/** Options of ADD_DEV. */
export interface AddDeviceOptions {
  /** Fixed device id; omitted: the kernel picks the lowest free one. */
  id?: number;
  queues: number;
  depth: number;
  maxIoSize: number;
  flags?: bigint;
}

function toDeviceInfo(d: NativeDevInfo): DeviceInfo {
  return {
    id: d.devId,
    state: deviceStateName(d.state),
    queues: d.queues,
    depth: d.depth,
    maxIoSize: d.maxIoBufBytes,
    serverPid: d.serverPid,
    flags: d.flags,
    flagNames: featureNames(d.flags),
    ownerUid: d.ownerUid,
    ownerGid: d.ownerGid,
    charPath: `/dev/ublkc${d.devId}`,
    blockPath: `/dev/ublkb${d.devId}`,
  };
}

function shiftOf(bytes: number): number {
  return Math.log2(bytes);
}

/** Converts user-level parameters to the kernel's struct. */
export function toNativeParams(p: DeviceParams): NativeParams {
  let attrs = 0;
  if (p.readOnly) attrs |= ATTR_READ_ONLY;
  if (p.rotational) attrs |= ATTR_ROTATIONAL;
  if (p.volatileCache) attrs |= ATTR_VOLATILE_CACHE;
  if (p.fua) attrs |= ATTR_FUA;
  const physical = p.physicalBlockSize ?? Math.max(p.logicalBlockSize, 4096);
  const params: NativeParams = {
    types: PARAM_TYPE_BASIC,
    basic: {
      attrs,
      logicalBsShift: shiftOf(p.logicalBlockSize),
      physicalBsShift: shiftOf(physical),
      ioOptShift: shiftOf(physical),
      ioMinShift: shiftOf(p.logicalBlockSize),
      maxSectors: Math.floor(p.maxIoSize / 512),
      chunkSectors: 0,
      devSectors: p.sizeBytes / 512,
    },
  };
  if (p.discard) {
    params.types |= PARAM_TYPE_DISCARD;
    params.discard = {
      discardAlignment: 0,
      discardGranularity: p.discard.granularity,
      maxDiscardSectors: Math.floor(p.discard.maxDiscardBytes / 512),
      maxWriteZeroesSectors: Math.floor(p.discard.maxWriteZeroesBytes / 512),
      maxDiscardSegments: 1,
    };
  }
  return params;
}

function fromNativeParams(p: NativeParams): DeviceParamsReadback {
  const basic = p.basic!;
  const out: DeviceParamsReadback = {
    sizeBytes: basic.devSectors * 512,
    logicalBlockSize: 2 ** basic.logicalBsShift,
    physicalBlockSize: 2 ** basic.physicalBsShift,
    maxIoSize: basic.maxSectors * 512,
    readOnly: (basic.attrs & ATTR_READ_ONLY) !== 0,
    rotational: (basic.attrs & ATTR_ROTATIONAL) !== 0,
    volatileCache: (basic.attrs & ATTR_VOLATILE_CACHE) !== 0,
    fua: (basic.attrs & ATTR_FUA) !== 0,
  };
  if (p.types & PARAM_TYPE_DISCARD && p.discard) {
    out.discard = {
      granularity: p.discard.discardGranularity,
      maxDiscardBytes: p.discard.maxDiscardSectors * 512,
      maxWriteZeroesBytes: p.discard.maxWriteZeroesSectors * 512,
    };
  }
  if (p.devt && p.devt.diskMajor !== 0) {
    out.disk = { major: p.devt.diskMajor, minor: p.devt.diskMinor };
    out.char = { major: p.devt.charMajor, minor: p.devt.charMinor };
  }
  return out;
}

/**
 * A device id checked before it reaches the kernel: the native side passes
 * it as 32 bits, so a larger number would wrap onto another device. The
 * kernel numbers devices 0 to MAX_DEVICE_ID (UBLK_MAX_UBLKS, its minor space).
 */
function checkedId(op: string, id: number): number {
  if (!Number.isInteger(id) || id < 0 || id > MAX_DEVICE_ID) {
    throw new UblkError(
      op,
      undefined,
      ERRNO.EINVAL,
      `device id must be 0 to ${MAX_DEVICE_ID}, got ${String(id).slice(0, 40)}`,
    );
  }
  return id;
}

/** Explains why /dev/ublk-control could not be opened, in terms a user can act on. */
function explainOpenFailure(err: UblkError, path: string): Error {
  if (err.code === 'ENOENT') {
    return new EnvironmentError(
      `${path} does not exist: this kernel has no ublk driver loaded ` +
        `(needs CONFIG_BLK_DEV_UBLK and 'modprobe ublk_drv'; Linux 6.0 or newer)`,
    );
  }
  if (err.code === 'EACCES' || err.code === 'EPERM') {
    return new EnvironmentError(`${path}: permission denied: ublk devices are managed as root`);
  }
  return err;
}

/** Where the kernel says who may use io_uring (Linux 6.6+): 0 everyone, 1 root and kernel.io_uring_group, 2 no one. */
export const IO_URING_DISABLED_PATH = '/proc/sys/kernel/io_uring_disabled';

function readIoUringDisabled(): string | undefined {
  try {
    return fs.readFileSync(IO_URING_DISABLED_PATH, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/**
 * Says why the io_uring a control command is sent on could not be set up,
 * in terms a user can act on: the failure is io_uring's on this host, not
 * the command's. `setting` reads kernel.io_uring_disabled (tests pass their own).
 */
export function explainRingSetupFailure(
  err: UblkError,
  setting: () => string | undefined = readIoUringDisabled,
): EnvironmentError {
  const base = `cannot set up an io_uring (${err.code}), which every ublk command is sent on`;
  if (err.code === 'EPERM') {
    const value = setting();
    if (value === '2') {
      return new EnvironmentError(
        `${base}: io_uring is disabled on this host (${IO_URING_DISABLED_PATH} is 2); set kernel.io_uring_disabled to 0`,
      );
    }
    if (value === '1') {
      return new EnvironmentError(
        `${base}: io_uring is limited to root and kernel.io_uring_group here (${IO_URING_DISABLED_PATH} is 1), and this process is neither`,
      );
    }
    return new EnvironmentError(`${base}: it was refused, likely by a seccomp filter (a container runtime's profile)`);
  }
  if (err.code === 'ENOSYS')
    return new EnvironmentError(`${base}: this kernel has no io_uring, or a seccomp filter hides it`);
  if (err.code === 'EINVAL')
    return new EnvironmentError(`${base}: this kernel's io_uring lacks 128-byte SQEs (Linux 5.19+)`);
  if (err.code === 'ENOMEM') {
    return new EnvironmentError(
      `${base}: out of memory, or the locked-memory limit (ulimit -l) is too low for the ring`,
    );
  }
  return new EnvironmentError(`${base}`);
}

/**
 * Why GET_FEATURES failed where that only means the kernel has no such
 * command (it came in 6.5), so every optional feature is absent and the
 * pre-6.4 command numbers are used: ENODEV is what 6.1–6.4 answer, as they
 * look up a device by dev_id (−1 here) before they look at the opcode; the
 * rest are how an unknown command fails elsewhere (libublk-rs treats them alike).
 */
const NO_GET_FEATURES = ['ENODEV', 'EOPNOTSUPP', 'EINVAL', 'ENOTTY', 'ENOTSUP', 'UNKNOWN_524'];

/**
 * Whether a control command failed because this kernel does not know it
 * (a command newer than the kernel): how ublk_drv answers an unknown
 * opcode has changed over the versions (ENOTSUPP, 524, before EOPNOTSUPP).
 */
export function isUnknownCommand(err: unknown): boolean {
  return err instanceof UblkError && UNKNOWN_COMMAND.includes(err.code);
}

const UNKNOWN_COMMAND = ['EOPNOTSUPP', 'ENOTSUP', 'UNKNOWN_524', 'ENOTTY', 'EINVAL'];

/**
 * A handle on /dev/ublk-control: the kernel's ublk control commands
 * (features, add, parameters, start, stop, delete, recovery, info).
 * Every method returns a Promise and runs off the JS thread.
 */
export class UblkControl {
  /** Feature flags the kernel supports (GET_FEATURES; 0n on kernels before 6.5). */
  readonly features: bigint;
  /** True on kernels that only understand the pre-6.4 command numbers. */
  readonly legacyOpcodes: boolean;
  private readonly dev: NativeControlDevice;

  private constructor(dev: NativeControlDevice, features: bigint, legacyOpcodes: boolean) {
    this.dev = dev;
    this.features = features;
    this.legacyOpcodes = legacyOpcodes;
  }

  /** Opens the control device and probes the kernel's features and command encoding. */
  static async open(path: string = CONTROL_PATH): Promise<UblkControl> {
    let dev: NativeControlDevice;
    try {
      dev = new (native().ControlDevice)(path);
    } catch (err) {
      throw err instanceof UblkError ? explainOpenFailure(err, path) : err;
    }
    return UblkControl.probe(dev);
  }

  /**
   * Probes an open control device: its features (GET_FEATURES) and which
   * command numbers it understands. Tests hand in a stand-in device.
   */
  static async probe(dev: NativeControlDevice): Promise<UblkControl> {
    let features = 0n;
    let legacy = false;
    try {
      features = await dev.getFeatures();
    } catch (err) {
      const ringFailed = err instanceof UblkError && err.op === 'IO_URING_SETUP';
      // Kernels before 6.5 have no GET_FEATURES: treat that as "no optional
      // features" and use the command numbers every kernel understands.
      if (!(err instanceof UblkError) || ringFailed || !NO_GET_FEATURES.includes(err.code)) {
        dev.close();
        throw ringFailed ? explainRingSetupFailure(err) : err;
      }
      legacy = true;
    }
    dev.setLegacyOpcodes(legacy);
    return new UblkControl(dev, features, legacy);
  }

  /** Names of the kernel's feature flags. */
  get featureNames(): string[] {
    return featureNames(this.features);
  }

  /** ADD_DEV: creates a device (state DEAD until started); resolves with what the kernel granted. */
  async addDevice(opts: AddDeviceOptions): Promise<DeviceInfo> {
    let flags = opts.flags ?? 0n;
    if (this.features & UBLK_F_CMD_IOCTL_ENCODE) flags |= UBLK_F_CMD_IOCTL_ENCODE;
    // Asked for wherever the kernel has it: the flags ADD_DEV hands back say whether this device can be resized live.
    if (this.features & UBLK_F_UPDATE_SIZE) flags |= UBLK_F_UPDATE_SIZE;
    const info = await this.dev.addDev({
      devId: opts.id === undefined ? -1 : checkedId('ADD_DEV', opts.id),
      queues: opts.queues,
      depth: opts.depth,
      maxIoBufBytes: opts.maxIoSize,
      flags,
    });
    return toDeviceInfo(info);
  }

  /** SET_PARAMS: size, block sizes, attributes; only before START_DEV. */
  async setParams(id: number, params: DeviceParams): Promise<void> {
    await this.dev.setParams(checkedId('SET_PARAMS', id), toNativeParams(params));
  }

  /** GET_PARAMS. */
  async getParams(id: number): Promise<DeviceParamsReadback> {
    return fromNativeParams(await this.dev.getParams(checkedId('GET_PARAMS', id)));
  }

  /** START_DEV: waits until every queue has fetched its tags, then exposes /dev/ublkbN. */
  async startDevice(id: number, serverPid: number = process.pid): Promise<void> {
    await this.dev.startDev(checkedId('START_DEV', id), serverPid);
  }

  /** STOP_DEV: removes /dev/ublkbN and aborts the queues' pending fetches; the device stays (DEAD). */
  async stopDevice(id: number): Promise<void> {
    await this.dev.stopDev(checkedId('STOP_DEV', id));
  }

  /**
   * TRY_STOP_DEV (7.0+, UBLK_F_SAFE_STOP_DEV): STOP_DEV unless /dev/ublkbN
   * is open — mounted, held by a process, stacked under another device —
   * which fails with EBUSY and leaves the device serving. The kernel checks
   * and shuts out new openers under one lock, so nothing can open the
   * device between the check and the stop. ENODEV also when the device has
   * no disk to stop (DEAD).
   */
  async tryStopDevice(id: number): Promise<void> {
    await this.dev.tryStopDev(checkedId('TRY_STOP_DEV', id));
  }

  /**
   * DEL_DEV: removes the device. The synchronous form waits until every
   * opener of /dev/ublkcN (the server) has closed it, holding a thread of
   * libuv's pool meanwhile; DEL_DEV_ASYNC (6.9+; older kernels fail it as
   * an unknown command, see isUnknownCommand) returns at once and the
   * kernel frees the device, and its id, when the server lets go.
   */
  async deleteDevice(id: number, opts: { async?: boolean } = {}): Promise<void> {
    await this.dev.delDev(checkedId('DEL_DEV', id), opts.async ?? false);
  }

  /** START_USER_RECOVERY: prepares a QUIESCED device for a new server. */
  async startUserRecovery(id: number): Promise<void> {
    await this.dev.startUserRecovery(checkedId('START_USER_RECOVERY', id));
  }

  /** END_USER_RECOVERY: the new server (pid) has fetched every tag; the device goes LIVE. */
  async endUserRecovery(id: number, serverPid: number = process.pid): Promise<void> {
    await this.dev.endUserRecovery(checkedId('END_USER_RECOVERY', id), serverPid);
  }

  /**
   * QUIESCE_DEV (Linux 6.16+, devices added with UBLK_F_QUIESCE): the
   * kernel stops handing requests to the server (new IO waits in the
   * kernel) and completes the server's idle fetches with
   * UBLK_IO_RES_ABORT, so the server answers what it holds, closes
   * /dev/ublkcN and the device goes QUIESCED for a new server to recover.
   * Fails with EBUSY when some queue had no idle tag within `timeoutMs`
   * (the device is then left quiescing; sending it again completes it).
   */
  async quiesceDevice(id: number, timeoutMs: number): Promise<void> {
    if (!Number.isInteger(timeoutMs) || timeoutMs < 1 || timeoutMs > 0xffffffff) {
      throw new UblkError('QUIESCE_DEV', id, ERRNO.EINVAL, `timeout must be 1 to ${0xffffffff} ms, got ${timeoutMs}`);
    }
    await this.dev.quiesceDev(checkedId('QUIESCE_DEV', id), timeoutMs);
  }

  /** GET_DEV_INFO2 (GET_DEV_INFO on older kernels). */
  async getDeviceInfo(id: number): Promise<DeviceInfo> {
    return toDeviceInfo(await this.dev.getDevInfo(checkedId('GET_DEV_INFO', id)));
  }

  /** GET_QUEUE_AFFINITY: the CPUs whose IO lands on queue `qid`. */
  async getQueueAffinity(id: number, qid: number): Promise<number[]> {
    return this.dev.getQueueAffinity(checkedId('GET_QUEUE_AFFINITY', id), qid);
  }

  /**
   * UPDATE_SIZE (Linux 6.16+): the LIVE device's new capacity, announced
   * to its users at once (a mounted file system can then grow into it).
   * Only for a device started and serving: the caller makes sure whatever
   * serves it can already answer IO up to the new size.
   */
  async updateSize(id: number, sizeBytes: number): Promise<void> {
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 512 !== 0) {
      throw new UblkError(
        'UPDATE_SIZE',
        id,
        ERRNO.EINVAL,
        `size must be a positive multiple of 512 bytes, got ${String(sizeBytes).slice(0, 40)}`,
      );
    }
    await this.dev.updateSize(checkedId('UPDATE_SIZE', id), BigInt(sizeBytes / 512));
  }

  /**
   * Every ublk device on the host, including ones made by other tools:
   * the ids under /sys/class/ublk-char, each asked for its info. A device
   * deleted while listing is left out.
   */
  async listDevices(): Promise<DeviceInfo[]> {
    const ids = listDeviceIds();
    const infos = await Promise.all(
      ids.map(async (id) => {
        try {
          return await this.getDeviceInfo(id);
        } catch (err) {
          if (err instanceof UblkError && err.code === 'ENODEV') return undefined;
          throw err;
        }
      }),
    );
    return infos.filter((i): i is DeviceInfo => i !== undefined);
  }

  /** Releases the control device; commands already sent still complete. */
  close(): void {
    this.dev.close();
  }
}

/**
 * The control commands, as the device lifecycle and the launcher use them:
 * UblkControl, or an in-memory stand-in in tests.
 */
export type ControlCommands = Pick<
  UblkControl,
  | 'features'
  | 'addDevice'
  | 'setParams'
  | 'getParams'
  | 'startDevice'
  | 'stopDevice'
  | 'tryStopDevice'
  | 'deleteDevice'
  | 'startUserRecovery'
  | 'endUserRecovery'
  | 'quiesceDevice'
  | 'getDeviceInfo'
  | 'getQueueAffinity'
  | 'updateSize'
  | 'listDevices'
  | 'close'
>;

/** Device ids from /sys/class/ublk-char (empty when the driver is absent). */
export function listDeviceIds(): number[] {
  let names: string[];
  try {
    names = fs.readdirSync(CHAR_CLASS_DIR);
  } catch {
    return [];
  }
  return names
    .map((n) => /^ublkc(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
}
