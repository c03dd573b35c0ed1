import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  fioVerifiedLoadArgs,
  fioVerifyCases,
  ioCounts,
  isAlive,
  killServerMidIo,
  listDevices,
  manifest,
  RECONCILE,
  requireUblk,
  run,
  sha256Range,
  startFio,
  ublkctl,
  ublkctlJson,
  useDeviceSuite,
  waitFor,
  waitForStableServer,
  waitForWrites,
} from './helpers';

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

/** fio write-then-verify over block sizes 4 KiB..512 KiB and iodepths 1..128, two jobs on two queues. */
const VERIFY_CASES: Array<[bs: string, iodepth: number, size: string]> = [
  ['4k', 1, '4M'],
  ['64k', 32, '16M'],
  ['512k', 128, '24M'],
  ['4k-512k', 16, '16M'],
];

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

describe('zero copy: UBLK_F_AUTO_BUF_REG (real ublk driver)', function () {
  requireUblk(this);
  const suite = useDeviceSuite(this, '/tmp/ublk-ts-zero-copy-');
  const { add } = suite;
  let manifestDir: string | undefined;

  // After the suite's own clean-up: fio is gone and the devices made with ublkctl are deleted.
  afterEach(() => {
    if (manifestDir) {
      for (const f of fs.readdirSync(manifestDir)) fs.rmSync(path.join(manifestDir, f));
      // The reconciler deletes the devices of manifests that are gone.
      spawnSync(process.execPath, [RECONCILE, '--dir', manifestDir, '--state-dir', suite.stateDir(), '--once'], {
        timeout: 120_000,
        killSignal: 'SIGKILL',
      });
      manifestDir = undefined;
    }
  });

  function listed(id: number): ListedDataPath {
    const d = ublkctlJson<ListedDataPath[]>(['list'], suite.stateDir()).find((x) => x.id === id);
    assert.ok(d, `dev ${id} listed`);
    return d;
  }

  /** Freezes the server until requests are in flight inside it, then kills it. */
  async function killMidIo(id: number): Promise<number> {
    const pid = listed(id).serverPid;
    await killServerMidIo(id, pid);
    await waitFor(() => listed(id).state === 'QUIESCED', 60_000, `dev ${id} QUIESCED`);
    return pid;
  }

  it('ublkctl list shows the data path the device was made with: by default zero copy where it pays (loop on a block device) and copy where it does not (memory, a loop file on tmpfs); --zero-copy and --no-zero-copy override', () => {
    const zeroCopy = kernelHasAutoBufReg();
    const memory = add(['-t', 'memory', '--size', '16MiB', '--zero-copy']);
    const copied = add(['-t', 'memory', '--size', '16MiB']);
    // The guest's /tmp is tmpfs: there zero copy would go through io-wq.
    const tmpfsLoop = (name: string, ...flags: string[]): ReturnType<typeof add> =>
      add(['-t', 'loop', '--file', path.join(suite.scratch(), name), '--size', '16MiB', '--create', ...flags]);
    const loopOnTmpfs = tmpfsLoop('list.img');
    const loopForced = tmpfsLoop('list2.img', '--zero-copy');
    run('truncate', ['-s', '16M', path.join(suite.scratch(), 'blk.img')]);
    const kernelLoop = run('losetup', ['--find', '--show', path.join(suite.scratch(), 'blk.img')]).stdout.trim();
    try {
      // One at a time: a loop target holds its backing exclusively.
      for (const [flags, expected] of [
        [[], zeroCopy ? 'zero-copy' : 'copy'],
        [['--no-zero-copy'], 'copy'],
      ] as const) {
        const dev = add(['-t', 'loop', '--file', kernelLoop, ...flags]);
        assert.equal(listed(dev.id).dataPath, expected, `loop on a block device ${flags.join(' ')}`);
        suite.del(dev.id);
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
    const text = ublkctl(['list'], suite.stateDir());
    assert.equal(text.status, 0, text.stderr);
    assert.match(text.stdout, /DATA-PATH/);
    const row = text.stdout.split('\n').find((l) => l.startsWith(`${memory.id} `));
    assert.match(row ?? '', zeroCopy ? /\bzero-copy\b/ : /\bcopy\b/);
    // Both data paths move the same bytes.
    for (const dev of [memory, copied]) {
      run('dd', ['if=/dev/urandom', `of=${suite.scratch()}/payload`, 'bs=1M', 'count=8', 'status=none']);
      run('dd', [`if=${suite.scratch()}/payload`, `of=${dev.blockPath}`, 'bs=1M', 'oflag=direct', 'status=none']);
      assert.equal(sha256Range(dev.blockPath, 0, 8), sha256Range(`${suite.scratch()}/payload`, 0, 8));
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
      const file = path.join(suite.scratch(), 'verify.img');
      const dev = add(['-t', 'loop', '--file', file, '--size', '96MiB', '--create', '--queues', '2', '--zero-copy']);
      assert.equal(listed(dev.id).dataPath, 'zero-copy');
      fioVerifyCases(dev.blockPath, VERIFY_CASES);
      const deviceSum = sha256Range(dev.blockPath, 0, 96);
      suite.del(dev.id);
      assert.equal(sha256Range(file, 0, 96), deviceSum, 'backing file bytes equal the device bytes');
    });

    it('memory: fio verify over 4 KiB..512 KiB on 2 queues, zero copy', () => {
      const dev = add(['-t', 'memory', '--size', '96MiB', '--queues', '2', '--zero-copy']);
      assert.equal(listed(dev.id).dataPath, 'zero-copy');
      fioVerifyCases(dev.blockPath, VERIFY_CASES);
    });

    it('loop with direct IO and memory: ext4 mkfs, mount, write, read back, fsck clean', () => {
      const loop = add([
        '-t',
        'loop',
        '--file',
        path.join(suite.scratch(), 'fs.img'),
        '--size',
        '128MiB',
        '--create',
        '--zero-copy',
      ]);
      const memory = add(['-t', 'memory', '--size', '128MiB', '--zero-copy']);
      for (const dev of [loop, memory]) {
        assert.equal(listed(dev.id).dataPath, 'zero-copy');
        filesystemRoundTrip(dev.blockPath, suite.scratch());
      }
    });

    it('loop, reissue: kill -9 during fio verify, recovered by ublkctl recover; the new server serves zero copy and fio sees no error', async () => {
      const file = path.join(suite.scratch(), 'recover.img');
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
      const load = suite.track(startFio(fioVerifiedLoadArgs('zc', dev.blockPath, '40M', '300', '4k-128k')));
      let writes = await waitForWrites(dev.id, ioCounts(dev.id).writes, 100, 'fio writing before the kill');
      for (let kill = 1; kill <= 2; kill++) {
        const oldPid = await killMidIo(dev.id);
        const rec = ublkctl(['recover', String(dev.id), '--state-dir', suite.stateDir()]);
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
      assert.equal(sha256Range(dev.blockPath, 0, 48), sha256Range(file, 0, 48), 'backing file equals the device');
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
        const r = spawnSync(
          process.execPath,
          [RECONCILE, '--dir', manifestDir!, '--state-dir', suite.stateDir(), '--once'],
          {
            encoding: 'utf8',
            timeout: 120_000,
            killSignal: 'SIGKILL',
          },
        );
        assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
      };
      const before = new Set(listDevices().map((d) => d.id));
      once();
      const id = suite.devices.add(listDevices().find((d) => !before.has(d.id))!.id);
      assert.equal(listed(id).dataPath, 'zero-copy');
      const load = suite.track(startFio(fioVerifiedLoadArgs('zc', `/dev/ublkb${id}`, '40M', '300', '4k-128k')));
      let writes = await waitForWrites(id, ioCounts(id).writes, 100, 'fio writing before the kill');
      // A server that dies right after it went LIVE counts as a crash loop, recovered only after a backoff.
      await waitForStableServer(suite.stateDir(), id);
      const oldPid = await killMidIo(id);
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
      const restarted = ublkctl(['restart', String(id), '--state-dir', suite.stateDir()]);
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
