/**
 * Device records: what ublk-ts remembers about each device it started, one
 * JSON file per device in the state directory, written atomically. The
 * reconciler owns (and may delete) only devices it has a record for.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ERRNO, UblkError } from '../errors';
import { DeviceSpec, storedSpecProblem } from '../spec/device-spec';
import { isAlive, isSameProcessAlive, processStartTime } from './processes';

/** Who made a device: the reconciler owns it (and may delete it); ublkctl records only help `recover`. */
export type DeviceOwner = 'reconciler' | 'ublkctl';

/** What ublk-ts remembers about a device it started, one JSON file per device. */
export interface DeviceRecord {
  version: 1;
  devId: number;
  owner: DeviceOwner;
  /** metadata.name of the manifest, for devices the reconciler owns. */
  manifest?: string;
  /**
   * The manifest's file, relative to the manifest directory: the device is
   * deleted only once this file is gone, or holds only valid documents and
   * none with its name. Absent in records written before it was kept.
   */
  manifestFile?: string;
  /** Hash of the manifest spec the device was made from; a change means drift. */
  specHash?: string;
  /** Hash of that spec less what only its server does (LoadedManifest.deviceHash): same hash, handover suffices. */
  deviceHash?: string;
  /** The ublk-ts version of the serving process (absent in records of versions before it was kept). */
  serverVersion?: string;
  spec: DeviceSpec;
  /**
   * The loop file ublk-ts created for this device (device, inode and birth time): an online
   * resize grows that file (and no other) when the device grows.
   */
  createdFile?: string;
  serverPid: number;
  status: 'live' | 'failed' | 'recovering' | 'stopped';
  lastError?: string;
  /** Consecutive failed starts/recoveries, for backoff. */
  failures?: number;
  /**
   * When the serving process went LIVE: how long a server lived is measured from here, not from
   * `updatedAt`, which every later write of the record (an error, a drift note) moves.
   */
  startedAt?: string;
  updatedAt: string;
}

function recordsDir(stateDir: string): string {
  return path.join(stateDir, 'devices');
}

/** Path of the record for device `devId`. */
export function recordPath(stateDir: string, devId: number): string {
  return path.join(recordsDir(stateDir), `ublkb${devId}.json`);
}

let ownStartTime: string | undefined;

/**
 * The name of a temporary record: it carries the writer's pid and start
 * time, so a reader can tell a crashed writer's leftover from a file
 * another process is writing right now.
 */
function temporaryName(target: string): string {
  ownStartTime ??= processStartTime(process.pid) ?? '0';
  const unique = crypto.randomBytes(4).toString('hex');
  return `.${path.basename(target)}.${process.pid}-${ownStartTime}.${unique}.tmp`;
}

/** Temporaries of writers that did not record their start time: `.ublkb5.json.PID.HEX.tmp`. */
const LEGACY_TEMPORARY = /^\.ublkb\d+\.json\.(\d+)\.[0-9a-f]+\.tmp$/;
const TEMPORARY = /^\.ublkb\d+\.json\.(\d+)-(\d+)\.[0-9a-f]+\.tmp$/;
/** How old a legacy temporary of a gone writer must be before it is removed. */
const LEGACY_TEMPORARY_AGE_MS = 10 * 60_000;

/**
 * Whether a temporary record was left by a writer that is gone: its pid
 * runs no more, or runs a later process. Anything else may be a record
 * being written this instant, whose rename must find it.
 */
function isStaleTemporary(dir: string, name: string): boolean {
  const current = TEMPORARY.exec(name);
  if (current) return !isSameProcessAlive(Number(current[1]), current[2]!);
  const legacy = LEGACY_TEMPORARY.exec(name);
  if (!legacy || isAlive(Number(legacy[1]))) return false;
  try {
    return Date.now() - fs.lstatSync(path.join(dir, name)).mtimeMs > LEGACY_TEMPORARY_AGE_MS;
  } catch {
    return false;
  }
}

/**
 * Writes a record so that it is, at any instant, either the old or the new
 * version: write a temporary file, fsync it, rename it over the record,
 * fsync the directory.
 */
export function writeRecord(stateDir: string, record: DeviceRecord): void {
  const dir = recordsDir(stateDir);
  fs.mkdirSync(dir, { recursive: true, mode: 0o750 });
  const target = recordPath(stateDir, record.devId);
  const temp = path.join(dir, temporaryName(target));
  const fd = fs.openSync(temp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o640);
  try {
    try {
      fs.writeSync(fd, `${JSON.stringify({ ...record, updatedAt: new Date().toISOString() }, null, 2)}\n`);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(temp, target);
  } catch (err) {
    // A long-lived writer (the watcher) would otherwise leave it behind: stale only once this process is gone.
    fs.rmSync(temp, { force: true });
    throw err;
  }
  const dirFd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(dirFd);
  } finally {
    fs.closeSync(dirFd);
  }
}

