import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openBacking } from '../../src/device/backing';
import { normalizeDeviceSpec } from '../../src/spec/device-spec';

/** The fs module itself (not the import's read-only view of it), to watch its fsyncSync. */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const nodeFs = require('node:fs') as { fsyncSync: typeof fs.fsyncSync };

describe('loop backing file', () => {
  let dir: string;
  const realFsync = nodeFs.fsyncSync;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-backing-'));
  });
  afterEach(() => {
    nodeFs.fsyncSync = realFsync;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('create: true makes the file durable: the file and then its directory are fsynced', () => {
    const synced: Array<{ ino: number; directory: boolean; size: number }> = [];
    nodeFs.fsyncSync = (fd: number) => {
      const st = fs.fstatSync(fd);
      synced.push({ ino: st.ino, directory: st.isDirectory(), size: st.size });
      realFsync(fd);
    };
    const file = path.join(dir, 'new.img');
    const spec = normalizeDeviceSpec({ target: { type: 'loop', file, create: true, directIo: false }, size: '1MiB' });
    const backing = openBacking(spec)!;
    try {
      const fileIno = fs.statSync(file).ino;
      const dirIno = fs.statSync(dir).ino;
      const fileSync = synced.findIndex((s) => s.ino === fileIno);
      const dirSync = synced.findIndex((s) => s.ino === dirIno && s.directory);
      assert.ok(fileSync >= 0, 'the new file was fsynced');
      assert.equal(synced[fileSync]!.size, 1024 * 1024, 'after it got its size');
      assert.ok(dirSync > fileSync, `the parent directory was fsynced after the file: ${JSON.stringify(synced)}`);
      assert.equal(backing.blockDevice, false);
      assert.equal(backing.discards, true);
    } finally {
      backing.close();
    }
  });
});
