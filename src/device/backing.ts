import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SpecError } from '../errors';
import { native } from '../kernel/native';
import { DeviceSpec } from '../spec/device-spec';
import { loopFileTrustProblem, PathWalk, walkPath } from './trusted-path';

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
  /**
   * The loop file this process created (create: true and it was missing),
   * as fileIdentity gives it: the device's record keeps it, so an online resize grows
   * only a file ublk-ts made, and only while the name still reaches it.
   */
  createdFile?: string;
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
export function memoryPath(devId: number, dir = MEMORY_DIR): string {
  return path.join(dir, `dev${devId}.mem`);
}

/**
 * Removes a memory device's bytes: called when the device itself is
 * deleted. Only from a memory directory that is ours: one planted (or a
 * link) holds nothing of ours, and root must not unlink names in it.
 */
export function discardMemory(devId: number, dir = MEMORY_DIR): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(dir);
  } catch {
    return;
  }
  if (!st.isDirectory() || st.uid !== euid() || (st.mode & 0o777) !== 0o700) return;
  fs.rmSync(memoryPath(devId, dir), { force: true });
}

/** Where openBacking may look besides the spec. */
export interface BackingOptions {
  /** Take over device `recoverDevId`'s store instead of making a new one. */
  recoverDevId?: number;
  /** The memory target's directory; tests point it elsewhere. Default MEMORY_DIR. */
  memoryDir?: string;
  /**
   * Refuse a loop file reached through a symbolic link that others could
   * re-point (one in a directory writable by others), or a hard link in such
   * a directory: what a root server does for a manifest (--insecure-permissions turns it off).
   */
  checkPermissions?: boolean;
}

/**
 * Opens what a target stores its data in, before the device exists, so
 * every problem with it is reported while nothing needs undoing:
 * loop — the backing file (created sparse if asked), O_DIRECT where it
 * works, locked exclusively against other ublk-ts devices;
 * memory — a sparse tmpfs file of the device size (pages appear only when written).
 */
export function openBacking(spec: DeviceSpec, opts: BackingOptions = {}): Backing | undefined {
  if (spec.target.type === 'memory') {
    const dir = opts.memoryDir ?? MEMORY_DIR;
    ownMemoryDir(dir);
    return opts.recoverDevId === undefined ? createMemory(spec, dir) : reopenMemory(spec, opts.recoverDevId, dir);
  }
  if (spec.target.type === 'loop') {
    const target = opts.recoverDevId === undefined ? spec.target : { ...spec.target, create: false };
    return openLoop(spec, target, opts.checkPermissions ?? false);
  }
  return undefined;
}

function euid(): number {
  return process.geteuid?.() ?? 0;
}

/**
 * Makes sure the memory directory is this user's own: /dev/shm is writable
 * by everyone, so a directory (or a link) of that name may have been put
 * there by anyone. It must be a real directory, owned by us, mode 0700;
 * anything else is refused, never used or repaired. The check is made on
 * the opened directory, not on the name, so nothing can be swapped in
 * between; the sticky bit of /dev/shm keeps others from renaming it after.
 */
