/**
 * A pass over many devices: actions run concurrently up to the bound, never
 * two on one device, deletions before creations, and one slow or failing
 * device holds none of the others back. Against the in-memory fake kernel,
 * whose starts and removals are held on gates the test opens.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runBounded } from '../../src/reconciler/concurrency';
import { reconcileOnce } from '../../src/reconciler/reconciler';
import type { ServerStart } from '../../src/reconciler/kernel';
import type { RemovedDevice, StartedServer } from '../../src/server/launcher';
import type { DeviceSpec } from '../../src/spec/device-spec';
import { FakeKernel } from '../fakes/fake-kernel';

/** A promise the test resolves when it wants. */
class Gate {
  open!: () => void;
  readonly opened = new Promise<void>((resolve) => (this.open = resolve));
}

/** Lets every pending promise callback run, so the pass goes as far as it can. */
async function settle(): Promise<void> {
  for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
}

/** The fake kernel, with each start and removal held until its gate opens, and a count of what runs at once. */
class GatedKernel extends FakeKernel {
  readonly startGates = new Map<string, Gate>();
  readonly removeGates = new Map<number, Gate>();
  /** Names whose start is made to fail. */
  readonly failing = new Set<string>();
  running = 0;
  mostRunning = 0;
  /** Device ids and names with an action under way: two at once on one would be a bug. */
  readonly busy = new Set<string>();
  readonly finished: string[] = [];
  autoOpen = true;

  private async held<T>(key: string, gate: Gate | undefined, work: () => Promise<T>): Promise<T> {
    assert.ok(!this.busy.has(key), `two actions at once on ${key}`);
    this.busy.add(key);
    this.running++;
    this.mostRunning = Math.max(this.mostRunning, this.running);
    try {
      if (gate) await gate.opened;
      else if (!this.autoOpen) throw new Error(`no gate for ${key}`);
      return await work();
    } finally {
      this.running--;
      this.busy.delete(key);
      this.finished.push(key);
    }
  }

  override startServer(spec: DeviceSpec, opts: ServerStart): Promise<StartedServer> {
    const name = opts.manifest!;
    const start = this.held(name, this.startGates.get(name), async () => {
      if (this.failing.has(name)) throw new Error(`${name}: the target failed to open`);
      return super.startServer(spec, opts);
    });
    if (spec.target.type !== 'loop') return start;
    // Two servers creating one loop file at once would race for it.
    const file = `file ${spec.target.file}`;
    assert.ok(!this.busy.has(file), `two servers at once on ${file}`);
    this.busy.add(file);
    return start.finally(() => this.busy.delete(file));
  }

  override removeDevice(id: number): Promise<RemovedDevice> {
    return this.held(`dev ${id}`, this.removeGates.get(id), () => super.removeDevice(id));
  }
}

describe('reconcile pass: many devices at once', () => {
  let dir: string;
  let kernel: GatedKernel;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-concurrency-'));
    kernel = new GatedKernel();
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  function write(name: string, extra = ''): void {
    fs.writeFileSync(
      path.join(dir, `${name}.yaml`),
      `apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata:\n  name: ${name}\nspec:\n  target: {type: null}\n  size: 1GiB\n${extra}`,
    );
  }

  const pass = (concurrency: number) => reconcileOnce(kernel, { dir, concurrency });

  it('creates many devices with at most `concurrency` starts at a time', async () => {
    for (let i = 0; i < 12; i++) write(`dev${String(i).padStart(2, '0')}`);
    const result = await pass(3);
    assert.equal(result.exitCode, 0, JSON.stringify(result));
    assert.equal(kernel.devices.size, 12);
    assert.equal(kernel.mostRunning, 3);
    assert.ok(result.devices.every((d) => d.action === 'create' && d.outcome === 'ok'));
  });

  it('one slow device holds back none of the others: they are all up while it still starts', async () => {
    // Named to sort second: taken one after the other, those after it would wait for it.
    for (const name of ['a', 'b-slow', 'c', 'd', 'e']) write(name);
    const slow = new Gate();
    kernel.startGates.set('b-slow', slow);
    const running = pass(2);
    await settle();
    // Every other device is up while the slow one has not finished starting.
    assert.deepEqual(kernel.finished.sort(), ['a', 'c', 'd', 'e']);
    assert.equal(kernel.devices.size, 4);
    slow.open();
    const result = await running;
    assert.equal(result.exitCode, 0);
    assert.equal(kernel.devices.size, 5);
  });

  it('one failing device fails alone: the others converge and the pass reports it by name', async () => {
    for (const name of ['a', 'bad', 'c', 'd']) write(name);
    kernel.failing.add('bad');
    const result = await pass(4);
    assert.equal(result.exitCode, 1);
    const bad = result.devices.find((d) => d.name === 'bad')!;
    assert.equal(bad.outcome, 'failed');
    assert.match(bad.error!, /bad: the target failed to open/);
    assert.deepEqual(
      result.devices.filter((d) => d.name !== 'bad').map((d) => [d.name, d.outcome]),
      [
        ['a', 'ok'],
        ['c', 'ok'],
        ['d', 'ok'],
      ],
    );
    assert.equal(kernel.devices.size, 3);
  });

  it('deletes before it creates: a renamed manifest gets its device only once the old one is gone', async () => {
    write('old');
    await pass(4);
    const oldId = [...kernel.devices.keys()][0]!;
    fs.rmSync(path.join(dir, 'old.yaml'));
    write('new');
    const removal = new Gate();
    kernel.removeGates.set(oldId, removal);
    kernel.startGates.set('new', new Gate());
    kernel.startGates.get('new')!.open();
    const running = pass(4);
    await settle();
    // The creation waits for the deletion's stage: nothing has started yet.
    assert.equal(kernel.finished.includes('new'), false);
    assert.equal(kernel.running, 1);
    removal.open();
    const result = await running;
    assert.equal(result.exitCode, 0);
    assert.deepEqual(kernel.calls.slice(1), [`remove ${oldId}`, `start ${oldId}`]);
  });

  it("creates devices with a fixed id before those the kernel numbers, so none takes another manifest's id", async () => {
    write('a-auto');
    write('b-auto');
    write('z-fixed', '  id: 0\n');
    const result = await pass(4);
    assert.equal(result.exitCode, 0, JSON.stringify(result));
    assert.equal(kernel.calls[0], 'start 0');
    assert.equal(kernel.records.read(0)!.manifest, 'z-fixed');
  });

  it('never starts two servers on one loop file at once', async () => {
    const file = path.join(dir, 'shared.img');
    for (const name of ['a', 'b', 'c']) {
      fs.writeFileSync(
        path.join(dir, `${name}.yaml`),
        `apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata:\n  name: ${name}\nspec:\n  target: {type: loop, file: ${file}, create: true}\n  size: 1MiB\n`,
      );
    }
    write('d');
    const result = await pass(4);
    assert.equal(result.exitCode, 0, JSON.stringify(result));
    assert.equal(kernel.devices.size, 4);
    // The null device ran beside the loop devices; those went one at a time.
    assert.equal(kernel.mostRunning, 2);
  });

  it('deletes many devices at once, within the bound', async () => {
    for (let i = 0; i < 10; i++) write(`dev${i}`);
    await pass(8);
    for (let i = 0; i < 10; i++) fs.rmSync(path.join(dir, `dev${i}.yaml`));
    kernel.mostRunning = 0;
    const result = await pass(5);
    assert.equal(result.exitCode, 0);
    assert.equal(kernel.devices.size, 0);
    assert.equal(kernel.mostRunning, 5);
  });
});

