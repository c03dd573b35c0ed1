/**
 * The manager at host scale, measured in one VM boot: `ublk-reconcile
 * --once` creating, re-checking (nothing to do) and deleting 1 and then
 * UBLK_TS_BENCH_DEVICES (default 64: ublk_drv's default ublks_max) null
 * devices, each in a fresh manifest and state directory; and, while the
 * many devices run, what their servers cost (PSS, RSS, threads) and how much
 * memory the whole guest uses. A benchmark, not a test: it prints figures so
 * releases can be compared, and fails only when a pass does not converge.
 *
 * Run alone in the VM: `node dist/test/bench/reconcile-bench.js`
 * (`--cpu-prof DIR` also writes a CPU profile of the many-device no-op pass
 * and prints where its time went). guest-bench.ts calls runReconcileBench().
 */
import { spawnSync } from 'node:child_process';
import { UblkControl } from '../../src/kernel/control';
import { ManifestCache } from '../../src/manifest';
import { hostKernel } from '../../src/reconciler/kernel';
import { acquireLock } from '../../src/reconciler/lock';
import { reconcileOnce } from '../../src/reconciler/reconciler';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const RECONCILE = path.join(ROOT, 'dist', 'src', 'cli', 'ublk-reconcile.js');
const UBLKCTL = path.join(ROOT, 'dist', 'src', 'cli', 'ublkctl.js');

/** One line of the reconcile table: a phase's wall time with its device count. */
export interface ReconcileBenchRow {
  /** noop: a `--once` process's whole run; watch-noop: one pass of a running watcher (a resync), in process. */
  phase: 'create' | 'noop' | 'watch-noop' | 'delete';
  devices: number;
  seconds: number;
  /** Set on a no-op pass of another checkout's ublk-reconcile (UBLK_TS_BENCH_COMPARE_ROOT) over the same devices. */
  comparedRoot?: string;
}

/** What the many-device servers cost while they all run. */
export interface ServerFootprint {
  devices: number;
  /** Mean proportional set size per server (shared pages split among their sharers), KiB. */
  meanPssKiB: number;
  /** Mean resident set size per server (shared pages counted in full by each), KiB. */
  meanRssKiB: number;
  /** Mean threads per server (main, libuv's pool, V8's helpers, one per queue). */
  meanThreads: number;
  /** Guest memory in use (MemTotal - MemAvailable) with the servers running, less before they started, KiB. */
  guestMemoryDeltaKiB: number;
}

export interface ReconcileBenchResult {
  rows: ReconcileBenchRow[];
  /** No-op `--once` over many devices / over one (the goal is under 1.5). */
  noopRatio: number;
  /** A watcher's no-op pass over many devices / over one. */
  watchNoopRatio: number;
  footprint: ServerFootprint;
}

interface Options {
  devices?: number;
  /** Write a CPU profile of the many-device no-op pass here and print its hottest functions. */
  cpuProfDir?: string;
  log?: (line: string) => void;
}

function nullManifest(name: string): string {
  return [
    'apiVersion: ublk-ts/v1',
    'kind: UblkDevice',
    'metadata:',
    `  name: ${name}`,
    'spec:',
    '  target:',
    '    type: null',
    '  size: 1GiB',
    '  queues: 1',
    '',
  ].join('\n');
}

function memAvailableKiB(): { total: number; available: number } {
  const text = fs.readFileSync('/proc/meminfo', 'utf8');
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(text)![1]);
  return { total: field('MemTotal'), available: field('MemAvailable') };
}

/**
 * Another checkout (its root) whose ublk-reconcile also times a no-op pass
 * over the same devices, in the same boot: before/after figures of a change.
 */
const COMPARE_ROOT = process.env.UBLK_TS_BENCH_COMPARE_ROOT;

