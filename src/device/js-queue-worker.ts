/**
 * One queue of a JavaScript target, in its own worker_thread: the queue's
 * io_uring is polled on this thread's event loop; requests arrive in
 * batches, handlers run here, and results are committed in batches.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ERRNO } from '../errors';
import { IoOp, loadTargetModule, TargetContext, UblkIo, UblkTarget } from './js-target';
import { native, NativeJsQueue, NativeJsQueueOptions } from '../kernel/native';
import { decodeIoDescriptor } from '../kernel/uapi';

export interface QueueWorkerData extends Omit<NativeJsQueueOptions, 'charFd'> {
  modulePath: string;
  context: TargetContext;
  /** The device is read-only: writes, discards and write-zeroes fail with EROFS before the handler sees them. */
  readOnly: boolean;
}

/**
 * Messages a queue worker posts to the server's main thread: `prepared`
 * once its target exists (nothing touched the kernel yet), `ready` once
 * every tag is fetched, `exit` as its last word.
 */
export type QueueWorkerMessage =
  | { kind: 'prepared' }
  | { kind: 'ready' }
  | { kind: 'exit'; ios: number; error?: string }
  | { kind: 'log'; line: string };

/**
 * Messages the main thread posts to a queue worker: `open` maps the queue
 * and fetches its tags on /dev/ublkcN (`charFd`); `stop` ends the worker
 * (requests it holds unanswered go back to the kernel with the queue).
 */
export type QueueWorkerCommand = { kind: 'open'; charFd: number } | { kind: 'stop' };

const EIO = ERRNO.EIO;
const EROFS = ERRNO.EROFS;

/** Requests that change the device's contents: refused on a read-only device. */
const WRITING_OPS: ReadonlySet<IoOp> = new Set<IoOp>(['write', 'discard', 'write-zeroes']);

function post(message: QueueWorkerMessage): void {
  parentPort!.postMessage(message);
}

function errnoOf(err: unknown): number {
  const e = (err as { errno?: unknown })?.errno;
  return typeof e === 'number' && e !== 0 ? -Math.abs(e) : -EIO;
}

