/**
 * Shared helpers of the end-to-end suite: run ublkctl as a user would,
 * inspect block devices with real tools, and keep track of what a test
 * created so it can be removed even when the test fails.
 */
import { strict as assert } from 'node:assert';
import { ChildProcess, spawn, spawnSync, SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { UblkControl } from '../../src/kernel/control';
import { isAlive } from '../../src/server/processes';

export const ROOT = path.resolve(__dirname, '..', '..', '..');
export const UBLKCTL = path.join(ROOT, 'dist', 'src', 'cli', 'ublkctl.js');

/** Why the end-to-end suite cannot run here, or undefined when it can. */
export function ublkUnavailableReason(): string | undefined {
  if (!fs.existsSync('/dev/ublk-control')) return '/dev/ublk-control does not exist (no ublk driver in this kernel)';
  try {
    fs.accessSync('/dev/ublk-control', fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return '/dev/ublk-control is not accessible (run as root)';
  }
  return undefined;
}

/** Skips the whole suite, with the reason, where there is no usable ublk. */
export function requireUblk(suite: Mocha.Suite): void {
  suite.beforeAll(function () {
    const reason = ublkUnavailableReason();
    if (reason) {
      console.log(`    skipped: ${reason}`);
      this.skip();
    }
  });
}

export interface CommandResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

function result(r: SpawnSyncReturns<string>): CommandResult {
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A private state directory per test file, so logs can be inspected. */
export function makeStateDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-e2e-'));
}

let runtimeCopy: string | undefined;

/**
 * The packages ublkctl loads at run time: package.json's dependencies and theirs, found as
 * npm installs them (flat node_modules, nested where versions differ). Copying all of
 * node_modules instead (linters, compilers) took over a minute under TCG on a busy host.
 */
function runtimePackages(): string[] {
  const found = new Set<string>();
  const visit = (fromDir: string): void => {
    const manifest = JSON.parse(fs.readFileSync(path.join(fromDir, 'package.json'), 'utf8')) as {
      dependencies?: Record<string, string>;
    };
    for (const name of Object.keys(manifest.dependencies ?? {})) {
      // Node's resolution: the nearest node_modules on the way up from the dependent.
      let dir = fromDir;
      for (;;) {
        const candidate = path.join(dir, 'node_modules', name);
        if (fs.existsSync(path.join(candidate, 'package.json'))) {
          const rel = path.relative(path.join(ROOT, 'node_modules'), candidate);
          if (!found.has(rel)) {
            found.add(rel);
            visit(candidate);
          }
          break;
        }
        if (dir === ROOT) throw new Error(`${name}, needed by ${fromDir}, is not installed`);
        dir = path.dirname(dir);
      }
    }
  };
  visit(ROOT);
  // Nested packages travel with their parent directory.
  return [...found].filter((rel) => !rel.includes(`${path.sep}node_modules${path.sep}`));
}

/**
 * A world-readable copy of what ublkctl needs at run time (built code, addon, schema,
 * dependencies), for tests that run it as an unprivileged user: the checkout itself may
 * sit in a directory only root can read (a `mktemp -d` clone is mode 0700).
 */
export function worldReadableUblkctl(): string {
  if (runtimeCopy === undefined) {
    const dest = fs.mkdtempSync(path.join(os.tmpdir(), 'ublk-ts-runtime-'));
    for (const part of [
      'package.json',
      'schema',
      path.join('dist', 'src'),
      path.join('build', 'Release', 'ublk_ts.node'),
      ...runtimePackages().map((name) => path.join('node_modules', name)),
    ]) {
      fs.cpSync(path.join(ROOT, part), path.join(dest, part), { recursive: true });
    }
    run('chmod', ['-R', 'a+rX', dest]);
    runtimeCopy = dest;
    process.once('exit', () => fs.rmSync(dest, { recursive: true, force: true }));
  }
  return path.join(runtimeCopy, path.relative(ROOT, UBLKCTL));
}

/** Runs ublkctl with the given arguments. */
export function ublkctl(args: string[], stateDir?: string): CommandResult {
  const full = stateDir && ['add', 'del', 'list'].includes(args[0]!) ? [...args, '--state-dir', stateDir] : args;
  return result(spawnSync(process.execPath, [UBLKCTL, ...full], { encoding: 'utf8', timeout: 240_000 }));
}

/** Runs ublkctl and parses its --json output, failing loudly on a non-zero exit. */
export function ublkctlJson<T>(args: string[], stateDir?: string): T {
  const r = ublkctl([...args, '--json'], stateDir);
  if (r.status !== 0) throw new Error(`ublkctl ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/**
 * Like run(), but the event loop keeps turning while the command runs: output that
 * children of this test print meanwhile (a serving example's log) is read, not left in a pipe.
 */
export function runAsync(command: string, args: string[], opts: { allowFail?: boolean } = {}): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
    child.on('error', reject);
    child.on('close', (status) => {
      clearTimeout(timer);
      if (!opts.allowFail && status !== 0) {
        reject(new Error(`${command} ${args.join(' ')} exited ${status}: ${stderr}`));
      } else {
        resolve({ status, stdout, stderr });
      }
    });
  });
}

/** Runs a system tool, returning its output; throws with stderr on failure. */
export function run(command: string, args: string[], opts: { allowFail?: boolean } = {}): CommandResult {
  const r = result(spawnSync(command, args, { encoding: 'utf8', timeout: 300_000 }));
  if (!opts.allowFail && r.status !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  }
  return r;
}

export interface ListedDevice {
  id: number;
  state: string;
  queues: number;
  depth: number;
  maxIoSize: number;
  serverPid: number;
  sizeBytes?: number;
  blockPath: string;
  charPath: string;
  scheduler?: string;
}

export function listDevices(): ListedDevice[] {
  return ublkctlJson<ListedDevice[]>(['list']);
}

/** pids of running ublk-ts device servers. */
export function serverPids(): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (cmdline.includes('server-main.js')) pids.push(Number(entry));
    } catch {
      // process ended while listing
    }
  }
  return pids.sort((a, b) => a - b);
}

export { isAlive };

/** Polls `check` until it holds; `what` (or what it returns, read at the timeout) names the event in the error. */
export async function waitFor(check: () => boolean, timeoutMs: number, what: string | (() => string)): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === 'string' ? what : what()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Device ids created by a test, deleted afterwards whatever happened. */
export class DeviceTracker {
  private readonly ids = new Set<number>();

  add(id: number): number {
    this.ids.add(id);
    return id;
  }

  forget(id: number): void {
    this.ids.delete(id);
  }

  cleanup(): void {
    for (const id of this.ids) {
      if (fs.existsSync(`/sys/class/ublk-char/ublkc${id}`)) ublkctl(['del', String(id), '--force']);
    }
    this.ids.clear();
  }
}

export interface FioJobResult {
  jobname: string;
  error: number;
  read: { io_bytes: number; iops: number; total_ios: number };
  write: { io_bytes: number; iops: number; total_ios: number };
}

/** Runs fio with JSON output and returns its jobs. */
export function fio(args: string[]): FioJobResult[] {
  const r = run('fio', ['--output-format=json', ...args], { allowFail: true });
  const start = r.stdout.indexOf('{');
  if (start < 0) throw new Error(`fio printed no JSON (exit ${r.status}): ${r.stderr}${r.stdout}`);
  const parsed = JSON.parse(r.stdout.slice(start)) as { jobs: FioJobResult[] };
  if (r.status !== 0) throw new Error(`fio exited ${r.status}: ${r.stderr}`);
  return parsed.jobs;
}

/** Completed IO counts of /dev/ublkbN, from the block layer's own statistics. */
export function ioCounts(id: number): { reads: number; writes: number } {
  const f = fs.readFileSync(`/sys/block/ublkb${id}/stat`, 'utf8').trim().split(/\s+/).map(Number);
  return { reads: f[0]!, writes: f[4]! };
}

/** Requests of /dev/ublkbN issued to the server and not yet completed. */
export function inFlight(id: number): number {
  const [r, w] = fs.readFileSync(`/sys/block/ublkb${id}/inflight`, 'utf8').trim().split(/\s+/).map(Number);
  return r! + w!;
}

/** Waits until at least `count` more writes than `since` have completed on /dev/ublkbN. */
export async function waitForWrites(id: number, since: number, count: number, what: string): Promise<number> {
  await waitFor(
    () => ioCounts(id).writes >= since + count,
    120_000,
    `${count} writes to complete on dev ${id} (${what})`,
  );
  return ioCounts(id).writes;
}

export interface FioRun {
  child: ChildProcess;
  /** Resolves when fio exits, with its JSON jobs (empty if it printed none). */
  done: Promise<{ status: number | null; signal: NodeJS.Signals | null; jobs: FioJobResult[]; raw: string }>;
  /** Asks fio to end (SIGINT: it finishes its jobs' accounting and prints its JSON) and waits for it. */
  stop(): Promise<{ status: number | null; jobs: FioJobResult[]; raw: string }>;
  /** Kills fio if it still runs: for afterEach, whatever happened. */
  kill(): void;
}

/**
 * A background fio with JSON output. Tests whose length must not depend on the
 * machine's speed run it `--time_based` with a long runtime and end it with stop().
 */
export function startFio(args: string[]): FioRun {
  const child = spawn('fio', ['--output-format=json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
  const done = new Promise<{ status: number | null; signal: NodeJS.Signals | null; jobs: FioJobResult[]; raw: string }>(
    (resolve) => {
      child.on('exit', (status, signal) => {
        const start = out.indexOf('{');
        let jobs: FioJobResult[] = [];
        try {
          if (start >= 0) jobs = (JSON.parse(out.slice(start)) as { jobs: FioJobResult[] }).jobs;
        } catch {
          // fio was killed mid-output: no jobs, the raw text tells what happened
        }
        resolve({ status, signal, jobs, raw: out });
      });
    },
  );
  return {
    child,
    done,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
      const r = await done;
      // fio ends a run cut short by SIGINT with status 128 once its JSON is out; that is a clean stop.
      return { status: r.status === 128 && r.jobs.length > 0 ? 0 : r.status, jobs: r.jobs, raw: r.raw };
    },
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

/**
 * Child processes a test starts (examples serving a device, stores, watchers), stopped in
 * afterEach whatever happened: SIGINT first so an example deletes its device as documented,
 * SIGKILL after a grace period, so a failing test never leaves mocha (or the VM) waiting.
 */
export class ChildTracker {
  private readonly children = new Set<ChildProcess>();

  spawn(command: string, args: string[], opts: Parameters<typeof spawn>[2] = {}): ChildProcess {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.children].map((child) => stopProcess(child, 'SIGINT')));
    this.children.clear();
  }
}

/** Sends `signal` and waits for the exit; a process still running after `graceMs` is killed, so cleanup never hangs. */
export async function stopProcess(child: ChildProcess, signal: NodeJS.Signals, graceMs = 30_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill(signal);
  const force = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(force);
}

/** The manager's CLI, as the e2e suites run it. */
export const RECONCILE = path.join(ROOT, 'dist', 'src', 'cli', 'ublk-reconcile.js');

/** One device in `ublk-reconcile --json` output. */
export interface ReconcileOutcome {
  name: string;
  action: string;
  devId?: number;
  blockPath?: string;
  outcome: string;
  reason: string;
  error?: string;
}

/** A pass in `ublk-reconcile --json` output. */
export interface ReconcilePass {
  devices: ReconcileOutcome[];
  manifestErrors: string[];
  exitCode: number;
}

/** A manifest document for `name` with the given spec lines. */
export function manifest(name: string, spec: string): string {
  const body = spec
    .trim()
    .split('\n')
    .map((l) => `  ${l}`)
    .join('\n');
  return `apiVersion: ublk-ts/v1\nkind: UblkDevice\nmetadata:\n  name: ${name}\nspec:\n${body}\n`;
}

/** The pass a `ublk-reconcile --json` run printed, checked to agree with its exit status. */
export function parsePass(r: { status: number | null; stdout: string; stderr: string }): ReconcilePass {
  assert.ok(r.stdout.trim().startsWith('{'), `json output (exit ${r.status}): ${r.stdout}${r.stderr}`);
  const result = JSON.parse(r.stdout) as ReconcilePass;
  assert.equal(r.status, result.exitCode);
  return result;
}

/** The outcome for manifest `name` in a pass, failing when it has none. */
export function outcomeOf(result: ReconcilePass, name: string): ReconcileOutcome {
  const o = result.devices.find((d) => d.name === name);
  assert.ok(o, `${name} in ${JSON.stringify(result)}`);
  return o;
}

/** The names of a process's threads (comm): a queue thread of dev 3's queue 0 is ublk3q0, ublk3q0t1 or ublk3q0b. */
export function threadNames(pid: number): string[] {
  return fs
    .readdirSync(`/proc/${pid}/task`)
    .map((tid) => {
      try {
        return fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
      } catch {
        return '';
      }
    })
    .filter((name) => name !== '');
}

/** fio with crc32c verification over the device's first `size`, reading back everything it wrote; a `bs` range (4k-128k) mixes sizes. */
export function fioVerifyArgs(name: string, blockPath: string, size: string, rw = 'randwrite', bs = '4k'): string[] {
  return [
    `--name=${name}`,
    `--filename=${blockPath}`,
    '--ioengine=io_uring',
    '--direct=1',
    `--rw=${rw}`,
    bs.includes('-') ? `--bsrange=${bs}` : `--bs=${bs}`,
    '--iodepth=32',
    `--size=${size}`,
    '--verify=crc32c',
    '--verify_fatal=1',
  ];
}

/**
 * fio with crc32c verification as a load that runs until the test stops it (startFio's stop()):
 * each block is read back and checked 64 writes after it was written, at `rateIops` so that
 * the test's length does not depend on the machine's speed. A `bs` range (4k-128k) mixes sizes.
 */
export function fioVerifiedLoadArgs(
  name: string,
  blockPath: string,
  size: string,
  rateIops: string,
  bs = '4k',
): string[] {
  return [
    ...fioVerifyArgs(name, blockPath, size, 'randwrite', bs),
    `--rate_iops=${rateIops}`,
    '--time_based',
    '--runtime=3600',
    '--verify_backlog=64',
  ];
}

/**
 * fio write-then-verify passes, one per case of block size (a range such as 4k-512k mixes
 * sizes), iodepth and size: two jobs split over CPUs 0 and 1 (so over two queues), each
 * writing its own 32 MiB region and reading it all back. Every job must end without an error,
 * having written and verified something.
 */
export function fioVerifyCases(device: string, cases: Array<[bs: string, iodepth: number, size: string]>): void {
  for (const [bs, iodepth, size] of cases) {
    const jobs = fio([
      '--name=verify',
      `--filename=${device}`,
      '--ioengine=io_uring',
      '--direct=1',
      '--rw=randwrite',
      bs.includes('-') ? `--bsrange=${bs}` : `--bs=${bs}`,
      `--iodepth=${iodepth}`,
      '--numjobs=2',
      '--cpus_allowed=0-1',
      '--cpus_allowed_policy=split',
      `--size=${size}`,
      '--offset_increment=32M',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_fatal=1',
      '--group_reporting=0',
    ]);
    assert.equal(jobs.length, 2);
    for (const job of jobs) {
      assert.equal(job.error, 0, `fio bs=${bs} iodepth=${iodepth}: error ${job.error}`);
      assert.ok(job.write.io_bytes > 0 && job.read.io_bytes > 0, `bs=${bs} iodepth=${iodepth} wrote and verified`);
    }
  }
}

/** Skips the running test or hook's suite, printing why: every e2e test that cannot run says so. */
export function skipBecause(ctx: Mocha.Context, reason: string): never {
  console.log(`    skipped: ${reason}`);
  ctx.skip();
}

/** Waits until the kernel reports dev `id` in `state` (LIVE, QUIESCED, FAIL_IO, DEAD). */
export async function waitForState(id: number, state: string, what: string): Promise<void> {
  await waitFor(() => listDevices().find((d) => d.id === id)?.state === state, 60_000, what);
}

/**
 * Freezes a device's server (SIGSTOP) until requests are in flight inside it, then kills it
 * (SIGKILL): the worst moment for a server to die, with IO the kernel must requeue or fail.
 */
export async function killServerMidIo(id: number, serverPid: number): Promise<void> {
  process.kill(serverPid, 'SIGSTOP');
  await waitFor(() => inFlight(id) > 0, 60_000, `requests in flight in the stopped server of dev ${id}`);
  process.kill(serverPid, 'SIGKILL');
}

/** What `ublkctl add --json` prints about the device it made: the kernel's view (GET_DEV_INFO) and the server's log. */
export interface AddedDevice {
  id: number;
  state: string;
  serverPid: number;
  flagNames: string[];
  blockPath: string;
  logPath: string;
}

/** What a test file made with ublkctl: the devices, a state directory and a scratch directory per test. */
export interface DeviceSuite {
  readonly devices: DeviceTracker;
  /** The running test's state directory (records and server logs). */
  stateDir(): string;
  /** The running test's scratch directory (loop files, payloads), removed after it. */
  scratch(): string;
  /** Whether this kernel's GET_FEATURES has `flag` (a UBLK_F_* bit), read once before the tests. */
  kernelHas(flag: bigint): boolean;
  /** `ublkctl add ARGS --json` in the test's state directory; the device is deleted after the test. */
  add(args: string[]): AddedDevice;
  /** `ublkctl del ID`, which must succeed; the device is no longer the suite's to delete. */
  del(id: number): void;
  /**
   * `ublkctl recover ID` for a device whose server is gone, which must succeed; returns the
   * device as listed afterwards, checked LIVE with a new server that runs.
   */
  recover(dev: { id: number; serverPid: number }): ListedDevice;
  /** The log of dev `id`'s servers in the test's state directory. */
  serverLog(id: number): string;
  /** A background fio the suite kills after the test, whatever happened; returns it. */
  track(load: FioRun): FioRun;
}

/**
 * Registers the hooks of a suite that makes devices with ublkctl: GET_FEATURES read once, a
 * state directory and a scratch directory (`scratchPrefix` + random) per test; afterwards the
 * test's fio is killed and waited for, its devices deleted and its scratch directory removed.
 * Call it after requireUblk, so a kernel without ublk skips the suite before its probe runs.
 */
export function useDeviceSuite(suite: Mocha.Suite, scratchPrefix: string): DeviceSuite {
  const devices = new DeviceTracker();
  let features = 0n;
  let stateDir: string | undefined;
  let scratch: string | undefined;
  let loads: FioRun[] = [];
  const current = (dir: string | undefined, what: string): string => {
    if (dir === undefined) throw new Error(`the ${what} directory is made for each test: use it inside one`);
    return dir;
  };
  const state = (): string => current(stateDir, 'state');

  suite.beforeAll(async () => {
    const control = await UblkControl.open();
    features = control.features;
    control.close();
  });
  suite.beforeEach(() => {
    stateDir = makeStateDir();
    scratch = fs.mkdtempSync(scratchPrefix);
  });
  suite.afterEach(async () => {
    for (const load of loads) load.kill();
    // An open device is not deleted: fio must be gone first.
    await Promise.all(loads.map((load) => load.done));
    loads = [];
    devices.cleanup();
    if (scratch !== undefined) fs.rmSync(scratch, { recursive: true, force: true });
  });

  return {
    devices,
    stateDir: state,
    scratch: () => current(scratch, 'scratch'),
    kernelHas: (flag) => (features & flag) !== 0n,
    add(args) {
      const dev = ublkctlJson<AddedDevice>(['add', ...args], state());
      devices.add(dev.id);
      return dev;
    },
    del(id) {
      const r = ublkctl(['del', String(id)], state());
      assert.equal(r.status, 0, r.stderr);
      devices.forget(id);
    },
    recover(dev) {
      const recovered = ublkctl(['recover', String(dev.id), '--state-dir', state()]);
      assert.equal(recovered.status, 0, recovered.stderr);
      const now = listDevices().find((d) => d.id === dev.id)!;
      assert.equal(now.state, 'LIVE');
      assert.notEqual(now.serverPid, dev.serverPid);
      assert.ok(isAlive(now.serverPid));
      return now;
    },
    serverLog: (id) => fs.readFileSync(path.join(state(), 'logs', `ublkb${id}.log`), 'utf8'),
    track(load) {
      loads.push(load);
      return load;
    },
  };
}

/** ublkctl add arguments for a 64 MiB device of a native target; a loop device's file is made in `scratch`. */
export function nativeTargetArgs(target: 'null' | 'memory' | 'loop', scratch: string): string[] {
  return target === 'loop'
    ? ['-t', 'loop', '--file', path.join(scratch, 'disk.img'), '--create', '--size', '64MiB']
    : ['-t', target, '--size', '64MiB'];
}

/**
 * 32 MiB of fio at QD32 on a native target's device, which must end without an error: random
 * reads and writes on null (it keeps no data), write-then-verify reading everything back on
 * the others.
 */
export function fioOnNativeTarget(target: 'null' | 'memory' | 'loop', blockPath: string): void {
  const jobs =
    target === 'null'
      ? fio([
          '--name=null',
          `--filename=${blockPath}`,
          '--ioengine=io_uring',
          '--direct=1',
          '--rw=randrw',
          '--bs=4k',
          '--iodepth=32',
          '--size=32M',
        ])
      : fio(fioVerifyArgs(target, blockPath, '32M'));
  assert.equal(jobs[0]!.error, 0);
  if (target !== 'null') assert.ok(jobs[0]!.read.io_bytes > 0, 'fio read back and verified what it wrote');
}

/** The reconciler counts a server that died sooner than this after going LIVE as a crash loop (STABLE_MS, plus margin). */
const STABLE_AFTER_MS = 3_500;

/**
 * Waits until dev `id`'s server has been LIVE, by its record in `stateDir`, long enough that
 * the reconciler takes its death for a crash to recover from at once, not for a crash loop.
 */
export async function waitForStableServer(stateDir: string, id: number): Promise<void> {
  const record = path.join(stateDir, 'devices', `ublkb${id}.json`);
  const liveSince = () => {
    const r = JSON.parse(fs.readFileSync(record, 'utf8')) as { startedAt?: string; updatedAt: string };
    return Date.parse(r.startedAt ?? r.updatedAt);
  };
  await waitFor(
    () => Date.now() - liveSince() >= STABLE_AFTER_MS,
    60_000,
    `the server of dev ${id} to pass the stability mark`,
  );
}

/** sha256 of `countMiB` MiB of a file or block device from `skipMiB` on; a device is read with O_DIRECT, past the page cache. */
export function sha256Range(file: string, skipMiB: number, countMiB: number): string {
  const direct = file.startsWith('/dev/') ? ' iflag=direct' : '';
  return run('bash', [
    '-c',
    `set -o pipefail; dd if=${file} bs=1M skip=${skipMiB} count=${countMiB}${direct} status=none | sha256sum`,
  ]).stdout.split(' ')[0]!;
}

/** A `ublk-reconcile` watching a manifest directory, as the e2e suites run it. */
export interface ReconcileWatcher {
  readonly child: ChildProcess;
  /** What it has logged so far (stderr). */
  log(): string;
}

/** A manifest directory and a state directory per test, and ublk-reconcile run on them. */
export interface ManifestDir {
  /** The running test's manifest directory (0755: the reconciler refuses one others may write). */
  dir(): string;
  /** The running test's state directory. */
  stateDir(): string;
  /** Writes a manifest file as an editor or a deploy tool would: a temporary renamed into place, then `mode` set. */
  write(file: string, text: string, mode?: number): void;
  /** Runs `ublk-reconcile --dir DIR --state-dir STATE ARGS` to its end. */
  reconcile(args: string[]): CommandResult;
  /** One `--once --json` pass (with `args` after), checked to agree with its exit status. */
  once(...args: string[]): ReconcilePass;
  /** Starts a watcher (by default with an hourly resync, so a pass it runs came from a file event) and waits until it watches. */
  startWatcher(args?: string[]): Promise<ReconcileWatcher>;
  /** Stops the running watcher, if any, with `signal`. */
  stopWatcher(signal: NodeJS.Signals): Promise<void>;
  /**
   * For afterEach: stops the watcher, removes every manifest and runs a pass, which deletes the
   * devices of the manifests that are gone (positive evidence); returns that `--once --json` pass's
   * output. Anything that keeps a device busy (fio, a mount) must be gone first.
   */
  cleanup(): Promise<CommandResult>;
}

/** Registers a beforeEach that makes a manifest directory and a state directory; the suite's afterEach calls cleanup(). */
export function useManifestDir(suite: Mocha.Suite): ManifestDir {
  let dir: string | undefined;
  let stateDir: string | undefined;
  let watcher: ChildProcess | undefined;
  const current = (d: string | undefined, what: string): string => {
    if (d === undefined) throw new Error(`the ${what} directory is made for each test: use it inside one`);
    return d;
  };
  // A pass killed at its bound comes back with status null, not a throw: a test asserts on it, a clean-up goes on.
  const reconcile = (args: string[], opts: { killSignal?: NodeJS.Signals } = {}): CommandResult => {
    const r = spawnSync(
      process.execPath,
      [RECONCILE, '--dir', current(dir, 'manifest'), '--state-dir', current(stateDir, 'state'), ...args],
      { encoding: 'utf8', timeout: 240_000, ...opts },
    );
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  };
  const stopWatcher = async (signal: NodeJS.Signals): Promise<void> => {
    const w = watcher;
    watcher = undefined;
    if (w) await stopProcess(w, signal);
  };

  suite.beforeEach(() => {
    dir = fs.mkdtempSync('/tmp/ublk-ts-manifests-');
    fs.chmodSync(dir, 0o755);
    stateDir = makeStateDir();
  });

  return {
    dir: () => current(dir, 'manifest'),
    stateDir: () => current(stateDir, 'state'),
    write(file, text, mode = 0o644) {
      const full = path.join(current(dir, 'manifest'), file);
      fs.writeFileSync(`${full}.tmp`, text, { mode });
      fs.renameSync(`${full}.tmp`, full);
      fs.chmodSync(full, mode);
    },
    reconcile: (args) => reconcile(args),
    once: (...args) => parsePass(reconcile(['--once', '--json', ...args])),
    async startWatcher(args = ['--resync-interval', '3600']) {
      const child = spawn(
        process.execPath,
        [RECONCILE, '--dir', current(dir, 'manifest'), '--state-dir', current(stateDir, 'state'), ...args],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      watcher = child;
      let log = '';
      child.stderr!.on('data', (c: Buffer) => (log += c.toString()));
      await waitFor(() => /watching \//.test(log), 60_000, 'the watcher to start');
      return { child, log: () => log };
    },
    stopWatcher,
    async cleanup() {
      await stopWatcher('SIGTERM');
      const d = current(dir, 'manifest');
      for (const f of fs.readdirSync(d)) fs.rmSync(path.join(d, f), { recursive: true, force: true });
      // A clean-up never hangs: a pass that outlives its bound is killed.
      const pass = reconcile(['--once', '--json'], { killSignal: 'SIGKILL' });
      fs.rmSync(d, { recursive: true, force: true });
      return pass;
    },
  };
}
