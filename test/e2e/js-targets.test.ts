import { strict as assert } from 'node:assert';
import { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  ChildTracker,
  DeviceTracker,
  fio,
  listDevices,
  makeStateDir,
  requireUblk,
  ROOT,
  run,
  runAsync,
  serverPids,
  ublkctl,
  ublkctlJson,
  waitFor,
} from './helpers';
import { findTool } from '../vm';

const EXAMPLES = path.join(ROOT, 'dist', 'examples');
const TARGETS = path.join(ROOT, 'dist', 'test', 'fixtures', 'targets');
const MiB = 1024 * 1024;

interface AddedDevice {
  id: number;
  blockPath: string;
  logPath: string;
}

function verifyJobs(device: string, iodepth: number): void {
  const jobs = fio([
    '--name=verify',
    `--filename=${device}`,
    '--ioengine=io_uring',
    '--direct=1',
    '--rw=randwrite',
    '--bsrange=4k-128k',
    `--iodepth=${iodepth}`,
    '--numjobs=2',
    '--cpus_allowed=0-1',
    '--cpus_allowed_policy=split',
    '--size=16M',
    '--offset_increment=24M',
    '--verify=crc32c',
    '--do_verify=1',
    '--verify_fatal=1',
    '--group_reporting=0',
  ]);
  assert.equal(jobs.length, 2);
  for (const job of jobs) {
    assert.equal(job.error, 0);
    assert.ok(job.read.io_bytes > 0 && job.write.io_bytes > 0);
  }
}

