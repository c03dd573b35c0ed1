/**
 * Features of newer kernels, against the real driver: safe stop
 * (TRY_STOP_DEV, 7.0+), async delete (DEL_DEV_ASYNC, 6.9+), no partition
 * scan (UBLK_F_NO_AUTO_PART_SCAN, 7.0+) and the pid START_DEV carries
 * (checked since 6.17) from a server in a child pid namespace. Each test
 * that needs a feature asks the kernel for it and says so when it skips;
 * where the feature is missing, the message ublk-ts gives instead is tested.
 */
import { strict as assert } from 'node:assert';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { UblkControl } from '../../src/kernel/control';
import { UBLK_F_NO_AUTO_PART_SCAN, UBLK_F_SAFE_STOP_DEV } from '../../src/kernel/uapi';
import { removeDevice } from '../../src/server/launcher';
import {
  DeviceTracker,
  ioCounts,
  isAlive,
  makeStateDir,
  manifest,
  outcomeOf,
  parsePass,
  RECONCILE,
  requireUblk,
  ROOT,
  run,
  stopProcess,
  ublkctl,
  ublkctlJson,
  UBLKCTL,
  waitFor,
} from './helpers';

interface Added {
  id: number;
  blockPath: string;
  serverPid: number;
  flagNames: string[];
}

const MiB = 1024 * 1024;

/**
 * Writes 1 MiB of `fill` at offset 1 MiB and reads it back, bypassing the page cache; checks the
 * bytes unless the target stores nothing (null).
 */
function roundTrip(blockPath: string, fill: number, stores = true): void {
  const fd = fs.openSync(blockPath, fs.constants.O_RDWR | fs.constants.O_DIRECT);
  try {
    const out = Buffer.alloc(MiB, fill);
    assert.equal(fs.writeSync(fd, out, 0, MiB, MiB), MiB);
    const back = Buffer.alloc(MiB);
    assert.equal(fs.readSync(fd, back, 0, MiB, MiB), MiB);
    if (stores) assert.ok(back.equals(out), `${blockPath} reads back what was written`);
  } finally {
    fs.closeSync(fd);
  }
}

