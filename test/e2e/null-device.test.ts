import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UblkControl } from '../../src/kernel/control';
import { UblkDevice } from '../../src/device/device';
import { maxQueues, normalizeDeviceSpec } from '../../src/spec/device-spec';
import { UblkError } from '../../src/errors';
import {
  DeviceTracker,
  fio,
  isAlive,
  listDevices,
  makeStateDir,
  requireUblk,
  run,
  serverPids,
  ublkctl,
  ublkctlJson,
  waitFor,
} from './helpers';

interface AddedDevice {
  id: number;
  state: string;
  queues: number;
  depth: number;
  blockPath: string;
  charPath: string;
  serverPid: number;
  logPath: string;
}

describe('null target through ublkctl (real ublk driver)', function () {
  requireUblk(this);
  const devices = new DeviceTracker();
  const stateDir = makeStateDir();
  afterEach(() => devices.cleanup());

  it('adds a LIVE device with the requested size, queue count and depth', () => {
    const dev = ublkctlJson<AddedDevice>(
      ['add', '-t', 'null', '--size', '256MiB', '--queues', '2', '--depth', '64'],
      stateDir,
    );
    devices.add(dev.id);
    assert.equal(dev.state, 'LIVE');
    assert.equal(run('blockdev', ['--getsize64', dev.blockPath]).stdout.trim(), String(256 * 1024 * 1024));
    const hwQueues = fs.readdirSync(`/sys/block/ublkb${dev.id}/mq`).filter((n) => /^\d+$/.test(n));
    assert.equal(hwQueues.length, 2);
    for (const q of hwQueues) {
      assert.equal(fs.readFileSync(`/sys/block/ublkb${dev.id}/mq/${q}/nr_tags`, 'utf8').trim(), '64');
    }
    const listed = listDevices().find((d) => d.id === dev.id);
    assert.ok(listed, 'ublkctl list shows the new device');
    assert.equal(listed.state, 'LIVE');
    assert.equal(listed.sizeBytes, 256 * 1024 * 1024);
    assert.equal(listed.serverPid, dev.serverPid);
  });

  it('serves fio randread and randwrite with 2 jobs over 2 queues without errors; del removes it and the server exits 0', async () => {
    const dev = ublkctlJson<AddedDevice>(
      ['add', '-t', 'null', '--size', '1GiB', '--queues', '2', '--depth', '64'],
      stateDir,
    );
    devices.add(dev.id);
    const common = [
      `--filename=${dev.blockPath}`,
      '--ioengine=io_uring',
      '--direct=1',
      '--bs=4k',
      '--iodepth=32',
      '--numjobs=2',
      '--cpus_allowed=0-1',
      '--cpus_allowed_policy=split',
      '--time_based',
      '--runtime=3',
      '--group_reporting=0',
    ];
    for (const rw of ['randread', 'randwrite']) {
      const jobs = fio([`--name=${rw}`, `--rw=${rw}`, ...common]);
      assert.equal(jobs.length, 2);
      for (const job of jobs) {
        assert.equal(job.error, 0, `${rw} job error`);
        const ios = rw === 'randread' ? job.read.total_ios : job.write.total_ios;
        assert.ok(ios > 0, `${rw} job did IO`);
      }
    }

    const del = ublkctl(['del', String(dev.id)], stateDir);
    assert.equal(del.status, 0, del.stderr);
    devices.forget(dev.id);
    assert.ok(!fs.existsSync(dev.blockPath), 'block node removed');
    assert.ok(!fs.existsSync(dev.charPath), 'char node removed');
    await waitFor(() => !isAlive(dev.serverPid), 10_000, 'the server to exit');
    const log = fs.readFileSync(dev.logPath, 'utf8');
    assert.match(log, /exiting with status 0/);
    // Both queues served IO: fio's jobs ran on different CPUs, mapped to different queues.
    for (const qid of [0, 1]) {
      const m = new RegExp(`queue ${qid} ended after (\\d+) requests\\n`).exec(log);
      assert.ok(m, `queue ${qid} exit logged`);
      assert.ok(Number(m[1]) > 0, `queue ${qid} served requests`);
    }
  });

  it('honours a fixed id and refuses a second device with the same id, leaving nothing behind', () => {
    const free = firstFreeId();
    const dev = ublkctlJson<AddedDevice>(['add', '-t', 'null', '--size', '64MiB', '--id', String(free)], stateDir);
    devices.add(dev.id);
    assert.equal(dev.id, free);
    assert.equal(dev.blockPath, `/dev/ublkb${free}`);
    assert.ok(fs.existsSync(dev.blockPath));

    const before = { devices: listDevices().map((d) => d.id), servers: serverPids() };
    const again = ublkctl(['add', '-t', 'null', '--size', '64MiB', '--id', String(free)], stateDir);
    assert.equal(again.status, 1);
    assert.match(again.stderr, new RegExp(`ADD_DEV dev ${free}: EEXIST \\(device id in use\\)`));
    assert.deepEqual(
      listDevices().map((d) => d.id),
      before.devices,
    );
    assert.deepEqual(serverPids(), before.servers);
    assert.equal(listDevices().find((d) => d.id === free)?.state, 'LIVE', 'the first device is untouched');
  });

  const invalid: Array<[string, string[], RegExp]> = [
    ['depth 0', ['--depth', '0'], /invalid depth: must be between 1 and 4096, got 0/],
    ['depth above 4096', ['--depth', '4097'], /invalid depth: must be between 1 and 4096, got 4097/],
    ['queues 0', ['--queues', '0'], /invalid queues: must be between 1 and \d+, got 0/],
    [
      'queues above the kernel maximum',
      ['--queues', String(maxQueues() + 1)],
      /invalid queues: must be between 1 and \d+/,
    ],
    [
      'a size that is not a multiple of the block size',
      ['--size', '1000'],
      /invalid size: must be a multiple of the logical block size \(512\), got 1000/,
    ],
    ['an unknown target', ['-t', 'floppy'], /invalid target: unknown target "floppy": expected one of null/],
  ];
  for (const [what, args, message] of invalid) {
    it(`rejects ${what} with a clear error and leaves nothing behind`, () => {
      const before = { devices: listDevices().map((d) => d.id), servers: serverPids(), logs: logFiles(stateDir) };
      const base = ['add', '-t', 'null', '--size', '64MiB'];
      const r = ublkctl([...mergeArgs(base, args)], stateDir);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, message);
      assert.deepEqual(
        listDevices().map((d) => d.id),
        before.devices,
      );
      assert.deepEqual(serverPids(), before.servers);
      assert.deepEqual(logFiles(stateDir), before.logs);
    });
  }
});