describe('JavaScript targets (real ublk driver)', function () {
  requireUblk(this);
  const devices = new DeviceTracker();
  const stateDir = makeStateDir();
  afterEach(() => devices.cleanup());

  function add(module: string, extra: string[]): AddedDevice {
    const dev = ublkctlJson<AddedDevice>(['add', '-t', 'js', '--module', module, ...extra], stateDir);
    devices.add(dev.id);
    return dev;
  }

  it('JS null target: fio on 2 queues at iodepth 64 completes with zero errors', () => {
    const dev = add(path.join(EXAMPLES, 'null-js.js'), ['--size', '256MiB', '--queues', '2', '--depth', '64']);
    const jobs = fio([
      '--name=null',
      `--filename=${dev.blockPath}`,
      '--ioengine=io_uring',
      '--direct=1',
      '--rw=randrw',
      '--bs=4k',
      '--iodepth=64',
      '--numjobs=2',
      '--cpus_allowed=0-1',
      '--cpus_allowed_policy=split',
      '--time_based',
      '--runtime=3',
      '--group_reporting=0',
    ]);
    for (const job of jobs) {
      assert.equal(job.error, 0);
      assert.ok(job.read.total_ios > 0 && job.write.total_ios > 0);
    }
  });

  it('JS ramdisk (async handlers, shared memory): fio verify on 2 queues at iodepth 64 has zero errors', () => {
    const dev = add(path.join(EXAMPLES, 'ramdisk.js'), ['--size', '64MiB', '--queues', '2', '--depth', '64']);
    verifyJobs(dev.blockPath, 64);
  });

  it('out-of-order completion: random delays under fio verify give zero errors', () => {
    const dev = add(path.join(TARGETS, 'slow-ramdisk.js'), ['--size', '64MiB', '--queues', '2', '--depth', '64']);
    verifyJobs(dev.blockPath, 64);
  });

  it('a handler that throws on every 100th block fails exactly those requests; the device stays up', () => {
    const dev = add(path.join(TARGETS, 'flaky.js'), [
      '--size',
      '64MiB',
      '--options',
      '{"failEvery":100,"badResultBlock":2000}',
    ]);
    const jobs = fio([
      '--name=flaky',
      `--filename=${dev.blockPath}`,
      '--ioengine=io_uring',
      '--direct=1',
      '--rw=read',
      '--bs=4k',
      '--iodepth=1',
      '--size=4000k',
      '--continue_on_error=io',
    ]) as Array<{ total_err?: number; first_error?: number; read: { total_ios: number } }>;
    assert.equal(jobs[0]!.total_err, 10, 'blocks 99, 199, ..., 999 failed');
    assert.equal(jobs[0]!.first_error, 5, 'as EIO');
    const bad = run('dd', [`if=${dev.blockPath}`, 'of=/dev/null', 'bs=4k', 'count=1', 'skip=2000', 'iflag=direct'], {
      allowFail: true,
    });
    assert.notEqual(bad.status, 0, 'a result that is no byte count fails that request');
    const good = run('dd', [`if=${dev.blockPath}`, 'of=/dev/null', 'bs=4k', 'count=50', 'skip=3000', 'iflag=direct'], {
      allowFail: true,
    });
    assert.equal(good.status, 0, 'later IO succeeds');
    assert.ok(listDevices().some((d) => d.id === dev.id && d.state === 'LIVE'));
    const log = fs.readFileSync(dev.logPath, 'utf8');
    assert.match(log, new RegExp(`dev ${dev.id} queue 0 tag \\d+: read at ${99 * 4096} failed: refusing block 99`));
    assert.match(log, /read at 8192000: result NaN is not an integer; failing it with EIO/);
  });

  it("a target's options stay out of the server's command line and its log", () => {
    const secret = 'hunter2-e2e-secret';
    const dev = add(path.join(EXAMPLES, 'null-js.js'), [
      '--size',
      '16MiB',
      '--options',
      JSON.stringify({ password: secret }),
    ]);
    const pid = listDevices().find((d) => d.id === dev.id)!.serverPid;
    const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    assert.match(cmdline, /server-main\.js/);
    assert.ok(!cmdline.includes(secret), cmdline);
    const log = fs.readFileSync(dev.logPath, 'utf8');
    assert.match(log, /"options":"<1 not logged: password>"/);
    assert.ok(!log.includes(secret), log);
  });

  it('a handler that fails every request logs the first few failures and sums up the rest', () => {
    const dev = add(path.join(TARGETS, 'flaky.js'), ['--size', '64MiB', '--options', '{"failEvery":1}']);
    const jobs = fio([
      '--name=failing',
      `--filename=${dev.blockPath}`,
      '--ioengine=io_uring',
      '--direct=1',
      // One request at a time, so the block layer never merges two of fio's reads into one
      // request (7.3 does, at depth 4): every fio error is then one handler failure.
      '--rw=read',
      '--bs=4k',
      '--iodepth=1',
      '--size=8000k',
      '--continue_on_error=io',
    ]) as Array<{ total_err?: number }>;
    const failed = jobs[0]!.total_err!;
    assert.ok(failed >= 1000, `${failed} requests failed`);
    // Removing the device ends the queues, which writes the summary of what the last interval left out.
    const del = ublkctl(['del', String(dev.id)], stateDir);
    assert.equal(del.status, 0, del.stderr);
    devices.forget(dev.id);
    const log = fs.readFileSync(dev.logPath, 'utf8');
    const written = log.split('\n').filter((l) => / failed: refusing block \d+$/.test(l)).length;
    const suppressed = [
      ...log.matchAll(/suppressed (\d+) similar messages? in [\d.]+ s, the first: .* failed: refusing block/g),
    ];
    assert.ok(suppressed.length > 0, log.slice(-2000));
    // The kernel's partition scan and udev's probes read the device too: at least fio's failures are counted.
    const counted = written + suppressed.reduce((n, m) => n + Number(m[1]), 0);
    assert.ok(counted >= failed && counted < failed + 200, `${counted} failures counted, fio saw ${failed}`);
    assert.ok(written < failed / 4, `${written} of ${failed} failures written one by one`);
  });

  /** How many requests of each kind (`write`, `write fua`, `flush`, ...) op-log.js recorded. */
  function loggedOps(log: string): Map<string, number> {
    const counts = new Map<string, number>();
    for (const line of fs.readFileSync(log, 'utf8').split('\n').filter(Boolean)) {
      counts.set(line, (counts.get(line) ?? 0) + 1);
    }
    return counts;
  }

  function writeCache(id: number): string {
    return fs.readFileSync(`/sys/block/ublkb${id}/queue/write_cache`, 'utf8').trim();
  }

  it('fsync sends a JS target flushes and O_DSYNC writes arrive as FUA (write back); a target declaring volatileCache: false is write through', () => {
    const scratch = fs.mkdtempSync('/tmp/ublk-ts-oplog-');
    try {
      const devs = {
        back: add(path.join(TARGETS, 'op-log.js'), [
          '--size',
          '16MiB',
          '--options',
          JSON.stringify({ log: `${scratch}/back.log` }),
        ]),
        through: add(path.join(TARGETS, 'op-log-write-through.js'), [
          '--size',
          '16MiB',
          '--options',
          JSON.stringify({ log: `${scratch}/through.log` }),
        ]),
      };
      assert.equal(writeCache(devs.back.id), 'write back');
      assert.equal(writeCache(devs.through.id), 'write through');
      for (const [name, dev] of Object.entries(devs)) {
        const log = `${scratch}/${name}.log`;
        fs.writeFileSync(log, '');
        run('dd', [
          'if=/dev/zero',
          `of=${dev.blockPath}`,
          'bs=4k',
          'count=4',
          'oflag=direct',
          'conv=fsync',
          'status=none',
        ]);
        const afterFsync = loggedOps(log);
        fs.writeFileSync(log, '');
        run('dd', ['if=/dev/zero', `of=${dev.blockPath}`, 'bs=4k', 'count=4', 'oflag=direct,dsync', 'status=none']);
        const afterDsync = loggedOps(log);
        if (name === 'back') {
          assert.ok((afterFsync.get('flush') ?? 0) >= 1, `fsync reached the handler as a flush: ${[...afterFsync]}`);
          assert.ok((afterDsync.get('write fua') ?? 0) >= 1, `O_DSYNC writes arrived with FUA: ${[...afterDsync]}`);
        } else {
          assert.equal(afterFsync.get('flush'), undefined, 'a write-through device gets no flush');
          assert.equal(afterDsync.get('write fua'), undefined, 'nor FUA writes');
          assert.ok((afterDsync.get('write') ?? 0) >= 4, 'the writes themselves arrive');
        }
      }
    } finally {
      devices.cleanup();
      fs.rmSync(scratch, { recursive: true, force: true });
    }
  });

  /** Why device-mapper cannot be used here, or undefined when it can (the test VM loads dm_mod at boot). */
  function deviceMapperUnavailable(): string | undefined {
    if (fs.existsSync('/sys/module/dm_mod')) return undefined;
    return findTool('dmsetup') ? 'the dm_mod module is not loaded' : 'dmsetup is not installed';
  }

  it('a read-only JS device: writes fail, from user space (the kernel refuses) and from inside the kernel (device-mapper), and the handler sees none', function () {
    const scratch = fs.mkdtempSync('/tmp/ublk-ts-oplog-');
    const log = `${scratch}/ro.log`;
    const mapped = `ublk-ts-ro-${process.pid}`;
    try {
      const dev = add(path.join(TARGETS, 'op-log.js'), [
        '--size',
        '16MiB',
        '--read-only',
        '--options',
        JSON.stringify({ log }),
      ]);
      assert.equal(run('blockdev', ['--getro', dev.blockPath]).stdout.trim(), '1');
      fs.writeFileSync(log, '');
      const direct = run('dd', ['if=/dev/zero', `of=${dev.blockPath}`, 'bs=4k', 'count=1', 'oflag=direct'], {
        allowFail: true,
      });
      assert.notEqual(direct.status, 0, 'a write from user space is refused by the kernel');
      const zeroOut = run('blkdiscard', ['-z', '-o', '0', '-l', '4096', dev.blockPath], { allowFail: true });
      assert.notEqual(zeroOut.status, 0, 'so is BLKZEROOUT');
      const unavailable = deviceMapperUnavailable();
      // In the test VM device-mapper is always there: its absence is a broken harness, not a skip.
      if (unavailable && process.env.UBLK_TS_IN_VM === '1') assert.fail(`device-mapper: ${unavailable}`);
      if (unavailable) {
        console.log(`      skipped the device-mapper half: ${unavailable}`);
      } else {
        // A bio submitted from inside the kernel to a read-only disk is only warned about
        // ("Trying to write to read-only block-device"): it reaches the server.
        const sectors = (16 * 1024 * 1024) / 512;
        run('dmsetup', ['--noudevsync', 'create', mapped, '--table', `0 ${sectors} linear ${dev.blockPath} 0`]);
        run('dmsetup', ['mknodes', mapped], { allowFail: true });
        const through = run('dd', ['if=/dev/zero', `of=/dev/mapper/${mapped}`, 'bs=4k', 'count=4', 'oflag=direct'], {
          allowFail: true,
        });
        assert.notEqual(through.status, 0, `a write through device-mapper fails: ${through.stderr}`);
        assert.match(fs.readFileSync(dev.logPath, 'utf8'), /write at 0 on a read-only device: failed with EROFS/);
      }
      const seen = [...loggedOps(log).keys()].filter((op) => op !== 'read' && op !== 'flush');
      assert.deepEqual(seen, [], 'the handler saw no write, discard or write-zeroes');
    } finally {
      run('dmsetup', ['--noudevsync', 'remove', mapped], { allowFail: true });
      devices.cleanup();
      fs.rmSync(scratch, { recursive: true, force: true });
    }
  });

  for (const [what, module, message] of [
    ['a module that cannot be loaded', '/nonexistent/target.js', /target\.module: .*does not exist/],
    [
      'a module without createTarget',
      path.join(TARGETS, 'not-a-target.js'),
      /does not export a target: expected a createTarget\(ctx\) function/,
    ],
  ] as Array<[string, string, RegExp]>) {
    it(`refuses ${what} before any device exists`, () => {
      const before = { devices: listDevices().map((d) => d.id), servers: serverPids() };
      const r = ublkctl(['add', '-t', 'js', '--module', module, '--size', '16MiB', '--state-dir', stateDir]);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, message);
      assert.deepEqual(
        listDevices().map((d) => d.id),
        before.devices,
      );
      assert.deepEqual(serverPids(), before.servers);
    });
  }
});