/** A process other than this one holding `blockPath` open (fd 3 of a sleep), until killed. */
async function holdOpen(blockPath: string): Promise<ChildProcess> {
  const holder = spawn('sh', ['-c', `exec 3<${blockPath} && echo held && exec sleep 600`], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let said = '';
  holder.stdout!.on('data', (b: Buffer) => (said += b.toString()));
  await waitFor(() => said.includes('held') || holder.exitCode !== null, 60_000, `a process opening ${blockPath}`);
  assert.ok(said.includes('held'), `sh could not open ${blockPath}`);
  return holder;
}

/** `promise`, or a failure naming `what` if it has not settled within `ms`: the bound of a wait that must not hang. */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

describe('kernel features (real ublk driver)', function () {
  requireUblk(this);
  const devices = new DeviceTracker();
  let stateDir: string;
  let features = 0n;
  const holders: ChildProcess[] = [];

  before(async () => {
    stateDir = makeStateDir();
    const control = await UblkControl.open();
    features = control.features;
    control.close();
  });

  afterEach(async () => {
    for (const h of holders.splice(0)) await stopProcess(h, 'SIGKILL');
    devices.cleanup();
  });

  function add(args: string[]): Added {
    const dev = ublkctlJson<Added>(['add', ...args], stateDir);
    devices.add(dev.id);
    return dev;
  }

  it('ublkctl features says per feature whether this kernel has it, agreeing with GET_FEATURES', () => {
    const report = ublkctlJson<{ features: string; support: Array<{ name: string; present: boolean }> }>(['features']);
    assert.equal(BigInt(report.features), features);
    const present = Object.fromEntries(report.support.map((f) => [f.name, f.present]));
    assert.equal(present['safe stop'], (features & UBLK_F_SAFE_STOP_DEV) !== 0n);
    assert.equal(present['no partition scan'], (features & UBLK_F_NO_AUTO_PART_SCAN) !== 0n);
    assert.equal(present['async delete'], true, 'both kernels tested (6.12, 7.3) have DEL_DEV_ASYNC');
    const text = ublkctl(['features']);
    assert.equal(text.status, 0, text.stderr);
    assert.match(text.stdout, /^ {2}safe stop \(UBLK_F_SAFE_STOP_DEV, TRY_STOP_DEV, Linux 7\.0\+\): (yes|no)$/m);
  });

  describe('safe stop', () => {
    it('del of a device another process holds open is refused by the kernel (TRY_STOP_DEV), and the device serves on', async function () {
      if ((features & UBLK_F_SAFE_STOP_DEV) === 0n) {
        console.log('    skipped: this kernel lacks UBLK_F_SAFE_STOP_DEV (Linux 7.0+)');
        this.skip();
      }
      const dev = add(['-t', 'memory', '--size', '8MiB']);
      holders.push(await holdOpen(dev.blockPath));
      const r = ublkctl(['del', String(dev.id)], stateDir);
      assert.equal(r.status, 1, r.stderr);
      // The refusal is the kernel's: ublk-ts's own in-use check is not consulted on such a kernel.
      assert.match(r.stderr, new RegExp(`TRY_STOP_DEV dev ${dev.id}: EBUSY \\(${dev.blockPath} is open`));
      const listed = ublkctlJson<Array<{ id: number; state: string }>>(['list'], stateDir);
      assert.equal(listed.find((d) => d.id === dev.id)?.state, 'LIVE');
      roundTrip(dev.blockPath, 0x5a);
      await stopProcess(holders.pop()!, 'SIGKILL');
      const del = ublkctl(['del', String(dev.id)], stateDir);
      assert.equal(del.status, 0, del.stderr);
      assert.equal(fs.existsSync(`/sys/class/ublk-char/ublkc${dev.id}`), false);
    });

    it("the reconciler's delete of a device whose manifest is gone is refused while the device is held open", async () => {
      const dir = fs.mkdtempSync('/tmp/ublk-ts-manifests-');
      fs.chmodSync(dir, 0o755);
      const reconcileState = makeStateDir();
      const reconcile = () => {
        const r = run(process.execPath, [RECONCILE, '--dir', dir, '--state-dir', reconcileState, '--once', '--json'], {
          allowFail: true,
        });
        return parsePass(r);
      };
      try {
        fs.writeFileSync(path.join(dir, 'held.yaml'), manifest('held', 'target: {type: memory}\nsize: 8MiB'), {
          mode: 0o644,
        });
        const made = outcomeOf(reconcile(), 'held');
        assert.equal(made.outcome, 'ok', JSON.stringify(made));
        devices.add(made.devId!);
        holders.push(await holdOpen(made.blockPath!));
        fs.rmSync(path.join(dir, 'held.yaml'));
        const refused = reconcile();
        assert.equal(refused.exitCode, 1);
        const o = outcomeOf(refused, 'held');
        assert.equal(o.action, 'delete');
        // The kernel's refusal where it has safe stop, ublk-ts's own check before 7.0.
        const refusedBy = (features & UBLK_F_SAFE_STOP_DEV) !== 0n ? 'TRY_STOP_DEV' : 'STOP_DEV';
        assert.match(o.error ?? '', new RegExp(`\\b${refusedBy} dev \\d+: EBUSY`));
        roundTrip(made.blockPath!, 0x3c);
        await stopProcess(holders.pop()!, 'SIGKILL');
        const deleted = reconcile();
        assert.equal(deleted.exitCode, 0, JSON.stringify(deleted));
        assert.equal(fs.existsSync(`/sys/class/ublk-char/ublkc${made.devId}`), false);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });

    it('without safe stop, del of a device held open is refused by ublk-ts, saying the kernel lacks it', async function () {
      if ((features & UBLK_F_SAFE_STOP_DEV) !== 0n) {
        console.log('    skipped: this kernel has UBLK_F_SAFE_STOP_DEV: the kernel refuses (test above)');
        this.skip();
      }
      const dev = add(['-t', 'memory', '--size', '8MiB']);
      holders.push(await holdOpen(dev.blockPath));
      const r = ublkctl(['del', String(dev.id)], stateDir);
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, /STOP_DEV dev \d+: EBUSY \(.* is open .*lacks UBLK_F_SAFE_STOP_DEV, Linux 7\.0\+/);
      roundTrip(dev.blockPath, 0x77);
    });
  });

  describe('async delete', () => {
    it('deletes of devices whose servers are stopped (SIGSTOP) hold no thread: control commands and fs calls go on', async () => {
      // One more stuck delete than libuv has threads: a synchronous DEL_DEV each would take them all.
      const stuck = Number(process.env.UV_THREADPOOL_SIZE ?? 4) + 1;
      const devs = Array.from({ length: stuck }, () => add(['-t', 'null', '--size', '8MiB']));
      const control = await UblkControl.open();
      const settled = new Set<number>();
      try {
        for (const d of devs) process.kill(d.serverPid, 'SIGSTOP');
        const removals = devs.map((d) =>
          removeDevice(control, d.id, { stateDir, timeoutMs: 240_000 }).finally(() => settled.add(d.id)),
        );
        for (const p of removals) void p.catch(() => undefined);
        // Each device is stopped and marked deleted: it leaves /sys/class/ublk-char, its server still holds it.
        await waitFor(
          () => devs.every((d) => !fs.existsSync(`/sys/class/ublk-char/ublkc${d.id}`)),
          120_000,
          'the deletes to be sent',
        );
        const listed = await within(control.listDevices(), 60_000, 'GET_DEV_INFO while the deletes wait');
        assert.ok(listed.every((l) => !devs.some((d) => d.id === l.id)));
        await within(fs.promises.stat(ROOT), 60_000, 'fs.promises.stat while the deletes wait');
        assert.equal(settled.size, 0, 'the deletes are still waiting for their stopped servers');
        for (const d of devs) process.kill(d.serverPid, 'SIGCONT');
        const done = await within(Promise.all(removals), 120_000, 'the deletes once the servers run again');
        assert.ok(done.every((r) => r.serverExited));
        for (const d of devs) {
          await assert.rejects(control.getDeviceInfo(d.id), /ENODEV/);
          devices.forget(d.id);
        }
      } finally {
        for (const d of devs) if (isAlive(d.serverPid)) process.kill(d.serverPid, 'SIGCONT');
        control.close();
      }
    });
  });

  describe('partition scan', () => {
    /** A loop file with an MBR: one Linux partition from sector 2048, 4 MiB long. */
    function partitionedFile(): string {
      const file = path.join(makeStateDir(), 'disk.img');
      const image = Buffer.alloc(8 * MiB);
      const entry = 446;
      image[entry + 4] = 0x83;
      image.writeUInt32LE(2048, entry + 8);
      image.writeUInt32LE(8192, entry + 12);
      image[510] = 0x55;
      image[511] = 0xaa;
      fs.writeFileSync(file, image);
      return file;
    }

    it('partitionScan: false leaves a partition table unread; without it the kernel makes ublkbNp1', async function () {
      if ((features & UBLK_F_NO_AUTO_PART_SCAN) === 0n) {
        console.log('    skipped: this kernel lacks UBLK_F_NO_AUTO_PART_SCAN (Linux 7.0+)');
        this.skip();
      }
      const file = partitionedFile();
      const scanned = add(['-t', 'loop', '--file', file]);
      const part = (id: number) => `/sys/block/ublkb${id}/ublkb${id}p1`;
      await waitFor(() => fs.existsSync(part(scanned.id)), 60_000, `${part(scanned.id)} after a scanning start`);
      assert.ok(ioCounts(scanned.id).reads > 0);
      assert.equal(ublkctl(['del', String(scanned.id)], stateDir).status, 0);
      devices.forget(scanned.id);

      const unscanned = add(['-t', 'loop', '--file', file, '--no-partition-scan']);
      assert.ok(unscanned.flagNames.includes('NO_AUTO_PART_SCAN'), unscanned.flagNames.join(' '));
      // The kernel decides at START_DEV whether to queue a scan; for this device it queued none, so
      // nothing has read the table when add returns (the scanning device above read it).
      assert.equal(ioCounts(unscanned.id).reads, 0, 'nothing read the partition table');
      assert.equal(fs.existsSync(part(unscanned.id)), false);
      // The table is there all the same: asked for, the kernel reads it.
      run('blockdev', ['--rereadpt', unscanned.blockPath]);
      assert.ok(fs.existsSync(part(unscanned.id)), `${part(unscanned.id)} after BLKRRPART`);
      roundTrip(unscanned.blockPath, 0x11);
    });

    it('without the feature, --no-partition-scan is refused before any device is made, naming it', function () {
      if ((features & UBLK_F_NO_AUTO_PART_SCAN) !== 0n) {
        console.log('    skipped: this kernel has UBLK_F_NO_AUTO_PART_SCAN (test above)');
        this.skip();
      }
      const before = fs.readdirSync('/sys/class/ublk-char').length;
      const r = ublkctl(['add', '-t', 'null', '--size', '8MiB', '--no-partition-scan'], stateDir);
      assert.notEqual(r.status, 0);
      assert.match(
        r.stderr,
        /partitionScan: false needs the kernel feature UBLK_F_NO_AUTO_PART_SCAN \(Linux 7\.0 or newer\)/,
      );
      assert.equal(fs.readdirSync('/sys/class/ublk-char').length, before);
    });
  });

  describe('START_DEV from a child pid namespace', () => {
    /** NSpid of a process: its pid in each pid namespace it is in, outermost first. */
    function nsPids(pid: number): number[] {
      const line = /^NSpid:\s+(.*)$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]!;
      return line.trim().split(/\s+/).map(Number);
    }

    it('a device served by the library in its own process, as pid 1 of a new pid namespace, starts and serves', async () => {
      const script = `
        const { UblkDevice } = require(${JSON.stringify(path.join(ROOT, 'dist', 'src', 'index.js'))});
        (async () => {
          const dev = await UblkDevice.create({ target: { type: 'memory' }, sizeBytes: 8 << 20, queues: 1, depth: 32,
            maxIoSize: 512 << 10, logicalBlockSize: 512, readOnly: false, lockMemory: false, recovery: 'none' });
          console.log(JSON.stringify({ id: dev.id, pid: process.pid }));
          process.stdin.once('data', async () => { await dev.remove(); process.exit(0); });
        })().catch((err) => { console.error(err); process.exit(1); });`;
      const server = spawn('unshare', ['--pid', '--fork', '--kill-child', process.execPath, '-e', script], {
        stdio: ['pipe', 'pipe', 'inherit'],
      });
      let out = '';
      server.stdout!.on('data', (b: Buffer) => (out += b.toString()));
      try {
        await waitFor(() => out.includes('\n') || server.exitCode !== null, 120_000, 'the device in the namespace');
        const started = JSON.parse(out) as { id: number; pid: number };
        devices.add(started.id);
        assert.equal(started.pid, 1, 'the server is pid 1 of its namespace, and START_DEV carried that');
        const info = ublkctlJson<Array<{ id: number; state: string; serverPid: number }>>(['list'], stateDir).find(
          (d) => d.id === started.id,
        )!;
        assert.equal(info.state, 'LIVE');
        // 6.17+ translate the pid both ways: seen from here it is the server's pid in this namespace.
        if (info.serverPid !== 1) assert.deepEqual(nsPids(info.serverPid).slice(-1), [1]);
        roundTrip(`/dev/ublkb${started.id}`, 0x42);
        server.stdin!.write('stop\n');
        await waitFor(() => server.exitCode !== null, 120_000, 'the server to remove its device and exit');
        assert.equal(server.exitCode, 0);
        assert.equal(fs.existsSync(`/sys/class/ublk-char/ublkc${started.id}`), false);
        devices.forget(started.id);
      } finally {
        await stopProcess(server, 'SIGKILL');
      }
    });

    it('ublkctl add in a new pid namespace starts a detached JS-target server (worker-thread queues) that serves', async () => {
      const nsState = makeStateDir();
      const module = path.join(ROOT, 'dist', 'examples', 'null-js.js');
      // The namespace lives as long as its init (the sleep): the detached server must outlive ublkctl.
      const ns = spawn(
        'unshare',
        [
          '--pid',
          '--fork',
          '--kill-child',
          'sh',
          '-c',
          `"$0" "$1" add -t js --module "$2" --size 8MiB --json --state-dir "$3" && exec sleep 600`,
          process.execPath,
          UBLKCTL,
          module,
          nsState,
        ],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      let out = '';
      ns.stdout!.on('data', (b: Buffer) => (out += b.toString()));
      const control = await UblkControl.open();
      try {
        await waitFor(() => out.trim().endsWith('}') || ns.exitCode !== null, 120_000, 'ublkctl add in the namespace');
        const added = JSON.parse(out) as Added & { logPath: string };
        devices.add(added.id);
        const info = await control.getDeviceInfo(added.id);
        assert.equal(info.state, 'LIVE');
        roundTrip(added.blockPath, 0x24, false);
        // On 6.12 the kernel reports the pid as the server gave it (its namespace's); waiting for it from here would be wrong.
        await removeDevice(control, added.id, { stateDir: nsState });
        devices.forget(added.id);
      } finally {
        control.close();
        await stopProcess(ns, 'SIGKILL');
      }
    });
  });
});
