import { strict as assert } from 'node:assert';
import { Backoff, backoffMs } from '../../src/reconciler/backoff';
import { Action, DesiredDevice, LiveDevice, plan, PlanInput, requeueAfter } from '../../src/reconciler/planner';
import { DeviceRecord } from '../../src/server/device-records';
import { normalizeDeviceSpec } from '../../src/spec/device-spec';

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
});
