/**
 * The watcher's decisions, against the fake kernel and with file watching
 * off: when a pass runs, how hints collapse, what a dead server and a
 * requeue lead to. Backoff delays are shortened so this runs in milliseconds.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Backoff } from '../../src/reconciler/backoff';
import { PassResult } from '../../src/reconciler/reconciler';
import { MIN_PASS_INTERVAL_MS, newlyDeadServers, ReconcileWatcher } from '../../src/reconciler/watcher';
import { FakeKernel } from '../fakes/fake-kernel';

/** Waits for an event; the bound is generous because a loaded CI machine is slow, never because the code is. */
function until(check: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const poll = (): void => {
      if (check()) resolve();
      else if (Date.now() > deadline) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(poll, 5);
    };
    poll();
  });
}

describe('reconcile watcher', () => {
  let dir: string;
  let kernel: FakeKernel;
  let passes: PassResult[];
  let log: string[];
  let watcher: ReconcileWatcher;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-watch-'));
    fs.writeFileSync(
      path.join(dir, 'a.yaml'),
      'apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata: {name: a}\nspec: {target: {type: null}, size: 1MiB}\n',
    );
    kernel = new FakeKernel();
    passes = [];
    log = [];
  });

  afterEach(async () => {
    await watcher.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function start(extra: { backoff?: Backoff; serverCheckMs?: number } = {}): void {
    watcher = new ReconcileWatcher(kernel, {
      dir,
      watchFiles: false,
      minPassIntervalMs: 0,
      resyncMs: 60_000,
      serverCheckMs: extra.serverCheckMs ?? 60_000,
      backoff: extra.backoff,
      log: (line) => log.push(line),
      onPass: (r) => passes.push(r),
    });
    watcher.start();
  }

  it('runs a pass at start that converges the host', async () => {
    start();
    await until(() => passes.length === 1, 'the first pass');
    assert.deepEqual(kernel.calls, ['start 0']);
    assert.equal(passes[0]!.exitCode, 0);
  });

  it('never overlaps passes: hints during a pass queue exactly one more, which names them', async () => {
    start();
    watcher.trigger('one');
    watcher.trigger('two');
    watcher.trigger('three');
    await watcher.settled();
    assert.equal(passes.length, 2, log.join('\n'));
    assert.deepEqual(
      log.filter((l) => l.startsWith('pass (')),
      ['pass (start)', 'pass (one, two, three)'],
    );
  });

  it('notices a dead server once, and its pass recovers the device', async () => {
    start({ serverCheckMs: 5 });
    await until(() => passes.length >= 1, 'the first pass');
    await watcher.settled();
    kernel.killServer(0);
    await until(() => kernel.calls.includes('recover 0'), 'the recovery');
    assert.equal(log.filter((l) => /server pid \d+ of a is gone/.test(l)).length, 1);
  });

  it('runs the pass a result asks for when its wait is due', async () => {
    kernel.failNextStart = new Error('no room');
    const backoff = new Backoff({ baseMs: 30, maxMs: 100 });
    start({ backoff });
    await until(() => passes.length === 1, 'the failing pass');
    await watcher.settled();
    watcher.trigger('a file changed');
    await until(() => passes.length === 2, 'the waiting pass');
    assert.equal(passes[1]!.devices[0]!.action, 'wait');
    assert.ok(passes[1]!.requeueAfterMs !== undefined && passes[1]!.requeueAfterMs <= 30);
    await until(() => kernel.calls.includes('start 0'), 'the retry after the backoff');
    assert.ok(log.includes('pass (backoff)'), log.join('\n'));
  });
});

/** The smallest spec a fake server can be started with. */
const TINY_NULL_SPEC = {
  target: { type: 'null' as const },
  sizeBytes: 1 << 20,
  queues: 1,
  depth: 1,
  maxIoSize: 4096,
  logicalBlockSize: 512,
  readOnly: false,
  lockMemory: false,
  recovery: 'reissue' as const,
};

describe('dead server detection', () => {
  it('reports each dead pid of an owned device once, and ignores devices it does not own', async () => {
    const kernel = new FakeKernel();
    await kernel.startServer(TINY_NULL_SPEC, { owner: 'reconciler', manifest: 'a' });
    await kernel.startServer(TINY_NULL_SPEC, { owner: 'ublkctl' });
    const seen = new Map<number, number>();
    assert.deepEqual(newlyDeadServers(kernel, seen, 1000), []);
    const pid = kernel.records.read(0)!.serverPid;
    kernel.killServer(0);
    kernel.killServer(1);
    assert.deepEqual(
      newlyDeadServers(kernel, seen, 2000).map((d) => d.what),
      ['a'],
    );
    assert.deepEqual(newlyDeadServers(kernel, seen, 3000), []);
    assert.equal(seen.get(pid), 2000, 'the time the death was first noticed is kept for the pass');
  });
});

