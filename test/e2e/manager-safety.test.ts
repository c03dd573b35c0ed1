/**
 * The manager never destroys a device on evidence it cannot trust, on a
 * real ublk kernel: an empty manifest holds its LIVE device, a typo'd loop
 * path leaves the old device serving, a cosmetic edit changes nothing, a
 * hostile file costs one error and not its neighbours, and a symlink loop
 * does not bring the watcher down. The same cases run on the host against
 * the fake kernel in test/unit/reconcile-table.test.ts.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  listDevices,
  manifest,
  outcomeOf,
  parsePass,
  ReconcilePass,
  requireUblk,
  useManifestDir,
  waitFor,
} from './helpers';

describe('ublk-reconcile safety (real ublk driver)', function () {
  requireUblk(this);
  const manifests = useManifestDir(this);
  const write = (file: string, text: string): void => manifests.write(file, text);
  let scratch: string;

  beforeEach(() => {
    scratch = fs.mkdtempSync('/tmp/ublk-ts-safety-');
  });

  afterEach(async () => {
    // With every manifest file gone, a pass has positive evidence and deletes what the test made.
    await manifests.cleanup();
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  function pass(mode: '--once' | '--plan' = '--once'): ReconcilePass {
    return parsePass(manifests.reconcile([mode, '--json']));
  }

  const outcome = outcomeOf;

  /** The device's state and server pid, as the kernel reports them. */
  function live(id: number): { state: string; serverPid: number } {
    const dev = listDevices().find((d) => d.id === id);
    assert.ok(dev, `device ${id} still exists`);
    return { state: dev.state, serverPid: dev.serverPid };
  }

  it('holds a LIVE device whose manifest file is momentarily empty, and reports it', () => {
    write('m.yaml', manifest('held', 'target:\n  type: memory\nsize: 16MiB'));
    const id = outcome(pass(), 'held').devId!;
    const before = live(id);
    write('m.yaml', '');
    const result = pass();
    assert.deepEqual([outcome(result, 'held').action, outcome(result, 'held').outcome], ['hold', 'unchanged']);
    assert.equal(result.exitCode, 1);
    assert.deepEqual(live(id), { ...before, state: 'LIVE' });
  });

  it("leaves the old device LIVE when a re-create's loop path is a typo, and reports the error (--plan too)", () => {
    const img = path.join(scratch, 'disk.img');
    fs.writeFileSync(img, Buffer.alloc(0));
    fs.truncateSync(img, 32 * 1024 * 1024);
    write('loop.yaml', manifest('data', `target:\n  type: loop\n  file: ${img}`));
    const id = outcome(pass(), 'data').devId!;
    const before = live(id);
    write('loop.yaml', manifest('data', `target:\n  type: loop\n  file: ${img}x`));

    const planned = pass('--plan');
    assert.deepEqual([outcome(planned, 'data').action, outcome(planned, 'data').outcome], ['recreate', 'failed']);
    assert.equal(planned.exitCode, 1);

    const result = pass();
    const re = outcome(result, 'data');
    assert.deepEqual([re.action, re.outcome], ['recreate', 'failed']);
    assert.match(re.error ?? '', /disk\.imgx does not exist.*the device was left as it is/);
    assert.equal(result.exitCode, 1);
    assert.deepEqual(live(id), before, 'the same device, LIVE, with the same server');
  });

  it('takes 1GiB → 1073741824 → 1024MiB as no change: same device, same server pid', () => {
    write('mem.yaml', manifest('cache', 'target:\n  type: memory\nsize: 1GiB'));
    const id = outcome(pass(), 'cache').devId!;
    const before = live(id);
    for (const size of ['1073741824', '1024MiB']) {
      write('mem.yaml', manifest('cache', `target:\n  type: memory\nsize: ${size}\nmaxIoSize: 524288`));
      const result = pass();
      assert.deepEqual([outcome(result, 'cache').action, result.exitCode], ['noop', 0], JSON.stringify(result));
      assert.deepEqual(live(id), before);
    }
  });

  it('creates a valid manifest in the same pass as a 10 MB hostile file, which costs one error naming it', () => {
    write('hostile.yaml', `[${'1,'.repeat(5 * 1024 * 1024)}1]\n`);
    write('fine.yaml', manifest('fine', 'target:\n  type: null\nsize: 16MiB'));
    const result = pass();
    const made = outcome(result, 'fine');
    assert.deepEqual([made.action, made.outcome], ['create', 'ok']);
    assert.ok(listDevices().some((d) => d.id === made.devId && d.state === 'LIVE'));
    assert.equal(result.manifestErrors.length, 1, JSON.stringify(result.manifestErrors));
    assert.match(result.manifestErrors[0]!, /^hostile\.yaml: too large: /);
    assert.equal(result.exitCode, 1);
  });

  it('keeps the watcher up through a symlink loop among the manifests, and still creates a device added afterwards', async () => {
    const watcher = await manifests.startWatcher();
    const log = (): string => watcher.log();

    const passesBefore = (log().match(/ pass \(/g) ?? []).length;
    const loopMadeAt = Date.now();
    fs.symlinkSync('b.yaml', path.join(manifests.dir(), 'a.yaml'));
    fs.symlinkSync('a.yaml', path.join(manifests.dir(), 'b.yaml'));
    fs.symlinkSync('self.yaml', path.join(manifests.dir(), 'self.yaml'));
    await waitFor(() => /ELOOP/.test(log()), 60_000, 'the loop to be noticed');

    write('after.yaml', manifest('after', 'target:\n  type: null\nsize: 16MiB'));
    await waitFor(() => /create after dev \d+/.test(log()), 60_000, 'the device added after the loop');
    const id = Number(/create after dev (\d+)/.exec(log())![1]);
    assert.ok(listDevices().some((d) => d.id === id && d.state === 'LIVE'));
    assert.equal(watcher.child.exitCode, null, `the watcher still runs:\n${log()}`);
    // The loop may keep the watcher busy, but never past its pass-rate bound (one per 250 ms; before: ~370 a second).
    const passes = (log().match(/ pass \(/g) ?? []).length - passesBefore;
    const bound = Math.ceil((Date.now() - loopMadeAt) / 250) + 2;
    assert.ok(passes <= bound, `${passes} passes, at most ${bound} allowed by the rate bound`);
  });
});
