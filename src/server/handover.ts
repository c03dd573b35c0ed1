/**
 * Handing a live device over to a new server: the old server lets go
 * without the device being stopped, and a new one recovers it as after a
 * crash, with IO waiting in the kernel meanwhile. What `ublkctl restart`
 * and the reconciler use to apply server-side changes (a new ublk-ts, a
 * js module's code or options, loop directIo) without taking the device
 * away.
 *
 * How the old server is told, by what the device has:
 * - UBLK_F_QUIESCE (Linux 6.16+, asked for at ADD_DEV): this process sends
 *   QUIESCE_DEV. The kernel stops handing out requests and aborts the idle
 *   fetches; the server answers every request it holds, closes
 *   /dev/ublkcN and exits. Race-free: the command names the device, not a
 *   process, and the server tells it from STOP_DEV by the device not being
 *   DEAD, so none of its paths delete the device.
 * - otherwise, recovery reissue: SIGUSR2 to the server the kernel names
 *   for the device (checked to be a ublk-ts server), which closes its
 *   queues without STOP_DEV; requests it held go back to the kernel and
 *   are reissued to the new server.
 * Devices without user recovery, or with fail-io (IO fails while no server
 * runs), or fail-inflight without QUIESCE (held requests would fail),
 * cannot be handed over without IO errors: refused, saying why.
 *
 * A handover that fails midway never deletes the device: it is left
 * QUIESCED (IO waiting) or LIVE, and running the handover (or a recovery)
 * again completes it.
 */
import * as fs from 'node:fs';
import { ERRNO, UblkError } from '../errors';
import { ControlCommands, DeviceInfo } from '../kernel/control';
import {
  UBLK_F_BATCH_IO,
  UBLK_F_QUIESCE,
  UBLK_F_USER_RECOVERY,
  UBLK_F_USER_RECOVERY_FAIL_IO,
  UBLK_F_USER_RECOVERY_REISSUE,
} from '../kernel/uapi';
import { DeviceSpec } from '../spec/device-spec';
import { isRecoverable } from '../spec/recovery-mode';
import { lockDevice } from './device-lock';
import { DeviceRecord, requireRecord } from './device-records';
import { DEFAULT_STATE_DIR, startServer, StartedServer } from './launcher';
import { isAlive, waitForExit } from './processes';

/** How the old server is made to let go: QUIESCE_DEV, or closing its queues (SIGUSR2). */
export type HandoverMethod = 'quiesce' | 'close';

/**
 * How a device's server can be handed over, judged from the flags the
 * kernel granted the device at ADD_DEV (a kernel silently drops flags it
 * does not know), or why it cannot be without failing IO.
 */
export function handoverMethod(
  info: Pick<DeviceInfo, 'id' | 'flags'>,
): { method: HandoverMethod } | { impossible: string } {
  const has = (flag: bigint): boolean => (info.flags & flag) !== 0n;
  if (!has(UBLK_F_USER_RECOVERY)) {
    return {
      impossible:
        `device ${info.id} was created without user recovery (recovery: none, or a js module that does not export ` +
        'recoverable: true): its IO cannot wait for a new server, so a handover is impossible; delete and create it again',
    };
  }
  if (has(UBLK_F_USER_RECOVERY_FAIL_IO)) {
    return {
      impossible:
        `device ${info.id} has recovery fail-io: IO fails while no server runs, so a handover would fail IO; ` +
        'a handover needs recovery reissue or fail-inflight',
    };
  }
  if (has(UBLK_F_BATCH_IO)) {
    // QUIESCE_DEV on a batch device (7.3.4) failed the requests in flight with EIO in the
    // handover e2e test; a server that closes its queues hands them back for reissue, as a crash does.
    if (has(UBLK_F_USER_RECOVERY_REISSUE)) return { method: 'close' };
    return {
      impossible:
        `device ${info.id} has batched IO commands (UBLK_F_BATCH_IO) and recovery fail-inflight: QUIESCE_DEV fails ` +
        'the requests in flight on such a device, and closing its server would too; a handover needs recovery reissue',
    };
  }
  if (has(UBLK_F_QUIESCE)) return { method: 'quiesce' };
  if (has(UBLK_F_USER_RECOVERY_REISSUE)) return { method: 'close' };
  return {
    impossible:
      `device ${info.id} has recovery fail-inflight but no UBLK_F_QUIESCE (Linux 6.16+, asked for when the device ` +
      'is added): closing its server would fail the requests in flight; a handover on this kernel needs recovery reissue',
  };
}

/** Options of handOver. */
export interface HandoverOptions {
  stateDir?: string;
  /** The new server's spec; default the record's (a restart). */
  spec?: DeviceSpec;
  /** Carried into the new record (see LaunchOptions): the manifest's hashes for the new spec. */
  specHash?: string;
  deviceHash?: string;
  manifestFile?: string;
  checkPermissions?: boolean;
  /** How long QUIESCE_DEV waits for an idle tag per queue, and the old server for its exit (default 30 s). */
  timeoutMs?: number;
  log?: (line: string) => void;
}

/** What a handover did. */
export interface HandoverResult {
  method: HandoverMethod | 'recover';
  /** The server that let go (0 when the device had none: a plain recovery). */
  oldPid: number;
  server: StartedServer;
}

function recordHashes(record: DeviceRecord): Pick<DeviceRecord, 'manifestFile' | 'specHash' | 'deviceHash'> {
  return { manifestFile: record.manifestFile, specHash: record.specHash, deviceHash: record.deviceHash };
}