/** Reads one record; undefined when there is none. A corrupt record is an error, never silently dropped. */
export function readRecord(stateDir: string, devId: number): DeviceRecord | undefined {
  const file = recordPath(stateDir, devId);
  if (!fs.existsSync(file)) return undefined;
  return parseRecord(file, readText(file));
}

/**
 * The record of a device ublk-ts started, for `command` (the name its
 * refusal carries) to act on; a device without one was made by another
 * tool, and `acting` ("recovered", "resized") says what it cannot be.
 */
export function requireRecord(stateDir: string, devId: number, command: string, acting: string): DeviceRecord {
  const record = readRecord(stateDir, devId);
  if (record) return record;
  throw new UblkError(
    command,
    devId,
    ERRNO.ENOENT,
    `no ublk-ts record for it in ${stateDir}: only devices started by ublk-ts can be ${acting} by it`,
  );
}

/**
 * A record that cannot be trusted: the state directory is damaged or not
 * ours. Nothing is decided from it; the message names the file.
 */
export class CorruptRecordError extends Error {
  constructor(
    readonly file: string,
    problem: string,
  ) {
    super(`${file}: ${problem}; move the file away (or fix it) and run again`);
    this.name = 'CorruptRecordError';
  }
}

function parseRecord(file: string, text: string): DeviceRecord {
  let record: DeviceRecord;
  try {
    record = JSON.parse(text) as DeviceRecord;
  } catch (err) {
    throw new CorruptRecordError(file, `corrupt device record (${(err as Error).message})`);
  }
  if (typeof record !== 'object' || record === null || record.version !== 1 || typeof record.devId !== 'number') {
    throw new CorruptRecordError(file, 'not a ublk-ts device record');
  }
  const problem = storedSpecProblem(record.spec);
  if (problem) {
    throw new CorruptRecordError(
      file,
      `its device spec fails the checks a manifest must pass (${problem.field}: ${problem.detail})`,
    );
  }
  return record;
}

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new CorruptRecordError(file, `cannot read the device record (${(err as NodeJS.ErrnoException).code})`);
  }
}

/**
 * Records parsed and checked before, by file, with the text they came
 * from: the watcher lists every record twice a second (to notice a dead
 * server) and on every pass, and checking a record's spec costs far more
 * than reading its file. A file whose text changed in any way is parsed
 * and checked afresh.
 */
const parsedRecords = new Map<string, { text: string; record: DeviceRecord }>();

/** A record from its file's text: the one parsed before when the text is the same. */
function parseRecordText(file: string, text: string): DeviceRecord {
  const hit = parsedRecords.get(file);
  if (hit && hit.text === text) return { ...hit.record };
  const record = parseRecord(file, text);
  parsedRecords.set(file, { text, record });
  return { ...record };
}

/**
 * Every record in the state directory. Temporary files whose writer is
 * gone are removed; those of a writer still running are left to it.
 */
export function listRecords(stateDir: string): DeviceRecord[] {
  const dir = recordsDir(stateDir);
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return [];
    throw new CorruptRecordError(dir, `cannot list device records (${code})`);
  }
  const records: DeviceRecord[] = [];
  for (const name of names) {
    const file = path.join(dir, name);
    if (name.endsWith('.tmp')) {
      if (isStaleTemporary(dir, name)) fs.rmSync(file, { force: true });
      continue;
    }
    if (!/^ublkb\d+\.json$/.test(name)) continue;
    records.push(parseRecordText(file, readText(file)));
  }
  const present = new Set(names);
  for (const file of parsedRecords.keys()) {
    if (path.dirname(file) === dir && !present.has(path.basename(file))) parsedRecords.delete(file);
  }
  return records.sort((a, b) => a.devId - b.devId);
}

/** Removes a record (no error if it is already gone). */
export function removeRecord(stateDir: string, devId: number): void {
  fs.rmSync(recordPath(stateDir, devId), { force: true });
}

/**
 * The records of one state directory, as the reconciler reads and writes
 * them; tests put an in-memory store in its place.
 */
export interface DeviceRecordStore {
  list(): DeviceRecord[];
  read(devId: number): DeviceRecord | undefined;
  /** Replaces the record atomically, stamping `updatedAt`. */
  write(record: DeviceRecord): void;
  remove(devId: number): void;
}

/** The records kept as files in `stateDir/devices`. */
export function directoryRecords(stateDir: string): DeviceRecordStore {
  return {
    list: () => listRecords(stateDir),
    read: (devId) => readRecord(stateDir, devId),
    write: (record) => writeRecord(stateDir, record),
    remove: (devId) => removeRecord(stateDir, devId),
  };
}
