/**
 * A device's queues, started by this process: one native thread per queue
 * for the built-in targets (null, loop, memory), one worker_thread per
 * queue for a JavaScript target (js-queues.ts). Either way the caller gets
 * the same thing back: resolved once every tag of every queue is fetched
 * (so START_DEV or END_USER_RECOVERY can follow), with a way to stop them
 * and a promise of how each ended.
 */
import * as fs from 'node:fs/promises';
import { ControlCommands, DeviceInfo } from '../kernel/control';
import { native, NativeQueueEvent } from '../kernel/native';
import { dataPathOf, UBLK_F_BATCH_IO, UBLK_F_CMD_IOCTL_ENCODE, UBLK_F_PER_IO_DAEMON } from '../kernel/uapi';
import { ERRNO, SpecError, UblkError } from '../errors';
import { DeviceSpec } from '../spec/device-spec';
import { Backing } from './backing';
import { PreparedJsTarget, prepareJsQueues } from './js-queues';

/** How a queue thread ended. */
export interface QueueExit {
  qid: number;
  /** Which of the queue's threads, where spec.threadsPerQueue gives it several. */
  thread?: number;
  /** Requests it served. */
  ios: number;
  error?: UblkError;
}

/** Running queues: `stop` asks every queue to end, `exited` says how each did. */
export interface RunningQueues {
  stop(): void;
  readonly exited: Promise<QueueExit[]>;
}

const NODE_WAIT_MS = 10_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits for udev (or devtmpfs) to create a device node. */
async function waitForNode(path: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await fs.access(path);
      return;
    } catch {
      if (Date.now() > deadline) {
        throw new UblkError(
          `WAIT ${path}`,
          undefined,
          ERRNO.ENOENT,
          `device node did not appear within ${timeoutMs} ms`,
        );
      }
      await sleep(20);
    }
  }
}

/** io_uring setup flags for queue rings; overridable for benchmarking. */
function queueRingFlags(): number {
  const override = process.env.UBLK_TS_RING_FLAGS;
  if (override !== undefined) return Number(override);
  return 0;
}

/** Whether the device speaks the pre-6.4 command numbers on its queues. */
export function usesLegacyOpcodes(info: DeviceInfo): boolean {
  return (info.flags & UBLK_F_CMD_IOCTL_ENCODE) === 0n;
}

/** Gathers the queues' "ready" and "exit" reports into two promises. */
export class QueueLifecycle {
  readonly ready: Promise<void>;
  readonly exited: Promise<QueueExit[]>;
  private readyCount = 0;
  private readonly exits: QueueExit[] = [];
  private resolveReady!: () => void;
  private rejectReady!: (e: Error) => void;
  private resolveExited!: (e: QueueExit[]) => void;

  constructor(
    private readonly devId: number,
    private readonly count: number,
    private readonly onAllExited?: () => void,
  ) {
    this.ready = new Promise<void>((res, rej) => {
      this.resolveReady = res;
      this.rejectReady = rej;
    });
    this.ready.catch(() => undefined);
    this.exited = new Promise<QueueExit[]>((res) => (this.resolveExited = res));
  }

  queueReady(): void {
    if (++this.readyCount === this.count) this.resolveReady();
  }

  /** A queue that ends before all are ready makes `ready` reject (no effect afterwards). */
  queueExited(exit: QueueExit): void {
    this.exits.push(exit);
    this.rejectReady(
      exit.error ?? queueError(exit.qid, this.devId, `queue ${exit.qid} ended before the device started`),
    );
    if (this.exits.length === this.count) {
      this.onAllExited?.();
      this.resolveExited(this.exits.sort((a, b) => a.qid - b.qid || (a.thread ?? 0) - (b.thread ?? 0)));
    }
  }
}

/** A queue's failure as a UblkError: the queue is the "op", EIO (its IO could not be served) the errno. */
export function queueError(qid: number, devId: number, detail: string): UblkError {
  return new UblkError(`queue ${qid}`, devId, ERRNO.EIO, detail);
}

/**
 * How many threads serve each of the device's queues: spec.threadsPerQueue
 * on a device made with UBLK_F_PER_IO_DAEMON (a recovery or handover keeps
 * the layout its spec names), 1 on any other. A spec asking for more on a
 * device without the flag cannot be served: every command for a tag would
 * have to come from the one queue thread.
 */
export function threadsPerQueue(info: DeviceInfo, spec: DeviceSpec): number {
  const threads = spec.threadsPerQueue ?? 1;
  if (threads > 1 && (info.flags & UBLK_F_PER_IO_DAEMON) === 0n) {
    throw new SpecError(
      'threadsPerQueue',
      `${threads} needs a device made with UBLK_F_PER_IO_DAEMON; device ${info.id} was made without it ` +
        '(one thread per queue): re-create it to serve a queue from several threads',
    );
  }
  return threads;
}

/**
 * Native threads per queue (threadsPerQueue of them, each with a share of
 * the tags), pinned to the CPUs the kernel maps to the queue.
 */
