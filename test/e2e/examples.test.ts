import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ChildTracker, DeviceTracker, requireUblk, ROOT, waitFor } from './helpers';

const EXAMPLE = path.join(ROOT, 'dist', 'examples', 'null-native.js');

describe('examples (real ublk driver)', function () {
  requireUblk(this);
  const children = new ChildTracker();
  const devices = new DeviceTracker();
  afterEach(async () => {
    await children.stopAll();
    devices.cleanup();
  });

  it('null-native.js add serves a device until SIGINT, then deletes it', async () => {
    const child = children.spawn(process.execPath, [EXAMPLE, 'add', '16MiB']);
    let out = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    await waitFor(() => /is LIVE/.test(out) || child.exitCode !== null, 120_000, 'the example to report LIVE');
    const m = /dev (\d+): (\/dev\/ublkb\d+) is LIVE/.exec(out);
    assert.ok(m, out);
    devices.add(Number(m[1]));
    const blockPath = m[2]!;
    const size = spawnSync('blockdev', ['--getsize64', blockPath], { encoding: 'utf8' });
    assert.equal(size.stdout.trim(), String(16 * 1024 * 1024));
    child.kill('SIGINT');
    assert.equal(await exited, 0, out);
    assert.match(out, /deleted/);
    assert.ok(!fs.existsSync(blockPath));
  });

  it('null-native.js del ID removes a device served by another process', async () => {
    const child = children.spawn(process.execPath, [EXAMPLE, 'add', '16MiB']);
    let out = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    await waitFor(() => /is LIVE/.test(out) || child.exitCode !== null, 120_000, 'the example to report LIVE');
    const id = /dev (\d+):/.exec(out)![1]!;
    devices.add(Number(id));
    const del = spawnSync(process.execPath, [EXAMPLE, 'del', id], { encoding: 'utf8' });
    assert.equal(del.status, 0, del.stderr);
    assert.equal(await exited, 0, 'the serving process ends cleanly once its device is stopped');
    assert.match(out, /queue 0: \d+ requests/);
    assert.ok(!fs.existsSync(`/dev/ublkb${id}`));
  });
});
