/**
 * The reconcile decision table: for every device name, what exists
 * (record, kernel device, its state, its server) against what is desired
 * (a valid manifest, its hash), each row doing exactly one thing. Pure:
 * everything it needs is in its input, the clock included, so `--plan`
 * prints it and the tests drive it without a kernel.
 */
import type { DeviceRecord } from '../server/device-records';
import { identityWithoutSize } from '../spec/device-spec';
import { formatSize } from '../spec/sizes';

/** A valid manifest, as the planner needs it. */
export interface DesiredDevice {
  name: string;
  /** file:line of the document, for messages. */
  source: string;
  /** The manifest's file, relative to the manifest directory. */
  file: string;
  /** Identity of the normalized spec: a record with another hash was made from a different spec. */
  hash: string;
  /** The hash a record made before specs were normalized carries for this same spec. */
  legacyHash?: string;
  fixedId?: number;
  /** The manifest consents to losing data that lives only in the device (spec.allowDataLoss). */
  allowDataLoss?: boolean;
  /** The size the manifest asks for, in bytes (absent: a loop device that takes its file's). */
  sizeBytes?: number;
  /** The spec's identity apart from its size (identityWithoutSize): equal to a record's, only the size changed. */
  identityWithoutSize?: string;
  /** Identity of the spec less what only its server does (LoadedManifest.deviceHash). */
  deviceHash?: string;
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
  /** Why this device's size cannot change while LIVE (kernel or device without UPDATE_SIZE); absent when it can. */
  cannotResize?: string;
  /** Why its server cannot be handed over without failing IO (server/handover.ts); undefined when it can. */
  handoverRefusal?: string;
}

export interface PlanInput {
  desired: DesiredDevice[];
  /** Names of manifests that exist but are invalid: their devices are left exactly as they are. */
  invalidNames: ReadonlySet<string>;
  /** An invalid document whose name could not be read: no owned device may be deleted this pass. */
  unattributedErrors: boolean;
  /** Whether any manifest or file is invalid: a record that does not name its file is then not deleted. */
  anyErrors?: boolean;
  /** Manifest files that exist in the directory (of any kind, dangling links included), by relative name. */
  presentFiles: ReadonlySet<string>;
  /** Files read whole whose every document is valid, with at least one: absence of a name there is evidence. */
  validFiles: ReadonlySet<string>;
  /** State records of devices the reconciler owns. */
  records: DeviceRecord[];
  /** Every ublk device in the kernel, by id. */
  live: ReadonlyMap<number, LiveDevice>;
  now: number;
  /** A name's retry timing: when set and due later than `now`, a create, recover or re-create waits. */
  backoff?: (name: string) => { failures: number; dueAt: number } | undefined;
  /**
   * The installed ublk-ts version, when servers running another one (per
   * their records) are to be handed over to it (ublk-reconcile --upgrade-servers).
   */
  upgradeServersTo?: string;
}

/** How long a device in a passing state (e.g. LIVE with its server just gone) is given before the next look. */
export const SETTLE_MS = 1000;

export type ActionKind =
  'noop' | 'create' | 'recreate' | 'recover' | 'resize' | 'handover' | 'delete' | 'drift' | 'hold' | 'refuse' | 'wait';

/** One row of the plan. `reason` says which row of the table matched. */
export interface Action {
  kind: ActionKind;
  name: string;
  devId?: number;
  reason: string;
  /** For recreate: data-plane state was lost (the device died with its server). */
  dataLost?: boolean;
  /** For wait: when the pass that may act on this device is due (ms since the epoch). */
  dueAt?: number;
  /** For resize: the device's new size in bytes. */
  sizeBytes?: number;
}

/** What a waiting action says: which step keeps failing, and when it is tried next. */
const failedStep: Record<string, string> = {
  create: 'creating',
  recover: 'recovery',
  recreate: 're-creating',
  resize: 'resizing',
  handover: 'the handover',
};

/**
 * Turns a create, recover or re-create into a wait while the name's
 * backoff is pending; the wait carries the time it ends.
 */
function withBackoff(a: Action, input: PlanInput): Action {
  const step = failedStep[a.kind];
  const pending = step ? input.backoff?.(a.name) : undefined;
  if (!pending) return a;
  const inSeconds = Math.ceil((pending.dueAt - input.now) / 1000);
  return {
    ...a,
    kind: 'wait',
    reason: `${step} failed ${pending.failures} time(s); next try in ${inSeconds} s`,
    dueAt: pending.dueAt,
    dataLost: undefined,
    sizeBytes: undefined,
  };
}

