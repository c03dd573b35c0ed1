/**
 * The manager with many devices at once, on the real driver: a pass runs
 * its actions concurrently, a device whose target throws at open fails
 * alone while the others come up, a fixed id is never taken by a device
 * the kernel numbers in the same pass, and ublkctl list reports what each
 * server costs (PSS, threads).
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  listDevices,
  manifest,
  outcomeOf,
  parsePass,
  ReconcilePass,
  requireUblk,
  ROOT,
  ublkctlJson,
  useManifestDir,
} from './helpers';

const FAILS_ONCE = path.join(ROOT, 'dist', 'test', 'fixtures', 'targets', 'fails-once.js');

describe('ublk-reconcile with many devices (real ublk driver)', function () {
  requireUblk(this);
  const manifests = useManifestDir(this);
  const once = (...args: string[]): ReconcilePass => manifests.once(...args);
  const write = (name: string, spec: string): void => manifests.write(`${name}.yaml`, manifest(name, spec));

  afterEach(async () => {
    const r = parsePass(await manifests.cleanup());
    assert.equal(r.exitCode, 0, `clean-up pass: ${JSON.stringify(r)}`);
  });

  it('a target that throws at open fails alone: the devices beside it come up in the same concurrent pass', () => {
    const marker = path.join(manifests.stateDir(), 'fail-next-start');
    fs.writeFileSync(marker, '');
    const before = new Set(listDevices().map((d) => d.id));
    for (const name of ['a-null', 'b-null', 'd-null', 'e-null']) write(name, 'target: {type: null}\nsize: 64MiB');
    write(
      'c-broken',
      `target:\n  type: js\n  module: ${FAILS_ONCE}\n  options: {failMarker: ${JSON.stringify(marker)}}\nsize: 16MiB`,
    );
    const first = once('--concurrency', '2');
    assert.equal(first.exitCode, 1, JSON.stringify(first));
    const broken = outcomeOf(first, 'c-broken');
    assert.deepEqual([broken.action, broken.outcome], ['create', 'failed'], JSON.stringify(broken));
    assert.match(broken.error ?? '', /planted failure/);
    const live = new Map(
      listDevices()
        .filter((d) => !before.has(d.id))
        .map((d) => [d.id, d.state]),
    );
    for (const name of ['a-null', 'b-null', 'd-null', 'e-null']) {
      const o = outcomeOf(first, name);
      assert.deepEqual([o.action, o.outcome], ['create', 'ok'], JSON.stringify(o));
      assert.equal(live.get(o.devId!), 'LIVE', `${name}'s device`);
    }
    // The failure left nothing behind, and the next pass (the target now opens) converges.
    assert.equal(live.size, 4, JSON.stringify([...live]));
    const second = once();
    assert.equal(second.exitCode, 0, JSON.stringify(second));
    assert.deepEqual([outcomeOf(second, 'c-broken').action, outcomeOf(second, 'c-broken').outcome], ['create', 'ok']);
  });

  it('creates a fixed-id device before those the kernel numbers, whatever the names', () => {
    // The id the kernel would hand the first device it numbers: the lowest free one.
    const taken = new Set(listDevices().map((d) => d.id));
    let fixed = 0;
    while (taken.has(fixed)) fixed++;
    write('a-auto', 'target: {type: null}\nsize: 16MiB');
    write('b-auto', 'target: {type: null}\nsize: 16MiB');
    write('z-fixed', `id: ${fixed}\ntarget: {type: null}\nsize: 16MiB`);
    const pass = once();
    assert.equal(pass.exitCode, 0, JSON.stringify(pass));
    assert.equal(outcomeOf(pass, 'z-fixed').devId, fixed);
  });

  it("ublkctl list shows each server's proportional memory (PSS, below its RSS) and its threads", () => {
    write('one', 'target: {type: null}\nsize: 16MiB\nqueues: 2');
    const id = outcomeOf(once(), 'one').devId!;
    const listed = ublkctlJson<Array<{ id: number; serverPid: number; serverPssKiB?: number; serverThreads?: number }>>(
      ['list', '--state-dir', manifests.stateDir()],
    ).find((d) => d.id === id)!;
    const status = fs.readFileSync(`/proc/${listed.serverPid}/status`, 'utf8');
    const rssKiB = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)![1]);
    const threads = Number(/^Threads:\s+(\d+)/m.exec(status)![1]);
    assert.ok(
      listed.serverPssKiB! > 0 && listed.serverPssKiB! < rssKiB,
      `PSS ${listed.serverPssKiB} KiB, RSS ${rssKiB} KiB`,
    );
    // A thread per queue on top of node's own: at least 2 more than the main thread.
    assert.ok(listed.serverThreads! >= 3, `threads ${listed.serverThreads}`);
    assert.ok(Math.abs(listed.serverThreads! - threads) <= 1, `listed ${listed.serverThreads}, /proc says ${threads}`);
    const text = spawnSync(
      process.execPath,
      [path.join(ROOT, 'dist', 'src', 'cli', 'ublkctl.js'), 'list', '--state-dir', manifests.stateDir()],
      {
        encoding: 'utf8',
      },
    ).stdout;
    assert.match(text.split('\n')[0]!, /\bPSS\s+THREADS\b/);
    assert.match(text, new RegExp(`^${id}\\s.*\\s\\d+\\.\\dMiB\\s+\\d+\\s+/dev/ublkb${id}\\b`, 'm'));
  });
});
