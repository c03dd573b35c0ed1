/**
 * Removing a device as safely as the kernel allows, against a stand-in
 * control device: which commands are sent on kernels with and without
 * safe stop and async delete, and what a refusal says. The end-to-end
 * test (test/e2e/kernel-features.test.ts) runs the same against ublk_drv.
 */
import { strict as assert } from 'node:assert';
import { ERRNO, SpecError, UblkError } from '../../src/errors';
import { addDeviceFlags, checkGrantedFlags } from '../../src/device/add-flags';
import { ControlCommands, DeviceInfo } from '../../src/kernel/control';
import { featureSupport, kernelVersion } from '../../src/kernel/feature-report';
import {
  UBLK_F_BATCH_IO,
  UBLK_F_NO_AUTO_PART_SCAN,
  UBLK_F_PER_IO_DAEMON,
  UBLK_F_SAFE_STOP_DEV,
} from '../../src/kernel/uapi';
import { threadsPerQueue } from '../../src/device/queues';
import { deleteAndWait, stopForRemoval } from '../../src/server/safe-removal';
import { normalizeDeviceSpec } from '../../src/spec/device-spec';

function deviceInfo(state: DeviceInfo['state'] = 'LIVE'): DeviceInfo {
  return {
    id: 3,
    state,
    queues: 1,
    depth: 4,
    maxIoSize: 4096,
    serverPid: 4242,
    flags: 0n,
    flagNames: [],
    ownerUid: 0,
    ownerGid: 0,
    charPath: '/dev/ublkc3',
    blockPath: '/dev/ublkb3',
  };
}

interface Stand {
  control: ControlCommands;
  sent: string[];
}

/** A control device that records the commands sent; `answers` overrides what a command does. */
function standIn(
  features: bigint,
  answers: Partial<Record<string, (async?: boolean) => Promise<unknown>>> = {},
): Stand {
  const sent: string[] = [];
  const command =
    (name: string) =>
    (_id: number, opts?: { async?: boolean }): Promise<unknown> => {
      const label = name === 'deleteDevice' && opts?.async ? 'deleteDevice(async)' : name;
      sent.push(label);
      return answers[label]?.(opts?.async) ?? Promise.resolve(name === 'getDeviceInfo' ? deviceInfo() : undefined);
    };
  const control = {
    features,
    stopDevice: command('stopDevice'),
    tryStopDevice: command('tryStopDevice'),
    deleteDevice: command('deleteDevice'),
    getDeviceInfo: command('getDeviceInfo'),
  } as unknown as ControlCommands;
  return { control, sent };
}

const busy = (op: string) => () => Promise.reject(new UblkError(op, 3, ERRNO.EBUSY));
const gone = () => Promise.reject(new UblkError('GET_DEV_INFO', 3, ERRNO.ENODEV));

describe('safe stop before a delete', () => {
  it('leaves the refusal to the kernel where it has TRY_STOP_DEV, and never sends STOP_DEV', async () => {
    const { control, sent } = standIn(UBLK_F_SAFE_STOP_DEV, { tryStopDevice: busy('TRY_STOP_DEV') });
    const askedUs: string[] = [];
    await assert.rejects(
      stopForRemoval(control, deviceInfo(), { inUse: (p) => askedUs.push(p) > 0 }),
      (err: unknown) => {
        assert.ok(err instanceof UblkError);
        assert.equal(err.op, 'TRY_STOP_DEV');
        assert.equal(err.code, 'EBUSY');
        assert.match(
          err.message,
          /\/dev\/ublkb3 is open \(mounted, or held by a process\): the kernel refused to stop it/,
        );
        return true;
      },
    );
    assert.ok(
      sent.every((c) => c === 'tryStopDevice'),
      sent.join(),
    );
    assert.deepEqual(askedUs, [], 'our own check is not what decides on such a kernel');
  });

  it('takes a short EBUSY (a udev probe) as passing, not as a refusal', async () => {
    let tries = 0;
    const { control, sent } = standIn(UBLK_F_SAFE_STOP_DEV, {
      tryStopDevice: () => (++tries < 3 ? busy('TRY_STOP_DEV')() : Promise.resolve()),
    });
    await stopForRemoval(control, deviceInfo());
    assert.deepEqual(sent, ['tryStopDevice', 'tryStopDevice', 'tryStopDevice']);
  });

  it('goes on when TRY_STOP_DEV finds no disk because the device went DEAD meanwhile', async () => {
    const { control, sent } = standIn(UBLK_F_SAFE_STOP_DEV, {
      tryStopDevice: () => Promise.reject(new UblkError('TRY_STOP_DEV', 3, ERRNO.ENODEV)),
    });
    await stopForRemoval(control, deviceInfo());
    assert.deepEqual(sent, ['tryStopDevice', 'getDeviceInfo']);
  });

  it('passes ENODEV on when the device itself is gone', async () => {
    const { control } = standIn(UBLK_F_SAFE_STOP_DEV, {
      tryStopDevice: () => Promise.reject(new UblkError('TRY_STOP_DEV', 3, ERRNO.ENODEV)),
      getDeviceInfo: gone,
    });
    await assert.rejects(stopForRemoval(control, deviceInfo()), (err: unknown) => (err as UblkError).code === 'ENODEV');
  });

  it('without safe stop, refuses an open device by its own check and says what that check cannot do', async () => {
    const { control, sent } = standIn(0n);
    await assert.rejects(stopForRemoval(control, deviceInfo(), { inUse: () => true }), (err: unknown) => {
      assert.ok(err instanceof UblkError);
      assert.equal(err.op, 'STOP_DEV');
      assert.equal(err.code, 'EBUSY');
      assert.match(err.message, /lacks UBLK_F_SAFE_STOP_DEV, Linux 7\.0\+/);
      return true;
    });
    assert.deepEqual(sent, []);
  });

  it('without safe stop, stops a device no one has open', async () => {
    const { control, sent } = standIn(0n);
    await stopForRemoval(control, deviceInfo(), { inUse: () => false });
    assert.deepEqual(sent, ['stopDevice']);
  });

  it('with force, sends STOP_DEV whatever holds the device, on either kernel', async () => {
    for (const features of [0n, UBLK_F_SAFE_STOP_DEV]) {
      const { control, sent } = standIn(features, { tryStopDevice: busy('TRY_STOP_DEV') });
      await stopForRemoval(control, deviceInfo(), { force: true, inUse: () => true });
      assert.deepEqual(sent, ['stopDevice']);
    }
  });

  it('has nothing to stop on a DEAD device', async () => {
    const { control, sent } = standIn(UBLK_F_SAFE_STOP_DEV);
    await stopForRemoval(control, deviceInfo('DEAD'), { inUse: () => true });
    assert.deepEqual(sent, []);
  });
});