/** Targets whose data lives only in the device: re-creating one discards it. */
const DATA_IN_DEVICE = new Set(['memory', 'js']);

function planExisting(
  want: DesiredDevice,
  record: DeviceRecord,
  dev: LiveDevice | undefined,
  now: number,
  upgradeServersTo: string | undefined,
): Action {
  const base = { name: want.name, devId: record.devId };
  if (!dev) return { ...base, kind: 'create', reason: `device ${record.devId} no longer exists` };
  const changed =
    record.specHash !== want.hash && (want.legacyHash === undefined || record.specHash !== want.legacyHash);
  const serverGone = !dev.serverAlive;
  if ((dev.state === 'QUIESCED' || dev.state === 'FAIL_IO') && serverGone) {
    return { ...base, kind: 'recover', reason: `device is ${dev.state} and its server (pid ${dev.serverPid}) is gone` };
  }
  if (dev.state === 'DEAD' || (dev.state === 'LIVE' && serverGone && !dev.recoverable)) {
    return { ...base, kind: 'recreate', reason: `device is ${dev.state} with no server`, dataLost: true };
  }
  const sizeChange = resizeOf(want, record);
  if (sizeChange) {
    const resize = planResize(want, record, dev, sizeChange, now);
    if (resize) return resize;
  }
  const serving = dev.state === 'LIVE' && !serverGone;
  // Only what the server does changed (js module/options, loop directIo): a new server applies it live.
  const serverSideOnly = changed && want.deviceHash !== undefined && record.deviceHash === want.deviceHash;
  if (serverSideOnly && serving && dev.handoverRefusal === undefined) {
    return {
      ...base,
      kind: 'handover',
      reason: `${want.source} changed only what its server does: a new server takes the device over, live`,
    };
  }
  if (changed || sizeChange) {
    const notInPlace = sizeChange ? (dev.cannotResize ?? 'a js target is not resized live') : undefined;
    const why = notInPlace ? ` (its size cannot change in place: ${notInPlace})` : '';
    const noHandover = serverSideOnly && dev.handoverRefusal ? `; no handover: ${dev.handoverRefusal}` : '';
    if (dev.inUse) {
      return {
        ...base,
        kind: 'drift',
        reason: `${want.source} changed${why}, but the device is in use: left as it is${noHandover}`,
      };
    }
    const type = record.spec.target.type;
    if (DATA_IN_DEVICE.has(type) && !want.allowDataLoss) {
      return {
        ...base,
        kind: 'drift',
        reason: `${want.source} changed${why}, but re-creating this ${type} device would discard its data: left as it is (set spec.allowDataLoss: true to allow it)`,
      };
    }
    return { ...base, kind: 'recreate', reason: `${want.source} changed${why} and the device is not in use` };
  }
  if (serving && upgradeServersTo !== undefined && record.serverVersion !== upgradeServersTo) {
    const running = `its server runs ublk-ts ${record.serverVersion ?? '(an unknown version: its record predates serverVersion)'}`;
    if (dev.handoverRefusal !== undefined) {
      return { ...base, kind: 'drift', reason: `${running}, not ${upgradeServersTo}: ${dev.handoverRefusal}` };
    }
    return { ...base, kind: 'handover', reason: `${running}: handed over to ${upgradeServersTo}, live` };
  }
  if (serving) return { ...base, kind: 'noop', reason: 'matches its manifest' };
  return {
    ...base,
    kind: 'wait',
    reason: `device is ${dev.state}; waiting for the kernel to settle`,
    dueAt: now + SETTLE_MS,
  };
}

/** A size change that is the only change between a device's record and its manifest. */
interface SizeChange {
  from: number;
  to: number;
}

function resizeOf(want: DesiredDevice, record: DeviceRecord): SizeChange | undefined {
  if (want.sizeBytes === undefined || want.identityWithoutSize === undefined) return undefined;
  if (want.sizeBytes === record.spec.sizeBytes) return undefined;
  if (identityWithoutSize(record.spec) !== want.identityWithoutSize) return undefined;
  return { from: record.spec.sizeBytes, to: want.sizeBytes };
}

/**
 * The rows for a manifest whose only change is the size: a LIVE device
 * that can take UPDATE_SIZE grows in place, mounted or not; it shrinks in
 * place only while unused (data past the new end would vanish from under a
 * file system). A device that cannot be resized live (no UPDATE_SIZE, a js
 * target) gets undefined: the change is then handled like any other.
 */