async function startNativeQueues(
  control: ControlCommands,
  info: DeviceInfo,
  spec: DeviceSpec,
  backing: Backing | undefined,
): Promise<RunningQueues & { ready: Promise<void> }> {
  // A failure here is a failure to start, not a queue left unpinned without a word.
  const affinities = await Promise.all(
    Array.from({ length: info.queues }, (_, qid) => control.getQueueAffinity(info.id, qid)),
  );
  const threads = threadsPerQueue(info, spec);
  // A batch device refuses the per-tag commands: its flag, not the spec, picks the runner.
  const batchIo = (info.flags & UBLK_F_BATCH_IO) !== 0n;
  const lifecycle = new QueueLifecycle(info.id, info.queues * threads);
  const onEvent = (e: NativeQueueEvent): void => {
    if (e.kind === 'ready') lifecycle.queueReady();
    else if (e.kind === 'unpinned') {
      const cpus = affinities[e.qid]?.join(',') ?? '';
      process.stderr.write(
        `${new Date().toISOString()} dev ${info.id} queue ${e.qid}: cannot pin its thread to CPUs ${cpus} (${e.error?.code}); it serves unpinned\n`,
      );
    } else
      lifecycle.queueExited({ qid: e.qid, ...(threads > 1 ? { thread: e.thread } : {}), ios: e.ios, error: e.error });
  };
  const group = new (native().QueueGroup)(
    {
      devId: info.id,
      charPath: info.charPath,
      depth: info.depth,
      maxIoSize: info.maxIoSize,
      legacyOpcodes: usesLegacyOpcodes(info),
      ringFlags: queueRingFlags(),
      target: spec.target.type as 'null' | 'loop' | 'memory',
      backingFd: backing?.fd,
      backingIsBlockDevice: backing?.blockDevice ?? false,
      readOnly: spec.readOnly,
      lockMemory: spec.lockMemory === true,
      // From the device, not the spec: a recovered or handed-over device is served the way it was made.
      autoBufReg: dataPathOf(info.flags) === 'zero-copy',
      sizeBytes: spec.sizeBytes,
      threadsPerQueue: threads,
      batchIo,
      queues: Array.from({ length: info.queues }, (_, qid) => ({ qid, cpus: affinities[qid] ?? [] })),
    },
    onEvent,
  );
  return { stop: () => group.stop(), ready: lifecycle.ready, exited: lifecycle.exited };
}

/** The targets that can serve a zero-copy device: those whose IO is an io_uring file operation. */
export function servesZeroCopy(target: DeviceSpec['target']['type']): boolean {
  return target === 'loop' || target === 'memory';
}

/**
 * Refuses to serve a zero-copy device with a target that needs the
 * request's bytes in its own memory: their pages would never reach it.
 */
function checkDataPath(info: DeviceInfo, spec: DeviceSpec): void {
  if (dataPathOf(info.flags) === 'zero-copy' && !servesZeroCopy(spec.target.type)) {
    throw new UblkError(
      'START queues',
      info.id,
      ERRNO.EINVAL,
      `the device was made zero copy (UBLK_F_AUTO_BUF_REG), which a ${spec.target.type} target cannot serve; re-create it`,
    );
  }
  // ublk-ts never asks for both; the batch runner hands the kernel buffer addresses, not buffer slots.
  if (dataPathOf(info.flags) === 'zero-copy' && (info.flags & UBLK_F_BATCH_IO) !== 0n) {
    throw new UblkError(
      'START queues',
      info.id,
      ERRNO.EINVAL,
      'the device was made with both UBLK_F_AUTO_BUF_REG and UBLK_F_BATCH_IO, which ublk-ts does not serve; re-create it',
    );
  }
}

/**
 * A device's queues made ready to start without touching the kernel: a
 * JS target's workers have loaded its module and made their targets.
 * `start` opens /dev/ublkcN, maps and fetches every tag of every queue;
 * `abandon` ends what `prepareQueues` started when `start` never runs.
 */
export interface PreparedQueues {
  start(): Promise<RunningQueues>;
  abandon(): Promise<void>;
}

/**
 * Prepares the device's queues (see PreparedQueues). A JS target's
 * createTarget runs here, so a recovery that fails in it fails before
 * START_USER_RECOVERY. If a queue fails, the others are stopped and
 * awaited before the error is thrown.
 */
export async function prepareQueues(
  control: ControlCommands,
  info: DeviceInfo,
  spec: DeviceSpec,
  backing: Backing | undefined,
  js: PreparedJsTarget | undefined,
): Promise<PreparedQueues> {
  const untilReady = async (queues: RunningQueues & { ready: Promise<void> }): Promise<RunningQueues> => {
    try {
      await queues.ready;
    } catch (err) {
      queues.stop();
      await queues.exited;
      throw err;
    }
    return { stop: queues.stop, exited: queues.exited };
  };
  checkDataPath(info, spec);
  if (spec.target.type !== 'js') {
    return {
      start: async () => {
        await waitForNode(info.charPath, NODE_WAIT_MS);
        return untilReady(await startNativeQueues(control, info, spec, backing));
      },
      abandon: async () => undefined,
    };
  }
  const workers = prepareJsQueues(info, spec as DeviceSpec & { target: { type: 'js' } }, js!);
  const abandon = async (): Promise<void> => {
    workers.stop();
    await workers.exited;
  };
  try {
    await workers.prepared;
  } catch (err) {
    await abandon();
    throw err;
  }
  return {
    start: async () => {
      await waitForNode(info.charPath, NODE_WAIT_MS);
      return untilReady(workers.open());
    },
    abandon,
  };
}

/**
 * Starts the device's queues and resolves once every tag of every queue is
 * fetched. If a queue fails first, the others are stopped and awaited
 * before the error is thrown, so nothing is left running.
 */
export async function startQueues(
  control: ControlCommands,
  info: DeviceInfo,
  spec: DeviceSpec,
  backing: Backing | undefined,
  js: PreparedJsTarget | undefined,
): Promise<RunningQueues> {
  const prepared = await prepareQueues(control, info, spec, backing, js);
  try {
    return await prepared.start();
  } catch (err) {
    await prepared.abandon();
    throw err;
  }
}
