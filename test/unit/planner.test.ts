import { strict as assert } from 'node:assert';
import { Backoff, backoffMs } from '../../src/reconciler/backoff';
import { Action, DesiredDevice, LiveDevice, plan, PlanInput, requeueAfter } from '../../src/reconciler/planner';
import { DeviceRecord } from '../../src/server/device-records';
import { identityWithoutSize, normalizeDeviceSpec } from '../../src/spec/device-spec';

const NOW = Date.parse('2026-11-25T12:00:00Z');
const spec = normalizeDeviceSpec({ target: 'null', size: '1GiB' }, { maxQueues: 2 });

function want(name: string, hash = 'h1', fixedId?: number): DesiredDevice {
  return { name, source: `${name}.yaml:1`, file: `${name}.yaml`, hash, fixedId };
}

function record(name: string, devId: number, extra: Partial<DeviceRecord> = {}): DeviceRecord {
  return {
    version: 1,
    devId,
    owner: 'reconciler',
    manifest: name,
    specHash: 'h1',
    spec,
    serverPid: 100 + devId,
    status: 'live',
    updatedAt: new Date(NOW - 1000).toISOString(),
    ...extra,
  };
}

function device(id: number, extra: Partial<LiveDevice> = {}): LiveDevice {
  return { id, state: 'LIVE', serverPid: 100 + id, serverAlive: true, inUse: false, recoverable: true, ...extra };
}

function run(partial: Partial<PlanInput>): Action[] {
  return plan({
    desired: [],
    invalidNames: new Set(),
    unattributedErrors: false,
    presentFiles: new Set(),
    validFiles: new Set(),
    records: [],
    live: new Map(),
    now: NOW,
    ...partial,
  });
}

function only(actions: Action[]): Action {
  assert.equal(actions.length, 1, JSON.stringify(actions));
  return actions[0]!;
}

