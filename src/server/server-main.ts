/**
 * A device server process: serves exactly one ublk device until it is
 * stopped. Started detached by the launcher, which writes the request (the
 * device spec) to its stdin; stdout/stderr are its log file, fd 3 its
 * status channel.
 * SIGTERM or SIGINT stop and delete the device; STOP_DEV from elsewhere
 * (ublkctl del) ends it too. A handover (server/handover.ts) ends it
 * without deleting the device: QUIESCE_DEV from the manager (the kernel
 * aborts the idle fetches), or SIGUSR2 on kernels without it (the server
 * closes its queues); either way the requests it holds are answered or left to the
 * kernel, /dev/ublkcN is closed, and a new server recovers the device.
 * Exit status 0: every queue ended cleanly and the device was stopped;
 * HANDED_OVER_STATUS: it ended cleanly and the device remains for a new
 * server; 1: a queue failed.
 */
import * as fs from 'node:fs';
import { UblkDevice } from '../device/device';
import { formatSize } from '../spec/sizes';
import { lockCode } from './lock-memory';
import {
  HANDED_OVER_STATUS,
  MAX_REQUEST_BYTES,
  serializeError,
  serializeInfo,
  ServerMessage,
  ServerRequest,
  specForLog,
  STATUS_FD,
} from './protocol';
import { keepLogBounded } from './server-log';

function log(message: string): void {
  process.stderr.write(`${new Date().toISOString()} [server ${process.pid}] ${message}\n`);
}

let statusOpen = true;
function send(message: ServerMessage): void {
  if (!statusOpen) return;
  try {
    fs.writeSync(STATUS_FD, `${JSON.stringify(message)}\n`);
  } catch {
    statusOpen = false; // the launcher is gone; the log still records everything
  }
}

function closeStatus(): void {
  if (!statusOpen) return;
  statusOpen = false;
  try {
    fs.closeSync(STATUS_FD);
  } catch {
    // already closed
  }
}

/** The launcher's request, read whole from stdin (up to its end). */
async function readRequest(): Promise<ServerRequest> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    size += (chunk as Buffer).length;
    if (size > MAX_REQUEST_BYTES) throw new Error(`the request on stdin is larger than ${MAX_REQUEST_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  if (size === 0) throw new Error('no request on stdin: a device server is started by the launcher');
  return JSON.parse(Buffer.concat(chunks).toString('utf8')) as ServerRequest;
}

async function main(): Promise<void> {
  // stdout and stderr share the launcher's log file: bounding fd 2 bounds both.
  keepLogBounded(2);
  const request = await readRequest();
  const spec = request.spec;
  let device: UblkDevice;
  try {
    if (spec.lockMemory) {
      // The queues lock their own IO buffers as they map them.
      log(`locked ${formatSize(lockCode())} of program code in memory`);
    }
    if (request.recoverDevId !== undefined) {
      log(`recovering device ${request.recoverDevId} (${spec.target.type}): ${specForLog(spec)}`);
      device = await UblkDevice.recover(request.recoverDevId, spec, { checkPermissions: request.checkPermissions });
    } else {
      log(`starting ${spec.target.type} device: ${specForLog(spec)}`);
      device = await UblkDevice.create(spec, {
        checkPermissions: request.checkPermissions,
        onProgress: (p) => {
          log(`added device ${p.info.id}`);
          send({ event: 'added', devId: p.info.id });
        },
      });
    }
  } catch (err) {
    log(`failed to start: ${(err as Error).message}`);
    send({ event: 'error', error: serializeError(err) });
    closeStatus();
    process.exitCode = 1;
    return;
  }
  log(`device ${device.id} is LIVE at ${device.blockPath}${device.backing ? ` on ${device.backing.description}` : ''}`);
  if (device.recovery !== undefined && device.recovery !== spec.recovery) {
    log(
      `device ${device.id} has recovery ${device.recovery}, not ${spec.recovery}: its module does not export ` +
        'recoverable: true, so it dies with this server and is re-created with its data reported lost',
    );
  }
  const sched = device.scheduler;
  if (sched.error !== undefined) {
    log(
      `device ${device.id}: IO scheduler ${sched.wanted} not set, it has ${sched.active ?? 'an unknown one'}: ${sched.error}`,
    );
  } else {
    log(
      `device ${device.id}: IO scheduler ${sched.active}${sched.wanted === 'kernel-default' ? " (the kernel's)" : ''}`,
    );
  }
  send({ event: 'live', info: serializeInfo(device.info), createdFile: device.backing?.createdFile });
  closeStatus();

  let stopping = false;
  const shutdown = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log(`${signal}: stopping and deleting device ${device.id}`);
    void device.remove().catch((err: Error) => log(`delete failed: ${err.message}`));
  };
  const handOver = (): void => {
    if (stopping) return;
    stopping = true;
    log(`SIGUSR2: handing device ${device.id} over: closing its queues without stopping it`);
    void device.release();
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGUSR2', handOver);
  process.on('SIGHUP', () => undefined);

  const exits = await device.exited;
  const failed = exits.filter((e) => e.error);
  for (const e of exits) {
    const who = e.thread === undefined ? `queue ${e.qid}` : `queue ${e.qid} thread ${e.thread}`;
    log(`${who} ended after ${e.ios} requests${e.error ? `: ${e.error.message}` : ''}`);
  }
  const remains = await device.remains;
  if (failed.length > 0) {
    process.exitCode = 1;
  } else if (remains) {
    // Never deleted here: the device waits (QUIESCED) for the server that takes over.
    log(`device ${device.id} handed over: left for a new server to recover`);
    process.exitCode = HANDED_OVER_STATUS;
  } else {
    process.exitCode = 0;
  }
  log(`exiting with status ${process.exitCode}`);
  process.removeAllListeners('SIGTERM');
  process.removeAllListeners('SIGINT');
  process.removeAllListeners('SIGUSR2');
  process.removeAllListeners('SIGHUP');
}

void main().catch((err: Error) => {
  log(`fatal: ${err.stack ?? err.message}`);
  send({ event: 'error', error: serializeError(err) });
  process.exit(1);
});