function ownMemoryDir(dir: string): void {
  try {
    fs.mkdirSync(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new SpecError(
        'target',
        `cannot create the memory directory ${dir}: ${(err as NodeJS.ErrnoException).code}`,
      );
    }
  }
  let fd: number;
  try {
    fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // O_DIRECTORY|O_NOFOLLOW on a link fails ENOTDIR like a file would: lstat tells them apart for the message.
    const isLink = code === 'ELOOP' || (code === 'ENOTDIR' && isSymbolicLink(dir));
    const what = isLink
      ? 'is a symbolic link'
      : code === 'ENOTDIR'
        ? 'is not a directory'
        : `cannot be opened (${code})`;
    throw new SpecError('target', `refusing the memory directory ${dir}: it ${what}; remove it and try again`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (st.uid !== euid()) {
      throw new SpecError(
        'target',
        `refusing the memory directory ${dir}: it is owned by uid ${st.uid}, not ${euid()}; someone else made it — remove it and try again`,
      );
    }
    if ((st.mode & 0o777) !== 0o700) {
      throw new SpecError(
        'target',
        `refusing the memory directory ${dir}: its mode is ${(st.mode & 0o777).toString(8).padStart(4, '0')}, not 0700; fix with chmod 0700`,
      );
    }
  } finally {
    fs.closeSync(fd);
  }
}

function isSymbolicLink(p: string): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

function createMemory(spec: DeviceSpec, dir: string): Backing {
  let file = path.join(dir, `.starting-${process.pid}-${crypto.randomBytes(6).toString('hex')}.mem`);
  // O_EXCL|O_NOFOLLOW: a new file of our own, never one (or a link) that was waiting under this name.
  const fd = fs.openSync(
    file,
    fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW,
    0o600,
  );
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
      const bound = memoryPath(devId, dir);
      fs.renameSync(file, bound);
      file = bound;
    },
    close: (opts) => {
      fs.closeSync(fd);
      if (opts?.discardCreated) fs.rmSync(file, { force: true });
    },
  };
}

/**
 * Re-opens a crashed server's memory file: without following a link, and
 * only if it is a plain file of ours that no other name points at (a hard
 * link would let a second name see or outlive the data).
 */
function reopenMemory(spec: DeviceSpec, devId: number, dir: string): Backing {
  const file = memoryPath(devId, dir);
  const fd = openMemoryFile(devId, dir);
  const size = fs.fstatSync(fd).size;
  // Larger is a resize that grew the file and stopped before the record
  // was written: the extra bytes are zeroes the device may already show.
  if (size < spec.sizeBytes) {
    fs.closeSync(fd);
    throw new SpecError('size', `${file} holds ${size} bytes, less than the device's ${spec.sizeBytes}`);
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

/**
 * Opens device `devId`'s memory file read-write, refusing anything but a
 * plain file of ours that no other name points at: for a recovering
 * server, and for an online resize, which changes its size.
 */
export function openMemoryFile(devId: number, dir = MEMORY_DIR): number {
  const file = memoryPath(devId, dir);
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      throw new SpecError(
        'target',
        `the memory of device ${devId} is gone (${file} does not exist): it cannot be recovered`,
      );
    }
    if (code === 'ELOOP')
      throw new SpecError('target', `refusing ${file}: it is a symbolic link, not device ${devId}'s memory`);
    if (code === 'EISDIR') throw new SpecError('target', `refusing ${file}: it is not a regular file`);
    throw err;
  }
  const st = fs.fstatSync(fd);
  const problem = !st.isFile()
    ? 'it is not a regular file'
    : st.uid !== euid()
      ? `it is owned by uid ${st.uid}, not ${euid()}`
      : st.nlink !== 1
        ? `it has ${st.nlink} links, not 1`
        : undefined;
  if (problem) {
    fs.closeSync(fd);
    throw new SpecError('target', `refusing ${file}: ${problem}`);
  }
  return fd;
}

type LoopTarget = Extract<DeviceSpec['target'], { type: 'loop' }>;

