/**
 * One reconcile pass: read the manifests and the live state afresh,
 * plan, and (unless only planning) apply each action on its own, so one
 * device's failure never blocks another.
 */
import { DeviceInfo, UblkControl } from '../control';
import { DeviceSpec, normalizeDeviceSpec } from '../device-spec';
import { SpecError, UblkError } from '../errors';
import { isAlive, removeDevice, startServer } from '../launcher';
import { formatManifestError, loadManifestDir, LoadedManifest } from '../manifest';
import { DeviceRecord, listRecords, readRecord, removeRecord, writeRecord } from '../state';
import { UBLK_F_USER_RECOVERY } from '../uapi';
import { blockDeviceInUse } from './in-use';
import { Action, ActionKind, backoffMs, DesiredDevice, isChange, LiveDevice, plan } from './planner';

export interface ReconcileOptions {
  dir: string;
  stateDir: string;
  /** Print the plan, change nothing. */
  planOnly?: boolean;
  /** Refuse manifests and directories writable by others (StrictModes). */
  checkPermissions?: boolean;
  log?: (line: string) => void;
  /** Leave "nothing to do" out of the log (the watcher's periodic passes). */
  quietNoops?: boolean;
  now?: () => number;
}

/** What happened to one device in a pass. */
export interface DeviceOutcome {
  name: string;
  action: ActionKind;
  devId?: number;
  blockPath?: string;
  reason: string;
  outcome: 'ok' | 'failed' | 'planned' | 'unchanged';
  error?: string;
  dataLost?: boolean;
}

export interface PassResult {
  devices: DeviceOutcome[];
  manifestErrors: string[];
  /** 0: live state matches every manifest; 1: a device failed, drifted, or a manifest is invalid. */
  exitCode: 0 | 1;
}

/** A server that lived less than this was not a success: its restart counts towards backoff. */
export const STABLE_MS = 3_000;

/** How a restarted server's record starts: a quick death counts as a failure, so a crash loop backs off. */
function restartHistory(record: DeviceRecord | undefined, now: number): { failures: number; lastError?: string } {
  if (!record) return { failures: 0 };
  const lived = now - Date.parse(record.updatedAt);
  if (lived >= STABLE_MS) return { failures: 0 };
  return {
    failures: (record.failures ?? 0) + 1,
    lastError: `server pid ${record.serverPid} died ${(lived / 1000).toFixed(1)} s after it started`,
  };
}

/** Failed creates have no device, hence no record: their backoff is kept here, per manifest name. */
const createFailures = new Map<string, { failures: number; at: number }>();

function toSpecInput(m: LoadedManifest): Parameters<typeof normalizeDeviceSpec>[0] {
  const s = m.spec as unknown as Record<string, unknown>;
  return {
    target: s.target as Parameters<typeof normalizeDeviceSpec>[0]['target'],
    size: s.size as number | string | undefined,
    id: s.id as number | undefined,
    queues: s.queues as number | undefined,
    depth: s.depth as number | undefined,
    maxIoSize: s.maxIoSize as number | string | undefined,
    logicalBlockSize: s.logicalBlockSize as number | undefined,
    readOnly: s.readOnly as boolean | undefined,
    recovery: s.recovery as string | undefined,
  };
}

function liveView(info: DeviceInfo, owned: boolean): LiveDevice {
  return {
    id: info.id,
    state: info.state,
    serverPid: info.serverPid,
    serverAlive: info.serverPid > 0 && isAlive(info.serverPid),
    inUse: owned && info.state === 'LIVE' ? blockDeviceInUse(info.blockPath) : false,
    recoverable: (info.flags & UBLK_F_USER_RECOVERY) !== 0n,
  };
}

/** Runs one pass. Throws only for environment problems (no ublk, missing directory). */
export async function reconcileOnce(control: UblkControl, opts: ReconcileOptions): Promise<PassResult> {
  const log = opts.log ?? (() => undefined);
  const now = (opts.now ?? Date.now)();
  const loaded = loadManifestDir(opts.dir, { checkPermissions: opts.checkPermissions });
  const manifestErrors = loaded.errors.map(formatManifestError);
  for (const e of manifestErrors) log(`invalid manifest: ${e}`);

  const records = listRecords(opts.stateDir).filter((r) => r.owner === 'reconciler');
  const ownedIds = new Set(records.map((r) => r.devId));
  const infos = await control.listDevices();
  const live = new Map(infos.map((i) => [i.id, liveView(i, ownedIds.has(i.id))]));
  const byName = new Map(loaded.manifests.map((m) => [m.name, m]));
  const desired: DesiredDevice[] = loaded.manifests.map((m) => ({
    name: m.name,
    source: `${m.file}:${m.line}`,
    hash: m.hash,
    fixedId: (m.spec as { id?: number }).id,
  }));
  const actions = plan({
    desired,
    invalidNames: new Set(loaded.errors.map((e) => e.manifestName).filter((n): n is string => n !== undefined)),
    unattributedErrors: loaded.errors.some((e) => e.manifestName === undefined),
    records,
    live,
    now,
  }).map((a) => withCreateBackoff(a, now));

  const devices: DeviceOutcome[] = [];
  const order: ActionKind[] = ['delete', 'recreate', 'recover', 'create'];
  const sorted = [...actions].sort((a, b) => rank(a) - rank(b));
  function rank(a: Action): number {
    const i = order.indexOf(a.kind);
    return i < 0 ? order.length : i;
  }
  for (const action of sorted) {
    const outcome = opts.planOnly
      ? planned(action)
      : await apply(control, action, byName.get(action.name), records, opts.stateDir, now);
    if (!(opts.quietNoops && outcome.action === 'noop')) log(describe(outcome));
    devices.push(outcome);
  }
  devices.sort((a, b) => a.name.localeCompare(b.name));
  const unsettled = devices.some(
    (d) => d.outcome === 'failed' || ['drift', 'refuse', 'hold', 'wait'].includes(d.action),
  );
  return { devices, manifestErrors, exitCode: manifestErrors.length > 0 || unsettled ? 1 : 0 };
}