describe('reconcile pass: what a device that is fine costs', () => {
  it('looks at whether devices are in use only for those whose manifest changed', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-inuse-'));
    try {
      const asked: string[] = [];
      let checkers = 0;
      const kernel = new (class extends FakeKernel {
        inUseChecker() {
          checkers++;
          return (blockPath: string) => {
            asked.push(blockPath);
            return false;
          };
        }
      })();
      const write = (name: string, size: string): void =>
        fs.writeFileSync(
          path.join(dir, `${name}.yaml`),
          `apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata:\n  name: ${name}\nspec:\n  target: {type: null}\n  size: ${size}\n  logicalBlockSize: 512\n`,
        );
      for (let i = 0; i < 6; i++) write(`dev${i}`, '1GiB');
      await reconcileOnce(kernel, { dir });
      asked.length = 0;
      const noop = await reconcileOnce(kernel, { dir });
      assert.ok(noop.devices.every((d) => d.action === 'noop'));
      assert.deepEqual(asked, []);
      // A changed spec is the one row that asks: one checker per pass, one question for that device.
      checkers = 0;
      fs.writeFileSync(
        path.join(dir, 'dev3.yaml'),
        'apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata:\n  name: dev3\nspec:\n  target: {type: null}\n  size: 1GiB\n  logicalBlockSize: 4096\n',
      );
      const changed = await reconcileOnce(kernel, { dir });
      assert.equal(changed.devices.find((d) => d.name === 'dev3')!.action, 'recreate');
      assert.equal(checkers, 1);
      assert.equal(asked.length, 1);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('runBounded', () => {
  it('never runs two tasks that share a key at once, and keeps their order', async () => {
    const log: string[] = [];
    const active = new Set<string>();
    const task = (id: string, keys: string[]) => ({
      keys,
      run: async () => {
        for (const k of keys) assert.ok(!active.has(k), `${id}: ${k} is busy`);
        for (const k of keys) active.add(k);
        log.push(`start ${id}`);
        await settle();
        for (const k of keys) active.delete(k);
        log.push(`end ${id}`);
        return id;
      },
    });
    const results = await runBounded([task('1', ['x']), task('2', ['x', 'y']), task('3', ['y']), task('4', ['z'])], 4);
    assert.deepEqual(
      results.map((r) => (r.status === 'fulfilled' ? r.value : 'rejected')),
      ['1', '2', '3', '4'],
    );
    // 3 shares y with 2, which waits behind 1: 3 waits behind 2, though y was free when it was first looked at.
    assert.ok(log.indexOf('end 2') < log.indexOf('start 3'), log.join(', '));
    assert.ok(log.indexOf('start 4') < log.indexOf('end 1'), log.join(', '));
  });

  it('gives a rejected task its rejection and runs the rest', async () => {
    const results = await runBounded(
      [
        { keys: ['a'], run: () => Promise.reject(new Error('boom')) },
        {
          keys: ['b'],
          run: () => {
            throw new Error('sync boom');
          },
        },
        { keys: ['c'], run: () => Promise.resolve(3) },
      ],
      1,
    );
    assert.deepEqual(
      results.map((r) => r.status),
      ['rejected', 'rejected', 'fulfilled'],
    );
  });

  it('refuses a bound that is not a positive integer', async () => {
    await assert.rejects(runBounded([], 0), /concurrency must be a positive integer, got 0/);
  });
});