describe('reconcile planner', () => {
  it('creates a device for a new manifest', () => {
    assert.equal(only(run({ desired: [want('a')] })).kind, 'create');
  });

  it('does nothing for a live device that matches its manifest', () => {
    const a = only(run({ desired: [want('a')], records: [record('a', 3)], live: new Map([[3, device(3)]]) }));
    assert.deepEqual([a.kind, a.devId], ['noop', 3]);
  });

  it('recovers a QUIESCED device whose server is gone', () => {
    const a = only(
      run({
        desired: [want('a')],
        records: [record('a', 3)],
        live: new Map([[3, device(3, { state: 'QUIESCED', serverAlive: false })]]),
      }),
    );
    assert.equal(a.kind, 'recover');
    assert.match(a.reason, /QUIESCED and its server \(pid 103\) is gone/);
  });

  it('re-creates a DEAD device and says data-plane state was lost', () => {
    const a = only(
      run({
        desired: [want('a')],
        records: [record('a', 3)],
        live: new Map([[3, device(3, { state: 'DEAD', serverAlive: false })]]),
      }),
    );
    assert.equal(a.kind, 'recreate');
    assert.equal(a.dataLost, true);
  });

  it('re-creates a device whose record survived but whose device vanished', () => {
    assert.equal(only(run({ desired: [want('a')], records: [record('a', 3)] })).kind, 'create');
  });

  it('re-creates a changed device that is not in use, and only reports drift for one that is', () => {
    const changed = { desired: [want('a', 'h2')], records: [record('a', 3)] };
    assert.equal(only(run({ ...changed, live: new Map([[3, device(3)]]) })).kind, 'recreate');
    const drift = only(run({ ...changed, live: new Map([[3, device(3, { inUse: true })]]) }));
    assert.equal(drift.kind, 'drift');
    assert.match(drift.reason, /in use: left as it is/);
  });

  it('deletes an owned device whose manifest is gone, but never one another tool made', () => {
    const a = only(
      run({
        records: [record('old', 4)],
        live: new Map([
          [4, device(4)],
          [9, device(9)],
        ]),
      }),
    );
    assert.deepEqual([a.kind, a.devId], ['delete', 4]);
  });

  it('holds a device whose manifest is invalid, and holds all deletions when an invalid manifest has no readable name', () => {
    const held = only(
      run({ records: [record('a', 3)], invalidNames: new Set(['a']), live: new Map([[3, device(3)]]) }),
    );
    assert.equal(held.kind, 'hold');
    const unnamed = only(run({ records: [record('a', 3)], unattributedErrors: true, live: new Map([[3, device(3)]]) }));
    assert.equal(unnamed.kind, 'hold');
  });

  it('refuses a fixed id that a device it does not own already has', () => {
    const a = only(run({ desired: [want('a', 'h1', 7)], live: new Map([[7, device(7)]]) }));
    assert.equal(a.kind, 'refuse');
    assert.match(a.reason, /id 7 is taken by a device ublk-ts does not manage/);
  });

  it('backs off a device that keeps failing, with a capped delay from the injectable clock', () => {
    assert.deepEqual(
      [0, 1, 2, 3, 10].map((n) => backoffMs(n)),
      [0, 1000, 2000, 4000, 60_000],
    );
    const backoff = new Backoff();
    for (let i = 0; i < 3; i++) backoff.failed('a', NOW - 1000);
    const quiesced = new Map([[3, device(3, { state: 'QUIESCED', serverAlive: false })]]);
    const input = { desired: [want('a')], records: [record('a', 3)], live: quiesced };
    const waiting = only(run({ ...input, backoff: (name) => backoff.pending(name, NOW) }));
    assert.equal(waiting.kind, 'wait');
    assert.equal(waiting.dueAt, NOW + 3000, 'the wait carries its due time');
    assert.match(waiting.reason, /recovery failed 3 time\(s\); next try in 3 s/);
    assert.equal(requeueAfter([waiting], NOW), 3000);
    const later = only(run({ ...input, now: NOW + 5000, backoff: (name) => backoff.pending(name, NOW + 5000) }));
    assert.equal(later.kind, 'recover');
    assert.equal(requeueAfter([later], NOW + 5000), undefined);
  });

  it('gives a device that is still settling a second look after a short while', () => {
    const a = only(
      run({ desired: [want('a')], records: [record('a', 3)], live: new Map([[3, device(3, { state: 'QUIESCED' })]]) }),
    );
    assert.equal(a.kind, 'wait');
    assert.equal(requeueAfter([a], NOW), 1000);
  });

  describe('a manifest whose only change is its size', () => {
    const GiB = 1024 ** 3;
    const memory = normalizeDeviceSpec({ target: 'memory', size: '1GiB' }, { maxQueues: 2 });
    const resized = (size: number, hash = 'h2'): DesiredDevice => ({
      ...want('a', hash),
      sizeBytes: size,
      identityWithoutSize: identityWithoutSize(memory),
    });
    const at = (live: Partial<LiveDevice>, size: number): Action =>
      only(
        run({
          desired: [resized(size)],
          records: [record('a', 3, { spec: memory })],
          live: new Map([[3, device(3, live)]]),
        }),
      );

    it('grows a LIVE device in place, even while it is mounted', () => {
      for (const inUse of [false, true]) {
        const a = at({ inUse }, 2 * GiB);
        assert.deepEqual([a.kind, a.devId, a.sizeBytes], ['resize', 3, 2 * GiB]);
        assert.match(a.reason, /changes the size from 1GiB to 2GiB: resized in place/);
      }
    });

    it('shrinks a device in place only while it is unused', () => {
      const unused = at({ inUse: false }, GiB / 2);
      assert.deepEqual([unused.kind, unused.sizeBytes], ['resize', GiB / 2]);
      const mounted = at({ inUse: true }, GiB / 2);
      assert.equal(mounted.kind, 'drift');
      assert.match(mounted.reason, /in use: shrinking it would take data from under its user/);
    });

    it('reports drift, with the reason, on a kernel without UPDATE_SIZE (6.12) while the device is in use', () => {
      const a = at({ inUse: true, cannotResize: 'the kernel lacks UPDATE_SIZE (Linux 6.16+)' }, 2 * GiB);
      assert.equal(a.kind, 'drift');
      assert.match(a.reason, /cannot change in place: the kernel lacks UPDATE_SIZE \(Linux 6\.16\+\)/);
    });

    it('falls back to the ordinary rows without UPDATE_SIZE when unused: a memory device is kept for its data', () => {
      const a = at({ cannotResize: 'the kernel lacks UPDATE_SIZE (Linux 6.16+)' }, 2 * GiB);
      assert.equal(a.kind, 'drift');
      assert.match(a.reason, /kernel lacks UPDATE_SIZE.*would discard its data/);
    });

    it('applies a size the record lost track of (ublkctl resize) back to the manifest, hash unchanged', () => {
      const a = only(
        run({
          desired: [resized(GiB, 'h1')],
          records: [record('a', 3, { spec: { ...memory, sizeBytes: 2 * GiB } })],
          live: new Map([[3, device(3)]]),
        }),
      );
      assert.deepEqual([a.kind, a.sizeBytes], ['resize', GiB]);
    });

    it('waits for a device that is not LIVE with its server', () => {
      assert.equal(at({ state: 'QUIESCED' }, 2 * GiB).kind, 'wait');
    });

    it('never resizes when anything besides the size changed', () => {
      const other = normalizeDeviceSpec({ target: 'memory', size: '2GiB', queues: 2 }, { maxQueues: 2 });
      const a = only(
        run({
          desired: [{ ...want('a', 'h2'), sizeBytes: 2 * GiB, identityWithoutSize: identityWithoutSize(other) }],
          records: [record('a', 3, { spec: memory })],
          live: new Map([[3, device(3, { inUse: true })]]),
        }),
      );
      assert.equal(a.kind, 'drift');
      assert.doesNotMatch(a.reason, /size/);
    });
  });
});
