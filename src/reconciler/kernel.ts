/**
 * The reconciler's seam to the host: the few things a pass asks of the
 * kernel, of device servers and of the state directory. `hostKernel` is
 * the real one (ublk control commands, detached servers, record files,
 * /proc); the unit tests use an in-memory fake, so every decision and its
 * application run on any machine in milliseconds.
 */
import { ControlCommands, DeviceInfo, DeviceParamsReadback, listDeviceIds } from '../kernel/control';
import { blockDeviceInUse, blockDeviceUsage } from '../kernel/in-use';
import { resizeDevice } from '../device/resize';
import { DeviceRecord, DeviceRecordStore, directoryRecords } from '../server/device-records';
import { handOver, HandoverOptions, HandoverResult } from '../server/handover';
import { LaunchOptions, removeDevice, RemovedDevice, startServer, StartedServer } from '../server/launcher';
import { isAlive } from '../server/processes';
import { DeviceSpec } from '../spec/device-spec';

/** How a server is started through the seam: the launch options less where state lives (the kernel knows). */
export type ServerStart = Omit<LaunchOptions, 'stateDir' | 'control'>;

/** What the reconciler needs from the host. */
export interface Kernel {
  /** The kernel's ublk feature flags (GET_FEATURES). */
  readonly features: bigint;
  /** Every ublk device, including ones other tools made. */
  listDevices(): Promise<DeviceInfo[]>;
  /**
   * The ids of every ublk device, without asking each for its info: what a
   * create's pre-flight checks a fixed id against. Absent: listDevices' ids.
   */
  deviceIds?(): Promise<number[]>;
  /** GET_DEV_INFO of one device. */
  getDeviceInfo(id: number): Promise<DeviceInfo>;
  /** GET_PARAMS of one device. */
  getParams(id: number): Promise<DeviceParamsReadback>;
  /** Starts a detached server that creates (or recovers) a device; resolves once it is LIVE and recorded. */
  startServer(spec: DeviceSpec, opts: ServerStart): Promise<StartedServer>;
  /**
   * Hands a LIVE device over to a new server with `opts.spec` (see
   * server/handover.ts): the old server lets go without the device
   * stopping, the new one recovers it; resolves once it is LIVE and recorded.
   */
  handOver(id: number, opts: Omit<HandoverOptions, 'stateDir'>): Promise<HandoverResult>;
  /** Stops and deletes a device, waits for its server, drops its record; a device already gone is fine. */
  removeDevice(id: number): Promise<RemovedDevice>;
  /**
   * Resizes a LIVE device in place (see device/resize.ts): its store, then
   * UPDATE_SIZE. The record is the caller's to update once this resolves.
   */
  resizeDevice(id: number, sizeBytes: number, record: DeviceRecord, opts: { checkPermissions: boolean }): Promise<void>;
  /** The state directory's device records. */
  readonly records: DeviceRecordStore;
  /** Whether a server process still runs. */
  isAlive(pid: number): boolean;
  /** Whether a block device is mounted, held or open, so it must not be re-created. */
  inUse(blockPath: string): boolean;
  /**
   * inUse for many devices at once (one pass's plan): a checker that looks
   * at the processes once for all of them. Absent: inUse, device by device.
   */
  inUseChecker?(): (blockPath: string) => boolean;
}

/** The real host: the control device, detached servers, records under `stateDir`. */
export function hostKernel(control: ControlCommands, stateDir: string): Kernel {
  return {
    features: control.features,
    listDevices: () => control.listDevices(),
    deviceIds: () => Promise.resolve(listDeviceIds()),
    getDeviceInfo: (id) => control.getDeviceInfo(id),
    getParams: (id) => control.getParams(id),
    startServer: (spec, opts) => startServer(spec, { ...opts, stateDir, control }),
    handOver: (id, opts) => handOver(control, id, { ...opts, stateDir }),
    removeDevice: (id) => removeDevice(control, id, { stateDir, missingOk: true }),
    resizeDevice: async (id, sizeBytes, record, opts) => {
      await resizeDevice(control, {
        devId: id,
        spec: record.spec,
        sizeBytes,
        createdFile: record.createdFile,
        checkPermissions: opts.checkPermissions,
      });
    },
    records: directoryRecords(stateDir),
    isAlive,
    inUse: blockDeviceInUse,
    inUseChecker: blockDeviceUsage,
  };
}