describe('reconcile watcher: hostile directories', () => {
  let dir: string;
  let kernel: FakeKernel;
  let log: string[];
  let watcher: ReconcileWatcher | undefined;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-watch-'));
    kernel = new FakeKernel();
    log = [];
  });

  afterEach(async () => {
    await watcher?.stop();
    watcher = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('survives symlink loops among the manifests, and still creates a device added afterwards', async () => {
    const loopMadeAt = Date.now();
    fs.symlinkSync('b.yaml', path.join(dir, 'a.yaml'));
    fs.symlinkSync('a.yaml', path.join(dir, 'b.yaml'));
    fs.symlinkSync('self.yaml', path.join(dir, 'self.yaml'));
    const passes: PassResult[] = [];
    watcher = new ReconcileWatcher(kernel, {
      dir,
      debounceMs: 10,
      resyncMs: 60_000,
      serverCheckMs: 60_000,
      log: (line) => log.push(line),
      onPass: (r) => passes.push(r),
    });
    watcher.start();
    await until(() => log.some((l) => l.startsWith('watching ')), 'the watcher to be ready');
    await watcher.settled();
    fs.writeFileSync(
      path.join(dir, 'late.yaml'),
      'apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata: {name: late}\nspec: {target: {type: null}, size: 1MiB}\n',
    );
    await until(() => kernel.calls.includes('start 0'), 'the late device');
    const last = passes[passes.length - 1]!;
    assert.ok(
      last.manifestErrors.some((e) => /^self\.yaml: cannot read: ELOOP/.test(e)),
      last.manifestErrors.join('\n'),
    );
    // However long a busy machine takes, the watcher never passes faster than its rate bound allows.
    const bound = Math.ceil((Date.now() - loopMadeAt) / MIN_PASS_INTERVAL_MS) + 2;
    assert.ok(passes.length <= bound, `${passes.length} passes, at most ${bound} allowed by the rate bound`);
  });

  it('takes a watcher error as a hint: logged once per message, one debounced pass, never fatal', async () => {
    const passes: PassResult[] = [];
    watcher = new ReconcileWatcher(kernel, {
      dir,
      watchFiles: false,
      debounceMs: 10,
      resyncMs: 60_000,
      serverCheckMs: 60_000,
      log: (line) => log.push(line),
      onPass: (r) => passes.push(r),
    });
    watcher.start();
    await until(() => passes.length === 1, 'the first pass');
    for (let i = 0; i < 50; i++) watcher.watcherError(new Error('ELOOP: too many symbolic links encountered'));
    await until(() => passes.length === 2, 'the pass the errors asked for');
    await watcher.settled();
    assert.equal(log.filter((l) => l.startsWith('watcher error: ELOOP')).length, 1);
    assert.equal(passes.length, 2);
  });

  it('bounds the pass rate however many hints arrive', async () => {
    const starts: number[] = [];
    watcher = new ReconcileWatcher(kernel, {
      dir,
      watchFiles: false,
      minPassIntervalMs: 40,
      resyncMs: 60_000,
      serverCheckMs: 60_000,
      log: (line) => {
        if (line.startsWith('pass (')) starts.push(Date.now());
      },
    });
    watcher.start();
    const end = Date.now() + 300;
    while (Date.now() < end) {
      watcher.trigger('storm');
      await new Promise((r) => setTimeout(r, 1));
    }
    await watcher.settled();
    for (let i = 1; i < starts.length; i++)
      assert.ok(starts[i]! - starts[i - 1]! >= 39, `gap ${starts[i]! - starts[i - 1]!} ms`);
    assert.ok(starts.length <= 10, `${starts.length} passes in 300 ms`);
  });

  it('keeps running when a pass fails (a corrupt record), reporting it', async () => {
    const errors: Error[] = [];
    kernel.records.list = () => {
      throw new Error('/run/ublk-ts/devices/ublkb1.json: corrupt device record');
    };
    watcher = new ReconcileWatcher(kernel, {
      dir,
      watchFiles: false,
      resyncMs: 60_000,
      serverCheckMs: 5,
      log: (line) => log.push(line),
      onPassError: (err) => errors.push(err),
    });
    watcher.start();
    await until(() => errors.length === 1, 'the failed pass');
    await new Promise((r) => setTimeout(r, 30));
    assert.match(errors[0]!.message, /ublkb1\.json: corrupt device record/);
    assert.ok(log.some((l) => l.startsWith('pass failed: /run/ublk-ts/devices/ublkb1.json')));
  });
});