describe('library-made devices (real ublk driver)', function () {
  requireUblk(this);

  it('ublkctl list shows a device created in-process with UblkDevice.create', async () => {
    const device = await UblkDevice.create(
      normalizeDeviceSpec({ target: 'null', size: '32MiB', queues: 1, depth: 16 }),
    );
    try {
      const listed = listDevices().find((d) => d.id === device.id);
      assert.ok(listed, 'listed');
      assert.equal(listed.state, 'LIVE');
      assert.equal(listed.serverPid, process.pid);
      assert.equal(listed.sizeBytes, 32 * 1024 * 1024);
      const data = run('dd', [`if=${device.blockPath}`, 'of=/dev/null', 'bs=4k', 'count=256', 'iflag=direct']);
      assert.match(data.stderr, /1048576 bytes/);
    } finally {
      const exits = await device.remove();
      assert.ok(
        exits.every((e) => e.error === undefined),
        JSON.stringify(exits),
      );
    }
    assert.ok(!listDevices().some((d) => d.id === device.id), 'deleted');
  });

  it('with io_uring disabled by sysctl, says so instead of blaming the first ublk command', function () {
    const setting = '/proc/sys/kernel/io_uring_disabled';
    if (!fs.existsSync(setting)) this.skip(); // Linux 6.6+
    const before = fs.readFileSync(setting, 'utf8').trim();
    fs.writeFileSync(setting, '2');
    let r;
    try {
      r = ublkctl(['features']);
    } finally {
      fs.writeFileSync(setting, before);
    }
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /cannot set up an io_uring \(EPERM\).*io_uring is disabled on this host/);
    assert.doesNotMatch(r.stderr, /GET_FEATURES/);
  });

  it('reports kernel refusals as UblkError with command, device and errno name', async () => {
    const control = await UblkControl.open();
    try {
      await assert.rejects(control.getDeviceInfo(999_999), (err: unknown) => {
        assert.ok(err instanceof UblkError);
        assert.equal(err.devId, 999_999);
        assert.equal(err.code, 'ENODEV');
        assert.match(err.message, /^GET_DEV_INFO2? dev 999999: ENODEV/);
        return true;
      });
      const added = await control.addDevice({ queues: 1, depth: 8, maxIoSize: 64 * 1024 });
      try {
        assert.equal(added.state, 'DEAD');
        await assert.rejects(
          control.addDevice({ id: added.id, queues: 1, depth: 8, maxIoSize: 64 * 1024 }),
          (err: unknown) => {
            assert.ok(err instanceof UblkError);
            assert.equal(err.message, `ADD_DEV dev ${added.id}: EEXIST (device id in use)`);
            return true;
          },
        );
        const features = control.featureNames;
        assert.ok(features.includes('CMD_IOCTL_ENCODE'), features.join(' '));
      } finally {
        await control.deleteDevice(added.id);
      }
    } finally {
      control.close();
    }
  });
});

function firstFreeId(): number {
  const used = new Set(fs.existsSync('/sys/class/ublk-char') ? fs.readdirSync('/sys/class/ublk-char') : []);
  let id = 10;
  while (used.has(`ublkc${id}`)) id++;
  return id;
}

function logFiles(stateDir: string): string[] {
  const dir = path.join(stateDir, 'logs');
  return fs.existsSync(dir) ? fs.readdirSync(dir).sort() : [];
}

/** Replaces options in `base` with the ones in `override` (same flag), appending new ones. */
function mergeArgs(base: string[], override: string[]): string[] {
  const out = [...base];
  for (let i = 0; i < override.length; i += 2) {
    const at = out.indexOf(override[i]!);
    if (at >= 0) out[at + 1] = override[i + 1]!;
    else out.push(override[i]!, override[i + 1]!);
  }
  return out;
}
