/**
 * The IO scheduler a server sets on its disk (spec.scheduler) against the
 * real driver: none by default, a named one, the kernel's own choice left
 * alone, a scheduler the kernel cannot load (logged, the device serves
 * on), and a handover putting back what the spec says after a hand-made change.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import { activeScheduler, parseSchedulerList, schedulerFile } from '../../src/device/scheduler';
import { AddedDevice, fio, listDevices, requireUblk, ublkctl, useDeviceSuite } from './helpers';

describe('IO scheduler of the ublk disk (real ublk driver)', function () {
  requireUblk(this);
  const suite = useDeviceSuite(this, '/tmp/ublk-ts-scheduler-');
  const add = (args: string[]): AddedDevice => suite.add(['-t', 'null', '--size', '64MiB', ...args]);
  const serverLog = (id: number): string => suite.serverLog(id);

  it('sets none by default, where the kernel would have given a one-queue disk mq-deadline; ublkctl list shows it', () => {
    const dev = add([]);
    assert.equal(activeScheduler(dev.id), 'none');
    assert.equal(listDevices().find((d) => d.id === dev.id)?.scheduler, 'none');
    assert.match(serverLog(dev.id), /IO scheduler none\n/);
  });

  it('kernel-default leaves the kernel its choice: mq-deadline for one queue', () => {
    const dev = add(['--scheduler', 'kernel-default']);
    assert.equal(activeScheduler(dev.id), 'mq-deadline');
    assert.match(serverLog(dev.id), /IO scheduler mq-deadline \(the kernel's\)/);
  });

  it('sets a named scheduler on a two-queue disk, whose kernel default is none', () => {
    const dev = add(['--scheduler', 'mq-deadline', '--queues', '2']);
    assert.equal(activeScheduler(dev.id), 'mq-deadline');
    const [job] = fio([
      '--name=sched',
      `--filename=${dev.blockPath}`,
      '--rw=randread',
      '--bs=4k',
      '--direct=1',
      '--ioengine=io_uring',
      '--iodepth=8',
      '--size=16M',
      '--io_size=16M',
    ]);
    assert.equal(job!.error, 0);
  });

  it('a scheduler the kernel cannot load is logged with the reason, and the device serves as it is', function () {
    const offered = parseSchedulerList(fs.readFileSync(schedulerFile(add([]).id), 'utf8')).offered;
    if (offered.includes('bfq')) {
      console.log('    skipped: this kernel already has bfq loaded, so no scheduler here is unavailable');
      this.skip();
    }
    const dev = add(['--scheduler', 'bfq']);
    const active = activeScheduler(dev.id);
    if (active === 'bfq') {
      console.log('    skipped: the kernel loaded bfq on demand, so the failure cannot be made here');
      this.skip();
    }
    assert.equal(active, 'mq-deadline', "the kernel's own choice stays");
    assert.match(serverLog(dev.id), /IO scheduler bfq not set, it has mq-deadline: the kernel has no bfq scheduler/);
    const state = listDevices().find((d) => d.id === dev.id)?.state;
    assert.equal(state, 'LIVE');
  });

  it("a handover puts back the spec's scheduler after someone changed it by hand", () => {
    const dev = add(['--recovery', 'reissue']);
    fs.writeFileSync(schedulerFile(dev.id), 'mq-deadline');
    assert.equal(activeScheduler(dev.id), 'mq-deadline');
    const r = ublkctl(['restart', String(dev.id), '--state-dir', suite.stateDir(), '--insecure-permissions', '--json']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(activeScheduler(dev.id), 'none');
  });
});
