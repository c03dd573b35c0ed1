/**
 * What a device server tells the process that launched it, one JSON line
 * per message on file descriptor 3: the device id as soon as it exists (so
 * a launcher can clean up after a crash), then "live" or "error".
 */
import { EnvironmentError, SpecError, UblkError } from '../errors';
import { DeviceInfo } from '../kernel/control';
import { DeviceSpec } from '../spec/device-spec';

/**
 * The exit status of a server that let go of its device for a new server
 * (a handover) without deleting it: distinct from 0 (device stopped) and
 * 1 (a queue failed), so its log says which way it ended.
 */
export const HANDED_OVER_STATUS = 3;

/** The server's end of the status channel (the launcher's fourth stdio entry). */
export const STATUS_FD = 3;

/**
 * The most bytes a request may take on the server's stdin. A spec is small;
 * the cap only bounds what a server reads before it knows what it got.
 */
export const MAX_REQUEST_BYTES = 16 * 1024 * 1024;

/**
 * What the launcher asks a server for: a new device, or taking over a
 * QUIESCED one. It travels as one JSON text on the server's stdin, never in
 * its argv: a js target's options may hold credentials, and a command line
 * is readable by every user (/proc/PID/cmdline) and limited to 128 KiB.
 */
export interface ServerRequest {
  spec: DeviceSpec;
  recoverDevId?: number;
  /** Refuse files others could change (a js module, a link to a loop file): see DeviceOptions.checkPermissions. */
  checkPermissions?: boolean;
}

/** An error as it crosses the status channel: its type and every field that type carries. */
export interface SerializedError {
  name: string;
  message: string;
  op?: string;
  devId?: number;
  errno?: number;
  field?: string;
  detail?: string;
}

export type ServerMessage =
  | { event: 'added'; devId: number }
  | { event: 'live'; info: Omit<DeviceInfo, 'flags'> & { flags: string }; createdFile?: string }
  | { event: 'error'; error: SerializedError };

/**
 * A spec as a log line: a js target's options are left out (they may hold
 * credentials, and logs are readable by more than root); their keys are named.
 */
export function specForLog(spec: DeviceSpec): string {
  if (spec.target.type !== 'js') return JSON.stringify(spec);
  const keys = Object.keys(spec.target.options);
  return JSON.stringify({
    ...spec,
    target: { ...spec.target, options: `<${keys.length} not logged: ${keys.join(', ')}>` },
  });
}

/** The error a server sends when it cannot bring its device up. */
export function serializeError(err: unknown): SerializedError {
  if (err instanceof UblkError) {
    return { name: err.name, message: err.message, op: err.op, devId: err.devId, errno: err.errno, detail: err.detail };
  }
  if (err instanceof SpecError) return { name: err.name, message: err.message, field: err.field, detail: err.detail };
  if (err instanceof Error) return { name: err.name, message: err.message };
  return { name: 'Error', message: String(err) };
}

/** Rebuilds the error type the server raised, so callers can branch on it. */
export function deserializeError(e: SerializedError): Error {
  if (e.name === 'UblkError' && e.op !== undefined && e.errno !== undefined) {
    return new UblkError(e.op, e.devId, e.errno, e.detail);
  }
  if (e.name === 'SpecError' && e.field !== undefined && e.detail !== undefined) {
    return new SpecError(e.field, e.detail);
  }
  if (e.name === 'EnvironmentError') return new EnvironmentError(e.message);
  return new Error(e.message);
}

/** DeviceInfo as JSON: the flags bigint as a hex string. */
export function serializeInfo(info: DeviceInfo): Omit<DeviceInfo, 'flags'> & { flags: string } {
  return { ...info, flags: `0x${info.flags.toString(16)}` };
}

/** Inverse of serializeInfo. */
export function deserializeInfo(info: Omit<DeviceInfo, 'flags'> & { flags: string }): DeviceInfo {
  return { ...info, flags: BigInt(info.flags) };
}
