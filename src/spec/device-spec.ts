/**
 * A device request: the one input type (written by manifests, ublkctl
 * flags and library calls alike), the field checks every entry point
 * shares, and the validated spec with every default applied.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SpecError } from '../errors';
import { native } from '../kernel/native';
import {
  DEFAULTS,
  DirectIoMode,
  IO_SCHEDULERS,
  IoScheduler,
  KERNEL_MAX_QUEUES,
  LOGICAL_BLOCK_SIZES,
  LogicalBlockSize,
  MAX_DEPTH,
  RECOVERY_MODES,
  RecoveryMode,
  TARGET_TYPES,
  TargetType,
} from './limits';
import { clip } from './show-value';
import { parseSize } from './sizes';
import { LooseTarget, SpecProblem, specProblems, targetOf } from './spec-problems';

export { DEFAULTS, TARGET_TYPES, RECOVERY_MODES, LOGICAL_BLOCK_SIZES, MAX_DEPTH, IO_SCHEDULERS };
export { specProblems };
export type { SpecProblem };
export type { DirectIoMode, IoScheduler, LogicalBlockSize, RecoveryMode, TargetType };

/** A target that completes every request at once and stores nothing. */
export interface NullTarget {
  type: 'null';
}

/** A RAM-backed target. */
export interface MemoryTarget {
  type: 'memory';
}

/** A target backed by a file or block device. */
export interface LoopTarget {
  type: 'loop';
  file: string;
  create?: boolean;
  directIo?: DirectIoMode;
}

/** A target implemented by a JavaScript module. */
export interface JsTarget {
  type: 'js';
  module: string;
  options?: Record<string, unknown>;
}

/** What serves a device's IO, discriminated by `type`, as a manifest writes it. */
export type TargetInput = NullTarget | MemoryTarget | LoopTarget | JsTarget;

/**
 * A device request as a user writes it: the `spec` of a manifest (the JSON
 * Schema's shape), ublkctl's flags, or a library call, which may name a
 * target without options by its type alone. Values are checked at run time
 * by `normalizeDeviceSpec`, so input from outside may be handed over as is.
 */
export interface DeviceSpecInput {
  id?: number;
  target: TargetInput | TargetType;
  size?: number | string;
  queues?: number;
  depth?: number;
  maxIoSize?: number | string;
  logicalBlockSize?: LogicalBlockSize;
  readOnly?: boolean;
  lockMemory?: boolean;
  partitionScan?: boolean;
  zeroCopy?: boolean;
  threadsPerQueue?: number;
  batchIo?: boolean;
  scheduler?: IoScheduler;
  recovery?: RecoveryMode;
}

/** A target as validated, with its defaults. */
export type TargetSpec =
  | { type: 'null' }
  | { type: 'memory' }
  | { type: 'loop'; file: string; create: boolean; directIo: DirectIoMode }
  | { type: 'js'; module: string; options: Record<string, unknown> };

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
  /** The server locks its IO buffers and program code in memory (not the JS heap: V8 cannot run with it locked). */
  lockMemory: boolean;
  /**
   * false: START_DEV leaves the device's partition table unread
   * (UBLK_F_NO_AUTO_PART_SCAN). Absent: the kernel scans, as it always has;
   * left out so specs and records written before the field stay as they were.
   */
  partitionScan?: false;
  /**
   * false: the device always takes the copy path, even where the kernel
   * could register each request's pages for the server's ring
   * (UBLK_F_AUTO_BUF_REG). true: zero copy for loop and memory where the
   * kernel has it. Absent: zero copy only where it pays (wantsZeroCopy): a
   * loop target on a block device or a file outside tmpfs; memory and a
   * loop file on tmpfs copy. Left out so specs and records written before
   * the field stay as they were.
   */
  zeroCopy?: boolean;
  /**
   * Native threads serving each queue, present only when more than 1: the
   * device is made with UBLK_F_PER_IO_DAEMON and each thread fetches (and
   * so answers) every threadsPerQueue-th tag. Absent: one thread per queue,
   * as always; left out so specs and records written before it stay as they were.
   */
  threadsPerQueue?: number;
  /**
   * true: the device is made with UBLK_F_BATCH_IO and its queues are served
   * with PREP/FETCH/COMMIT_IO_CMDS. Absent: a command per request, as always.
   */
  batchIo?: true;
  /**
   * The IO scheduler each server start writes to the disk's queue/scheduler,
   * present only when not none (the default); kernel-default: left alone.
   */
  scheduler?: Exclude<IoScheduler, 'none'>;
  recovery: RecoveryMode;
}

