/**
 * How the launcher hands a device server its spec: on stdin, never in
 * argv, where every user could read a js target's options and where one
 * argument may not pass 128 KiB. Runs the real server; on a host without
 * ublk it fails at the control device, after it has read its request.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnServer, startServer } from '../../src/server/launcher';
import { normalizeDeviceSpec } from '../../src/spec/device-spec';

const TARGET = path.resolve(__dirname, '..', 'fixtures', 'targets', 'hold.js');
const SECRET = 'hunter2-do-not-show';

describe('device server launch', function () {
  this.timeout(60_000);
  let stateDir: string;
  beforeEach(() => (stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-launch-'))));
  afterEach(() => fs.rmSync(stateDir, { recursive: true, force: true }));

  it("keeps a js target's options out of the server's command line and its log", async () => {
    const spec = normalizeDeviceSpec(
      { target: { type: 'js', module: TARGET, options: { password: SECRET } }, size: '1MiB' },
      { maxQueues: 1 },
    );
    const log = path.join(stateDir, 'server.log');
    const logFd = fs.openSync(log, 'a', 0o600);
    const child = spawnServer({ spec }, logFd);
    fs.closeSync(logFd);
    const exited = new Promise((resolve) => child.once('exit', resolve));
    try {
      // uv_spawn returns once the server has exec'ed, long before node has started in it.
      const cmdline = fs.readFileSync(`/proc/${child.pid}/cmdline`, 'utf8');
      assert.match(cmdline, /server-main\.js/, 'read while the server runs');
      assert.ok(!cmdline.includes(SECRET), cmdline);
    } finally {
      await exited;
    }
    const text = fs.readFileSync(log, 'utf8');
    assert.match(text, /starting js device: .*"options":"<1 not logged: password>"/, text);
    assert.ok(!text.includes(SECRET), text);
  });

  it('hands over a spec far larger than one argument may be (128 KiB)', async function () {
    if (fs.existsSync('/dev/ublk-control')) this.skip(); // here the server would make a device
    const options = { blob: 'x'.repeat(512 * 1024) };
    const spec = normalizeDeviceSpec(
      { target: { type: 'js', module: TARGET, options }, size: '1MiB' },
      { maxQueues: 1 },
    );
    // Without ublk the server fails at the control device: that it got there means it read the whole spec.
    await assert.rejects(startServer(spec, { stateDir }), (err: Error) => {
      assert.doesNotMatch(err.message, /E2BIG|argument list too long/i);
      assert.match(err.message, /ublk-control/);
      return true;
    });
  });
});