function withCreateBackoff(a: Action, now: number): Action {
  if (a.kind !== 'create') return a;
  const failed = createFailures.get(a.name);
  if (!failed) return a;
  const due = failed.at + backoffMs(failed.failures);
  if (due <= now) return a;
  return { ...a, kind: 'wait', reason: `creating failed ${failed.failures} time(s); next try in ${Math.ceil((due - now) / 1000)} s` };
}

function planned(a: Action): DeviceOutcome {
  return { name: a.name, action: a.kind, devId: a.devId, reason: a.reason, outcome: isChange(a) ? 'planned' : 'unchanged', dataLost: a.dataLost };
}

function describe(o: DeviceOutcome): string {
  const dev = o.devId !== undefined ? ` dev ${o.devId}` : '';
  const result = o.outcome === 'failed' ? ` FAILED: ${o.error}` : o.outcome === 'planned' ? ' (planned)' : '';
  const lost = o.dataLost ? ' [data-plane state was lost]' : '';
  return `${o.action} ${o.name}${dev}: ${o.reason}${lost}${result}`;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function recordFailure(stateDir: string, devId: number, err: unknown): void {
  const record = readRecord(stateDir, devId);
  if (!record) return;
  writeRecord(stateDir, { ...record, status: 'failed', lastError: message(err), failures: (record.failures ?? 0) + 1 });
}

async function createFrom(
  manifest: LoadedManifest,
  stateDir: string,
): Promise<{ devId: number; blockPath: string }> {
  let spec: DeviceSpec;
  try {
    spec = normalizeDeviceSpec(toSpecInput(manifest));
  } catch (err) {
    if (err instanceof SpecError) throw new SpecError(`${manifest.file}:${manifest.line}: spec.${err.field}`, err.message.slice(err.field.length + 2));
    throw err;
  }
  const server = await startServer(spec, { stateDir, owner: 'reconciler', manifest: manifest.name, specHash: manifest.hash });
  return { devId: server.info.id, blockPath: server.info.blockPath };
}

async function apply(
  control: UblkControl,
  action: Action,
  manifest: LoadedManifest | undefined,
  records: DeviceRecord[],
  stateDir: string,
  now: number,
): Promise<DeviceOutcome> {
  const base: DeviceOutcome = { name: action.name, action: action.kind, devId: action.devId, reason: action.reason, outcome: 'ok', dataLost: action.dataLost };
  const record = records.find((r) => r.devId === action.devId);
  try {
    switch (action.kind) {
      case 'create': {
        const made = await createFrom(manifest!, stateDir);
        createFailures.delete(action.name);
        return { ...base, devId: made.devId, blockPath: made.blockPath };
      }
      case 'recreate': {
        await removeOwned(control, action.devId!, stateDir);
        const made = await createFrom(manifest!, stateDir);
        return { ...base, devId: made.devId, blockPath: made.blockPath };
      }
      case 'recover': {
        const server = await startServer(record!.spec, {
          stateDir,
          recoverDevId: action.devId,
          owner: 'reconciler',
          manifest: record!.manifest,
          specHash: record!.specHash,
          ...restartHistory(record, now),
        });
        return { ...base, blockPath: server.info.blockPath };
      }
      case 'delete':
        await removeOwned(control, action.devId!, stateDir);
        return base;
      case 'drift':
        if (record && record.lastError !== action.reason) writeRecord(stateDir, { ...record, lastError: action.reason });
        return { ...base, outcome: 'unchanged' };
      case 'noop':
        // Clear a past error once the server has proved stable, not at the first quiet pass.
        if (record && (record.lastError !== undefined || record.status !== 'live') && now - Date.parse(record.updatedAt) >= STABLE_MS) {
          writeRecord(stateDir, { ...record, status: 'live', lastError: undefined, failures: 0 });
        }
        return { ...base, outcome: 'unchanged' };
      default:
        return { ...base, outcome: 'unchanged' };
    }
  } catch (err) {
    if (action.devId !== undefined && action.kind !== 'create') recordFailure(stateDir, action.devId, err);
    if (action.kind === 'create' || action.kind === 'recreate') {
      const prev = createFailures.get(action.name);
      createFailures.set(action.name, { failures: (prev?.failures ?? 0) + 1, at: now });
    }
    return { ...base, outcome: 'failed', error: message(err) };
  }
}

/** Stops and deletes a device the reconciler owns; one already gone just loses its record. */
async function removeOwned(control: UblkControl, devId: number, stateDir: string): Promise<void> {
  try {
    await removeDevice(control, devId, { stateDir });
  } catch (err) {
    if (!(err instanceof UblkError && err.code === 'ENODEV')) throw err;
    removeRecord(stateDir, devId);
  }
}
