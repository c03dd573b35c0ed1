/**
 * An in-memory stand-in for the reconciler's kernel seam: devices with the
 * kernel's four states, servers as pids that live until killed, records in
 * a map. It behaves like the host where the reconciler can tell: a started
 * server makes its device LIVE and writes its record; a killed server
 * leaves a recoverable device QUIESCED and any other LIVE with no server.
 */
import type { DeviceInfo, DeviceParamsReadback } from '../../src/kernel/control';
import type { DeviceState } from '../../src/kernel/uapi';
import type { Kernel, ServerStart } from '../../src/reconciler/kernel';
import type { DeviceRecord, DeviceRecordStore } from '../../src/server/device-records';
import type { RemovedDevice, StartedServer } from '../../src/server/launcher';
import { handoverMethod, HandoverOptions, HandoverResult } from '../../src/server/handover';
import type { DeviceSpec } from '../../src/spec/device-spec';
import { UblkError, ERRNO } from '../../src/errors';
import { featureNames, UBLK_F_UPDATE_SIZE, updateSizeMissing } from '../../src/kernel/uapi';
import { recoveryFlags } from '../../src/spec/recovery-mode';

export class MemoryRecords implements DeviceRecordStore {
  readonly byId = new Map<number, DeviceRecord>();
  constructor(private readonly clock: () => number) {}
  list(): DeviceRecord[] {
    return [...this.byId.values()].sort((a, b) => a.devId - b.devId);
  }
  read(devId: number): DeviceRecord | undefined {
    return this.byId.get(devId);
  }
  write(record: DeviceRecord): void {
    this.byId.set(record.devId, { ...record, updatedAt: new Date(this.clock()).toISOString() });
  }
  remove(devId: number): void {
    this.byId.delete(devId);
  }
}

export interface FakeDevice {
  info: DeviceInfo;
  sizeBytes: number;
  inUse: boolean;
}

export class FakeKernel implements Kernel {
  readonly devices = new Map<number, FakeDevice>();
  readonly records: MemoryRecords;
  readonly alive = new Set<number>();
  /** Every command that changed something, in order: 'start 3', 'recover 3', 'remove 3'. */
  readonly calls: string[] = [];
  /** When set, the next startServer fails with it (and changes nothing). */
  failNextStart: Error | undefined;
  /** When set, the next resizeDevice fails with it (and changes nothing). */
  failNextResize: Error | undefined;
  /** GET_FEATURES: by default a kernel with UPDATE_SIZE (6.16+), which new devices are granted. */
  features: bigint = UBLK_F_UPDATE_SIZE;
  /** The ublk-ts version servers started now run (DeviceRecord.serverVersion). */
  serverVersion = '0.1.0';
  private nextPid = 1000;

  constructor(readonly clock: () => number = Date.now) {
    this.records = new MemoryRecords(clock);
  }

  /** A device some other tool made: ublk-ts has no record of it. */
  addForeignDevice(id: number, state: DeviceState = 'LIVE'): void {
    const pid = this.nextPid++;
    this.alive.add(pid);
    this.devices.set(id, { info: this.info(id, state, pid, 0n), sizeBytes: 1 << 20, inUse: false });
  }

  /** kill -9 of a device's server. */
  killServer(id: number): void {
    const dev = this.devices.get(id)!;
    this.alive.delete(dev.info.serverPid);
    if (dev.info.state === 'LIVE' && dev.info.flagNames.includes('USER_RECOVERY')) dev.info.state = 'QUIESCED';
  }

  setState(id: number, state: DeviceState): void {
    this.devices.get(id)!.info.state = state;
  }

  async listDevices(): Promise<DeviceInfo[]> {
    return [...this.devices.values()].map((d) => ({ ...d.info }));
  }

  async getDeviceInfo(id: number): Promise<DeviceInfo> {
    const dev = this.devices.get(id);
    if (!dev) throw new UblkError('GET_DEV_INFO', id, ERRNO.ENODEV);
    return { ...dev.info };
  }

  async getParams(id: number): Promise<DeviceParamsReadback> {
    const dev = this.devices.get(id);
    if (!dev) throw new UblkError('GET_PARAMS', id, ERRNO.ENODEV);
    return { sizeBytes: dev.sizeBytes, logicalBlockSize: 512, maxIoSize: dev.info.maxIoSize };
  }