describe('async delete', () => {
  it('sends DEL_DEV_ASYNC and resolves once GET_DEV_INFO no longer finds the device', async () => {
    let asked = 0;
    const { control, sent } = standIn(0n, {
      getDeviceInfo: () => (++asked < 3 ? Promise.resolve(deviceInfo('DEAD')) : gone()),
    });
    await deleteAndWait(control, deviceInfo(), 10_000);
    assert.deepEqual(sent, ['deleteDevice(async)', 'getDeviceInfo', 'getDeviceInfo', 'getDeviceInfo']);
  });

  it('falls back to DEL_DEV on a kernel without DEL_DEV_ASYNC (before 6.9)', async () => {
    for (const errno of [ERRNO.EOPNOTSUPP, 524]) {
      const { control, sent } = standIn(0n, {
        'deleteDevice(async)': () => Promise.reject(new UblkError('DEL_DEV_ASYNC', 3, errno)),
      });
      await deleteAndWait(control, deviceInfo(), 10_000);
      assert.deepEqual(sent, ['deleteDevice(async)', 'deleteDevice']);
    }
  });

  it('gives up after the timeout, naming the server that holds the device', async () => {
    const { control } = standIn(0n, { getDeviceInfo: () => Promise.resolve(deviceInfo('DEAD')) });
    await assert.rejects(deleteAndWait(control, deviceInfo(), 100), (err: unknown) => {
      assert.ok(err instanceof UblkError);
      assert.equal(err.op, 'DEL_DEV_ASYNC');
      assert.equal(err.code, 'ETIMEDOUT');
      assert.match(err.message, /server pid 4242 still holds \/dev\/ublkc3 after 100 ms/);
      return true;
    });
  });
});

