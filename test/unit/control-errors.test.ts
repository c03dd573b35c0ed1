/**
 * How control failures are named: an io_uring that cannot be set up is
 * io_uring's problem on this host, not the command's; a kernel without
 * GET_FEATURES (6.1–6.4 answer ENODEV) has no optional features; an error
 * carries the name of the command that gave it; a queue's CPU affinity that
 * cannot be read fails the start, and one that cannot be applied is said.
 */
import { strict as assert } from 'node:assert';
import * as os from 'node:os';
import { EnvironmentError, ERRNO, UblkError } from '../../src/errors';
import { ControlCommands, DeviceInfo, explainRingSetupFailure, UblkControl } from '../../src/kernel/control';
import { native, NativeControlDevice } from '../../src/kernel/native';
import { startQueues } from '../../src/device/queues';
import { normalizeDeviceSpec } from '../../src/spec/device-spec';

/** A control device whose GET_FEATURES fails with `err`; records whether it was closed. */
function failingFeatures(err: Error): NativeControlDevice & { closed: boolean } {
  const dev = {
    closed: false,
    getFeatures: () => Promise.reject(err),
    setLegacyOpcodes: () => undefined,
    close: () => {
      dev.closed = true;
    },
  };
  return dev as unknown as NativeControlDevice & { closed: boolean };
}

describe('control errors', () => {
  it('takes ENODEV from GET_FEATURES (Linux 6.1–6.4) as a kernel without optional features', async () => {
    const control = await UblkControl.probe(failingFeatures(new UblkError('GET_FEATURES', -1, ERRNO.ENODEV)));
    assert.equal(control.features, 0n);
    assert.equal(control.legacyOpcodes, true);
  });

  it('reports an io_uring that cannot be set up as what it is, not as a GET_FEATURES failure', async () => {
    const dev = failingFeatures(new UblkError('IO_URING_SETUP', -1, ERRNO.EPERM));
    await assert.rejects(UblkControl.probe(dev), (err: unknown) => {
      assert.ok(err instanceof EnvironmentError, String(err));
      assert.match(err.message, /^cannot set up an io_uring \(EPERM\), which every ublk command is sent on: /);
      assert.doesNotMatch(err.message, /GET_FEATURES/);
      return true;
    });
    assert.ok(dev.closed);
  });

  it('says which setting disables io_uring, and what else refuses it', () => {
    const eperm = new UblkError('IO_URING_SETUP', -1, ERRNO.EPERM);
    assert.match(
      explainRingSetupFailure(eperm, () => '2').message,
      /io_uring is disabled on this host \(\/proc\/sys\/kernel\/io_uring_disabled is 2\); set kernel.io_uring_disabled to 0$/,
    );
    assert.match(explainRingSetupFailure(eperm, () => '1').message, /limited to root and kernel.io_uring_group/);
    assert.match(explainRingSetupFailure(eperm, () => undefined).message, /refused, likely by a seccomp filter/);
    assert.match(
      explainRingSetupFailure(new UblkError('IO_URING_SETUP', -1, ERRNO.ENOSYS), () => '0').message,
      /no io_uring/,
    );
    // Reported by a later command, the op names the ring, with the hint.
    assert.equal(
      eperm.message,
      'IO_URING_SETUP: EPERM (io_uring is disabled for this process (see /proc/sys/kernel/io_uring_disabled))',
    );
  });

  it("names the GET_DEV_INFO fallback's own error after GET_DEV_INFO, not GET_DEV_INFO2", async () => {
    // /dev/zero opens but answers no io_uring command: GET_DEV_INFO2 fails, then so does its fallback.
    const dev = new (native().ControlDevice)('/dev/zero');
    try {
      dev.setLegacyOpcodes(false);
      await assert.rejects(dev.getDevInfo(3), (err: unknown) => {
        assert.ok(err instanceof UblkError, String(err));
        assert.equal(err.op, 'GET_DEV_INFO');
        assert.equal(err.devId, 3);
        return true;
      });
    } finally {
      dev.close();
    }
  });

  it("fails the start when a queue's CPU affinity cannot be read, before any queue runs", async () => {
    const refused = new UblkError('GET_QUEUE_AFFINITY', 9, ERRNO.EINVAL);
    const control = { getQueueAffinity: () => Promise.reject(refused) } as unknown as ControlCommands;
    const info = {
      id: 9,
      queues: 2,
      depth: 4,
      maxIoSize: 4096,
      charPath: '/dev/null',
      flags: 0n,
    } as unknown as DeviceInfo;
    const spec = normalizeDeviceSpec({ target: 'null', size: '1MiB', queues: 1 }, { maxQueues: 1 });
    await assert.rejects(startQueues(control, info, spec, undefined, undefined), (err: unknown) => err === refused);
  });

  it('says when a queue thread cannot be pinned to the CPUs the kernel gave it', async () => {
    // A CPU this host does not have: pthread_setaffinity_np refuses an empty set (EINVAL).
    const missingCpu = Math.min(os.cpus().length + 7, 1000);
    const control = { getQueueAffinity: () => Promise.resolve([missingCpu]) } as unknown as ControlCommands;
    // /dev/null stands for the char device: the queue is pinned first, then fails to map its descriptors.
    const info = {
      id: 9,
      queues: 1,
      depth: 4,
      maxIoSize: 4096,
      charPath: '/dev/null',
      flags: 0n,
    } as unknown as DeviceInfo;
    const spec = normalizeDeviceSpec({ target: 'null', size: '1MiB', queues: 1 }, { maxQueues: 1 });
    const written: string[] = [];
    const write = process.stderr.write;
    process.stderr.write = ((chunk: string) => written.push(String(chunk)) > 0) as typeof process.stderr.write;
    try {
      await assert.rejects(startQueues(control, info, spec, undefined, undefined));
    } finally {
      process.stderr.write = write;
    }
    assert.ok(
      written.some((l) =>
        l.includes(`dev 9 queue 0: cannot pin its thread to CPUs ${missingCpu} (EINVAL); it serves unpinned`),
      ),
      written.join(''),
    );
  });
});
