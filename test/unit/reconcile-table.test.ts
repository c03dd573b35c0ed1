/**
 * The README's reconcile table, row by row, as whole passes (plan and
 * apply) against the in-memory fake kernel: each row sets up the live state
 * and the manifests it names, runs one pass, and checks the action taken
 * and what the kernel and the records look like afterwards.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadManifestDir } from '../../src/manifest';
import { Backoff } from '../../src/reconciler/backoff';
import { PassResult, reconcileOnce } from '../../src/reconciler/reconciler';
import { FakeKernel } from '../fakes/fake-kernel';
import { UblkError, ERRNO } from '../../src/errors';

const T0 = Date.parse('2026-11-25T12:00:00Z');

/** The manifest of device `good`, as Scene.write writes it. */
const GOOD_MANIFEST =
  'apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata:\n  name: good\nspec:\n  target: {type: null}\n  size: 1GiB\n';

/** One scene: a manifest directory, a fake kernel and a clock they share. */
class Scene {
  now = T0;
  readonly kernel = new FakeKernel(() => this.now);
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-table-'));
  readonly backoff = new Backoff();

  write(name: string, spec = 'target: {type: null}\nsize: 1GiB', file = `${name}.yaml`): void {
    const text = `apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata:\n  name: ${name}\nspec:\n${spec.replace(/^/gm, '  ')}\n`;
    fs.writeFileSync(path.join(this.dir, file), text);
  }

  /** Puts `text` in place of a manifest file, as an editor or a sync tool might leave it. */
  raw(file: string, text: string): void {
    fs.rmSync(path.join(this.dir, file), { recursive: true, force: true });
    fs.writeFileSync(path.join(this.dir, file), text);
  }

  /** Replaces a manifest file with something that is not a regular file. */
  replaceWith(file: string, what: 'fifo' | 'directory' | 'devnull'): void {
    const full = path.join(this.dir, file);
    fs.rmSync(full, { force: true });
    if (what === 'fifo') execFileSync('mkfifo', [full]);
    else if (what === 'directory') fs.mkdirSync(full);
    else fs.symlinkSync('/dev/null', full);
  }

  /** A file next to the manifests (ignored by the loader: not *.yaml). */
  file(name: string, text = ''): string {
    const full = path.join(this.dir, name);
    fs.writeFileSync(full, text);
    return full;
  }

  /** The device of `name` is LIVE, its server alive, and nothing but its first start happened. */
  assertUntouched(name: string): void {
    const record = this.recordOf(name)!;
    const dev = this.kernel.devices.get(record.devId)!;
    assert.equal(dev.info.state, 'LIVE');
    assert.ok(this.kernel.isAlive(dev.info.serverPid));
    assert.deepEqual(this.kernel.calls, [`start ${record.devId}`]);
  }

  /** When the watcher noticed each dead server, as it tells a pass. */
  readonly deaths = new Map<number, number>();

  pass(): Promise<PassResult> {
    return reconcileOnce(this.kernel, {
      dir: this.dir,
      now: () => this.now,
      backoff: this.backoff,
      deathNoticedAt: (pid) => this.deaths.get(pid),
    });
  }

  /** A device the reconciler made from manifest `name` a while ago, serving since. */
  async owned(name: string, spec?: string, file?: string): Promise<number> {
    this.write(name, spec, file);
    const first = await this.pass();
    this.now += 10_000;
    return first.devices.find((d) => d.name === name)!.devId!;
  }

  recordOf(name: string) {
    return this.kernel.records.list().find((r) => r.manifest === name);
  }

