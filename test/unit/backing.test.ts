/**
 * What a root server opens for a memory device, against files a local
 * user plants: /dev/shm is writable by everyone, so the directory and the
 * files in it are checked, and planted ones are refused and left untouched.
 * Runs as root on the host (the plants are made as nobody with setpriv).
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { SpecError } from '../../src/errors';
import { discardMemory, memoryPath, openBacking, resizeBacking } from '../../src/device/backing';
import { normalizeDeviceSpec } from '../../src/spec/device-spec';

const NOBODY = 65534;

/** Runs a command as nobody, as a local user without privileges would. */
function asNobody(...argv: string[]): void {
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', ...argv], { encoding: 'utf8' });
  assert.equal(r.status, 0, `${argv.join(' ')} as nobody: ${r.stderr}`);
}

function refusal(pattern: RegExp): (err: unknown) => boolean {
  return (err) => {
    assert.ok(err instanceof SpecError, `expected a SpecError, got ${String(err)}`);
    assert.match(err.message, pattern);
    return true;
  };
}

describe('memory backing store', function () {
  const spec = normalizeDeviceSpec({ target: 'memory', size: '1MiB' }, { maxQueues: 1 });
  let shm: string;
  let memoryDir: string;

  before(function () {
    if (process.geteuid?.() !== 0) this.skip(); // the plants need another user than the server's
  });

  beforeEach(() => {
    // A stand-in for /dev/shm: world-writable and sticky.
    shm = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-shm-'));
    fs.chmodSync(shm, 0o1777);
    memoryDir = path.join(shm, 'ublk-ts');
  });

  afterEach(() => fs.rmSync(shm, { recursive: true, force: true }));

  it('creates its directory 0700 and a file of the device size, and reopens it for recovery', () => {
    const backing = openBacking(spec, { memoryDir })!;
    backing.bindToDevice(7);
    const st = fs.statSync(memoryDir);
    assert.equal(st.mode & 0o777, 0o700);
    assert.equal(fs.statSync(memoryPath(7, memoryDir)).size, spec.sizeBytes);
    backing.close();
    const again = openBacking(spec, { memoryDir, recoverDevId: 7 })!;
    assert.equal(fs.fstatSync(again.fd).size, spec.sizeBytes);
    again.close();
  });

  it('refuses a directory another user made in its place, and leaves it alone', () => {
    asNobody('mkdir', '-m', '0777', memoryDir);
    assert.throws(() => openBacking(spec, { memoryDir }), refusal(/owned by uid 65534, not 0/));
    assert.deepEqual(fs.readdirSync(memoryDir), []);
    assert.equal(fs.statSync(memoryDir).uid, NOBODY);
  });

  it('refuses a symbolic link another user put in its place, and writes nothing where it points', () => {
    const victim = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-victim-'));
    try {
      asNobody('ln', '-s', victim, memoryDir);
      assert.throws(() => openBacking(spec, { memoryDir }), refusal(/memory directory .* is a symbolic link/));
      assert.deepEqual(fs.readdirSync(victim), []);
    } finally {
      fs.rmSync(victim, { recursive: true });
    }
  });

  it("removes a deleted device's memory from its own directory, never through a planted link", () => {
    const backing = openBacking(spec, { memoryDir })!;
    backing.bindToDevice(5);
    backing.close();
    discardMemory(5, memoryDir);
    assert.ok(!fs.existsSync(memoryPath(5, memoryDir)));
    fs.rmdirSync(memoryDir);
    const victim = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-victim-'));
    try {
      fs.writeFileSync(path.join(victim, 'dev5.mem'), 'not ours');
      asNobody('ln', '-s', victim, memoryDir);
      discardMemory(5, memoryDir);
      assert.equal(fs.readFileSync(path.join(victim, 'dev5.mem'), 'utf8'), 'not ours');
    } finally {
      fs.rmSync(victim, { recursive: true });
    }
  });

  it('refuses its own directory once others may write it', () => {
    fs.mkdirSync(memoryDir, { mode: 0o700 });
    fs.chmodSync(memoryDir, 0o733);
    assert.throws(() => openBacking(spec, { memoryDir }), refusal(/mode is 0733, not 0700/));
  });

  describe('recovery', () => {
    let victim: string;
    const victimText = 'not a memory device\n';
    beforeEach(() => {
      fs.mkdirSync(memoryDir, { mode: 0o700 });
      victim = path.join(shm, 'victim');
      fs.writeFileSync(victim, victimText);
    });

    it('refuses a symbolic link in place of the memory file, and leaves its target untouched', () => {
      fs.truncateSync(victim, spec.sizeBytes);
      fs.symlinkSync(victim, memoryPath(3, memoryDir));
      assert.throws(() => openBacking(spec, { memoryDir, recoverDevId: 3 }), refusal(/is a symbolic link/));
      assert.equal(fs.statSync(victim).size, spec.sizeBytes);
    });

    it('refuses a memory file with a second name (a hard link)', () => {
      fs.truncateSync(victim, spec.sizeBytes);
      fs.linkSync(victim, memoryPath(3, memoryDir));
      assert.throws(() => openBacking(spec, { memoryDir, recoverDevId: 3 }), refusal(/has 2 links, not 1/));
    });

    it('refuses a memory file owned by someone else', () => {
      fs.writeFileSync(memoryPath(3, memoryDir), '');
      fs.truncateSync(memoryPath(3, memoryDir), spec.sizeBytes);
      fs.chownSync(memoryPath(3, memoryDir), NOBODY, NOBODY);
      assert.throws(() => openBacking(spec, { memoryDir, recoverDevId: 3 }), refusal(/owned by uid 65534, not 0/));
    });

    it('refuses something that is not a regular file', () => {
      fs.mkdirSync(memoryPath(3, memoryDir));
      assert.throws(() => openBacking(spec, { memoryDir, recoverDevId: 3 }), refusal(/not a regular file|EISDIR/));
    });
  });
});

