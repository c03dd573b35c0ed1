import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { applyScheduler, parseSchedulerList, schedulerFile } from '../../src/device/scheduler';
import { loadManifestDir } from '../../src/manifest';
import { normalizeDeviceSpec } from '../../src/spec/device-spec';

const limits = { maxQueues: 1 };

describe('IO scheduler: spec.scheduler', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-sched-'));
    fs.chmodSync(dir, 0o755);
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  function manifests(files: Record<string, string>): ReturnType<typeof loadManifestDir> {
    for (const [name, spec] of Object.entries(files)) {
      const text = `apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata:\n  name: ${name}\nspec:\n${spec.replace(/^/gm, '  ')}\n`;
      fs.writeFileSync(path.join(dir, `${name}.yaml`), text);
      fs.chmodSync(path.join(dir, `${name}.yaml`), 0o644);
    }
    return loadManifestDir(dir);
  }

  it('keeps a scheduler other than none in the validated spec, and none out of it', () => {
    assert.equal(
      normalizeDeviceSpec({ target: 'null', size: '1MiB', scheduler: 'mq-deadline' }, limits).scheduler,
      'mq-deadline',
    );
    assert.equal(
      'scheduler' in normalizeDeviceSpec({ target: 'null', size: '1MiB', scheduler: 'none' }, limits),
      false,
    );
    assert.equal('scheduler' in normalizeDeviceSpec({ target: 'null', size: '1MiB' }, limits), false);
  });

  it('refuses an unknown scheduler, naming the field, the line and what is expected', () => {
    const { manifests: ok, errors } = manifests({ a: 'target: {type: null}\nsize: 1MiB\nscheduler: cfq' });
    assert.equal(ok.length, 0);
    assert.equal(errors.length, 1);
    assert.equal(errors[0]!.path, 'spec.scheduler');
    assert.equal(errors[0]!.line, 8);
    assert.match(errors[0]!.message, /none.*mq-deadline.*kyber.*bfq.*kernel-default/);
    assert.throws(
      () => normalizeDeviceSpec({ target: 'null', size: '1MiB', scheduler: 'cfq' as 'none' }, limits),
      /scheduler/,
    );
  });

  it('a change is applied by a handover, not a new device: the spec hash changes, the device hash does not', () => {
    const {
      manifests: [plain, none, deadline],
    } = manifests({
      a: 'target: {type: null}\nsize: 1MiB',
      b: 'target: {type: null}\nsize: 1MiB\nscheduler: none',
      c: 'target: {type: null}\nsize: 1MiB\nscheduler: mq-deadline',
    });
    assert.equal(none!.hash, plain!.hash, 'none is the default: written out or not, the same device');
    assert.equal(none!.legacyHash, plain!.legacyHash);
    assert.notEqual(deadline!.hash, plain!.hash);
    assert.equal(deadline!.deviceHash, plain!.deviceHash);
  });
});

describe('IO scheduler: applyScheduler', () => {
  let sysBlock: string;
  beforeEach(() => {
    sysBlock = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-sysblock-'));
  });
  afterEach(() => fs.rmSync(sysBlock, { recursive: true, force: true }));

  function disk(id: number, listing: string): string {
    const file = schedulerFile(id, sysBlock);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, listing);
    return file;
  }

  it('reads the active scheduler and every one offered from the sysfs listing', () => {
    assert.deepEqual(parseSchedulerList('none [mq-deadline] kyber\n'), {
      active: 'mq-deadline',
      offered: ['none', 'mq-deadline', 'kyber'],
    });
    assert.deepEqual(parseSchedulerList('[none] \n'), { active: 'none', offered: ['none'] });
    assert.equal(parseSchedulerList('none mq-deadline').active, undefined);
  });

  it('writes nothing when the disk has the scheduler already, or for kernel-default', () => {
    const file = disk(3, '[none] mq-deadline\n');
    assert.deepEqual(applyScheduler(3, 'none', sysBlock), { wanted: 'none', active: 'none' });
    const other = disk(4, 'none [mq-deadline]\n');
    assert.deepEqual(applyScheduler(4, 'kernel-default', sysBlock), {
      wanted: 'kernel-default',
      active: 'mq-deadline',
    });
    assert.equal(fs.readFileSync(file, 'utf8'), '[none] mq-deadline\n');
    assert.equal(fs.readFileSync(other, 'utf8'), 'none [mq-deadline]\n');
  });

  it('writes the wanted name, and reports a disk that does not show it afterwards', () => {
    const file = disk(5, 'none [mq-deadline]\n');
    // A plain file takes the write but lists no active scheduler afterwards: what a kernel that ignored it would show.
    const outcome = applyScheduler(5, 'none', sysBlock);
    assert.equal(fs.readFileSync(file, 'utf8'), 'none');
    assert.equal(outcome.active, undefined);
    assert.match(outcome.error!, /kept an unreadable scheduler/);
  });

  it('reports a disk whose scheduler cannot be read, and one that cannot be written, without throwing', () => {
    assert.match(applyScheduler(9, 'none', sysBlock).error!, /cannot read .*ublkb9\/queue\/scheduler: ENOENT/);
    // A directory in the file's place fails the write the way a refusing sysfs attribute would fail it.
    const file = schedulerFile(6, sysBlock);
    fs.mkdirSync(file, { recursive: true });
    assert.match(applyScheduler(6, 'none', sysBlock).error!, /EISDIR/);
  });
});
