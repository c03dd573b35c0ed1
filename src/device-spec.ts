import * as fs from 'node:fs';
import { SpecError } from './errors';
import { formatSize, parseSize } from './sizes';

/** Targets a device can be created with. */
export const TARGET_TYPES = ['null'] as const;
export type TargetType = (typeof TARGET_TYPES)[number];

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
  target: string | { type: string };
  size?: number | string;
  id?: number;
  queues?: number;
  depth?: number;
  maxIoSize?: number | string;
  logicalBlockSize?: number;
  readOnly?: boolean;
}

/** A validated device request with every default applied. */
export interface DeviceSpec {
  target: { type: TargetType };
  sizeBytes: number;
  id?: number;
  queues: number;
  depth: number;
  maxIoSize: number;
  logicalBlockSize: number;
  readOnly: boolean;
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
  const type = typeof input.target === 'string' ? input.target : input.target?.type;
  if (!(TARGET_TYPES as readonly string[]).includes(type)) {
    throw new SpecError('target', `unknown target ${JSON.stringify(type)}: expected one of ${TARGET_TYPES.join(', ')}`);
  }
  const logicalBlockSize = input.logicalBlockSize ?? DEFAULTS.logicalBlockSize;
  if (!(LOGICAL_BLOCK_SIZES as readonly number[]).includes(logicalBlockSize)) {
    throw new SpecError('logicalBlockSize', `must be one of ${LOGICAL_BLOCK_SIZES.join(', ')}, got ${logicalBlockSize}`);
  }
  if (input.size === undefined) throw new SpecError('size', `is required for the ${type} target`);
  const sizeBytes = bytesOf('size', input.size);
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
    target: { type: type as TargetType },
    sizeBytes,
    queues,
    depth,
    maxIoSize,
    logicalBlockSize,
    readOnly: input.readOnly ?? false,
  };
  if (input.id !== undefined) spec.id = integerIn('id', input.id, 0, MAX_DEVICE_ID);
  return spec;
}
