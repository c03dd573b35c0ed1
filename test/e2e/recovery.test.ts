import { strict as assert } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  DeviceTracker,
  fioVerifiedLoadArgs,
  inFlight,
  ioCounts,
  isAlive,
  killServerMidIo,
  listDevices,
  manifest,
  ReconcileWatcher,
  ROOT,
  requireUblk,
  run,
  sha256Range,
  startFio,
  ublkctl,
  ublkctlJson,
  useManifestDir,
  waitFor,
  waitForStableServer,
  waitForWrites,
} from './helpers';

/** The one-letter scheduler state of a process (R, S, D, ...), or undefined once it is gone. */
function processState(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return undefined;
  }
}

describe('crash recovery with real kill -9 (real ublk driver)', function () {
  requireUblk(this);
  const manifests = useManifestDir(this);
  const write = (file: string, text: string): void => manifests.write(file, text);
  let scratch: string;
  let watcher: ReconcileWatcher | undefined;
  /** What the watcher started last has logged. */
  const watcherLog = (): string => watcher?.log() ?? '';
  /** Every fio and dd a test starts, killed in afterEach whatever happened. */
  let started: Array<{ kill(): void }> = [];
  /** Devices a test made with ublkctl (the reconciler's pass in afterEach removes only its own). */
  const devices = new DeviceTracker();

  function track<T extends { kill(): void }>(p: T): T {
    started.push(p);
    return p;
  }

  beforeEach(() => {
    scratch = fs.mkdtempSync('/tmp/ublk-ts-recovery-');
  });

  afterEach(async () => {
    for (const p of started) p.kill();
    started = [];
    devices.cleanup();
    await manifests.cleanup();
  });

  async function startWatcher(): Promise<void> {
    watcher = await manifests.startWatcher();
  }

  function stopWatcher(signal: NodeJS.Signals): Promise<void> {
    return manifests.stopWatcher(signal);
  }

  function device(id: number) {
    return listDevices().find((d) => d.id === id);
  }

  async function deviceLive(name: string): Promise<{ id: number; serverPid: number }> {
    await waitFor(
      () => new RegExp(`(create|recreate) ${name} dev \\d+`).test(watcherLog()),
      120_000,
      `${name} to be created`,
    );
    const id = Number(new RegExp(`(?:create|recreate) ${name} dev (\\d+)`).exec(watcherLog())![1]);
    await waitFor(() => device(id)?.state === 'LIVE', 60_000, `dev ${id} LIVE`);
    return { id, serverPid: device(id)!.serverPid };
  }

  /** Freezes the server until requests are in flight inside it, then kills it: the worst moment to die. */
  async function killMidIo(id: number): Promise<number> {
    const pid = device(id)!.serverPid;
    await killServerMidIo(id, pid);
    return pid;
  }

  async function recoveredFrom(id: number, oldPid: number): Promise<number> {
    await waitFor(
      () => {
        const d = device(id);
        return d !== undefined && d.state === 'LIVE' && d.serverPid !== oldPid && isAlive(d.serverPid);
      },
      60_000,
      `dev ${id} to be recovered`,
    );
    return device(id)!.serverPid;
  }

  it('loop, reissue: five kill -9 during fio randwrite verify; fio sees no error and the file equals the device', async () => {
    const file = path.join(scratch, 'loop.img');
    write(
      'loop.yaml',
      manifest('loop', `target:\n  type: loop\n  file: ${file}\n  create: true\nsize: 64MiB\nrecovery: reissue`),
    );
    await startWatcher();
    const { id } = await deviceLive('loop');
    const fio = track(startFio(fioVerifiedLoadArgs('reissue', `/dev/ublkb${id}`, '40M', '0,300')));
    let writes = ioCounts(id).writes;
    for (let kill = 1; kill <= 5; kill++) {
      await waitForStableServer(manifests.stateDir(), id);
      writes = await waitForWrites(id, writes, 100, `fio writing before kill ${kill}`);
      assert.equal(fio.child.exitCode, null, `fio still writing at kill ${kill}`);
      const oldPid = await killMidIo(id);
      await recoveredFrom(id, oldPid);
    }
    await waitForWrites(id, writes, 100, 'fio writing after the last recovery');
    const result = await fio.stop();
    assert.equal(result.status, 0, result.raw);
    assert.equal(result.jobs[0]!.error, 0);
    assert.ok(result.jobs[0]!.read.io_bytes > 0, 'fio read back and verified what it wrote');
    assert.equal(sha256Range(`/dev/ublkb${id}`, 0, 64), sha256Range(file, 0, 64), 'backing file equals the device');
  });

  it('memory, reissue: data written before a kill -9 is there after recovery, and fio verify passes across a kill', async () => {
    write('mem.yaml', manifest('mem', 'target:\n  type: memory\nsize: 64MiB'));
    await startWatcher();
    const { id } = await deviceLive('mem');
    run('dd', ['if=/dev/urandom', `of=${scratch}/payload`, 'bs=1M', 'count=8', 'status=none']);
    run('dd', [`if=${scratch}/payload`, `of=/dev/ublkb${id}`, 'bs=1M', 'seek=32', 'oflag=direct', 'status=none']);
    const before = sha256Range(`${scratch}/payload`, 0, 8);
    // fio writes only the first 16 MiB; the payload lives at 32 MiB.
    const fio = track(startFio(fioVerifiedLoadArgs('mem', `/dev/ublkb${id}`, '16M', '1500')));
    const writes = await waitForWrites(id, ioCounts(id).writes, 200, 'fio writing before the kill');
    assert.equal(fio.child.exitCode, null, 'fio still writing at the kill');
    const oldPid = await killMidIo(id);
    await recoveredFrom(id, oldPid);
    await waitForWrites(id, writes, 200, 'fio writing after recovery');
    const result = await fio.stop();
    assert.equal(result.status, 0, result.raw);
    assert.equal(result.jobs[0]!.error, 0);
    assert.ok(result.jobs[0]!.read.io_bytes > 0, 'fio read back and verified what it wrote');
    assert.equal(sha256Range(`/dev/ublkb${id}`, 32, 8), before, 'data written before the kill survives');
  });

  it('fail-inflight: IO in flight at the kill fails with EIO; IO issued while no server runs waits and succeeds', async () => {
    const hold = path.join(ROOT, 'dist', 'test', 'fixtures', 'targets', 'hold.js');
    write(
      'fi.yaml',
      manifest(
        'fi',
        `target:\n  type: js\n  module: ${hold}\n  options: {holdBlock: 7}\nsize: 16MiB\nrecovery: fail-inflight`,
      ),
    );
    await startWatcher();
    const { id, serverPid } = await deviceLive('fi');
    await stopWatcher('SIGTERM'); // recover by hand, so there is a window with no server
    const read = (block: number) => readBlock(id, block);
    const held = read(7);
    await waitFor(() => inFlight(id) > 0, 60_000, 'the held read to reach the server');
    assert.equal(held.child.exitCode, null, 'the held read is in flight inside the server');
    process.kill(serverPid, 'SIGKILL');
    const failed = await held.done;
    assert.notEqual(failed.code, 0);
    assert.match(failed.err, /Input\/output error/, 'in-flight IO fails with EIO');
    await waitFor(() => device(id)?.state === 'QUIESCED', 10_000, 'QUIESCED');
    const waiting = read(8);
    // A quiesced queue holds the request before dispatch, where the inflight counters do not see it: watch dd block instead.
    await waitFor(
      () => processState(waiting.child.pid!) === 'D',
      60_000,
      'the read issued with no server to block in the kernel',
    );
    assert.equal(waiting.child.exitCode, null, 'IO issued with no server waits');
    const rec = spawnSync(
      process.execPath,
      [path.join(ROOT, 'dist', 'src', 'cli', 'ublkctl.js'), 'recover', String(id), '--state-dir', manifests.stateDir()],
      { encoding: 'utf8' },
    );
    assert.equal(rec.status, 0, rec.stderr);
    assert.equal((await waiting.done).code, 0, 'the waiting IO succeeds after recovery');
    assert.notEqual(device(id)!.serverPid, serverPid);
  });

  it('fail-io: with the kernel feature, IO fails fast while no server runs and works after recovery; without it, a clear error and nothing created', () => {
    write('fio.yaml', manifest('failio', 'target:\n  type: null\nsize: 16MiB\nrecovery: fail-io'));
    const before = listDevices().map((d) => d.id);
    const kernelHasFailIo = ublkctlJson<{ names: string[] }>(['features']).names.includes('USER_RECOVERY_FAIL_IO');
    const r = manifests.reconcile(['--once', '--json']);
    const result = JSON.parse(r.stdout) as {
      exitCode: number;
      devices: Array<{ name: string; outcome: string; devId?: number; error?: string }>;
    };
    const d = result.devices.find((x) => x.name === 'failio')!;
    if (!kernelHasFailIo) {
      assert.equal(r.status, 1);
      assert.equal(d.outcome, 'failed');
      assert.match(
        d.error ?? '',
        /fail-io needs the kernel feature UBLK_F_USER_RECOVERY_FAIL_IO \(Linux 6\.13 or newer\); this kernel supports: reissue, fail-inflight, none/,
      );
      assert.deepEqual(
        listDevices().map((x) => x.id),
        before,
      );
      return;
    }
    assert.equal(r.status, 0, r.stdout + r.stderr);
    const id = d.devId!;
    const { serverPid } = device(id)!;
    process.kill(serverPid, 'SIGKILL');
    const readBlock = () =>
      spawnSync('dd', [`if=/dev/ublkb${id}`, 'of=/dev/null', 'bs=4k', 'count=1', 'iflag=direct'], {
        encoding: 'utf8',
        timeout: 60_000,
      });
    // The kernel notices the dead server when its /dev/ublkcN is released; until then IO may still be queued.
    let failed = readBlock();
    for (let tries = 0; failed.status === 0 && tries < 600; tries++) failed = readBlock();
    assert.notEqual(failed.status, 0, 'IO fails while no server runs');
    // 7.x fails these with BLK_STS_TARGET ("critical target error"), which user space sees as EREMOTEIO.
    assert.match(failed.stderr, /Input\/output error|Remote I\/O error/, `an IO error, at once: ${failed.stderr}`);
    assert.equal(device(id)?.state, 'FAIL_IO');
    const rec = spawnSync(
      process.execPath,
      [path.join(ROOT, 'dist', 'src', 'cli', 'ublkctl.js'), 'recover', String(id), '--state-dir', manifests.stateDir()],
      { encoding: 'utf8' },
    );
    assert.equal(rec.status, 0, rec.stderr);
    assert.equal(readBlock().status, 0, 'IO works after recovery');
    assert.equal(device(id)?.state, 'LIVE');
    assert.notEqual(device(id)!.serverPid, serverPid);
  });

  it('recovery none: the device dies with its server; the reconciler re-creates it, reports the loss, and the loop file keeps its data', async () => {
    const file = path.join(scratch, 'none.img');
    write(
      'none.yaml',
      manifest('none', `target:\n  type: loop\n  file: ${file}\n  create: true\nsize: 32MiB\nrecovery: none`),
    );
    await startWatcher();
    const first = await deviceLive('none');
    run('dd', ['if=/dev/urandom', `of=${scratch}/payload`, 'bs=1M', 'count=4', 'status=none']);
    run('dd', [`if=${scratch}/payload`, `of=/dev/ublkb${first.id}`, 'bs=1M', 'oflag=direct', 'status=none']);
    process.kill(first.serverPid, 'SIGKILL');
    await waitFor(
      () => /recreate none dev \d+.*data-plane state was lost/.test(watcherLog()),
      60_000,
      're-creation reported',
    );
    const second = await deviceLive('none');
    assert.equal(
      sha256Range(`/dev/ublkb${second.id}`, 0, 4),
      sha256Range(`${scratch}/payload`, 0, 4),
      'file data survived',
    );
  });

  it('kill -9 of the watcher during fio: no IO error, and a new watcher adopts the device without touching it', async () => {
    write('adopt.yaml', manifest('adopt', 'target:\n  type: memory\nsize: 64MiB'));
    await startWatcher();
    const { id, serverPid } = await deviceLive('adopt');
    const fio = track(startFio(fioVerifiedLoadArgs('adopt', `/dev/ublkb${id}`, '16M', '2000')));
    const writes = await waitForWrites(id, ioCounts(id).writes, 200, 'fio writing before the watcher is killed');
    await stopWatcher('SIGKILL');
    await waitForWrites(id, writes, 500, 'fio writing with no watcher');
    const result = await fio.stop();
    assert.equal(result.status, 0, result.raw);
    assert.equal(result.jobs[0]!.error, 0);
    await startWatcher();
    await waitFor(() => /noop adopt dev \d+/.test(watcherLog()), 60_000, 'the new watcher to adopt the device');
    assert.equal(device(id)!.serverPid, serverPid, 'same server, untouched');
  });

  it('a server that keeps dying is recovered with capped backoff, not in a busy loop, and its last error is shown', async () => {
    const crasher = path.join(ROOT, 'dist', 'test', 'fixtures', 'targets', 'crasher.js');
    write('crash.yaml', manifest('crash', `target:\n  type: js\n  module: ${crasher}\nsize: 16MiB`));
    await startWatcher();
    await waitFor(() => /create crash dev \d+/.test(watcherLog()), 60_000, 'creation');
    // The reconciler's own account of its backoff: a wait naming three consecutive quick deaths. Timestamps
    // of log lines would measure this machine's speed too, so the test reads what was decided, not when.
    await waitFor(
      () => /wait\s+crash dev \d+: recovery failed ([3-9]|\d\d+) time\(s\); next try in \d+ s/.test(watcherLog()),
      180_000,
      () => `a backoff wait after three quick deaths; the watcher said:\n${watcherLog()}`,
    );
    const listed = JSON.parse(
      spawnSync(
        process.execPath,
        [path.join(ROOT, 'dist', 'src', 'cli', 'ublkctl.js'), 'list', '--json', '--state-dir', manifests.stateDir()],
        { encoding: 'utf8' },
      ).stdout,
    ) as Array<{ manifest?: string; lastError?: string }>;
    assert.match(listed.find((d) => d.manifest === 'crash')?.lastError ?? '', /died .* after it started/);
    await stopWatcher('SIGTERM');
  });

  it('a loop server whose backing file system fills up fails those requests and stays up, without a restart loop', async () => {
    const mnt = fs.mkdtempSync(path.join(scratch, 'small-'));
    run('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt]);
    try {
      write('full.yaml', manifest('full', `target:\n  type: loop\n  file: ${mnt}/f.img\n  create: true\nsize: 32MiB`));
      await startWatcher();
      const { id, serverPid } = await deviceLive('full');
      const w = run(
        'dd',
        ['if=/dev/urandom', `of=/dev/ublkb${id}`, 'bs=1M', 'count=16', 'oflag=direct', 'status=none'],
        { allowFail: true },
      );
      assert.notEqual(w.status, 0, 'writes beyond the space fail');
      const r = run('dd', [`if=/dev/ublkb${id}`, 'of=/dev/null', 'bs=1M', 'count=2', 'iflag=direct', 'status=none'], {
        allowFail: true,
      });
      assert.equal(r.status, 0, 'reads are still served');
      assert.ok(isAlive(serverPid), 'the server is alive');
      assert.equal(device(id)!.serverPid, serverPid, 'the same server still serves');
      assert.equal(device(id)!.state, 'LIVE');
      assert.ok(!/recover full|recreate full/.test(watcherLog()), 'no restart');
      fs.rmSync(path.join(manifests.dir(), 'full.yaml'));
      await waitFor(() => /delete full dev/.test(watcherLog()), 60_000, 'deletion');
    } finally {
      run('umount', [mnt], { allowFail: true });
    }
  });
  /** A direct read of one 4 KiB block of the device, as a child the test can watch. */
  function readBlock(id: number, block: number) {
    const child = track(
      spawn('dd', [`if=/dev/ublkb${id}`, 'of=/dev/null', 'bs=4k', 'count=1', `skip=${block}`, 'iflag=direct']),
    );
    let err = '';
    child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    return {
      child,
      done: new Promise<{ code: number | null; err: string }>((r) => child.on('exit', (code) => r({ code, err }))),
    };
  }

  /** The device's UBLK_F_* flag names, as `ublkctl list --json` shows them. */
  function flagNames(id: number): string[] {
    return ublkctlJson<Array<{ id: number; flagNames: string[] }>>(['list']).find((d) => d.id === id)!.flagNames;
  }

  /** Adds a device with ublkctl, tracked for removal; returns its id and server pid. */
  function addWithUblkctl(args: string[]): { id: number; serverPid: number } {
    const dev = ublkctlJson<{ id: number }>(['add', ...args], manifests.stateDir());
    devices.add(dev.id);
    return { id: dev.id, serverPid: device(dev.id)!.serverPid };
  }

  async function killAndWaitQuiesced(id: number, pid: number): Promise<void> {
    process.kill(pid, 'SIGKILL');
    await waitFor(() => device(id)?.state === 'QUIESCED', 60_000, `dev ${id} QUIESCED`);
  }

  it('js ramdisk (its data only in the server): kill -9 ends the device instead of recovering it blank; the reconciler re-creates it and reports the loss', async () => {
    const ramdisk = path.join(ROOT, 'dist', 'examples', 'ramdisk.js');
    write('rd.yaml', manifest('rd', `target:\n  type: js\n  module: ${ramdisk}\nsize: 16MiB`));
    await startWatcher();
    const first = await deviceLive('rd');
    assert.ok(!flagNames(first.id).includes('USER_RECOVERY'), 'created without user recovery');
    run('dd', ['if=/dev/urandom', `of=/dev/ublkb${first.id}`, 'bs=1M', 'count=4', 'oflag=direct', 'status=none']);
    process.kill(first.serverPid, 'SIGKILL');
    await waitFor(
      () => /recreate rd dev \d+.*data-plane state was lost/.test(watcherLog()),
      60_000,
      () => `the re-creation reported as a loss; the watcher said:\n${watcherLog()}`,
    );
    assert.ok(!/recover\s+rd/.test(watcherLog()), `never recovered:\n${watcherLog()}`);
    const log = fs.readFileSync(path.join(manifests.stateDir(), 'logs', `ublkb${first.id}.log`), 'utf8');
    assert.match(log, /has recovery none, not reissue: its module does not export recoverable: true/);
  });

  it('a js target declaring recoverable (the loop.js example) is recovered after kill -9 with its data intact', async () => {
    const file = path.join(scratch, 'js-loop.img');
    run('truncate', ['-s', '16M', file]);
    const loopJs = path.join(ROOT, 'dist', 'examples', 'loop.js');
    write(
      'jl.yaml',
      manifest('jl', `target:\n  type: js\n  module: ${loopJs}\n  options: {file: ${file}}\nsize: 16MiB`),
    );
    await startWatcher();
    const { id, serverPid } = await deviceLive('jl');
    assert.ok(flagNames(id).includes('USER_RECOVERY'));
    run('dd', ['if=/dev/urandom', `of=${scratch}/payload`, 'bs=1M', 'count=4', 'status=none']);
    run('dd', [`if=${scratch}/payload`, `of=/dev/ublkb${id}`, 'bs=1M', 'oflag=direct', 'status=none']);
    await waitForStableServer(manifests.stateDir(), id);
    process.kill(serverPid, 'SIGKILL');
    await recoveredFrom(id, serverPid);
    assert.equal(
      sha256Range(`/dev/ublkb${id}`, 0, 4),
      sha256Range(`${scratch}/payload`, 0, 4),
      'same data after recovery',
    );
  });

  it('a recovery whose createTarget throws leaves the device recoverable: the next attempt brings it LIVE and the waiting IO completes', async () => {
    const failsOnce = path.join(ROOT, 'dist', 'test', 'fixtures', 'targets', 'fails-once.js');
    const marker = path.join(scratch, 'fail-next-start');
    const { id, serverPid } = addWithUblkctl([
      '-t',
      'js',
      '--module',
      failsOnce,
      '--size',
      '16MiB',
      '--options',
      JSON.stringify({ failMarker: marker }),
    ]);
    await killAndWaitQuiesced(id, serverPid);
    const waiting = readBlock(id, 3);
    await waitFor(() => processState(waiting.child.pid!) === 'D', 60_000, 'a read to wait in the kernel');
    fs.writeFileSync(marker, '');
    const failed = ublkctl(['recover', String(id), '--state-dir', manifests.stateDir()]);
    assert.equal(failed.status, 1, failed.stderr);
    assert.match(failed.stderr, /planted failure/);
    assert.ok(!fs.existsSync(marker), 'the failing attempt ran createTarget');
    assert.equal(device(id)!.state, 'QUIESCED', 'the failed attempt left the device waiting for a server');
    const retried = ublkctl(['recover', String(id), '--state-dir', manifests.stateDir()]);
    assert.equal(retried.status, 0, retried.stderr);
    assert.equal((await waiting.done).code, 0, 'the read that waited through both attempts succeeds');
    assert.equal(device(id)!.state, 'LIVE');
    assert.equal((await readBlock(id, 100).done).code, 0, 'new IO is served');
  });

  it('a recovery that died right after START_USER_RECOVERY (before any queue was ready) does not wedge the device: the next one brings it LIVE', async () => {
    const { id, serverPid } = addWithUblkctl(['-t', 'null', '--size', '16MiB']);
    await killAndWaitQuiesced(id, serverPid);
    // What a recovering server that died just after START_USER_RECOVERY leaves behind.
    const started = spawnSync(
      process.execPath,
      [
        '-e',
        `const { UblkControl } = require(${JSON.stringify(path.join(ROOT, 'dist', 'src'))});
         (async () => {
           const control = await UblkControl.open();
           for (let i = 0; ; i++) {
             try { await control.startUserRecovery(${id}); break; }
             catch (e) { if (e.code !== 'EBUSY' || i > 600) throw e; await new Promise((r) => setTimeout(r, 100)); }
           }
           control.close();
         })().catch((e) => { console.error(e.message); process.exit(1); });`,
      ],
      { encoding: 'utf8' },
    );
    assert.equal(started.status, 0, started.stderr);
    assert.equal(device(id)!.state, 'QUIESCED');
    const waiting = readBlock(id, 5);
    const recovered = ublkctl(['recover', String(id), '--state-dir', manifests.stateDir()]);
    assert.equal(recovered.status, 0, recovered.stderr);
    assert.equal(device(id)!.state, 'LIVE');
    assert.equal((await waiting.done).code, 0, 'IO that waited is served');
    assert.equal((await readBlock(id, 9).done).code, 0, 'new IO is served');
  });
});
