import * as fs from 'node:fs';
import * as path from 'node:path';
import { SpecError } from '../errors';
import { native } from '../kernel/native';
import { DeviceSpec } from '../spec/device-spec';

/** An open backing store handed to the queue threads. */
export interface Backing {
  fd: number;
  /** Whether the loop target's file was opened with O_DIRECT. */
  directIo: boolean;
  /** Whether it is a block device (the loop target then discards with BLKDISCARD). */
  blockDevice: boolean;
  /** Whether it can give space back on discard: files can; a block device only if it supports discard. */
  discards: boolean;
  /** What it is, for logs. */
  description: string;
  /** Names the store after the device once the kernel has given it an id. */
  bindToDevice(devId: number): void;
  /** Closes it; with `discardCreated`, also removes a file this process created. */
  close(opts?: { discardCreated?: boolean }): void;
}

/**
 * Memory devices keep their bytes in a file in /dev/shm (tmpfs) rather
 * than an anonymous memfd: the file outlives a crashed server, so the next
 * server re-opens it and recovery loses nothing, without any process
 * having to hold a descriptor in between.
 */
export const MEMORY_DIR = '/dev/shm/ublk-ts';

/** Where device `devId`'s memory target keeps its bytes. */
export function memoryPath(devId: number): string {
  return path.join(MEMORY_DIR, `dev${devId}.mem`);
}

/** Removes a memory device's bytes: called when the device itself is deleted. */
export function discardMemory(devId: number): void {
  fs.rmSync(memoryPath(devId), { force: true });
}

/**
 * Opens what a target stores its data in, before the device exists, so
 * every problem with it is reported while nothing needs undoing:
 * loop — the backing file (created sparse if asked), O_DIRECT where it
 * works, locked exclusively against other ublk-ts devices;
 * memory — a sparse tmpfs file of the device size (pages appear only when written).
 */
export function openBacking(spec: DeviceSpec, opts: { recoverDevId?: number } = {}): Backing | undefined {
  if (spec.target.type === 'memory') {
    return opts.recoverDevId === undefined ? createMemory(spec) : reopenMemory(spec, opts.recoverDevId);
  }
  if (spec.target.type === 'loop') {
    const target = opts.recoverDevId === undefined ? spec.target : { ...spec.target, create: false };
    return openLoop(spec, target);
  }
  return undefined;
}

function createMemory(spec: DeviceSpec): Backing {
  fs.mkdirSync(MEMORY_DIR, { recursive: true, mode: 0o700 });
  let file = path.join(MEMORY_DIR, `.starting-${process.pid}-${Date.now()}.mem`);
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_TRUNC, 0o600);
  try {
    fs.ftruncateSync(fd, spec.sizeBytes);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
    throw err;
  }
  return {
    fd,
    directIo: false,
    blockDevice: false,
    discards: true,
    get description() {
      return `memory (${file})`;
    },
    bindToDevice: (devId) => {
      const bound = memoryPath(devId);
      fs.renameSync(file, bound);
      file = bound;
    },
    close: (opts) => {
      fs.closeSync(fd);
      if (opts?.discardCreated) fs.rmSync(file, { force: true });
    },
  };
}

function reopenMemory(spec: DeviceSpec, devId: number): Backing {
  const file = memoryPath(devId);
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDWR);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new SpecError(
        'target',
        `the memory of device ${devId} is gone (${file} does not exist): it cannot be recovered`,
      );
    }
    throw err;
  }
  if (fs.fstatSync(fd).size !== spec.sizeBytes) {
    fs.closeSync(fd);
    throw new SpecError('size', `${file} holds ${fs.statSync(file).size} bytes, not the device's ${spec.sizeBytes}`);
  }
  return {
    fd,
    directIo: false,
    blockDevice: false,
    discards: true,
    description: `memory (${file})`,
    bindToDevice: () => undefined,
    close: () => fs.closeSync(fd),
  };
}

type LoopTarget = Extract<DeviceSpec['target'], { type: 'loop' }>;

