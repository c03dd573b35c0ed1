import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  DeviceTracker,
  fio,
  FioRun,
  inFlight,
  ioCounts,
  isAlive,
  listDevices,
  makeStateDir,
  manifest,
  RECONCILE,
  requireUblk,
  run,
  startFio,
  ublkctl,
  ublkctlJson,
  waitFor,
  waitForWrites,
} from './helpers';

const MiB = 1024 * 1024;
/** The reconciler counts a server that died sooner than this after going LIVE as a crash loop (STABLE_MS, plus margin). */
const STABLE_AFTER_MS = 3_500;

interface AddedDevice {
  id: number;
  blockPath: string;
  serverPid: number;
  flagNames: string[];
}

interface ListedDataPath {
  id: number;
  state: string;
  serverPid: number;
  flagNames: string[];
  dataPath: string;
}

/** Whether this kernel offers AUTO_BUF_REG, as GET_FEATURES says (not which VM leg this is). */
function kernelHasAutoBufReg(): boolean {
  return ublkctlJson<{ names: string[] }>(['features']).names.includes('AUTO_BUF_REG');
}

function sha256(file: string, bytes: number): string {
  const direct = file.startsWith('/dev/') ? ' iflag=direct' : '';
  return run('bash', [
    '-c',
    `set -o pipefail; dd if=${file} bs=1M count=${bytes / MiB}${direct} status=none | sha256sum`,
  ]).stdout.split(' ')[0]!;
}

/** fio write-then-verify over block sizes 4 KiB..512 KiB and iodepths 1..128, two jobs on two queues. */
function fioVerify(device: string): void {
  const cases: Array<[string, number, string]> = [
    ['4k', 1, '4M'],
    ['64k', 32, '16M'],
    ['512k', 128, '24M'],
    ['4k-512k', 16, '16M'],
  ];
  for (const [bs, iodepth, size] of cases) {
    const jobs = fio([
      '--name=verify',
      `--filename=${device}`,
      '--ioengine=io_uring',
      '--direct=1',
      '--rw=randwrite',
      bs.includes('-') ? `--bsrange=${bs}` : `--bs=${bs}`,
      `--iodepth=${iodepth}`,
      '--numjobs=2',
      '--cpus_allowed=0-1',
      '--cpus_allowed_policy=split',
      `--size=${size}`,
      '--offset_increment=32M',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_fatal=1',
      '--group_reporting=0',
    ]);
    assert.equal(jobs.length, 2);
    for (const job of jobs) {
      assert.equal(job.error, 0, `fio bs=${bs} iodepth=${iodepth}: error ${job.error}`);
      assert.ok(job.write.io_bytes > 0 && job.read.io_bytes > 0, `bs=${bs} iodepth=${iodepth} wrote and verified`);
    }
  }
}

/** mkfs.ext4, mount, write files, remount, read them back, fsck -fn clean. */
function filesystemRoundTrip(device: string, scratch: string): void {
  run('mkfs.ext4', ['-q', '-F', device]);
  const mnt = fs.mkdtempSync(path.join(scratch, 'mnt-'));
  const sums = new Map<string, string>();
  run('mount', [device, mnt]);
  try {
    for (let i = 0; i < 3; i++) {
      const file = path.join(mnt, `file${i}`);
      run('dd', ['if=/dev/urandom', `of=${file}`, 'bs=256k', `count=${4 + i}`, 'status=none']);
      sums.set(file, run('sha256sum', [file]).stdout.split(' ')[0]!);
    }
  } finally {
    run('umount', [mnt]);
  }
  run('mount', [device, mnt]);
  try {
    for (const [file, sum] of sums) assert.equal(run('sha256sum', [file]).stdout.split(' ')[0], sum, `${file}`);
  } finally {
    run('umount', [mnt]);
  }
  const fsck = run('fsck.ext4', ['-fn', device], { allowFail: true });
  assert.equal(fsck.status, 0, `fsck -fn: ${fsck.stdout}${fsck.stderr}`);
}

