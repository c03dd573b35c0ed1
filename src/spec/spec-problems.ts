/**
 * The field checks every entry point shares — manifests after the schema,
 * ublkctl flags and library calls through normalizeDeviceSpec — each
 * returning at most one problem per field, worded for the person who wrote it.
 */
import * as path from 'node:path';
import type { DeviceSpecInput, HostLimits } from './device-spec';
import {
  DEFAULTS,
  DIRECT_IO_MODES,
  DirectIoMode,
  IO_SCHEDULERS,
  IO_SIZE,
  LOGICAL_BLOCK_SIZES,
  MAX_DEPTH,
  MAX_DEVICE_ID,
  MIN_DEPTH,
  MIN_QUEUES,
  MIN_THREADS_PER_QUEUE,
  RECOVERY_MODES,
  TARGET_TYPES,
  TargetType,
} from './limits';
import { quote, shown } from './show-value';
import { formatSize, parseSize } from './sizes';

/** One problem with a field of a request: the field path below `spec` and what is wrong. */
export interface SpecProblem {
  field: string;
  detail: string;
}

function integerProblem(value: unknown, min: number, max: number): string | undefined {
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    return `must be a whole number between ${min} and ${max}, got ${shown(value)}`;
  }
  if (value < min || value > max) return `must be between ${min} and ${max}, got ${value}`;
  return undefined;
}

/** The bytes of a size, or why it is not one. */
function sizeOf(value: unknown): number | { problem: string } {
  const parsed = parseSize(value);
  return 'error' in parsed ? { problem: parsed.error } : parsed.bytes;
}

function deviceSizeProblem(size: unknown, logicalBlockSize: number): string | undefined {
  if (size === undefined) return undefined;
  const bytes = sizeOf(size);
  if (typeof bytes !== 'number') return bytes.problem;
  if (bytes === 0) return `must be greater than 0, got ${shown(size)}`;
  if (bytes % logicalBlockSize !== 0)
    return `must be a multiple of the logical block size (${logicalBlockSize}), got ${bytes}`;
  return undefined;
}

function maxIoSizeProblem(value: unknown): string | undefined {
  const bytes = sizeOf(value);
  if (typeof bytes !== 'number') return bytes.problem;
  if (bytes < IO_SIZE.minimum || bytes > IO_SIZE.maximum || bytes % IO_SIZE.multipleOf !== 0) {
    return `must be a multiple of ${formatSize(IO_SIZE.multipleOf)} between ${formatSize(IO_SIZE.minimum)} and ${formatSize(IO_SIZE.maximum)}, got ${bytes}`;
  }
  return undefined;
}

function booleanProblem(value: unknown): string | undefined {
  return value === undefined || typeof value === 'boolean' ? undefined : `must be true or false, got ${shown(value)}`;
}

function oneOf<T>(values: readonly T[], value: unknown): string | undefined {
  return values.includes(value as T) ? undefined : `must be one of ${values.join(', ')}, got ${shown(value)}`;
}

function absolutePathProblem(what: string, value: unknown): string | undefined {
  if (typeof value !== 'string' || value === '') return `is required for the ${what} target`;
  return path.isAbsolute(value) ? undefined : `must be an absolute path, got ${quote(value)}`;
}

/**
 * Each of a queue's threads needs a tag of its own, and only the native
 * targets have threads to add: a js target's queue is one worker with one
 * event loop.
 */
function threadsPerQueueProblem(input: DeviceSpecInput, target: LooseTarget): string | undefined {
  if (input.threadsPerQueue === undefined) return undefined;
  const depth = input.depth ?? DEFAULTS.depth;
  const maxThreads = typeof depth === 'number' && depth >= MIN_DEPTH && depth <= MAX_DEPTH ? depth : MAX_DEPTH;
  const problem = integerProblem(input.threadsPerQueue, MIN_THREADS_PER_QUEUE, maxThreads);
  if (problem !== undefined) return maxThreads === depth ? `${problem} (at most depth: a tag per thread)` : problem;
  if (input.threadsPerQueue > 1 && target.type === 'js') {
    return `must be 1 for a js target (each queue is served by one worker), got ${input.threadsPerQueue}`;
  }
  return undefined;
}

