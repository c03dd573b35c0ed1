/**
 * One reconcile pass: read the manifests and the live state afresh,
 * plan, and (unless only planning) apply each action on its own, so one
 * device's failure never blocks another. The pass says when it wants to
 * run again (`requeueAfterMs`); the watcher schedules that.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DeviceInfo } from '../kernel/control';
import { formatManifestError, LoadedManifest, loadManifestDirAsync, ManifestCache } from '../manifest';
import type { DeviceRecord } from '../server/device-records';
import { updateSizeMissing } from '../kernel/uapi';
import { identityWithoutSize } from '../spec/device-spec';
import { SERVER_VERSION } from '../server/launcher';
import { handoverMethod } from '../server/handover';
import { isRecoverable } from '../spec/recovery-mode';
import { parseSize } from '../spec/sizes';
import { apply, DeviceOutcome, plannedOutcome } from './apply';
import { Backoff } from './backoff';
import { defaultConcurrency, runBounded } from './concurrency';
import type { Kernel } from './kernel';
import { Action, DesiredDevice, isChange, LiveDevice, nameOrder, plan, requeueAfter } from './planner';
import { preflight } from './preflight';

export type { DeviceOutcome } from './apply';

export interface ReconcileOptions {
  dir: string;
  /** Print the plan, change nothing. */
  planOnly?: boolean;
  /** Refuse manifests and directories writable by others (StrictModes). */
  checkPermissions?: boolean;
  log?: (line: string) => void;
  /** Leave "nothing to do" out of the log (the watcher's periodic passes). */
  quietNoops?: boolean;
  now?: () => number;
  /** Retry timing across passes; the watcher passes its own, a one-shot pass gets a fresh one. */
  backoff?: Backoff;
  /**
   * When a dead server's death was first noticed (the watcher polls for it), so a crash is timed
   * when it happened even if a busy host handles it in a later pass. Without it, a pass's own time.
   */
  deathNoticedAt?: (pid: number) => number | undefined;
  /** Hand every device whose server runs another ublk-ts version than the installed one over to a new server. */
  upgradeServers?: boolean;
  /** How many device actions run at once (see concurrency.ts); default defaultConcurrency(). */
  concurrency?: number;
  /** Manifests checked by earlier passes of this process (the watcher's): unchanged files are not parsed again. */
  manifestCache?: ManifestCache;
}

export interface PassResult {
  devices: DeviceOutcome[];
  manifestErrors: string[];
  /** 0: live state matches every manifest; 1: a device failed, drifted, or a manifest is invalid. */
  exitCode: 0 | 1;
  /** Set when some device waits: run another pass after this many milliseconds. */
  requeueAfterMs?: number;
}

/**
 * The planner's view of a kernel device. `inUse` is looked up only when the
 * plan reads it (a changed spec), not for every device of every pass: the
 * answer is the same, and a pass where nothing changed never scans /proc.
 */
function liveView(kernel: Kernel, info: DeviceInfo, owned: boolean, inUse: (blockPath: string) => boolean): LiveDevice {
  const handover = handoverMethod(info);
  let inUseAnswer: boolean | undefined;
  return {
    id: info.id,
    state: info.state,
    serverPid: info.serverPid,
    serverAlive: info.serverPid > 0 && kernel.isAlive(info.serverPid),
    get inUse(): boolean {
      inUseAnswer ??= owned && info.state === 'LIVE' ? inUse(info.blockPath) : false;
      return inUseAnswer;
    },
    recoverable: isRecoverable(info.flags),
    cannotResize: updateSizeMissing(kernel.features, info.flags),
    handoverRefusal: 'impossible' in handover ? handover.impossible : undefined,
  };
}

/** The size a manifest asks for, in bytes; undefined when it names none (a loop device takes its file's). */
function manifestSize(m: LoadedManifest): number | undefined {
  if (m.spec.size === undefined) return undefined;
  const parsed = parseSize(m.spec.size);
  return 'bytes' in parsed ? parsed.bytes : undefined;
}

