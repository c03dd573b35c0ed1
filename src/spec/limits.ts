/**
 * Every enum, default and limit of a device spec, read from the JSON
 * Schema (the documented source of truth) so that ublkctl, the library and
 * manifests cannot disagree. The TypeScript types are written here once,
 * as literal unions the compiler can check; a unit test keeps them equal
 * to the schema's enums.
 */
import { schemaDocument } from './schema-document';
import { parseSize } from './sizes';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const specFields: Record<string, any> = schemaDocument.properties.spec.properties;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const targetBranches: Array<Record<string, any>> = specFields.target.oneOf;
const loopFields = targetBranches.find((b) => b.properties.type.const === 'loop')!.properties;

function bytes(value: number | string): number {
  const parsed = parseSize(value);
  if ('error' in parsed) throw new Error(`schema: ${parsed.error}`);
  return parsed.bytes;
}

/** Targets a device can be created with (spec.target.type). */
export type TargetType = 'null' | 'memory' | 'loop' | 'js';
export const TARGET_TYPES: readonly TargetType[] = targetBranches.map((b) => b.properties.type.const);

/** What the kernel does with IO when the device's server dies (UBLK_F_USER_RECOVERY and its variants). */
export type RecoveryMode = 'reissue' | 'fail-inflight' | 'fail-io' | 'none';
export const RECOVERY_MODES: readonly RecoveryMode[] = specFields.recovery.enum;

/** Logical block sizes the kernel accepts for a ublk device (2^9..2^12). */
export type LogicalBlockSize = 512 | 1024 | 2048 | 4096;
export const LOGICAL_BLOCK_SIZES: readonly LogicalBlockSize[] = specFields.logicalBlockSize.enum;

/** O_DIRECT on a loop target's backing file: auto uses it where the file system and block size allow. */
export type DirectIoMode = 'auto' | boolean;
export const DIRECT_IO_MODES: readonly DirectIoMode[] = loopFields.directIo.enum;

/** The block layer's IO scheduler a server sets on its device; kernel-default leaves the kernel's choice. */
export type IoScheduler = 'none' | 'mq-deadline' | 'kyber' | 'bfq' | 'kernel-default';
export const IO_SCHEDULERS: readonly IoScheduler[] = specFields.scheduler.enum;

/** Defaults shared by ublkctl, the library and manifests (the schema's `default`s). */
export const DEFAULTS = {
  queues: specFields.queues.default as number,
  depth: specFields.depth.default as number,
  maxIoSize: bytes(specFields.maxIoSize.default),
  logicalBlockSize: specFields.logicalBlockSize.default as LogicalBlockSize,
  readOnly: specFields.readOnly.default as boolean,
  lockMemory: specFields.lockMemory.default as boolean,
  partitionScan: specFields.partitionScan.default as boolean,
  scheduler: specFields.scheduler.default as IoScheduler,
  threadsPerQueue: specFields.threadsPerQueue.default as number,
  batchIo: specFields.batchIo.default as boolean,
  recovery: specFields.recovery.default as RecoveryMode,
  directIo: loopFields.directIo.default as DirectIoMode,
  create: loopFields.create.default as boolean,
} as const;

/** Requests in flight per queue: at most UBLK_MAX_QUEUE_DEPTH. */
export const MIN_DEPTH: number = specFields.depth.minimum;
export const MAX_DEPTH: number = specFields.depth.maximum;
/** Device ids: the kernel's minor-number space. */
export const MAX_DEVICE_ID: number = specFields.id.maximum;
export const MIN_QUEUES: number = specFields.queues.minimum;
/** Threads per queue (UBLK_F_PER_IO_DAEMON above 1); also at most the queue's depth. */
export const MIN_THREADS_PER_QUEUE: number = specFields.threadsPerQueue.minimum;
/**
 * The IO buffer per tag: a whole number of 4 KiB pages, 4 KiB to 32 MiB.
 * Sizes may be strings, which JSON Schema cannot compare, so the upper
 * bound and the multiple are the schema's `x-bytes` annotation, checked
 * after parsing.
 */
export const IO_SIZE: { minimum: number; maximum: number; multipleOf: number } = {
  minimum: specFields.maxIoSize.minimum,
  ...specFields.maxIoSize['x-bytes'],
};
/** The most queues the kernel has (UBLK_MAX_NR_QUEUES); the host's CPU count usually caps lower. */
export const KERNEL_MAX_QUEUES = 4096;