/** One `ublk-reconcile --once`: its wall time; throws unless it converged. */
function reconcilePass(dir: string, stateDir: string, nodeArgs: string[] = [], reconcile = RECONCILE): number {
  const started = process.hrtime.bigint();
  const r = spawnSync(process.execPath, [...nodeArgs, reconcile, '--dir', dir, '--state-dir', stateDir, '--once'], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (r.status !== 0) throw new Error(`ublk-reconcile --once exited ${r.status}:\n${r.stderr}${r.stdout}`);
  return seconds;
}

/**
 * The fastest of `passes` no-op passes as the watcher runs them every
 * --resync-interval: in one process, with its manifest cache, the
 * process and the modules already warm.
 */
async function watcherPasses(dir: string, stateDir: string, passes: number): Promise<number> {
  const control = await UblkControl.open();
  const lock = acquireLock(stateDir);
  try {
    const kernel = hostKernel(control, stateDir);
    const manifestCache = new ManifestCache();
    const checkPermissions = process.getuid?.() === 0;
    let fastest = Infinity;
    for (let i = 0; i < passes; i++) {
      const started = process.hrtime.bigint();
      const result = await reconcileOnce(kernel, { dir, checkPermissions, manifestCache, quietNoops: true });
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      if (result.exitCode !== 0 || result.devices.some((d) => d.action !== 'noop')) {
        throw new Error(`a watcher pass over unchanged devices did something: ${JSON.stringify(result)}`);
      }
      // The first pass parses every manifest: it is the watcher's start, not a resync.
      if (i > 0) fastest = Math.min(fastest, seconds);
    }
    return fastest;
  } finally {
    lock.release();
    control.close();
  }
}

interface ListedServer {
  serverPid?: number;
  serverPssKiB?: number;
  serverThreads?: number;
}

function smapsField(pid: number, field: string): number {
  const text = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  return Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)![1]);
}

