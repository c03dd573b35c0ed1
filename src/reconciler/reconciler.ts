/**
 * One reconcile pass: read the manifests and the live state afresh,
 * plan, and (unless only planning) apply each action on its own, so one
 * device's failure never blocks another. The pass says when it wants to
 * run again (`requeueAfterMs`); the watcher schedules that.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DeviceInfo } from '../kernel/control';
import { formatManifestError, LoadedManifest, loadManifestDirAsync } from '../manifest';
import type { DeviceRecord } from '../server/device-records';
import { updateSizeMissing } from '../kernel/uapi';
import { identityWithoutSize } from '../spec/device-spec';
import { SERVER_VERSION } from '../server/launcher';
import { handoverMethod } from '../server/handover';
import { isRecoverable } from '../spec/recovery-mode';
import { parseSize } from '../spec/sizes';
import { apply, DeviceOutcome, plannedOutcome } from './apply';
import { Backoff } from './backoff';
import type { Kernel } from './kernel';
import { Action, ActionKind, DesiredDevice, isChange, LiveDevice, plan, requeueAfter } from './planner';
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
}

export interface PassResult {
  devices: DeviceOutcome[];
  manifestErrors: string[];
  /** 0: live state matches every manifest; 1: a device failed, drifted, or a manifest is invalid. */
  exitCode: 0 | 1;
  /** Set when some device waits: run another pass after this many milliseconds. */
  requeueAfterMs?: number;
}

function liveView(kernel: Kernel, info: DeviceInfo, owned: boolean): LiveDevice {
  const handover = handoverMethod(info);
  return {
    id: info.id,
    state: info.state,
    serverPid: info.serverPid,
    serverAlive: info.serverPid > 0 && kernel.isAlive(info.serverPid),
    inUse: owned && info.state === 'LIVE' ? kernel.inUse(info.blockPath) : false,
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

/** Deletions first (they free ids and files), then re-creations, recoveries, handovers, creations; the rest in name order. */
const ORDER: ActionKind[] = ['delete', 'recreate', 'recover', 'handover', 'create'];

function rank(a: Action): number {
  const i = ORDER.indexOf(a.kind);
  return i < 0 ? ORDER.length : i;
}

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

/** Runs one pass. Throws only for environment problems (no ublk, missing directory, a corrupt record). */
export async function reconcileOnce(kernel: Kernel, opts: ReconcileOptions): Promise<PassResult> {
  const log = opts.log ?? (() => undefined);
  const now = (opts.now ?? Date.now)();
  const backoff = opts.backoff ?? new Backoff();
  const loaded = await loadManifestDirAsync(opts.dir, { checkPermissions: opts.checkPermissions });
  const manifestErrors = loaded.errors.map(formatManifestError);
  for (const e of manifestErrors) log(`invalid manifest: ${e}`);

  const records = kernel.records.list().filter((r) => r.owner === 'reconciler');
  const ownedIds = new Set(records.map((r) => r.devId));
  const infos = await kernel.listDevices();
  const live = new Map(infos.map((i) => [i.id, liveView(kernel, i, ownedIds.has(i.id))]));
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
  const devices: DeviceOutcome[] = [];
  for (const action of [...actions].sort((a, b) => rank(a) - rank(b))) {
    const outcome = opts.planOnly
      ? await plannedWithPreflight(action, byName.get(action.name), takenAfterDeletes, opts.checkPermissions)
      : await apply(
          { kernel, backoff, now, deathNoticedAt: opts.deathNoticedAt, checkPermissions: opts.checkPermissions },
          action,
          byName.get(action.name),
          records.find((r) => r.devId === action.devId),
        );
    if (!(opts.quietNoops && outcome.action === 'noop')) log(describe(outcome));
    devices.push(outcome);
  }
  devices.sort((a, b) => a.name.localeCompare(b.name));
  const unsettled = devices.some(
    (d) => d.outcome === 'failed' || ['drift', 'refuse', 'hold', 'wait'].includes(d.action),
  );
  const result: PassResult = { devices, manifestErrors, exitCode: manifestErrors.length > 0 || unsettled ? 1 : 0 };
  const requeue = requeueAfter(actions, now);
  if (requeue !== undefined) result.requeueAfterMs = requeue;
  return result;
}
