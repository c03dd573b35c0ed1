import * as fs from 'node:fs/promises';
import { Backing, openBacking } from './backing';
import { DeviceInfo, DeviceParams, UblkControl } from './control';
import { UblkError } from './errors';
import { native, NativeQueueEvent, NativeQueueGroup } from './native';
import { DeviceSpec } from './device-spec';
import { UBLK_F_CMD_IOCTL_ENCODE } from './uapi';

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
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** io_uring setup flags for queue rings; overridable for benchmarking. */
function queueRingFlags(): number {
  const override = process.env.UBLK_TS_RING_FLAGS;
  if (override !== undefined) return Number(override);
  return 0;
}

/**
 * A ublk device served by this process: its queues run on native threads
 * (one io_uring each) and the built-in target answers IO without JS.
 * `create` adds, configures and starts the device; `delete` stops and removes it.
 */
export class UblkDevice {
  /** The kernel's view at start (id, queues, depth, flags). */
  readonly info: DeviceInfo;
  readonly spec: DeviceSpec;
  /** Resolves when every queue thread has ended (after STOP_DEV, or on failure). */
  readonly exited: Promise<QueueExit[]>;
  private readonly control: UblkControl;
  private readonly ownsControl: boolean;
  private readonly queues: NativeQueueGroup;
  /** The loop target's file or the memory target's memfd, when there is one. */
  readonly backing: Backing | undefined;

  private constructor(
    info: DeviceInfo,
    spec: DeviceSpec,
    control: UblkControl,
    ownsControl: boolean,
    queues: NativeQueueGroup,
    exited: Promise<QueueExit[]>,
    backing: Backing | undefined,
  ) {
    this.backing = backing;
    this.info = info;
    this.spec = spec;
    this.control = control;
    this.ownsControl = ownsControl;
    this.queues = queues;
    this.exited = exited;
  }

  get id(): number {
    return this.info.id;
  }

  get blockPath(): string {
    return this.info.blockPath;
  }

  /**
   * ADD_DEV, SET_PARAMS, start one thread per queue, wait until each has
   * fetched its tags, START_DEV. On any failure the half-made device is
   * deleted before the error is thrown.
   */
  static async create(
    spec: DeviceSpec,
    opts: { control?: UblkControl; onProgress?: (p: CreateProgress) => void } = {},
  ): Promise<UblkDevice> {
    const backing = openBacking(spec);
    let control: UblkControl;
    try {
      control = opts.control ?? (await UblkControl.open());
    } catch (err) {
      backing?.close({ discardCreated: true });
      throw err;
    }
    const ownsControl = opts.control === undefined;
    let info: DeviceInfo | undefined;
    let group: NativeQueueGroup | undefined;
    let exited: Promise<QueueExit[]> | undefined;
    try {
      info = await control.addDevice({
        id: spec.id,
        queues: spec.queues,
        depth: spec.depth,
        maxIoSize: spec.maxIoSize,
      });
      opts.onProgress?.({ stage: 'added', info });
      await control.setParams(info.id, deviceParams(spec, info.maxIoSize));
      await waitForNode(info.charPath, NODE_WAIT_MS);
      const affinities = await Promise.all(
        Array.from({ length: info.queues }, (_, qid) => control.getQueueAffinity(info!.id, qid).catch(() => [])),
      );
      const started = startQueues(info, spec, affinities, backing);
      group = started.group;
      exited = started.exited;
      await started.ready;
      await control.startDevice(info.id, process.pid);
      const live = await control.getDeviceInfo(info.id);
      const closed = exited.finally(() => backing?.close());
      return new UblkDevice(live, spec, control, ownsControl, group, closed, backing);
    } catch (err) {
      if (group) {
        group.stop();
        await exited;
      }
      if (info) await control.deleteDevice(info.id).catch(() => undefined);
      if (ownsControl) control.close();
      backing?.close({ discardCreated: true });
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

function startQueues(
  info: DeviceInfo,
  spec: DeviceSpec,
  affinities: number[][],
  backing: Backing | undefined,
): { group: NativeQueueGroup; ready: Promise<void>; exited: Promise<QueueExit[]> } {
  let readyCount = 0;
  const exits: QueueExit[] = [];
  let resolveReady!: () => void;
  let rejectReady!: (e: Error) => void;
  let resolveExited!: (e: QueueExit[]) => void;
  const ready = new Promise<void>((res, rej) => {
    resolveReady = res;
    rejectReady = rej;
  });
  const exited = new Promise<QueueExit[]>((res) => (resolveExited = res));
  ready.catch(() => undefined);
  const onEvent = (e: NativeQueueEvent): void => {
    if (e.kind === 'ready') {
      if (++readyCount === info.queues) resolveReady();
      return;
    }
    exits.push({ qid: e.qid, ios: e.ios, error: e.error });
    if (e.error) rejectReady(e.error);
    else rejectReady(new UblkError('QUEUE_START', info.id, 5, `queue ${e.qid} ended before the device started`));
    if (exits.length === info.queues) resolveExited(exits.sort((a, b) => a.qid - b.qid));
  };
  const group = new native.QueueGroup(
    {
      devId: info.id,
      charPath: info.charPath,
      depth: info.depth,
      maxIoSize: info.maxIoSize,
      legacyOpcodes: (info.flags & UBLK_F_CMD_IOCTL_ENCODE) === 0n,
      ringFlags: queueRingFlags(),
      target: spec.target.type,
      backingFd: backing?.fd,
      sizeBytes: spec.sizeBytes,
      queues: Array.from({ length: info.queues }, (_, qid) => ({ qid, cpus: affinities[qid] ?? [] })),
    },
    onEvent,
  );
  return { group, ready, exited };
}