/** The ublk-ts server processes are node running server-main.js (see launcher.ts). */
function isUblkTsServer(pid: number): boolean {
  try {
    return fs
      .readFileSync(`/proc/${pid}/cmdline`, 'utf8')
      .split('\0')
      .some((a) => a.endsWith('server-main.js'));
  } catch {
    return false;
  }
}

function handoverError(devId: number, errno: number, detail: string): UblkError {
  return new UblkError('HANDOVER', devId, errno, detail);
}

/** Polls the device until its old server has let go (QUIESCED or FAIL_IO); DEAD or gone means it was stopped meanwhile. */
async function waitForRelease(control: ControlCommands, devId: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await control.getDeviceInfo(devId);
    if (info.state === 'QUIESCED' || info.state === 'FAIL_IO') return;
    if (info.state === 'DEAD') throw handoverError(devId, ERRNO.ENODEV, 'the device was stopped during the handover');
    if (Date.now() > deadline) {
      throw handoverError(
        devId,
        ERRNO.ETIMEDOUT,
        `the device is still ${info.state} ${timeoutMs} ms after its server exited; run the handover again`,
      );
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Hands device `devId` (one ublk-ts started: its record names its spec)
 * over to a new server: the old one lets go (see the file comment), then
 * a new one recovers the device with `opts.spec` (default: the record's).
 * A device whose server is already gone is simply recovered. Throws,
 * leaving the device as it is, when a handover is impossible; a failure
 * later leaves it QUIESCED, IO waiting, for a retry to complete.
 */
export async function handOver(
  control: ControlCommands,
  devId: number,
  opts: HandoverOptions = {},
): Promise<HandoverResult> {
  const stateDir = opts.stateDir ?? DEFAULT_STATE_DIR;
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const log = opts.log ?? (() => undefined);
  const record = requireRecord(stateDir, devId, 'HANDOVER', 'handed over');
  const lock = lockDevice(stateDir, devId);
  try {
    const info = await control.getDeviceInfo(devId);
    let method: HandoverResult['method'] = 'recover';
    let oldPid = 0;
    const how = handoverMethod(info);
    if (info.state === 'LIVE' && info.serverPid > 0 && isAlive(info.serverPid)) {
      if ('impossible' in how) throw handoverError(devId, ERRNO.EOPNOTSUPP, how.impossible);
      method = how.method;
      oldPid = info.serverPid;
      if (method === 'quiesce') {
        log(`dev ${devId}: QUIESCE_DEV: server pid ${oldPid} answers what it holds and lets go`);
        try {
          await control.quiesceDevice(devId, timeoutMs);
        } catch (err) {
          if (err instanceof UblkError && err.code === 'EBUSY') {
            throw handoverError(
              devId,
              ERRNO.EBUSY,
              `server pid ${oldPid} kept every tag of some queue busy for ${timeoutMs} ms; new IO waits in the kernel ` +
                'until the handover is run again (which completes it) or that server exits',
            );
          }
          throw err;
        }
      } else {
        if (!isUblkTsServer(oldPid)) {
          throw handoverError(devId, ERRNO.ESRCH, `its server pid ${oldPid} is not a ublk-ts device server`);
        }
        log(`dev ${devId}: SIGUSR2: server pid ${oldPid} closes its queues`);
        process.kill(oldPid, 'SIGUSR2');
      }
      if (!(await waitForExit(oldPid, timeoutMs))) {
        // Its IO waits in the kernel until it is gone; killed, the kernel requeues what it held (recovery).
        log(`dev ${devId}: server pid ${oldPid} did not exit within ${timeoutMs} ms: killing it`);
        try {
          process.kill(oldPid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
        await waitForExit(oldPid, timeoutMs);
      }
    } else if (info.state === 'DEAD') {
      throw handoverError(devId, ERRNO.EINVAL, 'the device is DEAD (stopped): there is nothing to hand over');
    } else if (info.state === 'LIVE' && !isRecoverable(info.flags) && 'impossible' in how) {
      // Its server is gone and the kernel is about to stop it: no server can take it over.
      throw handoverError(devId, ERRNO.EOPNOTSUPP, how.impossible);
    }
    await waitForRelease(control, devId, timeoutMs);
    const launch = {
      stateDir,
      control,
      recoverDevId: devId,
      deviceLocked: true,
      checkPermissions: opts.checkPermissions,
    };
    // The loop file ublk-ts created stays known as such (a resize may grow it), whichever server serves it.
    const owned = { owner: record.owner, manifest: record.manifest, createdFile: record.createdFile };
    let server: StartedServer;
    try {
      server = await startServer(opts.spec ?? record.spec, {
        ...launch,
        ...owned,
        manifestFile: opts.manifestFile ?? record.manifestFile,
        specHash: opts.specHash ?? record.specHash,
        deviceHash: opts.deviceHash ?? record.deviceHash,
      });
    } catch (err) {
      if (opts.spec === undefined) throw err;
      // The new spec's server failed: the old spec's serves the device again, and the error is reported.
      log(`dev ${devId}: the new server failed (${(err as Error).message}); recovering with the previous spec`);
      await startServer(record.spec, { ...launch, ...owned, ...recordHashes(record) });
      throw err;
    }
    return { method, oldPid, server };
  } finally {
    lock.release();
  }
}
