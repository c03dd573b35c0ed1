import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DeviceTracker, isAlive, makeStateDir, requireUblk, ROOT, run, ublkctl, ublkctlJson, waitFor } from './helpers';

interface AddedDevice {
  id: number;
  blockPath: string;
  serverPid: number;
  logPath: string;
}

const TARGETS = path.join(ROOT, 'dist', 'test', 'fixtures', 'targets');
const MiB = 1024 * 1024;
const SECTOR = 512;

/**
 * Loop devices, device-mapper tables and ublk devices a test set up, torn
 * down in reverse order whatever happened: a mapper over a ublk device goes
 * before it, one under a ublk device after it.
 */
class FaultDevices {
  private readonly undo: Array<() => void> = [];

  /** Runs `step` at cleanup, before whatever was set up earlier. */
  later(step: () => void): void {
    this.undo.push(step);
  }

  /** A loop device over a new file of `bytes` random bytes. */
  loopOverRandomFile(dir: string, name: string, bytes: number): { loop: string; file: string } {
    const file = path.join(dir, name);
    run('dd', ['if=/dev/urandom', `of=${file}`, 'bs=1M', `count=${bytes / MiB}`, 'status=none']);
    const loop = run('losetup', ['--find', '--show', file]).stdout.trim();
    this.undo.push(() => {
      run('losetup', ['-d', loop], { allowFail: true });
      fs.rmSync(file, { force: true });
    });
    return { loop, file };
  }

  /** A device-mapper device with `table` (sectors), without udev: its devtmpfs node /dev/dm-N. */
  mapper(name: string, table: string): string {
    run('dmsetup', ['create', name, '--noudevsync', '--table', table]);
    this.undo.push(() => run('dmsetup', ['remove', '--noudevsync', name], { allowFail: true }));
    const node = `/dev/${run('dmsetup', ['info', '-c', '--noheadings', '-o', 'blkdevname', name]).stdout.trim()}`;
    assert.ok(fs.existsSync(node), `${node} exists for ${name}`);
    return node;
  }

  /**
   * A memory-backed null_blk disk that supports discard but not write-zeroes
   * (a hole punch on it fails), made through configfs.
   */
  nullBlkWithDiscard(name: string, sizeMiB: number): string {
    // The guest's modules sit flat in this folder; busybox's insmod reads them (the host may have no kmod).
    const modules = process.env.UBLK_TS_MODULES_DIR ?? '';
    for (const m of ['configfs', 'null_blk']) {
      if (!fs.existsSync(`/sys/module/${m}`)) {
        run('busybox', ['insmod', path.join(modules, `${m}.ko`), ...(m === 'null_blk' ? ['nr_devices=0'] : [])]);
      }
    }
    if (!fs.existsSync('/sys/kernel/config/nullb')) run('mount', ['-t', 'configfs', 'configfs', '/sys/kernel/config']);
    const dir = `/sys/kernel/config/nullb/${name}`;
    fs.mkdirSync(dir);
    this.undo.push(() => {
      fs.writeFileSync(path.join(dir, 'power'), '0');
      fs.rmdirSync(dir);
    });
    for (const [attr, value] of [
      ['size', String(sizeMiB)],
      ['memory_backed', '1'],
      ['discard', '1'],
      ['power', '1'],
    ]) {
      fs.writeFileSync(path.join(dir, attr!), value!);
    }
    // Newer kernels name the disk after its configfs directory, older ones nullb<index>.
    const candidates = [`/dev/${name}`, `/dev/nullb${fs.readFileSync(path.join(dir, 'index'), 'utf8').trim()}`];
    const node = candidates.find((c) => fs.existsSync(c));
    assert.ok(node, `one of ${candidates.join(', ')} exists`);
    return node;
  }

  cleanup(): void {
    for (const step of this.undo.reverse()) step();
    this.undo.length = 0;
  }
}

/** Reads `bytes` at `offset` of `device` with O_DIRECT; returns dd's status and message. */
function directRead(device: string, offset: number, bytes: number): { status: number | null; stderr: string } {
  const r = run(
    'dd',
    [`if=${device}`, 'of=/dev/null', `bs=${bytes}`, 'count=1', `skip=${offset}`, 'iflag=direct,skip_bytes'],
    { allowFail: true },
  );
  return { status: r.status, stderr: r.stderr };
}

/** PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE: what PR_SET_IO_FLUSHER sets in a task's flags. */
const PR_IO_FLUSHER = 0x00080000 | 0x00100000;

/** The threads of `pid` named `name`, with their task flags (/proc/PID/task/TID/stat field 9). */
function threadsNamed(pid: number, name: string): Array<{ tid: number; flags: number }> {
  const found: Array<{ tid: number; flags: number }> = [];
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (comm === name) found.push({ tid: Number(tid), flags: Number(fields[6]) });
  }
  return found;
}

function lockedKiB(pid: number): number {
  const m = /^VmLck:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]);
}

function sha256Range(device: string, offset: number, bytes: number): string {
  return run('bash', [
    '-c',
    `dd if=${device} bs=64k skip=${offset} count=${bytes / 65536} iflag=direct,skip_bytes,count_bytes status=none | sha256sum`,
  ]).stdout.split(' ')[0]!;
}

describe('data-plane integrity (real ublk driver, faults from device-mapper)', function () {
  requireUblk(this);
  const devices = new DeviceTracker();
  const faults = new FaultDevices();
  const stateDir = makeStateDir();
  const scratch = fs.mkdtempSync('/tmp/ublk-ts-integrity-');
  afterEach(() => {
    faults.cleanup();
    devices.cleanup();
  });

  function add(args: string[]): AddedDevice {
    const dev = ublkctlJson<AddedDevice>(['add', ...args], stateDir);
    devices.add(dev.id);
    faults.later(() => {
      if (fs.existsSync(`/sys/class/ublk-char/ublkc${dev.id}`)) ublkctl(['del', String(dev.id)], stateDir);
      devices.forget(dev.id);
    });
    return dev;
  }

  it('loop: a read that meets EIO after partial progress fails with EIO, never returns zeroes; the server stays up', () => {
    const { loop } = faults.loopOverRandomFile(scratch, 'eio.img', 16 * MiB);
    // 8 MiB..9 MiB of the mapper device answers every IO with EIO.
    const bad = { start: 8 * MiB, end: 9 * MiB };
    const table = [
      `0 ${bad.start / SECTOR} linear ${loop} 0`,
      `${bad.start / SECTOR} ${(bad.end - bad.start) / SECTOR} error`,
      `${bad.end / SECTOR} ${(16 * MiB - bad.end) / SECTOR} linear ${loop} ${bad.end / SECTOR}`,
    ].join('\n');
    const mapper = faults.mapper(`ublk-ts-eio-${process.pid}`, table);
    // Buffered: the page cache reads up to the first bad page and io_uring returns that short count.
    const dev = add(['-t', 'loop', '--file', mapper, '--direct-io', 'off', '--queues', '1']);

    const straddling = directRead(dev.blockPath, bad.start - 32 * 1024, 64 * 1024);
    assert.notEqual(straddling.status, 0, 'a read straddling the bad range fails (it returned data instead)');
    assert.match(straddling.stderr, /Input\/output error/);
    const inside = directRead(dev.blockPath, bad.start + 64 * 1024, 64 * 1024);
    assert.notEqual(inside.status, 0, 'a read inside the bad range fails');
    assert.match(inside.stderr, /Input\/output error/);

    assert.equal(
      sha256Range(dev.blockPath, 0, bad.start - 64 * 1024),
      sha256Range(loop, 0, bad.start - 64 * 1024),
      'the good range before reads the backing bytes',
    );
    assert.equal(
      sha256Range(dev.blockPath, bad.end, 16 * MiB - bad.end),
      sha256Range(loop, bad.end, 16 * MiB - bad.end),
      'the good range after reads the backing bytes',
    );
    assert.ok(isAlive(dev.serverPid), 'the server still runs');
    const r = ublkctl(['del', String(dev.id)], stateDir);
    assert.equal(r.status, 0, r.stderr);
    devices.forget(dev.id);
  });

  it('loop: reading past the end of a backing file that shrank fails with EIO, not zeroes', () => {
    const file = path.join(scratch, 'shrinks.img');
    const dev = add(['-t', 'loop', '--file', file, '--size', '16MiB', '--create']);
    run('dd', ['if=/dev/urandom', `of=${dev.blockPath}`, 'bs=1M', 'count=16', 'oflag=direct', 'status=none']);
    fs.truncateSync(file, 8 * MiB);
    const beyond = directRead(dev.blockPath, 12 * MiB, 64 * 1024);
    assert.notEqual(beyond.status, 0, 'a read past the new end fails (it returned zeroes instead)');
    assert.match(beyond.stderr, /Input\/output error/);
    const straddling = directRead(dev.blockPath, 8 * MiB - 32 * 1024, 64 * 1024);
    assert.notEqual(straddling.status, 0, 'a read across the new end fails');
    assert.equal(directRead(dev.blockPath, 0, 64 * 1024).status, 0, 'a read before it still works');
    assert.ok(isAlive(dev.serverPid), 'the server still runs');
  });

  it('loop on a block device: discard is BLKDISCARD (works where the device cannot write zeroes)', () => {
    const nullb = faults.nullBlkWithDiscard(`ublk-ts-${process.pid}`, 64);
    const queue = `/sys/block/${path.basename(nullb)}/queue`;
    assert.ok(Number(fs.readFileSync(`${queue}/discard_max_bytes`, 'utf8')) > 0, 'the backing device discards');
    assert.equal(Number(fs.readFileSync(`${queue}/write_zeroes_max_bytes`, 'utf8')), 0, 'and cannot write zeroes');
    run('dd', ['if=/dev/urandom', `of=${nullb}`, 'bs=1M', 'count=64', 'oflag=direct', 'status=none']);
    const dev = add(['-t', 'loop', '--file', nullb, '--direct-io', 'on']);
    const discard = run('blkdiscard', ['--offset', String(16 * MiB), '--length', String(16 * MiB), dev.blockPath], {
      allowFail: true,
    });
    assert.equal(discard.status, 0, `blkdiscard on the ublk device: ${discard.stderr}`);
    const zeroes = run(
      'bash',
      ['-c', `cmp -n ${16 * MiB} <(dd if=${nullb} bs=1M skip=16 count=16 iflag=direct status=none) /dev/zero`],
      { allowFail: true },
    );
    assert.equal(zeroes.status, 0, `the discarded range of the backing device reads as zeroes: ${zeroes.stdout}`);
  });

  it('memory, read-only: a write that reaches the server anyway (through device-mapper) fails, the data stays', () => {
    const dev = add(['-t', 'memory', '--size', '16MiB', '--read-only']);
    // device-mapper opens the disk for writing and sends write bios; the
    // block layer only warns that the disk is read-only.
    const mapper = faults.mapper(`ublk-ts-ro-${process.pid}`, `0 ${(16 * MiB) / SECTOR} linear ${dev.blockPath} 0`);
    const write = run('dd', ['if=/dev/urandom', `of=${mapper}`, 'bs=64k', 'count=1', 'oflag=direct'], {
      allowFail: true,
    });
    assert.notEqual(write.status, 0, 'the write fails');
    const zeroes = run(
      'bash',
      ['-c', `cmp -n 65536 <(dd if=${dev.blockPath} bs=64k count=1 iflag=direct status=none) /dev/zero`],
      { allowFail: true },
    );
    assert.equal(zeroes.status, 0, `the device still reads zeroes: ${zeroes.stdout}`);
    const discard = run('blkdiscard', ['--length', '65536', mapper], { allowFail: true });
    assert.notEqual(discard.status, 0, 'a discard fails too');
  });

  it("queue threads (native and JS) are IO flushers; lockMemory locks the server's memory", () => {
    const plain = add(['-t', 'memory', '--size', '16MiB', '--queues', '2']);
    const locked = add(['-t', 'memory', '--size', '16MiB', '--lock-memory']);
    const js = add(['-t', 'js', '--module', path.join(ROOT, 'dist', 'examples', 'null-js.js'), '--size', '16MiB']);
    for (const [dev, queues] of [
      [plain, 2],
      [locked, 1],
      [js, 1],
    ] as const) {
      for (let qid = 0; qid < queues; qid++) {
        const threads = threadsNamed(dev.serverPid, `ublk${dev.id}q${qid}`);
        assert.equal(threads.length, 1, `server ${dev.serverPid} has one thread ublk${dev.id}q${qid}`);
        assert.equal(
          threads[0]!.flags & PR_IO_FLUSHER,
          PR_IO_FLUSHER,
          `ublk${dev.id}q${qid} is an IO flusher (flags 0x${threads[0]!.flags.toString(16)})`,
        );
      }
    }
    assert.equal(lockedKiB(plain.serverPid), 0, 'without lockMemory nothing is locked');
    assert.ok(
      lockedKiB(locked.serverPid) > 16 * 1024,
      `lockMemory locks the server: ${lockedKiB(locked.serverPid)} kB`,
    );
  });

  it('js: a target that keeps io.buffer and touches it after the device is deleted does not crash the server', async () => {
    const logStart = run('dmesg', []).stdout.length;
    const dev = add(['-t', 'js', '--module', path.join(TARGETS, 'keeps-buffer.js'), '--size', '16MiB']);
    run('dd', [`if=${dev.blockPath}`, 'of=/dev/null', 'bs=64k', 'count=64', 'iflag=direct', 'status=none']);
    run('dd', ['if=/dev/zero', `of=${dev.blockPath}`, 'bs=64k', 'count=64', 'oflag=direct', 'status=none']);
    const r = ublkctl(['del', String(dev.id)], stateDir);
    assert.equal(r.status, 0, r.stderr);
    devices.forget(dev.id);
    await waitFor(() => !isAlive(dev.serverPid), 120_000, `server ${dev.serverPid} to exit`);
    const log = fs.readFileSync(dev.logPath, 'utf8');
    const segfaults = run('dmesg', [])
      .stdout.slice(logStart)
      .split('\n')
      .filter((l) => /segfault|general protection/.test(l));
    assert.deepEqual(segfaults, [], 'no process crashed');
    assert.match(log, /exiting with status 0/, `the server ended cleanly:\n${log}`);
  });

  it('js: deleting a device while target IO it never awaited is still reading waits for that read before unmapping its buffer', async () => {
    const { loop } = faults.loopOverRandomFile(scratch, 'slow.img', 8 * MiB);
    // Every read of the mapper waits 10 s in the delay target: far longer than deleting the device takes.
    const name = `ublk-ts-slow-${process.pid}`;
    const slow = faults.mapper(name, `0 ${(8 * MiB) / SECTOR} delay ${loop} 0 10000`);
    // Without readahead one 4 KiB read is one bio: once the delay target holds none, that read is done.
    run('blockdev', ['--setra', '0', slow]);
    /** Reads the delay target holds: its status is "START LENGTH delay READS WRITES FLUSHES". */
    const heldReads = (status: string): number => Number(status.trim().split(/\s+/)[3]);
    const report = path.join(scratch, `held-at-close-${process.pid}`);
    fs.rmSync(report, { force: true });
    const offset = 4 * MiB;
    const options = JSON.stringify({ file: slow, mapper: name, report, offset });
    const module = path.join(TARGETS, 'unawaited-read.js');
    const dev = add(['-t', 'js', '--module', module, '--options', options, '--size', '8MiB', '--queues', '1']);
    run('dd', [`if=${dev.blockPath}`, 'of=/dev/null', 'bs=4k', 'count=1', `skip=${offset}`, 'iflag=direct,skip_bytes']);
    await waitFor(
      () => heldReads(run('dmsetup', ['status', name]).stdout) > 0,
      60_000,
      `the target's read to reach ${name}`,
    );
    const r = ublkctl(['del', String(dev.id)], stateDir);
    assert.equal(r.status, 0, r.stderr);
    devices.forget(dev.id);
    await waitFor(() => !isAlive(dev.serverPid), 120_000, `server ${dev.serverPid} to exit`);
    const atClose = fs.readFileSync(report, 'utf8');
    assert.equal(
      heldReads(atClose),
      0,
      `no read was still held at ${name} once the queue had closed: "${atClose.trim()}"`,
    );
    const log = fs.readFileSync(dev.logPath, 'utf8');
    assert.match(log, /exiting with status 0/, `the server ended cleanly:\n${log}`);
  });
});
