/**
 * A ublk device served by this process: its lifecycle (create, recover,
 * stop, remove). The queues themselves live in queues.ts, the backing
 * store in backing.ts, the parameters policy in params.ts.
 */
import { ERRNO, UblkError } from '../errors';
import { ControlCommands, DeviceInfo, UblkControl } from '../kernel/control';
import { DeviceSpec } from '../spec/device-spec';
import { checkRecoverySupported, isRecoverable, RecoveryMode } from '../spec/recovery-mode';
import { addDeviceFlags, checkGrantedFlags, loopFileOnTmpfs } from './add-flags';
import { Backing, discardMemory, openBacking } from './backing';
import { PreparedJsTarget, prepareJsTarget } from './js-queues';
import { deviceParams } from './params';
import { PreparedQueues, prepareQueues, QueueExit, RunningQueues, startQueues } from './queues';
import { applyScheduler, SchedulerOutcome } from './scheduler';

export type { QueueExit } from './queues';
export type { SchedulerOutcome } from './scheduler';

/** Progress of UblkDevice.create, for callers that must clean up after a crash mid-way. */
export type CreateProgress = { stage: 'added'; info: DeviceInfo };

/** Options of create and recover. */
export interface DeviceOptions {
  /** An open control device (or a stand-in); omitted, the device opens its own and closes it when removed. */
  control?: ControlCommands;
  /**
   * Refuse a js module, or a link on the way to a loop file, that users
   * other than root (or this process's user) could change: what a server
   * run as root on behalf of a manifest does. Default false.
   */
  checkPermissions?: boolean;
}

const RECOVERY_BUSY_RETRIES = 200;
const RECOVERY_BUSY_DELAY_MS = 50;

/** What a device being brought up holds so far: undone in reverse order if a step fails. */
interface Held {
  backing?: Backing;
  /** Set once ADD_DEV succeeded: a create that fails later deletes it again. */
  addedId?: number;
  /** Queues prepared but not started (a recovery before START_USER_RECOVERY). */
  prepared?: PreparedQueues;
  queues?: RunningQueues;
  /** The recovery mode the device was created with (create only). */
  recovery?: RecoveryMode;
}

/**
 * The recovery mode a device made from `spec` gets: the spec's, except
 * that a JS target whose module does not declare itself recoverable gets
 * none — its data lives only in its server, so the device must die with
 * the server instead of being taken over by one that serves a blank disk.
 */
