import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from './native';
import { SpecError } from './errors';
import { formatSize, parseSize } from './sizes';

/** Targets a device can be created with. */
export const TARGET_TYPES = ['null', 'memory', 'loop', 'js'] as const;
export type TargetType = (typeof TARGET_TYPES)[number];

/** Direct IO on a loop target's backing file: auto uses it where the file system and block size allow. */
export type DirectIoMode = 'auto' | boolean;

/** A target as requested. */
export type TargetSpec =
  | { type: 'null' }
  | { type: 'memory' }
  | { type: 'loop'; file: string; create: boolean; directIo: DirectIoMode }
  | { type: 'js'; module: string; options: Record<string, unknown> };

/** What the kernel does with IO when the server dies (see the README's recovery section). */
export const RECOVERY_MODES = ['reissue', 'fail-inflight', 'fail-io', 'none'] as const;
export type RecoveryMode = (typeof RECOVERY_MODES)[number];

/** Loose target input (CLI flags, library calls, manifests). */
export interface TargetInput {
  type: string;
  file?: string;
  create?: boolean;
  directIo?: DirectIoMode | 'true' | 'false';
  module?: string;
  options?: Record<string, unknown>;
}

/** Defaults shared by ublkctl, the library and manifests. */
export const DEFAULTS = {
  queues: 1,
  depth: 128,
  maxIoSize: 512 * 1024,
  logicalBlockSize: 512,
} as const;

export const MAX_DEPTH = 4096;
export const LOGICAL_BLOCK_SIZES = [512, 1024, 2048, 4096] as const;
const MIN_IO_SIZE = 4096;
const MAX_IO_SIZE = 32 * 1024 * 1024;
const MAX_DEVICE_ID = (1 << 20) - 1;

/** A device request as a user writes it (CLI flags, library call). */
export interface DeviceSpecInput {
  target: string | TargetInput;
  size?: number | string;
  id?: number;
  queues?: number;
  depth?: number;
  maxIoSize?: number | string;
  logicalBlockSize?: number;
  readOnly?: boolean;
  recovery?: string;
}

/** A validated device request with every default applied. */
export interface DeviceSpec {
  target: TargetSpec;
  sizeBytes: number;
  id?: number;
  queues: number;
  depth: number;
  maxIoSize: number;
  logicalBlockSize: number;
  readOnly: boolean;
  recovery: RecoveryMode;
}

/**
 * The most queues a device can have here: the kernel caps nr_hw_queues at
 * the number of possible CPUs (silently), so more is refused up front.
 */
export function maxQueues(): number {
  try {
    const text = fs.readFileSync('/sys/devices/system/cpu/possible', 'utf8').trim();
    let count = 0;
    for (const range of text.split(',')) {
      const [lo, hi] = range.split('-').map(Number);
      count += hi === undefined ? 1 : hi - lo! + 1;
    }
    return Math.min(count, 4096);
  } catch {
    return 1;
  }
}

function integerIn(field: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw new SpecError(field, `must be a whole number between ${min} and ${max}, got ${JSON.stringify(value)}`);
  }
  if (value < min || value > max) throw new SpecError(field, `must be between ${min} and ${max}, got ${value}`);
  return value;
}

function bytesOf(field: string, value: unknown): number {
  const parsed = parseSize(value);
  if ('error' in parsed) throw new SpecError(field, parsed.error);
  return parsed.bytes;
}

/**
 * Checks a device request and applies defaults. Every failure is a
 * SpecError naming the field, raised before anything touches the kernel.
 */
export function normalizeDeviceSpec(input: DeviceSpecInput, limits = { maxQueues: maxQueues() }): DeviceSpec {
  const targetInput: TargetInput = typeof input.target === 'string' ? { type: input.target } : (input.target ?? { type: '' });
  const type = targetInput.type;
  if (!(TARGET_TYPES as readonly string[]).includes(type)) {
    throw new SpecError('target', `unknown target ${JSON.stringify(type)}: expected one of ${TARGET_TYPES.join(', ')}`);
  }
  const logicalBlockSize = input.logicalBlockSize ?? DEFAULTS.logicalBlockSize;
  if (!(LOGICAL_BLOCK_SIZES as readonly number[]).includes(logicalBlockSize)) {
    throw new SpecError('logicalBlockSize', `must be one of ${LOGICAL_BLOCK_SIZES.join(', ')}, got ${logicalBlockSize}`);
  }
  const target = normalizeTarget(targetInput);
  let sizeBytes: number;
  if (target.type === 'loop') {
    sizeBytes = loopSize(target, input.size === undefined ? undefined : bytesOf('size', input.size), input.readOnly ?? false);
  } else {
    if (input.size === undefined) throw new SpecError('size', `is required for the ${type} target`);
    sizeBytes = bytesOf('size', input.size);
  }
  if (sizeBytes === 0) throw new SpecError('size', 'must be greater than 0');
  if (sizeBytes % logicalBlockSize !== 0) {
    throw new SpecError('size', `must be a multiple of the logical block size (${logicalBlockSize}), got ${sizeBytes}`);
  }
  const queues = integerIn('queues', input.queues ?? DEFAULTS.queues, 1, limits.maxQueues);
  const depth = integerIn('depth', input.depth ?? DEFAULTS.depth, 1, MAX_DEPTH);
  const maxIoSize = bytesOf('maxIoSize', input.maxIoSize ?? DEFAULTS.maxIoSize);
  if (maxIoSize < MIN_IO_SIZE || maxIoSize > MAX_IO_SIZE || maxIoSize % 4096 !== 0) {
    throw new SpecError(
      'maxIoSize',
      `must be a multiple of 4KiB between ${formatSize(MIN_IO_SIZE)} and ${formatSize(MAX_IO_SIZE)}, got ${maxIoSize}`,
    );
  }
  const spec: DeviceSpec = {
    target,
    sizeBytes,
    queues,
    depth,
    maxIoSize,
    logicalBlockSize,
    readOnly: input.readOnly ?? false,
    recovery: recoveryMode(input.recovery),
  };
  if (input.id !== undefined) spec.id = integerIn('id', input.id, 0, MAX_DEVICE_ID);
  return spec;
}

