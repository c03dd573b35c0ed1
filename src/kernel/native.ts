/**
 * The only module that touches the native addon: it loads the binding,
 * hands it the JS error class, and declares its surface in TypeScript.
 * The addon is loaded on first use, not on import, so the layers that need
 * no kernel (manifests, the planner, the reconciler against a fake kernel)
 * run without a compiled `.node`.
 */
import * as path from 'node:path';
import { UblkError } from '../errors';

/** struct ublksrv_ctrl_dev_info, as the addon returns it. */
export interface NativeDevInfo {
  devId: number;
  queues: number;
  depth: number;
  state: number;
  maxIoBufBytes: number;
  serverPid: number;
  flags: bigint;
  ownerUid: number;
  ownerGid: number;
}

/** struct ublk_params (basic, discard, devt), as the addon reads and writes it. */
export interface NativeParams {
  types: number;
  basic?: {
    attrs: number;
    logicalBsShift: number;
    physicalBsShift: number;
    ioOptShift: number;
    ioMinShift: number;
    maxSectors: number;
    chunkSectors: number;
    devSectors: number;
    virtBoundaryMask?: bigint;
  };
  discard?: {
    discardAlignment: number;
    discardGranularity: number;
    maxDiscardSectors: number;
    maxWriteZeroesSectors: number;
    maxDiscardSegments: number;
  };
  devt?: { charMajor: number; charMinor: number; diskMajor: number; diskMinor: number };
}

export interface NativeAddDev {
  devId: number; // -1: the kernel picks
  queues: number;
  depth: number;
  maxIoBufBytes: number;
  flags: bigint;
}

/** An open /dev/ublk-control; every command resolves on the JS thread. */
export interface NativeControlDevice {
  getFeatures(): Promise<bigint>;
  addDev(info: NativeAddDev): Promise<NativeDevInfo>;
  delDev(devId: number, async?: boolean): Promise<void>;
  startDev(devId: number, serverPid: number): Promise<void>;
  stopDev(devId: number): Promise<void>;
  tryStopDev(devId: number): Promise<void>;
  startUserRecovery(devId: number): Promise<void>;
  endUserRecovery(devId: number, serverPid: number): Promise<void>;
  quiesceDev(devId: number, timeoutMs: number): Promise<void>;
  setParams(devId: number, params: NativeParams): Promise<void>;
  getParams(devId: number): Promise<NativeParams>;
  getDevInfo(devId: number): Promise<NativeDevInfo>;
  getQueueAffinity(devId: number, qid: number): Promise<number[]>;
  /** UPDATE_SIZE: the new capacity in 512-byte sectors. */
  updateSize(devId: number, sectors: bigint): Promise<void>;
  setLegacyOpcodes(legacy: boolean): void;
  close(): void;
}

export interface NativeQueueGroupOptions {
  devId: number;
  charPath: string;
  depth: number;
  maxIoSize: number;
  legacyOpcodes: boolean;
  ringFlags: number;
  target: 'null' | 'loop' | 'memory';
  /** loop: the backing file; memory: the file in /dev/shm holding the data. */
  backingFd?: number;
  /** The loop target's backing is a block device: discards become BLKDISCARD. */
  backingIsBlockDevice: boolean;
  /** Writes, discards and write-zeroes fail with EROFS. */
  readOnly: boolean;
  sizeBytes: number;
  /** Lock each queue's IO buffers in memory (mlock). */
  lockMemory: boolean;
  /** The device has UBLK_F_AUTO_BUF_REG: serve reads and writes zero copy (loop and memory). */
  autoBufReg?: boolean;
  /**
   * Threads serving each queue, each with its own ring and a share of the
   * tags (tag % threadsPerQueue): more than 1 only on a device with
   * UBLK_F_PER_IO_DAEMON. Absent: 1.
   */
  threadsPerQueue?: number;
  /** The device has UBLK_F_BATCH_IO: each queue is served with batched commands (one thread per queue). */
  batchIo?: boolean;
  queues: Array<{ qid: number; cpus: number[] }>;
}

/** What a queue thread reports: 'ready' once every tag is fetched, 'exit' when it ends. */
export interface NativeQueueEvent {
  qid: number;
  /** Which of the queue's threads (threadsPerQueue) reports; 0 where a queue has one. */
  thread: number;
  /** unpinned: the queue's thread could not be pinned to its CPUs (error says why); it serves on. */
  kind: 'ready' | 'exit' | 'unpinned';
  ios: number;
  error?: UblkError;
}

export interface NativeQueueGroup {
  stop(): void;
}

export interface NativeJsQueueOptions {
  devId: number;
  qid: number;
  /** The server's open /dev/ublkcN (the kernel admits one opener), shared by every queue. */
  charFd: number;
  depth: number;
  maxIoSize: number;
  legacyOpcodes: boolean;
  /** Lock the queue's IO buffers in memory (mlock). */
  lockMemory?: boolean;
}

/** A queue served from JS on the current thread's event loop (see native/js_queue.h). */
export interface NativeJsQueue {
  readonly descriptors: ArrayBuffer;
  readonly buffers: ArrayBuffer;
  readonly arrivals: Uint32Array;
  readonly targetCompletions: Int32Array;
  fetchAll(): void;
  commit(tags: Uint32Array, results: Int32Array, count: number): void;
  submitTargetIo(write: boolean, tag: number, fd: number, length: number, position: number, token: number): void;
  close(): void;
}

/** The addon's exports. */
export interface Binding {
  init(errorClass: typeof UblkError): void;
  ControlDevice: new (path: string) => NativeControlDevice;
  QueueGroup: new (options: NativeQueueGroupOptions, onEvent: (e: NativeQueueEvent) => void) => NativeQueueGroup;
  JsQueue: new (
    options: NativeJsQueueOptions,
    onEvents: (arrived: number, targetCompletions: number, ended: boolean) => void,
  ) => NativeJsQueue;
  flock(fd: number, exclusive: boolean, nonBlocking: boolean): boolean;
  /** mlock(start, length); throws UblkError 'mlock'. */
  lockRange(start: bigint, length: bigint): void;
  dioAlignment(fd: number): { memory: number; offset: number } | null;
  blockDeviceGeometry(fd: number): { sizeBytes: number; logicalBlockSize: number };
  constants: {
    MAX_QUEUE_DEPTH: number;
    MAX_NR_QUEUES: number;
    MAX_IO_BUF_BYTES: number;
    SIZEOF_PARAMS: number;
    IORING_SETUP_SINGLE_ISSUER: number;
    IORING_SETUP_DEFER_TASKRUN: number;
    IORING_SETUP_COOP_TASKRUN: number;
  };
}

/** Where node-gyp puts the addon: build/Release at the package root (this file is dist/src/kernel/native.js). */
export const ADDON_PATH = path.resolve(__dirname, '..', '..', '..', 'build', 'Release', 'ublk_ts.node');

let loaded: Binding | undefined;

/** The addon, loaded (and handed UblkError) on the first call. */
export function native(): Binding {
  if (!loaded) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const binding = require(ADDON_PATH) as Binding;
    binding.init(UblkError);
    loaded = binding;
  }
  return loaded;
}

/** Whether the addon has been loaded in this thread (tests check that pure layers never load it). */
export function nativeLoaded(): boolean {
  return loaded !== undefined;
}
