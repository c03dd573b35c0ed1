/**
 * What keeps a device's log bounded on /run: the rate limit on repeated
 * lines, the size cap with one rotated file, and a reader that takes only
 * the tail of a log.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LogLimiter, LogLimits } from '../../src/device/log-limiter';
import { readTail, rotateIfLarger } from '../../src/server/server-log';

describe('log rate limit', () => {
  const limits: LogLimits = { perKind: 3, total: 5, intervalMs: 10_000, maxLineChars: 40 };
  let now = 0;
  const clock = (): number => now;
  beforeEach(() => (now = 1_000_000));

  it('lets through the first lines of a kind, then sums up the rest once the interval ends', () => {
    const limiter = new LogLimiter(limits, clock);
    const written: string[] = [];
    for (let tag = 0; tag < 1000; tag++) written.push(...limiter.admit(`tag ${tag}: read at ${tag * 4096} failed`));
    assert.deepEqual(written, ['tag 0: read at 0 failed', 'tag 1: read at 4096 failed', 'tag 2: read at 8192 failed']);
    assert.equal(limiter.suppressedUntil, 1_000_000 + 10_000);
    now += 10_000;
    assert.deepEqual(limiter.admit('tag 5: read at 0 failed'), [
      'suppressed 997 similar messages in 10.0 s, the first: tag 3: read at 12288 failed',
      'tag 5: read at 0 failed',
    ]);
    assert.equal(limiter.suppressedUntil, undefined, 'a fresh interval with nothing left out yet');
  });

  it('gives each kind its own budget under a total one', () => {
    const limiter = new LogLimiter(limits, clock);
    const written = ['a 1', 'a 2', 'a 3', 'a 4', 'b 1', 'b 2', 'c 1', 'c 2', 'd 1'].flatMap((l) => limiter.admit(l));
    assert.deepEqual(written, ['a 1', 'a 2', 'a 3', 'b 1', 'b 2']);
    assert.deepEqual(limiter.flush(), [
      'suppressed 1 similar message in 0.0 s, the first: a 4',
      'suppressed 2 similar messages in 0.0 s, the first: c 1',
      'suppressed 1 similar message in 0.0 s, the first: d 1',
    ]);
    assert.deepEqual(limiter.flush(), []);
  });

  it('cuts long lines', () => {
    const [line] = new LogLimiter(limits, clock).admit('x'.repeat(100));
    assert.equal(line, `${'x'.repeat(40)}… (60 more characters)`);
  });
});

describe('log file bounds', () => {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-log-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('moves a log past its cap to <log>.1 and goes on writing from empty, even after a rename', () => {
    const pending = path.join(dir, '.starting.log');
    const fd = fs.openSync(pending, 'a', 0o640);
    try {
      fs.writeSync(fd, 'first\n'.repeat(10));
      assert.equal(rotateIfLarger(fd, 100), false, 'under the cap');
      fs.writeSync(fd, 'second\n'.repeat(20));
      // The launcher names the log once the device has an id; the server's fd follows the file.
      const log = path.join(dir, 'ublkb3.log');
      fs.renameSync(pending, log);
      fs.writeFileSync(`${log}.1`, 'an older rotation\n');
      assert.equal(rotateIfLarger(fd, 100), true);
      assert.equal(fs.readFileSync(`${log}.1`, 'utf8'), `${'first\n'.repeat(10)}${'second\n'.repeat(20)}`);
      assert.equal(fs.statSync(`${log}.1`).mode & 0o777, 0o640);
      fs.writeSync(fd, 'third\n');
      assert.equal(fs.readFileSync(log, 'utf8'), 'third\n', 'appends start again at the beginning');
    } finally {
      fs.closeSync(fd);
    }
  });

  it('does not follow a link planted at <log>.1', () => {
    const log = path.join(dir, 'ublkb3.log');
    const victim = path.join(dir, 'victim');
    fs.writeFileSync(victim, 'untouched');
    fs.symlinkSync(victim, `${log}.1`);
    const fd = fs.openSync(log, 'a');
    try {
      fs.writeSync(fd, 'x'.repeat(200));
      assert.throws(() => rotateIfLarger(fd, 100), /ELOOP/);
      assert.equal(fs.readFileSync(victim, 'utf8'), 'untouched');
    } finally {
      fs.closeSync(fd);
    }
  });

  it('reads only the tail of a large log', () => {
    const log = path.join(dir, 'big.log');
    const lines = Array.from({ length: 100_000 }, (_, i) => `line ${i} ${'.'.repeat(40)}`);
    fs.writeFileSync(log, `${lines.join('\n')}\n`);
    assert.equal(readTail(log, 3), lines.slice(-3).join('\n'));
    // A window that starts mid-line drops the partial line.
    const tail = readTail(log, 1000, 200).split('\n');
    assert.ok(tail.length >= 3 && tail.length <= 5, `${tail.length} lines`);
    assert.deepEqual(tail, lines.slice(-tail.length));
    assert.equal(readTail(path.join(dir, 'missing.log')), '');
  });
});