function planResize(
  want: DesiredDevice,
  record: DeviceRecord,
  dev: LiveDevice,
  change: SizeChange,
  now: number,
): Action | undefined {
  const base = { name: want.name, devId: record.devId };
  const what = `${want.source} changes the size from ${formatSize(change.from)} to ${formatSize(change.to)}`;
  if (dev.cannotResize || record.spec.target.type === 'js') return undefined;
  if (dev.state !== 'LIVE' || !dev.serverAlive) {
    return {
      ...base,
      kind: 'wait',
      reason: `${what}; device is ${dev.state}, waiting for it to be served`,
      dueAt: now + SETTLE_MS,
    };
  }
  if (change.to < change.from && dev.inUse) {
    return {
      ...base,
      kind: 'drift',
      reason: `${what}, but the device is in use: shrinking it would take data from under its user; left as it is`,
    };
  }
  return { ...base, kind: 'resize', reason: `${what}: resized in place`, sizeBytes: change.to };
}

/**
 * Name order, as String.prototype.localeCompare gives it, from one
 * collator: localeCompare sets up the locale's collation on every call,
 * which was a tenth of what sorting a 64-device pass cost.
 */
export const nameOrder = new Intl.Collator();

/** The plan: one action per name, sorted by name. */
export function plan(input: PlanInput): Action[] {
  const actions: Action[] = [];
  const recordsByName = new Map<string, DeviceRecord>();
  for (const r of input.records) if (r.manifest !== undefined) recordsByName.set(r.manifest, r);
  const claimedIds = new Set(input.records.map((r) => r.devId));

  for (const want of input.desired) {
    const record = recordsByName.get(want.name);
    if (record) {
      actions.push(planExisting(want, record, input.live.get(record.devId), input.now, input.upgradeServersTo));
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
  for (let i = 0; i < actions.length; i++) actions[i] = withBackoff(actions[i]!, input);

  const desiredNames = new Set(input.desired.map((d) => d.name));
  for (const record of input.records) {
    const name = record.manifest ?? `ublkb${record.devId}`;
    if (desiredNames.has(name)) continue;
    actions.push({ name, devId: record.devId, ...deletion(record, name, input) });
  }
  return actions.sort((a, b) => nameOrder.compare(a.name, b.name));
}

/**
 * Whether a device whose name no manifest holds is deleted: only on
 * positive evidence that its manifest was removed — its file is gone, or
 * parses validly and holds no document with its name. Anything less (the
 * file empty, cut short, unreadable, invalid, not a regular file) holds it.
 */
function deletion(record: DeviceRecord, name: string, input: PlanInput): Pick<Action, 'kind' | 'reason'> {
  const hold = (reason: string): Pick<Action, 'kind' | 'reason'> => ({ kind: 'hold', reason });
  if (input.invalidNames.has(name)) return hold('its manifest is invalid: device left exactly as it is');
  if (input.unattributedErrors) {
    return hold('a manifest whose name cannot be read is invalid: no device is deleted this pass');
  }
  const file = record.manifestFile;
  if (file === undefined) {
    if (input.anyErrors) {
      return hold(
        'its record does not say which file it came from and a manifest is invalid: no evidence it was removed',
      );
    }
    return { kind: 'delete', reason: 'its manifest is gone' };
  }
  if (!input.presentFiles.has(file)) return { kind: 'delete', reason: `its manifest file ${file} is gone` };
  if (input.validFiles.has(file)) return { kind: 'delete', reason: `its manifest file ${file} no longer names it` };
  return hold(
    `its manifest file ${file} is still there but yields no valid document named ${name}: device left exactly as it is`,
  );
}

/** How long until the earliest waiting action is due; undefined when none waits. */
export function requeueAfter(actions: readonly Action[], now: number): number | undefined {
  const due = actions.filter((a) => a.kind === 'wait' && a.dueAt !== undefined).map((a) => a.dueAt!);
  return due.length === 0 ? undefined : Math.max(0, Math.min(...due) - now);
}

/** Actions that change something. */
export function isChange(a: Action): boolean {
  return (
    a.kind === 'create' ||
    a.kind === 'recreate' ||
    a.kind === 'recover' ||
    a.kind === 'resize' ||
    a.kind === 'handover' ||
    a.kind === 'delete'
  );
}
