/**
 * A ublk device served by this process: its lifecycle (create, recover,
 * stop, remove). The queues themselves live in queues.ts, the backing
 * store in backing.ts, the parameters policy in params.ts.
 */
import { ERRNO, UblkError } from '../errors';
import { ControlCommands, DeviceInfo, UblkControl } from '../kernel/control';
import { DeviceSpec } from '../spec/device-spec';
import { checkRecoverySupported, isRecoverable, recoveryFlags } from '../spec/recovery-mode';
import { Backing, discardMemory, openBacking } from './backing';
import { prepareJsTarget } from './js-queues';
import { deviceParams } from './params';
import { QueueExit, RunningQueues, startQueues } from './queues';

export type { QueueExit } from './queues';

/** Progress of UblkDevice.create, for callers that must clean up after a crash mid-way. */
export type CreateProgress = { stage: 'added'; info: DeviceInfo };

/** Options of create and recover. */
export interface DeviceOptions {
  /** An open control device (or a stand-in); omitted, the device opens its own and closes it when removed. */
  control?: ControlCommands;
}

const RECOVERY_BUSY_RETRIES = 200;
const RECOVERY_BUSY_DELAY_MS = 50;

/** What a device being brought up holds so far: undone in reverse order if a step fails. */
interface Held {
  backing?: Backing;
  /** Set once ADD_DEV succeeded: a create that fails later deletes it again. */
  addedId?: number;
  queues?: RunningQueues;
}

/**
 * A ublk device served by this process: its queues run on native threads
 * (one io_uring each) and the built-in target answers IO without JS, or on
 * worker threads for a JS target. `create` adds, configures and starts a
 * device; `recover` takes over a QUIESCED one whose server died; `remove`
 * stops and deletes it.
 */
export class UblkDevice {
  /** The kernel's view once serving (id, queues, depth, flags). */
  readonly info: DeviceInfo;
  readonly spec: DeviceSpec;
  /** Resolves when every queue thread has ended (after STOP_DEV, or on failure). */
  readonly exited: Promise<QueueExit[]>;
  /** The loop target's file or the memory target's tmpfs file, when there is one. */
  readonly backing: Backing | undefined;
  private readonly control: ControlCommands;
  private readonly ownsControl: boolean;

  private constructor(info: DeviceInfo, spec: DeviceSpec, control: ControlCommands, ownsControl: boolean, held: Held) {
    this.info = info;
    this.spec = spec;
    this.control = control;
    this.ownsControl = ownsControl;
    this.backing = held.backing;
    this.exited = closeOnExit(held.queues!.exited, held.backing, spec, info.id);
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
    opts: DeviceOptions & { onProgress?: (p: CreateProgress) => void } = {},
  ): Promise<UblkDevice> {
    return UblkDevice.bringUp(spec, opts, async (control, held) => {
      checkRecoverySupported(spec.recovery, control.features);
      const shared = await prepareJsTarget(spec);
      held.backing = openBacking(spec);
      const info = await control.addDevice({
        id: spec.id,
        queues: spec.queues,
        depth: spec.depth,
        maxIoSize: spec.maxIoSize,
        flags: recoveryFlags(spec.recovery),
      });
      held.addedId = info.id;
      held.backing?.bindToDevice(info.id);
      opts.onProgress?.({ stage: 'added', info });
      await control.setParams(info.id, deviceParams(spec, info.maxIoSize, held.backing));
      held.queues = await startQueues(control, info, spec, held.backing, shared);
      await control.startDevice(info.id, process.pid);
      return info.id;
    });
  }

  /**
   * Takes over a device whose server died (QUIESCED, or FAIL_IO):
   * START_USER_RECOVERY (retried while the kernel still sees the old
   * server), a fresh thread per queue fetching every tag, then
   * END_USER_RECOVERY with this process as the server → LIVE. IO the
   * kernel held meanwhile is served; with reissue, so is IO in flight at
   * the crash. A failed attempt leaves the device as it was.
   */
  static async recover(devId: number, spec: DeviceSpec, opts: DeviceOptions = {}): Promise<UblkDevice> {
    return UblkDevice.bringUp(spec, opts, async (control, held) => {
      const before = await control.getDeviceInfo(devId);
      if (!isRecoverable(before.flags)) {
        throw new UblkError('START_USER_RECOVERY', devId, ERRNO.EINVAL, 'device was created without user recovery');
      }
      if (before.state !== 'QUIESCED' && before.state !== 'FAIL_IO') {
        throw new UblkError(
          'START_USER_RECOVERY',
          devId,
          ERRNO.EINVAL,
          `device is ${before.state}, not QUIESCED or FAIL_IO`,
        );
      }
      const shared = await prepareJsTarget(spec);
      held.backing = openBacking(spec, { recoverDevId: devId });
      await retryWhileBusy(() => control.startUserRecovery(devId));
      const info = await control.getDeviceInfo(devId);
      held.queues = await startQueues(control, info, spec, held.backing, shared);
      await control.endUserRecovery(devId, process.pid);
      return devId;
    });
  }

  /**
   * Runs the steps of create or recover; on failure undoes what they got
   * to — queues stopped and awaited, an added device deleted, the control
   * device closed if it was opened here, the backing store closed (and a
   * file created for it removed) — then rethrows.
   */
  private static async bringUp(
    spec: DeviceSpec,
    opts: DeviceOptions,
    steps: (control: ControlCommands, held: Held) => Promise<number>,
  ): Promise<UblkDevice> {
    const control = opts.control ?? (await UblkControl.open());
    const ownsControl = opts.control === undefined;
    const held: Held = {};
    try {
      const devId = await steps(control, held);
      const live = await control.getDeviceInfo(devId);
      return new UblkDevice(live, spec, control, ownsControl, held);
    } catch (err) {
      if (held.queues) {
        held.queues.stop();
        await held.queues.exited;
      }
      if (held.addedId !== undefined) await control.deleteDevice(held.addedId).catch(() => undefined);
      if (ownsControl) control.close();
      held.backing?.close({ discardCreated: true });
      throw err;
    }
  }

  /** STOP_DEV, then wait for the queue threads to end. The device remains (DEAD) until removed. */
  async stop(): Promise<QueueExit[]> {
    await this.control.stopDevice(this.id);
    return this.exited;
  }

  /** STOP_DEV, wait for the queues, DEL_DEV: the device is gone when this resolves. */
  async remove(): Promise<QueueExit[]> {
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
      await new Promise((r) => setTimeout(r, RECOVERY_BUSY_DELAY_MS));
    }
  }
}

/**
 * Closes the backing store once the queues end. A clean end (every tag
 * aborted by STOP_DEV) means the device is going away, so a memory
 * device's bytes go too; after a failure they stay for recovery.
 */
function closeOnExit(
  exited: Promise<QueueExit[]>,
  backing: Backing | undefined,
  spec: DeviceSpec,
  devId: number,
): Promise<QueueExit[]> {
  const isMemory = spec.target.type === 'memory';
  return exited.then((exits) => {
    backing?.close();
    if (isMemory && exits.every((e) => e.error === undefined)) discardMemory(devId);
    return exits;
  });
}
