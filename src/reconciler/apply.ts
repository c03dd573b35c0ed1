/**
 * Applying one planned action against the kernel seam. Each action is
 * applied on its own and its failure is returned, not thrown, so one
 * device never blocks another; failures feed the backoff.
 */
import { DeviceSpec } from '../spec/device-spec';
import type { LoadedManifest } from '../manifest';
import { DeviceLockedError } from '../server/device-lock';
import type { DeviceRecord } from '../server/device-records';
import { Backoff, STABLE_MS } from './backoff';
import type { Kernel } from './kernel';
import { Action, ActionKind } from './planner';
import { preflight, PreflightError } from './preflight';

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
  /** For wait: when the device is looked at again (ISO time). */
  dueAt?: string;
}

/** What apply needs besides the action. */
export interface ApplyContext {
  kernel: Kernel;
  backoff: Backoff;
  now: number;
  /** When a dead server's death was noticed, where the caller watched for it. */
  deathNoticedAt?: (pid: number) => number | undefined;
  /** Refuse js modules and loop-file links others could change, in the pre-flight and in the server (recoveries too). */
  checkPermissions?: boolean;
}

/** When the record's server went LIVE (records from before `startedAt` was kept: their last write). */
function startedAt(record: DeviceRecord): number {
  return Date.parse(record.startedAt ?? record.updatedAt);
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The outcome of an action that was only planned (or changes nothing). */
export function plannedOutcome(a: Action, outcome: DeviceOutcome['outcome']): DeviceOutcome {
  const o: DeviceOutcome = {
    name: a.name,
    action: a.kind,
    devId: a.devId,
    reason: a.reason,
    outcome,
    dataLost: a.dataLost,
  };
  if (a.dueAt !== undefined) o.dueAt = new Date(a.dueAt).toISOString();
  return o;
}

/**
 * How a restarted server's record starts, and whether its predecessor's
 * death counts as a failure: a server that died within STABLE_MS of
 * starting did not work, so a crash loop backs off.
 */
function restartHistory(
  name: string,
  record: DeviceRecord,
  ctx: ApplyContext,
): { failures: number; lastError?: string } {
  const diedBy = Math.min(ctx.now, ctx.deathNoticedAt?.(record.serverPid) ?? ctx.now);
  const lived = diedBy - startedAt(record);
  if (lived >= STABLE_MS) {
    ctx.backoff.succeeded(name);
    return { failures: 0 };
  }
  ctx.backoff.failed(name, ctx.now);
  return {
    failures: ctx.backoff.failures(name),
    lastError: `server pid ${record.serverPid} died ${(lived / 1000).toFixed(1)} s after it started`,
  };
}

/**
 * The pre-flight of a create or re-create against the devices the kernel
 * has now (earlier actions of the pass may have freed ids); `replacing` is
 * the device a re-create removes, whose id the new spec may take over.
 */
async function preflightNow(ctx: ApplyContext, manifest: LoadedManifest, replacing?: number): Promise<DeviceSpec> {
  // Only the ids: asking each device for its info would cost one control command per device per create.
  const ids = new Set(
    ctx.kernel.deviceIds ? await ctx.kernel.deviceIds() : (await ctx.kernel.listDevices()).map((d) => d.id),
  );
  return preflight(manifest, {
    idTaken: (id) => id !== replacing && ids.has(id),
    checkPermissions: ctx.checkPermissions,
  });
}

async function createFrom(
  ctx: ApplyContext,
  manifest: LoadedManifest,
  spec: DeviceSpec,
): Promise<{ devId: number; blockPath: string }> {
  const server = await ctx.kernel.startServer(spec, {
    checkPermissions: ctx.checkPermissions ?? false,
    owner: 'reconciler',
    manifest: manifest.name,
    manifestFile: manifest.file,
    specHash: manifest.hash,
    deviceHash: manifest.deviceHash,
  });
  return { devId: server.info.id, blockPath: server.info.blockPath };
}

/** Keeps the record's manifest file and spec hash current (a manifest moved, a legacy hash) without touching the device; true when it wrote. */
function refreshRecord(
  kernel: Kernel,
  record: DeviceRecord | undefined,
  manifest: LoadedManifest | undefined,
): boolean {
  if (!record || !manifest) return false;
  const sameSpec = record.specHash === manifest.hash || record.specHash === manifest.legacyHash;
  const specHash = sameSpec ? manifest.hash : record.specHash;
  // Records from before deviceHash was kept learn it while their spec is the manifest's.
  const deviceHash = sameSpec ? manifest.deviceHash : record.deviceHash;
  if (record.manifestFile !== manifest.file || record.specHash !== specHash || record.deviceHash !== deviceHash) {
    kernel.records.write({ ...record, manifestFile: manifest.file, specHash, deviceHash });
    return true;
  }
  return false;
}

function recordFailure(kernel: Kernel, devId: number, err: unknown): void {
  const record = kernel.records.read(devId);
  if (!record) return;
  kernel.records.write({ ...record, status: 'failed', lastError: message(err), failures: (record.failures ?? 0) + 1 });
}

/** Applies one action; `manifest` is the valid manifest of its name, `record` the device's record, where they exist. */
export async function apply(
  ctx: ApplyContext,
  action: Action,
  manifest: LoadedManifest | undefined,
  record: DeviceRecord | undefined,
): Promise<DeviceOutcome> {
  const { kernel } = ctx;
  const base = plannedOutcome(action, 'ok');
  // A recovery after a quick death has already counted that failure: its own failure is not counted twice.
  let counted = false;
  try {
    switch (action.kind) {
      case 'create': {
        const spec = await preflightNow(ctx, manifest!);
        const made = await createFrom(ctx, manifest!, spec);
        return { ...base, devId: made.devId, blockPath: made.blockPath };
      }
      case 'recreate': {
        // Everything about the new spec is checked before the old device is stopped.
        let spec: DeviceSpec;
        try {
          spec = await preflightNow(ctx, manifest!, action.devId);
        } catch (err) {
          if (err instanceof PreflightError) err.message += ' (the device was left as it is)';
          throw err;
        }
        await kernel.removeDevice(action.devId!);
        const made = await createFrom(ctx, manifest!, spec);
        return { ...base, devId: made.devId, blockPath: made.blockPath };
      }
      case 'recover': {
        const history = restartHistory(action.name, record!, ctx);
        counted = history.failures > 0;
        // The record's spec is checked by the server as a manifest's would be: its files may have changed.
        const server = await kernel.startServer(record!.spec, {
          recoverDevId: action.devId,
          checkPermissions: ctx.checkPermissions ?? false,
          owner: 'reconciler',
          manifest: record!.manifest,
          manifestFile: manifest?.file ?? record!.manifestFile,
          specHash: record!.specHash,
          createdFile: record!.createdFile,
          deviceHash: record!.deviceHash,
          ...history,
        });
        return { ...base, blockPath: server.info.blockPath };
      }
      case 'resize': {
        await kernel.resizeDevice(action.devId!, action.sizeBytes!, record!, {
          checkPermissions: ctx.checkPermissions ?? false,
        });
        // Only now: a resize that failed half-way is planned (and tried) again from the old size.
        const current = kernel.records.read(action.devId!) ?? record!;
        kernel.records.write({
          ...current,
          spec: { ...current.spec, sizeBytes: action.sizeBytes! },
          specHash: manifest?.hash ?? current.specHash,
          deviceHash: manifest?.deviceHash ?? current.deviceHash,
          manifestFile: manifest?.file ?? current.manifestFile,
          lastError: undefined,
          status: 'live',
          failures: 0,
        });
        ctx.backoff.succeeded(action.name);
        return base;
      }
      case 'handover': {
        // The new spec (or the same, for an upgrade) is checked before the old server is asked to let go.
        const spec = await preflightNow(ctx, manifest!, action.devId);
        const done = await kernel.handOver(action.devId!, {
          spec,
          specHash: manifest!.hash,
          deviceHash: manifest!.deviceHash,
          manifestFile: manifest!.file,
          checkPermissions: ctx.checkPermissions ?? false,
        });
        ctx.backoff.succeeded(action.name);
        return { ...base, blockPath: done.server.info.blockPath };
      }
      case 'delete':
        await kernel.removeDevice(action.devId!);
        ctx.backoff.succeeded(action.name);
        return base;
      case 'drift':
        if (record && record.lastError !== action.reason) kernel.records.write({ ...record, lastError: action.reason });
        return { ...base, outcome: 'unchanged' };
      case 'noop':
        // Read back only when refreshed: a device that is fine costs no second read of its record.
        if (refreshRecord(kernel, record, manifest)) record = kernel.records.read(action.devId!) ?? record;
        // Clear a past error once the server has proved stable, not at the first quiet pass.
        if (record && ctx.now - startedAt(record) >= STABLE_MS) {
          ctx.backoff.succeeded(action.name);
          if (record.lastError !== undefined || record.status !== 'live') {
            // Written from the record as it is now: a handover by ublkctl may have replaced it since the pass listed it.
            const current = kernel.records.read(action.devId!) ?? record;
            kernel.records.write({ ...current, status: 'live', lastError: undefined, failures: 0 });
          }
        }
        return { ...base, outcome: 'unchanged' };
      default:
        return { ...base, outcome: 'unchanged' };
    }
  } catch (err) {
    // A handover of the device is under way elsewhere: it recovers the device, nothing failed here.
    if (err instanceof DeviceLockedError) return { ...base, outcome: 'unchanged', reason: err.message };
    if (action.devId !== undefined && action.kind !== 'create') recordFailure(kernel, action.devId, err);
    const retried = ['create', 'recreate', 'recover', 'resize', 'handover'].includes(action.kind);
    if (retried && !counted) {
      ctx.backoff.failed(action.name, ctx.now);
    }
    return { ...base, outcome: 'failed', error: message(err) };
  }
}
