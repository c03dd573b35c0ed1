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
import type { QueueWorkerData, QueueWorkerMessage } from './js-queue-worker';
import { loadTargetModule, SetupContext } from './js-target';
import { QueueExit, QueueLifecycle, queueError, RunningQueues, usesLegacyOpcodes } from './queues';

const QUEUE_WORKER = path.join(__dirname, 'js-queue-worker.js');

/**
 * Loads a JS target's module in this thread before the device exists, so
 * a module that fails to load or exports no target is refused with nothing
 * to undo; runs its setup() once and returns what the queues will share.
 */
export async function prepareJsTarget(spec: DeviceSpec): Promise<unknown> {
  if (spec.target.type !== 'js') return undefined;
  let module;
  try {
    module = loadTargetModule(spec.target.module);
  } catch (err) {
    throw new SpecError('target.module', (err as Error).message);
  }
  if (!module.setup) return undefined;
  const ctx: SetupContext = {
    devId: -1,
    queues: spec.queues,
    depth: spec.depth,
    sizeBytes: spec.sizeBytes,
    logicalBlockSize: spec.logicalBlockSize,
    options: spec.target.options,
  };
  return module.setup(ctx);
}

/** One worker_thread per queue for a JS target; each serves its queue on its own event loop. */
export function startJsQueues(
  info: DeviceInfo,
  spec: DeviceSpec & { target: { type: 'js' } },
  shared: unknown,
): RunningQueues & { ready: Promise<void> } {
  const workers: Worker[] = [];
  // One opener per device: the workers share this descriptor, closed when they are all done.
  const charFd = fs.openSync(info.charPath, fs.constants.O_RDWR);
  const lifecycle = new QueueLifecycle(info.id, info.queues, () => fs.closeSync(charFd));
  for (let qid = 0; qid < info.queues; qid++) {
    const data: QueueWorkerData = {
      devId: info.id,
      qid,
      charFd,
      depth: info.depth,
      maxIoSize: info.maxIoSize,
      legacyOpcodes: usesLegacyOpcodes(info),
      lockMemory: spec.lockMemory === true,
      modulePath: spec.target.module,
      context: {
        devId: info.id,
        queueId: qid,
        queues: info.queues,
        depth: info.depth,
        sizeBytes: spec.sizeBytes,
        logicalBlockSize: spec.logicalBlockSize,
        options: spec.target.options,
        shared,
      },
    };
    const worker = new Worker(QUEUE_WORKER, { workerData: data });
    workers.push(worker);
    let exit: QueueExit | undefined;
    worker.on('message', (m: QueueWorkerMessage) => {
      if (m.kind === 'ready') lifecycle.queueReady();
      if (m.kind === 'log') process.stderr.write(`${new Date().toISOString()} ${m.line}\n`);
      if (m.kind === 'exit') exit = { qid, ios: m.ios, error: m.error ? queueError(qid, info.id, m.error) : undefined };
    });
    worker.on('error', (err) => {
      exit = { qid, ios: exit?.ios ?? 0, error: queueError(qid, info.id, err.message) };
    });
    worker.on('exit', () => {
      lifecycle.queueExited(exit ?? { qid, ios: 0, error: queueError(qid, info.id, 'worker ended without a word') });
    });
  }
  return {
    stop: () => workers.forEach((w) => w.postMessage('stop')),
    ready: lifecycle.ready,
    exited: lifecycle.exited,
  };
}