  cleanup(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

interface Row {
  /** The README row: live state | manifest | action. */
  row: string;
  setup(s: Scene): Promise<void>;
  action: string;
  outcome: string;
  /** What must hold afterwards. */
  after(s: Scene, result: PassResult): void;
}

const rows: Row[] = [
  {
    row: 'no record | valid | create',
    setup: async (s) => s.write('a'),
    action: 'create',
    outcome: 'ok',
    after: (s) => {
      assert.deepEqual(s.kernel.calls, ['start 0']);
      assert.equal(s.kernel.devices.get(0)!.info.state, 'LIVE');
      assert.equal(s.recordOf('a')!.owner, 'reconciler');
    },
  },
  {
    row: 'no record | valid, fixed id taken by a device ublk-ts does not manage | refused',
    setup: async (s) => {
      s.kernel.addForeignDevice(7);
      s.write('a', 'id: 7\ntarget: {type: null}\nsize: 1GiB');
    },
    action: 'refuse',
    outcome: 'unchanged',
    after: (s, r) => {
      assert.deepEqual(s.kernel.calls, []);
      assert.equal(r.exitCode, 1);
    },
  },
  {
    row: 'record, device LIVE, server alive | unchanged | nothing',
    setup: async (s) => void (await s.owned('a')),
    action: 'noop',
    outcome: 'unchanged',
    after: (s, r) => {
      assert.deepEqual(s.kernel.calls, ['start 0']);
      assert.equal(r.exitCode, 0);
      assert.equal(r.requeueAfterMs, undefined);
    },
  },
  {
    row: 'record, device QUIESCED, server gone | valid | recover',
    setup: async (s) => s.kernel.killServer(await s.owned('a')),
    action: 'recover',
    outcome: 'ok',
    after: (s) => {
      assert.deepEqual(s.kernel.calls, ['start 0', 'recover 0']);
      assert.equal(s.kernel.devices.get(0)!.info.state, 'LIVE');
      assert.ok(s.kernel.isAlive(s.kernel.devices.get(0)!.info.serverPid));
    },
  },
  {
    row: 'record, device FAIL_IO, server gone | valid | recover',
    setup: async (s) => {
      const id = await s.owned('a', 'target: {type: null}\nsize: 1GiB\nrecovery: fail-io');
      s.kernel.killServer(id);
      s.kernel.setState(id, 'FAIL_IO');
    },
    action: 'recover',
    outcome: 'ok',
    after: (s) => assert.deepEqual(s.kernel.calls, ['start 0', 'recover 0']),
  },
  {
    row: 'record, device DEAD | valid | re-create, reporting that data-plane state was lost',
    setup: async (s) => {
      const id = await s.owned('a');
      s.kernel.killServer(id);
      s.kernel.setState(id, 'DEAD');
    },
    action: 'recreate',
    outcome: 'ok',
    after: (s, r) => {
      assert.deepEqual(s.kernel.calls, ['start 0', 'remove 0', 'start 0']);
      assert.equal(r.devices[0]!.dataLost, true);
    },
  },
  {
    row: 'record, device LIVE without server and without recovery | valid | re-create, data-plane state lost',
    setup: async (s) => s.kernel.killServer(await s.owned('a', 'target: {type: null}\nsize: 1GiB\nrecovery: none')),
    action: 'recreate',
    outcome: 'ok',
    after: (s, r) => {
      assert.deepEqual(s.kernel.calls, ['start 0', 'remove 0', 'start 0']);
      assert.equal(r.devices[0]!.dataLost, true);
    },
  },
  {
    row: 'record, device gone | valid | create again',
    setup: async (s) => void s.kernel.devices.delete(await s.owned('a')),
    action: 'create',
    outcome: 'ok',
    after: (s) => {
      assert.deepEqual(s.kernel.calls, ['start 0', 'start 0']);
      assert.equal(s.kernel.records.list().length, 1);
    },
  },
  {
    row: 'record, device LIVE | changed, device not open or mounted | re-create with the new spec',
    setup: async (s) => {
      await s.owned('a');
      s.write('a', 'target: {type: null}\nsize: 2GiB\nreadOnly: true');
    },
    action: 'recreate',
    outcome: 'ok',
    after: (s, r) => {
      assert.deepEqual(s.kernel.calls, ['start 0', 'remove 0', 'start 0']);
      assert.equal(s.kernel.devices.get(0)!.sizeBytes, 2 * 1024 ** 3);
      assert.notEqual(r.devices[0]!.dataLost, true);
    },
  },
  {
    row: 'record, device LIVE | changed, device open or mounted | drift: reported (also as the last error), device left alone',
    setup: async (s) => {
      s.kernel.devices.get(await s.owned('a'))!.inUse = true;
      s.write('a', 'target: {type: null}\nsize: 2GiB\nreadOnly: true');
    },
    action: 'drift',
    outcome: 'unchanged',
    after: (s, r) => {
      assert.deepEqual(s.kernel.calls, ['start 0']);
      assert.match(s.recordOf('a')!.lastError ?? '', /in use: left as it is/);
      assert.equal(r.exitCode, 1);
    },
  },
  {
    row: 'record, device LIVE, server alive | only size grew (kernel with UPDATE_SIZE) | resize in place, even while mounted',
    setup: async (s) => {
      s.kernel.devices.get(await s.owned('a', 'target: {type: memory}\nsize: 1GiB'))!.inUse = true;
      s.write('a', 'target: {type: memory}\nsize: 2GiB');
    },
    action: 'resize',
    outcome: 'ok',
    after: (s, r) => {
      assert.deepEqual(s.kernel.calls, ['start 0', `resize 0 ${2 * 1024 ** 3}`]);
      assert.equal(s.recordOf('a')!.spec.sizeBytes, 2 * 1024 ** 3);
      assert.equal(r.exitCode, 0);
    },
  },
  {
    row: 'record, device LIVE, server alive | only size shrank (kernel with UPDATE_SIZE) | drift while mounted',
    setup: async (s) => {
      s.kernel.devices.get(await s.owned('a', 'target: {type: memory}\nsize: 2GiB'))!.inUse = true;
      s.write('a', 'target: {type: memory}\nsize: 1GiB');
    },
    action: 'drift',
    outcome: 'unchanged',
    after: (s) => {
      assert.deepEqual(s.kernel.calls, ['start 0']);
      assert.match(s.recordOf('a')!.lastError ?? '', /in use: shrinking it would take data from under its user/);
    },
  },
  {
    row: 'record, device LIVE, server alive | only size shrank (kernel with UPDATE_SIZE) | resize in place while unused',
    setup: async (s) => {
      await s.owned('a', 'target: {type: memory}\nsize: 2GiB');
      s.write('a', 'target: {type: memory}\nsize: 1GiB');
    },
    action: 'resize',
    outcome: 'ok',
    after: (s) => assert.deepEqual(s.kernel.calls, ['start 0', `resize 0 ${1024 ** 3}`]),
  },
  {
    row: 'record, device LIVE | only size changed, kernel without UPDATE_SIZE | as any other change, saying why',
    setup: async (s) => {
      s.kernel.features = 0n;
      await s.owned('a');
      s.write('a', 'target: {type: null}\nsize: 2GiB');
    },
    action: 'recreate',
    outcome: 'ok',
    after: (s, r) => {
      assert.deepEqual(s.kernel.calls, ['start 0', 'remove 0', 'start 0']);
      assert.match(r.devices[0]!.reason, /cannot change in place: the kernel lacks UPDATE_SIZE/);
    },
  },
  {
    row: 'record | invalid | hold: the device is left exactly as it is',
    setup: async (s) => {
      await s.owned('a');
      s.write('a', 'target: {type: null}\nsize: 1GiB\nqueues: lots');
    },
    action: 'hold',
    outcome: 'unchanged',
    after: (s, r) => {
      assert.deepEqual(s.kernel.calls, ['start 0']);
      assert.equal(r.manifestErrors.length, 1);
      assert.equal(r.exitCode, 1);
    },
  },
  {
    row: 'record | gone | delete',
    setup: async (s) => {
      await s.owned('a');
      fs.rmSync(path.join(s.dir, 'a.yaml'));
    },
    action: 'delete',
    outcome: 'ok',
    after: (s) => {
      assert.deepEqual(s.kernel.calls, ['start 0', 'remove 0']);
      assert.equal(s.kernel.devices.size, 0);
      assert.equal(s.kernel.records.list().length, 0);
    },
  },
  {
    row: 'record | gone, while a manifest is invalid and its name unreadable | delete held back',
    setup: async (s) => {
      await s.owned('a');
      fs.rmSync(path.join(s.dir, 'a.yaml'));
      fs.writeFileSync(path.join(s.dir, 'broken.yaml'), 'apiVersion: [unclosed\n');
    },
    action: 'hold',
    outcome: 'unchanged',
    after: (s) => assert.deepEqual(s.kernel.calls, ['start 0']),
  },
  ...(
    [
      ['empty', (s: Scene) => s.raw('a.yaml', '')],
      ['only `---`', (s: Scene) => s.raw('a.yaml', '---\n')],
      ['a FIFO', (s: Scene) => s.replaceWith('a.yaml', 'fifo')],
      ['a directory', (s: Scene) => s.replaceWith('a.yaml', 'directory')],
      ['a link to /dev/null', (s: Scene) => s.replaceWith('a.yaml', 'devnull')],
      [
        'cut off inside the name (name: go)',
        (s: Scene) => s.raw('a.yaml', GOOD_MANIFEST.slice(0, GOOD_MANIFEST.indexOf('name: good') + 8)),
      ],
      [
        'with the name made invalid (Good)',
        (s: Scene) => s.raw('a.yaml', GOOD_MANIFEST.replace('name: good', 'name: Good')),
      ],
      [
        'with the name made invalid ("good ")',
        (s: Scene) => s.raw('a.yaml', GOOD_MANIFEST.replace('name: good', 'name: "good "')),
      ],
      ['10 MB of hostile YAML', (s: Scene) => s.raw('a.yaml', `[${'1,'.repeat(5 * 1024 * 1024)}1]`)],
    ] as Array<[string, (s: Scene) => void]>
  ).map(([what, breakIt]): Row => ({
    row: `record | its file still there but ${what} | hold: the device is left exactly as it is, reported`,
    setup: async (s) => {
      await s.owned('good', undefined, 'a.yaml');
      breakIt(s);
    },
    action: 'hold',
    outcome: 'unchanged',
    after: (s, r) => {
      s.assertUntouched('good');
      assert.equal(r.exitCode, 1);
    },
  })),
  {
    row: 'record | its file parses validly and no longer names it | delete',
    setup: async (s) => {
      await s.owned('good', undefined, 'a.yaml');
      s.write('other', undefined, 'a.yaml');
    },
    action: 'delete',
    outcome: 'ok',
    after: (s, r) => {
      assert.deepEqual(s.kernel.calls, ['start 0', 'remove 0', 'start 0']);
      assert.equal(r.devices[0]!.reason, 'its manifest file a.yaml no longer names it');
      assert.equal(s.recordOf('other')!.manifestFile, 'a.yaml');
    },
  },
  {
    row: 'record naming no file (written before files were remembered) | gone, while a manifest is invalid | hold',
    setup: async (s) => {
      const id = await s.owned('a');
      s.kernel.records.write({ ...s.recordOf('a')!, manifestFile: undefined });
      fs.rmSync(path.join(s.dir, 'a.yaml'));
      s.write('b', 'target: {type: null}\nsize: lots');
      assert.equal(id, 0);
    },
    action: 'hold',
    outcome: 'unchanged',
    after: (s) => assert.deepEqual(s.kernel.calls, ['start 0']),
  },
  {
    row: 'record, device LIVE | changed cosmetically (1GiB → 1073741824, 1024MiB, defaults spelled out) | nothing',
    setup: async (s) => {
      await s.owned('a');
      s.write('a', 'target: {type: null}\nsize: 1073741824\nmaxIoSize: 524288\nqueues: 1\nrecovery: reissue');
      assert.equal((await s.pass()).devices[0]!.action, 'noop');
      s.write('a', 'target: {type: null}\nsize: 1024MiB\ndepth: 128\nlogicalBlockSize: 512\nreadOnly: false');
    },
    action: 'noop',
    outcome: 'unchanged',
    after: (s, r) => {
      assert.deepEqual(s.kernel.calls, ['start 0']);
      assert.equal(r.exitCode, 0);
    },
  },
  {
    row: 'record, device LIVE | changed, the new spec fails its pre-flight (loop file missing) | failed before STOP_DEV: the device is left LIVE, the error reported',
    setup: async (s) => {
      const img = s.file('disk.img', '\0'.repeat(1 << 20));
      await s.owned('a', `target: {type: loop, file: ${img}}`);
      s.write('a', `target: {type: loop, file: ${img}x}`);
    },
    action: 'recreate',
    outcome: 'failed',
    after: (s, r) => {
      s.assertUntouched('a');
      assert.match(
        r.devices[0]!.error!,
        /a\.yaml:1: spec\.target\.file: .*disk\.imgx does not exist.*\(the device was left as it is\)$/,
      );
      assert.match(s.recordOf('a')!.lastError!, /does not exist/);
      assert.equal(r.exitCode, 1);
    },
  },
  {
    row: 'record, device LIVE | changed, the new loop file does not open read-write | failed before STOP_DEV',
    setup: async (s) => {
      const img = s.file('disk.img', '\0'.repeat(1 << 20));
      await s.owned('a', `target: {type: loop, file: ${img}}\nreadOnly: true`);
      // sysfs refuses to open a read-only attribute for writing, even for root.
      s.write('a', `target: {type: loop, file: /sys/kernel/uevent_seqnum}\nreadOnly: false`);
    },
    action: 'recreate',
    outcome: 'failed',
    after: (s, r) => {
      s.assertUntouched('a');
      assert.match(
        r.devices[0]!.error!,
        /spec\.target\.file: .*uevent_seqnum (does not open read-write: EACCES|: permission denied)/,
      );
    },
  },
  {
    row: 'record, device LIVE | changed, its new fixed id is taken by another device | failed before STOP_DEV',
    setup: async (s) => {
      await s.owned('a');
      s.kernel.addForeignDevice(7);
      s.write('a', 'id: 7\ntarget: {type: null}\nsize: 2GiB');
    },
    action: 'recreate',
    outcome: 'failed',
    after: (s, r) => {
      assert.deepEqual(s.kernel.calls, ['start 0']);
      assert.match(r.devices[0]!.error!, /spec\.id: device id 7 is in use by another device/);
    },
  },
  {
    row: 'record, device LIVE | changed, its new js module does not export createTarget | failed before STOP_DEV',
    setup: async (s) => {
      const good = s.file('good.js', 'exports.createTarget = () => ({ handleIo: () => 0 });\n');
      const bad = s.file('bad.js', 'exports.somethingElse = 1;\n');
      // recovery none, as the kernel has for a module that is not recoverable: no handover, a re-create.
      await s.owned('a', `target: {type: js, module: ${good}}\nsize: 1MiB\nrecovery: none`);
      s.write('a', `target: {type: js, module: ${bad}}\nsize: 1MiB\nrecovery: none\nallowDataLoss: true`);
    },
    action: 'recreate',
    outcome: 'failed',
    after: (s, r) => {
      s.assertUntouched('a');
      assert.match(r.devices[0]!.error!, /spec\.target\.module: .*bad\.js does not export a target/);
    },
  },
  {
    row: 'record, memory or js device LIVE | changed, without spec.allowDataLoss | drift: re-creating would discard its data',
    setup: async (s) => {
      await s.owned('a', 'target: {type: memory}\nsize: 1GiB');
      s.write('a', 'target: {type: memory}\nsize: 2GiB\nreadOnly: true');
    },
    action: 'drift',
    outcome: 'unchanged',
    after: (s, r) => {
      s.assertUntouched('a');
      assert.match(r.devices[0]!.reason, /would discard its data.*allowDataLoss: true/);
      assert.equal(r.exitCode, 1);
    },
  },
  {
    row: 'record, memory or js device LIVE | changed, with spec.allowDataLoss: true | re-create',
    setup: async (s) => {
      await s.owned('a', 'target: {type: memory}\nsize: 1GiB');
      s.write('a', 'target: {type: memory}\nsize: 2GiB\nreadOnly: true\nallowDataLoss: true');
    },
    action: 'recreate',
    outcome: 'ok',
    after: (s) => assert.deepEqual(s.kernel.calls, ['start 0', 'remove 0', 'start 0']),
  },
  {
    row: 'record, memory device LIVE | only spec.allowDataLoss added | nothing (consent is not a change)',
    setup: async (s) => {
      await s.owned('a', 'target: {type: memory}\nsize: 1GiB');
      s.write('a', 'target: {type: memory}\nsize: 1GiB\nallowDataLoss: true');
    },
    action: 'noop',
    outcome: 'unchanged',
    after: (s) => assert.deepEqual(s.kernel.calls, ['start 0']),
  },
  {
    row: 'no record (made by another tool, or by ublkctl) | — | never touched',
    setup: async (s) => {
      s.kernel.addForeignDevice(3);
      s.kernel.addForeignDevice(4, 'QUIESCED');
      s.kernel.killServer(4);
    },
    action: '(none)',
    outcome: '(none)',
    after: (s, r) => {
      assert.deepEqual(s.kernel.calls, []);
      assert.deepEqual(r.devices, []);
      assert.equal(s.kernel.devices.size, 2);
    },
  },
];

describe('reconcile table (README), one pass per row against a fake kernel', () => {
  for (const r of rows) {
    it(r.row, async () => {
      const s = new Scene();
      try {
        await r.setup(s);
        const result = await s.pass();
        const d = result.devices;
        assert.deepEqual(
          [d[0]?.action ?? '(none)', d[0]?.outcome ?? '(none)'],
          [r.action, r.outcome],
          JSON.stringify(result, null, 2),
        );
        r.after(s, result);
      } finally {
        s.cleanup();
      }
    });
  }
});

describe('reconcile passes: failures, backoff and requeue', () => {
  let s: Scene;
  beforeEach(() => (s = new Scene()));
  afterEach(() => s.cleanup());

  it('a failed create waits out its backoff, and the wait says when the next pass is due', async () => {
    s.write('a');
    s.kernel.failNextStart = new Error('no room');
    const failed = await s.pass();
    assert.deepEqual([failed.devices[0]!.action, failed.devices[0]!.outcome], ['create', 'failed']);
    s.now += 200;
    const waiting = await s.pass();
    assert.equal(waiting.devices[0]!.action, 'wait');
    assert.match(waiting.devices[0]!.reason, /creating failed 1 time\(s\); next try in 1 s/);
    assert.equal(waiting.requeueAfterMs, 800);
    s.now += 800;
    const retried = await s.pass();
    assert.deepEqual([retried.devices[0]!.action, retried.devices[0]!.outcome], ['create', 'ok']);
  });

  it('a server that dies within the stability mark counts as a failure: a crash loop backs off, with the reason recorded', async () => {
    const id = await s.owned('a');
    s.kernel.killServer(id);
    assert.equal((await s.pass()).devices[0]!.action, 'recover');
    s.now += 500;
    s.kernel.killServer(id);
    assert.equal((await s.pass()).devices[0]!.action, 'recover', 'the first quick death is recovered at once');
    assert.match(s.recordOf('a')!.lastError ?? '', /server pid \d+ died 0\.5 s after it started/);
    s.now += 500;
    s.kernel.killServer(id);
    const waiting = await s.pass();
    assert.equal(waiting.devices[0]!.action, 'wait');
    assert.match(waiting.devices[0]!.reason, /recovery failed 1 time\(s\)/);
    assert.equal(waiting.requeueAfterMs, 500);
    s.now += waiting.requeueAfterMs!;
    assert.equal((await s.pass()).devices[0]!.action, 'recover');
  });

  it('a server lived until its death was noticed, not until a busy pass handled it, and record rewrites do not restart its clock', async () => {
    const id = await s.owned('a');
    // The first server ran for 10 s (stable); each one after it dies 0.5 s after it started.
    for (let death = 0; death < 3; death++) {
      const record = s.recordOf('a')!;
      s.now += 500;
      s.kernel.killServer(id);
      s.deaths.set(record.serverPid, s.now);
      s.now += 1000;
      // Something else rewrites the record (a drift note, an error) while the dead server waits for a pass.
      s.kernel.records.write({ ...record, lastError: 'a note' });
      s.now += 4000; // the loaded host gets to the pass late
      const pass = await s.pass();
      assert.equal(pass.devices[0]!.action, 'recover', JSON.stringify(pass.devices));
      assert.equal(s.recordOf('a')!.failures, death, 'quick deaths count towards backoff');
      if (death > 0) assert.match(s.recordOf('a')!.lastError ?? '', /died 0\.5 s after it started/);
    }
  });

  it('a server that lived past the stability mark is recovered at once, and a stable device clears its last error', async () => {
    const id = await s.owned('a');
    s.kernel.killServer(id);
    await s.pass();
    s.now += 5000;
    s.kernel.killServer(id);
    assert.equal((await s.pass()).devices[0]!.action, 'recover');
    s.kernel.records.write({ ...s.recordOf('a')!, lastError: 'old news', status: 'failed' });
    s.now += 5000;
    const quiet = await s.pass();
    assert.equal(quiet.devices[0]!.action, 'noop');
    assert.equal(s.recordOf('a')!.lastError, undefined);
    assert.equal(s.recordOf('a')!.status, 'live');
  });

  it('--plan changes nothing', async () => {
    s.write('a');
    const planned = await reconcileOnce(s.kernel, { dir: s.dir, planOnly: true, now: () => s.now });
    assert.deepEqual([planned.devices[0]!.action, planned.devices[0]!.outcome], ['create', 'planned']);
    assert.deepEqual(s.kernel.calls, []);
  });

  it('--plan runs the same pre-flight as --once: a re-create that would fail is shown failed, and nothing changes', async () => {
    const img = s.file('disk.img', '\0'.repeat(1 << 20));
    await s.owned('a', `target: {type: loop, file: ${img}}`);
    s.write('a', `target: {type: loop, file: ${img}-typo}`);
    s.write('b', 'target: {type: js, module: /nonexistent/target.js}\nsize: 1MiB');
    const planned = await reconcileOnce(s.kernel, { dir: s.dir, planOnly: true, now: () => s.now });
    assert.deepEqual(
      planned.devices.map((d) => [d.name, d.action, d.outcome]),
      [
        ['a', 'recreate', 'failed'],
        ['b', 'create', 'failed'],
      ],
    );
    assert.match(planned.devices[0]!.error!, /does not exist.*\(the device would be left as it is\)$/);
    assert.equal(planned.exitCode, 1);
    assert.deepEqual(s.kernel.calls, ['start 0']);
  });

  it('creates a valid manifest in the same pass as a hostile 10 MB file, which costs one error naming it', async () => {
    s.raw('hostile.yaml', `[${'1,'.repeat(5 * 1024 * 1024)}1]`);
    s.write('a');
    const result = await s.pass();
    assert.deepEqual([result.devices[0]!.action, result.devices[0]!.outcome], ['create', 'ok']);
    assert.deepEqual(result.manifestErrors, [
      'hostile.yaml: too large: a manifest file may hold at most 64KiB, this one has 10485763 bytes',
    ]);
  });

  it('remembers the file a device came from, and follows the manifest when it moves to another file', async () => {
    await s.owned('a');
    assert.equal(s.recordOf('a')!.manifestFile, 'a.yaml');
    fs.rmSync(path.join(s.dir, 'a.yaml'));
    s.write('a', undefined, 'moved.yaml');
    const moved = await s.pass();
    assert.equal(moved.devices[0]!.action, 'noop');
    assert.equal(s.recordOf('a')!.manifestFile, 'moved.yaml');
    s.write('b', undefined, 'moved.yaml');
    const removed = await s.pass();
    assert.deepEqual(
      removed.devices.map((d) => [d.name, d.action]),
      [
        ['a', 'delete'],
        ['b', 'create'],
      ],
    );
  });

  it('takes a record made before specs were normalized as unchanged, and brings its hash up to date', async () => {
    await s.owned('a');
    const loaded = loadManifestDir(s.dir, { maxQueues: 4 }).manifests[0]!;
    s.kernel.records.write({ ...s.recordOf('a')!, specHash: loaded.legacyHash, manifestFile: undefined });
    assert.equal((await s.pass()).devices[0]!.action, 'noop');
    assert.equal(s.recordOf('a')!.specHash, loaded.hash);
    assert.equal(s.recordOf('a')!.manifestFile, 'a.yaml');
  });

  it('grows a mounted device in place and records the new size only once the resize succeeded', async () => {
    const id = await s.owned('a', 'target: {type: memory}\nsize: 1GiB');
    s.kernel.devices.get(id)!.inUse = true;
    s.write('a', 'target: {type: memory}\nsize: 2GiB');
    s.kernel.failNextResize = new UblkError('UPDATE_SIZE', id, ERRNO.EIO);
    const failed = await s.pass();
    assert.deepEqual([failed.devices[0]!.action, failed.devices[0]!.outcome], ['resize', 'failed']);
    assert.equal(s.recordOf('a')!.spec.sizeBytes, 1024 ** 3, 'a failed resize keeps the old size');
    s.now += 60_000;
    const done = await s.pass();
    assert.deepEqual([done.devices[0]!.action, done.devices[0]!.outcome, done.exitCode], ['resize', 'ok', 0]);
    assert.deepEqual(s.kernel.calls, [`start ${id}`, `resize ${id} ${2 * 1024 ** 3}`]);
    assert.equal(s.recordOf('a')!.spec.sizeBytes, 2 * 1024 ** 3);
    assert.equal(s.kernel.devices.get(id)!.sizeBytes, 2 * 1024 ** 3);
    s.now += 60_000;
    assert.equal((await s.pass()).devices[0]!.action, 'noop', 'the grown device matches its manifest');
  });

  it('reports a grow on a kernel without UPDATE_SIZE as drift, with the reason, and leaves the device as it is', async () => {
    s.kernel.features = 0n;
    const id = await s.owned('a', 'target: {type: null}\nsize: 1GiB');
    s.kernel.devices.get(id)!.inUse = true;
    s.write('a', 'target: {type: null}\nsize: 2GiB');
    const result = await s.pass();
    assert.equal(result.devices[0]!.action, 'drift');
    assert.match(result.devices[0]!.reason, /kernel lacks UPDATE_SIZE/);
    assert.equal(result.exitCode, 1);
    assert.deepEqual(s.kernel.calls, [`start ${id}`]);
  });

  it("one device's failure does not block another", async () => {
    s.write('a');
    s.write('b');
    s.kernel.failNextStart = new Error('no room');
    const result = await s.pass();
    assert.deepEqual(result.devices.map((d) => d.outcome).sort(), ['failed', 'ok']);
    assert.equal(result.exitCode, 1);
  });

  it('has every server it starts, recoveries too, check what the spec names as strictly as the manifests', async function () {
    if (process.getuid?.() !== 0) this.skip(); // the manifests themselves pass the check only when root's
    const checks: Array<[string, boolean | undefined]> = [];
    const start = s.kernel.startServer.bind(s.kernel);
    s.kernel.startServer = (spec, opts) => {
      checks.push([opts.recoverDevId === undefined ? 'create' : 'recover', opts.checkPermissions]);
      return start(spec, opts);
    };
    const pass = (): Promise<PassResult> =>
      reconcileOnce(s.kernel, { dir: s.dir, now: () => s.now, backoff: s.backoff, checkPermissions: true });
    s.write('a');
    await pass();
    s.now += 60_000;
    s.kernel.killServer(s.recordOf('a')!.devId);
    assert.equal((await pass()).devices[0]!.action, 'recover');
    // The recovery starts from the record's spec: its files are checked again, not taken on trust.
    assert.deepEqual(checks, [
      ['create', true],
      ['recover', true],
    ]);
  });
});

describe('reconcile: server-side changes applied live by a handover', () => {
  let s: Scene;
  beforeEach(() => (s = new Scene()));
  afterEach(() => s.cleanup());

  /** A loop device the reconciler made a while ago, opened by some process (a mounted file system). */
  async function loopInUse(recovery: string): Promise<{ id: number; img: string }> {
    const img = s.file('disk.img', '\0'.repeat(1 << 20));
    const id = await s.owned('a', `target: {type: loop, file: ${img}}\nrecovery: ${recovery}`);
    s.kernel.devices.get(id)!.inUse = true;
    return { id, img };
  }

  it('a changed loop directIo on a device in use is handed over to a new server: same device, new spec recorded', async () => {
    const { id, img } = await loopInUse('reissue');
    const oldPid = s.kernel.devices.get(id)!.info.serverPid;
    s.write('a', `target: {type: loop, file: ${img}, directIo: false}\nrecovery: reissue`);
    const pass = await s.pass();
    assert.deepEqual([pass.devices[0]!.action, pass.devices[0]!.outcome], ['handover', 'ok'], pass.devices[0]!.reason);
    assert.match(pass.devices[0]!.reason, /changed only what its server does/);
    assert.deepEqual(s.kernel.calls, [`start ${id}`, `handover ${id}`, `recover ${id}`]);
    const dev = s.kernel.devices.get(id)!;
    assert.equal(dev.info.state, 'LIVE');
    assert.notEqual(dev.info.serverPid, oldPid);
    assert.ok(!s.kernel.isAlive(oldPid));
    const record = s.recordOf('a')!;
    assert.deepEqual(record.spec.target, { type: 'loop', file: img, create: false, directIo: false });
    assert.equal((await s.pass()).devices[0]!.action, 'noop', 'the new spec is the recorded one');
  });

  it('a changed IO scheduler is handed over to a new server, which sets it: same device, new spec recorded', async () => {
    const id = await s.owned('a', 'target: {type: null}\nsize: 1GiB\nrecovery: reissue');
    s.write('a', 'target: {type: null}\nsize: 1GiB\nrecovery: reissue\nscheduler: mq-deadline');
    const pass = await s.pass();
    assert.deepEqual([pass.devices[0]!.action, pass.devices[0]!.outcome], ['handover', 'ok'], pass.devices[0]!.reason);
    assert.deepEqual(s.kernel.calls, [`start ${id}`, `handover ${id}`, `recover ${id}`]);
    assert.equal(s.recordOf('a')!.spec.scheduler, 'mq-deadline');
    assert.equal((await s.pass()).devices[0]!.action, 'noop', 'the new spec is the recorded one');
    // Written out, the default is the same device as before: nothing to do.
    s.write('a', 'target: {type: null}\nsize: 1GiB\nrecovery: reissue\nscheduler: none');
    assert.equal((await s.pass()).devices[0]!.action, 'handover', 'back to none is a change too');
    s.write('a', 'target: {type: null}\nsize: 1GiB\nrecovery: reissue');
    assert.equal((await s.pass()).devices[0]!.action, 'noop', 'none written out or left out: the same spec');
  });

  it('a server-side change on a device that cannot be handed over stays drift, saying why', async () => {
    const { img } = await loopInUse('none');
    s.write('a', `target: {type: loop, file: ${img}, directIo: false}\nrecovery: none`);
    const pass = await s.pass();
    assert.equal(pass.devices[0]!.action, 'drift');
    assert.match(pass.devices[0]!.reason, /in use: left as it is; no handover: .*created without user recovery/);
  });

  it('a change beyond the server (the size) is not a handover', async () => {
    const { img } = await loopInUse('reissue');
    fs.truncateSync(img, 2 << 20);
    s.write('a', `target: {type: loop, file: ${img}, directIo: false}\nsize: 2MiB\nrecovery: reissue`);
    assert.equal((await s.pass()).devices[0]!.action, 'drift');
  });

  it('--upgrade-servers hands over devices whose server runs another ublk-ts; ones that cannot be are drift', async () => {
    const a = await s.owned('a');
    const b = await s.owned('b', 'target: {type: null}\nsize: 1GiB\nrecovery: none');
    const upgrade = (): Promise<PassResult> =>
      reconcileOnce(s.kernel, { dir: s.dir, now: () => s.now, backoff: s.backoff, upgradeServers: true });
    assert.deepEqual(
      (await upgrade()).devices.map((d) => d.action),
      ['noop', 'noop'],
      'servers already run the installed version',
    );
    for (const id of [a, b]) s.kernel.records.write({ ...s.kernel.records.read(id)!, serverVersion: '0.0.9' });
    assert.deepEqual(
      (await s.pass()).devices.map((d) => d.action),
      ['noop', 'noop'],
      'without --upgrade-servers',
    );
    const pass = await upgrade();
    assert.equal(pass.devices[0]!.action, 'handover');
    assert.match(pass.devices[0]!.reason, /its server runs ublk-ts 0\.0\.9: handed over to /);
    assert.equal(pass.devices[1]!.action, 'drift');
    assert.match(pass.devices[1]!.reason, /0\.0\.9, not .*created without user recovery/);
    assert.notEqual(s.kernel.records.read(a)!.serverVersion, '0.0.9');
    assert.ok(s.kernel.calls.includes(`handover ${a}`));
    assert.ok(!s.kernel.calls.includes(`handover ${b}`));
  });
});
