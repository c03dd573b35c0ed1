/**
 * Batched IO commands (spec.batchIo, UBLK_F_BATCH_IO, Linux 7.0+) against
 * the real driver: fio with verification on the native targets served by
 * the batch runner; a kill -9 of the server recovered with batched commands
 * again; a STOP with requests held; and, on a kernel without the feature,
 * the refusal before any device is made.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { UBLK_F_BATCH_IO } from '../../src/kernel/uapi';
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
  ublkctlJson,
  waitForState,
  waitForWrites,
  useDeviceSuite,
} from './helpers';

describe('batched IO commands (real ublk driver)', function () {
  requireUblk(this);
  const suite = useDeviceSuite(this, '/tmp/ublk-ts-batch-');
  const { add } = suite;

  function needsFeature(ctx: Mocha.Context): void {
    if (!suite.kernelHas(UBLK_F_BATCH_IO)) {
      skipBecause(ctx, 'this kernel lacks UBLK_F_BATCH_IO (Linux 7.0+); the refusal is tested below');
    }
  }

  /** Deletes the device; the server's log says how many requests queue 0 served and how it ended. */
  function deleteAndCountServed(dev: AddedDevice): number {
    suite.del(dev.id);
    const log = suite.serverLog(dev.id);
    const m = /queue 0 ended after (\d+) requests(.*)$/m.exec(log);
    assert.ok(m, `queue 0 reports its end:\n${log}`);
    assert.equal(m[2], '', `queue 0 ends without an error:\n${log}`);
    return Number(m[1]);
  }

  for (const target of ['null', 'memory', 'loop'] as const) {
    it(`${target}: the batch runner serves the queue; fio ${target === 'null' ? 'runs without an error' : 'verifies what it wrote'}`, function () {
      needsFeature(this);
      const dev = add([...nativeTargetArgs(target, suite.scratch()), '--batch-io', '--depth', '64']);
      assert.ok(dev.flagNames.includes('BATCH_IO'), dev.flagNames.join(' '));
      assert.ok(threadNames(dev.serverPid).includes(`ublk${dev.id}q0b`), threadNames(dev.serverPid).join(' '));
      const before = ioCounts(dev.id);
      fioOnNativeTarget(target, dev.blockPath);
      const after = ioCounts(dev.id);
      const served = deleteAndCountServed(dev);
      assert.ok(
        served >= after.reads + after.writes - before.reads - before.writes,
        `the queue served every request fio made (${served})`,
      );
    });
  }

  it('memory, reissue: kill -9 during fio verify; ublkctl recover serves it with batched commands again', async function () {
    needsFeature(this);
    const dev = add(['-t', 'memory', '--size', '64MiB', '--batch-io', '--recovery', 'reissue']);
    const load = suite.track(startFio(fioVerifiedLoadArgs('recover', dev.blockPath, '16M', '1500')));
    const writes = await waitForWrites(dev.id, ioCounts(dev.id).writes, 200, 'fio writing before the kill');
    await killServerMidIo(dev.id, dev.serverPid);
    await waitForState(dev.id, 'QUIESCED', `dev ${dev.id} QUIESCED after the kill`);
    const now = suite.recover(dev);
    assert.ok(threadNames(now.serverPid).includes(`ublk${dev.id}q0b`), threadNames(now.serverPid).join(' '));
    await waitForWrites(dev.id, writes, 200, 'fio writing after recovery');
    const result = await load.stop();
    assert.equal(result.status, 0, result.raw);
    assert.equal(result.jobs[0]!.error, 0);
    assert.ok(result.jobs[0]!.read.io_bytes > 0, 'fio read back and verified what it wrote');
  });

  it('ublkctl restart during fio verify hands the device over by closing the old server queues; fio sees no error', async function () {
    needsFeature(this);
    const dev = add(['-t', 'memory', '--size', '64MiB', '--batch-io']);
    const load = suite.track(startFio(fioVerifiedLoadArgs('handover', dev.blockPath, '16M', '1500')));
    const writes = await waitForWrites(dev.id, ioCounts(dev.id).writes, 200, 'fio writing before the restart');
    const r = ublkctlJson<{ method: string }>(['restart', String(dev.id), '--state-dir', suite.stateDir()]);
    // QUIESCE_DEV fails a batch device's requests in flight (see handoverMethod).
    assert.equal(r.method, 'close');
    const now = listDevices().find((d) => d.id === dev.id)!;
    assert.equal(now.state, 'LIVE');
    assert.notEqual(now.serverPid, dev.serverPid);
    assert.ok(threadNames(now.serverPid).includes(`ublk${dev.id}q0b`), threadNames(now.serverPid).join(' '));
    // The old server ended cleanly (a failed commit would show here).
    const log = suite.serverLog(dev.id);
    assert.match(log, /queue 0 ended after \d+ requests\n/, log);
    await waitForWrites(dev.id, writes, 200, 'fio writing after the restart');
    const result = await load.stop();
    assert.equal(result.status, 0, result.raw);
    assert.equal(result.jobs[0]!.error, 0);
  });

  it('without the feature, --batch-io is refused before any device is made, naming it', function () {
    if (suite.kernelHas(UBLK_F_BATCH_IO)) skipBecause(this, 'this kernel has UBLK_F_BATCH_IO (tests above)');
    const before = fs.readdirSync('/sys/class/ublk-char').length;
    const r = ublkctl(['add', '-t', 'null', '--size', '8MiB', '--batch-io'], suite.stateDir());
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /batchIo: true needs the kernel feature UBLK_F_BATCH_IO \(Linux 7\.0 or newer\)/);
    assert.equal(fs.readdirSync('/sys/class/ublk-char').length, before);
  });
});
