import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  AddedDevice,
  fioVerifyCases,
  listDevices,
  requireUblk,
  run,
  serverPids,
  ublkctl,
  useDeviceSuite,
  worldReadableUblkctl,
} from './helpers';

const MiB = 1024 * 1024;

function sha256(file: string, bytes?: number): string {
  const args = bytes === undefined ? ['-c', `sha256sum < ${file}`] : ['-c', `head -c ${bytes} ${file} | sha256sum`];
  return run('bash', args).stdout.split(' ')[0]!;
}

function allocatedBytes(file: string): number {
  return Number(run('stat', ['-c', '%b', file]).stdout.trim()) * 512;
}

function shmemBytes(): number {
  const m = /^Shmem:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  return Number(m![1]) * 1024;
}

/**
 * fio write-then-verify over block sizes 4 KiB..512 KiB and iodepths 1..128, two jobs on two CPUs (queues).
 * Each case writes enough requests to exercise its depth many times over (4 MiB at 4 KiB and
 * depth 1 is 1024 round trips per job), not more: small blocks are what cost time under TCG.
 */
const VERIFY_CASES: Array<[bs: string, iodepth: number, size: string]> = [
  ['4k', 1, '4M'],
  ['16k', 8, '8M'],
  ['64k', 32, '16M'],
  ['512k', 128, '24M'],
  ['4k-512k', 16, '16M'],
];

/** Kernel log lines about `device` logged after `since` (a previous dmesg length). */
function kernelErrorsFor(device: string, since: number): string[] {
  const name = path.basename(device);
  return run('dmesg', [])
    .stdout.slice(since)
    .split('\n')
    .filter((l) => l.includes(`dev ${name},`));
}

/** mkfs.ext4, mount, write and read back files, unmount, fsck -fn clean, and no IO error in the kernel log. */
function filesystemRoundTrip(device: string, scratch: string): void {
  const logStart = run('dmesg', []).stdout.length;
  run('mkfs.ext4', ['-q', '-F', device]);
  const mnt = fs.mkdtempSync(path.join(scratch, 'mnt-'));
  run('mount', [device, mnt]);
  const sums = new Map<string, string>();
  try {
    for (let i = 0; i < 4; i++) {
      const file = path.join(mnt, `file${i}`);
      run('dd', ['if=/dev/urandom', `of=${file}`, 'bs=256k', `count=${4 + i}`, 'status=none']);
      sums.set(file, sha256(file));
    }
    run('sync', []);
  } finally {
    run('umount', [mnt]);
  }
  run('mount', [device, mnt]);
  try {
    for (const [file, sum] of sums) assert.equal(sha256(file), sum, `${file} reads back`);
  } finally {
    run('umount', [mnt]);
  }
  const fsck = run('fsck.ext4', ['-fn', device], { allowFail: true });
  assert.equal(fsck.status, 0, `fsck -fn: ${fsck.stdout}${fsck.stderr}`);
  assert.deepEqual(kernelErrorsFor(device, logStart), [], 'the kernel logged no IO error for the device');
}

