/**
 * The server side of a JavaScript target: the module is loaded and its
 * setup() run in this thread before the device exists, then one
 * worker_thread per queue serves it (js-queue-worker.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { SpecError } from '../errors';
import { DeviceInfo } from '../kernel/control';
import { DeviceSpec } from '../spec/device-spec';
import type { QueueWorkerCommand, QueueWorkerData, QueueWorkerMessage } from './js-queue-worker';
import { loadTargetModule, SetupContext, TargetTraits, targetTraits } from './js-target';
import { LogLimiter } from './log-limiter';
import { moduleRefusal, moduleTrustProblem } from './trusted-path';
import { QueueExit, QueueLifecycle, queueError, RunningQueues, usesLegacyOpcodes } from './queues';

const QUEUE_WORKER = path.join(__dirname, 'js-queue-worker.js');

/** A JS target's module, loaded and set up: what it declares and what its queues share. */
export interface PreparedJsTarget {
  traits: TargetTraits;
  /** What setup() returned (undefined without one). */
  shared: unknown;
}

/**
 * Loads a JS target's module in this thread before the device exists, so
 * a module that fails to load or exports no target is refused with nothing
 * to undo; with `checkPermissions`, a module that others could change is
 * refused first; with `recovering`, refuses a module that does not declare
 * itself recoverable before its setup() runs; runs its setup() once and
 * returns what the queues will share, with what the module declares.
 */
export async function prepareJsTarget(
  spec: DeviceSpec,
  opts: { recovering?: boolean; checkPermissions?: boolean } = {},
): Promise<PreparedJsTarget | undefined> {
  if (spec.target.type !== 'js') return undefined;
  if (opts.checkPermissions) {
    // Before any of its code runs: a module others can change is code they run as root.
    const problem = moduleTrustProblem(spec.target.module);
    if (problem) {
      throw new SpecError('target.module', moduleRefusal(spec.target.module, problem));
    }
  }
  let module;
  try {
    module = loadTargetModule(spec.target.module);
  } catch (err) {
    throw new SpecError('target.module', (err as Error).message);
  }
  const traits = targetTraits(module);
  if (opts.recovering && !traits.recoverable) {
    throw new SpecError(
      'target.module',
      `${spec.target.module} does not export recoverable: true, so its data lived only in the server that died; ` +
        'a new server would serve a different (blank) disk. Delete the device and create it again: its data is lost',
    );
  }
  if (!module.setup) return { traits, shared: undefined };
  const ctx: SetupContext = {
    devId: -1,
    queues: spec.queues,
    depth: spec.depth,
    sizeBytes: spec.sizeBytes,
    logicalBlockSize: spec.logicalBlockSize,
    options: spec.target.options,
  };
  return { traits, shared: await module.setup(ctx) };
}

/**
 * A JS target's queue workers, each with its target made but nothing
 * asked of the kernel yet. `open` then opens /dev/ublkcN and has every
 * queue map its descriptors and fetch its tags.
 */
export interface PreparedJsQueues {
  /** Resolves once every worker has made its target; rejects when one failed (the others are then stopped). */
  readonly prepared: Promise<void>;
  open(): RunningQueues & { ready: Promise<void> };
  stop(): void;
  readonly exited: Promise<QueueExit[]>;
}

/**
 * One worker_thread per queue for a JS target; each loads the module and
 * makes its target (createTarget), then waits for `open` to serve its
 * queue on its own event loop.
 */
export function prepareJsQueues(
  info: DeviceInfo,
  spec: DeviceSpec & { target: { type: 'js' } },
  js: PreparedJsTarget,
): PreparedJsQueues {
  const workers: Worker[] = [];
  // One opener per device: the workers share this descriptor, closed when they are all done.
  let charFd: number | undefined;
  let allExited = false;
  const log = rateLimitedLog();
  const lifecycle = new QueueLifecycle(info.id, info.queues, () => {
    allExited = true;
    log.close();
    if (charFd !== undefined) fs.closeSync(charFd);
    charFd = undefined;
  });
  let preparedCount = 0;
  let resolvePrepared!: () => void;
  let rejectPrepared!: (e: Error) => void;
  const prepared = new Promise<void>((res, rej) => {
    resolvePrepared = res;
    rejectPrepared = rej;
  });
  prepared.catch(() => undefined);
  lifecycle.ready.catch((err: Error) => rejectPrepared(err));
  const send = (command: QueueWorkerCommand): void => workers.forEach((w) => w.postMessage(command));

  for (let qid = 0; qid < info.queues; qid++) {
    const data: QueueWorkerData = {
      devId: info.id,
      qid,
      depth: info.depth,
      maxIoSize: info.maxIoSize,
      legacyOpcodes: usesLegacyOpcodes(info),
      lockMemory: spec.lockMemory === true,
      modulePath: spec.target.module,
      readOnly: spec.readOnly,
      context: {
        devId: info.id,
        queueId: qid,
        queues: info.queues,
        depth: info.depth,
        sizeBytes: spec.sizeBytes,
        logicalBlockSize: spec.logicalBlockSize,
        options: spec.target.options,
        shared: js.shared,
      },
    };
    const worker = new Worker(QUEUE_WORKER, { workerData: data });
    workers.push(worker);
    let exit: QueueExit | undefined;
    worker.on('message', (m: QueueWorkerMessage) => {
      if (m.kind === 'prepared' && ++preparedCount === info.queues) resolvePrepared();
      if (m.kind === 'ready') lifecycle.queueReady();
      if (m.kind === 'log') log.write(m.line);
      if (m.kind === 'exit') exit = { qid, ios: m.ios, error: m.error ? queueError(qid, info.id, m.error) : undefined };
    });
    worker.on('error', (err) => {
      exit = { qid, ios: exit?.ios ?? 0, error: queueError(qid, info.id, err.message) };
    });
    worker.on('exit', () => {
      lifecycle.queueExited(exit ?? { qid, ios: 0, error: queueError(qid, info.id, 'worker ended without a word') });
    });
  }
  const stop = (): void => send({ kind: 'stop' });
  return {
    prepared,
    open: () => {
      // Workers that have all ended (one failed while START was retried) would never close it,
      // and an open /dev/ublkcN makes every later recovery of the device in this process EBUSY.
      if (!allExited) {
        charFd = fs.openSync(info.charPath, fs.constants.O_RDWR);
        send({ kind: 'open', charFd });
      }
      return { stop, ready: lifecycle.ready, exited: lifecycle.exited };
    },
    stop,
    exited: lifecycle.exited,
  };
}

/**
 * The workers' log lines (one per failed request) written to stderr at a
 * bounded rate (log-limiter.ts): what is left out is summed up when its
 * interval ends, by a timer that never keeps the process alive.
 */
function rateLimitedLog(): { write(line: string): void; close(): void } {
  const limiter = new LogLimiter();
  let timer: NodeJS.Timeout | undefined;
  const emit = (lines: string[]): void => {
    for (const line of lines) process.stderr.write(`${new Date().toISOString()} ${line}\n`);
  };
  const flushLater = (): void => {
    const until = limiter.suppressedUntil;
    if (timer || until === undefined) return;
    timer = setTimeout(
      () => {
        timer = undefined;
        emit(limiter.flush());
      },
      Math.max(0, until - Date.now()),
    );
    timer.unref();
  };
  return {
    write: (line) => {
      emit(limiter.admit(line));
      flushLater();
    },
    close: () => {
      if (timer) clearTimeout(timer);
      timer = undefined;
      emit(limiter.flush());
    },
  };
}
