import * as fsSync from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { Backing, discardMemory, openBacking } from './backing';
import { DeviceInfo, DeviceParams, UblkControl } from './control';
import { DeviceSpec, RecoveryMode } from './device-spec';
import { SpecError, UblkError } from './errors';
import { loadTargetModule, SetupContext } from './js-target';
import type { QueueWorkerData, QueueWorkerMessage } from './js-queue-worker';
import { native, NativeQueueEvent } from './native';
import {
  featureNames,
  UBLK_F_CMD_IOCTL_ENCODE,
  UBLK_F_USER_RECOVERY,
  UBLK_F_USER_RECOVERY_FAIL_IO,
  UBLK_F_USER_RECOVERY_REISSUE,
} from './uapi';

/** How a queue thread ended. */
export interface QueueExit {
  qid: number;
  /** Requests it served. */
  ios: number;
  error?: UblkError;
}

/** Progress of UblkDevice.create, for callers that must clean up after a crash mid-way. */
export type CreateProgress = { stage: 'added'; info: DeviceInfo };

const NODE_WAIT_MS = 10_000;
const RECOVERY_BUSY_RETRIES = 200;
const RECOVERY_BUSY_DELAY_MS = 50;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitForNode(path: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await fs.access(path);
      return;
    } catch {
      if (Date.now() > deadline) {
        throw new UblkError(`WAIT ${path}`, undefined, 2, `device node did not appear within ${timeoutMs} ms`);
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

/** UBLK_F_* flags that ask the kernel for a recovery mode. */
function recoveryFlags(mode: RecoveryMode): bigint {
  switch (mode) {
    case 'reissue':
      return UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;
    case 'fail-inflight':
      return UBLK_F_USER_RECOVERY;
    case 'fail-io':
      return UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_FAIL_IO;
    case 'none':
      return 0n;
  }
}

/** The recovery modes this kernel offers, from its GET_FEATURES answer. */
export function supportedRecoveryModes(features: bigint): RecoveryMode[] {
  const modes: RecoveryMode[] = [];
  if (features & UBLK_F_USER_RECOVERY) {
    if (features & UBLK_F_USER_RECOVERY_REISSUE) modes.push('reissue');
    modes.push('fail-inflight');
    if (features & UBLK_F_USER_RECOVERY_FAIL_IO) modes.push('fail-io');
  }
  modes.push('none');
  return modes;
}

/** Refuses a recovery mode the kernel lacks, naming the feature and what it does offer. */
export function checkRecoverySupported(mode: RecoveryMode, features: bigint): void {
  if (supportedRecoveryModes(features).includes(mode)) return;
  const missing = featureNames(recoveryFlags(mode) & ~features).map((n) => `UBLK_F_${n}`);
  throw new SpecError(
    'recovery',
    `${mode} needs the kernel feature ${missing.join(', ')}${mode === 'fail-io' ? ' (Linux 6.13 or newer)' : ''}; ` +
      `this kernel supports: ${supportedRecoveryModes(features).join(', ')}`,
  );
}

/**
 * A ublk device served by this process: its queues run on native threads
 * (one io_uring each) and the built-in target answers IO without JS.
 * `create` adds, configures and starts a device; `recover` takes over a
 * QUIESCED one whose server died; `delete` stops and removes it.
 */
export class UblkDevice {
  /** The kernel's view once serving (id, queues, depth, flags). */
  readonly info: DeviceInfo;
  readonly spec: DeviceSpec;
  /** Resolves when every queue thread has ended (after STOP_DEV, or on failure). */
  readonly exited: Promise<QueueExit[]>;
  /** The loop target's file or the memory target's tmpfs file, when there is one. */
  readonly backing: Backing | undefined;
  private readonly control: UblkControl;
  private readonly ownsControl: boolean;

  private constructor(
    info: DeviceInfo,
    spec: DeviceSpec,
    control: UblkControl,
    ownsControl: boolean,
    exited: Promise<QueueExit[]>,
    backing: Backing | undefined,
  ) {
    this.info = info;
    this.spec = spec;
    this.control = control;
    this.ownsControl = ownsControl;
    this.exited = exited;
    this.backing = backing;
  }

  get id(): number {
    return this.info.id;
  }

  get blockPath(): string {
    return this.info.blockPath;
  }

  /**
   * Checks the kernel supports the spec, opens the backing store, then
   * ADD_DEV, SET_PARAMS, one thread per queue, waits until each has fetched
   * its tags, START_DEV. On any failure the half-made device is deleted
   * (and a file it created removed) before the error is thrown.
   */
  static async create(
    spec: DeviceSpec,
    opts: { control?: UblkControl; onProgress?: (p: CreateProgress) => void } = {},
  ): Promise<UblkDevice> {
    const control = opts.control ?? (await UblkControl.open());
    const ownsControl = opts.control === undefined;
    let backing: Backing | undefined;
    let info: DeviceInfo | undefined;
    let queues: StartedQueues | undefined;
    try {
      checkRecoverySupported(spec.recovery, control.features);
      const shared = await prepareJsTarget(spec);
      backing = openBacking(spec);
      info = await control.addDevice({
        id: spec.id,
        queues: spec.queues,
        depth: spec.depth,
        maxIoSize: spec.maxIoSize,
        flags: recoveryFlags(spec.recovery),
      });
      backing?.bindToDevice(info.id);
      opts.onProgress?.({ stage: 'added', info });
      await control.setParams(info.id, deviceParams(spec, info.maxIoSize));
      queues = await startQueues(control, info, spec, backing, shared);
      await control.startDevice(info.id, process.pid);
      const live = await control.getDeviceInfo(info.id);
      return new UblkDevice(live, spec, control, ownsControl, closeOnExit(queues.exited, backing, spec, live.id), backing);
    } catch (err) {
      if (queues) {
        queues.group.stop();
        await queues.exited;
      }
      if (info) await control.deleteDevice(info.id).catch(() => undefined);
      if (ownsControl) control.close();
      backing?.close({ discardCreated: true });
      throw err;
    }
  }

  /**
   * Takes over a device whose server died (QUIESCED, or FAIL_IO):
   * START_USER_RECOVERY (retried while the kernel still sees the old
   * server), a fresh thread per queue fetching every tag, then
   * END_USER_RECOVERY with this process as the server → LIVE. IO the
   * kernel held meanwhile is served; with reissue, so is IO in flight at
   * the crash. A failed attempt leaves the device as it was.
   */
  static async recover(devId: number, spec: DeviceSpec, opts: { control?: UblkControl } = {}): Promise<UblkDevice> {
    const control = opts.control ?? (await UblkControl.open());
    const ownsControl = opts.control === undefined;
    let backing: Backing | undefined;
    let queues: StartedQueues | undefined;
    try {
      const before = await control.getDeviceInfo(devId);
      if ((before.flags & UBLK_F_USER_RECOVERY) === 0n) {
        throw new UblkError('START_USER_RECOVERY', devId, 22, 'device was created without user recovery');
      }
      if (before.state !== 'QUIESCED' && before.state !== 'FAIL_IO') {
        throw new UblkError('START_USER_RECOVERY', devId, 22, `device is ${before.state}, not QUIESCED or FAIL_IO`);
      }
      const shared = await prepareJsTarget(spec);
      backing = openBacking(spec, { recoverDevId: devId });
      await retryWhileBusy(() => control.startUserRecovery(devId));
      const info = await control.getDeviceInfo(devId);
      queues = await startQueues(control, info, spec, backing, shared);
      await control.endUserRecovery(devId, process.pid);
      const live = await control.getDeviceInfo(devId);
      return new UblkDevice(live, spec, control, ownsControl, closeOnExit(queues.exited, backing, spec, devId), backing);
    } catch (err) {
      if (queues) {
        queues.group.stop();
        await queues.exited;
      }
      if (ownsControl) control.close();
      backing?.close();
      throw err;
    }
  }

  /** STOP_DEV, then wait for the queue threads to end. The device remains (DEAD) until deleted. */
  async stop(): Promise<QueueExit[]> {
    await this.control.stopDevice(this.id);
    return this.exited;
  }

  /** STOP_DEV and DEL_DEV: the device is gone when this resolves. */
  async delete(): Promise<QueueExit[]> {
    const exits = await this.stop();
    await this.control.deleteDevice(this.id);
    if (this.ownsControl) this.control.close();
    return exits;
  }
}

async function retryWhileBusy(command: () => Promise<void>): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await command();
    } catch (err) {
      if (!(err instanceof UblkError && err.code === 'EBUSY') || attempt >= RECOVERY_BUSY_RETRIES) throw err;
      await sleep(RECOVERY_BUSY_DELAY_MS);
    }
  }
}

