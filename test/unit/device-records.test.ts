import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  CorruptRecordError,
  listRecords,
  readRecord,
  removeRecord,
  writeRecord,
} from '../../src/server/device-records';
import { processStartTime } from '../../src/server/processes';
import { normalizeDeviceSpec } from '../../src/spec/device-spec';

const WRITER = path.resolve(__dirname, '..', 'fixtures', 'record-writer.js');

describe('state records', () => {
  it('round-trips a record and lists only records', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-state-'));
    const spec = normalizeDeviceSpec({ target: 'null', size: '1GiB' }, { maxQueues: 1 });
    writeRecord(dir, { version: 1, devId: 3, owner: 'ublkctl', spec, serverPid: 42, status: 'live', updatedAt: '' });
    fs.writeFileSync(path.join(dir, 'devices', 'notes.txt'), 'not a record');
    const back = readRecord(dir, 3)!;
    assert.equal(back.serverPid, 42);
    assert.ok(Date.parse(back.updatedAt) > 0);
    assert.deepEqual(
      listRecords(dir).map((r) => r.devId),
      [3],
    );
    removeRecord(dir, 3);
    assert.equal(readRecord(dir, 3), undefined);
  });

  it('lists a record rewritten, or corrupted, after it was listed as what its file now says', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-state-'));
    try {
      const spec = normalizeDeviceSpec({ target: 'null', size: '1GiB' }, { maxQueues: 1 });
      writeRecord(dir, { version: 1, devId: 7, owner: 'ublkctl', spec, serverPid: 42, status: 'live', updatedAt: '' });
      const first = listRecords(dir)[0]!;
      assert.equal(listRecords(dir)[0]!.serverPid, 42);
      // Each caller gets its own object: changing one changes no later listing.
      first.serverPid = 1;
      assert.equal(listRecords(dir)[0]!.serverPid, 42);
      writeRecord(dir, { ...first, serverPid: 43 });
      assert.equal(listRecords(dir)[0]!.serverPid, 43);
      const file = path.join(dir, 'devices', 'ublkb7.json');
      fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace('"queues": 1', '"queues": 0'));
      assert.throws(() => listRecords(dir), CorruptRecordError);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reports a corrupt record, or one that is not ours, naming its file', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-state-'));
    fs.mkdirSync(path.join(dir, 'devices'));
    const file = path.join(dir, 'devices', 'ublkb4.json');
    fs.writeFileSync(file, '{"version": 1, "devId": 4, "trunc');
    assert.throws(
      () => listRecords(dir),
      (err: Error) => err instanceof CorruptRecordError && err.message.startsWith(`${file}: corrupt device record (`),
    );
    fs.writeFileSync(file, '[1, 2]');
    assert.throws(() => readRecord(dir, 4), new RegExp(`^CorruptRecordError: ${file}: not a ublk-ts device record`));
    fs.rmSync(dir, { recursive: true });
    fs.writeFileSync(dir, 'a file where the state directory should be');
    assert.throws(() => listRecords(dir), /cannot list device records \(ENOTDIR\)/);
    fs.rmSync(dir);
  });

  it('leaves no temporary behind when a write fails (a long-lived writer would never have it cleaned up)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-state-'));
    const spec = normalizeDeviceSpec({ target: 'null', size: '1GiB' }, { maxQueues: 1 });
    // A directory where the record should go: the rename over it fails (EISDIR).
    fs.mkdirSync(path.join(dir, 'devices', 'ublkb6.json'), { recursive: true });
    assert.throws(
      () =>
        writeRecord(dir, { version: 1, devId: 6, owner: 'ublkctl', spec, serverPid: 1, status: 'live', updatedAt: '' }),
      /EISDIR/,
    );
    assert.deepEqual(
      fs.readdirSync(path.join(dir, 'devices')).filter((n) => n.endsWith('.tmp')),
      [],
    );
    fs.rmSync(dir, { recursive: true });
  });

  it('trusts a stored spec no more than a manifest: one that fails its checks makes the record corrupt', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-state-'));
    const spec = normalizeDeviceSpec({ target: 'null', size: '1GiB' }, { maxQueues: 1 });
    writeRecord(dir, { version: 1, devId: 5, owner: 'ublkctl', spec, serverPid: 42, status: 'live', updatedAt: '' });
    assert.equal(readRecord(dir, 5)!.spec.sizeBytes, 1024 ** 3);
    const file = path.join(dir, 'devices', 'ublkb5.json');
    const stored = JSON.parse(fs.readFileSync(file, 'utf8')) as { spec: Record<string, unknown> };
    const tampered: Array<[Record<string, unknown>, RegExp]> = [
      [{ ...stored.spec, target: { type: 'js', module: 'relative/evil.js', options: {} } }, /target\.module/],
      [
        { ...stored.spec, target: { type: 'loop', file: 'etc/shadow', create: false, directIo: 'auto' } },
        /target\.file/,
      ],
      [{ ...stored.spec, depth: 100000 }, /depth/],
      [{ ...stored.spec, sizeBytes: 'lots' }, /sizeBytes: is not a number/],
    ];
    for (const [bad, field] of tampered) {
      fs.writeFileSync(file, JSON.stringify({ ...stored, spec: bad }));
      assert.throws(
        () => readRecord(dir, 5),
        (err: Error) =>
          err instanceof CorruptRecordError &&
          err.message.startsWith(`${file}: its device spec fails the checks a manifest must pass (`) &&
          field.test(err.message),
      );
      assert.throws(() => listRecords(dir), CorruptRecordError);
    }
    fs.rmSync(dir, { recursive: true });
  });

  it('is always the old or the new version, whenever the writer is killed with SIGKILL', async function () {
    this.timeout(120_000);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-kill-'));
    for (let round = 0; round < 20; round++) {
      const child = spawn(process.execPath, [WRITER, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
      await new Promise((r) => setTimeout(r, 20 + Math.random() * 80));
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      const record = readRecord(dir, 5);
      if (record) assert.ok(['even', 'odd'].includes(record.specHash!), `round ${round}: ${record.specHash}`);
      assert.equal(
        listRecords(dir).length,
        record ? 1 : 0,
        'leftover temporary files are cleaned, never read as records',
      );
      assert.deepEqual(
        fs.readdirSync(path.join(dir, 'devices')).filter((n) => n.endsWith('.tmp')),
        [],
      );
    }
    assert.ok(readRecord(dir, 5), 'at least one write completed');
  });

  it('never removes the temporary of a writer that is still writing', async function () {
    this.timeout(120_000);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-race-'));
    const child = spawn(process.execPath, [WRITER, dir], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
      // Reads that saw the writer's temporary: each would have deleted it under the old listRecords.
      let sawTemporary = 0;
      const devices = path.join(dir, 'devices');
      while (sawTemporary < 50 && child.exitCode === null) {
        if (fs.existsSync(devices) && fs.readdirSync(devices).some((n) => n.endsWith('.tmp'))) sawTemporary++;
        listRecords(dir);
        await new Promise((r) => setImmediate(r));
      }
      assert.equal(child.exitCode, null, `the writer failed while records were listed:\n${stderr}`);
      assert.equal(sawTemporary, 50);
    } finally {
      child.kill('SIGKILL');
      await exited;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('removes only temporaries whose writer is provably gone', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-stale-'));
    const devices = path.join(dir, 'devices');
    fs.mkdirSync(devices);
    const start = processStartTime(process.pid)!;
    const oneHourAgo = new Date(Date.now() - 3600_000);
    const plant = (name: string, old = false): void => {
      fs.writeFileSync(path.join(devices, name), '{');
      if (old) fs.utimesSync(path.join(devices, name), oneHourAgo, oneHourAgo);
    };
    const deadPid = 2 ** 22 + 1; // above pid_max's ceiling: never a live process
    plant(`.ublkb1.json.${process.pid}-${start}.0a0b0c0d.tmp`); // this process: alive
    plant(`.ublkb2.json.${deadPid}-${start}.0a0b0c0d.tmp`); // writer gone
    plant(`.ublkb3.json.${process.pid}-${Number(start) + 1}.0a0b0c0d.tmp`); // pid reused by a later process
    plant(`.ublkb4.json.${deadPid}.0a0b0c0d.tmp`, true); // legacy name, writer gone, old
    plant(`.ublkb5.json.${deadPid}.0a0b0c0d.tmp`); // legacy name, writer gone, but recent
    plant(`.ublkb6.json.${process.pid}.0a0b0c0d.tmp`, true); // legacy name, writer alive
    plant('something-else.tmp', true); // not ours: left alone
    assert.deepEqual(listRecords(dir), []);
    assert.deepEqual(fs.readdirSync(devices).sort(), [
      `.ublkb1.json.${process.pid}-${start}.0a0b0c0d.tmp`,
      `.ublkb5.json.${deadPid}.0a0b0c0d.tmp`,
      `.ublkb6.json.${process.pid}.0a0b0c0d.tmp`,
      'something-else.tmp',
    ]);
    fs.rmSync(dir, { recursive: true });
  });
});