  async startServer(spec: DeviceSpec, opts: ServerStart): Promise<StartedServer> {
    const failure = this.failNextStart;
    this.failNextStart = undefined;
    if (failure) throw failure;
    const pid = this.nextPid++;
    let id: number;
    if (opts.recoverDevId !== undefined) {
      id = opts.recoverDevId;
      const dev = this.devices.get(id);
      if (!dev || (dev.info.state !== 'QUIESCED' && dev.info.state !== 'FAIL_IO')) {
        throw new UblkError('START_USER_RECOVERY', id, ERRNO.EINVAL);
      }
      dev.info = { ...dev.info, state: 'LIVE', serverPid: pid };
      this.calls.push(`recover ${id}`);
    } else {
      id = spec.id ?? this.lowestFreeId();
      if (this.devices.has(id)) throw new UblkError('ADD_DEV', id, ERRNO.EEXIST);
      this.devices.set(id, {
        info: this.info(id, 'LIVE', pid, recoveryFlags(spec.recovery) | (this.features & UBLK_F_UPDATE_SIZE), spec),
        sizeBytes: spec.sizeBytes,
        inUse: false,
      });
      this.calls.push(`start ${id}`);
    }
    this.alive.add(pid);
    this.records.write({
      version: 1,
      devId: id,
      owner: opts.owner ?? 'ublkctl',
      manifest: opts.manifest,
      manifestFile: opts.manifestFile,
      specHash: opts.specHash,
      deviceHash: opts.deviceHash,
      serverVersion: this.serverVersion,
      spec,
      serverPid: pid,
      status: 'live',
      failures: opts.failures ?? 0,
      lastError: opts.lastError,
      startedAt: new Date(this.clock()).toISOString(),
      updatedAt: '',
    });
    const info = this.devices.get(id)!.info;
    return { info: { ...info }, pid, logPath: `/fake/logs/ublkb${id}.log` };
  }

  /** Like the real one: refused where handoverMethod refuses, else the old server goes and a new one recovers. */
  async handOver(id: number, opts: Omit<HandoverOptions, 'stateDir'>): Promise<HandoverResult> {
    const dev = this.devices.get(id);
    const record = this.records.read(id);
    if (!dev || !record) throw new UblkError('HANDOVER', id, ERRNO.ENOENT);
    const how = handoverMethod(dev.info);
    if ('impossible' in how) throw new UblkError('HANDOVER', id, ERRNO.EOPNOTSUPP, how.impossible);
    const oldPid = dev.info.serverPid;
    this.alive.delete(oldPid);
    dev.info = { ...dev.info, state: 'QUIESCED' };
    this.calls.push(`handover ${id}`);
    const server = await this.startServer(opts.spec ?? record.spec, {
      recoverDevId: id,
      owner: record.owner,
      manifest: record.manifest,
      manifestFile: opts.manifestFile ?? record.manifestFile,
      specHash: opts.specHash ?? record.specHash,
      deviceHash: opts.deviceHash ?? record.deviceHash,
    });
    return { method: how.method, oldPid, server };
  }

  async removeDevice(id: number): Promise<RemovedDevice> {
    this.calls.push(`remove ${id}`);
    const dev = this.devices.get(id);
    this.devices.delete(id);
    this.records.remove(id);
    if (!dev) return { serverPid: 0, serverExited: true };
    this.alive.delete(dev.info.serverPid);
    return { serverPid: dev.info.serverPid, serverExited: true };
  }

  async resizeDevice(id: number, sizeBytes: number): Promise<void> {
    const failure = this.failNextResize;
    this.failNextResize = undefined;
    if (failure) throw failure;
    const dev = this.devices.get(id);
    if (!dev) throw new UblkError('GET_DEV_INFO', id, ERRNO.ENODEV);
    const missing = updateSizeMissing(this.features, dev.info.flags);
    if (missing) throw new UblkError('UPDATE_SIZE', id, ERRNO.EOPNOTSUPP, missing);
    if (dev.info.state !== 'LIVE') throw new UblkError('UPDATE_SIZE', id, ERRNO.EINVAL);
    dev.sizeBytes = sizeBytes;
    this.calls.push(`resize ${id} ${sizeBytes}`);
  }

  isAlive(pid: number): boolean {
    return this.alive.has(pid);
  }

  inUse(blockPath: string): boolean {
    return [...this.devices.values()].some((d) => d.info.blockPath === blockPath && d.inUse);
  }

  private lowestFreeId(): number {
    let id = 0;
    while (this.devices.has(id)) id++;
    return id;
  }

  private info(id: number, state: DeviceState, pid: number, flags: bigint, spec?: DeviceSpec): DeviceInfo {
    return {
      id,
      state,
      queues: spec?.queues ?? 1,
      depth: spec?.depth ?? 128,
      maxIoSize: spec?.maxIoSize ?? 512 * 1024,
      serverPid: pid,
      flags,
      flagNames: featureNames(flags),
      ownerUid: 0,
      ownerGid: 0,
      charPath: `/dev/ublkc${id}`,
      blockPath: `/dev/ublkb${id}`,
    };
  }
}