function openLoop(spec: DeviceSpec, target: LoopTarget): Backing {
  const file = target.file;
  let created = false;
  if (target.create && !fs.existsSync(file)) {
    const fd = openOrExplain(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    created = true;
    try {
      fs.ftruncateSync(fd, spec.sizeBytes);
      fs.fsyncSync(fd);
    } catch (err) {
      fs.rmSync(file, { force: true });
      throw err;
    } finally {
      fs.closeSync(fd);
    }
    // The new name must survive a crash too, or the device's data would
    // land in a file that is gone after it.
    fsyncDirectory(path.dirname(file));
  }
  const discard = (): void => {
    if (created) fs.rmSync(file, { force: true });
  };
  try {
    const { fd, directIo } = openWithDirectIoPolicy(spec, target);
    if (!native().flock(fd, true, true)) {
      fs.closeSync(fd);
      throw new SpecError(
        'target.file',
        `${file} is already in use by another ublk-ts device (it holds the file's lock)`,
      );
    }
    const blockDevice = fs.fstatSync(fd).isBlockDevice();
    return {
      fd,
      directIo,
      blockDevice,
      discards: !blockDevice || blockDeviceDiscards(fd),
      description: `${file} (${directIo ? 'direct IO' : 'buffered'}${spec.readOnly ? ', read-only' : ''})`,
      bindToDevice: () => undefined,
      close: (opts) => {
        fs.closeSync(fd);
        if (opts?.discardCreated) discard();
      },
    };
  } catch (err) {
    discard();
    throw err;
  }
}

function fsyncDirectory(dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Whether the block device open as `fd` supports discard, as its queue
 * reports in sysfs (a partition's queue is its disk's). Unknown counts as no.
 */
function blockDeviceDiscards(fd: number): boolean {
  const rdev = fs.fstatSync(fd, { bigint: true }).rdev;
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  const dir = `/sys/dev/block/${major}:${minor}`;
  for (const queue of [path.join(dir, 'queue'), path.join(dir, '..', 'queue')]) {
    try {
      return Number(fs.readFileSync(path.join(queue, 'discard_max_bytes'), 'utf8').trim()) > 0;
    } catch {
      continue;
    }
  }
  return false;
}

function openOrExplain(file: string, flags: number, mode?: number): number {
  try {
    return fs.openSync(file, flags, mode);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS')
      throw new SpecError('target.file', `${file}: permission denied (${code})`);
    if (code === 'ENOENT') throw new SpecError('target.file', `${file} does not exist`);
    throw err;
  }
}

/** The file system's O_DIRECT alignment for this fd, or undefined when unknown. */
function directIoAlignment(fd: number): number | undefined {
  if (fs.fstatSync(fd).isBlockDevice()) return native().blockDeviceGeometry(fd).logicalBlockSize;
  return native().dioAlignment(fd)?.offset || undefined;
}

function openWithDirectIoPolicy(spec: DeviceSpec, target: LoopTarget): { fd: number; directIo: boolean } {
  const access = spec.readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR;
  if (target.directIo === false) return { fd: openOrExplain(target.file, access), directIo: false };
  let fd: number;
  try {
    fd = openOrExplain(target.file, access | fs.constants.O_DIRECT);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
    if (target.directIo === true) {
      throw new SpecError(
        'target.directIo',
        `${target.file} is on a file system without O_DIRECT support: use directIo auto or false`,
      );
    }
    return { fd: openOrExplain(target.file, access), directIo: false };
  }
  const alignment = directIoAlignment(fd);
  if (alignment !== undefined && alignment > spec.logicalBlockSize) {
    fs.closeSync(fd);
    if (target.directIo === true) {
      throw new SpecError(
        'target.directIo',
        `${target.file} needs ${alignment}-byte aligned direct IO, larger than the logical block size ${spec.logicalBlockSize}`,
      );
    }
    return { fd: openOrExplain(target.file, access), directIo: false };
  }
  return { fd, directIo: true };
}
