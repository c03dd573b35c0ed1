/**
 * What a device server tells the process that launched it, one JSON line
 * per message on file descriptor 3: the device id as soon as it exists (so
 * a launcher can clean up after a crash), then "live" or "error".
 */
import { DeviceInfo } from './control';
import { DeviceSpec } from './device-spec';
import { EnvironmentError, SpecError, UblkError } from './errors';

export const STATUS_FD = 3;

/** What the launcher asks a server for: a new device, or taking over a QUIESCED one. */
export interface ServerRequest {
  spec: DeviceSpec;
  recoverDevId?: number;
}

export interface SerializedError {
  name: string;
  message: string;
  op?: string;
  devId?: number;
  errno?: number;
  field?: string;
}

export type ServerMessage =
  | { event: 'added'; devId: number }
  | { event: 'live'; info: Omit<DeviceInfo, 'flags'> & { flags: string } }
  | { event: 'error'; error: SerializedError };

export function serializeError(err: unknown): SerializedError {
  if (err instanceof UblkError) {
    return { name: err.name, message: err.message, op: err.op, devId: err.devId, errno: err.errno };
  }
  if (err instanceof SpecError) return { name: err.name, message: err.message, field: err.field };
  if (err instanceof Error) return { name: err.name, message: err.message };
  return { name: 'Error', message: String(err) };
}

/** Rebuilds the error type the server raised, so callers can branch on it. */
export function deserializeError(e: SerializedError): Error {
  if (e.name === 'UblkError' && e.op !== undefined && e.errno !== undefined) {
    return new UblkError(e.op, e.devId, e.errno);
  }
  if (e.name === 'SpecError' && e.field !== undefined) {
    return new SpecError(e.field, e.message.slice(e.field.length + 2));
  }
  if (e.name === 'EnvironmentError') return new EnvironmentError(e.message);
  return new Error(e.message);
}

export function serializeInfo(info: DeviceInfo): Omit<DeviceInfo, 'flags'> & { flags: string } {
  return { ...info, flags: `0x${info.flags.toString(16)}` };
}

export function deserializeInfo(info: Omit<DeviceInfo, 'flags'> & { flags: string }): DeviceInfo {
  return { ...info, flags: BigInt(info.flags) };
}