describe('resizing a backing store (online resize)', function () {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-resize-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('grows and shrinks a memory file in its own directory', function () {
    if (process.geteuid?.() !== 0) this.skip(); // the memory directory must be the server's (root's) own
    const spec = normalizeDeviceSpec({ target: 'memory', size: '1MiB' }, { maxQueues: 1 });
    const memoryDir = path.join(dir, 'ublk-ts');
    const backing = openBacking(spec, { memoryDir })!;
    backing.bindToDevice(4);
    backing.close();
    resizeBacking(4, spec, 3 * 1024 * 1024, { memoryDir });
    assert.equal(fs.statSync(memoryPath(4, memoryDir)).size, 3 * 1024 * 1024);
    resizeBacking(4, spec, 512 * 1024, { memoryDir });
    assert.equal(fs.statSync(memoryPath(4, memoryDir)).size, 512 * 1024);
    // A recovery after a grow whose record was not yet written finds a larger file: accepted.
    resizeBacking(4, spec, 2 * 1024 * 1024, { memoryDir });
    openBacking(spec, { memoryDir, recoverDevId: 4 })!.close();
  });

  it('grows a loop file it created, never one it did not, and never a file put in its place', () => {
    const file = path.join(dir, 'made.img');
    const spec = normalizeDeviceSpec(
      { target: { type: 'loop', file, create: true, directIo: false }, size: '1MiB' },
      { maxQueues: 1 },
    );
    const backing = openBacking(spec)!;
    const createdFile = backing.createdFile;
    backing.close();
    assert.ok(createdFile, 'the record learns which file was created');
    resizeBacking(0, spec, 2 * 1024 * 1024, { createdFile });
    assert.equal(fs.statSync(file).size, 2 * 1024 * 1024);
    resizeBacking(0, spec, 1024 * 1024, { createdFile });
    assert.equal(fs.statSync(file).size, 2 * 1024 * 1024, 'a loop file is never shrunk');

    assert.throws(
      () => resizeBacking(0, spec, 4 * 1024 * 1024),
      refusal(/made\.img holds 2097152 bytes, less than the new size 4194304; it is a file ublk-ts did not create/),
    );
    fs.rmSync(file);
    fs.writeFileSync(file, Buffer.alloc(1024 * 1024));
    assert.throws(() => resizeBacking(0, spec, 4 * 1024 * 1024, { createdFile }), refusal(/did not create/));
    assert.equal(
      fs.statSync(file).size,
      1024 * 1024,
      'a file of the same name that ublk-ts did not make is left alone',
    );
    resizeBacking(0, spec, 1024 * 1024, { createdFile }); // large enough already: nothing to do
  });
});