describe('JavaScript examples, as the README documents them (real ublk driver)', function () {
  requireUblk(this);
  const children = new ChildTracker();
  const devices = new DeviceTracker();
  afterEach(async () => {
    await children.stopAll();
    devices.cleanup();
  });

  async function serve(args: string[]): Promise<{
    child: ChildProcess;
    id: number;
    blockPath: string;
    output: () => string;
    exited: Promise<number | null>;
  }> {
    const child = children.spawn(process.execPath, args);
    let out = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    await waitFor(() => /is LIVE/.test(out) || child.exitCode !== null, 120_000, `${args.join(' ')} to report LIVE`);
    const m = /dev (\d+): (\/dev\/ublkb\d+) is LIVE/.exec(out);
    assert.ok(m, out);
    devices.add(Number(m[1]));
    return { child, id: Number(m[1]), blockPath: m[2]!, output: () => out, exited };
  }

  /**
   * Writes and reads back `mib` MiB; a failure shows what the serving example printed. The dd
   * runs are asynchronous so the example's log is read while they run, and a short pause before
   * reporting a failure lets the last lines (the failed request) arrive.
   */
  async function roundTrip(blockPath: string, scratch: string, mib: number, served: () => string): Promise<void> {
    const reported = async (): Promise<string> => {
      await new Promise((r) => setTimeout(r, 500));
      return served();
    };
    run('dd', ['if=/dev/urandom', `of=${scratch}/payload`, 'bs=1M', `count=${mib}`, 'status=none']);
    const write = await runAsync(
      'dd',
      [`if=${scratch}/payload`, `of=${blockPath}`, 'bs=1M', 'oflag=direct', 'status=none'],
      { allowFail: true },
    );
    if (write.status !== 0) assert.fail(`data writes: ${write.stderr}\nthe example printed:\n${await reported()}`);
    const back = await runAsync(
      'bash',
      ['-c', `cmp <(dd if=${blockPath} bs=1M count=${mib} iflag=direct status=none) ${scratch}/payload`],
      { allowFail: true },
    );
    if (back.status !== 0) {
      assert.fail(`data reads back: ${back.stdout}${back.stderr}\nthe example printed:\n${await reported()}`);
    }
  }

  it('null-js.js add / del ID', async () => {
    const s = await serve([path.join(EXAMPLES, 'null-js.js'), 'add', '64MiB']);
    const del = run(process.execPath, [path.join(EXAMPLES, 'null-js.js'), 'del', String(s.id)]);
    assert.match(del.stdout, /deleted/);
    assert.equal(await s.exited, 0, s.output());
  });

  it('ramdisk.js add SIZE QUEUES, data round trip, Ctrl-C deletes', async () => {
    const scratch = fs.mkdtempSync('/tmp/ublk-ts-ex-');
    const s = await serve([path.join(EXAMPLES, 'ramdisk.js'), 'add', '32MiB', '2']);
    await roundTrip(s.blockPath, scratch, 8, s.output);
    s.child.kill('SIGINT');
    assert.equal(await s.exited, 0, s.output());
    assert.ok(!fs.existsSync(s.blockPath));
  });

  it('loop.js add FILE: writes land in the file through target IO on the queue ring', async () => {
    const scratch = fs.mkdtempSync('/tmp/ublk-ts-ex-');
    const file = path.join(scratch, 'backing.img');
    run('truncate', ['-s', '32M', file]);
    const s = await serve([path.join(EXAMPLES, 'loop.js'), 'add', file]);
    await roundTrip(s.blockPath, scratch, 8, s.output);
    s.child.kill('SIGINT');
    assert.equal(await s.exited, 0, s.output());
    const same = run('bash', ['-c', `cmp -n ${8 * MiB} ${file} ${scratch}/payload`], { allowFail: true });
    assert.equal(same.status, 0, 'the backing file holds the data');
  });

  it('http-store.js add URL: blocks stored as objects in an HTTP store', async () => {
    const scratch = fs.mkdtempSync('/tmp/ublk-ts-ex-');
    const store = children.spawn(process.execPath, [path.join(EXAMPLES, 'object-store-server.js'), '18080'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      await new Promise<void>((r) => store.stdout!.once('data', () => r()));
      const s = await serve([path.join(EXAMPLES, 'http-store.js'), 'add', 'http://127.0.0.1:18080/disk1', '16MiB']);
      await roundTrip(s.blockPath, scratch, 4, s.output);
      s.child.kill('SIGINT');
      assert.equal(await s.exited, 0, s.output());
      const obj = await fetch('http://127.0.0.1:18080/disk1/0');
      assert.equal(obj.status, 200, 'block 0 is an object in the store');
      const local = fs.readFileSync(`${scratch}/payload`).subarray(0, 4096);
      assert.ok(Buffer.from(await obj.arrayBuffer()).equals(local));
    } finally {
      store.kill();
    }
  });
});