/**
 * What is wrong with a spec read back from storage (a state record), checked as strictly as
 * a manifest's — a record is a file too, and a spec in it is not to be trusted more than the
 * manifest it came from. The queue limit is the kernel's, not this host's CPU count: the
 * device already exists with its queues.
 */
export function storedSpecProblem(spec: unknown): SpecProblem | undefined {
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) {
    return { field: 'spec', detail: 'is not an object' };
  }
  const { sizeBytes, ...rest } = spec as Partial<DeviceSpec>;
  if (typeof sizeBytes !== 'number') return { field: 'sizeBytes', detail: 'is not a number' };
  return specProblems({ ...rest, size: sizeBytes } as DeviceSpecInput, { maxQueues: KERNEL_MAX_QUEUES })[0];
}

/** Limits that depend on the host rather than the schema. */
export interface HostLimits {
  /** Most queues a device may have: the host's possible CPUs. */
  maxQueues: number;
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
    return Math.min(count, KERNEL_MAX_QUEUES);
  } catch {
    return 1;
  }
}

/** The bytes of a size that specProblems has accepted. */
function bytes(value: number | string): number {
  const parsed = parseSize(value);
  if ('error' in parsed) throw new SpecError('size', parsed.error);
  return parsed.bytes;
}

/**
 * Checks a device request and applies defaults. Every failure is a
 * SpecError naming the field, raised before anything touches the kernel:
 * first the field checks (`specProblems`), then what only the host can
 * answer (the loop file, the js module).
 */
export function normalizeDeviceSpec(
  input: DeviceSpecInput,
  limits: HostLimits = { maxQueues: maxQueues() },
): DeviceSpec {
  const first = specProblems(input, limits)[0];
  if (first) throw new SpecError(first.field, first.detail);
  const target = normalizeTarget(targetOf(input));
  const readOnly = input.readOnly ?? DEFAULTS.readOnly;
  const requested = input.size === undefined ? undefined : bytes(input.size);
  const sizeBytes = target.type === 'loop' ? loopSize(target, requested, readOnly) : requested!;
  const logicalBlockSize = input.logicalBlockSize ?? DEFAULTS.logicalBlockSize;
  if (sizeBytes === 0) throw new SpecError('size', `must be greater than 0, got ${sizeBytes}`);
  if (sizeBytes % logicalBlockSize !== 0) {
    throw new SpecError('size', `must be a multiple of the logical block size (${logicalBlockSize}), got ${sizeBytes}`);
  }
  const spec: DeviceSpec = {
    target,
    sizeBytes,
    queues: input.queues ?? DEFAULTS.queues,
    depth: input.depth ?? DEFAULTS.depth,
    maxIoSize: bytes(input.maxIoSize ?? DEFAULTS.maxIoSize),
    logicalBlockSize,
    readOnly,
    lockMemory: input.lockMemory ?? DEFAULTS.lockMemory,
    recovery: input.recovery ?? DEFAULTS.recovery,
  };
  if (input.id !== undefined) spec.id = input.id;
  if (input.partitionScan === false) spec.partitionScan = false;
  if (input.zeroCopy !== undefined) spec.zeroCopy = input.zeroCopy;
  if (input.threadsPerQueue !== undefined && input.threadsPerQueue > 1) spec.threadsPerQueue = input.threadsPerQueue;
  if (input.batchIo === true) spec.batchIo = true;
  if (input.scheduler !== undefined && input.scheduler !== 'none') spec.scheduler = input.scheduler;
  return spec;
}

function normalizeTarget(t: LooseTarget): TargetSpec {
  if (t.type === 'null' || t.type === 'memory') return { type: t.type };
  if (t.type === 'js') {
    if (!fs.existsSync(t.module!)) throw new SpecError('target.module', `${clip(t.module!)} does not exist`);
    return { type: 'js', module: t.module!, options: t.options ?? {} };
  }
  return {
    type: 'loop',
    file: path.normalize(t.file!),
    create: t.create ?? DEFAULTS.create,
    directIo: t.directIo ?? DEFAULTS.directIo,
  };
}

/**
 * Size of a loop device: the backing file's, or the size asked for. Checks
 * the file as far as can be done without opening it for IO: it exists (or
 * will be created), is a regular file or block device, and is accessible.
 */