/**
 * The stages of a pass, run one after the other; the actions of one stage
 * run concurrently. Deletions first: they free ids and files (a renamed
 * manifest's create may need its old device's loop file). Then
 * re-creations (they free the old spec's id and file too). Then creations
 * with a fixed id, so the kernel cannot hand that id to a device created
 * without one. Then everything else: recoveries, handovers, resizes,
 * creations without an id, and the bookkeeping of devices that are fine,
 * none of which frees anything another action could be waiting for.
 */
function stage(a: Action, fixedId: number | undefined): number {
  if (a.kind === 'delete') return 0;
  if (a.kind === 'recreate') return 1;
  if (a.kind === 'create' && fixedId !== undefined) return 2;
  return 3;
}
const STAGES = 4;

function describe(o: DeviceOutcome): string {
  const dev = o.devId !== undefined ? ` dev ${o.devId}` : '';
  const result = o.outcome === 'failed' ? ` FAILED: ${o.error}` : o.outcome === 'planned' ? ' (planned)' : '';
  const lost = o.dataLost ? ' [data-plane state was lost]' : '';
  return `${o.action} ${o.name}${dev}: ${o.reason}${lost}${result}`;
}

/** Whether a directory entry exists at all, whatever it is (a dangling link or a FIFO included). */
function entryExists(p: string): boolean {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

/** The manifest files records name that are still in the directory. */
function presentFiles(dir: string, records: DeviceRecord[]): Set<string> {
  const files = records.map((r) => r.manifestFile).filter((f): f is string => f !== undefined);
  return new Set(files.filter((f) => entryExists(path.join(dir, f))));
}

/**
 * What `--plan` shows for an action: a create or re-create whose new spec
 * fails its pre-flight is shown failed, as `--once` would end.
 */
async function plannedWithPreflight(
  action: Action,
  manifest: LoadedManifest | undefined,
  idTaken: (id: number) => boolean,
  checkPermissions: boolean | undefined,
): Promise<DeviceOutcome> {
  if (!isChange(action)) return plannedOutcome(action, 'unchanged');
  const planned = plannedOutcome(action, 'planned');
  if ((action.kind !== 'create' && action.kind !== 'recreate') || !manifest) return planned;
  try {
    await preflight(manifest, { idTaken: (id) => id !== action.devId && idTaken(id), checkPermissions });
    return planned;
  } catch (err) {
    const left = action.kind === 'recreate' ? ' (the device would be left as it is)' : '';
    return { ...planned, outcome: 'failed', error: `${(err as Error).message}${left}` };
  }
}

/**
 * What no two concurrent actions may share: a device (its id), a name, and
 * a loop file (two manifests on one file that `create: true` makes would
 * otherwise race to create it; taken one after the other, the second finds it).
 */
function actionKeys(action: Action, manifest: LoadedManifest | undefined): string[] {
  const keys = [`name:${action.name}`];
  if (action.devId !== undefined) keys.push(`dev:${action.devId}`);
  const target = manifest?.spec.target;
  if (target?.type === 'loop' && typeof target.file === 'string') keys.push(`file:${path.resolve(target.file)}`);
  return keys;
}

/** Runs one pass. Throws only for environment problems (no ublk, missing directory, a corrupt record). */
export async function reconcileOnce(kernel: Kernel, opts: ReconcileOptions): Promise<PassResult> {
  const log = opts.log ?? (() => undefined);
  const now = (opts.now ?? Date.now)();
  const backoff = opts.backoff ?? new Backoff();
  const loaded = await loadManifestDirAsync(opts.dir, {
    checkPermissions: opts.checkPermissions,
    cache: opts.manifestCache,
  });
  const manifestErrors = loaded.errors.map(formatManifestError);
  for (const e of manifestErrors) log(`invalid manifest: ${e}`);

  const records = kernel.records.list().filter((r) => r.owner === 'reconciler');
  const ownedIds = new Set(records.map((r) => r.devId));
  const infos = await kernel.listDevices();
  const inUse = kernel.inUseChecker?.() ?? ((blockPath: string) => kernel.inUse(blockPath));
  const live = new Map(infos.map((i) => [i.id, liveView(kernel, i, ownedIds.has(i.id), inUse)]));
  const byName = new Map(loaded.manifests.map((m) => [m.name, m]));
  const desired: DesiredDevice[] = loaded.manifests.map((m) => ({
    name: m.name,
    source: `${m.file}:${m.line}`,
    file: m.file,
    hash: m.hash,
    legacyHash: m.legacyHash,
    fixedId: m.spec.id,
    allowDataLoss: m.spec.allowDataLoss,
    sizeBytes: manifestSize(m),
    identityWithoutSize: identityWithoutSize(m.spec),
    deviceHash: m.deviceHash,
  }));
  const actions = plan({
    desired,
    invalidNames: new Set(loaded.errors.map((e) => e.manifestName).filter((n): n is string => n !== undefined)),
    unattributedErrors: loaded.errors.some((e) => e.manifestName === undefined),
    anyErrors: loaded.errors.length > 0,
    presentFiles: presentFiles(opts.dir, records),
    validFiles: new Set(loaded.validFiles),
    records,
    live,
    now,
    backoff: (name) => backoff.pending(name, now),
    upgradeServersTo: opts.upgradeServers ? SERVER_VERSION : undefined,
  });

  // What --plan checks fixed ids against: the kernel's devices less those the plan removes first.
  const freed = new Set(actions.filter((a) => a.kind === 'delete' || a.kind === 'recreate').map((a) => a.devId));
  const takenAfterDeletes = (id: number): boolean => live.has(id) && !freed.has(id);
  const recordById = new Map(records.map((r) => [r.devId, r]));
  const concurrency = opts.concurrency ?? defaultConcurrency();
  const applyOne = async (action: Action): Promise<DeviceOutcome> => {
    const outcome = opts.planOnly
      ? await plannedWithPreflight(action, byName.get(action.name), takenAfterDeletes, opts.checkPermissions)
      : await apply(
          { kernel, backoff, now, deathNoticedAt: opts.deathNoticedAt, checkPermissions: opts.checkPermissions },
          action,
          byName.get(action.name),
          action.devId === undefined ? undefined : recordById.get(action.devId),
        );
    if (!(opts.quietNoops && outcome.action === 'noop')) log(describe(outcome));
    return outcome;
  };
  const devices: DeviceOutcome[] = [];
  for (let s = 0; s < STAGES; s++) {
    const staged = actions.filter((a) => stage(a, byName.get(a.name)?.spec.id) === s);
    const tasks = staged.map((action) => ({
      keys: actionKeys(action, byName.get(action.name)),
      run: () => applyOne(action),
    }));
    const settled = await runBounded(tasks, concurrency);
    settled.forEach((r, i) => {
      // apply reports a device's failure in its outcome; a throw here is a bug, reported on that device alone.
      if (r.status === 'fulfilled') devices.push(r.value);
      else
        devices.push({
          ...plannedOutcome(staged[i]!, 'failed'),
          error: String((r.reason as Error)?.message ?? r.reason),
        });
    });
  }
  devices.sort((a, b) => nameOrder.compare(a.name, b.name));
  const unsettled = devices.some(
    (d) => d.outcome === 'failed' || ['drift', 'refuse', 'hold', 'wait'].includes(d.action),
  );
  const result: PassResult = { devices, manifestErrors, exitCode: manifestErrors.length > 0 || unsettled ? 1 : 0 };
  const requeue = requeueAfter(actions, now);
  if (requeue !== undefined) result.requeueAfterMs = requeue;
  return result;
}