async function main(): Promise<void> {
  const data = workerData as QueueWorkerData;
  const where = `dev ${data.devId} queue ${data.qid}`;
  const module = loadTargetModule(data.modulePath);
  // The target is made before the queue touches the kernel: a createTarget
  // that throws then fails a recovery before START_USER_RECOVERY, leaving
  // the device as it was (see UblkDevice.recover).
  const target: UblkTarget = await module.createTarget(data.context);

  const commitTags = new Uint32Array(data.depth);
  const commitResults = new Int32Array(data.depth);
  let pending = 0;
  let ios = 0;
  let flushQueued = false;
  const targetWaiters = new Map<number, (res: number) => void>();
  let nextToken = 1;

  let queue: NativeJsQueue | undefined;
  let descriptors: DataView;
  let tagBuffers: Buffer[] = [];
  let refusedWrites = 0;
  const flush = (): void => {
    flushQueued = false;
    if (pending === 0) return;
    queue!.commit(commitTags, commitResults, pending);
    pending = 0;
  };
  const finish = (tag: number, result: number): void => {
    commitTags[pending] = tag;
    commitResults[pending] = result;
    pending++;
    if (!flushQueued) {
      flushQueued = true;
      queueMicrotask(flush);
    }
  };

  const validResult = (op: IoOp, length: number, value: unknown): number | string => {
    if (value === undefined) return op === 'read' || op === 'write' ? length : 0;
    if (typeof value !== 'number' || !Number.isInteger(value)) return `result ${String(value)} is not an integer`;
    if (value < 0) return value >= -4095 ? value : `result ${value} is not a valid errno`;
    if (op === 'read' || op === 'write') {
      return value > 0 && value <= length ? value : `result ${value} is not a byte count in 1..${length}`;
    }
    return value === 0 ? 0 : `result ${value} for ${op} must be 0 or a negative errno`;
  };

  const onEvents = (arrived: number, targets: number, ended: boolean): void => {
    for (let i = 0; i < targets; i++) {
      const token = queue!.targetCompletions[i * 2]!;
      const res = queue!.targetCompletions[i * 2 + 1]!;
      const waiter = targetWaiters.get(token);
      targetWaiters.delete(token);
      waiter?.(res);
    }
    for (let i = 0; i < arrived; i++) dispatch(queue!.arrivals[i]!);
    flush();
    if (ended) void shutdown();
  };

  /** Maps the queue on /dev/ublkcN, fetches every tag and says so: the step after the target exists. */
  function open(charFd: number): void {
    const opened = new (native().JsQueue)({ ...data, charFd }, onEvents);
    queue = opened;
    descriptors = new DataView(opened.descriptors);
    tagBuffers = Array.from({ length: data.depth }, (_, tag) =>
      Buffer.from(opened.buffers, tag * data.maxIoSize, data.maxIoSize),
    );
    opened.fetchAll();
    post({ kind: 'ready' });
  }

  function dispatch(tag: number): void {
    ios++;
    const { op, flags, fua, offset, length } = decodeIoDescriptor(descriptors, tag);
    if (data.readOnly && WRITING_OPS.has(op)) {
      // The kernel's read-only flag does not stop every path (a bio submitted
      // from inside the kernel is only warned about), so the handler never
      // sees a request that would change a read-only device.
      if (refusedWrites++ === 0) {
        post({ kind: 'log', line: `${where} tag ${tag}: ${op} at ${offset} on a read-only device: failed with EROFS` });
      }
      finish(tag, -EROFS);
      return;
    }
    let done = false;
    const complete = (value: unknown): void => {
      if (done) return;
      done = true;
      const result = validResult(op, length, value);
      if (typeof result === 'string') {
        post({ kind: 'log', line: `${where} tag ${tag}: ${op} at ${offset}: ${result}; failing it with EIO` });
        finish(tag, -EIO);
      } else {
        finish(tag, result);
      }
    };
    const fail = (err: unknown): void => {
      if (done) return;
      post({
        kind: 'log',
        line: `${where} tag ${tag}: ${op} at ${offset} failed: ${(err as Error)?.message ?? String(err)}`,
      });
      done = true;
      finish(tag, errnoOf(err));
    };
    const targetIo = (write: boolean, fd: number, position: number): Promise<number> =>
      new Promise((resolve) => {
        const token = nextToken;
        nextToken = nextToken >= 0x7fffffff ? 1 : nextToken + 1;
        targetWaiters.set(token, resolve);
        queue!.submitTargetIo(write, tag, fd, length, position, token);
      });
    const io: UblkIo = {
      tag,
      queueId: data.qid,
      op,
      offset,
      length,
      fua,
      flags,
      buffer: tagBuffers[tag]!.subarray(0, length),
      complete,
      readFile: (fd, position) => targetIo(false, fd, position),
      writeFile: (fd, position) => targetIo(true, fd, position),
    };
    let returned: ReturnType<UblkTarget['handleIo']>;
    try {
      returned = target.handleIo(io);
    } catch (err) {
      fail(err);
      return;
    }
    if (returned instanceof Promise) returned.then(complete, fail);
    else if (returned !== undefined) complete(returned);
  }

  let stopping = false;
  async function shutdown(error?: string): Promise<void> {
    if (stopping) return;
    stopping = true;
    try {
      await target.close?.();
    } catch (err) {
      post({ kind: 'log', line: `${where}: close failed: ${(err as Error).message}` });
    }
    queue?.close();
    if (refusedWrites > 1) {
      post({ kind: 'log', line: `${where}: ${refusedWrites} writes refused on a read-only device` });
    }
    post({ kind: 'exit', ios, error });
    parentPort!.close();
  }

  parentPort!.on('message', (m: QueueWorkerCommand) => {
    if (m.kind === 'stop') {
      // Once serving, a stop is the server letting go (UblkDevice.release), not a failure.
      void shutdown(queue === undefined ? 'stopped before the device started' : undefined);
    } else if (m.kind === 'open' && queue === undefined && !stopping) {
      try {
        open(m.charFd);
      } catch (err) {
        void shutdown((err as Error).message);
      }
    }
  });
  post({ kind: 'prepared' });
}

void main().catch((err: Error) => {
  post({ kind: 'exit', ios: 0, error: err.message });
  parentPort!.close();
});