/**
 * Closes the backing store once the queues end. A clean end (every tag
 * aborted by STOP_DEV) means the device is going away, so a memory
 * device's bytes go too; after a failure they stay for recovery.
 */
function closeOnExit(exited: Promise<QueueExit[]>, backing: Backing | undefined, spec: DeviceSpec, devId: number): Promise<QueueExit[]> {
  const isMemory = spec.target.type === 'memory';
  return exited.then((exits) => {
    backing?.close();
    if (isMemory && exits.every((e) => e.error === undefined)) discardMemory(devId);
    return exits;
  });
}

/** What the kernel is told about the device: geometry, cache, discard support. */
export function deviceParams(spec: DeviceSpec, maxIoSize: number): DeviceParams {
  const params: DeviceParams = {
    sizeBytes: spec.sizeBytes,
    logicalBlockSize: spec.logicalBlockSize,
    maxIoSize,
    readOnly: spec.readOnly,
  };
  if (spec.target.type === 'loop' || spec.target.type === 'memory') {
    // Discards become hole punches; advertise them so blkdiscard and mkfs use them.
    const limit = 1 << 30;
    params.discard = { granularity: 4096, maxDiscardBytes: limit, maxWriteZeroesBytes: limit };
  }
  if (spec.target.type === 'loop') {
    // The page cache of a buffered backing file is a volatile write cache.
    params.volatileCache = true;
    params.fua = true;
  }
  return params;
}

