import { ChildProcess, spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { discardMemory } from '../device/backing';
import { UblkError } from '../errors';
import { ControlCommands, DeviceInfo, UblkControl } from '../kernel/control';
import { DeviceSpec } from '../spec/device-spec';
import { lockDevice } from './device-lock';
import { DeviceOwner, removeRecord, writeRecord } from './device-records';
import { isAlive, waitForExit } from './processes';
import { deleteAndWait, stopForRemoval } from './safe-removal';
import { readTail } from './server-log';
import { deserializeError, deserializeInfo, MAX_REQUEST_BYTES, ServerMessage, ServerRequest } from './protocol';

/** Default state directory: per-device records and server logs. */
export const DEFAULT_STATE_DIR = '/run/ublk-ts';

/** A device server that reported its device LIVE. */
export interface StartedServer {
  info: DeviceInfo;
  pid: number;
  logPath: string;
}

export interface LaunchOptions {
  stateDir?: string;
  /** How long the server may take to bring the device up. */
  timeoutMs?: number;
  /** Take over this QUIESCED device instead of creating one. */
  recoverDevId?: number;
  /** The caller holds the device's lock (a handover): a recovery does not take it again. */
  deviceLocked?: boolean;
  /** Recorded in the device's state record (default 'ublkctl'). */
  owner?: DeviceOwner;
  manifest?: string;
  /** The manifest's file, relative to the manifest directory (see DeviceRecord.manifestFile). */
  manifestFile?: string;
  specHash?: string;
  /** Carried into a recovered device's record: the loop file ublk-ts created for it (DeviceRecord.createdFile). */
  createdFile?: string;
  /** See DeviceRecord.deviceHash. */
  deviceHash?: string;
  /** Carried into the new record: consecutive quick deaths, for backoff. */
  failures?: number;
  lastError?: string;
  /** Used to delete the device of a server that failed half-way; omitted, one is opened when needed. */
  control?: ControlCommands;
  /**
   * Whether the server refuses files others could change (a js module, a
   * link to a loop file); default: when running as root. Recovery checks
   * again: a record's spec is trusted no more than the manifest it came from.
   */
  checkPermissions?: boolean;
}

/**
 * The version of ublk-ts installed here, which a server started now runs:
 * kept in each device's record, so an upgrade can tell which servers run
 * an older one (ublk-reconcile --upgrade-servers).
 */
export const SERVER_VERSION: string = (
  JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version: string }
).version;

/** The server's entry point; e2e tests find servers by this file name in their command line. */
const SERVER_MAIN = path.join(__dirname, 'server-main.js');

/** Where the server of device `id` logs. */
export function serverLogPath(stateDir: string, id: number): string {
  return path.join(stateDir, 'logs', `ublkb${id}.log`);
}

/**
 * Spawns a device server and hands it `request` on its stdin, not in its
 * argv: the spec may carry secrets (a js target's options), which a command
 * line shows to every user, and argv caps one argument at 128 KiB.
 * The server's stdout and stderr go to `logFd`; its fd 3 is the status channel.
 */
export function spawnServer(request: ServerRequest, logFd: number): ChildProcess {
  const text = JSON.stringify(request);
  if (Buffer.byteLength(text) > MAX_REQUEST_BYTES) {
    throw new Error(`the device spec takes ${Buffer.byteLength(text)} bytes as JSON, more than ${MAX_REQUEST_BYTES}`);
  }
  const child = spawn(process.execPath, [SERVER_MAIN], {
    detached: true,
    stdio: ['pipe', logFd, logFd, 'pipe'],
  });
  // A server that dies before reading its request breaks the pipe: its exit is what gets reported.
  child.stdin!.on('error', () => undefined);
  child.stdin!.end(text);
  return child;
}

/**
 * Starts a detached device server (own session, stdio to a log file, no
 * pipe left shared once it is up) and resolves when the device is LIVE.
 * If the server fails or hangs, it is killed and any device it added is
 * deleted, so a failed start leaves nothing behind.
 */
export async function startServer(spec: DeviceSpec, opts: LaunchOptions = {}): Promise<StartedServer> {
  const stateDir = opts.stateDir ?? DEFAULT_STATE_DIR;
  // One taker-over at a time: a recovery racing a handover of the same device is refused.
  const lock =
    opts.recoverDevId !== undefined && !opts.deviceLocked ? lockDevice(stateDir, opts.recoverDevId) : undefined;
  try {
    return await launch(spec, stateDir, opts);
  } finally {
    lock?.release();
  }
}