/**
 * Batched commands are served by the native runner alone, one thread per
 * queue (the kernel has no per-tag daemons in batch mode).
 */
function batchIoProblem(input: DeviceSpecInput, target: LooseTarget): string | undefined {
  const problem = booleanProblem(input.batchIo);
  if (problem !== undefined || input.batchIo !== true) return problem;
  if (target.type === 'js') return 'must be false for a js target (its queues answer one request at a time)';
  if (input.threadsPerQueue !== undefined && input.threadsPerQueue !== 1) {
    return `cannot be true with threadsPerQueue ${shown(input.threadsPerQueue)}: a batch device has one thread per queue`;
  }
  return undefined;
}

/** A target whose fields are not checked yet. */
export interface LooseTarget {
  type: string;
  file?: string;
  create?: boolean;
  directIo?: DirectIoMode;
  module?: string;
  options?: Record<string, unknown>;
}

export function targetOf(input: DeviceSpecInput): LooseTarget {
  const t = input.target as unknown;
  if (typeof t === 'string') return { type: t };
  return (t ?? { type: '' }) as { type: string };
}

function targetProblems(t: LooseTarget): SpecProblem[] {
  if (!TARGET_TYPES.includes(t.type as TargetType)) {
    return [
      {
        field: 'target',
        detail: `unknown target ${shown(t.type)}: expected one of ${TARGET_TYPES.join(', ')}`,
      },
    ];
  }
  const problems: Array<[string, string | undefined]> = [];
  if (t.type === 'loop') {
    problems.push(['target.file', absolutePathProblem('loop', t.file)]);
    if (t.directIo !== undefined) problems.push(['target.directIo', oneOf(DIRECT_IO_MODES, t.directIo)]);
  }
  if (t.type === 'js') {
    problems.push(['target.module', absolutePathProblem('js', t.module)]);
    const o = t.options;
    if (o !== undefined && (typeof o !== 'object' || o === null || Array.isArray(o)))
      problems.push(['target.options', 'must be an object']);
  }
  return problems
    .filter((p): p is [string, string] => p[1] !== undefined)
    .map(([field, detail]) => ({ field, detail }));
}

/**
 * Every check of a request that needs nothing but the request and the
 * host's limits — no file is looked at — at most one problem per field.
 * ublkctl and the library reach it through `normalizeDeviceSpec`; the
 * manifest loader calls it after the schema, so the rules are the same.
 */
export function specProblems(input: DeviceSpecInput, limits: HostLimits): SpecProblem[] {
  const target = targetOf(input);
  const problems = targetProblems(target);
  const lbs = input.logicalBlockSize ?? DEFAULTS.logicalBlockSize;
  const check = (field: string, detail: string | undefined): void => {
    if (detail !== undefined) problems.push({ field, detail });
  };
  check('logicalBlockSize', oneOf(LOGICAL_BLOCK_SIZES, lbs));
  if (input.size === undefined && target.type !== 'loop' && TARGET_TYPES.includes(target.type as TargetType)) {
    check('size', `is required for the ${target.type} target`);
  } else if (LOGICAL_BLOCK_SIZES.includes(lbs)) {
    check('size', deviceSizeProblem(input.size, lbs));
  }
  check('queues', integerProblem(input.queues ?? DEFAULTS.queues, MIN_QUEUES, limits.maxQueues));
  check('depth', integerProblem(input.depth ?? DEFAULTS.depth, MIN_DEPTH, MAX_DEPTH));
  check('maxIoSize', maxIoSizeProblem(input.maxIoSize ?? DEFAULTS.maxIoSize));
  if (input.id !== undefined) check('id', integerProblem(input.id, 0, MAX_DEVICE_ID));
  check('recovery', oneOf(RECOVERY_MODES, input.recovery ?? DEFAULTS.recovery));
  check('readOnly', booleanProblem(input.readOnly));
  check('lockMemory', booleanProblem(input.lockMemory));
  check('partitionScan', booleanProblem(input.partitionScan));
  check('zeroCopy', booleanProblem(input.zeroCopy));
  check('threadsPerQueue', threadsPerQueueProblem(input, target));
  check('batchIo', batchIoProblem(input, target));
  check('scheduler', oneOf(IO_SCHEDULERS, input.scheduler ?? DEFAULTS.scheduler));
  return problems;
}