/** A random-write load verifying what it wrote as it goes, until stopped. */
function verifiedWrites(id: number, size: string): string[] {
  return [
    '--name=zc',
    `--filename=/dev/ublkb${id}`,
    '--ioengine=io_uring',
    '--direct=1',
    '--rw=randwrite',
    '--bsrange=4k-128k',
    '--iodepth=32',
    `--size=${size}`,
    '--rate_iops=300',
    '--time_based',
    '--runtime=3600',
    '--verify=crc32c',
    '--verify_backlog=64',
    '--verify_fatal=1',
  ];
}

describe('zero copy: UBLK_F_AUTO_BUF_REG (real ublk driver)', function () {
  requireUblk(this);
  const devices = new DeviceTracker();
  const stateDir = makeStateDir();
  const scratch = fs.mkdtempSync('/tmp/ublk-ts-zero-copy-');
  let started: FioRun[] = [];
  let manifestDir: string | undefined;

  afterEach(async () => {
    for (const f of started) f.kill();
    // An open device is not deleted: fio must be gone first.
    await Promise.all(started.map((f) => f.done));
    started = [];
    devices.cleanup();
    if (manifestDir) {
      for (const f of fs.readdirSync(manifestDir)) fs.rmSync(path.join(manifestDir, f));
      // The reconciler deletes the devices of manifests that are gone.
      spawnSync(process.execPath, [RECONCILE, '--dir', manifestDir, '--state-dir', stateDir, '--once'], {
        timeout: 120_000,
        killSignal: 'SIGKILL',
      });
      manifestDir = undefined;
    }
  });

  function add(args: string[]): AddedDevice {
    const dev = ublkctlJson<AddedDevice>(['add', ...args], stateDir);
    devices.add(dev.id);
    return dev;
  }

  function listed(id: number): ListedDataPath {
    const d = ublkctlJson<ListedDataPath[]>(['list'], stateDir).find((x) => x.id === id);
    assert.ok(d, `dev ${id} listed`);
    return d;
  }

  /** Freezes the server until requests are in flight inside it, then kills it. */
  async function killServerMidIo(id: number): Promise<number> {
    const pid = listed(id).serverPid;
    process.kill(pid, 'SIGSTOP');
    await waitFor(() => inFlight(id) > 0, 60_000, `requests in flight in the stopped server of dev ${id}`);
    process.kill(pid, 'SIGKILL');
    await waitFor(() => listed(id).state === 'QUIESCED', 60_000, `dev ${id} QUIESCED`);
    return pid;
  }

  it('ublkctl list shows the data path the device was made with: by default zero copy where it pays (loop on a block device) and copy where it does not (memory, a loop file on tmpfs); --zero-copy and --no-zero-copy override', () => {
    const zeroCopy = kernelHasAutoBufReg();
    const memory = add(['-t', 'memory', '--size', '16MiB', '--zero-copy']);
    const copied = add(['-t', 'memory', '--size', '16MiB']);
    // The guest's /tmp is tmpfs: there zero copy would go through io-wq.
    const loopOnTmpfs = add(['-t', 'loop', '--file', path.join(scratch, 'list.img'), '--size', '16MiB', '--create']);
    const loopForced = add([
      '-t',
      'loop',
      '--file',
      path.join(scratch, 'list2.img'),
      '--size',
      '16MiB',
      '--create',
      '--zero-copy',
    ]);
    run('truncate', ['-s', '16M', path.join(scratch, 'blk.img')]);
    const kernelLoop = run('losetup', ['--find', '--show', path.join(scratch, 'blk.img')]).stdout.trim();
    try {
      // One at a time: a loop target holds its backing exclusively.
      for (const [flags, expected] of [
        [[], zeroCopy ? 'zero-copy' : 'copy'],
        [['--no-zero-copy'], 'copy'],
      ] as const) {
        const dev = add(['-t', 'loop', '--file', kernelLoop, ...flags]);
        assert.equal(listed(dev.id).dataPath, expected, `loop on a block device ${flags.join(' ')}`);
        assert.equal(ublkctl(['del', String(dev.id)], stateDir).status, 0);
        devices.forget(dev.id);
      }
    } finally {
      run('losetup', ['-d', kernelLoop]);
    }
    const nullDev = add(['-t', 'null', '--size', '16MiB']);
    assert.equal(listed(loopOnTmpfs.id).dataPath, 'copy');
    assert.equal(listed(loopForced.id).dataPath, zeroCopy ? 'zero-copy' : 'copy');
    assert.equal(memory.flagNames.includes('AUTO_BUF_REG'), zeroCopy, 'ADD_DEV asked for AUTO_BUF_REG where it exists');
    assert.equal(listed(memory.id).dataPath, zeroCopy ? 'zero-copy' : 'copy');
    assert.equal(listed(copied.id).dataPath, 'copy');
    assert.equal(listed(copied.id).flagNames.includes('AUTO_BUF_REG'), false);
    assert.equal(listed(nullDev.id).dataPath, 'copy');
    const text = ublkctl(['list'], stateDir);
    assert.equal(text.status, 0, text.stderr);
    assert.match(text.stdout, /DATA-PATH/);
    const row = text.stdout.split('\n').find((l) => l.startsWith(`${memory.id} `));
    assert.match(row ?? '', zeroCopy ? /\bzero-copy\b/ : /\bcopy\b/);
    // Both data paths move the same bytes.
    for (const dev of [memory, copied]) {
      run('dd', ['if=/dev/urandom', `of=${scratch}/payload`, 'bs=1M', 'count=8', 'status=none']);
      run('dd', [`if=${scratch}/payload`, `of=${dev.blockPath}`, 'bs=1M', 'oflag=direct', 'status=none']);
      assert.equal(sha256(dev.blockPath, 8 * MiB), sha256(`${scratch}/payload`, 8 * MiB));
    }
  });

  describe('on a kernel with AUTO_BUF_REG', function () {
    beforeEach(function () {
      if (!kernelHasAutoBufReg()) {
        console.log('    skipped: this kernel lacks AUTO_BUF_REG (GET_FEATURES; Linux 6.16+): devices copy');
        this.skip();
      }
    });

    it('loop: fio verify over 4 KiB..512 KiB on 2 queues, zero copy, and the backing file holds exactly the device bytes', () => {
      const file = path.join(scratch, 'verify.img');
      const dev = add(['-t', 'loop', '--file', file, '--size', '96MiB', '--create', '--queues', '2', '--zero-copy']);
      assert.equal(listed(dev.id).dataPath, 'zero-copy');
      fioVerify(dev.blockPath);
      const deviceSum = sha256(dev.blockPath, 96 * MiB);
      assert.equal(ublkctl(['del', String(dev.id)], stateDir).status, 0);
      devices.forget(dev.id);
      assert.equal(sha256(file, 96 * MiB), deviceSum, 'backing file bytes equal the device bytes');
    });

    it('memory: fio verify over 4 KiB..512 KiB on 2 queues, zero copy', () => {
      const dev = add(['-t', 'memory', '--size', '96MiB', '--queues', '2', '--zero-copy']);
      assert.equal(listed(dev.id).dataPath, 'zero-copy');
      fioVerify(dev.blockPath);
    });

    it('loop with direct IO and memory: ext4 mkfs, mount, write, read back, fsck clean', () => {
      const loop = add([
        '-t',
        'loop',
        '--file',
        path.join(scratch, 'fs.img'),
        '--size',
        '128MiB',
        '--create',
        '--zero-copy',
      ]);
      const memory = add(['-t', 'memory', '--size', '128MiB', '--zero-copy']);
      for (const dev of [loop, memory]) {
        assert.equal(listed(dev.id).dataPath, 'zero-copy');
        filesystemRoundTrip(dev.blockPath, scratch);
      }
    });

    it('loop, reissue: kill -9 during fio verify, recovered by ublkctl recover; the new server serves zero copy and fio sees no error', async () => {
      const file = path.join(scratch, 'recover.img');
      const dev = add([
        '-t',
        'loop',
        '--file',
        file,
        '--size',
        '48MiB',
        '--create',
        '--recovery',
        'reissue',
        '--zero-copy',
      ]);
      const load = startFio(verifiedWrites(dev.id, '40M'));
      started.push(load);
      let writes = await waitForWrites(dev.id, ioCounts(dev.id).writes, 100, 'fio writing before the kill');
      for (let kill = 1; kill <= 2; kill++) {
        const oldPid = await killServerMidIo(dev.id);
        const rec = ublkctl(['recover', String(dev.id), '--state-dir', stateDir]);
        assert.equal(rec.status, 0, rec.stderr);
        const now = listed(dev.id);
        assert.equal(now.state, 'LIVE');
        assert.notEqual(now.serverPid, oldPid);
        assert.equal(now.dataPath, 'zero-copy', 'the device keeps its data path');
        writes = await waitForWrites(dev.id, writes, 100, `fio writing after recovery ${kill}`);
        assert.equal(load.child.exitCode, null, 'fio still writing');
      }
      const result = await load.stop();
      assert.equal(result.status, 0, result.raw);
      assert.equal(result.jobs[0]!.error, 0);
      assert.ok(result.jobs[0]!.read.io_bytes > 0, 'fio read back and verified what it wrote');
      assert.equal(sha256(dev.blockPath, 48 * MiB), sha256(file, 48 * MiB), 'backing file equals the device');
    });

    it('memory, reissue: kill -9 during fio verify, recovered by ublk-reconcile; then handed over live by ublkctl restart; zero copy throughout, no fio error', async () => {
      manifestDir = fs.mkdtempSync('/tmp/ublk-ts-zc-manifests-');
      fs.chmodSync(manifestDir, 0o755);
      fs.writeFileSync(
        path.join(manifestDir, 'zc.yaml'),
        manifest('zc', 'target:\n  type: memory\nsize: 48MiB\nzeroCopy: true\nrecovery: reissue'),
        { mode: 0o644 },
      );
      const once = () => {
        const r = spawnSync(process.execPath, [RECONCILE, '--dir', manifestDir!, '--state-dir', stateDir, '--once'], {
          encoding: 'utf8',
          timeout: 120_000,
          killSignal: 'SIGKILL',
        });
        assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
      };
      const before = new Set(listDevices().map((d) => d.id));
      once();
      const id = devices.add(listDevices().find((d) => !before.has(d.id))!.id);
      assert.equal(listed(id).dataPath, 'zero-copy');
      const load = startFio(verifiedWrites(id, '40M'));
      started.push(load);
      let writes = await waitForWrites(id, ioCounts(id).writes, 100, 'fio writing before the kill');
      // A server that dies right after it went LIVE counts as a crash loop, recovered only after a backoff.
      const record = path.join(stateDir, 'devices', `ublkb${id}.json`);
      const liveSince = () => {
        const r = JSON.parse(fs.readFileSync(record, 'utf8')) as { startedAt?: string; updatedAt: string };
        return Date.parse(r.startedAt ?? r.updatedAt);
      };
      await waitFor(() => Date.now() - liveSince() >= STABLE_AFTER_MS, 60_000, `the server of dev ${id} to be stable`);
      const oldPid = await killServerMidIo(id);
      once();
      await waitFor(
        () => {
          const d = listed(id);
          return d.state === 'LIVE' && d.serverPid !== oldPid && isAlive(d.serverPid);
        },
        60_000,
        `dev ${id} recovered by the reconciler`,
      );
      assert.equal(listed(id).dataPath, 'zero-copy');
      writes = await waitForWrites(id, writes, 100, 'fio writing after the recovery');
      const restarted = ublkctl(['restart', String(id), '--state-dir', stateDir]);
      assert.equal(restarted.status, 0, restarted.stderr);
      assert.equal(listed(id).dataPath, 'zero-copy', 'the handed-over device keeps its data path');
      await waitForWrites(id, writes, 100, 'fio writing after the handover');
      const result = await load.stop();
      assert.equal(result.status, 0, result.raw);
      assert.equal(result.jobs[0]!.error, 0);
      assert.ok(result.jobs[0]!.read.io_bytes > 0, 'fio read back and verified what it wrote');
    });
  });
});
