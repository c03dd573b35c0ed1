/**
 * `npm run test:stress -- [--runs N] [--grep PATTERN] [--no-load] [--kernel LEG]`: runs the
 * end-to-end suite N times in a row (default 10) inside one VM boot (on the
 * kernel matrix's default leg, 6.12, unless `--kernel` names another) while a
 * bounded CPU hog keeps every host core busy, then prints pass/fail counts per
 * test. A suite that passes only on a quiet machine fails here. The hog is
 * plain busy loops in child processes that stop by themselves at the run's
 * deadline and are killed as soon as the run ends.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { TestRecord } from './e2e/test-record';
import { E2E_PATTERN, mochaShellCommand, ROOT, shellQuote } from './mocha-command';
import { DEFAULT_KERNEL_LEG, kernelLeg, kernelLegNames, runInVm, VmUnavailable } from './vm';

const USAGE = `usage: npm run test:stress -- [--runs N] [--grep PATTERN] [--no-load] [--timeout-min M] [--kernel ${kernelLegNames().join('|')}]`;

interface StressOptions {
  runs: number;
  grep?: string;
  load: boolean;
  timeoutMs: number;
  kernel: string;
}

function parseCli(argv: string[]): StressOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      runs: { type: 'string', default: '10' },
      grep: { type: 'string' },
      'no-load': { type: 'boolean', default: false },
      'timeout-min': { type: 'string' },
      kernel: { type: 'string', default: DEFAULT_KERNEL_LEG },
    },
  });
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1 || runs > 100)
    throw new Error(`--runs wants a whole number from 1 to 100, got ${values.runs}`);
  // About 12 minutes a run under load on a 2-core host; a hung run is cut off by mocha's per-test timeout first.
  const timeoutMin = values['timeout-min'] === undefined ? 15 * runs + 5 : Number(values['timeout-min']);
  if (!(timeoutMin > 0)) throw new Error(`--timeout-min wants a positive number, got ${values['timeout-min']}`);
  kernelLeg(values.kernel);
  return { runs, grep: values.grep, load: !values['no-load'], timeoutMs: timeoutMin * 60_000, kernel: values.kernel };
}

/** One busy loop per core, each ending by itself at the deadline even if this process dies. */
function startCpuHog(untilMs: number): ChildProcess[] {
  const script = `const end = ${untilMs}; let x = 0; while (Date.now() < end) { for (let i = 0; i < 1e6; i++) x += i; }`;
  const hogs = Array.from({ length: os.availableParallelism() }, () =>
    spawn(process.execPath, ['-e', script], { stdio: 'ignore' }),
  );
  process.on('exit', () => hogs.forEach((h) => h.kill('SIGKILL')));
  return hogs;
}

/** The suite, N times; each run's records land in the VM's results share as run-I.json. */
function guestCommand(opts: StressOptions): string {
  const placeholder = '/RUN-FILE';
  const mocha = mochaShellCommand({ pattern: E2E_PATTERN, grep: opts.grep, reportFile: placeholder });
  return [
    `for i in $(seq 1 ${opts.runs}); do`,
    `  echo "== stress run $i of ${opts.runs} =="`,
    `  ${mocha.replace(shellQuote(placeholder), '"$UBLK_TS_RESULTS_DIR/run-$i.json"')}`,
    '  echo "== stress run $i: mocha exited $? =="',
    'done',
  ].join('\n');
}

interface TestTally {
  passed: number;
  failed: number;
  skipped: number;
  errors: string[];
  /** Summed test time (hooks excluded), for the mean per run. */
  totalMs: number;
}

function tally(resultsDir: string, runs: number): { perTest: Map<string, TestTally>; missingRuns: number[] } {
  const perTest = new Map<string, TestTally>();
  const missingRuns: number[] = [];
  for (let i = 1; i <= runs; i++) {
    const file = path.join(resultsDir, `run-${i}.json`);
    if (!fs.existsSync(file)) {
      missingRuns.push(i);
      continue;
    }
    for (const r of JSON.parse(fs.readFileSync(file, 'utf8')) as TestRecord[]) {
      const t = perTest.get(r.title) ?? { passed: 0, failed: 0, skipped: 0, errors: [], totalMs: 0 };
      t.totalMs += r.durationMs ?? 0;
      if (r.state === 'passed') t.passed++;
      else if (r.state === 'failed') {
        t.failed++;
        t.errors.push(`run ${i}: ${(r.error ?? '').split('\n')[0]}`);
      } else t.skipped++;
      perTest.set(r.title, t);
    }
  }
  return { perTest, missingRuns };
}

async function main(): Promise<number> {
  let opts: StressOptions;
  try {
    opts = parseCli(process.argv.slice(2));
  } catch (err) {
    console.error(`test:stress: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const started = Date.now();
  const hogs = opts.load ? startCpuHog(started + opts.timeoutMs) : [];
  console.log(
    `test:stress: ${opts.runs} run(s) of the end-to-end suite in one VM boot on Linux ${opts.kernel}` +
      (opts.load ? `, with ${hogs.length} busy loop(s) keeping the host's cores busy` : ', no load'),
  );
  let exitCode: number;
  let timedOut: boolean;
  let results: ReturnType<typeof tally>;
  let kernelVersion: string;
  try {
    const r = await runInVm({
      command: guestCommand(opts),
      cwd: ROOT,
      kernel: opts.kernel,
      timeoutMs: opts.timeoutMs,
      onOutput: (chunk) => process.stdout.write(chunk),
      log: (s) => console.log(`[vm] ${s}`),
    });
    exitCode = r.exitCode;
    timedOut = r.timedOut;
    kernelVersion = r.kernel.version;
    results = tally(r.resultsDir, opts.runs);
    fs.rmSync(r.resultsDir, { recursive: true, force: true });
  } catch (err) {
    if (err instanceof VmUnavailable) {
      console.error(`test:stress: the VM cannot run here: ${err.message}`);
      return 3;
    }
    throw err;
  } finally {
    hogs.forEach((h) => h.kill('SIGKILL'));
  }
  const { perTest, missingRuns } = results;

  const wallMin = ((Date.now() - started) / 60_000).toFixed(1);
  console.log(
    `\n== stress summary: Linux ${kernelVersion}, ${opts.runs} run(s), ${wallMin} min wall time${opts.load ? ', host cores busy' : ''} ==`,
  );
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  for (const [title, t] of [...perTest].sort(([a], [b]) => a.localeCompare(b))) {
    passed += t.passed;
    failed += t.failed;
    skipped += t.skipped;
    const mark = t.failed > 0 ? 'FAIL' : 'ok  ';
    const meanS = (t.totalMs / Math.max(1, t.passed + t.failed) / 1000).toFixed(1);
    console.log(
      `${mark} ${String(t.passed).padStart(3)} passed ${String(t.failed).padStart(3)} failed ${String(t.skipped).padStart(3)} skipped ${meanS.padStart(6)} s  ${title}`,
    );
    for (const e of t.errors) console.log(`       ${e}`);
  }
  if (missingRuns.length > 0) {
    console.log(`runs that wrote no results (crash or timeout): ${missingRuns.join(', ')}`);
    failed += missingRuns.length;
  }
  if (timedOut) console.log(`the VM did not finish within ${opts.timeoutMs / 60_000} min`);
  console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
  return failed > 0 || timedOut || exitCode !== 0 ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    console.error(err.stack ?? err.message);
    process.exit(1);
  },
);