describe('loop and memory targets (real ublk driver)', function () {
  requireUblk(this);
  const suite = useDeviceSuite(this, '/tmp/ublk-ts-data-');
  const { add } = suite;
  const del = (dev: AddedDevice): void => suite.del(dev.id);

  it('memory: fio verify over 4 KiB..512 KiB and iodepth 1..128 on 2 queues has zero errors', () => {
    const dev = add(['-t', 'memory', '--size', '128MiB', '--queues', '2', '--depth', '128']);
    fioVerifyCases(dev.blockPath, VERIFY_CASES);
  });

  it('loop: fio verify on 2 queues has zero errors, and the backing file holds exactly the device bytes', () => {
    const file = path.join(suite.scratch(), 'verify.img');
    const dev = add(['-t', 'loop', '--file', file, '--size', '128MiB', '--create', '--queues', '2', '--depth', '128']);
    fioVerifyCases(dev.blockPath, VERIFY_CASES);
    run('dd', [
      'if=/dev/urandom',
      `of=${dev.blockPath}`,
      'bs=1M',
      'count=8',
      'seek=100',
      'oflag=direct',
      'status=none',
    ]);
    const deviceSum = sha256(dev.blockPath);
    del(dev);
    assert.equal(fs.statSync(file).size, 128 * MiB, 'the file keeps the device size');
    assert.equal(sha256(file), deviceSum, 'backing file bytes equal the device bytes');
  });

  it('memory: ext4 mkfs, mount, write, read back, fsck clean', () => {
    const dev = add(['-t', 'memory', '--size', '256MiB']);
    filesystemRoundTrip(dev.blockPath, suite.scratch());
  });

  it('loop: ext4 mkfs, mount, write, read back, fsck clean', () => {
    const dev = add(['-t', 'loop', '--file', path.join(suite.scratch(), 'fs.img'), '--size', '256MiB', '--create']);
    filesystemRoundTrip(dev.blockPath, suite.scratch());
  });

  it('loop: blkdiscard punches holes in the backing file and discarded ranges read as zeroes', () => {
    const file = path.join(suite.scratch(), 'discard.img');
    const dev = add(['-t', 'loop', '--file', file, '--size', '64MiB', '--create']);
    run('dd', ['if=/dev/urandom', `of=${dev.blockPath}`, 'bs=1M', 'count=64', 'oflag=direct', 'status=none']);
    run('sync', []);
    const before = allocatedBytes(file);
    assert.ok(before >= 60 * MiB, `written file is allocated (${before})`);
    run('blkdiscard', ['--offset', String(16 * MiB), '--length', String(32 * MiB), dev.blockPath]);
    const after = allocatedBytes(file);
    assert.ok(after <= before - 30 * MiB, `allocation fell from ${before} to ${after}`);
    const zeroes = run(
      'bash',
      ['-c', `cmp -n ${32 * MiB} <(dd if=${dev.blockPath} bs=1M skip=16 count=32 iflag=direct status=none) /dev/zero`],
      { allowFail: true },
    );
    assert.equal(zeroes.status, 0, `discarded range reads as zeroes: ${zeroes.stdout}`);
    const discardMax = Number(fs.readFileSync(`/sys/block/ublkb${dev.id}/queue/discard_max_bytes`, 'utf8'));
    assert.ok(discardMax > 0, 'discard advertised');
  });

  it('memory: a 64 GiB device costs nothing until written, and discard gives the memory back', () => {
    const base = shmemBytes();
    const dev = add(['-t', 'memory', '--size', '64GiB']);
    assert.equal(run('blockdev', ['--getsize64', dev.blockPath]).stdout.trim(), String(64 * 1024 * MiB));
    assert.ok(shmemBytes() - base < 16 * MiB, `idle device uses ${shmemBytes() - base} bytes`);
    run('dd', [
      'if=/dev/urandom',
      `of=${dev.blockPath}`,
      'bs=1M',
      'count=64',
      'seek=4096',
      'oflag=direct',
      'status=none',
    ]);
    const used = shmemBytes() - base;
    assert.ok(used >= 60 * MiB && used < 100 * MiB, `64 MiB written uses ${used} bytes`);
    run('blkdiscard', ['--offset', String(4096 * MiB), '--length', String(64 * MiB), dev.blockPath]);
    assert.ok(shmemBytes() - base < 16 * MiB, `after discard ${shmemBytes() - base} bytes`);
    const zeroes = run(
      'bash',
      ['-c', `cmp -n ${MiB} <(dd if=${dev.blockPath} bs=1M skip=4096 count=1 iflag=direct status=none) /dev/zero`],
      { allowFail: true },
    );
    assert.equal(zeroes.status, 0, 'discarded memory reads as zeroes');
  });

  it('memory: written data reads back through the mapping, holes read without allocating, and a file shrunk by hand fails reads past its end with EIO', () => {
    const dev = add(['-t', 'memory', '--size', '64MiB']);
    const file = `/dev/shm/ublk-ts/dev${dev.id}.mem`;
    const data = path.join(suite.scratch(), 'memory-data');
    run('dd', ['if=/dev/urandom', `of=${data}`, 'bs=1M', 'count=4', 'status=none']);
    const ddDevice = (args: string[]) => run('dd', [...args, 'status=none'], { allowFail: true });
    assert.equal(ddDevice([`if=${data}`, `of=${dev.blockPath}`, 'bs=64k', 'oflag=direct']).status, 0);
    // Written twice: the second write lands on pages the file already holds (the mapping's path).
    assert.equal(ddDevice([`if=${data}`, `of=${dev.blockPath}`, 'bs=4k', 'oflag=direct']).status, 0);
    const readBack = path.join(suite.scratch(), 'memory-read');
    assert.equal(ddDevice([`if=${dev.blockPath}`, `of=${readBack}`, 'bs=4k', 'count=1024', 'iflag=direct']).status, 0);
    assert.equal(sha256(readBack), sha256(data), 'written data reads back');

    const allocated = allocatedBytes(file);
    const holes = ddDevice([`if=${dev.blockPath}`, 'of=/dev/null', 'bs=64k', 'skip=256', 'count=512', 'iflag=direct']);
    assert.equal(holes.status, 0, holes.stderr);
    assert.equal(allocatedBytes(file), allocated, 'reading 32 MiB of holes allocated no memory');

    // Root shrinks the file under the running server: pages past the new end are gone.
    run('truncate', ['-s', '2M', file]);
    const past = ddDevice([`if=${dev.blockPath}`, 'of=/dev/null', 'bs=1M', 'skip=3', 'count=1', 'iflag=direct']);
    assert.notEqual(past.status, 0, 'a read past the shrunk file fails');
    assert.match(past.stderr, /Input\/output error/);
    const kept = ddDevice([`if=${dev.blockPath}`, `of=${readBack}`, 'bs=1M', 'count=2', 'iflag=direct']);
    assert.equal(kept.status, 0, kept.stderr);
    assert.equal(sha256(readBack), sha256(data, 2 * MiB), 'what the file still holds reads back');
    assert.ok(
      listDevices().some((d) => d.id === dev.id && d.state === 'LIVE'),
      'the server survived (no SIGBUS)',
    );
    del(dev);
  });

  it('loop: a read-only device is read-only in the kernel, rejects writes, and leaves the file unchanged', () => {
    const file = path.join(suite.scratch(), 'ro.img');
    run('dd', ['if=/dev/urandom', `of=${file}`, 'bs=1M', 'count=16', 'status=none']);
    const sum = sha256(file);
    const dev = add(['-t', 'loop', '--file', file, '--read-only']);
    assert.equal(run('blockdev', ['--getro', dev.blockPath]).stdout.trim(), '1');
    const write = run(
      'dd',
      ['if=/dev/zero', `of=${dev.blockPath}`, 'bs=4k', 'count=1', 'oflag=direct', 'status=none'],
      { allowFail: true },
    );
    assert.notEqual(write.status, 0, 'write refused');
    assert.equal(sha256(dev.blockPath), sum, 'device reads the file');
    del(dev);
    assert.equal(sha256(file), sum, 'file unchanged');
  });

  it('loop: backing-file errors fail only the affected requests; the server stays up', () => {
    const mnt = fs.mkdtempSync(path.join(suite.scratch(), 'small-fs-'));
    run('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt]);
    try {
      const dev = add(['-t', 'loop', '--file', path.join(mnt, 'sparse.img'), '--size', '64MiB', '--create']);
      const full = run(
        'dd',
        ['if=/dev/urandom', `of=${dev.blockPath}`, 'bs=1M', 'count=32', 'oflag=direct', 'status=none'],
        { allowFail: true },
      );
      assert.notEqual(full.status, 0, 'writing past the space of the backing file system fails');
      assert.match(full.stderr, /Input\/output error|No space left/);
      assert.ok(
        listDevices().some((d) => d.id === dev.id && d.state === 'LIVE'),
        'device still LIVE',
      );
      const read = run(
        'dd',
        [`if=${dev.blockPath}`, 'of=/dev/null', 'bs=1M', 'count=4', 'iflag=direct', 'status=none'],
        { allowFail: true },
      );
      assert.equal(read.status, 0, `later IO succeeds: ${read.stderr}`);
      del(dev);
    } finally {
      run('umount', [mnt]);
    }
  });

  describe('bad input fails before any device exists', () => {
    function refuses(args: string[], message: RegExp, opts: { asUser?: boolean } = {}): void {
      const before = { devices: listDevices().map((d) => d.id), servers: serverPids() };
      const full = ['add', ...args, '--state-dir', suite.stateDir()];
      const r = opts.asUser
        ? run(
            'setpriv',
            ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, worldReadableUblkctl(), ...full],
            { allowFail: true },
          )
        : ublkctl(full);
      assert.equal(r.status, 2, `exit status (stderr: ${r.stderr})`);
      assert.match(r.stderr, message);
      assert.deepEqual(
        listDevices().map((d) => d.id),
        before.devices,
        'no device left behind',
      );
      assert.deepEqual(serverPids(), before.servers, 'no server left behind');
    }

    it('a missing file (without --create)', () => {
      refuses(
        ['-t', 'loop', '--file', path.join(suite.scratch(), 'missing.img')],
        /target\.file: .*missing\.img does not exist/,
      );
    });

    it('a path that is neither a regular file nor a block device', () => {
      refuses(['-t', 'loop', '--file', suite.scratch()], /is not a regular file or block device/);
      refuses(['-t', 'loop', '--file', '/dev/null'], /is not a regular file or block device/);
    });

    it('a file without permission', () => {
      const file = path.join(suite.scratch(), 'private.img');
      run('truncate', ['-s', '16M', file]);
      fs.chmodSync(file, 0o600);
      fs.chmodSync(suite.scratch(), 0o755);
      refuses(['-t', 'loop', '--file', file], /permission denied/, { asUser: true });
    });

    it('a size that is not a multiple of the logical block size', () => {
      const odd = path.join(suite.scratch(), 'odd.img');
      run('truncate', ['-s', '1000', odd]);
      refuses(['-t', 'loop', '--file', odd], /size: must be a multiple of the logical block size \(512\), got 1000/);
      refuses(
        ['-t', 'loop', '--file', path.join(suite.scratch(), 'new.img'), '--create', '--size', '4000'],
        /multiple of the logical block size/,
      );
      assert.ok(!fs.existsSync(path.join(suite.scratch(), 'new.img')), 'nothing created');
    });

    it('a size larger than the file without --create', () => {
      const small = path.join(suite.scratch(), 'small.img');
      run('truncate', ['-s', '16M', small]);
      refuses(['-t', 'loop', '--file', small, '--size', '32MiB'], /larger than .*small\.img/);
    });

    it('a file already used by another ublk-ts device', () => {
      const shared = path.join(suite.scratch(), 'shared.img');
      run('truncate', ['-s', '16M', shared]);
      const dev = add(['-t', 'loop', '--file', shared]);
      refuses(['-t', 'loop', '--file', shared], /already in use by another ublk-ts device/);
      assert.ok(fs.existsSync(dev.blockPath), 'the first device is untouched');
    });

    it('direct IO forced on a file system without O_DIRECT', () => {
      const mnt = fs.mkdtempSync(path.join(suite.scratch(), 'ramfs-'));
      run('mount', ['-t', 'ramfs', 'ramfs', mnt]);
      try {
        const file = path.join(mnt, 'nodirect.img');
        run('truncate', ['-s', '16M', file]);
        refuses(['-t', 'loop', '--file', file, '--direct-io', 'on'], /without O_DIRECT support/);
      } finally {
        run('umount', [mnt]);
      }
    });
  });
});
