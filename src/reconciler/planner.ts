/**
 * The reconcile decision table: for every device name, what exists
 * (record, kernel device, its state, its server) against what is desired
 * (a valid manifest, its hash), each row doing exactly one thing. Pure:
 * everything it needs is in its input, the clock included, so `--plan`
 * prints it and the tests drive it without a kernel.
 */
import { DeviceRecord } from '../state';

/** A valid manifest, as the planner needs it. */
export interface DesiredDevice {
  name: string;
  /** file:line of the document, for messages. */
  source: string;
  hash: string;
  fixedId?: number;
}

/** A kernel device as the planner needs it. */
export interface LiveDevice {
  id: number;
  state: string;
  serverPid: number;
  serverAlive: boolean;
  /** Mounted, held by another driver, or opened by some process. */
  inUse: boolean;
  /** Whether the kernel keeps IO for a new server (UBLK_F_USER_RECOVERY). */
  recoverable: boolean;
}

export interface PlanInput {
  desired: DesiredDevice[];
  /** Names of manifests that exist but are invalid: their devices are left exactly as they are. */
  invalidNames: ReadonlySet<string>;
  /** An invalid document whose name could not be read: no owned device may be deleted this pass. */
  unattributedErrors: boolean;
  /** State records of devices the reconciler owns. */
  records: DeviceRecord[];
  /** Every ublk device in the kernel, by id. */
  live: ReadonlyMap<number, LiveDevice>;
  now: number;
}

export type ActionKind = 'noop' | 'create' | 'recreate' | 'recover' | 'delete' | 'drift' | 'hold' | 'refuse' | 'wait';

/** One row of the plan. `reason` says which row of the table matched. */
export interface Action {
  kind: ActionKind;
  name: string;
  devId?: number;
  reason: string;
  /** For recreate: data-plane state was lost (the device died with its server). */
  dataLost?: boolean;
}

/** Retry delay after `failures` consecutive failures: 1 s doubling, capped at 60 s. */
export function backoffMs(failures: number): number {
  return failures <= 0 ? 0 : Math.min(60_000, 1000 * 2 ** (failures - 1));
}

function waiting(record: DeviceRecord, now: number): number | undefined {
  const failures = record.failures ?? 0;
  if (failures === 0) return undefined;
  const due = Date.parse(record.updatedAt) + backoffMs(failures);
  return due > now ? due : undefined;
}

function planExisting(want: DesiredDevice, record: DeviceRecord, dev: LiveDevice | undefined, now: number): Action {
  const base = { name: want.name, devId: record.devId };
  if (!dev) return { ...base, kind: 'create', reason: `device ${record.devId} no longer exists` };
  const changed = record.specHash !== want.hash;
  const serverGone = !dev.serverAlive;
  if ((dev.state === 'QUIESCED' || dev.state === 'FAIL_IO') && serverGone) {
    const due = waiting(record, now);
    if (due !== undefined) {
      return { ...base, kind: 'wait', reason: `recovery failed ${record.failures} time(s); next try in ${Math.ceil((due - now) / 1000)} s` };
    }
    return { ...base, kind: 'recover', reason: `device is ${dev.state} and its server (pid ${dev.serverPid}) is gone` };
  }
  if (dev.state === 'DEAD' || (dev.state === 'LIVE' && serverGone && !dev.recoverable)) {
    const due = waiting(record, now);
    if (due !== undefined) return { ...base, kind: 'wait', reason: `re-creating failed ${record.failures} time(s)` };
    return { ...base, kind: 'recreate', reason: `device is ${dev.state} with no server`, dataLost: true };
  }
  if (changed) {
    if (dev.inUse) return { ...base, kind: 'drift', reason: `${want.source} changed, but the device is in use: left as it is` };
    return { ...base, kind: 'recreate', reason: `${want.source} changed and the device is not in use` };
  }
  if (dev.state === 'LIVE' && !serverGone) return { ...base, kind: 'noop', reason: 'matches its manifest' };
  return { ...base, kind: 'wait', reason: `device is ${dev.state}; waiting for the kernel to settle` };
}

/** The plan: one action per name, sorted by name. */
export function plan(input: PlanInput): Action[] {
  const actions: Action[] = [];
  const recordsByName = new Map<string, DeviceRecord>();
  for (const r of input.records) if (r.manifest !== undefined) recordsByName.set(r.manifest, r);
  const claimedIds = new Set(input.records.map((r) => r.devId));

  for (const want of input.desired) {
    const record = recordsByName.get(want.name);
    if (record) {
      actions.push(planExisting(want, record, input.live.get(record.devId), input.now));
      continue;
    }
    if (want.fixedId !== undefined && input.live.has(want.fixedId) && !claimedIds.has(want.fixedId)) {
      actions.push({
        kind: 'refuse',
        name: want.name,
        devId: want.fixedId,
        reason: `device id ${want.fixedId} is taken by a device ublk-ts does not manage`,
      });
      continue;
    }
    actions.push({ kind: 'create', name: want.name, reason: `new manifest ${want.source}` });
  }

  const desiredNames = new Set(input.desired.map((d) => d.name));
  for (const record of input.records) {
    const name = record.manifest ?? `ublkb${record.devId}`;
    if (desiredNames.has(name)) continue;
    const base = { name, devId: record.devId };
    if (input.invalidNames.has(name)) {
      actions.push({ ...base, kind: 'hold', reason: 'its manifest is invalid: device left exactly as it is' });
    } else if (input.unattributedErrors) {
      actions.push({ ...base, kind: 'hold', reason: 'a manifest whose name cannot be read is invalid: no device is deleted this pass' });
    } else {
      actions.push({ ...base, kind: 'delete', reason: 'its manifest is gone' });
    }
  }
  return actions.sort((a, b) => a.name.localeCompare(b.name));
}

/** Actions that change something. */
export function isChange(a: Action): boolean {
  return a.kind === 'create' || a.kind === 'recreate' || a.kind === 'recover' || a.kind === 'delete';
}