describe('ADD_DEV flags', () => {
  const spec = normalizeDeviceSpec({ target: 'null', size: '1MiB', partitionScan: false }, { maxQueues: 1 });

  it('asks for NO_AUTO_PART_SCAN for partitionScan: false where the kernel has it', () => {
    assert.equal(addDeviceFlags(spec, 'none', UBLK_F_NO_AUTO_PART_SCAN), UBLK_F_NO_AUTO_PART_SCAN);
  });

  it('refuses partitionScan: false on a kernel without it, naming the field, the flag and the kernel', () => {
    assert.throws(
      () => addDeviceFlags(spec, 'none', 0n),
      (err: unknown) =>
        err instanceof SpecError &&
        /^partitionScan: false needs the kernel feature UBLK_F_NO_AUTO_PART_SCAN \(Linux 7\.0 or newer\)/.test(
          err.message,
        ),
    );
  });

  it('leaves a spec without partitionScan as it was: no flag, nothing in the spec', () => {
    const plain = normalizeDeviceSpec({ target: 'null', size: '1MiB', partitionScan: true }, { maxQueues: 1 });
    assert.equal('partitionScan' in plain, false);
    assert.equal(addDeviceFlags(plain, 'none', 0n), 0n);
  });

  it('asks for PER_IO_DAEMON for threadsPerQueue above 1 where the kernel has it', () => {
    const threaded = normalizeDeviceSpec({ target: 'null', size: '1MiB', threadsPerQueue: 2 }, { maxQueues: 1 });
    assert.equal(threaded.threadsPerQueue, 2);
    assert.equal(addDeviceFlags(threaded, 'none', UBLK_F_PER_IO_DAEMON), UBLK_F_PER_IO_DAEMON);
  });

  it('refuses threadsPerQueue above 1 on a kernel without PER_IO_DAEMON, naming the field, the flag and the kernel', () => {
    const threaded = normalizeDeviceSpec({ target: 'null', size: '1MiB', threadsPerQueue: 2 }, { maxQueues: 1 });
    assert.throws(
      () => addDeviceFlags(threaded, 'none', 0n),
      (err: unknown) =>
        err instanceof SpecError &&
        err.field === 'threadsPerQueue' &&
        /^threadsPerQueue: 2 needs the kernel feature UBLK_F_PER_IO_DAEMON \(Linux 6\.16 or newer\)/.test(err.message),
    );
  });

  it('asks for BATCH_IO for batchIo: true where the kernel has it, and refuses it, naming the feature, where not', () => {
    const batched = normalizeDeviceSpec({ target: 'null', size: '1MiB', batchIo: true }, { maxQueues: 1 });
    assert.equal(batched.batchIo, true);
    assert.equal(addDeviceFlags(batched, 'none', UBLK_F_BATCH_IO), UBLK_F_BATCH_IO);
    assert.throws(
      () => addDeviceFlags(batched, 'none', UBLK_F_PER_IO_DAEMON),
      (err: unknown) =>
        err instanceof SpecError &&
        /^batchIo: true needs the kernel feature UBLK_F_BATCH_IO \(Linux 7\.0 or newer\)/.test(err.message),
    );
    const plain = normalizeDeviceSpec({ target: 'null', size: '1MiB', batchIo: false }, { maxQueues: 1 });
    assert.equal('batchIo' in plain, false);
  });

  it('leaves threadsPerQueue: 1 out of the spec and the flags', () => {
    const single = normalizeDeviceSpec({ target: 'null', size: '1MiB', threadsPerQueue: 1 }, { maxQueues: 1 });
    assert.equal('threadsPerQueue' in single, false);
    assert.equal(addDeviceFlags(single, 'none', 0n), 0n);
  });

  it('serves a queue from the threads the spec names only on a device made with PER_IO_DAEMON', () => {
    const threaded = normalizeDeviceSpec({ target: 'null', size: '1MiB', threadsPerQueue: 3 }, { maxQueues: 1 });
    assert.equal(threadsPerQueue({ ...deviceInfo(), flags: UBLK_F_PER_IO_DAEMON }, threaded), 3);
    assert.equal(threadsPerQueue({ ...deviceInfo(), flags: UBLK_F_PER_IO_DAEMON }, spec), 1);
    assert.equal(threadsPerQueue({ ...deviceInfo(), flags: 0n }, spec), 1);
    assert.throws(
      () => threadsPerQueue({ ...deviceInfo(), flags: 0n }, threaded),
      (err: unknown) =>
        err instanceof SpecError &&
        /^threadsPerQueue: 3 needs a device made with UBLK_F_PER_IO_DAEMON; device \d+ was made without it/.test(
          err.message,
        ),
    );
  });

  it('refuses a device the kernel made without a flag it was asked for (6.12 drops unknown flags)', () => {
    assert.throws(
      () => checkGrantedFlags(UBLK_F_NO_AUTO_PART_SCAN, { ...deviceInfo(), flags: 0n }),
      (err: unknown) =>
        err instanceof UblkError && err.op === 'ADD_DEV' && /without UBLK_F_NO_AUTO_PART_SCAN/.test(err.message),
    );
    checkGrantedFlags(UBLK_F_NO_AUTO_PART_SCAN, { ...deviceInfo(), flags: UBLK_F_NO_AUTO_PART_SCAN | 1n });
  });
});

describe('feature report', () => {
  it('reads the kernel version from uname -r', () => {
    assert.deepEqual(kernelVersion('7.3.4+deb13-amd64'), [7, 3]);
    assert.deepEqual(kernelVersion('6.12.117+deb13-amd64'), [6, 12]);
    assert.equal(kernelVersion('weird'), undefined);
  });

  it('says per feature whether the kernel has it, from its flags or, without a flag, its version', () => {
    const on612 = Object.fromEntries(featureSupport(0x7fffn, '6.12.117+deb13-amd64').map((f) => [f.name, f]));
    assert.equal(on612['safe stop']!.present, false);
    assert.match(on612['safe stop']!.behaviour, /own check/);
    assert.equal(on612['no partition scan']!.present, false);
    assert.equal(on612['async delete']!.present, true);
    assert.equal(on612['async delete']!.detectedBy, 'kernel version');
    assert.equal(on612['START_DEV pid check']!.present, false);
    assert.equal(on612['fail-io recovery']!.present, true, 'from the flag, whatever the version says');
    const on73 = featureSupport(0x1fffffn, '7.3.4+deb13-amd64');
    assert.ok(
      on73.every((f) => f.present),
      JSON.stringify(on73),
    );
    assert.deepEqual(
      on73.map((f) => f.name),
      [
        'fail-io recovery',
        'online resize',
        'graceful handover',
        'threads per queue',
        'batched IO commands',
        'safe stop',
        'async delete',
        'no partition scan',
        'zero copy',
        'START_DEV pid check',
      ],
    );
  });
});