export function effectiveRecovery(spec: DeviceSpec, js: PreparedJsTarget | undefined): RecoveryMode {
  return spec.target.type === 'js' && !js?.traits.recoverable ? 'none' : spec.recovery;
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
  /** Resolves when every queue thread has ended (after STOP_DEV, QUIESCE_DEV, release(), or on failure). */
  readonly exited: Promise<QueueExit[]>;
  /**
   * Resolves once the queues have ended: true when the device is still
   * there for another server to recover (QUIESCE_DEV, release(), or a
   * failed queue), false when it was stopped (DEAD) or deleted.
   */
  readonly remains: Promise<boolean>;
  /** The loop target's file or the memory target's tmpfs file, when there is one. */
  readonly backing: Backing | undefined;
  /**
   * What the kernel does with IO when this device's server dies: the
   * spec's recovery mode, or `none` for a JS target that does not declare
   * itself recoverable (see effectiveRecovery). Undefined for a device
   * this process recovered rather than created.
   */
  readonly recovery: RecoveryMode | undefined;
  /** The IO scheduler spec.scheduler asked for, the one the disk has, and why they differ if they do. */
  readonly scheduler: SchedulerOutcome;
  private readonly control: ControlCommands;
  private readonly ownsControl: boolean;
  private readonly queues: RunningQueues;

  private constructor(info: DeviceInfo, spec: DeviceSpec, control: ControlCommands, ownsControl: boolean, held: Held) {
    this.info = info;
    this.spec = spec;
    this.control = control;
    this.ownsControl = ownsControl;
    this.backing = held.backing;
    this.recovery = held.recovery;
    this.remains = held.queues!.exited.then(() => deviceRemains(control, info.id));
    this.exited = closeOnExit(held.queues!.exited, this.remains, held.backing, spec, info.id);
    this.queues = held.queues!;
    // Each server start sets it: a handover is how a changed manifest reaches a live device.
    this.scheduler = applyScheduler(info.id, spec.scheduler ?? 'none');
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
      const js = await prepareJsTarget(spec, { checkPermissions: opts.checkPermissions });
      held.recovery = effectiveRecovery(spec, js);
      const onTmpfs = spec.target.type === 'loop' && loopFileOnTmpfs(spec.target.file);
      const flags = addDeviceFlags(spec, held.recovery, control.features, { onTmpfs });
      held.backing = openBacking(spec, { checkPermissions: opts.checkPermissions });
      const info = await control.addDevice({
        id: spec.id,
        queues: spec.queues,
        depth: spec.depth,
        maxIoSize: spec.maxIoSize,
        flags,
      });
      held.addedId = info.id;
      checkGrantedFlags(flags, info);
      held.backing?.bindToDevice(info.id);
      opts.onProgress?.({ stage: 'added', info });
      await control.setParams(info.id, deviceParams(spec, info.maxIoSize, js?.traits, held.backing));
      held.queues = await startQueues(control, info, spec, held.backing, js);
      await control.startDevice(info.id, process.pid);
      return info.id;
    });
  }

  /**
   * Takes over a device whose server died (QUIESCED, or FAIL_IO):
   * everything that can fail without the kernel — the JS module loaded
   * (and refused unless it declares itself recoverable), its setup() and
   * every queue's createTarget(), the backing store opened — comes first;
   * then START_USER_RECOVERY (retried while the kernel still sees the old
   * server), a fresh thread per queue fetching every tag, and
   * END_USER_RECOVERY with this process as the server → LIVE. IO the
   * kernel held meanwhile is served; with reissue, so is IO in flight at
   * the crash.
   *
   * A failed attempt can be retried. Before START_USER_RECOVERY nothing
   * changed. After it, the kernel (before 6.15) has reset every queue and
   * refuses a second START_USER_RECOVERY with EINVAL until a queue is
   * ready again; that refusal, on a recoverable QUIESCED device, means an
   * earlier attempt got that far and died, and this attempt goes on to
   * fetch the queues the kernel is waiting for (see startUserRecovery).
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
      // Checked again, not taken on trust from the record: files may have changed since the device was made.
      const js = await prepareJsTarget(spec, { recovering: true, checkPermissions: opts.checkPermissions });
      held.backing = openBacking(spec, { recoverDevId: devId, checkPermissions: opts.checkPermissions });
      held.prepared = await prepareQueues(control, before, spec, held.backing, js);
      const how = await startUserRecovery(control, devId);
      try {
        held.queues = await held.prepared.start();
      } catch (err) {
        if (how === 'resumed' && err instanceof UblkError) {
          // The kernel keeps the memory of the first process to map a queue after START_USER_RECOVERY.
          throw new UblkError(
            err.op,
            err.devId,
            err.errno,
            `${err.detail ?? err.code}; an earlier recovery of this device died after START_USER_RECOVERY, and if it ` +
              'had mapped its queues, this kernel lets no other server map them until the device is deleted',
          );
        }
        throw err;
      }
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
      } else {
        await held.prepared?.abandon();
      }
      if (held.addedId !== undefined) await control.deleteDevice(held.addedId).catch(() => undefined);
      if (ownsControl) control.close();
      held.backing?.close({ discardCreated: true });
      throw err;
    }
  }

  /**
   * Stops serving without stopping the device, for a handover on kernels
   * without QUIESCE_DEV: the queues end, /dev/ublkcN is closed, and the
   * kernel keeps the device for a new server to recover (QUIESCED, on a
   * device with user recovery). Requests the queues held unanswered are
   * the kernel's again: requeued with recovery reissue, failed otherwise.
   */
  async release(): Promise<QueueExit[]> {
    this.queues.stop();
    return this.exited;
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

/**
 * START_USER_RECOVERY, retried while it answers EBUSY: the kernel still
 * sees the dead server (its /dev/ublkcN not yet released, or the device
 * not yet quiesced).
 *
 * EINVAL on a device that has user recovery and is QUIESCED (recover
 * checked both) is the kernel saying no queue is ready: before Linux 6.15
 * START_USER_RECOVERY requires a ready queue, and an earlier
 * START_USER_RECOVERY whose server died before any queue fetched all its
 * tags left none. That earlier call already did what this one would —
 * every queue reset and waiting for FETCH_REQs — so recovery goes on from
 * there ('resumed') rather than leaving the device stuck.
 */
async function startUserRecovery(control: ControlCommands, devId: number): Promise<'started' | 'resumed'> {
  for (let attempt = 1; ; attempt++) {
    try {
      await control.startUserRecovery(devId);
      return 'started';
    } catch (err) {
      if (err instanceof UblkError && err.code === 'EINVAL') return 'resumed';
      if (!(err instanceof UblkError && err.code === 'EBUSY') || attempt >= RECOVERY_BUSY_RETRIES) throw err;
      await new Promise((r) => setTimeout(r, RECOVERY_BUSY_DELAY_MS));
    }
  }
}

/**
 * Whether the device is still there for another server once this one's
 * queues ended: not stopped (DEAD) and not deleted. A kernel that cannot
 * be asked counts as "still there": memory is never dropped on a guess.
 */
async function deviceRemains(control: ControlCommands, devId: number): Promise<boolean> {
  try {
    return (await control.getDeviceInfo(devId)).state !== 'DEAD';
  } catch (err) {
    return !(err instanceof UblkError && err.code === 'ENODEV');
  }
}

/**
 * Closes the backing store once the queues end. A clean end on a device
 * that was stopped or deleted means it is going away, so a memory
 * device's bytes go too; after a failure, or when the device remains for
 * a new server (a handover), they stay for it.
 */
function closeOnExit(
  exited: Promise<QueueExit[]>,
  remains: Promise<boolean>,
  backing: Backing | undefined,
  spec: DeviceSpec,
  devId: number,
): Promise<QueueExit[]> {
  const isMemory = spec.target.type === 'memory';
  return Promise.all([exited, remains]).then(([exits, stays]) => {
    backing?.close();
    if (isMemory && !stays && exits.every((e) => e.error === undefined)) discardMemory(devId);
    return exits;
  });
}
