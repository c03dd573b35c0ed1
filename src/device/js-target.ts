/**
 * The API for targets written in JavaScript. A target module exports
 * `createTarget(ctx)` (called once per queue, in that queue's worker
 * thread) and optionally `setup(ctx)` (called once per device in the
 * server's main thread before any queue starts; what it returns — e.g. a
 * SharedArrayBuffer — reaches every queue as `ctx.shared`).
 */

import type { IoOp } from '../kernel/uapi';
import { shown } from '../spec/show-value';

export type { IoOp };

/** One block request. */
export interface UblkIo {
  readonly tag: number;
  readonly queueId: number;
  readonly op: IoOp;
  /** Byte offset on the device. */
  readonly offset: number;
  /** Bytes to transfer (0 for flush). */
  readonly length: number;
  /** Write must be durable before completing (REQ_FUA). */
  readonly fua: boolean;
  /** The raw UBLK_IO_F_* flags. */
  readonly flags: number;
  /**
   * The request's data, without a copy: fill it for a read; it holds the
   * data of a write. Valid until the request completes.
   */
  readonly buffer: Buffer;
  /** Completes the request from any callback (bytes done, or a negative errno). */
  complete(result: number): void;
  /** Reads `length` bytes of `fd` at `position` into `buffer`, submitted on the queue's own io_uring. */
  readFile(fd: number, position: number): Promise<number>;
  /** Writes `buffer` to `fd` at `position` on the queue's own io_uring. */
  writeFile(fd: number, position: number): Promise<number>;
}

/** What a target knows about its device and queue. */
export interface TargetContext {
  devId: number;
  queueId: number;
  queues: number;
  depth: number;
  sizeBytes: number;
  logicalBlockSize: number;
  /** `options` from the manifest or `ublkctl add --options`. */
  options: Record<string, unknown>;
  /** What the module's `setup` returned, if it has one. */
  shared: unknown;
}

/** Context of the one-time `setup`, in the server's main thread. */
export type SetupContext = Omit<TargetContext, 'queueId' | 'shared'>;

/**
 * A queue's target. `handleIo` may return the result at once (a number),
 * a Promise of it (undefined meaning "all of it"), or undefined and call
 * `io.complete()` later. A throw or rejection fails that request with EIO
 * (or the error's `errno`), and the device keeps serving.
 */
export interface UblkTarget {
  handleIo(io: UblkIo): number | void | Promise<number | void>;
  close?(): void | Promise<void>;
}

/** The shape of a target module. */
export interface TargetModule {
  createTarget(ctx: TargetContext): UblkTarget | Promise<UblkTarget>;
  setup?(ctx: SetupContext): unknown;
  /**
   * Whether a write may sit in a cache that only a flush makes durable
   * (default true). The kernel then sends flush requests and FUA writes
   * to the target (`/sys/block/ublkbN/queue/write_cache` reads "write
   * back"); false declares every completed write durable ("write
   * through"), and the block layer drops flushes before they reach it.
   */
  volatileCache?: boolean;
  /**
   * Whether a new server may take the device over after its server died
   * (default false): true declares that the target's data outlives its
   * server (a file, a remote store), so a server that runs setup() and
   * createTarget() again serves the same disk. Without it the device is
   * created without user recovery: it dies with its server, and the
   * reconciler re-creates it reporting the data as lost, rather than
   * bringing it back blank under whoever had it open.
   */
  recoverable?: boolean;
}

/** What a target module declares about itself, with the defaults filled in. */
export interface TargetTraits {
  volatileCache: boolean;
  recoverable: boolean;
}

/** The module's declarations (see TargetModule), defaults filled in. */
export function targetTraits(module: TargetModule): TargetTraits {
  return { volatileCache: module.volatileCache ?? true, recoverable: module.recoverable ?? false };
}

const DECLARATIONS = ['volatileCache', 'recoverable'] as const;

/** Loads a target module, accepting CommonJS exports or a default export; throws a message saying what is missing. */
export function loadTargetModule(modulePath: string): TargetModule {
  let loaded: unknown;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    loaded = require(modulePath);
  } catch (err) {
    throw new Error(`cannot load ${modulePath}: ${(err as Error).message.split('\n')[0]}`, { cause: err });
  }
  const candidates = [loaded, (loaded as { default?: unknown })?.default];
  for (const c of candidates) {
    if (c && typeof (c as TargetModule).createTarget === 'function') {
      const module = c as TargetModule;
      for (const name of DECLARATIONS) {
        const value = module[name];
        if (value !== undefined && typeof value !== 'boolean') {
          throw new Error(`${modulePath}: export ${name} must be true or false, got ${shown(value)}`);
        }
      }
      return module;
    }
  }
  throw new Error(`${modulePath} does not export a target: expected a createTarget(ctx) function`);
}