function jsTarget(t: TargetInput): TargetSpec {
  if (typeof t.module !== 'string' || t.module === '') throw new SpecError('target.module', 'is required for the js target');
  if (!path.isAbsolute(t.module)) throw new SpecError('target.module', `must be an absolute path, got ${JSON.stringify(t.module)}`);
  if (!fs.existsSync(t.module)) throw new SpecError('target.module', `${t.module} does not exist`);
  const options = t.options ?? {};
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new SpecError('target.options', 'must be an object');
  }
  return { type: 'js', module: t.module, options };
}

function recoveryMode(value: string | undefined): RecoveryMode {
  const mode = value ?? 'reissue';
  if (!(RECOVERY_MODES as readonly string[]).includes(mode)) {
    throw new SpecError('recovery', `must be one of ${RECOVERY_MODES.join(', ')}, got ${JSON.stringify(mode)}`);
  }
  return mode as RecoveryMode;
}

function normalizeTarget(t: TargetInput): TargetSpec {
  if (t.type === 'null' || t.type === 'memory') return { type: t.type };
  if (t.type === 'js') return jsTarget(t);
  if (typeof t.file !== 'string' || t.file === '') throw new SpecError('target.file', 'is required for the loop target');
  if (!path.isAbsolute(t.file)) throw new SpecError('target.file', `must be an absolute path, got ${JSON.stringify(t.file)}`);
  let directIo: DirectIoMode;
  const d = t.directIo ?? 'auto';
  if (d === 'auto' || d === true || d === false) directIo = d;
  else if (d === 'true') directIo = true;
  else if (d === 'false') directIo = false;
  else throw new SpecError('target.directIo', `must be auto, true or false, got ${JSON.stringify(d)}`);
  return { type: 'loop', file: path.normalize(t.file), create: t.create ?? false, directIo };
}

/**
 * Size of a loop device: the backing file's, or the size asked for. Checks
 * the file as far as can be done without opening it for IO: it exists (or
 * will be created), is a regular file or block device, and is accessible.
 */
function loopSize(target: Extract<TargetSpec, { type: 'loop' }>, requested: number | undefined, readOnly: boolean): number {
  let st: fs.Stats;
  try {
    st = fs.statSync(target.file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && target.create) {
      if (requested === undefined) throw new SpecError('size', `is required to create ${target.file}`);
      const dir = path.dirname(target.file);
      if (!fs.existsSync(dir)) throw new SpecError('target.file', `cannot create ${target.file}: ${dir} does not exist`);
      return requested;
    }
    if (code === 'ENOENT') {
      throw new SpecError('target.file', `${target.file} does not exist (set create to make a sparse file of the given size)`);
    }
    if (code === 'EACCES') throw new SpecError('target.file', `${target.file}: permission denied`);
    throw new SpecError('target.file', `${target.file}: ${(err as Error).message}`);
  }
  if (!st.isFile() && !st.isBlockDevice()) {
    throw new SpecError('target.file', `${target.file} is not a regular file or block device`);
  }
  try {
    fs.accessSync(target.file, readOnly ? fs.constants.R_OK : fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    throw new SpecError('target.file', `${target.file}: permission denied (needs ${readOnly ? 'read' : 'read and write'} access)`);
  }
  const fileSize = st.isFile() ? st.size : blockDeviceSize(target.file);
  if (requested === undefined) return fileSize;
  if (requested > fileSize) {
    throw new SpecError(
      'size',
      `${requested} bytes is larger than ${target.file} (${fileSize} bytes); an existing file is never grown`,
    );
  }
  return requested;
}

function blockDeviceSize(file: string): number {
  const fd = fs.openSync(file, fs.constants.O_RDONLY);
  try {
    return native.blockDeviceGeometry(fd).sizeBytes;
  } finally {
    fs.closeSync(fd);
  }
}
