/**
 * Shared helpers of the end-to-end suite: run ublkctl as a user would,
 * inspect block devices with real tools, and keep track of what a test
 * created so it can be removed even when the test fails.
 */
import { spawnSync, SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

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

export { isAlive } from '../../src/server/processes';

export async function waitFor(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
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
      if (fs.existsSync(`/sys/class/ublk-char/ublkc${id}`)) ublkctl(['del', String(id)]);
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
