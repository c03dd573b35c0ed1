/**
 * Batched IO commands (spec.batchIo, UBLK_F_BATCH_IO, Linux 7.0+) against
 * the real driver: fio with verification on the native targets served by
 * the batch runner; a kill -9 of the server recovered with batched commands
 * again; a STOP with requests held; and, on a kernel without the feature,
 * the refusal before any device is made.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UblkControl } from '../../src/kernel/control';
import { UBLK_F_BATCH_IO } from '../../src/kernel/uapi';
import {
  DeviceTracker,
  fioVerifyArgs,
  fio,
  FioRun,
  inFlight,
  ioCounts,
  isAlive,
  listDevices,
  makeStateDir,
  requireUblk,
  startFio,
  threadNames,
  ublkctl,
  ublkctlJson,
  waitFor,
  waitForWrites,
} from './helpers';

interface Added {
  id: number;
  blockPath: string;
  serverPid: number;
  flagNames: string[];
}

describe('batched IO commands (real ublk driver)', function () {
  requireUblk(this);
  const devices = new DeviceTracker();
  let stateDir: string;
  let scratch: string;
  let features = 0n;
  let load: FioRun | undefined;

  before(async () => {
    const control = await UblkControl.open();
    features = control.features;
    control.close();
  });

  beforeEach(() => {
    stateDir = makeStateDir();
    scratch = fs.mkdtempSync('/tmp/ublk-ts-batch-');
  });

  afterEach(() => {
    load?.kill();
    load = undefined;
    devices.cleanup();
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  function add(args: string[]): Added {
    const dev = ublkctlJson<Added>(['add', ...args], stateDir);
    devices.add(dev.id);
    return dev;
  }

  function needsFeature(ctx: Mocha.Context): void {
    if ((features & UBLK_F_BATCH_IO) === 0n) {
      console.log('    skipped: this kernel lacks UBLK_F_BATCH_IO (Linux 7.0+); the refusal is tested below');
      ctx.skip();
    }
  }

  /** Deletes the device; the server's log says how many requests queue 0 served and how it ended. */
  function deleteAndCountServed(dev: Added): number {
    const del = ublkctl(['del', String(dev.id)], stateDir);
    assert.equal(del.status, 0, del.stderr);
    devices.forget(dev.id);
    const log = fs.readFileSync(path.join(stateDir, 'logs', `ublkb${dev.id}.log`), 'utf8');
    const m = /queue 0 ended after (\d+) requests(.*)$/m.exec(log);
    assert.ok(m, `queue 0 reports its end:\n${log}`);
    assert.equal(m[2], '', `queue 0 ends without an error:\n${log}`);
    return Number(m[1]);
  }

  for (const target of ['null', 'memory', 'loop'] as const) {
    it(`${target}: the batch runner serves the queue; fio ${target === 'null' ? 'runs without an error' : 'verifies what it wrote'}`, function () {
      needsFeature(this);
      const targetArgs =
        target === 'loop'
          ? ['-t', 'loop', '--file', path.join(scratch, 'disk.img'), '--create', '--size', '64MiB']
          : ['-t', target, '--size', '64MiB'];
      const dev = add([...targetArgs, '--batch-io', '--depth', '64']);
      assert.ok(dev.flagNames.includes('BATCH_IO'), dev.flagNames.join(' '));
      assert.ok(threadNames(dev.serverPid).includes(`ublk${dev.id}q0b`), threadNames(dev.serverPid).join(' '));
      const before = ioCounts(dev.id);
      const jobs =
        target === 'null'
          ? fio([
              '--name=null',
              `--filename=${dev.blockPath}`,
              '--ioengine=io_uring',
              '--direct=1',
              '--rw=randrw',
              '--bs=4k',
              '--iodepth=32',
              '--size=32M',
            ])
          : fio(fioVerifyArgs(target, dev.blockPath, '32M'));
      assert.equal(jobs[0]!.error, 0);
      if (target !== 'null') assert.ok(jobs[0]!.read.io_bytes > 0, 'fio read back and verified what it wrote');
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
    load = startFio([
      ...fioVerifyArgs('recover', dev.blockPath, '16M'),
      '--rate_iops=1500',
      '--time_based',
      '--runtime=3600',
      '--verify_backlog=64',
    ]);
    const writes = await waitForWrites(dev.id, ioCounts(dev.id).writes, 200, 'fio writing before the kill');
    process.kill(dev.serverPid, 'SIGSTOP');
    await waitFor(() => inFlight(dev.id) > 0, 60_000, `requests in flight in the stopped server of dev ${dev.id}`);
    process.kill(dev.serverPid, 'SIGKILL');
    await waitFor(
      () => listDevices().find((d) => d.id === dev.id)?.state === 'QUIESCED',
      60_000,
      `dev ${dev.id} QUIESCED after the kill`,
    );
    const recovered = ublkctl(['recover', String(dev.id), '--state-dir', stateDir]);
    assert.equal(recovered.status, 0, recovered.stderr);
    const now = listDevices().find((d) => d.id === dev.id)!;
    assert.equal(now.state, 'LIVE');
    assert.notEqual(now.serverPid, dev.serverPid);
    assert.ok(isAlive(now.serverPid));
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
    load = startFio([
      ...fioVerifyArgs('handover', dev.blockPath, '16M'),
      '--rate_iops=1500',
      '--time_based',
      '--runtime=3600',
      '--verify_backlog=64',
    ]);
    const writes = await waitForWrites(dev.id, ioCounts(dev.id).writes, 200, 'fio writing before the restart');
    const r = ublkctlJson<{ method: string }>(['restart', String(dev.id), '--state-dir', stateDir]);
    // QUIESCE_DEV fails a batch device's requests in flight (see handoverMethod).
    assert.equal(r.method, 'close');
    const now = listDevices().find((d) => d.id === dev.id)!;
    assert.equal(now.state, 'LIVE');
    assert.notEqual(now.serverPid, dev.serverPid);
    assert.ok(threadNames(now.serverPid).includes(`ublk${dev.id}q0b`), threadNames(now.serverPid).join(' '));
    // The old server ended cleanly (a failed commit would show here).
    const log = fs.readFileSync(path.join(stateDir, 'logs', `ublkb${dev.id}.log`), 'utf8');
    assert.match(log, /queue 0 ended after \d+ requests\n/, log);
    await waitForWrites(dev.id, writes, 200, 'fio writing after the restart');
    const result = await load.stop();
    assert.equal(result.status, 0, result.raw);
    assert.equal(result.jobs[0]!.error, 0);
  });

  it('without the feature, --batch-io is refused before any device is made, naming it', function () {
    if ((features & UBLK_F_BATCH_IO) !== 0n) {
      console.log('    skipped: this kernel has UBLK_F_BATCH_IO (tests above)');
      this.skip();
    }
    const before = fs.readdirSync('/sys/class/ublk-char').length;
    const r = ublkctl(['add', '-t', 'null', '--size', '8MiB', '--batch-io'], stateDir);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /batchIo: true needs the kernel feature UBLK_F_BATCH_IO \(Linux 7\.0 or newer\)/);
    assert.equal(fs.readdirSync('/sys/class/ublk-char').length, before);
  });
});