async function launch(spec: DeviceSpec, stateDir: string, opts: LaunchOptions): Promise<StartedServer> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const logDir = path.join(stateDir, 'logs');
  fs.mkdirSync(logDir, { recursive: true, mode: 0o750 });
  const recovering = opts.recoverDevId !== undefined;
  // A recovering server appends to the device's log; a new one starts a log that is named once the id is known
  // (a unique name: a reconcile pass starts several servers at once, often within one millisecond).
  const pendingLog = recovering
    ? serverLogPath(stateDir, opts.recoverDevId!)
    : path.join(logDir, `.starting-${process.pid}-${crypto.randomBytes(6).toString('hex')}.log`);
  const logFd = fs.openSync(pendingLog, 'a', 0o640);
  let child: ChildProcess;
  try {
    const checkPermissions = opts.checkPermissions ?? process.geteuid?.() === 0;
    child = spawnServer({ spec, recoverDevId: opts.recoverDevId, checkPermissions }, logFd);
  } finally {
    fs.closeSync(logFd);
  }
  const status = child.stdio[3] as Readable;

  let addedId: number | undefined;
  const outcome = await new Promise<{ info: DeviceInfo; createdFile?: string } | { error: Error }>((resolve) => {
    let buffered = '';
    const timer = setTimeout(() => {
      resolve({ error: new Error(`device server did not bring the device up within ${timeoutMs} ms`) });
    }, timeoutMs);
    const finish = (r: { info: DeviceInfo; createdFile?: string } | { error: Error }): void => {
      clearTimeout(timer);
      resolve(r);
    };
    status.setEncoding('utf8');
    status.on('data', (chunk: string) => {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buffered.slice(0, nl)) as ServerMessage;
        buffered = buffered.slice(nl + 1);
        if (msg.event === 'added') addedId = msg.devId;
        else if (msg.event === 'live') finish({ info: deserializeInfo(msg.info), createdFile: msg.createdFile });
        else if (msg.event === 'error') finish({ error: deserializeError(msg.error) });
      }
    });
    child.on('error', (err) => finish({ error: err }));
    child.on('exit', (code, signal) => {
      const log = readTail(pendingLog);
      finish({
        error: new Error(
          `device server exited (${signal ?? `status ${code}`}) before the device was live${log ? `:\n${log}` : ''}`,
        ),
      });
    });
  });

  if ('info' in outcome) {
    const logPath = serverLogPath(stateDir, outcome.info.id);
    if (!recovering) fs.renameSync(pendingLog, logPath);
    status.destroy();
    child.stdin?.destroy();
    child.removeAllListeners('exit');
    child.unref();
    writeRecord(stateDir, {
      version: 1,
      devId: outcome.info.id,
      owner: opts.owner ?? 'ublkctl',
      manifest: opts.manifest,
      manifestFile: opts.manifestFile,
      specHash: opts.specHash,
      deviceHash: opts.deviceHash,
      spec,
      createdFile: outcome.createdFile ?? opts.createdFile,
      serverVersion: SERVER_VERSION,
      serverPid: child.pid!,
      status: 'live',
      failures: opts.failures ?? 0,
      lastError: opts.lastError,
      startedAt: new Date().toISOString(),
      updatedAt: '',
    });
    return { info: outcome.info, pid: child.pid!, logPath };
  }

  await reapFailedServer(child.pid, addedId, opts.control);
  if (!recovering) fs.rmSync(pendingLog, { force: true });
  status.destroy();
  throw outcome.error;
}

async function reapFailedServer(
  pid: number | undefined,
  addedId: number | undefined,
  given: ControlCommands | undefined,
): Promise<void> {
  if (pid !== undefined && isAlive(pid)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
    await waitForExit(pid, 5000);
  }
  if (addedId === undefined) return;
  // The server normally deletes its own half-made device; this covers a crash.
  const control = given ?? (await UblkControl.open());
  try {
    await control.deleteDevice(addedId);
  } catch (err) {
    if (!(err instanceof UblkError && err.code === 'ENODEV')) throw err;
  } finally {
    if (!given) control.close();
  }
}

/** Options of removeDevice. */
export interface RemoveOptions {
  timeoutMs?: number;
  stateDir?: string;
  /** A device that no longer exists (ENODEV) is not an error: its record and memory are dropped all the same. */
  missingOk?: boolean;
  /**
   * Remove the device even while it is open or mounted (plain STOP_DEV):
   * its users see IO errors. Without it an open device is refused with
   * EBUSY — by the kernel itself on Linux 7.0+ (see stopForRemoval).
   */
  force?: boolean;
  /** Whether a block device is open, on kernels without safe stop (tests pass their own). */
  inUse?: (blockPath: string) => boolean;
}

/** What removeDevice found: the server it waited for. serverPid is 0 when the device was already gone. */
export interface RemovedDevice {
  serverPid: number;
  serverExited: boolean;
}

/**
 * Removes a device served by another process, and everything ublk-ts kept
 * for it: the stop (refused while the device is open, unless `force`) ends
 * the server's queues, the delete completes once the server has closed
 * /dev/ublkcN (see safe-removal.ts), then it waits for the server to exit and
 * drops the device's memory file and state record. (UblkDevice.remove is
 * the same for a device served by this process; UblkControl.deleteDevice
 * is the bare DEL_DEV command.)
 */
export async function removeDevice(
  control: ControlCommands,
  id: number,
  opts: RemoveOptions = {},
): Promise<RemovedDevice> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const forget = (): void => {
    // The device is gone: so are its memory (if a server died holding it) and its record.
    discardMemory(id);
    removeRecord(opts.stateDir ?? DEFAULT_STATE_DIR, id);
  };
  let info: DeviceInfo;
  try {
    info = await control.getDeviceInfo(id);
    await stopForRemoval(control, info, opts);
    await deleteAndWait(control, info, timeoutMs);
  } catch (err) {
    if (!(opts.missingOk && err instanceof UblkError && err.code === 'ENODEV')) throw err;
    forget();
    return { serverPid: 0, serverExited: true };
  }
  const own = info.serverPid === process.pid || info.serverPid <= 0;
  const serverExited = own ? true : await waitForExit(info.serverPid, timeoutMs);
  forget();
  return { serverPid: info.serverPid, serverExited };
}