function footprintOf(stateDir: string, memBefore: number): ServerFootprint {
  const r = spawnSync(process.execPath, [UBLKCTL, 'list', '--json', '--state-dir', stateDir], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ublkctl list failed: ${r.stderr}`);
  const pids = (JSON.parse(r.stdout) as ListedServer[]).map((d) => d.serverPid).filter((p): p is number => !!p);
  const mean = (xs: number[]): number => Math.round(xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length));
  return {
    devices: pids.length,
    meanPssKiB: mean(pids.map((p) => smapsField(p, 'Pss'))),
    meanRssKiB: mean(pids.map((p) => smapsField(p, 'Rss'))),
    meanThreads: mean(pids.map((p) => fs.readdirSync(`/proc/${p}/task`).length)),
    guestMemoryDeltaKiB: memBefore - memAvailableKiB().available,
  };
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

/** The hottest functions (self time) of a V8 .cpuprofile, with their share of the samples. */
function hottest(file: string, count: number): string[] {
  const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as {
    nodes: ProfileNode[];
    samples: number[];
    timeDeltas: number[];
  };
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  prof.samples.forEach((id, i) => {
    const f = byId.get(id)!.callFrame;
    const key = `${f.functionName || '(anonymous)'} ${path.basename(f.url)}:${f.lineNumber + 1}`;
    self.set(key, (self.get(key) ?? 0) + (prof.timeDeltas[i] ?? 0));
  });
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  return [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, count)
    .map(([k, us]) => `${((100 * us) / total).toFixed(1).padStart(5)}% ${(us / 1000).toFixed(0).padStart(6)} ms  ${k}`);
}

/** Creates, re-checks and deletes `n` null devices; the rows and, while they run, `during()`'s result. */
async function cycle<T>(
  n: number,
  noopPasses: number,
  during: (stateDir: string) => T,
  nodeArgs: string[] = [],
): Promise<{ rows: ReconcileBenchRow[]; during: T }> {
  const dir = fs.mkdtempSync('/tmp/ublk-ts-bench-manifests-');
  const stateDir = fs.mkdtempSync('/tmp/ublk-ts-bench-state-');
  try {
    for (let i = 0; i < n; i++) fs.writeFileSync(path.join(dir, `bench-${i}.yaml`), nullManifest(`bench-${i}`));
    const rows: ReconcileBenchRow[] = [{ phase: 'create', devices: n, seconds: reconcilePass(dir, stateDir) }];
    // The fastest of a few no-op passes: what a pass costs, not what else the guest did meanwhile.
    const noops = Array.from({ length: noopPasses }, () => reconcilePass(dir, stateDir));
    rows.push({ phase: 'noop', devices: n, seconds: Math.min(...noops) });
    rows.push({ phase: 'watch-noop', devices: n, seconds: await watcherPasses(dir, stateDir, noopPasses + 1) });
    if (COMPARE_ROOT) {
      const other = path.join(COMPARE_ROOT, 'dist', 'src', 'cli', 'ublk-reconcile.js');
      const theirs = Array.from({ length: 2 }, () => reconcilePass(dir, stateDir, [], other));
      rows.push({ phase: 'noop', devices: n, seconds: Math.min(...theirs), comparedRoot: COMPARE_ROOT });
    }
    const result = during(stateDir);
    if (nodeArgs.length > 0) reconcilePass(dir, stateDir, nodeArgs);
    for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f));
    rows.push({ phase: 'delete', devices: n, seconds: reconcilePass(dir, stateDir) });
    return { rows, during: result };
  } finally {
    // Whatever failed, the devices go (a pass over an empty directory) before their records do.
    for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f));
    spawnSync(process.execPath, [RECONCILE, '--dir', dir, '--state-dir', stateDir, '--once']);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(stateDir, { recursive: true, force: true });
  }
}

/** Runs the reconcile section: 1 device, then many, in this boot. */
export async function runReconcileBench(opts: Options = {}): Promise<ReconcileBenchResult> {
  const log = opts.log ?? ((line: string) => console.log(line));
  const many = opts.devices ?? Number(process.env.UBLK_TS_BENCH_DEVICES ?? 64);
  const one = await cycle(1, 3, () => undefined);
  const memBefore = memAvailableKiB().available;
  const profArgs = opts.cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', opts.cpuProfDir] : [];
  const lots = await cycle(many, 3, (stateDir) => footprintOf(stateDir, memBefore), profArgs);
  const rows = [...one.rows, ...lots.rows];
  const seconds = (phase: ReconcileBenchRow['phase'], n: number): number =>
    rows.find((r) => r.phase === phase && r.devices === n && r.comparedRoot === undefined)!.seconds;
  const result: ReconcileBenchResult = {
    rows,
    noopRatio: Number((seconds('noop', many) / seconds('noop', 1)).toFixed(2)),
    watchNoopRatio: Number((seconds('watch-noop', many) / seconds('watch-noop', 1)).toFixed(2)),
    footprint: lots.during,
  };
  log(`\nublk-reconcile --once, null devices, same VM boot (${os.cpus().length} CPUs):`);
  log(`  ${'phase'.padEnd(8)} ${'1 device'.padStart(10)} ${`${many} devices`.padStart(12)}`);
  for (const phase of ['create', 'noop', 'watch-noop', 'delete'] as const) {
    const cell = (n: number): string => {
      const r = rows.find((x) => x.phase === phase && x.devices === n && x.comparedRoot === undefined);
      return r ? `${r.seconds.toFixed(2)} s` : '-';
    };
    log(`  ${phase.padEnd(8)} ${cell(1).padStart(10)} ${cell(many).padStart(12)}`);
  }
  log(`  no-op ${many} / no-op 1 = ${result.noopRatio} (target < 1.5): a --once process, start to exit`);
  log(`  watch-noop ${many} / watch-noop 1 = ${result.watchNoopRatio}: one resync pass of a running watcher`);
  if (COMPARE_ROOT) {
    const theirs = (n: number): number =>
      rows.find((r) => r.phase === 'noop' && r.devices === n && r.comparedRoot !== undefined)!.seconds;
    log(
      `  no-op by ${COMPARE_ROOT} over the same devices: 1 device ${theirs(1).toFixed(2)} s, ` +
        `${many} devices ${theirs(many).toFixed(2)} s (ratio ${(theirs(many) / theirs(1)).toFixed(2)})`,
    );
  }
  const f = result.footprint;
  log(
    `  per server (${f.devices} running): PSS ${(f.meanPssKiB / 1024).toFixed(1)} MiB, ` +
      `RSS ${(f.meanRssKiB / 1024).toFixed(1)} MiB, ${f.meanThreads} threads; ` +
      `guest memory used by all of them ${(f.guestMemoryDeltaKiB / 1024).toFixed(0)} MiB`,
  );
  if (opts.cpuProfDir) {
    for (const file of fs.readdirSync(opts.cpuProfDir).filter((x) => x.endsWith('.cpuprofile'))) {
      log(`  hottest functions of the ${many}-device no-op pass (${file}):`);
      for (const line of hottest(path.join(opts.cpuProfDir, file), 25)) log(`    ${line}`);
    }
  }
  return result;
}

if (require.main === module) {
  const profIndex = process.argv.indexOf('--cpu-prof');
  const cpuProfDir = profIndex > 0 ? process.argv[profIndex + 1] : undefined;
  if (cpuProfDir) fs.mkdirSync(cpuProfDir, { recursive: true });
  runReconcileBench({ cpuProfDir }).then(
    (result) => {
      const resultsDir = process.env.UBLK_TS_RESULTS_DIR;
      if (resultsDir) fs.writeFileSync(path.join(resultsDir, 'reconcile-bench.json'), JSON.stringify(result, null, 2));
    },
    (err: Error) => {
      console.error(err.stack ?? err.message);
      process.exitCode = 1;
    },
  );
}
