/**
 * Several threads per queue (spec.threadsPerQueue, UBLK_F_PER_IO_DAEMON,
 * Linux 6.16+) against the real driver: fio with verification on the
 * native targets served by two threads per queue, each thread seen serving
 * requests; a kill -9 of the server recovered with the same layout; and, on
 * a kernel without the feature, the refusal before any device is made.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { UBLK_F_PER_IO_DAEMON } from '../../src/kernel/uapi';
import {
  AddedDevice,
  fioOnNativeTarget,
  fioVerifiedLoadArgs,
  ioCounts,
  killServerMidIo,
  listDevices,
  nativeTargetArgs,
  requireUblk,
  skipBecause,
  startFio,
  threadNames,
  ublkctl,
  waitForState,
  waitForWrites,
  useDeviceSuite,
} from './helpers';

describe('threads per queue (real ublk driver)', function () {
  requireUblk(this);
  const suite = useDeviceSuite(this, '/tmp/ublk-ts-threads-');
  const { add } = suite;

  function needsFeature(ctx: Mocha.Context): void {
    if (!suite.kernelHas(UBLK_F_PER_IO_DAEMON)) {
      skipBecause(ctx, 'this kernel lacks UBLK_F_PER_IO_DAEMON (Linux 6.16+); the refusal is tested below');
    }
  }

  /** Queue 0 of dev `id` is served by two threads, ublkNq0t0 and ublkNq0t1, of the server. */
  function assertTwoThreads(id: number, serverPid: number): void {
    const names = threadNames(serverPid);
    for (const t of [0, 1]) assert.ok(names.includes(`ublk${id}q0t${t}`), names.join(' '));
  }

  /** Deletes the device and returns the requests each of queue 0's threads served, from the server's log. */
  function deleteAndCountServed(dev: AddedDevice): number[] {
    suite.del(dev.id);
    const log = suite.serverLog(dev.id);
    const served = [...log.matchAll(/queue 0 thread (\d+) ended after (\d+) requests/g)].map((m) => [
      Number(m[1]),
      Number(m[2]),
    ]);
    assert.deepEqual(
      served.map(([thread]) => thread),
      [0, 1],
      `each thread reports its end:\n${log}`,
    );
    return served.map(([, count]) => count!);
  }

  for (const target of ['null', 'memory', 'loop'] as const) {
    it(`${target}: two threads serve queue 0, each its own tags; fio ${target === 'null' ? 'runs without an error' : 'verifies what it wrote'}`, function () {
      needsFeature(this);
      const dev = add([...nativeTargetArgs(target, suite.scratch()), '--threads-per-queue', '2', '--depth', '64']);
      assert.ok(dev.flagNames.includes('PER_IO_DAEMON'), dev.flagNames.join(' '));
      assertTwoThreads(dev.id, dev.serverPid);
      fioOnNativeTarget(target, dev.blockPath);
      const served = deleteAndCountServed(dev);
      // At QD32 over 64 tags dealt out in turn, both threads get requests.
      assert.ok(
        served.every((n) => n > 0),
        `requests served per thread: ${served.join(', ')}`,
      );
    });
  }

  it('memory, reissue: kill -9 during fio verify; ublkctl recover brings it back with two threads and fio sees no error', async function () {
    needsFeature(this);
    const dev = add(['-t', 'memory', '--size', '64MiB', '--threads-per-queue', '2', '--recovery', 'reissue']);
    const load = suite.track(startFio(fioVerifiedLoadArgs('recover', dev.blockPath, '16M', '1500')));
    const writes = await waitForWrites(dev.id, ioCounts(dev.id).writes, 200, 'fio writing before the kill');
    await killServerMidIo(dev.id, dev.serverPid);
    await waitForState(dev.id, 'QUIESCED', `dev ${dev.id} QUIESCED after the kill`);
    const now = suite.recover(dev);
    assertTwoThreads(dev.id, now.serverPid);
    await waitForWrites(dev.id, writes, 200, 'fio writing after recovery');
    const result = await load.stop();
    assert.equal(result.status, 0, result.raw);
    assert.equal(result.jobs[0]!.error, 0);
    assert.ok(result.jobs[0]!.read.io_bytes > 0, 'fio read back and verified what it wrote');
  });

  it('ublkctl restart during fio verify hands the device to a new server with the same two threads', async function () {
    needsFeature(this);
    const dev = add(['-t', 'memory', '--size', '64MiB', '--threads-per-queue', '2']);
    const load = suite.track(startFio(fioVerifiedLoadArgs('handover', dev.blockPath, '16M', '1500')));
    const writes = await waitForWrites(dev.id, ioCounts(dev.id).writes, 200, 'fio writing before the restart');
    const r = ublkctl(['restart', String(dev.id), '--state-dir', suite.stateDir()]);
    assert.equal(r.status, 0, r.stderr);
    const now = listDevices().find((d) => d.id === dev.id)!;
    assert.equal(now.state, 'LIVE');
    assert.notEqual(now.serverPid, dev.serverPid);
    assertTwoThreads(dev.id, now.serverPid);
    await waitForWrites(dev.id, writes, 200, 'fio writing after the restart');
    const result = await load.stop();
    assert.equal(result.status, 0, result.raw);
    assert.equal(result.jobs[0]!.error, 0);
  });

  it('without the feature, --threads-per-queue 2 is refused before any device is made, naming it', function () {
    if (suite.kernelHas(UBLK_F_PER_IO_DAEMON)) skipBecause(this, 'this kernel has UBLK_F_PER_IO_DAEMON (tests above)');
    const before = fs.readdirSync('/sys/class/ublk-char').length;
    const r = ublkctl(['add', '-t', 'null', '--size', '8MiB', '--threads-per-queue', '2'], suite.stateDir());
    assert.notEqual(r.status, 0);
    assert.match(
      r.stderr,
      /threadsPerQueue: 2 needs the kernel feature UBLK_F_PER_IO_DAEMON \(Linux 6\.16 or newer\); this kernel serves each queue from one thread/,
    );
    assert.equal(fs.readdirSync('/sys/class/ublk-char').length, before);
  });
});