function openLoop(spec: DeviceSpec, target: LoopTarget, checkPermissions: boolean): Backing {
  const file = target.file;
  let created: fs.Stats | undefined;
  if (target.create && !fs.existsSync(file)) {
    if (checkPermissions) {
      // Before root creates anything there: a link on the way that others could re-point would
      // let them choose the directory root writes into (and later unlinks from).
      const parent = walkPathOrExplain(path.dirname(file));
      if (parent.linkProblem) {
        throw new SpecError(
          'target.file',
          `refusing to create ${file}: ${parent.linkProblem}; fix the ownership or permissions, or pass --insecure-permissions`,
        );
      }
    }
    // O_CREAT|O_EXCL never follows a link at the last component: a file of our own, or an error.
    const fd = openOrExplain(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
    created = fs.fstatSync(fd);
    try {
      fs.ftruncateSync(fd, spec.sizeBytes);
      fs.fsyncSync(fd);
    } catch (err) {
      removeIfStill(file, created);
      throw err;
    } finally {
      fs.closeSync(fd);
    }
    // The new name must survive a crash too, or the device's data would
    // land in a file that is gone after it.
    fsyncDirectory(path.dirname(file));
  }
  const discard = (): void => {
    if (created) removeIfStill(file, created);
  };
  try {
    const open = checkedOpener(file, checkPermissions);
    const { fd, directIo } = openWithDirectIoPolicy(spec, target, open);
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
      createdFile: created ? fileIdentity(fs.fstatSync(fd, { bigint: true })) : undefined,
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

/**
 * A file's identity as a record keeps it: `dev:ino:birth` (bigint stat: an
 * inode number may not fit a double). The birth time tells a file apart
 * from a later one that was given the same inode number after it was
 * deleted; where the file system keeps none it is 0 and only dev:ino count.
 */
export function fileIdentity(st: fs.BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.birthtimeNs}`;
}

/** Unlinks `file` only if it is still the file this process created, not whatever its name reaches now. */
function removeIfStill(file: string, created: fs.Stats): void {
  let now: fs.Stats;
  try {
    now = fs.lstatSync(file);
  } catch {
    return;
  }
  if (now.isFile() && now.dev === created.dev && now.ino === created.ino) fs.rmSync(file, { force: true });
}

function walkPathOrExplain(dir: string): PathWalk {
  try {
    return walkPath(dir);
  } catch (err) {
    throw new SpecError('target.file', `${dir} cannot be checked (${(err as NodeJS.ErrnoException).code ?? ''})`);
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

/**
 * How a loop file is opened by root: the path is walked once, link by
 * link (trusted-path.ts); a link others could re-point is refused when
 * permissions are checked; the file the walk ended at is opened by its
 * resolved path with O_NOFOLLOW, and the descriptor is checked to be that
 * very file (device and inode) — so a link or file swapped in after the
 * walk is never served — and a regular file or block device. Exported for
 * the tests, which swap files between the walk and the open.
 */
export function checkedOpener(file: string, checkPermissions: boolean): (flags: number) => number {
  let walk: PathWalk;
  try {
    walk = walkPath(file);
  } catch (err) {
    throw explainOpenError(file, err);
  }
  const problem = checkPermissions ? loopFileTrustProblem(walk) : undefined;
  if (problem) {
    throw new SpecError(
      'target.file',
      `refusing ${file}: ${problem}; fix the ownership or permissions, or pass --insecure-permissions`,
    );
  }
  return (flags) => {
    let fd: number;
    try {
      fd = fs.openSync(walk.resolved, flags | fs.constants.O_NOFOLLOW);
    } catch (err) {
      // The walk ended at a file, not a link: a link there now was put there since.
      if ((err as NodeJS.ErrnoException).code === 'ELOOP')
        throw new SpecError('target.file', `refusing ${file}: it was replaced while it was being opened`);
      throw explainOpenError(file, err);
    }
    const st = fs.fstatSync(fd);
    const problem =
      st.dev !== walk.stat.dev || st.ino !== walk.stat.ino
        ? 'it was replaced while it was being opened'
        : !st.isFile() && !st.isBlockDevice()
          ? 'it is not a regular file or block device'
          : undefined;
    if (problem) {
      fs.closeSync(fd);
      throw new SpecError('target.file', `refusing ${file}: ${problem}`);
    }
    return fd;
  };
}

function explainOpenError(file: string, err: unknown): unknown {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS')
    return new SpecError('target.file', `${file}: permission denied (${code})`);
  if (code === 'ENOENT') return new SpecError('target.file', `${file} does not exist`);
  if (code === 'ELOOP') return new SpecError('target.file', `${file}: too many symbolic links`);
  return err;
}

/** Opens `file` (named `shown` in errors), turning the usual failures into a SpecError naming it. */
function openOrExplain(file: string, flags: number, mode?: number, shown = file): number {
  try {
    return fs.openSync(file, flags, mode);
  } catch (err) {
    throw explainOpenError(shown, err);
  }
}

/** The file system's O_DIRECT alignment for this fd, or undefined when unknown. */
function directIoAlignment(fd: number): number | undefined {
  if (fs.fstatSync(fd).isBlockDevice()) return native().blockDeviceGeometry(fd).logicalBlockSize;
  return native().dioAlignment(fd)?.offset || undefined;
}

function openWithDirectIoPolicy(
  spec: DeviceSpec,
  target: LoopTarget,
  open: (flags: number) => number,
): { fd: number; directIo: boolean } {
  const access = spec.readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR;
  if (target.directIo === false) return { fd: open(access), directIo: false };
  let fd: number;
  try {
    fd = open(access | fs.constants.O_DIRECT);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
    if (target.directIo === true) {
      throw new SpecError(
        'target.directIo',
        `${target.file} is on a file system without O_DIRECT support: use directIo auto or false`,
      );
    }
    return { fd: open(access), directIo: false };
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
    return { fd: open(access), directIo: false };
  }
  return { fd, directIo: true };
}

/** What resizeBacking needs to know besides the spec. */
export interface ResizeBackingOptions {
  /** The loop file ublk-ts created for the device (fileIdentity, see Backing.createdFile): only that file is grown. */
  createdFile?: string;
  /** Refuse a link on the way to the loop file that others could re-point (see openBacking). */
  checkPermissions?: boolean;
  /** The memory target's directory; tests point it elsewhere. Default MEMORY_DIR. */
  memoryDir?: string;
}

/**
 * Makes device `devId`'s store ready for the device to be `sizeBytes`
 * long, before the kernel is told (an online resize): memory — its file is
 * set to that size (the queues see a larger file on their next request
 * beyond the old end; a shrink gives the tail's memory back); loop — a
 * file ublk-ts created, still reached by its name, is grown (never
 * shrunk); any other file, or a block device, must already be that large.
 * null stores nothing; js targets are not resized (the caller refuses them).
 */
export function resizeBacking(
  devId: number,
  spec: DeviceSpec,
  sizeBytes: number,
  opts: ResizeBackingOptions = {},
): void {
  if (spec.target.type === 'memory') {
    const dir = opts.memoryDir ?? MEMORY_DIR;
    ownMemoryDir(dir);
    const fd = openMemoryFile(devId, dir);
    try {
      fs.ftruncateSync(fd, sizeBytes);
    } finally {
      fs.closeSync(fd);
    }
    return;
  }
  if (spec.target.type !== 'loop') return;
  const file = spec.target.file;
  const open = checkedOpener(file, opts.checkPermissions ?? false);
  const fd = open(fs.constants.O_RDONLY);
  let st: fs.BigIntStats;
  let size: number;
  try {
    st = fs.fstatSync(fd, { bigint: true });
    size = st.isBlockDevice() ? native().blockDeviceGeometry(fd).sizeBytes : Number(st.size);
  } finally {
    fs.closeSync(fd);
  }
  if (size >= sizeBytes) return;
  if (opts.createdFile === undefined || !st.isFile() || fileIdentity(st) !== opts.createdFile) {
    const what = st.isBlockDevice() ? 'a block device' : 'a file ublk-ts did not create';
    throw new SpecError(
      'size',
      `${file} holds ${size} bytes, less than the new size ${sizeBytes}; it is ${what}, which ublk-ts never grows: ` +
        'make it large enough (e.g. truncate -s) and try again',
    );
  }
  const writable = open(fs.constants.O_RDWR);
  try {
    // The name was opened afresh: it must still reach the file that was checked.
    if (fileIdentity(fs.fstatSync(writable, { bigint: true })) !== opts.createdFile) {
      throw new SpecError('target.file', `refusing to grow ${file}: it was replaced while it was being opened`);
    }
    fs.ftruncateSync(writable, sizeBytes);
    fs.fsyncSync(writable);
  } finally {
    fs.closeSync(writable);
  }
}