interface StartedQueues {
  group: { stop(): void };
  exited: Promise<QueueExit[]>;
}

/**
 * Loads a JS target's module in this thread before the device exists, so
 * a module that fails to load or exports no target is refused with nothing
 * to undo; runs its setup() once and returns what the queues will share.
 */
async function prepareJsTarget(spec: DeviceSpec): Promise<unknown> {
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

/** Gathers the queues' "ready" and "exit" reports into two promises. */
class QueueLifecycle {
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
    this.rejectReady(exit.error ?? new UblkError('QUEUE_START', this.devId, 5, `queue ${exit.qid} ended before the device started`));
    if (this.exits.length === this.count) {
      this.onAllExited?.();
      this.resolveExited(this.exits.sort((a, b) => a.qid - b.qid));
    }
  }
}

const QUEUE_WORKER = path.join(__dirname, 'js-queue-worker.js');

/** One worker_thread per queue for a JS target; each serves its queue on its own event loop. */
function startJsQueues(info: DeviceInfo, spec: DeviceSpec & { target: { type: 'js' } }, shared: unknown): { group: { stop(): void }; ready: Promise<void>; exited: Promise<QueueExit[]> } {
  const workers: Worker[] = [];
  // One opener per device: the workers share this descriptor, closed when they are all done.
  const charFd = fsSync.openSync(info.charPath, fsSync.constants.O_RDWR);
  const lifecycle = new QueueLifecycle(info.id, info.queues, () => fsSync.closeSync(charFd));
  for (let qid = 0; qid < info.queues; qid++) {
    const data: QueueWorkerData = {
      devId: info.id,
      qid,
      charFd,
      depth: info.depth,
      maxIoSize: info.maxIoSize,
      legacyOpcodes: (info.flags & UBLK_F_CMD_IOCTL_ENCODE) === 0n,
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
      if (m.kind === 'log') process.stderr.write(`${new Date().toISOString()} ${m.line}
`);
      if (m.kind === 'exit') {
        exit = { qid, ios: m.ios, error: m.error ? new UblkError(`queue ${qid}`, info.id, 5, m.error) : undefined };
      }
    });
    worker.on('error', (err) => {
      exit = { qid, ios: exit?.ios ?? 0, error: new UblkError(`queue ${qid}`, info.id, 5, err.message) };
    });
    worker.on('exit', () => {
      lifecycle.queueExited(exit ?? { qid, ios: 0, error: new UblkError(`queue ${qid}`, info.id, 5, 'worker ended without a word') });
    });
  }
  return { group: { stop: () => workers.forEach((w) => w.postMessage('stop')) }, ready: lifecycle.ready, exited: lifecycle.exited };
}

/** Starts one native thread per queue and resolves once every tag of every queue is fetched. */
async function startQueues(
  control: UblkControl,
  info: DeviceInfo,
  spec: DeviceSpec,
  backing: Backing | undefined,
  shared: unknown,
): Promise<StartedQueues> {
  await waitForNode(info.charPath, NODE_WAIT_MS);
  if (spec.target.type === 'js') {
    const js = startJsQueues(info, spec as DeviceSpec & { target: { type: 'js' } }, shared);
    try {
      await js.ready;
    } catch (err) {
      js.group.stop();
      await js.exited;
      throw err;
    }
    return { group: js.group, exited: js.exited };
  }
  const affinities = await Promise.all(
    Array.from({ length: info.queues }, (_, qid) => control.getQueueAffinity(info.id, qid).catch(() => [])),
  );
  const lifecycle = new QueueLifecycle(info.id, info.queues);
  const onEvent = (e: NativeQueueEvent): void => {
    if (e.kind === 'ready') lifecycle.queueReady();
    else lifecycle.queueExited({ qid: e.qid, ios: e.ios, error: e.error });
  };
  const group = new native.QueueGroup(
    {
      devId: info.id,
      charPath: info.charPath,
      depth: info.depth,
      maxIoSize: info.maxIoSize,
      legacyOpcodes: (info.flags & UBLK_F_CMD_IOCTL_ENCODE) === 0n,
      ringFlags: queueRingFlags(),
      target: spec.target.type as 'null' | 'loop' | 'memory',
      backingFd: backing?.fd,
      sizeBytes: spec.sizeBytes,
      queues: Array.from({ length: info.queues }, (_, qid) => ({ qid, cpus: affinities[qid] ?? [] })),
    },
    onEvent,
  );
  try {
    await lifecycle.ready;
  } catch (err) {
    group.stop();
    await lifecycle.exited;
    throw err;
  }
  return { group, exited: lifecycle.exited };
}