function loopSize(
  target: Extract<TargetSpec, { type: 'loop' }>,
  requested: number | undefined,
  readOnly: boolean,
): number {
  let st: fs.Stats;
  try {
    st = fs.statSync(target.file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && target.create) {
      if (requested === undefined) throw new SpecError('size', `is required to create ${clip(target.file)}`);
      const dir = path.dirname(target.file);
      if (!fs.existsSync(dir))
        throw new SpecError('target.file', `cannot create ${clip(target.file)}: ${clip(dir)} does not exist`);
      return requested;
    }
    if (code === 'ENOENT') {
      throw new SpecError(
        'target.file',
        `${clip(target.file)} does not exist (set create to make a sparse file of the given size)`,
      );
    }
    if (code === 'EACCES') throw new SpecError('target.file', `${clip(target.file)}: permission denied`);
    throw new SpecError('target.file', `${clip(target.file)}: ${code ?? clip((err as Error).message)}`);
  }
  if (!st.isFile() && !st.isBlockDevice()) {
    throw new SpecError('target.file', `${clip(target.file)} is not a regular file or block device`);
  }
  try {
    fs.accessSync(target.file, readOnly ? fs.constants.R_OK : fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    throw new SpecError(
      'target.file',
      `${clip(target.file)}: permission denied (needs ${readOnly ? 'read' : 'read and write'} access)`,
    );
  }
  const fileSize = st.isFile() ? st.size : blockDeviceSize(target.file);
  if (requested === undefined) return fileSize;
  if (requested > fileSize) {
    throw new SpecError(
      'size',
      `${requested} bytes is larger than ${clip(target.file)} (${fileSize} bytes); an existing file is never grown`,
    );
  }
  return requested;
}

function blockDeviceSize(file: string): number {
  const fd = fs.openSync(file, fs.constants.O_RDONLY);
  try {
    return native().blockDeviceGeometry(fd).sizeBytes;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A request in the one form two spellings of the same device share: sizes
 * in bytes, every default written out, a loop file's path normalized. Pure
 * (no file is looked at), so a manifest's identity does not depend on the
 * host; `1GiB`, `1073741824` and `1024MiB` compare equal. Only for input
 * `specProblems` has accepted.
 */
export function comparableSpec(input: DeviceSpecInput): Record<string, unknown> {
  return comparable(input);
}

/**
 * comparableSpec less what only the device's server does with it — a js
 * target's module and options, a loop target's directIo, the IO scheduler
 * it sets — which a new server can change without the device changing (a
 * handover). Two specs alike here differ, if at all, only in what a
 * handover applies live.
 */
export function comparableDevice(input: DeviceSpecInput): Record<string, unknown> {
  const { scheduler: _scheduler, ...spec } = comparable(input);
  const { module: _module, options: _options, directIo: _directIo, ...target } = spec.target as Record<string, unknown>;
  return { ...spec, target };
}

function comparable(input: DeviceSpecInput): Record<string, unknown> {
  const t = targetOf(input);
  let target: Record<string, unknown>;
  if (t.type === 'loop') {
    target = {
      type: 'loop',
      file: path.normalize(t.file!),
      create: t.create ?? DEFAULTS.create,
      directIo: t.directIo ?? DEFAULTS.directIo,
    };
  } else if (t.type === 'js') {
    target = { type: 'js', module: path.normalize(t.module!), options: t.options ?? {} };
  } else {
    target = { type: t.type };
  }
  const spec: Record<string, unknown> = {
    target,
    queues: input.queues ?? DEFAULTS.queues,
    depth: input.depth ?? DEFAULTS.depth,
    maxIoSize: bytes(input.maxIoSize ?? DEFAULTS.maxIoSize),
    logicalBlockSize: input.logicalBlockSize ?? DEFAULTS.logicalBlockSize,
    readOnly: input.readOnly ?? DEFAULTS.readOnly,
    recovery: input.recovery ?? DEFAULTS.recovery,
  };
  if (input.size !== undefined) spec.size = bytes(input.size);
  if (input.id !== undefined) spec.id = input.id;
  // Only when set, so the identity of every device written before the field existed stays the same.
  if (input.lockMemory) spec.lockMemory = true;
  if (input.partitionScan === false) spec.partitionScan = false;
  if (input.zeroCopy !== undefined) spec.zeroCopy = input.zeroCopy;
  if (input.threadsPerQueue !== undefined && input.threadsPerQueue > 1) spec.threadsPerQueue = input.threadsPerQueue;
  if (input.batchIo === true) spec.batchIo = true;
  if (input.scheduler !== undefined && input.scheduler !== 'none') spec.scheduler = input.scheduler;
  return spec;
}

/** JSON with object keys sorted by code unit, so equal specs always hash the same. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/**
 * A spec's identity apart from its size, as canonical JSON: a manifest and
 * a device's recorded spec with the same one differ at most in size, the
 * one change a LIVE device can take in place (UPDATE_SIZE). Takes a
 * manifest's spec or a validated DeviceSpec (whose sizeBytes is ignored).
 */
export function identityWithoutSize(input: DeviceSpecInput | DeviceSpec): string {
  const { size: _size, ...rest } = comparableSpec({ ...(input as DeviceSpecInput), size: undefined });
  return canonicalJson(rest);
}
