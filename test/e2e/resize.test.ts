/**
 * Online resize against the real driver: a manifest whose size grows is
 * applied to the LIVE device in place (UPDATE_SIZE, Linux 6.16+) while an
 * ext4 on it stays mounted; resize2fs then grows the file system into the
 * new space, whose sectors the target must serve. On a kernel without
 * UPDATE_SIZE (6.12) the same change is drift, with the reason.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { manifest, outcomeOf, ReconcilePass, requireUblk, run, ublkctl, ublkctlJson, useManifestDir } from './helpers';

const MiB = 1024 * 1024;

/** Whether this kernel offers UPDATE_SIZE, as GET_FEATURES says (not which VM leg this is). */
function kernelHasUpdateSize(): boolean {
  return ublkctlJson<{ names: string[] }>(['features']).names.includes('UPDATE_SIZE');
}

/** The device's size as the kernel announces it to its users, in bytes. */
function sysfsSize(id: number): number {
  return Number(fs.readFileSync(`/sys/block/ublkb${id}/size`, 'utf8').trim()) * 512;
}

function sha256(file: string): string {
  return run('sha256sum', [file]).stdout.split(' ')[0]!;
}

describe('online resize (real ublk driver)', function () {
  requireUblk(this);
  const manifests = useManifestDir(this);
  const write = (file: string, text: string): void => manifests.write(file, text);
  const once = (): ReconcilePass => manifests.once();
  let work: string;
  const mounts: string[] = [];
  const added: number[] = [];

  beforeEach(() => {
    work = fs.mkdtempSync('/tmp/ublk-ts-resize-');
  });

  afterEach(async () => {
    for (const mnt of mounts.splice(0)) run('umount', [mnt], { allowFail: true });
    for (const id of added.splice(0)) ublkctl(['del', String(id)], manifests.stateDir());
    await manifests.cleanup();
    fs.rmSync(work, { recursive: true, force: true });
  });

  /** mkfs.ext4 on the device, mounted, with a file of random data; returns the mount point and the file's sum. */
  function ext4WithData(blockPath: string): { mnt: string; sum: string } {
    run('mkfs.ext4', ['-q', '-F', blockPath]);
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    run('mount', [blockPath, mnt]);
    mounts.push(mnt);
    run('dd', ['if=/dev/urandom', `of=${mnt}/keep`, 'bs=64k', 'count=32', 'status=none']);
    return { mnt, sum: sha256(`${mnt}/keep`) };
  }

  /**
   * Grows the mounted file system into the device's new size, fills it
   * past the old end (so the target serves the new sectors), then checks
   * it: unmounted, fsck clean; mounted again, every file as written.
   */
  function growFileSystemAndCheck(blockPath: string, mnt: string, sum: string, oldSize: number): void {
    run('resize2fs', [blockPath]);
    const total = Number(run('df', ['-B1', '--output=size', mnt]).stdout.trim().split('\n')[1]);
    assert.ok(total > oldSize, `file system grew past ${oldSize} bytes: ${total}`);
    // More than the old device held: some of it must land beyond the old end.
    const fillMiB = Math.ceil(oldSize / MiB) + 4;
    run('dd', ['if=/dev/urandom', `of=${mnt}/fill`, 'bs=1M', `count=${fillMiB}`, 'conv=fsync', 'status=none']);
    const fillSum = sha256(`${mnt}/fill`);
    run('umount', [mnt]);
    mounts.splice(mounts.indexOf(mnt), 1);
    const fsck = run('fsck.ext4', ['-fn', blockPath], { allowFail: true });
    assert.equal(fsck.status, 0, `fsck -fn: ${fsck.stdout}${fsck.stderr}`);
    run('mount', [blockPath, mnt]);
    mounts.push(mnt);
    assert.equal(sha256(`${mnt}/keep`), sum, 'data written before the resize is intact');
    assert.equal(sha256(`${mnt}/fill`), fillSum, 'data written beyond the old end reads back');
  }

  describe('on a kernel with UPDATE_SIZE', function () {
    beforeEach(function () {
      if (!kernelHasUpdateSize()) {
        console.log('    skipped: this kernel lacks UPDATE_SIZE (GET_FEATURES; Linux 6.16+)');
        this.skip();
      }
    });

    it('grows a mounted memory device in place when its manifest grows: resize2fs online, fsck clean, data intact', () => {
      write('grow.yaml', manifest('grow', 'target:\n  type: memory\nsize: 32MiB'));
      const made = outcomeOf(once(), 'grow');
      const id = made.devId!;
      const blockPath = `/dev/ublkb${id}`;
      const flags = ublkctlJson<Array<{ id: number; flagNames: string[] }>>(['list'], manifests.stateDir());
      assert.ok(flags.find((d) => d.id === id)?.flagNames.includes('UPDATE_SIZE'), 'ADD_DEV granted UPDATE_SIZE');
      const { mnt, sum } = ext4WithData(blockPath);

      write('grow.yaml', manifest('grow', 'target:\n  type: memory\nsize: 80MiB'));
      const pass = once();
      const resized = outcomeOf(pass, 'grow');
      assert.deepEqual([resized.action, resized.outcome, resized.devId], ['resize', 'ok', id], JSON.stringify(pass));
      assert.equal(pass.exitCode, 0);
      assert.equal(sysfsSize(id), 80 * MiB, '/sys/block size grew');
      growFileSystemAndCheck(blockPath, mnt, sum, 32 * MiB);

      const again = outcomeOf(once(), 'grow');
      assert.deepEqual([again.action, again.devId], ['noop', id], 'the record keeps the new size');
      const listed = ublkctlJson<Array<{ id: number; sizeBytes: number }>>(['list'], manifests.stateDir());
      assert.equal(listed.find((d) => d.id === id)?.sizeBytes, 80 * MiB);
    });

    it('grows a loop file ublk-ts created; a file it did not create must be grown by its owner first', () => {
      const made = path.join(work, 'made.img');
      write('made.yaml', manifest('made', `target:\n  type: loop\n  file: ${made}\n  create: true\nsize: 32MiB`));
      const theirs = path.join(work, 'theirs.img');
      run('truncate', ['-s', '16MiB', theirs]);
      write('theirs.yaml', manifest('theirs', `target:\n  type: loop\n  file: ${theirs}\nsize: 16MiB`));
      const first = once();
      assert.equal(first.exitCode, 0, JSON.stringify(first));
      const id = outcomeOf(first, 'made').devId!;
      const theirsId = outcomeOf(first, 'theirs').devId!;
      const blockPath = `/dev/ublkb${id}`;
      const { mnt, sum } = ext4WithData(blockPath);

      write('made.yaml', manifest('made', `target:\n  type: loop\n  file: ${made}\n  create: true\nsize: 72MiB`));
      write('theirs.yaml', manifest('theirs', `target:\n  type: loop\n  file: ${theirs}\nsize: 24MiB`));
      const pass = once();
      const grown = outcomeOf(pass, 'made');
      assert.deepEqual([grown.action, grown.outcome], ['resize', 'ok'], JSON.stringify(pass));
      assert.equal(fs.statSync(made).size, 72 * MiB, 'the file ublk-ts created grew');
      assert.equal(sysfsSize(id), 72 * MiB);
      const refused = outcomeOf(pass, 'theirs');
      assert.deepEqual([refused.action, refused.outcome], ['resize', 'failed'], JSON.stringify(pass));
      assert.match(refused.error ?? '', /theirs\.img holds 16777216 bytes.*ublk-ts did not create.*never grows/);
      assert.equal(fs.statSync(theirs).size, 16 * MiB, 'a file ublk-ts did not create is left alone');
      assert.equal(sysfsSize(theirsId), 16 * MiB, 'and its device keeps its size');
      growFileSystemAndCheck(blockPath, mnt, sum, 32 * MiB);

      run('truncate', ['-s', '24MiB', theirs]);
      // The failure backs off in a watcher; a one-shot pass tries again at once.
      const retried = outcomeOf(once(), 'theirs');
      assert.deepEqual([retried.action, retried.outcome], ['resize', 'ok'], JSON.stringify(retried));
      assert.equal(sysfsSize(theirsId), 24 * MiB);
    });

    it('ublkctl resize grows a device in place and shrinks it only while it is unused', () => {
      const dev = ublkctlJson<{ id: number }>(['add', '-t', 'memory', '--size', '16MiB'], manifests.stateDir());
      added.push(dev.id);
      const blockPath = `/dev/ublkb${dev.id}`;
      const grown = ublkctlJson<{ fromBytes: number; sizeBytes: number }>([
        'resize',
        String(dev.id),
        '40MiB',
        '--state-dir',
        manifests.stateDir(),
      ]);
      assert.deepEqual([grown.fromBytes, grown.sizeBytes], [16 * MiB, 40 * MiB]);
      assert.equal(sysfsSize(dev.id), 40 * MiB);
      // The last MiB, beyond the old end: written and read back through the device.
      const pattern = path.join(work, 'pattern');
      run('dd', ['if=/dev/urandom', `of=${pattern}`, 'bs=1M', 'count=1', 'status=none']);
      run('dd', [`if=${pattern}`, `of=${blockPath}`, 'bs=1M', 'seek=39', 'oflag=direct', 'status=none']);
      const back = path.join(work, 'back');
      run('dd', [`if=${blockPath}`, `of=${back}`, 'bs=1M', 'skip=39', 'count=1', 'iflag=direct', 'status=none']);
      assert.equal(sha256(back), sha256(pattern), 'the new sectors are served');

      const { mnt } = ext4WithData(blockPath);
      const busy = ublkctl(['resize', String(dev.id), '24MiB', '--state-dir', manifests.stateDir()]);
      assert.equal(busy.status, 1, busy.stderr);
      assert.match(busy.stderr, /in use: shrinking it would take data from under its user/);
      assert.equal(sysfsSize(dev.id), 40 * MiB, 'a device in use is never shrunk');
      run('umount', [mnt]);
      mounts.splice(mounts.indexOf(mnt), 1);
      const shrunk = ublkctl(['resize', String(dev.id), '24MiB', '--state-dir', manifests.stateDir()]);
      assert.equal(shrunk.status, 0, shrunk.stderr);
      assert.equal(sysfsSize(dev.id), 24 * MiB);
    });
  });

  describe('on a kernel without UPDATE_SIZE', function () {
    beforeEach(function () {
      if (kernelHasUpdateSize()) {
        console.log('    skipped: this kernel has UPDATE_SIZE (its resize tests run instead)');
        this.skip();
      }
    });

    it('reports a grown manifest of a mounted device as drift, saying the kernel lacks UPDATE_SIZE, and leaves it alone', () => {
      write('old.yaml', manifest('old', 'target:\n  type: memory\nsize: 32MiB'));
      const id = outcomeOf(once(), 'old').devId!;
      const blockPath = `/dev/ublkb${id}`;
      const { mnt, sum } = ext4WithData(blockPath);
      write('old.yaml', manifest('old', 'target:\n  type: memory\nsize: 64MiB'));
      const pass = once();
      const drift = outcomeOf(pass, 'old');
      assert.equal(drift.action, 'drift', JSON.stringify(pass));
      assert.match(drift.reason, /the kernel lacks UPDATE_SIZE \(Linux 6\.16\+\)/);
      assert.equal(pass.exitCode, 1);
      assert.equal(sysfsSize(id), 32 * MiB, 'device untouched');
      assert.equal(sha256(`${mnt}/keep`), sum, 'data intact');

      const refused = ublkctl(['resize', String(id), '64MiB', '--state-dir', manifests.stateDir()]);
      assert.equal(refused.status, 1, refused.stderr);
      assert.match(refused.stderr, /UPDATE_SIZE.*the kernel lacks UPDATE_SIZE/);
    });
  });
});
