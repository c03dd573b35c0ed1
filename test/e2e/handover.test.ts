/**
 * Graceful server handover: `ublkctl restart` hands a live device over to a
 * new server while fio writes and verifies, on the kernel under test —
 * through QUIESCE_DEV where the kernel has UBLK_F_QUIESCE (6.16+), by
 * closing the old server's queues otherwise (recovery reissue only).
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  AddedDevice,
  fioVerifiedLoadArgs,
  ioCounts,
  isAlive,
  listDevices,
  manifest,
  outcomeOf,
  parsePass,
  RECONCILE,
  ReconcileOutcome,
  requireUblk,
  ROOT,
  run,
  runAsync,
  sha256Range,
  startFio,
  ublkctl,
  ublkctlJson,
  useDeviceSuite,
  waitForWrites,
} from './helpers';

const MiB = 1024 * 1024;
const HANDOVERS = 5;

interface Restarted extends AddedDevice {
  method: 'quiesce' | 'close' | 'recover';
  oldPid: number;
}

/** What this kernel answered to GET_FEATURES, by name. */
function kernelFeatures(): string[] {
  return ublkctlJson<{ names: string[] }>(['features']).names;
}

describe('graceful server handover with ublkctl restart (real ublk driver)', function () {
  requireUblk(this);
  const suite = useDeviceSuite(this, '/tmp/ublk-ts-handover-');
  const { add } = suite;
  let quiesce: boolean;

  before(() => {
    quiesce = kernelFeatures().includes('QUIESCE');
    console.log(`    this kernel ${quiesce ? 'has' : 'lacks'} UBLK_F_QUIESCE`);
  });

  function restart(id: number): Restarted {
    return ublkctlJson<Restarted>(['restart', String(id), '--state-dir', suite.stateDir(), '--insecure-permissions']);
  }

  /** Writes 8 MiB of random data at 32 MiB, beyond what fio writes, and returns its sum. */
  function writeBeyondFio(id: number): string {
    run('dd', ['if=/dev/urandom', `of=/dev/ublkb${id}`, 'bs=1M', 'seek=32', 'count=8', 'oflag=direct', 'status=none']);
    return sha256Range(`/dev/ublkb${id}`, 32, 8);
  }

  function device(id: number) {
    return listDevices().find((d) => d.id === id);
  }

  /**
   * Hands the device over HANDOVERS times while fio writes and verifies:
   * each time the same device, LIVE, served by a new process, the old one
   * gone; fio never sees an error and reads back what it wrote.
   */
  async function handOverUnderFio(id: number, firstPid: number, expected: Restarted['method']): Promise<void> {
    const load = suite.track(startFio(fioVerifiedLoadArgs(`handover${id}`, `/dev/ublkb${id}`, '24M', '0,300')));
    const pids = [firstPid];
    let writes = ioCounts(id).writes;
    for (let n = 1; n <= HANDOVERS; n++) {
      writes = await waitForWrites(id, writes, 100, `fio writing before handover ${n}`);
      assert.equal(load.child.exitCode, null, `fio still running at handover ${n}`);
      const r = restart(id);
      assert.equal(r.id, id, 'the same device');
      assert.equal(r.method, expected);
      assert.equal(r.oldPid, pids[pids.length - 1], 'the server that let go is the one that served');
      assert.ok(!pids.includes(r.serverPid), `handover ${n}: a new server pid (${r.serverPid}, before: ${pids})`);
      assert.ok(!isAlive(r.oldPid), `handover ${n}: the old server ${r.oldPid} exited`);
      const now = device(id);
      assert.equal(now?.state, 'LIVE');
      assert.equal(now?.serverPid, r.serverPid);
      pids.push(r.serverPid);
      const log = suite.serverLog(id);
      assert.match(
        log,
        new RegExp(`\\[server ${r.oldPid}\\] device ${id} handed over`),
        'the old server let go, not deleted',
      );
    }
    await waitForWrites(id, writes, 100, 'fio writing after the last handover');
    const result = await load.stop();
    assert.equal(result.status, 0, result.raw);
    assert.equal(result.jobs[0]!.error, 0, result.raw);
    assert.ok(result.jobs[0]!.read.io_bytes > 0, 'fio read back and verified what it wrote');
  }

  it('loop, reissue: fio randwrite verify runs across five handovers with no IO error', async () => {
    const file = path.join(suite.scratch(), 'loop.img');
    const dev = add(['-t', 'loop', '--file', file, '--create', '--size', '64MiB', '--recovery', 'reissue']);
    assert.equal(
      dev.flagNames.includes('QUIESCE'),
      quiesce,
      'UBLK_F_QUIESCE asked for exactly where the kernel has it',
    );
    // Beyond fio's 24 MiB: data written before the handovers must be there after them.
    const before = writeBeyondFio(dev.id);
    await handOverUnderFio(dev.id, dev.serverPid, quiesce ? 'quiesce' : 'close');
    assert.equal(sha256Range(`/dev/ublkb${dev.id}`, 32, 8), before, 'data written before the handovers is intact');
    assert.equal(
      sha256Range(`/dev/ublkb${dev.id}`, 0, 64),
      sha256Range(file, 0, 64),
      'the backing file equals the device',
    );
  });

  it('memory, fail-inflight: handed over with QUIESCE_DEV where the kernel has it; refused otherwise, device untouched', async () => {
    const dev = add(['-t', 'memory', '--size', '64MiB', '--recovery', 'fail-inflight']);
    const before = writeBeyondFio(dev.id);
    if (quiesce) {
      await handOverUnderFio(dev.id, dev.serverPid, 'quiesce');
    } else {
      const r = ublkctl(['restart', String(dev.id), '--state-dir', suite.stateDir()]);
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, /fail-inflight but no UBLK_F_QUIESCE \(Linux 6\.16\+/);
      const now = device(dev.id);
      assert.equal(now?.state, 'LIVE');
      assert.equal(now?.serverPid, dev.serverPid, 'the server was left serving');
    }
    assert.equal(sha256Range(`/dev/ublkb${dev.id}`, 32, 8), before, "the memory device's data is intact");
  });

  it('js loop target (examples/loop.js), reissue: handed over twice under fio verify', async () => {
    const file = path.join(suite.scratch(), 'js-loop.img');
    fs.writeFileSync(file, Buffer.alloc(0));
    fs.truncateSync(file, 64 * MiB);
    const module = path.join(ROOT, 'dist', 'examples', 'loop.js');
    const dev = add([
      '-t',
      'js',
      '--module',
      module,
      '--options',
      JSON.stringify({ file }),
      '--size',
      '64MiB',
      '--recovery',
      'reissue',
      '--insecure-permissions',
    ]);
    const load = suite.track(startFio(fioVerifiedLoadArgs(`js${dev.id}`, `/dev/ublkb${dev.id}`, '24M', '0,300')));
    let pid = dev.serverPid;
    let writes = ioCounts(dev.id).writes;
    for (let n = 1; n <= 2; n++) {
      writes = await waitForWrites(dev.id, writes, 100, `fio writing before handover ${n}`);
      const r = restart(dev.id);
      assert.equal(r.method, quiesce ? 'quiesce' : 'close');
      assert.equal(r.oldPid, pid);
      assert.notEqual(r.serverPid, pid);
      pid = r.serverPid;
    }
    await waitForWrites(dev.id, writes, 100, 'fio writing after the last handover');
    const result = await load.stop();
    assert.equal(result.status, 0, result.raw);
    assert.equal(result.jobs[0]!.error, 0, result.raw);
  });

  it('reconciler: a loop directIo change is applied live by a handover, and --upgrade-servers hands an older server over', async () => {
    const dir = fs.mkdtempSync('/tmp/ublk-ts-handover-manifests-');
    fs.chmodSync(dir, 0o755);
    const file = path.join(suite.scratch(), 'managed.img');
    const writeManifest = (directIo: boolean): void => {
      const text = manifest(
        'managed',
        `target:\n  type: loop\n  file: ${file}\n  create: true\n  directIo: ${directIo}\nsize: 64MiB\nrecovery: reissue`,
      );
      fs.writeFileSync(path.join(dir, 'managed.yaml'), text, { mode: 0o644 });
    };
    const pass = async (extra: string[] = []): Promise<ReconcileOutcome> => {
      const r = await runAsync(
        process.execPath,
        [
          RECONCILE,
          '--dir',
          dir,
          '--state-dir',
          suite.stateDir(),
          '--once',
          '--json',
          '--insecure-permissions',
          ...extra,
        ],
        { allowFail: true },
      );
      return outcomeOf(parsePass(r), 'managed');
    };
    try {
      writeManifest(false);
      const created = await pass();
      assert.equal(created.action, 'create', created.error);
      const id = suite.devices.add(created.devId!);
      const recordFile = path.join(suite.stateDir(), 'devices', `ublkb${id}.json`);
      const installed = (JSON.parse(fs.readFileSync(recordFile, 'utf8')) as { serverVersion: string }).serverVersion;
      assert.ok(installed, 'the record keeps the server version');
      const load = suite.track(startFio(fioVerifiedLoadArgs(`managed${id}`, `/dev/ublkb${id}`, '24M', '0,300')));
      let writes = await waitForWrites(id, ioCounts(id).writes, 100, 'fio writing before the manifest changes');
      const firstPid = device(id)!.serverPid;

      writeManifest(true);
      const changed = await pass();
      assert.deepEqual([changed.action, changed.outcome], ['handover', 'ok'], changed.error ?? changed.reason);
      assert.equal(changed.devId, id, 'the same device');
      const secondPid = device(id)!.serverPid;
      assert.notEqual(secondPid, firstPid);
      assert.equal(device(id)!.state, 'LIVE');
      const record = JSON.parse(fs.readFileSync(recordFile, 'utf8')) as { spec: { target: { directIo: unknown } } };
      assert.equal(record.spec.target.directIo, true, 'the new spec is recorded');
      assert.equal((await pass()).action, 'noop');

      // As if the server had been started by an older ublk-ts, before `npm install` of this one.
      const older = JSON.parse(fs.readFileSync(recordFile, 'utf8')) as Record<string, unknown>;
      fs.writeFileSync(recordFile, JSON.stringify({ ...older, serverVersion: '0.0.1' }));
      assert.equal((await pass()).action, 'noop', 'without --upgrade-servers the server is left as it is');
      writes = await waitForWrites(id, writes, 100, 'fio writing before the upgrade');
      const upgraded = await pass(['--upgrade-servers']);
      assert.deepEqual([upgraded.action, upgraded.outcome], ['handover', 'ok'], upgraded.error ?? upgraded.reason);
      assert.match(upgraded.reason, /runs ublk-ts 0\.0\.1: handed over to /);
      assert.notEqual(device(id)!.serverPid, secondPid);
      assert.equal(
        (JSON.parse(fs.readFileSync(recordFile, 'utf8')) as { serverVersion: string }).serverVersion,
        installed,
      );

      await waitForWrites(id, writes, 100, 'fio writing after the handovers');
      const result = await load.stop();
      assert.equal(result.status, 0, result.raw);
      assert.equal(result.jobs[0]!.error, 0, result.raw);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('recovery none: a handover is refused as impossible and the device is left serving', () => {
    const dev = add(['-t', 'null', '--size', '16MiB', '--recovery', 'none']);
    const r = ublkctl(['restart', String(dev.id), '--state-dir', suite.stateDir()]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /created without user recovery .* a handover is impossible/);
    const now = device(dev.id);
    assert.equal(now?.state, 'LIVE');
    assert.equal(now?.serverPid, dev.serverPid);
    assert.ok(isAlive(dev.serverPid));
  });
});
